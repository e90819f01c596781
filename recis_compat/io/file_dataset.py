"""``FileDataset``: what OrcDataset and ParquetDataset share (RecIS 1.0's OrcDataset API).

A subclass names its file format (:class:`~.chunk_reader.FileFormat`), which files a directory
walk keeps (:class:`~.file_list.FileKind`) and its IO-state format; everything else is here:
paths, column selection with hashing in the reader, file sharding by worker and DataLoader
sub-worker, the threaded ordered reader (:mod:`.chunk_reader`), packing (:mod:`.packer`) and
exact IO-state positions (:mod:`.io_state`). The stages after packing (prefetch, state, map,
filter, end marker) are :class:`~.dataset_base.DatasetBase`'s.
"""
from __future__ import annotations

import functools

import torch

from recis_compat.io import io_state
from recis_compat.io.chunk_reader import ChunkReader, FileFormat
from recis_compat.io.column_convert import convert_record_batch
from recis_compat.io.dataset_base import DatasetBase
from recis_compat.io.dataset_config import build_column_specs
from recis_compat.io.file_list import FileKind, check_path, discover, fingerprint, shard
from recis_compat.io.packer import pack

__all__ = ["FileDataset"]

_NP_FLOAT = {torch.float16: "float16", torch.float32: "float32", torch.float64: "float64"}


class FileDataset(DatasetBase):
    """Batches of ``[ {column: tensor | RaggedTensor | raw strings} ]`` from a list of files.

    Subclasses set ``_format`` (a :class:`~.chunk_reader.FileFormat`), ``_files`` (a
    :class:`~.file_list.FileKind`) and ``_state_format`` (an :mod:`.io_state` format name).
    Constructor arguments: OrcDataset's (see :mod:`.orc_dataset`).
    """

    _format: FileFormat
    _files: FileKind
    _state_format: str

    def __init__(self, batch_size, worker_idx=0, worker_num=1, read_threads_num=4,
                 pack_threads_num=None, prefetch=1, is_compressed=False, drop_remainder=False,
                 worker_slice_batch_num=None, shuffle=False, ragged_format=True,
                 transform_fn=None, save_interval=100, dtype=torch.float32, device="cpu"):
        name = type(self).__name__
        assert not is_compressed, f"{name} not support compressed data yet."
        if dtype not in _NP_FLOAT:
            raise ValueError(f"{name} dtype must be a floating torch dtype "
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
        """Add a directory (walked recursively for the format's suffix, sorted) or a single
        file; ``FileNotFoundError`` if it does not exist."""
        self._paths.append(check_path(file_path, self._files))

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
        files = discover(self._paths, self._files)
        self._schema_reference = files[0] if files else None
        self._shard_paths = shard(files, self._worker_idx, self._worker_num, sub_id, sub_num,
                                  self._shuffle)
        self._identity = io_state.ReaderIdentity(
            worker_idx=self._worker_idx, worker_num=self._worker_num, sub_id=sub_id,
            sub_num=sub_num, shuffle=bool(self._shuffle), files=len(self._shard_paths),
            fingerprint=fingerprint(self._shard_paths), format=self._state_format)

    def make_dataset_fn(self):
        """``fn(load_state) -> (iterable of PackedBatch, start state string)`` over the
        current shard (call after ``_shard_path``)."""
        files, identity, fmt = self._shard_paths, self._identity, self._format
        specs = build_column_specs(self._select_column, self._dense_column,
                                   self._dense_default_value, self.hash_features,
                                   self.hash_types, self.hash_buckets)
        if not specs:
            raise ValueError(f"{type(self).__name__}: no column selected; call varlen_feature / "
                             f"fixedlen_feature before iterating")
        convert = functools.partial(_convert, specs=specs, float_dtype=_NP_FLOAT[self._dtype],
                                    rules=fmt.rules)
        make_state = functools.partial(io_state.encode, identity)
        batch_size, drop, place = self._batch_size, self._drop_remainder, self._place
        threads, reference = self._read_threads_num, self._schema_reference

        def fn(load_state):
            start = (0, 0) if load_state is None else io_state.start_position(load_state,
                                                                              identity)
            reader = ChunkReader(fmt, files, specs, convert, threads, *start,
                                 reference=reference)
            packed = _Packed(reader, batch_size, drop, make_state, place, fmt.rules.error)
            return packed, make_state(*start)

        return fn


def _convert(rb, path, location, specs, float_dtype, rules):
    return convert_record_batch(rb, specs, path, location, float_dtype, rules)


class _Packed:
    """Iterable of packed batches (a fresh reader pass per ``iter``)."""

    def __init__(self, reader, batch_size, drop, make_state, place, error):
        self._args = (reader, batch_size, drop, make_state, place, error)

    def __iter__(self):
        return pack(*self._args)
