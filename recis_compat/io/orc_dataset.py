"""``recis.io.orc_dataset.OrcDataset``: batches from ORC files via pyarrow (RecIS 1.0; see COMPATIBILITY.md).

Usage (unchanged RecIS code)::

    ds = OrcDataset(1024, read_threads_num=2, prefetch=1, transform_fn=lambda b: b[0])
    ds.add_path("/data/train")                 # directories are walked for *.orc
    ds.fixedlen_feature("label", [0.0])        # -> float32 [B, 1]
    ds.varlen_feature("item_ids")              # -> RaggedTensor(int64 values, int32 offsets [B+1])
    ds.varlen_feature("tags", hash_type="farm", hash_bucket=100000)
    it = iter(ds)
    is_end, batch = next(it)                   # (True, None) forever after the last batch

Differences from RecIS are listed in :mod:`.dataset_base`, :mod:`.file_list` and COMPATIBILITY.md.
"""
from __future__ import annotations

import functools

import torch

from recis_compat.io import io_state
from recis_compat.io.column_convert import convert_record_batch
from recis_compat.io.dataset_base import DatasetBase
from recis_compat.io.dataset_config import build_column_specs
from recis_compat.io.file_list import check_path, discover, fingerprint, shard
from recis_compat.io.orc_reader import OrcStripeReader
from recis_compat.io.packer import pack

__all__ = ["OrcDataset"]

_NP_FLOAT = {torch.float16: "float16", torch.float32: "float32", torch.float64: "float64"}


class OrcDataset(DatasetBase):
    """Read ORC files into batches of ``[ {column: tensor | RaggedTensor | raw strings} ]``.

    Args (as RecIS): ``batch_size``; ``worker_idx``/``worker_num`` (file sharding across
    ranks); ``read_threads_num`` (parallel stripe readers; output order stays deterministic);
    ``pack_threads_num`` (accepted, unused); ``prefetch`` (batches buffered by a background
    thread; 0/None: none); ``is_compressed`` (must be False); ``drop_remainder``;
    ``worker_slice_batch_num`` (stored, unused); ``shuffle`` (file order, seed 10);
    ``ragged_format`` (False: sparse COO); ``transform_fn`` (callable or list);
    ``save_interval`` (falsy: no IO state); ``dtype`` (floating output type); ``device``
    (``"cpu" | "cuda" | "pin"``).
    """

    def __init__(self, batch_size, worker_idx=0, worker_num=1, read_threads_num=4,
                 pack_threads_num=None, prefetch=1, is_compressed=False, drop_remainder=False,
                 worker_slice_batch_num=None, shuffle=False, ragged_format=True,
                 transform_fn=None, save_interval=100, dtype=torch.float32, device="cpu"):
        assert not is_compressed, "OrcDataset not support compressed data yet."
        if dtype not in _NP_FLOAT:
            raise ValueError(f"OrcDataset dtype must be a floating torch dtype "
                             f"({list(_NP_FLOAT)}), got {dtype}")
        super().__init__(batch_size, worker_idx=worker_idx, worker_num=worker_num,
                         read_threads_num=read_threads_num, pack_threads_num=pack_threads_num,
                         prefetch=prefetch, is_compressed=is_compressed,
                         drop_remainder=drop_remainder,
                         worker_slice_batch_num=worker_slice_batch_num,
                         ragged_format=ragged_format, transform_fn=transform_fn,
                         save_interval=save_interval, dtype=dtype, device=device)
        self._shuffle = shuffle
        self._dir_sizes = []
        self._identity = None
        self._schema_reference = None  # the dataset's first file: column types are checked against it

    # ------------------------------------------------------------------ paths
    def add_path(self, file_path):
        """Add a directory (walked recursively for ``*.orc``, sorted) or a single ``.orc``
        file; ``FileNotFoundError`` if it does not exist."""
        self._paths.append(check_path(file_path))

    def add_paths(self, file_paths):
        """``add_path`` for each entry."""
        for p in file_paths:
            self.add_path(p)

    def get_dir_size(self):
        """Placeholder kept from RecIS: one 0 per added path."""
        self._dir_sizes = [0] * len(self._paths)
        return self._dir_sizes

    # ------------------------------------------------------------------ columns
    def varlen_feature(self, name, hash_type=None, hash_bucket=0, trans_int8=False):
        """Select a varlen column. ``hash_type`` ``"farm"``/``"murmur"`` hashes string elements
        to int64 (``hash_bucket`` 0: ``h & INT64_MAX``; >0: ``uint64(h) % hash_bucket``);
        ``trans_int8`` keeps string bytes as int8 with an extra offsets level. A repeated
        name is ignored entirely, hash settings included."""
        if name in self._select_column:
            return
        self._select_column.append(name)
        if hash_type:
            assert hash_type in ["farm", "murmur"], "hash_type must be farm / murmur"
            self.hash_features.append(name)
            self.hash_buckets.append(hash_bucket)
            self.hash_types.append(hash_type)
        elif trans_int8:
            self.hash_features.append(name)
            self.hash_buckets.append(hash_bucket)
            self.hash_types.append("no_hash")

    # ------------------------------------------------------------------ pipeline
    def _shard_path(self, sub_id, sub_num):
        files = discover(self._paths)
        self._schema_reference = files[0] if files else None
        self._shard_paths = shard(files, self._worker_idx, self._worker_num, sub_id, sub_num,
                                  self._shuffle)
        self._identity = io_state.ReaderIdentity(
            worker_idx=self._worker_idx, worker_num=self._worker_num, sub_id=sub_id,
            sub_num=sub_num, shuffle=bool(self._shuffle), files=len(self._shard_paths),
            fingerprint=fingerprint(self._shard_paths))

    def make_dataset_fn(self):
        """``fn(load_state) -> (iterable of PackedBatch, start state string)`` over the
        current shard (call after ``_shard_path``)."""
        files, identity = self._shard_paths, self._identity
        specs = build_column_specs(self._select_column, self._dense_column,
                                   self._dense_default_value, self.hash_features,
                                   self.hash_types, self.hash_buckets)
        if not specs:
            raise ValueError("OrcDataset: no column selected; call varlen_feature / "
                             "fixedlen_feature before iterating")
        float_dtype = _NP_FLOAT[self._dtype]
        convert = functools.partial(_convert, specs=specs, float_dtype=float_dtype)
        make_state = functools.partial(io_state.encode, identity)
        batch_size, drop, place = self._batch_size, self._drop_remainder, self._place
        threads, reference = self._read_threads_num, self._schema_reference

        def fn(load_state):
            start = (0, 0) if load_state is None else io_state.start_position(load_state,
                                                                              identity)
            reader = OrcStripeReader(files, specs, convert, threads, *start, reference=reference)
            return _Packed(reader, batch_size, drop, make_state, place), make_state(*start)

        return fn


def _convert(rb, path, location, specs, float_dtype):
    return convert_record_batch(rb, specs, path, location, float_dtype)


class _Packed:
    """Iterable of packed batches (a fresh reader pass per ``iter``)."""

    def __init__(self, reader, batch_size, drop, make_state, place):
        self._args = (reader, batch_size, drop, make_state, place)

    def __iter__(self):
        return pack(*self._args)
