"""DynamicTable: a TorchRec-style module over one dynamic (hash-table) embedding table.

TorchRec's embedding modules are fixed-size and row-indexed; RecIS's tables are unbounded and
keyed by arbitrary int64 ids. This module is the bridge (docs/architecture.md): it owns a
:class:`~recis_compat.backend.table_impl.DynamicTableImpl` (csrc id map + growable row storage
+ optimizer/filter slots + gradient buffer) and looks ids up with autograd:

* ``forward(features: KeyedJaggedTensor) -> Dict[str, JaggedTensor]``: like TorchRec's
  ``EmbeddingCollection``, the per-id embeddings of every key (``values [N_key, dim]``), one
  lookup for all keys.
* :meth:`lookup_unique` ``(unique ids [U]) -> [U, dim]``: the blocking primitive.
* The staged lookup the RecIS facade and several-table callers use (the sharded twin in
  ``backend/sharding.py`` implements the same methods with all-to-alls in between):
  ``partition_ids(ids) -> (unique, inverse, rank_counts)``, then
  ``request(unique, rank_counts) -> LookupRequest`` (issues the id exchange),
  ``LookupRequest.send()`` (issues the ids themselves), ``LookupRequest.fetch(readonly)`` ->
  ``Awaitable`` of the rows ``[U, dim]``. Per-call state lives in a
  :class:`DynamicLookupContext`, never on the module, so lookups are re-entrant.

Gradients do not go to a ``.grad``: the backward pass hands ``(rows, grad)`` to the table's
buffer (``DynamicTableImpl.accept_grad``) and the sparse optimizer applies them row-wise, as in
RecIS. Gathers use ``index_select`` (FBGEMM has no CPU kernel for gathering rows of a tensor it
does not own; TBE owns its weights), pooling runs in the caller.

Insertion rule: a training-mode lookup of a floating table inserts unknown ids; eval mode,
``readonly=True`` (``AdmitHook("ReadOnly")``) or an integer table only find, and unknown ids
give zero vectors. Layering: imports ``ops``/``backend`` (and ``utils``) only.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn
from torchrec.distributed.types import Awaitable, NoWait
from torchrec.sparse.jagged_tensor import JaggedTensor, KeyedJaggedTensor
from torchrec.streamable import Multistreamable

from recis_compat.backend.children import ChildrenInfo
from recis_compat.backend.exchange import ReceivedIds
from recis_compat.backend.row_store import StoreConfig
from recis_compat.backend.table_impl import DynamicTableImpl, find_or_insert_rows_many
from recis_compat.ops.id_map import unique_first_seen
from recis_compat.ops.multi_table import multi_table_gather, unique_first_seen_many
from recis_compat.ops.pooling import sum_rows_by_index
from recis_compat.utils.device import cuda_unavailable_message

__all__ = ["DynamicTableConfig", "DynamicTable", "DynamicLookupContext", "LookupRequest", "lookup_rows_with_grad",
           "lookup_tables_with_grad", "lookup_rows_many", "partition_ids_many", "split_per_key",
           "record_context_stream"]


def partition_ids_many(tables: Sequence["DynamicTable"], ids: Sequence[torch.Tensor]
                       ) -> List[Tuple[torch.Tensor, torch.Tensor, List[int]]]:
    """``[tables[k].partition_ids(ids[k])]`` (tables that are not sharded) by one
    :func:`unique_first_seen_many`."""
    uniq, inverse = unique_first_seen_many([t.impl.check_ids(x, "lookup") for t, x in zip(tables, ids)])
    return [(u, inv, [u.numel()]) for u, inv in zip(uniq, inverse)]


def lookup_rows_many(tables: Sequence["DynamicTable"], unique_ids: Sequence[torch.Tensor],
                     readonly: Sequence[bool]) -> List[torch.Tensor]:
    """``[tables[k].lookup_rows(unique_ids[k], readonly[k]) for k]`` (distinct int64 ids ``[U_k]``
    -> rows int64 ``[U_k]``, ``-1`` = absent), with the inserting lookups' id-map inserts and
    new-row initial values done for all tables at once (``find_or_insert_rows_many``,
    backend/table_impl.py: the same rows, counters and values; tables it cannot take go through
    the per-table insert in order); then each table's lookup listeners, in table order. The
    caller holds every table's lock (``EmbeddingEngine.lookup_run``)."""
    insert = [t.training and not ro and not t.impl.read_only for t, ro in zip(tables, readonly)]
    idx = [k for k, ins in enumerate(insert) if ins]
    inserted = dict(zip(idx, find_or_insert_rows_many([tables[k].impl for k in idx], [unique_ids[k] for k in idx])))
    out = []
    for k, t in enumerate(tables):
        rows = inserted[k] if insert[k] else t.impl.find_rows(unique_ids[k])
        if t.training and not t.impl.read_only:
            t.impl.notify_lookup(rows)
        out.append(rows)
    return out


