"""Where a dynamic table's rows live: in memory, or in files with a RAM budget (``cached_ssd``).

Store kinds carry OneEmbedding's names (docs/stores.md):

* ``device_mem`` / ``cached_host_mem``: every row of every slot in memory on the table's device
  (RowStorage's in-memory reserve; on CPU both mean RAM). The default.
* ``cached_ssd``: the table's rows live in one flat file
  ``<persistent_path>/<table>-rank<r>-pid<p>-<k>/rows`` of row records in row order, a record
  holding the row's values of every slot (embedding, optimizer moments, filter steps) side by
  side (:class:`FileSlots`); the rows in use are held in a RAM cache of single rows
  (backend/row_cache.py) whose slabs stay within ``cache_memory_budget_mb``
  (:class:`CacheBudget`). Rows move between the file and the cache in sorted batches of whole
  records, one ``pread`` / ``pwrite`` per run of consecutive rows (``rows_pread_`` /
  ``rows_pwrite``, csrc/optim/rows_floor.cpp) or one copy per record through the file's mapping.

Why flat files rather than a key-value library (RocksDB, LMDB): rows are addressed by the dense
row numbers the id map hands out, so a row's place in a file is ``row * row_bytes`` and no
second index is needed on disk; the cache in front of the files is what decides which rows are
in RAM, row by row.

The files are working storage of one process: the id map lives in RAM, so the files mean
nothing without it. A table's directory is created empty at table creation and removed when the
table is garbage collected, closed or the process exits normally; checkpoints (serialize/) are
the durable form. A crashed process leaves its directory behind (the name carries rank and pid).

Budget sharing: tables built from one :class:`StoreConfig` object share one budget, as the
tables of one OneEmbedding share its ``cache_memory_budget_mb``; the environment configuration
(:func:`store_from_env`) is one object per process, so every table of an unchanged RecIS script
shares it. Within a budget, a table's cache grows on demand while the budget has room and then
evicts its own rows: the first tables to need rows take the room (there is no rebalancing
between tables; docs/stores.md).
"""
from __future__ import annotations

import contextlib
import itertools
import mmap
import os
import re
import shutil
import threading
import weakref
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from recis_compat.ops.optim import rows_move_, rows_pread_, rows_pwrite

__all__ = ["STORE_TYPES", "ENV_STORE_TYPE", "ENV_PERSISTENT_PATH", "ENV_CACHE_BUDGET_MB",
           "StoreConfig", "CacheBudget", "FileSlots", "store_from_env"]

STORE_TYPES = ("device_mem", "cached_host_mem", "cached_ssd")
ENV_STORE_TYPE = "RECIS_COMPAT_STORE_TYPE"
ENV_PERSISTENT_PATH = "RECIS_COMPAT_PERSISTENT_PATH"
ENV_CACHE_BUDGET_MB = "RECIS_COMPAT_CACHE_MEMORY_BUDGET_MB"
WRITE_WINDOW = 4096        # rows copied through a file mapping between two checks of what it maps
DROP_PAGES = 4096          # pages of a file mapping mapped before they are dropped (16 MiB at 4 KiB)
# rows_pwrite ends each write at a multiple of this many bytes of the file (csrc/optim/rows_floor.cpp
# kWriteSpan): the page cache then holds rows written in runs in folios of at most this size, and
# a write fault through the mapping maps at most this much (see FileSlots.write_slots)
WRITE_SPAN = 64 << 10
_PAGE = mmap.PAGESIZE


