"""Worker for the delta-checkpoint tests (tests/e2e/test_delta_checkpoints.py): the model, data and
dump of tests/e2e/workers/resume_worker.py, trained by ``Trainer`` with full checkpoints every
``--save-steps`` and delta checkpoints every ``--delta-steps``.

``python delta_worker.py --data DIR --out DIR [--kill-at-step N | --kill-during-delta N]
[--save-steps N] [--delta-steps M] [--accum K] [--steps 0] [--dump FILE]`` (also under ``torchrun``; ``RANK`` in ``--dump`` becomes the rank).
``--kill-at-step`` SIGKILLs the process after that global step's update (before its save);
``--kill-during-delta`` SIGKILLs it while the delta of that step is being written (after the
table shards, before the dense files). ``--steps 0`` only restores (the latest chain) and dumps.
"""
from __future__ import annotations

import argparse
import glob
import os
import pathlib
import sys

import torch.distributed as dist

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "e2e" / "workers"))
from resume_worker import BATCH, Model, run  # noqa: E402  (tests/e2e/workers/resume_worker.py)

from recis.framework.trainer import Trainer, TrainingArguments  # noqa: E402
from recis.io.orc_dataset import OrcDataset  # noqa: E402
from recis.nn.modules.hashtable import filter_out_sparse_param  # noqa: E402
from recis.optim import SparseAdamW  # noqa: E402

import torch  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--save-steps", type=int, default=8)
    ap.add_argument("--delta-steps", type=int, default=2)
    ap.add_argument("--accum", type=int, default=2)
    ap.add_argument("--kill-at-step", type=int, default=0)
    ap.add_argument("--kill-during-delta", type=int, default=0)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--dump", default=None)
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
    targs = TrainingArguments(output_dir=args.out, save_steps=args.save_steps, delta_save_steps=args.delta_steps,
                              log_steps=5, max_to_keep=3, gradient_accumulation_steps=args.accum,
                              save_concurrency_per_rank=2, train_steps=args.steps)
    trainer = Trainer(model=model, args=targs, train_dataset=ds, dense_optimizers=(dense_opt, sched),
                      sparse_optimizer=sparse_opt)
    run(trainer, args, model, sparse_opt, dense_opt, rank, world, kill_during=(".delta", args.kill_during_delta))

if __name__ == "__main__":
    main()
