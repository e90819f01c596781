"""Where a dynamic table's rows live: in memory, or in files with a RAM budget (``cached_ssd``).

Store kinds carry OneEmbedding's names (docs/stores.md):

* ``device_mem`` / ``cached_host_mem``: every row of every slot in memory on the table's device
  (RowStorage's in-memory reserve; on CPU both mean RAM). The default.
* ``cached_ssd``: every slot of the table (embedding, optimizer moments, filter steps) is a flat
  file ``<persistent_path>/<table>-rank<r>-pid<p>-<k>/<slot>.rows`` holding ``[rows, *tail]``
  values in row order (:class:`FileSlots`); the rows in use are held in a RAM cache of single
  rows (backend/row_cache.py) whose slabs stay within ``cache_memory_budget_mb``
  (:class:`CacheBudget`). Rows move between the files and the cache in sorted batches, one
  ``pread`` / ``pwrite`` per run of consecutive rows (``rows_pread_`` / ``rows_pwrite``,
  csrc/optim/rows_floor.cpp).

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

import torch

from recis_compat.ops.optim import rows_pread_, rows_pwrite

__all__ = ["STORE_TYPES", "ENV_STORE_TYPE", "ENV_PERSISTENT_PATH", "ENV_CACHE_BUDGET_MB",
           "StoreConfig", "CacheBudget", "FileSlots", "store_from_env"]

STORE_TYPES = ("device_mem", "cached_host_mem", "cached_ssd")
ENV_STORE_TYPE = "RECIS_COMPAT_STORE_TYPE"
ENV_PERSISTENT_PATH = "RECIS_COMPAT_PERSISTENT_PATH"
ENV_CACHE_BUDGET_MB = "RECIS_COMPAT_CACHE_MEMORY_BUDGET_MB"
WRITE_WINDOW = 8192        # rows copied through a file mapping per index_copy_
DROP_PAGES = 4096          # pages of a file mapping written into before they are dropped (16 MiB at 4 KiB)
_PAGE = mmap.PAGESIZE


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
        over_budget_bytes: the largest excess of the caches over the budget so far (0: never).
        version: changes whenever a demand changes (caches then check their share).
    """

    def __init__(self, limit_bytes: int):
        self.limit_bytes = int(limit_bytes)
        self.misses = 0
        self.evictions = 0
        self.trims = 0
        self.writebacks = 0
        self.over_budget_bytes = 0
        self.version = 0
        self._held: "weakref.WeakKeyDictionary[object, int]" = weakref.WeakKeyDictionary()
        self._demand: "weakref.WeakKeyDictionary[object, int]" = weakref.WeakKeyDictionary()
        self._level: Optional[int] = None
        self._lock = threading.Lock()

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


class _SlotFile:
    """One slot's file: rows ``[*tail]`` of ``dtype``, row ``r`` at byte ``r * row_bytes``; and
    a shared mapping of it for scattered writes (:meth:`FileSlots.write`)."""

    def __init__(self, path: str, tail: Sequence[int], dtype: torch.dtype):
        self.path = path
        self.tail = [int(x) for x in tail]
        self.dtype = dtype
        numel = 1
        for x in self.tail:
            numel *= x
        self.numel = max(1, numel)
        self.row_bytes = self.numel * torch.empty((), dtype=dtype).element_size()
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        self.mm: Optional[mmap.mmap] = None
        # pages of the mapping written into since they were last dropped (an upper bound) and
        # the byte range they lie in
        self.mapped_pages = 0
        self.mapped_lo = self.mapped_hi = 0

    def resize(self, rows: int) -> None:
        """Size the file to ``rows`` rows (sparse) and map it whole."""
        self.unmap()
        os.ftruncate(self.fd, rows * self.row_bytes)
        self.mm = mmap.mmap(self.fd, rows * self.row_bytes, flags=mmap.MAP_SHARED,
                            prot=mmap.PROT_READ | mmap.PROT_WRITE)
        self.mm.madvise(mmap.MADV_RANDOM)       # no readahead around the written rows

    def rows_view(self) -> torch.Tensor:
        """The mapping as ``[rows, *tail]`` (a temporary view: drop it before :meth:`unmap`)."""
        rows = len(self.mm) // self.row_bytes
        return torch.frombuffer(self.mm, dtype=self.dtype, count=rows * self.numel).view([rows] + self.tail)

    def drop_pages(self) -> None:
        """Unmap the pages written into since the last drop (one ``madvise(MADV_DONTNEED)``
        over their range; the rows stay in the page cache and reach the file by the kernel's
        writeback)."""
        if self.mapped_pages and self.mm is not None:
            self.mm.madvise(mmap.MADV_DONTNEED, self.mapped_lo, self.mapped_hi - self.mapped_lo)
        self.mapped_pages = 0
        self.mapped_lo = self.mapped_hi = 0

    def unmap(self) -> None:
        if self.mm is not None:
            self.mm.close()
            self.mm = None
        self.mapped_pages = 0
        self.mapped_lo = self.mapped_hi = 0


