"""``recis-compat check-script FILE.py``: will this RecIS script run on recis-compat, and why not.

Static: the script is parsed, never run. The script's own modules that it imports from its
directory (``from dataset import get_dataset`` beside ``runner.py``) are checked with it.
Reported:

* **APIs** (:class:`Usage`): every ``import recis...`` / ``from recis... import X`` and every
  attribute chain hanging off an imported recis name (``recis.nn.EmbeddingOption``,
  ``hooks.LoggerHook``), resolved against the installed ``recis`` package (the recis_compat
  aliases). A name that does not import or resolve is unsupported.
* **Findings** (:class:`Finding`), each with its file and line:

  - ``arguments``: a call of a recis class or function whose arguments do not bind to the real
    signature (``inspect.signature`` of the recis_compat object): an unknown keyword, too many
    positional arguments, a missing required argument. ``**kwargs`` parameters accept any keyword.
    Methods called on a variable assigned once from a recis class are checked the same way.
  - ``raw-op``: ``torch.ops.recis.*`` / ``torch.classes.recis.*``: RecIS's compiled ops are not
    provided (ours are ``torch.ops.recis_compat.*`` with their own schemas; COMPATIBILITY.md).
  - ``attribute``: an attribute (private ones included, ``table._something``) of a variable
    assigned from a recis class that neither the class nor its ``__init__``s provide.
  - ``cuda``: a CUDA call (``torch.cuda.*``, ``.cuda()``, ``.to("cuda")``, ``device="cuda"``,
    ``autocast("cuda")``, ``init_process_group("nccl")``) with what happens on a CPU host: the
    effect of the CPU mode (``RECIS_COMPAT_DEVICE=cpu``, ``recis_compat.utils.cpu_mode.MAPPED_CALLS``),
    "works without a GPU" for the few ``torch.cuda`` calls that do, else "needs a GPU". A call
    inside an ``if`` / conditional expression whose test mentions the device or CUDA is marked
    ``guarded`` (it runs only when the script selects CUDA).

Verdict (:class:`Report`): ``runnable`` when every API resolves, no finding other than ``cuda``
exists and, for a CPU target, every unguarded CUDA call is mapped by the CPU mode or works
without a GPU (``needs_cpu_mode`` then says whether ``RECIS_COMPAT_DEVICE=cpu`` must be set).
Static limits: values computed at run time (``device = "cuda"; x.to(device)``) are not followed.
"""
from __future__ import annotations

import ast
import fnmatch
import functools
import importlib
import inspect
import os
import re
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Set, Tuple

__all__ = ["Usage", "Finding", "Report", "CPU_SAFE_CUDA_CALLS", "check_source", "check_file",
           "analyze_source", "analyze_file", "mapped_calls"]

CPU_MODE_ENV = "RECIS_COMPAT_DEVICE"
NEEDS_GPU = "needs a GPU"

# torch.cuda calls that work on a host without CUDA, without any mapping (checked by
# tests/unit/tools/test_check_script.py on a CPU torch)
CPU_SAFE_CUDA_CALLS: Dict[str, str] = {
    "torch.cuda.is_available": "works without a GPU: returns False",
    "torch.cuda.device_count": "works without a GPU: returns 0",
    "torch.cuda.is_initialized": "works without a GPU: returns False",
    "torch.cuda.is_bf16_supported": "works without a GPU: returns False",
    "torch.cuda.manual_seed": "works without a GPU: no-op (seeds CUDA lazily)",
    "torch.cuda.manual_seed_all": "works without a GPU: no-op (seeds CUDA lazily)",
    "torch.cuda.seed": "works without a GPU: no-op (seeds CUDA lazily)",
    "torch.cuda.seed_all": "works without a GPU: no-op (seeds CUDA lazily)",
    "torch.cuda.empty_cache": "works without a GPU: no-op",
    "torch.cuda.memory_allocated": "works without a GPU: returns 0",
    "torch.cuda.max_memory_allocated": "works without a GPU: returns 0",
    "torch.cuda.memory_reserved": "works without a GPU: returns 0",
    "torch.cuda.max_memory_reserved": "works without a GPU: returns 0",
    "torch.cuda.amp.GradScaler": "works without a GPU: a disabled scaler (torch warns)",
}

