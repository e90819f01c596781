"""A stopped rank makes the others fail within ``RECIS_COMPAT_DIST_TIMEOUT`` + 60 s, not hang.

``workers/dead_peer_worker.py`` is a RecIS-style script: ``import recis``, a bare
``dist.init_process_group()`` (no timeout, no backend), a sharded ``DynamicEmbedding`` and a
data-parallel head. Under ``torchrun`` with 2 ranks and ``RECIS_COMPAT_DIST_TIMEOUT=15``, rank 1
stops itself (SIGSTOP) at step 1:

* ``forward``: before its forward -> rank 0 blocks in the table's id all-to-all;
* ``backward``: after its forward, before ``loss.backward()`` -> rank 0 blocks in the
  embedding-gradient all-to-all that TorchRec runs in backward;
* ``barrier``: after a whole step -> rank 0 blocks in ``dist.all_reduce`` / ``dist.barrier`` on
  the default group (what the Trainer and the checkpoint manager call).

Rank 0 must exit non-zero on its own, at least the timeout and at most the timeout + 60 s after
rank 1 stopped, with ``DistributedExchangeError`` naming the table, the direction and
``rank 0 of 2`` for the table exchanges (gloo's timeout error for the barrier). The stopped rank
is then killed by pid; every process of the launch is killed by pid in any case.
"""
from __future__ import annotations

import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.distributed

WORKER = pathlib.Path(__file__).parent / "workers" / "dead_peer_worker.py"
REPO = pathlib.Path(__file__).resolve().parents[2]
TIMEOUT_S = 15
STARTUP_BUDGET_S = 240     # torchrun + imports + first step on a loaded 2-core machine


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "adapters")] + [env.get("PYTHONPATH", "")])
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    env["OMP_NUM_THREADS"] = "1"
    env["RECIS_COMPAT_DIST_TIMEOUT"] = str(TIMEOUT_S)
    return env


def _state(pid: int) -> str:
    """Process state letter from /proc (``""`` when the process is gone)."""
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[0]


def _parent(pid: int) -> int:
    try:
        return int(pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return -1


def _kill_worker(pid_file: pathlib.Path, launcher_pid: int) -> None:
    """SIGKILL the worker whose pid is in ``pid_file`` if it is still a child of our torchrun."""
    try:
        pid = int(pid_file.read_text())
    except (OSError, ValueError):
        return
    if _parent(pid) == launcher_pid and _state(pid) not in ("", "Z"):
        os.kill(pid, signal.SIGKILL)


def _wait_for(cond, deadline: float, launcher: subprocess.Popen) -> bool:
    while time.monotonic() < deadline:
        if cond():
            return True
        if launcher.poll() is not None:
            return cond()
        time.sleep(0.2)
    return cond()


@pytest.mark.parametrize("stop_at", ["forward", "backward", "barrier"])
def test_stopped_rank_makes_the_other_fail_within_the_timeout(tmp_path, stop_at):
    out = tmp_path / "out"
    log = tmp_path / "torchrun.log"
    torchrun = pathlib.Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--nproc_per_node", "2", "--master_port", "0", "--rdzv_backend", "c10d",
           "--rdzv_endpoint", "localhost:0", str(WORKER), "--out", str(out), "--stop-rank", "1",
           "--stop-step", "1", "--stop-at", stop_at]
    with open(log, "w") as log_f:
        launcher = subprocess.Popen(cmd, env=_env(), cwd=tmp_path, stdout=log_f, stderr=subprocess.STDOUT,
                                    start_new_session=True)
    try:
        stopped = out / "stopped1"
        assert _wait_for(stopped.exists, time.monotonic() + STARTUP_BUDGET_S, launcher), \
            f"rank 1 never reached its stop point:\n{log.read_text()[-4000:]}"
        rank0 = int((out / "pid0").read_text())
        # rank 0 must end by itself; the bound starts when rank 1 stopped
        deadline = float(stopped.read_text()) + TIMEOUT_S + 60 - time.time() + time.monotonic()
        exited = _wait_for(lambda: _state(rank0) in ("", "Z"), deadline, launcher)
        _kill_worker(out / "pid1", launcher.pid)
        assert exited, f"rank 0 still running {TIMEOUT_S + 60} s after rank 1 stopped (hang)"
        launcher.wait(timeout=120)
    finally:
        if launcher.poll() is None:
            for r in (0, 1):
                _kill_worker(out / f"pid{r}", launcher.pid)
            launcher.kill()
            launcher.wait(timeout=60)
    text = log.read_text()
    assert launcher.returncode != 0
    assert re.search(r"rank\s*:\s*0 \(local_rank: 0\)\s*\n\s*exitcode\s*:\s*1\b", text), \
        f"rank 0 did not exit with status 1 by itself:\n{text[-4000:]}"
    err = json.loads((out / "error0").read_text())
    waited = err["time"] - float((out / "stopped1").read_text())
    assert TIMEOUT_S * 0.5 <= waited <= TIMEOUT_S + 60, waited
    assert err["cause"] is None or err["cause"] == "RuntimeError"
    if stop_at == "barrier":
        assert err["type"] in ("RuntimeError", "DistBackendError"), err
        return
    assert err["type"] == "DistributedExchangeError", err
    direction = ("embedding-gradient all-to-all failed in backward" if stop_at == "backward"
                 else "id all-to-all failed in forward")
    for part in ("table 'dead_peer_user'", "rank 0 of 2", direction, "RECIS_COMPAT_DIST_TIMEOUT"):
        assert part in err["message"], (part, err["message"])
    assert err["cause"] == "RuntimeError"
    # what the user sees: the traceback of rank 0 ends in our error
    assert "DistributedExchangeError: table 'dead_peer_user'" in text
