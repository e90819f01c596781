"""recis.serialize on-disk format (RecIS 1.0; see COMPATIBILITY.md): file names, tensor keys, the three JSON
metadata files as literal expected values, standard safetensors files, round-robin writers,
atomic writes and Saver argument checks."""
import json
import os

import pytest
import torch
from safetensors import safe_open

from recis.nn.modules.hashtable import gen_slice
from recis.serialize import Saver
from recis_compat.serialize import layout
from recis_compat.serialize.layout import slice_string
from recis_compat.serialize.saver import WriteBlock
from serialize_helpers import make_table


def read_json(d, name):
    with open(os.path.join(d, name)) as f:
        return json.load(f)


def header_of(path):
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        raw = f.read(n)
        rest = f.read()
    return n, json.loads(raw.decode()), raw, len(rest)


# ------------------------------------------------------------------------------ names
def test_slice_strings_and_keys():
    s0, s1 = gen_slice(0, 2), gen_slice(1, 2)
    assert slice_string(s0.slice_begin, s0.slice_end, s0.slice_size) == "00000@32768@65536"
    assert slice_string(s1.slice_begin, s1.slice_end, s1.slice_size) == "32768@65536@65536"
    assert slice_string(0, 65536, 65536) == "00000@65536@65536"
    s = gen_slice(1, 3)
    assert slice_string(s.slice_begin, s.slice_end, s.slice_size) == "21846@43691@65536"
    assert layout.parse_slice("00000@32768@65536") == (0, 32768, 65536)
    assert layout.table_block_key("user_emb@embedding", 0, 2) == "user_emb.embedding/part_0_2"
    assert layout.dense_block_key("sparse_adamw_tf_beta1") == "sparse_adamw_tf_beta1^ "
    assert layout.data_file_name(1, 8, 3, 2) == "model-000011-of-000016.safetensors"
    with pytest.raises(ValueError):
        layout.parse_slice("1@2")


# ------------------------------------------------------------------------------ literal layout
def save_two_shard_user_emb(tmp_path):
    """Shard 1 (written first) and shard 0 of table user_emb, dim 2, SparseAdamWTF-style slots;
    shard 0 also writes two dense optimizer scalars."""
    slots = ("sparse_adamw_tf_exp_avg", "sparse_adamw_tf_exp_avg_sq")
    s0, s1 = gen_slice(0, 2), gen_slice(1, 2)
    t0 = make_table("user_emb", dim=2, slice=(s0.slice_begin, s0.slice_end, s0.slice_size), slots=slots,
                    step_filter=False)
    t1 = make_table("user_emb", dim=2, slice=(s1.slice_begin, s1.slice_end, s1.slice_size), slots=slots,
                    step_filter=False)
    t0.insert(torch.tensor([1, 5]), torch.tensor([[1.0, 1.5], [5.0, 5.5]]))
    t1.insert(torch.tensor([40000]), torch.tensor([[4.0, 4.5]]))
    dense = {"sparse_adamw_tf_step": torch.tensor([7]), "sparse_adamw_tf_beta1": torch.tensor(0.81)}
    Saver(shard_index=1, shard_num=2, parallel=2, path=str(tmp_path), hashtables={"user_emb": t1},
          tensors=dense).save()
    Saver(shard_index=0, shard_num=2, parallel=2, path=str(tmp_path), hashtables={"user_emb": t0},
          tensors=dense).save()