# keywords and functions whose (first) argument is a device
_DEVICE_KEYWORDS = ("device", "device_type", "map_location")
_DEVICE_POSITIONAL = ("torch.autocast", "torch.amp.autocast", "torch.set_default_device",
                      "torch.get_autocast_dtype", "torch.amp.GradScaler")

_GUARD_RE = re.compile(r"cuda|gpu|device|is_available", re.IGNORECASE)


# ============================================================================== results
@dataclass
class Usage:
    """One recis API a script refers to."""

    name: str                 # dotted path, e.g. "recis.io.orc_dataset.OrcDataset"
    lines: List[int] = field(default_factory=list)
    supported: bool = True
    reason: str = ""
    file: str = ""            # the file using it (the script or one of its local modules)


@dataclass
class Finding:
    """One problem or CUDA call found in a script (module docstring for the kinds)."""

    kind: str                 # "arguments", "raw-op", "attribute" or "cuda"
    file: str
    line: int
    call: str                 # the source text of the call / attribute
    message: str
    supported: bool           # False: fails when run (for "cuda": on the report's target)
    effect: str = ""          # "cuda" only: what happens on a CPU host
    guarded: bool = False     # "cuda" only: inside a device/CUDA condition
    cpu_mode: bool = False    # "cuda" only: the CPU mode (RECIS_COMPAT_DEVICE=cpu) maps it


@dataclass
class Report:
    """Everything check-script says about one script (``--json`` prints ``to_json()``)."""

    script: str
    target: str                                  # "cpu" or "gpu"
    files: List[str]
    apis: List[Usage]
    findings: List[Finding]
    cpu_mode_available: bool

    @property
    def unsupported_apis(self) -> List[Usage]:
        return [u for u in self.apis if not u.supported]

    @property
    def problems(self) -> List[Finding]:
        """Findings that make the script fail wherever it runs (not CUDA)."""
        return [f for f in self.findings if f.kind != "cuda" and not f.supported]

    @property
    def cuda_calls(self) -> List[Finding]:
        return [f for f in self.findings if f.kind == "cuda"]

    @property
    def needs_gpu(self) -> List[Finding]:
        """Unguarded CUDA calls that neither the CPU mode maps nor work without a GPU."""
        return [f for f in self.cuda_calls if f.effect == NEEDS_GPU and not f.guarded]

    @property
    def unsupported(self) -> int:
        return len(self.unsupported_apis) + len(self.problems)

    @property
    def needs_cpu_mode(self) -> bool:
        """A CPU run must set RECIS_COMPAT_DEVICE=cpu (an unguarded call relies on the mode)."""
        return any(f.cpu_mode and not f.guarded for f in self.cuda_calls)

    @property
    def runnable(self) -> bool:
        if self.unsupported:
            return False
        return self.target == "gpu" or not self.needs_gpu

    @property
    def verdict(self) -> str:
        if not self.runnable:
            return "not runnable"
        if self.target == "cpu" and self.needs_cpu_mode:
            return f"runnable with {CPU_MODE_ENV}=cpu"
        return "runnable"

    def to_json(self) -> dict:
        from dataclasses import asdict
        return {"script": self.script, "apis": [asdict(u) for u in self.apis],
                "unsupported": self.unsupported, "target": self.target, "verdict": self.verdict,
                "runnable": self.runnable, "needs_cpu_mode": self.needs_cpu_mode,
                "needs_gpu": len(self.needs_gpu), "cpu_mode_available": self.cpu_mode_available,
                "files": self.files, "findings": [asdict(f) for f in self.findings]}