@dataclass
class DynamicTableConfig:
    """What a dynamic table is made of.

    Attributes:
        name: table name (state-dict key of the impl, checkpoint prefix).
        embedding_dim: row width.
        sample_rows: ``f(k) -> Tensor[k, embedding_dim]``: initial values of k new rows.
        dtype: storage dtype (integer = read-only).
        device: where the state lives.
        block_size: capacity grows in whole blocks of this many rows.
        children: child names (one logical table per ``shared_name``).
        coalesced: ids arrive encoded with their child index.
        grad_reduce_by: ``"worker"`` (sum of duplicate ids' gradients / world size) or ``"id"``
            (mean over a lookup's duplicates).
        world_size: divisor of ``"worker"``.
        init_rows: ``f(ids) -> Tensor[k, embedding_dim]``, per-id initial values of new rows
            (see ``DynamicTableImpl``); None: new rows take ``sample_rows`` draws.
        store: where the rows live (backend/row_store.py: ``StoreConfig``); None: from the
            ``RECIS_COMPAT_STORE_TYPE`` environment variables, in memory when they are unset.
    """

    name: str
    embedding_dim: int
    sample_rows: Callable[[int], torch.Tensor]
    dtype: torch.dtype = torch.float32
    device: torch.device = torch.device("cpu")
    block_size: int = 10240
    children: Optional[list] = None
    coalesced: bool = False
    grad_reduce_by: str = "worker"
    world_size: int = 1
    init_rows: Optional[Callable[[torch.Tensor], torch.Tensor]] = None
    store: Optional[StoreConfig] = None


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


class DynamicLookupContext(Multistreamable):
    """The state of one lookup between its stages (TorchRec's ``EmbeddingCollectionContext``
    role): created per call by ``create_context()``, so a table holds no per-batch tensors.

    Attributes:
        send_counts: requester: int64 ``[W]``, distinct ids sent to each rank.
        restore: requester: int64 ``[U]`` or None: where each id given to ``send_ids`` sits in
            the sent (owner-grouped) order, when the caller's ids were not grouped already.
        received: owner: the :class:`~recis_compat.backend.exchange.ReceivedIds`.
        readonly: the lookup finds without inserting.
        features / inverse: ``forward(KJT)`` lookups: the input and the position of each of its
            ids among the distinct ids sent.
    """

    def __init__(self):
        self.send_counts: Optional[torch.Tensor] = None
        self.restore: Optional[torch.Tensor] = None
        self.received: Optional[ReceivedIds] = None
        self.readonly = False
        self.features: Optional[KeyedJaggedTensor] = None
        self.inverse: Optional[torch.Tensor] = None

    def record_stream(self, stream) -> None:
        record_context_stream(self, stream)


