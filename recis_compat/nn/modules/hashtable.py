"""``recis.nn.modules.hashtable``: RecIS's HashTable and its helpers (RecIS 1.0; see COMPATIBILITY.md).

``HashTable`` is a facade over the backend :class:`~recis_compat.backend.dynamic_table.DynamicTable`
(csrc id map + growable row storage); its state object (``HashtableImpl``, our
:class:`~recis_compat.backend.table_impl.DynamicTableImpl`) is what lands in ``state_dict()``
under the bare table name and what sparse optimizers update.

Differences from RecIS (COMPATIBILITY.md): ``grad()`` is indexed by real rows when rows repeat
(Q5); gradients of ids a ReadOnly lookup did not find are dropped (Q23); new rows are numbered
in order of first occurrence within a lookup (lookups dedupe through a scratch id map first;
RecIS hands rows out in descending order inside a batch); a table's
names leave ``HashtableRegister`` when the table is garbage collected.

RecIS's private attributes ``_hashtable_impl``, ``_initializer``, ``_name``, ``_dtype``,
``_device``, ``_grad_reduce_by``, ``_backward_holder``, ``_worker_num`` and ``_filter_hook_impl``
(an ``nn.Identity`` without a filter) hold what they hold in RecIS. A table may be used from
several threads at once: its implementation serialises every mutation under one lock
(``backend/table_impl.py``).
"""
from __future__ import annotations

import json
import threading
import weakref
from collections import OrderedDict
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

from recis_compat.backend.children import ChildrenInfo
from recis_compat.backend.slices import SLICE_SIZE, slice_range
from recis_compat.backend.dynamic_table import DynamicTable, DynamicTableConfig
from recis_compat.backend.row_store import StoreConfig
from recis_compat.backend.table_impl import DynamicTableImpl, UniformIdInit
from recis_compat.common.singleton import SingletonMeta
from recis_compat.nn.hashtable_hook import AdmitHook, FilterHook
from recis_compat.nn.modules.hashtable_impl import HashtableImpl, Slot, SlotGroup, is_hashtable
from recis_compat.nn.initializers import ConstantInitializer, Initializer, UniformInitializer
from recis_compat.utils.device import resolve_device

__all__ = ["Slice", "gen_slice", "HashTable", "HashtableImpl", "HashtableRegister", "ChildrenInfo",
           "Slot", "SlotGroup", "is_hashtable", "split_sparse_dense_state_dict", "filter_out_sparse_param"]


class Slice:
    """The slice range ``[slice_begin, slice_end)`` of ``slice_size`` that a shard owns."""

    def __init__(self, slice_beg: int, slice_end: int, slice_size: int):
        self.slice_begin, self.slice_end, self.slice_size = int(slice_beg), int(slice_end), int(slice_size)

    def __repr__(self) -> str:
        return f"Slice({self.slice_begin}, {self.slice_end}, {self.slice_size})"

    def __eq__(self, other) -> bool:
        return isinstance(other, Slice) and (self.slice_begin, self.slice_end, self.slice_size) == \
            (other.slice_begin, other.slice_end, other.slice_size)


def gen_slice(shard_index: int = 0, shard_num: int = 1, slice_size: int = SLICE_SIZE) -> Slice:
    """Shard ``shard_index`` of ``shard_num``'s contiguous range of ``[0, slice_size)``; the first
    ``slice_size % shard_num`` ranges get one extra slice."""
    beg, end = slice_range(shard_index, shard_num, slice_size)
    return Slice(beg, end, slice_size)


_default_slice = Slice(0, SLICE_SIZE, SLICE_SIZE)


class HashtableRegister(metaclass=SingletonMeta):
    """Process-wide registry of table (child) names: a name registered twice raises
    ``ValueError("Duplicate hashtable shard name")`` (RecIS keeps this to catch accidental double
    construction). Names are released when their table is garbage collected."""

    def __init__(self):
        self._names: Dict[str, str] = {}
        self._lock = threading.Lock()

    def register(self, name: str, info: str = "") -> None:
        with self._lock:
            if name in self._names:
                raise ValueError(f"Duplicate hashtable shard name: {name!r} is already used by another "
                                 "table in this process (give each table / shared_name its own name)")
            self._names[name] = info

    def unregister(self, name: str) -> None:
        with self._lock:
            self._names.pop(name, None)

    def names(self) -> List[str]:
        return list(self._names)

    def clear(self) -> None:
        """Forget every name (tests; not in RecIS)."""
        with self._lock:
            self._names.clear()


