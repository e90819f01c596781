"""Integrity of checkpoint directories (not in RecIS): per-file checksums and confinement of
every path read from a checkpoint's metadata.

Checksums. Every file a save writes (data files, ``index``, ``tensorkey.json``, the torch-rank
JSON and the framework's torch files) gets a checksum, recorded in ``checksums.json`` next to
``index``::

    {"algorithm": "xxh3_64", "files": {"model-000000-of-000004.safetensors": "9f0c31d2a47be815", ...}}

``recis.serialize.Saver`` checksums each data file while streaming it to disk (no second
pass) and each metadata JSON from the bytes it writes, and writes ``checksums.json`` just
before ``index`` (``index`` still marks a complete directory); the framework Saver adds
``model.pt``, ``extra.pt``, ``io_state_<rank>.pt`` and ``io_state_count`` before publishing the
directory. The file is separate from ``index`` so that ``index``, ``tensorkey.json`` and the
torch-rank JSON stay byte-for-byte what RecIS writes: RecIS's reader opens ``index``,
``tensorkey.json`` and the data files named in ``index``, nothing else.

Readers verify a file the first time they open it (one sequential read; a file already
verified in this process with unchanged size, mtime and inode is not read again) and raise
:class:`~recis_compat.serialize.layout.CheckpointCorruptError` naming the directory and the file
when the content does not match. A directory without ``checksums.json`` (written by RecIS or by
an older recis-compat) still loads, with one warning per directory. When ``checksums.json``
exists, a file the reader needs that it does not list is an error (the directory was changed
after the save).

Algorithm: XXH3-64 (the ``xxhash`` package, a dependency in requirements.txt), chosen by
measurement: about 9 GB/s on one core against 2.7 GB/s for zlib's CRC-32 and 7 GB/s for
google-crc32c, which keeps checksumming a small part of a large table save (numbers in
docs/reliability.md). A non-cryptographic hash is enough: it detects damage (bit flips,
truncation, a partly copied file), not deliberate forgery, which would need a signature over
``checksums.json``. Readers also accept ``"crc32"`` (zlib), which writers use only when
``xxhash`` is not installed; a manifest naming an algorithm this process cannot compute is a
``CheckpointError``.

Paths. :func:`resolve_member` is the one way a name read from a checkpoint's metadata becomes a
path: it must be a plain relative name that resolves (symlinks followed) inside the directory,
else :class:`~recis_compat.serialize.layout.CheckpointError`.
"""
from __future__ import annotations

import json
import logging
import os
import threading
import warnings
import zlib
from typing import Dict, Optional

try:
    import xxhash
except ImportError:      # optional at import time; requirements.txt installs it
    xxhash = None

from recis_compat.serialize.layout import CheckpointCorruptError, CheckpointError, atomic_write_json

__all__ = ["CHECKSUM_FILE", "ALGORITHM", "ALGORITHMS", "new_hasher", "HashingWriter", "file_checksum",
           "bytes_checksum", "resolve_member", "check_member_name", "Manifest", "write_manifest", "warn_unverified"]

logger = logging.getLogger(__name__)

CHECKSUM_FILE = "checksums.json"
_READ_CHUNK = 8 << 20


class _Crc32:
    """zlib CRC-32 with the ``update`` / ``hexdigest`` interface of hashlib objects."""

    __slots__ = ("_v",)

    def __init__(self) -> None:
        self._v = 0

    def update(self, data) -> None:
        self._v = zlib.crc32(data, self._v)

    def hexdigest(self) -> str:
        return f"{self._v & 0xFFFFFFFF:08x}"


ALGORITHMS = {"crc32": _Crc32}
if xxhash is not None:
    ALGORITHMS["xxh3_64"] = xxhash.xxh3_64
ALGORITHM = "xxh3_64" if xxhash is not None else "crc32"


def new_hasher(algorithm: Optional[str] = None):
    """A fresh hasher (``update(bytes-like)``, ``hexdigest()``) of ``algorithm`` (default:
    :data:`ALGORITHM`)."""
    algorithm = algorithm or ALGORITHM
    try:
        return ALGORITHMS[algorithm]()
    except KeyError:
        raise ValueError(f"unknown checksum algorithm {algorithm!r} (known: {sorted(ALGORITHMS)})") from None


class HashingWriter:
    """Wraps a binary file: ``write`` updates the hasher, then writes. ``digest`` after the
    last write is the checksum of everything written through it."""

    def __init__(self, f, algorithm: Optional[str] = None):
        self._f, self._h = f, new_hasher(algorithm)

    def write(self, data) -> int:
        self._h.update(data)
        return self._f.write(data)

    def hexdigest(self) -> str:
        return self._h.hexdigest()


