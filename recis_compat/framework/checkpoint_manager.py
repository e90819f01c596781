"""``recis.framework.checkpoint_manager``: Saver and CheckpointManager (contract §1.7.3).

Directory layout (RecIS's)::

    <output_dir>/checkpoint                 one ckpt_id per line; the last is the latest
    <output_dir>/ckpt_<global_step>/
        model-XXXXXX-of-YYYYYY.safetensors  tables + sparse-optimizer scalars (recis.serialize)
        index, tensorkey.json, torch_rank_weights_embs_table_multi_shard.json
        model.pt        rank 0: dense state dict (the unwrapped model's keys, tables removed)
        extra.pt        rank 0: {"global_step": tensor, "dense_optimizer": ..., <registered>}
        io_state_<rank>.pt   every rank: {"train_io": dataset.dump_io_state()}
        io_state_count  rank 0: the number of ranks that wrote io states

Atomic saves (not in RecIS): everything is written into ``<output_dir>/.ckpt_<step>.tmp`` (each
file via a temporary name, flushed and fsynced), then rank 0 renames the directory to
``ckpt_<step>`` and only then appends the id to ``checkpoint`` (rewritten atomically). A crash
at any point leaves the previous checkpoint listed and intact; a stale ``.tmp`` directory is
removed by the next save.

Integrity (not in RecIS; recis_compat/serialize/integrity.py): before publishing, rank 0 adds the
checksums of ``model.pt``, ``extra.pt``, ``io_state_<rank>.pt`` and ``io_state_count`` to the
directory's ``checksums.json`` (the sparse Saver wrote those of the data files); loading checks
every file it reads against it (``CheckpointCorruptError`` naming the file on a mismatch; a
directory without checksums loads with one warning). A ``checkpoint`` list entry must name a
directory directly inside the root (``../x``, ``/abs`` or ``a/b`` raise ``CheckpointError``).
Torch files are loaded with ``torch.load(weights_only=True)``: no pickled code runs.

Delta checkpoints (not in RecIS; docs/reliability.md "Incremental checkpoints")::

    <output_dir>/delta_checkpoint           one "<delta id> <base id> <sequence>" per line
    <output_dir>/delta_<global_step>/       the rows changed since the previous link of the chain
        delta-XXXXXX-of-YYYYYY.safetensors, delta-XXXXXX-of-YYYYYY.json, delta.json
                                            (recis_compat/serialize/delta.py)
        model.pt, extra.pt, io_state_<rank>.pt, io_state_count, checksums.json   as above

A chain is one full checkpoint (its ``base``, listed in ``checkpoint``, RecIS's layout untouched)
and the deltas 1..k taken after it, each naming its ``parent`` (the base or the previous delta).
Deltas are published like full checkpoints (``.delta_<step>.tmp``, checksums, rename, then the
list file), so a kill at any point leaves the chain up to the last published delta. Restoring
the latest checkpoint loads the latest full checkpoint and applies every delta listed for it in
order; an explicit ``delta_<step>`` id loads its base and the deltas up to it. Before anything
is applied the whole chain is checked (every listed delta exists, sequences 1..k, parents link,
every file matches ``checksums.json``); a break raises ``CheckpointError`` naming the link.
A delta saved at sequence s drops listed deltas of the same base with sequence >= s (an
abandoned continuation after restoring an earlier link); deltas whose base is deleted by
``max_keep`` (or re-saved) are deleted with it.
"""
from __future__ import annotations

import os
import shutil
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist

from recis_compat.nn.modules.hashtable import filter_out_sparse_param, split_sparse_dense_state_dict
from recis_compat.serialize import integrity
from recis_compat.serialize.integrity import (Manifest, check_member_name, file_checksum, resolve_member,
                                              write_manifest)
# one error class for every unusable checkpoint (missing / corrupt files, contents that do not
# fit the model, the optimizers or the dataset): a ValueError
from recis_compat.serialize.layout import CheckpointError, atomic_write, fsync_dir
from recis_compat.serialize import delta as delta_io
from recis_compat.serialize.saver import as_table_impl
from recis_compat.utils.logger import Logger

__all__ = ["Saver", "CheckpointManager", "CheckpointError", "LOAD_PARTS", "CHECKPOINT_FILE", "load_torch_file",
           "read_checkpoint_list", "checkpoint_dir_of", "DELTA_LIST_FILE", "read_delta_list", "resolve_chain", "verify_link"]

logger = Logger(__name__)

LOAD_PARTS = ("sparse", "dense", "extra", "sparse_opt", "io_state")
CHECKPOINT_FILE = "checkpoint"
DELTA_LIST_FILE = "delta_checkpoint"


