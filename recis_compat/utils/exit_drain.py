"""At a normal exit after gloo collectives, let gloo's worker threads finish before the
interpreter finalizes.

The abort this prevents (``terminate called without an active exception``, SIGABRT, after the
script finished; docs/reliability.md "Timeouts and dead peers"). Seen with gdb on a core of
``tests/distributed/workers/exchange_order.py`` (2 of 15 loaded runs): the main thread was in
``Py_FinalizeEx`` (its final ``gc.collect``), and a gloo worker thread
(``c10d::ProcessGroupGloo::runLoop``) was destroying the ``dist.barrier()`` work the main thread
had already waited for: ``~AsyncBarrierWork`` drops the works that were in flight when the
barrier was issued (here ``all_gather_object``'s ``~AsyncAllgatherWork``), their tensors'
Python objects are decref'd, which takes the GIL, and a thread that asks for the GIL of a
finalizing interpreter is ended by CPython with a forced unwind through a ``noexcept`` frame:
``std::terminate``. ``destroy_process_group`` does not help: gloo's ``shutdown`` neither waits for
nor joins the worker threads, and the modules that hold the group (sharded tables, DDP) keep it
alive until finalization anyway. Any collective can be the late one: the worker thread hands a
finished work back before it drops its own reference, so the main thread may run on (and exit)
first.

:func:`register` adds an ``atexit`` handler (once per process). ``atexit`` handlers run before
the interpreter is marked as finalizing, so a thread may still take the GIL then; the handler
releases the GIL (short sleeps) until no other thread of this process is running or runnable
(state ``R`` in ``/proc/self/task/*/stat``) at two checks in a row, or :data:`MAX_WAIT_S` has
passed. A gloo worker between finishing a work and dropping it is runnable, one waiting for the
GIL is woken by the first sleep: both have finished when the handler returns. Threads that are
busy for longer (a daemon thread still working) only delay the exit by :data:`MAX_WAIT_S`.
Linux only (``/proc``); elsewhere the handler just sleeps one :data:`POLL_S`.
"""
from __future__ import annotations

import atexit
import os
import threading
import time

__all__ = ["register", "registered", "drain", "busy_threads", "MAX_WAIT_S", "POLL_S"]

MAX_WAIT_S = 2.0      # longest wait for other threads at exit
POLL_S = 0.002        # GIL released between checks
_TASKS = "/proc/self/task"

_registered = False
_lock = threading.Lock()


def busy_threads() -> list:
    """Native ids of this process's other threads that are running or runnable (``R``); None
    when ``/proc`` cannot tell."""
    me = threading.get_native_id()
    busy = []
    try:
        tids = os.listdir(_TASKS)
    except OSError:
        return None
    for tid in tids:
        if int(tid) == me:
            continue
        try:
            with open(f"{_TASKS}/{tid}/stat", "rb") as f:
                stat = f.read()
        except OSError:          # the thread ended meanwhile
            continue
        # "pid (comm) S ...": the state follows the last ')' (comm may hold ')')
        if stat[stat.rindex(b")") + 2:stat.rindex(b")") + 3] == b"R":
            busy.append(int(tid))
    return busy


def drain(max_wait_s: float = MAX_WAIT_S) -> bool:
    """Release the GIL until no other thread is running or runnable at two checks in a row
    (True), or ``max_wait_s`` passed (False)."""
    deadline = time.monotonic() + max_wait_s
    quiet = 0
    while True:
        time.sleep(POLL_S)              # the GIL is free: a thread waiting for it runs now
        busy = busy_threads()
        if busy is None:
            return True
        quiet = quiet + 1 if not busy else 0
        if quiet >= 2:
            return True
        if time.monotonic() >= deadline:
            return False


def registered() -> bool:
    return _registered


def register() -> None:
    """Run :func:`drain` at exit (idempotent). Called when a process group is created
    (``recis_compat/utils/dist_timeout.py``, ``recis_compat/backend/sharding.py``)."""
    global _registered
    with _lock:
        if not _registered:
            atexit.register(drain)
            _registered = True
