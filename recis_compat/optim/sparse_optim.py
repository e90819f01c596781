"""``recis.optim.sparse_optim.SparseOptimizer``: base of the row-sparse table optimizers (§1.6.1).

A sparse optimizer updates the dynamic tables from ``filter_out_sparse_param(model)`` lazily:
at each real step, per table, the gradients buffered by the lookups' backward passes are summed
per row and divided by the accumulation steps, and only those rows (and their moment slots) are
updated, by the csrc kernel ``sparse_adam_rows_`` (parallel over rows). Moments are slots of the
table (``<prefix>exp_avg``, ``<prefix>exp_avg_sq``), so they grow with it, are reset on eviction
and are saved with it.

Per-table state: running powers ``beta1_power``/``beta2_power`` that advance only on steps in which
the table had gradients (TF's per-variable beta power); for a sharded table, when any of its
shards had gradients, so all ranks hold the same powers (RecIS advances each shard's own). ``state_dict()`` keeps RecIS's key names
``<prefix>step``, ``<prefix>beta1``, ``<prefix>beta2`` (0-dim powers of the first table) and adds
``<prefix>beta1:<table>`` / ``<prefix>beta2:<table>`` for every table, so several tables resume
exactly (RecIS's keys collide, Q6); ``load_state_dict`` restores them (a no-op in RecIS).
``<prefix>step`` counts the updates applied (RecIS never increments it).

Thread safety: each table's update runs under the table's lock (``DynamicTableImpl.lock``), so a
step concurrent with lookups or backward passes in other threads neither loses rows that grow the
table meanwhile nor applies half of a gradient.
"""
from __future__ import annotations

import contextlib
import math
from collections import OrderedDict
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import torch

from recis_compat.backend.table_impl import DynamicTableImpl
from recis_compat.ops.multi_table import sgd_rows_multi_
from recis_compat.ops.optim import sparse_adam_rows_

__all__ = ["SparseOptimizer", "SparseAdamFamily", "sgd_rows_"]


def sgd_rows_(slots: Sequence[torch.Tensor], rows: Sequence[torch.Tensor], grads: Sequence[torch.Tensor],
              lr: float) -> None:
    """``slot[rows] -= lr * grad`` for several tables: ``slots[t]`` ``[R_t, D_t]`` (updated in
    place), ``rows[t]`` int64 ``[U_t]`` distinct (what :meth:`DynamicTableImpl.grad_rows` gives),
    ``grads[t]`` ``[U_t, D_t]`` of the slot's dtype. Bit for bit
    ``slot.index_copy_(0, rows, slot.index_select(0, rows).add_(grad, alpha=-lr))`` per table (the
    SGD update of ``torch.optim.SGD`` on a sparse gradient); float32/float64 slots are updated by
    one csrc call (csrc/optim/sgd_rows.cpp), others (half, bfloat16) by those ATen ops."""
    fused = [t for t, s in enumerate(slots) if s.dtype in (torch.float32, torch.float64) and s.is_contiguous()]
    if fused:
        sgd_rows_multi_([slots[t] for t in fused], [rows[t] for t in fused], [grads[t] for t in fused], lr)
    if len(fused) != len(slots):
        done = set(fused)
        for t, slot in enumerate(slots):
            if t not in done:
                slot.index_copy_(0, rows[t], slot.index_select(0, rows[t]).add_(grads[t], alpha=-lr))


def _check_hyper(name: str, lr, beta1, beta2, eps, weight_decay) -> None:
    if not isinstance(lr, (int, float)) or isinstance(lr, bool) or not math.isfinite(lr) or lr < 0:
        raise ValueError(f"{name}: invalid learning rate {lr!r} (must be a finite number >= 0)")
    for label, b in (("beta1", beta1), ("beta2", beta2)):
        if not 0.0 <= float(b) < 1.0:
            raise ValueError(f"{name}: invalid {label} {b!r} (must be in [0, 1))")
    if not float(eps) >= 0.0:
        raise ValueError(f"{name}: invalid eps {eps!r} (must be >= 0)")
    if not float(weight_decay) >= 0.0:
        raise ValueError(f"{name}: invalid weight_decay {weight_decay!r} (must be >= 0)")