# ---------------------------------------------------------------------------------- file helpers
def atomic_torch_save(obj: Any, path: str) -> None:
    """``torch.save`` to ``path`` through a temporary file, fsynced, then renamed."""
    atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write_text(path: str, text: str) -> None:
    atomic_write(path, lambda f: f.write(text), mode="w")


def load_torch_file(path: str, what: str, manifest: Optional[Manifest] = None, verify: bool = True):
    """``torch.load(weights_only=True)`` of a checkpoint file (CPU tensors). With ``verify`` it is
    first checked against ``manifest`` (the directory's ``checksums.json``; read when None).
    CheckpointError naming the file and ``what`` it holds when it is missing, fails its checksum or
    cannot be unpickled."""
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint file {path} is missing ({what})")
    if verify:
        if manifest is None:
            manifest = Manifest(os.path.dirname(path))
        manifest.verify(os.path.basename(path))
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:   # unpickling / zip errors of a truncated or foreign file
        raise CheckpointError(f"checkpoint file {path} cannot be read ({what}): {e}") from e


def read_checkpoint_list(output_dir: str) -> List[str]:
    """Ids listed in ``<output_dir>/checkpoint`` (empty when the file does not exist).
    CheckpointError naming the file when it is not UTF-8 text or cannot be read."""
    path = os.path.join(output_dir, CHECKPOINT_FILE)
    if not os.path.exists(path):
        return []
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8")
    except UnicodeDecodeError as e:
        raise CheckpointError(f"checkpoint list {path} is not UTF-8 text ({e}); it must hold one checkpoint id "
                              "(e.g. ckpt_1000) per line") from e
    except OSError as e:
        raise CheckpointError(f"checkpoint list {path} cannot be read ({e})") from e
    return [line.strip() for line in text.splitlines() if line.strip()]


def checkpoint_dir_of(root: str, ckpt_id: str) -> str:
    """``root/ckpt_id`` for an id read from ``root/checkpoint``: the id must name a directory
    directly inside ``root`` (no ``..``, separators or absolute paths), else CheckpointError."""
    what = f"checkpoint list {os.path.join(root, CHECKPOINT_FILE)}"
    check_member_name(ckpt_id, what)
    if "/" in ckpt_id or "\\" in ckpt_id or ckpt_id == ".":
        raise CheckpointError(f"{what}: {ckpt_id!r} is not a checkpoint id (expected a directory name such as "
                              "'ckpt_1000' directly inside the root)")
    return resolve_member(root, ckpt_id, what)


def read_delta_list(output_dir: str) -> List[Tuple[str, str, int]]:
    """``(delta id, base id, sequence)`` of every line of ``<output_dir>/delta_checkpoint``
    (empty when the file does not exist). CheckpointError naming the file and line when a line is
    not ``"<delta id> <base id> <sequence>"``."""
    path = os.path.join(output_dir, DELTA_LIST_FILE)
    if not os.path.exists(path):
        return []
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8")
    except (UnicodeDecodeError, OSError) as e:
        raise CheckpointError(f"delta checkpoint list {path} cannot be read ({e})") from e
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 3 or not parts[2].isdigit():
            raise CheckpointError(f"delta checkpoint list {path}, line {n}: {line!r} is not "
                                  "'<delta id> <base id> <sequence>'")
        out.append((parts[0], parts[1], int(parts[2])))
    return out


def _write_delta_list(output_dir: str, entries: List[Tuple[str, str, int]]) -> None:
    atomic_write_text(os.path.join(output_dir, DELTA_LIST_FILE), "".join(f"{d} {b} {s}\n" for d, b, s in entries))


def verify_link(root: str, base: str, delta_id: str, seq: int, parent: str) -> dict:
    """Check one delta of the chain of ``base`` (exists, is delta ``seq`` after ``parent``,
    every file matches its checksum); returns its meta. CheckpointError (its subclass when the
    cause is one) naming the link otherwise."""
    what = f"delta checkpoint chain of {base} in {root}: link {seq} ({delta_id})"
    path = checkpoint_dir_of(root, delta_id)
    if not os.path.isdir(path):
        raise CheckpointError(f"{what} is missing: {path} does not exist (listed in "
                              f"{os.path.join(root, DELTA_LIST_FILE)})")
    try:
        manifest = Manifest(path)
        meta = delta_io.read_delta_meta(path, manifest)
        for name in sorted(manifest.files):
            if not os.path.isfile(os.path.join(path, name)):
                raise CheckpointError(f"file {name!r} is missing")
            manifest.verify(name)
    except CheckpointError as e:
        raise type(e)(f"{what} is corrupt: {e}") from e
    if meta["base"] != base or meta["sequence"] != seq or meta["parent"] != parent:
        raise CheckpointError(f"{what} does not link: its delta.json says base {meta['base']!r}, sequence "
                              f"{meta['sequence']}, parent {meta['parent']!r}; expected {base!r}, {seq}, {parent!r}")
    return meta


