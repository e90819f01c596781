"""Worker of tests/distributed/test_grouped_exchange.py: trains a small EmbeddingEngine model
for a few steps and dumps what it saw, with the sharded tables' lookups carried by one grouped
exchange (``--exchange grouped``, the default) or one exchange per group (``per-group``).

Run under ``torchrun --nproc_per_node W`` (each rank takes its slice of every global batch, the
model wrapped by ``shard_model``) or as a plain process (``--single``: the whole global batch,
no sharding). The engine's groups: ``user`` (dim 4, sum), ``hist`` (dim 4, weighted mean, table
``item``), ``seq`` (dim 4, tile, table ``item``), ``user_ro`` (ReadOnly reader of ``user``),
``cate`` (dim 8), ``wide`` (dim 4, float64), ``q`` (int8 dim 4, read-only rows inserted before
training). Step 3's ``user`` ids are 30 per sample from a larger pool (1 or 2 otherwise), so the grouped id
exchange outgrows its capacity there (the excess all-to-all).

Writes ``<out>/rank<r>.pt``: per step the outputs of the rank's samples, the gradient rows
reaching every table shard (by id), and the all-to-alls of ``backend/exchange.py`` issued in
forward and in backward (``counts``: no split sizes, ``ids``: int64 with split sizes, ``rows``:
floating); at the end every table's contents (ids, rows, optimizer slots) and the dense head.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.distributed as dist

from recis.nn import EmbeddingEngine, EmbeddingOption
from recis.nn.hashtable_hook import AdmitHook
from recis.nn.initializers import ConstantInitializer
from recis.nn.modules.hashtable import filter_out_sparse_param
from recis.optim import SparseAdamW
from worker_records import grads_by_id, rank_ragged  # tests/distributed/workers/worker_records.py

GLOBAL_BATCH = 12
POOL = 40
USER_IDS_PER_SAMPLE = [1, 2, 1, 30, 2]


class Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.engine = EmbeddingEngine({
            "user": EmbeddingOption(embedding_dim=4, shared_name="user", initializer=ConstantInitializer(0.05)),
            "hist": EmbeddingOption(embedding_dim=4, shared_name="item", combiner="mean",
                                    initializer=ConstantInitializer(-0.02)),
            "seq": EmbeddingOption(embedding_dim=4, shared_name="item", combiner="tile",
                                   combiner_kwargs={"tile_len": 3}, initializer=ConstantInitializer(-0.02)),
            "user_ro": EmbeddingOption(embedding_dim=4, shared_name="user", initializer=ConstantInitializer(0.05),
                                       admit_hook=AdmitHook("ReadOnly")),
            "cate": EmbeddingOption(embedding_dim=8, shared_name="cate", initializer=ConstantInitializer(0.03)),
            "wide": EmbeddingOption(embedding_dim=4, shared_name="wide", dtype=torch.float64,
                                    initializer=ConstantInitializer(0.01)),
            "q": EmbeddingOption(embedding_dim=4, shared_name="q", dtype=torch.int8),
        })
        self.head = torch.nn.Linear(4 + 4 + 12 + 4 + 8 + 4 + 4, 1)

    def forward(self, batch):
        e = self.engine(batch)
        x = torch.cat([e["user"], e["hist"], e["seq"].flatten(1), e["user_ro"], e["cate"],
                       e["wide"].to(torch.float32), e["q"].to(torch.float32) / 64], 1)
        return self.head(x).squeeze(1)


def global_batch(step: int):
    g = torch.Generator().manual_seed(200 + step)
    per_sample = USER_IDS_PER_SAMPLE[step % len(USER_IDS_PER_SAMPLE)]
    # step 3: many distinct ids (more than the capacity the steps before set)
    user = torch.randint(0, POOL if per_sample < 8 else 50 * POOL, (GLOBAL_BATCH, per_sample), generator=g) * 65537
    lens = torch.randint(0, 5, (GLOBAL_BATCH,), generator=g)
    hist_vals = torch.randint(0, POOL, (int(lens.sum()),), generator=g) * 9973 + 1
    hist_w = torch.rand(int(lens.sum()), generator=g) + 0.5
    user_ro = torch.randint(0, POOL * 2, (GLOBAL_BATCH, 1), generator=g) * 65537
    cate = torch.randint(0, 12, (GLOBAL_BATCH, 2), generator=g) * 3
    wide = torch.randint(0, POOL, (GLOBAL_BATCH, 3), generator=g) * 131
    q = torch.randint(0, 16, (GLOBAL_BATCH, 2), generator=g) * 7
    label = torch.rand(GLOBAL_BATCH, generator=g)
    return user, lens, hist_vals, hist_w, user_ro, cate, wide, q, label


def local_batch(step: int, rank: int, world: int):
    user, lens, hv, hw, user_ro, cate, wide, q, label = global_batch(step)
    b = GLOBAL_BATCH // world
    lo, hi = rank * b, (rank + 1) * b
    hist, seq = rank_ragged(lens, hv, hw, lo, hi)
    return {"user": user[lo:hi], "hist": hist, "seq": seq, "user_ro": user_ro[lo:hi],
            "cate": cate[lo:hi], "wide": wide[lo:hi], "q": q[lo:hi]}, label[lo:hi]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--exchange", choices=("grouped", "per-group"), default="grouped")
    args = ap.parse_args()
    sharded = "RANK" in os.environ
    torch.manual_seed(5)
    model = Model()
    model.engine.grouped_exchange = args.exchange == "grouped"
    # distinct starting rows for some ids, and the int8 table's rows (every rank inserts all;
    # a sharded table keeps the ones it owns)
    g = torch.Generator().manual_seed(7)
    user_ids = torch.arange(0, POOL, 2) * 65537
    user_vals = torch.randn(user_ids.numel(), 4, generator=g)
    q_ids = torch.arange(0, 16) * 7
    q_vals = torch.randint(-100, 100, (16, 4), generator=g).to(torch.int8)
    if sharded:
        from recis_compat.backend import exchange
        from recis_compat.backend.sharding import init_process_group, shard_model
        init_process_group("cpu", timeout_s=60.0)
        rank, world = dist.get_rank(), dist.get_world_size()
        runner = shard_model(model)
    else:
        exchange = None
        rank, world = 0, 1
        runner = model
    engine = model.engine
    engine._ht[engine.table_of("user")]._hashtable.insert(engine.table_ids("user", user_ids), user_vals)
    engine._ht[engine.table_of("q")]._hashtable.insert(engine.table_ids("q", q_ids), q_vals)

    log = []
    if exchange is not None:
        real = exchange.dist.all_to_all_single

        def logged(out, inp, output_split_sizes=None, input_split_sizes=None, group=None, async_op=False):
            kind = "rows" if inp.is_floating_point() else ("ids" if output_split_sizes is not None else "counts")
            log.append(kind)
            return real(out, inp, output_split_sizes=output_split_sizes, input_split_sizes=input_split_sizes,
                        group=group, async_op=async_op)

        exchange.dist.all_to_all_single = logged

    sparse_opt = SparseAdamW(filter_out_sparse_param(model), lr=0.05, weight_decay=0.01)
    dense_opt = torch.optim.Adam(model.head.parameters(), lr=0.01)
    rec = {"outputs": [], "grads": [], "forward_a2a": [], "backward_a2a": []}
    for step in range(args.steps):
        batch, label = local_batch(step, rank, world)
        del log[:]
        pred = runner(batch)
        rec["forward_a2a"].append(list(log))
        del log[:]
        loss = torch.nn.functional.binary_cross_entropy_with_logits(pred, label)
        loss.backward()
        rec["backward_a2a"].append(list(log))
        rec["outputs"].append(pred.detach().clone())
        rec["grads"].append(grads_by_id(model))
        sparse_opt.step()
        dense_opt.step()
        sparse_opt.zero_grad()
        dense_opt.zero_grad()
    rec["tables"] = {n: i.state_dict() for n, i in filter_out_sparse_param(model).items()}
    rec["head"] = {k: v.detach().clone() for k, v in model.head.state_dict().items()}
    rec["world"] = world
    os.makedirs(args.out, exist_ok=True)
    torch.save(rec, os.path.join(args.out, f"rank{rank}.pt"))
    if sharded:
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
