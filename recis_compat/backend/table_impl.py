"""DynamicTableImpl: the state of one dynamic embedding table (RecIS's ``HashtableImpl`` adds
its method names on top of it in nn/modules/hashtable_impl.py).

It joins the exact id->row map (:class:`~recis_compat.backend.id_map.IdMap`, csrc) to the
growable row storage (:class:`~recis_compat.backend.row_storage.RowStorage`: slot
``"embedding"`` plus optimizer and filter slots) and buffers the sparse gradients that the
lookup's backward pass hands it until the sparse optimizer takes them.

This object is what ``filter_out_sparse_param`` returns and sparse optimizers update; it is not
an ``nn.Module`` (its tensors change shape as the table grows, see ``IdMap``'s docstring).
Shapes: ids are int64 ``[N]``; rows int64 ``[N]`` (``-1`` = absent); embeddings
``[N, dim]`` of the table dtype.

Thread safety (docs/reliability.md, "Thread safety"): one ``threading.RLock`` per table,
:attr:`DynamicTableImpl.lock`, guards the id map, the row storage (both are given the same lock)
and the gradient buffer. Every method holds it, so each call (a find-or-insert with its growth
and initial values, an upsert, an eviction, a gradient hand-over, a checkpoint export) is atomic:
lookups, backward passes and optimizer steps from several threads give, as a set, what a serial
run of the same calls gives. Callers that need several calls to be atomic together (the sparse
optimizers: take the gradients, then update the rows) hold :attr:`lock` around them; it is
reentrant.

File-backed tables (``cached_ssd``, backend/row_cache.py): rows are the id map's stable rows
in the files everywhere in this class (lookups, ``read_slot``, ``update_slot``, ``fill_slot``,
``delete``, ``ids_map``, change tracking, checkpoints); the slot tensors (:meth:`get_slot`,
:attr:`embedding`) are the RAM cache's slabs, and :meth:`grad_rows` (what the optimizer kernels
index them with) returns the rows' cache slots, valid until the next call on the table. In
memory both are the same rows.

Change tracking (incremental checkpoints, docs/reliability.md "Incremental checkpoints"): after
:meth:`DynamicTableImpl.track_changes` the table records which rows were written since the last
:meth:`DynamicTableImpl.take_changes` (new ids, rows the sparse optimizer takes gradients of,
rows written by ``insert`` / ``update_slot`` / lookup listeners such as the step filter) in a
bitmap over rows, keeps a row -> id array so the changed rows' ids are found without exporting
the whole id map, and lists the ids evicted by ``delete`` (tombstones) and whether the table was
cleared. Writes made straight into a slot tensor (``get_slot(...)[rows] = ...``) are not seen.

Several tables at once (:func:`find_or_insert_rows_many`, what an EmbeddingEngine's run of
in-memory tables inserts through): the id-map inserts of all of them in one csrc call and the
per-id U(low, high) initial rows (an ``init_rows`` with ``uniform_params``, see
:class:`UniformIdInit`) of all of them in another; rows, ids, counters, change logs and values
are those of :meth:`DynamicTableImpl.find_or_insert_rows` per table. Tables where that cannot
apply (file-backed, an id map that must grow for the batch) take the per-table call, in order.
"""
from __future__ import annotations

import itertools
import threading
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from recis_compat.backend.children import ChildrenInfo
from recis_compat.backend.id_map import IdMap
from recis_compat.backend.locking import OwnLock, locked
from recis_compat.backend.row_storage import RowStorage
from recis_compat.backend.row_store import StoreConfig, store_from_env
from recis_compat.backend.slices import SLICE_SIZE
from recis_compat.ops.id_map import unique_first_seen
from recis_compat.ops.multi_table import counter_uniform_rows_many_, find_or_insert_many

__all__ = ["DynamicTableImpl", "TableChanges", "UniformIdInit", "find_or_insert_rows_many"]

_EPOCHS = itertools.count(1)     # change-log epochs, unique within the process


class _ChangeLog:
    """What changed since the last :meth:`DynamicTableImpl.take_changes` (see the module
    docstring). ``row_ids[r]`` is the id stored in row ``r`` (-1: free); ``dirty[r]`` marks rows
    written; ``deleted`` holds int64 tensors of evicted ids."""

    def __init__(self, row_ids: torch.Tensor, epoch: int):
        self.row_ids = row_ids
        self.dirty = torch.zeros(row_ids.numel(), dtype=torch.bool, device=row_ids.device)
        self.deleted: List[torch.Tensor] = []
        self.cleared = False
        self.epoch = epoch

    def fit(self, rows_needed: int) -> None:
        n = self.row_ids.numel()
        if rows_needed > n:
            extra = max(rows_needed, 2 * n) - n
            self.row_ids = torch.cat([self.row_ids, self.row_ids.new_full((extra,), -1)])
            self.dirty = torch.cat([self.dirty, self.dirty.new_zeros(extra)])

    def to(self, device) -> None:
        self.row_ids = self.row_ids.to(device)
        self.dirty = self.dirty.to(device)
        self.deleted = [t.to(device) for t in self.deleted]


