"""No silent wrong data (issue 13 items 2 and 7): column types must agree across the files of a
dataset, unlistable directories are errors, int32 offsets never wrap, and a double that
overflows the dataset's float dtype is an error. Every error names the column and file(s)."""
import logging
import os

import numpy as np
import pyarrow as pa
import pytest
import torch

from orc_test_helpers import drain, write_orc
from recis_compat.io import column_chunk
from recis_compat.io.errors import OrcDataError
from recis_compat.io.orc_dataset import OrcDataset


def _ds(paths, batch_size=4, varlen=("c1",), dense=(), **kw):
    ds = OrcDataset(batch_size, read_threads_num=2, **kw)
    ds.add_paths([str(p) for p in paths])
    for n in varlen:
        ds.varlen_feature(n)
    for n, d in dense:
        ds.fixedlen_feature(n, d)
    return ds


def _col(values, elem):
    return {"c1": pa.array(values, type=pa.list_(elem))}


# ------------------------------------------------------------------ schema across files
@pytest.mark.parametrize("first,second", [
    (_col([[1, 2], [3]], pa.int64()), _col([["a"], ["bc", "d"]], pa.string())),
    (_col([["a"], ["bc", "d"]], pa.string()), _col([[1, 2], [3]], pa.int64())),
    (_col([[1, 2], [3]], pa.int64()), _col([[1.5], [2.5]], pa.float64())),
    (_col([[1, 2], [3]], pa.int64()), _col([[True], [False]], pa.bool_())),
    (_col([[1, 2], [3]], pa.int64()), {"c1": pa.array([[[1]], [[2]]], type=pa.list_(pa.list_(pa.int64())))}),
])
def test_column_type_differing_between_files_is_an_error(tmp_path, first, second):
    a = write_orc(tmp_path / "d" / "a.orc", first)
    b = write_orc(tmp_path / "d" / "b.orc", second)
    with pytest.raises(OrcDataError) as ei:
        drain(iter(_ds([tmp_path / "d"])))
    msg = str(ei.value)
    assert "'c1'" in msg and repr(a) in msg and repr(b) in msg and "same type" in msg
    assert "integer width" in msg  # says which differences are widened instead


def test_other_rank_file_is_checked_against_the_datasets_first_file(tmp_path):
    """Worker 1 of 2 reads only b.orc, yet b.orc is compared with a.orc (read by worker 0)."""
    a = write_orc(tmp_path / "d" / "a.orc", _col([[1], [2]], pa.int64()))
    b = write_orc(tmp_path / "d" / "b.orc", _col([["x"], ["y"]], pa.string()))
    with pytest.raises(OrcDataError, match=rf"{b}.*'c1'.*differs.*{a}"):
        drain(iter(_ds([tmp_path / "d"], worker_idx=1, worker_num=2)))


def test_hashed_string_vs_binary_is_accepted(tmp_path):
    write_orc(tmp_path / "d" / "a.orc", _col([["a"], ["b"]], pa.string()))
    write_orc(tmp_path / "d" / "b.orc", {"c1": pa.array([[b"a"], [b"b"]], type=pa.list_(pa.binary()))})
    ds = OrcDataset(4, read_threads_num=2)
    ds.add_path(str(tmp_path / "d"))
    ds.varlen_feature("c1", hash_type="farm")
    (batch,) = drain(iter(ds))
    rt = batch[0]["c1"]
    v = rt.values().tolist()
    assert v[:2] == v[2:] and rt.offsets()[0].tolist() == [0, 1, 2, 3, 4]


def test_int32_and_int64_elements_widen_with_a_warning(tmp_path, caplog):
    a = write_orc(tmp_path / "d" / "a.orc", _col([[1], [2, 3]], pa.int32()))
    b = write_orc(tmp_path / "d" / "b.orc", _col([[4], [5]], pa.int64()))
    with caplog.at_level(logging.WARNING, logger="recis_compat.io.orc_reader"):
        (batch,) = drain(iter(_ds([tmp_path / "d"])))
    rt = batch[0]["c1"]
    assert rt.values().dtype == torch.int64 and rt.values().tolist() == [1, 2, 3, 4, 5]
    assert rt.offsets()[0].tolist() == [0, 1, 3, 4, 5]
    assert "'c1'" in caplog.text and b in caplog.text and a in caplog.text and "widened" in caplog.text


def test_dense_int_vs_double_is_an_error(tmp_path):
    write_orc(tmp_path / "d" / "a.orc", {"d": pa.array([[1], [2]], type=pa.list_(pa.int64()))})
    write_orc(tmp_path / "d" / "b.orc", {"d": pa.array([[1.5], [2.5]], type=pa.list_(pa.float64()))})
    with pytest.raises(OrcDataError, match=r"b\.orc.*'d'.*double.*differs.*int64.*a\.orc"):
        drain(iter(_ds([tmp_path / "d"], varlen=(), dense=[("d", [0.0])])))


