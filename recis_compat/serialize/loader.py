"""``recis.serialize.loader.Loader``: loads a RecIS sparse checkpoint into dynamic tables and
dense tensors (RecIS 1.0; see COMPATIBILITY.md).

Load info (``default_load_info()``, then ``filter_func``): ``{target: {source: [slots]}}``.
For a table child ``target`` is the child's ``shared_name`` and the default is
``{child: {child: ["id", "embedding", <other slots>]}}``; for a dense tensor
``{name: {name: []}}``. Unlike RecIS, a different ``source`` name is honoured (rows of checkpoint
child ``source`` go into child ``target``).

Table rules (RecIS's, which make loading at another world size work):

* a stored block is used only when its slice has the table's slice size and overlaps the
  table's slice range (``impl.slice``);
* of its ids, only those with ``uint64(id) % slice_size`` in the table's range are taken; they are
  encoded with the target child index when the table is coalesced and upserted;
* their rows of every listed slot the table has are written. A slot missing from the checkpoint
  logs a warning ("Sparse tensor [...] not found") and keeps the rows' initial values; a listed
  slot the table does not have logs a warning and is skipped; the ``id`` block is always read
  when any slot of a child is loaded.

Dense tensors are copied in place (shape and dtype must match); a missing one logs a warning.

Everything is checked before any table or tensor is changed: a missing or corrupt file raises
:class:`~recis_compat.serialize.layout.CheckpointError` naming the directory and the file, a
block whose dtype or row shape differs from the target raises
:class:`~recis_compat.serialize.layout.CheckpointMismatchError` naming the table and the slot.
"""
from __future__ import annotations

import concurrent.futures
import copy
import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Tuple

import torch

from recis_compat.backend.children import encode_ids
from recis_compat.backend.table_impl import DynamicTableImpl
from recis_compat.serialize.bundle import BlockRef, CheckpointBundle
from recis_compat.serialize.layout import (DENSE_SLICE, CheckpointError, CheckpointMismatchError, parse_slice,
                                           table_tensor_name)
from recis_compat.serialize.saver import as_table_impl

__all__ = ["Loader", "LoadSummary", "accept_ids"]

logger = logging.getLogger(__name__)

_CHUNK_BYTES = 32 << 20
_ID_BATCH = 1 << 20       # ids inserted per find_or_insert call on load


def accept_ids(ids: torch.Tensor, begin: int, end: int, size: int) -> torch.Tensor:
    """Mask of int64 ``ids`` whose ``uint64(id) % size`` lies in ``[begin, end)``."""
    if size & (size - 1) == 0:
        mod = ids & (size - 1)
    else:
        mod = torch.remainder(ids, size)
        neg = ids < 0            # uint64(id) = id + 2^64
        if bool(neg.any()):
            mod = torch.where(neg, torch.remainder(mod + (1 << 64) % size, size), mod)
    return (mod >= begin) & (mod < end)


@dataclass
class LoadSummary:
    """What a load did: ``match_info()`` ``{target: source}`` of loaded tensors,
    ``missing_info()`` the requested sources the checkpoint lacks, ``rows`` rows upserted per
    target child."""

    matched: Dict[str, str] = field(default_factory=OrderedDict)
    missing: List[str] = field(default_factory=list)
    rows: Dict[str, int] = field(default_factory=OrderedDict)

    def match_info(self) -> Dict[str, str]:
        return dict(self.matched)

    def missing_info(self) -> List[str]:
        return list(self.missing)


@dataclass
class _ChildTask:
    """Blocks of one source child (one stored shard part) to load into one target child."""

    target: str
    child_index: int
    id_ref: BlockRef
    n: int
    slots: List[Tuple[str, BlockRef]]


