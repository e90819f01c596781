"""seq2seq input pipeline: ORC reader, per-feature sequence truncation, embedding options.

Every feature is cut (or padded with empty steps) to exactly ``seq_len`` steps, so the
``EmbeddingEngine`` returns ``[B, seq_len, emb_dim]`` per feature (mean over each step's ids).
The device of the reader output and of the tables is a parameter (RecIS: ``"cuda"``).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import torch
from feature_config import FEATURE_CONFIG, SEQ_LEN

from recis.features.feature import Feature
from recis.features.op import SelectField, SequenceTruncate
from recis.io.orc_dataset import OrcDataset
from recis.nn.initializers import TruncNormalInitializer
from recis.nn.modules.embedding import EmbeddingOption


@dataclass
class IOArgs:
    """Reader settings (``data_paths``: comma-separated files or directories)."""

    data_paths: str = "./data/"
    batch_size: int = 16
    thread_num: int = 1
    prefetch: int = 1
    drop_remainder: bool = True


def get_dataset(io_args: IOArgs, device: str = "cpu") -> OrcDataset:
    """The ORC reader of this rank (files are split over ``WORLD_SIZE`` ranks)."""
    worker_idx = int(os.environ.get("RANK", "0"))
    worker_num = int(os.environ.get("WORLD_SIZE", "1"))
    dataset = OrcDataset(
        io_args.batch_size,
        worker_idx=worker_idx,
        worker_num=worker_num,
        read_threads_num=io_args.thread_num,
        prefetch=io_args.prefetch,
        is_compressed=False,
        drop_remainder=io_args.drop_remainder,
        transform_fn=[lambda batch: batch[0]],
        dtype=torch.float32,
        device=device,
        save_interval=1000,
    )
    for path in io_args.data_paths.split(","):
        if path:
            dataset.add_path(path)
    for item in FEATURE_CONFIG:
        # hash type and bucket are passed positionally, as RecIS's script does
        dataset.varlen_feature(item["name"], item.get("hash_type"), item.get("hash_bucket_size", 0))
    return dataset


def get_feature_conf(seq_len: int = SEQ_LEN) -> list:
    """One ``SequenceTruncate(n_dims=3)`` per feature: keep the first ``seq_len`` steps."""
    return [
        Feature(item["name"])
        .add_op(SelectField(item["name"]))
        .add_op(SequenceTruncate(seq_len=seq_len, truncate=True, truncate_side="right",
                                 check_length=False, n_dims=3, dtype=torch.int64))
        for item in FEATURE_CONFIG
    ]


def get_embedding_conf(emb_dim: Optional[int] = None, device: str = "cpu") -> dict:
    """Mean-combined options; with equal dims they share one physical table (4 children)."""
    return {
        item["name"]: EmbeddingOption(
            embedding_dim=emb_dim or item["emb_dim"],
            shared_name=item.get("shard_name", item["name"]),
            combiner="mean",
            initializer=TruncNormalInitializer(std=0.001),
            device=torch.device(device),
        )
        for item in FEATURE_CONFIG
    }
