"""Exceptions raised by the file readers (ORC and Parquet). Every message names the file and,
where one is at fault, the column, and says what was expected.

``DataError`` / ``ReadError`` are the format-independent bases; each format raises its own
subclass (``OrcDataError`` ..., ``ParquetDataError`` ...), so ``except DataError`` catches both.
"""
from __future__ import annotations


class DataError(ValueError):
    """The file is readable but its schema or content breaks the reader's rules
    (missing column, unsupported column type, null elements inside a list, dense width mismatch,
    unsupported element type, a column type differing from the dataset's first file, a float
    overflowing the dataset dtype, a batch column past what int32 offsets can index)."""


class ReadError(OSError):
    """The file cannot be opened or decoded (corrupt, truncated, unreadable)."""


class OrcDataError(DataError):
    """:class:`DataError` of an ORC file."""


class OrcReadError(ReadError):
    """:class:`ReadError` of an ORC file."""


class ParquetDataError(DataError):
    """:class:`DataError` of a Parquet file."""


class ParquetReadError(ReadError):
    """:class:`ReadError` of a Parquet file."""


def where(path: str, column: str = None) -> str:
    """``"file F"`` or ``"file F, column C"`` for error messages."""
    return f"file {path!r}" if column is None else f"file {path!r}, column {column!r}"
