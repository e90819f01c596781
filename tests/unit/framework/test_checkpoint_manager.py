"""Saver / CheckpointManager / model_bank warm start (recis-api.md §1.7.3, §1.7.4).

SIGKILL resume, resharding and broken-checkpoint errors are in tests/e2e/test_checkpoint_resume.py.
"""
from __future__ import annotations

import os

import pytest
import torch
from recis.framework.checkpoint_manager import CheckpointManager, Saver
from recis.framework.trainer import Trainer, TrainingArguments
from recis.nn import DynamicEmbedding, EmbeddingOption
from recis.nn.initializers import TruncNormalInitializer
from recis.nn.modules.hashtable import filter_out_sparse_param
from recis.optim import SparseAdam

from recis_compat.nn.modules.hashtable import HashtableRegister


class Model(torch.nn.Module):
    def __init__(self, table: str, seed: int, extra_buffer: bool = False):
        super().__init__()
        torch.manual_seed(seed)
        self.lin = torch.nn.Linear(3, 1)
        self.emb = DynamicEmbedding(EmbeddingOption(embedding_dim=2, shared_name=table,
                                                    initializer=TruncNormalInitializer(std=0.1)))
        if extra_buffer:
            self.register_buffer("extra_counter", torch.tensor([5.0]))

    def forward(self, batch):
        d = batch[0]
        return ((self.lin(d["x"]).reshape(-1) - d["y"]) ** 2).mean() + (self.emb(d["ids"]) * d["c"]).sum()


def make_data(n: int):
    out = []
    for k in range(n):
        g = torch.Generator().manual_seed(k)
        out.append((False, [{"x": torch.randn(2, 3, generator=g), "y": torch.randn(2, generator=g),
                             "ids": torch.tensor([[10 + k], [20 + k % 2]]), "c": torch.randn(2, 2, generator=g)}]))
    return out


def trainer(model, out, data=None, **args):
    args.setdefault("save_steps", None)
    args.setdefault("log_steps", 1000)
    return Trainer(model=model, args=TrainingArguments(output_dir=str(out), **args),
                   train_dataset=data if data is not None else make_data(3),
                   dense_optimizers=(torch.optim.SGD(model.parameters(), lr=0.1), None),
                   sparse_optimizer=SparseAdam(filter_out_sparse_param(model), lr=0.1))


def rows(model, table):
    st = filter_out_sparse_param(model)[table].state_dict()
    order = torch.argsort(st["id"])
    return st["id"][order], st["embedding"][order]


def free_table_name(name):
    """A second model with the same table name in this process (what a warm start needs)."""
    HashtableRegister().unregister(name)


# ---------------------------------------------------------------------------------- model_bank
@pytest.fixture
def trained_a(tmp_path):
    a = Model("t_bank", seed=1)
    trainer(a, tmp_path / "a", train_steps=3).train()
    ids, emb = rows(a, "t_bank")
    assert ids.numel() > 0
    dense = {k: v.clone() for k, v in a.lin.state_dict().items()}
    free_table_name("t_bank")
    return tmp_path / "a" / "ckpt_3", ids, emb, dense


def test_model_bank_warm_starts_sparse_and_dense(tmp_path, trained_a):
    path, ids, emb, dense = trained_a
    b = Model("t_bank", seed=2)
    assert not torch.equal(b.lin.weight, dense["weight"])
    t = trainer(b, tmp_path / "b", model_bank=[{"path": str(path), "load": ["sparse", "dense"], "exclude": [],
                                                  "strict": True}])
    t.restore()
    got_ids, got_emb = rows(b, "t_bank")
    assert torch.equal(got_ids, ids)
    assert torch.equal(got_emb, emb)
    assert torch.equal(b.lin.weight, dense["weight"]) and torch.equal(b.lin.bias, dense["bias"])
    assert t.global_step == 0          # "extra" (the global step) was not asked for
    t.train(train_steps=1)
    assert t.global_step == 1
    assert os.path.isdir(tmp_path / "b" / "ckpt_1")


def test_model_bank_exclude_dense_leaves_dense_untouched(tmp_path, trained_a):
    path, ids, emb, _dense = trained_a
    b = Model("t_bank", seed=2)
    before = {k: v.clone() for k, v in b.lin.state_dict().items()}
    t = trainer(b, tmp_path / "b", model_bank=[{"path": str(path), "load": ["sparse", "dense"],
                                                  "exclude": ["dense"], "strict": True}])
    t.restore()
    assert torch.equal(b.lin.weight, before["weight"]) and torch.equal(b.lin.bias, before["bias"])
    got_ids, got_emb = rows(b, "t_bank")
    assert torch.equal(got_ids, ids) and torch.equal(got_emb, emb)


