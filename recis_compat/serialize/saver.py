"""``recis.serialize.saver.Saver``: writes dynamic tables and dense tensors in RecIS's sparse
checkpoint format (RecIS 1.0; see COMPATIBILITY.md).

What is written, per shard ``s`` of ``n``:

* for every table and every child (``shared_name``): an ``id`` block (int64 ``[k]``, the raw ids:
  the 12-bit child index of coalesced tables stripped) and one block per slot (``embedding``,
  optimizer moments, filter slots; row ``j`` belongs to id ``j``), keyed
  ``"<shared_name>.<slot>/part_<s>_<n>"``;
* on shard 0 only, every dense tensor as ``"<name>^ "``.

``filter_func`` receives the list of :class:`WriteBlock` (``tensor_name()``, ``slice_info()``) and
returns the blocks to write. Blocks go round-robin to ``parallel`` writers; each writer that got
at least one block writes ``model-{s*parallel+w:06d}-of-{parallel*n:06d}.safetensors`` (writers
with no block write nothing; the ``index`` lists the files that exist, so readers never guess
names). Every file is written through a temporary name, flushed, fsynced and renamed.

Merge protocol (Q16 fixed: no unbounded polling). With ``shard_num == 1`` the metadata is written
at once. Otherwise every shard writes its metadata fragment ``ckpt-<s>-of-<n>.fragment.json``
(after its data files), then

* when the default process group is initialised and its world size equals ``shard_num``: all
  ranks meet at ``torch.distributed.barrier()``; shard 0 merges; all ranks meet at a second
  barrier, so when ``save()`` returns on any rank the checkpoint is complete;
* otherwise shard 0 waits for the other fragments, up to ``timeout`` seconds (default
  ``RECIS_SAVE_TIMEOUT`` or 1800), and raises ``TimeoutError`` naming the missing shards; the
  other shards return after writing their fragment.

Shard 0 writes ``tensorkey.json``, ``torch_rank_weights_embs_table_multi_shard.json`` (every
block, RecIS's merge format: see :mod:`recis_compat.serialize.layout`), ``checksums.json``
(the checksum of every data file, computed while it was streamed to disk, and of the JSON files;
see
:mod:`recis_compat.serialize.integrity`) and, last, ``index``, then deletes the fragments. A
directory is complete once ``index`` exists.
"""
from __future__ import annotations

import concurrent.futures
import functools
import json
import logging
import os
import time
from collections import OrderedDict
from typing import Callable, Dict, Iterable, List, Mapping, Optional

import torch

from recis_compat.backend.children import decode_ids
from recis_compat.backend.table_impl import DynamicTableImpl
from recis_compat.nn.modules.hashtable_impl import is_hashtable as has_hashtable_tag
from recis_compat.serialize.integrity import HashingWriter, bytes_checksum, check_member_name, write_manifest
from recis_compat.serialize.layout import (DENSE_SLICE, INDEX_FILE, TENSORKEY_FILE, TORCH_RANK_FILE,
                                           SafetensorsEntry, atomic_write, atomic_write_bytes, atomic_write_json,
                                           data_file_name, dumps_json,
                                           dense_block_key, dtype_code, dtype_name, fragment_file_name, fsync_dir,
                                           require_int, slice_string, table_block_key, table_tensor_name,
                                           write_safetensors)

__all__ = ["Saver", "WriteBlock", "TableWriteBlock", "DenseWriteBlock", "as_table_impl"]

logger = logging.getLogger(__name__)

_CHUNK_BYTES = 32 << 20          # slot rows are gathered and written in pieces of about this size
DEFAULT_TIMEOUT = 1800.0


def _is_table(obj) -> bool:
    """A dynamic table's state: any ``DynamicTableImpl`` (RecIS's ``HashtableImpl`` included) or
    an object carrying RecIS's ``hashtable_tag``."""
    return isinstance(obj, DynamicTableImpl) or has_hashtable_tag(obj)


