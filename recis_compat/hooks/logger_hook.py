"""``recis.hooks.logger_hook.LoggerHook``: periodic metric lines (§1.8).

Line format: ``<gstep=G> <lstep=L> <qps=X.XXXX> <k=v> ...`` where ``qps`` is steps per second
since the previous logged line and values are printed with ``str()``.
"""
from __future__ import annotations

import time

from recis_compat.hooks.hook import Hook
from recis_compat.utils.logger import Logger

logger = Logger("Metirc")  # sic: RecIS's logger name, kept so log filters keep matching


class LoggerHook(Hook):
    """Log ``metrics`` every ``log_step`` calls of :meth:`after_step` (its own call counter)."""

    def __init__(self, log_step: int = 10):
        if int(log_step) <= 0:
            raise ValueError(f"LoggerHook: log_step must be > 0, got {log_step}")
        self.log_step = int(log_step)
        self.lstep = 0
        self.last_time = time.time()

    @staticmethod
    def format_metrics(metrics: dict) -> str:
        return " ".join(f"<{k}={str(v)}>" for k, v in metrics.items())

    def after_step(self, metrics: dict = None, global_step=0, **kwargs):
        if self.lstep % self.log_step == 0:
            now = time.time()
            qps = self.log_step / max(now - self.last_time, 1e-9)
            self.last_time = now
            gstep = int(global_step) if global_step is not None else 0
            line = f"<gstep={gstep}> <lstep={self.lstep}> <qps={qps:.4f}>"
            if metrics:
                line += " " + self.format_metrics(metrics)
            logger.info(line)
        self.lstep += 1
