"""recis.serialize round trips: HashTable and EmbeddingEngine tables with several children and
extra slots, raw ids for coalesced tables, resharding 2->1, 1->2 and 2->3, upserts into a
populated table, load-time filter_func (drop / remap), and CheckpointReader."""
import copy
import logging
import os

import pytest
import torch
from safetensors import safe_open

from recis.nn import EmbeddingEngine, EmbeddingOption, HashTable
from recis.nn.initializers import ConstantInitializer, NormalInitializer
from recis.nn.modules.hashtable import HashtableRegister, filter_out_sparse_param, gen_slice
from recis.optim import SparseAdamW
from recis.serialize import Loader, Saver
from recis.serialize.checkpoint_reader import CheckpointReader
from recis_compat.serialize.loader import accept_ids
from serialize_helpers import assert_same, fill, make_table, merge, owned, snapshot

BIG = (1 << 40) + 3          # low 16 bits 3 -> shard 0 of 2
NEG = -2                     # uint64(-2) % 65536 = 65534 -> shard 1 of 2


def sl(shard, num):
    s = gen_slice(shard, num)
    return (s.slice_begin, s.slice_end, s.slice_size)


# ------------------------------------------------------------------------------ HashTable
def test_hashtable_round_trip_with_children_and_extra_slots(tmp_path):
    ht = HashTable([3], name="rt_phys", children=["rt_a", "rt_b", "rt_c"], coalesced=True,
                   initializer=ConstantInitializer(init_val=0.5))
    impl = ht.impl
    impl.add_slot("sparse_adamw_exp_avg", [3], torch.float32)
    impl.add_slot("sparse_adamw_exp_avg_sq", [3], torch.float32)
    impl.add_slot("step_filter", [1], torch.int64, 0)
    impl.add_slot("my_counter", [2], torch.int32, 0)
    expected = fill(impl, {"rt_a": [1, 2, 70000], "rt_b": [2, BIG], "rt_c": []}, seed=1)
    Saver(path=str(tmp_path), hashtables=filter_out_sparse_param(ht), parallel=4).save()

    del ht, impl
    HashtableRegister().clear()            # the same names again in a fresh model
    ht2 = HashTable([3], name="rt_phys", children=["rt_a", "rt_b", "rt_c"], coalesced=True,
                    initializer=ConstantInitializer(init_val=0.5))
    for s, tail, dt in (("sparse_adamw_exp_avg", [3], torch.float32), ("sparse_adamw_exp_avg_sq", [3], torch.float32),
                        ("step_filter", [1], torch.int64), ("my_counter", [2], torch.int32)):
        ht2.impl.add_slot(s, tail, dt, 0)
    summary = Loader(str(tmp_path), hashtables=filter_out_sparse_param(ht2)).load()
    assert_same(snapshot(ht2.impl), expected)
    assert summary.rows == {"rt_a": 3, "rt_b": 2, "rt_c": 0}
    assert summary.missing_info() == []
    assert summary.match_info()["rt_b@my_counter"] == "rt_b@my_counter"
    # lookups see the loaded rows (rt_a is child 0: its encoded ids equal the raw ids)
    ht2.eval()
    assert torch.equal(ht2(torch.tensor([70000])), expected["rt_a"][70000]["embedding"].unsqueeze(0))


def test_non_coalesced_table_keeps_full_64_bit_ids(tmp_path):
    t = make_table("wide")
    big = [(1 << 62) + 5, -(1 << 60), 7]
    expected = fill(t, {"wide": big})
    Saver(path=str(tmp_path), hashtables={"wide": t}).save()
    with safe_open(os.path.join(tmp_path, "model-000000-of-000008.safetensors"), framework="pt") as f:
        assert f.get_tensor("wide.id/part_0_1").tolist() == big
    t2 = make_table("wide")
    Loader(str(tmp_path), hashtables={"wide": t2}).load()
    assert_same(snapshot(t2), expected)


# ------------------------------------------------------------------------------ EmbeddingEngine
def engine(order):
    opts = {}
    for fea, shared in order:
        opts[fea] = EmbeddingOption(embedding_dim=4, shared_name=shared, combiner="sum",
                                    initializer=NormalInitializer(std=0.1, generator=torch.Generator().manual_seed(3)))
    return EmbeddingEngine(opts)


