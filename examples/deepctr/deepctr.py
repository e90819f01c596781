"""deepctr: a CTR model over 8 features (sum / tile / mean embeddings, a feature cross) trained
by RecIS's Trainer.

Launch with torchrun (see run.sh)::

    torchrun --nproc_per_node=1 deepctr.py --data_paths=./fake_data/ --train_steps=100

Every ``TrainingArguments`` field is a flag (``--output_dir``, ``--log_steps``, ...), as are the
reader settings of ``dataset.IOArgs`` and ``RunArgs`` below. Defaults follow RecIS's script
except the batch size (64 instead of 1024, for a CPU) and the device: ``--device=cpu`` (the
default) runs everything on the CPU with gloo; ``--device=cuda`` is RecIS's setting.
"""
from __future__ import annotations

import os
import random
from dataclasses import dataclass
from multiprocessing import cpu_count

import numpy as np
import torch
import torch.distributed as dist
from dataset import IOArgs, get_dataset
from model import DeepCTR
from torch.optim import AdamW

from recis.framework.trainer import Trainer, TrainingArguments
from recis.nn.modules.hashtable import filter_out_sparse_param
from recis.optim import SparseAdamWTF
from recis.utils.logger import Logger
from recis.utils.parser import ArgumentParser

logger = Logger(__name__)


@dataclass
class RunArgs:
    """Device, learning rates and seed."""

    device: str = "cpu"         # "cpu" or "cuda"
    dense_lr: float = 0.001
    sparse_lr: float = 0.001
    seed: int = 42


DEFAULT_TRAIN_CONFIG = TrainingArguments(
    gradient_accumulation_steps=1,
    output_dir="./ckpt/",
    model_bank=None,
    log_steps=10,
    train_steps=100,
    train_epoch=1,
    eval_steps=None,
    save_steps=1000,
    max_to_keep=3,
    save_concurrency_per_rank=2,
)


def parse_args():
    parser = ArgumentParser(description="RecIS deepctr example")
    parser.add_arguments(RunArgs, dest="run")
    parser.add_arguments(TrainingArguments, dest="train_config", default=DEFAULT_TRAIN_CONFIG)
    parser.add_arguments(IOArgs, dest="io_args")
    return parser.parse_args()


def train(args) -> None:
    device = args.run.device
    model = DeepCTR(device)
    train_dataset = get_dataset(args.io_args, device)
    logger.info(str(model))

    sparse_params = filter_out_sparse_param(model)
    sparse_optim = SparseAdamWTF(sparse_params, lr=args.run.sparse_lr)
    opt = AdamW(params=model.parameters(), lr=args.run.dense_lr)

    model = model.to(device)
    trainer = Trainer(
        model=model,
        args=args.train_config,
        train_dataset=train_dataset,
        dense_optimizers=(opt, None),
        sparse_optimizer=sparse_optim,
        data_to_cuda=False,
    )
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
