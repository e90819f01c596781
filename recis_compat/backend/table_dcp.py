"""Dynamic tables as ``torch.distributed.checkpoint`` (DCP) state: save sharded, load at any size.

A table's rows are keyed by id, and each rank holds a different, changing number of them, so
they cannot be a ``ShardedTensor`` with a layout fixed at sharding time (TorchRec's own tables
can). :func:`table_state_dict` builds one on demand: per table and slot (``id``, ``embedding``,
optimizer and filter slots) a ``ShardedTensor`` ``[total rows, ...]`` whose rank-r shard is
rank r's rows (one ``all_gather`` of the row counts; a collective, call it on every rank).
:func:`load_table_state_dict` reads every table back (each rank reads the full tensors of its
tables, then keeps the ids the slice rule gives it), so a checkpoint written at one world size
loads at any other, or into an unsharded model.

The model's ordinary ``state_dict()`` stays collective-free: it holds the table objects under
their bare names (RecIS's layout); checkpoints in RecIS's safetensors format are the
framework's job (``recis.framework.checkpoint_manager``), and that is the format to use for
checkpoints that come from elsewhere.

Trust: torch's DCP ``FileSystemReader`` unpickles the checkpoint's ``.metadata`` file, and
unpickling runs whatever code the file names. :func:`load_tables` therefore refuses to read
unless called with ``trusted_source=True``, which states that the directory was written by a
writer you trust (your own :func:`save_tables`). Nothing else in
recis-compat unpickles checkpoint files (the framework loads torch files with
``weights_only=True``).
"""
from __future__ import annotations

from typing import Dict, Iterator, Tuple

import torch
import torch.distributed as dist
from torch import nn

from recis_compat.backend.dynamic_table import DynamicTable
from recis_compat.backend.sharding import ShardedDynamicTable
from recis_compat.backend.slices import owner_ranks

__all__ = ["dynamic_tables", "table_state_dict", "load_table_state_dict", "save_tables", "load_tables"]


def dynamic_tables(model: nn.Module) -> Iterator[Tuple[str, nn.Module]]:
    """``(table name, DynamicTable or ShardedDynamicTable)`` of every table in ``model``."""
    # a sharded table's local shard is a DynamicTable child of it: report the sharded one only
    seen = {id(m.local_table) for m in model.modules() if isinstance(m, ShardedDynamicTable)}
    for module in model.modules():
        if isinstance(module, (DynamicTable, ShardedDynamicTable)) and id(module) not in seen:
            seen.add(id(module))
            yield module.name, module


def _group_of(table: nn.Module):
    return table.process_group if isinstance(table, ShardedDynamicTable) else None


def table_state_dict(model: nn.Module) -> Dict[str, torch.Tensor]:
    """``{"<table>.<slot>": tensor}`` of every table (ShardedTensor for sharded tables)."""
    from torch.distributed._shard.sharded_tensor import Shard, ShardedTensor
    from torch.distributed._shard.metadata import ShardMetadata

    out: Dict[str, torch.Tensor] = {}
    for name, table in dynamic_tables(model):
        state = table.impl.state_dict()
        pg = _group_of(table)
        if pg is None or dist.get_world_size(pg) == 1:
            out.update({f"{name}.{slot}": t for slot, t in state.items()})
            continue
        rank, world = dist.get_rank(pg), dist.get_world_size(pg)
        n = state["id"].numel()
        counts = [torch.zeros(1, dtype=torch.int64) for _ in range(world)]
        dist.all_gather(counts, torch.tensor([n], dtype=torch.int64), group=pg)
        counts = [int(c) for c in counts]
        offset, total = sum(counts[:rank]), sum(counts)
        for slot, t in state.items():
            t = t.contiguous()
            shards = []
            if n:
                md = ShardMetadata(shard_offsets=[offset] + [0] * (t.dim() - 1), shard_sizes=list(t.shape),
                                   placement=f"rank:{rank}/{t.device.type}")
                shards.append(Shard(tensor=t, metadata=md))
            out[f"{name}.{slot}"] = ShardedTensor._init_from_local_shards(
                shards, [total] + list(t.shape[1:]), process_group=pg)
    return out


def load_table_state_dict(model: nn.Module, state: Dict[str, torch.Tensor]) -> None:
    """Replace every table's content with the full tensors in ``state`` (``"<table>.<slot>"``);
    a sharded table keeps the ids it owns. Raises KeyError naming a table with no ``.id``."""
    for name, table in dynamic_tables(model):
        prefix = name + "."
        slots = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if "id" not in slots:
            raise KeyError(f"checkpoint has no rows for table {name!r} (no key {prefix}id)")
        if isinstance(table, ShardedDynamicTable):
            mine = owner_ranks(slots["id"], table.world_size) == table.rank
            slots = {k: v[mine] for k, v in slots.items()}
        table.impl.load_state_dict(slots)


def save_tables(model: nn.Module, checkpoint_id: str) -> None:
    """``dcp.save`` of :func:`table_state_dict` (a collective for sharded tables)."""
    import torch.distributed.checkpoint as dcp
    dcp.save(table_state_dict(model), checkpoint_id=checkpoint_id)


def load_tables(model: nn.Module, checkpoint_id: str, *, trusted_source: bool = False) -> None:
    """Load tables saved by :func:`save_tables` at any world size (each rank reads the full
    tensors of the tables, no collective).

    Args:
        model: the module holding the tables (``DynamicTable`` / ``ShardedDynamicTable``).
        checkpoint_id: the DCP directory.
        trusted_source: must be True. DCP unpickles ``<checkpoint_id>/.metadata``, which can run
            arbitrary code; passing True states that the directory comes from a trusted writer
            (your own :func:`save_tables`). Without it a ``PermissionError`` is raised before
            any file is read.
    """
    if trusted_source is not True:
        raise PermissionError(
            f"load_tables({checkpoint_id!r}): torch.distributed.checkpoint unpickles {checkpoint_id}/.metadata, "
            "and unpickling can run code stored in the file. Pass trusted_source=True only for directories "
            "written by your own save_tables(); use recis.framework.checkpoint_manager (safetensors + JSON, "
            "no pickle) for checkpoints from elsewhere.")
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    reader = FileSystemReader(checkpoint_id)
    meta = reader.read_metadata().state_dict_metadata
    names = {name for name, _ in dynamic_tables(model)}
    full: Dict[str, torch.Tensor] = {}
    for key, md in meta.items():
        if isinstance(md, TensorStorageMetadata) and any(key.startswith(n + ".") for n in names):
            full[key] = torch.empty(md.size, dtype=md.properties.dtype)
    dcp.load(full, storage_reader=reader, no_dist=True)
    load_table_state_dict(model, full)
