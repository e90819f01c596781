"""The fused row-sparse optimizer of the dynamic collections, as a TorchRec ``KeyedOptimizer``.

TorchRec's sharded embedding modules are ``FusedOptimizerModule``\\ s: their ``fused_optimizer``
(a ``KeyedOptimizer``) owns the table update, and ``DistributedModelParallel.fused_optimizer``
combines them into a ``CombinedOptimizer`` beside the dense optimizer. Our collections expose
:class:`DynamicFusedOptimizer` the same way. Difference from TorchRec (docs/torchrec.md): TBE
applies the update inside the backward pass; here backward buffers the row gradients in the
tables and ``step()`` applies them (the rows of a dynamic table are not Parameters), so
``step()`` must be called, as for any torch optimizer.

Math (Adam with bias correction through per-table running powers that advance only on steps in
which the table had gradients; decay per touched row ``1 - lr * weight_decay`` for ``"adamw"``,
1 for ``"adam"``): the csrc kernel ``recis_compat::sparse_adam_rows_``
(``recis_compat/ops/optim.py``), the same kernel and rule as RecIS's ``SparseAdamW`` facade,
so both give equal rows for equal gradients (tests/torchrec_native/test_modules.py). The moments
are table slots ``sparse_adamw_exp_avg`` / ``sparse_adamw_exp_avg_sq`` (saved with the rows).
"""
from __future__ import annotations

from typing import Any, Dict, Tuple

import torch
import torch.distributed as dist
from torchrec.optim.keyed import KeyedOptimizer

from recis_compat.ops.optim import sparse_adam_rows_

__all__ = ["DynamicFusedOptimizer", "OPTIMIZERS"]

OPTIMIZERS = ("adam", "adamw")
SLOT_PREFIX = "sparse_adamw_"


def _check(fused: Dict[str, Any]) -> Dict[str, Any]:
    known = {"optimizer", "learning_rate", "beta1", "beta2", "eps", "weight_decay"}
    unknown = sorted(set(fused) - known)
    if unknown:
        raise ValueError(f"fused_params: unknown keys {unknown}; known: {sorted(known)}")
    opt = str(fused["optimizer"]).lower()
    if opt not in OPTIMIZERS:
        raise ValueError(f"fused_params['optimizer'] must be one of {list(OPTIMIZERS)}, got {fused['optimizer']!r}")
    lr, b1, b2, eps, wd = (float(fused[k]) for k in ("learning_rate", "beta1", "beta2", "eps", "weight_decay"))
    if lr < 0 or not 0 <= b1 < 1 or not 0 <= b2 < 1 or eps < 0 or wd < 0:
        raise ValueError(f"fused_params: need learning_rate >= 0, 0 <= beta1, beta2 < 1, eps >= 0, weight_decay >= 0; "
                         f"got {dict(fused)}")
    if opt == "adam" and wd != 0:
        raise ValueError("fused_params: optimizer 'adam' has no weight decay here; use 'adamw' for decoupled decay")
    return {"optimizer": opt, "lr": lr, "beta1": b1, "beta2": b2, "eps": eps, "weight_decay": wd}


