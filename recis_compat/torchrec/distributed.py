"""Sharded dynamic collections: DMP shards them beside TorchRec's own modules.

:class:`DynamicEmbeddingBagCollectionSharder` / :class:`DynamicEmbeddingCollectionSharder` turn
the modules of ``recis_compat/torchrec/modules.py`` into
:class:`ShardedDynamicEmbeddingBagCollection` / :class:`ShardedDynamicEmbeddingCollection`:
every table becomes a ``ShardedDynamicTable`` (``recis_compat/backend/sharding.py``: row-wise by
RecIS's rule, rank r owns the ids whose ``id & 0xFFFF`` falls in its slice range). The sharded
collection follows TorchRec's ``ShardedModule`` protocol, so TorchRec's
``TrainPipelineSparseDist`` can run ``input_dist`` of the next batch early:

* ``input_dist(ctx, features)``: the distinct ids of every table are sent to their owners,
  one TorchRec ``KJTAllToAll`` per group of tables with the same embedding dim (all issued
  before any wait) -> ``KJTListSplitsAwaitable``;
* ``compute_and_output_dist(ctx, kjts)``: each owner looks the ids up in its
  ``ShardedDynamicTable`` shards (inserting in training), the rows go back (one
  ``SequenceEmbeddingsAllToAll`` per group, autograd-aware) and the requester pools them
  (sum/mean, per-sample weights) -> ``LazyAwaitable[KeyedTensor]`` (EBC) or
  ``LazyAwaitable[Dict[str, JaggedTensor]]`` (EC).

Gradients follow the rows back to their owners; the collection's ``fused_optimizer`` (collected
by DMP's ``fused_optimizer``) updates each rank's shard. :func:`shard_model` is
``backend.sharding.shard_model`` with these sharders added; ``dynamic_table_plan`` gives the
collections their plan entries (the planner has no Parameters to place).
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

import torch
from torch import nn
from torchrec.distributed.dist_data import KJTAllToAll, SequenceEmbeddingsAllToAll
from torchrec.distributed.embedding_sharding import KJTListSplitsAwaitable
from torchrec.distributed.embedding_types import KJTList
from torchrec.distributed.types import (EmbeddingModuleShardingPlan, LazyNoWait, ShardedModule, ShardingEnv)
from torchrec.optim.fused import FusedOptimizerModule
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor
from torchrec.streamable import Multistreamable

from recis_compat.backend.sharding import (DistributedExchangeError, DynamicModuleSharder, DynamicTableSharder,
                                           ShardedDynamicTable, dynamic_table_plan, guarded_reverse_exchange,
                                           record_context_stream)
from recis_compat.backend.slices import owner_ranks
from recis_compat.backend.sharding import shard_model as _backend_shard_model
from recis_compat.torchrec.modules import (DynamicEmbeddingBagCollection, DynamicEmbeddingCollection,
                                           _DynamicCollectionBase)

__all__ = ["ShardedDynamicEmbeddingBagCollection", "ShardedDynamicEmbeddingCollection",
           "DynamicEmbeddingBagCollectionSharder", "DynamicEmbeddingCollectionSharder", "dynamic_sharders",
           "shard_model", "dynamic_plan"]


class _GroupCtx(Multistreamable):
    """Per-batch state of one exchange group (tables of one embedding dim)."""

    def __init__(self):
        self.send_perm: Optional[torch.Tensor] = None     # requester: positions in cat(uniq) sent in order
        self.send_counts: List[int] = []                  # requester: ids sent to each rank
        self.sizes: List[int] = []                        # requester: U_t of every table
        self.recv_lengths: Optional[torch.Tensor] = None  # owner: ids received, [T, W]
        self.table_ctxs: List[Any] = []                   # owner: per-table lookup contexts

    def record_stream(self, stream) -> None:
        record_context_stream(self, stream)


class _CollectionCtx(Multistreamable):
    """Per-batch state: the collection's plan (unique ids, inverse, ...) per table and the
    state of every exchange group."""

    def __init__(self):
        self.features: Optional[KeyedJaggedTensor] = None
        self.plan: List[Any] = []
        self.groups: List[_GroupCtx] = []

    def record_stream(self, stream) -> None:
        record_context_stream(self, stream)


class _ExchangeGroup(nn.Module):
    """The tables of a collection that share an embedding dim: one id all-to-all and one
    embedding all-to-all for all of them (instead of one pair per table).

    Requester: the distinct ids of every table are sorted by (owner rank, table) and sent as one
    KJT whose keys are ``<table>@<rank>`` (one bag each). Owner: it receives ``T`` keys with one
    bag per source rank, looks each table's ids up in its ``ShardedDynamicTable`` shard
    (``compute``: insertion, gradient scaling of ``backend/sharding.py``) and sends the rows
    back in (source rank, table) order through ``SequenceEmbeddingsAllToAll`` (autograd-aware).
    """

    def __init__(self, names: List[str], dim: int, env: ShardingEnv):
        super().__init__()
        self.names, self.dim = list(names), int(dim)
        self.world, self.rank, self.pg = env.world_size, env.rank, env.process_group
        self.keys = [f"{n}@{r}" for r in range(self.world) for n in self.names]
        self.kjt_a2a = KJTAllToAll(self.pg, [len(self.names)] * self.world)
        self.emb_a2a = SequenceEmbeddingsAllToAll(self.pg, [1] * self.world)
        # rebuilt at construction; keep them out of state dicts (world-size independent)
        for sub in (self.kjt_a2a, self.emb_a2a):
            sub._non_persistent_buffers_set.update(name for name, _ in sub.named_buffers(recurse=False))

    def send(self, gctx: _GroupCtx, uniques: List[torch.Tensor]):
        """Issue the id all-to-all of the tables' distinct ids ``uniques`` (one ``[U_t]`` each)."""
        t_count = len(self.names)
        ids = torch.cat(uniques) if t_count > 1 else uniques[0]
        key = torch.cat([owner_ranks(u, self.world) * t_count + t for t, u in enumerate(uniques)])
        perm = torch.argsort(key, stable=True)
        lengths = torch.bincount(key, minlength=self.world * t_count)
        gctx.send_perm, gctx.sizes = perm, [int(u.numel()) for u in uniques]
        gctx.send_counts = lengths.view(self.world, t_count).sum(1).tolist()
        kjt = KeyedJaggedTensor(keys=self.keys, values=ids.index_select(0, perm), lengths=lengths.to(torch.int32),
                                stride=1)
        return self.kjt_a2a(kjt)

    def lookup(self, gctx: _GroupCtx, received: KeyedJaggedTensor, tables: nn.ModuleDict,
               readonly: List[bool]) -> List[torch.Tensor]:
        """Owner lookups + the embedding all-to-all -> per table ``[U_t, dim]`` (requester order)."""
        t_count, world = len(self.names), self.world
        recv_lengths = received.lengths().to(torch.int64).view(t_count, world)
        values = received.values()
        per_key = recv_lengths.sum(1).tolist()
        rows, start = [], 0
        for t, name in enumerate(self.names):
            table = tables[name]
            tctx = table.create_context()
            tctx.readonly = readonly[t]
            part = KeyedJaggedTensor(keys=[name], values=values[start:start + per_key[t]],
                                     lengths=recv_lengths[t].to(torch.int32), stride=world)
            rows.append(table.compute(tctx, part))
            start += per_key[t]
        local = torch.cat(rows) if t_count > 1 else rows[0]
        if world == 1:
            back = local
        else:
            # key-major (table, source) -> source-major (source, table) for the all-to-all
            src = torch.arange(world, device=recv_lengths.device).repeat(t_count)
            tbl = torch.arange(t_count, device=recv_lengths.device).repeat_interleave(world)
            key = torch.repeat_interleave(src * t_count + tbl, recv_lengths.reshape(-1))
            local = local.index_select(0, torch.argsort(key, stable=True).to(local.device))
            per_source = recv_lengths.sum(0)
            if local.requires_grad and torch.is_grad_enabled():
                back = _GroupExchange.apply(local, self, gctx, per_source)
            else:
                back = self._exchange(gctx, local, per_source)
        back = back.view(-1, self.dim)
        inverse = torch.empty_like(gctx.send_perm)
        inverse[gctx.send_perm] = torch.arange(gctx.send_perm.numel(), device=gctx.send_perm.device)
        ordered = back.index_select(0, inverse.to(back.device))
        return list(torch.split(ordered, gctx.sizes))

    def _exchange(self, gctx: _GroupCtx, local: torch.Tensor, per_source: torch.Tensor) -> torch.Tensor:
        # TorchRec names the splits after the id all-to-all: "input" = ids this rank sent
        # (= rows it receives back), "output" = ids it received (= rows it sends)
        try:
            return self.emb_a2a(local.contiguous(), per_source.view(1, -1), input_splits=gctx.send_counts,
                                output_splits=per_source.tolist()).wait()
        except RuntimeError as e:
            raise self.error("embedding", "forward", e) from e

    def error(self, what: str, phase: str, err: BaseException) -> DistributedExchangeError:
        return DistributedExchangeError(
            f"dynamic tables {self.names}, rank {self.rank} of {self.world}: the {what} all-to-all failed in "
            f"{phase}; another rank probably died, was stopped past the process-group timeout or skipped this "
            f"lookup. Check the other ranks' logs. Cause: {err}")


