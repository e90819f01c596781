"""recis_compat/utils/dist_exit.py: an uncaught distributed failure ends the process with status 1
after the traceback and the atexit handlers, without finalizing the interpreter (where gloo worker
threads still running a collective abort the process); other exceptions are left alone."""
import subprocess
import sys
import textwrap

import pytest
import torch.distributed as dist

from recis_compat.utils.dist_exit import is_distributed_failure

SCRIPT = textwrap.dedent("""
    import atexit, sys, threading, time
    import torch.distributed as dist
    import recis_compat.framework.trainer      # installs dist_timeout, hence dist_exit
    from recis_compat.utils import dist_exit
    assert dist_exit.installed()
    atexit.register(lambda: print("ATEXIT", flush=True))
    # stands in for a gloo worker thread still running a collective: a finalizing interpreter
    # waits for this non-daemon thread, os._exit does not
    threading.Thread(target=lambda: (time.sleep(3), print("THREAD-DONE", flush=True)), daemon=False).start()
    kind = sys.argv[1]
    if kind == "exchange":
        from recis_compat.backend.sharding import DistributedExchangeError
        try:
            raise RuntimeError("Application timeout caused pair closure")
        except RuntimeError as e:
            raise DistributedExchangeError("table 't', rank 0 of 2: failed") from e
    if kind == "wrapped":
        try:
            raise dist.DistBackendError("gloo timeout")
        except dist.DistError:
            raise ValueError("a user error raised while handling it")
    raise ValueError("not distributed")
""")


@pytest.mark.parametrize("kind", ["exchange", "wrapped"])
def test_uncaught_distributed_failure_exits_1_after_traceback_and_atexit(kind):
    proc = subprocess.run([sys.executable, "-c", SCRIPT, kind], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "Traceback" in proc.stderr and "ATEXIT" in proc.stdout
    assert "THREAD-DONE" not in proc.stdout          # the interpreter was not finalized


def test_other_exceptions_finalize_as_usual():
    """Without a DistError in the chain the process finalizes normally (waits for the thread)."""
    proc = subprocess.run([sys.executable, "-c", SCRIPT, "other"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "ValueError: not distributed" in proc.stderr
    assert "THREAD-DONE" in proc.stdout and "ATEXIT" in proc.stdout


def test_is_distributed_failure_follows_the_chain():
    try:
        try:
            raise dist.DistNetworkError("peer gone")
        except dist.DistError as e:
            raise RuntimeError("outer") from e
    except RuntimeError as outer:
        assert is_distributed_failure(outer)
    assert not is_distributed_failure(RuntimeError("Application timeout caused pair closure"))


PG_SCRIPT = textwrap.dedent("""
    import os, sys, threading, time
    import torch.distributed as dist
    import recis  # noqa: F401  (installs the process-group rules as in a RecIS script)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[1], RANK="0", WORLD_SIZE="1")
    dist.init_process_group()           # torch wraps sys.excepthook here ([rank0]: prefixes)
    threading.Thread(target=lambda: (time.sleep(3), print("THREAD-DONE", flush=True)), daemon=False).start()
    raise dist.DistBackendError("gloo: Application timeout caused pair closure")
""")


def test_traceback_survives_torchs_rank_prefix_hook(tmp_path):
    """torch's init_process_group wraps sys.excepthook and prints through a StringIO; ours stays
    outermost, so the prefixed traceback is written before the process ends with status 1."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.run([sys.executable, "-c", PG_SCRIPT, str(port)], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "[rank0]: torch.distributed.DistBackendError: gloo: Application timeout" in proc.stderr
    assert "THREAD-DONE" not in proc.stdout
