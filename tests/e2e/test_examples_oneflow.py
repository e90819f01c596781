"""examples/dlrm and examples/deepfm_criteo (OneFlow's DLRM and DeepFM workloads on recis).

Every run is the example's ``run.sh`` (torchrun, 1 or 2 processes) on a small synthetic Criteo
set made by the examples' make_data.py (criteo-synth + criteo-to-parquet; table sizes capped at
300 so a few steps learn something), with OneFlow argument names appended. Checked: training
steps, periodic validation AUC/logloss and the final test evaluation (all rows, sane values),
the snapshots OneFlow names (``step_<S>_val_auc_<A>``, ``best_checkpoint``), loading them back
(the same AUC/logloss under 1 and 2 processes), bf16 autocast under ``--amp``, DeepFM's LR
decay per epoch and plateau early stop, and the store arguments (``cached_ssd``: the same run with
every table in files under a 1 MiB budget gives the in-RAM run's numbers; bad values refused). ``test_dlrm_matches_plain_pytorch_dlrm`` is issue 15 item 4's
accuracy check: our DLRM against a plain-PyTorch DLRM (``nn.EmbeddingBag`` tables holding the
same initial rows, the same dense weights, batches and optimizer) for a fixed number of steps:
validation AUC within 0.003.
"""
from __future__ import annotations

import glob
import importlib
import json
import math
import os
import pathlib
import re
import socket
import subprocess
import sys

import pytest
import torch

REPO = pathlib.Path(__file__).resolve().parents[2]
DLRM = REPO / "examples" / "dlrm"
DEEPFM = REPO / "examples" / "deepfm_criteo"
sys.path.insert(0, str(REPO / "tests"))
from torchrun_launch import run_launch  # noqa: E402

ROWS, HELDOUT, PER_FILE = 6000, 2000, 1500          # train: 4 files; val, test: 1000 rows each
SIZES = [min(s, 300) for s in (39884406, 39043, 17289, 7420, 20263, 3, 7120, 1543, 63, 38532951, 2953546, 403346,
                               10, 2208, 11938, 155, 4, 976, 14, 39979771, 25641295, 39664984, 585935, 12972, 108, 36)]
SMALL_DLRM = ["--embedding_vec_size", "16", "--bottom_mlp", "32,16", "--top_mlp", "32,16",
              "--train_batch_size", "500", "--eval_batch_size", "500", "--eval_batches", "1000",
              "--warmup_batches", "2", "--decay_start", "1000", "--decay_batches", "10", "--loss_print_interval", "5"]
SMALL_DEEPFM = ["--embedding_vec_size", "8", "--dnn", "32,16", "--batch_size", "1000", "--loss_print_interval", "2"]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> pathlib.Path:
    out = tmp_path_factory.mktemp("oneflow") / "criteo"
    sys.path.insert(0, str(DLRM))
    try:
        make_data = importlib.import_module("make_data")
        make_data.write(str(out), ROWS, HELDOUT, PER_FILE, seed=3, table_size_array=SIZES, row_group_rows=500)
    finally:
        sys.path.remove(str(DLRM))
        sys.modules.pop("make_data", None)
    return out


def _sizes(data: pathlib.Path) -> str:
    return ",".join(map(str, json.loads((data / "dataset_info.json").read_text())["table_size_array"]))