# ============================================================================== resolution
def _resolve_obj(dotted: str) -> Tuple[bool, str, object]:
    """Import the longest importable module prefix of ``dotted`` and getattr the rest."""
    parts = dotted.split(".")
    import_error = ""
    for cut in range(len(parts), 0, -1):
        modname = ".".join(parts[:cut])
        try:
            obj = importlib.import_module(modname)
        except ModuleNotFoundError as e:
            if e.name and not (modname == e.name or modname.startswith(e.name + ".")):
                # a dependency of an existing module is missing
                return False, f"importing {modname} failed: {e}", None
            import_error = import_error or str(e)
            continue
        except Exception as e:  # noqa: BLE001 - report, do not crash the checker
            return False, f"importing {modname} failed: {type(e).__name__}: {e}", None
        for i, attr in enumerate(parts[cut:]):
            if not hasattr(obj, attr):
                if i == 0 and import_error and hasattr(obj, "__path__"):
                    return False, import_error, None
                return False, f"{'.'.join(parts[:cut + i])} has no attribute {attr!r}", None
            obj = getattr(obj, attr)
        return True, "", obj
    return False, import_error or f"no module {parts[0]!r}", None


def _resolve(dotted: str) -> Tuple[bool, str]:
    ok, reason, _ = _resolve_obj(dotted)
    return ok, reason


def _signature(obj) -> Optional[inspect.Signature]:
    try:
        return inspect.signature(obj)
    except (TypeError, ValueError):
        return None


def _bind_problem(sig: inspect.Signature, call: ast.Call, skip_first: bool = False) -> Optional[str]:
    """Why the call's arguments do not bind to ``sig`` (None when they do or cannot be told)."""
    starred = any(isinstance(a, ast.Starred) for a in call.args)
    splat = any(k.arg is None for k in call.keywords)
    params = list(sig.parameters.values())
    if skip_first and params:
        params = params[1:]
    has_var_kw = any(p.kind is p.VAR_KEYWORD for p in params)
    names = {p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD, p.POSITIONAL_ONLY)}
    unknown = [k.arg for k in call.keywords if k.arg is not None and k.arg not in names]
    if unknown and not has_var_kw:
        accepted = ", ".join(p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD))
        return (f"unexpected keyword argument{'s' if len(unknown) > 1 else ''} "
                f"{', '.join(repr(u) for u in unknown)} (accepted: {accepted or 'none'})")
    if starred or splat:
        return None
    sig = sig.replace(parameters=params)
    try:
        sig.bind(*[None] * len(call.args), **{k.arg: None for k in call.keywords})
    except TypeError as e:
        return str(e)
    return None


