"""``recis_compat.utils.dist_timeout``: the timeout/backend rule for ``init_process_group``.

The pure rules (:func:`timeout_seconds`, :func:`resolve_backend`) are checked in process. What
patches torch (:func:`install`) runs in a fresh subprocess that creates real one-rank gloo
process groups and reports what it got (the timeout the gloo backend holds, the backend name).
The last tests check the error a failed backward exchange of a sharded table raises.
"""
from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import textwrap
import types
import warnings

import pytest
import torch

from recis_compat.utils import dist_timeout

REPO = pathlib.Path(__file__).resolve().parents[2]

# runs each case as a RecIS script would, one process group after the other
_SCRIPT = textwrap.dedent("""
    import datetime, json, os, sys, warnings
    import torch
    import torch.distributed as dist

    store = sys.argv[1]
    torch_original = dist.init_process_group
    out = {}

    def group_info():
        pg = dist.group.WORLD
        info = {"backend": dist.get_backend(pg),
                "timeout": pg._get_backend(torch.device("cpu")).options._timeout.total_seconds()}
        dist.destroy_process_group()
        return info

    n = [0]
    def init_method():
        n[0] += 1
        return f"file://{store}.{n[0]}"

    # before install: torch's own default (gloo gets 30 minutes)
    dist.init_process_group(init_method=init_method(), rank=0, world_size=1)
    out["torch_default"] = group_info()

    import recis_compat.utils.dist_timeout as dt
    dt.install()
    out["installed"] = dt.installed()
    os.environ["RECIS_COMPAT_DIST_TIMEOUT"] = "17"
    dist.init_process_group(init_method=init_method(), rank=0, world_size=1)
    out["bare"] = group_info()
    dist.init_process_group("gloo", init_method(), datetime.timedelta(seconds=33), rank=0, world_size=1)
    out["positional_timeout"] = group_info()
    dist.init_process_group(init_method=init_method(), rank=0, world_size=1, timeout=datetime.timedelta(seconds=44))
    out["keyword_timeout"] = group_info()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dist.init_process_group(backend="nccl", init_method=init_method(), rank=0, world_size=1)
        out["nccl"] = group_info()
    out["nccl_warnings"] = [str(w.message) for w in caught]
    import recis_compat.utils.cpu_mode as cpu_mode
    cpu_mode.install(announce=False)      # its startup warning lists the nccl -> gloo mapping
    dt._warned.clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dist.init_process_group(backend="nccl", init_method=init_method(), rank=0, world_size=1)
        out["nccl_cpu_mode"] = group_info()
    out["nccl_cpu_mode_warnings"] = [str(w.message) for w in caught]
    cpu_mode.uninstall()
    dist.init_process_group(backend="cuda:nccl,cpu:gloo", init_method=init_method(), rank=0, world_size=1)
    out["device_map"] = group_info()
    del os.environ["RECIS_COMPAT_DIST_TIMEOUT"]
    from torch.distributed import distributed_c10d
    distributed_c10d.init_process_group(init_method=init_method(), rank=0, world_size=1)
    out["c10d_unset"] = group_info()

    # idempotent: one wrapper over torch's function, however often install() runs
    first = dist.init_process_group
    dt.install()
    dt.install()
    out["same_wrapper"] = dist.init_process_group is first and distributed_c10d.init_process_group is first
    out["wraps_torch_original"] = getattr(first, "__recis_compat_dist_timeout__") is torch_original

    # our own helper follows the same rule
    from recis_compat.backend.sharding import init_process_group as helper
    os.environ["RECIS_COMPAT_DIST_TIMEOUT"] = "19"
    helper("cuda", init_method=init_method(), rank=0, world_size=1)
    out["helper"] = group_info()
    helper("cpu", timeout_s=7, init_method=init_method(), rank=0, world_size=1)
    out["helper_explicit"] = group_info()
    print("RESULT " + json.dumps(out))
""")