def resolve_chain(root: str, ckpt_id: Optional[str] = None) -> Optional[Tuple[str, List[str], List[dict]]]:
    """``(base directory, [delta directories in order], [their delta.json])`` to restore
    ``ckpt_id`` (a full id: no deltas; a delta id: its base and the deltas up to it; None: the
    latest full checkpoint and every delta listed for it). None when ``root`` lists no
    checkpoint and ``ckpt_id`` is None. The chain is verified (see the module docstring)."""
    entries = read_delta_list(root)
    delta_ids = {d: (b, s) for d, b, s in entries}
    if ckpt_id is None:
        ids = read_checkpoint_list(root)
        if not ids:
            return None
        base, target = ids[-1], None
    elif ckpt_id in delta_ids:
        base, target = delta_ids[ckpt_id][0], ckpt_id
    else:
        path = os.path.join(root, ckpt_id)
        if delta_io.is_delta_dir(path):
            raise CheckpointError(f"delta checkpoint {path} is not listed in {os.path.join(root, DELTA_LIST_FILE)} "
                                  "(it was dropped from its chain); restore its base or a listed delta")
        return path, [], []
    base_dir = checkpoint_dir_of(root, base)
    if not os.path.isdir(base_dir):
        raise CheckpointError(f"delta checkpoint chain in {root}: base {base} does not exist ({base_dir})")
    dirs: List[str] = []
    metas: List[dict] = []
    parent = base
    links = sorted((s, d) for d, b, s in entries if b == base)
    for i, (seq, d) in enumerate(links, 1):
        if seq != i:
            missing = i if seq > i else seq
            raise CheckpointError(f"delta checkpoint chain of {base} in {root}: link {missing} is missing or "
                                  f"repeated (sequences listed: {[s for s, _ in links]}); restore {base} or a "
                                  "delta before the gap by id")
        metas.append(verify_link(root, base, d, seq, parent))
        dirs.append(checkpoint_dir_of(root, d))
        parent = d
        if d == target:
            break
    return base_dir, dirs, metas


def _rank_world():
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


