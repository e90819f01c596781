"""ParquetDataset bad input: every error names the file and column and what was expected."""
import datetime
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recis_compat.io.errors import DataError, ParquetDataError, ParquetReadError, ReadError
from recis_compat.io.parquet_dataset import ParquetDataset

from orc_test_helpers import drain


def _write(path, columns, **kw):
    pq.write_table(pa.table(columns), str(path), **kw)
    return str(path)


def _ds(path, varlen=(), dense=(), **kw):
    ds = ParquetDataset(2, read_threads_num=2, **kw)
    ds.add_path(str(path))
    for n in varlen:
        ds.varlen_feature(n)
    for n, d in dense:
        ds.fixedlen_feature(n, d)
    return ds


def test_missing_column(tmp_path):
    p = _write(tmp_path / "a.parquet", {"x": [1, 2]})
    with pytest.raises(ParquetDataError,
                       match=r"a\.parquet.*'nope'.*selected column not in sample.*\['x'\]"):
        drain(iter(_ds(p, varlen=["x", "nope"])))


def test_unsupported_scalar_type(tmp_path):
    p = _write(tmp_path / "a.parquet", {"t": pa.array([datetime.date(2024, 1, 1)])})
    with pytest.raises(ParquetDataError, match=r"a\.parquet.*'t'.*date32.*is not a list; "
                                               r"ParquetDataset reads scalar int/float/bool/"
                                               r"string columns"):
        drain(iter(_ds(p, varlen=["t"])))


def test_unsupported_list_element_type(tmp_path):
    p = _write(tmp_path / "a.parquet", {"t": pa.array([[datetime.date(2024, 1, 1)]])})
    with pytest.raises(ParquetDataError, match=r"a\.parquet.*'t'.*unsupported element type"):
        drain(iter(_ds(p, varlen=["t"])))


def test_scalar_fixedlen_needs_width_one(tmp_path):
    p = _write(tmp_path / "a.parquet", {"label": [1.0, 0.0]})
    with pytest.raises(ParquetDataError, match=r"a\.parquet.*'label'.*scalar column.*one value "
                                               r"per row.*default_value has 2 values"):
        drain(iter(_ds(p, dense=[("label", [0.0, 0.0])])))


def test_scalar_string_fixedlen(tmp_path):
    p = _write(tmp_path / "a.parquet", {"s": ["a", "b"]})
    with pytest.raises(ParquetDataError, match=r"a\.parquet.*'s'.*fixedlen \(dense\) column must "
                                               r"be numeric"):
        drain(iter(_ds(p, dense=[("s", [0.0])])))


def test_dense_list_width_and_null_elements(tmp_path):
    p = _write(tmp_path / "a.parquet", {"d": pa.array([[1.0, 2.0], [1.0]])})
    with pytest.raises(ParquetDataError, match=r"a\.parquet.*'d'.*dense feature dim not match.*"
                                               r"row group 0 from row 0.*expected 2"):
        drain(iter(_ds(p, dense=[("d", [0.0, 0.0])])))
    p = _write(tmp_path / "b.parquet", {"x": pa.array([[1, None]])})
    with pytest.raises(ParquetDataError, match=r"b\.parquet.*'x'.*null elements inside lists"):
        drain(iter(_ds(p, varlen=["x"])))


def test_type_differs_between_files(tmp_path):
    _write(tmp_path / "a.parquet", {"x": pa.array([[1], [2]])})
    _write(tmp_path / "b.parquet", {"x": pa.array([3, 4])})  # scalar where a.parquet has lists
    with pytest.raises(ParquetDataError, match=r"b\.parquet.*'x'.*type int64 differs from "
                                               r"list<element: int64>.*a\.parquet"):
        drain(iter(_ds(tmp_path, varlen=["x"])))


def test_not_parquet(tmp_path):
    _write(tmp_path / "a.parquet", {"x": [1, 2, 3]})
    (tmp_path / "b.parquet").write_bytes(b"this is not a parquet file" * 10)
    with pytest.raises(ParquetReadError, match=r"b\.parquet.*not Parquet, corrupt or truncated"):
        drain(iter(_ds(tmp_path, varlen=["x"])))


def test_truncated_file(tmp_path):
    p = _write(tmp_path / "a.parquet", {"x": np.arange(1000)})
    data = open(p, "rb").read()
    with open(p, "wb") as f:
        f.write(data[: len(data) // 2])
    with pytest.raises(ParquetReadError, match=r"a\.parquet"):
        drain(iter(_ds(p, varlen=["x"])))


def test_corrupt_row_group(tmp_path):
    """Footer intact, data pages garbled: the error names the file and the row group."""
    p = _write(tmp_path / "a.parquet", {"x": np.arange(4000)}, row_group_size=1000,
               compression="snappy")
    md = pq.ParquetFile(p).metadata
    start = md.row_group(2).column(0).data_page_offset
    raw = bytearray(open(p, "rb").read())
    raw[start:start + 64] = b"\xff" * 64
    open(p, "wb").write(bytes(raw))
    with pytest.raises(ParquetReadError, match=r"row group 2 of Parquet file '.*a\.parquet'"):
        drain(iter(_ds(p, varlen=["x"])))


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read any file")
def test_unreadable_file(tmp_path):
    p = _write(tmp_path / "a.parquet", {"x": [1]})
    os.chmod(p, 0)
    with pytest.raises(PermissionError, match=r"a\.parquet"):
        drain(iter(_ds(p, varlen=["x"])))


def test_missing_path_and_no_column(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"ParquetDataset\.add_path: .*nope"):
        ParquetDataset(2).add_path(str(tmp_path / "nope"))
    p = _write(tmp_path / "a.parquet", {"x": [1]})
    ds = ParquetDataset(2)
    ds.add_path(p)
    with pytest.raises(ValueError, match="ParquetDataset: no column selected"):
        next(iter(ds))


def test_constructor_checks_and_error_bases():
    with pytest.raises(AssertionError, match="ParquetDataset not support compressed data yet"):
        ParquetDataset(2, is_compressed=True)
    with pytest.raises(AssertionError, match="cpu|cuda|pin"):
        ParquetDataset(2, device="tpu")
    assert issubclass(ParquetDataError, DataError) and issubclass(ParquetReadError, ReadError)
