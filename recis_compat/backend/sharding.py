"""Sharded dynamic tables: ``ShardedDynamicTable`` (TorchRec ``ShardedModule``) and its sharder.

Data flow of one lookup of ``U`` distinct ids on each of ``W`` ranks (RecIS's row-wise rule,
``backend.slices``: rank r owns the ids whose ``id & 0xFFFF`` falls in its slice range; the
collectives are ``backend/exchange.py``'s)::

    ids --ids_partition (csrc)--> distinct ids grouped by owner, inverse, rank_counts [W]
        --IdExchange (counts with the ids up to IdCapacity, the rest after; async)--> owner: the ids of every rank, by source
        --dedupe across sources, local DynamicTable lookup (csrc id map, insert in training)-->
        rows [N_recv, D] --RowsAllToAll (async, autograd)--> requester: [U, D] in the sent order
        --> pooling (combiners) happens in the caller

Every stage returns an ``Awaitable`` right after issuing its collective (the staged protocol of
``backend/dynamic_table.py``: ``partition_ids``, ``request``, ``LookupRequest.send`` /
``fetch``), so a caller with several tables has every table's exchange in flight before it waits
on one; ``backend/grouped_exchange.py`` carries the lookups of several tables by one exchange
(what ``EmbeddingEngine`` does with its sharded groups). Backward runs the reverse all-to-all of the row gradients; the owner's rows receive the
summed gradient of every rank, divided by the world size for ``grad_reduce_by="worker"``
(RecIS's rule) or by the number of ranks that asked for the id for ``"id"``. A failed
collective (dead or stopped peer; the process-group timeout bounds the wait, see
``recis_compat/utils/dist_timeout.py``) raises :class:`DistributedExchangeError` naming the
table, the rank and the direction, forward or backward.

``shard_model(model)`` wraps a model in ``DistributedModelParallel`` with this sharder plus
TorchRec's default ones: every ``DynamicTable`` (inside HashTable / DynamicEmbedding /
EmbeddingEngine) becomes a ``ShardedDynamicTable``; ordinary TorchRec modules get the planner's
plan; dense parameters are data-parallel (DDP).
"""
from __future__ import annotations

import datetime
import os
from typing import Dict, List, Optional, Tuple

import torch
import torch.distributed as dist
from torch import nn
from torchrec.distributed.types import (Awaitable, EmbeddingModuleShardingPlan, LazyAwaitable, LazyGetItemMixin,
                                        ModuleSharder,
                                        NoWait, ParameterSharding, ShardedModule, ShardingEnv, ShardingPlan,
                                        ShardingType)
from torchrec.sparse.jagged_tensor import JaggedTensor, KeyedJaggedTensor

from recis_compat.backend.dynamic_table import (DynamicLookupContext, DynamicTable, LookupRequest,
                                                record_context_stream, split_per_key)
from recis_compat.backend.exchange import IdCapacity, IdExchange, PendingRows, ReceivedIds, RowsAllToAll
from recis_compat.backend.slices import owner_ranks, slice_range
from recis_compat.ops.id_map import ids_partition, unique_first_seen
from recis_compat.ops.pooling import gather_rows
from recis_compat.utils import dist_timeout, exit_drain

__all__ = ["ShardedDynamicTable", "DynamicTableSharder", "dynamic_table_plan", "shard_model",
           "DYNAMIC_TABLE_KERNEL", "default_backend", "init_process_group", "DistributedExchangeError",
           "DynamicModuleSharder", "record_context_stream"]

DYNAMIC_TABLE_KERNEL = "recis_dynamic_hash"
_PLAN_KEY = "rows"


def default_backend(device: torch.device) -> str:
    """``nccl`` for CUDA devices, ``gloo`` otherwise."""
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def init_process_group(device=None, timeout_s: Optional[float] = None, **kwargs) -> None:
    """``torch.distributed.init_process_group`` with the backend picked from ``device`` (gloo on
    CPU, nccl on CUDA; ``RECIS_COMPAT_DEVICE=cpu`` forces gloo) and a timeout (``timeout_s``, else
    the rule of ``recis_compat/utils/dist_timeout.py``: ``RECIS_COMPAT_DIST_TIMEOUT`` seconds,
    else 600), so a dead peer turns into an error instead of a hang. No-op when initialised."""
    if dist.is_initialized():
        return
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if timeout_s is None:
        timeout_s = dist_timeout.timeout_seconds()
    backend = dist_timeout.resolve_backend(kwargs.pop("backend", default_backend(device)))
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=float(timeout_s)), **kwargs)
    exit_drain.register()       # gloo's worker threads finish before the interpreter finalizes


