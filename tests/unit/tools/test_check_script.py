"""recis-compat check-script: static listing of recis APIs and unsupported ones."""
import json
import subprocess
import sys
import textwrap

from recis_compat.tools.check_script import check_source

SCRIPT = textwrap.dedent("""
    import torch
    import recis
    from recis.io.orc_dataset import OrcDataset
    from recis.ragged.tensor import RaggedTensor as RT
    import recis.metrics.auroc as auroc_mod
    from recis.io.odps_dataset import OdpsDataset
    from recis.utils.logger import Logger, NoSuchThing

    def f():
        m = auroc_mod.AUROC(200)
        x = RT.from_dense(torch.zeros(2, 2))
        print(recis.__version__, recis.info.is_internal_enabled())
        return OrcDataset(16)
""")


def test_lists_and_resolves_usages():
    uses = {u.name: u for u in check_source(SCRIPT)}
    assert uses["recis.io.orc_dataset.OrcDataset"].supported
    assert uses["recis.ragged.tensor.RaggedTensor.from_dense"].supported
    assert uses["recis.metrics.auroc.AUROC"].supported
    assert uses["recis.__version__"].supported
    assert uses["recis.info.is_internal_enabled"].supported
    assert not uses["recis.io.odps_dataset.OdpsDataset"].supported
    assert "does not provide" in uses["recis.io.odps_dataset.OdpsDataset"].reason
    assert not uses["recis.utils.logger.NoSuchThing"].supported
    assert uses["recis.utils.logger.Logger"].lines == [8]