# ------------------------------------------------------------------ unlistable directories
def _deny(monkeypatch, denied):
    real = os.scandir

    def scandir(path="."):
        if os.path.abspath(os.fspath(path)) == os.path.abspath(str(denied)):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real(path)
    monkeypatch.setattr(os, "scandir", scandir)


@pytest.mark.parametrize("which", ["sub", "root"])
def test_unlistable_directory_is_an_error_naming_it(tmp_path, monkeypatch, which):
    write_orc(tmp_path / "d" / "a.orc", _col([[1]], pa.int64()))
    write_orc(tmp_path / "d" / "sub" / "b.orc", _col([[2]], pa.int64()))
    denied = tmp_path / "d" / "sub" if which == "sub" else tmp_path / "d"
    ds = _ds([tmp_path / "d"])
    _deny(monkeypatch, denied)
    with pytest.raises(PermissionError, match=rf"cannot list directory '{denied}'"):
        iter(ds)


# ------------------------------------------------------------------ int32 offsets
def test_batch_past_int32_offsets_is_refused_naming_the_column(tmp_path, monkeypatch):
    # two files -> the batch is glued from two pieces; 7 values in all, limit lowered to 6
    write_orc(tmp_path / "d" / "a.orc", _col([[1, 2, 3], [4]], pa.int64()))
    write_orc(tmp_path / "d" / "b.orc", _col([[5, 6], [7]], pa.int64()))
    monkeypatch.setattr(column_chunk, "INT32_OFFSETS_LIMIT", 6)
    with pytest.raises(OrcDataError, match=r"column 'c1': one batch holds 7 values, more than its int32 "
                                           r"offsets can index \(6\).*large_list"):
        drain(iter(_ds([tmp_path / "d"])))
    monkeypatch.setattr(column_chunk, "INT32_OFFSETS_LIMIT", 7)
    (batch,) = drain(iter(_ds([tmp_path / "d"])))
    assert batch[0]["c1"].offsets()[0].tolist() == [0, 3, 4, 6, 7]


def test_int64_offsets_are_not_limited():
    """int64 offsets (``large_list<>`` data) are never refused: only int32 levels can wrap."""
    big = np.array([0, 2**31], dtype=np.int64)
    piece = (np.zeros(1, np.int64), [big], None)
    _, offs, _ = column_chunk.concat_pieces("ragged", [piece, piece], "ids")
    assert offs[0].dtype == np.int64 and offs[0].tolist() == [0, 2**31, 2**32]


def test_concat_pieces_offsets_do_not_wrap_at_the_real_limit():
    """The real int32 limit, without allocating 2^31 values: offsets pieces whose last entries
    sum past 2^31 - 1 (values arrays are tiny; only offsets are checked)."""
    big = np.array([0, 2**30], dtype=np.int32)
    piece = (np.zeros(1, np.int64), [big], None)
    with pytest.raises(OrcDataError, match=r"column 'ids': one batch holds 2147483648 values"):
        column_chunk.concat_pieces("ragged", [piece, piece], "ids")
    _, offs, _ = column_chunk.concat_pieces("ragged", [piece, (np.zeros(1, np.int64), [np.array([0, 2**30 - 1], np.int32)], None)], "ids")
    assert offs[0].dtype == np.int32 and offs[0].tolist() == [0, 2**30, 2**31 - 1]


# ------------------------------------------------------------------ float overflow
def test_double_overflowing_float32_is_an_error_naming_file_and_column(tmp_path):
    p = write_orc(tmp_path / "a.orc", {"c1": pa.array([[1.0], [1e300, 2.0]], type=pa.list_(pa.float64()))})
    with pytest.raises(OrcDataError, match=rf"{p}.*'c1'.*1e\+300.*overflows the dataset dtype float32"):
        drain(iter(_ds([p])))


def test_overflow_checks_dense_and_weights_but_keeps_inf_and_nan(tmp_path):
    p = write_orc(tmp_path / "a.orc", {"d": pa.array([[1e39]], type=pa.list_(pa.float64()))})
    with pytest.raises(OrcDataError, match=r"'d'.*overflows"):
        drain(iter(_ds([p], varlen=(), dense=[("d", [0.0])])))
    kv = pa.struct([("k", pa.int64()), ("v", pa.float64())])
    p = write_orc(tmp_path / "w.orc", {"w": pa.array([[{"k": 1, "v": -1e40}]], type=pa.list_(kv))})
    with pytest.raises(OrcDataError, match=r"'w'.*-1e\+40.*overflows"):
        drain(iter(_ds([p], varlen=("w",))))
    p = write_orc(tmp_path / "ok.orc", {"c1": pa.array([[float("inf"), float("nan"), 3e38]],
                                                        type=pa.list_(pa.float64()))})
    (batch,) = drain(iter(_ds([p])))
    v = batch[0]["c1"].values()
    assert torch.isinf(v[0]) and torch.isnan(v[1]) and v.dtype == torch.float32
    (batch,) = drain(iter(_ds([tmp_path / "a.orc"], varlen=(), dense=[("d", [0.0])], dtype=torch.float64)))
    assert batch[0]["d"].tolist() == [[1e39]]
