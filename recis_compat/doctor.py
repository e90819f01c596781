"""Environment report behind ``recis-compat doctor``."""
from __future__ import annotations

import importlib
from typing import Dict


def _version(mod: str):
    try:
        return importlib.import_module(mod).__version__
    except Exception as e:  # noqa: BLE001 - the report says what failed
        return f"not importable ({type(e).__name__}: {e})"


def collect() -> Dict[str, object]:
    """Versions, extension status, CUDA availability and which ops have CUDA kernels."""
    import torch

    from recis_compat.version import RECIS_API_VERSION, __version__

    info: Dict[str, object] = {
        "recis_compat": __version__,
        "recis_api": RECIS_API_VERSION,
        "versions": {m: _version(m) for m in ("torch", "fbgemm_gpu", "torchrec", "pyarrow",
                                               "safetensors", "torchmetrics")},
        "cuda": {"torch_cuda_build": torch.version.cuda, "available": torch.cuda.is_available(),
                 "devices": torch.cuda.device_count()},
    }
    ext: Dict[str, object] = {"loaded": False}
    try:
        from recis_compat import ops   # importing loads the extension (an error is reported below)
        ext["path"] = ops.load()
        ext["loaded"] = True
        names = ops.op_names()
        ext["ops"] = len(names)
        ext["ops_with_cuda_kernel"] = [n for n in names if ops.has_cuda_kernel(n)]
        ext["ops_cpu_only"] = [n for n in names if not ops.has_cuda_kernel(n)]
    except Exception as e:  # noqa: BLE001
        ext["error"] = f"{type(e).__name__}: {e}"
    info["extension"] = ext
    return info