def test_exact_files_keys_and_json(tmp_path):
    save_two_shard_user_emb(tmp_path)
    d = str(tmp_path)
    # blocks in order id, embedding, exp_avg, exp_avg_sq (+ step, beta1 on shard 0), round-robin
    # over 2 writers per shard; files i = shard*parallel + writer of N = parallel*shard_num
    assert sorted(os.listdir(d)) == [
        "checksums.json", "index", "model-000000-of-000004.safetensors", "model-000001-of-000004.safetensors",
        "model-000002-of-000004.safetensors", "model-000003-of-000004.safetensors", "tensorkey.json",
        "torch_rank_weights_embs_table_multi_shard.json"]
    assert read_json(d, "index") == {
        "file_index": {"model-000000-of-000004.safetensors": 0, "model-000001-of-000004.safetensors": 1,
                       "model-000002-of-000004.safetensors": 2, "model-000003-of-000004.safetensors": 3},
        "block_index": {
            "user_emb.id/part_0_2": 0, "user_emb.embedding/part_0_2": 1,
            "user_emb.sparse_adamw_tf_exp_avg/part_0_2": 0, "user_emb.sparse_adamw_tf_exp_avg_sq/part_0_2": 1,
            "sparse_adamw_tf_step^ ": 0, "sparse_adamw_tf_beta1^ ": 1,
            "user_emb.id/part_1_2": 2, "user_emb.embedding/part_1_2": 3,
            "user_emb.sparse_adamw_tf_exp_avg/part_1_2": 2, "user_emb.sparse_adamw_tf_exp_avg_sq/part_1_2": 3}}
    assert read_json(d, "tensorkey.json") == {
        "user_emb.id/part_0_2": "user_emb@id^00000@32768@65536",
        "user_emb.embedding/part_0_2": "user_emb@embedding^00000@32768@65536",
        "user_emb.sparse_adamw_tf_exp_avg/part_0_2": "user_emb@sparse_adamw_tf_exp_avg^00000@32768@65536",
        "user_emb.sparse_adamw_tf_exp_avg_sq/part_0_2": "user_emb@sparse_adamw_tf_exp_avg_sq^00000@32768@65536",
        "user_emb.id/part_1_2": "user_emb@id^32768@65536@65536",
        "user_emb.embedding/part_1_2": "user_emb@embedding^32768@65536@65536",
        "user_emb.sparse_adamw_tf_exp_avg/part_1_2": "user_emb@sparse_adamw_tf_exp_avg^32768@65536@65536",
        "user_emb.sparse_adamw_tf_exp_avg_sq/part_1_2": "user_emb@sparse_adamw_tf_exp_avg_sq^32768@65536@65536"}
    # JSON written like nlohmann dump(4): sorted keys, 4-space indent
    with open(os.path.join(d, "tensorkey.json")) as f:
        text = f.read()
    assert text.startswith('{\n    "user_emb.embedding/part_0_2": "user_emb@embedding^00000@32768@65536",\n')


def test_merged_torch_rank_json_lists_every_block(tmp_path):
    save_two_shard_user_emb(tmp_path)
    d = str(tmp_path)
    # RecIS's merge (RecIS 1.0; see COMPATIBILITY.md): every block the writers produced; dense and embedding
    # entries reformatted, id and the other slots left as written (safetensors dtype code,
    # data_offsets of the file header)
    rank = read_json(d, "torch_rank_weights_embs_table_multi_shard.json")
    assert sorted(rank) == sorted(read_json(d, "index")["block_index"])
    assert {k: v for k, v in rank.items() if v.get("dense") or k.startswith("user_emb.embedding")} == {
        "sparse_adamw_tf_beta1^ ": {"dense": True, "dimension": 0, "dtype": "float32", "is_hashmap": False,
                                    "name": "sparse_adamw_tf_beta1^ ", "shape": []},
        "sparse_adamw_tf_step^ ": {"dense": True, "dimension": 0, "dtype": "int64", "is_hashmap": False,
                                   "name": "sparse_adamw_tf_step^ ", "shape": [1]},
        "user_emb.embedding/part_0_2": {
            "dense": False, "dimension": 2, "dtype": "float32", "hashmap_key": "user_emb.id/part_0_2",
            "hashmap_key_dtype": "int64", "hashmap_value": "user_emb.embedding/part_0_2", "is_hashmap": True,
            "name": "user_emb.embedding/part_0_2", "shape": [2, 2]},
        "user_emb.embedding/part_1_2": {
            "dense": False, "dimension": 2, "dtype": "float32", "hashmap_key": "user_emb.id/part_1_2",
            "hashmap_key_dtype": "int64", "hashmap_value": "user_emb.embedding/part_1_2", "is_hashmap": True,
            "name": "user_emb.embedding/part_1_2", "shape": [1, 2]}}
    # file 0 holds id/part_0_2 (2 x int64 = bytes 0..16), exp_avg/part_0_2 (2x2 f32, 16..32), step
    assert rank["user_emb.id/part_0_2"] == {"data_offsets": [0, 16], "dense": False, "dtype": "I64", "shape": [2]}
    assert rank["user_emb.sparse_adamw_tf_exp_avg/part_0_2"] == {
        "data_offsets": [16, 32], "dense": False, "dtype": "F32", "shape": [2, 2]}
    assert rank["user_emb.sparse_adamw_tf_exp_avg_sq/part_0_2"] == {
        "data_offsets": [16, 32], "dense": False, "dtype": "F32", "shape": [2, 2]}
    assert rank["user_emb.id/part_1_2"] == {"data_offsets": [0, 8], "dense": False, "dtype": "I64", "shape": [1]}
    assert rank["user_emb.sparse_adamw_tf_exp_avg_sq/part_1_2"] == {
        "data_offsets": [8, 16], "dense": False, "dtype": "F32", "shape": [1, 2]}
    # data_offsets are those of the data file's own safetensors header
    for key, entry in rank.items():
        if "data_offsets" in entry:
            fname = [f for f, i in read_json(d, "index")["file_index"].items()
                     if i == read_json(d, "index")["block_index"][key]][0]
            assert header_of(os.path.join(d, fname))[1][key]["data_offsets"] == entry["data_offsets"]


