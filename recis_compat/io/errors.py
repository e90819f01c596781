"""Exceptions raised by the ORC reader. Every message names the file and, where one is at
fault, the column, and says what was expected."""
from __future__ import annotations


class OrcDataError(ValueError):
    """The file is readable but its schema or content breaks the reader's rules
    (missing column, non-list column, null elements inside a list, dense width mismatch,
    unsupported element type, a column type differing from the dataset's first file, a float
    overflowing the dataset dtype, a batch column past what int32 offsets can index)."""


class OrcReadError(OSError):
    """The file cannot be opened or decoded (corrupt, truncated, unreadable)."""


def where(path: str, column: str = None) -> str:
    """``"file F"`` or ``"file F, column C"`` for error messages."""
    return f"file {path!r}" if column is None else f"file {path!r}, column {column!r}"
