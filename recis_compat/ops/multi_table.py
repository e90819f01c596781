"""Ops over several tables at once (one csrc call instead of one per table).

* ``multi_table_gather(tables, rows)`` (csrc/embedding/multi_gather.cpp): the rows of several
  ``[R_t, D]`` tables of one dtype and width in one ``[sum U_t, D]`` tensor, zeros where a row
  is -1. No autograd (``backend/dynamic_table.py`` ``lookup_tables_with_grad`` adds it).
* ``unique_first_seen_many(ids)`` (csrc/embedding/multi_unique.cpp): ``unique_first_seen`` of
  several id lists, the lists spread over the threads.
* ``sgd_rows_multi_(slots, rows, grads, lr)`` (csrc/optim/sgd_rows.cpp): ``slot[rows] -= lr *
  grad`` for several float32/float64 tables, bit for bit ATen's ``add_(alpha=-lr)``.
* ``find_or_insert_many(states, ids)`` (csrc/embedding/multi_unique.cpp): ``id_map_find_or_insert``
  of several id maps in one call where ``IdMap.find_or_insert`` would make one kernel call, with
  each map's new ids and rows, its row high-water mark and its load.
* ``counter_uniform_rows_many_(tables, rows, ids, seeds, lows, highs)``
  (csrc/embedding/counter_init.cpp): the per-id U(low, high) initial rows of several tables written
  in place, bit for bit ``UniformInitializer.sample_for_ids`` + ``index_copy_``.

The CUDA kernels of all five are ATen composites registered in the same files. The references
the tests compare against are in tests/ops/test_multi_table_ops.py.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import torch

from recis_compat.ops._library import require_kernel
from recis_compat.ops.counter_init import as_int64

__all__ = ["multi_table_gather", "unique_first_seen_many", "sgd_rows_multi_", "find_or_insert_many",
           "counter_uniform_rows_many_"]


@torch.library.register_fake("recis_compat::multi_table_gather")
def _multi_table_gather_fake(tables, rows):
    return tables[0].new_empty((sum(r.shape[0] for r in rows), tables[0].shape[1]))


@torch.library.register_fake("recis_compat::unique_inverse_multi")
def _unique_inverse_multi_fake(ids):
    ctx = torch.library.get_ctx()
    return [i.new_empty((ctx.new_dynamic_size(),)) for i in ids], [i.new_empty(i.shape) for i in ids]


@torch.library.register_fake("recis_compat::sgd_rows_multi_")
def _sgd_rows_multi_fake(tables, rows, grads, lr):
    return None


@torch.library.register_fake("recis_compat::id_map_find_or_insert_multi")
def _find_or_insert_multi_fake(tables, metas, free_rows, ids, limits):
    ctx = torch.library.get_ctx()
    rows = [i.new_empty((ctx.new_dynamic_size(),)) for i in ids]
    new = [ctx.new_dynamic_size() for _ in ids]
    return (rows, [i.new_empty((k,)) for i, k in zip(ids, new)], [i.new_empty((k,)) for i, k in zip(ids, new)],
            torch.empty((len(ids), 4), dtype=torch.int64, device="cpu"))


@torch.library.register_fake("recis_compat::counter_uniform_rows_multi_")
def _counter_uniform_rows_multi_fake(tables, rows, ids, seeds, lows, highs):
    return None


def multi_table_gather(tables: Sequence[torch.Tensor], rows: Sequence[torch.Tensor]) -> torch.Tensor:
    """``cat_t(tables[t][rows[t]])`` with zero rows where ``rows[t] < 0``: tables ``[R_t, D]``
    (one dtype and D), rows int64 ``[U_t]`` -> ``[sum U_t, D]``."""
    if len(tables) == 0:    # the dispatcher cannot route an op call without tensors
        raise ValueError("multi_table_gather: needs at least one table")
    require_kernel("multi_table_gather", tables[0].device)
    return torch.ops.recis_compat.multi_table_gather(list(tables), list(rows))


def unique_first_seen_many(ids: Sequence[torch.Tensor]) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
    """``([unique_k [U_k]], [inverse_k [N_k]])`` of int64 id lists ``ids[k]`` (any shape,
    flattened), each pair exactly ``ops.id_map.unique_first_seen(ids[k])``."""
    if len(ids) == 0:       # the dispatcher cannot route an op call without tensors
        return [], []
    require_kernel("unique_inverse_multi", ids[0].device)
    uniq, inverse = torch.ops.recis_compat.unique_inverse_multi([i.reshape(-1) for i in ids])
    return list(uniq), list(inverse)


def sgd_rows_multi_(slots: Sequence[torch.Tensor], rows: Sequence[torch.Tensor],
                    grads: Sequence[torch.Tensor], lr: float) -> None:
    """In place ``slots[t][rows[t]] -= lr * grads[t]``: float32/float64 contiguous slots
    ``[R_t, D_t]``, distinct int64 rows ``[U_t]``, grads ``[U_t, D_t]`` of the slot's dtype."""
    if len(slots) == 0:
        return
    require_kernel("sgd_rows_multi_", slots[0].device)
    torch.ops.recis_compat.sgd_rows_multi_(list(slots), list(rows), [g.contiguous() for g in grads], float(lr))


