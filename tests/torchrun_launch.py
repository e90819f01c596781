"""Launching torchrun from the tests: one launch, no retry.

The "known native gloo abort" this module used to retry (``terminate called without an active
exception``, rc 134, after ``done at global step N``) was our own: the IO prefetch thread, a
daemon thread, was still alive in native code when the interpreter finalized (issue 13 item 1).
recis_compat/io/threads.py now stops and joins every IO thread before finalization, and
``tools/abort_soak.sh`` counts aborts over many launches of each example runner; a launch that
aborts is a failure to investigate, not to retry (docs/reliability.md describes the one rare
abort at exit still known, a torch/gloo teardown race). :func:`run_launch` is ``subprocess.run`` that
adds a pointer to that soak to the stderr of a launch that died of a native abort.
"""
from __future__ import annotations

import subprocess

NATIVE_ABORT = "terminate called without an active exception"
ABORT_NOTE = ("\n[tests/torchrun_launch.py] a process died of a native abort (not retried): "
              "count them with tools/abort_soak.sh and find the thread alive at exit "
              "(gdb / faulthandler), see recis_compat/io/threads.py\n")


def run_launch(cmd, **kwargs) -> subprocess.CompletedProcess:
    """``subprocess.run(cmd, **kwargs)``, once; the caller checks the return code."""
    proc = subprocess.run(cmd, **kwargs)  # noqa: PLW1510 (callers check returncode)
    if proc.returncode != 0 and isinstance(proc.stderr, str) and NATIVE_ABORT in proc.stderr:
        proc.stderr += ABORT_NOTE
    return proc

