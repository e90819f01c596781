"""One exchange for the lookups of several sharded dynamic tables (issue 15 item 4).

A lookup of one :class:`~recis_compat.backend.sharding.ShardedDynamicTable` costs three
all-to-alls (ids with their counts, rows forward, row gradients backward;
``backend/exchange.py``), so a model with ``K`` sharded tables (DLRM: 26 fields) pays ``3 K``
collectives a step. :class:`GroupedLookup` carries ``K`` lookups over one process group in
three, as TorchRec sends all tables' ids in one KJT all-to-all and the pooled rows in one::

    per lookup k: ids_partition (csrc) -> distinct ids [U_k] grouped by owner, inverse, counts [W]
    IdExchange:   one all-to-all of every lookup's ids, counts [W, K] (segment k = lookup k;
                  with one IdCapacity for the group: the ids ride with the counts, the ones
                  beyond the capacity follow in a second all-to-all)
    owner:        per lookup, its ids from every source -> ShardedDynamicTable.compute (dedupe,
                  local find-or-insert, the gradient scale) -> rows [N_k, D_k], in lookup order
    GroupedRowsAllToAll: every lookup's rows in one all-to-all per dtype (one autograd node;
                  backward: one all-to-all of every lookup's row gradients)
    requester:    per dim, one tensor [sum U_k, D] of the lookups' rows one after the other
                  (lookup k's rows in the order of its distinct ids)

Values, rows created, their order of creation and the gradients every table receives are those
of one staged lookup per table (``ShardedDynamicTable.request``): the same ids reach the same
``compute`` in the same order, the rows and gradients are moved, never summed, by the
exchanges. A failed collective raises ``DistributedExchangeError`` naming every table of the
group, the rank and the direction (docs/reliability.md, "Sharded id exchange").
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torchrec.distributed.types import Awaitable

from recis_compat.backend.dynamic_table import DynamicLookupContext
from recis_compat.backend.exchange import GroupedRowsAllToAll, IdCapacity, IdExchange, PendingRows, ReceivedIds
from recis_compat.backend.sharding import DistributedExchangeError, ShardedDynamicTable, exchange_error
from recis_compat.ops.id_map import ids_partition

__all__ = ["GroupedLookup", "GroupedRows"]


class GroupedRows:
    """What a :class:`GroupedLookup` gives back: for every lookup ``k``, ``(rows, base, n)``:
    its ``n = U_k`` rows are ``rows[base:base + n]`` of ``rows`` ``[sum U, D_k]``, the rows of
    every lookup with dim ``D_k`` (and dtype) one after the other, in lookup order."""

    def __init__(self, spans: List[Tuple[torch.Tensor, int, int]]):
        self.spans = spans

    def rows(self, k: int) -> torch.Tensor:
        """Lookup ``k``'s rows ``[U_k, D_k]`` (a view)."""
        rows, base, n = self.spans[k]
        return rows.narrow(0, base, n)


class _GroupedRowsAwaitable(Awaitable[GroupedRows]):
    def __init__(self, pending: Dict[torch.dtype, Tuple[PendingRows, List[int]]], sent: List[List[int]],
                 dims: List[int]):
        super().__init__()
        self._pending, self._sent, self._dims = pending, sent, dims

    def _wait_impl(self) -> GroupedRows:
        spans: List[Optional[Tuple[torch.Tensor, int, int]]] = [None] * len(self._dims)
        world = len(self._sent)
        for dtype, (pending, members) in self._pending.items():
            flat = pending.wait()
            # the flat buffer holds, per owner rank r, the rows of every member lookup: cut it
            # once, then put each dim's lookups one after the other (owner order inside one)
            sizes = [self._sent[r][k] * self._dims[k] for r in range(world) for k in members]
            parts = torch.split(flat, sizes)
            by_dim: "OrderedDict[int, List[int]]" = OrderedDict()
            for j, k in enumerate(members):
                by_dim.setdefault(self._dims[k], []).append(j)
            for dim, js in by_dim.items():
                pieces = [parts[r * len(members) + j] for j in js for r in range(world)]
                rows = (torch.cat(pieces) if len(pieces) > 1 else pieces[0]).view(-1, dim)
                base = 0
                for j in js:
                    k = members[j]
                    n = sum(self._sent[r][k] for r in range(world))
                    spans[k] = (rows, base, n)
                    base += n
        self._pending = None
        return GroupedRows(spans)


