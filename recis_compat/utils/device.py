"""Device requests on hosts without the requested device (COMPATIBILITY.md).

RecIS scripts ask for ``device="cuda"`` everywhere. On a CPU-only host our API objects accept
the request and run on the CPU with one warning when ``RECIS_COMPAT_DEVICE=cpu`` is set;
otherwise they fail with an error that names that variable. Plain torch CUDA calls of a script
(``torch.cuda.set_device``, ``model.cuda()``, ...) are mapped by ``recis_compat/utils/cpu_mode.py``,
which ``import recis`` installs when the variable is set; its startup warning then replaces the
per-API warnings of :func:`resolve_device`.
"""
from __future__ import annotations

import os
import warnings
from typing import Union

import torch

ENV_VAR = "RECIS_COMPAT_DEVICE"
_warned: set = set()
_announced = False


def mark_announced(announced: bool = True) -> None:
    """The CPU mode (``recis_compat/utils/cpu_mode.py``) is installed and has warned once at
    startup, listing every mapping: :func:`resolve_device` maps CUDA requests silently while
    ``announced`` holds (``False``: the mode was uninstalled, warn per API again)."""
    global _announced
    _announced = bool(announced)


def cuda_unavailable_message(what: str, requested="cuda") -> str:
    """The error text for a CUDA request on a host without CUDA, naming ``RECIS_COMPAT_DEVICE``."""
    return (f"{what}: device {requested} was requested but no CUDA device is available. "
            f"Set {ENV_VAR}=cpu to run RecIS scripts that ask for CUDA on the CPU.")


def resolve_device(requested: Union[str, torch.device, None], what: str) -> torch.device:
    """Map a requested device to the one we will use.

    Args:
        requested: what the user asked for (``"cpu"``, ``"cuda"``, ``"cuda:1"``, a device, None).
        what: who asked, for messages (e.g. ``"OrcDataset(device=...)"``).
    Returns:
        ``torch.device`` to use. CUDA requests become CPU only when ``RECIS_COMPAT_DEVICE=cpu``.
    Raises:
        RuntimeError: CUDA requested, no CUDA device, and ``RECIS_COMPAT_DEVICE`` is not ``cpu``.
    """
    if requested is None:
        return torch.device("cpu")
    dev = torch.device(requested)
    forced = os.environ.get(ENV_VAR, "").strip().lower()
    if dev.type == "cuda" and (forced == "cpu" or not torch.cuda.is_available()):
        if forced == "cpu":
            if what not in _warned and not _announced:
                _warned.add(what)
                warnings.warn(f"{what}: CUDA was requested; running on CPU because "
                              f"{ENV_VAR}=cpu", RuntimeWarning, stacklevel=3)
            return torch.device("cpu")
        raise RuntimeError(cuda_unavailable_message(what, dev))
    return dev
