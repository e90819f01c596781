"""What the training workers of tests/distributed record per step, and how they cut a global
batch into their rank's part (imported by the worker scripts, whose directory torchrun puts
first on ``sys.path``)."""
from __future__ import annotations

from typing import Dict, List, Tuple

import torch

from recis.nn.modules.hashtable import filter_out_sparse_param
from recis.ragged.tensor import RaggedTensor


def grads_by_id(model: torch.nn.Module) -> Dict[str, Tuple[List[int], torch.Tensor]]:
    """``{table: (ids, grad rows [n, dim])}``: the summed gradient rows that reached each of the
    model's table shards this step, keyed by id rather than row (rows differ between a sharded
    and a single-process run; ids do not). Tables without a gradient are left out."""
    grads = {}
    for name, impl in filter_out_sparse_param(model).items():
        got = impl.summed_grad()
        if got is not None:
            ids, rows = impl.ids_map()
            id_of_row = dict(zip(rows.tolist(), ids.tolist()))
            grads[name] = ([id_of_row[r] for r in got[0].tolist()], got[1].clone())
    return grads


def rank_ragged(lens: torch.Tensor, values: torch.Tensor, weights: torch.Tensor, lo: int,
                hi: int) -> Tuple[RaggedTensor, RaggedTensor]:
    """Rows ``[lo, hi)`` of a global ragged batch given as ``lens`` (int64 ``[B]``), ``values``
    and ``weights`` (``[sum(lens)]``): ``(weighted RaggedTensor, unweighted copy)``, offsets int32
    from 0."""
    off = torch.zeros(lens.numel() + 1, dtype=torch.int64)
    off[1:] = torch.cumsum(lens, 0)
    v0, v1 = int(off[lo]), int(off[hi])
    local_off = (off[lo:hi + 1] - v0).to(torch.int32)
    return (RaggedTensor(values[v0:v1], local_off, weight=weights[v0:v1]),
            RaggedTensor(values[v0:v1].clone(), local_off.clone()))
