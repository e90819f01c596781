"""Sharded dynamic collections: DMP shards them beside TorchRec's own modules.

:class:`DynamicEmbeddingBagCollectionSharder` / :class:`DynamicEmbeddingCollectionSharder` turn
the modules of ``recis_compat/torchrec/modules.py`` into
:class:`ShardedDynamicEmbeddingBagCollection` / :class:`ShardedDynamicEmbeddingCollection`:
every table becomes a ``ShardedDynamicTable`` (``recis_compat/backend/sharding.py``: row-wise by
RecIS's rule, rank r owns the ids whose ``id & 0xFFFF`` falls in its slice range). The sharded
collection follows TorchRec's ``ShardedModule`` protocol, so TorchRec's
``TrainPipelineSparseDist`` can run ``input_dist`` of the next batch early:

* ``input_dist(ctx, features)``: the distinct ids of every table are sent to their owners,
  one id exchange per group of tables with the same embedding dim (``backend/exchange.py``
  ``IdExchange``: per-(rank, table) counts, then the ids; all issued before any wait) ->
  ``KJTListSplitsAwaitable``;
* ``compute_and_output_dist(ctx, received)``: each owner looks the ids up in its
  ``ShardedDynamicTable`` shards (inserting in training), the rows go back (one
  ``RowsAllToAll`` per group, autograd-aware) and the requester pools them
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
from torchrec.distributed.embedding_sharding import KJTListSplitsAwaitable
from torchrec.distributed.embedding_types import KJTList
from torchrec.distributed.types import (Awaitable, EmbeddingModuleShardingPlan, LazyNoWait, NoWait, ShardedModule,
                                        ShardingEnv)
from torchrec.optim.fused import FusedOptimizerModule
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor
from torchrec.streamable import Multistreamable

from recis_compat.backend.dynamic_table import record_context_stream
from recis_compat.backend.exchange import IdExchange, PendingRows, ReceivedIds, RowsAllToAll
from recis_compat.backend.sharding import (DistributedExchangeError, DynamicModuleSharder, DynamicTableSharder,
                                           ShardedDynamicTable, dynamic_table_plan, exchange_error)
from recis_compat.backend.slices import owner_ranks
from recis_compat.ops.pooling import gather_rows
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
    """The tables of a collection that share an embedding dim: one id exchange and one row
    exchange for all of them (instead of one pair per table).

    Requester: the distinct ids of every table are sorted by (owner rank, table) and sent with
    their per-(rank, table) counts (``IdExchange``). Owner: it receives, from every source rank,
    each table's ids; looks each table's ids up in its ``ShardedDynamicTable`` shard
    (``compute``: insertion, gradient scaling of ``backend/sharding.py``) and sends the rows back
    in the order received (``RowsAllToAll``, autograd-aware).
    """

    def __init__(self, names: List[str], dim: int, env: ShardingEnv):
        super().__init__()
        self.names, self.dim = list(names), int(dim)
        self.world, self.rank, self.pg = env.world_size, env.rank, env.process_group

    def send(self, gctx: _GroupCtx, uniques: List[torch.Tensor]) -> IdExchange:
        """Issue the id exchange of the tables' distinct ids ``uniques`` (one ``[U_t]`` each)."""
        t_count = len(self.names)
        ids = torch.cat(uniques) if t_count > 1 else uniques[0]
        key = torch.cat([owner_ranks(u, self.world) * t_count + t for t, u in enumerate(uniques)])
        perm = torch.argsort(key, stable=True)
        lengths = torch.bincount(key, minlength=self.world * t_count).view(self.world, t_count)
        gctx.send_perm, gctx.sizes = perm, [int(u.numel()) for u in uniques]
        gctx.send_counts = lengths.sum(1).tolist()
        return IdExchange(ids.index_select(0, perm), lengths, self.pg, self.error)

    def lookup(self, gctx: _GroupCtx, received: ReceivedIds, tables: nn.ModuleDict,
               readonly: List[bool]) -> Awaitable[List[torch.Tensor]]:
        """Owner lookups + the row exchange (issued) -> ``Awaitable`` of per table ``[U_t, dim]``
        (requester order)."""
        t_count, world = len(self.names), self.world
        counts = received.counts                     # [W, T]: ids from source r of table t
        # received ids are source-major (source, table); each table's lookup wants its own ids
        table_of = torch.repeat_interleave(torch.arange(t_count).repeat(world), counts.reshape(-1))
        by_table = torch.argsort(table_of, stable=True) if t_count > 1 else None
        values = received.ids if by_table is None else received.ids.index_select(0, by_table.to(received.ids.device))
        rows, start = [], 0
        for t, name in enumerate(self.names):
            n = int(counts[:, t].sum())
            table = tables[name]
            tctx = table.create_context()
            tctx.readonly = readonly[t]
            rows.append(table.compute(tctx, ReceivedIds(values[start:start + n], counts[:, t:t + 1])))
            start += n
        local = torch.cat(rows) if t_count > 1 else rows[0]
        if by_table is not None:                     # back to (source, table) order
            source_major = torch.empty_like(by_table)
            source_major[by_table] = torch.arange(by_table.numel())
            local = gather_rows(local, source_major.to(local.device))
        if world == 1:
            back: Awaitable[torch.Tensor] = NoWait(local)
        else:
            back = PendingRows(self.error)
            back.rows = RowsAllToAll.apply(local, received.per_source, gctx.send_counts, self.pg, back)
        return _GroupRows(back, gctx, self.dim)

    def error(self, what: str, phase: str, err: BaseException) -> DistributedExchangeError:
        return exchange_error(f"dynamic tables {self.names}", self.rank, self.world, what, phase, err)


class _GroupRows(Awaitable[List[torch.Tensor]]):
    """A group's rows on their way back -> per table ``[U_t, dim]`` in the requester's order."""

    def __init__(self, rows: Awaitable[torch.Tensor], gctx: _GroupCtx, dim: int):
        super().__init__()
        self._rows, self._gctx, self._dim = rows, gctx, dim

    def _wait_impl(self) -> List[torch.Tensor]:
        back = self._rows.wait().view(-1, self._dim)
        perm = self._gctx.send_perm
        inverse = torch.empty_like(perm)
        inverse[perm] = torch.arange(perm.numel(), device=perm.device)
        return list(torch.split(gather_rows(back, inverse.to(back.device)), self._gctx.sizes))


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
        pending = [group.lookup(gctx, received, self.tables, [self._module._readonly(n) for n in group.names])
                   for group, gctx, received in zip(self.groups, ctx.groups, dist_input)]
        for group, rows in zip(self.groups, pending):     # every group's rows are in flight
            for name, table_rows in zip(group.names, rows.wait()):
                out[self._index[name]] = table_rows
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
