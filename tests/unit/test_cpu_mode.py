"""CPU mode (recis_compat/utils/cpu_mode.py): with ``RECIS_COMPAT_DEVICE=cpu``, ``import recis``
makes a RecIS script's plain torch CUDA calls land on the CPU; without it they still fail, naming
the variable.

The mode patches torch process-wide, so every test that installs it (or imports ``recis``) runs
its script in a fresh interpreter; the script prints one JSON line of facts the test checks.
"""
from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import tempfile
import textwrap

import pytest
import torch

REPO = pathlib.Path(__file__).resolve().parents[2]


def _run(code: str, cpu_mode: bool = True) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "adapters"), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "RECIS_COMPAT_DEVICE"):
        env.pop(k, None)
    if cpu_mode:
        env["RECIS_COMPAT_DEVICE"] = "cpu"
    with tempfile.TemporaryDirectory(prefix="cpu-mode-") as tmp:
        script = pathlib.Path(tmp) / "script.py"      # a file: TorchScript needs the source
        script.write_text(textwrap.dedent(code))
        proc = subprocess.run([sys.executable, str(script)], env=env, capture_output=True,
                              text=True, timeout=300, cwd=tmp)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    assert lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(lines[-1])


def test_mapped_calls_is_a_tuple_of_call_effect_pairs():
    from recis_compat.utils.cpu_mode import MAPPED_CALLS
    assert isinstance(MAPPED_CALLS, tuple) and len(MAPPED_CALLS) >= 15
    assert all(isinstance(p, tuple) and len(p) == 2 and all(isinstance(s, str) and s for s in p)
               for p in MAPPED_CALLS)
    calls = dict(MAPPED_CALLS)
    assert calls["torch.cuda.set_device"] == "no-op (CPU)"
    assert calls["Tensor.cuda"] == "returns the tensor on CPU"
    assert calls["torch.distributed.init_process_group(backend='nccl')"] == "gloo"
    for needed in ("torch.cuda.current_device", "torch.cuda.synchronize", "Module.cuda",
                   "torch.load(map_location='cuda')"):
        assert needed in calls
    # what stays honest is listed apart, not as a mapping
    from recis_compat.utils.cpu_mode import UNMAPPED_CALLS
    assert "torch.cuda.is_available" not in calls and "torch.cuda.device_count" not in calls
    assert dict(UNMAPPED_CALLS)["torch.cuda.is_available"].startswith("unchanged: False")
    assert any(c.startswith("torch.autocast('cuda'") for c in calls)
    assert any("RaggedTensor.cuda" in c for c in calls)


