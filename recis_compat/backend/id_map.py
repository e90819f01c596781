"""IdMap: the stateful, self-growing exact id -> row map in front of a dynamic table's rows.

It owns the three state tensors of the csrc id map (``recis_compat.ops.id_map``) and grows them
itself, so users never give a capacity.

Why a plain class and not an ``nn.Module`` with buffers: growth *replaces* the table tensor with a
larger one (``id_map_rehash``), and the free stack grows too. ``nn.Module.load_state_dict`` copies
into the existing buffers and rejects a different shape, so a checkpoint taken at another
capacity could not be loaded, and buffers would invite optimizers / DDP broadcast / ``.half()``
to touch integer state that only the id map may change. The owning table module decides how the
map appears in its state dict; this class gives it :meth:`state_dict` / :meth:`load_state_dict`
(tensors of any capacity) and :meth:`to`.

Growth policy (amortised, no rebuild per batch): with ``used = size + tombstones``, a batch of N
ids goes straight to the kernel when ``used + N <= max_load * capacity`` (default 0.8; N counts
repeats, so this is conservative). Otherwise the exact counts are read and the batch's absent ids
found; if its distinct new ids fit the remaining room (and N the capacity) it goes in one
call, else it is inserted in chunks that each fit the remaining room (``room = max_load * capacity - used``; a chunk of
already-present ids consumes no room), and the table is rehashed only when the room drops below
``max(1024, capacity / 64)``: to ``ceil(GROWTH * (size + extra) / max_load)`` slots rounded down
to whole 5-slot buckets (``GROWTH`` = 1.5; bucket counts need not be powers of two, the kernels
reduce hashes by multiply-shift),
``extra`` being the distinct ids of the rest of the batch not yet in the map (a find and a
dedupe of the rest, once per batch that needs a growth: O(batch), small next to the rehash). A rehash at the same capacity (only
dropping tombstones) happens only when the tombstones are worth it. A caller that expects every id
of a batch to be new and distinct (a growing table, ``find_or_insert(expect_new=True)``) skips that
count: when the batch would make the map grow, the map is rehashed for all of it first and the batch
inserted into the grown copy in one call; if the insert shows the guess wrong (fewer new ids than
ids), the copy is dropped and the batch takes the counted path on the untouched state, so the
result -- rows, ``is_new``, capacity -- is the counted path's either way (a wrong guess costs one
discarded rehash, counted in ``num_discarded_rehashes``). On the CPU such a batch is inserted by
``id_map_insert_new`` (with or without a growth): no compare-and-swap and no second pass writing
rows into slots, and a stored or repeated id makes it undo its claims (``num_undone_inserts``),
the batch then taking ``id_map_find_or_insert``. So the capacity follows the
number of *distinct* ids, not the batch length or its repeats. Chunking never changes the
result: rows are handed out in first-occurrence order either way.

Memory: the table is 64-byte buckets of 5 slots (5 int64 keys + 5 int32 rows + 4 bytes,
csrc/embedding/id_map.h), 12.8 bytes per slot. Once the batch that triggered a growth is in, the
load is ``max_load / GROWTH`` (0.8 / 1.5 = 0.53) and it rises to ``max_load`` before the next
growth, so a map that only grows costs 24 down to 16 bytes per id (``12.8 / load``), plus the free
stack (8 bytes per freed row). A hit is nearly always in its home bucket: one cache line, five
compares. States saved in the two earlier layouts (int64 ``[capacity, 2]``, 16 bytes per slot,
and int32 ``[capacity, 3]``, 12 bytes per slot) are converted by :meth:`IdMap.load_state_dict`.

Thread safety: every method holds the map's lock (a ``threading.RLock``; a table passes its own so
that one lock guards its map and its rows, see ``backend/table_impl.py``). The kernels mutate the
state tensors in place and a rehash replaces them, so two unsynchronised inserts lose ids, give two
ids one row, or leave slots in a transient state (``id_map_rehash: inconsistent state``); finds
that overlap an insert could read such a transient slot. An uncontended acquire costs well under
a microsecond, small next to the kernel call (docs/reliability.md, "Thread safety").
"""
from __future__ import annotations

import math
import threading
from typing import Dict, Optional, Tuple

import torch

from recis_compat.backend.locking import OwnLock, locked
from recis_compat.ops import id_map as _ops

