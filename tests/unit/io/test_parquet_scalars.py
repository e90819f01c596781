"""Scalar Parquet columns (Criteo's natural layout) as one-element features, and row-group
streaming."""
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from recis_compat.io import parquet_reader
from recis_compat.io.parquet_dataset import ParquetDataset
from recis_compat.ragged.tensor import RaggedTensor

from orc_test_helpers import drain


def _dataset(path, batch_size=4, **kw):
    ds = ParquetDataset(batch_size, transform_fn=lambda b: b[0], **kw)
    ds.add_path(str(path))
    return ds


def test_scalar_columns_one_element_features(tmp_path):
    pq.write_table(pa.table({
        "label": pa.array([1.0, 0.0, None, 1.0], type=pa.float64()),
        "i1": pa.array([3, None, 5, 6], type=pa.int32()),
        "c1": pa.array([10, 11, None, 13], type=pa.int64()),
        "f": pa.array([0.5, None, 1.5, 2.5], type=pa.float32()),
        "flag": pa.array([True, False, None, True]),
        "s": pa.array(["a", None, "ccc", ""]),
        "d": pa.array([0.25, 1e-3, None, -2.0], type=pa.float64()),
    }), str(tmp_path / "a.parquet"))
    ds = _dataset(tmp_path)
    ds.fixedlen_feature("label", [-1.0])
    ds.fixedlen_feature("i1", [7])
    ds.varlen_feature("c1")
    ds.varlen_feature("f")
    ds.varlen_feature("flag")
    ds.varlen_feature("s")
    ds.varlen_feature("d")
    (b,) = drain(iter(ds))
    assert b["d"].values().dtype == torch.float32  # doubles cast to the dataset dtype
    assert b["d"].values().tolist() == pytest.approx([0.25, 1e-3, -2.0])
    assert b["label"].dtype == torch.float32 and b["label"].shape == (4, 1)
    assert b["label"].flatten().tolist() == [1.0, 0.0, -1.0, 1.0]  # null -> default
    assert b["i1"].dtype == torch.int32 and b["i1"].flatten().tolist() == [3, 7, 5, 6]
    c1 = b["c1"]
    assert isinstance(c1, RaggedTensor) and c1.dense_shape == (4, -1)
    assert c1.values().tolist() == [10, 11, 13] and c1.values().dtype == torch.int64
    assert c1.offsets()[0].tolist() == [0, 1, 2, 2, 3]  # null -> empty row
    assert b["f"].values().tolist() == [0.5, 1.5, 2.5] and b["f"].values().dtype == torch.float32
    assert b["f"].offsets()[0].tolist() == [0, 1, 1, 2, 3]
    assert b["flag"].values().tolist() == [True, False, True]
    strings, row_splits = b["s"]  # raw strings: column_io nested list, as for list<string>
    assert strings.tolist() == [b"a", b"ccc", b""] and row_splits.tolist() == [0, 1, 1, 2, 3]


def _list_of_one(arr: pa.Array) -> pa.Array:
    return pa.array([[v] if v is not None else [] for v in arr.to_pylist()],
                    type=pa.list_(arr.type))


@pytest.mark.parametrize("hash_kw", [dict(hash_type="farm"), dict(hash_type="murmur",
                                                                   hash_bucket=97),
                                     dict(trans_int8=True)])
def test_scalar_equals_list_of_one(tmp_path, hash_kw):
    """A scalar column reads exactly as the same values stored as one-element lists (nulls as
    empty lists), hashing included; dictionary-encoded strings too."""
    words = pa.array(["x", "yy", None, "zzz", "x", "é"] * 5)
    (tmp_path / "scalar").mkdir()
    (tmp_path / "lists").mkdir()
    pq.write_table(pa.table({"s": words, "d": words.dictionary_encode()}),
                   str(tmp_path / "scalar" / "a.parquet"), row_group_size=4)
    pq.write_table(pa.table({"s": _list_of_one(words), "d": _list_of_one(words)}),
                   str(tmp_path / "lists" / "a.parquet"), row_group_size=4)
    got = {}
    for sub in ("scalar", "lists"):
        ds = _dataset(tmp_path / sub, batch_size=7, read_threads_num=2)
        ds.varlen_feature("s", **hash_kw)
        ds.varlen_feature("d", **hash_kw)
        got[sub] = drain(iter(ds))
    assert len(got["scalar"]) == 5
    for a, b in zip(got["scalar"], got["lists"]):
        for name in ("s", "d"):
            assert a[name].values().dtype == b[name].values().dtype
            assert torch.equal(a[name].values(), b[name].values())
            for x, y in zip(a[name].offsets(), b[name].offsets()):
                assert torch.equal(x.long(), y.long())
        assert torch.equal(a["s"].values(), a["d"].values())


