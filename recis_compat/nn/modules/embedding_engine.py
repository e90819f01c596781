"""``recis.nn.modules.embedding_engine``: EmbeddingEngine (RecIS 1.0; see COMPATIBILITY.md).

Construction merges the options into physical tables: every option goes to
``"CoalescedHashtable_" + sha256(coalesced_info())``; each distinct ``shared_name`` in a table is
a child (index in order of first appearance) and features with one ``shared_name`` share rows.

``forward(dict) -> dict``: per physical table, features with equal ``runtime_info`` form a group;
their ids are encoded with the child index (``(id & (2^52-1)) | (child << 52)``), concatenated,
deduplicated and looked up once, then pooled (sum/mean: one ``embedding_bag`` over the whole
group; tile: per feature) and split back. Groups of different physical tables that pool alike
(sum, or mean without weights; same dim and dtype: :meth:`EmbeddingEngine._pool_key`) are pooled
by one call over their rows concatenated, with the values and gradients of one call per group
(:meth:`EmbeddingEngine.reduce_groups`). Keys that are not embedded pass through
(RaggedTensor -> ``to_dense()``).

Under ``torchrun`` the lookups are exchanges between ranks, run in RecIS's order: every group's
ids are sent (``exchange_ids``) before any group is looked up (``lookup_exchange_emb``), and
every group's rows are in flight before the first is pooled; each stage returns right after
issuing its all-to-all (``backend/exchange.py``). The groups of sharded tables of one process
group travel together when there are several (:meth:`EmbeddingEngine.exchange_ids_grouped`,
``backend/grouped_exchange.py``): one all-to-all for all their ids, one for all their rows (per
dtype), one for all their gradients, instead of three per group (DLRM's 19 physical tables: 57
all-to-alls a step -> 3); values, rows created and gradients are the per-group path's, which
``grouped_exchange = False`` on the engine restores. A table that is not sharded (one process, or
a model not passed through ``shard_model``) has nothing to exchange and is looked up directly
(:meth:`EmbeddingEngine.group_exchange_ids`); the groups of such tables are deduped by one call
(:meth:`EmbeddingEngine.local_partitions`), and a run of consecutive groups of in-memory
floating tables with one dim is looked up by one gather and one autograd node
(:meth:`EmbeddingEngine.lookup_run`), with the values and gradients of a lookup per group. The
state of one forward lives in an :class:`EmbeddingEngineContext`, never on the module.

Differences from RecIS: a ``shared_name`` used with two configs raises the intended RuntimeError
(RecIS's message construction raises KeyError); the RaggedTensor weights are used; ``tile_len``
may differ between the features of one group.

RecIS's internals keep their meaning: ``_ht`` (``nn.ModuleDict`` table name -> DynamicEmbedding),
``_fea_group`` (table name -> :class:`HashTableCoalescedGroup`), ``_fea_to_ht`` (feature ->
table name), ``_fea_to_group`` (feature -> its HashTableCoalescedGroup), ``_emb_opts`` (feature ->
option, deep copies), ``_offset_dtype``. The runtime groups are built once (``_runtime_groups``:
table name -> runtime_info -> RuntimeGroupFeature) and :meth:`EmbeddingEngine.group_features`
hands each forward its own copies, so forwards from several threads share no per-batch state
(the tables serialise their own mutations, ``backend/table_impl.py``).
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
from collections import OrderedDict
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

from recis_compat.backend.children import MAX_CHILDREN, encode_ids
from recis_compat.backend.dynamic_table import DynamicTable, lookup_tables_with_grad, partition_ids_many
from recis_compat.backend.grouped_exchange import GroupedLookup
from recis_compat.backend.sharding import ShardedDynamicTable
from recis_compat.nn.functional.embedding_ops import ragged_embedding_segment_reduce
from recis_compat.nn.hashtable_hook import AdmitHook
from recis_compat.nn.modules.embedding import (DynamicEmbedding, EmbeddingOption, ExchangeEmbResults,
                                               ExchangeIDsResults, _cast_for_reduce, deal_with_tensor)
from recis_compat.ops.coalesce import coalesce_ids
from recis_compat.ops.tile import tile
from recis_compat.ragged.tensor import RaggedTensor

__all__ = ["EmbeddingEngine", "EmbeddingEngineContext", "HashTableCoalescedGroup", "RuntimeGroupFeature",
           "table_name_of"]


def table_name_of(opt: EmbeddingOption) -> str:
    return "CoalescedHashtable_" + hashlib.sha256(opt.coalesced_info().encode()).hexdigest()


class HashTableCoalescedGroup:
    """The features and children (shared_names) of one physical table."""

    def __init__(self, name: str):
        self._name = name
        self._emb_opt: Optional[EmbeddingOption] = None     # the first option (RecIS's name)
        # RecIS's names: shared_name -> child index; feature -> child index; feature -> runtime_info
        self._children: Dict[str, int] = {}
        self._fea_to_encode_id: Dict[str, int] = {}
        self._fea_to_runtime: Dict[str, str] = {}
        self._fea_opt: "OrderedDict[str, EmbeddingOption]" = OrderedDict()

    @property
    def name(self) -> str:
        return self._name

    def add_option(self, fea_name: str, emb_opt: EmbeddingOption) -> None:
        child = emb_opt.shared_name
        if child not in self._children:
            if len(self._children) >= MAX_CHILDREN:
                raise ValueError(f"physical table {self._name} (dim {emb_opt.embedding_dim}, {emb_opt.dtype}): "
                                 f"feature {fea_name!r} would add child {child!r} beyond the {MAX_CHILDREN} "
                                 "shared_names one table can hold (12-bit child index)")
            self._children[child] = len(self._children)
        if self._emb_opt is None:
            self._emb_opt = emb_opt
        self._fea_opt[fea_name] = emb_opt
        self._fea_to_encode_id[fea_name] = self._children[child]
        self._fea_to_runtime[fea_name] = emb_opt.runtime_info()

    def features(self) -> List[str]:
        return list(self._fea_opt)

    def option(self, fea: str) -> EmbeddingOption:
        return self._fea_opt[fea]

    def runtime_info(self, fea: str) -> str:
        return self._fea_to_runtime[fea]

    def encode_id(self, fea: str) -> int:
        """The child index of feature ``fea``."""
        return self._fea_to_encode_id[fea]

    def children_info(self, fea: str) -> dict:
        """The lookup settings of feature ``fea``, as RecIS: ``{"combiner", "dim", "use_weight",
        "combiner_kwargs", "admit_hook", "fp16_enabled"}`` (``RuntimeGroupFeature(**info,
        offset_dtype=...)`` builds its group)."""
        o = self._fea_opt[fea]
        return {"combiner": o.combiner, "dim": o.embedding_dim, "use_weight": o.use_weight,
                "combiner_kwargs": o.combiner_kwargs, "admit_hook": o.admit_hook, "fp16_enabled": o.fp16_enabled}

    def shared_name(self, fea: str) -> str:
        """The child (``shared_name``) feature ``fea`` reads."""
        return self._fea_opt[fea].shared_name

    def children(self) -> List[str]:
        return list(self._children)

    def embedding_info(self) -> EmbeddingOption:
        """The option of the physical table (from the first feature's option)."""
        first = next(iter(self._fea_opt.values()))
        return EmbeddingOption(embedding_dim=first.embedding_dim, dtype=first.dtype, device=first.device,
                               initializer=copy.deepcopy(first.initializer), grad_reduce_by=first.grad_reduce_by,
                               fp16_enabled=first.fp16_enabled, filter_hook=first.filter_hook,
                               shared_name=self._name, children=list(self._children), coalesced=True)


class RuntimeGroupFeature:
    """Features of one physical table looked up and pooled together (equal runtime_info)."""

    def __init__(self, dim: int, combiner: str, use_weight: bool, offset_dtype: torch.dtype, admit_hook,
                 fp16_enabled: bool, trainable: bool = True, **kwargs):
        self.dim, self.combiner, self.use_weight = dim, combiner, use_weight
        self.offset_dtype, self.admit_hook, self.fp16_enabled = offset_dtype, admit_hook, fp16_enabled
        self.trainable = trainable
        self.combiner_kwargs: Dict[str, dict] = {}
        self._names: List[str] = []
        self._children: List[int] = []
        self.clear_ids()

    def add_fea(self, name: str, child_index: int, combiner_kwargs: Optional[dict] = None) -> None:
        self._names.append(name)
        self._children.append(child_index)
        self.combiner_kwargs[name] = dict(combiner_kwargs or {})

    def names(self) -> List[str]:
        return list(self._names)

    def child_of(self, name: str) -> int:
        return self._children[self._names.index(name)]

    def clear_ids(self) -> None:
        self.coalesced_ids: Optional[torch.Tensor] = None
        self.coalesced_weights: Optional[torch.Tensor] = None
        self.coalesced_offsets: Optional[torch.Tensor] = None
        self.split_size: List[int] = []
        self.shapes: List[tuple] = []
        self.present: List[str] = []
        self.ragged: List[bool] = []
        self.value_counts: List[int] = []
        # (unique, inverse, [U]) of coalesced_ids when computed with other groups' (a table
        # that is not sharded; EmbeddingEngine.local_partitions), else None
        self.partition: Optional[tuple] = None

    def clear_child(self) -> None:
        self._names.clear()
        self._children.clear()
        self.combiner_kwargs.clear()

    def coalesce(self, inputs: dict, table: str) -> bool:
        """Encode, concatenate and merge the ids of the present features; False if none.

        The merged ids and offsets come from one csrc call (``ops.coalesce.coalesce_ids``) rather
        than a few small ops per feature: with dozens of features per group the per-op overhead
        was most of the cost."""
        self.clear_ids()
        vals, offs, weights, children = [], [], [], []
        any_weight = False
        for name, child in zip(self._names, self._children):
            if name not in inputs:
                continue
            what = f"feature {name!r} (table {table})"
            val, off, w, shape = deal_with_tensor(inputs[name], what=what)
            vals.append(val)
            offs.append(off)
            children.append(child)
            if w is not None and self.use_weight:
                any_weight = True
            weights.append(w)
            self.present.append(name)
            self.split_size.append(off.numel() - 1)
            self.shapes.append(shape)
            self.ragged.append(isinstance(inputs[name], RaggedTensor))
            self.value_counts.append(val.numel())
        if not vals:
            return False
        self.coalesced_ids, self.coalesced_offsets = coalesce_ids(vals, offs, children)
        if any_weight:
            self.coalesced_weights = torch.cat([
                w.to(torch.float32).reshape(-1) if w is not None else torch.ones(n, dtype=torch.float32, device=self.coalesced_ids.device)
                for w, n in zip(weights, self.value_counts)])
        return True


class EmbeddingEngineContext:
    """The state of one :meth:`EmbeddingEngine.forward` (TorchRec's per-call context): for
    every group with inputs, ``(table name, RuntimeGroupFeature, ExchangeIDsResults,
    ExchangeEmbResults)``, the last two filled as the stages run."""

    def __init__(self, groups: List[tuple]):
        self.groups = [[ht_name, group, None, None] for ht_name, group in groups]
        # group position -> (rows of a run of tables gathered together [sum U, dim], first row
        # of this group's, its row count): groups looked up by EmbeddingEngine.lookup_run
        self.spans: Dict[int, Tuple[torch.Tensor, int, int]] = {}
        # first member position -> the rows of a grouped exchange in flight (lookup_grouped)
        self.pending: Dict[int, object] = {}


class EmbeddingEngine(nn.Module):
    """Embeds the features named in ``emb_options`` (feature name -> EmbeddingOption) and passes
    every other input key through. See the module docstring."""

    def __init__(self, emb_options: Dict[str, EmbeddingOption]):
        super().__init__()
        if not isinstance(emb_options, dict):
            raise TypeError(f"EmbeddingEngine expects a dict of feature name -> EmbeddingOption, got "
                            f"{type(emb_options).__name__}")
        self._emb_opts: "OrderedDict[str, EmbeddingOption]" = OrderedDict()
        groups: "OrderedDict[str, HashTableCoalescedGroup]" = OrderedDict()
        shared_info: Dict[str, tuple] = {}
        self._fea_to_ht: Dict[str, str] = {}
        for fea, opt in emb_options.items():
            if not isinstance(opt, EmbeddingOption):
                raise TypeError(f"EmbeddingEngine: feature {fea!r} needs an EmbeddingOption, got {type(opt).__name__}")
            opt = copy.deepcopy(opt)
            info = opt.coalesced_info()
            prev = shared_info.get(opt.shared_name)
            if prev is not None and prev[1] != info:
                raise RuntimeError(
                    f"EmbeddingEngine: shared_name {opt.shared_name!r} is used by feature {prev[0]!r} with "
                    f"{prev[1]} and by feature {fea!r} with {info}; features that share a table must agree on "
                    "dim, dtype, device, initializer, grad_reduce_by and filter_hook")
            shared_info.setdefault(opt.shared_name, (fea, info))
            ht_name = table_name_of(opt)
            groups.setdefault(ht_name, HashTableCoalescedGroup(ht_name)).add_option(fea, opt)
            self._fea_to_ht[fea] = ht_name
            self._emb_opts[fea] = opt
        self._offset_dtype = torch.int32
        # sharded tables: one exchange for all groups of a process group (exchange_ids_grouped)
        self.grouped_exchange = True
        self._ht = nn.ModuleDict({name: DynamicEmbedding(g.embedding_info()) for name, g in groups.items()})
        self._fea_group: "OrderedDict[str, HashTableCoalescedGroup]" = groups
        self._coalesced_groups = groups
        self._fea_to_group: Dict[str, HashTableCoalescedGroup] = {
            fea: groups[ht] for fea, ht in self._fea_to_ht.items()}
        # runtime groups: table -> runtime_info -> RuntimeGroupFeature (templates; each forward
        # works on copies, see group_features)
        self._runtime_groups: "OrderedDict[str, OrderedDict[str, RuntimeGroupFeature]]" = OrderedDict()
        for ht_name, g in groups.items():
            per_table = self._runtime_groups.setdefault(ht_name, OrderedDict())
            for fea in g.features():
                opt = g.option(fea)
                rinfo = opt.runtime_info()
                if rinfo not in per_table:
                    per_table[rinfo] = RuntimeGroupFeature(opt.embedding_dim, opt.combiner, opt.use_weight,
                                                           self._offset_dtype, opt.admit_hook, opt.fp16_enabled,
                                                           trainable=opt.trainable)
                per_table[rinfo].add_fea(fea, g.encode_id(fea), opt.combiner_kwargs)

    # ------------------------------------------------------------------ stages
    def group_features(self, input_features: dict) -> List[tuple]:
        """``[(table_name, RuntimeGroupFeature)]`` of the groups with at least one input present,
        coalesced. Each call gets its own group objects (shallow copies of the templates in
        ``_runtime_groups``: the feature lists are shared, the per-batch tensors are not), so
        concurrent forwards cannot see each other's ids."""
        out = []
        for ht_name, per_table in self._runtime_groups.items():
            for template in per_table.values():
                group = copy.copy(template)
                if group.coalesce(input_features, ht_name):
                    out.append((ht_name, group))
        return out

    def _local_table(self, ht_name: str) -> Optional[DynamicTable]:
        """The backend table of ``ht_name`` when it holds all its rows in this process (a
        ``DynamicTable``, not sharded: nothing to exchange), else None."""
        table = self._ht[ht_name].hashtable.table
        return table if isinstance(table, DynamicTable) else None

    def group_exchange_ids(self, ht_name: str, group: RuntimeGroupFeature) -> ExchangeIDsResults:
        """Dedupe the group's ids and issue their exchange. A table that is not sharded has
        nothing to exchange: its distinct ids are taken here (``partition_ids``, or
        ``group.partition``: its result computed for several groups at once by
        :meth:`local_partitions`) and ``ids_await`` is None, skipping the staged request (``backend/dynamic_table.py``
        ``LookupRequest``: a context and three awaitables per lookup, which cost as much as a
        small table's lookup itself); the values are those of the staged path."""
        table = self._local_table(ht_name)
        if table is None:
            return self._ht[ht_name].exchange_ids(group.coalesced_ids, group.coalesced_offsets)
        partition = group.partition
        uniq, reverse, parts = partition if partition is not None else table.partition_ids(group.coalesced_ids)
        return ExchangeIDsResults(ids=uniq, parts=parts, parts_reverse=[], reverse_index=reverse,
                                  offsets=group.coalesced_offsets, ids_await=None)

    def _sharded_table(self, ht_name: str):
        """The :class:`ShardedDynamicTable` of ``ht_name`` when its rows are spread over
        several ranks (a model passed through ``shard_model`` under torchrun), else None."""
        table = self._ht[ht_name].hashtable.table
        if isinstance(table, ShardedDynamicTable) and table.world_size > 1:
            return table
        return None

    def exchange_ids_grouped(self, ctx: EmbeddingEngineContext) -> Dict[int, tuple]:
        """Issue one id exchange for the groups of sharded tables of each process group, when
        there are at least two (``backend/grouped_exchange.py`` ``GroupedLookup``: every
        group's ids in one all-to-all, their rows back in one, their gradients in one, instead
        of three per group; the values, rows created and gradients are the per-group path's).
        Fills ``ctx.groups[i][2]`` of every member (``ids_await`` None: the grouped exchange
        carries it) and returns ``{first member position: (GroupedLookup, member positions)}``.
        ``grouped_exchange = False`` on the engine keeps one exchange per group."""
        if not self.grouped_exchange:
            return {}
        by_pg: "OrderedDict[int, List[int]]" = OrderedDict()
        for i, (ht_name, _, _, _) in enumerate(ctx.groups):
            table = self._sharded_table(ht_name)
            if table is not None:
                by_pg.setdefault(id(table.process_group), []).append(i)
        out: Dict[int, tuple] = {}
        for members in by_pg.values():
            if len(members) < 2:
                continue
            tables = [self._sharded_table(ctx.groups[i][0]) for i in members]
            capacity = tables[0].group_capacity(tuple(t.name for t in tables))
            batch = GroupedLookup(tables, [ctx.groups[i][1].coalesced_ids for i in members], capacity)
            for k, i in enumerate(members):
                group = ctx.groups[i][1]
                ctx.groups[i][2] = ExchangeIDsResults(ids=batch.unique[k], parts=batch.send_counts[k],
                                                      parts_reverse=[], reverse_index=batch.inverse[k],
                                                      offsets=group.coalesced_offsets, ids_await=None)
            out[members[0]] = (batch, members)
        return out

    def lookup_grouped(self, ctx: EmbeddingEngineContext, batch: GroupedLookup, members: List[int]) -> None:
        """The owner lookups of a grouped exchange (in group order, admission checked per group
        as ``group_exchange_embs`` does) and the rows' way back; fills ``ctx.groups[i][3]``
        (rows pending: :meth:`wait_grouped`)."""
        readonly = [self._check_admit_hook(ctx.groups[i][0], ctx.groups[i][1]) for i in members]
        ctx.pending[members[0]] = batch.fetch(readonly)
        for k, i in enumerate(members):
            ids_result = ctx.groups[i][2]
            ids_result.parts_reverse = batch.received_counts[k]
            ctx.groups[i][3] = ExchangeEmbResults(emb=None, reverse_index=ids_result.reverse_index,
                                                  emb_shape=(ids_result.ids.numel(), ctx.groups[i][1].dim),
                                                  offsets=ids_result.offsets, emb_await=None)

    def wait_grouped(self, ctx: EmbeddingEngineContext, members: List[int]) -> None:
        """Wait for a grouped exchange's rows: every member's ``emb`` (a view) and, for floating
        rows, ``ctx.spans`` (the lookups of one dim and dtype are one tensor, which the merged
        pooling takes as it is)."""
        rows = ctx.pending.pop(members[0]).wait()
        for k, i in enumerate(members):
            ctx.groups[i][3].emb = rows.rows(k)
            if rows.spans[k][0].is_floating_point():    # integer rows are cast per group (reduce_groups)
                ctx.spans[i] = rows.spans[k]

    def _check_admit_hook(self, ht_name: str, group: RuntimeGroupFeature) -> bool:
        """Whether the group's lookup is read-only (``AdmitHook('ReadOnly')``); AssertionError
        naming the table for any other admit hook."""
        admit_hook = group.admit_hook
        if admit_hook is not None and (not isinstance(admit_hook, AdmitHook) or admit_hook.name != "ReadOnly"):
            raise AssertionError(f"table {self._ht[ht_name].name!r}: only AdmitHook('ReadOnly') is supported, "
                                 f"got {admit_hook}")
        return admit_hook is not None

    def _run_key(self, ht_name: str, ids_result: ExchangeIDsResults) -> Optional[tuple]:
        """What consecutive groups must share to be looked up by one gather
        (:meth:`lookup_run`); None for a group looked up on its own: a sharded table
        (its rows come through exchanges), a file-backed one (its rows are read through its
        cache) or an integer table."""
        if ids_result.ids_await is not None:
            return None
        table = self._local_table(ht_name)
        if table is None or not table.in_memory or table.impl.read_only:
            return None
        impl = table.impl
        return (table.trains_rows, impl.dtype, impl.dim, impl.device)

    def local_runs(self, ctx: EmbeddingEngineContext) -> List[Tuple[List[int], bool]]:
        """The runs of consecutive groups of ``ctx`` (after :meth:`group_exchange_ids`) with the
        same :meth:`_run_key`, at least two groups each: ``[(group positions, rows train)]``.
        :meth:`lookup_run` looks each up by one gather."""
        keys = [self._run_key(e[0], e[2]) for e in ctx.groups]
        runs = []
        i = 0
        while i < len(keys):
            j = i + 1
            while keys[i] is not None and j < len(keys) and keys[j] == keys[i]:
                j += 1
            if j - i >= 2:
                runs.append((list(range(i, j)), keys[i][0]))
            i = j
        return runs

    def lookup_run(self, ctx: EmbeddingEngineContext, members: List[int], trains: bool) -> None:
        """Look up the groups ``members`` (a run of :meth:`local_runs`) by one gather: the tables'
        rows (find or insert, as ``lookup_unique``) by ``DynamicTable.lookup_rows_many``
        (backend/dynamic_table.py: the id-map inserts and the new rows' initial values of all
        of them in one csrc call each; the rows, counters and values of ``lookup_rows`` per
        group in group order), all the run's tables' locks held; then one ``lookup_tables_with_grad`` over the run
        (backend/dynamic_table.py: one csrc gather into ``[sum U, dim]`` and one autograd node
        whose backward hands each table its rows' gradient). The values, the rows created and
        their initial values, and the gradients the tables receive are those of one
        :meth:`group_exchange_embs` per group; the per-group gathers, autograd nodes and
        missing-row checks (~60 us a table) are saved, and the merged pooling
        (:meth:`reduce_groups`) takes the run's rows without concatenating them. Fills
        ``ctx.groups[i][3]`` (``emb``: the group's rows, a view of the run's) and ``ctx.spans``."""
        tables = [self._local_table(ctx.groups[i][0]) for i in members]
        readonly = [self._check_admit_hook(ctx.groups[i][0], ctx.groups[i][1]) for i in members]
        with contextlib.ExitStack() as stack:
            for table in tables:        # group order: every forward takes the locks in one order
                stack.enter_context(table.impl.lock)
            # the inserts and new rows of all the run's tables by two csrc calls (lookup_rows_many)
            rows = DynamicTable.lookup_rows_many(tables, [ctx.groups[i][2].ids for i in members], readonly)
            # rows of a training lookup that is not read-only are all present (inserted)
            emb = lookup_tables_with_grad([t.impl for t in tables], [t.anchor for t in tables], rows,
                                          [t.grad_scale() for t in tables], grad=trains,
                                          present=[trains and not ro for ro in readonly])
        base = 0
        for i, r in zip(members, rows):
            _, group, ids_result, _ = ctx.groups[i]
            n = r.numel()
            ids_result.parts_reverse = [n]
            # the group's own rows (a view), for per-group consumers (group_reduce)
            ctx.groups[i][3] = ExchangeEmbResults(emb=emb.narrow(0, base, n), reverse_index=ids_result.reverse_index,
                                                  emb_shape=(n, group.dim), offsets=ids_result.offsets,
                                                  emb_await=None)
            ctx.spans[i] = (emb, base, n)
            base += n

    def local_partitions(self, ctx: EmbeddingEngineContext) -> Dict[int, tuple]:
        """``{group position: (unique [U], inverse [N], [U])}`` for the groups of tables that
        are not sharded, when there are several: their ``partition_ids`` by one csrc call over
        all of them (``partition_ids_many``, backend/dynamic_table.py: the same values, the
        lists deduped in parallel); empty otherwise (each group dedupes its own ids)."""
        local = [(i, table) for i, (ht_name, _, _, _) in enumerate(ctx.groups)
                 if (table := self._local_table(ht_name)) is not None]
        if len(local) < 2:
            return {}
        parts = partition_ids_many([t for _, t in local], [ctx.groups[i][1].coalesced_ids for i, _ in local])
        return {i: p for (i, _), p in zip(local, parts)}

    def group_exchange_embs(self, ht_name: str, group: RuntimeGroupFeature,
                            ids_result: ExchangeIDsResults) -> ExchangeEmbResults:
        """Look the group's distinct ids up (rows via ``wait_exchange_emb``). Ids of a table that
        is not sharded (``ids_await`` None, see :meth:`group_exchange_ids`) are looked up
        directly with ``HashTable.lookup_unique`` under the table's lock, as the staged
        ``fetch`` does."""
        dyn = self._ht[ht_name]
        if ids_result.ids_await is not None:
            return dyn.lookup_exchange_emb(ids_result, group.admit_hook)
        readonly = self._check_admit_hook(ht_name, group)
        with dyn.hashtable.impl.lock:
            emb = dyn.hashtable.lookup_unique(ids_result.ids, readonly=readonly)
        ids_result.parts_reverse = [ids_result.ids.numel()]
        return ExchangeEmbResults(emb=emb, reverse_index=ids_result.reverse_index,
                                  emb_shape=(ids_result.ids.numel(), group.dim),
                                  offsets=ids_result.offsets, emb_await=None)

    def group_reduce(self, ht_name: str, group: RuntimeGroupFeature, emb_result) -> Dict[str, torch.Tensor]:
        dyn = self._ht[ht_name]
        emb = _cast_for_reduce(dyn.wait_exchange_emb(emb_result), group.fp16_enabled)
        weight = group.coalesced_weights
        if weight is not None and weight.dtype != emb.dtype:
            weight = weight.to(emb.dtype)
        reverse, offsets = emb_result.reverse_index, group.coalesced_offsets
        out: Dict[str, torch.Tensor] = {}
        if group.combiner == "tile":
            bag_start = 0
            for name, bags, shape, ragged in zip(group.present, group.split_size, group.shapes, group.ragged):
                if len(shape) != 1:
                    raise RuntimeError(f"feature {name!r} (table {ht_name}): combiner 'tile' needs 2-D ids "
                                       f"[B, *]; got a {len(shape) + 1}-D RaggedTensor")
                tl = int(group.combiner_kwargs[name]["tile_len"])
                off = offsets[bag_start:bag_start + bags + 1]
                rows = tile(emb, reverse, off, tl)
                out[name] = rows if ragged else rows.reshape(bags, tl * emb.shape[1])
                bag_start += bags
            return out
        pooled = ragged_embedding_segment_reduce(emb, weight, reverse, offsets, group.combiner)
        for name, part, shape in zip(group.present, torch.split(pooled, group.split_size), group.shapes):
            out[name] = part.view(tuple(shape) + (emb.shape[1],))
        return out

    @staticmethod
    def _pool_key(group: RuntimeGroupFeature, emb: torch.Tensor) -> Optional[tuple]:
        """What groups of different physical tables must share to be pooled by one call
        (``reduce_groups``); None for a group that is pooled on its own. ``sum`` (weighted or
        not) and unweighted ``mean`` pool every bag independently of the others, so a merged
        call gives every bag the bits of a call per group. Weighted ``mean`` divides by bag
        sums taken from one cumulative sum over the call's weights (``_bag_weight_sums`` in
        nn/functional/embedding_ops.py), whose rounding depends on the bags before: it stays
        per group, as does ``tile``."""
        weighted = group.coalesced_weights is not None
        if group.combiner == "tile" or (group.combiner == "mean" and weighted):
            return None
        return (group.combiner, weighted, group.trainable, emb.dtype, emb.device, emb.shape[1])

    def reduce_groups(self, ctx: EmbeddingEngineContext) -> Dict[str, torch.Tensor]:
        """The pooled embedding of every present feature of ``ctx``'s groups (after their
        ``group_exchange_embs``): ``{feature: [*bag_shape, dim]}`` (tile: as ``group_reduce``).

        Groups of different physical tables with the same ``_pool_key`` are pooled by one
        ``ragged_embedding_segment_reduce`` over their rows concatenated (``[sum U, dim]``), the
        reverse indices shifted by the rows before them and the bag offsets by the ids before
        them; the result is cut back per feature (contiguous row slices). The values are those
        of one call per group (see ``_pool_key``), and so are the gradients the tables receive:
        the backward of the concatenation hands each table the rows of its own slice. One call
        instead of one per table saves the per-call cost (op dispatch, autograd node, the
        missing-id check), which with dozens of tables (DLRM's 26 fields with per-field
        initializers: 19 physical tables) was a large part of the forward and backward."""
        out: Dict[str, torch.Tensor] = {}
        batches: "OrderedDict[tuple, list]" = OrderedDict()
        for i, (ht_name, group, _, emb_result) in enumerate(ctx.groups):
            span = ctx.spans.get(i)
            if span is None:
                emb = _cast_for_reduce(self._ht[ht_name].wait_exchange_emb(emb_result), group.fp16_enabled)
            else:
                emb = span[0]       # a run's rows (floating): dtype, device and dim of the group's
            key = self._pool_key(group, emb)
            if key is None:
                out.update(self.split_group_embs(group, self.group_reduce(ht_name, group, emb_result)))
            else:
                batches.setdefault(key, []).append((ht_name, group, emb_result, emb, i))
        for members in batches.values():
            if len(members) == 1:
                ht_name, group, emb_result, _, _ = members[0]
                out.update(self.split_group_embs(group, self.group_reduce(ht_name, group, emb_result)))
                continue
            out.update(self._reduce_merged(ctx, members))
        return out

    @staticmethod
    def _merged_rows(ctx: EmbeddingEngineContext, members: List[tuple]) -> torch.Tensor:
        """The rows of ``members`` one after the other ``[sum U, dim]``: a run's rows as they
        are (or a slice of them) when the members are consecutive groups of one run
        (:meth:`lookup_run`), else their concatenation."""
        spans = [ctx.spans.get(m[4]) for m in members]
        if all(sp is not None for sp in spans):
            fused, base = spans[0][0], spans[0][1]
            end = base
            for sp in spans:
                if sp[0] is not fused or sp[1] != end:
                    break
                end += sp[2]
            else:
                return fused if base == 0 and end == fused.shape[0] else fused.narrow(0, base, end - base)
        return torch.cat([m[2].emb.view(m[2].emb_shape) if sp is not None else m[3] for m, sp in zip(members, spans)])

    def _reduce_merged(self, ctx: EmbeddingEngineContext, members: List[tuple]) -> Dict[str, torch.Tensor]:
        """One pooling call over ``members`` ``[(table, group, ExchangeEmbResults, rows [U_g, dim]
        (or a run's rows, see ``reduce_groups``), group position)]`` that share a ``_pool_key``
        (see ``reduce_groups``)."""
        reverse, ends, weights = [], [], []
        row_bases, id_bases, n_ids, n_bags = [], [], [], []
        row_base = id_base = 0
        for _, group, emb_result, emb, _ in members:
            reverse.append(emb_result.reverse_index)
            ends.append(group.coalesced_offsets[1:].to(torch.int64))
            if group.coalesced_weights is not None:
                weights.append(group.coalesced_weights.to(emb.dtype))
            row_bases.append(row_base)
            id_bases.append(id_base)
            n_ids.append(emb_result.reverse_index.numel())
            n_bags.append(ends[-1].numel())
            row_base += emb_result.emb_shape[0]
            id_base += n_ids[-1]
        all_rows = self._merged_rows(ctx, members)
        device = all_rows.device
        # every group's reverse indices shifted by the rows before it (-1, a missing id, stays
        # -1) and its bag ends by the ids before it: a few ops for all groups, not a few per group
        rev = torch.cat(reverse)
        rev = torch.where(rev < 0, rev, rev + torch.repeat_interleave(
            torch.tensor(row_bases, dtype=torch.int64, device=device),
            torch.tensor(n_ids, dtype=torch.int64, device=device), output_size=rev.numel()))
        ends = torch.cat(ends)
        ends = ends + torch.repeat_interleave(torch.tensor(id_bases, dtype=torch.int64, device=device),
                                              torch.tensor(n_bags, dtype=torch.int64, device=device),
                                              output_size=ends.numel())
        offsets = torch.cat([members[0][1].coalesced_offsets[:1].to(torch.int64), ends])
        first = members[0][1]
        pooled = ragged_embedding_segment_reduce(all_rows, torch.cat(weights) if weights else None,
                                                 rev, offsets, first.combiner)
        sizes = [n for _, group, _, _, _ in members for n in group.split_size]
        parts = iter(torch.split(pooled, sizes))
        out: Dict[str, torch.Tensor] = {}
        for _, group, _, _, _ in members:
            embs = {name: next(parts).view(tuple(shape) + (pooled.shape[1],))
                    for name, shape in zip(group.present, group.shapes)}
            out.update(self.split_group_embs(group, embs))
        return out

    def split_group_embs(self, group: RuntimeGroupFeature, embs: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        if group.trainable:
            return embs
        return {k: v.detach() for k, v in embs.items()}

    def format_direct_out(self, input_features: dict) -> dict:
        out = OrderedDict()
        for key, value in input_features.items():
            if key in self._emb_opts:
                continue
            if isinstance(value, RaggedTensor):
                out[key] = value.to_dense()
            elif isinstance(value, torch.Tensor):
                if value.is_sparse:
                    raise TypeError(f"EmbeddingEngine: input {key!r} is a sparse tensor; pass-through keys must be "
                                    "dense tensors or RaggedTensors")
                out[key] = value
            else:
                out[key] = value
        return out

    # ------------------------------------------------------------------ forward
    def forward(self, input_features: dict) -> dict:
        if not isinstance(input_features, dict):
            raise TypeError(f"EmbeddingEngine expects a dict of features, got {type(input_features).__name__}")
        ctx = EmbeddingEngineContext(self.group_features(input_features))
        for i, partition in self.local_partitions(ctx).items():
            ctx.groups[i][1].partition = partition
        grouped = self.exchange_ids_grouped(ctx)    # sharded groups: one id exchange per process group
        for entry in ctx.groups:                    # every group's id exchange issued ...
            if entry[2] is None:
                entry[2] = self.group_exchange_ids(entry[0], entry[1])
        for batch, _ in grouped.values():           # ... and its ids sent, before any lookup
            batch.send()
        for entry in ctx.groups:
            if entry[2].ids_await is not None:      # None: a table that is not sharded (or grouped)
                entry[2].ids_await.send()
        runs = {members[0]: (members, trains) for members, trains in self.local_runs(ctx)}
        for i, entry in enumerate(ctx.groups):      # lookups; every group's rows in flight ...
            if i in runs:                           # a run of unsharded tables: one gather
                self.lookup_run(ctx, *runs[i])
            if i in grouped:                        # every lookup of a grouped exchange
                self.lookup_grouped(ctx, *grouped[i])
            if entry[3] is None:
                entry[3] = self.group_exchange_embs(entry[0], entry[1], entry[2])
        for _, members in grouped.values():
            self.wait_grouped(ctx, members)
        embedded = self.reduce_groups(ctx)          # ... before the first is pooled
        out = OrderedDict((k, embedded[k]) for k in self._emb_opts if k in embedded)
        out.update(self.format_direct_out(input_features))
        return out

    def tables(self) -> Dict[str, DynamicEmbedding]:
        """``{physical table name: DynamicEmbedding}``."""
        return dict(self._ht.items())

    def table_of(self, feature: str) -> str:
        """The physical table name that ``feature`` is looked up in."""
        if feature not in self._fea_to_ht:
            raise KeyError(f"EmbeddingEngine: no embedding option for feature {feature!r} "
                           f"(features: {sorted(self._fea_to_ht)})")
        return self._fea_to_ht[feature]

    def table_ids(self, feature: str, ids: torch.Tensor) -> torch.Tensor:
        """``feature``'s int64 ids ``[N]`` as its table stores them (the child index in the top
        bits when the table is coalesced; unchanged otherwise): the keys of
        ``tables()[table_of(feature)].hashtable.impl``."""
        ht = self.table_of(feature)
        return encode_ids(ids, self._coalesced_groups[ht].encode_id(feature))