def test_embedding_engine_round_trip_raw_ids_and_other_child_order(tmp_path):
    src = engine([("f_user", "user_emb"), ("f_item", "item_emb"), ("f_user2", "user_emb")])
    src.train()
    batch = {"f_user": torch.tensor([[1], [2]]), "f_item": torch.tensor([[1], [9]]),
             "f_user2": torch.tensor([[2], [3]])}
    sparse = filter_out_sparse_param(src)
    opt = SparseAdamW(sparse, lr=0.1)
    for _ in range(2):
        out = src(batch)
        sum(v.pow(2).sum() for v in out.values()).backward()
        opt.step()
        opt.zero_grad()
    (phys,) = sparse
    assert phys.startswith("CoalescedHashtable_")
    Saver(path=str(tmp_path), hashtables=sparse, tensors=opt.state_dict(), parallel=2).save()

    reader = CheckpointReader(str(tmp_path))
    names = reader.tensor_names()
    # table tensors use the children's shared_names, never the physical table name; ids are raw
    # (only the optimizer's per-table scalars "sparse_adamw_beta1:<table>" name the physical table)
    assert not any("Coalesced" in n for n in names if "@" in n)
    assert {"user_emb@id", "user_emb@embedding", "user_emb@sparse_adamw_exp_avg", "user_emb@sparse_adamw_exp_avg_sq",
            "item_emb@id", "item_emb@embedding", "sparse_adamw_step", "sparse_adamw_beta1",
            "sparse_adamw_beta2"} <= set(names)
    assert sorted(reader.read_tensor("user_emb@id").tolist()) == [1, 2, 3]
    assert sorted(reader.read_tensor("item_emb@id").tolist()) == [1, 9]
    assert reader.read_tensor("sparse_adamw_step").tolist() == [2]
    src.eval()
    want = src(batch)

    HashtableRegister().clear()
    dst = engine([("f_item", "item_emb"), ("f_user", "user_emb"), ("f_user2", "user_emb")])   # other child order
    dsparse = filter_out_sparse_param(dst)
    dopt = SparseAdamW(dsparse, lr=0.1)
    tensors = dopt.state_dict()
    Loader(str(tmp_path), hashtables=dsparse, tensors=tensors).load()
    dopt.load_state_dict(tensors)
    assert list(dsparse.values())[0].children_info().children() == ["item_emb", "user_emb"]
    dst.eval()
    got = dst(batch)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=0)
    assert tensors["sparse_adamw_step"].tolist() == [2]
    assert float(tensors["sparse_adamw_beta1"]) == pytest.approx(0.9 ** 2)
    # optimizer moments came along: one more identical step gives identical tables
    src.train(), dst.train()
    for model, o in ((src, opt), (dst, dopt)):
        out = model(batch)
        sum(v.pow(2).sum() for v in out.values()).backward()
        o.step()
    src.eval(), dst.eval()
    for k, v in src(batch).items():
        torch.testing.assert_close(dst(batch)[k], v)


# ------------------------------------------------------------------------------ resharding
def save_shards(path, num, child_ids, children=("ra", "rb"), seed=0, coalesced=True):
    """``num`` shard tables (slices gen_slice(s, num)), each holding only its own ids; saved
    with shard_index s (highest shard first, so shard 0 finds every fragment)."""
    full = make_table("full_src", children=list(children), coalesced=coalesced)
    expected = fill(full, child_ids, seed)
    for s in reversed(range(num)):
        b, e, size = sl(s, num)
        t = make_table(f"src{s}", children=list(children), coalesced=coalesced, slice=(b, e, size))
        mine = owned(expected, b, e)
        for child, rows in mine.items():
            if not rows:
                continue
            ids = torch.tensor(list(rows), dtype=torch.int64)
            stored = t.children.encode_id(ids, t.children.child_index(child)) if coalesced else ids
            r = t.find_or_insert_rows(stored)
            for slot in t.storage.slots:
                t.storage.write_rows(slot, r, torch.stack([rows[i][slot] for i in rows.keys()]))
        Saver(shard_index=s, shard_num=num, parallel=3, path=str(path), hashtables={f"src{s}": t}).save()
    return expected


IDS = {"ra": [0, 1, 2, 32767, 32768, 40000, 65535, 65536 + 40000, BIG, NEG], "rb": [5, 33000, NEG, 12345678]}


def test_reshard_two_shards_into_one(tmp_path):
    expected = save_shards(tmp_path, 2, IDS)
    t = make_table("one", children=["ra", "rb"], coalesced=True)
    Loader(str(tmp_path), hashtables={"one": t}).load()
    assert_same(snapshot(t), expected)