class LookupRequest:
    """A lookup of distinct ids in flight, in a :class:`DynamicTable` or its sharded twin.

    ``table.request(unique_ids, rank_counts)`` issues the first exchange (the per-rank counts);
    :meth:`send` waits for it and issues the ids; :meth:`fetch` waits for the ids, looks them up
    on their owners and issues the rows' way back -> ``Awaitable`` of ``[U, dim]`` in the order
    of ``unique_ids``. A caller with several tables calls ``request`` for all, then ``send`` for
    all, then ``fetch`` for all, so no exchange waits behind another table's lookup.
    """

    def __init__(self, table: nn.Module, unique_ids: torch.Tensor, rank_counts: Optional[List[int]] = None):
        self.table = table
        self.ctx = table.create_context()
        self._exchange = table.send_ids(self.ctx, unique_ids, rank_counts)
        self._ids = None

    def send(self) -> None:
        """Issue the ids all-to-all (idempotent)."""
        if self._ids is None:
            self._ids = self._exchange.wait()

    def fetch(self, readonly: bool = False) -> Awaitable[torch.Tensor]:
        """Owner lookups (inserting unless ``readonly`` or in eval mode) and the rows' exchange
        back; ``wait()`` on the result gives ``[U, dim]``."""
        self.send()
        return self.table.fetch_rows(self.ctx, self._ids.wait(), readonly)

    @property
    def received_counts(self) -> List[int]:
        """Ids this rank received from every rank (after :meth:`fetch`)."""
        return list(self.ctx.received.per_source) if self.ctx.received is not None else []


class _RowsToTable(torch.autograd.Function):
    """Identity on ``emb`` in forward; backward hands ``(rows, grad * scale)`` to the table
    (with ``expand``: ``emb`` is ``[N, D]`` = the rows of ``rows[expand]``, and the gradient is
    first summed per position of ``rows``).

    ``anchor`` is a 0-dim tensor with ``requires_grad=True`` owned by the table: it makes the
    output part of the autograd graph even though the rows are not a leaf tensor.
    """

    @staticmethod
    def forward(ctx, anchor, emb, rows, impl, scale, expand, as_sum=False):
        ctx.impl = impl
        ctx.scalar = scale if not isinstance(scale, torch.Tensor) else None
        ctx.has_expand = expand is not None
        ctx.as_sum = bool(as_sum)
        saved = [rows] + ([expand] if expand is not None else [])
        if isinstance(scale, torch.Tensor):
            saved.append(scale)
        ctx.save_for_backward(*saved)
        return emb

    @staticmethod
    def backward(ctx, grad):
        saved = list(ctx.saved_tensors)
        rows = saved.pop(0)
        if ctx.has_expand:
            g = sum_rows_by_index(grad.reshape(-1, ctx.impl.dim), saved.pop(0), rows.numel())
        elif ctx.as_sum:
            # what summing each row's single gradient into zeros gives (-0.0 becomes +0.0), in
            # one pass and without the zeroed [U, D] buffer
            g = grad.reshape(rows.numel(), ctx.impl.dim) + 0.0
        else:
            g = grad.reshape(rows.numel(), ctx.impl.dim)
        if saved:
            g = g * saved[0].to(g.dtype).unsqueeze(1)
        elif ctx.scalar is not None:
            g = g * ctx.scalar
        # rows of one lookup of distinct ids are distinct (absent ones, -1, are dropped)
        ctx.impl.accept_grad(rows, g.contiguous(), unique=True)
        return None, None, None, None, None, None, None


def lookup_rows_with_grad(impl: DynamicTableImpl, anchor: torch.Tensor, rows: torch.Tensor,
                          scale: Union[None, float, torch.Tensor] = None,
                          expand: Optional[torch.Tensor] = None, as_sum: bool = False) -> torch.Tensor:
    """``embedding[rows]`` (zeros for ``rows < 0``) whose gradient goes to ``impl``'s buffer,
    multiplied by ``scale`` (a float, or float ``[len(rows)]`` per row) when given.

    ``expand`` (int64 ``[N]``, positions into ``rows``): returns ``embedding[rows[expand]]``
    ``[N, D]`` gathered in one pass (not ``[len(rows), D]`` then expanded), the gradient summed
    per row of ``rows`` before it reaches the buffer. ``as_sum`` (without ``expand``): the
    gradient is the one an identity ``expand`` would give (each row's gradient summed into
    zeros, so ``-0.0`` arrives as ``+0.0``) without the sum: what :meth:`DynamicTable.lookup`
    uses when every id of a batch is distinct."""
    emb = impl.gather(rows, expand)
    if not torch.is_grad_enabled():
        return emb
    return _RowsToTable.apply(anchor, emb, rows, impl, scale, expand, as_sum)