class DistributedExchangeError(dist.DistError):
    """An all-to-all of a sharded table failed (a peer died, was stopped past the process-group
    timeout, or skipped the lookup). The message names the table (and the shared_names it
    holds), this rank, which exchange and whether in forward or backward; the torch/gloo error
    is the ``__cause__``. A ``torch.distributed.DistError`` (so a ``RuntimeError``): uncaught, it
    ends the process with status 1 without finalizing under in-flight collectives
    (recis_compat/utils/dist_exit.py)."""


def exchange_error(who: str, rank: int, world: int, what: str, phase: str, err: BaseException
                   ) -> DistributedExchangeError:
    """The error of a failed all-to-all of ``who`` (e.g. ``"table 'x'"``); ``what``: which
    all-to-all (``"id"``, ``"embedding"``, ``"embedding-gradient"``); ``phase``: ``"forward"`` or
    ``"backward"``."""
    try:
        timeout = f"{dist_timeout.ENV_VAR}={dist_timeout.timeout_seconds():g} s"
    except ValueError:
        timeout = dist_timeout.ENV_VAR
    return DistributedExchangeError(
        f"{who}, rank {rank} of {world}: the {what} all-to-all failed in {phase}; another rank probably died, "
        f"was stopped past the process-group timeout ({timeout}, unless the script passed timeout= to "
        f"init_process_group) or skipped this lookup. Check the other ranks' logs. Cause: {err}")


class _RestoredRows(Awaitable[torch.Tensor]):
    """Rows ``[U, dim]`` put back into the caller's id order (``restore[i]``: where id ``i`` was
    sent)."""

    def __init__(self, rows: Awaitable[torch.Tensor], restore: Optional[torch.Tensor], dim: int):
        super().__init__()
        self._rows, self._restore, self._dim = rows, restore, dim

    def _wait_impl(self) -> torch.Tensor:
        rows = self._rows.wait().view(-1, self._dim)
        return rows if self._restore is None else gather_rows(rows, self._restore)


class _PerKeyRows(LazyGetItemMixin[str, JaggedTensor], LazyAwaitable[Dict[str, JaggedTensor]]):
    """``forward(KJT)``'s result: the rows of the distinct ids expanded to every id and cut per
    key; ``result[key]`` is itself lazy (TorchRec's ``EmbeddingCollectionAwaitable`` style)."""

    def __init__(self, rows: Awaitable[torch.Tensor], ctx: DynamicLookupContext):
        super().__init__()
        self._rows, self._ctx = rows, ctx

    def _wait_impl(self) -> Dict[str, JaggedTensor]:
        rows = self._rows.wait()
        return split_per_key(self._ctx.features, gather_rows(rows, self._ctx.inverse))


