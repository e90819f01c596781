"""Row-sparse SGD and Adagrad for dynamic tables, written on ``recis.optim.sparse_optim.SparseOptimizer``.

recis.optim ships the Adam family only (SparseAdam, SparseAdamW, SparseAdamWTF); OneFlow's DLRM
trains every parameter with plain SGD (lr 24 with warmup and decay), so this example adds the
two optimizers DLRM users pick, through the base class's contract: ``_init_table`` creates
per-row slots, ``_apply(lr)`` reads each table's summed row gradients (``grad_rows``) under
the table's lock and writes the rows. Gradient accumulation, ``zero_grad`` cadence and LR
scheduling (``param_groups[0]["lr"]``) come from the base class.

Both update only the rows that had gradients in the step (the rows of the step's ids), as
torch's ``SGD``/``Adagrad`` do for an ``nn.EmbeddingBag(sparse=True)``; a table with no ids in
the step is left alone. Slots (Adagrad's ``sum``) are table slots, so checkpoints hold them;
neither has scalars, so the base class's empty ``state_dict`` stands.
"""
from __future__ import annotations

import math

import torch

from recis.optim.sparse_optim import SparseOptimizer, sgd_rows_

__all__ = ["SparseSGD", "SparseAdagrad"]


def _check_lr(name: str, lr) -> float:
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr < 0:
        raise ValueError(f"{name}: invalid learning rate {lr!r} (must be a finite number >= 0)")
    return float(lr)


class SparseSGD(SparseOptimizer):
    """``row -= lr * grad`` for every row with a gradient.

    Args:
        param_dict: ``filter_out_sparse_param(model)``.
        lr: learning rate (``param_groups[0]["lr"]``; LR schedulers may change it).
    """

    def __init__(self, param_dict: dict, lr: float = 0.01):
        super().__init__(_check_lr("SparseSGD", lr))
        self.add_params(param_dict)

    @torch.no_grad()
    def _apply(self, lr: float) -> None:
        # every table's distinct rows in one call (sgd_rows_: bit for bit the per-table
        # index_select / add_ / index_copy_), all tables' locks held from the gradients to the rows
        with self.grads_of_tables() as got:
            if got:
                sgd_rows_([t.embedding for t, _, _ in got], [rows for _, rows, _ in got],
                          [grad.to(t.dtype) for t, _, grad in got], lr)


class SparseAdagrad(SparseOptimizer):
    """torch ``Adagrad`` per row: ``sum += grad ** 2``; ``row -= lr * grad / (sqrt(sum) + eps)``.

    Args:
        param_dict: ``filter_out_sparse_param(model)``.
        lr: learning rate.
        initial_accumulator_value: the ``sum`` slot of a new row.
        eps: added to ``sqrt(sum)``.
    """

    slot = "sparse_adagrad_sum"

    def __init__(self, param_dict: dict, lr: float = 0.01, initial_accumulator_value: float = 0.0,
                 eps: float = 1e-10):
        if not float(initial_accumulator_value) >= 0.0:
            raise ValueError(f"SparseAdagrad: initial_accumulator_value must be >= 0, got {initial_accumulator_value}")
        if not float(eps) >= 0.0:
            raise ValueError(f"SparseAdagrad: eps must be >= 0, got {eps}")
        self.initial_accumulator_value, self.eps = float(initial_accumulator_value), float(eps)
        super().__init__(_check_lr("SparseAdagrad", lr))
        self.add_params(param_dict)

    def _init_table(self, name, table) -> None:
        if not table.read_only:
            table.add_slot(self.slot, [table.dim], table.dtype, self.initial_accumulator_value)

    @torch.no_grad()
    def _apply(self, lr: float) -> None:
        for table in self._tables.values():
            if table.read_only:
                continue
            with table.lock:
                got = table.grad_rows(self._grad_accum_steps)
                if got is None:
                    continue
                rows, grad = got
                acc = table.get_slot(self.slot)
                s = acc.index_select(0, rows).addcmul_(grad, grad)
                acc.index_copy_(0, rows, s)
                emb = table.embedding
                emb.index_copy_(0, rows, emb.index_select(0, rows).add_(grad / (s.sqrt() + self.eps), alpha=-lr))