@pytest.fixture(scope="module")
def installed_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dist_timeout")
    script = tmp / "script.py"
    script.write_text(_SCRIPT)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    for var in ("RECIS_COMPAT_DIST_TIMEOUT", "RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    env["RECIS_COMPAT_DEVICE"] = "cpu"
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run([sys.executable, str(script), str(tmp / "store")], env=env, capture_output=True,
                          text=True, timeout=300, cwd=tmp)
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def test_bare_init_gets_the_variable_timeout_and_gloo(installed_run):
    assert installed_run["torch_default"]["timeout"] == 1800     # what a RecIS script got before
    assert installed_run["installed"] is True
    assert installed_run["bare"] == {"backend": "gloo", "timeout": 17}


def test_unset_variable_gives_600_seconds(installed_run):
    # through distributed_c10d.init_process_group too (its home module is wrapped as well)
    assert installed_run["c10d_unset"] == {"backend": "gloo", "timeout": dist_timeout.DEFAULT_TIMEOUT_S}


def test_callers_timeout_wins(installed_run):
    assert installed_run["positional_timeout"]["timeout"] == 33
    assert installed_run["keyword_timeout"]["timeout"] == 44


def test_nccl_and_device_maps_become_gloo_in_cpu_mode(installed_run):
    assert installed_run["nccl"] == {"backend": "gloo", "timeout": 17}
    assert any("using gloo" in w and "RECIS_COMPAT_DEVICE" in w for w in installed_run["nccl_warnings"])
    assert installed_run["device_map"] == {"backend": "gloo", "timeout": 17}
    # with the CPU mode installed its own startup warning names the mapping; no second warning
    assert installed_run["nccl_cpu_mode"] == {"backend": "gloo", "timeout": 17}
    assert not any("using gloo" in w for w in installed_run["nccl_cpu_mode_warnings"])


def test_install_is_idempotent(installed_run):
    assert installed_run["same_wrapper"] is True
    assert installed_run["wraps_torch_original"] is True


def test_sharding_helper_uses_the_same_rule(installed_run):
    assert installed_run["helper"] == {"backend": "gloo", "timeout": 19}     # cuda asked, CPU mode
    assert installed_run["helper_explicit"] == {"backend": "gloo", "timeout": 7}


def test_import_recis_installs(tmp_path):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "adapters"), env.get("PYTHONPATH", "")])
    code = ("import torch.distributed as dist, recis; "
            "print(hasattr(dist.init_process_group, '__recis_compat_dist_timeout__'))")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split()[-1] == "True"


@pytest.mark.parametrize("raw", ["abc", "0", "-5", "inf", "nan"])
def test_bad_timeout_variable_is_named(monkeypatch, raw):
    monkeypatch.setenv(dist_timeout.ENV_VAR, raw)
    with pytest.raises(ValueError, match=r"RECIS_COMPAT_DIST_TIMEOUT=.*positive number of seconds"):
        dist_timeout.timeout_seconds()


def test_timeout_variable_values(monkeypatch):
    monkeypatch.delenv(dist_timeout.ENV_VAR, raising=False)
    assert dist_timeout.timeout_seconds() == 600.0
    monkeypatch.setenv(dist_timeout.ENV_VAR, " 2.5 ")
    assert dist_timeout.default_timeout().total_seconds() == 2.5


