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
with memory (a large ``torch.empty`` is a fresh anonymous mapping). When the reserve is full it
is replaced by one ``RESERVE_FACTOR`` (8) times larger and the rows are copied once, so the
copies add up to a seventh of the final table, against twice with x1.5 copy-growth (a profile
of a table growing to 10M ids spent 22 % of its time in that ``torch.cat``). A reserve is capped
at half the machine's RAM per slot (never below what is needed), which keeps a request within
what Linux's default overcommit heuristics grant. Under strict overcommit accounting
(``vm.overcommit_memory = 2``) reserved address space counts as used memory, so there the
reserve grows by x1.5 like on other devices. On other devices (CUDA) memory is committed at
allocation, so the reserve grows by x1.5 and :meth:`memory_bytes` counts it whole.

Copies of the storage (``pickle``, ``copy.deepcopy``) hold compact slots of ``capacity`` rows,
never the reserve.

File-backed slots (``cached_ssd``, backend/row_store.py): with a persistent :class:`StoreConfig`
every slot's reserve is a mapped file instead of memory; growing past the reserve maps a larger
file (no row is copied), and every access to rows (:meth:`note_access`, :meth:`read_rows`,
:meth:`write_rows`, :meth:`reset_rows`, growth) is reported to the store's RAM budget, which
releases the least recently used rows' pages from the process. :meth:`memory_bytes` is then the
budget's view of this table's resident rows and :meth:`disk_bytes` what the files take.

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

from recis_compat.backend.locking import OwnLock, locked
from recis_compat.backend.row_store import FileSlots, StoreConfig

GROWTH = 1.5          # reserve growth on devices that commit memory at allocation (CUDA)
RESERVE_FACTOR = 8    # CPU: a new reserve holds this many times the rows needed
_FILE_FILL_ROWS = 1 << 20   # file-backed growth initialises new rows in pieces of this many


