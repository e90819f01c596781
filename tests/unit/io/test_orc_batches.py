"""OrcDataset batch structure, packing, dtypes, pipeline order and constructor checks."""
import pyarrow as pa
import pytest
import torch

from recis_compat.io.orc_dataset import OrcDataset
from recis_compat.ragged.tensor import RaggedTensor

from orc_test_helpers import drain, rids, write_ids, write_orc


def test_packing_spans_files_and_keeps_order(tmp_path, id_dataset):
    for k in range(3):
        write_ids(tmp_path / f"part-{k}.orc", 100 * k, 5)
    batches = drain(iter(id_dataset([tmp_path], batch_size=4, read_threads_num=2)))
    assert [len(b[0]["rid"].offsets()[0]) - 1 for b in batches] == [4, 4, 4, 3]
    assert rids(batches) == [0, 1, 2, 3, 4, 100, 101, 102, 103, 104, 200, 201, 202, 203, 204]


def test_drop_remainder(tmp_path, id_dataset):
    write_ids(tmp_path / "a.orc", 0, 10)
    batches = drain(iter(id_dataset([tmp_path], batch_size=4, drop_remainder=True)))
    assert rids(batches) == list(range(8))


def test_end_marker_forever_and_list_of_one_dict(tmp_path, id_dataset):
    write_ids(tmp_path / "a.orc", 0, 3)
    it = iter(id_dataset([tmp_path], batch_size=8))
    is_end, batch = next(it)
    assert is_end is False and isinstance(batch, list) and len(batch) == 1
    assert set(batch[0]) == {"rid"}
    for _ in range(5):
        assert next(it) == (True, None)


def test_ragged_values_offsets_dtypes(tmp_path):
    write_orc(tmp_path / "a.orc", {
        "ids": pa.array([[1, 2], [], [3]], type=pa.list_(pa.int64())),
        "small": pa.array([[1], [2, 3], []], type=pa.list_(pa.int32())),
        "f": pa.array([[0.5], [1.5, 2.5], []], type=pa.list_(pa.float64())),
        "big": pa.array([[7], [8], [9, 10]], type=pa.large_list(pa.int64())),
    })
    ds = OrcDataset(3, dtype=torch.float64)
    ds.add_path(str(tmp_path))
    for n in ("ids", "small", "f", "big"):
        ds.varlen_feature(n)
    (batch,) = drain(iter(ds))
    g = batch[0]
    assert isinstance(g["ids"], RaggedTensor)
    assert g["ids"].values().tolist() == [1, 2, 3] and g["ids"].values().dtype == torch.int64
    assert g["ids"].offsets()[0].tolist() == [0, 2, 2, 3]
    assert g["ids"].offsets()[0].dtype == torch.int32
    assert g["ids"]._dense_shape == (3, -1)
    assert g["small"].values().dtype == torch.int32
    assert g["f"].values().dtype == torch.float64 and g["f"].values().tolist() == [0.5, 1.5, 2.5]
    # ORC stores large_list as list, so the reader sees list<> (int32 offsets) here
    assert g["big"].offsets()[0].dtype in (torch.int32, torch.int64)


def test_large_list_offsets_int64(tmp_path):
    """large_list<> columns get int64 offsets (checked on the converter directly, since ORC
    files always come back as list<>)."""
    from recis_compat.io.column_convert import convert_record_batch
    from recis_compat.io.dataset_config import ColumnSpec
    rb = pa.record_batch({"x": pa.array([[1, 2], [3]], type=pa.large_list(pa.int64()))})
    chunk = convert_record_batch(rb, [ColumnSpec("x")], "mem", "stripe 0", "float32")["x"]
    assert chunk.offsets[0].dtype.name == "int64" and chunk.offsets[0].tolist() == [0, 2, 3]


