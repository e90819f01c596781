"""ParquetDataset gives the very batches OrcDataset gives on the same data written as ORC and
as Parquet: fixed and variable length columns, hashing in the reader, trans_int8, raw strings,
weighted ids, several files, 2 reader threads, worker sharding, shuffle, drop_remainder,
sparse output; Parquet row groups smaller than a batch so batches span row groups and files."""
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from recis_compat.io.orc_dataset import OrcDataset
from recis_compat.io.parquet_dataset import ParquetDataset
from recis_compat.ragged.tensor import RaggedTensor

from orc_test_helpers import drain, write_orc

FILES = 5
ROWS = [23, 17, 40, 1, 31]


def _table(k: int, rows: int) -> pa.Table:
    rng = np.random.default_rng(k)
    lens = rng.integers(0, 4, rows)
    ids = [[int(x) for x in rng.integers(0, 1 << 40, n)] for n in lens]
    words = [[f"w{int(x)}" for x in rng.integers(0, 50, n)] for n in rng.integers(0, 3, rows)]
    return pa.table({
        "rid": pa.array([[1000 * k + i] for i in range(rows)], type=pa.list_(pa.int64())),
        "label": pa.array([[float(x)] for x in rng.integers(0, 2, rows)],
                          type=pa.list_(pa.float64())),
        "dense3": pa.array([[float(i), i + 0.5, -1.0] if i % 4 else [] for i in range(rows)],
                           type=pa.list_(pa.float64())),
        "ids": pa.array(ids, type=pa.list_(pa.int64())),
        "nested": pa.array([[[i], [i, i + 1]] if i % 3 else [] for i in range(rows)],
                           type=pa.list_(pa.list_(pa.int32()))),
        "tags": pa.array(words, type=pa.list_(pa.string())),
        "tags2": pa.array(words, type=pa.list_(pa.string())),
        "raw": pa.array(words, type=pa.list_(pa.string())),
        "bytes8": pa.array(words, type=pa.list_(pa.string())),
        "kv": pa.array([[{"k": i, "v": 0.25 * i}] * (i % 3) for i in range(rows)],
                       type=pa.list_(pa.struct([("k", pa.int64()), ("v", pa.float32())]))),
    })


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """The same rows as ``orc/part-k.orc`` and ``parquet/part-k.parquet`` (row groups of 7)."""
    root = tmp_path_factory.mktemp("same-data")
    for k, rows in enumerate(ROWS):
        t = _table(k, rows)
        write_orc(root / "orc" / f"part-{k}.orc", {n: t.column(n) for n in t.column_names})
        (root / "parquet").mkdir(exist_ok=True)
        pq.write_table(t, str(root / "parquet" / f"part-{k}.parquet"), row_group_size=7)
    (root / "parquet" / "_SUCCESS").write_text("")  # Spark's marker file is not data
    return root


def _configure(ds):
    ds.fixedlen_feature("label", [0.0])
    ds.fixedlen_feature("dense3", [9.0, 8.0, 7.0])
    ds.varlen_feature("rid")
    ds.varlen_feature("ids")
    ds.varlen_feature("nested")
    ds.varlen_feature("tags", hash_type="farm", hash_bucket=1000)
    ds.varlen_feature("tags2", hash_type="murmur")
    ds.varlen_feature("raw")
    ds.varlen_feature("bytes8", trans_int8=True)
    ds.varlen_feature("kv")
    return ds


def _both(data, batch_size, **kw):
    """Every batch of an OrcDataset and of a ParquetDataset built alike over ``data``."""
    out = []
    for cls, sub in ((OrcDataset, "orc"), (ParquetDataset, "parquet")):
        ds = cls(batch_size, **kw)
        ds.add_path(str(data / sub))
        out.append(drain(iter(_configure(ds))))
    return out


def assert_same(a, b, where="batch"):
    """Structural equality of batches: tensors (dtype and values), RaggedTensors, sparse
    tensors, numpy string arrays, lists and dicts."""
    if isinstance(a, RaggedTensor):
        assert isinstance(b, RaggedTensor), where
        assert a.dense_shape == b.dense_shape, where
        assert_same(a.values(), b.values(), where + ".values")
        assert_same(a.offsets(), b.offsets(), where + ".offsets")
        assert_same(a.weight(), b.weight(), where + ".weight")
    elif isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype, (where, a.dtype, b)
        if a.is_sparse:
            a, b = a.coalesce(), b.coalesce()
            assert torch.equal(a.indices(), b.indices()), where
            assert torch.equal(a.values(), b.values()), where
            assert a.shape == b.shape, where
        else:
            assert torch.equal(a, b), where
    elif isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and a.dtype == b.dtype, where
        assert np.array_equal(a, b), where
    elif isinstance(a, dict):
        assert set(a) == set(b), where
        for k in a:
            assert_same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


@pytest.mark.parametrize("kw", [
    dict(batch_size=10, read_threads_num=1),
    dict(batch_size=10, read_threads_num=2, prefetch=2),
    dict(batch_size=64, read_threads_num=2, prefetch=0, drop_remainder=True),
    dict(batch_size=9, read_threads_num=2, shuffle=True),
    dict(batch_size=8, read_threads_num=2, ragged_format=False),
    dict(batch_size=6, read_threads_num=2, dtype=torch.float64),
], ids=["1thread", "2threads", "drop", "shuffle", "sparse", "float64"])
def test_same_batches_as_orc(data, kw):
    orc_batches, pq_batches = _both(data, **kw)
    assert orc_batches and len(orc_batches) == len(pq_batches)
    assert_same(orc_batches, pq_batches)
    rows = sum(int(b[0]["label"].shape[0]) for b in pq_batches)
    assert rows == (sum(ROWS) // 64 * 64 if kw.get("drop_remainder") else sum(ROWS))


@pytest.mark.parametrize("worker_idx", [0, 1, 2])
def test_same_batches_as_orc_per_worker(data, worker_idx):
    orc_batches, pq_batches = _both(data, batch_size=7, read_threads_num=2, worker_num=3,
                                    worker_idx=worker_idx)
    assert_same(orc_batches, pq_batches)
    got = sorted({int(v) // 1000 for b in pq_batches for v in b[0]["rid"].values()})
    assert got == [k for k in range(FILES) if k % 3 == worker_idx]


def test_transform_map_filter_as_orc(data):
    out = []
    for cls, sub in ((OrcDataset, "orc"), (ParquetDataset, "parquet")):
        ds = _configure(cls(5, transform_fn=[lambda b: b[0]]))
        ds.add_path(str(data / sub))
        ds.map(lambda b: [dict(b[0], n=torch.tensor(b[0]["label"].shape[0]))])
        ds.filter(lambda b: int(b["rid"].values()[0]) % 2 == 0)
        out.append(drain(iter(ds)))
    assert out[0] and len(out[0]) < sum(ROWS) // 5
    assert_same(out[0], out[1])


def test_recis_import_paths():
    """Unchanged RecIS-style imports reach our class (adapters/recis aliases recis_compat)."""
    from recis.io import ParquetDataset as from_package
    from recis.io.parquet_dataset import ParquetDataset as from_module
    import recis.io
    assert from_package is from_module is ParquetDataset
    assert recis.io.__all__ == ["OrcDataset", "ParquetDataset"]
    ds = from_package(8)
    assert (ds.hash_types, ds.hash_buckets, ds.hash_features) == ([], [], [])
    assert ds.get_dir_size() == []
