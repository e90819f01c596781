"""Python face of the csrc kernels.

Importing this package loads the extension and then every submodule (one per op family), each
of which registers the fake (meta) implementations of its ops, their autograd (always
``torch.library.register_autograd``) and the typed wrappers the rest of recis_compat calls. A
wrapper never falls back to Python: a device without a kernel is an error naming the op and the
device (``_library.require_kernel``). The pure-PyTorch references the tests compare the kernels
against live in ``tests/ops/reference_kernels.py``; the plain-torch functions here
(``features.murmur64a_pair_torch``, ``features.ragged_coordinates`` / ``dense_shape``) are run-time
helpers and the features benchmark's baseline, not fallbacks.
"""
import importlib
import pkgutil

from recis_compat.ops._library import extension_path, has_cuda_kernel, load, op_names

load()

for _m in pkgutil.iter_modules(__path__):
    if not _m.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_m.name}")

__all__ = ["extension_path", "has_cuda_kernel", "load", "op_names"]
