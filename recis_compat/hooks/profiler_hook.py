"""``recis.hooks.profiler_hook.ProfilerHook``: torch.profiler traces during training (§1.8).

Each ready trace is written as a Chrome trace ``"{APP_ID or 'local'}-timeline-{step}.json"``
into ``output_dir`` (RecIS writes it to the working directory and then copies it; we write it
once, atomically, into ``output_dir``).
"""
from __future__ import annotations

import os

import torch
from torch.profiler import ProfilerActivity, profile
from torch.profiler import schedule as make_schedule

from recis_compat.hooks.hook import Hook
from recis_compat.utils.logger import Logger

logger = Logger(__name__)


class ProfilerHook(Hook):
    """Profile with ``schedule(wait, warmup, active, repeat)``; CPU (and CUDA when available).

    RecIS's FAQ writes ``ProfilerHook(output_dir=..., schedule=..., on_trace_ready=...)``: a
    ``torch.profiler.schedule`` given as ``schedule`` replaces the one built from ``wait`` /
    ``warmup`` / ``active`` / ``repeat``, and ``on_trace_ready`` replaces the handler that writes
    ``<APP_ID>-timeline-<step>.json`` into ``output_dir`` (COMPATIBILITY.md).
    """

    def __init__(self, wait: int = 1, warmup: int = 48, active: int = 1, repeat: int = 4,
                 output_dir: str = "./", *, schedule=None, on_trace_ready=None):
        self.output_dir = output_dir
        os.makedirs(output_dir, exist_ok=True)
        activities = [ProfilerActivity.CPU]
        if torch.cuda.is_available():
            activities.append(ProfilerActivity.CUDA)
        if schedule is None:
            schedule = make_schedule(wait=wait, warmup=warmup, active=active, repeat=repeat)
        elif not callable(schedule):
            raise TypeError(f"ProfilerHook(schedule=...) expects a torch.profiler.schedule (a callable "
                            f"step -> ProfilerAction), got {type(schedule).__name__}")
        if on_trace_ready is not None and not callable(on_trace_ready):
            raise TypeError(f"ProfilerHook(on_trace_ready=...) expects a callable taking the profiler, "
                            f"got {type(on_trace_ready).__name__}")
        self.prof = profile(activities=activities, schedule=schedule,
                            on_trace_ready=on_trace_ready or self.get_trace_handler(), with_stack=True,
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