def run(example: pathlib.Path, data: pathlib.Path, save: pathlib.Path, *args: str, world: int = 1,
        check: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    env.update(OMP_NUM_THREADS="1", PY=sys.executable, WORLD_SIZE=str(world), MASTER_PORT=str(_port()),
               DATA=str(data), MODEL_SAVE_DIR=str(save), RECIS_COMPAT_NO_PROGRESS="1")
    proc = run_launch(["bash", str(example / "run.sh"), *args], env=env, capture_output=True, text=True, timeout=240)
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def _metrics(path: pathlib.Path) -> dict:
    return json.loads(path.read_text())


def _sane(m: dict, samples: int, min_auc: float) -> None:
    assert m["samples"] == samples
    assert min_auc < m["auc"] < 1.0, m
    assert 0.0 < m["logloss"] < 0.7, m


# ----------------------------------------------------------------------------- DLRM
@pytest.fixture(scope="module")
def dlrm_w1(data, tmp_path_factory):
    """One training run of the DLRM example, 1 process, snapshots after each evaluation."""
    tmp = tmp_path_factory.mktemp("dlrm_w1")
    proc = run(DLRM, data, tmp / "save", *SMALL_DLRM, "--train_batches", "12", "--eval_interval", "6", "--optimizer",
        "adagrad", "--learning_rate", "0.05", "--table_size_array", _sizes(data), "--save_model_after_each_eval",
        "--save_initial_model", "--metrics_json", str(tmp / "m.json"))
    (tmp / "stdout.txt").write_text(proc.stdout)
    return tmp, _metrics(tmp / "m.json")


def test_dlrm_trains_and_evaluates_one_process(dlrm_w1):
    tmp, m = dlrm_w1
    assert m["world_size"] == 1 and m["steps"] == 12 and len(m["losses"]) == 12
    assert all(math.isfinite(x) for x in m["losses"])
    assert [e["step"] for e in m["evals"]] == [6, 12]
    _sane(m["evals"][0], HELDOUT // 2, 0.0)       # a few steps in: any AUC, all rows, finite
    _sane(m["evals"][-1], HELDOUT // 2, 0.55)
    _sane(m["test"], HELDOUT // 2, 0.55)
    names = sorted(os.path.basename(p) for p in glob.glob(str(tmp / "save" / "*")))
    assert "initial_checkpoint" in names and "train_state" in names
    assert f"step_12_val_auc_{m['evals'][1]['auc']:0.5f}" in names, names
    # OneFlow's log lines, printed by rank 0
    out = (tmp / "stdout.txt").read_text()
    assert re.search(r"^Rank\[0\], Step 10, Loss \d+\.\d{4}, Latency [\d.]+ ms, Throughput [\d.]+, ", out, re.M), out
    e = m["evals"][1]
    assert f"Rank[0], Step 12, AUC {e['auc']:0.6f}, LogLoss {e['logloss']:0.6f}, Eval_samples 1000, " in out
    assert f"Rank[0], Step 12, Test AUC {m['test']['auc']:0.6f}, LogLoss {m['test']['logloss']:0.6f}, " in out


@pytest.mark.distributed
def test_dlrm_two_processes(data, tmp_path):
    run(DLRM, data, tmp_path / "save", *SMALL_DLRM, "--train_batches", "8", "--eval_interval", "4", "--optimizer",
        "adagrad", "--learning_rate", "0.05", "--table_size_array", _sizes(data), "--metrics_json",
        str(tmp_path / "m.json"), world=2)
    m = _metrics(tmp_path / "m.json")
    assert m["world_size"] == 2 and m["steps"] == 8 and all(math.isfinite(x) for x in m["losses"])
    assert [e["step"] for e in m["evals"]] == [4, 8]
    _sane(m["evals"][0], HELDOUT // 2, 0.0)       # a few steps in: any AUC, all rows, finite
    _sane(m["evals"][-1], HELDOUT // 2, 0.55)
    _sane(m["test"], HELDOUT // 2, 0.55)


@pytest.mark.distributed
@pytest.mark.parametrize("world", [1, 2])
def test_dlrm_saved_model_loads_with_same_metrics(dlrm_w1, data, tmp_path, world):
    """The step-12 snapshot of the 1-process run, loaded by 1 or 2 processes and evaluated
    without training (``--train_batches 0``), gives that run's step-12 validation and its test
    AUC/logloss: tables, slots and dense weights round-trip, and a sharded evaluation sees the
    same rows."""
    tmp, m = dlrm_w1
    snap = glob.glob(str(tmp / "save" / "step_12_val_auc_*"))[0]
    run(DLRM, data, tmp_path / "save", *SMALL_DLRM, "--train_batches", "0", "--eval_interval", "6",
        "--optimizer", "adagrad", "--table_size_array", _sizes(data), "--model_load_dir", snap,
        "--metrics_json", str(tmp_path / "m.json"), world=world)
    got = _metrics(tmp_path / "m.json")
    assert got["steps"] == 0 and got["evals"][0]["samples"] == HELDOUT // 2
    for key in ("auc", "logloss"):
        assert got["evals"][0][key] == pytest.approx(m["evals"][1][key], abs=1e-6)
        assert got["test"][key] == pytest.approx(m["test"][key], abs=1e-6)
    assert got["table_ids"] == m["table_ids"]


def test_dlrm_amp_runs_bf16(data, tmp_path):
    run(DLRM, data, tmp_path / "save", *SMALL_DLRM, "--train_batches", "4", "--eval_interval", "4", "--amp",
        "--loss_scale_policy", "dynamic", "--optimizer", "adagrad", "--learning_rate", "0.05",
        "--metrics_json", str(tmp_path / "m.json"))
    m = _metrics(tmp_path / "m.json")
    assert m["amp"] is True and m["compute_dtype"] == "torch.bfloat16"
    assert all(math.isfinite(x) for x in m["losses"])
    _sane(m["test"], HELDOUT // 2, 0.5)


@pytest.mark.parametrize("example", ["dlrm", "deepfm_criteo"])
@pytest.mark.parametrize("args,message", [
    (["--store_type", "cached_ssd"], "--store_type cached_ssd needs --persistent_path"),
    (["--store_type", "cached_host_mem", "--cache_memory_budget_mb", "0"], "--cache_memory_budget_mb must be > 0"),
    (["--store_type", "hbm"], "--store_type must be one of device_mem, cached_host_mem, cached_ssd"),
    (["--loss_scale_policy", "auto"], "--loss_scale_policy must be static or dynamic"),
])
def test_store_and_amp_arguments_refused_clearly(data, tmp_path, example, args, message):
    ex = DLRM if example == "dlrm" else DEEPFM
    proc = run(ex, data, tmp_path / "save", *args, check=False)
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr[-3000:]


def test_dlrm_cached_ssd_store_equals_in_ram(dlrm_w1, data, tmp_path):
    """``--store_type cached_ssd`` (every table's rows and Adagrad slots in files under
    ``--persistent_path``, a 1 MiB RAM budget) trains and evaluates exactly like the in-RAM run
    of the ``dlrm_w1`` fixture; the row files are gone after the run."""
    _, ref = dlrm_w1
    store = tmp_path / "store"
    run(DLRM, data, tmp_path / "save", *SMALL_DLRM, "--train_batches", "12", "--eval_interval", "6", "--optimizer",
        "adagrad", "--learning_rate", "0.05", "--table_size_array", _sizes(data), "--store_type", "cached_ssd",
        "--persistent_path", str(store), "--cache_memory_budget_mb", "1", "--metrics_json", str(tmp_path / "m.json"))
    m = _metrics(tmp_path / "m.json")
    assert "cached_ssd" in m["store_note"] and str(store) in m["store_note"]
    assert m["losses"] == ref["losses"]
    for key in ("auc", "logloss"):
        assert [e[key] for e in m["evals"]] == [e[key] for e in ref["evals"]]
        assert m["test"][key] == ref["test"][key]
    assert store.is_dir() and not any(store.iterdir())


def test_persistent_path_must_be_a_directory(data, tmp_path):
    f = tmp_path / "afile"
    f.write_text("x")
    proc = run(DLRM, data, tmp_path / "save", "--persistent_path", str(f), check=False)
    assert proc.returncode != 0 and f"--persistent_path {f} exists and is not a directory" in proc.stderr


def test_device_mem_runs_in_ram_on_cpu(data, tmp_path):
    run(DLRM, data, tmp_path / "save", *SMALL_DLRM, "--train_batches", "2", "--eval_interval", "0",
        "--store_type", "device_mem", "--metrics_json", str(tmp_path / "m.json"))
    m = _metrics(tmp_path / "m.json")
    assert "device_mem" in m["store_note"] and "RAM" in m["store_note"]
    assert m["evals"] == [] and m["test"]["samples"] == HELDOUT // 2


# ----------------------------------------------------------------------------- DeepFM
@pytest.mark.parametrize("world", [1, pytest.param(2, marks=pytest.mark.distributed)])
def test_deepfm_epochs_lr_decay_early_stop_best_model(data, tmp_path, world):
    """Epoch = ceil(6000 / 1000) = 6 steps; validation after each; ``--min_delta 1`` makes the
    second epoch a plateau and ``--patience 1`` stops there (step 12 of 100); the LR was
    multiplied by lr_factor after each epoch; the test evaluation uses best_checkpoint (epoch 1)."""
    run(DEEPFM, data, tmp_path / "save", *SMALL_DEEPFM, "--train_batches", "100", "--learning_rate", "0.01",
        "--patience", "1", "--min_delta", "1.0", "--save_best_model", "--metrics_json", str(tmp_path / "m.json"),
        world=world)
    m = _metrics(tmp_path / "m.json")
    assert m["world_size"] == world and m["batches_per_epoch"] == 6
    assert m["early_stopped"] is True and m["steps"] == 12
    assert [e["step"] for e in m["evals"]] == [6, 12]
    assert [e["improved"] for e in m["evals"]] == [True, False]
    for e in m["evals"]:
        _sane(e, HELDOUT // 2, 0.6)
    _sane(m["test"], HELDOUT // 2, 0.6)
    assert m["lr_milestones"][:2] == [6, 12]
    assert m["final_lr"] == pytest.approx(0.01 * 0.1 ** 2) and m["final_sparse_lr"] == pytest.approx(m["final_lr"])
    best = tmp_path / "save" / "best_checkpoint"
    assert best.is_dir()
    # the best model, loaded and evaluated alone, gives the reported test numbers
    run(DEEPFM, data, tmp_path / "save2", *SMALL_DEEPFM, "--train_batches", "0", "--model_load_dir", str(best),
        "--metrics_json", str(tmp_path / "m2.json"), world=world)
    got = _metrics(tmp_path / "m2.json")
    for key in ("auc", "logloss"):
        assert got["test"][key] == pytest.approx(m["test"][key], abs=1e-6)


def test_deepfm_amp_runs_bf16(data, tmp_path):
    run(DEEPFM, data, tmp_path / "save", *SMALL_DEEPFM, "--train_batches", "3", "--amp", "--learning_rate", "0.01",
        "--metrics_json", str(tmp_path / "m.json"))
    m = _metrics(tmp_path / "m.json")
    assert m["compute_dtype"] == "torch.bfloat16" and all(math.isfinite(x) for x in m["losses"])
    _sane(m["test"], HELDOUT // 2, 0.5)


def test_deepfm_needs_sample_counts(tmp_path, data):
    """Without dataset_info.json the sample counts are required, as in OneFlow's script."""
    d = tmp_path / "criteo"
    for split in ("train", "val", "test"):
        (d / split).mkdir(parents=True)
        for p in (data / split).glob("*.parquet"):
            (d / split / p.name).symlink_to(p)
    proc = run(DEEPFM, d, tmp_path / "save", check=False)
    assert proc.returncode != 0 and "--num_train_samples is required" in proc.stderr, proc.stderr[-2000:]


# ----------------------------------------------------------------------------- accuracy vs plain PyTorch
def _import_dlrm():
    from recis_compat.benchmarks.train_bench import import_isolated
    return import_isolated(DLRM, ("dlrm_data", "dlrm_model", "sparse_optimizers", "oneflow_protocol"))


class PlainDLRM(torch.nn.Module):
    """DLRM in plain PyTorch: one ``nn.EmbeddingBag(sparse=True)`` per field over contiguous
    rows, the dot interaction written out, MLPs as ``nn.Sequential`` (weights set by the test)."""

    def __init__(self, rows, dim, ours):
        super().__init__()
        self.tables = torch.nn.ModuleList(torch.nn.EmbeddingBag(r.shape[0], dim, mode="sum", sparse=True)
                                          for r in rows)
        with torch.no_grad():
            for t, r in zip(self.tables, rows):
                t.weight.copy_(r)
        import copy
        self.bottom, self.top = copy.deepcopy(ours.bottom_mlp), copy.deepcopy(ours.top_mlp)
        self.num_dense, self.pad_to = ours.num_dense, ours.interaction.output_size

    def forward(self, dense, idx):
        """dense ``[B, 13]``, idx ``[B, 26]`` rows -> logits ``[B]``."""
        x = self.bottom(torch.nn.functional.pad(dense, (0, self.num_dense - dense.shape[1])))
        b = dense.shape[0]
        offs = torch.arange(b, dtype=torch.int64)
        emb = torch.stack([t(idx[:, j], offs) for j, t in enumerate(self.tables)], 1)
        t = torch.cat([x.unsqueeze(1), emb], 1)
        z = t @ t.transpose(1, 2)
        n = t.shape[1]
        inter = torch.cat([z[:, i, :i] for i in range(1, n)], 1)
        out = torch.cat([x, inter], 1)
        out = torch.nn.functional.pad(out, (0, self.pad_to - out.shape[1]))
        return self.top(out).reshape(-1)


@pytest.mark.parametrize("optimizer,lr", [("sgd", 3.0), ("adagrad", 0.05)])
def test_dlrm_matches_plain_pytorch_dlrm(data, optimizer, lr):
    """Issue 15 item 4: same data, same steps -> validation AUC within 0.003 of plain PyTorch."""
    m = _import_dlrm()
    D, P, SO = m["dlrm_data"], m["oneflow_protocol"], m["sparse_optimizers"]
    from recis_compat.nn.modules.hashtable import filter_out_sparse_param
    torch.manual_seed(0)
    sizes = [int(x) for x in _sizes(data).split(",")]
    ours = m["dlrm_model"].DLRM(16, [32, 16], [32, 16], sizes)

    def batches(split, bs):
        out = []
        for item in D.make_dataset(sorted(glob.glob(str(data / split / "*.parquet"))), bs, drop_remainder=False):
            end, b = item
            if end or b is None:
                break
            out.append(b)
        return out

    train, val = batches("train", 250) * 2, batches("val", 500)          # 48 steps: two passes
    # insert every id (training-mode forward, no grad): the tables draw their initial rows
    with torch.no_grad():
        for b in train + val:
            ours(b)
    eng = ours.embedding_engine
    uniq, rows = [], []
    for c in D.SPARSE:
        ids = torch.unique(torch.cat([b[c].values() for b in train + val]))
        impl = eng.tables()[eng.table_of(c)].hashtable.impl
        r = impl.find_rows(eng.table_ids(c, ids))
        assert bool((r >= 0).all())
        uniq.append(ids)
        rows.append(impl.embedding.index_select(0, r).clone())
    ref = PlainDLRM(rows, 16, ours)

    def ref_inputs(b):
        idx = torch.stack([torch.searchsorted(u, b[c].values()) for u, c in zip(uniq, D.SPARSE)], 1)
        return b["dense"], idx, b["label"].reshape(-1)

    sched = lambda opt: P.lambda_scheduler(opt, lambda s: P.dlrm_lr_factor(s, 5, 30, 18))  # noqa: E731
    if optimizer == "sgd":
        o_dense = torch.optim.SGD(ours.parameters(), lr=lr)
        o_sparse = SO.SparseSGD(filter_out_sparse_param(ours), lr=lr)
        r_opt = torch.optim.SGD(ref.parameters(), lr=lr)
    else:
        o_dense = torch.optim.Adagrad(ours.parameters(), lr=lr)
        o_sparse = SO.SparseAdagrad(filter_out_sparse_param(ours), lr=lr)
        r_opt = torch.optim.Adagrad(ref.parameters(), lr=lr)
    scheds = [sched(o_dense), sched(o_sparse), sched(r_opt)]
    bce = torch.nn.BCEWithLogitsLoss()
    for b in train:
        loss = ours(b)
        loss.backward()
        o_dense.step()
        o_sparse.step()
        o_dense.zero_grad()
        o_sparse.zero_grad()
        dense, idx, label = ref_inputs(b)
        r_loss = bce(ref(dense, idx), label)
        r_loss.backward()
        r_opt.step()
        r_opt.zero_grad()
        for s in scheds:
            s.step()
    ours.eval()
    ref.eval()
    with torch.no_grad():
        p_ours = torch.cat([torch.sigmoid(ours.logits(b)) for b in val])
        p_ref = torch.cat([torch.sigmoid(ref(*ref_inputs(b)[:2])) for b in val])
        label = torch.cat([b["label"].reshape(-1) for b in val])
    auc_ours, auc_ref = P.auc_score(p_ours, label), P.auc_score(p_ref, label)
    print(f"{optimizer}: AUC ours {auc_ours:.6f} plain {auc_ref:.6f}")
    assert auc_ours > 0.52, auc_ours          # it learned something
    assert abs(auc_ours - auc_ref) <= 0.003, (auc_ours, auc_ref)
    assert abs(P.log_loss(p_ours, label) - P.log_loss(p_ref, label)) < 0.003


def test_auc_score_matches_the_pairwise_definition():
    m = _import_dlrm()
    P = m["oneflow_protocol"]
    g = torch.Generator().manual_seed(0)
    pred = torch.randint(0, 20, (300,), generator=g).float() / 20         # many ties
    label = (torch.rand(300, generator=g) < 0.3).float()
    pos, neg = pred[label == 1], pred[label == 0]
    pairwise = ((pos[:, None] > neg[None, :]).double() + 0.5 * (pos[:, None] == neg[None, :]).double()).mean()
    assert P.auc_score(pred, label) == pytest.approx(float(pairwise), abs=1e-12)
    assert math.isnan(P.auc_score(pred, torch.zeros(300)))


def test_dlrm_lr_schedule_is_oneflows():
    P = _import_dlrm()["oneflow_protocol"]
    f = [P.dlrm_lr_factor(s, 4, 10, 5) for s in range(18)]
    assert f[:5] == [0.0, 0.25, 0.5, 0.75, 1.0] and f[9] == 1.0
    assert f[10:16] == pytest.approx([1.0, 0.64, 0.36, 0.16, 0.04, 0.0]) and f[17] == 0.0
    assert P.multistep_milestones(6, 0.001, 1e-6, 0.1) == [6, 12, 18]     # 1e-3 -> 1e-6: three decays


def test_dlrm_interaction_sizes_are_oneflows():
    """OneFlow: ``dim + sum(range(F + 1))`` (``interaction_itself``: ``F + 2``), padded to 8."""
    DI = _import_dlrm()["dlrm_model"].DotInteraction
    assert DI(128, 26, itself=False, padding=True).output_size == 480         # 128 + 351 -> 480
    assert DI(128, 26, itself=False, padding=False).output_size == 479
    assert DI(128, 26, itself=True, padding=True).output_size == 512          # 128 + 378 -> 512
    x, emb = torch.randn(4, 8), torch.randn(4, 3, 8)
    out = DI(8, 3, itself=True, padding=True)(x, emb)
    t = torch.cat([x.unsqueeze(1), emb], 1)
    z = t @ t.transpose(1, 2)
    assert out.shape == (4, 24) and torch.equal(out[:, :8], x) and bool((out[:, 18:] == 0).all())
    assert torch.allclose(out[:, 8:18].sort(1).values, torch.cat([z[:, i, :i + 1] for i in range(4)], 1).sort(1).values)
