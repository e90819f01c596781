"""``recis.io.parquet_dataset.ParquetDataset``: OrcDataset's API and guarantees over Parquet.

Usage (as OrcDataset; a RecIS script switches by changing the class)::

    ds = ParquetDataset(1024, read_threads_num=2, prefetch=1, transform_fn=lambda b: b[0])
    ds.add_path("/data/criteo/train")          # directories are walked for *.parquet
    ds.fixedlen_feature("label", [0.0])        # scalar double column -> float32 [B, 1]
    ds.varlen_feature("C1")                    # scalar int64 -> RaggedTensor, one id per row
    ds.varlen_feature("C2", hash_type="farm")  # scalar string -> hashed in the reader
    ds.varlen_feature("hist_ids")              # list<int64> -> RaggedTensor as with ORC
    it = iter(ds)
    is_end, batch = next(it)                   # (True, None) forever after the last batch

Same constructor arguments, methods and batch structure as OrcDataset (:mod:`.orc_dataset`,
:mod:`.dataset_base`): file sharding by ``worker_idx``/``worker_num`` and DataLoader sub-worker,
``read_threads_num`` threads reading row groups in a fixed order, ``prefetch``, hashing in the
reader, exact IO state (a ParquetDataset state names file and row; it resumes a
ParquetDataset over the same files only). Parquet specifics are in :mod:`.parquet_reader`:
row groups are the read unit, and scalar columns are accepted as one-element features.
"""
from __future__ import annotations

from recis_compat.io import io_state
from recis_compat.io.file_dataset import FileDataset
from recis_compat.io.parquet_reader import PARQUET, PARQUET_FILES

__all__ = ["ParquetDataset"]


class ParquetDataset(FileDataset):
    """Read Parquet files into batches of ``[ {column: tensor | RaggedTensor | raw strings} ]``.

    Args: OrcDataset's (``batch_size, worker_idx=0, worker_num=1, read_threads_num=4,
    pack_threads_num=None, prefetch=1, is_compressed=False, drop_remainder=False,
    worker_slice_batch_num=None, shuffle=False, ragged_format=True, transform_fn=None,
    save_interval=100, dtype=torch.float32, device="cpu"``), with the same meanings;
    ``read_threads_num`` threads read row groups. ``is_compressed`` is RecIS's own batch
    compression (must be False); Parquet codecs (snappy, zstd, ...) are always read.

    Columns: list columns as OrcDataset, plus scalar int/float/bool/string columns as
    one-element features (fixedlen ``[B, 1]`` with the default for nulls; varlen rows of length
    1, empty for nulls). ``add_path`` walks directories for ``*.parquet``.
    """

    _format = PARQUET
    _files = PARQUET_FILES
    _state_format = io_state.PARQUET_FORMAT
