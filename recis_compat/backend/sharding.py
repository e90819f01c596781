"""Sharded dynamic tables: ``ShardedDynamicTable`` (TorchRec ``ShardedModule``) and its sharder.

Data flow of one lookup of ``U`` distinct ids on each of ``W`` ranks (RecIS's row-wise rule,
``backend.slices``: rank r owns the ids whose ``id & 0xFFFF`` falls in its slice range)::

    unique ids (each rank) --sort by owner--> KJT [W keys, one bag each]
        --TorchRec KJTAllToAll--> owner: ids from every rank (KJT, 1 key, W bags)
        --dedupe across sources, local DynamicTable lookup (csrc id map, insert in training)-->
        embeddings [N_recv, D] --TorchRec SequenceEmbeddingsAllToAll (autograd)-->
        requester: [U, D] in the original order  --> pooling (combiners) happens in the caller

Backward runs the reverse all-to-all inside TorchRec's autograd function (re-entered from
``_GuardedExchange`` so that a dead or stopped peer gives :class:`DistributedExchangeError`
naming the table and rank, as in forward; the process-group timeout bounds the wait, see
``recis_compat/utils/dist_timeout.py``); the owner's rows
receive the summed gradient of every rank, divided by the world size for
``grad_reduce_by="worker"`` (RecIS's rule; TorchRec's own gradient division is accounted for) or
by the number of ranks that asked for the id for ``"id"``. Pooling after the exchange works on
gloo, which has no reduce-scatter.

``shard_model(model)`` wraps a model in ``DistributedModelParallel`` with this sharder plus
TorchRec's default ones: every ``DynamicTable`` (inside HashTable / DynamicEmbedding /
EmbeddingEngine) becomes a ``ShardedDynamicTable``; ordinary TorchRec modules get the planner's
plan; dense parameters are data-parallel (DDP).
"""
from __future__ import annotations

import datetime
import os
from typing import Callable, Dict, List, Optional

import torch
import torch.distributed as dist
from torch import nn
from torchrec.distributed.comm_ops import get_gradient_division
from torchrec.distributed.dist_data import KJTAllToAll, SequenceEmbeddingsAllToAll
from torchrec.distributed.types import (Awaitable, EmbeddingModuleShardingPlan, ModuleSharder,
                                        NoWait, ParameterSharding, ShardedModule, ShardingEnv,
                                        ShardingPlan, ShardingType)
from torchrec.sparse.jagged_tensor import JaggedTensor, KeyedJaggedTensor
from torchrec.streamable import Multistreamable

from recis_compat.backend.dynamic_table import DynamicTable, split_per_key
from recis_compat.backend.slices import owner_ranks, slice_range
from recis_compat.ops.id_map import unique_first_seen
from recis_compat.utils import dist_timeout

__all__ = ["ShardedDynamicTable", "DynamicTableSharder", "dynamic_table_plan", "shard_model",
           "DYNAMIC_TABLE_KERNEL", "default_backend", "init_process_group", "DistributedExchangeError",
           "DynamicModuleSharder", "guarded_reverse_exchange", "record_context_stream"]

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


class DistributedExchangeError(dist.DistError):
    """An all-to-all of a sharded table failed (a peer died, was stopped past the process-group
    timeout, or skipped the lookup). The message names the table (and the shared_names it
    holds), this rank, which exchange and whether in forward or backward; the torch/gloo error
    is the ``__cause__``. A ``torch.distributed.DistError`` (so a ``RuntimeError``): uncaught, it
    ends the process with status 1 without finalizing under in-flight collectives
    (recis_compat/utils/dist_exit.py)."""


def _exchange_error(table: "ShardedDynamicTable", what: str, phase: str, err: BaseException
                    ) -> DistributedExchangeError:
    """``what``: which all-to-all (``"id"``, ``"embedding"``, ``"embedding-gradient"``);
    ``phase``: ``"forward"`` or ``"backward"``."""
    children = [str(c) for c in (table.config.children or []) if str(c) != table.name]
    shared = f" (shared_names {', '.join(children)})" if children else ""
    try:
        timeout = f"{dist_timeout.ENV_VAR}={dist_timeout.timeout_seconds():g} s"
    except ValueError:
        timeout = dist_timeout.ENV_VAR
    return DistributedExchangeError(
        f"table {table.name!r}{shared}, rank {table.rank} of {table.world_size}: the {what} all-to-all "
        f"failed in {phase}; another rank probably died, was stopped past the process-group timeout "
        f"({timeout}, unless the script passed timeout= to init_process_group) or skipped this "
        f"lookup. Check the other ranks' logs. Cause: {err}")


