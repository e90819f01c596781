"""The layering of docs/architecture.md ("Layers") is true: every import of every module under
``recis_compat/`` and ``benchmarks/`` (module level and inside functions, ``import x``,
``from x import y`` and relative imports) goes to its own layer or one below, and no layer
reaches another package's private (``_name``) objects.

Static, by ``ast``: nothing is imported, so a lazy import inside a function counts the same as a
module-level one. Private reach-arounds are caught three ways: ``from pkg.mod import _name``
across packages, ``alias._name`` where ``alias`` was imported from another package, and the
attribute / ``getattr`` names of docs/architecture.md's "Public accessors" list used on anything
but ``self``/``cls``.
"""
from __future__ import annotations

import ast
import pathlib
from typing import Dict, List, Optional, Tuple

ROOT = pathlib.Path(__file__).resolve().parents[2]

# package (second component of recis_compat.X, or "benchmarks") -> layer. Same layer: may import
# each other. Higher number: above.
LAYERS: Dict[str, int] = {
    "ops": 0,
    "ragged": 1,
    "backend": 2, "torchrec": 2,
    "features": 3, "io": 3,
    "nn": 4,
    # hooks are RecIS's trainer hooks: HashTableFilterHook builds nn's filter hooks and the
    # tensorboard hook lists nn's sparse parameters, so they sit beside optim, below framework
    "optim": 5, "serialize": 5, "hooks": 5,
    "framework": 6,
    "benchmarks": 7,
    "cli": 8, "tools": 8, "doctor": 8,
}
# stand apart: importable by every layer; they import only each other (never a layered package)
APART = {"utils", "common", "metrics", "version", "recis_root", "_alias", "info", "_C", ""}

# recis_compat.torchrec is the public TorchRec face of the backend: on top of the layer rule it
# imports only these (docs/torchrec.md)
ONLY = {"torchrec": {"ops", "ragged", "backend", "torchrec"} | APART}

# private attributes that an object of one layer must not have read by another; each has a public
# accessor (docs/architecture.md, "Public accessors")
REACH = {"_table", "_local", "_pg", "_check_ids", "_local_step", "_dmp_wrapped_module",
         "_fea_to_ht", "_ht", "_coalesced_groups", "_hashtable", "_anchor", "_dense_shape"}

# (module, target or attribute) pairs still open, each naming its issue item. Empty is the goal.
ALLOWED: Dict[Tuple[str, str], str] = {}