def test_torch_cuda_calls_land_on_the_cpu_with_one_startup_warning():
    res = _run("""
        import json, os, warnings
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import torch
            import recis
            from recis.utils import cpu_mode
            import importlib; importlib.reload(recis)                 # a second import: no new warning
            again = cpu_mode.install()
            from recis.io.orc_dataset import OrcDataset
            OrcDataset(4, device="cuda")                              # recis API: mapped silently now
        startup = [str(w.message) for w in caught if "CPU mode" in str(w.message)]
        other_cuda = [str(w.message) for w in caught
                      if "CUDA" in str(w.message) and "CPU mode" not in str(w.message)]
        from recis.utils import dist_timeout
        out = {"startup": startup, "other_cuda": other_cuda, "again": again,
               "installed": cpu_mode.installed(), "dist_timeout": dist_timeout.installed()}
        torch.cuda.set_device(int(os.getenv("RANK", "-1")))
        torch.cuda.set_device(0)
        torch.cuda.set_device(torch.device("cuda:1"))
        torch.cuda.synchronize()
        with torch.cuda.device(0):
            pass
        out["current_device"] = torch.cuda.current_device()
        out["name"] = torch.cuda.get_device_name(0)
        torch.cuda.reset_peak_memory_stats()
        out["is_available"] = torch.cuda.is_available()
        out["device_count"] = torch.cuda.device_count()
        x = torch.arange(4, dtype=torch.float32)
        out["same_tensor"] = x.cuda() is x
        devs = {
            "Tensor.cuda": x.cuda().device, "Tensor.cuda(1)": x.cuda(1).device,
            "to('cuda')": x.to("cuda").device, "to(0)": x.to(0).device,
            "to(device)": x.to(device=torch.device("cuda:0")).device,
            "pin_memory": x.pin_memory().device,
            "new_zeros": x.new_zeros(2, device="cuda").device, "new_tensor": x.new_tensor([1], device="cuda").device,
        }
        import io
        for loc in ("cuda", "cuda:1", torch.device("cuda"), None):
            buf = io.BytesIO()
            torch.save({"w": x}, buf)
            buf.seek(0)
            devs[f"load({loc!r})"] = torch.load(buf, map_location=loc)["w"].device
        out["to_dtype"] = str(x.to("cuda", torch.float64).dtype)
        out["to_tensor"] = str(x.to(torch.zeros(1, dtype=torch.int32)).dtype)
        for name, call in {
                "zeros": lambda d: torch.zeros(2, device=d), "ones": lambda d: torch.ones(2, device=d),
                "empty": lambda d: torch.empty(2, device=d), "full": lambda d: torch.full((2,), 3.0, device=d),
                "tensor": lambda d: torch.tensor([1, 2], device=d),
                "as_tensor": lambda d: torch.as_tensor([1], device=d),
                "arange": lambda d: torch.arange(3, device=d), "randn": lambda d: torch.randn(2, device=d),
                "rand": lambda d: torch.rand(2, device=d), "randint": lambda d: torch.randint(0, 5, (2,), device=d),
                "randperm": lambda d: torch.randperm(3, device=d), "eye": lambda d: torch.eye(2, device=d),
                "linspace": lambda d: torch.linspace(0, 1, 3, device=d),
                "zeros_like": lambda d: torch.zeros_like(x, device=d),
                "full_like": lambda d: torch.full_like(x, 2.0, device=d)}.items():
            for d in ("cuda", "cuda:0", torch.device("cuda"), 0):
                devs[f"{name}({d!r})"] = call(d).device
        out["devices"] = sorted({str(v) for v in devs.values()})
        m = torch.nn.Linear(2, 2)
        out["module_cuda_same"] = m.cuda() is m
        out["module_device"] = str(next(m.parameters()).device)

        @torch.jit.script
        def scripted(n: int):
            return torch.zeros(n) + torch.arange(n)
        out["jit"] = scripted(3).tolist()

        cpu_mode.uninstall()
        out["restored"] = (torch.Tensor.to is torch._C.TensorBase.to and not hasattr(torch.zeros, "__wrapped__")
                           and torch.nn.Module.cuda.__name__ == "cuda" and "set_device" in repr(torch.cuda.set_device))
        try:
            x.cuda()
            out["after_uninstall"] = "no error"
        except (AssertionError, RuntimeError) as e:
            out["after_uninstall"] = str(e)
        print(json.dumps(out))
    """)
    assert len(res["startup"]) == 1, res["startup"]
    assert "RECIS_COMPAT_DEVICE=cpu" in res["startup"][0]
    assert "torch.cuda.set_device: no-op (CPU)" in res["startup"][0]
    assert res["other_cuda"] == [] and res["again"] is False and res["installed"] is True
    assert res["dist_timeout"] is True                # import recis also wraps init_process_group
    assert res["current_device"] == 0 and res["name"] == "cpu"
    assert res["is_available"] is False and res["device_count"] == 0
    assert res["same_tensor"] is True
    assert res["devices"] == ["cpu"]
    assert res["to_dtype"] == "torch.float64" and res["to_tensor"] == "torch.int32"
    assert res["module_cuda_same"] is True and res["module_device"] == "cpu"
    assert res["jit"] == [0.0, 1.0, 2.0]            # TorchScript still compiles torch.zeros & co.
    assert res["restored"] is True
    assert "CUDA" in res["after_uninstall"]


def test_thread_counts_below_one_are_raised_to_one():
    res = _run("""
        import json
        from multiprocessing import cpu_count
        import torch
        import recis
        cpu_num = 0                      # what RecIS's cpu_count() // 16 gives below 16 CPUs
        torch.set_num_threads(cpu_num)
        torch.set_num_interop_threads(cpu_num)
        out = {"threads": torch.get_num_threads(), "interop": torch.get_num_interop_threads(),
               "cpu_count_16": cpu_count() // 16}
        torch.set_num_threads(2)
        out["two"] = torch.get_num_threads()
        try:
            torch.set_num_threads("x")
        except RuntimeError as e:                  # torch's own error, unchanged
            out["bad_type"] = str(e)
        print(json.dumps(out))
    """)
    assert res["threads"] == 1 and res["interop"] == 1 and res["two"] == 2
    assert "expects an int" in res["bad_type"]


