"""CPU mode: the plain torch CUDA calls RecIS scripts make land on the CPU.

RecIS scripts start with ``torch.cuda.set_device(int(os.getenv("RANK", "-1")))``, thread setup
from ``cpu_count() // 16``, ``model = model.cuda()``, ``batch.cuda()`` and
``torch.autocast("cuda", dtype=torch.bfloat16)``. On a CPU host (``RECIS_COMPAT_DEVICE=cpu``,
see ``recis_compat/utils/device.py``) every one of those stops the script before any recis code
runs. ``import recis`` calls :func:`install` when the variable is set (``adapters/recis/__init__.py``),
which patches the calls listed in :data:`MAPPED_CALLS` and warns once, listing them.

What stays honest (:data:`UNMAPPED_CALLS`): ``torch.cuda.is_available()`` stays ``False`` and
``torch.cuda.device_count()`` stays 0 (torch, TorchRec and FBGEMM choose code paths with them; a
script that needs a GPU count should fail rather than run a CUDA code path on the CPU),
``Tensor.is_cuda`` and ``.device`` say ``cpu``. ``torch.cuda.Stream``/``Event`` and
``torch.device("cuda")`` objects themselves are not mapped; a ``torch.device("cuda")`` given as
the device of a mapped call is. TorchScript-compiled code keeps torch's own ops.

Plain torch factory calls with ``device="cuda"`` (``torch.zeros/ones/empty/full/tensor/arange/
randn/...``, ``Tensor.new_*``, ``*_like``) and ``Tensor.to("cuda")`` are mapped too: the DeepFM
step costs the same with and without the mode (``recis-compat bench train``, case "DeepFM train
step under CPU mode"; COMPATIBILITY.md). Code that bound a torch function before
:func:`install` (``from torch import zeros``) keeps torch's own function.

Without the variable on a host without CUDA, ``import recis`` calls :func:`install_hints`
instead: the script's first CUDA calls still fail, with an error naming the variable.

:func:`uninstall` restores every patched attribute (for benchmarks and tests).
"""
from __future__ import annotations

import functools
import os
import threading
import warnings
from typing import Callable, Dict, List, Tuple

import torch
from torch import nn

from recis_compat.utils import device as _device
from recis_compat.utils.device import ENV_VAR

__all__ = ["MAPPED_CALLS", "UNMAPPED_CALLS", "HINTED_CALLS", "ENV_VAR", "CudaUnavailableError", "enabled",
           "install", "uninstall", "installed", "install_hints", "hints_installed", "uninstall_hints", "maybe_install"]

_CPU = torch.device("cpu")

# torch factory functions whose ``device=`` keyword is mapped
_FACTORIES = ("zeros", "ones", "empty", "full", "tensor", "as_tensor", "arange", "range", "linspace",
              "logspace", "eye", "rand", "randn", "randint", "randperm", "empty_strided", "scalar_tensor",
              "zeros_like", "ones_like", "empty_like", "full_like", "rand_like", "randn_like",
              "randint_like")
# Tensor methods whose ``device=`` keyword is mapped
_NEW_METHODS = ("new_zeros", "new_ones", "new_empty", "new_full", "new_tensor", "new_empty_strided")

MAPPED_CALLS: Tuple[Tuple[str, str], ...] = (
    ("torch.cuda.set_device", "no-op (CPU)"),
    ("torch.cuda.current_device", "returns 0"),
    ("torch.cuda.synchronize", "no-op (CPU)"),
    ("torch.cuda.device(...) (context manager)", "no-op (CPU)"),
    ("torch.cuda.get_device_name", "returns 'cpu'"),
    ("torch.cuda.reset_peak_memory_stats", "no-op (CPU)"),
    ("Tensor.cuda", "returns the tensor on CPU"),
    ("Tensor.pin_memory", "returns the tensor unchanged (no accelerator to pin for)"),
    ("Tensor.to('cuda') / Tensor.to(device=torch.device('cuda'))", "moves to CPU (dtype and other arguments kept)"),
    ("Tensor.new_zeros/new_ones/new_empty/new_full/new_tensor(device='cuda')", "creates the tensor on CPU"),
    ("torch.zeros/ones/empty/full/tensor/as_tensor/arange/linspace/eye/rand/randn/randint/randperm"
     "/*_like(device='cuda')", "creates the tensor on CPU"),
    ("torch.load(map_location='cuda')", "loads onto the CPU (so does torch.load without map_location, "
                                        "GPU-saved tensors included)"),
    ("Module.cuda", "moves the module to CPU (Module.cpu); recis tables stay on CPU"),
    ("RaggedTensor.cuda / RaggedTensor.to('cuda')", "returns a RaggedTensor on CPU"),
    ("torch.autocast('cuda', dtype=...) / torch.amp.autocast('cuda') / torch.cuda.amp.autocast",
     "CPU autocast with the same dtype (fp16 when none is given, as on CUDA)"),
    ("torch.set_num_threads(n) / torch.set_num_interop_threads(n)", "n < 1 raised to 1"),
    ("recis API device='cuda' (OrcDataset, HashTable, EmbeddingOption, ...)", "CPU"),
    ("torch.distributed.init_process_group(backend='nccl')", "gloo"),
)

