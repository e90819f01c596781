"""The ids of a sharded lookup ride in the counts all-to-all (``backend/exchange.py``
``IdCapacity``, which ``ShardedDynamicTable`` passes to every ``IdExchange``): one all-to-all per
exchange instead of two once the capacity fits, the same ids and counts received.

``workers/id_capacity_worker.py`` runs one sequence of exchanges on 2 ranks with and without a
capacity (sizes grow past the capacity, shrink, hit zero; two segments per rank).
"""
from __future__ import annotations

import pathlib

import pytest

from torchrun_launch import run_worker_json  # tests/torchrun_launch.py

pytestmark = pytest.mark.distributed

WORKER = pathlib.Path(__file__).parent / "workers" / "id_capacity_worker.py"


def _run(tmp_path):
    return run_worker_json(WORKER, tmp_path, "capacity.json")


def test_ids_ride_with_the_counts_and_arrive_unchanged(tmp_path):
    ranks = _run(tmp_path)
    for rank, log in enumerate(ranks):
        for i, e in enumerate(log):
            assert e["same_ids"] and e["same_counts"], (rank, i, e)
            assert e["a2a_plain"] == 2, (rank, i, e)
        caps = [e["capacity_after"] for e in log]
        # every rank holds the same capacity after every exchange
        assert caps == [e["capacity_after"] for e in ranks[0]]
        merged = [e["a2a_merged"] for e in log]
        # 1st: capacity 0, counts then ids; 2nd, 3rd: fit (ids within 1.25x the largest seen);
        # 4th: 907 ids outgrow it -> a second all-to-all for the rest; 5th (empty) fits;
        # after the empty 5th the capacity is 0 again (6th: 12 ids -> two); 7th outgrows 64; 8th fits
        assert merged == [2, 1, 1, 2, 1, 2, 2, 1], merged
    # what rank 0 received: 300 from itself, 307 from rank 1 (first exchange)
    assert ranks[0][0]["per_source"] == [300, 307] and ranks[1][0]["per_source"] == [280, 287]
