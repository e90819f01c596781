"""Incremental (delta) checkpoints: the tables' change log, the delta format
(recis_compat/serialize/delta.py) and the chain handling of the framework Saver /
CheckpointManager (recis_compat/framework/checkpoint_manager.py), in one process.

The check everywhere is "base + deltas == live state", bit for bit: every id and every slot
(embedding, Adam moments, step filter) of every table, the sparse optimizer's scalars and the
dense parameters.
"""
from __future__ import annotations

import itertools
import json
import os

import pytest
import torch

from recis_compat.framework.checkpoint_manager import (CheckpointError, CheckpointManager, Saver, read_delta_list,
                                                       resolve_chain)
from recis_compat.nn.initializers import TruncNormalInitializer
from recis_compat.nn.modules.hashtable import HashTable, HashtableRegister, filter_out_sparse_param
from recis_compat.optim import SparseAdamW
from recis_compat.serialize import Loader
from recis_compat.serialize import Saver as SparseSaver
from recis_compat.serialize.delta import apply_delta, merge_delta_meta, read_delta_meta, write_delta_shard
from recis_compat.serialize.layout import CheckpointCorruptError
from serialize_helpers import fill, make_table, snapshot

_names = itertools.count()


def assert_same(a, b):
    assert set(a) == set(b)
    for child in a:
        assert sorted(a[child]) == sorted(b[child]), f"child {child}: ids differ"
        for i, slots in a[child].items():
            assert set(slots) == set(b[child][i])
            for s, v in slots.items():
                assert torch.equal(v, b[child][i][s]), f"child {child} id {i} slot {s}"


# ------------------------------------------------------------------------------ table level
def test_change_log_records_every_kind_of_write():
    t = make_table(f"log{next(_names)}")
    fill(t, {t.children.children()[0]: list(range(10))})
    with pytest.raises(RuntimeError, match="track_changes"):
        t.take_changes()
    e0 = t.track_changes()
    assert t.change_epoch() == e0
    ch = t.take_changes()
    assert ch.epoch == e0 and ch.ids.numel() == 0 and ch.deleted.numel() == 0 and not ch.cleared
    t.find_or_insert_rows(torch.tensor([100, 3]))              # 100 is new, 3 only read
    t.insert(torch.tensor([4]), torch.ones(1, 4))
    t.update_slot("step_filter", t.find_rows(torch.tensor([5])), torch.tensor([[9]]))
    t.accept_grad(t.find_rows(torch.tensor([6, 6])), torch.ones(2, 4))
    t.grad_rows()                                              # what the sparse optimizer takes
    t.delete(torch.tensor([7, 555]))                           # 555 is absent
    # a filter stamping the rows of a training lookup (as GlobalStepFilter does)
    t.lookup_listeners.append(lambda rows: t.get_slot("step_filter").index_fill_(0, rows, 42))
    t.notify_lookup(t.find_rows(torch.tensor([8, 999])))       # 999 is absent
    ch = t.take_changes()
    assert sorted(ch.ids.tolist()) == [4, 5, 6, 8, 100]
    assert ch.deleted.tolist() == [7]
    rows = t.find_rows(ch.ids)
    for slot, vals in ch.values.items():
        assert torch.equal(vals, t.get_slot(slot).index_select(0, rows)), slot
    assert t.take_changes().ids.numel() == 0                   # a new epoch starts empty
    t.clear()
    t.find_or_insert_rows(torch.tensor([1]))
    ch = t.take_changes()
    assert ch.cleared and ch.ids.tolist() == [1]


@pytest.mark.parametrize("coalesced", [False, True])
def test_base_plus_deltas_is_the_live_state(tmp_path, coalesced):
    tag = next(_names)
    children = [f"a{tag}", f"b{tag}"] if coalesced else None
    live = make_table(f"t{tag}", children=children, coalesced=coalesced)
    ch0, ch1 = live.children.children()[0], live.children.children()[-1]

    def enc(ids, child=ch0):
        ids = torch.as_tensor(ids, dtype=torch.int64)
        if coalesced:
            from recis_compat.backend.children import encode_ids
            return encode_ids(ids, live.children.child_index(child))
        return ids

    fill(live, {ch0: list(range(0, 200)), ch1: list(range(1000, 1100))} if coalesced else {ch0: list(range(200))})
    SparseSaver(path=str(tmp_path / "base"), hashtables={"t": live}).save()
    live.track_changes()
    g = torch.Generator().manual_seed(1)
    for k in range(3):
        live.find_or_insert_rows(enc(torch.arange(300 + 10 * k, 305 + 10 * k)))
        rows = live.find_rows(enc(torch.randint(0, 200, (20,), generator=g)))
        rows = rows[rows >= 0]
        live.accept_grad(rows, torch.randn(rows.numel(), 4, generator=g))
        got_rows, grad = live.grad_rows()
        live.storage.slots["embedding"].index_add_(0, got_rows, grad)       # an optimizer's write
        live.delete(enc([k * 3, k * 3 + 1]))
        live.find_or_insert_rows(enc([k * 3]))                              # evicted, then back
        live.update_slot("step_filter", live.find_rows(enc([50 + k])), torch.tensor([[k + 7]]))
        d = tmp_path / f"d{k}"
        write_delta_shard(str(d), 0, 1, {"t": live})
        merge_delta_meta(str(d), 1, "base", "base" if k == 0 else f"d{k - 1}", k + 1, k)
    restored = make_table(f"t{tag}", children=children, coalesced=coalesced)
    Loader(str(tmp_path / "base"), hashtables={"t": restored}).load()
    for k in range(3):
        apply_delta(str(tmp_path / f"d{k}"), {"t": restored})
    assert_same(snapshot(live), snapshot(restored))
    meta = read_delta_meta(str(tmp_path / "d2"))
    assert meta["sequence"] == 3 and meta["parent"] == "d1" and meta["tables"]["t"]["deleted"] == 2


