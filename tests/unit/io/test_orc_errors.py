"""Bad input: every error names the file and column and what was expected."""
import os

import pyarrow as pa
import pytest

from recis_compat.io.errors import OrcDataError, OrcReadError
from recis_compat.io.orc_dataset import OrcDataset

from orc_test_helpers import drain, write_ids, write_orc


def _ds(path, varlen=(), dense=()):
    ds = OrcDataset(2, read_threads_num=2)
    ds.add_path(str(path))
    for n in varlen:
        ds.varlen_feature(n)
    for n, d in dense:
        ds.fixedlen_feature(n, d)
    return ds


def test_missing_column(tmp_path):
    p = write_ids(tmp_path / "a.orc", 0, 3)
    with pytest.raises(OrcDataError, match=r"a\.orc.*'nope'.*selected column not in sample"):
        drain(iter(_ds(p, varlen=["rid", "nope"])))


def test_non_list_column(tmp_path):
    p = write_orc(tmp_path / "a.orc", {"x": pa.array([1, 2, 3])})
    with pytest.raises(OrcDataError, match=r"a\.orc.*'x'.*int64 is not a list"):
        drain(iter(_ds(p, varlen=["x"])))


def test_null_elements_inside_lists(tmp_path):
    p = write_orc(tmp_path / "a.orc", {"x": pa.array([[1, None], [2]], type=pa.list_(pa.int64()))})
    with pytest.raises(OrcDataError, match=r"a\.orc.*'x'.*null elements inside lists"):
        drain(iter(_ds(p, varlen=["x"])))
    p = write_orc(tmp_path / "b.orc", {"x": pa.array([["a", None]], type=pa.list_(pa.string()))})
    with pytest.raises(OrcDataError, match=r"b\.orc.*'x'.*null elements"):
        drain(iter(_ds(p, varlen=["x"])))


def test_null_rows_are_empty_lists(tmp_path):
    p = write_orc(tmp_path / "a.orc", {"x": pa.array([[1], None, [2, 3]],
                                                     type=pa.list_(pa.int64()))})
    ds = _ds(p, varlen=["x"])
    ds._batch_size = 3
    rt = drain(iter(ds))[0][0]["x"]
    assert rt.offsets()[0].tolist() == [0, 1, 1, 3] and rt.values().tolist() == [1, 2, 3]


def test_dense_width_mismatch(tmp_path):
    p = write_orc(tmp_path / "a.orc", {"d": pa.array([[1.0, 2.0], [1.0]],
                                                     type=pa.list_(pa.float64()))})
    with pytest.raises(OrcDataError,
                       match=r"a\.orc.*'d'.*dense feature dim not match.*row 1.*1 values.*"
                             r"expected 2"):
        drain(iter(_ds(p, dense=[("d", [0.0, 0.0])])))


def test_dense_column_must_be_numeric_list(tmp_path):
    p = write_orc(tmp_path / "a.orc", {"d": pa.array([["a"]], type=pa.list_(pa.string()))})
    with pytest.raises(OrcDataError, match=r"a\.orc.*'d'.*list<numeric>"):
        drain(iter(_ds(p, dense=[("d", [0.0])])))


def test_scalar_default_is_rejected():
    with pytest.raises(TypeError, match="list of numbers"):
        OrcDataset(2).fixedlen_feature("label", 0.0)


def test_corrupt_file(tmp_path):
    write_ids(tmp_path / "a.orc", 0, 3)
    (tmp_path / "b.orc").write_bytes(b"this is not an orc file at all" * 10)
    ds = _ds(tmp_path, varlen=["rid"])
    it = iter(ds)
    with pytest.raises(OrcReadError, match=r"b\.orc.*corrupt or truncated"):
        drain(it)


def test_truncated_file(tmp_path):
    p = write_ids(tmp_path / "a.orc", 0, 50)
    data = open(p, "rb").read()
    with open(p, "wb") as f:
        f.write(data[: len(data) // 2])
    with pytest.raises(OrcReadError, match=r"a\.orc"):
        drain(iter(_ds(p, varlen=["rid"])))


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read any file")
def test_unreadable_file(tmp_path):
    p = write_ids(tmp_path / "a.orc", 0, 3)
    os.chmod(p, 0)
    with pytest.raises(PermissionError, match=r"a\.orc"):
        drain(iter(_ds(p, varlen=["rid"])))


def test_unsupported_element_type(tmp_path):
    p = write_orc(tmp_path / "a.orc", {"t": pa.array([[pa.scalar(1, pa.date32()).as_py()]],
                                                     type=pa.list_(pa.date32()))})
    with pytest.raises(OrcDataError, match=r"a\.orc.*'t'.*unsupported element type"):
        drain(iter(_ds(p, varlen=["t"])))


def test_struct_needs_k_and_v(tmp_path):
    typ = pa.list_(pa.struct([("a", pa.int64())]))
    p = write_orc(tmp_path / "a.orc", {"s": pa.array([[{"a": 1}]], type=typ)})
    with pytest.raises(OrcDataError, match=r"a\.orc.*'s'.*'k'.*'v'"):
        drain(iter(_ds(p, varlen=["s"])))


def test_no_column_selected(tmp_path):
    p = write_ids(tmp_path / "a.orc", 0, 3)
    ds = OrcDataset(2)
    ds.add_path(p)
    with pytest.raises(ValueError, match="no column selected"):
        next(iter(ds))
