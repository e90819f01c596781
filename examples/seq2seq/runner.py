"""seq2seq: next-behaviour prediction over user behaviour sequences with RecIS's Trainer.

Launch with torchrun (see run.sh)::

    torchrun --nproc_per_node=1 runner.py --data_paths=./data/ --batch_size=16 \
        --seq_len=64 --emb_size=128 --hidden_size=128 --num_layers=2 --nhead=4 \
        --dim_feedforward=256 --train_steps=50

Flags: ``LRConfig``, ``TrainingArguments``, ``dataset.IOArgs``, ``transformer.ModelConfig``
(RecIS's defaults: seq_len 1024, hidden 1024, 8 layers) and ``--device`` (``cpu`` by default,
gloo; ``cuda`` as in RecIS). Rank 0 records profiler traces into the output directory.
"""
from __future__ import annotations

import os
import random
from dataclasses import dataclass
from multiprocessing import cpu_count

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from dataset import IOArgs, get_dataset
from seq2seq_model import ModelConfig, Seq2SeqModel
from torch.optim import AdamW

from recis.framework.trainer import Trainer, TrainingArguments
from recis.hooks import ProfilerHook
from recis.nn.modules.hashtable import filter_out_sparse_param
from recis.optim import SparseAdamW
from recis.utils.logger import Logger
from recis.utils.parser import ArgumentParser

logger = Logger(__name__)


@dataclass
class LRConfig:
    """Learning rates of the dense (AdamW) and sparse (SparseAdamW) optimizers."""

    dense_lr: float = 0.001
    sparse_lr: float = 0.001


@dataclass
class DeviceArgs:
    """Device and seed."""

    device: str = "cpu"             # "cpu" or "cuda"
    seed: int = 42


def parse_args():
    parser = ArgumentParser(description="RecIS seq2seq example")
    parser.add_arguments(LRConfig, dest="lr")
    parser.add_arguments(TrainingArguments, dest="train_config")
    parser.add_arguments(IOArgs, dest="io_args")
    parser.add_arguments(ModelConfig, dest="model_config")
    parser.add_arguments(DeviceArgs, dest="run")
    return parser.parse_args()


def get_optimizer(model: nn.Module, dense_lr: float, sparse_lr: float):
    sparse_param = filter_out_sparse_param(model)
    dense_opt = AdamW(model.parameters(), lr=dense_lr)
    sparse_opt = SparseAdamW(sparse_param, lr=sparse_lr)
    return dense_opt, sparse_opt


def train(args) -> None:
    device = args.run.device
    model = Seq2SeqModel(args.model_config, device)
    logger.info(str(model))
    train_dataset = get_dataset(args.io_args, device)
    dense_opt, sparse_opt = get_optimizer(model, args.lr.dense_lr, args.lr.sparse_lr)
    model = model.to(device)

    trainer = Trainer(
        model=model,
        args=args.train_config,
        train_dataset=train_dataset,
        dense_optimizers=(dense_opt, None),
        sparse_optimizer=sparse_opt,
    )
    # timeline for debugging, on the first rank only
    if int(os.environ.get("RANK", "0")) == 0:
        trainer.add_hooks([ProfilerHook(wait=1, warmup=100, active=1, repeat=2,
                                        output_dir=args.train_config.output_dir)])
    trainer.train()


def set_num_threads(device: str) -> None:
    """Threads per process: ``OMP_NUM_THREADS`` when set, else the cores shared out between
    the local ranks (RecIS uses cpu_count() // 16 on its GPU hosts)."""
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    num = int(os.environ.get("OMP_NUM_THREADS", "0")) or max(1, cpu_count() // local_world)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS"):
        os.environ[var] = str(num)
    torch.set_num_interop_threads(num)
    torch.set_num_threads(num)
    if device.startswith("cuda"):
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))


def set_seed(seed: int) -> None:
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    np.random.seed(seed)
    random.seed(seed)


if __name__ == "__main__":
    args = parse_args()
    set_num_threads(args.run.device)
    set_seed(args.run.seed)
    dist.init_process_group()       # torchrun's env; gloo serves CPU tensors
    logger.info(f"Input args : {args}")
    train(args)
    dist.destroy_process_group()
