"""``recis.framework.filesystem``: ``get_file_system(path)`` (RecIS 1.0; see COMPATIBILITY.md).

Returns an fsspec filesystem for ``path``: a plain path (or ``file://``) gives
``fsspec.filesystem("file")``. Any other ``protocol://`` raises ``NotImplementedError`` naming the
protocol, as in RecIS (whose internal build also knows ``dfs://``).
"""
from __future__ import annotations

import os

import fsspec

__all__ = ["get_file_system"]

_file_system_mapper = {"file": "file"}


def get_file_system(path):
    path = os.fspath(path)
    if isinstance(path, bytes):
        path = path.decode()
    proto = path.split("://", 1)[0] if "://" in path else "file"
    if proto not in _file_system_mapper:
        extra = " (dfs:// exists only in RecIS's internal build)" if proto == "dfs" else ""
        raise NotImplementedError(
            f"get_file_system({path!r}): protocol {proto!r} is not supported; supported: "
            f"{sorted(_file_system_mapper)}{extra}")
    return fsspec.filesystem(_file_system_mapper[proto])
