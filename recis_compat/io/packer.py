"""Re-chunking read units (stripes, row groups) into batches of exactly ``batch_size`` rows.

A batch may span units and files. The last partial batch is emitted smaller, or dropped
with ``drop_remainder``. Each :class:`PackedBatch` carries the reading position *after* its
last row, already encoded as an IO-state string, so the state stage can record exactly what
the consumer has received.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, List, Optional, Tuple

import torch

from recis_compat.io.column_chunk import (columns_rows, concat_pieces, rows_plan, take_rows,
                                          to_nested)
from recis_compat.io.chunk_reader import Chunk
from recis_compat.io.errors import OrcDataError

__all__ = ["PackedBatch", "pack"]


@dataclass
class PackedBatch:
    """``data``: ``[{column: nested list}]`` (see :mod:`.column_chunk`); ``state``: the IO state
    string of the position after this batch."""

    data: list
    state: str
    nrows: int


def _assemble(pieces: List[Tuple[Chunk, int, int]], place, error: type) -> dict:
    first = pieces[0][0]
    out = {}
    if len(pieces) == 1:  # the common case: the batch lies inside one stripe / row group
        _, a, b = pieces[0]
        if first.plan is None:
            first.plan = rows_plan(first.columns)
        return columns_rows(first.plan, a, b, place)
    for name, col in first.columns.items():
        parts = [take_rows(c.columns[name], a, b) for c, a, b in pieces]
        out[name] = to_nested(col.kind, concat_pieces(col.kind, parts, name, error), place)
    return out


def pack(chunks: Iterable[Chunk], batch_size: int, drop_remainder: bool,
         make_state: Callable[[int, int], str],
         place: Optional[Callable[[torch.Tensor], torch.Tensor]],
         error: type = OrcDataError) -> Iterator[PackedBatch]:
    """Yield batches of ``batch_size`` rows from ``chunks`` (in order).

    ``make_state(file_index, row)`` encodes the position after a batch; a batch ending at the
    end of a file's last unit records ``(file_index + 1, 0)``. ``error`` is the format's
    :class:`~.errors.DataError` (a batch column past int32 offsets).
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    pending: List[Tuple[Chunk, int, int]] = []
    need = batch_size

    def emit():
        c, _, b = pending[-1]
        if b == c.nrows and c.last_in_file:
            state = make_state(c.file_index + 1, 0)
        else:
            state = make_state(c.file_index, c.row_start + b)
        rows = sum(b - a for _, a, b in pending)
        return PackedBatch([_assemble(pending, place, error)], state, rows)

    for chunk in chunks:
        a = 0
        while a < chunk.nrows:
            take = min(need, chunk.nrows - a)
            pending.append((chunk, a, a + take))
            a += take
            need -= take
            if need == 0:
                yield emit()
                pending = []
                need = batch_size
    if pending and not drop_remainder:
        yield emit()
