"""Delta (incremental) checkpoints of dynamic tables: a format of our own, not RecIS's.

A delta holds, per table, only the rows changed since the previous checkpoint of its chain
(ids + every slot's values), the ids evicted since, and whether the table was cleared; the
change log is kept by :class:`~recis_compat.backend.table_impl.DynamicTableImpl`
(``track_changes`` / ``take_changes``). Restoring = load the base (a full checkpoint in RecIS's
layout, :mod:`recis_compat.serialize.loader`), then apply the deltas in order; the framework
(recis_compat/framework/checkpoint_manager.py) finds and checks the chain.

Files of one delta directory (every rank ``r`` of ``n`` writes its own shard)::

    delta-<r:06d>-of-<n:06d>.safetensors   standard safetensors: per table i of the shard's list,
                                            "t<i>/id" int64 [k], "t<i>/s/<slot>" [k, *tail] for
                                            every slot, "t<i>/deleted" int64 [d]; shard 0 also
                                            "dense/<j>" (the sparse optimizer's scalars)
    delta-<r:06d>-of-<n:06d>.json          the shard's description: {"shard_index", "shard_num",
                                            "file", "checksum", "algorithm", "tables": [{"name",
                                            "rows", "deleted", "cleared", "slice": [b, e, size],
                                            "slots": [...]}], "dense": [names]}
    delta.json                              written by shard 0 after every shard: {"format":
                                            "recis-compat-delta", "version": 1, "base", "parent",
                                            "sequence", "global_step", "shard_num", "shards":
                                            [shard json names], "tables": {name: {"rows",
                                            "deleted"}}} (rows / deleted summed over shards)
    checksums.json                          checksums of all the above (and of the framework's
                                            model.pt / extra.pt / io_state files)

Rows of a delta are the internal ids of the table (the child index of coalesced tables kept in
the top bits), so a delta applies only to the table it was taken from (same name, same
children). A shard's rows are applied to every table shard whose slice range they fall in, so a
delta written by n ranks restores on any number of ranks, as full checkpoints do.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Dict, List, Mapping, Optional, Tuple

import torch
from safetensors import safe_open

from recis_compat.backend.children import decode_ids
from recis_compat.backend.table_impl import DynamicTableImpl, TableChanges
from recis_compat.serialize.integrity import (CHECKSUM_FILE, HashingWriter, Manifest, bytes_checksum,
                                              write_manifest)
from recis_compat.serialize.layout import (CheckpointError, CheckpointMismatchError, CheckpointNotFoundError,
                                           SafetensorsEntry, atomic_write, atomic_write_bytes, dumps_json,
                                           fsync_dir, write_safetensors)
from recis_compat.serialize import integrity
from recis_compat.serialize.loader import accept_ids
from recis_compat.serialize.saver import as_table_impl

__all__ = ["DELTA_META", "DELTA_FORMAT", "DELTA_VERSION", "is_delta_dir", "delta_shard_json", "delta_shard_file",
           "write_delta_shard", "merge_delta_meta", "read_delta_meta", "apply_delta", "read_delta_tensors"]

logger = logging.getLogger(__name__)

DELTA_META = "delta.json"
DELTA_FORMAT = "recis-compat-delta"
DELTA_VERSION = 1
_META_KEYS = ("format", "version", "base", "parent", "sequence", "global_step", "shard_num", "shards", "tables")


def delta_shard_file(shard_index: int, shard_num: int) -> str:
    return f"delta-{shard_index:06d}-of-{shard_num:06d}.safetensors"


def delta_shard_json(shard_index: int, shard_num: int) -> str:
    return f"delta-{shard_index:06d}-of-{shard_num:06d}.json"


def is_delta_dir(path: str) -> bool:
    """Whether ``path`` is a delta checkpoint directory (has ``delta.json``)."""
    return os.path.isfile(os.path.join(path, DELTA_META))


def _unique_tables(tables: Mapping[str, object]) -> "Dict[str, DynamicTableImpl]":
    out: Dict[str, DynamicTableImpl] = {}
    seen = set()
    for name, obj in tables.items():
        impl = as_table_impl(name, obj)
        if id(impl) in seen:
            continue
        seen.add(id(impl))
        out[name] = impl
    return out


# ------------------------------------------------------------------------------ writing
def write_delta_shard(path: str, shard_index: int, shard_num: int, tables: Mapping[str, object],
                      tensors: Optional[Mapping[str, torch.Tensor]] = None) -> Dict[str, TableChanges]:
    """Take every table's changes (``DynamicTableImpl.take_changes``: this starts a new change
    epoch) and write this shard's safetensors file and shard JSON into ``path`` (each through a
    temporary name, fsynced). ``tensors`` (dense, e.g. the sparse optimizer's scalars) are
    written by shard 0 only. Returns ``{table name: TableChanges}`` (epochs, ids, counts).
    RuntimeError naming the table when a table does not track changes."""
    os.makedirs(path, exist_ok=True)
    impls = _unique_tables(tables)
    for name, impl in impls.items():
        if not impl.tracking_changes:
            raise RuntimeError(f"delta checkpoint {path}: table {name!r} does not track changes "
                               "(DynamicTableImpl.track_changes was not called); save a full checkpoint")
    changes: Dict[str, TableChanges] = {name: impl.take_changes() for name, impl in impls.items()}
    entries: List[SafetensorsEntry] = []
    desc = []

    def entry(key: str, t: torch.Tensor) -> SafetensorsEntry:
        t = t.detach()
        return SafetensorsEntry(key, t.dtype, list(t.shape), lambda t=t: [t])

    for i, (name, ch) in enumerate(changes.items()):
        impl = impls[name]
        entries.append(entry(f"t{i}/id", ch.ids))
        for slot, vals in ch.values.items():
            entries.append(entry(f"t{i}/s/{slot}", vals))
        entries.append(entry(f"t{i}/deleted", ch.deleted))
        desc.append({"name": name, "rows": int(ch.ids.numel()), "deleted": int(ch.deleted.numel()),
                     "cleared": bool(ch.cleared), "slice": list(impl.slice), "slots": list(ch.values)})
    dense_names: List[str] = []
    if shard_index == 0:
        for j, (name, t) in enumerate((tensors or {}).items()):
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"delta checkpoint: tensors[{name!r}] is a {type(t).__name__}, not a Tensor")
            entries.append(entry(f"dense/{j}", t))
            dense_names.append(name)
    fname = delta_shard_file(shard_index, shard_num)
    out = {}

    def stream(f):
        hw = HashingWriter(f)
        write_safetensors(hw, entries)
        out["checksum"] = hw.hexdigest()

    atomic_write(os.path.join(path, fname), stream)
    shard = {"shard_index": shard_index, "shard_num": shard_num, "file": fname, "checksum": out["checksum"],
             "algorithm": integrity.ALGORITHM, "tables": desc, "dense": dense_names}
    atomic_write_bytes(os.path.join(path, delta_shard_json(shard_index, shard_num)),
                       dumps_json(shard).encode("utf-8"))
    return changes


def merge_delta_meta(path: str, shard_num: int, base: str, parent: str, sequence: int, global_step: int) -> dict:
    """Shard 0, after every shard wrote (a barrier): check the shard JSONs, write ``delta.json``
    and ``checksums.json`` (data files, shard JSONs, ``delta.json``). Returns the meta dict.
    CheckpointError naming the missing shard."""
    files: Dict[str, str] = {}
    tables: Dict[str, Dict[str, int]] = {}
    shards = []
    for s in range(shard_num):
        jname = delta_shard_json(s, shard_num)
        jpath = os.path.join(path, jname)
        if not os.path.isfile(jpath):
            raise CheckpointError(f"delta checkpoint {path}: shard {s} of {shard_num} did not write {jname!r}")
        with open(jpath, "rb") as f:
            raw = f.read()
        shard = json.loads(raw.decode("utf-8"))
        if shard.get("algorithm") != integrity.ALGORITHM:
            raise CheckpointError(f"delta checkpoint {path}: shard {s} used checksum algorithm "
                                  f"{shard.get('algorithm')!r}, shard 0 uses {integrity.ALGORITHM!r}")
        files[shard["file"]] = shard["checksum"]
        files[jname] = bytes_checksum(raw)
        shards.append(jname)
        for t in shard["tables"]:
            agg = tables.setdefault(t["name"], {"rows": 0, "deleted": 0})
            agg["rows"] += int(t["rows"])
            agg["deleted"] += int(t["deleted"])
    meta = {"format": DELTA_FORMAT, "version": DELTA_VERSION, "base": base, "parent": parent,
            "sequence": int(sequence), "global_step": int(global_step), "shard_num": int(shard_num),
            "shards": shards, "tables": tables}
    raw = dumps_json(meta).encode("utf-8")
    atomic_write_bytes(os.path.join(path, DELTA_META), raw)
    files[DELTA_META] = bytes_checksum(raw)
    write_manifest(path, files)
    fsync_dir(path)
    return meta


# ------------------------------------------------------------------------------ reading
def read_delta_meta(path: str, manifest: Optional[Manifest] = None) -> dict:
    """The verified ``delta.json`` of a delta directory. CheckpointNotFoundError when the
    directory or the file is missing; CheckpointCorruptError when it does not match
    ``checksums.json``; CheckpointError when a delta has no ``checksums.json`` or the JSON is not
    a delta description."""
    if not os.path.isdir(path):
        raise CheckpointNotFoundError(f"delta checkpoint {path} does not exist")
    mpath = os.path.join(path, DELTA_META)
    if not os.path.isfile(mpath):
        raise CheckpointNotFoundError(f"delta checkpoint {path}: file {DELTA_META!r} is missing")
    manifest = manifest or Manifest(path)
    if not manifest.present:
        raise CheckpointError(f"delta checkpoint {path}: file {CHECKSUM_FILE!r} is missing (every delta is "
                              "written with one; the directory is incomplete or damaged)")
    manifest.verify(DELTA_META)
    try:
        with open(mpath, "rb") as f:
            meta = json.loads(f.read().decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"delta checkpoint {path}: file {DELTA_META!r} is not valid JSON ({e})") from e
    if not isinstance(meta, dict) or any(k not in meta for k in _META_KEYS) or meta["format"] != DELTA_FORMAT:
        raise CheckpointError(f"delta checkpoint {path}: file {DELTA_META!r} is not a {DELTA_FORMAT} description "
                              f"(expected the keys {list(_META_KEYS)})")
    if meta["version"] != DELTA_VERSION:
        raise CheckpointError(f"delta checkpoint {path}: format version {meta['version']!r}; this build reads "
                              f"version {DELTA_VERSION}")
    return meta


def _read_shard(path: str, jname: str, manifest: Manifest) -> dict:
    jpath = os.path.join(path, jname)
    if not os.path.isfile(jpath):
        raise CheckpointNotFoundError(f"delta checkpoint {path}: shard file {jname!r} is missing")
    manifest.verify(jname)
    with open(jpath, "rb") as f:
        shard = json.loads(f.read().decode("utf-8"))
    dpath = os.path.join(path, shard["file"])
    if not os.path.isfile(dpath):
        raise CheckpointNotFoundError(f"delta checkpoint {path}: data file {shard['file']!r} is missing")
    manifest.verify(shard["file"])
    return shard


def apply_delta(path: str, tables: Mapping[str, object], meta: Optional[dict] = None) -> Dict[str, int]:
    """Apply the delta in ``path`` to ``tables`` (``{name: table}``, the names it was saved
    with): per shard and table, clear (when it was cleared), delete the evicted ids, then upsert
    the changed rows with every slot's values (only rows whose slice falls in each table's
    slice range). Every file is verified against ``checksums.json`` first. Returns
    ``{table name: rows upserted}``. CheckpointMismatchError naming the table and slot when a
    slot's dtype or width differs from the table's."""
    manifest = Manifest(path)
    meta = meta or read_delta_meta(path, manifest)
    impls = _unique_tables(tables)
    counts: Dict[str, int] = {name: 0 for name in impls}
    unknown = sorted(set(meta["tables"]) - set(impls))
    if unknown:
        logger.warning("delta checkpoint %s has tables %s that are not in the model; skipped", path, unknown)
    for jname in meta["shards"]:
        shard = _read_shard(path, jname, manifest)
        with safe_open(os.path.join(path, shard["file"]), framework="pt") as f:
            for i, t in enumerate(shard["tables"]):
                impl = impls.get(t["name"])
                if impl is None:
                    continue
                counts[t["name"]] += _apply_table(path, f, i, t, impl)
    return counts


def _overlaps(a: Tuple[int, int, int], b: Tuple[int, int, int]) -> bool:
    return a[2] == b[2] and max(a[0], b[0]) < min(a[1], b[1])


def _apply_table(path: str, f, i: int, t: dict, impl: DynamicTableImpl) -> int:
    slc = tuple(int(x) for x in t["slice"])
    mine = tuple(impl.slice)
    if slc[2] != mine[2]:
        raise CheckpointMismatchError(f"delta checkpoint {path}: table {t['name']!r} was saved with {slc[2]} "
                                      f"slices, the table has {mine[2]}")
    with impl.lock:
        if t["cleared"]:
            if slc == mine:
                impl.clear()
            elif _overlaps(slc, mine):
                ids = impl.ids()
                raw = decode_ids(ids)[0] if impl.children.is_coalesce() else ids
                impl.delete(ids[accept_ids(raw, slc[0], slc[1], slc[2])])
        if t["deleted"]:
            impl.delete(f.get_tensor(f"t{i}/deleted").to(impl.device))
        if not t["rows"]:
            return 0
        ids = f.get_tensor(f"t{i}/id")
        raw = decode_ids(ids)[0] if impl.children.is_coalesce() else ids
        mask = accept_ids(raw, *mine)
        everything = bool(mask.all())
        if not everything:
            ids = ids[mask]
        if ids.numel() == 0:
            return 0
        rows = impl.find_or_insert_rows(ids.to(impl.device), initialize=False)
        for slot in t["slots"]:
            if slot not in impl.storage.slots:
                logger.warning("delta checkpoint %s: slot %r of table %r is not a slot of the table (slots %s); "
                               "skipped", path, slot, t["name"], list(impl.storage.slots))
                continue
            vals = f.get_tensor(f"t{i}/s/{slot}")
            spec = impl.storage.specs[slot]
            if vals.dtype != spec.dtype or list(vals.shape[1:]) != list(spec.tail):
                raise CheckpointMismatchError(
                    f"delta checkpoint {path}: slot {slot!r} of table {t['name']!r} is {vals.dtype} rows "
                    f"{list(vals.shape[1:])}, the table's slot is {spec.dtype} rows {list(spec.tail)}")
            if not everything:
                vals = vals[mask]
            impl.storage.write_rows(slot, rows, vals)
        return int(ids.numel())


def read_delta_tensors(path: str, meta: Optional[dict] = None) -> Dict[str, torch.Tensor]:
    """The dense tensors (sparse-optimizer scalars) shard 0 wrote into the delta in ``path``."""
    manifest = Manifest(path)
    meta = meta or read_delta_meta(path, manifest)
    if not meta["shards"]:
        return {}
    shard = _read_shard(path, meta["shards"][0], manifest)
    out: Dict[str, torch.Tensor] = {}
    with safe_open(os.path.join(path, shard["file"]), framework="pt") as f:
        for j, name in enumerate(shard["dense"]):
            out[name] = f.get_tensor(f"dense/{j}")
    return out