class DynamicFusedOptimizer(KeyedOptimizer):
    """Row-sparse Adam/AdamW over dynamic tables (see the module docstring).

    Args:
        tables: ``{table name: (module with .impl, runtime)}`` (a ``DynamicTable`` or
            ``ShardedDynamicTable`` and its eviction clock).
        fused_params: ``optimizer``, ``learning_rate``, ``beta1``, ``beta2``, ``eps``,
            ``weight_decay``.

    ``param_groups[0]["lr"]`` is read at every step (LR schedulers work). ``params`` maps
    ``"<table>.weight"`` to the table's current embedding storage ``[capacity, dim]`` (it is
    replaced as the table grows); ``state_dict()`` (TorchRec's keyed layout, so
    ``CombinedOptimizer`` and DMP's ``fused_optimizer`` include it) holds per table the
    0-dim ``beta1_power``, ``beta2_power``, ``step`` and the eviction ``clock``; the Adam
    moments are table slots, saved with the rows.
    """

    def __init__(self, tables: Dict[str, Tuple[Any, Any]], fused_params: Dict[str, Any]):
        hp = _check(fused_params)
        self._tables = dict(tables)
        self._hp = hp
        self._table_state: Dict[str, Dict[str, torch.Tensor]] = {}
        for name, (module, runtime) in self._tables.items():
            impl = module.impl
            for slot in ("exp_avg", "exp_avg_sq"):
                if SLOT_PREFIX + slot not in impl.storage.slots:
                    impl.add_slot(SLOT_PREFIX + slot, [impl.dim], impl.dtype, 0.0)
            # float32 powers advanced by in-place multiplies, as RecIS's SparseAdamW keeps them
            # (equal rounding gives equal rows); "clock" is the eviction clock (steps taken)
            self._table_state[name] = {"beta1_power": torch.ones((), dtype=torch.float32),
                                       "beta2_power": torch.ones((), dtype=torch.float32),
                                       "step": torch.zeros((), dtype=torch.int64),
                                       "clock": torch.tensor(runtime.step, dtype=torch.int64)}
        group = {"params": [], "lr": hp["lr"], "betas": (hp["beta1"], hp["beta2"]), "eps": hp["eps"],
                 "weight_decay": hp["weight_decay"], "optimizer": hp["optimizer"]}
        super().__init__(params=self.params, state=self.state, param_groups=[group])

    # ------------------------------------------------------------------ KeyedOptimizer surface
    # ``params`` and ``state`` are computed on access: a table's embedding storage is replaced
    # when it grows, so the tensor keys must be the current ones (KeyedOptimizer.__init__
    # assigns both; the setters ignore that).
    @property
    def params(self) -> Dict[str, torch.Tensor]:
        return {f"{name}.weight": module.impl.embedding for name, (module, _) in self._tables.items()}

    @params.setter
    def params(self, value) -> None:
        pass

    @property
    def state(self) -> Dict[torch.Tensor, Dict[str, torch.Tensor]]:
        return {module.impl.embedding: self._table_state[name] for name, (module, _) in self._tables.items()}

    @state.setter
    def state(self, value) -> None:
        pass

    def post_load_state_dict(self) -> None:
        for name, (_, runtime) in self._tables.items():
            runtime.step = int(self._table_state[name]["clock"])

    def zero_grad(self, set_to_none: bool = False) -> None:
        """Drop the buffered row gradients of every table."""
        for module, _ in self._tables.values():
            module.impl.clear_grad()

    def _had_grads(self) -> Dict[str, bool]:
        """Which tables had gradients this step; for a sharded table, whether any shard did
        (an all-reduce over its process group, so every rank advances the same powers)."""
        flags = {name: module.impl.has_grad() for name, (module, _) in self._tables.items()}
        groups: Dict[Any, list] = {}
        for name, (module, _) in self._tables.items():
            pg = module.impl.process_group
            if pg is not None:
                groups.setdefault(pg, []).append(name)
        for pg, names in groups.items():
            t = torch.tensor([int(flags[n]) for n in names], dtype=torch.int32)
            dist.all_reduce(t, op=dist.ReduceOp.MAX, group=pg)
            for n, f in zip(names, t.tolist()):
                flags[n] = bool(f)
        return flags

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:
        """Apply the buffered row gradients of every table, then run the tables' eviction."""
        loss = closure() if closure is not None else None
        group = self.param_groups[0]
        lr, (b1, b2), eps, wd = float(group["lr"]), group["betas"], float(group["eps"]), float(group["weight_decay"])
        decay = 1.0 - lr * wd if group.get("optimizer", "adamw") == "adamw" else 1.0
        had = self._had_grads()
        for name, (module, runtime) in self._tables.items():
            impl = module.impl
            st = self._table_state[name]
            if had[name]:
                b1p, b2p = st["beta1_power"].mul_(b1), st["beta2_power"].mul_(b2)
                st["step"].add_(1)
                with impl.lock:
                    got = impl.grad_rows()
                    if got is not None:
                        rows, grad = got
                        sparse_adam_rows_(impl.embedding, impl.get_slot(SLOT_PREFIX + "exp_avg"),
                                          impl.get_slot(SLOT_PREFIX + "exp_avg_sq"), rows, grad.contiguous(),
                                          lr=lr, beta1=b1, beta2=b2, eps=eps, decay=decay,
                                          beta1_power=float(b1p), beta2_power=float(b2p))
                    impl.clear_grad()
            st["clock"].add_(1)
            runtime.step = int(st["clock"])
            runtime.evict_stale(impl)
        return loss

    def beta_powers(self, table: str) -> Tuple[float, float]:
        st = self._table_state[table]
        return float(st["beta1_power"]), float(st["beta2_power"])
