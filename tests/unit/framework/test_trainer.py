"""Trainer: the training loop, hooks, global step / checkpoint cadence, restore, evaluation and
our deliberate fixes of RecIS quirks (RecIS 1.0; see COMPATIBILITY.md).

SIGKILL resume, multi-process runs, resharding and broken checkpoints are covered by
tests/e2e/test_checkpoint_resume.py; these tests use small in-memory datasets.
"""
from __future__ import annotations

import copy
import logging
import math
import os
import re
import sys

import pytest
import torch
from recis.framework.metrics import GLOBAL_METRICS, add_metric
from recis.framework.trainer import Trainer, TrainingArguments
from recis.hooks import Hook, LoggerHook
from recis.nn import DynamicEmbedding, EmbeddingOption
from recis.nn.modules.hashtable import filter_out_sparse_param
from recis.optim import SparseAdam


# ---------------------------------------------------------------------------------- helpers
@pytest.fixture(autouse=True)
def _clean_global_metrics():
    """add_metric values persist process-wide (as in RecIS); keep tests independent."""
    GLOBAL_METRICS.clear()
    yield
    GLOBAL_METRICS.clear()


class Model(torch.nn.Module):
    """loss = mse(lin(x), y) + sum(emb(ids) * c): the dense and sparse gradients are independent,
    which keeps the manual computations simple. Records every forward call."""

    def __init__(self, table: str = "t_main", dim: int = 2, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.lin = torch.nn.Linear(3, 1)
        self.emb = DynamicEmbedding(EmbeddingOption(embedding_dim=dim, shared_name=table))
        self.calls = []   # (training, grad_enabled, device of x)

    def forward(self, batch):
        assert isinstance(batch, list) and len(batch) == 1
        d = batch[0]
        self.calls.append((self.training, torch.is_grad_enabled(), d["x"].device.type))
        dense = ((self.lin(d["x"]).reshape(-1) - d["y"]) ** 2).mean()
        sparse = (self.emb(d["ids"]) * d["c"]).sum()
        return dense + sparse


def make_batch(k: int, dim: int = 2):
    g = torch.Generator().manual_seed(100 + k)
    return {"x": torch.randn(2, 3, generator=g), "y": torch.randn(2, generator=g),
            "ids": torch.tensor([[1 + k % 3], [2 + k % 2]]), "c": torch.randn(2, dim, generator=g)}


def make_data(n: int, dim: int = 2):
    return [(False, [make_batch(k, dim)]) for k in range(n)]


def make_trainer(model, out, data=None, hooks=None, sparse=True, sched=None, lr=0.1, **args):
    args.setdefault("log_steps", 1000)
    args.setdefault("save_steps", None)
    dense = torch.optim.SGD(model.parameters(), lr=lr)
    scheduler = sched(dense) if sched else None
    sparse_opt = SparseAdam(filter_out_sparse_param(model), lr=0.1) if sparse else None
    return Trainer(model=model, args=TrainingArguments(output_dir=str(out), **args),
                   train_dataset=data if data is not None else make_data(4), hooks=hooks,
                   dense_optimizers=(dense, scheduler), sparse_optimizer=sparse_opt)


class Recorder(Hook):
    def __init__(self):
        self.steps = []      # (int(global_step), dict(metrics))
        self.ends = 0

    def after_step(self, metrics, global_step):
        self.steps.append((int(global_step), dict(metrics)))

    def end(self):
        self.ends += 1


class Capture(logging.Handler):
    """Collects the records of one named logger (our loggers do not propagate to the root)."""

    def __init__(self, name):
        super().__init__(logging.DEBUG)
        self.records = []
        self.logger = logging.getLogger(name)

    def emit(self, record):
        self.records.append(record)

    def __enter__(self):
        self.logger.addHandler(self)
        return self

    def __exit__(self, *exc):
        self.logger.removeHandler(self)

    def messages(self, level=None):
        return [r.getMessage() for r in self.records if level is None or r.levelno == level]


def ckpt_list(out):
    path = os.path.join(str(out), "checkpoint")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [line.strip() for line in f if line.strip()]


def ckpt_dirs(out):
    return sorted(p for p in os.listdir(str(out)) if p.startswith("ckpt_"))


# ---------------------------------------------------------------------------------- step counts
@pytest.mark.parametrize("steps", [1, 3])
def test_train_steps_runs_exactly_n_steps(tmp_path, steps):
    # RecIS runs N-1 (Q1); we run N.
    m = Model()
    rec = Recorder()
    t = make_trainer(m, tmp_path, make_data(6), hooks=[rec], train_steps=steps)
    t.train()
    assert len(m.calls) == steps
    assert t.global_step == steps
    assert [g for g, _ in rec.steps] == list(range(steps))


def test_train_argument_overrides_args_train_steps(tmp_path):
    m = Model()
    t = make_trainer(m, tmp_path, make_data(6), train_steps=5)
    t.train(train_steps=2)
    assert len(m.calls) == 2 and t.global_step == 2


def test_runs_until_data_ends_without_train_steps(tmp_path):
    m = Model()
    t = make_trainer(m, tmp_path, make_data(4))
    t.train()
    assert len(m.calls) == 4 and t.global_step == 4


def test_train_epoch_two_iterates_dataset_twice(tmp_path):
    m = Model()
    rec = Recorder()
    t = make_trainer(m, tmp_path, make_data(3), hooks=[rec], train_epoch=2)
    t.train()
    assert len(m.calls) == 6
    assert [mt["epoch"] for _, mt in rec.steps] == [0, 0, 0, 1, 1, 1]
    assert [g for g, _ in rec.steps] == list(range(6))
    assert rec.ends == 1


@pytest.mark.parametrize("end", [(True, None), (True, [make_batch(9)])])
def test_stop_flag_ends_the_loop(tmp_path, end):
    m = Model()
    data = make_data(2) + [end] + make_data(3)
    t = make_trainer(m, tmp_path, data)
    t.train()
    assert len(m.calls) == 2 and t.global_step == 2


# ---------------------------------------------------------------------------------- hooks
def test_hooks_get_metrics_and_end_once(tmp_path):
    returned = []

    class WithMetric(Model):
        def forward(self, batch):
            loss = super().forward(batch)
            add_metric("auc", torch.tensor(0.25 * len(self.calls)))
            add_metric("n_calls", len(self.calls))
            returned.append(loss)
            return loss

    m = WithMetric(table="t_hooks")
    rec, rec2 = Recorder(), Recorder()
    t = make_trainer(m, tmp_path, make_data(3), hooks=[rec])
    t.add_hook(rec2)
    t.train()
    assert rec.ends == 1 and rec2.ends == 1
    assert len(rec.steps) == 3 and len(rec2.steps) == 3
    for k, (gstep, metrics) in enumerate(rec.steps):
        assert gstep == k      # the global step before this step's increment, as in RecIS
        assert set(metrics) >= {"epoch", "loss", "auc", "n_calls"}
        assert metrics["epoch"] == 0
        assert metrics["loss"] is returned[k]     # the model's own return value
        assert float(metrics["auc"]) == pytest.approx(0.25 * (k + 1))
        assert metrics["n_calls"] == k + 1
    assert [g for g, _ in rec2.steps] == [0, 1, 2]


def test_logger_hook_is_added_and_line_format(tmp_path):
    m = Model(table="t_log")
    t = make_trainer(m, tmp_path, make_data(5), log_steps=2)
    assert isinstance(t.hooks[-1], LoggerHook) and t.hooks[-1].log_step == 2
    with Capture("Metirc") as cap:
        t.train()
    lines = cap.messages(logging.INFO)
    assert len(lines) == 3, lines   # lstep 0, 2, 4; each exactly once (Q20)
    pat = (r"^<gstep=(\d+)> <lstep=(\d+)> <qps=\d+\.\d{4}> <epoch=0> "
           r"<loss=tensor\(-?\d+\.\d+(, grad_fn=<\w+>)?\)>$")
    parsed = []
    for line in lines:
        mt = re.match(pat, line)
        assert mt, line
        parsed.append((int(mt.group(1)), int(mt.group(2))))
    assert parsed == [(0, 0), (2, 2), (4, 4)]


def test_logger_hook_lines_include_added_metrics(tmp_path):
    class WithMetric(Model):
        def forward(self, batch):
            add_metric("auc", torch.tensor(0.5))
            return super().forward(batch)

    t = make_trainer(WithMetric(table="t_logm"), tmp_path, make_data(1), log_steps=1)
    with Capture("Metirc") as cap:
        t.train()
    (line,) = cap.messages(logging.INFO)
    assert re.match(r"^<gstep=0> <lstep=0> <qps=\d+\.\d{4}> <epoch=0> <loss=tensor\(", line), line
    assert line.endswith("> <auc=tensor(0.5000)>"), line


def test_add_hook_rejects_objects_without_after_step(tmp_path):
    t = make_trainer(Model(table="t_addhook"), tmp_path)

    class NoAfterStep:
        def end(self):
            pass

    with pytest.raises(TypeError):
        t.add_hook(NoAfterStep())
    with pytest.raises(TypeError):
        t.add_hooks([Recorder(), object()])
    n = len(t.hooks)
    t.add_hooks([Recorder(), Recorder()])
    assert len(t.hooks) == n + 2


# ---------------------------------------------------------------------------------- errors
def test_non_scalar_loss_raises_type_error(tmp_path):
    class Vector(Model):
        def forward(self, batch):
            super().forward(batch)
            return self.lin(batch[0]["x"]).reshape(-1)

    t = make_trainer(Vector(table="t_vec"), tmp_path, make_data(2))
    with pytest.raises(TypeError, match="scalar"):
        t.train()


def test_non_tensor_loss_raises_type_error(tmp_path):
    class Number(Model):
        def forward(self, batch):
            return super().forward(batch).item()

    t = make_trainer(Number(table="t_num"), tmp_path, make_data(2))
    with pytest.raises(TypeError):
        t.train()


def test_dense_params_without_dense_optimizer_raise(tmp_path):
    m = Model(table="t_nodense")
    t = Trainer(model=m, args=TrainingArguments(output_dir=str(tmp_path), save_steps=None),
                train_dataset=make_data(2), sparse_optimizer=SparseAdam(filter_out_sparse_param(m)))
    with pytest.raises(ValueError, match="dense"):
        t.train()
    assert m.calls == []


def test_train_and_evaluate_dense_params_without_dense_optimizer_raise(tmp_path):
    # same check as train(): otherwise the dense parameters silently never change
    m = Model(table="t_nodense_tae")
    t = Trainer(model=m, args=TrainingArguments(output_dir=str(tmp_path), save_steps=None),
                train_dataset=make_data(2), eval_dataset=make_data(2),
                sparse_optimizer=SparseAdam(filter_out_sparse_param(m)))
    with pytest.raises(ValueError, match="dense"):
        t.train_and_evaluate(epochs=1, eval_steps=1)
    assert m.calls == []


def test_train_and_evaluate_without_train_dataset_raises(tmp_path):
    m = Model(table="t_nodata_tae")
    t = Trainer(model=m, args=TrainingArguments(output_dir=str(tmp_path), save_steps=None),
                eval_dataset=make_data(2), dense_optimizers=(torch.optim.SGD(m.parameters(), lr=0.1), None))
    with pytest.raises(ValueError, match="train_dataset"):
        t.train_and_evaluate(epochs=1, eval_steps=1)


def test_sparse_only_model_trains_without_dense_optimizer(tmp_path):
    class SparseOnly(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = DynamicEmbedding(EmbeddingOption(embedding_dim=2, shared_name="t_sparseonly"))

        def forward(self, batch):
            return (self.emb(batch[0]["ids"]) * batch[0]["c"]).sum()

    m = SparseOnly()
    opt = SparseAdam(filter_out_sparse_param(m), lr=0.1)
    t = Trainer(model=m, args=TrainingArguments(output_dir=str(tmp_path), save_steps=None),
                train_dataset=make_data(2), sparse_optimizer=opt)
    t.train()
    assert t.global_step == 2
    assert filter_out_sparse_param(m)["t_sparseonly"].state_dict()["embedding"].abs().sum() > 0


def test_trainer_requires_a_model(tmp_path):
    with pytest.raises(ValueError):
        Trainer(model=None, args=TrainingArguments(output_dir=str(tmp_path)))


def test_train_without_dataset_raises(tmp_path):
    m = Model(table="t_nodata")
    t = Trainer(model=m, args=TrainingArguments(output_dir=str(tmp_path)),
                dense_optimizers=(torch.optim.SGD(m.parameters(), lr=0.1), None))
    with pytest.raises(ValueError):
        t.train()


# ---------------------------------------------------------------------------------- data_to_cuda
def test_data_to_cuda_without_cuda_names_env_var(tmp_path, monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("host has CUDA")
    monkeypatch.delenv("RECIS_COMPAT_DEVICE", raising=False)
    m = Model(table="t_cuda_err")
    with pytest.raises(RuntimeError, match="RECIS_COMPAT_DEVICE"):
        Trainer(model=m, args=TrainingArguments(output_dir=str(tmp_path), save_steps=None),
                train_dataset=make_data(2), data_to_cuda=True,
                dense_optimizers=(torch.optim.SGD(m.parameters(), lr=0.1), None))


def test_data_to_cuda_with_cpu_override_trains_on_cpu(tmp_path, monkeypatch):
    monkeypatch.setenv("RECIS_COMPAT_DEVICE", "cpu")
    m = Model(table="t_cuda_cpu")
    opt = SparseAdam(filter_out_sparse_param(m), lr=0.1)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        t = Trainer(model=m, args=TrainingArguments(output_dir=str(tmp_path), save_steps=None),
                    train_dataset=make_data(3), data_to_cuda=True, sparse_optimizer=opt,
                    dense_optimizers=(torch.optim.SGD(m.parameters(), lr=0.1), None))
        t.train()
    assert t.global_step == 3
    assert [c[2] for c in m.calls] == ["cpu"] * 3


# ---------------------------------------------------------------------------------- checkpoints
def test_checkpoint_ids_and_final_checkpoint_not_duplicated(tmp_path):
    # Q19: the last step (4) is also a periodic save; it is written and listed once.
    m = Model(table="t_ck1")
    t = make_trainer(m, tmp_path, make_data(6), save_steps=2, train_steps=4)
    saves = []
    real = t.checkpoint_manager.saver.save
    t.checkpoint_manager.saver.save = lambda ckpt_id, *a, **k: (saves.append(ckpt_id), real(ckpt_id, *a, **k))[1]
    t.train()
    assert saves == ["ckpt_2", "ckpt_4"]
    assert ckpt_list(tmp_path) == ["ckpt_2", "ckpt_4"]
    assert ckpt_dirs(tmp_path) == ["ckpt_2", "ckpt_4"]
    for f in ("model.pt", "extra.pt"):
        assert (tmp_path / "ckpt_4" / f).is_file()
    extra = torch.load(tmp_path / "ckpt_4" / "extra.pt", weights_only=True)
    assert int(extra["global_step"]) == 4
    assert "dense_optimizer" in extra


def test_final_checkpoint_after_periodic_ones(tmp_path):
    m = Model(table="t_ck2")
    t = make_trainer(m, tmp_path, make_data(6), save_steps=2, train_steps=5)
    t.train()
    assert ckpt_list(tmp_path) == ["ckpt_2", "ckpt_4", "ckpt_5"]


def test_save_steps_none_never_saves_periodically_but_saves_at_end(tmp_path):
    # Q17: RecIS crashes on save_steps=None; we never save periodically.
    m = Model(table="t_ck3")
    t = make_trainer(m, tmp_path, make_data(6), save_steps=None)
    saves = []
    real = t.checkpoint_manager.saver.save
    t.checkpoint_manager.saver.save = lambda ckpt_id, *a, **k: (saves.append(ckpt_id), real(ckpt_id, *a, **k))[1]
    t.train()
    assert saves == ["ckpt_6"]
    assert ckpt_list(tmp_path) == ["ckpt_6"]


def test_max_to_keep_prunes_only_checkpoints_of_this_process(tmp_path):
    m = Model(table="t_keep")
    make_trainer(m, tmp_path, make_data(6), save_steps=1, train_steps=2, max_to_keep=5).train()
    assert ckpt_list(tmp_path) == ["ckpt_1", "ckpt_2"]
    t2 = make_trainer(m, tmp_path, make_data(6), save_steps=1, train_steps=3, max_to_keep=2)
    t2.train()
    assert t2.global_step == 5
    assert ckpt_list(tmp_path) == ["ckpt_1", "ckpt_2", "ckpt_4", "ckpt_5"]
    assert ckpt_dirs(tmp_path) == ["ckpt_1", "ckpt_2", "ckpt_4", "ckpt_5"]


def test_second_trainer_restores_and_continues_global_step(tmp_path):
    m = Model(table="t_resume")
    t1 = make_trainer(m, tmp_path, make_data(6), train_steps=3)
    t1.train()
    saved_w = m.lin.weight.detach().clone()
    table = filter_out_sparse_param(m)["t_resume"]
    saved_rows = {k: v.clone() for k, v in table.state_dict().items()}
    # wreck the live state: restore() must bring the checkpoint back
    with torch.no_grad():
        m.lin.weight.zero_()
    table.clear()
    rec = Recorder()
    t2 = make_trainer(m, tmp_path, make_data(6), hooks=[rec], train_steps=2)
    t2.restore()
    assert t2.global_step == 3
    assert torch.equal(m.lin.weight, saved_w)
    got = table.state_dict()
    order = torch.argsort(got["id"])
    ref_order = torch.argsort(saved_rows["id"])
    assert torch.equal(got["id"][order], saved_rows["id"][ref_order])
    assert torch.equal(got["embedding"][order], saved_rows["embedding"][ref_order])
    t2.train()
    assert [g for g, _ in rec.steps] == [3, 4]
    assert t2.global_step == 5
    assert ckpt_list(tmp_path) == ["ckpt_3", "ckpt_5"]


def test_restore_runs_once(tmp_path):
    m = Model(table="t_once")
    make_trainer(m, tmp_path, make_data(6), train_steps=2).train()
    t2 = make_trainer(m, tmp_path, make_data(6), train_steps=1)
    loads = []
    real = t2.checkpoint_manager.saver.load
    t2.checkpoint_manager.saver.load = lambda *a, **k: (loads.append(1), real(*a, **k))[1]
    t2.restore()
    with torch.no_grad():
        m.lin.weight.fill_(7.0)
    t2.restore()
    assert torch.all(m.lin.weight == 7.0)
    t2.train()          # train() calls restore() again: still a no-op
    assert len(loads) == 1
    assert t2.global_step == 3


def test_lr_scheduler_and_rng_state_are_checkpointed(tmp_path):
    m = Model(table="t_sched")
    sched = lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    t1 = make_trainer(m, tmp_path, make_data(6), sched=sched, train_steps=3)
    t1.train()
    assert t1.dense_lr_scheduler.last_epoch == 3
    rng = torch.get_rng_state().clone()
    extra = torch.load(tmp_path / "ckpt_3" / "extra.pt", weights_only=True)
    assert "lr_scheduler" in extra and "rng_state" in extra

    torch.manual_seed(12345)    # different RNG state; fresh optimizer and scheduler
    t2 = make_trainer(m, tmp_path, make_data(6), sched=sched, lr=0.1, train_steps=1)
    assert t2.dense_lr_scheduler.last_epoch == 0
    t2.restore()
    assert t2.dense_lr_scheduler.last_epoch == 3
    assert t2.dense_lr_scheduler.get_last_lr() == pytest.approx([0.1 * 0.5 ** 3])
    assert t2.dense_optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5 ** 3)
    assert torch.equal(torch.get_rng_state(), rng)
    t2.train()
    assert t2.dense_lr_scheduler.last_epoch == 4


# ---------------------------------------------------------------------------------- accumulation
def _adam_first_step(g, lr, beta1, beta2, eps):
    """One Adam step of a row that starts at 0 (TF epsilon form, §1.6.2)."""
    m = (1 - beta1) * g
    v = (1 - beta2) * g * g
    alpha = -lr * math.sqrt(1 - beta2) / (1 - beta1)
    return alpha * m / (v.sqrt() + eps)


def test_gradient_accumulation_dense_sum_and_sparse_mean(tmp_path):
    n_acc, lr, eps = 2, 0.1, 1.0     # eps=1 makes Adam's update depend on the gradient's scale
    m = Model(table="t_accum")
    data = make_data(4)
    ref_lin = copy.deepcopy(m.lin)
    w_after = []
    rows_after = []
    table = filter_out_sparse_param(m)["t_accum"]

    class Snap(Hook):
        def after_step(self, metrics, global_step):
            w_after.append((m.lin.weight.detach().clone(), m.lin.bias.detach().clone()))
            st = table.state_dict()
            rows_after.append({int(i): st["embedding"][k].clone() for k, i in enumerate(st["id"].tolist())})

    dense = torch.optim.SGD(m.parameters(), lr=lr)
    sparse = SparseAdam(filter_out_sparse_param(m), lr=0.1, beta1=0.9, beta2=0.999, eps=eps)
    t = Trainer(model=m, args=TrainingArguments(output_dir=str(tmp_path), save_steps=None, log_steps=1000,
                                                gradient_accumulation_steps=n_acc),
                train_dataset=data, hooks=[Snap()], dense_optimizers=(dense, None), sparse_optimizer=sparse)
    t.train()
    assert len(w_after) == 4

    # dense: SGD on the SUM of each window's gradients, taken at the window's starting weights
    expected = []
    for w0 in range(0, 4, n_acc):
        ref_lin.zero_grad()
        for k in range(w0, w0 + n_acc):
            d = data[k][1][0]
            ((ref_lin(d["x"]).reshape(-1) - d["y"]) ** 2).mean().backward()
        start = (ref_lin.weight.detach().clone(), ref_lin.bias.detach().clone())
        with torch.no_grad():
            for p in ref_lin.parameters():
                p -= lr * p.grad
        expected += [start, (ref_lin.weight.detach().clone(), ref_lin.bias.detach().clone())]
    for k in range(4):
        torch.testing.assert_close(w_after[k][0], expected[k][0])
        torch.testing.assert_close(w_after[k][1], expected[k][1])
    # and clearly not RecIS's "last micro-batch only" (Q24) nor the mean of the window
    w0 = expected[0][0]
    g = []
    for k in range(n_acc):
        probe = copy.deepcopy(ref_lin)
        with torch.no_grad():
            probe.weight.copy_(expected[0][0])
            probe.bias.copy_(expected[0][1])
        d = data[k][1][0]
        ((probe(d["x"]).reshape(-1) - d["y"]) ** 2).mean().backward()
        g.append(probe.weight.grad)
    assert not torch.allclose(w_after[1][0], w0 - lr * g[-1], atol=1e-5)
    assert not torch.allclose(w_after[1][0], w0 - lr * (g[0] + g[1]) / 2, atol=1e-5)
    torch.testing.assert_close(w_after[1][0], w0 - lr * (g[0] + g[1]))

    # sparse: rows start at 0; the first window applies Adam to the MEAN of its 2 micro-batches
    grads = {}
    for k in range(n_acc):
        d = data[k][1][0]
        for b, i in enumerate(d["ids"].reshape(-1).tolist()):
            grads[i] = grads.get(i, torch.zeros(2)) + d["c"][b]
    assert all(v.abs().sum() == 0 for v in rows_after[0].values())   # no sparse step after micro-batch 1
    assert set(rows_after[1]) == set(grads)
    for i, g in grads.items():
        torch.testing.assert_close(rows_after[1][i], _adam_first_step(g / n_acc, 0.1, 0.9, 0.999, eps))
        # the sum would give a clearly different row
        assert not torch.allclose(rows_after[1][i], _adam_first_step(g, 0.1, 0.9, 0.999, eps), atol=1e-4)


def test_gradient_accumulation_one_is_plain_sgd(tmp_path):
    m = Model(table="t_acc1")
    data = make_data(2)
    ref = copy.deepcopy(m.lin)
    t = make_trainer(m, tmp_path, data, lr=0.05)
    t.train()
    for k in range(2):
        ref.zero_grad()
        d = data[k][1][0]
        ((ref(d["x"]).reshape(-1) - d["y"]) ** 2).mean().backward()
        with torch.no_grad():
            for p in ref.parameters():
                p -= 0.05 * p.grad
    torch.testing.assert_close(m.lin.weight, ref.weight)
    torch.testing.assert_close(m.lin.bias, ref.bias)


@pytest.mark.parametrize("accum,save_steps,warns", [(2, 3, True), (2, 4, False), (1, 3, False), (3, None, False)])
def test_warning_when_save_steps_not_multiple_of_accumulation(tmp_path, accum, save_steps, warns):
    m = Model(table="t_warn")
    with Capture("recis_compat.framework.trainer") as cap:
        make_trainer(m, tmp_path, gradient_accumulation_steps=accum, save_steps=save_steps)
    hits = [msg for msg in cap.messages(logging.WARNING) if "save_steps" in msg]
    assert bool(hits) == warns, cap.messages()


# ---------------------------------------------------------------------------------- evaluation
def test_evaluate_eval_steps_no_grad_eval_mode_and_restores_mode(tmp_path):
    m = Model(table="t_eval")
    rec = Recorder()
    t = Trainer(model=m, args=TrainingArguments(output_dir=str(tmp_path), save_steps=None, log_steps=1000),
                eval_dataset=make_data(5), hooks=[rec],
                dense_optimizers=(torch.optim.SGD(m.parameters(), lr=0.1), None))
    m.train()
    t.evaluate(eval_steps=3)
    assert [c[:2] for c in m.calls] == [(False, False)] * 3
    assert m.training            # put back in train mode (RecIS leaves it in eval)
    assert len(rec.steps) == 3 and rec.ends == 1
    m.eval()
    m.calls.clear()
    t.evaluate()                 # until the data ends
    assert len(m.calls) == 5
    assert not m.training
    assert torch.is_grad_enabled()


def test_evaluate_hooks_see_added_metrics(tmp_path):
    class WithMetric(Model):
        def forward(self, batch):
            add_metric("eval_auc", torch.tensor(0.75))
            return super().forward(batch)

    m = WithMetric(table="t_evalm")
    rec = Recorder()
    t = Trainer(model=m, args=TrainingArguments(output_dir=str(tmp_path), save_steps=None),
                eval_dataset=make_data(2), hooks=[rec],
                dense_optimizers=(torch.optim.SGD(m.parameters(), lr=0.1), None))
    t.evaluate(eval_steps=2)
    assert [float(mt["eval_auc"]) for _, mt in rec.steps] == [0.75, 0.75]


def test_evaluate_without_eval_dataset_raises(tmp_path):
    m = Model(table="t_noeval")
    t = make_trainer(m, tmp_path)
    with pytest.raises(ValueError):
        t.evaluate(eval_steps=1)


def test_train_and_evaluate(tmp_path):
    m = Model(table="t_tae")
    rec = Recorder()
    t = Trainer(model=m, args=TrainingArguments(output_dir=str(tmp_path), save_steps=None, log_steps=1000),
                train_dataset=make_data(4), eval_dataset=make_data(4), hooks=[rec],
                dense_optimizers=(torch.optim.SGD(m.parameters(), lr=0.1), None),
                sparse_optimizer=SparseAdam(filter_out_sparse_param(m), lr=0.1))
    t.train_and_evaluate(epochs=1, train_steps=2, eval_steps=3)
    assert [c[:2] for c in m.calls] == [(True, True)] * 2 + [(False, False)] * 3
    assert len(rec.steps) == 5 and rec.ends == 1
    assert "loss" in rec.steps[0][1] and "loss" not in rec.steps[2][1]
    assert t.global_step == 2
    assert ckpt_list(tmp_path) == ["ckpt_2"]
    assert m.training


# ---------------------------------------------------------------------------------- progress bar
def test_progress_bar_only_on_a_terminal(tmp_path, monkeypatch):
    monkeypatch.delenv("RECIS_COMPAT_NO_PROGRESS", raising=False)
    t = make_trainer(Model(table="t_bar"), tmp_path)
    monkeypatch.setattr(sys.stdout, "isatty", lambda: False, raising=False)
    assert t._progress(5) is None
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True, raising=False)
    bar = t._progress(5)
    try:
        assert bar is not None and bar.total == 5
    finally:
        bar.close()
    monkeypatch.setenv("RECIS_COMPAT_NO_PROGRESS", "1")
    assert t._progress(5) is None


def test_progress_bar_output_when_terminal(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("RECIS_COMPAT_NO_PROGRESS", raising=False)
    m = Model(table="t_bar2")
    t = make_trainer(m, tmp_path, make_data(5), train_steps=3)
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True, raising=False)
    t.train()
    err = capsys.readouterr().err
    assert "3/3" in err and "step/s" in err and "loss=" in err


def test_no_progress_bar_output_when_not_terminal(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("RECIS_COMPAT_NO_PROGRESS", raising=False)
    m = Model(table="t_bar3")
    t = make_trainer(m, tmp_path, make_data(5), train_steps=3)
    monkeypatch.setattr(sys.stdout, "isatty", lambda: False, raising=False)
    t.train()
    err = capsys.readouterr().err
    assert t.global_step == 3
    assert "step/s" not in err and "3/3" not in err


def test_train_and_evaluate_two_epochs(tmp_path):
    m = Model(table="t_tae2")
    rec = Recorder()
    t = make_trainer(m, tmp_path, make_data(4), hooks=[rec])
    t.eval_dataset = make_data(4)
    t.train_and_evaluate(epochs=2, train_steps=2, eval_steps=3)
    assert [c[:2] for c in m.calls] == ([(True, True)] * 2 + [(False, False)] * 3) * 2
    assert [(g, mt.get("epoch")) for g, mt in rec.steps] == \
        [(0, 0), (1, 0), (2, None), (2, None), (2, None), (2, 1), (3, 1), (4, None), (4, None), (4, None)]
    assert rec.ends == 1
    assert ckpt_list(tmp_path) == ["ckpt_2", "ckpt_4"]


def test_filter_hook_schedule_is_checkpointed_and_resumes(tmp_path):
    """HashTableFilterHook's last_filter_step travels in extra.pt: a run resumed from step 4
    filters on the same steps as an uninterrupted one (RecIS restarts the schedule)."""
    from recis.hooks import HashTableFilterHook

    class SpyHook(HashTableFilterHook):
        """Records the global steps at which the filters ran (a stand-in filter)."""

        def __init__(self, interval):
            super().__init__(interval)
            self.filtered_at, self.updates, self._step = [], 0, None
            spy = self

            class _Filter:
                def update_step(self):
                    spy.updates += 1

                def do_filter(self):
                    spy.filtered_at.append(spy._step)
            self._filter = _Filter()

        @property
        def ht_filters(self):
            return [self._filter]

        def after_step(self, metrics=None, global_step=0):
            self._step = int(global_step)
            super().after_step(metrics, global_step)

    def run(out, steps, table):
        hook = SpyHook(3)
        make_trainer(Model(table), out, make_data(10), hooks=[hook], save_steps=4, train_steps=steps).train()
        return hook

    whole = run(tmp_path / "whole", 10, "t_fh_a")
    first = run(tmp_path / "split", 4, "t_fh_b")
    saved = torch.load(tmp_path / "split" / "ckpt_4" / "extra.pt", weights_only=True)
    assert saved["hook_0_SpyHook"] == first.state_dict()
    resumed = run(tmp_path / "split", 6, "t_fh_c")         # train_steps counts the steps of this run
    assert len(whole.filtered_at) >= 2
    assert whole.updates == 10 and first.updates + resumed.updates == 10   # every step advances the filters
    assert first.filtered_at + resumed.filtered_at == whole.filtered_at
    assert resumed.last_filter_step == whole.last_filter_step
    with pytest.raises(ValueError, match="last_filter_step"):
        HashTableFilterHook(3).load_state_dict({"step": 1})
