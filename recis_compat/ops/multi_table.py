"""Ops over several tables at once (one csrc call instead of one per table).

* ``multi_table_gather(tables, rows)`` (csrc/embedding/multi_gather.cpp): the rows of several
  ``[R_t, D]`` tables of one dtype and width in one ``[sum U_t, D]`` tensor, zeros where a row
  is -1. No autograd (``backend/dynamic_table.py`` ``lookup_tables_with_grad`` adds it).
* ``unique_first_seen_many(ids)`` (csrc/embedding/multi_unique.cpp): ``unique_first_seen`` of
  several id lists, the lists spread over the threads.
* ``sgd_rows_multi_(slots, rows, grads, lr)`` (csrc/optim/sgd_rows.cpp): ``slot[rows] -= lr *
  grad`` for several float32/float64 tables, bit for bit ATen's ``add_(alpha=-lr)``.

The CUDA kernels of all three are ATen composites registered in the same files. The references
the tests compare against are in tests/ops/test_multi_table_ops.py.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import torch

from recis_compat.ops._library import require_kernel

__all__ = ["multi_table_gather", "unique_first_seen_many", "sgd_rows_multi_"]


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