def _build_initializer(initializer: Optional[Initializer], block_size: int, shape: List[int],
                       dtype: torch.dtype, name: str) -> Initializer:
    if initializer is None:
        initializer = ConstantInitializer(init_val=0)
    if not isinstance(initializer, Initializer):
        raise TypeError(f"table {name!r}: initializer must be a recis.nn.initializers.Initializer, "
                        f"got {type(initializer).__name__}")
    initializer.set_shape([block_size] + list(shape))
    initializer.set_dtype(dtype)
    initializer.build()
    return initializer


class HashTable(nn.Module):
    """A dynamic, collision-free embedding table keyed by int64 ids.

    Args:
        embedding_shape: shape of one row (usually ``[dim]``).
        block_size: rows per storage block (default 5, as in RecIS).
        dtype: storage dtype; an integer dtype makes lookups read-only.
        device: where the table lives.
        coalesced: ids are encoded with the child index (EmbeddingEngine's merged tables).
        children: child names (default ``[name]``); each is registered in ``HashtableRegister``.
        slice: the slice range this shard owns (``gen_slice``).
        initializer: initial row values (default ``ConstantInitializer(0)``).
        name: table name: the key of this table in ``state_dict()`` and checkpoints.
        grad_reduce_by: ``"worker"`` or ``"id"``.
        filter_hook: ``FilterHook("GlobalStepFilter", ...)`` or None.
        store: ours, not RecIS's: where the rows live, a
            ``recis_compat.backend.row_store.StoreConfig`` (``cached_ssd``: files with a RAM
            budget, docs/stores.md); None: the ``RECIS_COMPAT_STORE_TYPE`` environment
            variables, in memory when they are unset.

    ``forward(ids [N] int64, admit_hook=None) -> [N, *embedding_shape]``.
    """

    def __init__(self, embedding_shape: List, block_size: int = 5, dtype: torch.dtype = torch.float32,
                 device=torch.device("cpu"), coalesced: bool = False, children: Optional[List[str]] = None,
                 slice: Slice = _default_slice, initializer: Optional[Initializer] = None,
                 name: str = "hashtable", grad_reduce_by: str = "worker",
                 filter_hook: Optional[FilterHook] = None, world_size: Optional[int] = None,
                 store: Optional[StoreConfig] = None):
        super().__init__()
        shape = [int(s) for s in (embedding_shape if isinstance(embedding_shape, (list, tuple))
                                  else [embedding_shape])]
        if not shape or any(s <= 0 for s in shape):
            raise ValueError(f"table {name!r}: embedding_shape must be positive ints, got {embedding_shape!r}")
        if int(block_size) <= 0:
            raise ValueError(f"table {name!r}: block_size must be > 0, got {block_size}")
        if grad_reduce_by not in ("id", "worker"):
            raise ValueError(f"table {name!r}: grad_reduce_by must be 'id' or 'worker', got {grad_reduce_by!r}")
        if filter_hook is not None and not isinstance(filter_hook, FilterHook):
            raise TypeError(f"table {name!r}: filter_hook must be a FilterHook, got {type(filter_hook).__name__}")
        device = resolve_device(device, what=f"table {name!r}")
        self._name = name
        self._embedding_shape = shape
        self._dtype = dtype
        self._block_size = int(block_size)
        self._slice = slice
        self._coalesced = bool(coalesced)
        self._grad_reduce_by = grad_reduce_by
        self._filter_hook = filter_hook
        children = list(children) if children else [name]
        self._initializer = _build_initializer(initializer, self._block_size, shape, dtype, name)
        if world_size is None:
            import os
            world_size = int(os.environ.get("WORLD_SIZE", "1"))
        # new ids start from values that depend only on (seed, id): reproducible across resumes,
        # world sizes and insertion orders. The seed is a buffer, so it is saved in model.pt and
        # broadcast by DDP; it comes from the initializer's generator or the global RNG.
        gen = getattr(self._initializer, "_generator", None)
        seed = gen.initial_seed() if gen is not None else int(torch.randint(0, 2 ** 62, (1,)).item())
        self.register_buffer("_init_seed", torch.tensor(seed, dtype=torch.int64))
        id_init = self._initializer.supports_id_init() and dtype.is_floating_point
        config = DynamicTableConfig(name=name, embedding_dim=int(torch.Size(shape).numel()),
                                    sample_rows=self._sample_flat_rows, dtype=dtype, device=device,
                                    block_size=self._block_size, children=children, coalesced=coalesced,
                                    grad_reduce_by=grad_reduce_by, world_size=world_size,
                                    init_rows=UniformIdInit(self._init_rows_for_ids, self._uniform_init_params)
                                    if id_init else None, store=store)
        self._table = DynamicTable(config, impl_type=HashtableImpl)
        self._table.impl.set_slice(slice.slice_begin, slice.slice_end, slice.slice_size)
        register = HashtableRegister()
        info = json.dumps({"shape": shape, "dtype": str(dtype), "table": name})
        registered = []
        try:
            for child in children:
                register.register(child, info)
                registered.append(child)
        except ValueError:
            for child in registered:
                register.unregister(child)
            raise
        weakref.finalize(self, _unregister, tuple(children))
        self._register_state_dict_hook(_add_table_to_state_dict)
        # as in RecIS: an Identity module when there is no filter (code may call it unconditionally)
        self._filter_hook_impl = nn.Identity()
        if filter_hook is not None:
            from recis_compat.nn.modules.hashtable_hook_impl import HashtableHookFactory
            self._filter_hook_impl = HashtableHookFactory().create_filter_hook(self, filter_hook)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
        # RecIS checkpoints have no init seed: keep ours rather than fail a strict load
        key = prefix + "_init_seed"
        if key in missing_keys:
            missing_keys.remove(key)

    def _init_rows_for_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """Initial rows ``[k, prod(embedding_shape)]`` of new ids (a function of seed and id)."""
        return self._initializer.sample_for_ids(ids, int(self._init_seed)).reshape(ids.numel(), -1)

    def _uniform_init_params(self) -> Optional[Tuple[float, float, int]]:
        """``(a, b, seed)`` when new rows are :class:`UniformInitializer` draws (several tables'
        new rows are then written by one csrc call, backend/table_impl.py
        ``find_or_insert_rows_many``), else None."""
        init = self._initializer
        return (init.a, init.b, int(self._init_seed)) if type(init) is UniformInitializer else None

    def _sample_flat_rows(self, k: int) -> torch.Tensor:
        """``k`` initial rows flattened to ``[k, prod(embedding_shape)]``."""
        return self._initializer.sample(k).reshape(k, -1)

    # ------------------------------------------------------------------ lookup
    def forward(self, ids: torch.Tensor, admit_hook: Optional[AdmitHook] = None) -> torch.Tensor:
        if admit_hook is not None:
            if not isinstance(admit_hook, AdmitHook) or admit_hook.name != "ReadOnly":
                raise AssertionError(f"table {self._name!r}: only AdmitHook('ReadOnly') is supported, got {admit_hook}")
        if not isinstance(ids, torch.Tensor) or ids.dtype != torch.int64:
            got = ids.dtype if isinstance(ids, torch.Tensor) else type(ids).__name__
            raise TypeError(f"table {self._name!r}: ids must be an int64 tensor, got {got}")
        # find-or-insert and gather under one hold of the table's lock: an eviction in another
        # thread cannot hand a found row to a new id before it is read (backend/table_impl.py)
        with self._table.impl.lock:
            emb = self._table.lookup(ids.reshape(-1), readonly=admit_hook is not None)
        return emb.view(-1, *self._embedding_shape)

    def lookup_unique(self, unique_ids: torch.Tensor, readonly: bool = False) -> torch.Tensor:
        """Rows ``[U, dim]`` of the distinct int64 ids ``unique_ids`` ``[U]`` (inserted unless
        ``readonly``), differentiable into the table: the backend table's ``lookup_unique``
        (sharded or not). Callers that also read ``impl`` hold ``impl.lock`` around it."""
        return self._table.lookup_unique(unique_ids, readonly=readonly)

    @property
    def table(self):
        """The backend table module: a ``DynamicTable``, or its ``ShardedDynamicTable`` twin
        once ``DistributedModelParallel`` sharded the model (``backend/sharding.py``). Its
        staged lookup (``partition_ids``, ``request``) is what ``DynamicEmbedding`` drives."""
        return self._table

    # ------------------------------------------------------------------ RecIS API
    @property
    def impl(self) -> DynamicTableImpl:
        return self._table.impl

    # RecIS's private attribute names, which user debugging code and RecIS's own tests use
    @property
    def _hashtable_impl(self) -> DynamicTableImpl:
        """The table implementation (RecIS's ``HashtableImpl``; the object in ``state_dict()``)."""
        return self._table.impl

    @property
    def _device(self) -> torch.device:
        return self.impl.device

    @property
    def _backward_holder(self) -> torch.Tensor:
        """The 0-dim ``requires_grad`` tensor that ties lookups into the autograd graph."""
        return self._table.anchor

    @property
    def _worker_num(self) -> int:
        """The ``WORLD_SIZE`` that ``grad_reduce_by="worker"`` divides by."""
        return self._table.config.world_size

    @property
    def name(self) -> str:
        return self._name

    @property
    def device(self) -> torch.device:
        return self.impl.device

    @property
    def coalesce(self) -> bool:
        return self._coalesced

    @property
    def children_hashtable(self) -> List[str]:
        return self.impl.children.children()

    @property
    def slice(self) -> Slice:
        return self._slice

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    @property
    def embedding_shape(self) -> List[int]:
        return list(self._embedding_shape)

    @property
    def block_size(self) -> int:
        return self._block_size

    @property
    def grad_reduce_by(self) -> str:
        return self._grad_reduce_by

    def initializer(self) -> Initializer:
        return self._initializer

    def accept_grad(self, grad_index: torch.Tensor, grad: torch.Tensor) -> None:
        self.impl.accept_grad(grad_index, grad)

    def grad(self, acc_step: int = 1) -> torch.Tensor:
        return self.impl.grad(acc_step)

    def clear_grad(self) -> None:
        self.impl.clear_grad()

    def insert(self, ids: torch.Tensor, embeddings: torch.Tensor) -> None:
        self._table.insert(ids, embeddings.reshape(embeddings.shape[0], -1) if embeddings.dim() else embeddings)

    def delete(self, ids: torch.Tensor, index: Optional[torch.Tensor] = None,
               preserve_slot: Optional[str] = None) -> torch.Tensor:
        return self.impl.delete(ids, index, preserve_slot)

    def clear(self) -> None:
        self.impl.clear()

    def ids(self) -> torch.Tensor:
        return self.impl.ids()

    def ids_map(self) -> Tuple[torch.Tensor, torch.Tensor]:
        return self.impl.ids_map()

    def embeddings(self) -> torch.Tensor:
        """The whole embedding slot ``[capacity, *embedding_shape]`` in row order, unused rows included."""
        return self.impl.embedding.view(-1, *self._embedding_shape)

    def slot_group(self) -> SlotGroup:
        return self.impl.slot_group()

    def children_info(self) -> ChildrenInfo:
        return self.impl.children_info()

    def __str__(self) -> str:
        return f"HashTable_{self._name}"

    __repr__ = __str__

    def __hash__(self) -> int:
        return id(self)

    def __eq__(self, other) -> bool:
        return self is other


def _unregister(children) -> None:
    reg = HashtableRegister()
    for c in children:
        reg.unregister(c)


def _add_table_to_state_dict(module: HashTable, state_dict, prefix, local_metadata):
    state_dict[module.name] = module.impl
    return state_dict


def split_sparse_dense_state_dict(state_dict: dict) -> Tuple[dict, dict]:
    """Move the table entries of ``state_dict`` into a new dict; returns ``(sparse, dense)`` where
    ``dense`` is the input dict itself, mutated (as in RecIS)."""
    sparse = OrderedDict()
    for k in [k for k, v in state_dict.items() if is_hashtable(v)]:
        sparse[k] = state_dict.pop(k)
    return sparse, state_dict


def filter_out_sparse_param(model: nn.Module) -> Dict[str, DynamicTableImpl]:
    """``{table_name: HashtableImpl}`` of every dynamic table in ``model`` (what the sparse
    optimizers take). Works before and after moving the model: the objects stay the same."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"filter_out_sparse_param expects an nn.Module, got {type(model).__name__}")
    return OrderedDict((k, v) for k, v in model.state_dict().items() if is_hashtable(v))