def test_autocast_cuda_runs_cpu_autocast_with_the_same_dtype():
    res = _run("""
        import json, warnings
        warnings.simplefilter("ignore")
        import torch
        import recis
        torch.manual_seed(0)
        lin = torch.nn.Linear(4, 2)
        x = torch.randn(3, 4)
        out = {}
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
            y = lin(x)
            out["autocast"] = [str(y.dtype), torch.is_autocast_enabled("cpu")]
        y.float().sum().backward()                     # trains through the bf16 region
        out["grad"] = str(lin.weight.grad.dtype)
        with torch.amp.autocast("cuda", dtype=torch.bfloat16):
            out["amp"] = str(lin(x).dtype)
        with torch.cuda.amp.autocast(dtype=torch.bfloat16):
            out["cuda_amp"] = str(lin(x).dtype)
        with torch.autocast("cuda"):
            out["default"] = str(lin(x).dtype)          # CUDA autocast's default: fp16
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=False):
            out["disabled"] = str(lin(x).dtype)
        out["outside"] = str(lin(x).dtype)
        print(json.dumps(out))
    """)
    assert res["autocast"] == ["torch.bfloat16", True]
    assert res["grad"] == "torch.float32"
    assert res["amp"] == "torch.bfloat16" and res["cuda_amp"] == "torch.bfloat16"
    assert res["default"] == "torch.float16"
    assert res["disabled"] == "torch.float32" and res["outside"] == "torch.float32"


_TABLE_MODEL = """
    import json, warnings
    warnings.simplefilter("ignore")
    import torch
    import recis
    from recis.nn import EmbeddingEngine
    from recis.nn.initializers import ConstantInitializer
    from recis.nn.modules.embedding import EmbeddingOption
    from recis.nn.modules.hashtable import HashTable, filter_out_sparse_param
    from recis.optim import SparseAdamW
    from recis.ragged.tensor import RaggedTensor

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.ee = EmbeddingEngine({"a": EmbeddingOption(
                embedding_dim=4, shared_name="a", combiner="sum", device=torch.device("cuda"),
                initializer=ConstantInitializer(init_val=0.1))})
            self.ht = HashTable([4], name="plain_ht", initializer=ConstantInitializer(init_val=0.2))
            self.lin = torch.nn.Linear(8, 1)

        def forward(self, ids):
            rt = RaggedTensor(ids, torch.arange(ids.numel() + 1, dtype=torch.int32))
            a = self.ee({"a": rt})["a"]
            return self.lin(torch.cat([a, self.ht(ids)], 1)).pow(2).mean()
"""


def test_module_cuda_on_a_model_holding_tables_keeps_training():
    res = _run(_TABLE_MODEL + """
    torch.manual_seed(0)
    model = Model()
    sparse = filter_out_sparse_param(model)
    sopt = SparseAdamW(sparse, lr=0.01)
    dopt = torch.optim.AdamW(model.parameters(), lr=0.01)
    ids = torch.tensor([3, 5, 7])

    def step():
        loss = model(ids)
        loss.backward()
        sopt.step(); dopt.step(); sopt.zero_grad(); dopt.zero_grad()
        return float(loss)

    step()
    before = model.ht(ids).detach().clone()
    n_before = {k: len(v.ids()) for k, v in sparse.items()}
    moved = model.cuda()
    to_cuda = model.to("cuda") is model and model.to(torch.device("cuda:0")) is model
    after_move = model.ht(ids).detach().clone()
    losses = [step() for _ in range(6)]
    out = {
        "same_object": moved is model and to_cuda,
        "keys": sorted(filter_out_sparse_param(model)) == sorted(sparse),
        "same_tables": all(filter_out_sparse_param(model)[k] is v for k, v in sparse.items()),
        "rows_kept": bool(torch.equal(before, after_move)),
        "ids_kept": {k: len(v.ids()) for k, v in sparse.items()} == n_before,
        "still_learning": not torch.equal(after_move, model.ht(ids).detach()),
        "loss_falls": losses[-1] < losses[0], "losses": losses,
        "devices": sorted({str(p.device) for p in model.parameters()}),
    }
    rt = RaggedTensor(torch.tensor([1, 2, 3]), [torch.tensor([0, 1, 3], dtype=torch.int32)])
    out["ragged"] = [str(rt.cuda().device), str(rt.to("cuda").device), str(rt.to("cuda", torch.float32).dtype),
                     str(rt.to("cuda", torch.float32).offsets()[0].dtype)]
    print(json.dumps(out))
    """)
    assert res["same_object"] and res["keys"] and res["same_tables"]
    assert res["rows_kept"] and res["ids_kept"]
    assert res["still_learning"] and res["loss_falls"], res["losses"]
    assert res["devices"] == ["cpu"]
    assert res["ragged"] == ["cpu", "cpu", "torch.float32", "torch.int32"]