def find_or_insert_many(states: Sequence[Tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]],
                        ids: Sequence[torch.Tensor]
                        ) -> Tuple[List[torch.Tensor], List[torch.Tensor], List[torch.Tensor], List[List[int]]]:
    """Find or insert the distinct int64 ids ``ids[k]`` ``[N_k]`` in every id map ``states[k]`` =
    ``(table, meta, free_rows, limit)`` (``IdMap.insert_state``) in one call, each map taking the
    batch when ``IdMap.find_or_insert`` would in one kernel call (no growth; the decision in
    csrc/embedding/multi_unique.cpp) and left untouched otherwise. Returns ``(rows, new_ids,
    new_rows, counts)``: ``rows[k]`` int64 ``[N_k]`` (empty when the map was left alone);
    ``new_ids[k]`` / ``new_rows[k]`` int64 ``[K_k]``, the ids inserted and their rows in
    assignment order; ``counts[k]`` = ``[done, next_row, size + tombstones, absent]`` afterwards
    (done 0: the caller grows the map, ``IdMap.grow_for_batch`` with ``absent`` ids not in it,
    or inserts with ``IdMap.find_or_insert``). Every map is checked before any changes."""
    if len(states) == 0:
        return [], [], [], []
    require_kernel("id_map_find_or_insert_multi", states[0][0].device)
    rows, new_ids, new_rows, counts = torch.ops.recis_compat.id_map_find_or_insert_multi(
        [s[0] for s in states], [s[1] for s in states], [s[2] for s in states], [i.reshape(-1) for i in ids],
        [int(s[3]) for s in states])
    return list(rows), list(new_ids), list(new_rows), counts.tolist()


def counter_uniform_rows_many_(tables: Sequence[torch.Tensor], rows: Sequence[torch.Tensor],
                               ids: Sequence[torch.Tensor], seeds: Sequence[int], lows: Sequence[float],
                               highs: Sequence[float]) -> None:
    """In place ``tables[t][rows[t]] = (lows[t] + (highs[t] - lows[t]) * counter_uniform(ids[t],
    seeds[t], D_t)).to(float32).to(dtype)``: contiguous float32/float64 tables ``[R_t, D_t]``,
    distinct int64 rows and int64 ids ``[K_t]`` (ops/counter_init.py for ``counter_uniform``;
    ``seeds`` any ints, reduced to int64 as it does)."""
    if len(tables) == 0:
        return
    require_kernel("counter_uniform_rows_multi_", tables[0].device)
    torch.ops.recis_compat.counter_uniform_rows_multi_(list(tables), list(rows), list(ids),
                                                       [as_int64(int(s)) for s in seeds],
                                                       [float(x) for x in lows], [float(x) for x in highs])