def as_table_impl(name: str, obj) -> DynamicTableImpl:
    """The table state of ``obj``: a HashtableImpl itself, or a module with an ``impl`` (HashTable)."""
    if _is_table(obj):
        return obj
    impl = getattr(obj, "impl", None)
    if impl is not None and _is_table(impl):
        return impl
    raise TypeError(f"hashtables[{name!r}] is a {type(obj).__name__}, not a dynamic table; pass "
                    "filter_out_sparse_param(model) (dense tensors go to tensors=)")


# ------------------------------------------------------------------------------ write blocks
class WriteBlock:
    """One tensor to write; what ``filter_func`` sees. ``tensor_name()`` is ``"<shared>@<slot>"``
    for table blocks and the plain name for dense tensors; ``slice_info()`` is the slice string
    (``"00000@65536@65536"``) or ``" "`` for dense tensors."""

    def __init__(self, tensor_name: str, slice_info: str, dtype: torch.dtype, shape: List[int]):
        self._tensor_name, self._slice_info = tensor_name, slice_info
        self.dtype, self.shape = dtype, [int(s) for s in shape]

    def tensor_name(self) -> str:
        return self._tensor_name

    def slice_info(self) -> str:
        return self._slice_info

    def is_dense(self) -> bool:
        return False

    def key(self, shard_index: int, shard_num: int) -> str:
        raise NotImplementedError

    def chunks(self) -> Iterable[torch.Tensor]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._tensor_name!r}, slice={self._slice_info!r}, shape={self.shape})"


