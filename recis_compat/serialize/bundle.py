"""Reading side of a checkpoint directory: ``index`` + ``tensorkey.json`` -> logical tensors and
their blocks; safetensors headers and data read with the ``safetensors`` package.

Every problem with the directory (missing directory or file, JSON that does not parse, an
``index`` naming a file that does not exist, a bad safetensors header, truncated data, a block
missing from its file) raises :class:`~recis_compat.serialize.layout.CheckpointError` (or its
``CheckpointNotFoundError`` subclass) naming the checkpoint directory and the file.

Every file name read from ``index`` must resolve inside the directory (no absolute names, no
``..``, no symlink leading out), else ``CheckpointError``. With ``verify=True`` (the default) a
data file is checked against ``checksums.json`` the first time it is opened
(:mod:`recis_compat.serialize.integrity`): a mismatch raises ``CheckpointCorruptError``; a
directory without ``checksums.json`` loads with one warning.
"""
from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch
from safetensors import safe_open

from recis_compat.serialize.integrity import Manifest, resolve_member
from recis_compat.serialize.layout import (DENSE_SLICE, INDEX_FILE, PART, TENSORKEY_FILE, CheckpointError,
                                           CheckpointNotFoundError, dtype_of_code, split_block_name)

__all__ = ["BlockRef", "CheckpointBundle"]


@dataclass(frozen=True)
class BlockRef:
    """One stored block of a logical tensor."""

    tensor: str      # logical name: "<shared>@<slot>" or the dense name
    slice: str       # "00000@65536@65536" or " " (dense)
    key: str         # key inside the data file
    file: str        # data file name (relative to the checkpoint directory)

    @property
    def part(self) -> str:
        """``"part_<s>_<n>"`` of a table block ("" for dense tensors)."""
        return self.key.rpartition("/")[2] if PART in self.key else ""

    def sort_key(self):
        shard = -1
        if self.part:
            try:
                shard = int(self.part.split("_")[1])
            except (IndexError, ValueError):
                pass
        return (self.slice, shard, self.key)


def _read_json(ckpt: str, name: str):
    path = os.path.join(ckpt, name)
    if not os.path.isfile(path):
        raise CheckpointNotFoundError(f"checkpoint {ckpt}: file {name!r} is missing ({path})")
    try:
        with open(path, "rb") as f:
            return json.loads(f.read().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"checkpoint {ckpt}: file {name!r} is not valid JSON ({e})") from e
    except OSError as e:
        raise CheckpointError(f"checkpoint {ckpt}: file {name!r} cannot be read ({e})") from e