def test_cli_exit_code_and_json(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text(SCRIPT)
    out = subprocess.run([sys.executable, "-m", "recis_compat.cli", "check-script", str(bad), "--json"],
                         capture_output=True, text=True)
    assert out.returncode == 1
    report = json.loads(out.stdout)
    assert report["unsupported"] == 2
    good = tmp_path / "good.py"
    good.write_text("from recis.ragged.tensor import RaggedTensor\nRaggedTensor.from_numpy\n")
    out = subprocess.run([sys.executable, "-m", "recis_compat.cli", "check-script", str(good)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "2 recis APIs used, 0 unsupported" in out.stdout


# ============================================================ the verdict matches what running does
import os  # noqa: E402
import pathlib  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from recis_compat.tools import check_script as cs  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[3]
EXAMPLES = [REPO / "examples" / "deepfm" / "runner.py", REPO / "examples" / "deepctr" / "deepctr.py",
            REPO / "examples" / "seq2seq" / "runner.py"]


def _run_cli(path, *extra):
    """``recis-compat check-script PATH --json EXTRA`` in this process: (exit code, report)."""
    from click.testing import CliRunner

    from recis_compat.cli import main
    res = CliRunner().invoke(main, ["check-script", str(path), "--json", *extra])
    return res.exit_code, json.loads(res.output)


def _findings(report, kind):
    return [f for f in report.findings if f.kind == kind]


@pytest.mark.parametrize("script", EXAMPLES, ids=lambda p: p.parent.name)
def test_examples_are_reported_runnable_on_cpu(script):
    # tests/e2e/test_deepfm_example.py and test_examples_deepctr_seq2seq.py run these scripts
    rc, report = _run_cli(script, "--target", "cpu")
    assert rc == 0, json.dumps(report, indent=1)[-3000:]
    assert report["verdict"] == "runnable" and report["unsupported"] == 0 and report["needs_gpu"] == 0
    # the script's own modules (dataset, model) are checked with it
    assert len(report["files"]) >= 3
    assert any(a["file"] != str(script) for a in report["apis"])
    # their CUDA calls sit behind the --device switch
    cuda = [f for f in report["findings"] if f["kind"] == "cuda"]
    assert any("torch.cuda.set_device" in f["call"] and f["guarded"] for f in cuda)


RAW_OP_SCRIPT = textwrap.dedent("""
    import torch
    import recis
    ids = torch.arange(8)
    parts = torch.ops.recis.ids_partition(ids, 2)
    print("RAN", parts)
""")


def test_raw_recis_op_is_flagged_and_running_it_fails(tmp_path):
    script = tmp_path / "raw_op.py"
    script.write_text(RAW_OP_SCRIPT)
    rc, report = _run_cli(script)
    assert rc == 1 and report["verdict"] == "not runnable" and report["unsupported"] == 1
    (raw,) = [f for f in report["findings"] if f["kind"] == "raw-op"]
    assert raw["line"] == 5 and raw["call"] == "torch.ops.recis.ids_partition"
    assert "torch.ops.recis_compat" in raw["message"]
    env = dict(os.environ, RECIS_COMPAT_DEVICE="cpu")
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env)
    assert run.returncode != 0 and "RAN" not in run.stdout
    assert "ids_partition" in run.stderr


BAD_ARGS = textwrap.dedent("""
    from recis.io.orc_dataset import OrcDataset
    from recis.features.op import Mod, Bucketize, Hash
    from recis.features.feature import Feature
    from recis.nn.modules.hashtable import HashTable
    from recis.utils.logger import Logger
    ds = OrcDataset(1024, worker_idx=0, no_such_kwarg=3)
    ds.varlen_feature("x", hash_bucket_size=10)
    ds.varlen_feature("y", "farm", 10)
    Mod(10, 20)
    Mod()
    f = Feature(name="f", ops=[Hash(bucket_size=10), Bucketize(boundaries=[1.0])])
    Logger("x", **{"a": 1})
    t = HashTable([4], name="t")
    t._hashtable_impl
    t._not_provided
    ds.add_path("/data")
    ds._also_missing
    HashTable._no_such_class_attr
""")


def test_arguments_and_attributes_checked_against_the_real_objects():
    report = cs.analyze_source(BAD_ARGS, "bad.py", target="cpu")
    args = {f.line: f.message for f in _findings(report, "arguments")}
    assert "unexpected keyword argument 'no_such_kwarg'" in args[7] and "batch_size" in args[7]
    assert "OrcDataset.varlen_feature: unexpected keyword argument 'hash_bucket_size'" in args[8]
    assert "hash_bucket" in args[8]
    assert "too many positional arguments" in args[10]
    assert "missing a required argument: 'mod_value'" in args[11]
    assert set(args) == {7, 8, 10, 11}          # documented aliases, **splat and a valid call pass
    attrs = {f.call: f.message for f in _findings(report, "attribute")}
    assert set(attrs) == {"t._not_provided", "ds._also_missing"}
    assert "HashTable (assigned on line 14)" in attrs["t._not_provided"]
    assert "no private attribute '_not_provided'" in attrs["t._not_provided"]
    missing = [u for u in report.apis if not u.supported]
    assert [u.name for u in missing] == ["recis.nn.modules.hashtable.HashTable._no_such_class_attr"]
    assert report.unsupported == 4 + 2 + 1 and not report.runnable


def test_unknown_keyword_really_fails_when_run():
    from recis.io.orc_dataset import OrcDataset
    with pytest.raises(TypeError, match="no_such_kwarg"):
        OrcDataset(1024, worker_idx=0, no_such_kwarg=3)


AS_SHIPPED = textwrap.dedent("""
    import os
    from multiprocessing import cpu_count
    import torch
    import torch.distributed as dist
    import recis
    torch.cuda.set_device(int(os.getenv("LOCAL_RANK", "0")))
    cpu_num = cpu_count() // 16
    torch.set_num_threads(cpu_num)
    dist.init_process_group(backend="nccl")
    model = torch.nn.Linear(2, 2)
    model = model.cuda()
    x = torch.zeros(2, 2, device="cuda").cuda()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y = model(x.to("cuda:0"))
    torch.cuda.synchronize()
    if torch.cuda.is_available():
        torch.cuda.get_device_properties(0)
""")


def test_cuda_calls_report_the_cpu_mode_effect():
    from recis_compat.utils.cpu_mode import MAPPED_CALLS
    report = cs.analyze_source(AS_SHIPPED, "shipped.py", target="cpu")
    assert report.cpu_mode_available
    cuda = {f.line: f for f in report.cuda_calls}
    effects = dict(MAPPED_CALLS)
    assert cuda[7].effect == effects["torch.cuda.set_device"] and cuda[7].cpu_mode
    assert cuda[10].effect == effects["torch.distributed.init_process_group(backend='nccl')"]
    assert "Module.cuda" in cuda[12].effect and "Tensor.cuda" in cuda[12].effect
    assert [f.call for f in report.cuda_calls if f.line == 13] == [
        "torch.zeros(2, 2, device='cuda').cuda()", "torch.zeros(2, 2, device='cuda')"]
    autocast = next(v for k, v in MAPPED_CALLS if k.startswith("torch.autocast('cuda'"))
    assert cuda[14].effect == autocast
    assert any(f.call == "x.to('cuda:0')" and "CPU" in f.effect for f in report.cuda_calls)
    assert cuda[16].effect == effects["torch.cuda.synchronize"]
    assert cuda[17].effect.startswith("works without a GPU") and not cuda[17].cpu_mode
    props = cuda[18]
    assert props.effect == "needs a GPU" and props.guarded
    assert report.runnable and report.verdict == "runnable with RECIS_COMPAT_DEVICE=cpu"
    assert report.unsupported == 0


def test_unmapped_cuda_call_needs_a_gpu_on_cpu_only(tmp_path):
    script = tmp_path / "gpu_only.py"
    script.write_text("import torch\nimport recis\ns = torch.cuda.Stream()\nprint('RAN')\n")
    rc, report = _run_cli(script, "--target", "cpu")
    assert rc == 1 and report["needs_gpu"] == 1 and report["unsupported"] == 0
    assert report["findings"][0]["effect"] == "needs a GPU"
    rc, report = _run_cli(script, "--target", "gpu")
    assert rc == 0 and report["verdict"] == "runnable"
    if not torch.cuda.is_available():       # and on this CPU host it indeed fails, even in CPU mode
        env = dict(os.environ, RECIS_COMPAT_DEVICE="cpu")
        run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env)
        assert run.returncode != 0 and "RAN" not in run.stdout


def test_effects_follow_the_mapped_calls_table(monkeypatch):
    table = (("torch.cuda.set_device", "no-op here"), ("Tensor.cuda", "stays put"),
             ("torch.zeros/ones/*_like(device='cuda')", "made on CPU"),
             ("torch.autocast('cuda', dtype=...) / torch.cuda.amp.autocast", "cpu autocast"),
             ("recis API device='cuda' (OrcDataset, ...)", "CPU table"))
    monkeypatch.setattr(cs, "mapped_calls", lambda: (table, ""))
    src = textwrap.dedent("""
        import torch
        from recis.io.orc_dataset import OrcDataset
        torch.cuda.set_device(0)
        t = torch.ones_like(torch.zeros(1), device="cuda:1")
        t.cuda()
        torch.cuda.current_device()
        with torch.cuda.amp.autocast():
            pass
        ds = OrcDataset(16, device="cuda")
        torch.empty(2, device="cuda")
    """)
    report = cs.analyze_source(src, "t.py", target="cpu")
    got = {f.line: f.effect for f in report.cuda_calls}
    assert got == {4: "no-op here", 5: "made on CPU", 6: "Tensor.cuda: stays put", 7: "needs a GPU",
                   8: "cpu autocast", 10: "CPU table", 11: "needs a GPU"}
    assert len(report.needs_gpu) == 2 and not report.runnable


def test_without_the_cpu_mode_module_cuda_calls_need_a_gpu(monkeypatch, tmp_path):
    monkeypatch.setattr(cs, "mapped_calls", lambda: (None, "recis_compat.utils.cpu_mode is not available"))
    report = cs.analyze_source("import torch\ntorch.cuda.set_device(0)\ntorch.cuda.manual_seed(1)\n",
                               "t.py", target="cpu")
    assert not report.cpu_mode_available
    assert [f.effect for f in report.cuda_calls] == ["needs a GPU",
                                                     cs.CPU_SAFE_CUDA_CALLS["torch.cuda.manual_seed"]]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only behaviour of torch.cuda")
def test_cpu_safe_cuda_calls_do_work_without_a_gpu():
    import warnings
    args = {"torch.cuda.manual_seed": (1,), "torch.cuda.manual_seed_all": (1,)}
    for dotted in cs.CPU_SAFE_CUDA_CALLS:
        ok, reason, fn = cs._resolve_obj(dotted)
        assert ok, reason
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fn(*args.get(dotted, ()))


def test_every_mapped_call_entry_is_understood():
    from recis_compat.utils.cpu_mode import MAPPED_CALLS
    for call, effect in MAPPED_CALLS:
        patterns = cs._parse_mapped(call, effect)
        assert patterns, f"check-script cannot read the MAPPED_CALLS entry {call!r}"


def test_attribute_checks_only_follow_variables_known_to_hold_a_recis_object():
    src = textwrap.dedent("""
        from recis.io.orc_dataset import OrcDataset
        ds = OrcDataset(16)
        ds._mine = 1
        print(ds._mine)
        def f(ds):
            return ds.anything_at_all
        for t in range(3):
            t.whatever
        t = OrcDataset(8)
        t.whatever
        ds.also_missing
    """)
    report = cs.analyze_source(src, "t.py", target="cpu")
    assert [(f.line, f.call) for f in _findings(report, "attribute")] == [(12, "ds.also_missing")]