def file_checksum(path: str, algorithm: Optional[str] = None) -> str:
    """Checksum of a whole file (read in 8 MiB pieces)."""
    h = new_hasher(algorithm)
    buf = bytearray(_READ_CHUNK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while True:
            n = f.readinto(buf)
            if not n:
                break
            h.update(view[:n])
    return h.hexdigest()


def bytes_checksum(data: bytes, algorithm: Optional[str] = None) -> str:
    h = new_hasher(algorithm)
    h.update(data)
    return h.hexdigest()


# ------------------------------------------------------------------------------ paths
def check_member_name(name, what: str) -> str:
    """``name`` if it is a plain relative path without ``..`` components, else CheckpointError
    (``what`` says where the name was read, e.g. ``"checkpoint /x: file_index of 'index'"``)."""
    if not isinstance(name, str) or not name or "\x00" in name:
        raise CheckpointError(f"{what}: {name!r} is not a file name")
    parts = name.replace("\\", "/").split("/")
    if os.path.isabs(name) or name.startswith(("/", "\\")) or any(p in ("..", "") for p in parts) \
            or (os.path.splitdrive(name)[0] != ""):
        raise CheckpointError(f"{what}: {name!r} points outside the checkpoint directory (expected a plain "
                              "relative name such as 'model-000000-of-000001.safetensors')")
    return name


def resolve_member(base: str, name, what: str) -> str:
    """``base/name`` after checking that ``name`` is a plain relative name that resolves (with
    symlinks followed) inside ``base``; CheckpointError otherwise."""
    check_member_name(name, what)
    root = os.path.realpath(base)
    full = os.path.realpath(os.path.join(base, name))
    if full == root or os.path.commonpath([root, full]) != root:
        raise CheckpointError(f"{what}: {name!r} resolves to {full}, outside {root}")
    return os.path.join(base, name)


# ------------------------------------------------------------------------------ manifest
_warned: set = set()
_warned_lock = threading.Lock()
# (real path, algorithm, checksum) -> (size, mtime_ns, inode) of files verified in this process
_verified: Dict[tuple, tuple] = {}


def _stat_key(path: str) -> tuple:
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns, st.st_ino


def warn_unverified(ckpt: str, detail: str = "") -> None:
    """Warn once per directory and process that a checkpoint's files cannot be verified."""
    key = os.path.realpath(ckpt)
    with _warned_lock:
        if key in _warned:
            return
        _warned.add(key)
    msg = (f"checkpoint {ckpt} has no {CHECKSUM_FILE} (written by RecIS or by recis-compat before "
           f"checksums){detail}: it loads, but corrupted bytes in its files cannot be detected")
    warnings.warn(msg, RuntimeWarning, stacklevel=3)
    logger.warning(msg)


class Manifest:
    """The parsed ``checksums.json`` of a directory (``files`` empty and ``present`` False when
    the directory has none). :meth:`verify` checks a file once per Manifest (thread-safe)."""

    def __init__(self, ckpt: str):
        self.ckpt = os.fspath(ckpt)
        self.algorithm: Optional[str] = None
        self.files: Dict[str, str] = {}
        path = os.path.join(self.ckpt, CHECKSUM_FILE)
        self.present = os.path.isfile(path)
        self._verified: Dict[str, threading.Lock] = {}
        self._done: set = set()
        self._lock = threading.Lock()
        if not self.present:
            return
        try:
            with open(path, "rb") as f:
                data = json.loads(f.read().decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            raise CheckpointError(f"checkpoint {self.ckpt}: file {CHECKSUM_FILE!r} is not valid JSON ({e})") from e
        except OSError as e:
            raise CheckpointError(f"checkpoint {self.ckpt}: file {CHECKSUM_FILE!r} cannot be read ({e})") from e
        ok = isinstance(data, dict) and isinstance(data.get("algorithm"), str) and isinstance(data.get("files"), dict) \
            and all(isinstance(k, str) and isinstance(v, str) for k, v in data["files"].items())
        if not ok:
            raise CheckpointError(f"checkpoint {self.ckpt}: file {CHECKSUM_FILE!r} must be "
                                  '{"algorithm": str, "files": {file name: hex checksum}}')
        if data["algorithm"] not in ALGORITHMS:
            hint = " (pip install xxhash)" if data["algorithm"] == "xxh3_64" else ""
            raise CheckpointError(f"checkpoint {self.ckpt}: file {CHECKSUM_FILE!r} uses checksum algorithm "
                                  f"{data['algorithm']!r}; this process can compute {sorted(ALGORITHMS)}{hint}")
        for name in data["files"]:
            check_member_name(name, f"checkpoint {self.ckpt}: file {CHECKSUM_FILE!r}")
        self.algorithm, self.files = data["algorithm"], dict(data["files"])

    def verify(self, name: str) -> bool:
        """Check file ``name`` of the directory against its recorded checksum (once).

        Returns True when verified, False when the directory has no ``checksums.json`` (one
        warning per directory). Raises CheckpointCorruptError on a mismatch and CheckpointError
        when the manifest exists but does not list the file."""
        if not self.present:
            warn_unverified(self.ckpt)
            return False
        expected = self.files.get(name)
        if expected is None:
            raise CheckpointError(f"checkpoint {self.ckpt}: file {name!r} is not listed in {CHECKSUM_FILE!r} "
                                  "(the directory was changed after it was saved)")
        with self._lock:
            if name in self._done:
                return True
            lock = self._verified.setdefault(name, threading.Lock())
        with lock:
            if name in self._done:
                return True
            path = os.path.join(self.ckpt, name)
            try:
                key = (os.path.realpath(path), self.algorithm, expected)
                stat = _stat_key(path)
                if _verified.get(key) == stat:
                    got = expected
                else:
                    got = file_checksum(path, self.algorithm)
                    if got == expected and _stat_key(path) == stat:
                        _verified[key] = stat
            except OSError as e:
                raise CheckpointError(f"checkpoint {self.ckpt}: file {name!r} cannot be read ({e})") from e
            if got != expected:
                raise CheckpointCorruptError(
                    f"checkpoint {self.ckpt}: file {name!r} is corrupt: its {self.algorithm} checksum is {got}, "
                    f"{CHECKSUM_FILE!r} records {expected} (the bytes changed after the save; restore the file "
                    "or load another checkpoint)")
            with self._lock:
                self._done.add(name)
        return True


def write_manifest(ckpt: str, files: Dict[str, str], algorithm: Optional[str] = None) -> None:
    """Atomically write ``checksums.json`` (sorted keys, like the other metadata files)."""
    atomic_write_json(os.path.join(ckpt, CHECKSUM_FILE), {"algorithm": algorithm or ALGORITHM, "files": dict(files)})
