"""``recis.common.common_config``: a process-wide JSON configuration and ODPS credentials.

* ``set_config(path=None, transforms=None)``: load the JSON file at ``path`` (``{}`` without
  one), replace every string value (in nested dicts and lists) that is a key of ``transforms``
  by the mapped value, log the result and return it.
* ``get_config(*keys, default=None)``: walk nested dicts by ``keys``; ``default`` when a key is
  missing or a level is not a dict; no keys returns the whole configuration.
* ``get_access_id()`` / ``get_access_key()``: decrypt env ``ENCODED_ODPS_ACCESS_ID`` /
  ``ENCODED_ODPS_ACCESS_KEY`` with the private key in env ``XDL_AK_PRIVATE_KEY_INTERNAL``
  (``None`` unless both are set; decrypting needs pycryptodome, see ``crypto_utils``).
"""
from __future__ import annotations

import json
import os
from typing import Any, Optional

from recis_compat.common import crypto_utils
from recis_compat.utils.logger import Logger

__all__ = ["set_config", "get_config", "get_access_id", "get_access_key"]

logger = Logger(__name__)
_CONFIG: dict = {}


def _transform(value: Any, transforms: dict) -> Any:
    if isinstance(value, dict):
        for k, v in value.items():
            value[k] = _transform(v, transforms)
        return value
    if isinstance(value, list):
        for i, v in enumerate(value):
            value[i] = _transform(v, transforms)
        return value
    if isinstance(value, str) and value in transforms:
        return transforms[value]
    return value


def set_config(path: Optional[str] = None, transforms: Optional[dict] = None) -> dict:
    global _CONFIG
    if path:
        with open(path) as f:
            cfg = json.load(f)
    else:
        cfg = {}
    if transforms:
        cfg = _transform(cfg, transforms)
    _CONFIG = cfg
    logger.info(f"Configuration : \n {json.dumps(_CONFIG, indent=2, default=str)}")
    return _CONFIG


def get_config(*keys, default=None):
    value: Any = _CONFIG
    for key in keys:
        if not isinstance(value, dict) or key not in value:
            return default
        value = value[key]
    return value


def _decode_env(name: str) -> Optional[str]:
    encoded = os.getenv(name)
    private_key = os.getenv("XDL_AK_PRIVATE_KEY_INTERNAL")
    if encoded and private_key:
        return crypto_utils.decode(encoded, private_key)
    return None


def get_access_id() -> Optional[str]:
    return _decode_env("ENCODED_ODPS_ACCESS_ID")


def get_access_key() -> Optional[str]:
    return _decode_env("ENCODED_ODPS_ACCESS_KEY")
