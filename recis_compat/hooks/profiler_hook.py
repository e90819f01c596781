"""``recis.hooks.profiler_hook.ProfilerHook``: torch.profiler traces during training (§1.8).

Each ready trace is written as a Chrome trace ``"{APP_ID or 'local'}-timeline-{step}.json"``
into ``output_dir`` (RecIS writes it to the working directory and then copies it; we write it
once, atomically, into ``output_dir``).
"""
from __future__ import annotations

import os

import torch
from torch.profiler import ProfilerActivity, profile, schedule

from recis_compat.hooks.hook import Hook
from recis_compat.utils.logger import Logger

logger = Logger(__name__)


class ProfilerHook(Hook):
    """Profile with ``schedule(wait, warmup, active, repeat)``; CPU (and CUDA when available)."""

    def __init__(self, wait: int = 1, warmup: int = 48, active: int = 1, repeat: int = 4,
                 output_dir: str = "./"):
        self.output_dir = output_dir
        os.makedirs(output_dir, exist_ok=True)
        activities = [ProfilerActivity.CPU]
        if torch.cuda.is_available():
            activities.append(ProfilerActivity.CUDA)
        self.prof = profile(activities=activities,
                            schedule=schedule(wait=wait, warmup=warmup, active=active, repeat=repeat),
                            on_trace_ready=self.get_trace_handler(), with_stack=True,
                            profile_memory=True, record_shapes=True, with_flops=True)
        self.prof.start()
        self._stopped = False

    def get_trace_handler(self):
        def handler(prof):
            name = f"{os.environ.get('APP_ID', 'local')}-timeline-{prof.step_num}.json"
            path = os.path.join(self.output_dir, name)
            tmp = path + ".tmp"
            prof.export_chrome_trace(tmp)
            os.replace(tmp, path)
            logger.info(f"profiler trace written to {path}")
        return handler

    def after_step(self, *args, **kwargs):
        if not self._stopped:
            self.prof.step()

    def end(self, *args, **kwargs):
        if not self._stopped:
            self.prof.stop()
            self._stopped = True
