"""Trainer checkpoints: exact resume after SIGKILL (also during a save), 2-process save/resume,
resharding 2 -> 1 and 1 -> 2 ranks, and clear errors for broken checkpoints.

Every run is ``workers/resume_worker.py`` (a RecIS script: OrcDataset, EmbeddingEngine, dropout
MLP, SparseAdamW + AdamW + StepLR, gradient accumulation 2, save every 4 steps) in a subprocess.
"""
from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest
import torch

REPO = pathlib.Path(__file__).resolve().parents[2]
WORKER = pathlib.Path(__file__).parent / "workers" / "resume_worker.py"

sys.path.insert(0, str(WORKER.parent))
import resume_worker  # noqa: E402
from torchrun_launch import run_launch  # noqa: E402  (tests/torchrun_launch.py)


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "adapters"), env.get("PYTHONPATH", "")])
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(k, None)
    env["OMP_NUM_THREADS"] = "1"
    return env


def run(tmp: pathlib.Path, *args: str, nproc: int = 0, check: bool = True) -> subprocess.CompletedProcess:
    if nproc:
        torchrun = pathlib.Path(sys.executable).with_name("torchrun")
        cmd = [str(torchrun), "--nproc_per_node", str(nproc), "--master_port", "0", "--rdzv_backend", "c10d",
               "--rdzv_endpoint", "localhost:0", str(WORKER)]
    else:
        cmd = [sys.executable, str(WORKER)]
    kwargs = dict(env=_env(), cwd=tmp, capture_output=True, text=True, timeout=300)
    proc = run_launch(cmd + ["--data", str(tmp / "data"), *args], **kwargs)
    if check:
        assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    resume_worker.make_data(str(root / "data"))
    return root


def _load(path):
    return torch.load(path, weights_only=False)


def _merge(dumps):
    tables = {}
    for d in dumps:
        for t, rows in d["tables"].items():
            tables.setdefault(t, {}).update(rows)
    return tables


