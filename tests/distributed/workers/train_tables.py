"""Worker for the sharded-table tests: trains one small RecIS model and dumps what it saw.

Run under ``torchrun --nproc_per_node W`` (sharded: each rank takes its slice of every global
batch, the model is wrapped by ``shard_model``) or as a plain process (single: the whole global
batch, no sharding). Both write ``<out>/rank<r>.pt`` with, per step, the model outputs of the
rank's samples and the gradient rows reaching its table shard (by id), and at the end the
table contents (ids, embedding and optimizer slots), the dense parameters and the ids evicted.

The model also holds a ``DynamicEmbedding`` and a TorchRec ``EmbeddingBagCollection`` (sharded
by the planner under torchrun; its weights are frozen so that only its forward is compared).

Args: ``--out DIR``, ``--steps N``, ``--die-rank R`` (that rank exits before its first lookup:
the others must fail with an error, not hang), ``--dcp-save DIR`` (save the tables with
torch.distributed.checkpoint after training), ``--dcp-load DIR`` (load them before training).
"""
from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.distributed as dist
from torchrec.modules.embedding_configs import EmbeddingBagConfig
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recis.hooks import HashTableFilterHook
from recis.nn import DynamicEmbedding, EmbeddingEngine, EmbeddingOption
from recis.nn.hashtable_hook import AdmitHook, FilterHook
from recis.nn.initializers import ConstantInitializer
from recis.nn.modules.hashtable import filter_out_sparse_param
from recis.optim import SparseAdamW
from worker_records import grads_by_id, rank_ragged  # tests/distributed/workers/worker_records.py

GLOBAL_BATCH = 12
POOL = 40
DIM_A, DIM_B = 4, 8


class Model(torch.nn.Module):
    """Two physical tables (dims 4 and 8): sum, weighted mean, tile, a ReadOnly reader of table
    "user", and an evicting table; a linear head on top."""

    def __init__(self):
        super().__init__()
        init = ConstantInitializer(0.05)
        self.engine = EmbeddingEngine({
            "user": EmbeddingOption(embedding_dim=DIM_A, shared_name="user", initializer=init),
            "hist": EmbeddingOption(embedding_dim=DIM_A, shared_name="item", combiner="mean", initializer=init),
            "seq": EmbeddingOption(embedding_dim=DIM_A, shared_name="item", combiner="tile",
                                   combiner_kwargs={"tile_len": 3}, initializer=init),
            "user_ro": EmbeddingOption(embedding_dim=DIM_A, shared_name="user", initializer=init,
                                       admit_hook=AdmitHook("ReadOnly")),
            "cate": EmbeddingOption(embedding_dim=DIM_B, shared_name="cate", initializer=ConstantInitializer(0.02),
                                    filter_hook=FilterHook("GlobalStepFilter", {"filter_step": 1})),
        })
        self.city = DynamicEmbedding(EmbeddingOption(embedding_dim=DIM_A, shared_name="city",
                                                     initializer=ConstantInitializer(-0.03)))
        torch.manual_seed(1)
        self.ebc = EmbeddingBagCollection(tables=[EmbeddingBagConfig(
            name="t_ebc", embedding_dim=DIM_A, num_embeddings=POOL, feature_names=["ebc_f"],
            # TorchRec re-creates the weights when it shards; a constant init keeps runs comparable
            init_fn=lambda w: torch.nn.init.constant_(w, 0.07))],
            device=torch.device("cpu"))
        for p in self.ebc.parameters():
            p.requires_grad_(False)
        self.head = torch.nn.Linear(DIM_A * 3 + DIM_A * 3 + DIM_B + 2 * DIM_A, 1)

    def forward(self, batch):
        e = self.engine(batch)
        kt = self.ebc(batch["ebc"])
        x = torch.cat([e["user"], e["hist"], e["seq"].flatten(1), e["user_ro"], e["cate"],
                       self.city(batch["city"]), kt["ebc_f"]], 1)
        return self.head(x).squeeze(1)


def global_batch(step: int):
    """Deterministic global batch of step ``step`` (ids with repeats, weights, empty rows)."""
    g = torch.Generator().manual_seed(100 + step)
    user = torch.randint(0, POOL, (GLOBAL_BATCH, 1), generator=g) * 65537
    lens = torch.randint(0, 5, (GLOBAL_BATCH,), generator=g)
    hist_vals = torch.randint(0, POOL, (int(lens.sum()),), generator=g) * 9973 + 1
    hist_w = torch.rand(int(lens.sum()), generator=g) + 0.5
    cate = torch.randint(0, 6 if step % 2 == 0 else 12, (GLOBAL_BATCH, 1), generator=g) * 3
    user_ro = torch.randint(0, POOL * 2, (GLOBAL_BATCH, 1), generator=g) * 65537
    label = torch.rand(GLOBAL_BATCH, generator=g)
    city = torch.randint(0, POOL, (GLOBAL_BATCH, 2), generator=g) * 131
    ebc_ids = torch.randint(0, POOL, (GLOBAL_BATCH,), generator=g)
    return user, lens, hist_vals, hist_w, cate, user_ro, label, city, ebc_ids


