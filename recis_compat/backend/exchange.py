"""The all-to-alls of a sharded dynamic-table lookup: ids to their owners, rows back.

One lookup of ``U`` distinct ids on each of ``W`` ranks (RecIS's exchange, COMPATIBILITY.md
"Multi-process lookups")::

    ids_partition (csrc): distinct ids grouped by owner rank, inverse, rank_counts [W]
    IdExchange:   rank_counts all-to-all (async) --wait--> ids all-to-all (async) --wait-->
                  owner: the ids of every source rank, concatenated by source
                  (with an IdCapacity, as ShardedDynamicTable passes: the ids ride in the
                  counts all-to-all, the second one only for what exceeds the capacity)
    RowsAllToAll: owner's rows [N_recv, D] --all-to-all (async, autograd-aware)--> requester [U, D]
                  (backward: the reverse all-to-all of the row gradients)

``GroupedRowsAllToAll`` sends the rows of several tables' lookups in one all-to-all (one
autograd node; backward one all-to-all of all their gradients): ``backend/grouped_exchange.py``
carries the lookups of all sharded tables of an EmbeddingEngine forward by one ``IdExchange``
(``K`` segments, one per lookup) and one ``GroupedRowsAllToAll`` per dtype.

Every stage returns a TorchRec ``Awaitable`` right after issuing its collective
(``async_op=True``), so a caller with several tables issues every table's id exchange before
waiting on any (``nn/modules/embedding_engine.py``, ``torchrec/distributed.py``).

Why not TorchRec's ``KJTAllToAll`` / ``SequenceEmbeddingsAllToAll``: a lookup sends one bag
per destination rank, so the exchange is exactly two ``all_to_all_single`` calls and one back;
TorchRec's modules add a KJT permute, a lengths all-to-all per key and, for the rows, a nested
autograd graph that our error guard had to re-enter in backward (docs/benchmarks.md, sharded
lookup, has the before/after). TorchRec's own sharded EBC/EC beside our tables keep using its
modules.

Failures (a dead or stopped peer, the process-group timeout) surface from ``wait()`` / backward
as the exception ``on_error(err)`` returns (the callers name the table, rank and direction).
"""
from __future__ import annotations

from typing import Callable, List, Optional

import torch
import torch.distributed as dist
from torchrec.distributed.types import Awaitable
from torchrec.streamable import Multistreamable

__all__ = ["IdExchange", "IdCapacity", "ReceivedIds", "RowsAllToAll", "GroupedRowsAllToAll", "PendingRows",
           "ErrorFactory"]

ErrorFactory = Callable[[str, str, BaseException], BaseException]
"""``f(what, phase, err)`` -> the exception to raise: ``what`` is ``"id"``, ``"embedding"`` or
``"embedding-gradient"``, ``phase`` ``"forward"`` or ``"backward"``."""


def _wait(work, on_error: ErrorFactory, what: str, phase: str) -> None:
    try:
        work.wait()
    except RuntimeError as e:
        raise on_error(what, phase, e) from e


class ReceivedIds(Multistreamable):
    """What an owner received.

    Attributes:
        ids: int64 ``[N_recv]``: the ids of source rank 0, then of rank 1, ...
        counts: int64 ``[W, K]``: ids from every source rank per segment (``K`` segments, e.g.
            tables, as the senders' ``send_counts``).
        per_source: ``List[int]`` of length W: ids from every source rank (``counts.sum(1)``).
    """

    def __init__(self, ids: torch.Tensor, counts: torch.Tensor):
        self.ids, self.counts = ids, counts
        self.per_source: List[int] = counts.sum(1).tolist()

    def record_stream(self, stream) -> None:
        for t in (self.ids, self.counts):
            if t is not None and t.is_cuda:
                t.record_stream(stream)


class _IdsAwaitable(Awaitable[ReceivedIds]):
    def __init__(self, work, received: ReceivedIds, on_error: ErrorFactory):
        super().__init__()
        self._work, self._received, self._on_error = work, received, on_error

    def _wait_impl(self) -> ReceivedIds:
        if self._work is not None:
            _wait(self._work, self._on_error, "id", "forward")
        return self._received


