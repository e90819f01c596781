"""Sharded dynamic collections: DMP shards them beside TorchRec's own modules.

:class:`DynamicEmbeddingBagCollectionSharder` / :class:`DynamicEmbeddingCollectionSharder` turn
the modules of ``recis_compat/torchrec/modules.py`` into
:class:`ShardedDynamicEmbeddingBagCollection` / :class:`ShardedDynamicEmbeddingCollection`:
every table becomes a ``ShardedDynamicTable`` (``recis_compat/backend/sharding.py``: row-wise by
RecIS's rule, rank r owns the ids whose ``id & 0xFFFF`` falls in its slice range). The sharded
collection follows TorchRec's ``ShardedModule`` protocol, so TorchRec's
``TrainPipelineSparseDist`` can run ``input_dist`` of the next batch early:

* ``input_dist(ctx, features)``: per table, the distinct ids of its features are sent to their
  owners (TorchRec ``KJTAllToAll``, one per table, all issued before any wait) ->
  ``KJTListSplitsAwaitable``;
* ``compute_and_output_dist(ctx, kjts)``: each owner looks the ids up (inserting in training),
  the rows go back (``SequenceEmbeddingsAllToAll``, autograd-aware) and the requester pools
  them (sum/mean, per-sample weights) -> ``LazyAwaitable[KeyedTensor]`` (EBC) or
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
from torchrec.distributed.types import (EmbeddingModuleShardingPlan, LazyNoWait, ShardedModule, ShardingEnv)
from torchrec.optim.fused import FusedOptimizerModule
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor
from torchrec.streamable import Multistreamable

from recis_compat.backend.sharding import (DistributedExchangeError, DynamicModuleSharder, DynamicTableSharder,
                                           ShardedDynamicTable, dynamic_table_plan, exchange_error)
from recis_compat.backend.sharding import shard_model as _backend_shard_model
from recis_compat.torchrec.modules import (DynamicEmbeddingBagCollection, DynamicEmbeddingCollection,
                                           _DynamicCollectionBase)

__all__ = ["ShardedDynamicEmbeddingBagCollection", "ShardedDynamicEmbeddingCollection",
           "DynamicEmbeddingBagCollectionSharder", "DynamicEmbeddingCollectionSharder", "dynamic_sharders",
           "shard_model", "dynamic_plan"]


class _CollectionCtx(Multistreamable):
    """Per-batch state: the collection's plan (unique ids, inverse, ...) per table and the
    per-table lookup contexts of the ``ShardedDynamicTable``\\ s."""

    def __init__(self):
        self.features: Optional[KeyedJaggedTensor] = None
        self.plan: List[Any] = []
        self.table_ctxs: List[Any] = []

    def record_stream(self, stream) -> None:
        for c in self.table_ctxs:
            c.record_stream(stream)


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
        """Send each table's distinct ids to their owners (every table's all-to-all is issued
        before any is waited on)."""
        plan = self._module._plan(features)
        ctx.features, ctx.plan = features, plan
        awaitables = []
        for cfg, (uniq, *_rest) in zip(self._configs, plan):
            table = self.tables[cfg.name]
            tctx = table.create_context()
            ctx.table_ctxs.append(tctx)
            try:
                awaitables.append(table.input_dist(tctx, uniq, self._module._readonly(cfg.name)))
            except RuntimeError as e:
                raise exchange_error(table, "id", "forward", e) from e
        return KJTListSplitsAwaitable(awaitables, ctx)

    def compute(self, ctx: _CollectionCtx, dist_input: KJTList) -> List[torch.Tensor]:
        """Look up, exchange back -> per table the rows ``[U_t, D_t]`` of its distinct ids."""
        out = []
        for cfg, tctx, kjt in zip(self._configs, ctx.table_ctxs, dist_input):
            out.append(self.tables[cfg.name].finish_lookup(tctx, kjt))
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
                f"{type(self).__name__} (tables {list(self.tables)}), rank {first.rank} of {first.world_size}: "
                f"the id all-to-all failed in forward; another rank probably died, was stopped past the "
                f"process-group timeout or skipped this lookup. Check the other ranks' logs. Cause: {e}") from e
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