def test_reshard_one_shard_into_two(tmp_path):
    expected = save_shards(tmp_path, 1, IDS)
    got = []
    for s in range(2):
        b, e, size = sl(s, 2)
        t = make_table(f"dst{s}", children=["ra", "rb"], coalesced=True, slice=(b, e, size))
        Loader(str(tmp_path), hashtables={"t": t}).load()
        snap = snapshot(t)
        assert_same(snap, owned(expected, b, e))          # each target keeps only its slice's ids
        got.append(snap)
    assert_same(merge(*got), expected)
    assert (NEG & ((1 << 52) - 1)) in got[1]["ra"] and BIG in got[0]["ra"]


def test_reshard_two_shards_into_three(tmp_path):
    expected = save_shards(tmp_path, 2, {"plain": IDS["ra"]}, children=("plain",), coalesced=False)
    parts = []
    for s in range(3):
        b, e, size = sl(s, 3)
        t = make_table(f"three{s}", children=["plain"], slice=(b, e, size))
        Loader(str(tmp_path), hashtables={"t": t}).load()
        parts.append(snapshot(t))
        assert_same(parts[-1], owned(expected, b, e))
    assert_same(merge(*parts), expected)


def test_accept_ids_uses_uint64_modulo():
    ids = torch.tensor([0, 65535, 65536, -1, -65536, -65537, BIG], dtype=torch.int64)
    for size, begin, end in ((65536, 32768, 65536), (65536, 0, 32768), (1000, 10, 500), (7, 0, 3)):
        got = accept_ids(ids, begin, end, size).tolist()
        want = [begin <= (i % (1 << 64)) % size < end for i in ids.tolist()]
        assert got == want, (size, begin, end)


def test_slices_of_another_size_are_not_used(tmp_path):
    save_shards(tmp_path, 1, {"ra": [1, 2]}, children=("ra",))
    t = make_table("other_size", children=["ra"], coalesced=True, slice=(0, 100, 100))
    Loader(str(tmp_path), hashtables={"t": t}).load()
    assert len(t) == 0


# ------------------------------------------------------------------------------ load semantics
def test_load_upserts_into_a_populated_table(tmp_path):
    src = make_table("ups")
    expected = fill(src, {"ups": [1, 2]}, seed=4)
    Saver(path=str(tmp_path), hashtables={"ups": src}).save()
    dst = make_table("ups")
    before = fill(dst, {"ups": [2, 99]}, seed=5)
    Loader(str(tmp_path), hashtables={"ups": dst}).load()
    assert_same(snapshot(dst), {"ups": {1: expected["ups"][1], 2: expected["ups"][2], 99: before["ups"][99]}})


def test_slot_missing_from_checkpoint_warns_and_keeps_initial_values(tmp_path, caplog):
    src = make_table("miss", slots=(), step_filter=False)
    expected = fill(src, {"miss": [4, 5]})
    Saver(path=str(tmp_path), hashtables={"miss": src}).save()
    dst = make_table("miss")              # has optimizer slots and step_filter the checkpoint lacks
    with caplog.at_level(logging.WARNING, logger="recis_compat.serialize"):
        summary = Loader(str(tmp_path), hashtables={"miss": dst}).load()
    assert "Sparse tensor [miss@sparse_adamw_exp_avg] not found" in caplog.text
    assert "Sparse tensor [miss@step_filter] not found" in caplog.text
    assert sorted(summary.missing_info()) == ["miss@sparse_adamw_exp_avg", "miss@sparse_adamw_exp_avg_sq",
                                              "miss@step_filter"]
    snap = snapshot(dst)
    assert_same(snap, expected)
    for i in (4, 5):
        assert torch.equal(snap["miss"][i]["sparse_adamw_exp_avg"], torch.zeros(4))
        assert torch.equal(snap["miss"][i]["step_filter"], torch.zeros(1, dtype=torch.int64))


def test_slots_the_table_lacks_are_ignored(tmp_path):
    src = make_table("lack")
    expected = fill(src, {"lack": [8]})
    Saver(path=str(tmp_path), hashtables={"lack": src}).save()
    dst = make_table("lack", slots=(), step_filter=False)
    Loader(str(tmp_path), hashtables={"lack": dst}).load()
    assert list(dst.storage.slots) == ["embedding"]
    assert torch.equal(snapshot(dst)["lack"][8]["embedding"], expected["lack"][8]["embedding"])