def _mapped_file_pages() -> int:
    """Resident pages of this process backed by files (and shared memory): the third field of
    ``/proc/self/statm``; 0 where it cannot be read."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[2])
    except (OSError, ValueError, IndexError):
        return 0


@dataclass(eq=False)
class StoreConfig:
    """Where a table's rows live (OneEmbedding's store options).

    Attributes:
        store_type: ``"cached_host_mem"`` (default) or ``"device_mem"``: rows in memory;
            ``"cached_ssd"``: rows in files under ``persistent_path`` with a RAM cache.
        persistent_path: directory of the files (``cached_ssd``; created if missing).
        cache_memory_budget_mb: RAM the row caches of all tables sharing this config may take
            (``cached_ssd``), in MiB; > 0.
        origin: what to name in error messages (``"StoreConfig"`` or the environment variables).
    """

    store_type: str = "cached_host_mem"
    persistent_path: Optional[str] = None
    cache_memory_budget_mb: Optional[int] = None
    origin: str = "StoreConfig"
    _budget: Optional["CacheBudget"] = field(default=None, init=False, repr=False)

    def __post_init__(self):
        where = self.origin
        if self.store_type not in STORE_TYPES:
            raise ValueError(f"{where}: store_type must be one of {', '.join(STORE_TYPES)}, got {self.store_type!r}")
        if self.store_type != "cached_ssd":
            return
        if not self.persistent_path:
            raise ValueError(f"{where}: store_type 'cached_ssd' needs persistent_path (a directory for the row files)")
        self.persistent_path = os.fspath(self.persistent_path)
        if os.path.exists(self.persistent_path) and not os.path.isdir(self.persistent_path):
            raise ValueError(f"{where}: persistent_path {self.persistent_path!r} exists and is not a directory")
        b = self.cache_memory_budget_mb
        if isinstance(b, str) and b.strip().isdigit():
            b = int(b)
        if not isinstance(b, int) or isinstance(b, bool) or b <= 0:
            raise ValueError(f"{where}: store_type 'cached_ssd' needs cache_memory_budget_mb, an int > 0 (MiB), "
                             f"got {self.cache_memory_budget_mb!r}")
        self.cache_memory_budget_mb = b

    def __deepcopy__(self, memo):
        return self          # copies of a table share its store settings and budget

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_budget"] = None          # a pickled config gets a budget of its own
        return state

    @property
    def persistent(self) -> bool:
        """Whether rows live in files (``cached_ssd``)."""
        return self.store_type == "cached_ssd"

    def budget(self) -> "CacheBudget":
        """The :class:`CacheBudget` every table of this config shares (created on first use)."""
        if not self.persistent:
            raise ValueError(f"{self.origin}: store_type {self.store_type!r} has no cache budget")
        if self._budget is None:
            self._budget = CacheBudget(int(self.cache_memory_budget_mb) << 20)
        return self._budget


_ENV_LOCK = threading.Lock()
_ENV_CONFIGS: Dict[Tuple[str, str, str], StoreConfig] = {}


def store_from_env() -> Optional[StoreConfig]:
    """The store of tables built without one, from ``RECIS_COMPAT_STORE_TYPE``,
    ``RECIS_COMPAT_PERSISTENT_PATH`` and ``RECIS_COMPAT_CACHE_MEMORY_BUDGET_MB`` (how unchanged
    RecIS scripts choose ``cached_ssd``); None when ``RECIS_COMPAT_STORE_TYPE`` is unset or
    empty. One object per distinct setting, so the tables of a process share one budget."""
    st = os.environ.get(ENV_STORE_TYPE, "").strip()
    if not st:
        return None
    key = (st, os.environ.get(ENV_PERSISTENT_PATH, ""), os.environ.get(ENV_CACHE_BUDGET_MB, ""))
    with _ENV_LOCK:
        cfg = _ENV_CONFIGS.get(key)
        if cfg is None:
            budget = key[2].strip()
            try:
                budget_v = int(budget) if budget else None
            except ValueError:
                raise ValueError(f"{ENV_CACHE_BUDGET_MB} must be an integer number of MiB, got {budget!r}") from None
            cfg = StoreConfig(st, key[1] or None, budget_v,
                              origin=f"environment ({ENV_STORE_TYPE}, {ENV_PERSISTENT_PATH}, {ENV_CACHE_BUDGET_MB})")
            _ENV_CONFIGS[key] = cfg
        return cfg


class CacheBudget:
    """The RAM budget of the row caches of the tables of one :class:`StoreConfig`
    (backend/row_cache.py).

    Each cache states its *demand* (its table's rows x the bytes a cached row takes) and gets a
    *share*: every table all its rows when the demands fit in the budget, else a water level
    (small tables keep all their rows, the others get equal parts of the rest). A cache grows
    its slabs on demand up to its share, then evicts its own least recently used rows; a cache
    above its share (the shares moved because another table grew) gives the excess back at its
    next access, so the caches exceed the budget only between an access of one table and the
    next access of another. A single access with more distinct rows than the share grows its
    cache past it (counted in ``over_budget_bytes``).

    Attributes:
        limit_bytes: the budget.
        misses: rows read from the files into a cache.
        evictions: rows evicted from a cache.
        trims: accesses that evicted rows to make room (each evicts one batch).
        writebacks: evicted rows written back to the files (they were changed while cached).
        new_row_writes: rows of new ids written to the files once the step that created them
            was done (one run of rows; backend/row_cache.py), so they leave the cache clean.
        fresh: misses that were new rows (filled with their initial values or read as one run
            with their neighbours, never read back after an eviction).
        over_budget_bytes: the largest excess of the caches over the budget so far (0: never).
        version: changes whenever a demand changes (caches then check their share).

    The counters change only through :meth:`count` (under the budget's lock: the caches of
    several tables, each under its own table's lock, may count at the same time).
    """

    def __init__(self, limit_bytes: int):
        self.limit_bytes = int(limit_bytes)
        self.misses = 0
        self.fresh = 0
        self.evictions = 0
        self.trims = 0
        self.writebacks = 0
        self.new_row_writes = 0
        self.over_budget_bytes = 0
        self.version = 0
        self._held: "weakref.WeakKeyDictionary[object, int]" = weakref.WeakKeyDictionary()
        self._demand: "weakref.WeakKeyDictionary[object, int]" = weakref.WeakKeyDictionary()
        self._level: Optional[int] = None
        self._lock = threading.Lock()

    def count(self, misses: int = 0, fresh: int = 0, evictions: int = 0, trims: int = 0,
              writebacks: int = 0, new_row_writes: int = 0) -> None:
        """Add to the counters (see the class docstring), atomically."""
        with self._lock:
            self.new_row_writes += int(new_row_writes)
            self.misses += int(misses)
            self.fresh += int(fresh)
            self.evictions += int(evictions)
            self.trims += int(trims)
            self.writebacks += int(writebacks)

    def used_bytes(self) -> int:
        """Bytes the caches of this budget hold now (their slabs and per-row bookkeeping)."""
        with self._lock:
            return sum(self._held.values())

    def set_held(self, holder, nbytes: int) -> None:
        """``holder`` (a row cache) now holds ``nbytes`` (0: releases its share)."""
        with self._lock:
            if nbytes:
                self._held[holder] = int(nbytes)
            else:
                self._held.pop(holder, None)
            self.over_budget_bytes = max(self.over_budget_bytes, sum(self._held.values()) - self.limit_bytes)

    def set_demand(self, holder, nbytes: int) -> None:
        """``holder`` would hold ``nbytes`` to cache every row of its table (0: none)."""
        with self._lock:
            if self._demand.get(holder, 0) == int(nbytes):
                return
            if nbytes:
                self._demand[holder] = int(nbytes)
            else:
                self._demand.pop(holder, None)
            self._level = None
            self.version += 1

    def share_bytes(self, holder) -> int:
        """The bytes ``holder`` may hold: its demand, capped at the water level that makes the
        capped demands of every cache add up to the budget."""
        with self._lock:
            if self._level is None:
                demands = sorted(self._demand.values())
                left, level = self.limit_bytes, self.limit_bytes
                for i, d in enumerate(demands):
                    even = left // (len(demands) - i)
                    if d > even:
                        level = even
                        break
                    left -= d
                self._level = level
            return min(self._demand.get(holder, 0), self._level)


def _page_span(rows: np.ndarray, record_bytes: int) -> Tuple[int, int, int]:
    """``(pages, lo, hi)`` of the records of ``rows`` (int64 ``[n >= 1]``, sorted best): the
    pages of the file they lie on, at most (exact for sorted rows: the first pages that change
    between neighbours, plus every page past a record's first), and the byte range ``[lo, hi)``
    of those pages. numpy: a handful of passes over a few thousand rows, where each torch op
    would cost more in dispatch than in work on this project's 2-core machine."""
    start = rows * record_bytes
    first = start // _PAGE
    end = (start + (record_bytes - 1)) // _PAGE
    pages = 1 + int(np.count_nonzero(first[1:] != first[:-1])) + int((end - first).sum())
    return pages, int(first.min()) * _PAGE, (int(end.max()) + 1) * _PAGE


def strict_overcommit() -> bool:
    """Whether Linux accounts reserved address space as used memory (vm.overcommit_memory = 2)."""
    try:
        with open("/proc/sys/vm/overcommit_memory") as f:
            return f.read().strip() == "2"
    except OSError:
        return False


_DIR_COUNTER = itertools.count()


def _process_rank() -> int:
    """This process's rank (the default process group's, else ``RANK``, else 0): part of a
    table's directory name, so the ranks of one job never share files."""
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0") or 0)


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:80] or "table"


class _Slot:
    """One slot's place in a table's row records: values ``[*tail]`` of ``dtype``, ``row_bytes``
    bytes at byte ``offset`` of every record (:class:`FileSlots`)."""

    def __init__(self, name: str, tail: Sequence[int], dtype: torch.dtype, offset: int):
        self.name = name
        self.tail = [int(x) for x in tail]
        self.dtype = dtype
        numel = 1
        for x in self.tail:
            numel *= x
        self.numel = max(1, numel)
        self.row_bytes = self.numel * torch.empty((), dtype=dtype).element_size()
        self.offset = offset

    def part(self, records: torch.Tensor) -> torch.Tensor:
        """This slot's bytes in ``records`` (``[n, units]`` of the file's unit dtype,
        :attr:`FileSlots.unit`): a view ``[n, row_bytes / unit size]`` (rows contiguous, the
        records' stride), where :func:`rows_move_` reads or writes them."""
        u = records.element_size()
        return records.narrow(1, self.offset // u, self.row_bytes // u)

    def column(self, records: torch.Tensor) -> torch.Tensor:
        """This slot's values ``[n, *tail]`` (a new tensor) out of ``records`` (``[n, units]``
        of the file's unit dtype, :attr:`FileSlots.unit`)."""
        return self.part(records).contiguous().view(self.dtype).view([records.shape[0]] + self.tail)

    def as_units(self, values: torch.Tensor, n: int, unit: torch.dtype) -> torch.Tensor:
        """``values`` (``[n, *tail]``, any dtype) as this slot's bytes seen as ``unit`` values,
        ``[n, row_bytes / unit size]``."""
        return values.to(self.dtype).reshape([n, self.numel]).contiguous().view(unit)


def _remove_dir(path: str, fds: List[int]) -> None:
    """The table's finalizer: close its files and delete its directory. It runs at garbage
    collection or interpreter exit, where raising helps no one, so errors are ignored."""
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)
    fds.clear()
    shutil.rmtree(path, ignore_errors=True)


class FileSlots:
    """The file of one ``cached_ssd`` table: one flat file ``rows`` of *row records*, row ``r`` at
    byte ``r * record_bytes``, a record holding the row's values of every slot side by side
    (embedding, optimizer moments, filter steps: slot ``name`` at ``files[name].offset``). A row
    moving in or out of the RAM cache (backend/row_cache.py) is therefore one piece of one file
    for all its slots: a miss is one ``pread`` (not one per slot: measured 3 slots x 2.7k scattered
    misses per step of ``bench store``'s Zipf case were 8.1k ``pread`` calls before), a write-back
    one copy into the mapping. The file is sized in whole reserves like the in-memory slots and
    sparse: it takes disk blocks only for rows given them by :meth:`allocate`. Rows move in
    batches (:meth:`read_slots`, :meth:`write_slots`; ``rows_pread_`` / ``rows_pwrite``,
    csrc/optim/rows_floor.cpp: one call per run of consecutive rows).

    Adding a slot to a file that holds rows rewrites the rows given disk blocks into wider
    records (a slot is added when an optimizer or filter attaches, normally before training).

    Args:
        config: a ``cached_ssd`` :class:`StoreConfig` (its path and shared budget).
        table: the table name (part of the directory name, error messages).

    Attributes:
        files: ``{slot: _Slot}`` (``tail``, ``dtype``, ``row_bytes``, ``offset`` of each slot).
        record_bytes: bytes of one row record (the slots' ``row_bytes`` summed).
        rows: rows the file holds (at least).
    """

    FILE_NAME = "rows"

    def __init__(self, config: StoreConfig, table: str):
        if not config.persistent:
            raise ValueError(f"table {table!r}: FileSlots needs a cached_ssd StoreConfig, got {config.store_type!r}")
        self.config = config
        self.table = table
        os.makedirs(config.persistent_path, exist_ok=True)
        self.directory = os.path.join(
            config.persistent_path,
            f"{_safe_name(table)}-rank{_process_rank()}-pid{os.getpid()}-{next(_DIR_COUNTER)}")
        try:
            os.makedirs(self.directory)
        except OSError as e:
            raise OSError(f"table {table!r}: cannot create the row-store directory {self.directory!r} "
                          f"under persistent_path ({e})") from e
        self.files: Dict[str, _Slot] = {}
        self.record_bytes = 0
        # records move as tensors of the widest integer type dividing every slot's offset and size
        # (a row copy then moves 8-byte words, not single bytes)
        self.unit = torch.uint8
        self.rows = 0                       # the file holds at least this many rows
        self.allocated = 0                  # rows [0, allocated) may have been given disk blocks
        self.written = 0                    # rows >= written were never written: they read as zeros
        self.path = os.path.join(self.directory, self.FILE_NAME)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        self._fds: List[int] = [self.fd]
        self.mm: Optional[mmap.mmap] = None
        # pages of the mapping written into since they were last dropped (an upper bound) and
        # the byte range they lie in
        self.mapped_pages = 0
        self.mapped_lo = self.mapped_hi = 0
        self.mapped_base = _mapped_file_pages()   # the process's file-backed pages after the last drop
        self._finalizer = weakref.finalize(self, _remove_dir, self.directory, self._fds)
        self.budget = config.budget()

    # ---------------------------------------------------------------- mapping
    def _map(self) -> None:
        """Size the file to ``rows`` records (sparse) and map it whole."""
        self.unmap()
        size = max(1, self.rows) * max(1, self.record_bytes)
        os.ftruncate(self.fd, size)
        self.mm = mmap.mmap(self.fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        self.mm.madvise(mmap.MADV_RANDOM)       # no readahead around the written rows

    def _records_view(self) -> torch.Tensor:
        """The mapping as ``[rows, record units]`` of :attr:`unit` (a temporary view: drop it
        before :meth:`unmap`)."""
        rows = len(self.mm) // self.record_bytes
        units = self.record_bytes // self.unit.itemsize
        return torch.frombuffer(self.mm, dtype=self.unit, count=rows * units).view(rows, units)

    def drop_pages(self) -> None:
        """Unmap the pages written into since the last drop (one ``madvise(MADV_DONTNEED)``
        over their range; the rows stay in the page cache and reach the file by the kernel's
        writeback)."""
        if self.mapped_pages and self.mm is not None:
            self.mm.madvise(mmap.MADV_DONTNEED, self.mapped_lo, self.mapped_hi - self.mapped_lo)
        self.mapped_pages = 0
        self.mapped_lo = self.mapped_hi = 0
        self.mapped_base = _mapped_file_pages()

    def unmap(self) -> None:
        if self.mm is not None:
            self.mm.close()
            self.mm = None
        self.mapped_pages = 0
        self.mapped_lo = self.mapped_hi = 0
        self.mapped_base = _mapped_file_pages()

    # ---------------------------------------------------------------- slots
    def add(self, name: str, tail: Sequence[int], dtype: torch.dtype) -> _Slot:
        """Add slot ``name`` to every record (its values all zeros). Records already given disk
        blocks are rewritten, wider, into a new file that replaces the old one."""
        if name in self.files:
            raise ValueError(f"table {self.table!r}: slot {name!r} exists already in the row file")
        slot = _Slot(name, tail, dtype, self.record_bytes)
        old_bytes, keep = self.record_bytes, min(self.allocated, self.written) if self.record_bytes else 0
        if keep:
            self._rewrite(old_bytes, old_bytes + slot.row_bytes, keep)
        else:
            self.unmap()
            os.ftruncate(self.fd, 0)            # nothing was written: every record reads as zeros
            self.written = 0
        self.files[name] = slot
        self.record_bytes = old_bytes + slot.row_bytes
        self.unit = next(t for t in (torch.int64, torch.int32, torch.int16, torch.uint8)
                         if self.record_bytes % t.itemsize == 0 and slot.row_bytes % t.itemsize == 0
                         and all(f.offset % t.itemsize == 0 for f in self.files.values()))
        self._map()
        if self.allocated and not keep:     # the truncation gave the blocks back: reserve them again
            self._fallocate(self.fd, 0, self.allocated * self.record_bytes, 0, self.allocated, [name])
        return slot

    def _rewrite(self, old_bytes: int, new_bytes: int, rows: int) -> None:
        """Copy records ``[0, rows)`` of ``old_bytes`` into a new file of ``new_bytes`` records
        (the extra bytes zero), which then replaces the file."""
        self.unmap()
        tmp = self.path + ".wider"
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.ftruncate(fd, max(1, self.rows) * new_bytes)
            self._fallocate(fd, 0, self.allocated * new_bytes, 0, self.allocated, list(self.files))
            chunk = max(1, (16 << 20) // new_bytes)
            for a in range(0, rows, chunk):
                r = torch.arange(a, min(rows, a + chunk), dtype=torch.int64)
                old = torch.empty(r.numel(), old_bytes, dtype=torch.uint8)
                rows_pread_(self.fd, r, old)
                wide = torch.zeros(r.numel(), new_bytes, dtype=torch.uint8)
                wide.narrow(1, 0, old_bytes).copy_(old)
                rows_pwrite(fd, r, wide)
            os.replace(tmp, self.path)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            self._map_if_sized()
            raise
        os.close(self.fd)
        self._fds[self._fds.index(self.fd)] = fd
        self.fd = fd

    def _map_if_sized(self) -> None:
        if self.record_bytes:
            self._map()

    def resize(self, rows: int) -> None:
        """Grow the file to hold ``rows`` rows (new rows read as zeros; no disk blocks yet)."""
        rows = int(rows)
        if rows <= self.rows:
            return
        self.rows = rows
        self._map_if_sized()

    def _fallocate(self, fd: int, offset: int, length: int, begin: int, end: int, names) -> None:
        try:
            os.posix_fallocate(fd, offset, length)
        except OSError as e:
            which = ", ".join(repr(n) for n in names)
            raise OSError(e.errno, f"table {self.table!r}: cannot reserve disk for rows [{begin}, {end}) of "
                                   f"slot{'s' if len(names) > 1 else ''} {which} ({length} bytes) under "
                                   f"{self.directory!r}: {e.strerror}; free space under persistent_path or use a "
                                   f"smaller table") from e

    def allocate(self, begin: int, end: int, name: Optional[str] = None) -> None:
        """Reserve disk blocks for rows ``[begin, end)`` (their whole records: ``name``, a slot
        being added, only narrows the error message) before they are written: a full disk is
        then this ``OSError`` naming the table, the slots and the directory, here rather than in
        the middle of a cache write-back (a mapped page with no block would be a SIGBUS)."""
        if end <= begin or not self.record_bytes:
            return
        names = [name] if name is not None else list(self.files)
        self._fallocate(self.fd, begin * self.record_bytes, (end - begin) * self.record_bytes, begin, end, names)
        self.allocated = max(self.allocated, end)

    # ---------------------------------------------------------------- rows
    def read_records(self, rows: torch.Tensor) -> torch.Tensor:
        """Records of ``rows`` (int64 ``[R]``, ``0 <= row < self.rows``; sorted: runs of
        consecutive rows are one ``pread`` each, else one per row) as ``[R, record units]`` of
        :attr:`unit`."""
        out = torch.empty(rows.numel(), self.record_bytes // self.unit.itemsize, dtype=self.unit)
        if rows.numel():
            rows_pread_(self.fd, rows, out)
        return out

    def read(self, name: str, rows: torch.Tensor) -> torch.Tensor:
        """Rows ``rows`` (int64 ``[R]``, sorted best) of slot ``name`` as a new ``[R, *tail]``
        tensor (whole records are read: one ``pread`` per row or run either way)."""
        return self.files[name].column(self.read_records(rows))

    def read_slots(self, rows: torch.Tensor, names: Sequence[str]) -> Dict[str, torch.Tensor]:
        """``{name: rows of slot name}`` for every slot of ``names``, from one read of the records."""
        rec = self.read_records(rows)
        return {n: self.files[n].column(rec) for n in names}

    def write(self, name: str, rows: torch.Tensor, values: torch.Tensor) -> None:
        """Write ``values`` ``[R, *tail]`` to slot ``name`` of the distinct rows ``rows`` (int64
        ``[R]``, best sorted, rows that have disk blocks, see :meth:`allocate`)."""
        self.write_slots(rows, {name: values})

    def write_slots(self, rows: torch.Tensor, values: Dict[str, torch.Tensor],
                    src_rows: Optional[torch.Tensor] = None) -> None:
        """Write ``values[name]`` (``[R, *tail]``) to slot ``name`` of the distinct rows ``rows``
        (int64 ``[R]``, best sorted, rows that have disk blocks) for every slot in ``values``;
        when ``values`` covers every slot, whole records are written (a write-back). With
        ``src_rows`` (int64 ``[R]``), ``values[name]`` is a tensor of the slot's dtype with
        contiguous rows (a cache slab) and row ``i`` is written from its row ``src_rows[i]``
        (rows move straight from the slab to the file, :func:`rows_move_`).

        Rows in long runs (64 rows a run on average) are one ``pwrite`` per run (a partial
        record is read first), and so are whole records lying on ``DROP_PAGES`` pages or more
        (a large scattered write-back: through the mapping every page would fault in and be
        dropped again; measured on this project's ext4 machine, kernel 6.18: 0.7-1.0 us a
        ``pwrite`` of one 192-byte record, 1.0-1.3 us a record through the mapping with its write
        fault, about 0.1 us on a page still mapped). Other scattered rows are copied through the
        file's shared mapping (``WRITE_WINDOW`` rows per copy). The pages written into stay mapped until about
        ``DROP_PAGES`` of them have been (counted over calls), or until the process's file-backed
        resident pages (``/proc/self/statm``) grew by as many since the last drop (a write fault on
        a row written by ``pwrite`` maps its whole folio, up to ``WRITE_SPAN`` bytes), then one
        ``madvise(MADV_DONTNEED)`` over their range drops them from the process; the rows stay
        in the page cache and reach the file by the kernel's writeback. So the file keeps at
        most ``DROP_PAGES`` pages plus one window's folios mapped. Why not a drop per call: one
        ``madvise`` measured 0.6-0.8 ms for the ~140 scattered pages of one write-back (a fixed
        cost plus the walk of the range, not the pages), against about 0.05 ms per write-back
        when 29 of them share a drop (docs/stores.md). An earlier measurement on ext4 gave
        6.5-8.7 us per 64-byte ``pwrite`` (each write call updating the file's times through the
        journal), against about 0.1 us per row through a mapped page.
        """
        n = rows.numel()
        if not n:
            return
        r = rows.numpy()
        self.written = max(self.written, int(r.max()) + 1)
        whole = len(values) == len(self.files) and all(k in values for k in self.files)
        if src_rows is None:
            src_rows = torch.arange(n, dtype=torch.int64)
            values = {k: v.to(self.files[k].dtype).reshape([n, self.files[k].numel]).contiguous()
                      for k, v in values.items()}
        pieces = [(self.files[k], v) for k, v in values.items()]
        runs = 1 + int(np.count_nonzero(r[1:] != r[:-1] + 1))
        if runs * 64 <= n or (whole and _page_span(r, self.record_bytes)[0] >= DROP_PAGES):
            # long runs of rows (a checkpoint restore), or whole records on more pages than the
            # mapping keeps (a write-back of scattered rows that would fault every page in and
            # drop it again: measured on this project's ext4 machine, 1.0-1.3 us a row through the
            # mapping with its write fault, 0.7-1.0 us a pwrite of one 192-byte record): one
            # pwrite per run
            rec = (torch.empty(n, self.record_bytes // self.unit.itemsize, dtype=self.unit) if whole
                   else self.read_records(rows))
            at = torch.arange(n, dtype=torch.int64)
            for slot, v in pieces:
                rows_move_(slot.part(rec), at, v, src_rows)
            rows_pwrite(self.fd, rows, rec)
            return
        if whole and len(pieces) > 1:
            # the records assembled in order first: the scattered pages of the file are then
            # written once per row (a record), not once per slot
            rec = torch.empty(n, self.record_bytes // self.unit.itemsize, dtype=self.unit)
            at = torch.arange(n, dtype=torch.int64)
            for slot, v in pieces:
                rows_move_(slot.part(rec), at, v, src_rows)
            pieces, src_rows = [(None, rec)], at
        rb = self.record_bytes
        view = self._records_view()
        try:
            for a in range(0, n, WRITE_WINDOW):
                part = rows[a:a + WRITE_WINDOW]
                for slot, v in pieces:
                    rows_move_(view if slot is None else slot.part(view), part, v, src_rows[a:a + WRITE_WINDOW])
                pages, lo, hi = _page_span(r[a:a + WRITE_WINDOW], rb)
                hi = min(len(self.mm), hi)
                self.mapped_lo = lo if not self.mapped_pages else min(self.mapped_lo, lo)
                self.mapped_hi = hi if not self.mapped_pages else max(self.mapped_hi, hi)
                self.mapped_pages += pages
                # the pages written into are a lower bound of what the mapping holds: rows
                # written in runs by pwrite lie in folios of up to WRITE_SPAN bytes, and a write
                # fault maps a whole folio (measured on this project's machine, kernel 6.18:
                # 3072 pages mapped for 256 counted). So the process's file-backed pages are
                # checked too (/proc/self/statm, ~10 us a window)
                if (self.mapped_pages >= DROP_PAGES
                        or _mapped_file_pages() - self.mapped_base >= DROP_PAGES):
                    self.drop_pages()
        finally:
            del view


    def write_range(self, name: str, begin: int, values: torch.Tensor) -> None:
        """Write ``values`` ``[n, *tail]`` to slot ``name`` of rows ``[begin, begin + n)`` (rows
        that have disk blocks): one ``pwrite`` of the records (read first, one ``pread``, when the
        table has other slots)."""
        n = values.shape[0]
        if not n:
            return
        slot = self.files[name]
        r = torch.arange(begin, begin + n, dtype=torch.int64)
        b = slot.as_units(values, n, self.unit)
        fresh = begin >= self.written
        self.written = max(self.written, begin + n)
        if len(self.files) == 1:
            rows_pwrite(self.fd, r, b)
            return
        # rows never written (growth) are zeros: no read
        u = self.unit.itemsize
        rec = torch.zeros(n, self.record_bytes // u, dtype=self.unit) if fresh else self.read_records(r)
        rec.narrow(1, slot.offset // u, slot.row_bytes // u).copy_(b)
        rows_pwrite(self.fd, r, rec)

    def zero(self) -> None:
        """Discard every value (the file emptied to sparse zeros, keeping its size)."""
        self.unmap()
        os.ftruncate(self.fd, 0)
        self.allocated = self.written = 0
        self._map_if_sized()

    def disk_bytes(self) -> int:
        """Bytes of disk the file occupies (allocated blocks; the file is sparse)."""
        return os.fstat(self.fd).st_blocks * 512 if self._fds else 0

    def close(self) -> None:
        """Close and delete the file; the table must not be used afterwards."""
        self.unmap()
        self.files.clear()
        self.record_bytes = 0
        self._finalizer()