class SparseOptimizer(torch.optim.Optimizer):
    """Base: param groups for LR schedulers, the step / zero_grad cadence under gradient
    accumulation, and the table dict.

    Args:
        lr: learning rate (``param_groups[0]["lr"]``, which torch LR schedulers change).
    """

    def __init__(self, lr: float = 0.01):
        super().__init__([{"params": [], "lr": lr, "initial_lr": lr}], {"lr": lr})
        self._tables: "OrderedDict[str, DynamicTableImpl]" = OrderedDict()
        self._local_step = 0
        self._grad_accum_steps = 1

    # ------------------------------------------------------------------ tables
    def filter_param_dict(self, param_dict: dict) -> "OrderedDict[str, DynamicTableImpl]":
        """Validate ``param_dict`` and drop entries whose table is already listed (by identity)."""
        if not isinstance(param_dict, dict):
            raise TypeError(f"{type(self).__name__}: expects the dict from filter_out_sparse_param(model), got "
                            f"{type(param_dict).__name__}")
        seen = {id(t) for t in self._tables.values()}
        out: "OrderedDict[str, DynamicTableImpl]" = OrderedDict()
        for name, table in param_dict.items():
            if not isinstance(table, DynamicTableImpl):
                raise TypeError(f"{type(self).__name__}: entry {name!r} is a {type(table).__name__}, not a dynamic "
                                "table; pass filter_out_sparse_param(model) (dense parameters go to a torch "
                                "optimizer)")
            if id(table) not in seen:
                seen.add(id(table))
                out[name] = table
        return out

    def add_params(self, params: dict) -> None:
        for name, table in self.filter_param_dict(params).items():
            self._tables[name] = table
            self._init_table(name, table)

    def _init_table(self, name: str, table: DynamicTableImpl) -> None:
        """Create the per-table state (subclasses)."""

    @property
    def tables(self) -> Dict[str, DynamicTableImpl]:
        return dict(self._tables)

    # ------------------------------------------------------------------ cadence
    def set_grad_accum_steps(self, steps: int) -> None:
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"{type(self).__name__}: grad accumulation steps must be an int >= 1, got {steps!r}")
        self._grad_accum_steps = steps

    @property
    def local_step(self) -> int:
        """Micro-steps counted by :meth:`step` (the gradient-accumulation position)."""
        return self._local_step

    def set_local_step(self, step: int) -> None:
        """Continue counting micro-steps from ``step`` (a restored checkpoint's global step), so
        accumulation windows resume where they were left."""
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"{type(self).__name__}: local step must be an int >= 0, got {step!r}")
        self._local_step = step

    def _at_boundary(self) -> bool:
        return self._local_step % self._grad_accum_steps == 0

    @torch.no_grad()
    def step(self) -> None:
        """Count a micro-step; every ``grad_accum_steps``-th one applies the update."""
        self._local_step += 1
        if self._at_boundary():
            self._apply(float(self.param_groups[0]["lr"]))

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear the tables' gradient buffers, only at an accumulation boundary (in step with
        :meth:`step`)."""
        if self._at_boundary():
            for table in self._tables.values():
                table.clear_grad()

    def _apply(self, lr: float) -> None:
        raise NotImplementedError(f"{type(self).__name__} must implement _apply(lr)")

    @contextlib.contextmanager
    def grads_of_tables(self) -> Iterator[List[Tuple[DynamicTableImpl, torch.Tensor, torch.Tensor]]]:
        """Every trainable table's summed gradient of this step, for an update of all tables at
        once: yields ``[(table, rows [U] int64, grad [U, dim])]`` (``grad_rows`` with the
        accumulation steps; tables without gradients left out) while holding every listed
        table's lock, taken in table order, so that no lookup grows a table or adds gradients
        between reading them and writing the rows (what a per-table ``with table.lock`` gives)."""
        with contextlib.ExitStack() as stack:
            got = []
            for table in self._tables.values():
                if table.read_only:
                    continue
                stack.enter_context(table.lock)
                g = table.grad_rows(self._grad_accum_steps)
                if g is not None:
                    got.append((table, g[0], g[1]))
            yield got

    # ------------------------------------------------------------------ state
    def state_dict(self) -> "OrderedDict[str, torch.Tensor]":
        """The optimizer's scalars as flat tensors (what checkpoints save beside the tables;
        per-row state lives in table slots). None here: subclasses with scalars override this
        and :meth:`load_state_dict` (torch's ``{"state", "param_groups"}`` form is not savable
        by the checkpoint writer, and the LR belongs to the scheduler's state)."""
        return OrderedDict()

    def load_state_dict(self, state_dict: dict) -> None:
        if state_dict:
            raise KeyError(f"{type(self).__name__}.load_state_dict: this optimizer has no scalars, got keys "
                           f"{sorted(state_dict)[:5]}")


class SparseAdamFamily(SparseOptimizer):
    """Adam with the TF epsilon form and a per-optimizer decay factor (§1.6.2).

    Subclasses set ``prefix`` (slot and state-dict name prefix), ``power_dtype`` and
    :meth:`decay_factor`.
    """

    prefix = "sparse_adam_family_"
    power_dtype = torch.float32

    def __init__(self, param_dict: dict, lr: float = 1e-3, beta1: float = 0.9, beta2: float = 0.999,
                 eps: float = 1e-8, weight_decay: float = 1e-2):
        name = type(self).__name__
        _check_hyper(name, lr, beta1, beta2, eps, weight_decay)
        super().__init__(lr)
        self.beta1, self.beta2 = float(beta1), float(beta2)
        self.eps, self.weight_decay = float(eps), float(weight_decay)
        self._beta1_power: Dict[str, torch.Tensor] = {}
        self._beta2_power: Dict[str, torch.Tensor] = {}
        self._step = torch.zeros(1, dtype=torch.int64)
        self.add_params(param_dict)

    def decay_factor(self, lr: float) -> float:
        raise NotImplementedError

    def _init_table(self, name: str, table: DynamicTableImpl) -> None:
        self._beta1_power[name] = torch.ones((), dtype=self.power_dtype)
        self._beta2_power[name] = torch.ones((), dtype=self.power_dtype)
        if table.read_only:
            return   # integer tables take no gradients
        table.add_slot(self.prefix + "exp_avg", [table.dim], table.dtype, 0.0)
        table.add_slot(self.prefix + "exp_avg_sq", [table.dim], table.dtype, 0.0)

    def _tables_with_grads(self) -> Dict[str, bool]:
        """Which tables had gradients this step. A sharded table had them when any of its
        shards did (an all-reduce over its group), so every rank advances the same beta powers
        as a single-process run would."""
        local = {name: t.has_grad() for name, t in self._tables.items()}
        groups = {}
        for name, t in self._tables.items():
            pg = getattr(t, "process_group", None)
            if pg is not None:
                groups.setdefault(pg, []).append(name)
        for pg, names in groups.items():
            import torch.distributed as dist
            flags = torch.tensor([int(local[n]) for n in names], dtype=torch.int32)
            dist.all_reduce(flags, op=dist.ReduceOp.MAX, group=pg)
            for n, f in zip(names, flags.tolist()):
                local[n] = bool(f)
        return local

    def _apply(self, lr: float) -> None:
        applied = False
        had_grads = self._tables_with_grads()
        for name, table in self._tables.items():
            if not had_grads[name]:
                continue
            b1p = self._beta1_power[name].mul_(self.beta1)
            b2p = self._beta2_power[name].mul_(self.beta2)
            applied = True
            # the table's lock: no lookup may grow (replace) the slots or add gradients between
            # reading the gradients and writing the rows (backend/table_impl.py)
            with table.lock:
                got = table.grad_rows(self._grad_accum_steps)
                if got is None:
                    continue      # another shard of this table had the gradients
                rows, grad = got
                sparse_adam_rows_(table.embedding, table.get_slot(self.prefix + "exp_avg"),
                                  table.get_slot(self.prefix + "exp_avg_sq"), rows, grad.contiguous(),
                                  lr=lr, beta1=self.beta1, beta2=self.beta2, eps=self.eps,
                                  decay=self.decay_factor(lr), beta1_power=float(b1p), beta2_power=float(b2p))
        if applied:
            self._step += 1

    # ------------------------------------------------------------------ state
    def state_dict(self) -> "OrderedDict[str, torch.Tensor]":
        p = self.prefix
        out: "OrderedDict[str, torch.Tensor]" = OrderedDict()
        out[p + "step"] = self._step.clone()
        first = next(iter(self._tables), None)
        if first is not None:
            out[p + "beta1"] = self._beta1_power[first].clone()
            out[p + "beta2"] = self._beta2_power[first].clone()
        for name in self._tables:
            out[f"{p}beta1:{name}"] = self._beta1_power[name].clone()
            out[f"{p}beta2:{name}"] = self._beta2_power[name].clone()
        return out

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore the step and the per-table powers. Tables without their own ``:<table>`` keys
        (e.g. a RecIS checkpoint) take the shared ``<prefix>beta1/2`` values."""
        p = self.prefix
        unknown = [k for k in state_dict if not k.startswith(p)]
        if unknown:
            raise KeyError(f"{type(self).__name__}.load_state_dict: keys {unknown[:5]} do not belong to this "
                           f"optimizer (expected the prefix {p!r})")
        if p + "step" in state_dict:
            self._step.copy_(torch.as_tensor(state_dict[p + "step"]).reshape(1))
        for name in self._tables:
            for which, store in (("beta1", self._beta1_power), ("beta2", self._beta2_power)):
                v: Optional[torch.Tensor] = state_dict.get(f"{p}{which}:{name}", state_dict.get(p + which))
                if v is not None:
                    store[name].copy_(torch.as_tensor(v).reshape(()))

    def beta_powers(self, table: str):
        """``(beta1_power, beta2_power)`` of ``table`` (floats)."""
        return float(self._beta1_power[table]), float(self._beta2_power[table])