@functools.lru_cache(maxsize=None)
def _class_attributes(cls) -> Set[str]:
    """Instance attribute names the classes of ``cls``'s MRO set on ``self`` in their source."""
    names: Set[str] = set()
    for klass in getattr(cls, "__mro__", ()):
        try:
            tree = ast.parse(inspect.getsource(klass).strip() if klass.__module__ != "builtins" else "")
        except (OSError, TypeError, SyntaxError, IndentationError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                    and node.value.id == "self" and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
            elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                    and isinstance(node.args[0].value, str):
                fn = node.func
                fname = fn.attr if isinstance(fn, ast.Attribute) else getattr(fn, "id", "")
                if fname in ("setattr", "__setattr__", "register_buffer", "register_parameter",
                             "register_module", "add_module"):
                    arg = node.args[1] if fname == "setattr" and len(node.args) > 1 else node.args[0]
                    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                        names.add(arg.value)
    return names


def _has_dynamic_getattr(cls) -> bool:
    """True when a class of the MRO (other than torch's Module / object) defines __getattr__."""
    import torch.nn
    for klass in getattr(cls, "__mro__", ()):
        if klass in (object, torch.nn.Module):
            continue
        if "__getattr__" in vars(klass):
            return True
    return False


# ============================================================================== CPU-mode table
@dataclass
class _Pattern:
    kind: str                      # "function" (dotted glob), "method" (name glob), "recis-kw"
    name: str
    constraints: List[str]         # constant values the call must pass (e.g. "cuda", "nccl")
    effect: str
    label: str


def _const_values(node: ast.AST) -> List[str]:
    """String constants a call argument stands for: "cuda", f"cuda:{i}", torch.device("cuda")."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.JoinedStr) and node.values and isinstance(node.values[0], ast.Constant):
        return [str(node.values[0].value)]
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "device" \
            and node.args:
        return _const_values(node.args[0])
    return []


def _parse_mapped(call: str, effect: str) -> List[_Pattern]:
    """``MAPPED_CALLS`` entries are readable text ("torch.zeros/ones/*_like(device='cuda')",
    "Tensor.to('cuda') / Tensor.to(device=torch.device('cuda'))", "recis API device='cuda' (...)");
    each becomes one pattern per alternative and per name."""
    patterns = []
    for alt in (a.strip() for a in call.split(" / ")):
        alt = re.sub(r"\s+\([^()]*\)$", "", alt)          # trailing remark, e.g. " (context manager)"
        m = re.fullmatch(r"([\w.*/]+)(\(.*\))?", alt)
        if m is None:
            kw = re.search(r"(\w+)='([^']*)'", alt)
            if alt.startswith("recis") and kw:
                patterns.append(_Pattern("recis-kw", kw.group(1), [kw.group(2)], effect, alt))
            continue
        head, args = m.group(1), m.group(2)
        constraints: List[str] = []
        if args:
            try:
                node = ast.parse("f" + args, mode="eval").body
            except SyntaxError:
                node = None
            if isinstance(node, ast.Call):
                for a in list(node.args) + [k.value for k in node.keywords]:
                    constraints += _const_values(a)
        first, _, rest = head.partition(".")
        if first[:1].isupper():                           # Tensor.cuda, Module.cuda, Tensor.new_zeros/...
            for name in rest.split("/"):
                patterns.append(_Pattern("method", name, constraints, effect, f"{first}.{name}"))
            continue
        prefix, _, last = head.rpartition(".")
        for name in last.split("/"):
            patterns.append(_Pattern("function", f"{prefix}.{name}", constraints, effect,
                                     f"{prefix}.{name}"))
    return patterns


def mapped_calls() -> Tuple[Optional[Tuple[Tuple[str, str], ...]], str]:
    """``(MAPPED_CALLS, "")`` from ``recis_compat.utils.cpu_mode``, or ``(None, why)``."""
    try:
        from recis_compat.utils.cpu_mode import MAPPED_CALLS
    except ImportError as e:
        return None, f"recis_compat.utils.cpu_mode is not available ({e})"
    return tuple(MAPPED_CALLS), ""


# ============================================================================== the collector

class _Collector(ast.NodeVisitor):
    """Walks one file: binds imported names, records recis uses, checks calls and CUDA calls."""

    def __init__(self, filename: str, patterns: List[_Pattern]):
        self.filename = filename
        self.patterns = patterns
        self.bound: Dict[str, str] = {}            # local name -> dotted recis path
        self.modules: Dict[str, str] = {}          # local name -> dotted module/attr of any import
        self.uses: Dict[str, Usage] = {}
        self.findings: List[Finding] = []
        self.local_imports: List[Tuple[str, int]] = []   # (module name, level)
        # per scope (module, then each function / class body): variable -> (recis class path or
        # None when it may hold anything else, line of the assignment)
        self.scopes: List[Dict[str, Tuple[Optional[str], int]]] = [{}]
        self.stored_attrs: Set[Tuple[str, str]] = set()   # (variable, attribute) the script sets
        self._guard_depth = 0
        self._seen: Set[Tuple[str, int, str]] = set()

    # ------------------------------------------------------------------ helpers
    def _use(self, dotted: str, line: int) -> None:
        self.uses.setdefault(dotted, Usage(dotted, file=self.filename)).lines.append(line)

    def _find(self, kind: str, node: ast.AST, call: str, message: str, supported: bool,
              effect: str = "", cpu_mode: bool = False) -> None:
        key = (kind, node.lineno, call)
        if key in self._seen:
            return
        self._seen.add(key)
        self.findings.append(Finding(kind, self.filename, node.lineno, call, message, supported,
                                     effect, guarded=self._guard_depth > 0, cpu_mode=cpu_mode))

    @staticmethod
    def _chain(node: ast.AST) -> Optional[List[str]]:
        names = []
        while isinstance(node, ast.Attribute):
            names.append(node.attr)
            node = node.value
        if isinstance(node, ast.Name):
            names.append(node.id)
            return list(reversed(names))
        return None

    def _dotted(self, node: ast.AST) -> Optional[str]:
        """The full dotted name of an expression built on an imported name (any package)."""
        chain = self._chain(node)
        if not chain:
            return None
        if chain[0] in self.bound:
            return ".".join([self.bound[chain[0]]] + chain[1:])
        if chain[0] in self.modules:
            return ".".join([self.modules[chain[0]]] + chain[1:])
        return None

    # ------------------------------------------------------------------ imports
    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            top = alias.name.split(".")[0]
            if alias.name == "recis" or alias.name.startswith("recis."):
                self._use(alias.name, node.lineno)
                if alias.asname:
                    self.bound[alias.asname] = alias.name
                else:
                    self.bound["recis"] = "recis"
                continue
            if alias.asname:
                self.modules[alias.asname] = alias.name
            else:
                self.modules[top] = top
            self.local_imports.append((alias.name, 0))

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        mod = node.module or ""
        if node.level == 0 and (mod == "recis" or mod.startswith("recis.")):
            for alias in node.names:
                if alias.name == "*":
                    self._use(mod, node.lineno)
                    continue
                dotted = f"{mod}.{alias.name}"
                self._use(dotted, node.lineno)
                self.bound[alias.asname or alias.name] = dotted
            return
        for alias in node.names:
            if alias.name != "*" and node.level == 0:
                self.modules[alias.asname or alias.name] = f"{mod}.{alias.name}"
            if node.level or mod:
                self.local_imports.append((mod, node.level))
                if alias.name != "*":
                    self.local_imports.append(((mod + "." if mod else "") + alias.name, node.level))

    # ------------------------------------------------------------------ guards
    def _guarded(self, test: ast.AST, branches: Iterable[Iterable[ast.AST]]) -> None:
        self.visit(test)
        guard = bool(_GUARD_RE.search(ast.unparse(test)))
        self._guard_depth += guard
        for branch in branches:
            for child in branch:
                self.visit(child)
        self._guard_depth -= guard

    def visit_If(self, node: ast.If) -> None:
        self._guarded(node.test, [node.body, node.orelse])

    def visit_IfExp(self, node: ast.IfExp) -> None:
        self._guarded(node.test, [[node.body], [node.orelse]])

    # ------------------------------------------------------------------ assignments
    def visit_Assign(self, node: ast.Assign) -> None:
        cls = None
        if isinstance(node.value, ast.Call):
            dotted = self._dotted(node.value.func)
            if dotted and (dotted == "recis" or dotted.startswith("recis.")):
                ok, _, obj = _resolve_obj(dotted)
                if ok and inspect.isclass(obj):
                    cls = dotted
        for target in node.targets:
            if isinstance(target, ast.Name):
                name = target.id
                self._bind(name, cls, node.lineno)
            else:
                self.visit(target)
        self.visit(node.value)

    def _bind(self, name: str, cls: Optional[str], line: int) -> None:
        """``name`` is assigned in the current scope: a recis class instance (``cls``) or
        anything else (None); two different bindings in one scope make it unknown."""
        scope = self.scopes[-1]
        if name in scope and scope[name][0] != cls:
            scope[name] = (None, scope[name][1])
        elif name not in scope:
            scope[name] = (cls, line)

    def instance(self, name: str) -> Tuple[Optional[str], int]:
        """(recis class path, line) of what ``name`` holds here, or (None, 0)."""
        for scope in reversed(self.scopes):
            if name in scope:
                return scope[name]
        return None, 0

    def visit_Name(self, node: ast.Name) -> None:
        if isinstance(node.ctx, (ast.Store, ast.Del)):
            self._bind(node.id, None, node.lineno)

    def _scoped(self, node: ast.AST, inner: Iterable[ast.AST], outer: Iterable[ast.AST]) -> None:
        for child in outer:
            self.visit(child)
        self.scopes.append({})
        for child in inner:
            self.visit(child)
        self.scopes.pop()

    def visit_FunctionDef(self, node) -> None:
        a = node.args
        params = a.posonlyargs + a.args + a.kwonlyargs + [p for p in (a.vararg, a.kwarg) if p]
        outer = list(node.decorator_list) + list(a.defaults) + [d for d in a.kw_defaults if d]
        self._scoped(node, [*params, *node.body], outer)
        self._bind(node.name, None, node.lineno)

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Lambda(self, node: ast.Lambda) -> None:
        a = node.args
        params = a.posonlyargs + a.args + a.kwonlyargs + [p for p in (a.vararg, a.kwarg) if p]
        self._scoped(node, [*params, node.body], list(a.defaults) + [d for d in a.kw_defaults if d])

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self._scoped(node, node.body, list(node.decorator_list) + list(node.bases)
                     + [k.value for k in node.keywords])
        self._bind(node.name, None, node.lineno)

    def visit_arg(self, node: ast.arg) -> None:
        self._bind(node.arg, None, node.lineno)
        if node.annotation is not None:
            self.visit(node.annotation)

    # ------------------------------------------------------------------ attributes
    def visit_Attribute(self, node: ast.Attribute) -> None:
        chain = self._chain(node)
        if chain and chain[0] in self.bound:
            self._use(".".join([self.bound[chain[0]]] + chain[1:]), node.lineno)
            return  # the whole chain is recorded; do not also record its prefixes
        dotted = self._dotted(node)
        if dotted and (dotted.startswith("torch.ops.recis.") or dotted == "torch.ops.recis"
                       or dotted.startswith("torch.classes.recis.") or dotted == "torch.classes.recis"):
            text = ast.unparse(node)
            what = "op" if ".ops." in dotted else "class"
            self._find("raw-op", node, text,
                       f"{dotted}: RecIS's compiled {what}s (torch.{'ops' if what == 'op' else 'classes'}"
                       f".recis.*) are not provided; recis-compat's ops are torch.ops.recis_compat.* "
                       f"with their own schemas, reached through the recis Python API "
                       f"(COMPATIBILITY.md)", False)
            return
        if chain and len(chain) >= 2 and self.instance(chain[0])[0] \
                and (chain[0], chain[1]) not in self.stored_attrs:
            self._check_instance_attr(node, chain)
        self.generic_visit(node)

    def _check_instance_attr(self, node: ast.Attribute, chain: List[str]) -> None:
        cls_path, line = self.instance(chain[0])
        ok, _, cls = _resolve_obj(cls_path)
        if not ok or _has_dynamic_getattr(cls):
            return
        attr = chain[1]
        if hasattr(cls, attr) or attr in _class_attributes(cls):
            return
        private = " private" if attr.startswith("_") else ""
        self._find("attribute", node, f"{chain[0]}.{attr}",
                   f"{chain[0]} is a {cls_path} (assigned on line {line}); "
                   f"it has no{private} attribute {attr!r} in recis-compat", False)

    # ------------------------------------------------------------------ calls
    def visit_Call(self, node: ast.Call) -> None:
        dotted = self._dotted(node.func)
        if dotted and (dotted == "recis" or dotted.startswith("recis.")):
            self._check_recis_call(node, dotted)
        else:
            chain = self._chain(node.func)
            if chain and len(chain) == 2 and self.instance(chain[0])[0]:
                self._check_method_call(node, chain)
        self._check_cuda(node, dotted)
        self.generic_visit(node)

    def _check_recis_call(self, node: ast.Call, dotted: str) -> None:
        ok, _, obj = _resolve_obj(dotted)
        if not ok or not callable(obj):
            return
        sig = _signature(obj)
        if sig is None:
            return
        problem = _bind_problem(sig, node)
        if problem:
            self._find("arguments", node, ast.unparse(node.func) + "(...)",
                       f"{dotted}: {problem}", False)

    def _check_method_call(self, node: ast.Call, chain: List[str]) -> None:
        cls_path, _line = self.instance(chain[0])
        ok, _, cls = _resolve_obj(cls_path)
        if not ok:
            return
        raw = inspect.getattr_static(cls, chain[1], None)
        if raw is None or isinstance(raw, (staticmethod, classmethod)) or not inspect.isfunction(raw):
            return
        sig = _signature(raw)
        if sig is None:
            return
        problem = _bind_problem(sig, node, skip_first=True)
        if problem:
            self._find("arguments", node, f"{chain[0]}.{chain[1]}(...)",
                       f"{cls_path}.{chain[1]}: {problem}", False)

    # ------------------------------------------------------------------ CUDA
    def _cuda_consts(self, node: ast.Call) -> List[str]:
        vals = []
        for a in list(node.args) + [k.value for k in node.keywords if k.arg is not None]:
            vals += _const_values(a)
        return vals

    def _check_cuda(self, node: ast.Call, dotted: Optional[str]) -> None:
        method = node.func.attr if isinstance(node.func, ast.Attribute) and dotted is None else None
        consts = self._cuda_consts(node)
        device_consts = []                                   # values given as a device
        for k in node.keywords:
            if k.arg in _DEVICE_KEYWORDS:
                device_consts += _const_values(k.value)
        if method == "to" or (dotted and dotted in _DEVICE_POSITIONAL):
            for a in node.args:
                device_consts += _const_values(a)
        cuda_arg = any(v.startswith("cuda") for v in device_consts)
        is_recis = bool(dotted and (dotted == "recis" or dotted.startswith("recis.")))
        if dotted and dotted.startswith("torch.cuda.") and not dotted.startswith("torch.cuda.amp.autocast"):
            if dotted.split(".")[2][:1].isupper() and dotted not in CPU_SAFE_CUDA_CALLS:
                kind = "torch.cuda object"                # Stream, Event, ...
            else:
                kind = "torch.cuda call"
        elif dotted and dotted.startswith("torch.cuda.amp.autocast"):
            kind = "autocast"
        elif method == "cuda":
            kind = ".cuda()"
        elif dotted and dotted.endswith("init_process_group") and "nccl" in consts:
            kind = "nccl"
        elif cuda_arg and not (dotted == "torch.device"):
            kind = "device argument"
        else:
            return
        text = ast.unparse(node)
        if len(text) > 80:
            text = text[:77] + "..."
        effect, by_mode = self._effect(dotted, method, consts, is_recis)
        self._find("cuda", node, text, f"{kind}: {effect}", effect != NEEDS_GPU, effect, by_mode)

    def _effect(self, dotted: Optional[str], method: Optional[str], consts: List[str],
                is_recis: bool) -> Tuple[str, bool]:
        """(what happens on a CPU host, whether the CPU mode is what makes it work)."""
        if dotted in CPU_SAFE_CUDA_CALLS:
            return CPU_SAFE_CUDA_CALLS[dotted], False
        effects = []
        for p in self.patterns:
            if p.kind == "function":
                if not dotted or not fnmatch.fnmatchcase(dotted, p.name):
                    continue
            elif p.kind == "method":
                if not method or not fnmatch.fnmatchcase(method, p.name):
                    continue
            elif p.kind == "recis-kw":
                if not is_recis:
                    continue
            if not all(any(v == c or v.startswith(c + ":") or (c == "cuda" and v.startswith("cuda"))
                           for v in consts) for c in p.constraints):
                continue
            text = f"{p.label}: {p.effect}" if p.kind == "method" else p.effect
            if text not in effects:
                effects.append(text)
        if effects:
            return "; ".join(effects), True
        return NEEDS_GPU, False


# ============================================================================== entry points
def _local_module_file(script_dir: str, module: str, level: int, package_dir: str) -> Optional[str]:
    """The file of ``module`` when it lives beside the script (or relative to its package)."""
    if level:
        base = package_dir
        for _ in range(level - 1):
            base = os.path.dirname(base)
    else:
        base = script_dir
    if not module:
        return None
    rel = os.path.join(base, *module.split("."))
    for cand in (rel + ".py", os.path.join(rel, "__init__.py")):
        if os.path.isfile(cand):
            return os.path.abspath(cand)
    return None


def _collect(source: str, filename: str, patterns: List[_Pattern]) -> _Collector:
    tree = ast.parse(source, filename=filename)
    collector = _Collector(filename, patterns)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.ctx, (ast.Store, ast.Del)) \
                and isinstance(node.value, ast.Name):
            collector.stored_attrs.add((node.value.id, node.attr))
    collector.visit(tree)
    return collector


def _patterns() -> Tuple[List[_Pattern], bool]:
    table, _why = mapped_calls()
    if table is None:
        return [], False
    patterns: List[_Pattern] = []
    for call, effect in table:
        patterns += _parse_mapped(call, effect)
    return patterns, True


def _target(target: str) -> str:
    if target not in ("auto", "cpu", "gpu"):
        raise ValueError(f"target must be 'auto', 'cpu' or 'gpu', got {target!r}")
    if target == "auto":
        import torch
        return "gpu" if torch.cuda.is_available() else "cpu"
    return target


def analyze_source(source: str, filename: str = "<script>", *, target: str = "auto",
                   follow_local: bool = True) -> Report:
    """Check ``source`` (and, with ``follow_local`` and a real ``filename``, the modules it
    imports from its own directory). ``target``: ``"cpu"``, ``"gpu"`` or ``"auto"`` (this host)."""
    import recis  # noqa: F401  (installs the alias hook)
    patterns, have_mode = _patterns()
    todo = [(filename, source)]
    seen: Set[str] = set()
    files: List[str] = []
    uses: List[Usage] = []
    findings: List[Finding] = []
    script_dir = os.path.dirname(os.path.abspath(filename)) if os.path.isfile(filename) else None
    while todo:
        name, text = todo.pop(0)
        key = os.path.abspath(name) if os.path.isfile(name) else name
        if key in seen:
            continue
        seen.add(key)
        files.append(name)
        collector = _collect(text, name, patterns)
        for u in collector.uses.values():
            u.supported, u.reason = _resolve(u.name)
            u.lines = sorted(set(u.lines))
            uses.append(u)
        findings += collector.findings
        if follow_local and script_dir is not None:
            pkg_dir = os.path.dirname(os.path.abspath(name))
            for mod, level in collector.local_imports:
                path = _local_module_file(script_dir, mod, level, pkg_dir)
                if path and path not in seen:
                    with open(path, encoding="utf-8") as f:
                        todo.append((os.path.relpath(path) if not os.path.isabs(name) else path, f.read()))
    uses.sort(key=lambda u: (u.name, u.file))
    findings.sort(key=lambda f: (files.index(f.file) if f.file in files else 0, f.line))
    return Report(filename, _target(target), files, uses, findings, have_mode)


def analyze_file(path: str, *, target: str = "auto", follow_local: bool = True) -> Report:
    with open(path, encoding="utf-8") as f:
        return analyze_source(f.read(), path, target=target, follow_local=follow_local)


def check_source(source: str, filename: str = "<script>") -> List[Usage]:
    """Every recis API used by ``source`` (this file only), resolved; sorted by name."""
    return analyze_source(source, filename, follow_local=False).apis


def check_file(path: str) -> List[Usage]:
    with open(path, encoding="utf-8") as f:
        return check_source(f.read(), path)
