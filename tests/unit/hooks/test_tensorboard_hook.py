"""TensorBoardHook (not in RecIS): event files with the step metrics, samples/sec and table sizes."""
from __future__ import annotations

import pytest
import torch
from recis.framework.metrics import GLOBAL_METRICS, add_metric
from recis.framework.trainer import Trainer, TrainingArguments
from recis.hooks import Hook
from recis.hooks.tensorboard_hook import TensorBoardHook
from recis.nn import DynamicEmbedding, EmbeddingOption
from recis.nn.modules.hashtable import filter_out_sparse_param
from recis.optim import SparseAdam
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


@pytest.fixture(autouse=True)
def _clean_global_metrics():
    GLOBAL_METRICS.clear()
    yield
    GLOBAL_METRICS.clear()


class Model(torch.nn.Module):
    def __init__(self, table):
        super().__init__()
        self.lin = torch.nn.Linear(3, 1)
        self.emb = DynamicEmbedding(EmbeddingOption(embedding_dim=2, shared_name=table))

    def forward(self, batch):
        d = batch[0]
        add_metric("auc", torch.tensor(0.5))
        add_metric("label", "not a scalar")     # skipped: not a number
        return ((self.lin(d["x"]).reshape(-1) - d["y"]) ** 2).mean() + (self.emb(d["ids"]) * d["c"]).sum()


def make_data(n):
    out = []
    for k in range(n):
        g = torch.Generator().manual_seed(k)
        # 2 new ids per step: the table grows 2, 4, 6, ...
        out.append((False, [{"x": torch.randn(2, 3, generator=g), "y": torch.randn(2, generator=g),
                             "ids": torch.tensor([[2 * k], [2 * k + 1]]), "c": torch.randn(2, 2, generator=g)}]))
    return out


def scalars(log_dir):
    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in tags}


class Losses(Hook):
    def __init__(self):
        self.seen = []

    def after_step(self, metrics, global_step):
        self.seen.append((int(global_step), float(metrics["loss"])))


def test_tensorboard_hook_in_trainer(tmp_path):
    m = Model("t_tb")
    losses = Losses()
    tb = TensorBoardHook(str(tmp_path / "tb"), log_steps=1, batch_size=2, model=m)
    t = Trainer(model=m, args=TrainingArguments(output_dir=str(tmp_path / "ckpt"), save_steps=None, log_steps=1000),
                train_dataset=make_data(3), hooks=[tb, losses],
                dense_optimizers=(torch.optim.SGD(m.parameters(), lr=0.1), None),
                sparse_optimizer=SparseAdam(filter_out_sparse_param(m), lr=0.1))
    t.train()
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    got = scalars(tmp_path / "tb")
    assert {"loss", "epoch", "auc", "samples_per_sec", "rows/t_tb", "evicted/t_tb"} <= set(got)
    assert "label" not in got
    assert [s for s, _ in got["loss"]] == [0, 1, 2]
    for (s, v), (s2, ref) in zip(got["loss"], losses.seen):
        assert s == s2 and v == pytest.approx(ref, rel=1e-6)
    assert [v for _, v in got["rows/t_tb"]] == [2.0, 4.0, 6.0]
    assert [v for _, v in got["evicted/t_tb"]] == [0.0, 0.0, 0.0]
    assert [v for _, v in got["auc"]] == [0.5, 0.5, 0.5]
    assert all(v > 0 for _, v in got["samples_per_sec"]) and len(got["samples_per_sec"]) == 3


def test_tensorboard_hook_log_steps_and_optional_parts(tmp_path):
    hook = TensorBoardHook(str(tmp_path), log_steps=2)
    for step in range(5):
        hook.after_step({"loss": torch.tensor(float(step)), "epoch": 0, "flag": True,
                         "vec": torch.ones(3)}, torch.tensor(step))
    hook.end()
    got = scalars(tmp_path)
    assert got["loss"] == [(1, 1.0), (3, 3.0)]       # the 2nd and 4th calls
    assert "samples_per_sec" not in got               # no batch_size
    assert not any(tag.startswith("rows/") for tag in got)   # no model
    assert "flag" not in got and "vec" not in got     # booleans and non-scalar tensors skipped


@pytest.mark.parametrize("bad", [0, -1])
def test_tensorboard_hook_rejects_non_positive_log_steps(tmp_path, bad):
    with pytest.raises(ValueError):
        TensorBoardHook(str(tmp_path), log_steps=bad)
