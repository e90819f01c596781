"""Data and feature configuration of the dlrm example (recis API only).

Input: the Parquet splits ``<data_dir>/{train,val,test}/part-*.parquet`` that
``recis-compat criteo-to-parquet`` (or ``criteo-synth --format parquet``) writes, OneFlow's
DLRM layout: ``label`` int32, ``I1..I13`` int32 (``raw + 1``, missing -> 1; or float32 with
``--dense log``), ``C1..C26`` int64 ids (``mod_idx`` offsets per field, or 64-bit hashes).

``make_dataset`` reads them with ``ParquetDataset`` (scalar columns as one-element features;
files sharded by rank); ``transform_batch`` turns a batch into ``{"label": float32 [B, 1],
"dense": float32 [B, 13] (the model input: log(max(x, 0) + 1) of the plus1 integers, or the
log column as written), "C1".."C26": RaggedTensor [B, 1] int64}``. ``FeatureEngine`` selects
``C1..C26`` (``SelectField``); ``EmbeddingEngine`` embeds each in its own dynamic table
(dim ``embedding_vec_size``, sum combiner, OneFlow's init ``U(-sqrt(1/n), sqrt(1/n))`` with
``n`` the field's ``table_size_array`` entry).
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import pyarrow.parquet as pq
import torch

from recis.features.feature import Feature
from recis.features.op import SelectField
from recis.io.parquet_dataset import ParquetDataset
from recis.nn.initializers import UniformInitializer
from recis.nn.modules.embedding import EmbeddingOption

DENSE = [f"I{i}" for i in range(1, 14)]
SPARSE = [f"C{i}" for i in range(1, 27)]


def dense_is_log(files: Sequence[str]) -> bool:
    """True when the files hold ``--dense log`` float columns (the model then skips its log).
    ValueError naming the file when a Criteo column is missing or of another kind."""
    schema = pq.read_schema(files[0])
    names = set(schema.names)
    missing = [c for c in ["label"] + DENSE + SPARSE if c not in names]
    if missing:
        raise ValueError(f"{files[0]}: missing Criteo columns {missing[:5]} (expected label, I1..I13, C1..C26 as "
                         "criteo-to-parquet writes them)")
    t = schema.field("I1").type
    if str(t).startswith("int"):
        return False
    if str(t) in ("float", "double"):
        return True
    raise ValueError(f"{files[0]}: column I1 is {t}, expected int32 (plus1) or float32 (log)")


def make_transform(log_applied: bool):
    def transform_batch(batch_list):
        """``[dict]`` -> ``{"label", "dense", "C1".."C26"}`` (module docstring)."""
        b = batch_list[0]
        dense = torch.cat([b[n].to(torch.float32) for n in DENSE], 1)
        if not log_applied:
            dense = torch.log(dense.clamp_min(0.0) + 1.0)
        out = {"label": b["label"].to(torch.float32).reshape(-1, 1), "dense": dense}
        for c in SPARSE:
            out[c] = b[c]
        return out
    return transform_batch


def make_dataset(files: List[str], batch_size: int, rank: int = 0, world: int = 1, device: str = "cpu",
                 log_applied: Optional[bool] = None, threads: int = 1, drop_remainder: bool = True):
    """ParquetDataset over ``files`` (this rank's share by file), ``batch_size`` rows per batch."""
    if log_applied is None:
        log_applied = dense_is_log(files)
    ds = ParquetDataset(batch_size, worker_idx=rank, worker_num=world, read_threads_num=threads, prefetch=1,
                        drop_remainder=drop_remainder, transform_fn=make_transform(log_applied),
                        dtype=torch.float32, device=device, save_interval=1000)
    ds.add_paths(list(files))
    ds.fixedlen_feature("label", [0])
    for n in DENSE:
        ds.fixedlen_feature(n, [1])
    for c in SPARSE:
        ds.varlen_feature(c)
    return ds


def get_feature_conf():
    return [Feature(c).add_op(SelectField(c)) for c in SPARSE]


def get_embedding_conf(embedding_vec_size: int, table_size_array: Sequence[int], device: str = "cpu"):
    if len(table_size_array) != len(SPARSE):
        raise ValueError(f"--table_size_array needs {len(SPARSE)} sizes (C1..C26), got {len(table_size_array)}")
    conf = {}
    for c, n in zip(SPARSE, table_size_array):
        s = float(1.0 / int(n)) ** 0.5
        conf[c] = EmbeddingOption(embedding_dim=int(embedding_vec_size), shared_name=f"dlrm_{c}", combiner="sum",
                                  initializer=UniformInitializer(-s, s), device=torch.device(device))
    return conf
