"""``column_io`` as installed by recis-compat: an honest stand-in, not RecIS's native reader.

RecIS builds ``column_io`` (its C++ ORC reader, ``third_party/column-io``) and its docs check an
installation with ``import column_io``. In recis-compat the IO behind ``recis.io.OrcDataset`` is
``recis_compat.io`` reading ORC with pyarrow; it does not need this package. ``import column_io``
succeeds so that the install check passes, and the module says what provides the IO:

* ``column_io.__provider__`` -- ``"recis-compat"``;
* ``column_io.__version__`` -- the recis-compat version;
* ``column_io.reader`` -- ``"pyarrow <version>"`` (what reads the ORC files);
* ``column_io.dataset`` -- ``"recis_compat.io.orc_dataset.OrcDataset"`` (what ``recis.io.OrcDataset`` is);
* ``column_io.hash_types`` -- ``("farm", "murmur")``, the string hashes of
  ``OrcDataset.varlen_feature(hash_type=..., hash_bucket=...)`` (column_io's ``StringToHash``);
* ``column_io.info()`` -- all of the above as a dict.

RecIS's native classes and ops (readers, packers, the dataset ops) are **not** provided: any other
attribute raises ``AttributeError`` naming what to use instead (COMPATIBILITY.md). Importing
this package does not import torch or recis_compat.
"""
from __future__ import annotations

import sys
import types
from importlib import metadata as _metadata

__all__ = ["__provider__", "__version__", "reader", "dataset", "hash_types", "info"]

__provider__ = "recis-compat"


def _version() -> str:
    try:
        return _metadata.version("recis-compat")
    except _metadata.PackageNotFoundError:      # a source tree on sys.path, not installed
        from recis_compat.version import __version__ as v
        return v


def _pyarrow_version() -> str:
    try:
        return _metadata.version("pyarrow")
    except _metadata.PackageNotFoundError:
        return "not installed"


__version__ = _version()
reader = f"pyarrow {_pyarrow_version()}"
dataset = "recis_compat.io.orc_dataset.OrcDataset"
hash_types = ("farm", "murmur")


def info() -> dict:
    """What provides ``column_io`` here: ``{"provider", "version", "reader", "dataset",
    "hash_types", "native_ops"}`` (``native_ops`` is always False)."""
    return {"provider": __provider__, "version": __version__, "reader": reader,
            "dataset": dataset, "hash_types": list(hash_types), "native_ops": False}


def __getattr__(name: str):
    if name.startswith("__"):
        raise AttributeError(name)
    raise AttributeError(
        f"column_io.{name}: recis-compat does not provide RecIS's native column_io API; the "
        f"ORC IO is {dataset} (recis.io.OrcDataset) reading with {reader}. See COMPATIBILITY.md.")


class _ColumnIOModule(types.ModuleType):
    def __repr__(self) -> str:
        return (f"<module 'column_io' provided by {__provider__} {__version__} "
                f"(ORC IO: {dataset} over {reader}; no native column_io ops)>")


sys.modules[__name__].__class__ = _ColumnIOModule
