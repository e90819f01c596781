"""Where a dynamic table's rows live: in memory, or in files with a RAM budget (``cached_ssd``).

Store kinds carry OneEmbedding's names (docs/stores.md):

* ``device_mem`` / ``cached_host_mem``: every row of every slot in memory on the table's device
  (RowStorage's in-memory reserve; on CPU both mean RAM). The default.
* ``cached_ssd``: every slot of the table (embedding, optimizer moments, filter steps) is a flat
  file ``<persistent_path>/<table>-rank<r>-pid<p>-<k>/<slot>.rows`` holding ``[rows, *tail]``
  values in row order, mapped into the process (``mmap``, ``MAP_SHARED``, ``MADV_RANDOM``). The
  RAM cache is the set of file pages resident in the process; the budgets keep it within
  ``cache_memory_budget_mb`` (:class:`_CachePool`): every access stamps its rows' chunks
  (``CHUNK_ROWS`` rows of every slot) with a clock tick, the pages really resident are read from
  ``/proc/self/statm``, and when they and the pages an access is about to bring in pass the
  budget, the least recently stamped chunks are released (``madvise(MADV_DONTNEED)``): their
  pages leave the process (changed rows stay in the kernel's page cache and are written back to
  the file by the kernel, so nothing is lost), and a later access reads them back from the page
  cache or the file. Lookups bring their rows in by a write touch (``rows_touch_for_write_``):
  one page per row and slot, where a read fault on a shared file mapping maps neighbours too.

Why flat files and ``mmap`` rather than a key-value library (RocksDB, LMDB): rows are addressed
by the dense row numbers the id map hands out, so a row's place in a file is ``row * row_bytes``
and no second index is needed; a mapped file lets the optimizer kernels update rows in place
with no copy in or out of a cache; and the kernel's page cache and writeback already do the
read-ahead, dirty tracking and asynchronous writing a hand-written cache would repeat. What
the kernel does not do is bound the process's resident set, which is the budgets' job.

The files are working storage of one process: the id map lives in RAM, so the files mean
nothing without it. A table's directory is created empty at table creation and removed when the
table is garbage collected or the process exits normally; checkpoints (serialize/) are the
durable form. A crashed process leaves its directory behind (the name carries rank and pid).

Budget sharing: tables built from one :class:`StoreConfig` object share one budget, as the
tables of one OneEmbedding share its ``cache_memory_budget_mb``; the environment configuration
(:func:`store_from_env`) is one object per process, so every table of an unchanged RecIS script
shares it.
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

from recis_compat.ops.optim import rows_touch_for_write_

__all__ = ["STORE_TYPES", "ENV_STORE_TYPE", "ENV_PERSISTENT_PATH", "ENV_CACHE_BUDGET_MB", "CHUNK_ROWS",
           "StoreConfig", "CacheBudget", "FileSlots", "store_from_env"]

STORE_TYPES = ("device_mem", "cached_host_mem", "cached_ssd")
ENV_STORE_TYPE = "RECIS_COMPAT_STORE_TYPE"
ENV_PERSISTENT_PATH = "RECIS_COMPAT_PERSISTENT_PATH"
ENV_CACHE_BUDGET_MB = "RECIS_COMPAT_CACHE_MEMORY_BUDGET_MB"
_CHUNK_SHIFT = 6
CHUNK_ROWS = 1 << _CHUNK_SHIFT   # rows per cache chunk (x the row bytes of a slot: whole pages)
KEEP_HOT = 0.5             # a trim never goes below this fraction of the budget
TRIM_TO = 0.8              # a trim releases the least recently used rows down to this fraction of the budget
_PAGE = mmap.PAGESIZE


@dataclass(eq=False)
class StoreConfig:
    """Where a table's rows live (OneEmbedding's store options).

    Attributes:
        store_type: ``"cached_host_mem"`` (default) or ``"device_mem"``: rows in memory;
            ``"cached_ssd"``: rows in files under ``persistent_path`` with a RAM cache.
        persistent_path: directory of the files (``cached_ssd``; created if missing).
        cache_memory_budget_mb: RAM the mapped rows of all tables sharing this config may take
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


