"""The deepctr and seq2seq examples (RecIS 1.0; see COMPATIBILITY.md).

In process: each model built from the example's own modules and fed one generated batch gives
the shapes and table layout the contract states (deepctr: tile outputs ``[B,1000,16]``, dense
input width 32064, two physical tables; seq2seq: ``[B,seq_len,dim]`` per feature, one table
with four children). Under torchrun (1 and 2 processes): the entry point trains a few steps,
logs loss lines (and the AUC for deepctr), and writes a checkpoint; run.sh works as well.
"""
from __future__ import annotations

import contextlib
import importlib
import math
import os
import pathlib
import re
import subprocess
import sys

import pytest
import torch

REPO = pathlib.Path(__file__).resolve().parents[2]
DEEPCTR = REPO / "examples" / "deepctr"
SEQ2SEQ = REPO / "examples" / "seq2seq"
TORCHRUN = pathlib.Path(sys.executable).with_name("torchrun")
# the examples import their sibling modules by these plain names
_EXAMPLE_MODULES = ("dataset", "model", "feature_config", "transformer", "seq2seq_model",
                    "deepctr", "runner", "make_orc_data", "make_data")
# small seq2seq model for the CPU
S2S_MODEL_FLAGS = ["--seq_len=32", "--emb_size=64", "--hidden_size=64", "--num_layers=1",
                   "--nhead=2", "--dim_feedforward=128"]


@contextlib.contextmanager
def _example_path(example: pathlib.Path):
    """Import an example's modules by their plain names without leaking them (both examples
    have a ``dataset`` module) into ``sys.modules`` of the test session."""
    saved = {m: sys.modules.pop(m) for m in _EXAMPLE_MODULES if m in sys.modules}
    sys.path.insert(0, str(example))
    try:
        yield
    finally:
        sys.path.remove(str(example))
        for m in _EXAMPLE_MODULES:
            sys.modules.pop(m, None)
        sys.modules.update(saved)


def _env() -> dict:
    env = dict(os.environ)
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "adapters")]
                                        + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["OMP_NUM_THREADS"] = "1"
    env["PY"] = sys.executable
    env["RECIS_COMPAT_NO_PROGRESS"] = "1"
    return env


@pytest.fixture(scope="module")
def deepctr_data(tmp_path_factory):
    """2 files x 96 rows; sparse4/sparse5 rows up to 1999 long (cut to 1000 by the model)."""
    out = tmp_path_factory.mktemp("deepctr") / "fake_data"
    subprocess.run([sys.executable, str(DEEPCTR / "make_orc_data.py"), "--out", str(out), "--files", "2",
                    "--rows", "96", "--seed", "1"], check=True, capture_output=True)
    return out


@pytest.fixture(scope="module")
def seq2seq_data(tmp_path_factory):
    """2 files x 64 users, sequences of 1..48 steps (some longer than seq_len=32)."""
    out = tmp_path_factory.mktemp("seq2seq") / "data"
    subprocess.run([sys.executable, str(SEQ2SEQ / "make_data.py"), "--out", str(out), "--files", "2",
                    "--rows", "64", "--max_len", "48", "--seed", "1"], check=True, capture_output=True)
    return out


# ---------------------------------------------------------------------------- in process
@pytest.fixture(autouse=True)
def _restore_global_metrics():
    """The models add_metric("auc" / "hit_rate" / "loss") into a process-wide dict that every
    later Trainer merges into its logs; leave it as it was."""
    from recis.framework.metrics import get_global_metrics
    saved = dict(get_global_metrics())
    yield
    get_global_metrics().clear()
    get_global_metrics().update(saved)