class _GroupExchange(torch.autograd.Function):
    """The embedding all-to-all of a group with its backward guarded (as ``_GuardedExchange`` in
    ``backend/sharding.py``): the reverse all-to-all TorchRec runs in backward is re-run through
    ``torch.autograd.grad`` so that a dead peer gives ``DistributedExchangeError`` naming the
    tables. ``[N_send, dim]`` rows this rank sends -> ``[N_asked, dim]`` rows it asked for."""

    @staticmethod
    def forward(ctx, local, group: _ExchangeGroup, gctx: _GroupCtx, per_source: torch.Tensor):
        with torch.enable_grad():
            sent = local.detach().requires_grad_(True)
            received = group._exchange(gctx, sent, per_source)
        ctx.group, ctx.sent, ctx.received = group, sent, received
        return received.detach()

    @staticmethod
    def backward(ctx, grad):
        group, sent, received = ctx.group, ctx.sent, ctx.received
        if received is None:
            raise RuntimeError(f"dynamic tables {group.names}: backward ran twice through one sharded lookup; "
                               "TorchRec's all-to-all supports one backward (no retain_graph=True reuse)")
        ctx.sent = ctx.received = None
        grad_sent = guarded_reverse_exchange(
            sent, received, grad, lambda e: group.error("embedding-gradient", "backward", e))
        return grad_sent, None, None, None