class _Ctx(Multistreamable):
    """Per-lookup state between input_dist, compute and output_dist."""

    def __init__(self):
        self.order: Optional[torch.Tensor] = None     # requester: positions sorted by owner
        self.send_counts: List[int] = []              # requester: ids sent to each rank
        self.recv_lengths: Optional[torch.Tensor] = None   # owner: ids received from each rank
        self.readonly = False

    def record_stream(self, stream) -> None:
        record_context_stream(self, stream)


def record_context_stream(ctx, stream) -> None:
    """``Multistreamable.record_stream`` for a per-lookup context: every tensor it holds (directly,
    in lists / tuples, or inside nested contexts and KJTs) is recorded on ``stream``, so a pipeline
    that runs the next stage on another CUDA stream does not free them early. No stream (CPU
    pipelines) records nothing."""
    if stream is None:
        return

    def visit(value) -> None:
        if isinstance(value, torch.Tensor):
            if value.is_cuda:
                value.record_stream(stream)
        elif isinstance(value, (list, tuple)):
            for v in value:
                visit(v)
        elif isinstance(value, Multistreamable):
            value.record_stream(stream)

    for value in vars(ctx).values():
        visit(value)


def guarded_reverse_exchange(sent: torch.Tensor, received: torch.Tensor, grad: torch.Tensor,
                             on_error: Callable[[RuntimeError], DistributedExchangeError]) -> torch.Tensor:
    """Backward of an embedding all-to-all run through TorchRec's own autograd function.

    ``sent`` ``[N_send, dim]`` (the rows this rank sent, a leaf that requires grad) and
    ``received`` ``[N_asked, dim]`` (what the forward exchange returned from it); ``grad`` is the
    gradient of ``received``. Returns the gradient of ``sent`` (TorchRec's reverse all-to-all);
    a failure of that collective raises ``on_error(err)`` chained to it.
    """
    try:
        (grad_sent,) = torch.autograd.grad(received, sent, grad.contiguous())
    except RuntimeError as e:
        raise on_error(e) from e
    return grad_sent


class _GuardedExchange(torch.autograd.Function):
    """The embedding all-to-all (TorchRec's ``SequenceEmbeddingsAllToAll``, autograd-aware) with
    its backward guarded: the reverse all-to-all that TorchRec runs in backward is re-run here
    through ``torch.autograd.grad`` on a sub-graph, so that a failure (dead or stopped peer) is
    raised as :class:`DistributedExchangeError` naming the table and rank instead of gloo's bare
    message. Gradients are TorchRec's own (including its gradient division).

    forward(local ``[N_recv, dim]`` rows this rank sends) -> ``[U, dim]`` rows it asked for, in
    destination-rank order.
    """

    @staticmethod
    def forward(ctx, local: torch.Tensor, table: "ShardedDynamicTable", lookup_ctx: "_Ctx") -> torch.Tensor:
        with torch.enable_grad():
            sent = local.detach().requires_grad_(True)
            received = table.output_dist(lookup_ctx, sent).wait()
        ctx.table, ctx.sent, ctx.received = table, sent, received
        return received.detach()

    @staticmethod
    def backward(ctx, grad):
        table, sent, received = ctx.table, ctx.sent, ctx.received
        if received is None:
            raise RuntimeError(f"table {table.name!r}: backward ran twice through one sharded lookup; "
                               "TorchRec's all-to-all supports one backward (no retain_graph=True reuse)")
        ctx.sent = ctx.received = None
        grad_sent = guarded_reverse_exchange(
            sent, received, grad, lambda e: _exchange_error(table, "embedding-gradient", "backward", e))
        return grad_sent, None, None