class Loader:
    """Loads a checkpoint directory written by :class:`~recis_compat.serialize.saver.Saver`
    (or by RecIS) into tables and tensors.

    Args:
        checkpoint_path: the checkpoint directory.
        hashtables: ``{name: HashtableImpl}`` (``filter_out_sparse_param(model)``).
        tensors: ``{name: Tensor}`` dense tensors, updated in place.
        parallel: threads (one table per thread at a time).
        filter_func: ``f(load_info dict) -> load_info dict``.
    """

    def __init__(self, checkpoint_path: str, hashtables: Optional[dict] = None, tensors: Optional[dict] = None,
                 parallel: int = 16, filter_func=lambda x: x) -> None:
        if hashtables is None:
            hashtables = {}
        if tensors is None:
            tensors = {}
        if not isinstance(hashtables, Mapping):
            raise TypeError(f"Loader: hashtables must be a dict {{name: table}}, got {type(hashtables).__name__}")
        if not isinstance(tensors, Mapping):
            raise TypeError(f"Loader: tensors must be a dict {{name: Tensor}}, got {type(tensors).__name__}")
        for k, v in tensors.items():
            if not isinstance(v, torch.Tensor):
                raise TypeError(f"Loader: tensors[{k!r}] is a {type(v).__name__}, not a Tensor")
        if isinstance(parallel, bool) or not isinstance(parallel, int) or parallel < 1:
            raise ValueError(f"Loader: parallel must be an int >= 1, got {parallel!r}")
        if not callable(filter_func):
            raise TypeError("Loader: filter_func must be callable")
        self._path = checkpoint_path
        self._tensors = OrderedDict(tensors)
        self._parallel = parallel
        self._filter_func = filter_func
        # child shared_name -> (table impl, child index)
        self._children: "OrderedDict[str, Tuple[DynamicTableImpl, int]]" = OrderedDict()
        self._tables: List[DynamicTableImpl] = []
        for name, obj in hashtables.items():
            impl = as_table_impl(name, obj)
            if any(impl is t for t in self._tables):
                continue
            self._tables.append(impl)
            for i, child in enumerate(impl.children.children()):
                if child in self._children:
                    raise ValueError(f"Loader: child {child!r} belongs to two tables "
                                     f"({self._children[child][0].name!r} and {impl.name!r})")
                self._children[child] = (impl, i)

    # ------------------------------------------------------------------ load info
    def default_load_info(self) -> dict:
        """``{child: {child: ["id", "embedding", ...]}}`` for every child of every table and
        ``{name: {name: []}}`` for every dense tensor."""
        info: "OrderedDict[str, dict]" = OrderedDict()
        for child, (impl, _) in self._children.items():
            info[child] = {child: ["id"] + list(impl.storage.slots)}
        for name in self._tensors:
            info[name] = {name: []}
        return info

    # ------------------------------------------------------------------ load
    def load(self, print_load_summary: bool = False) -> LoadSummary:
        """Load what the (filtered) load info asks for; returns a :class:`LoadSummary`."""
        load_info = self._filter_func(copy.deepcopy(self.default_load_info()))
        if not isinstance(load_info, Mapping):
            raise TypeError(f"Loader: filter_func must return the load-info dict, got {type(load_info).__name__}")
        bundle = CheckpointBundle(self._path)
        summary = LoadSummary()
        per_table: "OrderedDict[int, List[_ChildTask]]" = OrderedDict()
        dense: List[Tuple[str, BlockRef]] = []
        for target, sources in load_info.items():
            if not isinstance(sources, Mapping):
                raise TypeError(f"Loader: load info of {target!r} must be a dict {{source: [slots]}}, got "
                                f"{type(sources).__name__}")
            if target in self._children:
                impl, child_index = self._children[target]
                for source, slots in sources.items():
                    tasks = self._plan_child(bundle, impl, child_index, target, source, list(slots), summary)
                    per_table.setdefault(id(impl), []).extend(tasks)
            elif target in self._tensors:
                if len(sources) != 1:
                    raise ValueError(f"Loader: dense tensor {target!r} must have exactly one source, "
                                     f"got {list(sources)}")
                (source, _), = sources.items()
                ref = self._plan_dense(bundle, target, source, summary)
                if ref is not None:
                    dense.append((target, ref))
            else:
                logger.debug("load info entry %r matches no table child or tensor; skipped", target)
        tables = {id(t): t for t in self._tables}
        jobs = [(tables[k], tasks) for k, tasks in per_table.items() if tasks]
        if len(jobs) > 1 and self._parallel > 1:
            with concurrent.futures.ThreadPoolExecutor(max_workers=min(len(jobs), self._parallel)) as ex:
                for counts in ex.map(lambda job: self._load_table(bundle, *job), jobs):
                    for k, v in counts.items():
                        summary.rows[k] = summary.rows.get(k, 0) + v
        else:
            for job in jobs:
                for k, v in self._load_table(bundle, *job).items():
                    summary.rows[k] = summary.rows.get(k, 0) + v
        with torch.no_grad():
            for target, ref in dense:
                value = bundle.read(ref)
                self._tensors[target].copy_(value.reshape(self._tensors[target].shape))
        if print_load_summary:
            logger.info("load summary for %s: matched %s; missing %s", self._path, summary.matched, summary.missing)
        return summary

    # ------------------------------------------------------------------ planning
    def _plan_child(self, bundle: CheckpointBundle, impl: DynamicTableImpl, child_index: int, target: str,
                    source: str, slots: List[str], summary: LoadSummary) -> List[_ChildTask]:
        t_begin, t_end, t_size = impl.slice
        wanted: List[str] = []
        for slot in slots:
            if slot == "id" or slot in wanted:
                continue
            if slot not in impl.storage.slots:
                logger.warning("Slot [%s] of load info %r is not a slot of table %r (slots %s); skipped",
                               slot, target, impl.name, list(impl.storage.slots))
                continue
            wanted.append(slot)
        id_name = table_tensor_name(source, "id")
        if not bundle.has(id_name):
            for slot in ["id"] + wanted:
                name = table_tensor_name(source, slot)
                logger.warning("Sparse tensor [%s] not found in checkpoint %s", name, bundle.path)
                summary.missing.append(name)
            return []
        summary.matched[table_tensor_name(target, "id")] = id_name
        stored: Dict[str, Dict[Tuple[str, str], BlockRef]] = {}
        for slot in wanted:
            name = table_tensor_name(source, slot)
            if not bundle.has(name):
                logger.warning("Sparse tensor [%s] not found in checkpoint %s; table %r keeps the initial values "
                               "of slot %r", name, bundle.path, impl.name, slot)
                summary.missing.append(name)
                continue
            summary.matched[table_tensor_name(target, slot)] = name
            stored[slot] = {(r.slice, r.part): r for r in bundle.blocks(name)}
        tasks: List[_ChildTask] = []
        for id_ref in bundle.blocks(id_name):
            try:
                b, e, size = parse_slice(id_ref.slice)
            except ValueError as err:
                raise CheckpointError(f"checkpoint {bundle.path}: block {id_ref.key!r}: {err}") from err
            if size != t_size or max(b, t_begin) >= min(e, t_end):
                continue
            dtype, shape = bundle.block_meta(id_ref)
            if dtype != torch.int64 or len(shape) != 1:
                raise CheckpointError(f"checkpoint {bundle.path}: id block {id_ref.key!r} in {id_ref.file!r} is "
                                      f"{dtype} {shape}, expected int64 [n]")
            n = shape[0]
            slot_refs: List[Tuple[str, BlockRef]] = []
            for slot, refs in stored.items():
                ref = refs.get((id_ref.slice, id_ref.part))
                if ref is None:
                    logger.warning("Sparse tensor [%s] has no block for slice %s (%s) in checkpoint %s; table %r "
                                   "keeps the initial values of slot %r for those ids",
                                   table_tensor_name(source, slot), id_ref.slice, id_ref.part, bundle.path,
                                   impl.name, slot)
                    continue
                s_dtype, s_shape = bundle.block_meta(ref)
                spec = impl.storage.specs[slot]
                if s_dtype != spec.dtype or list(s_shape[1:]) != list(spec.tail):
                    raise CheckpointMismatchError(
                        f"checkpoint {bundle.path}: block {ref.key!r} ({s_dtype}, rows {list(s_shape[1:])}) does not "
                        f"fit slot {slot!r} of table {impl.name!r} (child {target!r}: {spec.dtype}, rows "
                        f"{list(spec.tail)})")
                if not s_shape or s_shape[0] != n:
                    raise CheckpointError(f"checkpoint {bundle.path}: block {ref.key!r} in {ref.file!r} has "
                                          f"{s_shape[0] if s_shape else 0} rows but its id block "
                                          f"{id_ref.key!r} has {n}")
                slot_refs.append((slot, ref))
            tasks.append(_ChildTask(target, child_index, id_ref, n, slot_refs))
        # slot blocks of parts that have no id block: the rows cannot be placed
        id_parts = {(r.slice, r.part) for r in bundle.blocks(id_name)}
        for slot, refs in stored.items():
            for k, ref in refs.items():
                if k not in id_parts:
                    raise CheckpointError(f"checkpoint {bundle.path}: block {ref.key!r} has no matching id block "
                                          f"(expected {table_tensor_name(source, 'id')} with slice {ref.slice})")
        return tasks

    def _plan_dense(self, bundle: CheckpointBundle, target: str, source: str,
                    summary: LoadSummary) -> Optional[BlockRef]:
        refs = [r for r in bundle.blocks(source) if r.slice == DENSE_SLICE]
        if not refs:
            logger.warning("Dense tensor [%s] not found in checkpoint %s", source, bundle.path)
            summary.missing.append(source)
            return None
        ref = refs[0]
        dtype, shape = bundle.block_meta(ref)
        dst = self._tensors[target]
        if dtype != dst.dtype or list(shape) != list(dst.shape):
            raise CheckpointMismatchError(f"checkpoint {bundle.path}: dense tensor {source!r} is {dtype} "
                                          f"{list(shape)}, "
                                          f"the target tensor {target!r} is {dst.dtype} {list(dst.shape)}")
        summary.matched[target] = source
        return ref

    # ------------------------------------------------------------------ execution
    def _load_table(self, bundle: CheckpointBundle, impl: DynamicTableImpl, tasks: List[_ChildTask]) -> Dict[str, int]:
        """Upsert every task's ids and write their slot rows, ``_ID_BATCH`` ids at a time: a
        batch's ids are read, inserted and their rows written before the next batch is read,
        so a restore holds one batch of ids, rows and values (plus the table itself), never
        every id of a block (132M ids would take ~5 GB: docs/stores.md). Rows are assigned in
        id order, as by one insert of the whole block."""
        begin, end, size = impl.slice
        counts: Dict[str, int] = {}
        coalesced = impl.children.is_coalesce()
        for task in tasks:
            counts.setdefault(task.target, 0)
            for a in range(0, task.n, _ID_BATCH):
                b = min(a + _ID_BATCH, task.n)
                # one open per read: safetensors maps the whole data file, and every page read
                # through the mapping stays resident in this process until it is closed (a
                # 12.7 GB slot of a 132M-id table would all be)
                with bundle.open(task.id_ref.file) as f:
                    ids = bundle.read(task.id_ref, a, b, handle=f).reshape(-1)
                mask = accept_ids(ids, begin, end, size)
                accepted = ids[mask]
                if coalesced:
                    accepted = encode_ids(accepted, task.child_index)
                counts[task.target] += int(accepted.numel())
                if accepted.numel() == 0:
                    continue
                pos_rows = torch.full((b - a,), -1, dtype=torch.int64)
                pos_rows[mask] = impl.find_or_insert_rows(accepted.to(impl.device)).cpu()
                for slot, ref in task.slots:
                    self._write_slot_rows(bundle, impl, slot, ref, a, mask, pos_rows)
        return counts

    @staticmethod
    def _write_slot_rows(bundle: CheckpointBundle, impl: DynamicTableImpl, slot: str, ref: BlockRef, a: int,
                         mask: torch.Tensor, pos_rows: torch.Tensor) -> None:
        """Write block rows ``[a, a + len(mask))`` of ``ref`` whose ``mask`` is set into table
        rows ``pos_rows`` of ``slot``, read ``_CHUNK_BYTES`` at a time (one open per chunk)."""
        spec = impl.storage.specs[slot]
        item = torch.empty((), dtype=spec.dtype).element_size()
        row_bytes = max(1, int(torch.Size(spec.tail).numel()) * item)
        step = max(1, _CHUNK_BYTES // row_bytes)
        for c in range(0, mask.numel(), step):
            m = mask[c:c + step]
            if not bool(m.any()):
                continue
            with bundle.open(ref.file) as f:
                vals = bundle.read(ref, a + c, a + c + m.numel(), handle=f)[m]
            impl.storage.write_rows(slot, pos_rows[c:c + step][m], vals)