class IdCapacity:
    """How many ids per destination rank ride in the counts all-to-all of the next
    :class:`IdExchange` of one table (``value``; 0: none, the ids follow in a second all-to-all).

    Every rank must hold the same value before each exchange: it starts at 0 and is set, after
    each exchange, from what every rank received, which is the same everywhere: the largest
    number of ids any rank sent to any rank in that exchange (each rank sends it in every
    header), plus a quarter, rounded up to ``ALIGN``. So a table whose lookups keep about the
    same size sends counts and ids in one all-to-all from its second lookup on; a lookup that
    outgrows the value sends the rest in a second all-to-all (the old protocol for that part).
    The extra bytes are the padding up to the value (ids are 8 bytes; the rows that come back
    are ``dim * 4`` each).
    """

    ALIGN = 64

    def __init__(self):
        self.value = 0

    def update(self, largest: int) -> None:
        largest = max(0, int(largest))
        self.value = -(-(largest + largest // 4) // self.ALIGN) * self.ALIGN


class _MergedIdsAwaitable(Awaitable[ReceivedIds]):
    """The ids of an :class:`IdExchange` with an :class:`IdCapacity`: the first ``take[s]`` ids
    of source ``s`` came in its header row ``block[s, head:]``, the rest (``rest[s]``, only when
    a source sent more than the capacity) in the overflow all-to-all ``work``."""

    def __init__(self, work, received: ReceivedIds, block: torch.Tensor, head: int, take: List[int],
                 overflow: Optional[torch.Tensor], rest: List[int], on_error: ErrorFactory):
        super().__init__()
        self._work, self._received, self._on_error = work, received, on_error
        self._block, self._head, self._take, self._overflow, self._rest = block, head, take, overflow, rest

    def _wait_impl(self) -> ReceivedIds:
        if self._work is not None:
            _wait(self._work, self._on_error, "id", "forward")
        parts, start = [], 0
        for s, (k, r) in enumerate(zip(self._take, self._rest)):
            if k:
                parts.append(self._block[s, self._head:self._head + k])
            if r:
                parts.append(self._overflow[start:start + r])
                start += r
        self._received.ids = torch.cat(parts) if parts else self._block.new_empty((0,))
        self._block = self._overflow = None
        return self._received


class IdExchange(Awaitable[Awaitable[ReceivedIds]]):
    """Send ``ids`` int64 ``[U]`` to their owners.

    ``send_counts``: int64 ``[W]`` or ``[W, K]`` (CPU): ``ids`` holds ``send_counts[r].sum()``
    ids for rank ``r``, rank 0's first; the ``K`` columns split each rank's part into segments
    (tables) that the owner gets back as :attr:`ReceivedIds.counts`. Construction issues the
    counts all-to-all; the first ``wait()`` waits for it and issues the ids all-to-all; the second
    returns :class:`ReceivedIds`. One rank (W = 1) exchanges nothing.

    ``capacity`` (an :class:`IdCapacity` kept by the caller per table): the ids ride with the
    counts. Each rank sends every rank one row ``[counts (K), largest count it sends anyone,
    up to capacity.value ids, zero padding]``; the first ``wait()`` waits for it and issues a
    second all-to-all only when some rank sent some rank more ids than the capacity (every rank
    sees that from the headers), then updates the capacity; so an exchange is one all-to-all
    instead of two once the capacity fits. The ids received are the same, in the same order.
    CUDA ids ignore ``capacity`` (counts and ids go separately, as without it).
    """

    def __init__(self, ids: torch.Tensor, send_counts: torch.Tensor, pg, on_error: ErrorFactory,
                 capacity: Optional[IdCapacity] = None):
        super().__init__()
        counts = send_counts.to(torch.int64).reshape(send_counts.shape[0], -1).contiguous()
        self._ids, self._pg, self._on_error = ids, pg, on_error
        self._send_counts = counts
        # CPU ids only (gloo): the merged row mixes counts and ids in one tensor
        self._capacity = capacity if ids.device.type == "cpu" else None
        capacity = self._capacity
        self._work = None
        world, segments = counts.shape
        if world > 1:
            send = counts
            if capacity is not None:
                self._cap = cap = int(capacity.value)
                self._totals = totals = counts.sum(1).tolist()
                send = counts.new_zeros((world, segments + 1 + cap))
                send[:, :segments] = counts
                send[:, segments] = max(totals)
                if cap:
                    flat = ids.reshape(-1)
                    start = 0
                    for d, t in enumerate(totals):
                        k = min(t, cap)
                        if k:
                            send[d, segments + 1:segments + 1 + k] = flat[start:start + k]
                        start += t
            self._send = send
            self._recv_counts = torch.empty_like(send)
            try:
                self._work = dist.all_to_all_single(self._recv_counts, send, group=pg, async_op=True)
            except RuntimeError as e:
                raise on_error("id", "forward", e) from e

    def _wait_merged(self) -> Awaitable[ReceivedIds]:
        """First wait with a capacity: counts (and ids up to the capacity) arrived."""
        _wait(self._work, self._on_error, "id", "forward")
        segments = self._send_counts.shape[1]
        block, cap = self._recv_counts, self._cap
        received = ReceivedIds(None, block[:, :segments].contiguous())
        largest = int(block[:, segments].max())
        take = [min(t, cap) for t in received.per_source]
        rest = [t - k for t, k in zip(received.per_source, take)]
        work, overflow = None, None
        if largest > cap:               # some rank sent some rank more than the capacity: all know it
            send_rest = [t - min(t, cap) for t in self._totals]
            flat, start, pieces = self._ids.reshape(-1), 0, []
            for t, r in zip(self._totals, send_rest):
                if r:
                    pieces.append(flat[start + t - r:start + t])
                start += t
            send = torch.cat(pieces) if pieces else flat.new_empty((0,))
            overflow = flat.new_empty((sum(rest),))
            try:
                work = dist.all_to_all_single(overflow, send, output_split_sizes=rest, input_split_sizes=send_rest,
                                              group=self._pg, async_op=True)
            except RuntimeError as e:
                raise self._on_error("id", "forward", e) from e
        self._capacity.update(largest)
        self._send = self._recv_counts = None
        return _MergedIdsAwaitable(work, received, block, segments + 1, take, overflow, rest, self._on_error)

    def _wait_impl(self) -> Awaitable[ReceivedIds]:
        if self._work is None:
            return _IdsAwaitable(None, ReceivedIds(self._ids, self._send_counts), self._on_error)
        if self._capacity is not None:
            return self._wait_merged()
        _wait(self._work, self._on_error, "id", "forward")
        received = ReceivedIds(None, self._recv_counts)
        received.ids = self._ids.new_empty((sum(received.per_source),))
        try:
            work = dist.all_to_all_single(received.ids, self._ids.contiguous(), output_split_sizes=received.per_source,
                                          input_split_sizes=self._send_counts.sum(1).tolist(), group=self._pg,
                                          async_op=True)
        except RuntimeError as e:
            raise self._on_error("id", "forward", e) from e
        return _IdsAwaitable(work, received, self._on_error)


class PendingRows(Awaitable[torch.Tensor]):
    """The rows of an issued :class:`RowsAllToAll`; ``wait()`` -> ``[sum(recv_splits), D]``.
    Pass one to ``RowsAllToAll.apply`` to make the exchange asynchronous and store what ``apply``
    returned in :attr:`rows`."""

    def __init__(self, on_error: Optional[ErrorFactory] = None):
        super().__init__()
        self.on_error = on_error
        self.work = None
        self.rows: Optional[torch.Tensor] = None
        self.sent: Optional[torch.Tensor] = None

    def _wait_impl(self) -> torch.Tensor:
        if self.work is not None:
            work, self.work = self.work, None
            if self.on_error is None:
                work.wait()
            else:
                _wait(work, self.on_error, "embedding", "forward")
        self.sent = None
        return self.rows


def rows_all_to_all(out: torch.Tensor, sent: torch.Tensor, recv_splits: List[int], send_splits: List[int], pg,
                    async_op: bool, on_error: Optional[ErrorFactory], what: str, phase: str):
    """``all_to_all_single`` of rows (or row gradients) from ``sent`` into ``out`` (splits in
    rows of the tensors' first dim); a failure becomes ``on_error(what, phase, err)`` (None:
    re-raised as it is). Returns the work when ``async_op``."""
    try:
        return dist.all_to_all_single(out, sent, output_split_sizes=recv_splits, input_split_sizes=send_splits,
                                      group=pg, async_op=async_op)
    except RuntimeError as e:
        if on_error is None:
            raise
        raise on_error(what, phase, e) from e


def _send_rows(out: torch.Tensor, sent: torch.Tensor, recv_splits: List[int], send_splits: List[int], pg,
               pending: Optional[PendingRows], on_error) -> None:
    """The forward rows all-to-all of :class:`RowsAllToAll` / :class:`GroupedRowsAllToAll`:
    ``sent`` -> ``out``; with a :class:`PendingRows` asynchronous (its work and the sent buffer,
    which must outlive it, kept on ``pending``)."""
    work = rows_all_to_all(out, sent, recv_splits, send_splits, pg, pending is not None, on_error,
                           "embedding", "forward")
    if pending is not None:
        pending.work, pending.sent = work, sent


class RowsAllToAll(torch.autograd.Function):
    """All-to-all of rows, differentiable: ``rows`` ``[sum(send_splits), D]`` (``send_splits[r]``
    rows to rank ``r``) -> ``[sum(recv_splits), D]`` (``recv_splits[r]`` rows from rank ``r``).
    Backward sends the gradients back the same way (the reverse all-to-all).

    ``apply(rows, send_splits, recv_splits, pg, pending=None)``: without ``pending`` the call
    blocks until the rows arrived; with a :class:`PendingRows` it returns at once and the output
    must not be read before ``pending.wait()`` (set ``pending.rows`` to the returned tensor). Failures in backward raise
    ``pending.on_error("embedding-gradient", "backward", err)`` when one is given.
    """

    @staticmethod
    def forward(ctx, rows: torch.Tensor, send_splits: List[int], recv_splits: List[int], pg,
                pending: Optional[PendingRows] = None) -> torch.Tensor:
        send_splits, recv_splits = [int(s) for s in send_splits], [int(s) for s in recv_splits]
        ctx.send_splits, ctx.recv_splits, ctx.pg = send_splits, recv_splits, pg
        ctx.on_error = pending.on_error if pending is not None else None
        sent = rows.contiguous()
        out = rows.new_empty((sum(recv_splits),) + tuple(rows.shape[1:]))
        _send_rows(out, sent, recv_splits, send_splits, pg, pending, ctx.on_error)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        out = grad.new_empty((sum(ctx.send_splits),) + tuple(grad.shape[1:]))
        rows_all_to_all(out, grad.contiguous(), ctx.send_splits, ctx.recv_splits, ctx.pg, False, ctx.on_error,
                        "embedding-gradient", "backward")
        return out, None, None, None, None


class GroupedRowsAllToAll(torch.autograd.Function):
    """The rows of ``K`` owner-side lookups (one per table, all of one dtype) sent back in one
    all-to-all, differentiable (one autograd node for all of them; ``backend/grouped_exchange.py``).

    ``apply(counts, dims, recv_splits, pg, pending, *rows)``: ``rows[k]`` ``[N_k, dims[k]]`` are
    the rows of the ids lookup ``k`` received, by source rank (``counts[s][k]`` rows for rank
    ``s``, rank 0's first: :attr:`ReceivedIds.counts`). Rank ``s`` gets, in one flat buffer, its
    rows of lookup 0, then of lookup 1, ...: ``counts[s][k] * dims[k]`` elements each. Returns
    this rank's flat buffer ``[sum(recv_splits)]`` (``recv_splits[r]``: elements from rank
    ``r``, i.e. the rows this rank asked rank ``r`` for, lookup by lookup); with a
    :class:`PendingRows` it returns at once and must not be read before ``pending.wait()``.
    Backward sends the gradient back by the reverse all-to-all and cuts it into every
    ``rows[k]``'s ``[N_k, dims[k]]`` gradient (the same values a :class:`RowsAllToAll` per
    lookup gives). Failures raise ``pending.on_error(what, phase, err)`` as ``RowsAllToAll``.
    """

    @staticmethod
    def forward(ctx, counts: List[List[int]], dims: List[int], recv_splits: List[int], pg,
                pending: Optional[PendingRows], *rows: torch.Tensor) -> torch.Tensor:
        world, lookups = len(counts), len(dims)
        ctx.counts, ctx.dims, ctx.pg = counts, dims, pg
        ctx.recv_splits = [int(s) for s in recv_splits]
        ctx.on_error = pending.on_error if pending is not None else None
        ctx.send_splits = [sum(counts[s][k] * dims[k] for k in range(lookups)) for s in range(world)]
        starts = [0] * lookups
        pieces = []
        for s in range(world):
            for k in range(lookups):
                n = counts[s][k]
                if n:
                    pieces.append(rows[k].narrow(0, starts[k], n).reshape(-1))
                    starts[k] += n
        for k in range(lookups):
            if starts[k] != rows[k].shape[0]:
                raise ValueError(f"GroupedRowsAllToAll: lookup {k} has {rows[k].shape[0]} rows but the counts "
                                 f"send {starts[k]}")
        sent = torch.cat(pieces) if pieces else rows[0].new_empty((0,))
        out = sent.new_empty((sum(ctx.recv_splits),))
        _send_rows(out, sent, ctx.recv_splits, ctx.send_splits, pg, pending, ctx.on_error)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        counts, dims = ctx.counts, ctx.dims
        back = grad.new_empty((sum(ctx.send_splits),))
        rows_all_to_all(back, grad.contiguous(), ctx.send_splits, ctx.recv_splits, ctx.pg, False, ctx.on_error,
                        "embedding-gradient", "backward")
        sizes = [counts[s][k] * dims[k] for s in range(len(counts)) for k in range(len(dims))]
        parts = torch.split(back, sizes)
        grads = []
        for k in range(len(dims)):
            if not ctx.needs_input_grad[5 + k]:
                grads.append(None)
                continue
            mine = [parts[s * len(dims) + k] for s in range(len(counts)) if counts[s][k]]
            g = mine[0] if len(mine) == 1 else (torch.cat(mine) if mine else back.new_empty((0,)))
            grads.append(g.view(-1, dims[k]))
        return (None, None, None, None, None) + tuple(grads)
