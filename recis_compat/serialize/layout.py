"""Names, dtypes and file helpers of RecIS's sparse checkpoint format (RecIS 1.0; see COMPATIBILITY.md).

One checkpoint directory holds:

* data files ``model-{i:06d}-of-{N:06d}.safetensors`` (standard safetensors, no ``__metadata__``),
  ``i = shard_index * parallel + writer``, ``N = parallel * shard_num``; only writers that got at
  least one block produce a file (RecIS does the same);
* ``index``: ``{"file_index": {file: int}, "block_index": {tensor key: file int}}``;
* ``tensorkey.json``: ``{table tensor key: "<shared>@<slot>^<slice>"}``;
* ``torch_rank_weights_embs_table_multi_shard.json``: one entry per block written, as RecIS's
  merge produces it (RecIS 1.0; see COMPATIBILITY.md): dense tensors become ``{name, dtype ("float32"), shape,
  dense: true, dimension: 0, is_hashmap: false}``, ``embedding`` blocks ``{name, dtype, shape,
  dense: false, dimension, hashmap_key: "<shared>.id/part_s_n", hashmap_key_dtype: "int64",
  hashmap_value, is_hashmap: true}``, and ``id`` and every other slot block stay as the writer
  produced them: ``{dtype (safetensors code, "I64"), shape, data_offsets, dense: false}``
  (``data_offsets`` as in the data file's safetensors header);
* ``checksums.json`` (not in RecIS; :mod:`recis_compat.serialize.integrity`): a checksum per file.

Tensor keys: ``"<shared_name>.<slot>/part_<shard_index>_<shard_num>"`` for table blocks,
``"<name>^ "`` for dense tensors. Slice strings: ``"<begin>@<end>@<size>"`` with begin and end
zero-padded to the width of size (``00000@32768@65536``).
"""
from __future__ import annotations

import json
import os
import threading
from typing import Callable, Iterable, List, Optional, Sequence, Tuple

import torch

__all__ = [
    "CheckpointError", "CheckpointNotFoundError", "CheckpointMismatchError", "CheckpointCorruptError",
    "INDEX_FILE", "TENSORKEY_FILE", "TORCH_RANK_FILE", "DENSE_SLICE", "SLICE_SEP", "AT", "PART",
    "slice_string", "parse_slice", "table_tensor_name", "table_block_key", "dense_block_key",
    "split_block_name", "data_file_name", "fragment_file_name", "dtype_code", "dtype_of_code",
    "dtype_name", "atomic_write", "atomic_write_bytes", "atomic_write_json", "fsync_dir", "write_safetensors",
    "dumps_json",
]

INDEX_FILE = "index"
TENSORKEY_FILE = "tensorkey.json"
TORCH_RANK_FILE = "torch_rank_weights_embs_table_multi_shard.json"
DENSE_SLICE = " "          # RecIS's "empty slice" marker of dense tensors
SLICE_SEP = "^"            # tensor name ^ slice
AT = "@"                   # shared_name @ slot (logical names); becomes "." in tensor keys
PART = "/part_"


# ------------------------------------------------------------------------------ errors
class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the targets: missing or corrupt files,
    unparsable metadata, blocks whose dtype or shape differs from the table or tensor."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """A checkpoint directory or a file it needs does not exist (also a ``FileNotFoundError``)."""


class CheckpointMismatchError(CheckpointError):
    """A stored block has another dtype or row shape than the table slot / tensor it loads into."""


class CheckpointCorruptError(CheckpointError):
    """A file's bytes do not match the checksum recorded when it was saved (``checksums.json``)."""


# ------------------------------------------------------------------------------ names
def slice_string(begin: int, end: int, size: int) -> str:
    """RecIS's ``SliceInfo::ToString``: ``00000@32768@65536``."""
    w = len(str(int(size)))
    return f"{int(begin):0{w}d}{AT}{int(end):0{w}d}{AT}{int(size)}"


def parse_slice(text: str) -> Tuple[int, int, int]:
    """``"00000@32768@65536"`` -> ``(0, 32768, 65536)``; ValueError when malformed."""
    parts = text.split(AT)
    if len(parts) != 3:
        raise ValueError(f"bad slice string {text!r} (expected '<begin>@<end>@<size>')")
    b, e, s = (int(p) for p in parts)
    if not (0 <= b <= e <= s and s > 0):
        raise ValueError(f"bad slice string {text!r} (need 0 <= begin <= end <= size, size > 0)")
    return b, e, s


def table_tensor_name(shared_name: str, slot: str) -> str:
    """Logical name of a table slot: ``"<shared_name>@<slot>"``."""
    return f"{shared_name}{AT}{slot}"


def table_block_key(tensor_name: str, shard_index: int, shard_num: int) -> str:
    """Key of a table block in the data files: every ``@`` becomes ``.`` (as RecIS) and
    ``/part_<shard_index>_<shard_num>`` is appended."""
    return f"{tensor_name.replace(AT, '.')}{PART}{int(shard_index)}_{int(shard_num)}"


def dense_block_key(name: str) -> str:
    """Key of a dense tensor: ``"<name>^ "``."""
    return f"{name}{SLICE_SEP}{DENSE_SLICE}"


