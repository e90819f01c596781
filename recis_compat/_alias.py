"""Module aliasing: makes ``<alias>.x.y`` the very same module object as ``<target>.x.y``.

The ``recis`` package (``adapters/recis``) installs this so that RecIS scripts importing
``recis.io.orc_dataset`` get ``recis_compat.io.orc_dataset`` itself -- same classes, same
module state -- rather than a copy.

``python -m recis.tools.csv_to_orc`` works too: ``runpy`` asks the loader for the module's code
(``get_code``), which is the target module's code, run as ``__main__`` (the target module
itself is not imported by that).
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys


class _AliasLoader(importlib.abc.InspectLoader):
    """Loads ``alias.x`` as the module object ``target.x``; code and source come from the
    target's own loader (what ``runpy`` / ``python -m alias.x`` and ``inspect`` need)."""

    def __init__(self, target_name: str, target_found=None):
        self._target_name = target_name
        self._target_found = target_found
        self._target_spec = None

    def _target_loader(self):
        found = self._target_found or importlib.util.find_spec(self._target_name)
        if found is None or found.loader is None:
            raise ImportError(f"recis-compat: no loader for {self._target_name!r}",
                              name=self._target_name)
        return found.loader

    def is_package(self, fullname) -> bool:
        found = self._target_found or importlib.util.find_spec(self._target_name)
        return found is not None and found.submodule_search_locations is not None

    def get_code(self, fullname):
        """The code object of the target module (its file name is the target's file)."""
        loader = self._target_loader()
        if not hasattr(loader, "get_code"):
            raise ImportError(f"recis-compat: {self._target_name!r} has no code object "
                              f"(loader {type(loader).__name__}); it cannot be run with "
                              f"'python -m {fullname}'", name=fullname)
        return loader.get_code(self._target_name)

    def get_source(self, fullname):
        loader = self._target_loader()
        get_source = getattr(loader, "get_source", None)
        return get_source(self._target_name) if get_source is not None else None

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
        spec = importlib.util.spec_from_loader(fullname, _AliasLoader(target_name, found),
                                               origin=found.origin, is_package=is_pkg)
        spec.has_location = found.has_location
        return spec


def install_alias(alias: str, target: str) -> None:
    """Install (once) the finder mapping ``alias.*`` onto ``target.*``."""
    for f in sys.meta_path:
        if isinstance(f, AliasFinder) and f.alias == alias:
            return
    sys.meta_path.insert(0, AliasFinder(alias, target))
