"""ParquetDataset IO state: exact resume mid-epoch (inside a row group, prefetch on, 2 reader
threads, worker sharding), and the checks on a state that does not fit."""
import json
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recis_compat.io.orc_dataset import OrcDataset
from recis_compat.io.parquet_dataset import ParquetDataset

from orc_test_helpers import drain, write_ids

ROWS = [13, 7, 20, 1, 9]
ALL = [1000 * k + i for k, n in enumerate(ROWS) for i in range(n)]


@pytest.fixture
def files(tmp_path):
    for k, n in enumerate(ROWS):
        rng = np.random.default_rng(k)
        pq.write_table(pa.table({"rid": pa.array(np.arange(1000 * k, 1000 * k + n)),
                                 "tag": pa.array([f"t{i % 5}" for i in range(n)]),
                                 "opt": pa.array(rng.integers(0, 100, n), mask=rng.random(n) < .4),
                                 "x": pa.array(rng.random(n), mask=rng.random(n) < 0.4)}),
                       str(tmp_path / f"part-{k}.parquet"), row_group_size=3)
    return tmp_path


def _ds(path, **kw):
    kw.setdefault("batch_size", 4)
    ds = ParquetDataset(kw.pop("batch_size"), **kw)
    ds.add_path(str(path))
    ds.varlen_feature("rid")
    ds.varlen_feature("tag", hash_type="farm")
    ds.varlen_feature("opt")
    ds.fixedlen_feature("x", [-1.0])
    return ds


def _rids(batches):
    return [int(v) for b in batches for v in b[0]["rid"].values()]


@pytest.mark.parametrize("consumed", [0, 1, 2, 3, 5, 7, 12])
def test_resume_yields_exactly_the_remaining_rows(files, consumed):
    ds = _ds(files, prefetch=2, read_threads_num=2)
    it = iter(ds)
    head = []
    for _ in range(consumed):
        is_end, batch = next(it)
        assert not is_end
        head.extend(_rids([batch]))
    time.sleep(0.05)  # let prefetch run ahead: the state must not follow it
    state = ds.dump_io_state()
    fresh = _ds(files, prefetch=2, read_threads_num=2)
    fresh.load_io_state(state)
    tail = drain(iter(fresh))
    assert head + _rids(tail) == ALL
    it.close()


def test_resume_inside_a_row_group_same_batches(files):
    """The resumed pass gives the batches the uninterrupted pass gave after that point."""
    full = drain(iter(_ds(files, batch_size=5, read_threads_num=2)))
    ds = _ds(files, batch_size=5, read_threads_num=2)
    it = iter(ds)
    for _ in range(3):
        next(it)
    state = ds.dump_io_state()
    d = json.loads(state[0])
    assert d["format"] == "recis_compat.parquet/1"
    assert (d["file_index"], d["row"]) == (1, 2)  # 15 rows out: file 0 has 13, row 2 of file 1
    fresh = _ds(files, batch_size=5, read_threads_num=2)
    fresh.load_io_state(state)
    rest = drain(iter(fresh))
    for a, b in zip(full[3:], rest):  # resumed rows are sliced Arrow arrays (nulls: offset bitmaps)
        for name in ("rid", "tag", "opt"):
            assert a[0][name].values().tolist() == b[0][name].values().tolist()
            assert a[0][name].offsets()[0].tolist() == b[0][name].offsets()[0].tolist()
        assert a[0]["x"].tolist() == b[0]["x"].tolist()
    assert any(-1.0 in b[0]["x"].flatten().tolist() for b in rest)
    assert len(rest) == len(full) - 3
    it.close()


@pytest.mark.parametrize("worker_idx", [0, 1])
def test_resume_per_worker(files, worker_idx):
    mine = [r for r in ALL if (r // 1000) % 2 == worker_idx]
    ds = _ds(files, batch_size=3, worker_idx=worker_idx, worker_num=2, read_threads_num=2)
    it = iter(ds)
    head = _rids([next(it)[1], next(it)[1]])
    fresh = _ds(files, batch_size=3, worker_idx=worker_idx, worker_num=2)
    fresh.load_io_state(ds.dump_io_state())
    assert head + _rids(drain(iter(fresh))) == mine
    it.close()


def test_end_state_and_apply_once(files):
    ds = _ds(files)
    drain(iter(ds))
    state = ds.dump_io_state()
    assert json.loads(state[0])["file_index"] == len(ROWS)
    again = _ds(files)
    again.load_io_state(state)
    assert next(iter(again)) == (True, None)
    assert _rids(drain(iter(again))) == ALL  # the next epoch starts from the top


def test_state_that_does_not_fit_is_refused(files, tmp_path_factory):
    ds = _ds(files, worker_num=2, worker_idx=0)
    it = iter(ds)
    next(it)
    state = ds.dump_io_state()
    it.close()
    other_worker = _ds(files, worker_num=2, worker_idx=1)
    other_worker.load_io_state(state)
    with pytest.raises(ValueError, match="same worker layout"):
        next(iter(other_worker))
    orc_dir = tmp_path_factory.mktemp("orc")
    write_ids(orc_dir / "part-0.orc", 0, 9)
    orc = OrcDataset(4)
    orc.add_path(str(orc_dir))
    orc.varlen_feature("rid")
    orc.load_io_state(state)
    with pytest.raises(ValueError, match="format 'recis_compat.parquet/1' cannot resume a "
                                         "reader of format 'recis_compat.orc/1'"):
        next(iter(orc))
    with pytest.raises(ValueError, match="not an OrcDataset IO state nor a ParquetDataset"):
        ds.load_io_state({0: "garbage"})