class ShardedDynamicTable(ShardedModule[KeyedJaggedTensor, torch.Tensor, Dict[str, JaggedTensor],
                                        DynamicLookupContext]):
    """The sharded twin of :class:`DynamicTable`: same interface (``lookup_unique``, ``lookup``,
    the staged lookup, ``insert``, ``impl``, ``forward(KJT)``), rows spread over the ranks by the
    slice rule. TorchRec's protocol: ``input_dist(ctx, KJT)`` -> ``Awaitable[Awaitable[ReceivedIds]]``,
    ``compute`` -> this shard's rows of the received ids, ``output_dist`` -> ``Awaitable`` of the
    rows back on the requester, ``forward(KJT)`` -> ``LazyAwaitable[Dict[str, JaggedTensor]]``.

    Args:
        module: the unsharded table; it becomes this rank's shard (ids it holds that belong to
            other ranks are dropped).
        env: TorchRec sharding environment (process group, rank, world size).
        device: compute device.
    """

    def __init__(self, module: DynamicTable, env: ShardingEnv, device: Optional[torch.device] = None):
        super().__init__()
        if env.process_group is None:
            raise ValueError(f"table {module.name!r}: sharding needs a process group "
                             "(torch.distributed.init_process_group first)")
        self._env = env
        self._pg = env.process_group
        self._world = env.world_size
        self._rank = env.rank
        self.config = module.config
        self._local = module
        self.slice_range = slice_range(self._rank, self._world)
        # ids per destination that ride with the counts (backend/exchange.py IdCapacity): the
        # same value on every rank, updated by every exchange of this table
        self.id_capacity = IdCapacity()
        self._group_capacities: Dict[Tuple[str, ...], IdCapacity] = {}
        module.impl.set_slice(self.slice_range[0], self.slice_range[1])
        module.impl.process_group = self._pg
        ids, _ = module.impl.ids_map()
        foreign = owner_ranks(ids, self._world) != self._rank
        if bool(foreign.any()):
            module.impl.delete(ids[foreign])

    # ------------------------------------------------------------------ DynamicTable interface
    @property
    def impl(self):
        """This rank's shard (``DynamicTableImpl``)."""
        return self._local.impl

    @property
    def local_table(self) -> DynamicTable:
        """This rank's shard as a :class:`DynamicTable` (a child module of this one)."""
        return self._local

    @property
    def process_group(self):
        """The process group the table's ids and rows are exchanged over."""
        return self._pg

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def unsharded_module_type(self):
        return DynamicTable

    @property
    def world_size(self) -> int:
        return self._world

    @property
    def shard_count(self) -> int:
        return self._world

    @property
    def rank(self) -> int:
        return self._rank

    def owned(self, ids: torch.Tensor) -> torch.Tensor:
        """Mask of the ids this rank owns."""
        return owner_ranks(ids, self._world) == self._rank

    def describe(self) -> str:
        """The table as errors name it: ``'name'`` and the shared_names it holds."""
        children = [str(c) for c in (self.config.children or []) if str(c) != self.name]
        shared = f" (shared_names {', '.join(children)})" if children else ""
        return f"{self.name!r}{shared}"

    def error(self, what: str, phase: str, err: BaseException) -> DistributedExchangeError:
        """The :class:`DistributedExchangeError` of a failed all-to-all of this table."""
        return exchange_error(f"table {self.describe()}", self._rank, self._world, what, phase, err)

    def group_capacity(self, names: Tuple[str, ...]) -> IdCapacity:
        """The :class:`IdCapacity` of the grouped exchanges (``backend/grouped_exchange.py``)
        of the tables ``names`` (this table first), kept here across steps; like
        :attr:`id_capacity` it is the same on every rank, since every rank groups the same
        tables in the same order."""
        cap = self._group_capacities.get(names)
        if cap is None:
            cap = self._group_capacities[names] = IdCapacity()
        return cap

    def insert(self, ids: torch.Tensor, embeddings: torch.Tensor) -> None:
        """Upsert the ``ids`` this rank owns (every rank may pass the same full list)."""
        ids = self.impl.check_ids(ids, "insert")
        mine = self.owned(ids)
        self._local.insert(ids[mine], embeddings.reshape(ids.numel(), -1)[mine])

    def lookup_unique(self, unique_ids: torch.Tensor, readonly: bool = False,
                      counts: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Embeddings ``[U, dim]`` of this rank's distinct ids (a collective: every rank calls
        it for the same table in the same order). ``counts`` is ignored: duplicates across
        ranks are counted on the owner."""
        ids = self.impl.check_ids(unique_ids, "lookup")
        return self.request(ids).fetch(readonly).wait()

    def lookup(self, ids: torch.Tensor, readonly: bool = False) -> torch.Tensor:
        uniq, inverse, counts = self.partition_ids(ids)
        return gather_rows(self.request(uniq, counts).fetch(readonly).wait(), inverse)

    def forward(self, features: KeyedJaggedTensor) -> LazyAwaitable[Dict[str, JaggedTensor]]:
        """Per-key embeddings, as :meth:`DynamicTable.forward` (a collective); the result waits
        for the rows on first use."""
        ctx = self.create_context()
        return self.compute_and_output_dist(ctx, self.input_dist(ctx, features).wait().wait())

    # ------------------------------------------------------------------ staged lookup
    def partition_ids(self, ids: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, List[int]]:
        """``(unique [U], inverse [N], rank_counts)`` of int64 ``ids``: the distinct ids grouped
        by owner rank (csrc ``ids_partition``), ``unique[inverse] == ids``."""
        uniq, inverse, counts = ids_partition(self.impl.check_ids(ids, "lookup"), self._world)
        return uniq, inverse, counts.tolist()

    def request(self, unique_ids: torch.Tensor, rank_counts: Optional[List[int]] = None) -> LookupRequest:
        """Start a staged lookup of distinct ids (``backend/dynamic_table.py`` ``LookupRequest``)."""
        return LookupRequest(self, unique_ids, rank_counts)

    def create_context(self) -> DynamicLookupContext:
        return DynamicLookupContext()

    def send_ids(self, ctx: DynamicLookupContext, unique_ids: torch.Tensor,
                 rank_counts: Optional[List[int]] = None) -> IdExchange:
        """Issue the exchange of distinct ids to their owners. ``rank_counts`` given: the ids are
        grouped by owner already (``partition_ids``); else they are grouped here and the rows
        come back in the given order."""
        if rank_counts is None:
            unique_ids, ctx.restore, counts = ids_partition(unique_ids, self._world)
        else:
            counts = torch.tensor(rank_counts, dtype=torch.int64)
            if counts.numel() != self._world or int(counts.sum()) != unique_ids.numel():
                raise ValueError(f"table {self.name!r}: rank_counts {rank_counts} must give one count per rank "
                                 f"({self._world}) summing to the {unique_ids.numel()} ids")
        ctx.send_counts = counts
        return IdExchange(unique_ids, counts, self._pg, self.error, self.id_capacity)

    def input_dist(self, ctx: DynamicLookupContext, features: KeyedJaggedTensor) -> IdExchange:
        """TorchRec's first stage: the distinct ids of ``features`` to their owners."""
        values = features.values()
        if values.dtype != torch.int64:
            raise TypeError(f"table {self.name!r}: KeyedJaggedTensor values must be int64 ids, got {values.dtype}")
        uniq, ctx.inverse, counts = self.partition_ids(values)
        ctx.features = features
        return self.send_ids(ctx, uniq, counts)

    def compute(self, ctx: DynamicLookupContext, dist_input: ReceivedIds) -> torch.Tensor:
        """Owner side: look the received ids up in the local shard -> ``[N_recv, dim]``
        (inserting unless ``ctx.readonly`` or in eval mode)."""
        ctx.received = dist_input
        recv = dist_input.ids
        if self._world == 1:
            return self._local.lookup_unique_scaled(recv, ctx.readonly, None)
        by_id = self.training and self.config.grad_reduce_by == "id"
        uniq, inverse, *counts = unique_first_seen(recv, return_counts=by_id)
        scale = None
        if self.training:
            scale = 1.0 / counts[0].to(torch.float32) if by_id else 1.0 / self._world
        # the rows of every received id (duplicates across sources included) in one gather
        return self._local.lookup_unique_scaled(uniq, ctx.readonly, scale, expand=inverse)

    def output_dist(self, ctx: DynamicLookupContext, output: torch.Tensor) -> Awaitable[torch.Tensor]:
        """Send the rows back to the ranks that asked (autograd-aware) -> ``Awaitable`` of
        ``[U, dim]`` in the order the ids were given to :meth:`send_ids`."""
        dim = self.config.embedding_dim
        if self._world == 1:
            return _RestoredRows(NoWait(output), ctx.restore, dim)
        pending = PendingRows(self.error)
        pending.rows = RowsAllToAll.apply(output, ctx.received.per_source, ctx.send_counts.tolist(), self._pg, pending)
        return _RestoredRows(pending, ctx.restore, dim)

    def fetch_rows(self, ctx: DynamicLookupContext, received: ReceivedIds, readonly: bool = False
                   ) -> Awaitable[torch.Tensor]:
        """Owner lookups of ``received`` and the rows' way back (``compute`` + ``output_dist``)."""
        ctx.readonly = bool(readonly)
        return self.output_dist(ctx, self.compute(ctx, received))

    def compute_and_output_dist(self, ctx: DynamicLookupContext, input: ReceivedIds
                                ) -> LazyAwaitable[Dict[str, JaggedTensor]]:
        """TorchRec's second stage of ``forward(KJT)``: per-key rows of ``ctx.features``."""
        return _PerKeyRows(self.fetch_rows(ctx, input, ctx.readonly), ctx)