class TableWriteBlock(WriteBlock):
    """The ``id`` block or one slot block of one child of a table."""

    def __init__(self, table: str, shared_name: str, slot: str, slice_info: str, ids: torch.Tensor,
                 rows: Optional[torch.Tensor] = None, values: Optional[torch.Tensor] = None,
                 read_rows: Optional[Callable[[torch.Tensor], torch.Tensor]] = None):
        self.table, self.shared_name, self.slot = table, shared_name, slot
        self._ids, self._rows, self._values = ids, rows, values
        # read_rows(rows) -> values[rows]: the table's reader (file-backed tables count the reads
        # against their RAM budget); None: index the values tensor
        self._read = read_rows if read_rows is not None else (lambda r: values.index_select(0, r))
        if slot == "id":
            dtype, shape = torch.int64, [ids.numel()]
        else:
            dtype, shape = values.dtype, [rows.numel()] + list(values.shape[1:])
        super().__init__(table_tensor_name(shared_name, slot), slice_info, dtype, shape)

    def key(self, shard_index: int, shard_num: int) -> str:
        return table_block_key(self.tensor_name(), shard_index, shard_num)

    def chunks(self) -> Iterable[torch.Tensor]:
        if self.slot == "id":
            yield self._ids
            return
        rows = self._rows.to(self._values.device)
        row_bytes = max(1, self._values[0:1].numel() * self._values.element_size()) if self._values.dim() else 1
        step = max(1, _CHUNK_BYTES // row_bytes)
        for b in range(0, rows.numel(), step):
            yield self._read(rows[b:b + step])


class DenseWriteBlock(WriteBlock):
    """A dense tensor (written by shard 0 only)."""

    def __init__(self, name: str, tensor: torch.Tensor):
        self._tensor = tensor.detach()
        super().__init__(name, DENSE_SLICE, self._tensor.dtype, list(self._tensor.shape))

    def is_dense(self) -> bool:
        return True

    def key(self, shard_index: int, shard_num: int) -> str:
        return dense_block_key(self.tensor_name())

    def chunks(self) -> Iterable[torch.Tensor]:
        yield self._tensor


def table_write_blocks(name: str, impl: DynamicTableImpl) -> List[TableWriteBlock]:
    """Id and slot blocks of every child of ``impl`` (children in index order, slots in the
    table's slot order)."""
    ids, rows = impl.ids_map()
    ids, rows = ids.cpu(), rows.cpu()
    children = impl.children.children()
    if impl.children.is_coalesce():
        raw, child = decode_ids(ids)
        per_child = [(raw[child == i], rows[child == i]) for i in range(len(children))]
    else:
        per_child = [(ids, rows)] + [(ids[:0], rows[:0])] * (len(children) - 1)
    begin, end, size = impl.slice
    slc = slice_string(begin, end, size)
    out: List[TableWriteBlock] = []
    for shared, (cids, crows) in zip(children, per_child):
        out.append(TableWriteBlock(name, shared, "id", slc, cids.contiguous()))
        for slot, values in impl.storage.slots.items():
            out.append(TableWriteBlock(name, shared, slot, slc, cids, crows, values,
                                       read_rows=functools.partial(impl.read_slot, slot)))
    return out


# ------------------------------------------------------------------------------ saver
class Saver:
    """Saves dynamic tables and dense tensors of one shard (see the module docstring).

    Args:
        shard_index: this shard (rank), ``0 <= shard_index < shard_num``.
        shard_num: number of shards writing into ``path``.
        parallel: writer threads per shard (= data files per shard at most).
        path: checkpoint directory (created if missing).
        hashtables: ``{name: HashtableImpl}`` (``filter_out_sparse_param(model)``).
        tensors: ``{name: Tensor}`` dense tensors (e.g. the sparse optimizer's ``state_dict()``).
        filter_func: ``f(list of WriteBlock) -> list of WriteBlock`` (drop blocks).
        timeout: seconds shard 0 waits for the other shards' fragments when no process group
            is used (default env ``RECIS_SAVE_TIMEOUT`` or 1800).
        use_barrier: ``None`` (auto: when the default process group has ``shard_num`` ranks),
            ``True`` or ``False``.
    """

    def __init__(self, shard_index: int = 0, shard_num: int = 1, parallel: int = 8, path: str = ".",
                 hashtables: Optional[dict] = None, tensors: Optional[dict] = None, filter_func=lambda x: x,
                 *, timeout: Optional[float] = None, use_barrier: Optional[bool] = None) -> None:
        require_int(shard_num, "Saver: shard_num", 1)
        require_int(shard_index, "Saver: shard_index", 0)
        require_int(parallel, "Saver: parallel", 1)
        if shard_index >= shard_num:
            raise ValueError(f"Saver: shard_index {shard_index} must be < shard_num {shard_num}")
        if hashtables is None:
            hashtables = {}
        if tensors is None or (isinstance(tensors, (list, tuple)) and not tensors):
            tensors = {}
        if not isinstance(hashtables, Mapping):
            raise TypeError(f"Saver: hashtables must be a dict {{name: table}}, got {type(hashtables).__name__}")
        if not isinstance(tensors, Mapping):
            raise TypeError(f"Saver: tensors must be a dict {{name: Tensor}}, got {type(tensors).__name__}")
        if not callable(filter_func):
            raise TypeError("Saver: filter_func must be callable")
        if timeout is None:
            timeout = float(os.environ.get("RECIS_SAVE_TIMEOUT", DEFAULT_TIMEOUT))
        if not timeout >= 0:
            raise ValueError(f"Saver: timeout must be >= 0, got {timeout}")
        self._shard_index, self._shard_num, self._parallel = shard_index, shard_num, parallel
        self._path = os.fspath(path)
        self._hashtables: "OrderedDict[str, DynamicTableImpl]" = OrderedDict(
            (k, as_table_impl(k, v)) for k, v in hashtables.items())
        for k, v in tensors.items():
            if not isinstance(v, torch.Tensor):
                raise TypeError(f"Saver: tensors[{k!r}] is a {type(v).__name__}, not a Tensor")
        self._tensors = OrderedDict(tensors)
        self._filter_func = filter_func
        self._timeout = float(timeout)
        self._use_barrier = use_barrier

    # ------------------------------------------------------------------ blocks
    def make_write_blocks(self) -> List[WriteBlock]:
        """Every block this shard would write, before ``filter_func``: tables (dict order;
        a table listed twice is written once), then dense tensors on shard 0."""
        blocks: List[WriteBlock] = []
        seen = set()
        for name, impl in self._hashtables.items():
            if id(impl) in seen:
                continue
            seen.add(id(impl))
            blocks.extend(table_write_blocks(name, impl))
        if self._shard_index == 0:
            for name, t in self._tensors.items():
                blocks.append(DenseWriteBlock(name, t))
        return blocks

    # ------------------------------------------------------------------ save
    def save(self) -> None:
        """Write this shard's blocks and, on shard 0, the merged metadata."""
        os.makedirs(self._path, exist_ok=True)
        blocks = self._filter_func(self.make_write_blocks())
        if blocks is None or not isinstance(blocks, (list, tuple)):
            raise TypeError(f"Saver: filter_func must return a list of write blocks, got {type(blocks).__name__}")
        for b in blocks:
            if not isinstance(b, WriteBlock):
                raise TypeError(f"Saver: filter_func returned a {type(b).__name__}, not a write block")
        writers: List[List[WriteBlock]] = [[] for _ in range(self._parallel)]
        keys: Dict[str, WriteBlock] = {}
        for i, b in enumerate(blocks):
            key = b.key(self._shard_index, self._shard_num)
            if key in keys:
                raise ValueError(f"Saver: two blocks map to the checkpoint key {key!r} ({keys[key]!r} and {b!r}); "
                                 "every table child (shared_name) and dense tensor name must be unique")
            dtype_code(b.dtype)        # TypeError now for a dtype safetensors cannot hold
            keys[key] = b
            writers[i % self._parallel].append(b)
        meta = self._write_data(writers)
        if self._shard_num == 1:
            self._merge([meta])
        else:
            self._exchange(meta)
        fsync_dir(self._path)

    def _write_data(self, writers: List[List[WriteBlock]]) -> dict:
        jobs = [(w, blocks) for w, blocks in enumerate(writers) if blocks]
        s, n = self._shard_index, self._shard_num

        def write(job):
            w, blocks = job
            fname = data_file_name(s, self._parallel, w, n)
            entries = [SafetensorsEntry(b.key(s, n), b.dtype, b.shape, b.chunks) for b in blocks]
            out = {}

            def stream(f):
                hw = HashingWriter(f)        # checksum while writing: no second pass over the file
                out["header"] = write_safetensors(hw, entries)
                out["checksum"] = hw.hexdigest()

            atomic_write(os.path.join(self._path, fname), stream)
            return fname, blocks, out["header"], out["checksum"]

        block_index, tensorkey, torch_rank, checksums = {}, {}, {}, {}
        if len(jobs) > 1:
            with concurrent.futures.ThreadPoolExecutor(max_workers=min(len(jobs), self._parallel)) as ex:
                results = list(ex.map(write, jobs))
        else:
            results = [write(j) for j in jobs]
        for fname, blocks, header, checksum in results:
            checksums[fname] = checksum
            for b in blocks:
                key = b.key(s, n)
                block_index[key] = fname
                if b.is_dense():
                    torch_rank[key] = {"dense": True, "dimension": 0, "dtype": dtype_name(b.dtype),
                                       "is_hashmap": False, "name": key, "shape": b.shape}
                    continue
                tensorkey[key] = f"{b.tensor_name()}^{b.slice_info()}"
                if b.slot == "embedding":
                    torch_rank[key] = {"dense": False, "dimension": b.shape[-1], "dtype": dtype_name(b.dtype),
                                       "hashmap_key": table_block_key(table_tensor_name(b.shared_name, "id"), s, n),
                                       "hashmap_key_dtype": "int64", "hashmap_value": key, "is_hashmap": True,
                                       "name": key, "shape": b.shape}
                else:      # id and the other slots: the writer's entry, unchanged by RecIS's merge
                    torch_rank[key] = {"dense": False, "dtype": header[key]["dtype"], "shape": b.shape,
                                       "data_offsets": list(header[key]["data_offsets"])}
        return {"shard_index": s, "shard_num": n, "parallel": self._parallel, "block_index": block_index,
                "tensorkey": tensorkey, "torch_rank": torch_rank, "checksums": checksums}

    # ------------------------------------------------------------------ shards
    def _barrier_enabled(self) -> bool:
        if self._use_barrier is not None:
            return bool(self._use_barrier)
        import torch.distributed as dist
        return dist.is_available() and dist.is_initialized() and dist.get_world_size() == self._shard_num

    def _exchange(self, meta: dict) -> None:
        if self._shard_index != 0:     # shard 0 keeps its own metadata in memory
            atomic_write_json(os.path.join(self._path, fragment_file_name(self._shard_index, self._shard_num)), meta)
        if self._barrier_enabled():
            import torch.distributed as dist
            dist.barrier()
            err = None
            if self._shard_index == 0:
                try:
                    self._merge(self._collect(meta, min(self._timeout, 60.0)))
                except BaseException as e:   # meet the others at the barrier, then raise
                    err = e
            dist.barrier()
            if err is not None:
                raise err
        elif self._shard_index == 0:
            self._merge(self._collect(meta, self._timeout))

    def _collect(self, own: dict, timeout: float) -> List[dict]:
        """Shard 0: the fragments of all shards, waiting up to ``timeout`` seconds."""
        n = self._shard_num
        metas: Dict[int, dict] = {0: own}
        deadline = time.monotonic() + timeout
        delay = 0.01
        while True:
            for s in range(1, n):
                if s in metas:
                    continue
                path = os.path.join(self._path, fragment_file_name(s, n))
                if not os.path.exists(path):
                    continue
                with open(path, "rb") as f:
                    frag = json.loads(f.read().decode("utf-8"))
                if frag.get("shard_index") != s or frag.get("shard_num") != n:
                    raise ValueError(f"Saver: fragment {path} is from shard {frag.get('shard_index')} of "
                                     f"{frag.get('shard_num')}, expected shard {s} of {n}")
                for f in list(frag.get("block_index", {}).values()) + list(frag.get("checksums", {})):
                    check_member_name(f, f"Saver: fragment {path} of shard {s}")
                gone = sorted({f for f in frag.get("block_index", {}).values()
                               if not os.path.exists(os.path.join(self._path, f))})
                if gone:
                    raise FileNotFoundError(f"Saver: fragment {path} of shard {s} lists data files {gone} that do "
                                            f"not exist in {self._path}")
                metas[s] = frag
            missing = [s for s in range(n) if s not in metas]
            if not missing:
                break
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(
                    f"Saver (shard 0 of {n}): shards {missing} did not finish writing checkpoint {self._path} "
                    f"within {timeout:g} s (missing {[fragment_file_name(s, n) for s in missing]}); every shard "
                    f"must call Saver(shard_index=s, shard_num={n}, path=...).save() on the same directory "
                    "(set timeout= or RECIS_SAVE_TIMEOUT to wait longer)")
            time.sleep(min(delay, left))
            delay = min(delay * 2, 1.0)
        return [metas[s] for s in range(n)]

    def _merge(self, metas: List[dict]) -> None:
        """Shard 0: write ``tensorkey.json``, the torch-rank JSON and, last, ``index``."""
        block_files, tensorkey, torch_rank, checksums = {}, {}, {}, {}
        for m in metas:
            checksums.update(m.get("checksums", {}))
            for key, fname in m["block_index"].items():
                if key in block_files:
                    raise ValueError(f"Saver: checkpoint key {key!r} written by two shards")
                block_files[key] = fname
            tensorkey.update(m["tensorkey"])
            torch_rank.update(m["torch_rank"])
        file_index = {f: i for i, f in enumerate(sorted(set(block_files.values())))}
        index = {"block_index": {k: file_index[f] for k, f in block_files.items()}, "file_index": file_index}
        texts = {TENSORKEY_FILE: tensorkey, TORCH_RANK_FILE: torch_rank, INDEX_FILE: index}
        raw = {name: dumps_json(obj).encode("utf-8") for name, obj in texts.items()}
        files = {f: checksums[f] for f in file_index}
        files.update({name: bytes_checksum(data) for name, data in raw.items()})
        for name in (TENSORKEY_FILE, TORCH_RANK_FILE):
            atomic_write_bytes(os.path.join(self._path, name), raw[name])
        write_manifest(self._path, files)
        atomic_write_bytes(os.path.join(self._path, INDEX_FILE), raw[INDEX_FILE])   # last: marks completion
        for m in metas[1:]:
            try:
                os.unlink(os.path.join(self._path, fragment_file_name(m["shard_index"], self._shard_num)))
            except FileNotFoundError:
                pass
        logger.info("saved checkpoint %s: %d blocks in %d files", self._path, len(block_files), len(file_index))
