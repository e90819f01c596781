"""Converted column data of one stripe, and cutting/gluing it into batches.

A :class:`ColumnChunk` is what :mod:`.column_convert` makes of one Arrow column of one stripe.
The packer cuts row ranges out of chunks (:func:`take_rows`), glues the pieces of a batch
together (:func:`concat_pieces`) and turns the result into the column_io-style nested list the
batch conversion consumes (:func:`to_nested`).

Nested-list format per column (the same layout RecIS's column_io packer hands to
``_batch_convert``; offsets are listed **innermost first**):
  * dense:   ``[[values2d]]``, a ``[B, D]`` tensor;
  * ragged:  ``[[values, offsets_inner, ..., offsets_outer]]``, torch tensors, ``offsets_outer``
    has ``B+1`` entries; with weights (``list<struct<k,v>>``) a second entry
    ``[weights, same offsets...]`` follows;
  * strings: ``[[np.ndarray dtype 'S' (one byte string per element), offsets_inner, ...,
    offsets_outer]]`` with numpy offsets (raw strings are never tensors).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from recis_compat.io.errors import OrcDataError

__all__ = ["ColumnChunk", "RowsPlan", "take_rows", "concat_pieces", "to_nested", "rows_plan",
           "columns_rows", "strings_to_bytes_array"]

DENSE, RAGGED, STRINGS = "dense", "ragged", "strings"


@dataclass
class ColumnChunk:
    """One column of one stripe, converted.

    Attributes:
        kind: ``"dense"`` (``values`` is ``[rows, D]``), ``"ragged"`` (``values`` is the 1-D leaf
            array: int64/float/int8 ...), or ``"strings"`` (``values`` is the uint8 byte buffer and
            the last offsets level holds the string boundaries).
        values: numpy array, see ``kind``.
        offsets: numpy offsets per list level, **outermost first**; level k indexes level k+1
            (the last level indexes ``values``) with absolute positions, so ``offsets[k][0]`` need
            not be 0. int32 for ``list<>``/``string``, int64 for ``large_list<>``/``large_string``.
        weight: per-value weights (``list<struct<k,v>>``), same length as ``values``, or None.
    """

    kind: str
    values: np.ndarray
    offsets: List[np.ndarray]
    weight: Optional[np.ndarray] = None


Piece = Tuple[np.ndarray, List[np.ndarray], Optional[np.ndarray]]


def take_rows(chunk: ColumnChunk, a: int, b: int) -> Piece:
    """Rows ``[a, b)`` of ``chunk`` as ``(values, offsets rebased to start at 0, weight)``;
    values and weight are views."""
    if chunk.kind == DENSE:
        return chunk.values[a:b], [], None
    lo, hi = a, b
    offs = []
    for off in chunk.offsets:
        seg = off[lo:hi + 1]
        lo, hi = int(seg[0]), int(seg[-1])
        offs.append(seg - lo if lo else seg)
    w = chunk.weight[lo:hi] if chunk.weight is not None else None
    return chunk.values[lo:hi], offs, w


INT32_OFFSETS_LIMIT = int(np.iinfo(np.int32).max)
"""Most entries one int32 offsets level can index (read at call time, so tests can lower it)."""


def concat_pieces(kind: str, pieces: Sequence[Piece], column: str = "?",
                  error: type = OrcDataError) -> Piece:
    """Glue pieces (from :func:`take_rows`) into one batch column named ``column``.

    Offsets keep their dtype (int32 for ``list<>``/``string``, int64 for ``large_list<>``; a
    batch mixing both gets int64, numpy's promotion). A batch whose int32 offsets level would
    have to count more than :data:`INT32_OFFSETS_LIMIT` entries is refused with ``error`` (the
    format's :class:`~.errors.DataError`) naming the column (int32 would wrap to negative offsets;
    RecIS's RaggedTensor contract keeps int32 offsets for ``list<>`` columns). A single piece is
    returned as is: its offsets are one Arrow array's, which fit their own dtype."""
    if len(pieces) == 1:
        return pieces[0]
    values = np.concatenate([p[0] for p in pieces])
    weight = np.concatenate([p[2] for p in pieces]) if pieces[0][2] is not None else None
    if kind == DENSE:
        return values, [], None
    offs = []
    levels = len(pieces[0][1])
    for k in range(levels):
        segs = [p[1][k] for p in pieces]
        dtype = np.result_type(*segs)
        ends = [int(seg[-1]) for seg in segs]
        if dtype == np.int32 and sum(ends) > INT32_OFFSETS_LIMIT:
            leaf = "string bytes" if kind == STRINGS else "values"
            what = leaf if k == levels - 1 else f"entries of list level {k + 1}"
            raise error(
                f"column {column!r}: one batch holds {sum(ends)} {what}, more than its int32 "
                f"offsets can index ({INT32_OFFSETS_LIMIT}); use a smaller batch_size, or write "
                f"the column as large_list<> (int64 offsets)")
        parts = [np.zeros(1, dtype=dtype)]
        base = 0
        for seg, end in zip(segs, ends):
            parts.append(seg[1:].astype(dtype, copy=False) + dtype.type(base))
            base += end
        offs.append(np.concatenate(parts))
    return values, offs, weight


def strings_to_bytes_array(data: np.ndarray, byte_offsets: np.ndarray) -> np.ndarray:
    """Byte strings ``data[o[i]:o[i+1]]`` as a numpy ``'S'`` array ``[n]``, without a Python
    loop. (numpy ``'S'`` drops trailing NUL bytes, like every ``'S'`` array.)"""
    n = len(byte_offsets) - 1
    lens = np.diff(byte_offsets).astype(np.int64, copy=False)
    width = max(1, int(lens.max()) if n > 0 else 1)
    out = np.zeros((n, width), dtype=np.uint8)
    total = int(lens.sum())
    if total:
        rows = np.repeat(np.arange(n), lens)
        starts = np.repeat(byte_offsets[:-1].astype(np.int64) - int(byte_offsets[0]), lens)
        cols = np.arange(total) - starts
        out[rows, cols] = data[int(byte_offsets[0]):int(byte_offsets[-1])]
    return out.view(f"S{width}").reshape(n)


def to_nested(kind: str, piece: Piece,
              place: Optional[Callable[[torch.Tensor], torch.Tensor]]) -> list:
    """The column_io-style nested list of one batch column (module docstring).

    ``place`` moves a tensor to the output device (``.pin_memory()`` or ``.to(cuda)``); None
    leaves tensors where they are (host memory).
    """
    values, offs, weight = piece
    from_numpy = torch.from_numpy
    if kind == DENSE:
        t = from_numpy(values)
        return [[place(t) if place else t]]
    if kind == STRINGS:
        strings = strings_to_bytes_array(values, offs[-1])
        return [[strings] + [np.ascontiguousarray(o) for o in reversed(offs[:-1])]]
    level = [from_numpy(values)]
    level.extend(from_numpy(o) for o in reversed(offs))
    if place:
        level = [place(t) for t in level]
    out = [level]
    if weight is not None:
        w = from_numpy(weight)
        out.append([place(w) if place else w] + level[1:])
    return out


_FAST_DENSE, _FAST_RAGGED, _GENERAL = 0, 1, 2


@dataclass
class RowsPlan:
    """How :func:`columns_rows` cuts the columns of one chunk (from :func:`rows_plan`).

    ``entries``: ``(name, path, values, ref)`` per column in column order; ``path`` is a short
    path (dense: ``ref`` None; one-level unweighted ragged, most columns: ``ref`` the column's
    row in ``offsets``) or the general :func:`take_rows` + :func:`to_nested` (``ref`` the
    :class:`ColumnChunk`). ``offsets``: the short-path ragged columns' offsets stacked into one
    ``[columns, rows + 1]`` array of their common dtype (None when there are none), so one numpy
    call per batch rebases every such column's offsets."""

    entries: List[tuple]
    offsets: Optional[np.ndarray]


def rows_plan(columns: Dict[str, ColumnChunk]) -> RowsPlan:
    """The :class:`RowsPlan` of one chunk. Computed once per chunk (the packer cuts several
    batches from most chunks). One-level ragged columns whose offsets dtype differs from the
    first such column's take the general path (stacking would change their dtype)."""
    entries, stacked = [], []
    for name, col in columns.items():
        if col.kind == DENSE:
            entries.append((name, _FAST_DENSE, col.values, None))
        elif (col.kind == RAGGED and col.weight is None and len(col.offsets) == 1
              and (not stacked or col.offsets[0].dtype == stacked[0].dtype)):
            entries.append((name, _FAST_RAGGED, col.values, len(stacked)))
            stacked.append(col.offsets[0])
        else:
            entries.append((name, _GENERAL, None, col))
    return RowsPlan(entries, np.stack(stacked) if stacked else None)


def columns_rows(plan: RowsPlan, a: int, b: int,
                 place: Optional[Callable[[torch.Tensor], torch.Tensor]]) -> Dict[str, list]:
    """Rows ``[a, b)`` of every column of one chunk (``plan`` from :func:`rows_plan`) as
    ``{column: nested list}``, i.e. ``to_nested(kind, take_rows(chunk, a, b), place)`` per
    column; the short paths build the same lists directly. Their rebased offsets are always new
    memory (consecutive batches share a boundary entry of the chunk's offsets, so a view changed
    in place by a user map could shift the next batch); the short-path ragged columns of one
    batch share one new ``[columns, B + 1]`` array, one row each."""
    out = {}
    from_numpy = torch.from_numpy
    if plan.offsets is not None:
        cut = plan.offsets[:, a:b + 1]
        los, his = cut[:, 0].tolist(), cut[:, -1].tolist()
        segs = from_numpy(cut - cut[:, :1]).unbind(0)
    for name, path, values, ref in plan.entries:
        if path == _FAST_RAGGED:
            v = from_numpy(values[los[ref]:his[ref]])
            if place:
                out[name] = [[place(v), place(segs[ref])]]
            else:
                out[name] = [[v, segs[ref]]]
        elif path == _FAST_DENSE:
            t = from_numpy(values[a:b])
            out[name] = [[place(t) if place else t]]
        else:
            out[name] = to_nested(ref.kind, take_rows(ref, a, b), place)
    return out