# what the mode deliberately leaves alone (listed in the startup warning too)
UNMAPPED_CALLS: Tuple[Tuple[str, str], ...] = (
    ("torch.cuda.is_available", "unchanged: False (torch/TorchRec/FBGEMM choose code paths with it)"),
    ("torch.cuda.device_count", "unchanged: 0"),
    ("torch.cuda.Stream / torch.cuda.Event / torch.cuda.get_device_properties", "not mapped: fail as on any CPU host"),
    ("device='cuda' inside TorchScript-compiled code", "not mapped: fails at run time"),
)

_lock = threading.Lock()
_saved: List[Tuple[object, str, object]] = []   # (owner, attribute, original) in patch order
_announced = False


def enabled() -> bool:
    """True when ``RECIS_COMPAT_DEVICE=cpu`` is set (case and surrounding spaces ignored)."""
    return os.environ.get(ENV_VAR, "").strip().lower() == "cpu"


def installed() -> bool:
    """Whether :func:`install` has patched torch (and :func:`uninstall` has not undone it)."""
    return bool(_saved)


def _is_cuda(dev) -> bool:
    """Whether a device argument (str, ``torch.device`` or a bare ordinal) names a CUDA device."""
    if isinstance(dev, torch.device):
        return dev.type == "cuda"
    if isinstance(dev, str):
        return dev.strip().lower().startswith("cuda")
    # a bare int device is a CUDA ordinal in torch (``x.to(0)``, ``device=0``)
    return isinstance(dev, int) and not isinstance(dev, bool)