def test_criteo_layout_label_dense_sparse(tmp_path):
    """label + 13 dense floats + 26 categorical ids, all scalar, nulls for missing values."""
    rng = np.random.default_rng(0)
    n = 50
    cols = {"label": pa.array(rng.integers(0, 2, n).astype(np.int32))}
    for j in range(1, 14):
        v = rng.random(n)
        cols[f"I{j}"] = pa.array(v, mask=rng.random(n) < 0.2)
    for j in range(1, 27):
        cols[f"C{j}"] = pa.array(rng.integers(0, 1 << 40, n), mask=rng.random(n) < 0.2)
    table = pa.table(cols)
    pq.write_table(table, str(tmp_path / "day_0.parquet"), row_group_size=16)
    ds = _dataset(tmp_path, batch_size=32, read_threads_num=2)
    ds.fixedlen_feature("label", [0])
    for j in range(1, 14):
        ds.fixedlen_feature(f"I{j}", [0.0])
    for j in range(1, 27):
        ds.varlen_feature(f"C{j}")
    batches = drain(iter(ds))
    assert [b["label"].shape for b in batches] == [(32, 1), (18, 1)]
    i3 = torch.cat([b["I3"] for b in batches]).flatten()
    expect = np.nan_to_num(table.column("I3").to_numpy(zero_copy_only=False), nan=0.0)
    assert np.allclose(i3.numpy(), expect.astype(np.float32))
    c7 = torch.cat([b["C7"].values() for b in batches])
    assert c7.tolist() == [v for v in table.column("C7").to_pylist() if v is not None]


def test_reads_stream_row_groups(tmp_path, monkeypatch):
    """Files are read one row group at a time, at most ``read_threads_num + 1`` ahead of the
    consumer; the whole file is never read at once."""
    pq.write_table(pa.table({"x": pa.array(np.arange(400, dtype=np.int64))}),
                   str(tmp_path / "a.parquet"), row_group_size=10)
    reads = []
    real = parquet_reader.ParquetFormat.read_unit

    def spy(self, handle, path, unit, columns):
        reads.append(unit)
        return real(self, handle, path, unit, columns)

    monkeypatch.setattr(parquet_reader.ParquetFormat, "read_unit", spy)
    monkeypatch.setattr(pq.ParquetFile, "read", lambda *a, **k: pytest.fail("whole-file read"))
    monkeypatch.setattr(pq, "read_table", lambda *a, **k: pytest.fail("whole-file read"))
    ds = _dataset(tmp_path, batch_size=10, read_threads_num=2, prefetch=0)
    ds.varlen_feature("x")
    it = iter(ds)
    is_end, b = next(it)
    assert not is_end and b["x"].values().tolist() == list(range(10))
    assert 1 <= len(reads) <= 3  # threads + 1 row groups in flight
    rest = drain(it)
    assert sorted(reads) == list(range(40)) and len(rest) == 39


def test_scalar_bool_dense_and_sliced_nulls(tmp_path):
    """bool fixedlen (null -> default), and nullable scalars in row groups cut mid-batch."""
    flags = [True, None, False, True, None, True, False]
    pq.write_table(pa.table({"b": pa.array(flags), "v": pa.array([1, None, 3, None, 5, 6, None])}),
                   str(tmp_path / "a.parquet"), row_group_size=3)
    ds = _dataset(tmp_path, batch_size=2)
    ds.fixedlen_feature("b", [1])
    ds.varlen_feature("v")
    batches = drain(iter(ds))
    got = torch.cat([b["b"] for b in batches]).flatten().tolist()
    assert got == [True, True, False, True, True, True, False]
    assert torch.cat([b["v"].values() for b in batches]).tolist() == [1, 3, 5, 6]
    assert [b["v"].offsets()[0].tolist() for b in batches] == [[0, 1, 1], [0, 1, 1], [0, 1, 2],
                                                               [0, 0]]


def test_scalar_double_overflowing_float32_is_named(tmp_path):
    pq.write_table(pa.table({"big": pa.array([1.0, 1e300, None])}), str(tmp_path / "a.parquet"))
    for how in ("fixedlen", "varlen"):
        ds = _dataset(tmp_path)
        if how == "fixedlen":
            ds.fixedlen_feature("big", [0.0])
        else:
            ds.varlen_feature("big")
        with pytest.raises(ValueError, match=r"a\.parquet.*'big'.*1e\+300.*overflows the dataset "
                                             r"dtype float32"):
            drain(iter(ds))
