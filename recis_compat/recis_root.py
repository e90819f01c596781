"""What the top-level ``recis`` package exports (RecIS 1.0; see COMPATIBILITY.md).

``recis.__version__`` is the RecIS version this layer is compatible with, not recis-compat's.
"""
from __future__ import annotations

import os
import platform
import sys

import torch

from recis_compat.version import RECIS_API_VERSION, __version__ as COMPAT_VERSION

__version__ = RECIS_API_VERSION
pkg_path = os.path.dirname(os.path.abspath(__file__))
lib_path = os.path.join(pkg_path, "lib")

__build_info__ = {
    "version": RECIS_API_VERSION,
    "compat_version": COMPAT_VERSION,
    "git": {k: "unknown" for k in ("branch", "commit_hash", "commit_hash_full", "commit_time",
                                    "commit_author", "commit_message", "tag")},
    "build": {
        "build_time": "unknown",
        "build_timestamp": "unknown",
        "python_version": sys.version.split()[0],
        "platform": platform.platform(),
        "hostname": "unknown",
        "build_user": "unknown",
        "internal_version": "0",
        "torch_cuda_arch_list": os.environ.get("TORCH_CUDA_ARCH_LIST", "unknown"),
        "nv_platform": "1" if torch.version.cuda else "0",
    },
}


def get_build_info() -> dict:
    """The build-information dict (same keys as RecIS's ``__build_info__``)."""
    return __build_info__