def test_resolve_backend_rules(monkeypatch):
    monkeypatch.setenv("RECIS_COMPAT_DEVICE", "cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert dist_timeout.resolve_backend("nccl") == "gloo"
        assert dist_timeout.resolve_backend("NCCL") == "gloo"
    assert dist_timeout.resolve_backend(None) == "gloo"
    assert dist_timeout.resolve_backend("gloo") == "gloo"
    assert dist_timeout.resolve_backend("mpi") == "mpi"
    assert dist_timeout.resolve_backend("cpu:gloo,cuda:nccl") == "gloo"
    assert dist_timeout.resolve_backend("cuda:nccl") == "gloo"
    assert dist_timeout.resolve_backend("cpu:mpi,cuda:nccl") == "mpi"
    with pytest.raises(ValueError, match="backend='cuda:nccl,gloo'"):
        dist_timeout.resolve_backend("cuda:nccl,gloo")


def test_resolve_backend_keeps_requests_on_cuda_jobs(monkeypatch):
    monkeypatch.delenv("RECIS_COMPAT_DEVICE", raising=False)
    monkeypatch.setattr(dist_timeout.torch.cuda, "is_available", lambda: True)
    assert dist_timeout.resolve_backend("nccl") == "nccl"
    assert dist_timeout.resolve_backend(None) is None
    assert dist_timeout.resolve_backend("cuda:nccl,cpu:gloo") == "cuda:nccl,cpu:gloo"


# ---------------------------------------------------------------- errors of the sharded exchange
# ``backend/exchange.py`` driven in process: its ``all_to_all_single`` is replaced by a one-rank
# stand-in (copy) that can fail like gloo (the 2-rank run with a really stopped peer is
# tests/distributed/test_dead_peer.py).

GLOO_TIMEOUT = "[gloo/transport/tcp/unbound_buffer.cc:81] Timed out waiting 15000ms for recv operation to complete"


class _Work:
    def __init__(self, fail):
        self.fail = fail

    def wait(self):
        if self.fail:
            raise RuntimeError(GLOO_TIMEOUT)
        return True


def _stand_in_all_to_all(monkeypatch, fail_calls=()):
    """Replace the exchange's all_to_all_single by a copy; calls numbered in ``fail_calls`` fail
    (at wait() when async, else at once). Returns the list of calls made."""
    from recis_compat.backend import exchange
    calls = []

    def fake(out, inp, output_split_sizes=None, input_split_sizes=None, group=None, async_op=False):
        calls.append((tuple(inp.shape), async_op))
        fail = len(calls) in fail_calls
        out.copy_(inp)
        if async_op:
            return _Work(fail)
        if fail:
            raise RuntimeError(GLOO_TIMEOUT)
        return None

    monkeypatch.setattr(exchange.dist, "all_to_all_single", fake)
    return calls


def _table_error(what, phase, err):
    from recis_compat.backend.sharding import exchange_error
    return exchange_error("table 'user' (shared_names user_ro)", 1, 4, what, phase, err)


def test_rows_exchange_passes_gradients_sync_and_async(monkeypatch):
    from recis_compat.backend.exchange import PendingRows, RowsAllToAll
    calls = _stand_in_all_to_all(monkeypatch)
    local = torch.arange(6.0).view(3, 2).requires_grad_(True)
    out = RowsAllToAll.apply(local * 2, [3], [3], None)
    torch.testing.assert_close(out, local.detach() * 2)
    (out.t() * torch.arange(6.0).view(2, 3)).sum().backward()   # non-contiguous incoming gradient
    torch.testing.assert_close(local.grad, torch.arange(6.0).view(2, 3).t() * 2)
    pending = PendingRows(_table_error)
    pending.rows = RowsAllToAll.apply(local, [3], [3], None, pending)
    torch.testing.assert_close(pending.wait(), local.detach())
    assert [c[1] for c in calls] == [False, False, True]     # forward, backward, async forward


def test_failed_backward_exchange_names_table_and_rank(monkeypatch):
    from recis_compat.backend.exchange import PendingRows, RowsAllToAll
    from recis_compat.backend.sharding import DistributedExchangeError
    monkeypatch.setenv(dist_timeout.ENV_VAR, "15")
    _stand_in_all_to_all(monkeypatch, fail_calls=(2,))
    local = torch.ones(3, 2, requires_grad=True)
    pending = PendingRows(_table_error)
    pending.rows = RowsAllToAll.apply(local, [3], [3], None, pending)
    with pytest.raises(DistributedExchangeError) as info:
        pending.wait().sum().backward()
    msg = str(info.value)
    for part in ("table 'user' (shared_names user_ro)", "rank 1 of 4",
                 "embedding-gradient all-to-all failed in backward", "RECIS_COMPAT_DIST_TIMEOUT=15 s",
                 "Timed out waiting 15000ms"):
        assert part in msg, (part, msg)
    assert isinstance(info.value.__cause__, RuntimeError)


@pytest.mark.parametrize("failing_call,what", [(1, "id"), (2, "id"), (3, "embedding")])
def test_failed_forward_exchanges_name_the_direction(monkeypatch, failing_call, what):
    """Counts (call 1), ids (call 2) and rows (call 3) all-to-alls fail at their wait() with the
    table's error."""
    from recis_compat.backend.exchange import IdExchange, PendingRows, RowsAllToAll
    from recis_compat.backend.sharding import DistributedExchangeError
    _stand_in_all_to_all(monkeypatch, fail_calls=(failing_call,))
    ids = torch.tensor([7, 8, 9])
    with pytest.raises(DistributedExchangeError, match=f"the {what} all-to-all failed in forward"):
        received = IdExchange(ids, torch.tensor([2, 1]), None, _table_error).wait().wait()
        assert torch.equal(received.ids, ids) and received.per_source == [2, 1]
        pending = PendingRows(_table_error)
        pending.rows = RowsAllToAll.apply(torch.ones(3, 2), [2, 1], [2, 1], None, pending)
        pending.wait()


def test_lookup_contexts_record_nested_state_on_a_stream():
    """record_context_stream visits nested contexts in lists (KJTs, per-table contexts) and does
    nothing without a stream (CPU pipelines); CPU tensors are skipped."""
    import torch
    from torchrec.streamable import Multistreamable

    from recis_compat.backend.dynamic_table import record_context_stream

    class Spy(Multistreamable):
        def __init__(self):
            self.seen = []

        def record_stream(self, stream):
            self.seen.append(stream)

    class Ctx:
        def __init__(self, a, b):
            self.nested = [a, (b,)]
            self.rows = torch.zeros(2)
            self.count = 3

    a, b = Spy(), Spy()
    record_context_stream(Ctx(a, b), None)
    assert a.seen == [] and b.seen == []
    record_context_stream(Ctx(a, b), "stream-1")
    assert a.seen == ["stream-1"] and b.seen == ["stream-1"]