def test_delta_applies_to_the_slice_of_each_shard(tmp_path):
    """A delta written by one process restores into two shards (each keeps its slice)."""
    live = make_table(f"one{next(_names)}")
    SparseSaver(path=str(tmp_path / "base"), hashtables={"t": live}).save()
    live.track_changes()
    fill(live, {live.children.children()[0]: list(range(0, 70000, 7))})
    write_delta_shard(str(tmp_path / "d"), 0, 1, {"t": live})
    merge_delta_meta(str(tmp_path / "d"), 1, "base", "base", 1, 1)
    halves = [make_table(f"half{next(_names)}", slice=s) for s in ((0, 32768, 65536), (32768, 65536, 65536))]
    for h in halves:
        apply_delta(str(tmp_path / "d"), {"t": h})
    parts = [next(iter(snapshot(h).values())) for h in halves]
    assert all(parts) and not set(parts[0]) & set(parts[1])
    assert_same({"c": next(iter(snapshot(live).values()))}, {"c": {**parts[0], **parts[1]}})


def test_corrupt_delta_data_is_detected(tmp_path):
    live = make_table(f"cor{next(_names)}")
    live.track_changes()
    fill(live, {live.children.children()[0]: [1, 2, 3]})
    write_delta_shard(str(tmp_path / "d"), 0, 1, {"t": live})
    merge_delta_meta(str(tmp_path / "d"), 1, "base", "base", 1, 1)
    data = tmp_path / "d" / "delta-000000-of-000001.safetensors"
    raw = bytearray(data.read_bytes())
    raw[-1] ^= 0xFF
    data.write_bytes(bytes(raw))
    with pytest.raises(CheckpointCorruptError, match="delta-000000-of-000001.safetensors"):
        apply_delta(str(tmp_path / "d"), {"t": make_table(f"cor{next(_names)}")})


# ------------------------------------------------------------------------------ framework level
class Model(torch.nn.Module):
    def __init__(self, tag: str, evict: bool = False):
        super().__init__()
        torch.manual_seed(0)
        HashtableRegister().clear()          # the same table names again in a fresh model
        self.a = HashTable([4], name=f"{tag}_a", initializer=TruncNormalInitializer(std=0.1))
        self.b = HashTable([4], name=f"{tag}_b", initializer=TruncNormalInitializer(std=0.1))
        self.lin = torch.nn.Linear(8, 1)

    def forward(self, ids_a, ids_b):
        return self.lin(torch.cat([self.a(ids_a), self.b(ids_b)], 1)).square().mean()


def make(out, tag, save=None, delta=1, max_keep=5):
    model = Model(tag)
    sparse = SparseAdamW(filter_out_sparse_param(model), lr=0.05)
    dense = torch.optim.Adam(model.lin.parameters(), lr=0.01)
    saver = Saver(model, sparse, output_dir=str(out), max_keep=max_keep, concurrency=2)
    saver.register_for_checkpointing("dense_optimizer", dense)
    return model, sparse, dense, CheckpointManager(saver, save, delta)


def train(model, sparse, dense, mgr, steps, seed):
    g = torch.Generator().manual_seed(seed)
    for s in range(steps):
        # mostly old ids, a few new ones each step; an eviction now and then
        a = torch.randint(0, 60 + 3 * s, (16,), generator=g)
        b = torch.randint(0, 40, (16,), generator=g)
        loss = model(a, b)
        loss.backward()
        sparse.step()
        dense.step()
        sparse.zero_grad()
        dense.zero_grad()
        if s % 3 == 2:
            model.a.impl.delete(a[:2])
        mgr.step()


