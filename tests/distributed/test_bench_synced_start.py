"""``bench lookup --world-size N`` starts every timed step on all ranks at one agreed instant
(``lookup_bench.synced_start``), not at a barrier's release, which gloo hands the ranks up to
several ms apart (the early rank then counted the wait for the late one in its step).

``workers/synced_start_worker.py``: 2 ranks, rank 1 arrives 0.2 s late. Neither rank may start
before the agreed instant, which is at least the margin after the *later* rank arrived; so the
early rank does not start its step while the other is still on its way.
"""
from __future__ import annotations

import pathlib

import pytest

from torchrun_launch import run_worker_json  # tests/torchrun_launch.py

pytestmark = pytest.mark.distributed

WORKER = pathlib.Path(__file__).parent / "workers" / "synced_start_worker.py"


def test_ranks_start_at_the_agreed_instant_after_the_late_rank_arrived(tmp_path):
    res = run_worker_json(WORKER, tmp_path, "starts.json", "--late", "0.2")
    entered, started, margin = res["entered"], res["started"], res["margin"]
    assert margin > 0
    assert entered[1] > entered[0]                       # rank 1 came late
    for rank in (0, 1):
        # nobody starts before the instant agreed after the last arrival
        assert started[rank] >= max(entered) + margin, (rank, entered, started)
    # the early rank waited for the late one: it did not start during rank 1's delay
    assert started[0] - entered[0] >= entered[1] - entered[0]