def test_float_cast_to_dtype_and_nested_lists(tmp_path):
    write_orc(tmp_path / "a.orc", {
        "nest": pa.array([[[1, 2], [3]], [], [[4]]], type=pa.list_(pa.list_(pa.int64()))),
        "f": pa.array([[1.0], [2.0], [3.0]], type=pa.list_(pa.float64())),
    })
    ds = OrcDataset(3)
    ds.add_path(str(tmp_path))
    ds.varlen_feature("nest")
    ds.varlen_feature("f")
    (batch,) = drain(iter(ds))
    nest = batch[0]["nest"]
    assert nest.values().tolist() == [1, 2, 3, 4]
    assert [o.tolist() for o in nest.offsets()] == [[0, 2, 2, 3], [0, 2, 3, 4]]
    assert nest._dense_shape == (3, -1, -1)
    assert batch[0]["f"].values().dtype == torch.float32


def test_nested_lists_across_batches(tmp_path):
    write_orc(tmp_path / "a.orc", {
        "nest": pa.array([[[1, 2], [3]], [], [[4]], [[5], [6, 7]]],
                         type=pa.list_(pa.list_(pa.int64())))})
    write_orc(tmp_path / "b.orc", {
        "nest": pa.array([[[8]], [[9, 10]]], type=pa.list_(pa.list_(pa.int64())))})
    ds = OrcDataset(3)
    ds.add_path(str(tmp_path))
    ds.varlen_feature("nest")
    b1, b2 = drain(iter(ds))
    assert [o.tolist() for o in b1[0]["nest"].offsets()] == [[0, 2, 2, 3], [0, 2, 3, 4]]
    assert b2[0]["nest"].values().tolist() == [5, 6, 7, 8, 9, 10]
    assert [o.tolist() for o in b2[0]["nest"].offsets()] == [[0, 2, 3, 4], [0, 1, 3, 4, 6]]


def test_struct_weights_and_sparse_format(tmp_path):
    kv = pa.list_(pa.struct([("k", pa.int64()), ("v", pa.float64())]))
    write_orc(tmp_path / "a.orc", {
        "kv": pa.array([[{"k": 5, "v": 0.5}, {"k": 6, "v": 2.0}], [], [{"k": 7, "v": 3.0}]],
                       type=kv)})
    ds = OrcDataset(3)
    ds.add_path(str(tmp_path))
    ds.varlen_feature("kv")
    (batch,) = drain(iter(ds))
    rt = batch[0]["kv"]
    assert rt.values().tolist() == [5, 6, 7]
    assert rt.weight().tolist() == [0.5, 2.0, 3.0] and rt.weight().dtype == torch.float32
    assert rt.offsets()[0].tolist() == [0, 2, 2, 3]

    sp = OrcDataset(3, ragged_format=False)
    sp.add_path(str(tmp_path))
    sp.varlen_feature("kv")
    (batch,) = drain(iter(sp))
    ids, w = batch[0]["kv"], batch[0]["kv_weight"]
    assert ids.is_sparse and w.is_sparse
    assert ids.to_dense().tolist() == [[5, 6], [0, 0], [7, 0]]
    # Q22 fixed: the weight tensor carries the weights, not the ids
    assert w.to_dense().tolist() == [[0.5, 2.0], [0.0, 0.0], [3.0, 0.0]]


def test_dense_defaults_and_types(tmp_path):
    write_orc(tmp_path / "a.orc", {
        "label": pa.array([[1.0], [], [0.0]], type=pa.list_(pa.float64())),
        "vec": pa.array([[1, 2, 3], [4, 5, 6], []], type=pa.list_(pa.int64())),
    })
    ds = OrcDataset(3)
    ds.add_path(str(tmp_path))
    ds.fixedlen_feature("label", [0.5])
    ds.fixedlen_feature("vec", [-1, -2, -3])
    ds.fixedlen_feature("label", [9.0])  # second call keeps the first default
    (batch,) = drain(iter(ds))
    label, vec = batch[0]["label"], batch[0]["vec"]
    assert label.shape == (3, 1) and label.dtype == torch.float32
    assert label.tolist() == [[1.0], [0.5], [0.0]]
    assert vec.dtype == torch.int64 and vec.tolist() == [[1, 2, 3], [4, 5, 6], [-1, -2, -3]]
    assert ds._dense_default_value == [[0.5], [-1, -2, -3]]


