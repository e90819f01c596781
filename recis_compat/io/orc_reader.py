"""ORC behind the :class:`~.chunk_reader.FileFormat` interface: read units are stripes.

:class:`OrcStripeReader` is :class:`~.chunk_reader.ChunkReader` over ORC files (threaded,
ordered: see :mod:`.chunk_reader`). Every file is opened anew by each stripe read, so reader
threads share no pyarrow object.
"""
from __future__ import annotations

import logging
from typing import List, Sequence

import pyarrow as pa
import pyarrow.orc as orc

from recis_compat.io.chunk_reader import Chunk, ChunkReader, Converter, FileFormat
from recis_compat.io.column_convert import ORC_RULES
from recis_compat.io.dataset_config import ColumnSpec
from recis_compat.io.errors import OrcReadError, where
from recis_compat.io.file_list import DataFile

__all__ = ["Chunk", "OrcFormat", "OrcStripeReader", "open_orc", "ORC"]

logger = logging.getLogger(__name__)


def open_orc(path: str) -> orc.ORCFile:
    """Open an ORC file; failures become :class:`OrcReadError` (or ``PermissionError`` /
    ``FileNotFoundError``) naming the file."""
    try:
        return orc.ORCFile(path)
    except (PermissionError, FileNotFoundError, IsADirectoryError) as e:
        raise type(e)(f"cannot open ORC {where(path)}: {e}") from e
    except (pa.ArrowException, OSError, ValueError) as e:
        raise OrcReadError(f"cannot read ORC {where(path)} (corrupt or truncated?): {e}") from e


def _read_stripe(f: orc.ORCFile, path: str, stripe: int, columns: List[str]) -> pa.RecordBatch:
    try:
        return f.read_stripe(stripe, columns=columns)
    except (pa.ArrowException, OSError, ValueError) as e:
        raise OrcReadError(f"cannot decode stripe {stripe} of ORC {where(path)} "
                           f"(corrupt or truncated?): {e}") from e


class OrcFormat(FileFormat):
    """ORC files read stripe by stripe with ``pyarrow.orc``; list columns only (RecIS's rule,
    :data:`~.column_convert.ORC_RULES`)."""

    kind = "ORC"
    unit = "stripe"
    rules = ORC_RULES
    logger = logger

    def open(self, path: str) -> orc.ORCFile:
        return open_orc(path)

    def schema(self, handle: orc.ORCFile) -> pa.Schema:
        return handle.schema

    def num_units(self, handle: orc.ORCFile) -> int:
        return handle.nstripes

    def unit_rows(self, handle, path: str, unit: int, columns: List[str]) -> int:
        # ORC metadata in pyarrow has no per-stripe row count: read one column of the stripe
        return _read_stripe(handle, path, unit, columns).num_rows

    def read_unit(self, handle, path: str, unit: int, columns: List[str]) -> pa.RecordBatch:
        return _read_stripe(open_orc(path), path, unit, columns)


ORC = OrcFormat()


class OrcStripeReader(ChunkReader):
    """:class:`~.chunk_reader.ChunkReader` over ORC files (same arguments, without ``fmt``)."""

    def __init__(self, files: Sequence[DataFile], specs: Sequence[ColumnSpec], convert: Converter,
                 threads: int, start_file: int = 0, start_row: int = 0,
                 reference: DataFile = None):
        super().__init__(ORC, files, specs, convert, threads, start_file, start_row, reference)
