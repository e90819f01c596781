"""The reader's short paths give exactly what the general paths give.

* :func:`column_chunk.columns_rows` (one loop over a per-chunk plan, used by the packer for
  every batch inside one stripe / row group) against ``to_nested(take_rows(...))`` for every
  column kind: dense, one-level ragged (offsets not starting at 0, as a sliced Arrow array
  gives), weighted, nested, strings; with and without an output placement.
* ``_batch_convert``'s short path for one-level unweighted ragged columns against the general
  RaggedTensor construction.
* Conversion runs in the thread iterating the reader (prefetch thread, or the caller without
  prefetch), never in the reader threads (recis_compat/io/chunk_reader.py); ``_batch_convert``
  runs before the prefetch queue, user maps after it (recis_compat/io/dataset_base.py).
"""
import threading

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from recis_compat.io import file_dataset
from recis_compat.io.batch_convert import batch_convert
from recis_compat.io.column_chunk import (DENSE, RAGGED, STRINGS, ColumnChunk, columns_rows,
                                          rows_plan, take_rows, to_nested)
from recis_compat.io.parquet_dataset import ParquetDataset
from recis_compat.ragged.tensor import RaggedTensor

from orc_test_helpers import drain


def _chunks():
    """``{name: ColumnChunk}`` of 6 rows, one of each kind."""
    rng = np.random.default_rng(3)
    lengths = np.array([2, 0, 1, 3, 0, 2])
    off = np.concatenate([[5], 5 + np.cumsum(lengths)]).astype(np.int32)  # absolute, from 5
    vals = rng.integers(0, 1 << 40, int(off[-1]) + 2)
    inner = np.array([0, 1, 3, 3, 4, 6, 7, 9], dtype=np.int64)  # 7 lists of 0..2 values
    outer = np.array([0, 1, 3, 3, 4, 6, 7], dtype=np.int64)  # 6 rows of those lists
    sbytes = np.frombuffer(b"abcdefghij", dtype=np.uint8)
    soff = np.array([0, 1, 1, 3, 6, 6, 10], dtype=np.int32)
    return {
        "dense": ColumnChunk(DENSE, rng.random((6, 2)).astype(np.float32), []),
        "ragged": ColumnChunk(RAGGED, vals, [off]),
        "ragged0": ColumnChunk(RAGGED, np.arange(6, dtype=np.float32),
                               [np.arange(7, dtype=np.int32)]),
        # large_list<>: int64 offsets beside int32 ones must keep their dtype
        "ragged64": ColumnChunk(RAGGED, vals, [off.astype(np.int64)]),
        "weighted": ColumnChunk(RAGGED, vals, [off], weight=rng.random(len(vals))),
        "nested": ColumnChunk(RAGGED, rng.integers(0, 9, 9), [outer, inner]),
        "strings": ColumnChunk(STRINGS, sbytes, [soff]),
    }


def _same(x, y):
    assert type(x) is type(y)
    if isinstance(x, list):
        assert len(x) == len(y)
        for a, b in zip(x, y):
            _same(a, b)
    elif isinstance(x, torch.Tensor):
        assert x.dtype == y.dtype and torch.equal(x, y)
    else:
        np.testing.assert_array_equal(x, y)
        assert x.dtype == y.dtype


@pytest.mark.parametrize("a,b", [(0, 6), (0, 2), (1, 4), (2, 3), (5, 6), (3, 3)])
@pytest.mark.parametrize("placed", [False, True])
def test_columns_rows_equals_general_path(a, b, placed):
    chunks = _chunks()
    calls = []

    def place(t):
        calls.append(t)
        return t.clone()

    got = columns_rows(rows_plan(chunks), a, b, place if placed else None)
    n_short = len(calls)
    assert list(got) == list(chunks)
    for name, chunk in chunks.items():
        _same(got[name], to_nested(chunk.kind, take_rows(chunk, a, b), place if placed else None))
    if placed:  # every tensor of the short paths went through the placement
        # dense, 3 ragged (2 each), weighted (3), nested (3)
        assert n_short == 1 + 2 + 2 + 2 + 3 + 3
    ragged = got["ragged"][0]
    assert ragged[1][0].item() == 0  # rebased offsets start at 0 although the chunk's start at 5


@pytest.mark.parametrize("name", ["ragged", "ragged0", "ragged64"])
def test_columns_rows_offsets_are_private_to_a_batch(name):
    """A batch's offsets are a new array even when the chunk's already start at 0, so a user
    map changing them in place cannot shift the next batch cut from the same chunk (the two
    share the boundary entry)."""
    plan = rows_plan(_chunks())
    first = columns_rows(plan, 0, 3, None)[name][0]
    expected = columns_rows(plan, 3, 6, None)[name][0]
    first[1] += 100
    second = columns_rows(plan, 3, 6, None)[name][0]
    assert torch.equal(second[1], expected[1]) and torch.equal(second[0], expected[0])