class _ShardedCollectionBase(ShardedModule, FusedOptimizerModule):
    """The sharded twin of a dynamic collection (EBC or EC, see the subclasses)."""

    def __init__(self, module: _DynamicCollectionBase, env: ShardingEnv, device: Optional[torch.device] = None,
                 fused_params: Optional[Dict[str, Any]] = None):
        super().__init__()
        if env.process_group is None:
            raise ValueError(f"{type(module).__name__}: sharding needs a process group "
                             "(torch.distributed.init_process_group first)")
        self._unsharded = [module]       # a list: not a submodule (its tables become ours)
        self._configs = module.embedding_configs()
        self.tables = nn.ModuleDict({name: ShardedDynamicTable(table, env, device)
                                     for name, table in module.tables.items()})
        by_dim: Dict[int, List[str]] = {}
        for cfg in self._configs:
            by_dim.setdefault(int(cfg.embedding_dim), []).append(cfg.name)
        self.groups = nn.ModuleList([_ExchangeGroup(names, dim, env) for dim, names in by_dim.items()])
        self._index = {cfg.name: i for i, cfg in enumerate(self._configs)}
        params = module.fused_params
        if fused_params:
            params.update({k: v for k, v in fused_params.items() if k in params})
        self._fused_params = params
        self._optimizer = None

    # the unsharded module's helpers, on its configs
    @property
    def _module(self) -> _DynamicCollectionBase:
        return self._unsharded[0]

    def embedding_configs(self):
        return list(self._configs)

    @property
    def fused_optimizer(self):
        if self._optimizer is None:
            from recis_compat.torchrec.optim import DynamicFusedOptimizer
            self._optimizer = DynamicFusedOptimizer(
                {name: (self.tables[name], self._module.runtime(name)) for name in self.tables}, self._fused_params)
        return self._optimizer

    # ------------------------------------------------------------------ ShardedModule contract
    def create_context(self) -> _CollectionCtx:
        return _CollectionCtx()

    def input_dist(self, ctx: _CollectionCtx, features: KeyedJaggedTensor) -> KJTListSplitsAwaitable:
        """Send the distinct ids of every table to their owners: one all-to-all per group of
        tables with the same dim, all issued before any is waited on."""
        plan = self._module._plan(features)
        ctx.features, ctx.plan = features, plan
        awaitables = []
        for group in self.groups:
            gctx = _GroupCtx()
            ctx.groups.append(gctx)
            try:
                awaitables.append(group.send(gctx, [plan[self._index[n]][0] for n in group.names]))
            except RuntimeError as e:
                raise group.error("id", "forward", e) from e
        return KJTListSplitsAwaitable(awaitables, ctx)

    def compute(self, ctx: _CollectionCtx, dist_input: KJTList) -> List[torch.Tensor]:
        """Look up, exchange back -> per table (config order) the rows ``[U_t, D_t]`` of its
        distinct ids."""
        out: List[Optional[torch.Tensor]] = [None] * len(self._configs)
        for group, gctx, kjt in zip(self.groups, ctx.groups, dist_input):
            readonly = [self._module._readonly(n) for n in group.names]
            for name, rows in zip(group.names, group.lookup(gctx, kjt, self.tables, readonly)):
                out[self._index[name]] = rows
        return out

    def compute_and_output_dist(self, ctx: _CollectionCtx, input: KJTList):
        return self.output_dist(ctx, self.compute(ctx, input))

    def forward(self, features: KeyedJaggedTensor):
        """``input_dist`` + waits + ``compute_and_output_dist`` (a collective). A failed id
        all-to-all raises ``DistributedExchangeError`` naming this collection's tables and rank
        (the embedding exchanges name their table, ``backend/sharding.py``)."""
        ctx = self.create_context()
        try:
            dist_input = self.input_dist(ctx, features).wait().wait()
        except DistributedExchangeError:
            raise
        except RuntimeError as e:
            first = next(iter(self.tables.values()))
            raise DistributedExchangeError(
                f"{type(self).__name__} (dynamic tables {list(self.tables)}), rank {first.rank} of "
                f"{first.world_size}: the id all-to-all failed in forward; another rank probably died, was stopped "
                f"past the process-group timeout or skipped this lookup. Check the other ranks' logs. "
                f"Cause: {e}") from e
        return self.compute_and_output_dist(ctx, dist_input)

    def reset_parameters(self) -> None:
        for t in self.tables.values():
            t.impl.clear()