def _modules() -> List[Tuple[str, pathlib.Path]]:
    out = []
    for base in ("recis_compat", "benchmarks"):
        for p in sorted((ROOT / base).rglob("*.py")):
            parts = list(p.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out.append((".".join(parts), p))
    return out


def _package(mod: str) -> Optional[str]:
    """The layer key of a dotted module name, None outside the project."""
    parts = mod.split(".")
    if parts[0] == "benchmarks":
        return "benchmarks"
    if parts[0] != "recis_compat":
        return None
    return parts[1] if len(parts) > 1 else ""


def _imports(mod: str, path: pathlib.Path):
    """Yield (lineno, target module, imported name or None, node) for every project import."""
    tree = ast.parse(path.read_text(), str(path))
    is_pkg = path.name == "__init__.py"
    here = mod.split(".") if is_pkg else mod.split(".")[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if _package(a.name) is not None:
                    yield node.lineno, a.name, None, a.asname or a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[:len(here) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if _package(target) is None:
                continue
            for a in node.names:
                yield node.lineno, target, a.name, a.asname or a.name


def _rel(path: pathlib.Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def _layer_errors(mod: str, path: pathlib.Path) -> List[str]:
    errors = []
    src = _package(mod)
    for line, target, name, _ in _imports(mod, path):
        dst = _package(target)
        if dst == "" and name is not None and not name.startswith("_"):
            sub = _package(f"recis_compat.{name}")     # from recis_compat import nn
            dst = sub if sub in LAYERS or sub in APART else dst
        where = f"{_rel(path)}:{line}: {mod} imports {target}" + (f".{name}" if name else "")
        if (mod, target) in ALLOWED:
            continue
        if src in APART:
            if dst not in APART:
                errors.append(f"{where}: {src or 'recis_compat'} stands apart and may import only "
                              f"{sorted(a for a in APART if a)}")
            continue
        if src not in LAYERS:
            errors.append(f"{where}: package {src!r} has no layer in tests/unit/test_import_layering.py")
            continue
        if dst in APART or dst == src:       # stand-apart packages and the own package are always fine
            layer_error = None
        elif dst not in LAYERS:
            layer_error = f"package {dst!r} has no layer"
        elif LAYERS[dst] > LAYERS[src]:
            layer_error = f"{src} (layer {LAYERS[src]}) imports {dst} (layer {LAYERS[dst]})"
        elif src in ONLY and dst not in ONLY[src]:
            layer_error = f"{src} may import only {sorted(ONLY[src])}"
        else:
            layer_error = None
        if layer_error:
            errors.append(f"{where}: {layer_error}")
        if name and name.startswith("_") and not name.endswith("__") and dst != src and (mod, f"{target}.{name}") not in ALLOWED:
            errors.append(f"{where}: private name {name!r} of another package")
    return errors


def _reach_errors(mod: str, path: pathlib.Path) -> List[str]:
    src = _package(mod)
    tree = ast.parse(path.read_text(), str(path))
    foreign = {alias: target for _, target, name, alias in _imports(mod, path)
               if _package(target) != src}
    errors = []
    for node in ast.walk(tree):
        attr, obj = None, None
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            attr, obj = node.attr, node.value
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
              and node.func.id in ("getattr", "hasattr", "setattr") and len(node.args) >= 2
              and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str)
              and node.args[1].value in REACH):
            attr, obj = node.args[1].value, node.args[0]
        if attr is None:
            continue
        if (mod, attr) in ALLOWED:
            continue
        where = f"{_rel(path)}:{node.lineno}: {ast.unparse(node)}"
        if isinstance(obj, ast.Name) and obj.id in foreign:
            errors.append(f"{where}: private {attr!r} of {foreign[obj.id]} (another package)")
        elif attr in REACH and not (isinstance(obj, ast.Name) and obj.id in ("self", "cls")):
            errors.append(f"{where}: {attr!r} read from another object; use its public accessor")
    return errors


# RecIS's HashtableImpl surface lives in nn (nn/modules/hashtable_impl.py); backend speaks
# TorchRec-style names only
RECIS_NAMES = {"HashtableImpl", "hashtable_tag", "Slot", "SlotGroup", "slot_group", "embedding_lookup",
               "clear_id", "append_filter_slot", "append_step_filter_slot", "is_hashtable"}
# still defined in backend, each naming its issue item
RECIS_NAMES_ALLOWED: set = set()


def test_backend_defines_no_recis_names():
    found = []
    for mod, path in _modules():
        if _package(mod) != "backend":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                names = [node.name]
            elif isinstance(node, ast.Assign):
                names = [t.id for t in node.targets if isinstance(t, ast.Name)]
            found += [f"{_rel(path)}:{node.lineno}: {n}" for n in names
                      if n in RECIS_NAMES and (mod, n) not in RECIS_NAMES_ALLOWED]
    assert not found, "RecIS names in backend (they belong in nn/):\n" + "\n".join(found)


def test_every_package_has_a_layer():
    pkgs = {_package(m) for m, _ in _modules()}
    missing = sorted(p for p in pkgs if p not in LAYERS and p not in APART)
    assert not missing, f"packages without a layer in tests/unit/test_import_layering.py: {missing}"


def test_imports_follow_the_layers():
    errors = [e for m, p in _modules() for e in _layer_errors(m, p)]
    assert not errors, "layering violations:\n" + "\n".join(errors)


def test_no_private_reach_arounds():
    errors = [e for m, p in _modules() for e in _reach_errors(m, p)]
    assert not errors, "private reach-arounds:\n" + "\n".join(errors)


def test_importing_features_loads_nothing_above_it():
    """At run time too: ``recis_compat.features`` (layer 3) loads no module of nn or above."""
    import subprocess
    import sys
    code = ("import sys, recis_compat.features, recis_compat.features.feature_engine\n"
            "above = {k for k, v in %r.items() if v > 3}\n"
            "bad = sorted(m for m in sys.modules if m.startswith('recis_compat.') and m.split('.')[1] in above)\n"
            "print(bad); sys.exit(1 if bad else 0)\n" % (LAYERS,))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr[-2000:]


def test_checker_catches_upward_lazy_and_private_imports(tmp_path):
    """The checker itself: an upward import inside a function, a relative upward import, a private
    name from another package and a reach-around are each reported."""
    pkg = tmp_path / "recis_compat" / "features"
    pkg.mkdir(parents=True)
    bad = pkg / "bad.py"
    bad.write_text("def f(x):\n"
                   "    from recis_compat.nn.functional import fused_ops\n"
                   "    from ..framework import trainer\n"
                   "    from recis_compat.ops.features import _as_int_list\n"
                   "    from recis_compat.ops import features as K\n"
                   "    return K._secret, x._table.impl, getattr(x, '_dmp_wrapped_module')\n")
    layer = "\n".join(_layer_errors("recis_compat.features.bad", bad))
    assert "features (layer 3) imports nn (layer 4)" in layer
    assert "imports framework (layer 6)" in layer
    assert "private name '_as_int_list'" in layer
    reach = "\n".join(_reach_errors("recis_compat.features.bad", bad))
    assert "private '_secret' of recis_compat.ops" in reach
    assert "'_table' read from another object" in reach
    assert "'_dmp_wrapped_module' read from another object" in reach


# ------------------------------------------------------------------------------ public accessors
# The accessors that replaced the reach-arounds above, used the way the layers above use them.

def _config(name):
    import torch

    from recis_compat.backend.dynamic_table import DynamicTableConfig
    return DynamicTableConfig(name=name, embedding_dim=2, sample_rows=lambda k: torch.zeros(k, 2))


def test_backend_table_impl_has_no_recis_surface_and_the_facade_adds_it():
    import pytest
    import torch

    from recis_compat.backend.dynamic_table import DynamicTable
    from recis_compat.backend.table_impl import DynamicTableImpl
    from recis_compat.nn.modules.hashtable import HashTable
    from recis_compat.nn.modules.hashtable_impl import HashtableImpl, is_hashtable

    plain = DynamicTable(_config("lay_plain")).impl
    assert type(plain) is DynamicTableImpl and not is_hashtable(plain)
    assert not any(hasattr(plain, n) for n in ("slot_group", "embedding_lookup", "clear_id",
                                               "append_filter_slot", "hashtable_tag"))
    assert repr(plain).startswith("DynamicTableImpl('lay_plain'")
    with pytest.raises(TypeError, match="table 'lay_bad': impl_type must be DynamicTableImpl"):
        DynamicTable(_config("lay_bad"), impl_type=dict)

    ht = HashTable([2], name="lay_facade")
    impl = ht.impl
    assert isinstance(impl, HashtableImpl) and is_hashtable(impl)
    assert repr(impl).startswith("HashtableImpl('lay_facade'")
    rows, emb = impl.embedding_lookup(torch.tensor([5, 6]), False)
    assert rows.tolist() == [0, 1] and emb.shape == (2, 2)
    impl.append_step_filter_slot("step_filter", init_step=3)
    assert impl.slot_group().slot_by_name("step_filter").value()[:2].flatten().tolist() == [3, 3]
    impl.clear_id()
    assert len(impl) == 0


def test_slice_has_one_writer_that_checks_its_range():
    import pytest

    from recis_compat.backend.dynamic_table import DynamicTable
    from recis_compat.nn.modules.hashtable import HashTable, Slice

    impl = DynamicTable(_config("lay_slice")).impl
    assert impl.slice == (0, 65536, 65536)
    impl.set_slice(10, 20)
    assert impl.slice == (10, 20, 65536)
    with pytest.raises(ValueError, match=r"table 'lay_slice': slice range .* got \(20, 10, 65536\)"):
        impl.set_slice(20, 10)
    assert HashTable([2], name="lay_slice_ht", slice=Slice(0, 100, 65536)).impl.slice == (0, 100, 65536)


def test_check_ids_and_anchor_and_lookup_unique():
    import pytest
    import torch

    from recis_compat.backend.dynamic_table import DynamicTable
    from recis_compat.nn.modules.hashtable import HashTable

    t = DynamicTable(_config("lay_ids"))
    assert t.impl.check_ids(torch.tensor([[1, 2]]), "lookup").tolist() == [1, 2]
    with pytest.raises(TypeError, match="table 'lay_ids': lookup expects int64 ids, got torch.int32"):
        t.impl.check_ids(torch.tensor([1], dtype=torch.int32), "lookup")
    assert t.anchor.requires_grad and t.anchor.dim() == 0

    ht = HashTable([2], name="lay_unique")
    emb = ht.lookup_unique(torch.tensor([7, 8]))
    assert emb.shape == (2, 2) and emb.requires_grad
    assert torch.equal(ht.lookup_unique(torch.tensor([8]), readonly=True), emb[1:].detach())
    emb.sum().backward()
    assert ht.impl.has_grad()


def test_engine_table_ids_are_the_stored_keys():
    import pytest
    import torch

    from recis_compat.backend.children import encode_ids
    from recis_compat.nn.modules.embedding import EmbeddingOption
    from recis_compat.nn.modules.embedding_engine import EmbeddingEngine
    from recis_compat.ragged.tensor import RaggedTensor

    eng = EmbeddingEngine({"a": EmbeddingOption(embedding_dim=2, shared_name="lay_sa"),
                           "b": EmbeddingOption(embedding_dim=2, shared_name="lay_sb")})
    ids = torch.tensor([3, 4])
    eng({"b": RaggedTensor(ids, [torch.tensor([0, 2])])})
    impl = eng.tables()[eng.table_of("b")].hashtable.impl
    stored = eng.table_ids("b", ids)
    assert torch.equal(stored, encode_ids(ids, impl.children_info().child_index("lay_sb")))
    assert bool((impl.find_rows(stored) >= 0).all())
    assert bool((impl.find_rows(eng.table_ids("a", ids)) < 0).all())
    with pytest.raises(KeyError, match="no embedding option for feature 'zz'"):
        eng.table_of("zz")


def test_sparse_optimizer_local_step_accessor():
    import pytest

    from recis_compat.optim.sparse_adamw import SparseAdamW

    opt = SparseAdamW({}, lr=0.1)
    assert opt.local_step == 0
    opt.set_local_step(6)
    assert opt.local_step == 6
    with pytest.raises(ValueError, match="local step must be an int >= 0, got -1"):
        opt.set_local_step(-1)


def test_trainer_finds_dmp_ddp_without_private_names():
    """Under torch.distributed (gloo, world 1) the Trainer wraps the model in TorchRec's DMP and
    finds the DistributedDataParallel around the dense part (used for no_sync during gradient
    accumulation) among the model's children; without distributed there is none."""
    import subprocess
    import sys
    code = """
import os, socket, sys, torch
from torch import nn
import torch.distributed as dist
from recis_compat.framework.trainer import Trainer

class M(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(2, 1)
    def forward(self, batch):
        return self.lin(batch).sum()

assert Trainer(model=M())._ddp() is None
s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
dist.init_process_group("gloo", rank=0, world_size=1)
t = Trainer(model=M())
ddp = t._ddp()
assert isinstance(ddp, nn.parallel.DistributedDataParallel), type(ddp)
assert ddp is t.model._dmp_wrapped_module
dist.destroy_process_group()
print("ok")
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       cwd=str(ROOT))
    assert r.returncode == 0 and "ok" in r.stdout, r.stdout + r.stderr[-3000:]