def test_repeated_varlen_call_is_ignored(tmp_path):
    ds = OrcDataset(2)
    ds.varlen_feature("s", hash_type="farm", hash_bucket=10)
    ds.varlen_feature("s", hash_type="murmur", hash_bucket=99)
    ds.varlen_feature("t", trans_int8=True)
    assert ds._select_column == ["s", "t"]
    assert (ds.hash_features, ds.hash_types, ds.hash_buckets) == (["s", "t"], ["farm", "no_hash"],
                                                                   [10, 0])
    with pytest.raises(AssertionError, match="hash_type must be farm / murmur"):
        ds.varlen_feature("u", hash_type="xx")


def test_pipeline_order_map_transform_filter(tmp_path, id_dataset):
    write_ids(tmp_path / "a.orc", 0, 8)
    calls = []

    def m1(b):
        calls.append("map1")
        assert isinstance(b, list) and isinstance(b[0]["rid"], RaggedTensor)
        return b

    def m2(b):
        calls.append("map2")
        return b

    def t1(b):
        calls.append("t1")
        return b[0]

    def t2(b):
        calls.append("t2")
        b["first"] = int(b["rid"].values()[0])
        return b

    ds = id_dataset([tmp_path], batch_size=2, transform_fn=[t1, t2])
    ds.map(m1)
    ds.map(m2)
    ds.filter(lambda b: b["first"] % 4 == 0)  # keeps batches starting at 0 and 4
    batches = drain(iter(ds))
    assert [b["first"] for b in batches] == [0, 4]
    assert calls[:4] == ["map1", "map2", "t1", "t2"] and len(calls) == 16


def test_single_transform_callable(tmp_path, id_dataset):
    write_ids(tmp_path / "a.orc", 0, 2)
    batches = drain(iter(id_dataset([tmp_path], transform_fn=lambda b: b[0])))
    assert isinstance(batches[0], dict) and batches[0]["rid"].values().tolist() == [0, 1]


def test_constructor_checks(monkeypatch):
    with pytest.raises(AssertionError, match="OrcDataset not support compressed data yet."):
        OrcDataset(2, is_compressed=True)
    with pytest.raises(AssertionError, match="cpu\\|cuda\\|pin"):
        OrcDataset(2, device="gpu")
    ds = OrcDataset(2, worker_slice_batch_num=7, pack_threads_num=3, device="pin")
    assert ds._worker_slice_batch_num == 7 and ds._pack_threads_num == 3
    if not torch.cuda.is_available():
        monkeypatch.delenv("RECIS_COMPAT_DEVICE", raising=False)
        with pytest.raises(RuntimeError, match="RECIS_COMPAT_DEVICE"):
            OrcDataset(2, device="cuda")


def test_pin_and_cuda_fallback_give_cpu_batches(tmp_path, id_dataset, monkeypatch):
    write_ids(tmp_path / "a.orc", 0, 3)
    batch = drain(iter(id_dataset([tmp_path], device="pin")))[0]
    assert batch[0]["rid"].values().tolist() == [0, 1, 2]
    if not torch.cuda.is_available():
        monkeypatch.setenv("RECIS_COMPAT_DEVICE", "cpu")
        with pytest.warns(RuntimeWarning):
            ds = id_dataset([tmp_path], device="cuda")
        assert drain(iter(ds))[0][0]["rid"].values().device.type == "cpu"


def test_attributes(tmp_path, id_dataset):
    write_ids(tmp_path / "a.orc", 0, 1)
    ds = id_dataset([tmp_path], worker_num=3, worker_idx=1)
    assert ds._worker_num == 3 and ds._paths == [str(tmp_path)]
    assert ds._select_column == ["rid"] and ds._dense_column == []
    assert ds.get_dir_size() == [0]


def test_recis_import_path(tmp_path):
    from recis.io import OrcDataset as Aliased
    from recis.io.orc_dataset import OrcDataset as Deep
    assert Aliased is OrcDataset and Deep is OrcDataset
    write_ids(tmp_path / "a.orc", 0, 3)
    ds = Deep(2, transform_fn=[lambda x: x[0]])
    ds.add_path(str(tmp_path))
    ds.varlen_feature("rid")
    assert [b["rid"].values().tolist() for b in drain(iter(ds))] == [[0, 1], [2]]
