"""Growable row storage with named slots: the values side of a dynamic embedding table.

A table owns one :class:`RowStorage`: slot ``"embedding"`` ``[capacity, dim]`` plus any number
of extra slots (optimizer moments such as ``sparse_adamw_exp_avg``, the eviction filter's
``step_filter``), all indexed by the same row numbers the id map hands out.

Capacity grows without a size from the user, in whole blocks of ``block`` rows (as RecIS's block
storage): ``capacity = ceil(rows_needed / block) * block``, so a table never holds more than one
block of rows it does not use. New embedding rows take values from the table's initializer when
the capacity grows (RecIS fills a whole block at block creation); rows freed by eviction are
re-initialised by :meth:`reset_rows`.

Growth without copies (CPU): each slot is a view ``reserve[:capacity]`` of a larger *reserved*
tensor. Growing within the reserve only widens the view and initialises the new rows; pages of
the reserve that no row reached are never written, so the operating system does not back them
with memory. A CPU reserve of ``MAPPED_MIN_BYTES`` or more is a private anonymous mapping of its
own (backend/anon_memory.py ``zeroed_cpu``): its rows beyond the capacity read as zeros until written, so
new rows of a slot initialised to 0 (the embedding slot when the table writes each new id's
initial values itself, optimizer moments) are not written at growth at all; their pages are
first touched by the write that gives them their values (a profile of a table growing to 4.2M
ids spent 14 % of its time filling rows with zeros, the embedding rows then overwritten by the
table's initial values). When the reserve is full it
is replaced by one ``RESERVE_FACTOR`` (8) times larger and the rows are copied once, so the
copies add up to a seventh of the final table, against twice with x1.5 copy-growth (a profile
of a table growing to 10M ids spent 22 % of its time in that ``torch.cat``). Once a slot needs
``GROWING_BYTES`` (1 MiB) its new reserve is at least ``GROWING_RESERVE_BYTES`` (1 GiB)
of address space (rows of the widest slot), so a table growing to a few GiB per slot copies its
rows at most once more, when it is still small: the copy of a growth to 4.2M ids (230 MB, every
destination page faulted in) was 8 % of that growth's time. Small tables keep x8 reserves
(address space is plentiful, 128 TiB per process, but not unbounded). A reserve is capped
at half the machine's RAM per slot (never below what is needed), which keeps a request within
what Linux's default overcommit heuristics grant. Under strict overcommit accounting
(``vm.overcommit_memory = 2``) reserved address space counts as used memory, so there the
reserve grows by x1.5 like on other devices. On other devices (CUDA) memory is committed at
allocation, so the reserve grows by x1.5 and :meth:`memory_bytes` counts it whole.

Copies of the storage (``pickle``, ``copy.deepcopy``) hold compact slots of ``capacity`` rows,
never the reserve.

File-backed slots (``cached_ssd``, backend/row_store.py and backend/row_cache.py): with a
persistent :class:`StoreConfig` every row lives in one file of row records (every slot's values
of a row side by side; sized in reserves like the in-memory slots; growing the file copies
nothing) and the rows in use in a RAM cache of single
rows (:class:`~recis_compat.backend.row_cache.RowCache`). Row numbers (``capacity``, every
method's ``rows``) are then file rows; :attr:`slots` are the cache's slabs, indexed by the cache
slots :meth:`kernel_rows` returns. :meth:`memory_bytes` is the cache's RAM and :meth:`disk_bytes`
what the files take.

Thread safety: every method holds the storage's lock (a ``threading.RLock``, the owning table's
lock when it passes one, see ``backend/table_impl.py``): growth replaces each slot tensor by a
wider view or a larger copy, so an unsynchronised write or a second growth running at the same
time would be lost or leave slots of different lengths.
"""
from __future__ import annotations

import math
import os
import threading
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence

import torch

from recis_compat.backend.anon_memory import RESERVE_FACTOR, populate_write, reserve_rows, zeroed_cpu
from recis_compat.backend.locking import OwnLock, locked
from recis_compat.backend.row_cache import RowCache
from recis_compat.backend.row_store import FileSlots, StoreConfig
from recis_compat.backend.row_store import strict_overcommit as _strict_overcommit

GROWTH = 1.5          # reserve growth on devices that commit memory at allocation (CUDA)
_FILE_FILL_ROWS = 1 << 20   # file-backed growth initialises new rows in pieces of this many


