"""DCP checkpoints of models holding dynamic collections (beside TorchRec's own modules).

One ``torch.distributed.checkpoint`` directory holds:

* ``model.state_dict()``: dense parameters and TorchRec's own tables (ShardedTensors under
  DMP), saved and loaded as TorchRec saves them (a load must use the same plan for those);
* every dynamic table's ids and slots (rows, optimizer moments, eviction clock) as
  ``"<table>.<slot>"`` (``recis_compat/backend/table_dcp.py``: the rank-r shard of a sharded
  table is rank r's rows); a load reads the full tensors and keeps the ids the slice rule
  gives this rank, so dynamic tables load at any world size or unsharded;
* the fused optimizers' per-table step counts and beta powers (``"fused_optimizer/..."``),
  given an ``optimizers`` dict.

Loading unpickles ``<dir>/.metadata`` (DCP's format), so :func:`load_checkpoint` requires
``trusted_source=True`` like ``table_dcp.load_tables``.
"""
from __future__ import annotations

from typing import Dict, Optional

import torch
from torch import nn

from recis_compat.backend import table_dcp

__all__ = ["save_checkpoint", "load_checkpoint"]

_OPT_PREFIX = "fused_optimizer/"


def _check_names(model: nn.Module, state_keys) -> None:
    names = [name for name, _ in table_dcp.dynamic_tables(model)]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"dynamic tables {dup} appear more than once in the model: checkpoint keys are table "
                         "names, give every table a distinct name")
    for key in state_keys:
        for n in names:
            if key.startswith(n + "."):
                raise ValueError(f"model state key {key!r} starts with the dynamic table name {n!r}: rename the "
                                 "table (its checkpoint keys are '<table>.<slot>')")


def _optimizer_state(optimizers: Optional[Dict[str, object]]) -> Dict[str, torch.Tensor]:
    out: Dict[str, torch.Tensor] = {}
    for oname, opt in (optimizers or {}).items():
        for key, s in opt.state_dict()["state"].items():
            for field, value in s.items():
                out[f"{_OPT_PREFIX}{oname}/{key}/{field}"] = torch.as_tensor(value).clone()
    return out


def save_checkpoint(model: nn.Module, checkpoint_id: str, optimizers: Optional[Dict[str, object]] = None) -> None:
    """Save ``model`` (and the fused optimizers in ``optimizers``, name -> the collection's
    ``fused_optimizer``) to the DCP directory ``checkpoint_id``. A collective under DMP."""
    import torch.distributed.checkpoint as dcp
    import torch.distributed as dist

    dense = model.state_dict()
    _check_names(model, dense.keys())
    state = dict(dense)
    state.update(table_dcp.table_state_dict(model))
    state.update(_optimizer_state(optimizers))
    dcp.save(state, checkpoint_id=checkpoint_id, no_dist=not dist.is_initialized())


def load_checkpoint(model: nn.Module, checkpoint_id: str, optimizers: Optional[Dict[str, object]] = None, *,
                    trusted_source: bool = False) -> None:
    """Load what :func:`save_checkpoint` wrote into ``model`` (and ``optimizers``).

    ``trusted_source=True`` is required: DCP unpickles ``<checkpoint_id>/.metadata``, which can
    run code; pass it only for directories your own :func:`save_checkpoint` wrote.
    """
    if trusted_source is not True:
        raise PermissionError(
            f"load_checkpoint({checkpoint_id!r}): torch.distributed.checkpoint unpickles {checkpoint_id}/.metadata, "
            "and unpickling can run code stored in the file. Pass trusted_source=True only for directories "
            "written by your own save_checkpoint().")
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp

    dense = model.state_dict()
    _check_names(model, dense.keys())
    if dense:
        dcp.load(dense, checkpoint_id=checkpoint_id, no_dist=not dist.is_initialized())
        model.load_state_dict(dense)
    table_dcp.load_tables(model, checkpoint_id, trusted_source=True)
    if optimizers:
        from torch.distributed.checkpoint import FileSystemReader
        meta = FileSystemReader(checkpoint_id).read_metadata().state_dict_metadata
        for oname, opt in optimizers.items():
            current = opt.state_dict()
            wanted = {f"{_OPT_PREFIX}{oname}/{key}/{field}": torch.as_tensor(v).clone()
                      for key, s in current["state"].items() for field, v in s.items()}
            missing = sorted(k for k in wanted if k not in meta)
            if missing:
                raise KeyError(f"checkpoint {checkpoint_id!r} has no fused optimizer state {missing[:3]} "
                               f"(optimizer {oname!r})")
            dcp.load(wanted, checkpoint_id=checkpoint_id, no_dist=True)
            state = {key: {field: wanted[f"{_OPT_PREFIX}{oname}/{key}/{field}"] for field in s}
                     for key, s in current["state"].items()}
            opt.load_state_dict({"state": state})
