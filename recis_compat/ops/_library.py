"""Loads the compiled csrc extension (``recis_compat/_C*.so``) into ``torch.ops.recis_compat``.

The extension has no Python module of its own: it only registers ops with the dispatcher, so
it is loaded with :func:`torch.ops.load_library`.
"""
from __future__ import annotations

import glob
import importlib.machinery
import os

import torch

_PKG_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_loaded_path: str | None = None


def extension_path() -> str | None:
    """Path of the built extension, or None when it has not been built."""
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        cand = os.path.join(_PKG_DIR, "_C" + suffix)
        if os.path.exists(cand):
            return cand
    found = sorted(glob.glob(os.path.join(_PKG_DIR, "_C*.so")))
    return found[0] if found else None


def load() -> str:
    """Load the extension once; returns its path. Raises ImportError with a fix when missing."""
    global _loaded_path
    if _loaded_path is not None:
        return _loaded_path
    path = extension_path()
    if path is None:
        raise ImportError(
            "recis_compat's C++ extension (recis_compat/_C*.so) is not built. Run `make build` "
            "(or `pip install --no-build-isolation -e .`) in the recis-compat checkout.")
    torch.ops.load_library(path)
    _loaded_path = path
    return path


def op_names() -> list[str]:
    """Names of every op registered under torch.ops.recis_compat."""
    load()
    return sorted(s.name.split("::", 1)[1] for s in torch._C._jit_get_all_schemas()
                  if s.name.startswith("recis_compat::"))


def has_cuda_kernel(name: str) -> bool:
    """True when op ``recis_compat::<name>`` has a CUDA kernel registered in this build."""
    load()
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"recis_compat::{name}", "CUDA")


def require_kernel(name: str, device: torch.device) -> None:
    """Raise RuntimeError unless op ``recis_compat::<name>`` can run on ``device`` in this build.

    CPU and meta always can (every op has a CPU kernel and a fake implementation); CUDA only when
    the extension was compiled with CUDA; any other device type never. The error names the op and
    the device, so a missing kernel is never replaced by a silent fallback.
    """
    device = torch.device(device)
    if device.type in ("cpu", "meta"):
        return
    qualified = f"recis_compat::{name}"
    if device.type == "cuda":
        if has_cuda_kernel(name):
            return
        raise RuntimeError(
            f"{qualified} has no CUDA kernel in this build (compiled without CUDA); its input is "
            f"on {device}. Rebuild recis_compat with CUDA (`make build` where nvcc is found) or "
            "move the input to the CPU.")
    raise RuntimeError(f"{qualified} has no kernel for device {device}: recis_compat ops run on "
                       "cpu and cuda only; move the input to one of them.")