class DynamicModuleSharder(ModuleSharder):
    """Base of the sharders of modules made of dynamic tables (:class:`DynamicTableSharder`
    here, the collections of ``recis_compat.torchrec.distributed``): the rows are not
    Parameters (they grow), so the planner has nothing to place; :func:`dynamic_table_plan`
    gives such modules their row-wise plan entry instead. Subclasses set ``module_type`` and
    ``shard``."""

    def shardable_parameters(self, module: nn.Module) -> Dict[str, nn.Parameter]:
        return {}

    def sharding_types(self, compute_device_type: str) -> List[str]:
        return [ShardingType.ROW_WISE.value]

    def compute_kernels(self, sharding_type: str, compute_device_type: str) -> List[str]:
        return [DYNAMIC_TABLE_KERNEL]


class DynamicTableSharder(DynamicModuleSharder):
    """Shards :class:`DynamicTable` row-wise by RecIS's slice rule (one plan entry per table)."""

    def shard(self, module: DynamicTable, params: EmbeddingModuleShardingPlan, env: ShardingEnv,
              device: Optional[torch.device] = None, module_fqn: Optional[str] = None) -> ShardedDynamicTable:
        return ShardedDynamicTable(module, env, device)

    @property
    def module_type(self):
        return DynamicTable


def dynamic_table_plan(model: nn.Module, world_size: int, module_types: tuple = (DynamicTable,)
                       ) -> Dict[str, EmbeddingModuleShardingPlan]:
    """Plan entries (module path -> plan) for every module of ``module_types`` in ``model``
    (default: every :class:`DynamicTable`); modules inside an already planned one are skipped
    (its sharder shards them)."""
    plan: Dict[str, EmbeddingModuleShardingPlan] = {}
    module_types = tuple(module_types)
    for fqn, module in model.named_modules():
        if not isinstance(module, module_types):
            continue
        if any(fqn.startswith(p + ".") for p in plan):
            continue
        plan[fqn] = EmbeddingModuleShardingPlan({_PLAN_KEY: ParameterSharding(
            sharding_type=ShardingType.ROW_WISE.value, compute_kernel=DYNAMIC_TABLE_KERNEL,
            ranks=list(range(int(world_size))))})
    return plan


