"""RecIS-style scripts that import nothing but ``recis.*`` (and torch) run unchanged here.

``scripts/recis_script.py`` exercises every behaviour of RecIS's API and asserts it inline
(batch structure, ragged layouts, trans_int8 bytes, FeatureEngine pass-through, EmbeddingEngine
shapes and dense pass-through, filter_out_sparse_param before/after moving the model,
SparseAdamWTF, Trainer with add_hooks / LoggerHook / save_steps / add_metric, AUROC, Logger,
ArgumentParser with TrainingArguments flags, ProfilerHook, HashTableFilterHook,
dist.init_process_group under torchrun) and calls ``model.cuda()``.

``scripts/recis_script_as_shipped.py`` is written as RecIS ships its examples: it keeps
``torch.cuda.set_device(int(os.getenv("RANK", "-1")))``, the ``cpu_count() // 16`` thread setup,
``model.cuda()``, ``.cuda()``/``.to("cuda")`` on tensors, ``device="cuda"`` everywhere,
``torch.autocast("cuda", dtype=torch.bfloat16)`` and a bare ``dist.init_process_group()``.

Both run under ``RECIS_COMPAT_DEVICE=cpu`` on 1 and 2 processes (torchrun, gloo): the CPU mode
(recis_compat/utils/cpu_mode.py) is the only thing between them and a CPU host. Without the
variable the as-shipped script fails on its first CUDA call with an error naming it.
"""
from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
SCRIPT = pathlib.Path(__file__).parent / "scripts" / "recis_script.py"
SHIPPED = pathlib.Path(__file__).parent / "scripts" / "recis_script_as_shipped.py"
CPU_MODE_BANNER = "recis-compat CPU mode (RECIS_COMPAT_DEVICE=cpu)"


def _env(cpu_mode: bool = True):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "adapters"), env.get("PYTHONPATH", "")])
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "RECIS_COMPAT_DEVICE"):
        env.pop(k, None)
    env["OMP_NUM_THREADS"] = "1"
    if cpu_mode:
        env["RECIS_COMPAT_DEVICE"] = "cpu"
    return env


def _torchrun(world: int, script: pathlib.Path, *args: str):
    torchrun = pathlib.Path(sys.executable).with_name("torchrun")
    return [str(torchrun), "--nproc_per_node", str(world), "--rdzv_backend", "c10d",
            "--rdzv_endpoint", "localhost:0", str(script), *args]


def test_script_uses_only_supported_recis_apis():
    from click.testing import CliRunner

    from recis_compat.cli import main
    res = CliRunner().invoke(main, ["check-script", "--json", str(SCRIPT)])
    assert res.exit_code == 0, res.output
    report = json.loads(res.output)
    assert report["unsupported"] == 0 and len(report["apis"]) >= 20
    assert all(a["supported"] for a in report["apis"])


def test_check_script_verdict_on_the_as_shipped_script_matches_running_it():
    """check-script says the as-shipped script runs on this CPU host only with the CPU mode:
    what the two torchrun tests below observe (runs with RECIS_COMPAT_DEVICE=cpu, stops
    naming it without). Every CUDA call it lists is mapped by the mode or works without a GPU."""
    from click.testing import CliRunner

    from recis_compat.cli import main
    from recis_compat.utils.cpu_mode import MAPPED_CALLS
    res = CliRunner().invoke(main, ["check-script", "--json", str(SHIPPED)])
    assert res.exit_code == 0, res.output
    report = json.loads(res.output[res.output.index("{"):])
    assert report["unsupported"] == 0 and report["runnable"] is True and report["needs_cpu_mode"] is True
    cuda = [f for f in report["findings"] if f["kind"] == "cuda"]
    assert all(f["supported"] for f in cuda), cuda
    mapped = " ".join(f["call"] for f in cuda if f["cpu_mode"])
    for call in ("torch.cuda.set_device", "model.cuda()", "torch.autocast", ".to('cuda')", "torch.ones"):
        assert call in mapped, (call, mapped)
    effects = {effect for _, effect in MAPPED_CALLS}
    # a method call on an untyped receiver (x.cuda()) lists every mapped method of that name
    assert all(any(e in f["effect"] for e in effects) for f in cuda if f["cpu_mode"]), cuda


@pytest.mark.distributed
@pytest.mark.parametrize("world", [1, 2])
def test_recis_script_runs_under_torchrun(tmp_path, world, run_multiprocess):
    out = tmp_path / "ckpt"
    proc = run_multiprocess(_torchrun(world, SCRIPT, "--data_dir", str(tmp_path / "data"), "--output_dir", str(out),
                                      "--train_steps", "6", "--log_steps", "2", "--save_steps", "3"),
                            env=_env(), capture_output=True, text=True, timeout=240, cwd=tmp_path)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert log.count(CPU_MODE_BANNER) == world                  # one startup warning per process
    for r in range(world):
        assert f"COMPAT-OK {r}" in log
    # LoggerHook lines every 2 steps with the add_metric value; checkpoints every 3 steps + end
    assert log.count("<auc=tensor(") >= 3 * world
    assert (out / "checkpoint").read_text().split() == ["ckpt_3", "ckpt_6"]
    assert {"model.pt", "extra.pt", "index"} <= set(os.listdir(out / "ckpt_6"))
    assert list(out.glob("*timeline*.json")), "ProfilerHook wrote no trace"


@pytest.mark.distributed
@pytest.mark.parametrize("world", [1, 2])
def test_recis_script_as_shipped_runs_under_cpu_mode(tmp_path, world, run_multiprocess):
    out = tmp_path / "ckpt"
    proc = run_multiprocess(_torchrun(world, SHIPPED, "--data_dir", str(tmp_path / "data"), "--output_dir", str(out),
                                      "--train_steps", "4", "--log_steps", "2", "--save_steps", "2"),
                            env=_env(), capture_output=True, text=True, timeout=240, cwd=tmp_path)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    for r in range(world):
        # set_device/current_device mapped, cpu_count() // 16 threads raised to at least 1
        assert re.search(rf"SHIPPED-OK {r} device=0 threads=[1-9]", log), log[-3000:]
    assert log.count(CPU_MODE_BANNER) == world
    assert (out / "checkpoint").read_text().split() == ["ckpt_2", "ckpt_4"]
    assert log.count("<loss=tensor(") >= 2 * world


@pytest.mark.distributed
def test_recis_script_as_shipped_without_the_variable_names_it(tmp_path):
    """No RECIS_COMPAT_DEVICE on a host without CUDA: the script stops at its first call that
    needs the CPU mode (the thread setup on hosts with fewer than 16 CPUs, else
    ``torch.cuda.set_device(0)`` under torchrun) with an error naming the variable."""
    import torch
    if torch.cuda.is_available():
        pytest.skip("needs a host without CUDA")
    proc = subprocess.run(_torchrun(1, SHIPPED, "--data_dir", str(tmp_path / "data"), "--output_dir",
                                    str(tmp_path / "ckpt"), "--train_steps", "2"),
                          env=_env(cpu_mode=False), capture_output=True, text=True, timeout=240, cwd=tmp_path)
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0
    if os.cpu_count() < 16:
        assert "torch.set_num_interop_threads(0): torch needs at least 1 thread" in log, log[-3000:]
    else:
        assert "torch.cuda.set_device: device cuda was requested but no CUDA device is available" in log, \
            log[-3000:]
    assert "Set RECIS_COMPAT_DEVICE=cpu" in log
    assert CPU_MODE_BANNER not in log