def local_batch(step: int, rank: int, world: int):
    user, lens, hv, hw, cate, user_ro, label, city, ebc_ids = global_batch(step)
    b = GLOBAL_BATCH // world
    lo, hi = rank * b, (rank + 1) * b
    hist, seq = rank_ragged(lens, hv, hw, lo, hi)
    ebc = KeyedJaggedTensor.from_lengths_sync(["ebc_f"], ebc_ids[lo:hi], torch.ones(hi - lo, dtype=torch.int64))
    return {"user": user[lo:hi], "hist": hist, "seq": seq, "user_ro": user_ro[lo:hi],
            "cate": cate[lo:hi], "city": city[lo:hi], "ebc": ebc}, label[lo:hi]


def table_contents(model) -> dict:
    out = {}
    for name, impl in filter_out_sparse_param(model).items():
        out[impl.children.children()[0] if len(impl.children) == 1 else name] = impl.state_dict()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--die-rank", type=int, default=-1)
    ap.add_argument("--dcp-save", default=None)
    ap.add_argument("--dcp-load", default=None)
    args = ap.parse_args()
    sharded = "RANK" in os.environ
    rank = world = None
    model = Model()
    # pre-insert a few rows with distinct values (every rank passes all; each keeps its own)
    g = torch.Generator().manual_seed(7)
    pre_ids = torch.arange(0, POOL, 2) * 65537
    pre_vals = torch.randn(pre_ids.numel(), DIM_A, generator=g)
    if sharded:
        from recis_compat.backend.sharding import init_process_group, shard_model
        init_process_group("cpu", timeout_s=float(os.environ.get("TEST_DIST_TIMEOUT", "60")))
        rank, world = dist.get_rank(), dist.get_world_size()
        runner = shard_model(model)
    else:
        rank, world = 0, 1
        runner = model
    user_table = model.engine._ht[model.engine.table_of("user")]._hashtable
    user_table.insert(pre_ids | (0 << 52), pre_vals)   # child 0 of the dim-4 table is "user"
    if args.dcp_load:
        from recis_compat.backend.table_dcp import load_tables
        load_tables(model, args.dcp_load, trusted_source=True)   # written by this test's own save_tables
    sparse_opt = SparseAdamW(filter_out_sparse_param(model), lr=0.05, weight_decay=0.01)
    dense_opt = torch.optim.Adam(model.head.parameters(), lr=0.01)
    rec_sharded_ebc = type(model.ebc).__name__
    filter_hook = HashTableFilterHook(filter_interval=2)
    rec = {"outputs": [], "grads": [], "evicted": []}
    for step in range(args.steps):
        batch, label = local_batch(step, rank, world)
        if rank == args.die_rank:
            os._exit(3)
        pred = runner(batch)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(pred, label)
        loss.backward()
        rec["outputs"].append(pred.detach().clone())
        rec["grads"].append(grads_by_id(model))
        sparse_opt.step()
        dense_opt.step()
        sparse_opt.zero_grad()
        dense_opt.zero_grad()
        before = {n: set(i.ids().tolist()) for n, i in filter_out_sparse_param(model).items()}
        filter_hook.after_step(None, step + 1)
        after = {n: set(i.ids().tolist()) for n, i in filter_out_sparse_param(model).items()}
        rec["evicted"].append({n: sorted(before[n] - after[n]) for n in before})
    rec["tables"] = {n: i.state_dict() for n, i in filter_out_sparse_param(model).items()}
    # where each table's rows lived (RECIS_COMPAT_STORE_TYPE=cached_ssd: files under a RAM budget)
    rec["stores"] = {n: {"file_backed": i.storage.file_backed, "directory": i.storage.store_directory,
                         "trims": i.storage.store.budget().trims if i.storage.file_backed else 0}
                     for n, i in filter_out_sparse_param(model).items()}
    if args.dcp_save:
        from recis_compat.backend.table_dcp import save_tables
        save_tables(model, args.dcp_save)
    rec["head"] = {k: v.detach().clone() for k, v in model.head.state_dict().items()}
    rec["world"] = world
    rec["ebc_type"] = rec_sharded_ebc
    os.makedirs(args.out, exist_ok=True)
    torch.save(rec, os.path.join(args.out, f"rank{rank}.pt"))
    if sharded:
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