class CheckpointBundle:
    """The parsed metadata of one checkpoint directory.

    Args:
        path: the directory.
        verify: check each data file against ``checksums.json`` when it is first opened.

    Attributes:
        path: the directory.
        tensors: ``{logical name: [BlockRef, ...]}`` sorted by (slice, shard).
        manifest: the parsed ``checksums.json`` (``manifest.present`` False when absent).
    """

    def __init__(self, path: str, verify: bool = True):
        self.path = os.fspath(path)
        self.verify = bool(verify)
        if not os.path.isdir(self.path):
            raise CheckpointNotFoundError(f"checkpoint directory {self.path} does not exist")
        self.manifest = Manifest(self.path)
        if self.verify:
            for name in (INDEX_FILE, TENSORKEY_FILE):
                if os.path.isfile(os.path.join(self.path, name)):
                    self.manifest.verify(name)
        index = _read_json(self.path, INDEX_FILE)
        tensorkey = _read_json(self.path, TENSORKEY_FILE)
        if not isinstance(tensorkey, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                      for k, v in tensorkey.items()):
            raise CheckpointError(f"checkpoint {self.path}: file {TENSORKEY_FILE!r} must map tensor keys to "
                                  "'<shared>@<slot>^<slice>' strings")
        file_index, block_index = self._check_index(index)
        files = {}
        for name, i in file_index.items():
            files[i] = name
        for name in files.values():
            resolve_member(self.path, name, f"checkpoint {self.path}: file_index of {INDEX_FILE!r}")
            if not os.path.isfile(os.path.join(self.path, name)):
                raise CheckpointNotFoundError(f"checkpoint {self.path}: file {name!r} listed in {INDEX_FILE!r} "
                                              "does not exist")
        self.files: List[str] = sorted(files.values())
        self.tensors: Dict[str, List[BlockRef]] = {}
        for key, fi in block_index.items():
            if fi not in files:
                raise CheckpointError(f"checkpoint {self.path}: block {key!r} in {INDEX_FILE!r} refers to file "
                                      f"number {fi}, which is not in its file_index")
            try:
                tensor, slc = split_block_name(tensorkey[key] if key in tensorkey else key)
            except ValueError as e:
                raise CheckpointError(f"checkpoint {self.path}: block {key!r}: {e}") from e
            if key not in tensorkey and slc != DENSE_SLICE:
                raise CheckpointError(f"checkpoint {self.path}: block {key!r} is neither in {TENSORKEY_FILE!r} "
                                      "nor a dense tensor key ('<name>^ ')")
            self.tensors.setdefault(tensor, []).append(BlockRef(tensor, slc, key, files[fi]))
        for refs in self.tensors.values():
            refs.sort(key=BlockRef.sort_key)
        self._headers: Dict[str, Dict[str, Tuple[str, List[int]]]] = {}
        self._lock = threading.Lock()

    def _check_index(self, index):
        ok = isinstance(index, dict) and isinstance(index.get("file_index"), dict) \
            and isinstance(index.get("block_index"), dict)
        if ok:
            fi, bi = index["file_index"], index["block_index"]
            ok = all(isinstance(k, str) and isinstance(v, int) for k, v in fi.items()) and \
                all(isinstance(k, str) and isinstance(v, int) for k, v in bi.items())
        if not ok:
            raise CheckpointError(f"checkpoint {self.path}: file {INDEX_FILE!r} must be "
                                  '{"file_index": {file: int}, "block_index": {tensor key: int}}')
        if len(set(fi.values())) != len(fi):
            raise CheckpointError(f"checkpoint {self.path}: file {INDEX_FILE!r} gives two files the same number")
        return fi, bi

    # ------------------------------------------------------------------ queries
    def has(self, tensor: str) -> bool:
        return tensor in self.tensors

    def blocks(self, tensor: str) -> List[BlockRef]:
        return list(self.tensors.get(tensor, ()))

    def header(self, file: str) -> Dict[str, Tuple[str, List[int]]]:
        """``{key: (dtype code, shape)}`` of a data file (validated by safetensors; cached)."""
        with self._lock:
            got = self._headers.get(file)
        if got is not None:
            return got
        out = {}
        with self.open(file) as f:
            for key in f.keys():
                sl = f.get_slice(key)
                out[key] = (sl.get_dtype(), list(sl.get_shape()))
        with self._lock:
            self._headers[file] = out
        return out

    def block_meta(self, ref: BlockRef) -> Tuple[torch.dtype, List[int]]:
        """``(dtype, shape)`` of a stored block (from the file header)."""
        head = self.header(ref.file)
        if ref.key not in head:
            raise CheckpointError(f"checkpoint {self.path}: file {ref.file!r} has no tensor {ref.key!r} "
                                  f"(listed in {INDEX_FILE!r})")
        code, shape = head[ref.key]
        try:
            return dtype_of_code(code), shape
        except ValueError as e:
            raise CheckpointError(f"checkpoint {self.path}: file {ref.file!r}, tensor {ref.key!r}: {e}") from e

    def open(self, file: str):
        """``safe_open`` of a data file (checked against ``checksums.json`` on first use when
        ``verify``); errors name the checkpoint and the file."""
        full = resolve_member(self.path, file, f"checkpoint {self.path}: data file")
        if not os.path.isfile(full):
            raise CheckpointNotFoundError(f"checkpoint {self.path}: data file {file!r} does not exist")
        if self.verify:
            self.manifest.verify(file)
        try:
            return _Opened(safe_open(full, framework="pt", device="cpu"), self.path, file)
        except Exception as e:   # SafetensorError (bad header, truncated data), OSError
            raise CheckpointError(f"checkpoint {self.path}: data file {file!r} is not a valid safetensors "
                                  f"file ({type(e).__name__}: {e})") from e

    def read(self, ref: BlockRef, start: Optional[int] = None, stop: Optional[int] = None, handle=None) -> torch.Tensor:
        """The block's tensor (rows ``start:stop`` when given)."""
        if handle is None:
            with self.open(ref.file) as f:
                return self.read(ref, start, stop, f)
        try:
            if start is None and stop is None:
                return handle.get_tensor(ref.key)
            return handle.get_slice(ref.key)[start:stop]
        except Exception as e:
            raise CheckpointError(f"checkpoint {self.path}: cannot read tensor {ref.key!r} from data file "
                                  f"{ref.file!r} ({type(e).__name__}: {e})") from e


class _Opened:
    """Context manager around a ``safe_open`` handle that wraps read errors."""

    def __init__(self, handle, ckpt: str, file: str):
        self._h, self._ckpt, self._file = handle, ckpt, file

    def __enter__(self):
        try:
            self._inner = self._h.__enter__()
        except Exception as e:
            raise CheckpointError(f"checkpoint {self._ckpt}: data file {self._file!r} cannot be opened "
                                  f"({type(e).__name__}: {e})") from e
        return self._inner

    def __exit__(self, *exc):
        return self._h.__exit__(*exc)