class _RowsToTables(torch.autograd.Function):
    """:class:`_RowsToTable` for several tables at once: identity on ``emb`` ``[sum U_t, D]``
    (the rows of every table, one after the other); backward cuts the gradient into the tables'
    row ranges (views, one ``split``) and hands each table its ``(rows, grad * scale)``. The
    ``anchors`` (one per table) tie the output into the graph."""

    @staticmethod
    def forward(ctx, emb, impls, rows, scales, present, *anchors):
        ctx.impls, ctx.rows, ctx.scales, ctx.present = impls, rows, scales, present
        return emb

    @staticmethod
    def backward(ctx, grad):
        grad = grad.reshape(-1, grad.shape[-1])
        parts = torch.split(grad, [r.numel() for r in ctx.rows])
        for impl, rows, g, scale, present in zip(ctx.impls, ctx.rows, parts, ctx.scales, ctx.present):
            if scale is not None:
                g = g * scale
            # rows of one lookup of distinct ids are distinct (absent ones, -1, are dropped)
            impl.accept_grad(rows, g.contiguous(), unique=True, present=present)
        return (None, None, None, None, None) + (None,) * len(ctx.impls)


def lookup_tables_with_grad(impls: Sequence[DynamicTableImpl], anchors: Sequence[torch.Tensor],
                            rows: Sequence[torch.Tensor], scales: Sequence[Optional[float]],
                            grad: bool = True, present: Optional[Sequence[bool]] = None) -> torch.Tensor:
    """:func:`lookup_rows_with_grad` for several in-memory tables in one gather: the rows
    ``rows[t]`` (int64 ``[U_t]``, ``-1`` = absent: zeros) of every table ``impls[t]`` (one
    dim and dtype), ``[sum U_t, D]`` in table order; with ``grad``, an autograd node whose
    backward hands table ``t`` the gradient of its row range times ``scales[t]`` (a float or
    None = 1). The values and the gradients each table receives are those of one
    :func:`lookup_rows_with_grad` per table. ``present[t]`` (default False): ``rows[t]`` holds
    no ``-1`` (an inserting lookup's rows), so its backward skips that check. The caller holds
    every table's lock (the slots
    are read here: a file-backed table's rows are not in ``embedding``, so those tables take
    the per-table path)."""
    emb = multi_table_gather([impl.embedding for impl in impls], rows)
    if not grad or not torch.is_grad_enabled():
        return emb
    present = list(present) if present is not None else [False] * len(impls)
    return _RowsToTables.apply(emb, list(impls), list(rows), list(scales), present, *anchors)


def split_per_key(features: KeyedJaggedTensor, emb: torch.Tensor) -> Dict[str, JaggedTensor]:
    """Cut the per-id embeddings ``emb`` ``[N, D]`` of ``features.values()`` into one
    ``JaggedTensor`` per key (the key's lengths and weights)."""
    out: Dict[str, JaggedTensor] = {}
    start = 0
    for key, length in zip(features.keys(), features.length_per_key()):
        jt = features[key]
        out[key] = JaggedTensor(values=emb[start:start + length], lengths=jt.lengths(), weights=jt.weights_or_none())
        start += length
    return out