def test_files_are_standard_safetensors(tmp_path):
    save_two_shard_user_emb(tmp_path)
    d = str(tmp_path)
    with safe_open(os.path.join(d, "model-000000-of-000004.safetensors"), framework="pt") as f:
        assert f.metadata() is None
        assert sorted(f.keys()) == ["sparse_adamw_tf_step^ ", "user_emb.id/part_0_2",
                                    "user_emb.sparse_adamw_tf_exp_avg/part_0_2"]
        assert f.get_tensor("user_emb.id/part_0_2").tolist() == [1, 5]
        assert f.get_tensor("user_emb.id/part_0_2").dtype == torch.int64
        assert f.get_tensor("sparse_adamw_tf_step^ ").tolist() == [7]
        assert torch.equal(f.get_tensor("user_emb.sparse_adamw_tf_exp_avg/part_0_2"), torch.zeros(2, 2))
    with safe_open(os.path.join(d, "model-000001-of-000004.safetensors"), framework="pt") as f:
        # row k of the embedding block belongs to id k of the id block
        assert torch.equal(f.get_tensor("user_emb.embedding/part_0_2"), torch.tensor([[1.0, 1.5], [5.0, 5.5]]))
        beta1 = f.get_tensor("sparse_adamw_tf_beta1^ ")
        assert beta1.shape == () and beta1.dtype == torch.float32 and float(beta1) == pytest.approx(0.81)
    with safe_open(os.path.join(d, "model-000003-of-000004.safetensors"), framework="pt") as f:
        assert torch.equal(f.get_tensor("user_emb.embedding/part_1_2"), torch.tensor([[4.0, 4.5]]))
    with safe_open(os.path.join(d, "model-000002-of-000004.safetensors"), framework="pt") as f:
        assert f.get_tensor("user_emb.id/part_1_2").tolist() == [40000]
    for name in os.listdir(d):
        if name.endswith(".safetensors"):
            n, header, raw, data_len = header_of(os.path.join(d, name))
            assert n % 8 == 0 and "__metadata__" not in header
            assert raw.decode().rstrip(" ") == raw.decode().strip()
            assert max(v["data_offsets"][1] for v in header.values()) == data_len


def test_empty_writers_write_no_file_and_single_shard_has_no_fragments(tmp_path):
    t = make_table("solo", slots=(), step_filter=False)
    t.insert(torch.tensor([3]), torch.ones(1, 4))
    Saver(parallel=8, path=str(tmp_path), hashtables={"solo": t}).save()
    # two blocks (id, embedding) for eight writers: files 0 and 1 of 8, nothing else
    assert sorted(os.listdir(tmp_path)) == [
        "checksums.json", "index", "model-000000-of-000008.safetensors", "model-000001-of-000008.safetensors",
        "tensorkey.json", "torch_rank_weights_embs_table_multi_shard.json"]