def _map_device_kw(fn: Callable) -> Callable:
    """``fn`` with a CUDA ``device=`` keyword replaced by CPU."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        dev = kwargs.get("device")
        if dev is not None and _is_cuda(dev):
            kwargs["device"] = _CPU
        return fn(*args, **kwargs)
    wrapper.__recis_compat_cpu_mode__ = fn
    return wrapper


def _make_to(original: Callable) -> Callable:
    @functools.wraps(original)
    def to(self, *args, **kwargs):
        if args and not isinstance(args[0], (torch.dtype, torch.Tensor)) and _is_cuda(args[0]):
            args = (_CPU,) + args[1:]
        dev = kwargs.get("device")
        if dev is not None and _is_cuda(dev):
            kwargs["device"] = _CPU
        return original(self, *args, **kwargs)
    to.__recis_compat_cpu_mode__ = original
    return to


def _make_tensor_cuda(original_to: Callable) -> Callable:
    def cuda(self, device=None, non_blocking=False, memory_format=torch.preserve_format):
        """CPU mode (recis_compat/utils/cpu_mode.py): the tensor on the CPU (itself when it is)."""
        return original_to(self, _CPU, non_blocking=non_blocking, memory_format=memory_format)
    return cuda


def _make_load(original: Callable) -> Callable:
    @functools.wraps(original)
    def load(f, map_location=None, *args, **kwargs):
        # no map_location: tensors saved on a GPU would need CUDA to load; a CUDA one: mapped
        if map_location is None or _is_cuda(map_location):
            map_location = _CPU
        return original(f, map_location, *args, **kwargs)
    load.__recis_compat_cpu_mode__ = original
    return load


def _tensor_pin_memory(self, device=None):
    """CPU mode (recis_compat/utils/cpu_mode.py): nothing to pin for without an accelerator."""
    return self


def _module_cuda(self, device=None):
    """CPU mode (recis_compat/utils/cpu_mode.py): ``Module.cuda`` keeps the module on the CPU."""
    return self.cpu()


def _clamp_threads(fn: Callable) -> Callable:
    @functools.wraps(fn)
    def wrapper(n):
        # RecIS's ``cpu_count() // 16`` is 0 on hosts with fewer than 16 CPUs
        if isinstance(n, int) and not isinstance(n, bool) and n < 1:
            n = 1
        return fn(n)
    wrapper.__recis_compat_cpu_mode__ = fn
    return wrapper


def _make_autocast_init(original: Callable) -> Callable:
    @functools.wraps(original)
    def __init__(self, device_type=None, *args, **kwargs):
        if device_type is None:
            device_type = kwargs.pop("device_type")
        if isinstance(device_type, str) and device_type.strip().lower().startswith("cuda"):
            # dtype is the second positional parameter of torch.amp.autocast
            if args:
                dtype, args = args[0], args[1:]
            else:
                dtype = kwargs.pop("dtype", None)
            if dtype is None:
                dtype = torch.float16      # CUDA autocast's default
            return original(self, "cpu", dtype, *args, **kwargs)
        return original(self, device_type, *args, **kwargs)
    return __init__


def _device_enter(self):
    """``torch.cuda.device(...).__enter__`` under CPU mode: nothing to switch."""
    return self


def _device_exit(self, *exc):
    return False


_ABSENT = object()


def _patch(owner, name: str, value) -> None:
    # a class attribute inherited from a base (Tensor.to lives on TensorBase) is restored by
    # deleting the override
    original = owner.__dict__.get(name, _ABSENT) if isinstance(owner, type) else getattr(owner, name)
    _saved.append((owner, name, original))
    setattr(owner, name, value)


def _patches() -> Dict[Tuple[object, str], object]:
    """``{(owner, attribute): replacement}`` for everything in :data:`MAPPED_CALLS`."""
    from torch.amp import autocast_mode
    p: Dict[Tuple[object, str], object] = {}
    cuda = torch.cuda
    p[(cuda, "set_device")] = lambda device: None
    p[(cuda, "current_device")] = lambda: 0
    p[(cuda, "synchronize")] = lambda device=None: None
    p[(cuda, "get_device_name")] = lambda device=None: "cpu"
    p[(cuda, "reset_peak_memory_stats")] = lambda device=None: None
    p[(cuda.device, "__enter__")] = _device_enter
    p[(cuda.device, "__exit__")] = _device_exit
    original_to = torch.Tensor.__dict__.get("to", torch.Tensor.to)
    p[(torch.Tensor, "to")] = _make_to(original_to)
    p[(torch.Tensor, "cuda")] = _make_tensor_cuda(original_to)
    p[(torch.Tensor, "pin_memory")] = _tensor_pin_memory
    for name in _NEW_METHODS:
        p[(torch.Tensor, name)] = _map_device_kw(getattr(torch.Tensor, name))
    for name in _FACTORIES:
        p[(torch, name)] = _map_device_kw(getattr(torch, name))
    p[(nn.Module, "cuda")] = _module_cuda
    p[(torch, "load")] = _make_load(torch.load)
    p[(torch, "set_num_threads")] = _clamp_threads(torch.set_num_threads)
    p[(torch, "set_num_interop_threads")] = _clamp_threads(torch.set_num_interop_threads)
    p[(autocast_mode.autocast, "__init__")] = _make_autocast_init(autocast_mode.autocast.__init__)
    return p


def _register_jit_builtins(patched: Dict[Tuple[object, str], object]) -> None:
    # TorchScript resolves ``torch.zeros`` & co. through a table of builtin functions keyed by
    # the function object; register the wrappers under the originals' op names so scripted
    # code compiled after install still sees builtins (the originals stay registered).
    from torch.jit import _builtins
    table = _builtins._get_builtin_table()
    for (owner, name), fn in patched.items():
        original = getattr(fn, "__recis_compat_cpu_mode__", None)
        if owner is torch and original is not None and id(original) in table:
            _builtins._register_builtin(fn, table[id(original)])


class CudaUnavailableError(RuntimeError, AssertionError):
    """A script's call that fails on a host without CUDA while ``RECIS_COMPAT_DEVICE`` is not
    ``cpu``: a CUDA call, or RecIS's thread count of ``cpu_count() // 16`` = 0.

    Both a ``RuntimeError`` and an ``AssertionError`` (what torch raises for these calls on a
    CPU-only build), so code catching either keeps working; only the message changes.
    """


# calls whose failure on a CPU-only host :func:`install_hints` re-raises naming the variable
HINTED_CALLS: Tuple[str, ...] = ("torch.cuda.set_device", "torch.cuda.current_device",
                                 "torch.cuda.synchronize", "Tensor.cuda", "Module.cuda",
                                 "torch.set_num_threads", "torch.set_num_interop_threads")
_THREAD_CALLS = ("torch.set_num_threads", "torch.set_num_interop_threads")
_hint_saved: List[Tuple[object, str, object]] = []


def _hint_message(call: str, args: tuple) -> str:
    if call in _THREAD_CALLS:
        n = args[0] if args else "?"
        return (f"{call}({n!r}): torch needs at least 1 thread (RecIS scripts compute cpu_count() // 16, "
                f"which is 0 on hosts with fewer than 16 CPUs). Set {ENV_VAR}=cpu to run RecIS scripts on "
                f"the CPU: thread counts below 1 then become 1.")
    return _device.cuda_unavailable_message(call)


def _hinted(fn: Callable, call: str) -> Callable:
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except CudaUnavailableError:
            raise
        except (AssertionError, RuntimeError, AttributeError) as e:
            raise CudaUnavailableError(f"{_hint_message(call, args)} ({type(e).__name__}: {e})") from e
    return wrapper


def install_hints() -> bool:
    """Without the variable, on a host without CUDA: the calls in :data:`HINTED_CALLS` behave as
    before (they fail) but raise :class:`CudaUnavailableError` naming ``RECIS_COMPAT_DEVICE``
    instead of torch's ``Torch not compiled with CUDA enabled`` / ``_cuda_setDevice`` /
    ``expects a positive integer`` (torch's message is appended). Calls that succeed
    (``set_device(-1)``, ``set_num_threads(4)``) still succeed. Idempotent; nothing happens when CUDA is
    available or the CPU mode is installed. Returns whether the hints are installed."""
    with _lock:
        if _hint_saved or _saved or torch.cuda.is_available():
            return bool(_hint_saved)
        owners = {"torch.cuda.set_device": (torch.cuda, "set_device"),
                  "torch.cuda.current_device": (torch.cuda, "current_device"),
                  "torch.cuda.synchronize": (torch.cuda, "synchronize"),
                  "Tensor.cuda": (torch.Tensor, "cuda"), "Module.cuda": (nn.Module, "cuda"),
                  "torch.set_num_threads": (torch, "set_num_threads"),
                  "torch.set_num_interop_threads": (torch, "set_num_interop_threads")}
        for call in HINTED_CALLS:
            owner, name = owners[call]
            original = owner.__dict__.get(name, _ABSENT) if isinstance(owner, type) else getattr(owner, name)
            _hint_saved.append((owner, name, original))
            setattr(owner, name, _hinted(getattr(owner, name), call))
        return True


def _remove(saved: List[Tuple[object, str, object]]) -> None:
    while saved:
        owner, name, original = saved.pop()
        if original is _ABSENT:
            delattr(owner, name)
        else:
            setattr(owner, name, original)


def install(announce: bool = True) -> bool:
    """Patch torch so the calls in :data:`MAPPED_CALLS` land on the CPU. Idempotent.

    Args:
        announce: emit the one startup ``RuntimeWarning`` listing :data:`MAPPED_CALLS` (only the
            first install of the process warns).
    Returns:
        True when this call patched torch, False when it was already installed.
    """
    global _announced
    with _lock:
        if _saved:
            return False
        # installed over the hints when present (uninstall restores them)
        patched = _patches()
        for (owner, name), fn in patched.items():
            _patch(owner, name, fn)
        _register_jit_builtins(patched)
        # the RaggedTensor and recis API entries (resolve_device) follow the variable; once the
        # startup warning below has listed them it replaces their per-API warnings
        if announce and not _announced:
            _announced = True
            listing = "".join(f"\n  {call}: {effect}" for call, effect in MAPPED_CALLS + UNMAPPED_CALLS)
            warnings.warn(f"recis-compat CPU mode ({ENV_VAR}=cpu): the script's CUDA calls run on the "
                          f"CPU (recis_compat/utils/cpu_mode.py):{listing}", RuntimeWarning, stacklevel=3)
        _device.mark_announced(_announced)
    return True


def uninstall() -> None:
    """Restore every attribute :func:`install` patched (no-op when not installed)."""
    with _lock:
        if _saved:
            _device.mark_announced(False)
        _remove(_saved)


def hints_installed() -> bool:
    """Whether :func:`install_hints` is in effect."""
    return bool(_hint_saved)


def uninstall_hints() -> None:
    """Undo :func:`install_hints` (the CPU mode must not be installed over them)."""
    with _lock:
        if _saved:
            raise RuntimeError("cpu_mode.uninstall_hints: uninstall the CPU mode first")
        _remove(_hint_saved)


def maybe_install() -> bool:
    """What ``import recis`` calls: :func:`install` when :func:`enabled`, else
    :func:`install_hints` (a no-op on hosts with CUDA). Returns whether the CPU mode is
    installed afterwards."""
    if enabled():
        install()
    else:
        install_hints()
    return installed()
