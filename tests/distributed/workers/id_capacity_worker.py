"""Two ranks run the same sequence of id exchanges twice: with an ``IdCapacity`` (counts and ids
in one all-to-all once the capacity fits) and without (counts, then ids). Sizes grow, shrink, hit
zero and use two segments per rank; rank 0 writes, per exchange, whether both gave the same
received ids and counts, how many all-to-alls each issued and the capacity after it."""
from __future__ import annotations

import argparse
import json

import torch
import torch.distributed as dist

from recis_compat.backend import exchange
from recis_compat.backend.exchange import IdCapacity, IdExchange

# ids each rank sends to rank 0 / rank 1 (rank 1 sends 7 more to each), per exchange; K = 2
# segments split every part in about half
SIZES = [(300, 280), (310, 290), (290, 260), (900, 40), (0, 0), (5, 0), (320, 300), (320, 300)]


def _error(what, phase, err):
    return RuntimeError(f"{what} {phase}: {err}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    real = exchange.dist.all_to_all_single
    calls = {"n": 0}

    def counted(*a, **k):
        calls["n"] += 1
        return real(*a, **k)

    exchange.dist.all_to_all_single = counted
    cap = IdCapacity()
    g = torch.Generator().manual_seed(rank)
    log = []
    for to0, to1 in SIZES:
        extra = 7 * rank if to0 or to1 else 0
        parts = [to0 + extra, to1 + extra]
        ids = torch.randint(-(1 << 62), 1 << 62, (sum(parts),), generator=g)
        counts = torch.tensor([[p // 2, p - p // 2] for p in parts])
        calls["n"] = 0
        merged = IdExchange(ids, counts, dist.group.WORLD, _error, cap).wait().wait()
        n_merged = calls["n"]
        calls["n"] = 0
        plain = IdExchange(ids, counts, dist.group.WORLD, _error).wait().wait()
        n_plain = calls["n"]
        log.append({"same_ids": bool(torch.equal(merged.ids, plain.ids)),
                    "same_counts": bool(torch.equal(merged.counts, plain.counts)),
                    "per_source": merged.per_source, "a2a_merged": n_merged, "a2a_plain": n_plain,
                    "capacity_after": cap.value})
    exchange.dist.all_to_all_single = real
    got = [None] * dist.get_world_size()
    dist.all_gather_object(got, log)
    if rank == 0:
        with open(args.out, "w") as f:
            json.dump(got, f)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
