"""IO state: exact resume (prefetch on, 2 reader threads), apply-once, checks, threads."""
import gc
import json
import threading
import time

import pytest

from orc_test_helpers import drain, rids, write_ids, write_orc


@pytest.fixture
def five_files(tmp_path):
    for k in range(5):
        write_ids(tmp_path / f"part-{k}.orc", 1000 * k, 7)
    return tmp_path


ALL = [1000 * k + i for k in range(5) for i in range(7)]


@pytest.mark.parametrize("consumed", [0, 1, 3, 5, 8, 9])
def test_resume_yields_exactly_the_remaining_rows(five_files, id_dataset, consumed):
    ds = id_dataset([five_files], batch_size=4, prefetch=2, read_threads_num=2)
    it = iter(ds)
    head = []
    for _ in range(consumed):
        is_end, batch = next(it)
        assert not is_end
        head.extend(int(v) for v in batch[0]["rid"].values())
    time.sleep(0.05)  # let prefetch run ahead: the state must not follow it
    state = ds.dump_io_state()
    assert list(state) == [0]
    fresh = id_dataset([five_files], batch_size=4, prefetch=2, read_threads_num=2)
    fresh.load_io_state(state)
    tail = rids(drain(iter(fresh)))
    assert head + tail == ALL


def test_state_is_json_and_end_state_resumes_to_end(five_files, id_dataset):
    ds = id_dataset([five_files], batch_size=4)
    drain(iter(ds))
    state = ds.dump_io_state()
    d = json.loads(state[0])
    assert (d["file_index"], d["row"], d["files"]) == (5, 0, 5)
    again = id_dataset([five_files], batch_size=4)
    again.load_io_state(state)
    assert next(iter(again)) == (True, None)


def test_loaded_state_applies_once(five_files, id_dataset):
    ds = id_dataset([five_files], batch_size=4)
    it = iter(ds)
    next(it)
    state = ds.dump_io_state()
    ds2 = id_dataset([five_files], batch_size=4)
    ds2.load_io_state(state)
    assert rids(drain(iter(ds2))) == ALL[4:]
    assert rids(drain(iter(ds2))) == ALL  # Q11 fixed: the next epoch starts from the top


def test_resume_inside_multi_stripe_file(tmp_path, id_dataset):
    import pyarrow as pa
    n = 5000
    write_orc(tmp_path / "big.orc",
              {"rid": pa.array([[i] for i in range(n)], type=pa.list_(pa.int64())),
               "pad": pa.array([[float(i)] * 20 for i in range(n)], type=pa.list_(pa.float64()))},
              stripe_size=64 * 1024)
    import pyarrow.orc as orc
    assert orc.ORCFile(str(tmp_path / "big.orc")).nstripes > 1
    ds = id_dataset([tmp_path], batch_size=700, prefetch=1, read_threads_num=2)
    it = iter(ds)
    head = []
    for _ in range(4):
        head.extend(int(v) for v in next(it)[1][0]["rid"].values())
    ds2 = id_dataset([tmp_path], batch_size=700, read_threads_num=2)
    ds2.load_io_state(ds.dump_io_state())
    assert head + rids(drain(iter(ds2))) == list(range(n))


def test_save_interval_none_disables_state(five_files, id_dataset):
    ds = id_dataset([five_files], save_interval=None)
    next(iter(ds))
    assert ds.dump_io_state() is None


def test_state_checks(five_files, tmp_path_factory, id_dataset):
    ds = id_dataset([five_files], batch_size=4, worker_num=2, worker_idx=0)
    next(iter(ds))
    state = ds.dump_io_state()
    wrong_layout = id_dataset([five_files], batch_size=4, worker_num=3, worker_idx=0)
    wrong_layout.load_io_state(state)
    with pytest.raises(ValueError, match="worker_num=2.*worker_num=3"):
        next(iter(wrong_layout))
    other = tmp_path_factory.mktemp("other")
    for k in range(5):
        write_ids(other / f"part-{k}.orc", 0, 9)
    wrong_files = id_dataset([other], batch_size=4, worker_num=2, worker_idx=0)
    wrong_files.load_io_state(state)
    with pytest.raises(ValueError, match="different file list"):
        next(iter(wrong_files))
    too_many = id_dataset([five_files], batch_size=4, worker_num=2, worker_idx=0)
    too_many.load_io_state({0: state[0], 1: state[0]})
    with pytest.raises(ValueError, match="IO states size not equal to sub worker num"):
        next(iter(too_many))
    with pytest.raises(ValueError, match="not an OrcDataset IO state"):
        too_many.load_io_state({0: "garbage"})


def test_state_dataset_dump_before_iter_raises():
    from recis_compat.io.state_dataset import StateDataset
    sd = StateDataset([], threading.Lock(), {})
    with pytest.raises(RuntimeError):
        sd.dump_io_state()


def _io_threads():
    return [t for t in threading.enumerate()
            if t.name.startswith(("recis-orc-read", "recis-io-prefetch")) and t.is_alive()]


def _wait_no_io_threads(timeout=3.0):
    deadline = time.time() + timeout
    while _io_threads() and time.time() < deadline:
        gc.collect()
        time.sleep(0.02)
    return _io_threads()


def test_abandoned_iterators_do_not_leak_threads(five_files, id_dataset):
    assert _wait_no_io_threads() == []
    for _ in range(3):
        it = iter(id_dataset([five_files], batch_size=2, prefetch=2, read_threads_num=2))
        next(it)
        del it
    assert _wait_no_io_threads() == []
    it = iter(id_dataset([five_files], batch_size=2, prefetch=1, read_threads_num=2))
    drain(it)
    assert _wait_no_io_threads() == []
