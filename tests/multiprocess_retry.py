"""One retry for torchrun launches that died of the known native TorchRec/gloo abort.

About 1 two- or three-rank launch in 15-25 on this 2-core VM loses a rank to ``terminate called
without an active exception`` (a native abort in TorchRec/gloo teardown or backward, seen also
without any recis_compat code in the process). :func:`run_retrying_known_abort` is
``subprocess.run`` that retries once in exactly that case; every other failure is returned as is.
Used by every torchrun test (through the ``run_multiprocess`` fixture or directly).
"""
from __future__ import annotations

import shutil
import subprocess

KNOWN_GLOO_ABORT = "terminate called without an active exception"


def run_retrying_known_abort(cmd, fresh=(), **kwargs) -> subprocess.CompletedProcess:
    """``subprocess.run(cmd, **kwargs)``, retried once on the known abort.

    ``fresh``: directories the launch writes (checkpoint dirs); they are deleted before the retry
    so that the second launch starts from scratch instead of resuming the first one's checkpoint.
    """
    proc = subprocess.run(cmd, **kwargs)  # noqa: PLW1510 (callers check returncode)
    if proc.returncode != 0 and KNOWN_GLOO_ABORT in (proc.stderr or ""):
        for d in fresh:
            shutil.rmtree(d, ignore_errors=True)
        proc = subprocess.run(cmd, **kwargs)  # noqa: PLW1510
    return proc