class GroupedLookup:
    """The lookups of ``K`` distinct-id lists in sharded tables over one process group, by one id
    exchange and one rows exchange per dtype (see the module docstring).

    ``GroupedLookup(tables, ids, capacity)`` dedupes and partitions every ``ids[k]`` (int64,
    any shape; ``tables[k]`` may repeat: one lookup each) and issues the id exchange;
    :meth:`send` waits for the counts (and the ids up to the capacity) and issues the rest;
    :meth:`fetch` waits for the ids, runs every owner lookup in order and issues the rows' way
    back; ``wait()`` on its result gives :class:`GroupedRows`. Every rank must construct the
    same group (same tables in the same order) at the same point, as with one lookup per table.

    Args:
        tables: the :class:`ShardedDynamicTable` of each lookup (one process group, world > 1).
        ids: int64 ids of each lookup.
        capacity: the :class:`IdCapacity` of this group of tables (the same on every rank; see
            :meth:`ShardedDynamicTable.group_capacity`); None: counts and ids in two all-to-alls.

    Attributes (after construction): ``unique[k]`` int64 ``[U_k]`` the distinct ids of lookup
    ``k`` grouped by owner, ``inverse[k]`` int64 ``[N_k]`` (``unique[k][inverse[k]]`` is the
    flattened input), ``send_counts[k]`` ids sent to each rank (``List[int]``, length W);
    after :meth:`fetch`, ``received_counts[k]`` ids received from each rank.
    """

    def __init__(self, tables: Sequence[ShardedDynamicTable], ids: Sequence[torch.Tensor],
                 capacity: Optional[IdCapacity] = None):
        if not tables or len(tables) != len(ids):
            raise ValueError(f"GroupedLookup: needs one ids tensor per table, got {len(tables)} tables and "
                             f"{len(ids)} id tensors")
        first = tables[0]
        for t in tables:
            if not isinstance(t, ShardedDynamicTable):
                raise TypeError(f"GroupedLookup: table {getattr(t, 'name', t)!r} is a {type(t).__name__}, "
                                "not a ShardedDynamicTable")
            if t.process_group is not first.process_group or t.world_size != first.world_size:
                raise ValueError(f"GroupedLookup: table {t.name!r} is sharded over another process group than "
                                 f"table {first.name!r}; group only tables of one process group")
        self.tables = list(tables)
        self._pg, self._world, self._rank = first.process_group, first.world_size, first.rank
        self.unique: List[torch.Tensor] = []
        self.inverse: List[torch.Tensor] = []
        counts = []
        for t, x in zip(self.tables, ids):
            uniq, inverse, c = ids_partition(t.impl.check_ids(x, "lookup"), self._world)
            self.unique.append(uniq)
            self.inverse.append(inverse)
            counts.append(c.to(torch.int64))
        counts_wk = torch.stack(counts, 1) if counts else torch.zeros((self._world, 0), dtype=torch.int64)
        sent = counts_wk.tolist()                     # [W][K]
        self.send_counts: List[List[int]] = [[sent[r][k] for r in range(self._world)] for k in range(len(tables))]
        self._sent = sent
        # every lookup's ids for rank 0, then for rank 1, ... (segment k = lookup k)
        starts = [0] * len(tables)
        pieces = []
        for r in range(self._world):
            for k, uniq in enumerate(self.unique):
                n = sent[r][k]
                if n:
                    pieces.append(uniq.narrow(0, starts[k], n))
                    starts[k] += n
        if not pieces:              # no ids on this rank (the others may have some)
            send = self.unique[0].new_empty((0,))
        else:
            send = torch.cat(pieces) if len(pieces) > 1 else pieces[0]
        self.received_counts: List[List[int]] = []
        self._ids = None
        self._exchange = IdExchange(send, counts_wk, self._pg, self.error, capacity)

    def describe(self) -> str:
        """The tables of the group as errors name them."""
        names = []
        for t in self.tables:
            d = t.describe()
            if d not in names:
                names.append(d)
        return f"{'tables' if len(names) > 1 else 'table'} {', '.join(names)} (one grouped exchange)"

    def error(self, what: str, phase: str, err: BaseException) -> DistributedExchangeError:
        """The :class:`DistributedExchangeError` of a failed all-to-all of this group."""
        return exchange_error(self.describe(), self._rank, self._world, what, phase, err)

    def send(self) -> None:
        """Wait for the counts (and the ids that rode with them); issue the ids beyond the
        capacity (idempotent)."""
        if self._ids is None:
            self._ids = self._exchange.wait()

    def fetch(self, readonly: Sequence[bool]) -> Awaitable[GroupedRows]:
        """Owner lookups of every lookup's received ids, in lookup order (inserting unless
        ``readonly[k]`` or in eval mode, each under its table's lock), and the rows' way back."""
        self.send()
        received: ReceivedIds = self._ids.wait()
        got = received.counts.tolist()               # [W][K] from every source rank
        world, lookups = self._world, len(self.tables)
        self.received_counts = [[got[s][k] for s in range(world)] for k in range(lookups)]
        parts = torch.split(received.ids, [got[s][k] for s in range(world) for k in range(lookups)])
        rows: List[torch.Tensor] = []
        for k, table in enumerate(self.tables):
            mine = [parts[s * lookups + k] for s in range(world) if got[s][k]]
            ids_k = mine[0] if len(mine) == 1 else (torch.cat(mine) if mine else received.ids.new_empty((0,)))
            ctx = DynamicLookupContext()
            ctx.readonly = bool(readonly[k])
            counts_k = received.counts[:, k:k + 1]
            with table.impl.lock:
                rows.append(table.compute(ctx, ReceivedIds(ids_k, counts_k)))
        dims = [t.config.embedding_dim for t in self.tables]
        classes: "OrderedDict[torch.dtype, List[int]]" = OrderedDict()
        for k, r in enumerate(rows):
            classes.setdefault(r.dtype, []).append(k)
        pending: Dict[torch.dtype, Tuple[PendingRows, List[int]]] = {}
        for dtype, members in classes.items():
            p = PendingRows(self.error)
            recv_splits = [sum(self._sent[r][k] * dims[k] for k in members) for r in range(world)]
            counts = [[got[s][k] for k in members] for s in range(world)]
            p.rows = GroupedRowsAllToAll.apply(counts, [dims[k] for k in members], recv_splits, self._pg, p,
                                               *[rows[k] for k in members])
            pending[dtype] = (p, members)
        return _GroupedRowsAwaitable(pending, self._sent, dims)