class ShardedDynamicEmbeddingBagCollection(_ShardedCollectionBase):
    """Sharded :class:`~recis_compat.torchrec.modules.DynamicEmbeddingBagCollection`;
    ``forward(KJT) -> LazyAwaitable[KeyedTensor]`` (``[B_local, sum(dims)]``)."""

    @property
    def unsharded_module_type(self):
        return DynamicEmbeddingBagCollection

    def embedding_bag_configs(self):
        return list(self._configs)

    def output_dist(self, ctx: _CollectionCtx, output: List[torch.Tensor]):
        return LazyNoWait(self._module._pool(ctx.features, output, ctx.plan))


class ShardedDynamicEmbeddingCollection(_ShardedCollectionBase):
    """Sharded :class:`~recis_compat.torchrec.modules.DynamicEmbeddingCollection`;
    ``forward(KJT) -> LazyAwaitable[Dict[str, JaggedTensor]]``."""

    @property
    def unsharded_module_type(self):
        return DynamicEmbeddingCollection

    def output_dist(self, ctx: _CollectionCtx, output: List[torch.Tensor]):
        return LazyNoWait(self._module._split(ctx.features, output, ctx.plan))


class DynamicEmbeddingBagCollectionSharder(DynamicModuleSharder):
    """Shards :class:`DynamicEmbeddingBagCollection` (every table row-wise by the slice rule).

    Args:
        fused_params: overrides of the module's ``fused_params`` (TorchRec's sharder argument).
    """

    def __init__(self, fused_params: Optional[Dict[str, Any]] = None):
        super().__init__()
        self._dyn_fused_params = dict(fused_params or {})

    @property
    def module_type(self):
        return DynamicEmbeddingBagCollection

    def shard(self, module, params: EmbeddingModuleShardingPlan, env: ShardingEnv,
              device: Optional[torch.device] = None, module_fqn: Optional[str] = None):
        return ShardedDynamicEmbeddingBagCollection(module, env, device, self._dyn_fused_params)


