"""IO-state strings: where a reader stands, as JSON, and checks when loading one.

A state string is a JSON object::

    {"format": "recis_compat.orc/1", "worker_idx": 0, "worker_num": 1, "sub_id": 0,
     "sub_num": 1, "shuffle": false, "files": 8, "fingerprint": "<16 hex>",
     "file_index": 3, "row": 2000}

``file_index`` indexes this reader's own (sharded, possibly shuffled) file list and ``row`` is
the first row of that file not yet handed to the consumer. ``fingerprint`` digests that file
list (relative names and sizes), so a state cannot silently be applied to other files or to
another worker layout. ``format`` is ``recis_compat.orc/1`` for OrcDataset and
``recis_compat.parquet/1`` for ParquetDataset; a state of one is refused by the other.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Tuple

__all__ = ["ReaderIdentity", "encode", "decode", "start_position", "FORMAT", "PARQUET_FORMAT"]

FORMAT = "recis_compat.orc/1"
PARQUET_FORMAT = "recis_compat.parquet/1"
FORMATS = (FORMAT, PARQUET_FORMAT)


@dataclass(frozen=True)
class ReaderIdentity:
    """Everything a state must match to be resumable by this reader."""

    worker_idx: int
    worker_num: int
    sub_id: int
    sub_num: int
    shuffle: bool
    files: int
    fingerprint: str
    format: str = FORMAT

    def as_dict(self) -> dict:
        return {"format": self.format, "worker_idx": self.worker_idx, "worker_num": self.worker_num,
                "sub_id": self.sub_id, "sub_num": self.sub_num, "shuffle": self.shuffle,
                "files": self.files, "fingerprint": self.fingerprint}


def encode(identity: ReaderIdentity, file_index: int, row: int) -> str:
    """The state string of position ``(file_index, row)``."""
    d = identity.as_dict()
    d["file_index"] = int(file_index)
    d["row"] = int(row)
    return json.dumps(d, separators=(",", ":"))


def decode(state) -> dict:
    """Parse a state string (bytes accepted); ``ValueError`` if it is not one of ours."""
    if isinstance(state, (bytes, bytearray)):
        state = state.decode()
    try:
        d = json.loads(state)
    except (TypeError, ValueError) as e:
        raise ValueError(f"not an OrcDataset IO state nor a ParquetDataset one (expected the "
                         f"JSON string written by recis_compat's dump_io_state): "
                         f"{str(state)[:80]!r}") from e
    if not isinstance(d, dict) or d.get("format") not in FORMATS:
        raise ValueError(f"not an OrcDataset IO state nor a ParquetDataset one (format one of "
                         f"{FORMATS}): {str(state)[:80]!r}")
    return d


def start_position(state, identity: ReaderIdentity) -> Tuple[int, int]:
    """``(file_index, row)`` to resume from, after checking ``state`` fits ``identity``."""
    d = decode(state)
    mine = identity.as_dict()
    if d["format"] != identity.format:
        raise ValueError(f"IO state of format {d['format']!r} cannot resume a reader of format "
                         f"{identity.format!r} (a state of an OrcDataset resumes an OrcDataset, "
                         f"one of a ParquetDataset a ParquetDataset)")
    for key in ("worker_num", "worker_idx", "sub_num", "sub_id"):
        if d.get(key) != mine[key]:
            raise ValueError(
                f"IO state was saved by a reader with worker_idx={d.get('worker_idx')}, "
                f"worker_num={d.get('worker_num')}, sub_id={d.get('sub_id')}, "
                f"sub_num={d.get('sub_num')}; this reader has worker_idx={identity.worker_idx}, "
                f"worker_num={identity.worker_num}, sub_id={identity.sub_id}, "
                f"sub_num={identity.sub_num}. Resume needs the same worker layout.")
    if d.get("shuffle") != identity.shuffle or d.get("files") != identity.files \
            or d.get("fingerprint") != identity.fingerprint:
        raise ValueError(
            f"IO state was saved for a different file list ({d.get('files')} files, fingerprint "
            f"{d.get('fingerprint')}, shuffle={d.get('shuffle')}); this reader has "
            f"{identity.files} files, fingerprint {identity.fingerprint}, "
            f"shuffle={identity.shuffle}. Resume needs the same files (names and sizes).")
    fi, row = int(d["file_index"]), int(d["row"])
    if not 0 <= fi <= identity.files or row < 0:
        raise ValueError(f"IO state position (file {fi}, row {row}) is out of range for "
                         f"{identity.files} files")
    return fi, row
