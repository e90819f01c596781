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
"""
from __future__ import annotations

import os
import shutil
from typing import Any, Dict, List, Optional

import torch
import torch.distributed as dist

from recis_compat.nn.modules.hashtable import filter_out_sparse_param, split_sparse_dense_state_dict
from recis_compat.serialize import integrity
from recis_compat.serialize.integrity import (Manifest, check_member_name, file_checksum, resolve_member,
                                              write_manifest)
# one error class for every unusable checkpoint (missing / corrupt files, contents that do not
# fit the model, the optimizers or the dataset): a ValueError
from recis_compat.serialize.layout import CheckpointError, atomic_write, fsync_dir
from recis_compat.utils.logger import Logger

__all__ = ["Saver", "CheckpointManager", "CheckpointError", "LOAD_PARTS", "CHECKPOINT_FILE", "load_torch_file",
           "read_checkpoint_list", "checkpoint_dir_of"]

logger = Logger(__name__)

LOAD_PARTS = ("sparse", "dense", "extra", "sparse_opt", "io_state")
CHECKPOINT_FILE = "checkpoint"


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
        if shard_id == 0:
            os.makedirs(self._output_dir, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
            os.makedirs(tmp)
        _barrier()
        self.save_sparse_params(shard_id, shard_num, tmp, None, concurrent=self._concurrency)
        if self._io_state:
            atomic_torch_save({name: obj.dump_io_state() for name, obj in self._io_state.items()},
                              os.path.join(tmp, f"io_state_{shard_id}.pt"))
        if shard_id == 0:
            self.save_dense_params(tmp, self._dense_state())
            atomic_torch_save(self._extra_state(), os.path.join(tmp, "extra.pt"))
            if self._io_state:
                atomic_write_text(os.path.join(tmp, "io_state_count"), str(shard_num))
        _barrier()
        if shard_id == 0:
            self._publish(tmp, final, ckpt_id)
        _barrier()
        return final

    def _publish(self, tmp: str, final: str, ckpt_id: str) -> None:
        self._add_checksums(tmp)
        fsync_dir(tmp)
        if os.path.exists(final):     # the same step saved again (e.g. at the end of training)
            trash = final + ".old"
            shutil.rmtree(trash, ignore_errors=True)
            os.replace(final, trash)
            os.replace(tmp, final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, final)
        fsync_dir(self._output_dir)
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
        there is no checkpoint."""
        if direct_path:
            ckpt_dir = ckpt_path
        else:
            root = ckpt_path or self._output_dir
            if ckpt_id is None:
                ckpt_id = self.latest_checkpoint(root)
                if ckpt_id is None:
                    logger.info(f"Checkpoint not found in {root}; starting fresh")
                    return False
                ckpt_dir = checkpoint_dir_of(root, ckpt_id)    # an id read from the list file
            else:
                ckpt_dir = os.path.join(root, ckpt_id)
        if not os.path.isdir(ckpt_dir):
            raise CheckpointError(f"checkpoint directory {ckpt_dir} does not exist "
                                  f"(listed in {os.path.join(os.path.dirname(ckpt_dir), CHECKPOINT_FILE)})"
                                  if not direct_path else f"checkpoint directory {ckpt_dir} does not exist")
        self.load_by_config(ckpt_dir, load_conf, shard_id)
        logger.info(f"loaded checkpoint {ckpt_dir}")
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

    def load_by_config(self, ckpt_path: str, load_conf: Optional[dict] = None, shared_id: int = 0) -> None:
        parts, strict = self._parts(load_conf)
        if "sparse" in parts:
            self.load_sparse_params(ckpt_path)
        if "sparse_opt" in parts:
            self.load_sparse_optim(ckpt_path)
        if "dense" in parts:
            self.load_dense_params(ckpt_path, strict=strict)
        if "extra" in parts:
            self.load_extra_params(ckpt_path, load_io="io_state" in parts, shared_id=shared_id)

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
        if tensors:
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

    def __init__(self, saver: Saver, save_interval: Optional[int]):
        self._saver = saver
        self._save_interval = save_interval
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

    def step(self) -> None:
        self._global_step += 1
        if self._save_interval and int(self._global_step) % int(self._save_interval) == 0:
            self.save()

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
