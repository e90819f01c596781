"""Finding, ordering and sharding the files of a dataset (ORC, Parquet).

Discovery (deliberate differences from RecIS, listed in COMPATIBILITY.md):
  * a directory is walked recursively for names ending in the format's suffix (``.orc``;
    ``.parquet`` for ParquetDataset, so Spark's ``_SUCCESS`` / ``_metadata`` are skipped); the files of one added
    path are **sorted** by their path relative to it (RecIS keeps ``os.walk`` order, which
    depends on the file system), and added paths keep the order they were added in;
  * a path that is itself a file is read as one file (RecIS silently reads nothing);
  * a missing path raises ``FileNotFoundError`` naming it (checked when the path is added);
  * a directory (the added one or any below it) that cannot be listed raises ``OSError``
    (``PermissionError`` ...) naming it; ``os.walk`` on its own would skip it silently.

Sharding follows RecIS: file ``i`` of the full list belongs to the reader with
``i % (worker_num * sub_num) == worker_idx * sub_num + sub_id``; ``shuffle`` permutes the
reader's own list with a fixed seed of 10 (a local ``random.Random(10)``, global random state
is left alone). Files are never split between readers.
"""
from __future__ import annotations

import hashlib
import os
import random
from dataclasses import dataclass
from typing import List, Sequence

__all__ = ["DataFile", "OrcFile", "FileKind", "ORC_FILES", "check_path", "discover", "shard",
           "fingerprint"]


@dataclass(frozen=True)
class DataFile:
    """One file to read: its path, its name relative to the added root, its size in bytes."""

    path: str
    name: str
    size: int


OrcFile = DataFile  # the name the ORC reader used first


@dataclass(frozen=True)
class FileKind:
    """Which files a dataset reads: ``dataset`` and ``kind`` name them in messages
    (``"OrcDataset"``, ``"ORC"``); a walked directory keeps names ending in ``suffix``."""

    dataset: str
    kind: str
    suffix: str


ORC_FILES = FileKind("OrcDataset", "ORC", ".orc")


def check_path(path: str, files: FileKind = ORC_FILES) -> str:
    """Normalise an added path; raise ``FileNotFoundError`` naming it if it does not exist."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{files.dataset}.add_path: {path!r} does not exist")
    return path


def _size(path: str, files: FileKind) -> int:
    try:
        return os.path.getsize(path)
    except OSError as e:
        raise type(e)(e.errno, f"{files.dataset}: cannot stat {files.kind} file {path!r}: "
                               f"{e.strerror}") from e


def _walk(root: str, files: FileKind) -> List[DataFile]:
    if not os.path.isdir(root):
        return [DataFile(root, os.path.basename(root), _size(root, files))]

    def walk_error(err: OSError) -> None:
        # os.walk skips a directory it cannot list unless told otherwise: that would drop its
        # files silently, so it is an error naming the directory
        path = err.filename if err.filename is not None else "?"
        raise type(err)(err.errno, f"{files.dataset}: cannot list directory {path!r} while "
                                   f"looking for {files.kind} files: {err.strerror}") from err

    found = []
    for dirpath, dirnames, filenames in os.walk(root, onerror=walk_error):
        dirnames.sort()
        for fn in filenames:
            if fn.endswith(files.suffix):
                full = os.path.join(dirpath, fn)
                found.append(DataFile(full, os.path.relpath(full, root), _size(full, files)))
    found.sort(key=lambda f: f.name)
    return found


def discover(paths: Sequence[str], files: FileKind = ORC_FILES) -> List[DataFile]:
    """Every ``files.suffix`` file under ``paths`` (in the order described in the module
    docstring)."""
    out: List[DataFile] = []
    for p in paths:
        check_path(p, files)
        out.extend(_walk(p, files))
    return out


def shard(files: Sequence[DataFile], worker_idx: int, worker_num: int, sub_id: int,
          sub_num: int, shuffle: bool) -> List[DataFile]:
    """This reader's files: RecIS's modulo rule, then the seed-10 shuffle if asked."""
    total = worker_num * sub_num
    mine = worker_idx * sub_num + sub_id
    out = [f for i, f in enumerate(files) if i % total == mine]
    if shuffle:
        random.Random(10).shuffle(out)
    return out


def fingerprint(files: Sequence[DataFile]) -> str:
    """A short digest of an ordered file list (relative names and sizes), for IO states."""
    h = hashlib.sha1()
    for f in files:
        h.update(f"{f.name}\t{f.size}\n".encode())
    return h.hexdigest()[:16]