def test_dense_tensors_copied_in_place_and_missing_ones_warn(tmp_path, caplog):
    Saver(path=str(tmp_path), tensors={"step": torch.tensor([5]), "beta": torch.tensor(0.25)}).save()
    step, beta, other = torch.tensor([0]), torch.tensor(1.0), torch.tensor([1.0, 2.0])
    step_obj = step
    with caplog.at_level(logging.WARNING, logger="recis_compat.serialize"):
        Loader(str(tmp_path), tensors={"step": step, "beta": beta, "other": other}).load()
    assert step_obj.tolist() == [5] and float(beta) == 0.25
    assert other.tolist() == [1.0, 2.0]
    assert "Dense tensor [other] not found" in caplog.text


def test_load_filter_func_drops_and_remaps(tmp_path):
    src = make_table("lf_phys", children=["lf_a", "lf_b"], coalesced=True)
    expected = fill(src, {"lf_a": [1, 2], "lf_b": [3]})
    Saver(path=str(tmp_path), hashtables={"p": src}, tensors={"sc": torch.tensor(3.0)}).save()
    dst = make_table("lf_dst", children=["lf_a", "lf_b", "lf_new"], coalesced=True)
    seen = {}

    def f(info):
        seen.update(copy.deepcopy(info))
        info.pop("lf_b")                                   # do not load child lf_b
        info["lf_a"]["lf_a"].remove("sparse_adamw_exp_avg_sq")
        info["lf_new"] = {"lf_b": ["id", "embedding"]}     # rows of checkpoint child lf_b into lf_new
        del info["sc"]
        return info

    sc = torch.tensor(0.0)
    Loader(str(tmp_path), hashtables={"d": dst}, tensors={"sc": sc}, filter_func=f).load()
    assert seen["lf_a"] == {"lf_a": ["id", "embedding", "sparse_adamw_exp_avg", "sparse_adamw_exp_avg_sq",
                                     "step_filter"]}
    assert seen["sc"] == {"sc": []}
    snap = snapshot(dst)
    assert snap["lf_b"] == {} and float(sc) == 0.0
    assert sorted(snap["lf_a"]) == [1, 2] and sorted(snap["lf_new"]) == [3]
    for i in (1, 2):
        for s in ("embedding", "sparse_adamw_exp_avg", "step_filter"):
            assert torch.equal(snap["lf_a"][i][s], expected["lf_a"][i][s])
        assert torch.equal(snap["lf_a"][i]["sparse_adamw_exp_avg_sq"], torch.zeros(4))
    assert torch.equal(snap["lf_new"][3]["embedding"], expected["lf_b"][3]["embedding"])
    assert torch.equal(snap["lf_new"][3]["sparse_adamw_exp_avg"], torch.zeros(4))


# ------------------------------------------------------------------------------ reader
def test_checkpoint_reader_on_two_shards(tmp_path):
    expected = save_shards(tmp_path, 2, {"ra": [1, 40000, 2, 65535], "rb": [7]})
    Saver(path=str(tmp_path / "dense"), tensors={"beta": torch.tensor([[1.0, 2.0]], dtype=torch.float64)}).save()
    r = CheckpointReader(str(tmp_path))
    assert r.tensor_names() == sorted(f"{c}@{s}" for c in ("ra", "rb") for s in
                                      ("id", "embedding", "sparse_adamw_exp_avg", "sparse_adamw_exp_avg_sq",
                                       "step_filter"))
    ids = r.read_tensor("ra@id")
    # shard 0's slice (00000@32768) first, then shard 1's
    assert ids.tolist()[:2] == [1, 2] and sorted(ids.tolist()[2:]) == [40000, 65535]
    emb = r.read_tensor("ra@embedding")
    assert emb.shape == (4, 4) and r.tensor_shape("ra@embedding") == [4, 4]
    for k, i in enumerate(ids.tolist()):
        assert torch.equal(emb[k], expected["ra"][i]["embedding"])
    assert r.tensor_dtype("ra@step_filter") == torch.int64 and r.tensor_shape("ra@step_filter") == [4, 1]
    assert r.tensor_dtype("ra@id") == torch.int64
    with pytest.raises(KeyError, match="nope"):
        r.read_tensor("nope")
    d = CheckpointReader(str(tmp_path / "dense"))
    assert d.tensor_names() == ["beta"]
    assert d.tensor_shape("beta") == [1, 2] and d.tensor_dtype("beta") == torch.float64
    assert d.read_tensor("beta").tolist() == [[1.0, 2.0]]


