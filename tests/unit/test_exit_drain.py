"""recis_compat/utils/exit_drain.py: at exit, other threads that still run native code and then
need the GIL (gloo's worker threads destroying finished works) finish before the interpreter
finalizes; creating a process group registers the handler."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading

import pytest

from recis_compat.utils import exit_drain

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="needs Linux /proc")


def _native_then_python(done: list, rounds: int) -> None:
    """Runs GIL-free (hashing releases the GIL for large buffers), then needs the GIL, as a gloo
    worker that finishes a work and then drops its tensors' Python objects."""
    data = b"x" * (8 << 20)
    for _ in range(rounds):
        hashlib.sha256(data).digest()
    done.append(True)


def test_drain_returns_after_a_thread_that_runs_native_code_then_needs_the_gil():
    done: list = []
    t = threading.Thread(target=_native_then_python, args=(done, 20), daemon=True)
    t.start()
    assert exit_drain.drain(max_wait_s=60.0) is True
    assert done == [True]


def test_drain_gives_up_after_max_wait_for_a_thread_that_never_stops():
    stop = threading.Event()

    def spin():
        data = b"y" * (1 << 20)
        while not stop.is_set():
            hashlib.sha256(data).digest()

    t = threading.Thread(target=spin, daemon=True)
    t.start()
    try:
        assert exit_drain.drain(max_wait_s=0.2) is False
    finally:
        stop.set()
        t.join()


def test_busy_threads_names_other_threads_only():
    busy = exit_drain.busy_threads()
    assert busy is not None and threading.get_native_id() not in busy


@pytest.mark.parametrize("how", ["recis_compat.backend.sharding.init_process_group('cpu')",
                                 "import recis; import torch.distributed as d; d.init_process_group()"])
def test_creating_a_process_group_registers_the_exit_drain(tmp_path, how):
    code = ("import os\n"
            "os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT='0', RANK='0', WORLD_SIZE='1')\n"
            "import recis_compat.backend.sharding, torch.distributed as dist\n"
            "from recis_compat.utils import exit_drain\n"
            "assert not exit_drain.registered()\n"
            f"{how}\n"
            "print('registered', exit_drain.registered())\n"
            "dist.destroy_process_group()\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, os.path.join(REPO, "adapters")]),
               RECIS_COMPAT_DEVICE="cpu")
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "registered True" in proc.stdout