class DynamicEmbeddingCollectionSharder(DynamicEmbeddingBagCollectionSharder):
    """Shards :class:`DynamicEmbeddingCollection`."""

    @property
    def module_type(self):
        return DynamicEmbeddingCollection

    def shard(self, module, params: EmbeddingModuleShardingPlan, env: ShardingEnv,
              device: Optional[torch.device] = None, module_fqn: Optional[str] = None):
        return ShardedDynamicEmbeddingCollection(module, env, device, self._dyn_fused_params)


def dynamic_sharders(fused_params: Optional[Dict[str, Any]] = None) -> List[DynamicModuleSharder]:
    """The sharders of the dynamic collections and of bare ``DynamicTable``\\ s."""
    return [DynamicEmbeddingBagCollectionSharder(fused_params), DynamicEmbeddingCollectionSharder(fused_params),
            DynamicTableSharder()]


def dynamic_plan(model: nn.Module, world_size: int) -> Dict[str, EmbeddingModuleShardingPlan]:
    """Plan entries of every dynamic collection (and bare ``DynamicTable``) in ``model``; add
    them to a TorchRec planner's plan (``plan.plan.update(...)``) for ordinary EBCs beside."""
    from recis_compat.backend.dynamic_table import DynamicTable
    return dynamic_table_plan(model, world_size,
                              (DynamicEmbeddingBagCollection, DynamicEmbeddingCollection, DynamicTable))


def shard_model(model: nn.Module, device: Optional[torch.device] = None, env: Optional[ShardingEnv] = None,
                sharders=None, plan=None, fused_params: Optional[Dict[str, Any]] = None, **dmp_kwargs):
    """``DistributedModelParallel(model)`` with the dynamic collections sharded by our sharders,
    ordinary TorchRec modules by the planner (or ``plan``), dense parameters data-parallel."""
    from torchrec.distributed.model_parallel import get_default_sharders
    sharders = list(sharders) if sharders is not None else list(get_default_sharders())
    have = {type(s) for s in sharders}
    sharders += [s for s in dynamic_sharders(fused_params) if type(s) not in have]
    return _backend_shard_model(model, device=device, env=env, sharders=sharders, plan=plan, **dmp_kwargs)