def test_no_dense_tensors_on_other_shards_and_no_leftovers(tmp_path):
    t1 = make_table("s1", slice=(32768, 65536, 65536))
    t0 = make_table("s1", slice=(0, 32768, 65536))
    dense = {"d": torch.arange(3.0)}
    Saver(shard_index=1, shard_num=2, parallel=3, path=str(tmp_path), hashtables={"t": t1}, tensors=dense).save()
    frag = [n for n in os.listdir(tmp_path) if n.endswith(".fragment.json")]
    assert frag == ["ckpt-0000001-of-0000002.fragment.json"]
    assert "index" not in os.listdir(tmp_path)         # shard 0 has not merged yet
    Saver(shard_index=0, shard_num=2, parallel=3, path=str(tmp_path), hashtables={"t": t0}, tensors=dense).save()
    names = os.listdir(tmp_path)
    assert not [n for n in names if ".tmp" in n or n.endswith(".fragment.json")]
    idx = read_json(str(tmp_path), "index")["block_index"]
    assert [k for k in idx if k.startswith("d^")] == ["d^ "]
    assert "s1.step_filter/part_1_2" in idx and "s1.step_filter/part_0_2" in idx


def test_write_blocks_seen_by_filter_func(tmp_path):
    t = make_table("fb", children=["fa", "fb2"], coalesced=True, step_filter=False)
    seen = []

    def keep_ids_and_embeddings(blocks):
        seen.extend((b.tensor_name(), b.slice_info(), b.is_dense()) for b in blocks)
        assert all(isinstance(b, WriteBlock) for b in blocks)
        return [b for b in blocks if not b.tensor_name().endswith("exp_avg") and "exp_avg_sq" not in b.tensor_name()]

    Saver(path=str(tmp_path), hashtables={"fb": t}, tensors={"sc": torch.tensor(1.0)},
          filter_func=keep_ids_and_embeddings).save()
    slc = "00000@65536@65536"
    assert seen == [("fa@id", slc, False), ("fa@embedding", slc, False), ("fa@sparse_adamw_exp_avg", slc, False),
                    ("fa@sparse_adamw_exp_avg_sq", slc, False), ("fb2@id", slc, False),
                    ("fb2@embedding", slc, False), ("fb2@sparse_adamw_exp_avg", slc, False),
                    ("fb2@sparse_adamw_exp_avg_sq", slc, False), ("sc", " ", True)]
    assert sorted(read_json(str(tmp_path), "index")["block_index"]) == [
        "fa.embedding/part_0_1", "fa.id/part_0_1", "fb2.embedding/part_0_1", "fb2.id/part_0_1", "sc^ "]


def test_crash_while_writing_leaves_no_file(tmp_path, monkeypatch):
    from recis_compat.serialize import saver as saver_mod
    t = make_table("crash")
    t.insert(torch.tensor([1, 2]), torch.ones(2, 4))

    def boom(f, entries):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(saver_mod, "write_safetensors", boom)
    with pytest.raises(OSError, match="disk full"):
        Saver(parallel=1, path=str(tmp_path), hashtables={"crash": t}).save()
    assert os.listdir(tmp_path) == []


def test_saver_argument_errors(tmp_path):
    t = make_table("argt")
    with pytest.raises(ValueError, match="shard_index"):
        Saver(shard_index=2, shard_num=2, path=str(tmp_path))
    with pytest.raises(ValueError, match="parallel"):
        Saver(parallel=0, path=str(tmp_path))
    with pytest.raises(TypeError, match="not a dynamic table"):
        Saver(path=str(tmp_path), hashtables={"x": torch.zeros(2)})
    with pytest.raises(TypeError, match="not a Tensor"):
        Saver(path=str(tmp_path), tensors={"x": 1.0})
    with pytest.raises(TypeError, match="filter_func must return"):
        Saver(path=str(tmp_path), hashtables={"argt": t}, filter_func=lambda blocks: None).save()
    twin = make_table("argt2", children=["argt"])
    with pytest.raises(ValueError, match="argt.id/part_0_1"):
        Saver(path=str(tmp_path), hashtables={"a": t, "b": twin}).save()
    assert os.listdir(tmp_path) == []


def test_table_listed_twice_is_written_once_and_modules_are_accepted(tmp_path):
    from recis.nn import HashTable
    ht = HashTable([2], name="twice")
    ht.insert(torch.tensor([4, 5]), torch.ones(2, 2))
    Saver(path=str(tmp_path), hashtables={"a": ht.impl, "b": ht.impl, "c": ht}).save()
    assert sorted(read_json(str(tmp_path), "index")["block_index"]) == ["twice.embedding/part_0_1",
                                                                        "twice.id/part_0_1"]
