"""recis.serialize bad input: missing and corrupt files raise CheckpointError naming the
checkpoint directory and the file; dtype / row-shape mismatches name the table and slot and
change nothing; the Q16 fix: shard 0 waits for missing shards with a timeout, never forever."""
import json
import os
import time

import pytest
import torch

from recis.serialize import Loader, Saver
from recis.serialize.checkpoint_reader import CheckpointReader
from recis_compat.serialize.layout import (CheckpointCorruptError, CheckpointError, CheckpointMismatchError,
                                           CheckpointNotFoundError)
from serialize_helpers import fill, make_table, snapshot

# without_checksums() makes RecIS-like directories on purpose: their one warning is expected here
pytestmark = pytest.mark.filterwarnings("ignore:.*has no checksums.json:RuntimeWarning")


@pytest.fixture
def ckpt(tmp_path):
    t = make_table("err_t")
    fill(t, {"err_t": [1, 2, 3]})
    d = tmp_path / "ck"
    Saver(path=str(d), hashtables={"err_t": t}, tensors={"sc": torch.tensor([1.0, 2.0])}, parallel=2).save()
    return d


def load(d, **kw):
    kw.setdefault("hashtables", {"err_t": make_table("err_t")})
    return Loader(str(d), **kw).load()


def without_checksums(d):
    """As a RecIS-written directory: no checksums.json, so the structural checks are what
    catch a damaged file (tests/unit/serialize/test_checkpoint_integrity.py covers checksums)."""
    os.unlink(d / "checksums.json")


def data_files(d):
    return sorted(n for n in os.listdir(d) if n.endswith(".safetensors"))


def test_missing_directory(tmp_path):
    with pytest.raises(CheckpointNotFoundError, match="does not exist") as e:
        load(tmp_path / "nothing")
    assert isinstance(e.value, FileNotFoundError) and isinstance(e.value, ValueError)
    with pytest.raises(CheckpointNotFoundError):
        CheckpointReader(str(tmp_path / "nothing"))


@pytest.mark.parametrize("name", ["index", "tensorkey.json"])
def test_missing_metadata_file(ckpt, name):
    os.unlink(ckpt / name)
    with pytest.raises(CheckpointNotFoundError, match=f"{ckpt}.*{name}"):
        load(ckpt)


@pytest.mark.parametrize("name", ["index", "tensorkey.json"])
def test_metadata_json_that_does_not_parse(ckpt, name):
    without_checksums(ckpt)
    (ckpt / name).write_text('{"file_index": {')
    with pytest.raises(CheckpointError, match=f"{ckpt}.*{name}.*not valid JSON"):
        load(ckpt)


def test_index_with_wrong_structure(ckpt):
    without_checksums(ckpt)
    (ckpt / "index").write_text(json.dumps({"files": []}))
    with pytest.raises(CheckpointError, match="file_index"):
        CheckpointReader(str(ckpt))


def test_index_naming_a_file_that_does_not_exist(ckpt):
    without_checksums(ckpt)
    os.unlink(ckpt / data_files(ckpt)[1])
    with pytest.raises(CheckpointNotFoundError, match="model-000001-of-000002.safetensors.*does not exist"):
        load(ckpt)


def test_truncated_data_file(ckpt):
    path = ckpt / data_files(ckpt)[0]
    data = path.read_bytes()
    path.write_bytes(data[:-5])
    t = make_table("err_t")
    with pytest.raises(CheckpointCorruptError, match=f"{ckpt}.*model-000000-of-000002.safetensors.*corrupt"):
        load(ckpt, hashtables={"err_t": t})
    assert len(t) == 0
    without_checksums(ckpt)
    with pytest.raises(CheckpointError, match=f"{ckpt}.*model-000000-of-000002.safetensors.*not a valid safetensors"):
        load(ckpt, hashtables={"err_t": t})
    assert len(t) == 0                 # nothing was loaded before the error
    with pytest.raises(CheckpointError, match="model-000000-of-000002"):
        CheckpointReader(str(ckpt)).read_tensor("err_t@id")


def test_bad_safetensors_header(ckpt):
    without_checksums(ckpt)
    path = ckpt / data_files(ckpt)[1]
    data = bytearray(path.read_bytes())
    data[8:12] = b"!!!!"
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="model-000001-of-000002.safetensors"):
        load(ckpt)
    path.write_bytes(b"\x05")
    with pytest.raises(CheckpointError, match="model-000001-of-000002.safetensors"):
        load(ckpt)


