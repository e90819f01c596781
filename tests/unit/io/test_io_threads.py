"""The IO pipeline's threads (prefetch producer, ORC reader pool) are stopped and joined however
the loop ends: close() travels down every wrapping stage, and an exit hook
(recis_compat/io/threads.py) joins what is still running before interpreter finalization
(issue 13 item 1: a daemon prefetch thread alive during finalization aborted finished runs)."""
import os
import subprocess
import sys
import textwrap
import threading

import pytest

from orc_test_helpers import drain, write_ids
from recis_compat.io import threads as io_threads

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def _io_threads():
    return sorted(t.name for t in threading.enumerate() if t.name.startswith(("recis-io", "recis-orc")))


@pytest.fixture
def many_files(tmp_path):
    return [write_ids(tmp_path / f"f{i}.orc", 100 * i, 40) for i in range(6)]


@pytest.mark.parametrize("with_filter", [False, True])
def test_close_joins_prefetch_and_reader_threads(many_files, id_dataset, with_filter):
    ds = id_dataset(many_files, batch_size=4, prefetch=2, read_threads_num=2)
    if with_filter:
        ds.filter(lambda batch: True)
    it = iter(ds)
    is_end, _ = next(it)
    assert not is_end and "recis-io-prefetch" in _io_threads()
    it.close()
    assert _io_threads() == []
    assert next(it) == (True, None)


def test_end_of_data_joins_threads(many_files, id_dataset):
    ds = id_dataset(many_files, batch_size=16, prefetch=1, read_threads_num=2)
    it = iter(ds)
    assert len(drain(it)) == 15
    assert _io_threads() == []


def test_exception_in_map_joins_threads(many_files, id_dataset):
    ds = id_dataset(many_files, batch_size=4, prefetch=1, read_threads_num=2)
    calls = []

    def boom(batch):
        calls.append(1)
        if len(calls) == 2:
            raise KeyError("bad batch")
        return batch

    ds.map(boom)
    it = iter(ds)
    next(it)
    with pytest.raises(KeyError, match="bad batch"):
        next(it)
    assert _io_threads() == []


def test_trainer_style_close_after_train_steps(many_files, id_dataset):
    """A loop that stops after N steps and closes the iterator (what Trainer._train_loop does)."""
    ds = id_dataset(many_files, batch_size=2, prefetch=1, read_threads_num=3)
    for _ in range(2):  # two epochs: a second iter() starts fresh threads and closes them too
        it = iter(ds)
        for _ in range(3):
            assert next(it)[0] is False
        it.close()
        assert _io_threads() == []


def test_no_prefetch_close_joins_reader_threads(many_files, id_dataset):
    ds = id_dataset(many_files, batch_size=4, prefetch=0, read_threads_num=2)
    it = iter(ds)
    next(it)
    assert any(n.startswith("recis-orc-read") for n in _io_threads())
    it.close()
    assert _io_threads() == []


_EXIT_SCRIPT = """
import atexit, sys, threading
sys.path.insert(0, {helpers!r})
from orc_test_helpers import write_ids
from recis_compat.io.orc_dataset import OrcDataset

def report():  # atexit runs after threading's exit hooks, before finalization
    live = [t.name for t in threading.enumerate() if t.name.startswith(("recis-io", "recis-orc"))]
    print("LIVE", live, flush=True)
atexit.register(report)

files = [write_ids({tmp!r} + f"/f{{i}}.orc", 100 * i, 40) for i in range(6)]
ds = OrcDataset(2, prefetch=2, read_threads_num=2)
ds.add_paths(files)
ds.varlen_feature("rid")
it = iter(ds)
next(it); next(it)
{ending}
"""


@pytest.mark.parametrize("ending", [
    "pass  # loop left with the iterator still referenced",
    "raise RuntimeError('user code failed')",
    "raise KeyboardInterrupt",
    "ds2 = OrcDataset(2, prefetch=1); ds2.add_paths(files); ds2.varlen_feature('rid'); it2 = iter(ds2); next(it2)",
])
def test_exit_hook_joins_threads_left_running(tmp_path, ending):
    code = _EXIT_SCRIPT.format(helpers=os.path.dirname(os.path.abspath(__file__)), tmp=str(tmp_path),
                               ending=ending)
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env=env, timeout=120)
    assert "LIVE []" in proc.stdout, proc.stdout + proc.stderr[-3000:]
    assert "terminate called" not in proc.stderr


def test_stop_all_runs_every_stopper_oldest_first_and_reports_failures(caplog):
    order = []
    keys = [io_threads.register_stopper(lambda: order.append("outer")),
            io_threads.register_stopper(lambda: (_ for _ in ()).throw(OSError("disk gone"))),
            io_threads.register_stopper(lambda: order.append("inner"))]
    try:
        io_threads.stop_all()
    finally:
        for k in keys:
            io_threads.unregister_stopper(k)
    assert order == ["outer", "inner"]
    assert "stopping an IO thread at exit failed" in caplog.text


def test_stoppers_of_ended_threads_are_dropped():
    t = threading.Thread(target=lambda: None)
    t.start()
    t.join()
    key = io_threads.register_stopper(lambda: None, alive=t.is_alive)
    key2 = io_threads.register_stopper(lambda: None, alive=lambda: False)
    try:
        assert key not in io_threads._stoppers
    finally:
        io_threads.unregister_stopper(key2)


def test_forked_child_starts_with_no_stoppers_of_the_parent():
    """A DataLoader worker is a fork: the parent's threads do not exist there, and a lock held at
    fork time must not deadlock the child's exit hook."""
    key = io_threads.register_stopper(lambda: None)
    r, w = os.pipe()
    try:
        with io_threads._lock:  # held by the parent while it forks
            pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            io_threads.register_stopper(lambda: None)
            os.write(w, str(len(io_threads._stoppers)).encode())
            os._exit(0)
        os.waitpid(pid, 0)
        assert os.read(r, 16) == b"1"
    finally:
        io_threads.unregister_stopper(key)
        os.close(r)
        os.close(w)
