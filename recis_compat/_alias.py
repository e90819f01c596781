"""Module aliasing: makes ``<alias>.x.y`` the very same module object as ``<target>.x.y``.

The ``recis`` package (``adapters/recis``) installs this so that RecIS scripts importing
``recis.io.orc_dataset`` get ``recis_compat.io.orc_dataset`` itself -- same classes, same
module state -- rather than a copy.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys


class _AliasLoader(importlib.abc.Loader):
    def __init__(self, target_name: str):
        self._target_name = target_name
        self._target_spec = None

    def create_module(self, spec):
        module = importlib.import_module(self._target_name)
        self._target_spec = module.__spec__
        return module

    def exec_module(self, module):
        # the import machinery stamped the alias spec on the shared module; put the real one back
        if self._target_spec is not None:
            module.__spec__ = self._target_spec
            module.__name__ = self._target_name
            module.__loader__ = self._target_spec.loader
            if self._target_spec.submodule_search_locations is not None:
                module.__package__ = self._target_name
            else:
                module.__package__ = self._target_name.rpartition(".")[0]


class AliasFinder(importlib.abc.MetaPathFinder):
    """Resolves ``alias.<rest>`` to ``target.<rest>``."""

    def __init__(self, alias: str, target: str):
        self.alias = alias
        self.target = target

    def find_spec(self, fullname, path=None, target=None):
        if not fullname.startswith(self.alias + "."):
            return None
        target_name = self.target + fullname[len(self.alias):]
        try:
            found = importlib.util.find_spec(target_name)
        except ModuleNotFoundError:
            found = None
        if found is None:
            raise ModuleNotFoundError(
                f"No module named {fullname!r}: recis-compat does not provide it "
                f"(looked for {target_name!r}). Internal-only RecIS modules (ODPS, Lake, MOS) "
                f"are out of scope; see COMPATIBILITY.md.", name=fullname)
        is_pkg = found.submodule_search_locations is not None
        return importlib.util.spec_from_loader(fullname, _AliasLoader(target_name), is_package=is_pkg)


def install_alias(alias: str, target: str) -> None:
    """Install (once) the finder mapping ``alias.*`` onto ``target.*``."""
    for f in sys.meta_path:
        if isinstance(f, AliasFinder) and f.alias == alias:
            return
    sys.meta_path.insert(0, AliasFinder(alias, target))
