"""A process that dies of a failed collective exits with status 1, not SIGABRT.

When a collective fails (a peer died or was stopped past the process-group timeout), other
collectives of the same step may still be in flight on gloo's worker threads: DDP launches its
gradient all-reduce from backward hooks before a sharded table's gradient all-to-all fails. If
the interpreter finalizes while such a collective is still running, the worker thread ends the
work later, during finalization: destroying the work's saved thread-local state drops a Python
reference, the thread tries to take the GIL of a finalizing interpreter, CPython ends the thread
with a forced unwind through a ``noexcept`` C++ frame, and the process dies of
``terminate called without an active exception`` (SIGABRT). Seen with gdb on a core of
``tests/distributed/workers/dead_peer_worker.py``: ``c10d::ProcessGroupGloo::runLoop`` ->
``~AsyncAllreduceWork`` -> ``~ThreadLocalState`` -> ``gil_scoped_acquire`` -> ``take_gil`` ->
``pthread_exit`` -> ``std::terminate``, while the main thread was in ``Py_FinalizeEx``.

The broken process group cannot be drained or torn down safely from Python (DDP and the
sharded modules keep references to it). So :func:`install` wraps ``sys.excepthook``: an uncaught
exception whose chain (``__cause__`` / ``__context__``) holds a ``torch.distributed.DistError``
(``DistributedExchangeError`` of ``recis_compat/backend/sharding.py`` is one) is printed as usual,
the ``atexit`` handlers run and the standard streams are flushed, then the process ends with
``os._exit(1)`` instead of finalizing the interpreter under those threads: the exit status is the
one an uncaught exception gives. Every other exception is left to the previous hook.

``torch.distributed.init_process_group`` wraps ``sys.excepthook`` itself (it prints the
traceback through a ``StringIO`` to prefix each line with ``[rankN]:``), so our hook must be the
outermost one, or the traceback would be lost in that buffer: the ``init_process_group`` wrapper
of :mod:`recis_compat.utils.dist_timeout` calls :func:`install` again after creating the group,
and a hook of ours that is not the outermost only delegates.
"""
from __future__ import annotations

import atexit
import os
import sys

__all__ = ["install", "installed", "is_distributed_failure"]

_MARK = "__recis_compat_dist_exit__"


def is_distributed_failure(exc: BaseException) -> bool:
    """Whether ``exc`` or an exception it was raised from / during is a ``DistError``."""
    import torch.distributed as dist
    dist_error = getattr(dist, "DistError", None)
    if dist_error is None:
        return False
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, dist_error):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _wrap(previous):
    def excepthook(exc_type, exc, tb):
        previous(exc_type, exc, tb)
        if sys.excepthook is not excepthook:
            return          # an outer hook is running this one; the outermost of ours ends the process
        if exc is None or not is_distributed_failure(exc):
            return
        try:
            atexit._run_exitfuncs()
        finally:
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except Exception:  # noqa: BLE001 - a closed stream must not stop the exit
                    pass
            os._exit(1)

    setattr(excepthook, _MARK, previous)
    return excepthook


def installed() -> bool:
    """Whether the outermost ``sys.excepthook`` is our wrapper."""
    return hasattr(sys.excepthook, _MARK)


def install() -> None:
    """Make our wrapper the outermost ``sys.excepthook`` (a no-op when it already is); see the
    module docstring."""
    if not installed():
        sys.excepthook = _wrap(sys.excepthook)