def _strict_overcommit() -> bool:
    """Whether Linux accounts reserved address space as used memory (vm.overcommit_memory = 2)."""
    try:
        with open("/proc/sys/vm/overcommit_memory") as f:
            return f.read().strip() == "2"
    except OSError:
        return False


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
        if store is not None and store.persistent:
            if self.device.type != "cpu":
                raise ValueError(f"table {name!r}: store_type 'cached_ssd' keeps rows in host memory and files; "
                                 f"the table's device must be the CPU, got {self.device}")
            self._files = FileSlots(store, name)
            emb = self._files.map("embedding", 0, [self.dim], dtype)
            self._reserve: Dict[str, torch.Tensor] = {"embedding": emb}
            self.slots: Dict[str, torch.Tensor] = {"embedding": emb.narrow(0, 0, 0)}
        else:
            self.slots = {"embedding": torch.empty((0, self.dim), dtype=dtype, device=self.device)}
            # name -> backing tensor [reserve_rows, *tail]; slots[name] is reserve[:capacity]
            self._reserve = dict(self.slots)
        self.num_reallocations = 0   # times the reserve was replaced (rows copied; files: remapped)

    def __getstate__(self):
        state = super().__getstate__()
        state["slots"] = {k: v.clone() for k, v in state["slots"].items()}   # compact: no reserve
        state.pop("_reserve", None)
        state["_files"] = None
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        self.__dict__.setdefault("store", None)
        self.__dict__.setdefault("name", "table")
        self.__dict__.setdefault("_files", None)
        self.__dict__.setdefault("num_reallocations", 0)
        compact = self.slots
        self._reserve = dict(compact)
        if self.store is not None and self.store.persistent:
            # a copy gets files of its own (a new directory) holding the copied rows
            cap = next(iter(compact.values())).shape[0]
            self._files = FileSlots(self.store, self.name)
            for name, spec in self.specs.items():
                reserve = self._files.map(name, max(cap, self.block), spec.tail, spec.dtype)
                self._files.allocate(0, cap, name)
                reserve.narrow(0, 0, cap).copy_(compact[name])
                self._reserve[name] = reserve
                self.slots[name] = reserve.narrow(0, 0, cap)
            self._files.touch_range(0, cap)

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
                # drop this storage's views too: a file's disk space is freed when its last
                # mapping goes, and the directory is deleted now
                self.slots = {k: torch.empty((0,) + tuple(v.shape[1:]), dtype=v.dtype) for k, v in self.slots.items()}
                self._reserve = dict(self.slots)
                self._files.close()

    def note_access(self, rows: torch.Tensor, lookup: bool = False) -> None:
        """``rows`` (int64, >= 0) are being used: tell the RAM budget (file-backed slots only).
        ``lookup``: rows a lookup returns (the optimizer writes them next): their pages are
        brought in for writing, one page per row and slot (backend/row_store.py)."""
        if self._files is not None and rows.numel():
            self._files.touch(rows, for_write=lookup)

    @locked
    def read_rows(self, name: str, rows: torch.Tensor) -> torch.Tensor:
        """``slot[rows]`` (a copy; rows int64 ``>= 0``), reported to the RAM budget."""
        t = self.slot(name)
        rows = rows.to(device=self.device, dtype=torch.int64)
        self.note_access(rows)
        return t.index_select(0, rows)

    # ---------------------------------------------------------------- shape
    @property
    def capacity(self) -> int:
        return self.slots["embedding"].shape[0]

    @property
    def embedding(self) -> torch.Tensor:
        return self.slots["embedding"]

    @property
    def reserved_rows(self) -> int:
        """Rows the slots can reach without a copy (>= capacity)."""
        return self._reserve["embedding"].shape[0]

    @locked
    def memory_bytes(self) -> int:
        """Bytes of memory the slots occupy: the rows up to ``capacity`` on CPU (reserved rows
        beyond it are never written, so not resident), the whole reserve elsewhere; file-backed:
        the rows of the chunks accessed since they were last released (an upper bound)."""
        if self._files is not None:
            return self._files.stamped_bytes()
        tensors = self.slots if self.device.type == "cpu" else self._reserve
        return sum(t.numel() * t.element_size() for t in tensors.values())

    @locked
    def reserved_bytes(self) -> int:
        """Bytes of address space reserved for the slots (``>= memory_bytes()``; file-backed:
        the mapped file sizes)."""
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
        if new_cap > self.reserved_rows:
            self._reallocate(self._reserve_rows_for(new_cap))
        extra = new_cap - cap
        if self._files is not None:
            self._files.allocate(cap, new_cap)
        # file-backed: the new rows are written in pieces, each reported to the RAM budget
        # (sampled initial values are drawn once, as in memory, so both stores hold the same rows)
        piece = extra if self._files is None else max(self.block, _FILE_FILL_ROWS)
        sampled = self._initial("embedding", extra) if self._sample_rows is not None else None
        for a in range(cap, new_cap, piece):
            b = min(new_cap, a + piece)
            for name, spec in self.specs.items():
                fresh = self._reserve[name].narrow(0, a, b - a)
                if name == "embedding" and sampled is not None:
                    fresh.copy_(sampled.narrow(0, a - cap, b - a))
                else:
                    fresh.fill_(spec.init)        # in place: no temporary of the new rows
            if self._files is not None:
                self._files.touch_range(a, b)
        for name in self.specs:
            self.slots[name] = self._reserve[name].narrow(0, 0, new_cap)

    def _reserve_rows_for(self, new_cap: int) -> int:
        if self._files is not None:       # sparse files: reserved rows take no disk until written
            return max(new_cap, RESERVE_FACTOR * new_cap)
        if self.device.type != "cpu" or _strict_overcommit():
            return max(new_cap, int(self.reserved_rows * GROWTH))
        widest = max(max(1, math.prod(sp.tail)) * torch.empty((), dtype=sp.dtype).element_size()
                     for sp in self.specs.values())
        ram_rows = _physical_ram_bytes() // 2 // widest
        return max(new_cap, min(RESERVE_FACTOR * new_cap, ram_rows))

    def _reallocate(self, rows: int) -> None:
        cap = self.capacity
        if self._files is not None:       # a larger file mapping: the rows stay where they are
            for name, spec in self.specs.items():
                self._reserve[name] = self._files.map(name, rows, spec.tail, spec.dtype)
                self.slots[name] = self._reserve[name].narrow(0, 0, cap)
            self.num_reallocations += 1
            return
        for name, spec in self.specs.items():
            new = torch.empty([rows] + spec.tail, dtype=spec.dtype, device=self.device)
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
            reserve = self._files.map(name, self.reserved_rows, spec.tail, dtype)
            self._files.allocate(0, self.capacity, name)
            if self.capacity:
                reserve.narrow(0, 0, self.capacity).fill_(spec.init)
                self._files.touch_range(0, self.capacity)
        else:
            reserve = torch.empty([self.reserved_rows] + spec.tail, dtype=dtype, device=self.device)
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
        self.note_access(rows)
        for name in self.slots:
            if name not in keep:
                self.slots[name].index_copy_(0, rows, self._initial(name, rows.numel()))

    @locked
    def write_rows(self, name: str, rows: torch.Tensor, values: torch.Tensor) -> None:
        """``slot[rows] = values`` (dtype and device converted)."""
        t = self.slot(name)
        rows = rows.to(device=self.device, dtype=torch.int64)
        self.note_access(rows)
        t.index_copy_(0, rows, values.to(t.dtype).to(self.device))

    @locked
    def clear(self) -> None:
        """Drop every row of every slot (capacity 0; the slots themselves stay)."""
        if self._files is not None:       # emptied files keep their mappings
            self._files.zero(self.reserved_rows)
            self.slots = {k: v.narrow(0, 0, 0) for k, v in self._reserve.items()}
            return
        self.slots = {k: v[:0].clone() for k, v in self.slots.items()}
        self._reserve = dict(self.slots)

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
        return self