def state(model, sparse):
    out = {name: snapshot(impl) for name, impl in filter_out_sparse_param(model).items()}
    out["_dense"] = {"lin": {0: {k: v.detach().clone() for k, v in model.lin.state_dict().items()}}}
    out["_sparse_opt"] = {"opt": {0: {k: v.clone() for k, v in sparse.state_dict().items()}}}
    return out


def assert_same_state(a, b):
    assert set(a) == set(b)
    for k in a:
        assert_same(a[k], b[k])


def restore(out, tag, global_step=None, delta=1):
    model, sparse, dense, mgr = make(out, tag, delta=delta)
    mgr.restore(global_step)
    return model, sparse, dense, mgr


def test_manager_full_every_n_deltas_every_m_restore_is_exact(tmp_path):
    tag = f"m{next(_names)}"
    model, sparse, dense, mgr = make(tmp_path, tag, save=4, delta=1)
    train(model, sparse, dense, mgr, 7, seed=3)
    # full at 4; step 1 found no chain and saved a full checkpoint; deltas at 2, 3 and 5, 6, 7
    assert (tmp_path / "checkpoint").read_text().split() == ["ckpt_1", "ckpt_4"]
    assert read_delta_list(str(tmp_path)) == [("delta_2", "ckpt_1", 1), ("delta_3", "ckpt_1", 2),
                                              ("delta_5", "ckpt_4", 1), ("delta_6", "ckpt_4", 2),
                                              ("delta_7", "ckpt_4", 3)]
    live = state(model, sparse)
    # a delta holds only the rows changed since its parent
    meta = json.loads((tmp_path / "delta_7" / "delta.json").read_text())
    total = sum(len(impl) for impl in filter_out_sparse_param(model).values())
    assert 0 < sum(t["rows"] for t in meta["tables"].values()) < total
    m2, s2, _, mgr2 = restore(tmp_path, tag)
    assert int(mgr2.global_step) == 7
    assert_same_state(live, state(m2, s2))
    # training on from the restored chain extends it, and equals training on from the live state
    train(model, sparse, dense, mgr, 1, seed=9)
    dense2 = mgr2.saver._extra["dense_optimizer"]
    train(m2, s2, dense2, mgr2, 1, seed=9)
    assert_same_state(state(model, sparse), state(m2, s2))
    # both wrote delta_8 (the second replaced the first); it extends the chain as sequence 4
    assert read_delta_list(str(tmp_path))[-1] == ("delta_8", "ckpt_4", 4)


def test_restore_an_earlier_link_then_save_drops_the_abandoned_deltas(tmp_path):
    tag = f"e{next(_names)}"
    model, sparse, dense, mgr = make(tmp_path, tag, save=None, delta=1)
    train(model, sparse, dense, mgr, 4, seed=4)          # ckpt_1, delta_2..4
    m2, s2, _, mgr2 = restore(tmp_path, tag, global_step=2)
    assert int(mgr2.global_step) == 2
    mgr2.save_delta()                                    # step 2 is the restored link: nothing to save
    assert [d for d, _, _ in read_delta_list(str(tmp_path))] == ["delta_2", "delta_3", "delta_4"]
    train(m2, s2, mgr2.saver._extra["dense_optimizer"], mgr2, 1, seed=11)    # a different step 3
    assert read_delta_list(str(tmp_path)) == [("delta_2", "ckpt_1", 1), ("delta_3", "ckpt_1", 2)]
    assert not (tmp_path / "delta_4").exists()
    m3, s3, _, _ = restore(tmp_path, tag)
    assert_same_state(state(m2, s2), state(m3, s3))


def test_max_keep_prunes_the_deltas_of_deleted_bases(tmp_path):
    tag = f"p{next(_names)}"
    model, sparse, dense, mgr = make(tmp_path, tag, save=3, delta=1, max_keep=1)
    train(model, sparse, dense, mgr, 5, seed=5)          # ckpt_1 d2; ckpt_3 d4 d5
    assert (tmp_path / "checkpoint").read_text().split() == ["ckpt_3"]
    assert [d for d, _, _ in read_delta_list(str(tmp_path))] == ["delta_4", "delta_5"]
    assert not (tmp_path / "delta_2").exists() and not (tmp_path / "ckpt_1").exists()


def test_full_checkpoints_keep_recis_layout(tmp_path):
    tag = f"l{next(_names)}"
    model, sparse, dense, mgr = make(tmp_path, tag, save=2, delta=1)
    train(model, sparse, dense, mgr, 3, seed=6)
    assert {"index", "tensorkey.json", "torch_rank_weights_embs_table_multi_shard.json", "model.pt",
            "extra.pt"} <= set(os.listdir(tmp_path / "ckpt_2"))
    assert not any(n.startswith("delta") for n in os.listdir(tmp_path / "ckpt_2"))
    # the RecIS list file names only full checkpoints
    assert (tmp_path / "checkpoint").read_text().split() == ["ckpt_1", "ckpt_2"]


