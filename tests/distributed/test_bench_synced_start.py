"""``bench lookup --world-size N`` starts every timed step on all ranks at one agreed instant
(``lookup_bench.synced_start``), not at a barrier's release, which gloo hands the ranks up to
several ms apart (the early rank then counted the wait for the late one in its step).

``workers/synced_start_worker.py``: 2 ranks, rank 1 arrives 0.2 s late. Neither rank may start
before the agreed instant, which is at least the margin after the *later* rank arrived; so the
early rank does not start its step while the other is still on its way.
"""
from __future__ import annotations

import json
import os
import pathlib
import sys

import pytest

from torchrun_launch import run_launch  # tests/torchrun_launch.py

pytestmark = pytest.mark.distributed

WORKER = pathlib.Path(__file__).parent / "workers" / "synced_start_worker.py"
REPO = pathlib.Path(__file__).resolve().parents[2]


def test_ranks_start_at_the_agreed_instant_after_the_late_rank_arrived(tmp_path):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "adapters")] + [env.get("PYTHONPATH", "")])
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    env["OMP_NUM_THREADS"] = "1"
    out = tmp_path / "starts.json"
    torchrun = pathlib.Path(sys.executable).with_name("torchrun")
    proc = run_launch([str(torchrun), "--nproc_per_node", "2", "--master_port", "0", "--rdzv_backend", "c10d",
                       "--rdzv_endpoint", "localhost:0", str(WORKER), "--out", str(out), "--late", "0.2"],
                      env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    res = json.loads(out.read_text())
    entered, started, margin = res["entered"], res["started"], res["margin"]
    assert margin > 0
    assert entered[1] > entered[0]                       # rank 1 came late
    for rank in (0, 1):
        # nobody starts before the instant agreed after the last arrival
        assert started[rank] >= max(entered) + margin, (rank, entered, started)
    # the early rank waited for the late one: it did not start during rank 1's delay
    assert started[0] - entered[0] >= entered[1] - entered[0]