def test_columns_rows_offsets_are_private_to_a_column():
    """The short path rebases every ragged column of a batch in one array (a row each): a user
    map changing one column's offsets in place leaves the other columns of the batch alone."""
    plan = rows_plan(_chunks())
    got = columns_rows(plan, 1, 5, None)
    expected = columns_rows(plan, 1, 5, None)
    got["ragged"][0][1] += 100
    assert torch.equal(got["ragged0"][0][1], expected["ragged0"][0][1])
    assert got["ragged64"][0][1].dtype == torch.int64 and got["ragged"][0][1].dtype == torch.int32


def test_ragged_from_checked_equals_constructor():
    values, offsets = torch.arange(5), torch.tensor([0, 2, 2, 5], dtype=torch.int32)
    fast = RaggedTensor.from_checked(values, [offsets], (3, -1))
    slow = RaggedTensor(values, offsets, dense_shape=(3, -1))
    assert vars(fast) == vars(slow)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_batch_convert_short_path_equals_general(dtype):
    rows = columns_rows(rows_plan(_chunks()), 1, 5, None)
    general = {}  # the same columns with numpy offsets: the general path
    for name in ("ragged", "ragged0"):
        values, offsets = rows[name][0]
        general[name] = [[values, offsets.numpy()]]
    conv = batch_convert(["dense"], True, dtype)
    (fast,) = conv([rows])
    (slow,) = conv([general])
    for name in ("ragged", "ragged0"):
        f, s = fast[name], slow[name]
        assert isinstance(f, RaggedTensor) and f.dense_shape == s.dense_shape == (4, -1)
        assert f.values().dtype == s.values().dtype
        assert torch.equal(f.values(), s.values())
        assert [o.tolist() for o in f.offsets()] == [o.tolist() for o in s.offsets()]
        assert f.weight() is None
    assert fast["ragged0"].values().dtype == dtype  # floats cast to the dataset dtype
    assert fast["ragged"].values().dtype == torch.int64  # integers keep theirs
    assert fast["dense"].shape == (4, 2) and fast["weighted"].weight() is not None
    (sparse,) = batch_convert(["dense"], False, dtype)([rows])
    assert sparse["ragged"].is_sparse  # ragged_format=False never takes the short path


@pytest.mark.parametrize("prefetch", [0, 1])
def test_columns_converted_in_the_iterating_thread(tmp_path, monkeypatch, prefetch):
    for k in range(3):
        pq.write_table(pa.table({"x": pa.array(np.arange(50) + 100 * k),
                                 "y": pa.array(np.arange(50) * 0.5, mask=np.arange(50) % 3 == 0)}),
                       str(tmp_path / f"f{k}.parquet"), row_group_size=7)
    threads = []
    real = file_dataset.convert_record_batch

    def spy(*args, **kw):
        threads.append(threading.current_thread().name)
        return real(*args, **kw)

    monkeypatch.setattr(file_dataset, "convert_record_batch", spy)
    ds = ParquetDataset(16, read_threads_num=2, prefetch=prefetch, transform_fn=lambda b: b[0])
    ds.add_path(str(tmp_path))
    ds.varlen_feature("x")
    ds.varlen_feature("y")
    batches = drain(iter(ds))
    assert torch.cat([b["x"].values() for b in batches]).tolist() == [
        v + 100 * k for k in range(3) for v in range(50)]
    assert len(threads) == 3 * 8  # 8 row groups of <= 7 rows per file
    expected = "recis-io-prefetch" if prefetch else threading.current_thread().name
    assert set(threads) == {expected}


@pytest.mark.parametrize("prefetch", [0, 2])
def test_batch_convert_runs_before_the_prefetch_queue(tmp_path, monkeypatch, prefetch):
    """``_batch_convert`` runs in the prefetch thread (the consumer only receives finished
    batches); user maps still see converted batches, in order, in the consumer thread."""
    from recis_compat.io import dataset_base
    pq.write_table(pa.table({"x": pa.array(np.arange(30)), "label": pa.array(np.ones(30))}),
                   str(tmp_path / "a.parquet"), row_group_size=8)
    converted_in, mapped_in = [], []
    real = dataset_base.batch_convert

    def spy(*args):
        convert = real(*args)

        def wrapped(data):
            converted_in.append(threading.current_thread().name)
            return convert(data)
        return wrapped

    def user_map(batch):
        mapped_in.append(threading.current_thread().name)
        assert isinstance(batch[0]["x"], RaggedTensor) and batch[0]["label"].shape[1] == 1
        return batch

    monkeypatch.setattr(dataset_base, "batch_convert", spy)
    ds = ParquetDataset(7, read_threads_num=2, prefetch=prefetch, transform_fn=lambda b: b[0])
    ds.add_path(str(tmp_path))
    ds.varlen_feature("x")
    ds.fixedlen_feature("label", [0.0])
    ds.map(user_map)
    batches = drain(iter(ds))
    assert torch.cat([b["x"].values() for b in batches]).tolist() == list(range(30))
    me = threading.current_thread().name
    assert converted_in == ["recis-io-prefetch" if prefetch else me] * 5
    assert mapped_in == [me] * 5
