"""Lifetime of the threads the IO pipeline starts, and closing nested iterators.

Two guarantees (issue 13 item 1):

* **close travels down.** Every wrapping stage (:mod:`.map_dataset`, :mod:`.filter_dataset`,
  :mod:`.state_dataset`, :mod:`.wrap_end_dataset`) closes the iterator it wraps when it is
  closed, ends, or fails, via :func:`close_iterator`, so ``close()`` on the iterator a user holds
  reaches the prefetch stage, which stops and joins its thread, and the ORC reader, which joins
  its reader threads.
* **safety net at exit.** Stages that own threads register a stop-and-join callable here
  (:func:`register_stopper`). Before interpreter finalization (``threading``'s exit hooks, which
  run before non-daemon threads are joined and before ``atexit``) every still-registered one is
  called, oldest first (a stage registers before the stages it reads from start, so the
  consumer-facing thread stops first and closes what it drives). This covers loops that end
  without closing their iterator (an exception or KeyboardInterrupt leaving the iterator
  referenced from a traceback, a plain ``break``). A daemon thread still running native code
  while the interpreter finalizes is killed in ``take_gil`` and the process aborts
  (``terminate called without an active exception``, rc 134).
"""
from __future__ import annotations

# registered before ours, concurrent.futures' exit hook runs after ours (hooks run newest first)
import concurrent.futures.thread  # noqa: F401
import itertools
import logging
import os
import threading
from typing import Callable, Dict, Optional, Tuple

__all__ = ["close_iterator", "join_thread", "register_stopper", "unregister_stopper", "stop_all",
           "JOIN_WARN_SECONDS"]

logger = logging.getLogger(__name__)

JOIN_WARN_SECONDS = 30.0
"""A join that takes longer than this logs a warning naming the thread, then keeps waiting."""

_lock = threading.Lock()
_stoppers: Dict[int, Tuple[Callable[[], None], Optional[Callable[[], bool]]]] = {}
_ids = itertools.count()


def close_iterator(it) -> None:
    """Call ``it.close()`` if ``it`` has one (generators, our pipeline iterators)."""
    close = getattr(it, "close", None)
    if close is not None:
        close()


def register_stopper(stop: Callable[[], None], alive: Optional[Callable[[], bool]] = None) -> int:
    """Remember ``stop`` (stops and joins one stage's threads) until :func:`unregister_stopper`;
    returns the key to unregister it with. ``alive()`` (optional) says whether the threads still
    run; stoppers whose threads have ended are dropped on the next registration."""
    key = next(_ids)
    with _lock:
        for k in [k for k, (_, a) in _stoppers.items() if a is not None and not a()]:
            del _stoppers[k]
        _stoppers[key] = (stop, alive)
    return key


def unregister_stopper(key: int) -> None:
    """Forget a stopper (its threads are gone); unknown keys are ignored."""
    with _lock:
        _stoppers.pop(key, None)


def stop_all() -> None:
    """Call every registered stopper, oldest first (outer stages before the ones they read
    from). Exceptions are logged, not raised: this runs while the interpreter exits."""
    with _lock:
        stoppers = [_stoppers[k][0] for k in sorted(_stoppers)]
        _stoppers.clear()
    for stop in stoppers:
        try:
            stop()
        except Exception:  # noqa: BLE001 - reported, the next stopper must still run
            logger.exception("recis_compat.io: stopping an IO thread at exit failed")


def join_thread(thread: threading.Thread) -> None:
    """Join ``thread``; past :data:`JOIN_WARN_SECONDS` log a warning naming it and keep waiting
    (returning early would leave it running into interpreter shutdown)."""
    if thread is threading.current_thread():
        return
    thread.join(JOIN_WARN_SECONDS)
    while thread.is_alive():
        logger.warning("recis_compat.io: waiting for thread %r to stop (it is still inside a read "
                       "after %.0f s)", thread.name, JOIN_WARN_SECONDS)
        thread.join(JOIN_WARN_SECONDS)


def _register_exit_hook() -> None:
    register = getattr(threading, "_register_atexit", None)
    if register is not None:  # CPython >= 3.9: runs in threading._shutdown, before atexit
        register(stop_all)
    else:  # pragma: no cover - other interpreters
        import atexit
        atexit.register(stop_all)


def _after_fork_in_child() -> None:
    """A forked child (DataLoader worker) has none of the parent's threads: forget their
    stoppers, and take a fresh lock (the parent's may have been held at fork time)."""
    global _lock
    _lock = threading.Lock()
    _stoppers.clear()


_register_exit_hook()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
