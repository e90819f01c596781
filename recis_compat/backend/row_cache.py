"""A RAM cache of single rows in front of a ``cached_ssd`` table's files (docs/stores.md).

A file-backed table keeps every row of every slot in its file of row records (backend/row_store.py,
:class:`~recis_compat.backend.row_store.FileSlots`: a record holds a row's values of every slot
side by side); the id map's value is the row's place in the file (the *file row*) and never
changes while the id is stored. The rows in use live in
RAM *slabs*, one per slot, ``[cache_rows, *tail]``, at *cache slots*:

* ``row_slot`` (int32 ``[table rows]``): the cache slot of each file row, -1 when not cached
  (4 bytes per table row, counted in the budget: the slabs get what the index leaves);
* per cache slot: ``slot_row`` (int64, -1 = free), ``last`` (int32: 0 = not used since the
  clock hand last passed it, else the number of the access that last used it; rows of the
  running access, ``last == clock``, are never evicted by it) and ``dirty`` (bool: changed
  since it was read from the file). The slabs, these 13 bytes per slot and the index are what
  the budget counts.

Memory (backend/anon_memory.py): the slabs, the per-slot arrays and the index are views of
reserves whose untouched pages take no memory, so they grow without copies; a cache that
shrinks gives the pages of its released slots back (``MADV_DONTNEED``) instead of copying the
slots it keeps, and the index grows with the table by filling only its new rows.

An access (:meth:`RowCache.slots_of`) translates file rows to cache slots and marks their
recency (and, for the optimizer's rows, their change) in one pass over its rows
(``row_cache_translate_``, csrc/optim/rows_floor.cpp): the bookkeeping of an access is
proportional to its rows, never to the cache's slots. A lookup's gather right after its find
reuses the find's translation (same rows tensor, unchanged, no access in between). Missing rows
are read from the file in one batch (sorted, whole records: one ``pread`` per row or run of
rows for all slots, ``rows_pread_``, csrc/optim/rows_floor.cpp; new rows whose every slot has a
known initial value are filled, not read) and moved into free slots (``rows_move_``): slots never used
yet, then more slab rows up to the table's share of the budget
(:class:`~recis_compat.backend.row_store.CacheBudget`: all its rows when every table of the
budget fits, else a water level), then victims chosen by a clock sweep
(``row_cache_sweep_``: second chance, a slot used since the hand last passed it is skipped once;
the sweep passes about as many slots as it takes victims while most rows are cold). Rows
brought in for new ids start *on probation*: the optimizer's update of the step that created
them (the next write access) marks them not used, so the hand takes them at its first pass
unless a later lookup used them again. Ids seen once (the long tail of a Zipf stream, which at
the bench's 57 % budget are 70 % of the misses) therefore leave after one pass of the hand
instead of two, and no longer push out rows looked up again every few steps (measured with
``bench store``'s Zipf case: 12.6k -> 11.6k misses a step, the rows read back 3.9k -> 2.9k;
docs/stores.md). At the access after that update the rows still cached go to the files in
order (they were handed out in increasing order, so they lie in one or a few runs: one
``pwrite`` per run) and are marked clean, so the ones the hand then takes leave with no
write-back (``_write_new``: at the bench's 57 % budget the write-backs at eviction went from
11.8k to 2.1k rows a step and the major page faults from 530 a step to none). Changed
victims are written back (sorted by file row, whole records assembled from the slabs and copied
once per row into the file's mapping; clean victims are not written) before their slots are
reused. The bookkeeping of misses and evictions (a few thousand rows an access) runs on numpy
views of the same tensors: a torch op costs more in dispatch than such a batch costs in work.
A cache above its share (another table grew, or its last access grew it past the share)
shrinks to it at its next access: its rows past the share are evicted and their slab memory
released (``madvise``) while the slabs stay in place, so growing past the share again copies
nothing. When the rows of one
access do not fit even after every other row is evicted, the slab grows past the share by the
shortfall (a warning names the table and the budget needed; the excess is kept in
``CacheBudget.over_budget_bytes``): one access always gets all its rows.

How rows move (measured on this project's ext4 test machine, 40k scattered 64-byte rows of a
77 MB file in the page cache): reads use ``pread`` (0.35-0.85 us per row) although copying
through a shared mapping measured 0.02 us per row, because a read fault on a file mapping maps
its neighbours too (fault-around, whole large folios): measured 7.9 pages mapped per row read
even with ``MADV_RANDOM``, which is what the RAM budget exists to prevent, while ``pread``
copies exactly the row and maps nothing. Writes (write-back, writes to uncached rows) go through
the mapping (``FileSlots.write_slots``: a write fault maps exactly one page, dropped again
every ``DROP_PAGES`` pages), where a row on a page still mapped costs about 0.1 us; long runs
of rows (new rows at growth, checkpoint restores) and write-backs of whole records on more
pages than the mapping keeps (scattered evictions, uniform ids) are one ``pwrite`` per run
(0.7-1.0 us a 192-byte record measured, against 1.0-1.3 us through the mapping when every
page faults in).

Who sees which rows (backend/table_impl.py): every table method takes and returns file rows
(lookups, ``read_slot``, ``update_slot``, ``delete``, ``ids_map``, change tracking,
checkpoints); the slot tensors (``get_slot``, ``embedding``) are the slabs, and the one method
that hands out indices into them is ``grad_rows`` (the rows the optimizer kernels update), whose
rows are cached by that call and stay valid until the next access to the table (the optimizers
call it and run their kernel under the table's lock).
"""
from __future__ import annotations

