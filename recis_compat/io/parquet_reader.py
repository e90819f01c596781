"""Parquet behind the :class:`~.chunk_reader.FileFormat` interface: read units are row groups.

Files are opened with ``pyarrow.parquet.ParquetFile`` once per pass (footer parsed once); each
row group is read by a reader thread through its own ``ParquetFile`` built on that parsed
footer (``metadata=``), so threads share no reader object and no file is loaded whole: at most
``read_threads_num + 1`` row groups are decoded or buffered at a time (:mod:`.chunk_reader`).
Row counts per row group come from the footer, so a resume finds its row group without reading
data.

Column rules: :data:`PARQUET_RULES`, RecIS's list-column rules (:mod:`.column_convert`) plus
plain scalar columns (int, float, bool, string/binary, dictionary-encoded too) read as
one-element rows, Criteo's natural layout: fixedlen gives ``[B, 1]`` (a null takes the default),
varlen gives length-1 rows (a null is an empty row).
"""
from __future__ import annotations

import logging
from typing import List

import pyarrow as pa
import pyarrow.parquet as pq

from recis_compat.io.chunk_reader import FileFormat
from recis_compat.io.column_convert import ReadRules
from recis_compat.io.errors import ParquetDataError, ParquetReadError, where
from recis_compat.io.file_list import FileKind

__all__ = ["ParquetFormat", "PARQUET", "PARQUET_RULES", "PARQUET_FILES", "open_parquet"]

logger = logging.getLogger(__name__)

PARQUET_RULES = ReadRules("ParquetDataset", ParquetDataError, scalars=True)
PARQUET_FILES = FileKind("ParquetDataset", "Parquet", ".parquet")


def open_parquet(path: str, metadata=None) -> pq.ParquetFile:
    """Open a Parquet file; failures become :class:`ParquetReadError` (or ``PermissionError`` /
    ``FileNotFoundError``) naming the file."""
    try:
        return pq.ParquetFile(path, metadata=metadata)
    except (PermissionError, FileNotFoundError, IsADirectoryError) as e:
        raise type(e)(f"cannot open Parquet {where(path)}: {e}") from e
    except (pa.ArrowException, OSError, ValueError) as e:
        raise ParquetReadError(f"cannot read Parquet {where(path)} (not Parquet, corrupt or "
                               f"truncated?): {e}") from e


def _one_chunk(col: pa.ChunkedArray) -> pa.Array:
    if col.num_chunks == 1:
        return col.chunk(0)
    if col.num_chunks == 0:
        return pa.array([], type=col.type)
    return pa.concat_arrays(col.chunks)


class ParquetFormat(FileFormat):
    """Parquet files read row group by row group with ``pyarrow.parquet`` (module docstring)."""

    kind = "Parquet"
    unit = "row group"
    rules = PARQUET_RULES
    logger = logger

    def open(self, path: str) -> pq.ParquetFile:
        return open_parquet(path)

    def schema(self, handle: pq.ParquetFile) -> pa.Schema:
        return handle.schema_arrow

    def num_units(self, handle: pq.ParquetFile) -> int:
        return handle.metadata.num_row_groups

    def unit_rows(self, handle, path: str, unit: int, columns: List[str]) -> int:
        return handle.metadata.row_group(unit).num_rows

    def read_unit(self, handle, path: str, unit: int, columns: List[str]) -> pa.RecordBatch:
        f = open_parquet(path, metadata=handle.metadata)
        try:
            table = f.read_row_group(unit, columns=columns, use_threads=False)
        except (pa.ArrowException, OSError, ValueError) as e:
            raise ParquetReadError(f"cannot decode row group {unit} of Parquet {where(path)} "
                                   f"(corrupt or truncated?): {e}") from e
        finally:
            f.close()
        return pa.RecordBatch.from_arrays([_one_chunk(table.column(c)) for c in columns],
                                          names=columns)


PARQUET = ParquetFormat()