@pytest.fixture
def chain(tmp_path):
    tag = f"c{next(_names)}"
    model, sparse, dense, mgr = make(tmp_path, tag, save=None, delta=1)
    train(model, sparse, dense, mgr, 4, seed=7)          # ckpt_1, delta_2, delta_3, delta_4
    return tmp_path, tag


def test_missing_link_is_named(chain):
    out, tag = chain
    import shutil
    shutil.rmtree(out / "delta_3")
    with pytest.raises(CheckpointError, match=r"link 2 \(delta_3\) is missing"):
        restore(out, tag)
    # the links before the gap still restore by id
    _, _, _, mgr = restore(out, tag, global_step=2)
    assert int(mgr.global_step) == 2


def test_corrupt_link_is_named_before_anything_is_applied(chain):
    out, tag = chain
    data = out / "delta_3" / "delta-000000-of-000001.safetensors"
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    data.write_bytes(bytes(raw))
    with pytest.raises(CheckpointCorruptError, match=r"link 2 \(delta_3\) is corrupt.*delta-000000-of-000001"):
        resolve_chain(str(out))


def test_unlinked_or_unlisted_deltas_are_errors(chain):
    out, tag = chain
    lines = (out / "delta_checkpoint").read_text().splitlines()
    (out / "delta_checkpoint").write_text("\n".join(lines[:1] + lines[2:]) + "\n")   # drop delta_3
    with pytest.raises(CheckpointError, match="link 2 is missing or repeated"):
        resolve_chain(str(out))
    with pytest.raises(CheckpointError, match="not listed"):
        resolve_chain(str(out), "delta_3")
    (out / "delta_checkpoint").write_text("delta_2 ckpt_1\n")
    with pytest.raises(CheckpointError, match="line 1"):
        resolve_chain(str(out))


def test_a_delta_without_a_chain_falls_back_to_a_full_save(tmp_path):
    tag = f"f{next(_names)}"
    model, sparse, dense, mgr = make(tmp_path, tag, save=None, delta=2)
    assert not mgr.saver.can_save_delta()
    train(model, sparse, dense, mgr, 2, seed=8)
    assert (tmp_path / "checkpoint").read_text().split() == ["ckpt_2"]
    assert mgr.saver.can_save_delta()
    # a table's log restarted behind the Saver's back: the next save is full again
    model.a.impl.track_changes()
    assert not mgr.saver.can_save_delta()
    with pytest.raises(RuntimeError, match="save a full checkpoint"):
        mgr.saver.save_delta("delta_3", 3)


def test_ckpt_inspect_shows_the_chain(chain):
    from click.testing import CliRunner
    from recis_compat.cli import main
    out, tag = chain
    res = CliRunner().invoke(main, ["ckpt", "inspect", str(out)])
    assert res.exit_code == 0, res.output
    assert "chain: ckpt_1 (full) + 3 delta(s):" in res.output
    for seq, step in ((1, 2), (2, 3), (3, 4)):
        assert f"  {seq}. delta_{step}: step {step}, " in res.output
    res = CliRunner().invoke(main, ["ckpt", "inspect", str(out), "--ckpt-id", "3", "--json", "--verify"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.output)
    assert info["delta"]["base"] == "ckpt_1" and info["delta"]["parent"] == "delta_2"
    assert info["delta"]["sequence"] == 2 and info["global_step"] == 3
    assert [t["name"] for t in info["delta"]["tables"]] == [f"{tag}_a", f"{tag}_b"]
    assert info["delta"]["tables"][0]["rows"] > 0
    assert [ln["after"] for ln in info["chain"]["links"]] == [False, False, True]
    assert info["checksums"]["verified"] == len(os.listdir(out / "delta_3")) - 1 and not info["problems"]
    import shutil
    shutil.rmtree(out / "delta_3")
    res = CliRunner().invoke(main, ["ckpt", "inspect", str(out)])
    assert res.exit_code == 1 and "link 2 (delta_3) is missing" in res.output and "BROKEN" in res.output


def test_delta_options_are_checked(tmp_path):
    from recis_compat.framework.trainer import TrainingArguments
    with pytest.raises(ValueError, match="delta_save_steps must be >= 0"):
        TrainingArguments(delta_save_steps=-1)
    model, sparse, dense, _ = make(tmp_path, f"o{next(_names)}", delta=None)
    with pytest.raises(ValueError, match="delta_interval must be >= 0"):
        CheckpointManager(Saver(model, sparse, output_dir=str(tmp_path)), 10, -2)
    assert CheckpointManager(Saver(model, sparse, output_dir=str(tmp_path)), 10, 0).delta_interval is None