def test_deepctr_shapes_and_tables(deepctr_data):
    with _example_path(DEEPCTR):
        dataset = importlib.import_module("dataset")
        model_mod = importlib.import_module("model")
    batch_size = 16
    ds = dataset.get_dataset(dataset.IOArgs(data_paths=str(deepctr_data), batch_size=batch_size))
    end, batch = next(iter(ds))
    assert not end
    assert batch["label"].shape == (batch_size, 1) and batch["label"].dtype == torch.float32
    assert batch["dense1"].shape == (batch_size, 8)
    assert len(batch["sparse5"].offsets()) == 2            # strings as bytes: one more level
    assert int(batch["sparse4"].offsets()[0].diff().max()) > 1000   # rows longer than the cut

    torch.manual_seed(0)
    model = model_mod.DeepCTR()
    samples, labels = model.sparse_arch(batch)
    expected = {"dense1": (batch_size, 8), "dense2": (batch_size, 8), "sparse1": (batch_size, 8),
                "sparse2": (batch_size, 16), "sparse3": (batch_size, 8),
                "sparse4": (batch_size, 1000, 16), "sparse5": (batch_size, 1000, 16),
                "sparse1_x_sparse2": (batch_size, 16)}
    assert {k: tuple(v.shape) for k, v in samples.items()} == expected
    assert labels.shape == (batch_size, 1)
    # tile: row r holds the embeddings of its first min(len, 1000) ids, zeros after
    lens = batch["sparse4"].offsets()[0].diff()
    short = int(torch.argmin(lens))
    n = int(lens[short])
    assert n < 1000
    assert samples["sparse4"][short, :n].abs().sum(1).gt(0).all()
    assert samples["sparse4"][short, n:].abs().sum() == 0
    # dense2's bucket ids share rows with sparse1 (the first batch holds sparse1 ids 0..B-1)
    assert batch["sparse1"].values().tolist() == list(range(batch_size))
    buckets = model.sparse_arch.feature_engine(batch)["dense2"]
    assert buckets.shape == (batch_size, 1) and buckets.dtype == torch.int64
    assert torch.equal(samples["dense2"], samples["sparse1"][buckets[:, 0]])
    x = model.dense_input(samples)
    assert x.shape == (batch_size, 32064) and model_mod.INPUT_WIDTH == 32064
    assert model.dense_arch.dnn[0].in_features == 32064

    # table merging: dim 8 -> one table (sparse1, sparse3); dim 16 -> one table (4 children)
    tables = sorted(sorted(m._emb_opt.children) for m in model.sparse_arch.embedding_engine._ht.values())
    assert tables == [["sparse1", "sparse3"], ["sparse1_x_sparse2", "sparse2", "sparse4", "sparse5"]]

    loss = model(batch)
    assert loss.dim() == 0 and math.isfinite(loss.item())
    loss.backward()
    from recis.framework.metrics import get_global_metrics
    assert 0.0 <= float(get_global_metrics()["auc"]) <= 1.0


def test_seq2seq_shapes_and_tables(seq2seq_data):
    with _example_path(SEQ2SEQ):
        dataset = importlib.import_module("dataset")
        model_mod = importlib.import_module("seq2seq_model")
    batch_size, seq_len = 8, 32
    ds = dataset.get_dataset(dataset.IOArgs(data_paths=str(seq2seq_data), batch_size=batch_size))
    end, batch = next(iter(ds))
    assert not end
    for name in ("item_id", "cate_id", "behavior_id", "timestamp"):
        assert len(batch[name].offsets()) == 2 and batch[name].values().dtype == torch.int64
    assert int(batch["behavior_id"].values().min()) >= 0                  # murmur & INT64_MAX
    assert int(batch["timestamp"].values().max()) < 2048000               # murmur % bucket

    cfg = model_mod.ModelConfig(seq_len=seq_len, hidden_size=64, num_layers=1, nhead=2,
                                dim_feedforward=128, emb_size=64)
    torch.manual_seed(0)
    model = model_mod.Seq2SeqModel(cfg)
    out = model.sparse(batch)
    for name in ("item_id", "cate_id", "behavior_id", "timestamp"):
        assert out[name].shape == (batch_size, seq_len, 16), name
    # steps past a sequence's end are empty: zero embeddings
    steps = batch["item_id"].offsets()[0].diff()
    short = int(torch.argmin(steps))
    if int(steps[short]) < seq_len:
        assert out["item_id"][short, int(steps[short]):].abs().sum() == 0
    assert model.build_embedding(out).shape == (batch_size, seq_len, 64)
    children = [m._emb_opt.children for m in model.sparse.embedding_engine._ht.values()]
    assert children == [["item_id", "cate_id", "behavior_id", "timestamp"]]

    loss = model(batch)
    # at initialisation every target looks alike: loss ~ log(number of in-batch candidates)
    assert abs(loss.item() - math.log(batch_size * (seq_len - 1))) < 0.5
    loss.backward()
    model.eval()
    with torch.no_grad():
        assert model(batch).shape == (batch_size, seq_len, 64)


