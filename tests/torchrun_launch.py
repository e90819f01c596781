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



def run_worker_json(worker, tmp_path, out_name: str, *args: str, nproc: int = 2, timeout: int = 300):
    """Launch ``worker`` (a script path) on ``nproc`` gloo ranks with torchrun from this checkout
    (``PYTHONPATH`` = repo + adapters, one thread per rank, no inherited rank variables), passing
    ``--out <tmp_path/out_name>`` and ``args``; assert it exits 0 and return the JSON it wrote."""
    import json
    import os
    import pathlib
    import sys

    repo = pathlib.Path(__file__).resolve().parents[1]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(repo), str(repo / "adapters")] + [env.get("PYTHONPATH", "")])
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    env["OMP_NUM_THREADS"] = "1"
    out = pathlib.Path(tmp_path) / out_name
    torchrun = pathlib.Path(sys.executable).with_name("torchrun")
    proc = run_launch([str(torchrun), "--nproc_per_node", str(nproc), "--master_port", "0", "--rdzv_backend",
                       "c10d", "--rdzv_endpoint", "localhost:0", str(worker), "--out", str(out), *args],
                      env=env, cwd=tmp_path, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(out.read_text())