class ShardedDynamicTable(ShardedModule[KeyedJaggedTensor, torch.Tensor, torch.Tensor, _Ctx]):
    """The sharded twin of :class:`DynamicTable`: same interface (``lookup_unique``, ``lookup``,
    ``insert``, ``impl``, ``forward(KJT)``), rows spread over the ranks by the slice rule.

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
        module.impl.set_slice(self.slice_range[0], self.slice_range[1])
        module.impl.process_group = self._pg
        ids, _ = module.impl.ids_map()
        foreign = owner_ranks(ids, self._world) != self._rank
        if bool(foreign.any()):
            module.impl.delete(ids[foreign])
        self._keys = [f"to_rank_{r}" for r in range(self._world)]
        self._kjt_a2a = KJTAllToAll(self._pg, [1] * self._world)
        self._emb_a2a = SequenceEmbeddingsAllToAll(self._pg, [1] * self._world)
        # its permutation buffers are rebuilt at construction; keep them out of state dicts (and
        # so out of model.pt), which must not depend on the world size
        for sub in (self._kjt_a2a, self._emb_a2a):
            sub._non_persistent_buffers_set.update(name for name, _ in sub.named_buffers(recurse=False))

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
    def rank(self) -> int:
        return self._rank

    def owned(self, ids: torch.Tensor) -> torch.Tensor:
        """Mask of the ids this rank owns."""
        return owner_ranks(ids, self._world) == self._rank

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
        ctx = self.create_context()
        try:
            dist_input = self.input_dist(ctx, ids, readonly).wait().wait()
        except RuntimeError as e:
            raise _exchange_error(self, "id", "forward", e) from e
        return self.finish_lookup(ctx, dist_input)

    def finish_lookup(self, ctx: _Ctx, dist_input: KeyedJaggedTensor) -> torch.Tensor:
        """Second half of a lookup started with :meth:`input_dist` (after its awaitables were
        waited on): look the received ids up in this shard, send the rows back (autograd-aware)
        and put them in the order of the ids given to :meth:`input_dist` -> ``[U, dim]``."""
        local = self.compute(ctx, dist_input)
        try:
            if local.requires_grad and torch.is_grad_enabled() and self._world > 1:
                emb_sorted = _GuardedExchange.apply(local, self, ctx)
            else:
                emb_sorted = self.output_dist(ctx, local).wait()
        except RuntimeError as e:
            raise _exchange_error(self, "embedding", "forward", e) from e
        emb_sorted = emb_sorted.view(-1, self.config.embedding_dim)
        inverse = torch.empty_like(ctx.order)
        inverse[ctx.order] = torch.arange(ctx.order.numel(), device=ctx.order.device)
        return emb_sorted.index_select(0, inverse)

    def lookup(self, ids: torch.Tensor, readonly: bool = False) -> torch.Tensor:
        flat = self.impl.check_ids(ids, "lookup")
        uniq, inverse = unique_first_seen(flat)
        return self.lookup_unique(uniq, readonly).index_select(0, inverse)

    def forward(self, features: KeyedJaggedTensor) -> Dict[str, JaggedTensor]:
        """Per-key embeddings, as :meth:`DynamicTable.forward` (a collective)."""
        return split_per_key(features, self.lookup(features.values()))

    # ------------------------------------------------------------------ ShardedModule contract
    def create_context(self) -> _Ctx:
        return _Ctx()

    def input_dist(self, ctx: _Ctx, unique_ids: torch.Tensor, readonly: bool = False
                   ) -> Awaitable[Awaitable[KeyedJaggedTensor]]:
        """Send every id to its owner: a KJT with one bag per destination rank."""
        owners = owner_ranks(unique_ids, self._world)
        order = torch.argsort(owners, stable=True)
        counts = torch.bincount(owners, minlength=self._world)
        ctx.order, ctx.send_counts, ctx.readonly = order, counts.tolist(), bool(readonly)
        kjt = KeyedJaggedTensor(keys=self._keys, values=unique_ids.index_select(0, order),
                                lengths=counts.to(torch.int32), stride=1)
        return self._kjt_a2a(kjt)

    def compute(self, ctx: _Ctx, dist_input: KeyedJaggedTensor) -> torch.Tensor:
        """Owner side: look the received ids up in the local shard -> ``[N_recv, dim]``."""
        recv = dist_input.values()
        ctx.recv_lengths = dist_input.lengths()
        uniq, inverse, counts = unique_first_seen(recv, return_counts=True)
        scale = None
        if self.training:
            # the reverse all-to-all may already divide by the world size (TorchRec's flag)
            division = float(self._world) if get_gradient_division() else 1.0
            if self.config.grad_reduce_by == "worker":
                if division == 1.0 and self._world > 1:
                    scale = torch.full((uniq.numel(),), 1.0 / self._world, device=recv.device)
            else:
                scale = division / counts.to(torch.float32)
        emb = self._local.lookup_unique_scaled(uniq, ctx.readonly, scale)
        return emb.index_select(0, inverse)

    def output_dist(self, ctx: _Ctx, output: torch.Tensor):
        """Send the embeddings back to the ranks that asked (autograd-aware)."""
        if self._world == 1:
            return NoWait(output)
        lengths = ctx.recv_lengths.to(torch.int64)
        # TorchRec names the splits after the id all-to-all: "input" = ids this rank sent
        # (= embeddings it receives back), "output" = ids it received (= embeddings it sends)
        return self._emb_a2a(output.contiguous(), lengths.view(1, -1), input_splits=ctx.send_counts,
                             output_splits=lengths.tolist())


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