def _file_rss_bytes() -> int:
    """Bytes of file-backed pages mapped resident in this process (``/proc/self/statm``'s shared
    field: RssFile + RssShmem); 0 where it cannot be read."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[2]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0


class CacheBudget:
    """The RAM budget of the file-backed slots of the tables of one :class:`StoreConfig`.

    Attributes:
        limit_bytes: the budget.
        trims: times the process's file-backed rows were released because of this budget.
        released_bytes: resident bytes those releases gave back (measured).
    """

    def __init__(self, limit_bytes: int):
        self.limit_bytes = int(limit_bytes)
        self.trims = 0
        self.released_bytes = 0

    def resident_bytes(self) -> int:
        """Bytes of file-backed rows resident in the process now (every budget's tables; the
        process's file pages beyond those mapped before the first file-backed table)."""
        return _POOL.resident_bytes()

    # kept for the tables that register with it
    def register(self, store: "FileSlots") -> None:
        _POOL.register(store, self)

    def stamp(self, store: "FileSlots", chunks: torch.Tensor) -> None:
        _POOL.stamp(store, chunks)


class _CachePool:
    """One LRU over the chunks of every file-backed table of the process.

    Every access stamps its rows' chunks (``CHUNK_ROWS`` rows of every slot of a table) with the
    next tick of one clock. At each access the pool adds the file-backed pages actually resident
    in the process (``/proc/self/statm``, less what was resident before the first table) to the
    pages the access is about to bring in (its chunks that are not resident); when that passes
    the sum of the live budgets it releases the least recently stamped chunks
    (``madvise(MADV_DONTNEED)``, in runs) until the resident pages leave room for the access
    within ``TRIM_TO`` of the limit (never below ``KEEP_HOT`` of it), measuring again after each
    round; chunks stamped by the current access go last. So the resident rows stay within the
    budget as long as one access's new pages fit in half of it; a larger access runs above it by
    its own pages and keeps the most recently used half of the budget resident.
    """

    def __init__(self):
        self._lock = threading.RLock()
        self._tick = 0
        self._stores: "weakref.WeakKeyDictionary[FileSlots, CacheBudget]" = weakref.WeakKeyDictionary()
        self._baseline: Optional[int] = None

    def register(self, store: "FileSlots", budget: CacheBudget) -> None:
        with self._lock:
            if self._baseline is None or not len(self._stores):
                self._baseline = _file_rss_bytes()
            self._stores[store] = budget

    def limit_bytes(self) -> int:
        seen = {id(b): b.limit_bytes for b in list(self._stores.values())}
        return sum(seen.values())

    def resident_bytes(self) -> int:
        with self._lock:
            return max(0, _file_rss_bytes() - (self._baseline or 0))

    def stamp(self, store: "FileSlots", chunks: torch.Tensor) -> None:
        with self._lock:
            self._tick += 1
            st = store.chunk_stamps_locked()
            # pages this access is about to bring in: its distinct chunks that were released (or
            # new); counted over the access's chunks, not the whole stamp array
            cold = chunks[st.index_select(0, chunks) == 0]
            incoming = (torch.unique(cold).numel() if cold.numel() else 0) * store.chunk_bytes
            store.stamps_locked(chunks, self._tick)
            limit = self.limit_bytes()
            resident = self.resident_bytes()
            if resident + incoming > limit:
                # make room for the access within TRIM_TO of the budget, but keep at least
                # KEEP_HOT of it (the most recent rows): an access whose own pages pass the budget
                # then runs above it rather than releasing the rows every step uses
                target = max(int(TRIM_TO * limit) - incoming, int(KEEP_HOT * limit))
                if resident > target:
                    self._trim_locked(resident, target, store)

    def _trim_locked(self, resident: int, target: int, culprit: "FileSlots") -> None:
        stores = list(self._stores.keys())
        stamps = [s.chunk_stamps_locked() for s in stores]
        live = [torch.nonzero(st).view(-1) for st in stamps]
        ticks = torch.cat([st.index_select(0, lv) for st, lv in zip(stamps, live)])
        owner = torch.cat([torch.full((lv.numel(),), i, dtype=torch.int64) for i, lv in enumerate(live)])
        chunk = torch.cat(live)
        order = torch.argsort(ticks, stable=True)           # oldest first
        before = resident
        done = 0
        n = order.numel()
        while resident > target and done < n:
            # release about as many chunks as the excess needs at the current bytes per chunk
            per_chunk = max(1, resident // max(1, n - done))
            k = max(1, min(n - done, -(-(resident - target) // per_chunk)))
            pick = order[done:done + k]
            done += k
            for i, s in enumerate(stores):
                mine = chunk.index_select(0, pick[owner.index_select(0, pick) == i])
                if mine.numel():
                    s.release_chunks_locked(mine)
            resident = self.resident_bytes()
        if resident > target:       # nothing stamped is left: pages touched outside stamps
            for s in stores:
                s.release_all_locked()
            resident = self.resident_bytes()
        b = self._stores.get(culprit)
        if b is not None:
            b.trims += 1
            b.released_bytes += max(0, before - resident)


_POOL = _CachePool()


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
    """One slot's file and its current mapping ``[rows, *tail]`` of ``dtype``."""

    def __init__(self, path: str, tail: Sequence[int], dtype: torch.dtype):
        self.path = path
        self.tail = [int(x) for x in tail]
        self.dtype = dtype
        numel = 1
        for x in self.tail:
            numel *= x
        self.row_bytes = max(1, numel) * torch.empty((), dtype=dtype).element_size()
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        self.mm: Optional[mmap.mmap] = None
        self.tensor: Optional[torch.Tensor] = None

    def map(self, rows: int) -> torch.Tensor:
        """Size the file to ``rows`` rows (at least one; sparse: no disk blocks until written) and
        map it whole; the tensor keeps the mapping alive (older tensors keep theirs)."""
        rows = max(1, int(rows))
        size = max(_PAGE, rows * self.row_bytes)
        if os.fstat(self.fd).st_size < size:
            os.ftruncate(self.fd, size)
        self.mm = mmap.mmap(self.fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        # rows are accessed at random: no readahead, and page-cache pages created through this
        # mapping stay single pages (a fault on a large folio maps all of it, up to 2 MiB, into
        # the process: measured 12x the pages of scattered rows)
        self.mm.madvise(mmap.MADV_RANDOM)
        itemsize = torch.empty((), dtype=self.dtype).element_size()
        flat = torch.frombuffer(self.mm, dtype=self.dtype, count=rows * self.row_bytes // itemsize)
        self.tensor = flat.view([rows] + self.tail)
        return self.tensor

    def release(self, row_begin: int, row_end: int) -> None:
        """Drop the pages of rows ``[row_begin, row_end)`` from the process (data kept)."""
        if self.mm is None or row_end <= row_begin:
            return
        start = row_begin * self.row_bytes
        stop = min(row_end * self.row_bytes, len(self.mm))
        start -= start % _PAGE
        if stop > start:
            self.mm.madvise(mmap.MADV_DONTNEED, start, stop - start)

    def unmap(self) -> None:
        """Forget the mapping (it goes with the last tensor viewing it); the fd stays open."""
        self.tensor = None
        self.mm = None


def _remove_dir(path: str, fds: List[int]) -> None:
    """The table's finalizer: close its files and delete its directory. It runs at garbage
    collection or interpreter exit, where raising helps no one, so errors are ignored."""
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)
    fds.clear()
    shutil.rmtree(path, ignore_errors=True)


class FileSlots:
    """The file-backed slots of one table (``cached_ssd``): one file per slot, mapped whole,
    sized in whole reserves like the in-memory slots (growing maps a larger file; no copy).

    Args:
        config: a ``cached_ssd`` :class:`StoreConfig` (its path and shared budget).
        table: the table name (part of the directory name).
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
        self._stamps = torch.zeros(0, dtype=torch.int64)     # per chunk: last tick used, 0 = released
        self.chunk_bytes = 0                                 # bytes of one chunk over every slot
        self._fds: List[int] = []
        self._finalizer = weakref.finalize(self, _remove_dir, self.directory, self._fds)
        self.budget = config.budget()
        self.budget.register(self)

    # ---------------------------------------------------------------- files
    def map(self, name: str, rows: int, tail: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
        """The slot ``name`` as a ``[rows, *tail]`` tensor over its file (created on first use;
        a larger ``rows`` keeps every value already written)."""
        f = self.files.get(name)
        if f is None:
            f = _SlotFile(os.path.join(self.directory, _safe_name(name) + ".rows"), tail, dtype)
            self.files[name] = f
            self._fds.append(f.fd)
            self.chunk_bytes = CHUNK_ROWS * sum(x.row_bytes for x in self.files.values())
        t = f.map(rows)
        chunks = -(-max(1, rows) // CHUNK_ROWS)
        with _POOL._lock:
            if chunks > self._stamps.numel():
                grown = torch.zeros(chunks, dtype=torch.int64)
                grown[:self._stamps.numel()] = self._stamps
                self._stamps = grown
        return t

    def allocate(self, begin: int, end: int, name: Optional[str] = None) -> None:
        """Reserve disk blocks for rows ``[begin, end)`` of every slot (or of slot ``name``)
        before they are written: a full disk is then this ``OSError`` naming the table and the
        directory, not a ``SIGBUS`` when a page of a sparse mapped file cannot get a block."""
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

    def zero(self, rows: int) -> None:
        """Discard every value (files emptied; reads give zeros) keeping ``rows`` rows mapped."""
        with _POOL._lock:
            for f in self.files.values():
                os.ftruncate(f.fd, 0)
                os.ftruncate(f.fd, max(_PAGE, rows * f.row_bytes))
            self._stamps.zero_()

    def disk_bytes(self) -> int:
        """Bytes of disk the files occupy (allocated blocks; the files are sparse)."""
        return sum(os.fstat(f.fd).st_blocks * 512 for f in self.files.values())

    def close(self) -> None:
        """Close and delete the files (mappings still viewed by tensors stay readable until those
        tensors go); the table must not be used afterwards."""
        for f in self.files.values():
            f.unmap()
        self.files.clear()
        self._finalizer()

    # ---------------------------------------------------------------- cache
    def touch(self, rows: torch.Tensor, for_write: bool = False) -> None:
        """Rows ``rows`` (int64, >= 0; any order, duplicates fine) are being used. ``for_write``:
        also bring their pages in by a write access (one page per row and slot; a first read of a
        mapped file page would map up to 16 neighbours too, see ``rows_touch_for_write_``): for
        lookups, whose rows the optimizer step writes next."""
        if rows.numel():
            rows = rows.reshape(-1)
            self.budget.stamp(self, rows >> _CHUNK_SHIFT)
            if for_write:
                rows_touch_for_write_([f.tensor for f in self.files.values()], rows)

    def touch_range(self, begin: int, end: int) -> None:
        """Rows ``[begin, end)`` are being used."""
        if end > begin:
            self.budget.stamp(self, torch.arange(begin // CHUNK_ROWS, -(-end // CHUNK_ROWS), dtype=torch.int64))

    def stamped_bytes(self) -> int:
        """Bytes of this table's chunks stamped since they were last released (an upper bound of
        its resident rows)."""
        with _POOL._lock:
            return int((self._stamps > 0).sum()) * self.chunk_bytes

    # pool-side (the pool holds its lock)
    def stamps_locked(self, chunks: torch.Tensor, tick: int) -> None:
        self._stamps.index_fill_(0, chunks, tick)

    def chunk_stamps_locked(self) -> torch.Tensor:
        return self._stamps

    def release_chunks_locked(self, chunks: torch.Tensor) -> None:
        """Release the pages of ``chunks`` (int64 chunk indices), in runs of consecutive chunks
        (one ``madvise`` per run and slot), and clear their stamps."""
        if chunks.numel() == 0:
            return
        c = torch.sort(chunks).values
        brk = torch.nonzero(c[1:] != c[:-1] + 1).view(-1) + 1
        starts = torch.cat([c[:1], c.index_select(0, brk)]).tolist()
        ends = (torch.cat([c.index_select(0, brk - 1), c[-1:]]) + 1).tolist()
        for f in self.files.values():
            for a, b in zip(starts, ends):
                f.release(a * CHUNK_ROWS, b * CHUNK_ROWS)
        self._stamps.index_fill_(0, chunks, 0)

    def release_all_locked(self) -> None:
        """Release every page of every slot file and clear every stamp."""
        for f in self.files.values():
            if f.mm is not None:
                f.release(0, len(f.mm) // f.row_bytes + 1)
        self._stamps.zero_()
