"""Python face of the csrc kernels.

Importing this package loads the extension. Each submodule wraps one family of ops: it
registers the fake (meta) implementation and autograd where the op is differentiable, and holds
a pure-PyTorch reference implementation that the tests compare the kernels against.
"""
from recis_compat.ops._library import extension_path, has_cuda_kernel, load, op_names

load()

from recis_compat.ops import hashing  # noqa: E402,F401  (registers fakes)

__all__ = ["extension_path", "has_cuda_kernel", "load", "op_names", "hashing"]