def _remove_dir(path: str, fds: List[int]) -> None:
    """The table's finalizer: close its files and delete its directory. It runs at garbage
    collection or interpreter exit, where raising helps no one, so errors are ignored."""
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)
    fds.clear()
    shutil.rmtree(path, ignore_errors=True)


class FileSlots:
    """The files of one ``cached_ssd`` table: one flat file per slot, sized in whole reserves
    like the in-memory slots (sparse: a file takes disk blocks only for rows given them by
    :meth:`allocate`). Rows move in and out in batches (:meth:`read`, :meth:`write`: one
    ``rows_pread_`` / ``rows_pwrite`` op call per slot, csrc/optim/rows_floor.cpp); the RAM cache
    in front of them is backend/row_cache.py.

    Args:
        config: a ``cached_ssd`` :class:`StoreConfig` (its path and shared budget).
        table: the table name (part of the directory name, error messages).
    """

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
        self.files: Dict[str, _SlotFile] = {}
        self.rows = 0                       # every file holds at least this many rows
        self._fds: List[int] = []
        self._finalizer = weakref.finalize(self, _remove_dir, self.directory, self._fds)
        self.budget = config.budget()

    # ---------------------------------------------------------------- files
    def add(self, name: str, tail: Sequence[int], dtype: torch.dtype) -> _SlotFile:
        """Create the file of slot ``name`` (``rows`` rows, all zeros: a sparse file)."""
        if name in self.files:
            raise ValueError(f"table {self.table!r}: slot file {name!r} exists already")
        f = _SlotFile(os.path.join(self.directory, _safe_name(name) + ".rows"), tail, dtype)
        self.files[name] = f
        self._fds.append(f.fd)
        f.resize(max(1, self.rows))
        return f

    def resize(self, rows: int) -> None:
        """Grow every file to hold ``rows`` rows (new rows read as zeros; no disk blocks yet)."""
        rows = int(rows)
        if rows <= self.rows:
            return
        for f in self.files.values():
            f.resize(rows)
        self.rows = rows

    def allocate(self, begin: int, end: int, name: Optional[str] = None) -> None:
        """Reserve disk blocks for rows ``[begin, end)`` of every slot (or of slot ``name``)
        before they are written: a full disk is then this ``OSError`` naming the table and the
        directory, here rather than in the middle of a cache write-back."""
        if end <= begin:
            return
        for n, f in self.files.items():
            if name is not None and n != name:
                continue
            try:
                os.posix_fallocate(f.fd, begin * f.row_bytes, (end - begin) * f.row_bytes)
            except OSError as e:
                raise OSError(e.errno, f"table {self.table!r}: cannot reserve disk for rows [{begin}, {end}) of slot "
                                       f"{n!r} ({(end - begin) * f.row_bytes} bytes) under {self.directory!r}: "
                                       f"{e.strerror}; free space under persistent_path or use a smaller table") \
                    from e

    def read(self, name: str, rows: torch.Tensor) -> torch.Tensor:
        """Rows ``rows`` (int64 ``[R]``, ``0 <= row < self.rows``; sorted: runs of consecutive
        rows are one read each) of slot ``name`` as a new ``[R, *tail]`` tensor."""
        f = self.files[name]
        out = torch.empty([rows.numel()] + f.tail, dtype=f.dtype)
        if rows.numel():
            rows_pread_(f.fd, rows, out)
        return out

    def write(self, name: str, rows: torch.Tensor, values: torch.Tensor) -> None:
        """Write ``values`` ``[R, *tail]`` to the distinct rows ``rows`` (int64 ``[R]``, best
        sorted, rows that have disk blocks, see :meth:`allocate`) of slot ``name``. Rows in long runs
        (64 rows a run on average) are written by one ``pwrite`` per run.

        Scattered rows are copied through the file's shared mapping (``WRITE_WINDOW`` rows per
        copy). The pages written into stay mapped until about ``DROP_PAGES`` of them have been
        (counted over calls, an upper bound), then one ``madvise(MADV_DONTNEED)`` over their
        range drops them from the process; the rows stay in the page cache and reach the file
        by the kernel's writeback. So a slot file keeps at most ``DROP_PAGES`` pages plus one
        window's mapped (16 MiB + 32 MiB at 4 KiB pages and rows up to a page). Why not a drop
        per call: one ``madvise`` measured 0.6-0.8 ms for the ~140 scattered pages of one
        write-back (a fixed cost plus the walk of the range, not the pages), against about
        0.05 ms per write-back when 29 of them share a drop (docs/stores.md). A ``pwrite`` per
        row costs more: measured on ext4, 6.5-8.7 us per 64-byte row (each write call updates
        the file's times through the journal) against about 0.1 us per row through the mapping.
        """
        if not rows.numel():
            return
        f = self.files[name]
        values = values.to(f.dtype).reshape([rows.numel()] + f.tail)
        runs = 1 + int((rows[1:] != rows[:-1] + 1).sum())
        if runs * 64 <= rows.numel():   # long runs of rows (a checkpoint restore): one pwrite each
            rows_pwrite(f.fd, rows, values.contiguous())
            return
        view = f.rows_view()
        try:
            for a in range(0, rows.numel(), WRITE_WINDOW):
                part = rows[a:a + WRITE_WINDOW]
                view.index_copy_(0, part, values[a:a + WRITE_WINDOW])
                start = part * f.row_bytes
                first = torch.div(start, _PAGE, rounding_mode="floor")
                end = torch.div(start + (f.row_bytes - 1), _PAGE, rounding_mode="floor")
                # pages written into, at most: the first pages (exact for sorted rows: changes
                # between neighbours) plus every page past a row's first
                pages = 1 + int((first[1:] != first[:-1]).sum()) + int((end - first).sum())
                lo = int(first.min()) * _PAGE
                hi = min(len(f.mm), (int(end.max()) + 1) * _PAGE)
                f.mapped_lo = lo if not f.mapped_pages else min(f.mapped_lo, lo)
                f.mapped_hi = hi if not f.mapped_pages else max(f.mapped_hi, hi)
                f.mapped_pages += pages
                if f.mapped_pages >= DROP_PAGES:
                    f.drop_pages()
        finally:
            del view

    def write_range(self, name: str, begin: int, values: torch.Tensor) -> None:
        """Write ``values`` ``[n, *tail]`` to rows ``[begin, begin + n)`` of slot ``name`` (one
        ``pwrite``: a long run costs one call)."""
        n = values.shape[0]
        if n:
            f = self.files[name]
            rows_pwrite(f.fd, torch.arange(begin, begin + n, dtype=torch.int64), values.to(f.dtype).contiguous())

    def zero(self) -> None:
        """Discard every value (files emptied to sparse zeros, keeping their size)."""
        for f in self.files.values():
            f.unmap()
            os.ftruncate(f.fd, 0)
            f.resize(max(1, self.rows))

    def disk_bytes(self) -> int:
        """Bytes of disk the files occupy (allocated blocks; the files are sparse)."""
        return sum(os.fstat(f.fd).st_blocks * 512 for f in self.files.values())

    def close(self) -> None:
        """Close and delete the files; the table must not be used afterwards."""
        for f in self.files.values():
            f.unmap()
        self.files.clear()
        self._finalizer()
