"""Two ranks call ``lookup_bench.synced_start``; rank 1 arrives ``--late`` seconds after rank 0.

Each rank records the shared monotonic clock when it enters the call (``entered``) and the start
time the call returns (``started``); rank 0 writes both lists (index = rank) and the margin to
``--out``.
"""
from __future__ import annotations

import argparse
import json
import time

import torch.distributed as dist

from recis_compat.benchmarks.lookup_bench import START_MARGIN_S, synced_start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--late", type=float, default=0.2)
    args = ap.parse_args()
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    dist.barrier()
    if rank == 1:
        time.sleep(args.late)
    entered = time.clock_gettime(time.CLOCK_MONOTONIC)
    started = synced_start(dist)
    got = [None] * dist.get_world_size()
    dist.all_gather_object(got, (entered, started))
    if rank == 0:
        with open(args.out, "w") as f:
            json.dump({"entered": [g[0] for g in got], "started": [g[1] for g in got],
                       "margin": START_MARGIN_S}, f)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