def test_block_listed_in_index_but_absent_from_file(ckpt):
    without_checksums(ckpt)
    idx = json.loads((ckpt / "index").read_text())
    tk = json.loads((ckpt / "tensorkey.json").read_text())
    idx["block_index"]["err_t.embedding/part_0_1"] = 1 - idx["block_index"]["err_t.embedding/part_0_1"]
    (ckpt / "index").write_text(json.dumps(idx))
    assert "err_t.embedding/part_0_1" in tk
    with pytest.raises(CheckpointError, match="has no tensor 'err_t.embedding/part_0_1'"):
        load(ckpt)


def test_dim_mismatch_names_table_and_slot(ckpt):
    t = make_table("err_t", dim=3)
    with pytest.raises(CheckpointMismatchError, match="slot 'embedding' of table 'err_t'") as e:
        load(ckpt, hashtables={"err_t": t})
    assert "[4]" in str(e.value) and "[3]" in str(e.value)
    assert len(t) == 0


def test_dtype_mismatch_names_table_and_slot(ckpt):
    t = make_table("err_t")
    t.storage.specs.pop("step_filter")
    t.storage.slots.pop("step_filter")
    t.add_slot("step_filter", [1], torch.int32, 0)
    pre = fill(t, {"err_t": [50]})
    with pytest.raises(CheckpointMismatchError, match="slot 'step_filter' of table 'err_t'.*torch.int32"):
        load(ckpt, hashtables={"err_t": t})
    assert sorted(snapshot(t)["err_t"]) == [50] and pre


def test_dense_mismatch(ckpt):
    with pytest.raises(CheckpointMismatchError, match="'sc'"):
        load(ckpt, tensors={"sc": torch.zeros(3)})
    with pytest.raises(CheckpointMismatchError, match="'sc'"):
        load(ckpt, tensors={"sc": torch.zeros(2, dtype=torch.float64)})


def test_loader_argument_errors(ckpt):
    with pytest.raises(TypeError, match="not a dynamic table"):
        Loader(str(ckpt), hashtables={"x": 3})
    with pytest.raises(TypeError, match="not a Tensor"):
        Loader(str(ckpt), tensors={"x": 3})
    with pytest.raises(TypeError, match="filter_func must return"):
        Loader(str(ckpt), hashtables={"err_t": make_table("err_t")}, filter_func=lambda info: None).load()
    a, b = make_table("ta", children=["dup"]), make_table("tb", children=["dup"])
    with pytest.raises(ValueError, match="'dup' belongs to two tables"):
        Loader(str(ckpt), hashtables={"a": a, "b": b})


# ------------------------------------------------------------------------------ Q16
def test_shard_zero_times_out_naming_missing_shards(tmp_path):
    t0 = make_table("q16", slice=(0, 21846, 65536))
    t2 = make_table("q16", slice=(43691, 65536, 65536))
    Saver(shard_index=2, shard_num=3, path=str(tmp_path), hashtables={"q": t2}).save()
    start = time.monotonic()
    with pytest.raises(TimeoutError, match=r"shards \[1\] did not finish.*0\.3 s") as e:
        Saver(shard_index=0, shard_num=3, path=str(tmp_path), hashtables={"q": t0}, timeout=0.3).save()
    assert time.monotonic() - start < 5
    assert "ckpt-0000001-of-0000003.fragment.json" in str(e.value)
    assert "index" not in os.listdir(tmp_path)          # never a half-merged checkpoint


def test_shard_zero_waits_for_a_late_shard(tmp_path):
    import threading
    t0 = make_table("late", slice=(0, 32768, 65536))
    t1 = make_table("late", slice=(32768, 65536, 65536))
    fill(t1, {"late": [40000]})
    late = threading.Timer(0.3, lambda: Saver(shard_index=1, shard_num=2, path=str(tmp_path),
                                              hashtables={"l": t1}).save())
    late.start()
    Saver(shard_index=0, shard_num=2, path=str(tmp_path), hashtables={"l": t0}, timeout=30).save()
    late.join()
    assert CheckpointReader(str(tmp_path)).read_tensor("late@id").tolist() == [40000]


def test_timeout_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("RECIS_SAVE_TIMEOUT", "0.05")
    with pytest.raises(TimeoutError, match=r"shards \[1\]"):
        Saver(shard_index=0, shard_num=2, path=str(tmp_path)).save()
