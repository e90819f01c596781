"""Data and feature configuration of the deepfm example (RecIS API only).

``get_dataset`` reads the ORC files with ``OrcDataset``; ``transform_batch`` maps every
categorical column ``cN`` to ``cN_emb`` and ``cN_bias`` (the same RaggedTensor); numeric columns
pass through ``FeatureEngine`` (``SelectField``) and are turned dense by ``EmbeddingEngine``.
"""
from __future__ import annotations

import glob
import os
from dataclasses import dataclass

import torch

from recis.features.feature import Feature
from recis.features.op import SelectField
from recis.io.orc_dataset import OrcDataset
from recis.nn.initializers import TruncNormalInitializer
from recis.nn.modules.embedding import EmbeddingOption

from feature_config import CATEGORICAL, EMB_DIM, NUMERIC


@dataclass
class IOArgs:
    data_paths: str = "./data/"
    batch_size: int = 1000
    thread_num: int = 1
    prefetch: int = 1
    drop_remainder: bool = True
    # the files to read: a glob under data_paths (e.g. "part-[0-6].orc" to hold part-7 out)
    file_pattern: str = "*.orc"


def transform_batch(batch_list):
    """``[dict]`` -> dict: ``cN`` becomes ``cN_emb`` and ``cN_bias``; label and numerics kept."""
    batch = batch_list[0]
    out = {"label": batch["label"]}
    for n in NUMERIC:
        out[n] = batch[n]
    for c in CATEGORICAL:
        out[c + "_emb"] = batch[c]
        out[c + "_bias"] = batch[c]
    return out


def get_dataset(io_args: IOArgs, worker_idx: int = 0, worker_num: int = 1, device: str = "cpu", files=None):
    """OrcDataset over ``files`` (default: ``data_paths/file_pattern``)."""
    files = files if files is not None else sorted(glob.glob(os.path.join(io_args.data_paths, io_args.file_pattern)))
    if not files:
        raise FileNotFoundError(f"no ORC files match {os.path.join(io_args.data_paths, io_args.file_pattern)}")
    ds = OrcDataset(io_args.batch_size, worker_idx=worker_idx, worker_num=worker_num,
                    read_threads_num=io_args.thread_num, prefetch=io_args.prefetch, is_compressed=False,
                    drop_remainder=io_args.drop_remainder, transform_fn=transform_batch,
                    dtype=torch.float32, device=device, save_interval=1000)
    ds.add_paths(files)
    ds.fixedlen_feature("label", [0.0])
    for n in NUMERIC + CATEGORICAL:
        ds.varlen_feature(n)
    return ds


def get_feature_conf():
    feats = [Feature(n).add_op(SelectField(n, dim=1)) for n in NUMERIC]
    for c in CATEGORICAL:
        feats.append(Feature(c + "_emb").add_op(SelectField(c + "_emb")))
        feats.append(Feature(c + "_bias").add_op(SelectField(c + "_bias")))
    return feats


def get_embedding_conf(device: str = "cpu"):
    conf = {}
    for c in CATEGORICAL:
        for suffix, dim in (("_emb", EMB_DIM), ("_bias", 1)):
            conf[c + suffix] = EmbeddingOption(embedding_dim=dim, shared_name=c + suffix, combiner="sum",
                                               initializer=TruncNormalInitializer(std=0.001),
                                               device=torch.device(device))
    return conf
