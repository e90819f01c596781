"""The dynamic id -> row map ops (csrc/embedding/id_map.{cpp,cu}).

An exact, collision-free map from any int64 id to a row index of growable row storage. Its whole
state lives in three tensors (layout in ``csrc/embedding/id_map.h``):

* ``table``: int64 ``[num_buckets, 8]``, one 64-byte bucket (a cache line) of 5 slots per row:
  words 0..4 are the lanes' int64 keys, words 5..7 read as int32 ``[6]`` the lanes' states and a
  spare word (12.8 bytes per slot; capacity = ``5 * num_buckets`` slots, any bucket count >= 1).
  ``state >= 0`` is the key's row (``< 2**31 - 1``), ``-1`` empty, ``-2`` tombstone (deleted). A
  key's home bucket is the high word of ``mix64(key) * num_buckets`` (multiply-shift); probing is
  linear over slots from lane 0 of the home bucket, with wrap-around. No id is reserved: every
  int64, ``INT64_MIN`` and ``-1`` included, is a valid key. (The earlier layouts, int64
  ``[capacity, 2]`` = ``(key, state)`` and int32 ``[capacity, 3]`` = ``(key_lo, key_hi, state)``,
  are converted by ``recis_compat.backend.id_map.IdMap.load_state_dict``.)
* ``meta``: int64 ``[4]`` = ``(size, next_row, tombstones, free_count)``; always
  ``next_row == size + free_count`` and ``size + tombstones < capacity``.
* ``free_rows``: int64 ``[>= free_count]``, a stack of freed rows (top = ``free_rows[free_count-1]``).

Ops (``torch.ops.recis_compat.*``; ``!`` = mutated in place):

``id_map_find(table, ids) -> rows``
    ids int64 ``[N]`` -> rows int64 ``[N]``, ``-1`` where absent. Pure.
``id_map_find_or_insert(table!, meta!, free_rows, ids) -> (rows, is_new)``
    rows int64 ``[N]``; is_new bool ``[N]``, true at the *first occurrence* of each inserted id.
    New ids get rows in the order of their first occurrence in the batch: the free stack first
    (top first), then ``next_row, next_row + 1, ...`` -- whatever the thread count.
    Requires ``size + tombstones + N < capacity`` (grow with ``id_map_rehash`` first),
    ``N < 2**31 - 4`` and rows staying below ``2**31 - 1``.
``id_map_insert_new(table!, meta!, free_rows, ids) -> (rows, ok)`` (CPU)
    ``find_or_insert`` of a batch expected to hold only new, distinct ids: when it does, the
    map, meta and rows (int64 ``[N]``) end as ``find_or_insert`` leaves them and ``ok`` (bool
    ``[]``) is true; when some id is stored already or repeats, the table and meta are left bit
    for bit as they were and ``ok`` is false (call ``find_or_insert``). Same preconditions.
``id_map_delete(table!, meta!, free_rows!, ids) -> freed_rows``
    Present ids are removed and their rows pushed on the free stack in first-occurrence order;
    ``freed_rows`` int64 ``[K]`` (data-dependent K) lists them in that order. Absent ids and
    repeats are ignored. Requires ``len(free_rows) >= min(next_row, free_count + N)``.
``id_map_rehash(table, meta, new_capacity) -> (new_table, new_meta)``
    The same map in at least ``new_capacity`` slots (any integer > size, >= 2; rounded up to
    ``ceil(new_capacity / 5)`` buckets), tombstones dropped. Pure.
``id_map_export(table, meta) -> (ids, rows)``
    Every live pair ordered by row; int64 ``[size]`` each. Pure.
``unique_inverse(ids) -> (unique, inverse)``
    ids int64 ``[N]`` -> ``unique`` ``[U]`` in first-occurrence order (data-dependent U) and
    ``inverse`` ``[N]`` with ``unique[inverse] == ids``. Pure.

``ids_partition(ids, world_size) -> (unique, inverse, rank_counts)``
    RecIS's ids_partition: the distinct ids grouped by owner rank (the slice rule of
    ``backend/slices.py``; rank 0's group first, first-occurrence order inside a group),
    ``inverse`` ``[N]`` with ``unique[inverse] == ids`` and ``rank_counts`` int64 ``[world_size]``
    (the size of every group). Pure.

``IdMapRef`` and the ``*_ref`` functions in ``tests/ops/reference_kernels.py`` are a dict-based
reference with the same semantics; the tests compare the kernels against them.
"""
from __future__ import annotations

from typing import Tuple

import torch

META_SIZE, META_NEXT_ROW, META_TOMBSTONES, META_FREE_COUNT = range(4)
EMPTY, TOMBSTONE = -1, -2
LANES = 5                 # slots per bucket
BUCKET_WORDS = 8          # int64 words per bucket: 5 keys, then 5 int32 states and a spare word
SLOT_BYTES = 8 * BUCKET_WORDS / LANES
MAX_ROWS = 2 ** 31 - 1    # rows of one table (or shard) are below this


# ----------------------------------------------------------------------------- fake kernels
@torch.library.register_fake("recis_compat::id_map_find")
def _find_fake(table, ids):
    return ids.new_empty(ids.shape, dtype=torch.int64)


@torch.library.register_fake("recis_compat::id_map_find_or_insert")
def _find_or_insert_fake(table, meta, free_rows, ids):
    return ids.new_empty(ids.shape, dtype=torch.int64), ids.new_empty(ids.shape, dtype=torch.bool)