def shard_model(model: nn.Module, device: Optional[torch.device] = None, env: Optional[ShardingEnv] = None,
                sharders: Optional[List[ModuleSharder]] = None, plan: Optional[ShardingPlan] = None,
                **dmp_kwargs):
    """Wrap ``model`` in ``DistributedModelParallel``: dynamic tables sharded by
    :class:`DynamicTableSharder`, TorchRec modules by the planner (or ``plan``), dense parameters
    data-parallel. Needs an initialised process group."""
    from torchrec.distributed.model_parallel import DistributedModelParallel, get_default_sharders
    from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology

    if not dist.is_initialized():
        raise RuntimeError("shard_model: call torch.distributed.init_process_group() first "
                           "(gloo on CPU, nccl on GPU)")
    device = torch.device(device) if device is not None else torch.device("cpu")
    if env is None:
        env = ShardingEnv.from_process_group(dist.group.WORLD)
    sharders = list(sharders) if sharders is not None else list(get_default_sharders())
    if not any(isinstance(s, DynamicTableSharder) for s in sharders):
        sharders.append(DynamicTableSharder())
    dynamic_types = tuple(s.module_type for s in sharders if isinstance(s, DynamicModuleSharder))
    if plan is None:
        others = [s for s in sharders if not isinstance(s, DynamicModuleSharder)]
        has_torchrec_tables = any(type(m) in {s.module_type for s in others} for m in model.modules())
        if has_torchrec_tables:
            planner = EmbeddingShardingPlanner(topology=Topology(world_size=env.world_size,
                                                                 compute_device=device.type,
                                                                 local_world_size=int(os.environ.get(
                                                                     "LOCAL_WORLD_SIZE", env.world_size))))
            plan = planner.collective_plan(model, others, env.process_group)
        else:
            plan = ShardingPlan({})
    plan.plan.update(dynamic_table_plan(model, env.world_size, dynamic_types))
    return DistributedModelParallel(model, env=env, device=device, plan=plan, sharders=sharders, **dmp_kwargs)
