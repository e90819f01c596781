"""Delta checkpoints with the Trainer (full every 8 steps, deltas every 2): restoring the chain
gives the live state bit for bit, and a run SIGKILLed between deltas or during a delta's save
resumes from the last complete delta to exactly the uninterrupted result; 1 and 2 processes.

Every run is tests/distributed/workers/delta_worker.py (resume_worker's RecIS script with
``delta_save_steps``) in a subprocess; comparisons use tests/e2e/test_checkpoint_resume.py's.
"""
from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest
import torch

REPO = pathlib.Path(__file__).resolve().parents[2]
WORKER = REPO / "tests" / "distributed" / "workers" / "delta_worker.py"

sys.path.insert(0, str(pathlib.Path(__file__).parent / "workers"))
sys.path.insert(0, str(pathlib.Path(__file__).parent))
import resume_worker  # noqa: E402
from test_checkpoint_resume import _env, assert_same_run  # noqa: E402
from torchrun_launch import run_launch  # noqa: E402  (tests/torchrun_launch.py)

from recis_compat.framework.checkpoint_manager import read_delta_list, resolve_chain  # noqa: E402


def run(tmp: pathlib.Path, *args: str, nproc: int = 0, check: bool = True) -> subprocess.CompletedProcess:
    if nproc:
        torchrun = pathlib.Path(sys.executable).with_name("torchrun")
        cmd = [str(torchrun), "--nproc_per_node", str(nproc), "--master_port", "0", "--rdzv_backend", "c10d",
               "--rdzv_endpoint", "localhost:0", str(WORKER)]
    else:
        cmd = [sys.executable, str(WORKER)]
    proc = run_launch(cmd + ["--data", str(tmp / "data"), *args], env=_env(), cwd=tmp, capture_output=True,
                      text=True, timeout=300)
    if check:
        assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def _load(path):
    return torch.load(path, weights_only=False)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("delta")
    resume_worker.make_data(str(root / "data"))
    return root


def _check_chain_restore(data_dir, out, nproc, *args):
    ranks = max(1, nproc)
    chain = resolve_chain(str(data_dir / out))
    assert chain is not None and chain[1], "the run should end on a delta"
    base, deltas, metas = chain
    assert os.path.basename(base).startswith("ckpt_")
    assert [m["sequence"] for m in metas] == list(range(1, len(metas) + 1))
    assert all(m["shard_num"] == ranks for m in metas)
    run(data_dir, "--out", out, *args, "--steps", "0", "--dump", f"{out}_restored_RANK.pt", nproc=nproc)
    for r in range(ranks):
        assert_same_run(_load(data_dir / f"{out}_live_{r}.pt"), _load(data_dir / f"{out}_restored_{r}.pt"))


@pytest.fixture(scope="module")
def live1(data_dir):
    run(data_dir, "--out", "live1", "--dump", "live1_live_RANK.pt")
    return [_load(data_dir / "live1_live_0.pt")]


def test_chain_restores_the_live_state(data_dir, live1):
    _check_chain_restore(data_dir, "live1", 0)


def test_sigkill_between_deltas_resumes_from_the_last_delta(data_dir, live1):
    proc = run(data_dir, "--out", "k1", "--kill-at-step", "13", check=False)
    assert proc.returncode != 0
    out = data_dir / "k1"
    assert (out / "checkpoint").read_text().split() == ["ckpt_2", "ckpt_8"]
    assert [d for d, b, _ in read_delta_list(str(out)) if b == "ckpt_8"] == ["delta_10", "delta_12"]
    proc = run(data_dir, "--out", "k1", "--dump", "k1_RANK.pt")
    assert "2 deltas (up to" in proc.stderr + proc.stdout
    assert_same_run(live1[0], _load(data_dir / "k1_0.pt"))


def test_sigkill_during_a_delta_save_keeps_the_chain_before_it(data_dir, live1):
    proc = run(data_dir, "--out", "k2", "--kill-during-delta", "12", check=False)
    assert proc.returncode != 0
    out = data_dir / "k2"
    assert (out / ".delta_12.tmp").is_dir() and not (out / "delta_12").exists()
    assert [d for d, b, _ in read_delta_list(str(out)) if b == "ckpt_8"] == ["delta_10"]
    run(data_dir, "--out", "k2", "--dump", "k2_RANK.pt")
    assert not (out / ".delta_12.tmp").exists()
    assert_same_run(live1[0], _load(data_dir / "k2_0.pt"))


@pytest.mark.distributed
def test_two_processes_chain_restore_and_sigkill_between_deltas(data_dir):
    # 15 steps per rank: full at 3 (no chain yet), 6, 12; deltas at 9 and 15
    sched = ("--save-steps", "6", "--delta-steps", "3", "--accum", "1")
    run(data_dir, "--out", "live2", *sched, "--dump", "live2_live_RANK.pt", nproc=2)
    _check_chain_restore(data_dir, "live2", 2, *sched)
    proc = run(data_dir, "--out", "k3", *sched, "--kill-at-step", "11", nproc=2, check=False)
    assert proc.returncode != 0
    assert read_delta_list(str(data_dir / "k3")) == [("delta_9", "ckpt_6", 1)]
    proc = run(data_dir, "--out", "k3", *sched, "--dump", "k3_RANK.pt", nproc=2)
    assert "1 deltas (up to" in proc.stderr + proc.stdout
    for r in range(2):
        assert_same_run(_load(data_dir / f"live2_live_{r}.pt"), _load(data_dir / f"k3_{r}.pt"))