class TableChanges:
    """One table's changes between two :meth:`DynamicTableImpl.take_changes` calls.

    Attributes:
        epoch: the epoch the changes were recorded in (the value :meth:`take_changes` or
            :meth:`track_changes` returned when that epoch started).
        new_epoch: the epoch recording starts in now.
        ids: int64 ``[k]``: ids whose rows changed and are still stored.
        values: ``{slot: Tensor[k, *tail]}``: every slot's values of those ids (copies).
        deleted: int64 ``[d]``: ids evicted (or deleted) since; may include ids stored again later
            (apply deletions before upserts).
        cleared: the table was cleared (apply: clear, then the rest).
    """

    def __init__(self, epoch: int, new_epoch: int, ids: torch.Tensor, values: Dict[str, torch.Tensor],
                 deleted: torch.Tensor, cleared: bool):
        self.epoch, self.new_epoch = epoch, new_epoch
        self.ids, self.values, self.deleted, self.cleared = ids, values, deleted, cleared


class UniformIdInit:
    """An ``init_rows`` (see :class:`DynamicTableImpl`) that also says it draws U(low, high)
    from counter uniforms, so several tables' new rows can be written by one csrc call
    (:func:`find_or_insert_rows_many`).

    Args:
        fn: ``f(ids [k]) -> Tensor[k, dim]``, the initial rows (what a call returns).
        params: ``() -> (low, high, seed)`` or None, read at every insert (a table's seed may be
            reloaded from a checkpoint): the promise that ``fn(ids)`` equals
            ``(low + (high - low) * counter_uniform(ids, seed, dim)).to(float32).to(dtype)``
            (recis_compat/ops/counter_init.py). None: ``fn`` is called. A table checks the
            promise on a few ids the first time it sees a set of parameters and raises
            RuntimeError naming itself when it does not hold.

    Any ``init_rows`` with a ``uniform_params()`` method of that meaning works the same way.
    """

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor],
                 params: Callable[[], Optional[Tuple[float, float, int]]]):
        self.fn = fn
        self.params = params

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        return self.fn(ids)

    def uniform_params(self) -> Optional[Tuple[float, float, int]]:
        return self.params()


# ids a table's uniform_params promise is checked on (first use of a set of parameters)
_PROBE_IDS = (0, 1, -1, 987_654_321, -(1 << 63), (1 << 63) - 1, 1 << 40)


