"""Data and feature configuration of the deepfm_criteo example (recis API only).

Input: the Parquet splits ``<data_dir>/{train,val,test}/part-*.parquet`` in the
``criteo-to-parquet`` layout with integer dense columns (``--dense plus1``: ``I1..I13`` int32
``raw + 1``, missing -> 1) and int64 ``C1..C26`` ids. OneFlow's DeepFM embeds all 39 fields
(its criteo_x4 data comes from FuxiCTR, which turns each integer into a bucket id): here
``transform_batch`` does the same bucketing in the reader's transform, ``raw > 2 ->
floor(log(raw) ** 2)``, else ``raw`` (missing -> 0, Criteo's -1 stays -1), so every field is a
categorical feature. Each field ``f`` feeds two embedded features, as OneFlow's two-column
tables: ``f_emb`` (dim ``embedding_vec_size``: FM second order and DNN input) and ``f_lr``
(dim 1: first order), each its own dynamic table, ``N(0, 1e-4)`` init as OneFlow's.

Batches after ``transform_batch``: ``label`` float32 ``[B, 1]``; ``<f>_emb`` and ``<f>_lr``
RaggedTensor ``[B, 1]`` int64 (the same ids) for the 39 fields ``I1..I13, C1..C26``.
"""
from __future__ import annotations

from typing import List

import pyarrow.parquet as pq
import torch

from recis.features.feature import Feature
from recis.features.op import SelectField
from recis.io.parquet_dataset import ParquetDataset
from recis.nn.initializers import NormalInitializer
from recis.nn.modules.embedding import EmbeddingOption
from recis.ragged.tensor import RaggedTensor

DENSE = [f"I{i}" for i in range(1, 14)]
SPARSE = [f"C{i}" for i in range(1, 27)]
FIELDS = DENSE + SPARSE


def check_files(files: List[str]) -> None:
    """ValueError naming the file unless it holds label, integer I1..I13 and C1..C26."""
    schema = pq.read_schema(files[0])
    missing = [c for c in ["label"] + FIELDS if c not in schema.names]
    if missing:
        raise ValueError(f"{files[0]}: missing Criteo columns {missing[:5]} (expected label, I1..I13, C1..C26 as "
                         "criteo-to-parquet writes them)")
    t = str(schema.field("I1").type)
    if not t.startswith("int"):
        raise ValueError(f"{files[0]}: column I1 is {t}; deepfm_criteo embeds I1..I13 as bucket ids and needs the "
                         "integer columns of `criteo-to-parquet --dense plus1` (the default)")


def bucket_ids(plus1: torch.Tensor) -> torch.Tensor:
    """FuxiCTR's integer bucketing of ``raw = plus1 - 1``: ``floor(log(raw) ** 2)`` above 2, else
    ``raw``; int32/int64 ``[B, 1]`` -> int64 ``[B]``."""
    raw = plus1.reshape(-1).to(torch.int64) - 1
    logged = torch.floor(torch.log(raw.clamp_min(3).to(torch.float64)) ** 2).to(torch.int64)
    return torch.where(raw > 2, logged, raw)


def transform_batch(batch_list):
    """``[dict]`` -> ``{"label", "<f>_emb", "<f>_lr"}`` (module docstring)."""
    b = batch_list[0]
    out = {"label": b["label"].to(torch.float32).reshape(-1, 1)}
    for f in DENSE:
        ids = bucket_ids(b[f])
        rt = RaggedTensor(ids, [torch.arange(ids.numel() + 1, dtype=b[SPARSE[0]].offsets()[0].dtype)])
        out[f + "_emb"], out[f + "_lr"] = rt, rt
    for f in SPARSE:
        out[f + "_emb"], out[f + "_lr"] = b[f], b[f]
    return out


def make_dataset(files: List[str], batch_size: int, rank: int = 0, world: int = 1, device: str = "cpu",
                 threads: int = 1, drop_remainder: bool = True):
    """ParquetDataset over ``files`` (this rank's share by file), ``batch_size`` rows per batch."""
    ds = ParquetDataset(batch_size, worker_idx=rank, worker_num=world, read_threads_num=threads, prefetch=1,
                        drop_remainder=drop_remainder, transform_fn=transform_batch, dtype=torch.float32,
                        device=device, save_interval=1000)
    ds.add_paths(list(files))
    ds.fixedlen_feature("label", [0])
    for f in DENSE:
        ds.fixedlen_feature(f, [1])
    for f in SPARSE:
        ds.varlen_feature(f)
    return ds


def get_feature_conf():
    feats = []
    for f in FIELDS:
        feats.append(Feature(f + "_emb").add_op(SelectField(f + "_emb")))
        feats.append(Feature(f + "_lr").add_op(SelectField(f + "_lr")))
    return feats


def get_embedding_conf(embedding_vec_size: int, device: str = "cpu"):
    conf = {}
    for f in FIELDS:
        for suffix, dim in (("_emb", int(embedding_vec_size)), ("_lr", 1)):
            conf[f + suffix] = EmbeddingOption(embedding_dim=dim, shared_name=f"deepfm_{f}{suffix}", combiner="sum",
                                               initializer=NormalInitializer(mean=0.0, std=1e-4),
                                               device=torch.device(device))
    return conf