def test_without_the_variable_cuda_calls_fail_naming_it():
    res = _run(_TABLE_MODEL + """
    from recis.utils import cpu_mode, dist_timeout
    out = {"installed": cpu_mode.installed(), "dist_timeout": dist_timeout.installed()}
    torch.cuda.set_device(-1)                       # what RecIS's examples do without RANK: fine
    def err(f):
        try:
            f()
        except Exception as e:
            return [type(e).__name__, isinstance(e, RuntimeError), isinstance(e, AssertionError), str(e)]
        return None
    out["tensor_cuda"] = err(lambda: torch.zeros(2).cuda())
    out["set_device"] = err(lambda: torch.cuda.set_device(0))
    out["current_device"] = err(lambda: torch.cuda.current_device())
    out["model_cuda"] = err(lambda: Model().cuda())
    rt = RaggedTensor(torch.tensor([1]), [torch.tensor([0, 1])])
    out["ragged_cuda"] = err(lambda: rt.cuda())
    out["ragged_to"] = err(lambda: rt.to("cuda"))
    out["factory"] = err(lambda: torch.zeros(2, device="cuda"))    # not mapped: torch's own error
    out["threads"] = err(lambda: torch.set_num_threads(0))
    print(json.dumps(out))
    """, cpu_mode=False)
    assert res["installed"] is False and res["dist_timeout"] is True
    for key in ("tensor_cuda", "set_device", "current_device", "model_cuda", "ragged_cuda", "ragged_to"):
        assert res[key] is not None, key
        assert res[key][1] is True, res[key]
        assert "RECIS_COMPAT_DEVICE=cpu" in res[key][3], res[key]
    assert res["tensor_cuda"][2] is True              # still an AssertionError, as torch raises
    assert res["factory"] is not None and "RECIS_COMPAT_DEVICE" not in res["factory"][3]
    # 0 threads (RecIS's cpu_count() // 16): still an error, naming the variable and the cause
    assert res["threads"] is not None and res["threads"][1] is True
    assert "RECIS_COMPAT_DEVICE=cpu" in res["threads"][3] and "cpu_count() // 16" in res["threads"][3]
    assert "expects a positive integer" in res["threads"][3]


def test_dynamic_table_cuda_names_the_variable_without_recis(monkeypatch):
    """``recis_compat`` used directly (no ``import recis``, nothing patched): moving a table to
    CUDA on a host without CUDA fails with the error naming the variable."""
    if torch.cuda.is_available():
        pytest.skip("needs a host without CUDA")
    monkeypatch.delenv("RECIS_COMPAT_DEVICE", raising=False)
    from recis_compat.backend.dynamic_table import DynamicTable, DynamicTableConfig
    from recis_compat.utils import cpu_mode
    assert not cpu_mode.installed()
    hinted = cpu_mode.hints_installed()               # another test of this process imported recis
    if hinted:
        cpu_mode.uninstall_hints()
    try:
        table = DynamicTable(DynamicTableConfig("t_cuda_msg", 4, lambda k: torch.zeros(k, 4)))
        with pytest.raises(RuntimeError, match="table 't_cuda_msg'.*RECIS_COMPAT_DEVICE=cpu"):
            table.cuda()
        assert table.impl.device == torch.device("cpu")
        table.to("cpu")                               # CPU moves keep working
    finally:
        if hinted:
            cpu_mode.install_hints()