_MIN_CAPACITY = 16
_MIN_CHUNK = 1024
_GUESS_PROBE = 256        # ids of an expect_new batch checked (known? repeated?) before its growth
# id_map_insert_new walks the whole batch in every thread (a hash per id and thread) to insert
# 1/threads of it: measured 2x faster than find_or_insert on 2 threads; estimated to lose from
# about 6 threads on (not measured: this machine has 2 cores), so used up to 4
_INSERT_NEW_MAX_THREADS = 4
GROWTH = 1.5
DEFAULT_MAX_LOAD = 0.8

LANES = 5                 # slots per 64-byte bucket (csrc/embedding/id_map.h)
BUCKET_WORDS = 8          # int64 words per bucket: 5 keys, then 5 int32 states and a spare word
_STATE_WORDS = slice(2 * LANES, 3 * LANES)   # the states among a bucket's 16 int32 words
_EMPTY, _TOMBSTONE, _MAX_ROWS = -1, -2, 2 ** 31 - 1


def empty_table(capacity: int, device=None) -> torch.Tensor:
    """An empty table of at least ``capacity`` slots: int64 ``[ceil(capacity / 5), 8]``, every
    word ``-1`` (so every int32 state is empty)."""
    capacity = int(capacity)
    if capacity < 2:
        raise ValueError(f"IdMap: capacity must be >= 2, got {capacity}")
    return torch.full((-(-capacity // LANES), BUCKET_WORDS), _EMPTY, dtype=torch.int64, device=device)


def _empty_state(capacity: int, device) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return (empty_table(capacity, device), torch.zeros(4, dtype=torch.int64, device=device),
            torch.zeros(0, dtype=torch.int64, device=device))


def table_layout(table: torch.Tensor) -> str:
    """``"bucketed"`` (int64 ``[num_buckets, 8]``, the current layout), ``"int32x3"`` (int32
    ``[capacity, 3]`` = ``(key_lo, key_hi, state)``), ``"int64x2"`` (int64 ``[capacity, 2]`` =
    ``(key, state)``, power-of-two capacity) or ``"unknown"``."""
    if table.dim() == 2 and table.dtype == torch.int64 and table.shape[1] == BUCKET_WORDS:
        return "bucketed"
    if table.dim() == 2 and table.dtype == torch.int32 and table.shape[1] == 3:
        return "int32x3"
    if table.dim() == 2 and table.dtype == torch.int64 and table.shape[1] == 2:
        return "int64x2"
    return "unknown"


def slot_keys_and_states(table: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(keys int64 [capacity], states int64 [capacity])`` per slot of a table in any of the
    three layouts (``table_layout``), slot order; keys are meaningless where ``state < 0``."""
    layout = table_layout(table)
    if layout == "bucketed":
        t = table.contiguous()
        return (t[:, :LANES].reshape(-1),
                t.view(torch.int32)[:, _STATE_WORDS].reshape(-1).to(torch.int64))
    if layout == "int32x3":
        words = table.contiguous()
        keys = words[:, :2].contiguous().view(torch.int64).reshape(-1)  # little-endian words
        return keys, words[:, 2].to(torch.int64)
    if layout == "int64x2":
        return table[:, 0].contiguous(), table[:, 1].contiguous()
    raise ValueError(f"IdMap: 'table' must be int64 [num_buckets, {BUCKET_WORDS}] (or an earlier layout: "
                     f"int32 [capacity, 3], int64 [capacity, 2]), got {table.dtype} {tuple(table.shape)}")


def convert_table(table: torch.Tensor, meta: torch.Tensor, new_capacity: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(table, meta)`` in the bucketed layout holding the map of ``table`` (an earlier layout,
    see ``table_layout``) and its ``meta``, with ``new_capacity`` slots (rounded up to whole
    buckets) and no tombstones: the same ids keep the same rows. Raises ValueError when a row
    does not fit in 31 bits or a slot holds a transient (locked/pending) state; the rehash op's
    checks (RuntimeError) catch an inconsistent meta."""
    keys, states = slot_keys_and_states(table)
    if bool((states >= _MAX_ROWS).any()):
        raise ValueError(f"IdMap: the saved table holds rows >= {_MAX_ROWS}; they do not fit the int32 "
                         "rows of the id map (shard the table)")
    if bool((states < _TOMBSTONE).any()):
        raise ValueError("IdMap: the saved table holds transient (locked/pending) slots")
    # the slots as they are, packed into buckets (positions do not matter: the rehash below scans
    # every slot and places each live key at its home bucket); tombstones become empty slots
    packed = empty_table(max(2, keys.numel()), table.device)
    cap = packed.shape[0] * LANES
    k = torch.full((cap,), _EMPTY, dtype=torch.int64, device=table.device)
    s = torch.full((cap,), _EMPTY, dtype=torch.int32, device=table.device)
    k[:keys.numel()] = keys
    s[:states.numel()] = torch.where(states >= 0, states, torch.full_like(states, _EMPTY)).to(torch.int32)
    packed[:, :LANES] = k.view(-1, LANES)
    packed.view(torch.int32)[:, _STATE_WORDS] = s.view(-1, LANES)
    meta_live = meta.clone()
    if meta_live.numel() == 4:
        meta_live[2] = 0
    return _ops.rehash(packed, meta_live, new_capacity)


class IdMap(OwnLock):
    """Exact, collision-free map from int64 ids to rows ``0, 1, 2, ...`` of growable storage.

    Args:
        device: where the state lives (CPU or CUDA); ids passed in must be on this device.
        max_load: the table is grown before ``(size + tombstones) / capacity`` would pass this
            (0 < max_load <= 0.9; default 0.8).
        lock: the lock that serialises every call (default: a new ``threading.RLock``); calls
            from several Python threads are applied one after the other, so the result equals
            a serial run of the same calls in some order.

    Rows of new ids come from the free stack (rows released by :meth:`delete`, most recently
    freed first), then from the high-water mark :meth:`num_rows_allocated`. Within one call new
    ids get rows in the order of their first occurrence in the batch, independent of threads.
    """

    # class defaults: a map pickled before the counters existed loads with them at 0
    num_discarded_rehashes = 0   # expect_new growths dropped: the batch was not all new
    num_undone_inserts = 0       # expect_new inserts (CPU) undone for the same reason

    def __init__(self, device: Optional[torch.device | str] = None, max_load: float = DEFAULT_MAX_LOAD,
                 lock: Optional[threading.RLock] = None) -> None:
        if not 0.0 < float(max_load) <= 0.9:
            raise ValueError(f"IdMap: max_load must be in (0, 0.9], got {max_load}")
        self.max_load = float(max_load)
        self._lock = lock if lock is not None else threading.RLock()
        self._table, self._meta, self._free = _empty_state(_MIN_CAPACITY, device)
        self._used_bound = 0      # upper bound of size + tombstones, exact after _sync()
        self.num_rehashes = 0
        self.num_discarded_rehashes = 0
        self.num_undone_inserts = 0

    # ------------------------------------------------------------------ properties
    @property
    def device(self) -> torch.device:
        return self._table.device

    @property
    def capacity(self) -> int:
        """Slots of the hash table (5 per 64-byte bucket: 12.8 bytes each)."""
        return int(self._table.shape[0]) * LANES

    @locked
    def _counts(self) -> Tuple[int, int, int, int]:
        size, next_row, tomb, free = self._meta.tolist()
        return size, next_row, tomb, free

    def __len__(self) -> int:
        """Number of ids in the map."""
        return self._counts()[0]

    def num_rows_allocated(self) -> int:
        """High-water mark of rows ever handed out (row storage needs this many rows)."""
        return self._counts()[1]

    def num_free_rows(self) -> int:
        return self._counts()[3]

    def num_tombstones(self) -> int:
        return self._counts()[2]

    @locked
    def memory_bytes(self) -> int:
        """Bytes held by the map's state tensors (table, meta, free stack)."""
        return sum(t.numel() * t.element_size() for t in (self._table, self._meta, self._free))

    @locked
    def __repr__(self) -> str:
        size, next_row, tomb, free = self._counts()
        return (f"IdMap(size={size}, rows_allocated={next_row}, free_rows={free}, "
                f"tombstones={tomb}, capacity={self.capacity}, device={self.device})")

    # ------------------------------------------------------------------ lookups
    def _check_ids(self, ids: torch.Tensor, what: str) -> torch.Tensor:
        if not isinstance(ids, torch.Tensor):
            raise TypeError(f"IdMap.{what}: ids must be an int64 tensor, got {type(ids).__name__}")
        if ids.device != self.device:
            raise ValueError(f"IdMap.{what}: ids are on {ids.device} but the map is on {self.device}; "
                             "move one of them (IdMap.to(device))")
        return ids.reshape(-1)

    @locked
    def find(self, ids: torch.Tensor) -> torch.Tensor:
        """Rows (int64, same shape as ``ids``) of int64 ``ids``; ``-1`` where absent. No insertion."""
        flat = self._check_ids(ids, "find")
        return _ops.find(self._table, flat).view(ids.shape)

    @locked
    def find_or_insert(self, ids: torch.Tensor, distinct: bool = False,
                       expect_new: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(rows, is_new)`` of int64 ``ids`` (same shape); absent ids are inserted.

        ``is_new`` (bool) is true at the first occurrence of each newly inserted id, so
        ``rows[is_new]`` lists every new row exactly once, in assignment order. ``distinct``: the
        caller says ``ids`` holds no repeats (a deduped lookup), so a batch that needs a growth
        counts its absent ids instead of deduping them; the result is the same (a wrong hint
        only makes that growth larger). ``expect_new``: the caller expects every id to be new
        and distinct (a growing table's batch), so a batch that needs a growth is inserted into
        a copy grown for all of it, without counting its absent ids; a wrong guess costs one
        discarded rehash and never changes the result (see the module docstring).
        """
        flat = self._check_ids(ids, "find_or_insert")
        n = flat.numel()
        limit = int(self.max_load * self.capacity)
        if self._used_bound + n > limit:
            self._sync()
        if self._used_bound + n <= int(self.max_load * self.capacity):
            if expect_new and self._insert_new_applies():
                rows, ok = _ops.insert_new(self._table, self._meta, self._free, flat)
                if ok:
                    self._used_bound += n
                    return rows.view(ids.shape), torch.ones(ids.shape, dtype=torch.bool)
                self.num_undone_inserts += 1     # the map is as it was: the general insert
            rows, new = _ops.find_or_insert(self._table, self._meta, self._free, flat)
            self._used_bound += n
            return rows.view(ids.shape), new.view(ids.shape)
        if expect_new:
            got = self._insert_grown(flat)
            if got is not None:
                return got[0].view(ids.shape), got[1].view(ids.shape)
        # near the load limit: a steady-state table's batches mostly hold known ids only, which
        # take no slot: one find answers them without the chunked insert below
        found = _ops.find(self._table, flat)
        missing = found < 0
        if not bool(missing.any()):
            return found.view(ids.shape), torch.zeros(ids.shape, dtype=torch.bool, device=self.device)
        rows_parts, new_parts = [], []
        pos = 0
        # distinct absent ids of flat[pos:] (pos = 0 now), against the size they were counted at
        need = (int(missing.sum()) if distinct
                else int(_ops.unique_first_seen(flat[missing])[0].numel()))
        size0 = self._counts()[0]
        while pos < n:
            size, _, tomb, _ = self._counts()
            remaining = n - pos
            room = int(self.max_load * self.capacity) - size - tomb
            need_left = need - (size - size0)
            if 0 <= need_left <= room and remaining < self.capacity - size - tomb:
                # every new id still to come fits below the load limit: the rest in one call
                # (the kernel only asks that the call's length stays below the capacity)
                take = remaining
            elif room < min(remaining, max(_MIN_CHUNK, self.capacity // 64)):
                if need_left > 0 or room < 1:
                    # nearly full: grow once for every new id still to come, so the load after
                    # the batch is max_load / GROWTH whatever its repeats
                    self._grow(size, tomb, max(need_left, 1))
                    continue
                # only known ids remain: they take no slot, the kernel only needs the batch
                # to stay below the capacity
                room = self.capacity - size - tomb - 1
                take = min(remaining, room)
            else:
                take = min(remaining, room)
            r, nw = _ops.find_or_insert(self._table, self._meta, self._free, flat[pos:pos + take])
            rows_parts.append(r)
            new_parts.append(nw)
            pos += take
        self._sync()
        return torch.cat(rows_parts).view(ids.shape), torch.cat(new_parts).view(ids.shape)

    def _insert_new_applies(self) -> bool:
        """Whether an expect_new batch goes to ``id_map_insert_new`` (CPU, at most
        ``_INSERT_NEW_MAX_THREADS`` threads) rather than ``id_map_find_or_insert``."""
        return self.device.type == "cpu" and torch.get_num_threads() <= _INSERT_NEW_MAX_THREADS

    def _insert_grown(self, flat: torch.Tensor) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
        """``find_or_insert(expect_new=True)`` of ``flat`` (int64 ``[N]``) that does not fit below
        the load limit: when the counted path would grow the map for the whole batch (every id
        new: ``N`` new ids do not fit the room, and the capacity for ``size + N`` exceeds the
        current one), rehash to that capacity and insert the batch into the grown copy in one
        call; adopt the copy when all ``N`` ids were new (then the counted path ends with the
        same ids, rows and capacity), else drop it. Returns ``(rows, is_new)`` [N] each, or None
        when the batch must take the counted path (the state untouched)."""
        n = flat.numel()
        size, _, tomb, _ = self._counts()
        room = int(self.max_load * self.capacity) - size - tomb
        new_cap = self._capacity_for(size + n)
        if n <= room or new_cap <= self.capacity:
            return None
        # a known or repeated id among the first few ends the guess before the rehash
        head = flat[:_GUESS_PROBE]
        if (bool((_ops.find(self._table, head) >= 0).any())
                or _ops.unique_first_seen(head)[0].numel() != head.numel()):
            return None
        table, meta = _ops.rehash(self._table, self._meta, new_cap)
        if self._insert_new_applies():
            rows, ok = _ops.insert_new(table, meta, self._free, flat)
            new = torch.ones(n, dtype=torch.bool) if ok else None
        else:
            rows, new = _ops.find_or_insert(table, meta, self._free, flat)
            ok = int(meta[0]) - size == n
        if not ok:
            self.num_discarded_rehashes += 1
            return None
        self._table, self._meta = table, meta
        self.num_rehashes += 1
        self._sync()
        return rows, new

    @locked
    def insert_state(self) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
        """``(table, meta, free_rows, limit)`` for ``ops.multi_table.find_or_insert_many``, which
        inserts into several maps in one call deciding, as :meth:`find_or_insert` does, whether
        a batch goes in without a growth (``limit`` = ``int(max_load * capacity)``, the most
        ``size + tombstones`` may reach). The caller holds the map's lock from here until
        :meth:`note_used`, and calls :meth:`find_or_insert` for a batch the op left to it."""
        return self._table, self._meta, self._free, int(self.max_load * self.capacity)

    @locked
    def grow_for_batch(self, num_ids: int, num_absent: int) -> bool:
        """For a batch of ``num_ids`` distinct ids, ``num_absent`` of them not in the map, that
        ``find_or_insert_many`` left alone (it does not fit below the load limit): grow the map as
        :meth:`find_or_insert` (``distinct=True``) would before inserting it, and return True
        when the batch then goes to the kernel in one call; False when :meth:`find_or_insert`
        would insert it in chunks (the caller calls it; the map is as :meth:`find_or_insert`'s
        first steps leave it: unchanged, or grown as it grows before its first chunk)."""
        n, need = int(num_ids), int(num_absent)
        for _ in range(2):
            size, _, tomb, _ = self._counts()
            room = int(self.max_load * self.capacity) - size - tomb
            if 0 <= need <= room and n < self.capacity - size - tomb:
                return True
            if room >= min(n, max(_MIN_CHUNK, self.capacity // 64)):
                return False            # find_or_insert inserts the batch in chunks
            self._grow(size, tomb, max(need, 1))
        return False

    @locked
    def note_used(self, used: int) -> None:
        """``size + tombstones`` after an insert made with :meth:`insert_state`'s tensors (the
        bound that decides when the counts are read again, here exact)."""
        self._used_bound = int(used)

    @locked
    def delete(self, ids: torch.Tensor) -> torch.Tensor:
        """Remove ``ids`` (absent ones and repeats are ignored); returns the freed rows (int64)
        in first-occurrence order. They are reused by later inserts, last freed first."""
        flat = self._check_ids(ids, "delete")
        _, next_row, _, free = self._counts()
        need = min(next_row, free + flat.numel())
        if self._free.numel() < need:
            grown = torch.zeros(max(need, 2 * self._free.numel()), dtype=torch.int64, device=self.device)
            grown[:free] = self._free[:free]
            self._free = grown
        return _ops.delete(self._table, self._meta, self._free, flat)

    @locked
    def ids_and_rows(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(ids, rows)`` of every stored id, int64 ``[len(self)]`` each, ordered by row."""
        return _ops.export(self._table, self._meta)

    @locked
    def clear(self) -> None:
        """Remove every id and forget every row (the next insert gets row 0)."""
        self._table, self._meta, self._free = _empty_state(_MIN_CAPACITY, self.device)
        self._used_bound = 0

    @locked
    def reserve(self, num_ids: int) -> None:
        """Grow now so that ``num_ids`` ids in total fit without a rehash."""
        size, _, tomb, _ = self._counts()
        if size + tomb + max(0, int(num_ids) - size) > int(self.max_load * self.capacity):
            self._grow(size, tomb, max(0, int(num_ids) - size))

    # ------------------------------------------------------------------ growth
    def _sync(self) -> None:
        size, _, tomb, _ = self._counts()
        self._used_bound = size + tomb

    def _capacity_for(self, num_ids: int) -> int:
        """Slots that hold ``num_ids`` ids at load ``max_load / GROWTH``, in whole buckets rounded
        down (so the map never passes ``64 / 5 * GROWTH / max_load`` = 24 bytes per id right
        after a growth; the load is then at most 4 slots above ``max_load / GROWTH``)."""
        slots = math.ceil(GROWTH * num_ids / self.max_load) // LANES * LANES
        return max(_MIN_CAPACITY, slots, num_ids + 2)

    def _grow(self, size: int, tomb: int, extra: int) -> None:
        """Rehash so that ``size + extra`` fits under the load limit (tombstones dropped)."""
        cap = self.capacity
        new_cap = self._capacity_for(size + extra)
        if new_cap <= cap:
            # the room is held by tombstones: keep the capacity (dropping them), unless they are
            # too few to make lasting room
            new_cap = cap if tomb >= self.max_load * cap / 4 else math.ceil(GROWTH * cap)
        self._table, self._meta = _ops.rehash(self._table, self._meta, new_cap)
        self.num_rehashes += 1
        self._sync()

    # ------------------------------------------------------------------ devices and state
    @locked
    def to(self, device) -> "IdMap":
        """Move the state to ``device`` (in place; returns self)."""
        device = torch.device(device)
        self._table, self._meta, self._free = (t.to(device) for t in (self._table, self._meta, self._free))
        return self

    def cpu(self) -> "IdMap":
        return self.to("cpu")

    def cuda(self, device=None) -> "IdMap":
        return self.to(torch.device("cuda") if device is None else torch.device(device))

    @locked
    def state_dict(self) -> Dict[str, torch.Tensor]:
        """The state as tensors: ``table`` int64 [capacity / 5, 8] (buckets), ``meta`` int64 [4],
        ``free_rows`` int64 [free_count] (copies; any capacity can be loaded back)."""
        free = self.num_free_rows()
        return {"table": self._table.clone(), "meta": self._meta.clone(),
                "free_rows": self._free[:free].clone()}

    @locked
    def load_state_dict(self, state: Dict[str, torch.Tensor]) -> None:
        """Replace the state with one from :meth:`state_dict` (moved to this map's device);
        raises ValueError when the tensors are not a consistent id map. A ``table`` in an earlier
        layout (int64 ``[capacity, 2]`` = ``(key, state)`` or int32 ``[capacity, 3]`` =
        ``(key_lo, key_hi, state)``) is converted: the same ids keep the same rows, tombstones are
        dropped, the capacity follows this map's growth policy."""
        missing = {"table", "meta", "free_rows"} - set(state)
        if missing:
            raise ValueError(f"IdMap.load_state_dict: missing keys {sorted(missing)}")
        table = state["table"].to(self.device).contiguous().clone()
        meta = state["meta"].to(self.device, torch.int64).contiguous().clone()
        free = state["free_rows"].to(self.device, torch.int64).contiguous().clone()
        layout = table_layout(table)
        if layout == "unknown":
            raise ValueError(f"IdMap.load_state_dict: 'table' must be int64 [num_buckets, {BUCKET_WORDS}] "
                             f"(or an earlier layout: int32 [capacity, 3], int64 [capacity, 2]), got "
                             f"{table.dtype} {tuple(table.shape)}")
        try:
            if layout != "bucketed":
                size = int(meta[0]) if meta.numel() == 4 else 0
                table, meta = convert_table(table, meta, self._capacity_for(size))
            _ops.export(table, meta)    # validates shapes, meta values and the table contents
        except RuntimeError as e:
            raise ValueError(f"IdMap.load_state_dict: not a consistent id map: {e}") from e
        except ValueError as e:
            raise ValueError(f"IdMap.load_state_dict: {e}") from e
        if free.dim() != 1 or free.numel() < int(meta[3]):
            raise ValueError("IdMap.load_state_dict: free_rows is shorter than meta's free_count")
        self._table, self._meta, self._free = table, meta, free
        self._sync()

    @classmethod
    def from_state_dict(cls, state: Dict[str, torch.Tensor], device=None,
                        max_load: float = DEFAULT_MAX_LOAD) -> "IdMap":
        m = cls(device=device if device is not None else state["table"].device, max_load=max_load)
        m.load_state_dict(state)
        return m