def test_model_bank_exclude_sparse_loads_only_dense(tmp_path, trained_a):
    path, _ids, _emb, dense = trained_a
    b = Model("t_bank", seed=2)
    t = trainer(b, tmp_path / "b", model_bank=[{"path": str(path), "exclude": ["sparse", "extra", "io_state"]}])
    t.restore()
    assert torch.equal(b.lin.weight, dense["weight"])
    assert rows(b, "t_bank")[0].numel() == 0


def test_model_bank_then_output_dir_checkpoint_wins(tmp_path, trained_a):
    # model_bank is loaded first, then the latest checkpoint of output_dir (§1.7.4)
    path, _ids, _emb, _dense = trained_a
    b = Model("t_bank", seed=2)
    trainer(b, tmp_path / "b", train_steps=2).train()
    own_w = b.lin.weight.detach().clone()
    t = trainer(b, tmp_path / "b", model_bank=[{"path": str(path), "load": ["dense"]}])
    t.restore()
    assert torch.equal(b.lin.weight, own_w) and t.global_step == 2


@pytest.mark.parametrize("entry", [{"load": ["sparse", "denser"]}, {"exclude": ["weights"]}])
def test_model_bank_unknown_part_raises(tmp_path, trained_a, entry):
    path = trained_a[0]
    b = Model("t_bank", seed=2)
    t = trainer(b, tmp_path / "b", model_bank=[dict(entry, path=str(path))])
    with pytest.raises(ValueError, match="unknown part"):
        t.restore()


@pytest.mark.parametrize("bank", [[{"load": ["dense"]}], ["not-a-dict"], [{"path": "model.some_mos_uri"}]])
def test_model_bank_bad_entries_raise(tmp_path, bank):
    b = Model("t_bank_bad", seed=2)
    t = trainer(b, tmp_path / "b", model_bank=bank)
    with pytest.raises(ValueError):
        t.restore()


# ---------------------------------------------------------------------------------- Saver
def test_saver_register_duplicate_names_raise(tmp_path):
    s = Saver(Model("t_dup", seed=0), output_dir=str(tmp_path))
    s.register_for_checkpointing("thing", {"a": 1})
    with pytest.raises(ValueError):
        s.register_for_checkpointing("thing", {"a": 2})

    class IO:
        _worker_num = 1

        def dump_io_state(self):
            return {}

        def load_io_state(self, state):
            pass

    s.register_io_state("train_io", IO())
    with pytest.raises(ValueError):
        s.register_io_state("train_io", IO())
    with pytest.raises(TypeError):
        s.register_io_state("other_io", object())


def test_checkpoint_manager_registers_global_step_once(tmp_path):
    s = Saver(Model("t_gs", seed=0), output_dir=str(tmp_path))
    CheckpointManager(s, 10)
    with pytest.raises(ValueError):
        s.register_for_checkpointing("global_step", torch.zeros(()))


def test_saver_max_keep_must_be_positive(tmp_path):
    with pytest.raises(ValueError):
        Saver(Model("t_keep0", seed=0), output_dir=str(tmp_path), max_keep=0)


def test_load_conf_strict_false_tolerates_extra_dense_key(tmp_path):
    a = Model("t_strict_a", seed=1, extra_buffer=True)
    Saver(a, output_dir=str(tmp_path)).save("ckpt_1")
    assert "extra_counter" in torch.load(tmp_path / "ckpt_1" / "model.pt", weights_only=True)
    b = Model("t_strict_b", seed=2)
    saver = Saver(b, output_dir=str(tmp_path))
    with pytest.raises(ValueError, match="extra_counter"):
        saver.load(ckpt_id="ckpt_1", load_conf={"load": ["dense"], "strict": True})
    assert saver.load(ckpt_id="ckpt_1", load_conf={"load": ["dense"], "strict": False}) is True
    assert torch.equal(b.lin.weight, a.lin.weight) and torch.equal(b.lin.bias, a.lin.bias)


def test_load_conf_strict_false_tolerates_missing_dense_key(tmp_path):
    a = Model("t_miss_a", seed=1)
    Saver(a, output_dir=str(tmp_path)).save("ckpt_1")
    b = Model("t_miss_b", seed=2, extra_buffer=True)
    saver = Saver(b, output_dir=str(tmp_path))
    with pytest.raises(ValueError):
        saver.load(ckpt_id="ckpt_1", load_conf={"load": ["dense"]})
    saver.load(ckpt_id="ckpt_1", load_conf={"load": ["dense"], "strict": False})
    assert torch.equal(b.lin.weight, a.lin.weight)
    assert torch.equal(b.extra_counter, torch.tensor([5.0]))


