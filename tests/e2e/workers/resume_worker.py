"""Worker for the checkpoint / resume tests: a RecIS script trained by ``Trainer`` on ORC data.

``python resume_worker.py --data DIR --out DIR [--kill-at-step N | --kill-during-save N]
[--model-bank CKPT_DIR] [--dump FILE]`` (also under ``torchrun``). The model: EmbeddingEngine
(sum, weighted mean, tile) + dropout MLP, SparseAdamW + AdamW + StepLR, save_steps=4,
gradient accumulation 2. ``--kill-at-step`` SIGKILLs the process after that global step;
``--kill-during-save`` SIGKILLs it in the middle of writing the checkpoint of that step (after
the sparse files, before the dense ones). ``--dump`` writes every table row (by id, all slots),
the dense parameters and optimizer states, for comparison.
"""
from __future__ import annotations

import argparse
import glob
import os
import signal

import numpy as np
import pyarrow as pa
import pyarrow.orc as orc
import torch
import torch.distributed as dist

from recis.framework.trainer import Trainer, TrainingArguments
from recis.hooks.hook import Hook
from recis.io.orc_dataset import OrcDataset
from recis.nn import EmbeddingEngine, EmbeddingOption
from recis.nn.initializers import TruncNormalInitializer
from recis.nn.modules.hashtable import filter_out_sparse_param
from recis.optim import SparseAdamW

BATCH = 16


def make_data(path: str, files: int = 4, rows: int = 120) -> None:
    """Deterministic ORC files: label, 2 one-id columns, one id list."""
    os.makedirs(path, exist_ok=True)
    rng = np.random.default_rng(5)
    for f in range(files):
        lens = rng.integers(0, 6, rows)
        seq = [list(rng.integers(0, 300, n)) for n in lens]
        table = pa.table({
            "label": pa.array([[float(x)] for x in rng.integers(0, 2, rows)], type=pa.list_(pa.float64())),
            "user": pa.array([[int(x)] for x in rng.integers(0, 80, rows)], type=pa.list_(pa.int64())),
            "item": pa.array([[int(x)] for x in rng.integers(0, 200, rows)], type=pa.list_(pa.int64())),
            "hist": pa.array(seq, type=pa.list_(pa.int64())),
        })
        orc.write_table(table, os.path.join(path, f"part-{f}.orc"))


class Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        init = TruncNormalInitializer(std=0.05)
        self.engine = EmbeddingEngine({
            "user": EmbeddingOption(embedding_dim=8, shared_name="user", initializer=init),
            "item": EmbeddingOption(embedding_dim=8, shared_name="item", initializer=init),
            "hist": EmbeddingOption(embedding_dim=8, shared_name="item", combiner="mean", initializer=init),
            "hist_tile": EmbeddingOption(embedding_dim=8, shared_name="item", combiner="tile",
                                         combiner_kwargs={"tile_len": 2}, initializer=init),
        })
        self.mlp = torch.nn.Sequential(torch.nn.Linear(8 * 5, 16), torch.nn.ReLU(), torch.nn.Dropout(0.2),
                                       torch.nn.Linear(16, 1))

    def forward(self, batch):
        d = dict(batch[0])
        d["hist_tile"] = d["hist"]
        label = d.pop("label").reshape(-1)
        e = self.engine(d)
        x = torch.cat([e["user"], e["item"], e["hist"], e["hist_tile"].flatten(1)], 1)
        return torch.nn.functional.binary_cross_entropy_with_logits(self.mlp(x).reshape(-1), label)


class KillAt(Hook):
    def __init__(self, step: int):
        self.step = step

    def after_step(self, metrics=None, global_step=0):
        # the checkpoint manager saves after the hooks; kill after the step's update instead
        if int(global_step) + 1 == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def dump(model, sparse_opt, dense_opt, path: str) -> None:
    tables = {}
    for name, impl in filter_out_sparse_param(model).items():
        st = impl.state_dict()
        tables[name] = {int(i): {k: v[n].clone() for k, v in st.items() if k != "id"}
                        for n, i in enumerate(st["id"].tolist())}
    torch.save({"tables": tables, "dense": {k: v.clone() for k, v in model.mlp.state_dict().items()},
                "sparse_opt": sparse_opt.state_dict(), "dense_opt": dense_opt.state_dict()}, path)


def run(trainer, args, model, sparse_opt, dense_opt, rank: int, world: int, kill_during=(".ckpt", 0)) -> None:
    """The end of every worker: the kill switches (``args.kill_at_step``; ``kill_during =
    (prefix, step)``: SIGKILL while the ``<prefix>_<step>`` directory's dense files are being
    written), train or (``args.steps == 0``) only restore, dump (``RANK`` -> the rank), tear
    down the process group."""
    if args.kill_at_step:
        trainer.add_hook(KillAt(args.kill_at_step))
    prefix, kill_step = kill_during
    if kill_step:
        from recis_compat.framework import checkpoint_manager as cm
        real = cm.Saver.save_dense_params

        def dying_save_dense(self, ckpt_path, state):
            if os.path.basename(ckpt_path).startswith(f"{prefix}_{kill_step}."):
                os.kill(os.getpid(), signal.SIGKILL)
            return real(self, ckpt_path, state)
        cm.Saver.save_dense_params = dying_save_dense
    if args.steps == 0:
        trainer.restore()
    else:
        trainer.train()
    if args.dump:
        dump(model, sparse_opt, dense_opt, args.dump.replace("RANK", str(rank)))
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--kill-at-step", type=int, default=0)
    ap.add_argument("--kill-during-save", type=int, default=0)
    ap.add_argument("--model-bank", default=None)
    ap.add_argument("--dump", default=None)
    ap.add_argument("--steps", type=int, default=None)
    args = ap.parse_args()
    rank, world = 0, 1
    if "RANK" in os.environ:
        from recis_compat.backend.sharding import init_process_group
        init_process_group("cpu", timeout_s=120)
        rank, world = dist.get_rank(), dist.get_world_size()
    ds = OrcDataset(BATCH, worker_idx=rank, worker_num=world, read_threads_num=1, prefetch=1,
                    drop_remainder=False, save_interval=1)
    ds.add_paths(sorted(glob.glob(os.path.join(args.data, "*.orc"))))
    ds.fixedlen_feature("label", [0.0])
    for c in ("user", "item", "hist"):
        ds.varlen_feature(c)
    model = Model()
    sparse_opt = SparseAdamW(filter_out_sparse_param(model), lr=0.02)
    dense_opt = torch.optim.AdamW(model.parameters(), lr=0.01)
    sched = torch.optim.lr_scheduler.StepLR(dense_opt, step_size=4, gamma=0.5)
    bank = [{"path": args.model_bank, "exclude": ["io_state"]}] if args.model_bank else None
    targs = TrainingArguments(output_dir=args.out, save_steps=4, log_steps=5, max_to_keep=3,
                              gradient_accumulation_steps=2, save_concurrency_per_rank=2, model_bank=bank,
                              train_steps=args.steps)
    trainer = Trainer(model=model, args=targs, train_dataset=ds, dense_optimizers=(dense_opt, sched),
                      sparse_optimizer=sparse_opt)
    run(trainer, args, model, sparse_opt, dense_opt, rank, world,
        kill_during=(".ckpt", args.kill_during_save))


if __name__ == "__main__":
    main()