@torch.library.register_fake("recis_compat::id_map_insert_new")
def _insert_new_fake(table, meta, free_rows, ids):
    return ids.new_empty(ids.shape, dtype=torch.int64), ids.new_empty((), dtype=torch.bool)


@torch.library.register_fake("recis_compat::id_map_delete")
def _delete_fake(table, meta, free_rows, ids):
    k = torch.library.get_ctx().new_dynamic_size()
    return ids.new_empty((k,), dtype=torch.int64)


@torch.library.register_fake("recis_compat::id_map_rehash")
def _rehash_fake(table, meta, new_capacity):
    return table.new_empty((-(-new_capacity // LANES), BUCKET_WORDS)), meta.new_empty((4,))


@torch.library.register_fake("recis_compat::id_map_export")
def _export_fake(table, meta):
    k = torch.library.get_ctx().new_dynamic_size()
    return table.new_empty((k,), dtype=torch.int64), table.new_empty((k,), dtype=torch.int64)


# ----------------------------------------------------------------------------- typed wrappers
@torch.library.register_fake("recis_compat::unique_inverse")
def _unique_inverse_fake(ids):
    u = torch.library.get_ctx().new_dynamic_size()
    return ids.new_empty((u,)), ids.new_empty(ids.shape)


@torch.library.register_fake("recis_compat::ids_partition")
def _ids_partition_fake(ids, world_size):
    u = torch.library.get_ctx().new_dynamic_size()
    return ids.new_empty((u,)), ids.new_empty(ids.shape), ids.new_empty((world_size,))


def empty_state(capacity: int = 16, device=None) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A fresh empty map of at least ``capacity`` slots: ``(table int64 [ceil(capacity / 5), 8],
    meta int64 [4], free_rows int64 [0])``.

    ``capacity`` must be an integer >= 2.
    """
    capacity = int(capacity)
    if capacity < 2:
        raise ValueError(f"id_map: capacity must be >= 2, got {capacity}")
    # every word -1: every int32 state is EMPTY (the key words are unused)
    table = torch.full((-(-capacity // LANES), BUCKET_WORDS), EMPTY, dtype=torch.int64, device=device)
    meta = torch.zeros(4, dtype=torch.int64, device=device)
    free_rows = torch.zeros(0, dtype=torch.int64, device=device)
    return table, meta, free_rows


def find(table: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """rows int64 ``[N]`` of ids int64 ``[N]``; ``-1`` where absent."""
    return torch.ops.recis_compat.id_map_find(table, ids)


def find_or_insert(table: torch.Tensor, meta: torch.Tensor, free_rows: torch.Tensor,
                   ids: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(rows int64 [N], is_new bool [N])``; inserts absent ids (mutates table and meta)."""
    return torch.ops.recis_compat.id_map_find_or_insert(table, meta, free_rows, ids)


def insert_new(table: torch.Tensor, meta: torch.Tensor, free_rows: torch.Tensor,
               ids: torch.Tensor) -> Tuple[torch.Tensor, bool]:
    """``(rows int64 [N], ok)``: inserts ``ids`` when every one is new and distinct (``ok``), else
    changes nothing (CPU; mutates table and meta)."""
    rows, ok = torch.ops.recis_compat.id_map_insert_new(table, meta, free_rows, ids)
    return rows, bool(ok)


def delete(table: torch.Tensor, meta: torch.Tensor, free_rows: torch.Tensor,
           ids: torch.Tensor) -> torch.Tensor:
    """Removes ids; returns the freed rows int64 ``[K]`` (mutates table, meta, free_rows)."""
    return torch.ops.recis_compat.id_map_delete(table, meta, free_rows, ids)


def rehash(table: torch.Tensor, meta: torch.Tensor,
           new_capacity: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(new_table [ceil(new_capacity / 5), 8], new_meta [4])`` holding the same map, no tombstones."""
    return torch.ops.recis_compat.id_map_rehash(table, meta, int(new_capacity))


def export(table: torch.Tensor, meta: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(ids, rows)`` int64 ``[size]`` each, ordered by row."""
    return torch.ops.recis_compat.id_map_export(table, meta)


def unique_first_seen(ids: torch.Tensor, return_counts: bool = False):
    """``(unique [U], inverse [N])`` (and ``counts [U]`` with ``return_counts``) of int64 ``ids``
    (flattened to ``[N]``): ``unique[inverse] == ids``, ``unique`` in order of first occurrence.
    The csrc op ``unique_inverse``.

    Why not ``torch.unique``: it sorts (about 1 ms for 25k ids on this 2-core CPU, the largest
    single cost of a DeepFM step); one hash pass is ~4x faster. Deterministic for every thread
    count; the same result on CUDA (a fresh id map's first-occurrence row numbering).
    """
    uniq, inverse = torch.ops.recis_compat.unique_inverse(ids.reshape(-1))
    if return_counts:
        return uniq, inverse, torch.bincount(inverse, minlength=uniq.numel())
    return uniq, inverse


def ids_partition(ids: torch.Tensor, world_size: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(unique [U], inverse [N], rank_counts [world_size])`` of int64 ``ids`` (flattened):
    the distinct ids grouped by the rank that owns them (``backend/slices.py``'s rule), rank 0's
    first, first-occurrence order inside each group; ``unique[inverse] == ids``;
    ``rank_counts[r]`` ids of ``unique`` belong to rank ``r``. The csrc op ``ids_partition``:
    with ``world_size > 1`` one fused pass (dedupe and owner in one probe of a scratch table),
    then a scatter by owner; with 1, ``unique_first_seen``'s kernel."""
    return torch.ops.recis_compat.ids_partition(ids.reshape(-1), int(world_size))
