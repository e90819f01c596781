"""``recis.hooks.tensorboard_hook.TensorBoardHook``: training curves for TensorBoard (not in RecIS).

Every ``log_steps`` calls of ``after_step(metrics, global_step)`` it writes, under ``log_dir``:
``loss`` and every other scalar metric (0-dim tensors, numbers); ``samples_per_sec`` when
``batch_size`` is given; and, when ``model`` is given, per dynamic table ``rows/<table>`` (ids
stored on this rank) and ``evicted/<table>`` (ids evicted by its filter so far).
"""
from __future__ import annotations

import numbers
import time
from typing import Optional

import torch

from recis_compat.hooks.hook import Hook

__all__ = ["TensorBoardHook"]


def _scalar(v):
    if isinstance(v, torch.Tensor) and v.numel() == 1:
        return float(v.detach().reshape(()).item())
    if isinstance(v, numbers.Number) and not isinstance(v, bool):
        return float(v)
    return None


class TensorBoardHook(Hook):
    """Args:
        log_dir: event-file directory (``torch.utils.tensorboard.SummaryWriter``).
        log_steps: write every this many steps (> 0).
        batch_size: samples per step on this rank, for ``samples_per_sec``.
        model: the model whose dynamic tables are reported.
    """

    def __init__(self, log_dir: str, log_steps: int = 100, batch_size: Optional[int] = None,
                 model: Optional[torch.nn.Module] = None):
        if int(log_steps) <= 0:
            raise ValueError(f"TensorBoardHook: log_steps must be > 0, got {log_steps}")
        from torch.utils.tensorboard import SummaryWriter
        self.writer = SummaryWriter(log_dir=log_dir)
        self.log_steps = int(log_steps)
        self.batch_size = batch_size
        self.model = model
        self._calls = 0
        self._last = time.time()
        self._last_calls = 0

    def _tables(self):
        from recis_compat.nn.modules.hashtable import filter_out_sparse_param
        return filter_out_sparse_param(self.model) if self.model is not None else {}

    def after_step(self, metrics=None, global_step=0) -> None:
        self._calls += 1
        if self._calls % self.log_steps:
            return
        step = int(global_step)
        for name, value in (metrics or {}).items():
            s = _scalar(value)
            if s is not None:
                self.writer.add_scalar(str(name), s, step)
        now = time.time()
        if self.batch_size:
            self.writer.add_scalar("samples_per_sec", self.batch_size * (self._calls - self._last_calls)
                                   / max(now - self._last, 1e-9), step)
        self._last, self._last_calls = now, self._calls
        for name, impl in self._tables().items():
            self.writer.add_scalar(f"rows/{name}", len(impl), step)
            self.writer.add_scalar(f"evicted/{name}", getattr(impl, "evicted_total", 0), step)
        self.writer.flush()

    def end(self) -> None:
        self.writer.flush()
        self.writer.close()