def assert_same_tables(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for t in a:
        assert sorted(a[t]) == sorted(b[t]), f"table {t}: ids differ"
        for i, slots in a[t].items():
            assert set(slots) == set(b[t][i]), f"table {t} id {i}: slots differ"
            for s, v in slots.items():
                assert torch.equal(v, b[t][i][s]), f"table {t} id {i} slot {s}"


def assert_same_run(a: dict, b: dict) -> None:
    assert_same_tables(a["tables"], b["tables"])
    for k in a["dense"]:
        assert torch.equal(a["dense"][k], b["dense"][k]), k
    for k in a["sparse_opt"]:
        assert torch.equal(a["sparse_opt"][k], b["sparse_opt"][k]), k
    sa, sb = a["dense_opt"]["state"], b["dense_opt"]["state"]
    for p in sa:
        for k in sa[p]:
            assert torch.equal(torch.as_tensor(sa[p][k]), torch.as_tensor(sb[p][k])), (p, k)


@pytest.fixture(scope="module")
def full_single(data_dir):
    run(data_dir, "--out", "full1", "--dump", "full1.pt")
    return _load(data_dir / "full1.pt")


def test_sigkill_then_resume_is_exact(data_dir, full_single):
    proc = run(data_dir, "--out", "killed", "--kill-at-step", "10", check=False)
    assert proc.returncode != 0
    assert (data_dir / "killed" / "checkpoint").read_text().split() == ["ckpt_4", "ckpt_8"]
    proc = run(data_dir, "--out", "killed", "--dump", "resumed.pt")
    assert "loaded checkpoint" in proc.stderr + proc.stdout
    assert_same_run(full_single, _load(data_dir / "resumed.pt"))


def test_sigkill_during_save_keeps_previous_checkpoint(data_dir, full_single):
    proc = run(data_dir, "--out", "killsave", "--kill-during-save", "8", check=False)
    assert proc.returncode != 0
    out = data_dir / "killsave"
    # the interrupted checkpoint is not published; the previous one is listed and complete
    assert (out / "checkpoint").read_text().split() == ["ckpt_4"]
    assert not (out / "ckpt_8").exists()
    assert (out / ".ckpt_8.tmp").is_dir()
    assert {"model.pt", "extra.pt", "index", "io_state_0.pt"} <= set(os.listdir(out / "ckpt_4"))
    run(data_dir, "--out", "killsave", "--dump", "resumed_save.pt")
    assert not (out / ".ckpt_8.tmp").exists()
    assert_same_run(full_single, _load(data_dir / "resumed_save.pt"))


@pytest.mark.distributed
def test_two_process_save_resume_and_reshard(data_dir, full_single):
    run(data_dir, "--out", "full2", "--dump", "full2_RANK.pt", nproc=2)
    full2 = [_load(data_dir / f"full2_{r}.pt") for r in range(2)]
    proc = run(data_dir, "--out", "killed2", "--kill-at-step", "6", nproc=2, check=False)
    assert proc.returncode != 0
    assert (data_dir / "killed2" / "checkpoint").read_text().split() == ["ckpt_4"]
    run(data_dir, "--out", "killed2", "--dump", "res2_RANK.pt", nproc=2)
    res2 = [_load(data_dir / f"res2_{r}.pt") for r in range(2)]
    for a, b in zip(full2, res2):
        assert_same_run(a, b)
    # 2 ranks -> 1: every row and optimizer slot of the 2-rank run, in one table
    last = (data_dir / "full2" / "checkpoint").read_text().split()[-1]
    run(data_dir, "--out", "bank1", "--model-bank", str(data_dir / "full2" / last), "--steps", "0",
        "--dump", "bank1.pt")
    assert_same_tables(_merge(full2), _load(data_dir / "bank1.pt")["tables"])
    # 1 rank -> 2: each rank keeps its slice, together every row
    last1 = (data_dir / "full1" / "checkpoint").read_text().split()[-1]
    run(data_dir, "--out", "bank2", "--model-bank", str(data_dir / "full1" / last1), "--steps", "0",
        "--dump", "bank2_RANK.pt", nproc=2)
    bank2 = [_load(data_dir / f"bank2_{r}.pt") for r in range(2)]
    assert_same_tables(full_single["tables"], _merge(bank2))
    # a 1-rank checkpoint's io state cannot resume a 2-rank run
    import shutil
    shutil.copytree(data_dir / "full1", data_dir / "wrongworld")
    proc = run(data_dir, "--out", "wrongworld", nproc=2, check=False)
    assert proc.returncode != 0
    assert "io_state was written by 1 workers" in proc.stderr


def _copy_ckpt(data_dir, name):
    import shutil
    dst = data_dir / name
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(data_dir / "full1", dst)
    last = (dst / "checkpoint").read_text().split()[-1]
    return dst, dst / last


@pytest.mark.parametrize("damage, message", [
    ("missing_model_pt", "model.pt is missing"),
    ("corrupt_extra", "extra.pt"),
    ("corrupt_safetensors", "safetensors"),
    ("listed_but_missing", "does not exist"),
    ("flipped_safetensors_byte", "is corrupt"),
    ("flipped_model_pt_byte", "is corrupt"),
    ("list_entry_escapes_root", "points outside the checkpoint directory"),
])
def test_broken_checkpoints_give_clear_errors(data_dir, full_single, damage, message):
    root, ckpt = _copy_ckpt(data_dir, f"broken_{damage}")
    if damage == "missing_model_pt":
        (ckpt / "model.pt").unlink()
    elif damage == "corrupt_extra":
        (ckpt / "extra.pt").write_bytes(b"not a torch file")
    elif damage == "corrupt_safetensors":
        f = sorted(ckpt.glob("*.safetensors"))[0]
        f.write_bytes(f.read_bytes()[:20])
    elif damage == "listed_but_missing":
        import shutil
        shutil.rmtree(ckpt)
    elif damage in ("flipped_safetensors_byte", "flipped_model_pt_byte"):
        # one bit in the middle of the file: headers stay valid, only a checksum can tell
        f = sorted(ckpt.glob("*.safetensors"))[-1] if damage == "flipped_safetensors_byte" else ckpt / "model.pt"
        raw = bytearray(f.read_bytes())
        raw[len(raw) * 2 // 3] ^= 0x04
        f.write_bytes(bytes(raw))
    elif damage == "list_entry_escapes_root":
        (root / "checkpoint").write_text(f"../{root.name}/{ckpt.name}\n")
    proc = run(data_dir, "--out", str(root), "--steps", "0", check=False)
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr[-3000:]
    assert str(ckpt.name) in proc.stderr


def test_no_checkpoint_starts_fresh_with_one_log_line(data_dir):
    proc = run(data_dir, "--out", "fresh", "--steps", "0")
    assert (proc.stdout + proc.stderr).count("Checkpoint not found") == 1