def test_restore_keeps_checkpoint_pages_out_of_the_process(tmp_path, monkeypatch):
    """A restore reads slot rows chunk by chunk; safetensors maps the whole data file, so the
    mapping is closed after every chunk: the process's resident file pages (RssFile) never hold
    more than a few chunks of a 256 MB slot, and the rows come back equal."""
    import recis_compat.serialize.loader as loader_mod

    def rss_file():
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("RssFile:"):
                    return int(line.split()[1]) << 10
        pytest.skip("no RssFile in /proc/self/status")

    n, dim = 1_000_000, 64                                   # 256 MB of float32 rows
    src = HashTable([dim], name="rss_src", initializer=ConstantInitializer(init_val=0.0))
    ids = torch.arange(n, dtype=torch.int64) * 7 + 1
    src.impl.insert(ids, torch.arange(n * dim, dtype=torch.float32).view(n, dim))
    Saver(path=str(tmp_path), hashtables=filter_out_sparse_param(src)).save()
    expected = src.impl.gather(src.impl.find_rows(ids[::997]))
    del src
    HashtableRegister().unregister("rss_src")
    dst = HashTable([dim], name="rss_src", initializer=ConstantInitializer(init_val=0.0))
    monkeypatch.setattr(loader_mod, "_CHUNK_BYTES", 8 << 20)
    base = rss_file()
    peak = [0]
    write_rows = dst.impl.storage.write_rows

    def sampled(*a, **k):
        peak[0] = max(peak[0], rss_file() - base)
        return write_rows(*a, **k)

    monkeypatch.setattr(dst.impl.storage, "write_rows", sampled)
    Loader(str(tmp_path), hashtables=filter_out_sparse_param(dst)).load()
    assert torch.equal(dst.impl.gather(dst.impl.find_rows(ids[::997])), expected)
    assert len(dst.impl) == n
    # one 8 MB chunk mapped at a time (slack for the id block and libraries), not the 256 MB slot
    assert peak[0] < (64 << 20), f"resident checkpoint pages grew by {peak[0] >> 20} MiB during the restore"


def test_restore_reads_ids_in_batches(tmp_path, monkeypatch):
    """A restore reads, inserts and writes ``_ID_BATCH`` ids at a time (a 132M-id block read at
    once held ~5 GB of ids, masks and rows): no read of the id block returns more, and the table
    (ids, rows in id order, every slot) equals one restored in a single batch."""
    import recis_compat.serialize.loader as loader_mod
    from recis_compat.serialize.bundle import CheckpointBundle

    n, dim = 5000, 4
    src = HashTable([dim], name="batched_src", initializer=ConstantInitializer(init_val=0.0))
    g = torch.Generator().manual_seed(0)
    ids = torch.randperm(50_000, generator=g)[:n].to(torch.int64) - 20_000   # negatives too
    src.impl.insert(ids, torch.randn(n, dim, generator=g))
    Saver(path=str(tmp_path), hashtables=filter_out_sparse_param(src)).save()
    del src
    HashtableRegister().unregister("batched_src")

    def restore(batch):
        monkeypatch.setattr(loader_mod, "_ID_BATCH", batch)
        monkeypatch.setattr(loader_mod, "_CHUNK_BYTES", 40 * 16)       # 40 rows of 4 float32 per read
        widest = [0]
        read = CheckpointBundle.read

        def spy(self, ref, start=None, stop=None, handle=None):
            out = read(self, ref, start, stop, handle)
            if ref.tensor.endswith("@id"):
                widest[0] = max(widest[0], out.numel())
            return out

        monkeypatch.setattr(CheckpointBundle, "read", spy)
        dst = HashTable([dim], name="batched_src", initializer=ConstantInitializer(init_val=0.0))
        Loader(str(tmp_path), hashtables=filter_out_sparse_param(dst)).load()
        monkeypatch.setattr(CheckpointBundle, "read", read)
        state = {k: v.clone() for k, v in dst.impl.state_dict().items()}
        rows = dst.impl.find_rows(ids)
        HashtableRegister().unregister("batched_src")
        return widest[0], state, rows

    widest, batched, rows_b = restore(333)
    assert widest == 333
    whole, single, rows_s = restore(1 << 20)
    assert whole == n
    assert torch.equal(rows_b, rows_s) and bool((rows_b >= 0).all())
    assert sorted(batched) == sorted(single)
    for k in single:
        assert torch.equal(batched[k], single[k]), k