def _physical_ram_bytes() -> int:
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 1 << 34


@dataclass
class SlotSpec:
    """How a slot's rows look and start: ``[rows, *tail]`` of ``dtype``, filled with ``init``."""

    tail: List[int]
    dtype: torch.dtype
    init: float = 0.0


class RowStorage(OwnLock):
    """Named slots over one row index space.

    Args:
        dim: embedding width (the ``"embedding"`` slot is ``[capacity, dim]``).
        dtype: embedding dtype.
        device: where the slots live.
        sample_rows: ``f(k) -> Tensor[k, dim]`` drawing k initial embedding rows (the table's
            initializer); called on growth and on :meth:`reset_rows`. None: new and reset rows
            are zeros (the table then writes each new id's initial values itself).
        block: minimum growth step in rows.
        lock: the lock every method holds (default: a new ``threading.RLock``).
        store: where the slots live (backend/row_store.py); None or an in-memory kind: memory on
            ``device``; ``cached_ssd``: files under its path with its RAM budget (CPU only).
        name: the table's name (error messages, the store's directory name).
    """

    def __init__(self, dim: int, dtype: torch.dtype, device, sample_rows, block: int = 1024,
                 lock: Optional[threading.RLock] = None, store: Optional[StoreConfig] = None,
                 name: str = "table"):
        self._lock = lock if lock is not None else threading.RLock()
        self.dim = int(dim)
        self.device = torch.device(device)
        self.block = max(1, int(block))
        self.name = name
        self._sample_rows = sample_rows
        self.store = store
        self.specs: Dict[str, SlotSpec] = {"embedding": SlotSpec([self.dim], dtype)}
        self._files: Optional[FileSlots] = None
        self._cache: Optional[RowCache] = None
        self._capacity = 0          # file-backed: rows of the table (slots hold cached rows only)
        if store is not None and store.persistent:
            if self.device.type != "cpu":
                raise ValueError(f"table {name!r}: store_type 'cached_ssd' keeps rows in host memory and files; "
                                 f"the table's device must be the CPU, got {self.device}")
            self._open_files()
        else:
            self.slots = {"embedding": torch.empty((0, self.dim), dtype=dtype, device=self.device)}
            # name -> backing tensor [reserve_rows, *tail]; slots[name] is reserve[:capacity]
            self._reserve = dict(self.slots)
        # slots whose reserve rows past the capacity read as zeros (never written: zeroed_cpu)
        self._zero_tail: set = set()
        self.num_reallocations = 0   # times the reserve was replaced (rows copied; files: remapped)

    def _open_files(self) -> None:
        """File-backed: new files (an empty directory) for every slot spec, an empty cache."""
        self._files = FileSlots(self.store, self.name)
        for name, spec in self.specs.items():
            self._files.add(name, spec.tail, spec.dtype)
        self._cache = RowCache(self._files, self.name, self._fresh_value)
        self.slots = self._cache.slabs
        self._reserve = {}

    def _fresh_value(self, name: str) -> Optional[float]:
        """The value of every element of a row of slot ``name`` that growth initialised and
        nothing wrote since; None: sampled embeddings (read them from the file)."""
        if name == "embedding" and self._sample_rows is not None:
            return None
        return self.specs[name].init

    def __getstate__(self):
        with self._lock:
            if self._files is not None:       # every row of every slot, read through the cache
                rows = torch.arange(self._capacity, dtype=torch.int64)
                compact = {k: self._cache.read(k, rows) for k in self.slots}
            else:
                compact = {k: v.clone() for k, v in self.slots.items()}   # compact: no reserve
            state = super().__getstate__()
        state["slots"] = compact
        for k in ("_reserve", "_files", "_cache", "_zero_tail"):
            state.pop(k, None)
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        self.__dict__.setdefault("store", None)
        self.__dict__.setdefault("name", "table")
        self.__dict__.setdefault("num_reallocations", 0)
        self._files, self._cache = None, None
        self._zero_tail = set()
        compact = self.slots
        self._reserve = dict(compact)
        if self.store is not None and self.store.persistent:
            # a copy gets files of its own (a new directory) holding the copied rows
            cap = next(iter(compact.values())).shape[0]
            self._open_files()
            self._capacity = cap
            self._files.resize(max(cap, self.block))
            self._files.allocate(0, cap)
            self._cache.fit_rows(cap)
            for name, values in compact.items():
                self._files.write_range(name, 0, values)
            self._cache.fresh_from = cap

    @property
    def file_backed(self) -> bool:
        """Whether the slots live in files (``cached_ssd``)."""
        return self._files is not None

    @property
    def store_directory(self) -> Optional[str]:
        """The directory of this table's row files (None: in memory)."""
        return None if self._files is None else self._files.directory

    def disk_bytes(self) -> int:
        """Bytes of disk the row files take (0 in memory)."""
        return 0 if self._files is None else self._files.disk_bytes()

    def close(self) -> None:
        """Delete the row files now (file-backed slots; in memory: nothing). The storage must not
        be used afterwards."""
        with self._lock:
            if self._files is not None:
                self._cache.release()
                self._files.close()
                self._capacity = 0

    def note_access(self, rows: torch.Tensor, lookup: bool = False) -> None:
        """``rows`` (int64, >= 0) are being used (file-backed slots only; otherwise nothing).
        ``lookup``: rows a lookup returns (gathered and updated next): the cache reads the
        missing ones in now, when they fit in the budget (a checkpoint restore's batches of new
        ids may not: those stay in the files)."""
        if self._cache is not None and lookup and rows.numel() and self._cache.fits(rows.numel()):
            self._cache.slots_of(rows.to(torch.int64))

    @locked
    def kernel_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """Indices into the slot tensors (:attr:`slots`) of the rows ``rows`` (int64 ``>= 0``),
        which the caller is about to change in place: the rows themselves in memory; file-backed,
        their cache slots (read in as needed; valid until the next access to this storage)."""
        if self._cache is None:
            return rows
        return self._cache.slots_of(rows.to(torch.int64), write=True)

    @locked
    def gather(self, name: str, rows: torch.Tensor, expand: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``slot[rows]`` for a lookup (a copy; rows int64 ``>= 0``); with ``expand`` (int64
        ``[N]``, positions into ``rows``) ``slot[rows[expand]]``. File-backed: the rows are
        cached by this call when they fit in the budget (they are used again by the step),
        else read through; ``rows`` (the lookup's distinct rows) are translated to cache slots,
        ``expand`` then picks among those."""
        if self._cache is None:
            return self.slots[name].index_select(0, rows if expand is None else rows.index_select(0, expand))
        if self._cache.fits(rows.numel()):
            # the lookup's find brought the rows in and marked them; may grow the slabs: index
            # them after
            slots = self._cache.slots_of(rows, touch=False)
            return self.slots[name].index_select(0, slots if expand is None else slots.index_select(0, expand))
        return self._cache.read(name, rows if expand is None else rows.index_select(0, expand))

    @locked
    def read_rows(self, name: str, rows: torch.Tensor) -> torch.Tensor:
        """``slot[rows]`` (a copy; rows int64 ``>= 0``); file-backed: through the cache for
        cached rows, from the file for the others (nothing is brought in)."""
        t = self.slot(name)
        rows = rows.to(device=self.device, dtype=torch.int64)
        if self._cache is not None:
            return self._cache.read(name, rows)
        return t.index_select(0, rows)

    # ---------------------------------------------------------------- shape
    @property
    def capacity(self) -> int:
        """Rows of the table (file-backed: of the files; the slots hold the cached ones)."""
        if self._files is not None:
            return self._capacity
        return self.slots["embedding"].shape[0]

    @property
    def embedding(self) -> torch.Tensor:
        return self.slots["embedding"]

    @property
    def reserved_rows(self) -> int:
        """Rows the slots can reach without a copy (>= capacity; file-backed: the files' rows)."""
        if self._files is not None:
            return self._files.rows
        return self._reserve["embedding"].shape[0]

    @locked
    def memory_bytes(self) -> int:
        """Bytes of memory the slots occupy: the rows up to ``capacity`` on CPU (reserved rows
        beyond it are never written, so not resident), the whole reserve elsewhere; file-backed:
        the row cache (slabs, bookkeeping, row index)."""
        if self._cache is not None:
            return self._cache.memory_bytes()
        tensors = self.slots if self.device.type == "cpu" else self._reserve
        return sum(t.numel() * t.element_size() for t in tensors.values())

    @locked
    def reserved_bytes(self) -> int:
        """Bytes of address space reserved for the slots (``>= memory_bytes()``; file-backed:
        the file sizes)."""
        if self._files is not None:
            return self._files.rows * sum(f.row_bytes for f in self._files.files.values())
        return sum(t.numel() * t.element_size() for t in self._reserve.values())

    def _initial(self, name: str, rows: int) -> torch.Tensor:
        spec = self.specs[name]
        if name == "embedding" and self._sample_rows is not None:
            vals = self._sample_rows(rows)
            if tuple(vals.shape) != (rows, self.dim):
                raise RuntimeError(f"initializer produced shape {tuple(vals.shape)}, expected "
                                   f"({rows}, {self.dim})")
            return vals.to(device=self.device, dtype=spec.dtype)
        return torch.full([rows] + spec.tail, spec.init, dtype=spec.dtype, device=self.device)

    @locked
    def ensure_capacity(self, rows_needed: int) -> None:
        """Grow every slot so that row indices ``< rows_needed`` exist: the capacity becomes
        ``rows_needed`` rounded up to whole blocks, new rows get their initial values. Copies
        rows only when the reserve is exhausted (see the module docstring)."""
        cap = self.capacity
        if rows_needed <= cap:
            return
        new_cap = -(-int(rows_needed) // self.block) * self.block
        if self._files is not None:
            self._grow_files(cap, new_cap)
            return
        if new_cap > self.reserved_rows:
            self._reallocate(self._reserve_rows_for(new_cap))
        extra = new_cap - cap
        sampled = self._initial("embedding", extra) if self._sample_rows is not None else None
        for name, spec in self.specs.items():
            fresh = self._reserve[name].narrow(0, cap, extra)
            if name == "embedding" and sampled is not None:
                fresh.copy_(sampled)
            elif spec.init == 0 and name in self._zero_tail:
                populate_write(fresh)        # never-written rows of a zeroed reserve: already 0
            else:
                fresh.fill_(spec.init)        # in place: no temporary of the new rows
        for name in self.specs:
            self.slots[name] = self._reserve[name].narrow(0, 0, new_cap)

    def _grow_files(self, cap: int, new_cap: int) -> None:
        """File-backed growth to ``new_cap`` rows: larger (sparse) files when the reserve is
        full, disk blocks for the new rows, their initial values written in pieces (zeros need
        no write: new blocks read as zeros). Sampled values are drawn once for all new rows, as
        in memory, so both stores hold the same rows."""
        if new_cap > self._files.rows:
            self._files.resize(self._reserve_rows_for(new_cap))
            self.num_reallocations += 1
        self._files.allocate(cap, new_cap)
        sampled = self._initial("embedding", new_cap - cap) if self._sample_rows is not None else None
        piece = max(self.block, _FILE_FILL_ROWS)
        for name, spec in self.specs.items():
            if name == "embedding" and sampled is not None:
                for a in range(cap, new_cap, piece):
                    self._files.write_range(name, a, sampled.narrow(0, a - cap, min(piece, new_cap - a)))
            elif spec.init != 0:
                for a in range(cap, new_cap, piece):
                    n = min(piece, new_cap - a)
                    self._files.write_range(name, a, torch.full([n] + spec.tail, spec.init, dtype=spec.dtype))
        self._cache.fit_rows(new_cap)
        self._capacity = new_cap

    def _reserve_rows_for(self, new_cap: int) -> int:
        if self._files is not None:       # sparse files: reserved rows take no disk until written
            return max(new_cap, RESERVE_FACTOR * new_cap)
        if self.device.type != "cpu" or _strict_overcommit():
            return max(new_cap, int(self.reserved_rows * GROWTH))
        widest = max(max(1, math.prod(sp.tail)) * torch.empty((), dtype=sp.dtype).element_size()
                     for sp in self.specs.values())
        return reserve_rows(new_cap, widest, limit_bytes=_physical_ram_bytes() // 2)

    def _new_reserve(self, name: str, rows: int) -> torch.Tensor:
        """A reserve ``[rows, *tail]`` for slot ``name``: on the CPU a zeroed one
        (anon_memory ``zeroed_cpu``), the slot then noted in ``_zero_tail``; elsewhere uninitialised."""
        spec = self.specs[name]
        if self.device.type != "cpu":
            self._zero_tail.discard(name)
            return torch.empty([rows] + spec.tail, dtype=spec.dtype, device=self.device)
        self._zero_tail.add(name)
        return zeroed_cpu([rows] + spec.tail, spec.dtype)

    def _reallocate(self, rows: int) -> None:
        cap = self.capacity
        for name, spec in self.specs.items():
            new = self._new_reserve(name, rows)
            new.narrow(0, 0, cap).copy_(self.slots[name])
            self._reserve[name] = new
            self.slots[name] = new.narrow(0, 0, cap)
        self.num_reallocations += 1

    # ---------------------------------------------------------------- slots
    @locked
    def add_slot(self, name: str, tail: Sequence[int], dtype: torch.dtype, init: float = 0.0) -> torch.Tensor:
        """Create slot ``name`` (rows ``[capacity, *tail]`` filled with ``init``); idempotent for an
        identical spec, an error for a conflicting one."""
        spec = SlotSpec([int(x) for x in tail], dtype, float(init))
        if name in self.specs:
            if self.specs[name] != spec:
                raise ValueError(f"slot {name!r} already exists as {self.specs[name]}, not {spec}")
            return self.slots[name]
        self.specs[name] = spec
        if self._files is not None:
            # the cache's rows get one more slot: changed rows go back to the files first
            self._cache.relayout()
            self._files.add(name, spec.tail, dtype)
            self._files.allocate(0, self.capacity, name)
            if spec.init != 0:
                piece = max(self.block, _FILE_FILL_ROWS)
                for a in range(0, self.capacity, piece):
                    n = min(piece, self.capacity - a)
                    self._files.write_range(name, a, torch.full([n] + spec.tail, spec.init, dtype=dtype))
            self._cache.relayout()
            return self.slots[name]
        else:
            reserve = self._new_reserve(name, self.reserved_rows)
            if self.capacity and not (spec.init == 0 and name in self._zero_tail):
                reserve.narrow(0, 0, self.capacity).copy_(self._initial(name, self.capacity))
        self._reserve[name] = reserve
        self.slots[name] = reserve.narrow(0, 0, self.capacity)
        return self.slots[name]

    def slot(self, name: str) -> torch.Tensor:
        if name not in self.slots:
            raise KeyError(f"no slot {name!r}; slots: {list(self.slots)}")
        return self.slots[name]

    @locked
    def reset_rows(self, rows: torch.Tensor, preserve: Iterable[str] = ()) -> None:
        """Re-initialise ``rows`` in every slot but ``preserve`` (eviction: a freed row must
        start fresh when reused)."""
        if rows.numel() == 0:
            return
        keep = set(preserve)
        rows = rows.to(device=self.device, dtype=torch.int64)
        for name in self.specs:
            if name not in keep:
                if self._cache is not None:
                    self._cache.write(name, rows, self._initial(name, rows.numel()))
                else:
                    self.slots[name].index_copy_(0, rows, self._initial(name, rows.numel()))

    @locked
    def write_rows(self, name: str, rows: torch.Tensor, values: torch.Tensor) -> None:
        """``slot[rows] = values`` (dtype and device converted)."""
        t = self.slot(name)
        rows = rows.to(device=self.device, dtype=torch.int64)
        if self._cache is not None:
            self._cache.write(name, rows, values)
            return
        t.index_copy_(0, rows, values.to(t.dtype).to(self.device))

    @locked
    def clear(self) -> None:
        """Drop every row of every slot (capacity 0; the slots themselves stay)."""
        if self._files is not None:       # emptied files, an empty cache
            self._files.zero()
            self._cache.reset()
            self._capacity = 0
            return
        self.slots = {k: v[:0].clone() for k, v in self.slots.items()}
        self._reserve = dict(self.slots)
        self._zero_tail = set()

    @locked
    def to(self, device) -> "RowStorage":
        if self._files is not None:
            if torch.device(device).type != "cpu":
                raise ValueError(f"table {self.name!r}: store_type 'cached_ssd' keeps rows in host memory and "
                                 f"files; it cannot move to {device} (use cached_host_mem or device_mem there)")
            return self
        self.device = torch.device(device)
        self.slots = {k: v.to(self.device) for k, v in self.slots.items()}
        self._reserve = dict(self.slots)
        self._zero_tail = set()
        return self