import math
import warnings
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

from recis_compat.backend.anon_memory import release_pages, reserve_rows, zeroed_cpu
from recis_compat.backend.row_store import FileSlots, strict_overcommit
from recis_compat.ops.optim import row_cache_mark_, row_cache_sweep_, row_cache_translate_, rows_move_

__all__ = ["RowCache", "META_BYTES", "INDEX_BYTES"]

META_BYTES = 8 + 4 + 1          # slot_row, last, dirty per cache slot
INDEX_BYTES = 4                 # row_slot per table row
_CLOCK_LIMIT = 1 << 30          # access numbers restart below this (``last`` is int32)
_GROWTH = 1.5                   # slab and index growth factor within the budget


def _increasing(rows: torch.Tensor) -> bool:
    """Whether ``rows`` is strictly increasing (sorted and distinct)."""
    return rows.numel() < 2 or bool((rows[1:] > rows[:-1]).all())


# numpy's sort of the int64 batches of an access (thousands to tens of thousands of rows) is
# ~10x faster than torch.sort on this project's 2-core machine (12k rows: 0.06 ms against
# 0.59 ms, torch 2.13); np.unique is not used: numpy 2.4 answers it through a hash table
# (1.1 ms for the same rows). Sorting is exact, so the results are the same as torch's.
def _sorted_unique(rows: np.ndarray) -> torch.Tensor:
    """The distinct values of ``rows`` (int64 ``[N]``) in increasing order."""
    a = np.sort(rows)
    if a.size < 2:
        return torch.from_numpy(a)
    keep = np.empty(a.size, dtype=bool)
    keep[0] = True
    np.not_equal(a[1:], a[:-1], out=keep[1:])
    return torch.from_numpy(a[keep])


