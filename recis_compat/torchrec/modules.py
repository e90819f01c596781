"""Dynamic (hash-table) embedding collections configured like TorchRec's, unsharded.

:class:`DynamicEmbeddingBagCollection` and :class:`DynamicEmbeddingCollection` take TorchRec's
``EmbeddingBagConfig`` / ``EmbeddingConfig`` and behave like ``EmbeddingBagCollection`` /
``EmbeddingCollection`` (``KeyedJaggedTensor`` in; ``KeyedTensor`` ``[B, sum(dims)]`` /
``Dict[str, JaggedTensor]`` with values ``[N_feature, dim]`` out), except that every table is a
:class:`~recis_compat.backend.dynamic_table.DynamicTable`: ids are arbitrary int64 values with
an exact id->row map (no modulo, no collisions), rows are created on first training lookup
and ``num_embeddings`` is only a hint. What the dynamic tables add is set per table with
:class:`DynamicTableOptions` (initializer, admission, eviction, storage).

Training: rows are not Parameters. A backward pass buffers each table's row gradients and the
module's :attr:`fused_optimizer` (a TorchRec ``KeyedOptimizer``; see
``recis_compat/torchrec/optim.py``) applies them row-sparsely in ``step()``, the way TorchRec's
``FusedOptimizerModule`` exposes the fused TBE optimizers; DMP's ``model.fused_optimizer``
collects it. Sharded twins are in ``recis_compat/torchrec/distributed.py``; docs/torchrec.md
describes the mapping onto TorchRec and the limits.

Layering (docs/architecture.md): this package sits at the backend layer and imports only
``ops``, ``backend`` and ``utils``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn
from torchrec.modules.embedding_configs import (BaseEmbeddingConfig, DataType, EmbeddingBagConfig,
                                                EmbeddingConfig, PoolingType)
from torchrec.optim.fused import FusedOptimizerModule
from torchrec.sparse.jagged_tensor import JaggedTensor, KeyedJaggedTensor, KeyedTensor

from recis_compat.backend.dynamic_table import DynamicTable, DynamicTableConfig
from recis_compat.backend.row_store import StoreConfig
from recis_compat.ops.counter_init import counter_uniform
from recis_compat.ops.id_map import unique_first_seen
from recis_compat.ops.pooling import gather_rows, pooled_sum

__all__ = ["DynamicTableOptions", "Uniform", "Normal", "Constant", "DynamicEmbeddingBagCollection",
           "DynamicEmbeddingCollection", "ADMISSIONS"]

ADMISSIONS = ("always", "readonly")


# ----------------------------------------------------------------------------- initializers
@dataclass(frozen=True)
class Uniform:
    """U(a, b) per id: ``a + (b - a) * u`` with ``u = counter_uniform(ids, seed)`` (the same
    values as RecIS's ``UniformInitializer(a, b)`` at the same seed)."""
    a: float
    b: float

    def sample_for_ids(self, ids: torch.Tensor, seed: int, dim: int) -> torch.Tensor:
        u = counter_uniform(ids, seed, dim)
        return (self.a + (self.b - self.a) * u).to(torch.float32)


@dataclass(frozen=True)
class Normal:
    """N(mean, std) per id by the inverse CDF of the counter uniforms (the same values as RecIS's
    ``NormalInitializer(mean, std)`` at the same seed)."""
    mean: float = 0.0
    std: float = 1.0

    def sample_for_ids(self, ids: torch.Tensor, seed: int, dim: int) -> torch.Tensor:
        u = counter_uniform(ids, seed, dim)
        return (self.mean + self.std * math.sqrt(2.0) * torch.erfinv(2.0 * u - 1.0)).to(torch.float32)


@dataclass(frozen=True)
class Constant:
    """Every new row is ``value``."""
    value: float = 0.0

    def sample_for_ids(self, ids: torch.Tensor, seed: int, dim: int) -> torch.Tensor:
        return torch.full((ids.numel(), dim), float(self.value), dtype=torch.float32, device=ids.device)


@dataclass
class DynamicTableOptions:
    """What a dynamic table adds to TorchRec's table config.

    Attributes:
        initializer: initial values of a new id's row, a pure function of ``(seed, id)`` so
            that a run gives the same rows whatever the world size or insertion order. One of
            :class:`Uniform`, :class:`Normal`, :class:`Constant`; a *built* RecIS initializer
            (``recis.nn.initializers.*`` after ``set_shape``/``build``, anything with
            ``sample_for_ids(ids, seed)``); or None: TorchRec's default,
            ``Uniform(config.get_weight_init_min(), config.get_weight_init_max())``.
        seed: the seed of the per-id initial values.
        admission: ``"always"`` (a training lookup inserts unknown ids) or ``"readonly"`` (never
            inserts; unknown ids look up as zero vectors, RecIS's ``AdmitHook("ReadOnly")``).
        evict_after_steps: None, or N > 0: after every fused-optimizer step, ids not looked up
            in training during the last N steps are evicted (RecIS's
            ``FilterHook("GlobalStepFilter", {"filter_step": N})``); their rows are reused.
        device: where the table lives (default: the collection's device).
        block_size: the row storage grows in blocks of this many rows.
        grad_reduce_by: ``"worker"`` (duplicate ids' gradients summed, divided by the world
            size when sharded) or ``"id"`` (averaged over the duplicates of a lookup), as RecIS.
        store: where the rows live: a ``recis_compat.backend.row_store.StoreConfig``
            (``cached_ssd``: files under a path with a RAM budget, docs/stores.md); None: the
            ``RECIS_COMPAT_STORE_TYPE`` environment variables, in memory when unset.
    """

    initializer: Any = None
    seed: int = 0
    admission: str = "always"
    evict_after_steps: Optional[int] = None
    device: Optional[torch.device] = None
    block_size: int = 10240
    grad_reduce_by: str = "worker"
    store: Optional[StoreConfig] = None

    def validate(self, table: str) -> None:
        if self.admission not in ADMISSIONS:
            raise ValueError(f"table {table!r}: DynamicTableOptions.admission must be one of {list(ADMISSIONS)}, "
                             f"got {self.admission!r}")
        if self.evict_after_steps is not None and (not isinstance(self.evict_after_steps, int)
                                                   or isinstance(self.evict_after_steps, bool)
                                                   or self.evict_after_steps <= 0):
            raise ValueError(f"table {table!r}: DynamicTableOptions.evict_after_steps must be None or an int > 0, "
                             f"got {self.evict_after_steps!r}")
        if self.grad_reduce_by not in ("worker", "id"):
            raise ValueError(f"table {table!r}: DynamicTableOptions.grad_reduce_by must be 'worker' or 'id', "
                             f"got {self.grad_reduce_by!r}")
        if not isinstance(self.block_size, int) or self.block_size <= 0:
            raise ValueError(f"table {table!r}: DynamicTableOptions.block_size must be an int > 0, "
                             f"got {self.block_size!r}")
        if self.store is not None and not isinstance(self.store, StoreConfig):
            raise TypeError(f"table {table!r}: DynamicTableOptions.store must be a StoreConfig or None, "
                            f"got {type(self.store).__name__}")
        if self.initializer is not None and not hasattr(self.initializer, "sample_for_ids"):
            raise TypeError(f"table {table!r}: DynamicTableOptions.initializer must be Uniform/Normal/Constant, a "
                            f"built RecIS initializer or None, got {type(self.initializer).__name__}")


LAST_SEEN_SLOT = "last_seen_step"


class _TableRuntime:
    """Per-table things that are not TorchRec config: the initializer closure and the eviction
    clock (``step`` advances with the fused optimizer's steps)."""

    def __init__(self, config: BaseEmbeddingConfig, options: DynamicTableOptions):
        self.name = config.name
        self.dim = int(config.embedding_dim)
        self.options = options
        init = options.initializer
        if init is None:
            init = Uniform(float(config.get_weight_init_min()), float(config.get_weight_init_max()))
        self.initializer = init
        self.step = 0

    def init_rows(self, ids: torch.Tensor) -> torch.Tensor:
        """``[k, dim]`` float32 initial rows of new int64 ``ids`` ``[k]``."""
        init, seed = self.initializer, int(self.options.seed)
        if isinstance(init, (Uniform, Normal, Constant)):
            vals = init.sample_for_ids(ids, seed, self.dim)
        else:
            vals = init.sample_for_ids(ids, seed)
        vals = vals.reshape(ids.numel(), -1)
        if vals.shape[1] != self.dim:
            raise ValueError(f"table {self.name!r}: the initializer gave rows of width {vals.shape[1]}, the table's "
                             f"embedding_dim is {self.dim} (set_shape([block, {self.dim}]) on RecIS initializers)")
        return vals.to(torch.float32)

    def mark_seen(self, impl, rows: torch.Tensor) -> None:
        if rows.numel():
            impl.update_slot(LAST_SEEN_SLOT, rows, torch.full((rows.numel(), 1), self.step, dtype=torch.int64,
                                                              device=rows.device))

    def evict_stale(self, impl) -> int:
        """Evict ids not seen during the last ``evict_after_steps`` steps; returns how many."""
        n = self.options.evict_after_steps
        if n is None:
            return 0
        with impl.lock:
            ids, rows = impl.ids_map()
            if ids.numel() == 0:
                return 0
            last = impl.read_slot(LAST_SEEN_SLOT, rows).view(-1)
            stale = last <= self.step - n
            if not bool(stale.any()):
                return 0
            impl.delete(ids[stale])
            return int(stale.sum())


class _MarkSeen:
    """Lookup listener of an evicting table: stamps the looked-up rows with the clock. An object
    rather than a closure so that ``copy.deepcopy`` of a collection rebinds it to the copy."""

    def __init__(self, impl, runtime: _TableRuntime):
        self.impl, self.runtime = impl, runtime

    def __call__(self, rows: torch.Tensor) -> None:
        self.runtime.mark_seen(self.impl, rows)


def _dtype_of(config: BaseEmbeddingConfig) -> torch.dtype:
    if config.data_type != DataType.FP32:
        raise ValueError(f"table {config.name!r}: dynamic tables store FP32 rows, the config asks for "
                         f"{config.data_type}")
    return torch.float32


def _options_for(name: str, options) -> DynamicTableOptions:
    if options is None:
        opt = DynamicTableOptions()
    elif isinstance(options, DynamicTableOptions):
        opt = options
    elif isinstance(options, dict):
        opt = options.get(name, DynamicTableOptions())
        if not isinstance(opt, DynamicTableOptions):
            raise TypeError(f"table {name!r}: options must be DynamicTableOptions, got {type(opt).__name__}")
    else:
        raise TypeError("options must be a DynamicTableOptions, a dict table name -> DynamicTableOptions or None, "
                        f"got {type(options).__name__}")
    opt.validate(name)
    return opt


def default_fused_params() -> Dict[str, Any]:
    """TorchRec-style fused optimizer parameters (``EmbOptimType``-like names): Adam with
    decoupled weight decay, RecIS's ``SparseAdamW`` defaults."""
    return {"optimizer": "adamw", "learning_rate": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8,
            "weight_decay": 1e-2}


class _DynamicCollectionBase(nn.Module, FusedOptimizerModule):
    """Tables and feature layout shared by both collections (and by their sharded twins)."""

    _config_type: type = BaseEmbeddingConfig

    def __init__(self, tables: Sequence[BaseEmbeddingConfig], options=None, device=None,
                 fused_params: Optional[Dict[str, Any]] = None):
        super().__init__()
        if not tables:
            raise ValueError(f"{type(self).__name__}: needs at least one table config")
        device = torch.device(device) if device is not None else torch.device("cpu")
        if device.type == "meta":
            raise ValueError(f"{type(self).__name__}: dynamic tables cannot live on the meta device "
                             "(their rows are created by lookups)")
        self._device = device
        self._configs: List[BaseEmbeddingConfig] = list(tables)
        self._runtimes: Dict[str, _TableRuntime] = {}
        self.tables = nn.ModuleDict()
        seen_features: Dict[str, str] = {}
        for cfg in self._configs:
            if not isinstance(cfg, self._config_type):
                raise TypeError(f"{type(self).__name__}: table configs must be {self._config_type.__name__}, "
                                f"got {type(cfg).__name__} for {getattr(cfg, 'name', '?')!r}")
            if cfg.name in self.tables:
                raise ValueError(f"{type(self).__name__}: two tables are named {cfg.name!r}")
            if not cfg.feature_names:
                raise ValueError(f"table {cfg.name!r}: feature_names is empty")
            for f in cfg.feature_names:
                if f in seen_features:
                    raise ValueError(f"feature {f!r} is listed by tables {seen_features[f]!r} and {cfg.name!r}")
                seen_features[f] = cfg.name
            opt = _options_for(cfg.name, options)
            rt = _TableRuntime(cfg, opt)
            self._runtimes[cfg.name] = rt
            table = DynamicTable(DynamicTableConfig(
                name=cfg.name, embedding_dim=int(cfg.embedding_dim), sample_rows=self._no_block_sampling(cfg.name),
                dtype=_dtype_of(cfg), device=torch.device(opt.device) if opt.device is not None else device,
                block_size=opt.block_size, grad_reduce_by=opt.grad_reduce_by, init_rows=rt.init_rows,
                store=opt.store))
            if opt.evict_after_steps is not None:
                table.impl.add_slot(LAST_SEEN_SLOT, [1], torch.int64, 0)
                table.impl.lookup_listeners.append(_MarkSeen(table.impl, rt))
            self.tables[cfg.name] = table
        self._feature_names: List[List[str]] = [list(c.feature_names) for c in self._configs]
        self._fused_params = dict(default_fused_params())
        if fused_params:
            self._fused_params.update(fused_params)
        self._optimizer = None

    @staticmethod
    def _no_block_sampling(name: str) -> Callable[[int], torch.Tensor]:
        def sample(k: int) -> torch.Tensor:
            raise RuntimeError(f"table {name!r}: rows are initialised per id (init_rows); block sampling is unused")
        return sample

    # ------------------------------------------------------------------ TorchRec-like accessors
    def embedding_configs(self) -> List[BaseEmbeddingConfig]:
        return list(self._configs)

    def options(self, table: str) -> DynamicTableOptions:
        return self._runtimes[table].options

    def runtime(self, table: str) -> _TableRuntime:
        return self._runtimes[table]

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def fused_params(self) -> Dict[str, Any]:
        return dict(self._fused_params)

    @property
    def fused_optimizer(self):
        """The row-sparse optimizer of every table (a TorchRec ``KeyedOptimizer``), created on
        first access from ``fused_params``."""
        if self._optimizer is None:
            from recis_compat.torchrec.optim import DynamicFusedOptimizer
            self._optimizer = DynamicFusedOptimizer(self._optimizer_tables(), self._fused_params)
        return self._optimizer

    def _optimizer_tables(self) -> Dict[str, Tuple[Any, _TableRuntime]]:
        """``{table: (module with .impl, runtime)}``: what the fused optimizer updates."""
        return {name: (self.tables[name], self._runtimes[name]) for name in self.tables}

    def reset_parameters(self) -> None:
        """Remove every row (tables start empty; rows come from the initializer on first use)."""
        for t in self.tables.values():
            t.impl.clear()

    # ------------------------------------------------------------------ per-table ids
    def _table_input(self, features: KeyedJaggedTensor, index: int) -> Tuple[torch.Tensor, torch.Tensor,
                                                                             Optional[torch.Tensor]]:
        """``(ids [N_t], lengths [F_t * B], weights [N_t] or None)`` of the features of table
        ``index`` in its config order."""
        cfg = self._configs[index]
        names = self._feature_names[index]
        keys = features.keys()
        missing = [f for f in names if f not in keys]
        if missing:
            raise KeyError(f"table {cfg.name!r}: the KeyedJaggedTensor has no feature(s) {missing} "
                           f"(it has {list(keys)})")
        if features.values().dtype not in (torch.int64, torch.int32):
            raise TypeError(f"table {cfg.name!r}: KeyedJaggedTensor values must be integer ids, "
                            f"got {features.values().dtype}")
        per_key = features.to_dict()
        jts = [per_key[f] for f in names]
        ids = torch.cat([jt.values() for jt in jts]) if len(jts) > 1 else jts[0].values()
        lengths = torch.cat([jt.lengths() for jt in jts]) if len(jts) > 1 else jts[0].lengths()
        w = None
        if features.weights_or_none() is not None:
            ws = [jt.weights() for jt in jts]
            w = torch.cat(ws) if len(ws) > 1 else ws[0]
        return ids.to(torch.int64), lengths.to(torch.int64), w

    def _readonly(self, name: str) -> bool:
        return self._runtimes[name].options.admission == "readonly"


class DynamicEmbeddingBagCollection(_DynamicCollectionBase):
    """TorchRec's ``EmbeddingBagCollection`` over dynamic tables.

    Args:
        tables: ``EmbeddingBagConfig`` per table (``name``, ``embedding_dim``,
            ``feature_names``, ``pooling`` SUM or MEAN, ``weight_init_min/max`` for the default
            initializer; ``num_embeddings`` is not a limit).
        options: :class:`DynamicTableOptions` for every table, or a dict table -> options.
        device: where the tables live (CPU or CUDA).
        is_weighted: like TorchRec's flag; True requires KJT weights (per-sample weights
            multiply the rows before pooling).
        fused_params: the fused optimizer (see :func:`default_fused_params`).

    ``forward(features: KeyedJaggedTensor) -> KeyedTensor``: keys = the features in table
    order, ``values()`` ``[B, sum of each feature's dim]`` float32. MEAN divides each bag's
    (weighted) sum by its number of ids (TorchRec's rule); empty bags give zeros.
    """

    _config_type = EmbeddingBagConfig

    def __init__(self, tables: List[EmbeddingBagConfig], options=None, device=None, is_weighted: bool = False,
                 fused_params: Optional[Dict[str, Any]] = None):
        super().__init__(tables, options, device, fused_params)
        for cfg in self._configs:
            if cfg.pooling not in (PoolingType.SUM, PoolingType.MEAN):
                raise ValueError(f"table {cfg.name!r}: pooling must be PoolingType.SUM or MEAN, got {cfg.pooling}")
        self._is_weighted = bool(is_weighted)

    def is_weighted(self) -> bool:
        return self._is_weighted

    def embedding_bag_configs(self) -> List[EmbeddingBagConfig]:
        """The table configs (TorchRec's ``EmbeddingBagCollection`` accessor; DLRM/DeepFM use it)."""
        return list(self._configs)

    def _check_weights(self, features: KeyedJaggedTensor) -> None:
        if self._is_weighted and features.weights_or_none() is None:
            raise ValueError(f"{type(self).__name__}(is_weighted=True): the KeyedJaggedTensor has no weights")

    def _plan(self, features: KeyedJaggedTensor):
        """Per table: ``(unique ids [U], inverse [N], counts [U], lengths [F*B], weights)``."""
        self._check_weights(features)
        out = []
        for i in range(len(self._configs)):
            ids, lengths, w = self._table_input(features, i)
            uniq, inverse, counts = unique_first_seen(ids, return_counts=True)
            out.append((uniq, inverse, counts, lengths, w if self._is_weighted else None))
        return out

    def _pool(self, features: KeyedJaggedTensor, per_table_rows: List[torch.Tensor], plan) -> KeyedTensor:
        """Pool each table's unique rows ``[U_t, D_t]`` per feature and bag -> ``KeyedTensor``."""
        b = features.stride()
        blocks, keys, dims = [], [], []
        for cfg, names, rows, (uniq, inverse, counts, lengths, w) in zip(
                self._configs, self._feature_names, per_table_rows, plan):
            nf, d = len(names), int(cfg.embedding_dim)
            offsets = torch.zeros(lengths.numel() + 1, dtype=torch.int64, device=lengths.device)
            torch.cumsum(lengths, 0, out=offsets[1:])
            pooled = pooled_sum(rows, inverse.to(rows.device), offsets.to(rows.device),
                                w.to(rows.device) if w is not None else None)      # [F*B, D]
            if cfg.pooling == PoolingType.MEAN:
                pooled = pooled / lengths.clamp(min=1).to(pooled.dtype).unsqueeze(1).to(pooled.device)
            blocks.append(pooled.view(nf, b, d).transpose(0, 1).reshape(b, nf * d))
            keys.extend(names)
            dims.extend([d] * nf)
        values = torch.cat(blocks, dim=1) if len(blocks) > 1 else blocks[0]
        return KeyedTensor(keys=keys, length_per_key=dims, values=values, key_dim=1)

    def forward(self, features: KeyedJaggedTensor) -> KeyedTensor:
        plan = self._plan(features)
        rows = [self.tables[cfg.name].lookup_unique(uniq, self._readonly(cfg.name), counts)
                for cfg, (uniq, _, counts, _, _) in zip(self._configs, plan)]
        return self._pool(features, rows, plan)


class DynamicEmbeddingCollection(_DynamicCollectionBase):
    """TorchRec's ``EmbeddingCollection`` over dynamic tables.

    Args: as :class:`DynamicEmbeddingBagCollection` with ``EmbeddingConfig`` tables (no pooling).

    ``forward(features: KeyedJaggedTensor) -> Dict[str, JaggedTensor]``: per feature,
    ``values`` ``[N_feature, dim]`` (one row per id, in the KJT's order), the feature's lengths
    (and weights when the KJT has them).
    """

    _config_type = EmbeddingConfig

    def _plan(self, features: KeyedJaggedTensor):
        out = []
        for i in range(len(self._configs)):
            ids, lengths, w = self._table_input(features, i)
            uniq, inverse, counts = unique_first_seen(ids, return_counts=True)
            out.append((uniq, inverse, counts, lengths, w))
        return out

    def _split(self, features: KeyedJaggedTensor, per_table_rows: List[torch.Tensor], plan
               ) -> Dict[str, JaggedTensor]:
        out: Dict[str, JaggedTensor] = {}
        per_key = features.to_dict()
        for names, rows, (_, inverse, _, _, _) in zip(self._feature_names, per_table_rows, plan):
            emb = gather_rows(rows, inverse.to(rows.device))
            start = 0
            for f in names:
                jt = per_key[f]
                n = jt.values().numel()
                out[f] = JaggedTensor(values=emb[start:start + n], lengths=jt.lengths(), weights=jt.weights_or_none())
                start += n
        return out

    def forward(self, features: KeyedJaggedTensor) -> Dict[str, JaggedTensor]:
        plan = self._plan(features)
        rows = [self.tables[cfg.name].lookup_unique(uniq, self._readonly(cfg.name), counts)
                for cfg, (uniq, _, counts, _, _) in zip(self._configs, plan)]
        return self._split(features, rows, plan)
