"""``recis-compat check-script FILE.py``: which ``recis`` APIs a script uses, and which of them
recis-compat does not provide.

Static: the script is parsed, never run. Every ``import recis...`` / ``from recis... import X``
and every attribute chain hanging off an imported recis name (``recis.nn.EmbeddingOption``,
``hooks.LoggerHook``) is resolved against the installed ``recis`` package (the recis_compat
aliases). A name that does not import or resolve is reported as unsupported.
"""
from __future__ import annotations

import ast
import importlib
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple


@dataclass
class Usage:
    """One recis API a script refers to."""

    name: str                 # dotted path, e.g. "recis.io.orc_dataset.OrcDataset"
    lines: List[int] = field(default_factory=list)
    supported: bool = True
    reason: str = ""


def _resolve(dotted: str) -> Tuple[bool, str]:
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
                return False, f"importing {modname} failed: {e}"
            import_error = import_error or str(e)
            continue
        except Exception as e:  # noqa: BLE001 - report, do not crash the checker
            return False, f"importing {modname} failed: {type(e).__name__}: {e}"
        for i, attr in enumerate(parts[cut:]):
            if not hasattr(obj, attr):
                if i == 0 and import_error and hasattr(obj, "__path__"):
                    return False, import_error
                return False, f"{'.'.join(parts[:cut + i])} has no attribute {attr!r}"
            obj = getattr(obj, attr)
        return True, ""
    return False, import_error or f"no module {parts[0]!r}"


class _Collector(ast.NodeVisitor):
    """Maps local names bound to recis objects and records every dotted use."""

    def __init__(self):
        self.bound: Dict[str, str] = {}      # local name -> dotted recis path
        self.uses: Dict[str, Usage] = {}

    def _use(self, dotted: str, line: int) -> None:
        self.uses.setdefault(dotted, Usage(dotted)).lines.append(line)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if alias.name == "recis" or alias.name.startswith("recis."):
                self._use(alias.name, node.lineno)
                if alias.asname:
                    self.bound[alias.asname] = alias.name
                else:
                    self.bound["recis"] = "recis"

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

    def _chain(self, node: ast.AST) -> Optional[List[str]]:
        names = []
        while isinstance(node, ast.Attribute):
            names.append(node.attr)
            node = node.value
        if isinstance(node, ast.Name):
            names.append(node.id)
            return list(reversed(names))
        return None

    def visit_Attribute(self, node: ast.Attribute) -> None:
        chain = self._chain(node)
        if chain and chain[0] in self.bound:
            self._use(".".join([self.bound[chain[0]]] + chain[1:]), node.lineno)
            return  # the whole chain is recorded; do not also record its prefixes
        self.generic_visit(node)


def check_source(source: str, filename: str = "<script>") -> List[Usage]:
    """Every recis API used by ``source``, resolved; sorted by name."""
    tree = ast.parse(source, filename=filename)
    collector = _Collector()
    collector.visit(tree)
    import recis  # noqa: F401  (installs the alias hook)
    uses = sorted(collector.uses.values(), key=lambda u: u.name)
    for u in uses:
        u.supported, u.reason = _resolve(u.name)
        u.lines = sorted(set(u.lines))
    return uses


def check_file(path: str) -> List[Usage]:
    with open(path, encoding="utf-8") as f:
        return check_source(f.read(), path)
