"""Train the deepfm example with RecIS's Trainer (run with torchrun; see run.sh).

The only difference from RecIS's runner is device selection (``--device``, default cpu).
"""
from __future__ import annotations

import os
import random
import sys
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from recis.framework.trainer import Trainer, TrainingArguments  # noqa: E402
from recis.hooks import ProfilerHook  # noqa: E402
from recis.nn.modules.hashtable import filter_out_sparse_param  # noqa: E402
from recis.optim.sparse_adamw import SparseAdamW  # noqa: E402
from recis.utils.logger import Logger  # noqa: E402
from recis.utils.parser import ArgumentParser  # noqa: E402

from dataset import IOArgs, get_dataset  # noqa: E402
from deepfm_model import DeepFM  # noqa: E402

logger = Logger(__name__)


@dataclass
class LRConfig:
    sparse_lr: float = 0.001
    dense_lr: float = 0.001


@dataclass
class RunConfig:
    device: str = "cpu"
    profile: bool = False


def set_num_threads():
    n = max(1, (os.cpu_count() or 1) // int(os.environ.get("WORLD_SIZE", 1)))
    torch.set_num_threads(n)
    if RUN.device == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))


def set_seed(seed: int):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


if __name__ == "__main__":
    parser = ArgumentParser()
    parser.add_arguments(LRConfig, dest="lr")
    parser.add_arguments(TrainingArguments, dest="train_config")
    parser.add_arguments(IOArgs, dest="dataset")
    parser.add_arguments(RunConfig, dest="run")
    args = parser.parse_args()
    RUN = args.run
    set_num_threads()
    set_seed(42)
    dist.init_process_group(backend="nccl" if RUN.device == "cuda" else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    train_dataset = get_dataset(args.dataset, rank, world, RUN.device)
    model = DeepFM(RUN.device).to(RUN.device)
    sparse_params = filter_out_sparse_param(model)
    sparse_opt = SparseAdamW(sparse_params, lr=args.lr.sparse_lr)
    dense_opt = torch.optim.AdamW(model.parameters(), lr=args.lr.dense_lr)
    trainer = Trainer(model=model, args=args.train_config, train_dataset=train_dataset,
                      dense_optimizers=(dense_opt, None), sparse_optimizer=sparse_opt)
    if RUN.profile and rank == 0:
        trainer.add_hooks([ProfilerHook(wait=1, warmup=20, active=1, repeat=4,
                                        output_dir=args.train_config.output_dir)])
    trainer.train()
    logger.info(f"rank {rank}: done at global step {trainer.global_step}")
    dist.destroy_process_group()