class Saver:
    """Writes and reads checkpoints of one model.

    Args:
        model: the (unwrapped) model; its tables are found with ``filter_out_sparse_param``.
        sparse_optim: the sparse optimizer (its scalars are saved with the tables).
        output_dir: checkpoint root.
        max_keep: checkpoints written by this process that are kept (older ones are deleted).
        concurrency: writer threads per rank (= safetensors files per rank).
    """

    def __init__(self, model: torch.nn.Module, sparse_optim=None, output_dir: str = "./", max_keep: int = 1,
                 concurrency: int = 4):
        if int(max_keep) < 1:
            raise ValueError(f"Saver: max_keep must be >= 1, got {max_keep}")
        self._model = model
        self._sparse_optim = sparse_optim
        self._output_dir = output_dir
        self._max_keep = int(max_keep)
        self._concurrency = max(1, int(concurrency))
        self._io_state: Dict[str, Any] = {}
        self._extra: Dict[str, Any] = {}
        self._written: List[str] = []
        self._loaded_extra: Dict[str, Any] = {}
        # delta checkpoints: tables record their changes once enabled; _chain is the chain the
        # next delta extends ({"base", "last", "sequence", "epochs": {table: change epoch}}) or
        # None when the next save must be a full one
        self._track = False
        self._chain: Optional[Dict[str, Any]] = None

    @property
    def output_dir(self) -> str:
        return self._output_dir

    # ------------------------------------------------------------------ registration
    def register_io_state(self, name: str, obj) -> None:
        if name in self._io_state:
            raise ValueError(f"io state {name!r} is already registered")
        for attr in ("dump_io_state", "load_io_state"):
            if not hasattr(obj, attr):
                raise TypeError(f"register_io_state({name!r}): {type(obj).__name__} has no {attr}()")
        self._io_state[name] = obj

    def register_for_checkpointing(self, name: str, obj) -> None:
        if name in self._extra:
            raise ValueError(f"{name!r} is already registered for checkpointing")
        self._extra[name] = obj

    def get_extra_data(self, name: str):
        return self._loaded_extra.get(name)

    # ------------------------------------------------------------------ state
    def _sparse_tables(self) -> Dict[str, Any]:
        return filter_out_sparse_param(self._model)

    def _table_impls(self) -> Dict[str, Any]:
        """``{name: DynamicTableImpl}`` of the model's tables (a table listed twice once)."""
        out, seen = {}, set()
        for name, obj in self._sparse_tables().items():
            impl = as_table_impl(name, obj)
            if id(impl) not in seen:
                seen.add(id(impl))
                out[name] = impl
        return out

    # ------------------------------------------------------------------ delta bookkeeping
    def enable_change_tracking(self) -> None:
        """Record table changes from the next full save or restore on, so that
        :meth:`save_delta` can follow it (CheckpointManager does this when deltas are on)."""
        self._track = True

    def _restart_tracking(self) -> Dict[str, int]:
        """Start a new change epoch on every table (the state now is the chain's new link)."""
        epochs = {}
        for name, impl in self._table_impls().items():
            epochs[name] = impl.take_changes(with_values=False).new_epoch if impl.tracking_changes \
                else impl.track_changes()
        return epochs

    def can_save_delta(self) -> bool:
        """Whether a delta can follow the last checkpoint saved or restored by this Saver: the
        tables are the same and each still holds every change since (same change epoch)."""
        chain = self._chain
        if chain is None:
            return False
        impls = self._table_impls()
        if set(impls) != set(chain["epochs"]):
            return False
        return all(impl.change_epoch() == chain["epochs"][name] for name, impl in impls.items())

    @property
    def chain(self) -> Optional[Dict[str, Any]]:
        """The chain the next delta extends (None: the next save is full); read-only copy."""
        return None if self._chain is None else dict(self._chain)

    def _sparse_optim_tensors(self) -> Dict[str, torch.Tensor]:
        return dict(self._sparse_optim.state_dict()) if self._sparse_optim is not None else {}

    def _dense_state(self) -> Dict[str, Any]:
        _, dense = split_sparse_dense_state_dict(self._model.state_dict())
        return dense

    def _extra_state(self) -> Dict[str, Any]:
        out = {}
        for name, obj in self._extra.items():
            out[name] = obj.state_dict() if hasattr(obj, "state_dict") else obj
        return out

    # ------------------------------------------------------------------ save
    def save(self, ckpt_id: str, shard_id: int = 0, shard_num: int = 1) -> str:
        """Write ``<output_dir>/<ckpt_id>`` atomically (a collective when ``shard_num > 1``).
        Returns the checkpoint directory."""
        final = os.path.join(self._output_dir, ckpt_id)
        tmp = os.path.join(self._output_dir, f".{ckpt_id}.tmp")
        self._chain = None
        epochs = self._restart_tracking() if self._track else None
        self._make_tmp(tmp, shard_id)
        self.save_sparse_params(shard_id, shard_num, tmp, None, concurrent=self._concurrency)
        self._save_framework_files(tmp, shard_id, shard_num)
        _barrier()
        if shard_id == 0:
            self._publish(tmp, final, ckpt_id)
        _barrier()
        if epochs is not None:
            self._chain = {"base": ckpt_id, "last": ckpt_id, "sequence": 0, "epochs": epochs}
        return final

    def _make_tmp(self, tmp: str, shard_id: int) -> None:
        if shard_id == 0:
            os.makedirs(self._output_dir, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
            os.makedirs(tmp)
        _barrier()

    def _save_framework_files(self, tmp: str, shard_id: int, shard_num: int) -> None:
        """io states (every rank), dense model and extras (rank 0)."""
        if self._io_state:
            atomic_torch_save({name: obj.dump_io_state() for name, obj in self._io_state.items()},
                              os.path.join(tmp, f"io_state_{shard_id}.pt"))
        if shard_id == 0:
            self.save_dense_params(tmp, self._dense_state())
            atomic_torch_save(self._extra_state(), os.path.join(tmp, "extra.pt"))
            if self._io_state:
                atomic_write_text(os.path.join(tmp, "io_state_count"), str(shard_num))

    def save_delta(self, ckpt_id: str, global_step: int, shard_id: int = 0, shard_num: int = 1) -> str:
        """Write ``<output_dir>/<ckpt_id>`` as a delta of the current chain (a collective when
        ``shard_num > 1``): the tables' rows changed since the previous link, every dense /
        extra / io file in full. RuntimeError when :meth:`can_save_delta` is False. Returns the
        directory."""
        if not self.can_save_delta():
            raise RuntimeError(f"Saver.save_delta({ckpt_id!r}): no full checkpoint to extend (or a table's change "
                               "log was restarted since); save a full checkpoint")
        if ckpt_id in (self._chain["base"], self._chain["last"]):
            raise ValueError(f"Saver.save_delta({ckpt_id!r}): {ckpt_id} is the link this delta would extend")
        chain, self._chain = self._chain, None
        final = os.path.join(self._output_dir, ckpt_id)
        tmp = os.path.join(self._output_dir, f".{ckpt_id}.tmp")
        self._make_tmp(tmp, shard_id)
        changes = delta_io.write_delta_shard(tmp, shard_id, shard_num, self._table_impls(),
                                             self._sparse_optim_tensors())
        self._save_framework_files(tmp, shard_id, shard_num)
        _barrier()
        seq = chain["sequence"] + 1
        if shard_id == 0:
            delta_io.merge_delta_meta(tmp, shard_num, chain["base"], chain["last"], seq, int(global_step))
            self._publish_delta(tmp, final, ckpt_id, chain["base"], seq)
        _barrier()
        self._chain = {"base": chain["base"], "last": ckpt_id, "sequence": seq,
                       "epochs": {name: ch.new_epoch for name, ch in changes.items()}}
        return final

    def _replace_dir(self, tmp: str, final: str) -> None:
        if os.path.exists(final):     # the same step saved again (e.g. at the end of training)
            trash = final + ".old"
            shutil.rmtree(trash, ignore_errors=True)
            os.replace(final, trash)
            os.replace(tmp, final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, final)
        fsync_dir(self._output_dir)

    def _publish_delta(self, tmp: str, final: str, ckpt_id: str, base: str, seq: int) -> None:
        self._add_checksums(tmp)
        fsync_dir(tmp)
        entries = read_delta_list(self._output_dir)
        # deltas of this base from sequence `seq` on belong to an abandoned continuation
        stale = [d for d, b, s in entries if b == base and s >= seq and d != ckpt_id]
        self._replace_dir(tmp, final)
        entries = [e for e in entries if e[0] != ckpt_id and e[0] not in stale] + [(ckpt_id, base, seq)]
        _write_delta_list(self._output_dir, entries)
        for d in stale:
            shutil.rmtree(os.path.join(self._output_dir, d), ignore_errors=True)
        logger.info(f"saved delta checkpoint {final} (base {base}, sequence {seq})")

    def _prune_deltas(self, fulls: Sequence[str], resaved: Optional[str] = None) -> None:
        """Delete deltas whose base is no longer listed (or was just saved again: ``resaved``)."""
        entries = read_delta_list(self._output_dir)
        if not entries:
            return
        keep = [e for e in entries if e[1] in fulls and e[1] != resaved]
        if len(keep) != len(entries):
            _write_delta_list(self._output_dir, keep)
            kept = {e[0] for e in keep}
            for d, _, _ in entries:
                if d not in kept:
                    shutil.rmtree(os.path.join(self._output_dir, d), ignore_errors=True)

    def _publish(self, tmp: str, final: str, ckpt_id: str) -> None:
        self._add_checksums(tmp)
        fsync_dir(tmp)
        self._replace_dir(tmp, final)
        ids = read_checkpoint_list(self._output_dir)
        if not ids or ids[-1] != ckpt_id:
            ids = [i for i in ids if i != ckpt_id] + [ckpt_id]
        if ckpt_id in self._written:
            self._written.remove(ckpt_id)
        self._written.append(ckpt_id)
        while len(self._written) > self._max_keep:
            old = self._written.pop(0)
            ids = [i for i in ids if i != old]
            atomic_write_text(os.path.join(self._output_dir, CHECKPOINT_FILE), "".join(i + "\n" for i in ids))
            shutil.rmtree(os.path.join(self._output_dir, old), ignore_errors=True)
        atomic_write_text(os.path.join(self._output_dir, CHECKPOINT_FILE), "".join(i + "\n" for i in ids))
        self._prune_deltas(ids, resaved=ckpt_id)
        logger.info(f"saved checkpoint {final}")

    @staticmethod
    def _add_checksums(ckpt_dir: str) -> None:
        """Rank 0, before publishing: add the checksums of the framework's files (dense model,
        extras, io states) to the ``checksums.json`` the sparse Saver wrote."""
        manifest = Manifest(ckpt_dir)
        algorithm = manifest.algorithm or integrity.ALGORITHM
        files = dict(manifest.files)
        for name in sorted(os.listdir(ckpt_dir)):
            if name in ("model.pt", "extra.pt", "io_state_count") or \
                    (name.startswith("io_state_") and name.endswith(".pt")):
                files[name] = file_checksum(os.path.join(ckpt_dir, name), algorithm)
        write_manifest(ckpt_dir, files, algorithm)

    def save_sparse_params(self, shard_id: int, shard_num: int, ckpt_path: str, sparse_state_dict=None,
                           concurrent: int = 16, sync_func=None) -> None:
        from recis_compat.serialize import Saver as SparseSaver
        tables = sparse_state_dict if sparse_state_dict is not None else self._sparse_tables()
        SparseSaver(shard_index=shard_id, shard_num=shard_num, parallel=concurrent, path=ckpt_path,
                    hashtables=tables, tensors=self._sparse_optim_tensors()).save()
        if sync_func is not None:
            sync_func()

    def save_dense_params(self, ckpt_path: str, dense_state_dict: Dict[str, Any]) -> None:
        atomic_torch_save(dense_state_dict, os.path.join(ckpt_path, "model.pt"))

    def save_sparse_meta(self, dirname: str) -> None:
        """Legacy in RecIS; the metadata is written by :meth:`save_sparse_params`."""

    # ------------------------------------------------------------------ load
    def latest_checkpoint(self, ckpt_path: Optional[str] = None) -> Optional[str]:
        ids = read_checkpoint_list(ckpt_path or self._output_dir)
        return ids[-1] if ids else None

    def load(self, ckpt_path: Optional[str] = None, ckpt_id: Optional[str] = None, load_conf: Optional[dict] = None,
             shard_id: int = 0, direct_path: bool = False) -> bool:
        """Load a checkpoint: ``ckpt_path`` itself with ``direct_path``, else
        ``<ckpt_path or output_dir>/<ckpt_id or latest>``. Returns False (one log line) when
        there is no checkpoint.

        Delta checkpoints: the latest checkpoint of a root is its latest full checkpoint plus
        every delta listed for it; a delta id (or, with ``direct_path``, a delta directory) loads
        its base and the deltas up to it (see the module docstring)."""
        self._chain = None
        deltas: List[str] = []
        if direct_path:
            ckpt_dir = ckpt_path
            if delta_io.is_delta_dir(ckpt_dir):
                root = os.path.dirname(os.path.abspath(ckpt_dir))
                ckpt_dir, deltas, _ = resolve_chain(root, os.path.basename(os.path.abspath(ckpt_dir)))
        else:
            root = ckpt_path or self._output_dir
            resolved = resolve_chain(root, ckpt_id)
            if resolved is None:
                logger.info(f"Checkpoint not found in {root}; starting fresh")
                return False
            ckpt_dir, deltas, _ = resolved
        if not os.path.isdir(ckpt_dir):
            raise CheckpointError(f"checkpoint directory {ckpt_dir} does not exist "
                                  f"(listed in {os.path.join(os.path.dirname(ckpt_dir), CHECKPOINT_FILE)})"
                                  if not direct_path else f"checkpoint directory {ckpt_dir} does not exist")
        self.load_by_config(ckpt_dir, load_conf, shard_id, deltas=deltas)
        parts, _ = self._parts(load_conf)
        own_root = not direct_path and os.path.realpath(root) == os.path.realpath(self._output_dir)
        if self._track and own_root and {"sparse", "sparse_opt"} <= parts:
            # the tables now hold this link of the chain: the next delta extends it
            last = deltas[-1] if deltas else ckpt_dir
            self._chain = {"base": os.path.basename(ckpt_dir), "last": os.path.basename(last),
                           "sequence": len(deltas), "epochs": self._restart_tracking()}
        logger.info(f"loaded checkpoint {ckpt_dir}" + (f" + {len(deltas)} deltas (up to {deltas[-1]})"
                                                          if deltas else ""))
        return True

    @staticmethod
    def _parts(load_conf: Optional[dict]):
        conf = dict(load_conf or {})
        load = conf.get("load", ["*"])
        exclude = conf.get("exclude", [])
        for p in list(load) + list(exclude):
            if p != "*" and p not in LOAD_PARTS:
                raise ValueError(f"load_conf: unknown part {p!r}; parts are {list(LOAD_PARTS)} and '*'")
        parts = set(LOAD_PARTS) if "*" in load else set(load)
        parts -= set(exclude)
        return parts, bool(conf.get("strict", True))

    def load_by_config(self, ckpt_path: str, load_conf: Optional[dict] = None, shared_id: int = 0,
                       deltas: Sequence[str] = ()) -> None:
        """Load the parts ``load_conf`` selects from the full checkpoint ``ckpt_path``; with
        ``deltas`` (verified delta directories of its chain, in order) the tables get the deltas
        applied and every other part comes from the last delta."""
        parts, strict = self._parts(load_conf)
        last = deltas[-1] if deltas else ckpt_path
        if "sparse" in parts:
            self.load_sparse_params(ckpt_path)
            tables = self._table_impls()
            for d in deltas:
                delta_io.apply_delta(d, tables)
        if "sparse_opt" in parts:
            self.load_sparse_optim(last)
        if "dense" in parts:
            self.load_dense_params(last, strict=strict)
        if "extra" in parts:
            self.load_extra_params(last, load_io="io_state" in parts, shared_id=shared_id)

    def load_sparse_params(self, ckpt_dir: str) -> None:
        from recis_compat.serialize import Loader
        tables = self._sparse_tables()
        if tables:
            Loader(ckpt_dir, hashtables=tables, tensors={}).load()

    def load_sparse_optim(self, ckpt_dir: Optional[str] = None) -> None:
        """Restore the sparse optimizer's scalars (per-table beta powers, step)."""
        if self._sparse_optim is None or ckpt_dir is None:
            return
        from recis_compat.serialize import Loader
        tensors = self._sparse_optim_tensors()
        if tensors and delta_io.is_delta_dir(ckpt_dir):
            stored = delta_io.read_delta_tensors(ckpt_dir)
            with torch.no_grad():
                for name, t in tensors.items():
                    if name not in stored:
                        logger.warning(f"delta checkpoint {ckpt_dir} has no sparse-optimizer tensor {name!r}; "
                                       "keeping the current value")
                        continue
                    if stored[name].shape != t.shape or stored[name].dtype != t.dtype:
                        raise CheckpointError(f"delta checkpoint {ckpt_dir}: sparse-optimizer tensor {name!r} is "
                                              f"{stored[name].dtype} {list(stored[name].shape)}, the optimizer's "
                                              f"is {t.dtype} {list(t.shape)}")
                    t.copy_(stored[name])
            self._sparse_optim.load_state_dict(tensors)
        elif tensors:
            Loader(ckpt_dir, hashtables={}, tensors=tensors).load()
            self._sparse_optim.load_state_dict(tensors)

    def load_dense_params(self, ckpt_dir: str, strict: bool = True) -> None:
        state = load_torch_file(os.path.join(ckpt_dir, "model.pt"), "dense parameters", Manifest(ckpt_dir))
        own = self._dense_state()
        try:
            missing, unexpected = self._model.load_state_dict(state, strict=False)
        except RuntimeError as e:
            raise CheckpointError(f"{ckpt_dir}/model.pt does not fit the model: {e}") from e
        missing = [k for k in missing if k in own]
        if strict and (missing or unexpected):
            raise CheckpointError(f"{ckpt_dir}/model.pt does not fit the model: missing keys {missing[:10]}, "
                                  f"unexpected keys {list(unexpected)[:10]} (use load_conf strict=False to allow)")

    def load_extra_params(self, ckpt_dir: str, load_io: bool = True, shared_id: int = 0) -> None:
        manifest = Manifest(ckpt_dir)
        extra = load_torch_file(os.path.join(ckpt_dir, "extra.pt"), "global step and optimizer state", manifest)
        self._loaded_extra = dict(extra)
        if load_io and self._io_state:
            count_file = os.path.join(ckpt_dir, "io_state_count")
            if not os.path.exists(count_file):
                raise CheckpointError(f"{ckpt_dir} has no io_state_count, but a dataset is registered for IO state")
            manifest.verify("io_state_count")
            try:
                with open(count_file, "rb") as f:
                    raw = f.read()
                count = int(raw.decode("ascii").strip())
            except (UnicodeDecodeError, ValueError) as e:
                raise CheckpointError(f"{count_file} must hold the number of ranks that wrote io states as a "
                                      f"decimal integer, got {raw[:40]!r}") from e
            except OSError as e:
                raise CheckpointError(f"{count_file} cannot be read ({e})") from e
            for name, obj in self._io_state.items():
                workers = getattr(obj, "_worker_num", None)
                if workers is not None and int(workers) != count:
                    raise CheckpointError(
                        f"{ckpt_dir}: io_state was written by {count} workers but dataset {name!r} now has "
                        f"worker_num={workers}; resume with the same number of ranks or load without "
                        "'io_state' (load_conf exclude)")
            io = load_torch_file(os.path.join(ckpt_dir, f"io_state_{shared_id}.pt"), "dataset IO state", manifest)
            for name, obj in self._io_state.items():
                if name in io:
                    obj.load_io_state(io[name])
        for name, obj in self._extra.items():
            if name not in extra:
                logger.warning(f"{ckpt_dir}/extra.pt has no {name!r}; keeping the current value")
                continue
            value = extra[name]
            if hasattr(obj, "load_state_dict"):
                obj.load_state_dict(value)
            elif isinstance(obj, torch.Tensor):
                obj.copy_(torch.as_tensor(value))
            else:
                self._extra[name] = value


class CheckpointManager:
    """Owns the global step and saves every ``save_interval`` steps (None / 0: never)."""

    def __init__(self, saver: Saver, save_interval: Optional[int], delta_interval: Optional[int] = None):
        if delta_interval is not None and int(delta_interval) < 0:
            raise ValueError(f"CheckpointManager: delta_interval must be >= 0 or None, got {delta_interval}")
        self._saver = saver
        self._save_interval = save_interval
        self._delta_interval = int(delta_interval) if delta_interval else None
        if self._delta_interval:
            saver.enable_change_tracking()
        self._global_step = torch.zeros((), dtype=torch.int64)
        self._shard_id, self._shard_num = _rank_world()
        self._last_saved_step: Optional[int] = None
        saver.register_for_checkpointing("global_step", self._global_step)

    @property
    def save_interval(self) -> Optional[int]:
        return self._save_interval

    @property
    def global_step(self) -> torch.Tensor:
        return self._global_step

    @property
    def saver(self) -> Saver:
        return self._saver

    def register_for_checkpointing(self, name: str, obj) -> None:
        self._saver.register_for_checkpointing(name, obj)

    def register_io_state(self, name: str, obj) -> None:
        self._saver.register_io_state(name, obj)

    @property
    def delta_interval(self) -> Optional[int]:
        return self._delta_interval

    def step(self) -> None:
        self._global_step += 1
        step = int(self._global_step)
        if self._save_interval and step % int(self._save_interval) == 0:
            self.save()
        elif self._delta_interval and step % self._delta_interval == 0:
            self.save_delta()

    def save_delta(self) -> None:
        """Save a delta of the current chain as ``delta_<step>``; a full checkpoint instead when
        there is no chain to extend on some rank (nothing saved or restored yet, or a table's
        change log restarted)."""
        step = int(self._global_step)
        if self._last_saved_step == step:
            return          # this step is saved (or was restored) already
        self._shard_id, self._shard_num = _rank_world()
        ok = torch.tensor([int(self._saver.can_save_delta())], dtype=torch.int64)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            if dist.get_backend() == "nccl":
                ok = ok.cuda()
            dist.all_reduce(ok, op=dist.ReduceOp.MIN)
        if not int(ok):
            logger.info(f"step {step}: no full checkpoint to extend with a delta; saving a full checkpoint")
            self.save()
            return
        self._saver.save_delta(f"delta_{step}", step, shard_id=self._shard_id, shard_num=self._shard_num)
        self._last_saved_step = step

    def save(self) -> None:
        step = int(self._global_step)
        self._shard_id, self._shard_num = _rank_world()
        self._saver.save(f"ckpt_{step}", shard_id=self._shard_id, shard_num=self._shard_num)
        self._last_saved_step = step

    @property
    def last_saved_step(self) -> Optional[int]:
        return self._last_saved_step

    def restore(self, global_step: Optional[int] = None) -> torch.Tensor:
        self._shard_id, self._shard_num = _rank_world()
        ckpt_id = None if global_step is None else f"ckpt_{int(global_step)}"
        if ckpt_id is not None and not os.path.isdir(os.path.join(self._saver.output_dir, ckpt_id)) and \
                os.path.isdir(os.path.join(self._saver.output_dir, f"delta_{int(global_step)}")):
            ckpt_id = f"delta_{int(global_step)}"
        if self._saver.load(ckpt_id=ckpt_id, shard_id=self._shard_id):
            # that checkpoint already holds this step: do not write it again at the end
            self._last_saved_step = int(self._global_step)
        return self._global_step

    def load_model_bank(self, model_bank_conf: Optional[List[dict]]) -> None:
        """Warm start: load each ``{"path", "load", "exclude", "strict"}`` entry in order."""
        for entry in model_bank_conf or []:
            if not isinstance(entry, dict) or "path" not in entry:
                raise ValueError(f"model_bank entries must be dicts with a 'path', got {entry!r}")
            path = entry["path"]
            if str(path).startswith("model."):
                raise ValueError(f"model_bank path {path!r} is a MOS URI (RecIS internal build only)")
            self._saver.load(ckpt_path=path, load_conf=entry, shard_id=self._shard_id, direct_path=True)