class DynamicTableImpl(OwnLock):
    """Id map + row storage + gradient buffer of one table.

    Args:
        name: table name (key in state dicts, prefix of checkpoint tensors).
        dim: embedding width (the ``"embedding"`` slot is ``[rows, dim]``).
        dtype: embedding dtype; an integer dtype makes the table read-only for lookups.
        device: where the id map and the slots live.
        sample_rows: ``f(k) -> Tensor[k, dim]``, the initial values of k new rows.
        block_size: rows per storage block (capacity grows in whole blocks).
        children: the table's :class:`ChildrenInfo`.
        init_rows: ``f(ids [k]) -> Tensor[k, dim]``, the initial values of the rows of newly
            inserted ids (a pure function of the id, so runs are reproducible whatever the
            order or rank rows are created in); None: rows start from ``sample_rows`` draws.
        store: where the rows live (backend/row_store.py: in memory, or ``cached_ssd`` files with
            a RAM budget); None: :func:`~recis_compat.backend.row_store.store_from_env` (the
            ``RECIS_COMPAT_STORE_TYPE`` variables), in memory when they are unset.

    Attributes:
        lock: the table's reentrant lock (see the module docstring); every method holds it.
    """

    def __init__(self, name: str, dim: int, dtype: torch.dtype, device,
                 sample_rows: Optional[Callable[[int], torch.Tensor]], block_size: int, children: ChildrenInfo,
                 init_rows: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
                 store: Optional[StoreConfig] = None):
        self.name = name
        self.dim = int(dim)
        self.dtype = dtype
        self.block_size = int(block_size)
        self.children = children
        # (begin, end, size): the slice range of ids (``id & 0xFFFF``) this shard owns; written
        # only by set_slice
        self.slice = (0, SLICE_SIZE, SLICE_SIZE)
        self._lock = threading.RLock()
        store = store if store is not None else store_from_env()
        if store is not None and store.persistent and torch.device(device).type != "cpu":
            raise ValueError(f"table {name!r}: store_type 'cached_ssd' keeps rows in host memory and files; the "
                             f"table's device must be the CPU, got {device}")
        self.id_map = IdMap(device, lock=self._lock)
        self.init_rows = init_rows
        self.storage = RowStorage(self.dim, dtype, device, None if init_rows is not None else sample_rows,
                                  block=self.block_size, lock=self._lock,
                                  store=store, name=name)
        self._grad_rows: List[torch.Tensor] = []
        self._grad_values: List[torch.Tensor] = []
        self._grad_unique: List[bool] = []
        self.evicted_total = 0     # ids evicted by delete() over the table's life
        # set by the sharded twin: the group whose ranks hold the other shards of this table
        self.process_group = None
        # callables f(rows) run after every training lookup with the rows looked up (filters)
        self.lookup_listeners: List[Callable[[torch.Tensor], None]] = []
        # change log for incremental checkpoints (None: not tracking); see track_changes
        self._changes: Optional[_ChangeLog] = None
        # the init_rows.uniform_params() value checked against init_rows (uniform_init_params)
        self._uniform_checked: Optional[Tuple[float, float, int]] = None

    def __setstate__(self, state):
        # a copy gets its own lock (OwnLock), shared again by its map and rows
        super().__setstate__(state)
        self.id_map._lock = self.storage._lock = self._lock

    @property
    def lock(self) -> threading.RLock:
        """The table's reentrant lock (also held by its id map and row storage)."""
        return self._lock

    # ------------------------------------------------------------------ properties
    @property
    def device(self) -> torch.device:
        return self.id_map.device

    @property
    def read_only(self) -> bool:
        """Integer tables are never inserted into by lookups and take no gradients."""
        return not self.dtype.is_floating_point

    @property
    def embedding(self) -> torch.Tensor:
        """The ``"embedding"`` slot ``[capacity, dim]`` (file-backed: the cache's slab, see
        :meth:`get_slot`)."""
        return self.storage.embedding

    def __len__(self) -> int:
        return len(self.id_map)

    def __repr__(self) -> str:
        return f"DynamicTableImpl({self.name!r}, dim={self.dim}, dtype={self.dtype}, ids={len(self)}, " \
               f"capacity={self.storage.capacity}, slots={list(self.storage.slots)})"

    def set_slice(self, begin: int, end: int, size: int = SLICE_SIZE) -> None:
        """Record the slice range ``[begin, end)`` of ``size`` slices whose ids this table holds
        (read by checkpoint save/load: backend/slices.py owns the slicing). The one writer of
        :attr:`slice`."""
        begin, end, size = int(begin), int(end), int(size)
        if not 0 <= begin <= end <= size:
            raise ValueError(f"table {self.name!r}: slice range must satisfy 0 <= begin <= end <= size, "
                             f"got ({begin}, {end}, {size})")
        self.slice = (begin, end, size)

    def check_ids(self, ids: torch.Tensor, what: str) -> torch.Tensor:
        """``ids`` flattened to int64 ``[N]`` on the table's device; TypeError naming the table and
        ``what`` (the operation) for anything but an int64 tensor."""
        if not isinstance(ids, torch.Tensor) or ids.dtype != torch.int64:
            got = ids.dtype if isinstance(ids, torch.Tensor) else type(ids).__name__
            raise TypeError(f"table {self.name!r}: {what} expects int64 ids, got {got}")
        return ids.reshape(-1).to(self.device)

    # ------------------------------------------------------------------ rows
    @locked
    def find_rows(self, ids: torch.Tensor) -> torch.Tensor:
        """Rows of ``ids`` (``-1`` where absent); nothing is inserted."""
        rows = self.id_map.find(self.check_ids(ids, "find"))
        if self.storage.file_backed:
            self.storage.note_access(rows[rows >= 0], lookup=True)
        return rows

    @locked
    def find_or_insert_rows(self, ids: torch.Tensor, initialize: bool = True, distinct: bool = False,
                            expect_new: bool = False) -> torch.Tensor:
        """Rows of ``ids``; absent ids get new rows with their initial values (``initialize=False``:
        the caller writes them). ``distinct``: ``ids`` holds no repeats; ``expect_new``: every id
        is expected new and distinct (a growing table's batch); both hints of
        ``IdMap.find_or_insert``, neither changes the result."""
        ids = self.check_ids(ids, "insert")
        size0, next0 = len(self.id_map), self.id_map.num_rows_allocated()
        rows, is_new = self.id_map.find_or_insert(ids, distinct=distinct, expect_new=expect_new)
        size1, next1 = len(self.id_map), self.id_map.num_rows_allocated()
        self.storage.ensure_capacity(next1)
        # file-backed: the rows come into the RAM cache first, so new rows' initial values are
        # written there rather than into the files and read back
        self.storage.note_access(rows, lookup=True)
        log = self._changes
        n, num_new = ids.numel(), size1 - size0
        if num_new and ((initialize and self.init_rows is not None) or log is not None):
            # the map numbers new ids in order of first occurrence, from the free stack first:
            # when every id is new and none took a freed row, the rows are next0, next0 + 1, ...
            consecutive = num_new == n and next1 - next0 == n
            if num_new == n:
                new_ids, new_rows = ids, rows            # every id new (a growing table's batch)
            else:
                new_pos = torch.nonzero(is_new).view(-1)     # one pass over the mask for ids and rows
                new_ids = ids.index_select(0, new_pos)
                new_rows = rows.index_select(0, new_pos)
            self._log_inserted(new_ids, new_rows)
            if initialize and self.init_rows is not None:
                vals = self.init_rows(new_ids).reshape(new_ids.numel(), self.dim)
                if consecutive and not self.storage.file_backed:
                    # one copy into the row range (what write_rows' index_copy_ writes)
                    emb = self.storage.slot("embedding")
                    emb.narrow(0, next0, n).copy_(vals.to(emb.dtype).to(emb.device))
                else:
                    self.storage.write_rows("embedding", new_rows, vals)
        return rows

    def _log_inserted(self, new_ids: torch.Tensor, new_rows: torch.Tensor) -> None:
        """Change log (when tracking): rows ``new_rows`` now hold the new ids ``new_ids``."""
        log = self._changes
        if log is not None and new_ids.numel():
            log.fit(self.id_map.num_rows_allocated())
            log.row_ids.index_copy_(0, new_rows, new_ids)
            log.dirty.index_fill_(0, new_rows, True)

    @locked
    def uniform_init_params(self) -> Optional[Tuple[float, float, int]]:
        """``(low, high, seed)`` when the new rows' values may be written by
        ``counter_uniform_rows_many_`` (``init_rows.uniform_params()``, see :class:`UniformIdInit`;
        float32/float64 tables), else None. The first time a set of parameters is seen it is
        checked against ``init_rows`` on a few ids; RuntimeError naming the table when they
        differ (a wrong promise would change the table's values silently)."""
        get = getattr(self.init_rows, "uniform_params", None)
        if get is None or self.dtype not in (torch.float32, torch.float64):
            return None
        params = get()
        if params is None:
            return None
        low, high, seed = float(params[0]), float(params[1]), int(params[2])
        params = (low, high, seed)
        if getattr(self, "_uniform_checked", None) != params:
            if not low <= high:
                raise RuntimeError(f"table {self.name!r}: init_rows.uniform_params() gave low={low} > high={high}")
            probe = torch.tensor(_PROBE_IDS, dtype=torch.int64, device=self.device)
            want = self.init_rows(probe).reshape(probe.numel(), self.dim).to(self.dtype)
            got = torch.zeros((probe.numel(), self.dim), dtype=self.dtype, device=self.device)
            counter_uniform_rows_many_([got], [torch.arange(probe.numel(), device=self.device)], [probe],
                                       [seed], [low], [high])
            if not torch.equal(got, want):
                raise RuntimeError(f"table {self.name!r}: init_rows.uniform_params() = {params} promises "
                                   f"U({low}, {high}) counter-uniform rows with seed {seed}, but init_rows "
                                   f"returns other values (for ids {list(_PROBE_IDS[:2])}: {want[:2].tolist()} "
                                   f"against {got[:2].tolist()})")
            self._uniform_checked = params
        return params

    @locked
    def gather(self, rows: torch.Tensor, expand: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``embedding[rows]`` with zero vectors where ``rows < 0`` (no autograd); with ``expand``
        (int64 ``[N]``, positions into ``rows``) ``embedding[rows[expand]]`` ``[N, dim]``, found
        through ``rows`` (a file-backed table translates ``rows``, not the ``N`` positions, to its
        cache slots). File-backed tables read the rows through their RAM cache
        (backend/row_cache.py)."""
        storage = self.storage
        n = rows.numel() if expand is None else expand.numel()
        if n == 0 or storage.capacity == 0:
            # nothing stored yet (fresh table, read-only lookup): every row is absent
            return storage.embedding.new_zeros((n, self.dim))
        missing = rows < 0
        if bool(missing.any()):
            out = storage.gather("embedding", rows.clamp(min=0), expand)
            if expand is not None:
                missing = missing.index_select(0, expand)
            return out.masked_fill_(missing.unsqueeze(1), 0)
        return storage.gather("embedding", rows, expand)

    @locked
    def notify_lookup(self, rows: torch.Tensor) -> None:
        """Tell the filters which rows a training lookup touched (absent rows dropped)."""
        if self.lookup_listeners:
            rows = rows[rows >= 0]
            for f in self.lookup_listeners:
                f(rows)
            self._note_written(rows)

    # ------------------------------------------------------------------ writes
    @locked
    def insert(self, ids: torch.Tensor, embeddings: torch.Tensor) -> None:
        """Upsert ``ids`` with ``embeddings`` ``[N, dim]`` (dtype must equal the table's)."""
        ids = self.check_ids(ids, "insert")
        if embeddings.dtype != self.dtype:
            raise TypeError(f"table {self.name!r}: insert got {embeddings.dtype} embeddings, the table is {self.dtype}")
        if embeddings.dim() < 1 or embeddings.shape[0] != ids.numel() or embeddings.numel() != ids.numel() * self.dim:
            raise ValueError(f"table {self.name!r}: insert needs embeddings [{ids.numel()}, {self.dim}], "
                             f"got {tuple(embeddings.shape)}")
        rows = self.find_or_insert_rows(ids, initialize=False)
        self.storage.write_rows("embedding", rows, embeddings.reshape(ids.numel(), self.dim))
        self._note_written(rows)

    @locked
    def delete(self, ids: torch.Tensor, index: Optional[torch.Tensor] = None,
               preserve_slot: Optional[str] = None) -> torch.Tensor:
        """Evict ``ids``: remove them from the map and re-initialise their rows in every slot
        but ``preserve_slot``; the rows are reused by later inserts. Returns the freed rows.
        ``index`` (the rows, as RecIS passes them) is accepted and not needed."""
        ids = self.check_ids(ids, "delete")
        rows_before = self.id_map.find(ids) if self.init_rows is not None else None
        freed = self.id_map.delete(ids)
        self.evicted_total += int(freed.numel())
        log = self._changes
        if log is not None and freed.numel():
            log.deleted.append(log.row_ids.index_select(0, freed))
            log.row_ids.index_fill_(0, freed, -1)
            log.dirty.index_fill_(0, freed, False)
        self.storage.reset_rows(freed, preserve=() if preserve_slot is None else (preserve_slot,))
        if rows_before is not None and preserve_slot != "embedding":
            present = rows_before >= 0
            if bool(present.any()):
                self.storage.write_rows("embedding", rows_before[present],
                                        self.init_rows(ids[present]).reshape(-1, self.dim))
        return freed

    @locked
    def clear(self) -> None:
        """Remove every id and every row of every slot; drop pending gradients."""
        self.id_map.clear()
        self.storage.clear()
        self.clear_grad()
        log = self._changes
        if log is not None:
            log.row_ids.fill_(-1)
            log.dirty.fill_(False)
            log.deleted.clear()
            log.cleared = True

    # ------------------------------------------------------------------ queries
    @locked
    def ids(self) -> torch.Tensor:
        """Every stored id (encoded for coalesced tables), ordered by row."""
        return self.id_map.ids_and_rows()[0]

    @locked
    def ids_map(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(ids, rows)`` int64, ordered by row."""
        return self.id_map.ids_and_rows()

    def children_info(self) -> ChildrenInfo:
        return self.children

    # ------------------------------------------------------------------ slots
    def add_slot(self, name: str, tail: Sequence[int], dtype: torch.dtype, init: float = 0.0) -> torch.Tensor:
        """Per-row tensor ``[capacity, *tail]`` filled with ``init`` for new and evicted rows."""
        return self.storage.add_slot(name, tail, dtype, init)

    def get_slot(self, name: str) -> torch.Tensor:
        """The slot tensor the optimizer kernels index with :meth:`grad_rows`'s rows: every row
        ``[capacity, *tail]`` in memory; file-backed tables: the RAM cache's slab ``[cached rows,
        *tail]`` (backend/row_cache.py; read rows by id with :meth:`read_slot`)."""
        return self.storage.slot(name)

    def read_slot(self, name: str, rows: torch.Tensor) -> torch.Tensor:
        """``slot[rows]`` (a copy; rows int64 ``>= 0``), in chunks that respect a file-backed
        table's RAM budget."""
        rows = rows.reshape(-1)
        step = 1 << 20
        if rows.numel() <= step:
            return self.storage.read_rows(name, rows)
        return torch.cat([self.storage.read_rows(name, rows[b:b + step]) for b in range(0, rows.numel(), step)])

    def close(self) -> None:
        """Release the row files of a file-backed table now (otherwise when it is garbage
        collected); the table must not be used afterwards."""
        self.storage.close()

    @locked
    def update_slot(self, name: str, rows: torch.Tensor, values: torch.Tensor) -> None:
        """``slot[rows] = values`` (rows int64 ``[N]`` from a lookup, distinct; values
        ``[N, *tail]``)."""
        self.storage.write_rows(name, rows, values)
        self._note_written(rows.reshape(-1))

    @locked
    def fill_slot(self, name: str, rows: torch.Tensor, value) -> None:
        """``slot[rows] = value`` for every element of the rows ``rows`` (int64 ``[N]`` from a
        lookup, distinct): how lookup listeners such as the step filter stamp rows."""
        rows = rows.reshape(-1)
        if not rows.numel():
            return
        if self.storage.file_backed:
            spec = self.storage.specs[name]
            self.storage.write_rows(name, rows, torch.full([rows.numel()] + spec.tail, value, dtype=spec.dtype))
        else:
            slot = self.storage.slot(name)
            slot.index_fill_(0, rows.to(slot.device), value)
        self._note_written(rows)

    # ------------------------------------------------------------------ gradients
    def accept_grad(self, grad_index: torch.Tensor, grad: torch.Tensor, unique: bool = False,
                    present: bool = False) -> None:
        """Buffer ``grad`` ``[N, dim]`` for rows ``grad_index`` (int64 ``[N]``). Rows ``< 0``
        (ids a ReadOnly lookup did not find) are dropped (RecIS passes them on: Q23).
        ``unique=True`` promises the rows are distinct (lookups of deduplicated ids), which lets
        :meth:`grad_rows` skip the merge when this is the only buffered gradient;
        ``present=True`` that none is ``< 0`` (rows of an inserting lookup), which skips the
        check."""
        if grad_index.dtype != torch.int64:
            raise TypeError(f"table {self.name!r}: accept_grad index must be int64, got {grad_index.dtype}")
        if grad.dtype != self.dtype:
            raise TypeError(f"table {self.name!r}: accept_grad got {grad.dtype} gradients, the table is {self.dtype}")
        grad = grad.reshape(grad_index.numel(), self.dim)
        keep = None if present else grad_index >= 0
        if keep is not None and not bool(keep.all()):
            grad_index, grad = grad_index[keep], grad[keep]
        if grad_index.numel():
            with self.lock:
                self._grad_rows.append(grad_index)
                self._grad_values.append(grad)
                self._grad_unique.append(bool(unique))

    @locked
    def has_grad(self) -> bool:
        return bool(self._grad_rows)

    @locked
    def grad_rows(self, acc_step: int = 1) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
        """``(rows [U] int64, grad [U, dim])``: the buffered gradients summed per row (distinct
        rows, in first-occurrence order) and divided by ``acc_step``; None when nothing was
        buffered. ``rows`` index the slot tensors (:meth:`get_slot`, :attr:`embedding`), which
        the caller updates next: file-backed tables give the rows' cache slots, read in by this
        call and valid until the next call on the table (hold :attr:`lock` from here to the
        update)."""
        got = self.summed_grad(acc_step)
        if got is None:
            return None
        rows, vals = got
        self._note_written(rows)
        return self.storage.kernel_rows(rows), vals

    @locked
    def summed_grad(self, acc_step: int = 1) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
        """The buffered gradients summed per row and divided by ``acc_step``: ``(rows [U] int64,
        grad [U, dim])``, distinct rows in first-occurrence order, as lookups and
        :meth:`ids_map` give rows (no cache slots; nothing is marked changed); None when
        nothing was buffered. :meth:`grad_rows` is the optimizers' form."""
        if not self._grad_rows:
            return None
        if len(self._grad_rows) == 1 and self._grad_unique[0]:
            vals = self._grad_values[0]
            return self._grad_rows[0], (vals / float(acc_step) if acc_step != 1 else vals)
        rows = torch.cat(self._grad_rows) if len(self._grad_rows) > 1 else self._grad_rows[0]
        vals = torch.cat(self._grad_values) if len(self._grad_values) > 1 else self._grad_values[0]
        uniq, inverse = unique_first_seen(rows)
        if uniq.numel() == rows.numel():
            summed = torch.empty_like(vals).index_copy_(0, inverse, vals)
        else:
            summed = vals.new_zeros((uniq.numel(), self.dim)).index_add_(0, inverse, vals)
        if acc_step != 1:
            summed = summed / float(acc_step)
        return uniq, summed

    @locked
    def grad(self, acc_step: int = 1) -> torch.Tensor:
        """Sparse COO gradient ``[R, dim]`` indexed by **row** (RecIS emits positions in a unique
        list when rows repeat, Q5; fixed here). ``R`` is the row capacity, or one more than the
        largest buffered row when :meth:`accept_grad` was given rows beyond it, so the tensor is
        always valid (``to_dense()``, ``coalesce()`` work)."""
        got = self.summed_grad(acc_step)
        cap = self.storage.capacity
        if got is None:
            return torch.sparse_coo_tensor(torch.zeros((1, 0), dtype=torch.int64, device=self.device),
                                           torch.zeros((0, self.dim), dtype=self.dtype, device=self.device),
                                           (cap, self.dim)).coalesce()
        rows, vals = got
        self._note_written(rows)
        rows, order = torch.sort(rows)
        size = max(cap, int(rows[-1]) + 1)
        return torch.sparse_coo_tensor(rows.unsqueeze(0), vals.index_select(0, order), (size, self.dim),
                                       is_coalesced=True)

    @locked
    def clear_grad(self) -> None:
        self._grad_rows.clear()
        self._grad_values.clear()
        self._grad_unique.clear()

    # ------------------------------------------------------------------ device and state
    @locked
    def to(self, device) -> "DynamicTableImpl":
        """Move the map, the slots and pending gradients to ``device`` (in place)."""
        device = torch.device(device)
        if device == self.device:
            return self
        self.id_map.to(device)
        self.storage.to(device)
        self._grad_rows = [t.to(device) for t in self._grad_rows]
        self._grad_values = [t.to(device) for t in self._grad_values]
        if self._changes is not None:
            self._changes.to(device)
        return self

    @locked
    def state_dict(self) -> Dict[str, torch.Tensor]:
        """Ids and every slot of the stored rows: ``{"id": [n], "<slot>": [n, ...]}`` (row order);
        the checkpoint form (rows are renumbered on load)."""
        ids, rows = self.ids_map()
        out = {"id": ids}
        for name in self.storage.slots:
            out[name] = self.read_slot(name, rows)
        return out

    @locked
    def load_state_dict(self, state: Dict[str, torch.Tensor]) -> None:
        """Replace the content with ``state`` (from :meth:`state_dict`): ids get rows
        ``0..n-1``; slots present here but not in ``state`` start from their initial values."""
        if "id" not in state:
            raise ValueError(f"table {self.name!r}: load_state_dict needs an 'id' entry")
        ids = state["id"].to(self.device, torch.int64).reshape(-1)
        for name, t in state.items():
            if name != "id" and t.shape[0] != ids.numel():
                raise ValueError(f"table {self.name!r}: slot {name!r} has {t.shape[0]} rows for {ids.numel()} ids")
        self.clear()
        self.id_map.reserve(ids.numel())
        rows = self.find_or_insert_rows(ids, initialize="embedding" not in state)
        for name, t in state.items():
            if name == "id":
                continue
            if name not in self.storage.slots:
                tail = list(t.shape[1:])
                self.add_slot(name, tail, t.dtype)
            self.storage.write_rows(name, rows, t)

    # ------------------------------------------------------------------ change tracking
    def _note_written(self, rows: torch.Tensor) -> None:
        """Mark ``rows`` (int64, all >= 0) changed (no-op when not tracking)."""
        log = self._changes
        if log is not None and rows.numel():
            with self._lock:
                log.fit(self.storage.capacity)
                log.dirty.index_fill_(0, rows.to(log.dirty.device), True)

    @property
    def tracking_changes(self) -> bool:
        """Whether :meth:`track_changes` was called."""
        return self._changes is not None

    @locked
    def change_epoch(self) -> Optional[int]:
        """The current change-log epoch (None when not tracking). It changes with every
        :meth:`track_changes` / :meth:`take_changes`, so a caller that recorded it can tell
        whether the log still holds every change since its last checkpoint."""
        return None if self._changes is None else self._changes.epoch

    @locked
    def track_changes(self) -> int:
        """Start recording changes (restart, dropping the current log, when already tracking);
        returns the new epoch. Costs one export of the id map (O(ids))."""
        ids, rows = self.id_map.ids_and_rows()
        n = max(self.storage.capacity, self.id_map.num_rows_allocated())
        row_ids = torch.full((n,), -1, dtype=torch.int64, device=self.device)
        if rows.numel():
            row_ids.index_copy_(0, rows, ids)
        self._changes = _ChangeLog(row_ids, next(_EPOCHS))
        return self._changes.epoch

    @locked
    def take_changes(self, with_values: bool = True) -> TableChanges:
        """The changes recorded since the epoch began, and start a new epoch (atomic under the
        table lock). ``with_values``: also copy every slot's values of the changed ids (what a
        delta checkpoint writes); False: only ids. RuntimeError naming the table when
        :meth:`track_changes` was never called.

        Returns:
            :class:`TableChanges` (``ids`` int64 ``[k]`` ordered by row, ``values[slot]``
            ``[k, *tail]``, ``deleted`` int64 ``[d]``).
        """
        log = self._changes
        if log is None:
            raise RuntimeError(f"table {self.name!r}: take_changes() needs track_changes() first")
        rows = torch.nonzero(log.dirty).view(-1)
        ids = log.row_ids.index_select(0, rows)
        present = ids >= 0
        if not bool(present.all()):
            rows, ids = rows[present], ids[present]
        values: Dict[str, torch.Tensor] = {}
        if with_values:
            for name in self.storage.slots:
                values[name] = self.read_slot(name, rows)
        deleted = torch.cat(log.deleted) if log.deleted else torch.zeros(0, dtype=torch.int64, device=self.device)
        out = TableChanges(log.epoch, next(_EPOCHS), ids, values, deleted, log.cleared)
        log.dirty.fill_(False)
        log.deleted = []
        log.cleared = False
        log.epoch = out.new_epoch
        return out


def find_or_insert_rows_many(impls: Sequence[DynamicTableImpl], ids: Sequence[torch.Tensor]) -> List[torch.Tensor]:
    """``[impls[k].find_or_insert_rows(ids[k], distinct=True) for k]`` (distinct int64 ids
    ``[N_k]`` per table -> rows int64 ``[N_k]``), with the id-map finds and inserts of every
    in-memory table in one csrc call (``find_or_insert_many``: each map takes its batch where
    ``IdMap.find_or_insert`` would in one kernel call) and the U(low, high) initial rows of those
    whose ``init_rows`` says so (:class:`UniformIdInit`) in another (``counter_uniform_rows_many_``).
    Everything else -- storage growth (and the ``sample_rows`` draws it makes), change logs,
    other ``init_rows`` -- runs per table in table order, and the tables the fused call does not
    take (file-backed, a map that must grow or insert in chunks first, another device than the
    first table's, a table given twice) take ``find_or_insert_rows`` at their place in that
    order; so rows, new-row order, counters, change logs, values and every generator's draws
    equal the per-table calls'. The caller holds every table's lock."""
    flat = [impl.check_ids(x, "insert") for impl, x in zip(impls, ids)]
    fused: List[int] = []
    if len({id(impl) for impl in impls}) == len(impls):
        fused = [k for k, impl in enumerate(impls)
                 if not impl.storage.file_backed and impl.device == impls[0].device]
    # read (and on first use check) the U(low, high) promises before any map changes, so a
    # wrong one raises with every table as it was
    params = {k: impls[k].uniform_init_params() for k in fused if impls[k].init_rows is not None}
    got: Dict[int, tuple] = {}
    for attempt in range(2):
        # second attempt: the maps the first left alone that IdMap grows, as find_or_insert
        # would, so that their batches then go in one call (rare: maps grow x1.5)
        if not fused:
            break
        rows_f, new_ids_f, new_rows_f, counts = find_or_insert_many([impls[k].id_map.insert_state() for k in fused],
                                                                     [flat[k] for k in fused])
        left = []
        for k, rows, new_ids, new_rows, c in zip(fused, rows_f, new_ids_f, new_rows_f, counts):
            if c[0]:
                got[k] = (rows, new_ids, new_rows, c)
            elif attempt == 0 and impls[k].id_map.grow_for_batch(flat[k].numel(), c[3]):
                left.append(k)
        fused = left
    out: List[torch.Tensor] = []
    uniform: List[list] = [[], [], [], [], [], []]     # tables, rows, ids, seeds, lows, highs
    for k, impl in enumerate(impls):
        if k not in got:
            out.append(impl.find_or_insert_rows(flat[k], distinct=True))
            continue
        rows, new_ids, new_rows, (_, next_row, used, _) = got[k]
        impl.id_map.note_used(used)
        impl.storage.ensure_capacity(next_row)
        impl.storage.note_access(rows, lookup=True)
        if new_ids.numel():
            impl._log_inserted(new_ids, new_rows)
            if impl.init_rows is not None:
                emb = impl.storage.embedding
                if params[k] is not None and emb.is_contiguous():
                    low, high, seed = params[k]
                    for part, value in zip(uniform, (emb, new_rows, new_ids, seed, low, high)):
                        part.append(value)
                else:
                    vals = impl.init_rows(new_ids)
                    impl.storage.write_rows("embedding", new_rows, vals.reshape(new_ids.numel(), impl.dim))
        out.append(rows)
    if uniform[0]:
        counter_uniform_rows_many_(*uniform)
    return out