def _sorted_by_row(rows: np.ndarray, slots: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """``(rows, slots)`` (int64 ``[N]`` each) reordered by increasing ``rows``."""
    if rows.size > 1 and not bool((rows[1:] > rows[:-1]).all()):
        order = np.argsort(rows)
        rows, slots = rows[order], slots[order]
    return rows, slots


class RowCache:
    """The row cache of one file-backed table (see the module docstring).

    Args:
        files: the table's :class:`FileSlots` (its slots, files and shared budget).
        table: the table's name (warnings, errors).
        fresh_values: ``f(slot)``: the value every element of a fresh row of ``slot`` holds
            (the slot's initial value), or None when fresh rows must be read from the file
            (sampled initial embeddings).

    Attributes:
        slabs: ``{slot: Tensor[cache_rows, *tail]}``, the cached rows of every slot (the
            table's slot tensors; a dict object that stays the same, its tensors change when the
            cache grows).
        clock: the number of the running (last) access, ``[1, 2^30)``: it restarts at 2 when it
            reaches ``2^30`` (every slot's ``last`` then becomes 1 if it was used since the hand
            last passed it, else 0: the sweep's order and second chances are kept).
    """

    def __init__(self, files: FileSlots, table: str, fresh_values: Callable[[str], Optional[float]]):
        self.files = files
        self.table = table
        self.fresh_values = fresh_values
        # rows >= fresh_from were never cached nor written since the table's growth gave them
        # their initial values (rows are handed out in increasing order)
        self.fresh_from = 0
        self.budget = files.budget
        self.slabs: Dict[str, torch.Tensor] = {}
        self.row_slot = torch.full((0,), -1, dtype=torch.int32)
        self._index_reserve = self.row_slot   # row_slot is its first ``rows`` entries
        self.rows = 0                      # table rows the index covers
        self.clock = 0
        # the last access: (rows, rows' version, slots, slots' version, whether they were marked used);
        # None once rows moved in or out or the sweep ran
        self._memo = None
        self._warned = False
        # (cache slots, file rows) brought in for new ids since the last write access: on
        # probation until then (see the module docstring)
        self._probation: Optional[Tuple[torch.Tensor, torch.Tensor]] = None
        # (cache slots, file rows) whose probation the last write access ended (numpy int64): written
        # to the files at the next access (_write_new)
        self._new_written: Optional[Tuple[np.ndarray, np.ndarray]] = None
        self._layout()

    # ---------------------------------------------------------------- layout
    def _layout(self) -> None:
        """Empty the cache and size it for the current slots (every row is in the files)."""
        self._reserve: Dict[str, torch.Tensor] = {}      # slab reserves (slabs are their first ``alloc`` rows)
        self._meta_reserve: Dict[str, torch.Tensor] = {}  # slot_row / last / dirty reserves, as many rows
        for name, f in self.files.files.items():
            self.slabs[name] = torch.empty([0] + f.tail, dtype=f.dtype)
        for name in [n for n in self.slabs if n not in self.files.files]:
            del self.slabs[name]
        self.slot_bytes = sum(f.row_bytes for f in self.files.files.values()) + META_BYTES
        self.alloc = 0                     # slots in the slabs
        self.used = 0                      # slots [0, used) were handed out at least once
        self.hand = 0
        self.slot_row = torch.zeros(0, dtype=torch.int64)
        self.last = torch.zeros(0, dtype=torch.int32)
        self.dirty = torch.zeros(0, dtype=torch.bool)
        self.row_slot.fill_(-1)
        self._memo = None
        self._probation = None
        self._new_written = None
        self._version = -1                 # the budget version the share was computed at
        self._share = 0
        self.budget.set_held(self, 0)
        self.budget.set_demand(self, self._demand_bytes())

    def _index_bytes(self) -> int:
        return self.row_slot.numel() * INDEX_BYTES

    def _demand_bytes(self) -> int:
        """Bytes to cache every row of the table: its slots' rows and bookkeeping, and the index."""
        return self.rows * self.slot_bytes + self._index_bytes()

    def _held_bytes(self) -> int:
        return self.alloc * self.slot_bytes + self._index_bytes() if self.alloc else 0

    def fits(self, n: int) -> bool:
        """Whether ``n`` rows fit in this table's share of the budget."""
        return n <= self._share_rows()

    def _share_rows(self) -> int:
        """Cache slots this table may hold now (its share of the budget, CacheBudget, less its
        row index); a cache above it gives the excess back (called at every access)."""
        if self._version != self.budget.version:
            self._version = self.budget.version
            self._share = max(1, (self.budget.share_bytes(self) - self._index_bytes()) // self.slot_bytes)
        if self.alloc > self._share:       # the shares moved, or the last access grew past it
            self._shrink(self._share)
        return self._share

    def _shrink(self, to: int) -> None:
        """Give back the slots ``>= to``: their rows are evicted (changed ones written back) and
        the pages of those slots released (backend/anon_memory.py ``release_pages``): the
        memory goes without copying the slots kept, and the reserve stays for a later growth."""
        if self._new_written is not None:  # as one run first, not among the scattered write-backs
            self._write_new()
        if self.used > to:
            gone = torch.arange(to, self.used, dtype=torch.int64)
            self._write_back(gone)
            self.row_slot.index_fill_(0, self.slot_row.index_select(0, gone), -1)
            self._memo = None
            self.budget.count(evictions=gone.numel(), trims=1)
            self.used = to
        for reserve in list(self._reserve.values()) + list(self._meta_reserve.values()):
            release_pages(reserve.narrow(0, to, self.alloc - to))
        self.alloc = to
        self._view_slots()
        self.hand = self.hand if self.hand < max(1, self.used) else 0
        self.budget.set_held(self, self._held_bytes())

    def _view_slots(self) -> None:
        """Point the slabs and per-slot arrays at the first ``alloc`` rows of their reserves."""
        for name in self.files.files:
            self.slabs[name] = self._reserve[name].narrow(0, 0, self.alloc)
        self.slot_row = self._meta_reserve["slot_row"].narrow(0, 0, self.alloc)
        self.last = self._meta_reserve["last"].narrow(0, 0, self.alloc)
        self.dirty = self._meta_reserve["dirty"].narrow(0, 0, self.alloc)

    def fit_rows(self, rows: int) -> None:
        """Make the index cover table rows ``[0, rows)`` (new rows not cached)."""
        rows = int(rows)
        self.rows = max(self.rows, rows)
        n = self.row_slot.numel()
        if rows > n:
            if rows > self._index_reserve.numel():
                # a reserve of address space (no copy until it is full; its untouched pages take
                # no memory); where reserved memory counts as used, only 1.5x
                cap = max(rows, int(n * _GROWTH)) if strict_overcommit() else reserve_rows(rows, INDEX_BYTES)
                grown = zeroed_cpu([cap], torch.int32)
                grown.narrow(0, 0, n).copy_(self.row_slot)
                self._index_reserve = grown
            self._index_reserve.narrow(0, n, rows - n).fill_(-1)
            self.row_slot = self._index_reserve.narrow(0, 0, rows)
            self._memo = None
        self.budget.set_demand(self, self._demand_bytes())
        if self.alloc and rows > n:        # the index took more of the share: the slabs give it back now
            self._share_rows()
            self.budget.set_held(self, self._held_bytes())

    def memory_bytes(self) -> int:
        """Bytes of RAM the cache holds: slabs, per-slot bookkeeping and the row index."""
        return self.alloc * self.slot_bytes + self._index_bytes()

    def _grow(self, new_alloc: int) -> None:
        """Widen the slabs and per-slot arrays to ``new_alloc`` slots (within the reserve: no
        copy; the new slots are free and unused)."""
        old = self.alloc
        if new_alloc <= old:
            return
        reserved = self._meta_reserve["slot_row"].shape[0] if self._meta_reserve else 0
        if new_alloc > reserved:
            # the reserve covers the whole budget: pages never written are not resident, so the
            # slabs grow with no copy (where reserved memory counts as used, strict overcommit,
            # it doubles instead); past the budget it is reallocated to the rows needed
            limit_rows = max(1, self.budget.limit_bytes // self.slot_bytes)
            rows = min(limit_rows, 2 * max(reserved, 1)) if strict_overcommit() else limit_rows
            rows = max(new_alloc, rows)
            for name, f in self.files.files.items():
                r = zeroed_cpu([rows] + f.tail, f.dtype)
                if old:
                    r.narrow(0, 0, old).copy_(self.slabs[name])
                self._reserve[name] = r
            for name, now in (("slot_row", self.slot_row), ("last", self.last), ("dirty", self.dirty)):
                r = zeroed_cpu([rows], now.dtype)
                if old:
                    r.narrow(0, 0, old).copy_(now)
                self._meta_reserve[name] = r
        self.alloc = new_alloc
        self._view_slots()
        self.slot_row.narrow(0, old, new_alloc - old).fill_(-1)
        self.last.narrow(0, old, new_alloc - old).zero_()
        self.dirty.narrow(0, old, new_alloc - old).zero_()
        self.budget.set_held(self, self._held_bytes())

    # ---------------------------------------------------------------- access
    def slots_of(self, rows: torch.Tensor, write: bool = False, touch: bool = True) -> torch.Tensor:
        """Cache slots (int64 ``[N]``) of the file rows ``rows`` (int64 ``[N]``, ``0 <= row <
        rows covered``; any order, duplicates fine), reading the missing ones in. ``write``: the
        caller changes these rows (they are written back when evicted). ``touch=False``: the
        rows were just used by another access (a lookup's gather after its find), so their
        recency is not marked again; when ``rows`` is the tensor that access translated (or a
        view of it), unchanged since, and nothing moved in or out of the cache in between, its
        slots are returned without a second translation."""
        self.clock += 1
        if self.clock >= _CLOCK_LIMIT:
            self.last.clamp_(max=1)        # used since the hand passed: 1, else 0 (order kept)
            self.clock = 2
        if self._new_written is not None:
            self._write_new()
        self._share_rows()
        if rows.numel() == 0:
            return rows.new_zeros(0)
        m = self._memo
        if (m is not None and rows.data_ptr() == m[0].data_ptr() and rows.shape == m[0].shape
                and rows.dtype == m[0].dtype and rows.stride() == m[0].stride() and rows._version == m[1] and m[2]._version == m[3]):
            s = m[2]
            mark = touch and not m[4]      # marked by the last access: still "used since the hand passed"
            if mark or write:              # one pass over the slots (an index_fill_ per mark measured 3-6x slower)
                row_cache_mark_(s, self.last, self.dirty, self.clock, mark, write)
            if mark:
                self._memo = m[:4] + (True,)
            if write and self._probation is not None:
                self._end_probation()
            return s
        s = row_cache_translate_(self.row_slot, rows, self.last, self.dirty, self.clock, touch, write)
        miss = s < 0                       # torch: over all the access's rows, on every thread
        missed = bool(miss.any())
        if missed:
            # the bookkeeping of the misses in numpy (views of the same memory): a few thousand
            # rows, where each torch op would cost more in dispatch than in work
            sn = s.numpy()
            mp = np.flatnonzero(miss.numpy())
            mr = rows.numpy()[mp]
            if not touch:                  # the access's cached rows stay while its misses come in
                row_cache_mark_(s, self.last, self.dirty, self.clock, True, False)
            self._bring_in(_sorted_unique(mr))
            ms = self.row_slot.numpy()[mr].astype(np.int64)
            sn[mp] = ms
            if write:
                row_cache_mark_(torch.from_numpy(ms), self.last, self.dirty, self.clock, False, True)
        self._memo = (rows, rows._version, s, s._version, touch or missed)
        if write and self._probation is not None:
            self._end_probation()
        return s

    def _end_probation(self) -> None:
        """Mark the rows brought in for new ids since the last write access not used (``last``
        0), those still cached at their slots: a later lookup that uses one marks it again,
        else the sweep evicts it at its first pass (see the module docstring)."""
        slots, rows = self._still_cached(*(t.numpy() for t in self._probation))
        self._probation = None
        self.last.numpy()[slots] = 0
        self._memo = None                  # the last access's marks changed
        self._new_written = (slots, rows)

    def _still_cached(self, slots: np.ndarray, rows: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """The pairs of cache slots and file rows (int64 ``[N]`` each) whose row is still cached at
        that slot (evictions and shrinking since may have moved it out)."""
        inside = slots < self.alloc
        slots, rows = slots[inside], rows[inside]
        here = self.slot_row.numpy()[slots] == rows
        return slots[here], rows[here]

    def _write_new(self) -> None:
        """Write the rows whose probation the last write access ended (new ids' rows, updated by
        that access's optimizer step since) to the files and mark them clean: they were handed
        out in increasing order when their ids arrived, so they lie in one or a few runs of the
        file and go out as one ``pwrite`` per run (``FileSlots.write_slots``), and the sweep
        later evicts the ones not used again (most of them, for a Zipf stream's tail) without a
        write-back. Written back at eviction instead, each would be a scattered write through
        the mapping onto a page never written before (measured at the bench's 57 % budget: 530
        major page faults a step, ~2.4 us each; docs/stores.md). Rows used and changed again
        since are written again when evicted."""
        slots, rows = self._still_cached(*self._new_written)
        self._new_written = None
        dirty = self.dirty.numpy()
        keep = dirty[slots]
        slots, rows = slots[keep], rows[keep]
        if not rows.size:
            return
        rows, slots = _sorted_by_row(rows, slots)
        self.files.write_slots(torch.from_numpy(rows), dict(self.slabs), src_rows=torch.from_numpy(slots))
        dirty[slots] = False
        self.budget.count(new_row_writes=rows.size)

    def _bring_in(self, rows: torch.Tensor) -> None:
        """Read the distinct, sorted, uncached file rows ``rows`` into free slots."""
        slots = self._take(rows.numel())
        # fresh rows (new ids) hold their slots' initial values: filled, not read
        n = rows.numel()
        k = int(torch.searchsorted(rows, self.fresh_from)) if int(rows[-1]) >= self.fresh_from else n
        fill = {name: self.fresh_values(name) for name in self.slabs} if k < n else {}
        # one read of the rows' records for every slot (files.read_records); fresh rows are read
        # only when a slot of theirs has no fill value (a sampled embedding): they are one run
        upto = n if any(v is None for v in fill.values()) else k
        rec = self.files.read_records(rows if upto == n else rows[:upto]) if upto else None
        at = torch.arange(upto, dtype=torch.int64)
        for name, slab in self.slabs.items():
            value = fill.get(name)
            got = upto if value is None else k
            if got:
                rows_move_(slab, slots[:got], self.files.files[name].part(rec), at[:got])
            if value is not None:
                slab.index_fill_(0, slots[k:], value)
        self.fresh_from = max(self.fresh_from, int(rows[-1]) + 1)
        sn, rn = slots.numpy(), rows.numpy()
        self.slot_row.numpy()[sn] = rn
        self.row_slot.numpy()[rn] = sn
        self._memo = None
        self.last.numpy()[sn] = self.clock
        self.dirty.numpy()[sn] = False
        self.budget.count(misses=rows.numel(), fresh=rows.numel() - k)
        if k < n:
            self._start_probation(slots[k:], rows[k:])

    def _start_probation(self, slots: torch.Tensor, rows: torch.Tensor) -> None:
        """Put the new ids' rows ``rows`` at cache slots ``slots`` on probation until the next
        write access. Without write accesses (lookups with no optimizer step) the list keeps
        at most the cache's slots, the newest ones."""
        p = self._probation
        if p is not None and p[0].numel() + slots.numel() <= self.alloc:
            slots, rows = torch.cat([p[0], slots]), torch.cat([p[1], rows])
        self._probation = (slots, rows)

    def _take(self, k: int) -> torch.Tensor:
        """``k`` free slots: never used ones, new slab rows within the budget, evicted ones,
        and new slab rows past the budget, in that order."""
        parts: List[torch.Tensor] = []
        need = k
        if self.used + need > self.alloc:
            want = max(self.used + need, int(self.alloc * _GROWTH))
            self._grow(min(want, max(self.rows, self.used + need), max(self._share, self.alloc)))
        if need and self.used < self.alloc:
            n = min(need, self.alloc - self.used)
            parts.append(torch.arange(self.used, self.used + n, dtype=torch.int64))
            self.last[self.used:self.used + n] = self.clock      # taken: not a victim of the sweep below
            self.used += n
            need -= n
        if need:
            parts.append(self._evict(need))
            need -= parts[-1].numel()
        if need:
            self._grow(self.alloc + need)
            parts.append(torch.arange(self.used, self.used + need, dtype=torch.int64))
            self.used += need
            if not self._warned:
                self._warned = True
                warnings.warn(
                    f"table {self.table!r}: one access uses more distinct rows than its cached_ssd cache can hold "
                    f"within cache_memory_budget_mb={self.budget.limit_bytes >> 20}; the cache grew past the budget "
                    f"to {self.alloc} rows ({self.alloc * self.slot_bytes / 2 ** 20:.1f} MiB for this table, "
                    f"{self.budget.used_bytes() / 2 ** 20:.1f} MiB for every table of the budget). Give a budget of "
                    f"at least {math.ceil(self.budget.used_bytes() / 2 ** 20)} MiB.", RuntimeWarning, stacklevel=4)
        return torch.cat(parts) if len(parts) > 1 else parts[0]

    def _evict(self, k: int) -> torch.Tensor:
        """Up to ``k`` victim slots among the used ones, by a clock sweep of at most two turns
        (``row_cache_sweep_``: the first clears the recency of the slots it passes); slots of
        the running access are kept. Changed victims are written back; the victims come back
        unmapped and pinned (``last == clock``)."""
        n = self.used
        if not n or not k:
            return torch.zeros(0, dtype=torch.int64)
        victims = row_cache_sweep_(self.last, self.hand, n, k, self.clock)
        self._memo = None                  # the sweep cleared marks
        if victims.numel() == k:       # else two whole turns: the hand is back where it started
            self.hand = (int(victims[-1]) + 1) % n
        if not victims.numel():
            return victims
        self._write_back(victims)
        vn, slot_row = victims.numpy(), self.slot_row.numpy()
        self.row_slot.numpy()[slot_row[vn]] = -1
        slot_row[vn] = -1
        self.budget.count(evictions=victims.numel(), trims=1)
        return victims

    def _write_back(self, slots: torch.Tensor) -> None:
        """Write the changed rows among ``slots`` to the files (sorted by file row) and mark them
        clean."""
        dirty = self.dirty.numpy()
        sn = slots.numpy()
        d = sn[dirty[sn]]
        if not d.size:
            return
        rows, d = _sorted_by_row(self.slot_row.numpy()[d], d)
        # whole records, every slot of a row moved straight from its slab (files.write_slots)
        self.files.write_slots(torch.from_numpy(rows), dict(self.slabs), src_rows=torch.from_numpy(d))
        dirty[d] = False
        self.budget.count(writebacks=d.size)

    # ---------------------------------------------------------------- reads and writes
    def read(self, name: str, rows: torch.Tensor) -> torch.Tensor:
        """``slot[rows]`` (a copy ``[N, *tail]``; rows int64 ``>= 0``): cached rows from the slab,
        the others from the file; nothing is brought into the cache."""
        slab = self.slabs[name]
        s = self.row_slot.index_select(0, rows).long() if self.alloc else torch.full_like(rows, -1)
        hit = s >= 0
        if bool(hit.all()):
            return slab.index_select(0, s)
        out = slab.new_empty([rows.numel()] + list(slab.shape[1:]))
        hp = torch.nonzero(hit).view(-1)
        if hp.numel():
            out.index_copy_(0, hp, slab.index_select(0, s.index_select(0, hp)))
        mp = torch.nonzero(~hit).view(-1)
        mr = rows.index_select(0, mp)
        if _increasing(mr):             # rows in row order (checkpoints, filters): read as they are
            out.index_copy_(0, mp, self.files.read(name, mr))
        else:
            u, inverse = torch.unique(mr, return_inverse=True)
            out.index_copy_(0, mp, self.files.read(name, u).index_select(0, inverse))
        return out

    def write(self, name: str, rows: torch.Tensor, values: torch.Tensor) -> None:
        """``slot[rows] = values`` (``[N, *tail]``; rows int64 ``>= 0``, distinct): cached rows in
        the slab (marked changed), the others straight to the file."""
        slab = self.slabs[name]
        values = values.to(slab.dtype).reshape([rows.numel()] + list(slab.shape[1:]))
        s = self.row_slot.index_select(0, rows).long() if self.alloc else torch.full_like(rows, -1)
        hit = s >= 0
        if bool(hit.all()):
            slab.index_copy_(0, s, values)
            self.dirty.index_fill_(0, s, True)
            return
        hp = torch.nonzero(hit).view(-1)
        if hp.numel():
            hs = s.index_select(0, hp)
            slab.index_copy_(0, hs, values.index_select(0, hp))
            self.dirty.index_fill_(0, hs, True)
        mp = torch.nonzero(~hit).view(-1)
        mr, mp = (torch.from_numpy(a) for a in _sorted_by_row(rows.numpy()[mp.numpy()], mp.numpy()))
        self.files.write(name, mr, values.index_select(0, mp))
        self.fresh_from = max(self.fresh_from, int(mr[-1]) + 1)

    # ---------------------------------------------------------------- whole cache
    def flush(self) -> None:
        """Write every changed cached row back to the files (the cache keeps its rows)."""
        if self.used:
            self._write_back(torch.arange(self.used, dtype=torch.int64))

    def relayout(self) -> None:
        """Write changed rows back and empty the cache (the slots changed: a slot was added)."""
        self.flush()
        self._layout()

    def reset(self) -> None:
        """Forget every cached row without writing it back (the files were emptied)."""
        self.fresh_from = 0
        self._layout()

    def release(self) -> None:
        """Free the slabs and the index (the table is closing)."""
        self.rows = 0
        self.row_slot = torch.full((0,), -1, dtype=torch.int32)
        self._index_reserve = self.row_slot
        self._layout()
