"""Hook base, LoggerHook line format, ProfilerHook traces."""
import json
import re

import pytest
import torch


def test_hook_methods_accept_trainer_calls():
    from recis.hooks import Hook
    h = Hook()
    assert h.after_step({"loss": 1.0}, 3) is None and h.end() is None
    assert h.before_train() is None and h.after_epoch() is None

    class Counting(Hook):
        def __init__(self):
            self.seen = []

        def after_step(self, metrics, global_step):
            self.seen.append((dict(metrics), global_step))

    c = Counting()
    c.after_step({"auc": 0.5}, 7)
    c.end()
    assert c.seen == [({"auc": 0.5}, 7)]


def test_logger_hook_format_and_interval(capsys):
    from recis.hooks import LoggerHook
    hook = LoggerHook(log_step=2)
    for step in range(5):
        hook.after_step({"loss": torch.tensor(0.5), "epoch": 1}, step + 1)
    lines = [l for l in capsys.readouterr().out.splitlines() if "<gstep=" in l]
    assert len(lines) == 3  # lstep 0, 2, 4
    assert re.search(r"\[Metirc\] <gstep=1> <lstep=0> <qps=\d+\.\d{4}> <loss=tensor\(0\.5000\)> <epoch=1>$",
                     lines[0]), lines[0]
    assert "<gstep=5> <lstep=4>" in lines[2]
    assert LoggerHook.format_metrics({"a": 1, "b": "x"}) == "<a=1> <b=x>"
    with pytest.raises(ValueError):
        LoggerHook(0)


def test_profiler_hook_writes_chrome_trace(tmp_path, monkeypatch):
    from recis.hooks import ProfilerHook
    monkeypatch.setenv("APP_ID", "unit")
    hook = ProfilerHook(wait=1, warmup=1, active=1, repeat=1, output_dir=str(tmp_path))
    x = torch.randn(64, 64)
    for _ in range(4):
        (x @ x).sum()
        hook.after_step({}, 0)
    hook.end()
    traces = list(tmp_path.glob("unit-timeline-*.json"))
    assert len(traces) == 1
    assert "traceEvents" in json.loads(traces[0].read_text())


def test_profiler_hook_accepts_the_documented_schedule_and_handler(tmp_path):
    """RecIS's FAQ form: ProfilerHook(output_dir=..., schedule=..., on_trace_ready=...)."""
    from torch.profiler import schedule

    from recis.hooks import ProfilerHook
    ready = []
    hook = ProfilerHook(output_dir=str(tmp_path), schedule=schedule(wait=0, warmup=1, active=2, repeat=1),
                        on_trace_ready=lambda prof: ready.append(prof.step_num))
    x = torch.randn(32, 32)
    for _ in range(5):
        (x @ x).sum()
        hook.after_step({}, 0)
    hook.end()
    assert ready == [3]                      # one trace after warmup 1 + active 2 steps, our handler not used
    assert not list(tmp_path.glob("*-timeline-*.json"))
    with pytest.raises(TypeError, match="schedule"):
        ProfilerHook(output_dir=str(tmp_path), schedule=3)


def test_framework_exports_training_arguments():
    from recis.framework import Trainer, TrainingArguments
    from recis.framework.trainer import Trainer as T2, TrainingArguments as TA2
    assert TrainingArguments is TA2 and Trainer is T2
