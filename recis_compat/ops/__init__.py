"""Python face of the csrc kernels.

Importing this package loads the extension and then every submodule (one per op family), each
of which registers the fake (meta) implementations and autograd of its ops and holds the
pure-PyTorch reference implementations the tests compare the kernels against.
"""
import importlib
import pkgutil

from recis_compat.ops._library import extension_path, has_cuda_kernel, load, op_names

load()

for _m in pkgutil.iter_modules(__path__):
    if not _m.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_m.name}")

__all__ = ["extension_path", "has_cuda_kernel", "load", "op_names"]
