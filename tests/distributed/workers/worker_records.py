"""What the training workers of tests/distributed record per step (imported by the worker
scripts, whose directory torchrun puts first on ``sys.path``)."""
from __future__ import annotations

from typing import Dict, List, Tuple

import torch

from recis.nn.modules.hashtable import filter_out_sparse_param


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