def test_load_without_checkpoint_returns_false(tmp_path):
    saver = Saver(Model("t_none", seed=0), output_dir=str(tmp_path / "empty"))
    assert saver.load() is False
    assert saver.latest_checkpoint() is None


def test_save_layout_and_checkpoint_file(tmp_path):
    m = Model("t_layout", seed=0)
    m([{"ids": torch.tensor([[1], [2]]), "x": torch.randn(2, 3), "y": torch.zeros(2), "c": torch.ones(2, 2)}])
    s = Saver(m, SparseAdam(filter_out_sparse_param(m)), output_dir=str(tmp_path), max_keep=2, concurrency=2)
    s.register_for_checkpointing("note", "hello")
    s.save("ckpt_7")
    s.save("ckpt_9")
    s.save("ckpt_9")     # same id again: listed once
    assert (tmp_path / "checkpoint").read_text().split() == ["ckpt_7", "ckpt_9"]
    files = set(os.listdir(tmp_path / "ckpt_9"))
    assert {"model.pt", "extra.pt", "index", "tensorkey.json"} <= files
    assert any(f.endswith(".safetensors") for f in files)
    assert not any(f.startswith(".") for f in os.listdir(tmp_path))     # no temporary leftovers
    extra = torch.load(tmp_path / "ckpt_9" / "extra.pt", weights_only=True)
    assert extra["note"] == "hello"
    s.save("ckpt_11")    # max_keep=2 prunes ckpt_7
    assert (tmp_path / "checkpoint").read_text().split() == ["ckpt_9", "ckpt_11"]
    assert sorted(p for p in os.listdir(tmp_path) if p.startswith("ckpt_")) == ["ckpt_11", "ckpt_9"]


# ---------------------------------------------------------------------------------- CheckpointManager
def test_checkpoint_manager_step_interval_and_restore_specific_step(tmp_path):
    m = Model("t_cm", seed=0)
    cm = CheckpointManager(Saver(m, output_dir=str(tmp_path), max_keep=10), 2)
    assert cm.save_interval == 2
    weights = {}
    for _ in range(5):
        with torch.no_grad():
            m.lin.weight.add_(1.0)
        cm.step()
        weights[int(cm.global_step)] = m.lin.weight.detach().clone()
    assert (tmp_path / "checkpoint").read_text().split() == ["ckpt_2", "ckpt_4"]
    assert int(cm.global_step) == 5
    step = cm.restore(2)
    assert int(step) == 2 and step is cm.global_step
    assert torch.equal(m.lin.weight, weights[2])
    cm.restore()         # latest
    assert int(cm.global_step) == 4 and torch.equal(m.lin.weight, weights[4])


@pytest.mark.parametrize("interval", [None, 0])
def test_checkpoint_manager_without_interval_never_saves(tmp_path, interval):
    cm = CheckpointManager(Saver(Model("t_cm0", seed=0), output_dir=str(tmp_path)), interval)
    for _ in range(3):
        cm.step()
    assert int(cm.global_step) == 3
    assert not (tmp_path / "checkpoint").exists()
    cm.save()
    assert (tmp_path / "checkpoint").read_text().split() == ["ckpt_3"]


class ListDataset(list):
    """An in-memory dataset with RecIS's IO-state protocol."""

    _worker_num = 1

    def __init__(self, items):
        super().__init__(items)
        self.loaded = []

    def dump_io_state(self):
        return {"0": f"pos={len(self)}"}

    def load_io_state(self, state):
        self.loaded.append(state)


def test_trainer_checkpoints_dataset_io_state(tmp_path):
    m = Model("t_io", seed=0)
    ds = ListDataset(make_data(2))
    trainer(m, tmp_path, ds).train()
    ck = tmp_path / "ckpt_2"
    assert (ck / "io_state_count").read_text().strip() == "1"
    assert torch.load(ck / "io_state_0.pt", weights_only=True) == {"train_io": {"0": "pos=2"}}
    ds2 = ListDataset(make_data(2))
    t2 = trainer(m, tmp_path, ds2)
    t2.restore()
    assert ds2.loaded == [{"0": "pos=2"}]
    # a warm start that excludes io_state does not touch the dataset
    ds3 = ListDataset(make_data(2))
    t3 = trainer(m, tmp_path / "other", ds3, model_bank=[{"path": str(ck), "exclude": ["io_state"]}])
    t3.restore()
    assert ds3.loaded == [] and t3.global_step == 2