class DynamicTable(nn.Module):
    """One dynamic embedding table as a module (see the module docstring).

    Args:
        config: :class:`DynamicTableConfig`.
        impl_type: the class of :attr:`impl`, :class:`DynamicTableImpl` or a subclass of it
            (the RecIS facade passes its ``HashtableImpl``, nn/modules/hashtable_impl.py).
    """

    def __init__(self, config: DynamicTableConfig, impl_type: type = DynamicTableImpl):
        super().__init__()
        if config.grad_reduce_by not in ("worker", "id"):
            raise ValueError(f"table {config.name!r}: grad_reduce_by must be 'worker' or 'id', "
                             f"got {config.grad_reduce_by!r}")
        self.config = config
        children = ChildrenInfo(config.children or [config.name], config.coalesced, config.name)
        if not (isinstance(impl_type, type) and issubclass(impl_type, DynamicTableImpl)):
            raise TypeError(f"table {config.name!r}: impl_type must be DynamicTableImpl or a subclass, "
                            f"got {impl_type!r}")
        self.impl = impl_type(config.name, config.embedding_dim, config.dtype, config.device,
                             config.sample_rows, config.block_size, children, init_rows=config.init_rows,
                             store=config.store)
        # not a Parameter: dense optimizers and DDP must not see it
        self._anchor = torch.zeros((), requires_grad=True)

    # several tables' lookup_rows at once (module function; EmbeddingEngine.lookup_run calls it
    # through the class it already imports)
    lookup_rows_many = staticmethod(lookup_rows_many)

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def anchor(self) -> torch.Tensor:
        """The 0-dim ``requires_grad`` tensor every lookup's output depends on, so that backward
        reaches the table (its gradient stays zero; the rows' gradients go to ``impl``)."""
        return self._anchor

    @property
    def in_memory(self) -> bool:
        """Every row of the table is in its ``embedding`` slot tensor (not a file-backed store,
        backend/row_cache.py), so :func:`lookup_tables_with_grad` may gather from it."""
        return not self.impl.storage.file_backed

    def grad_scale(self) -> Optional[float]:
        """What :meth:`lookup_unique` (without ``counts``) multiplies the gradient of its rows
        by: ``1 / world_size`` for ``grad_reduce_by="worker"`` over several workers, else None."""
        if self.config.grad_reduce_by == "worker" and self.config.world_size > 1:
            return 1.0 / self.config.world_size
        return None

    def lookup_rows(self, unique_ids: torch.Tensor, readonly: bool = False) -> torch.Tensor:
        """The rows (int64 ``[U]``, ``-1`` = absent) of distinct int64 ids ``[U]`` as
        :meth:`lookup_unique` finds them: unknown ids inserted in training mode (floating table,
        not ``readonly``), the lookup listeners told. Gather them with
        :func:`lookup_tables_with_grad` (gradients only when :attr:`trains_rows`)."""
        return self._rows(unique_ids, readonly)

    @property
    def trains_rows(self) -> bool:
        """Lookups in the current mode give rows with gradients (training, floating table)."""
        return self.training and not self.impl.read_only

    def _rows(self, unique_ids: torch.Tensor, readonly: bool) -> torch.Tensor:
        insert = self.training and not readonly and not self.impl.read_only
        rows = (self.impl.find_or_insert_rows(unique_ids, distinct=True) if insert
                else self.impl.find_rows(unique_ids))
        if self.training and not self.impl.read_only:
            self.impl.notify_lookup(rows)
        return rows

    def lookup_unique(self, unique_ids: torch.Tensor, readonly: bool = False,
                      counts: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Embeddings ``[U, dim]`` of distinct int64 ids ``[U]``.

        In training mode (floating table, ``readonly=False``) unknown ids are inserted; otherwise
        they give zero vectors. Gradients reach the table in training mode only; ``counts``
        (int ``[U]``, occurrences of each id) divides them for ``grad_reduce_by="id"``.
        """
        scale = None
        if self.config.grad_reduce_by == "worker" and self.config.world_size > 1:
            scale = 1.0 / self.config.world_size
        elif self.config.grad_reduce_by == "id" and counts is not None:
            scale = 1.0 / counts.to(torch.float32)
        return self.lookup_unique_scaled(unique_ids, readonly, scale)

    def lookup_unique_scaled(self, unique_ids: torch.Tensor, readonly: bool,
                             scale: Union[None, float, torch.Tensor],
                             expand: Optional[torch.Tensor] = None, as_sum: bool = False) -> torch.Tensor:
        """:meth:`lookup_unique` with the gradient of row ``i`` multiplied by ``scale`` (a float),
        ``scale[i]`` (float ``[U]``) or 1 (None). ``expand`` (int64 ``[N]``, positions into
        ``unique_ids``): the result is ``[N, D]``, the rows of ``unique_ids[expand]`` (one gather;
        see :func:`lookup_rows_with_grad`, also for ``as_sum``)."""
        rows = self._rows(unique_ids, readonly)
        if not self.training or self.impl.read_only:
            return self.impl.gather(rows, expand)
        return lookup_rows_with_grad(self.impl, self._anchor, rows, scale, expand, as_sum)

    # ------------------------------------------------------------------ staged lookup
    @property
    def shard_count(self) -> int:
        """Ranks the rows are spread over (1: this table holds them all)."""
        return 1

    def create_context(self) -> DynamicLookupContext:
        return DynamicLookupContext()

    def partition_ids(self, ids: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, List[int]]:
        """``(unique [U], inverse [N], rank_counts)`` of int64 ``ids``: the distinct ids grouped
        by owner rank (one group here), ``unique[inverse] == ids``."""
        uniq, inverse = unique_first_seen(self.impl.check_ids(ids, "lookup"))
        return uniq, inverse, [uniq.numel()]

    def request(self, unique_ids: torch.Tensor, rank_counts: Optional[List[int]] = None) -> LookupRequest:
        """Start a staged lookup of distinct ids (see :class:`LookupRequest`)."""
        return LookupRequest(self, unique_ids, rank_counts)

    def send_ids(self, ctx: DynamicLookupContext, unique_ids: torch.Tensor,
                 rank_counts: Optional[List[int]] = None) -> Awaitable[Awaitable[ReceivedIds]]:
        """Nothing to send: the ids are their own owner's."""
        ctx.send_counts = torch.tensor([unique_ids.numel()], dtype=torch.int64)
        return NoWait(NoWait(ReceivedIds(unique_ids, ctx.send_counts.view(1, 1))))

    def fetch_rows(self, ctx: DynamicLookupContext, received: ReceivedIds, readonly: bool = False
                   ) -> Awaitable[torch.Tensor]:
        ctx.received, ctx.readonly = received, bool(readonly)
        return NoWait(self.lookup_unique(received.ids, readonly))

    def insert(self, ids: torch.Tensor, embeddings: torch.Tensor) -> None:
        """Upsert ``ids`` with ``embeddings`` ``[N, dim]``."""
        self.impl.insert(ids, embeddings)

    def lookup(self, ids: torch.Tensor, readonly: bool = False) -> torch.Tensor:
        """Embeddings ``[N, dim]`` of int64 ids ``[N]`` (repeats allowed: looked up once, their
        gradients summed, or averaged with ``grad_reduce_by="id"``).

        One gather of the ``N`` rows (:meth:`lookup_unique_scaled` with ``expand``), the
        gradient summed per distinct id; the occurrence counts are computed only for
        ``grad_reduce_by="id"``. A batch whose ids are all distinct skips the expansion and the
        sum. While a table grows (its last inserting lookup found only new, distinct ids), the
        next batch goes to the id map first, without the dedupe: when every id turns out new
        the map has proved them distinct; otherwise the dedupe runs after the insert. Values,
        rows and gradients are those of the general path either way."""
        flat = self.impl.check_ids(ids, "lookup")
        insert = self.training and not readonly and not self.impl.read_only
        if insert and getattr(self, "_growing", False) and not self.impl.storage.file_backed:
            return self._lookup_growing(flat)
        uniq, inverse = unique_first_seen(flat)
        scale = self._lookup_scale(uniq.numel(), inverse)
        if uniq.numel() != flat.numel():
            self._growing = False
            return self.lookup_unique_scaled(uniq, readonly, scale, expand=inverse)
        # every id distinct: uniq is flat itself and inverse the identity
        with self.impl.lock:
            size0 = len(self.impl)
            out = self.lookup_unique_scaled(uniq, readonly, scale, as_sum=True)
            if insert:     # a hint only: the growing path checks its batch itself
                self._growing = len(self.impl) - size0 == flat.numel()
        return out

    def _lookup_scale(self, num_unique: int, inverse: Optional[torch.Tensor]) -> Union[None, float, torch.Tensor]:
        """What :meth:`lookup_unique` multiplies the gradient of the rows of ``num_unique``
        distinct ids by; for ``grad_reduce_by="id"`` their occurrence counts come from
        ``inverse`` (None: every id occurs once)."""
        if self.config.grad_reduce_by == "worker" and self.config.world_size > 1:
            return 1.0 / self.config.world_size
        if self.config.grad_reduce_by == "id":
            counts = (torch.bincount(inverse, minlength=num_unique) if inverse is not None
                      else torch.ones(num_unique, dtype=torch.int64, device=self.impl.device))
            return 1.0 / counts.to(torch.float32)
        return None

    def _lookup_growing(self, flat: torch.Tensor) -> torch.Tensor:
        """:meth:`lookup` (training, inserting, in-memory table) of a batch expected to hold new,
        distinct ids only: find-or-insert of the batch itself (the map numbers new ids by first
        occurrence, as it numbers the deduped ids, so every row is the same), then the dedupe
        only when the insert did not prove the ids distinct (some id known or repeated)."""
        impl = self.impl
        n = flat.numel()
        with impl.lock:     # the size change must be this batch's alone
            size0 = len(impl)
            # not distinct=True: a batch that needs a growth would then count its repeats as new
            # ids; expect_new=True grows the map for the whole batch and inserts it into the grown
            # copy without counting, and falls back to the counted path (dropping the copy) when
            # some id was known or repeated, so the growth follows the map's policy either way
            rows_all = impl.find_or_insert_rows(flat, expect_new=True)
            all_new = len(impl) - size0 == n
        if all_new:
            # every id was new, so no id repeats: rows_all are the distinct ids' rows
            impl.notify_lookup(rows_all)
            return lookup_rows_with_grad(impl, self._anchor, rows_all, self._lookup_scale(n, None), as_sum=True)
        self._growing = False
        uniq, inverse = unique_first_seen(flat)
        # the rows of uniq: every position of an id holds its row
        rows = rows_all.new_empty(uniq.numel()).index_copy_(0, inverse, rows_all)
        impl.notify_lookup(rows)
        scale = self._lookup_scale(uniq.numel(), inverse)
        if uniq.numel() == n:
            return lookup_rows_with_grad(impl, self._anchor, rows, scale, as_sum=True)
        return lookup_rows_with_grad(impl, self._anchor, rows, scale, expand=inverse)

    def forward(self, features: KeyedJaggedTensor) -> Dict[str, JaggedTensor]:
        """Per-key embeddings: ``{key: JaggedTensor(values=[N_key, dim], lengths)}``."""
        values = features.values()
        if values.dtype != torch.int64:
            raise TypeError(f"table {self.name!r}: KeyedJaggedTensor values must be int64 ids, got {values.dtype}")
        return split_per_key(features, self.lookup(values))

    def _apply(self, fn, recurse=True):
        # module.to(device) / .cuda() / .cpu() move the table state along; dtype casts do not
        # touch it (the table dtype is part of its configuration). Under the CPU mode
        # (recis_compat/utils/cpu_mode.py) ``.cuda()`` probes as CPU and the table stays put; on
        # a host without CUDA and without it, the error names RECIS_COMPAT_DEVICE.
        try:
            probe = fn(torch.empty(0, device=self.impl.device))
        except (AssertionError, RuntimeError) as e:
            if torch.cuda.is_available() or "CUDA" not in str(e) or "RECIS_COMPAT_DEVICE" in str(e):
                raise
            raise RuntimeError(cuda_unavailable_message(f"table {self.name!r}: moving the module "
                                                        f"(Module.cuda / Module.to)")) from e
        if probe.device != self.impl.device:
            self.impl.to(probe.device)
        return super()._apply(fn, recurse)