# ---------------------------------------------------------------------------- torchrun
def _torchrun(run_multiprocess, entry: pathlib.Path, world: int, cwd: pathlib.Path, *args: str) -> str:
    """Runs ``entry`` under torchrun writing checkpoints to ``cwd / "ckpt"``."""
    cmd = [str(TORCHRUN), "--nproc_per_node", str(world), "--rdzv_backend", "c10d",
           "--rdzv_endpoint", "localhost:0", str(entry), *args]
    proc = run_multiprocess(cmd, env=_env(), capture_output=True, text=True, timeout=180,
                            cwd=cwd, check=False)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    return log


def _check_run(log: str, ckpt: pathlib.Path, world: int, steps: int) -> None:
    losses = re.findall(r"<loss=tensor\(([-0-9.e]+)", log)
    assert len(losses) == steps * world, log[-3000:]
    assert all(math.isfinite(float(v)) for v in losses)
    assert (ckpt / "checkpoint").read_text().split() == [f"ckpt_{steps}"]
    assert (ckpt / f"ckpt_{steps}" / "index").is_file()
    assert sorted(p.name for p in (ckpt / f"ckpt_{steps}").glob("io_state_*.pt")) == \
        [f"io_state_{r}.pt" for r in range(world)]


@pytest.mark.distributed
@pytest.mark.parametrize("world", [1, 2])
def test_deepctr_under_torchrun(deepctr_data, tmp_path, world, run_multiprocess):
    steps = 3
    log = _torchrun(run_multiprocess, DEEPCTR / "deepctr.py", world, tmp_path, f"--data_paths={deepctr_data}",
                    "--batch_size=32", f"--train_steps={steps}", "--log_steps=1",
                    f"--output_dir={tmp_path / 'ckpt'}")
    _check_run(log, tmp_path / "ckpt", world, steps)
    aucs = re.findall(r"<auc=tensor\(([-0-9.e]+)", log)
    assert len(aucs) == steps * world and all(0.0 <= float(a) <= 1.0 for a in aucs)


@pytest.mark.distributed
@pytest.mark.parametrize("world", [1, 2])
def test_seq2seq_under_torchrun(seq2seq_data, tmp_path, world, run_multiprocess):
    steps = 3
    log = _torchrun(run_multiprocess, SEQ2SEQ / "runner.py", world, tmp_path, f"--data_paths={seq2seq_data}",
                    "--batch_size=8", f"--train_steps={steps}", "--log_steps=1",
                    f"--output_dir={tmp_path / 'ckpt'}", *S2S_MODEL_FLAGS)
    _check_run(log, tmp_path / "ckpt", world, steps)
    assert len(re.findall(r"<hit_rate=tensor\(", log)) == steps * world


@pytest.mark.distributed
@pytest.mark.parametrize("example,extra", [(DEEPCTR, ["--batch_size=32"]),
                                           (SEQ2SEQ, ["--batch_size=8", *S2S_MODEL_FLAGS])],
                         ids=["deepctr", "seq2seq"])
def test_run_sh(example, extra, deepctr_data, seq2seq_data, tmp_path, run_multiprocess):
    env = _env()
    data = deepctr_data if example == DEEPCTR else seq2seq_data
    env.update(WORLD_SIZE="2", DATA=str(data), OUTPUT_DIR=str(tmp_path / "ckpt"), MASTER_PORT="0")
    proc = run_multiprocess(["bash", str(example / "run.sh"), "--train_steps=2", "--log_steps=1", *extra],
                            env=env, capture_output=True, text=True, timeout=180,
                            cwd=tmp_path, check=False)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    _check_run(proc.stdout + proc.stderr, tmp_path / "ckpt", 2, 2)