def split_block_name(block_name: str) -> Tuple[str, str]:
    """``"<tensor>^<slice>"`` -> ``(tensor, slice)`` (split at the last ``^``)."""
    tensor, sep, slc = block_name.rpartition(SLICE_SEP)
    if not sep:
        raise ValueError(f"bad block name {block_name!r} (expected '<tensor>^<slice>')")
    return tensor, slc


def data_file_name(shard_index: int, parallel: int, writer: int, shard_num: int) -> str:
    i, n = int(shard_index) * int(parallel) + int(writer), int(parallel) * int(shard_num)
    return f"model-{i:06d}-of-{n:06d}.safetensors"


def fragment_file_name(shard_index: int, shard_num: int) -> str:
    """The per-shard metadata fragment that shard 0 merges (deleted after the merge)."""
    return f"ckpt-{int(shard_index):07d}-of-{int(shard_num):07d}.fragment.json"


# ------------------------------------------------------------------------------ dtypes
_CODES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
    torch.uint8: "U8", torch.bool: "BOOL",
}
for _name, _code in (("uint16", "U16"), ("uint32", "U32"), ("uint64", "U64"),
                     ("float8_e4m3fn", "F8_E4M3"), ("float8_e5m2", "F8_E5M2")):
    if hasattr(torch, _name):
        _CODES[getattr(torch, _name)] = _code
_DTYPES = {v: k for k, v in _CODES.items()}


def dtype_code(dtype: torch.dtype) -> str:
    """safetensors dtype code (``"F32"``, ``"I64"``, ...)."""
    try:
        return _CODES[dtype]
    except KeyError:
        raise TypeError(f"dtype {dtype} cannot be stored in a safetensors checkpoint") from None


def dtype_of_code(code: str) -> torch.dtype:
    try:
        return _DTYPES[code]
    except KeyError:
        raise ValueError(f"unknown safetensors dtype {code!r}") from None


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float32`` -> ``"float32"`` (the names of RecIS's metadata JSON)."""
    return str(dtype).replace("torch.", "")


# ------------------------------------------------------------------------------ files
def dumps_json(obj) -> str:
    """JSON as RecIS's nlohmann ``dump(4)``: keys sorted, 4-space indent, UTF-8."""
    return json.dumps(obj, indent=4, sort_keys=True, ensure_ascii=False)


def atomic_write(path: str, write: Callable, mode: str = "wb") -> None:
    """Write ``path`` through a temporary name in the same directory: ``write(f)``, flush,
    ``os.fsync``, ``os.replace``. A crash never leaves a partial file under ``path``."""
    tmp = f"{path}.tmp.{os.getpid()}.{threading.get_ident()}"
    try:
        with open(tmp, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def atomic_write_bytes(path: str, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def atomic_write_json(path: str, obj) -> None:
    """``dumps_json(obj)`` as UTF-8, written atomically."""
    atomic_write_bytes(path, dumps_json(obj).encode("utf-8"))


def fsync_dir(path: str) -> None:
    """fsync a directory so renames inside it are durable (best effort)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_tensor_bytes(f, t: torch.Tensor) -> int:
    t = t.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    t = t.contiguous().reshape(-1)
    if t.numel() == 0:
        return 0
    raw = t.view(torch.uint8).numpy()
    f.write(raw.data)
    return raw.nbytes


class SafetensorsEntry:
    """One tensor of a safetensors file: key, dtype, shape and a source of its bytes.

    ``chunks()`` yields CPU-convertible tensors whose bytes, concatenated in order, are the
    tensor's row-major data (lets large slot blocks be gathered and written piecewise).
    """

    def __init__(self, key: str, dtype: torch.dtype, shape: Sequence[int],
                 chunks: Callable[[], Iterable[torch.Tensor]]):
        self.key, self.dtype, self.shape, self.chunks = key, dtype, [int(s) for s in shape], chunks

    @property
    def nbytes(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n * torch.empty((), dtype=self.dtype).element_size()


def write_safetensors(f, entries: List[SafetensorsEntry]) -> dict:
    """Stream a standard safetensors file to the open binary file ``f``: 8-byte little-endian
    header length, the JSON header (no ``__metadata__``) padded with spaces to a multiple of 8,
    then the tensors' bytes back to back in ``entries`` order. Returns the header
    ``{key: {"dtype": code, "shape": [...], "data_offsets": [begin, end]}}``."""
    header, offset = {}, 0
    for e in entries:
        if e.key in header:
            raise ValueError(f"duplicate tensor key {e.key!r} in one safetensors file")
        header[e.key] = {"dtype": dtype_code(e.dtype), "shape": e.shape, "data_offsets": [offset, offset + e.nbytes]}
        offset += e.nbytes
    raw = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    f.write(len(raw).to_bytes(8, "little"))
    f.write(raw)
    for e in entries:
        written = 0
        for chunk in e.chunks():
            written += _write_tensor_bytes(f, chunk)
        if written != e.nbytes:
            raise RuntimeError(f"tensor {e.key!r}: wrote {written} bytes, the header says {e.nbytes}")
    return header


def require_int(value, what: str, minimum: Optional[int] = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{what} must be >= {minimum}, got {value}")
    return value
