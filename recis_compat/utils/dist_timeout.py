"""One timeout and backend rule for every process group a RecIS script creates.

RecIS scripts (and our example runners) call ``torch.distributed.init_process_group()``
themselves, bare or with ``backend="nccl"``. Without a ``timeout`` torch gives gloo 30 minutes,
so one stopped or dead rank would hang the whole job that long. :func:`install` wraps
``torch.distributed.init_process_group`` so that such a call gets:

* ``timeout=timedelta(seconds=RECIS_COMPAT_DIST_TIMEOUT)`` when the caller passes none
  (default :data:`DEFAULT_TIMEOUT_S` = 600 s when the variable is unset; a caller's own
  ``timeout=`` always wins). The group timeout bounds every collective on the default group:
  TorchRec's all-to-alls of sharded tables, DDP's gradient all-reduce, the Trainer's and the
  checkpoint manager's barriers and all-reduces.
* ``backend="gloo"`` instead of ``"nccl"``, a ``"cpu:gloo,cuda:nccl"``-style map or no backend
  when the job runs on the CPU (``RECIS_COMPAT_DEVICE=cpu``, see ``recis_compat/utils/device.py``,
  or no CUDA device). Any other explicit backend (``"gloo"``, ``"mpi"``, ...) is kept.

``recis_compat.backend.sharding.init_process_group`` (our own helper) uses the same rule through
:func:`timeout_seconds` and :func:`resolve_backend`. ``import recis`` calls :func:`install`, which
also installs :mod:`recis_compat.utils.dist_exit`: a collective that fails by this timeout ends
the process with status 1 rather than a native abort at interpreter exit, and a created group
registers :mod:`recis_compat.utils.exit_drain` (gloo's worker threads finish before a normal
exit finalizes the interpreter).
"""
from __future__ import annotations

import datetime
import functools
import inspect
import os
import warnings
from typing import Optional

import torch

from recis_compat.utils import dist_exit, exit_drain
from recis_compat.utils.device import ENV_VAR as DEVICE_ENV_VAR

__all__ = ["ENV_VAR", "DEFAULT_TIMEOUT_S", "timeout_seconds", "default_timeout", "cpu_only",
           "resolve_backend", "install", "installed"]

ENV_VAR = "RECIS_COMPAT_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 600.0
_MARK = "__recis_compat_dist_timeout__"
_warned: set = set()


def timeout_seconds() -> float:
    """Seconds from ``RECIS_COMPAT_DIST_TIMEOUT`` (unset or empty: :data:`DEFAULT_TIMEOUT_S`).

    Raises:
        ValueError: the variable is not a positive finite number of seconds.
    """
    raw = os.environ.get(ENV_VAR, "").strip()
    if not raw:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not (value > 0 and value != float("inf")):
        raise ValueError(f"{ENV_VAR}={raw!r}: expected a positive number of seconds "
                         f"(e.g. {ENV_VAR}=600)")
    return value


def default_timeout() -> datetime.timedelta:
    """:func:`timeout_seconds` as the ``timedelta`` ``init_process_group`` takes."""
    return datetime.timedelta(seconds=timeout_seconds())


def cpu_only() -> bool:
    """True when collectives run on the CPU: ``RECIS_COMPAT_DEVICE=cpu`` or no CUDA device."""
    forced = os.environ.get(DEVICE_ENV_VAR, "").strip().lower()
    return forced == "cpu" or not torch.cuda.is_available()


def resolve_backend(backend) -> Optional[str]:
    """The backend to create for a requested one (a string, ``dist.Backend`` or None).

    On a CUDA job the request is returned unchanged. On a CPU job (:func:`cpu_only`): None,
    ``"nccl"`` and a device map without a usable CPU entry become ``"gloo"``; a device map
    (``"cuda:nccl,cpu:gloo"``) becomes its ``cpu`` entry; other backends are kept. An explicit
    ``"nccl"`` warns once, unless the CPU mode is installed (its startup warning names it).
    """
    if not cpu_only():
        return backend
    if backend is None:
        return "gloo"
    text = str(backend).strip().lower()
    if ":" in text:
        entries = {}
        for part in text.split(","):
            dev, sep, name = part.partition(":")
            if not sep or not dev.strip() or not name.strip():
                raise ValueError(f"init_process_group(backend={backend!r}): expected "
                                 "'<device>:<backend>' entries separated by commas")
            entries[dev.strip()] = name.strip()
        chosen = entries.get("cpu", "gloo")
        return "gloo" if chosen == "nccl" else chosen
    if text == "nccl":
        # the CPU mode's startup warning (recis_compat/utils/cpu_mode.py) already lists this mapping
        from recis_compat.utils import cpu_mode
        if text not in _warned and not cpu_mode.installed():
            _warned.add(text)
            warnings.warn(f"init_process_group(backend={backend!r}): using gloo because the job runs "
                          f"on the CPU ({DEVICE_ENV_VAR}=cpu or no CUDA device)", RuntimeWarning,
                          stacklevel=3)
        return "gloo"
    return backend


def _wrap(original):
    signature = inspect.signature(original)

    @functools.wraps(original)
    def init_process_group(*args, **kwargs):
        bound = signature.bind_partial(*args, **kwargs)
        if bound.arguments.get("timeout") is None:
            bound.arguments["timeout"] = default_timeout()
        bound.arguments["backend"] = resolve_backend(bound.arguments.get("backend"))
        result = original(*bound.args, **bound.kwargs)
        dist_exit.install()      # torch wrapped sys.excepthook just now; ours must stay outermost
        exit_drain.register()    # gloo's worker threads finish before the interpreter finalizes
        return result

    setattr(init_process_group, _MARK, original)
    return init_process_group


def installed() -> bool:
    """Whether ``torch.distributed.init_process_group`` is our wrapper."""
    import torch.distributed as dist
    return hasattr(dist.init_process_group, _MARK)


def install() -> None:
    """Wrap ``torch.distributed.init_process_group`` (and its ``distributed_c10d`` home) with the
    timeout and backend rule above. Idempotent; a no-op when torch has no distributed support.
    Code that did ``from torch.distributed import init_process_group`` before this call keeps
    torch's own function."""
    import torch.distributed as dist
    if not dist.is_available():
        return
    dist_exit.install()
    from torch.distributed import distributed_c10d
    current = dist.init_process_group
    wrapped = current if hasattr(current, _MARK) else _wrap(current)
    dist.init_process_group = wrapped
    if not hasattr(distributed_c10d.init_process_group, _MARK):
        distributed_c10d.init_process_group = wrapped
