"""``recis-compat ckpt inspect DIR``: what a checkpoint written by the Trainer holds.

``DIR`` is either a checkpoint root (with a ``checkpoint`` file listing ``ckpt_<step>`` ids;
the latest is inspected unless an id is given) or one ``ckpt_<step>`` directory (layout in
:mod:`recis_compat.framework.checkpoint_manager`). Only metadata is read for the tables (the
safetensors headers), so inspecting a large checkpoint is fast; the small dense tensors of the
sparse files (sparse-optimizer scalars) are read with their values. ``model.pt``, ``extra.pt``
and ``io_state_<rank>.pt`` are loaded with ``torch.load(weights_only=True)``.

Checksums (recis_compat/serialize/integrity.py): the report says whether the directory has a
``checksums.json`` and which files it does not cover; with ``verify=True`` every listed file is
read and checked, and each mismatch is a problem naming the file (this reads all table data).
A ``checkpoint`` list entry must name a directory directly inside the root.

Delta checkpoints (recis_compat/framework/checkpoint_manager.py, recis_compat/serialize/delta.py):
``DIR`` may also be a ``delta_<step>`` directory (or ``--ckpt-id delta_<step>`` / a step that only
a delta has); the report then describes the delta (base, parent, sequence, rows changed and ids
deleted per table) instead of RecIS's sparse files. For a root, ``chain`` shows the inspected
checkpoint's chain: its base and the deltas listed for it in ``delta_checkpoint``, in order;
a missing, unlinked or (with ``verify``) corrupt link is a problem naming it.

:func:`inspect_checkpoint` returns a JSON-serialisable dict; :func:`format_text` renders it.
A directory that is not a checkpoint raises :class:`NotACheckpointError`; files that exist but
cannot be read are reported in the result's ``problems`` list.
"""
from __future__ import annotations

import json
import os
import re
from typing import Any, Dict, List, Optional, Tuple

__all__ = ["NotACheckpointError", "resolve_checkpoint", "inspect_checkpoint", "format_text"]

CHECKPOINT_FILE = "checkpoint"
_CKPT_MARKERS = ("index", "tensorkey.json", "model.pt", "extra.pt", "delta.json")
DELTA_LIST_FILE = "delta_checkpoint"
_SMALL = 16          # dense tensors / values with at most this many elements are shown


class NotACheckpointError(ValueError):
    """The path is neither a checkpoint root nor a checkpoint directory (or the requested
    checkpoint does not exist)."""


# ------------------------------------------------------------------------------ locating
def _read_ids(root: str) -> List[str]:
    """The root's checkpoint list (checkpoint_manager.read_checkpoint_list), errors as
    NotACheckpointError."""
    from recis_compat.framework.checkpoint_manager import read_checkpoint_list
    from recis_compat.serialize.layout import CheckpointError
    try:
        return read_checkpoint_list(root)
    except CheckpointError as e:
        raise NotACheckpointError(str(e)) from e


def _listed_dir(root: str, ckpt_id: str) -> str:
    """``root/ckpt_id`` for an id read from the list file (checkpoint_manager.checkpoint_dir_of:
    it must stay inside ``root``), errors as NotACheckpointError."""
    from recis_compat.framework.checkpoint_manager import checkpoint_dir_of
    from recis_compat.serialize.layout import CheckpointError
    try:
        return checkpoint_dir_of(root, ckpt_id)
    except CheckpointError as e:
        raise NotACheckpointError(str(e)) from e


def _is_ckpt_dir(path: str) -> bool:
    if any(os.path.isfile(os.path.join(path, m)) for m in _CKPT_MARKERS):
        return True
    # an unfinished save: data files / metadata fragments but no index yet
    return any(n.endswith((".safetensors", ".fragment.json")) for n in os.listdir(path))


def _ckpt_subdirs(path: str) -> List[str]:
    def step(name):
        m = re.fullmatch(r"ckpt_(\d+)", name)
        return (0, int(m.group(1)), name) if m else (1, 0, name)
    return sorted((n for n in os.listdir(path) if n.startswith("ckpt_")
                   and os.path.isdir(os.path.join(path, n))), key=step)


def resolve_checkpoint(path: str, ckpt_id: Optional[str] = None) -> Tuple[str, Optional[str], List[str]]:
    """``(checkpoint directory, root or None, ids listed in the root's checkpoint file)``.

    Raises :class:`NotACheckpointError` with a message saying what was expected.
    """
    path = os.path.normpath(os.fspath(path))
    if not os.path.exists(path):
        raise NotACheckpointError(f"{path} does not exist")
    if not os.path.isdir(path):
        raise NotACheckpointError(f"{path} is not a directory (give a checkpoint root or a ckpt_<step> "
                                  "directory)")
    if os.path.isfile(os.path.join(path, CHECKPOINT_FILE)):
        root = path
        ids = _read_ids(root)
        if ckpt_id is None:
            if not ids:
                raise NotACheckpointError(f"{root}/{CHECKPOINT_FILE} lists no checkpoint")
            ckpt_id = ids[-1]
            ckpt_dir = _listed_dir(root, ckpt_id)
        else:
            ckpt_id = str(ckpt_id)
            if ckpt_id.isdigit():
                step = ckpt_id
                ckpt_id = f"ckpt_{step}"
                if not os.path.isdir(os.path.join(root, ckpt_id)) and os.path.isdir(os.path.join(root, f"delta_{step}")):
                    ckpt_id = f"delta_{step}"
            ckpt_dir = os.path.join(root, ckpt_id)
        if not os.path.isdir(ckpt_dir):
            listed = "listed in" if ckpt_id in ids else "not listed in"
            raise NotACheckpointError(f"checkpoint {ckpt_id} ({listed} {root}/{CHECKPOINT_FILE}) has no "
                                      f"directory {ckpt_dir}; listed: {ids or 'none'}")
        return ckpt_dir, root, ids
    if _is_ckpt_dir(path):
        if ckpt_id is not None:
            raise NotACheckpointError(f"{path} is a checkpoint directory; --ckpt-id needs the checkpoint "
                                      f"root (here {os.path.dirname(path) or '.'})")
        parent = os.path.dirname(path)
        if parent and os.path.isfile(os.path.join(parent, CHECKPOINT_FILE)):
            return path, parent, _read_ids(parent)
        return path, None, []
    subdirs = _ckpt_subdirs(path)
    hint = (f"; it holds {', '.join(subdirs)} but no '{CHECKPOINT_FILE}' file: inspect one of them"
            if subdirs else "")
    raise NotACheckpointError(
        f"{path} is not a checkpoint: expected a checkpoint root (with a '{CHECKPOINT_FILE}' file) or a "
        f"ckpt_<step> directory (with {', '.join(repr(m) for m in _CKPT_MARKERS)}){hint}")


# ------------------------------------------------------------------------------ summaries
def _dtype_name(dtype) -> str:
    return str(dtype).replace("torch.", "")


def _plain(v):
    """JSON-safe values: non-finite floats become strings (recursively through lists)."""
    if isinstance(v, list):
        return [_plain(x) for x in v]
    if isinstance(v, float) and (v != v or v in (float("inf"), float("-inf"))):
        return str(v)
    return v


def _tensor_summary(t) -> Dict[str, Any]:
    d: Dict[str, Any] = {"type": "tensor", "shape": list(t.shape), "dtype": _dtype_name(t.dtype)}
    if t.numel() <= _SMALL and not t.is_complex():
        try:
            d["value"] = _plain(t.detach().cpu().tolist())
        except (RuntimeError, TypeError):
            pass
    return d


def _optimizer_summary(sd: dict) -> Dict[str, Any]:
    state = sd.get("state") or {}
    keys = sorted({str(k) for v in state.values() if isinstance(v, dict) for k in v})
    groups = []
    for g in sd.get("param_groups") or []:
        if isinstance(g, dict):
            groups.append({k: _plain(v) for k, v in g.items()
                           if k != "params" and isinstance(v, (int, float, str, bool)) and v is not None}
                          | {"params": len(g.get("params") or [])})
    return {"type": "optimizer_state", "param_states": len(state), "state_keys": keys,
            "param_groups": groups}


def _summary(obj, depth: int = 0) -> Any:
    import torch
    if isinstance(obj, torch.Tensor):
        return _tensor_summary(obj)
    if isinstance(obj, dict):
        if "state" in obj and "param_groups" in obj:
            return _optimizer_summary(obj)
        if depth >= 2 or len(obj) > 32:
            return {"type": "dict", "len": len(obj), "keys": [str(k) for k in list(obj)[:8]]}
        return {"type": "dict", "items": {str(k): _summary(v, depth + 1) for k, v in obj.items()}}
    if isinstance(obj, (list, tuple)):
        if len(obj) <= 8 and depth < 2 and all(isinstance(x, (int, float, str, bool)) or x is None for x in obj):
            return [_plain(x) for x in obj]
        return {"type": type(obj).__name__, "len": len(obj)}
    if isinstance(obj, (int, float, str, bool)) or obj is None:
        return _plain(obj)
    return {"type": type(obj).__name__}


def _io_state_summary(states) -> Any:
    """``{sub_id: state string}`` of OrcDataset -> decoded positions."""
    if not isinstance(states, dict):
        return _summary(states)
    out = {}
    for sub, st in states.items():
        try:
            d = json.loads(st.decode() if isinstance(st, (bytes, bytearray)) else st)
        except (TypeError, ValueError, AttributeError):
            out[str(sub)] = _summary(st)
            continue
        out[str(sub)] = d if isinstance(d, dict) else _summary(st)
    return out


def _torch_load(path: str, what: str):
    """The Trainer's loader (checkpoint_manager.load_torch_file) without the checksum check:
    checksums are reported by :func:`_checksum_part` (and checked only with ``verify``)."""
    from recis_compat.framework.checkpoint_manager import load_torch_file
    return load_torch_file(path, what, verify=False)


# ------------------------------------------------------------------------------ inspection
def _sparse_part(ckpt_dir: str, problems: List[str]) -> Tuple[List[dict], List[dict], List[dict]]:
    """``(tables, dense tensors, data files)`` of the sparse files."""
    from recis_compat.serialize.bundle import CheckpointBundle
    from recis_compat.serialize.layout import DENSE_SLICE, CheckpointError, parse_slice

    if not os.path.isfile(os.path.join(ckpt_dir, "index")):
        stray = sorted(n for n in os.listdir(ckpt_dir) if n.endswith((".safetensors", ".fragment.json")))
        if stray:
            problems.append(f"{ckpt_dir} has sparse data files ({', '.join(stray[:4])}"
                            f"{', ...' if len(stray) > 4 else ''}) but no 'index': an unfinished save "
                            "(shard 0 writes the index last)")
        return [], [], []
    try:
        bundle = CheckpointBundle(ckpt_dir, verify=False)    # headers only; checksums: _checksum_part
    except CheckpointError as e:
        problems.append(str(e))
        return [], [], []
    files = [{"name": f, "bytes": os.path.getsize(os.path.join(ckpt_dir, f))} for f in bundle.files]
    tables: Dict[str, Dict[str, list]] = {}
    dense: List[dict] = []
    for name in sorted(bundle.tensors):
        refs = bundle.blocks(name)
        try:
            metas = [bundle.block_meta(r) for r in refs]
        except CheckpointError as e:
            problems.append(str(e))
            continue
        if all(r.slice == DENSE_SLICE for r in refs):
            dtype, shape = metas[0]
            entry = {"name": name, "shape": list(shape), "dtype": _dtype_name(dtype), "file": refs[0].file}
            n = 1
            for s in shape:
                n *= int(s)
            if n <= _SMALL:
                try:
                    entry["value"] = _summary(bundle.read(refs[0])).get("value")
                except CheckpointError as e:
                    problems.append(str(e))
            dense.append(entry)
            continue
        shared, _, slot = name.rpartition("@")
        tables.setdefault(shared or name, {})[slot] = list(zip(refs, metas))
    out_tables = []
    for shared in sorted(tables):
        slots = tables[shared]
        order = [s for s in ("id", "embedding") if s in slots] + sorted(s for s in slots if s not in ("id", "embedding"))
        slot_info = []
        for s in order:
            blocks = slots[s]
            shape = list(blocks[0][1][1])
            if shape:
                shape[0] = sum(int(m[1][0]) if m[1] else 0 for _, m in blocks)
            slot_info.append({"name": s, "shape": shape, "dtype": _dtype_name(blocks[0][1][0])})
        by_name = {d["name"]: d for d in slot_info}
        key_slot = "id" if "id" in slots else order[0]
        rows = by_name[key_slot]["shape"][0] if by_name[key_slot]["shape"] else 0
        emb = by_name.get("embedding")
        for d in slot_info:
            if d["shape"] and d["shape"][0] != rows:
                problems.append(f"table {shared!r}: slot {d['name']!r} has {d['shape'][0]} rows, "
                                f"{key_slot!r} has {rows}")
        slices = []
        for ref, (_, shape) in slots[key_slot]:
            entry = {"slice": ref.slice, "part": ref.part, "rows": int(shape[0]) if shape else 0, "file": ref.file}
            try:
                entry["begin"], entry["end"], entry["size"] = parse_slice(ref.slice)
            except ValueError as e:
                problems.append(f"table {shared!r}: {e}")
            m = re.fullmatch(r"part_(\d+)_(\d+)", ref.part or "")
            if m:
                entry["shard_index"], entry["shard_num"] = int(m.group(1)), int(m.group(2))
            slices.append(entry)
        out_tables.append({
            "name": shared, "rows": rows,
            "dim": (emb["shape"][1] if emb and len(emb["shape"]) > 1 else None),
            "dtype": emb["dtype"] if emb else None,
            "id_dtype": by_name["id"]["dtype"] if "id" in by_name else None,
            "slots": slot_info, "slices": slices,
        })
    return out_tables, dense, files


def _checksum_part(ckpt_dir: str, verify: bool, problems: List[str]) -> Dict[str, Any]:
    """``{"present", "algorithm", "files", "unlisted", "verified"}`` of ``checksums.json``."""
    from recis_compat.serialize.integrity import CHECKSUM_FILE, Manifest
    from recis_compat.serialize.layout import CheckpointError
    try:
        manifest = Manifest(ckpt_dir)
    except CheckpointError as e:
        problems.append(str(e))
        return {"present": True, "algorithm": None, "files": 0, "unlisted": [], "verified": None}
    names = sorted(n for n in os.listdir(ckpt_dir) if n != CHECKSUM_FILE and os.path.isfile(os.path.join(ckpt_dir, n)))
    out: Dict[str, Any] = {"present": manifest.present, "algorithm": manifest.algorithm,
                           "files": len(manifest.files), "verified": None,
                           "unlisted": [n for n in names if manifest.present and n not in manifest.files]}
    if manifest.present:
        gone = sorted(n for n in manifest.files if n not in names)
        if gone:
            problems.append(f"{ckpt_dir}: files listed in {CHECKSUM_FILE} are missing: {', '.join(gone)}")
    if verify and manifest.present:
        ok = 0
        for n in names:
            if n not in manifest.files:
                continue
            try:
                manifest.verify(n)
                ok += 1
            except CheckpointError as e:
                problems.append(str(e))
        out["verified"] = ok
    return out


def _delta_part(ckpt_dir: str, problems: List[str]) -> Tuple[Optional[dict], List[dict]]:
    """``(delta description or None, data files)`` of a delta directory (delta.json and the
    shard JSONs, read without checksums: those are :func:`_checksum_part`'s)."""
    from recis_compat.serialize.delta import DELTA_META
    try:
        with open(os.path.join(ckpt_dir, DELTA_META), "rb") as f:
            meta = json.loads(f.read().decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        problems.append(f"{ckpt_dir}/{DELTA_META} cannot be read ({e})")
        return None, []
    if not isinstance(meta, dict) or not isinstance(meta.get("tables"), dict):
        problems.append(f"{ckpt_dir}/{DELTA_META} is not a delta description")
        return None, []
    files = []
    for jname in meta.get("shards") or []:
        try:
            with open(os.path.join(ckpt_dir, jname), "rb") as f:
                shard = json.loads(f.read().decode("utf-8"))
            data = shard["file"]
            files.append({"name": data, "bytes": os.path.getsize(os.path.join(ckpt_dir, data)),
                          "shard_index": shard.get("shard_index")})
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
            problems.append(f"{ckpt_dir}: delta shard {jname!r} cannot be read ({e})")
    delta = {k: meta.get(k) for k in ("base", "parent", "sequence", "global_step", "shard_num")}
    delta["tables"] = [{"name": n, "rows": int(v.get("rows", 0)), "deleted": int(v.get("deleted", 0))}
                       for n, v in sorted(meta["tables"].items())]
    return delta, files


def _chain_part(root: str, name: str, delta: Optional[dict], verify: bool, problems: List[str]) -> Optional[dict]:
    """The chain of the inspected checkpoint ``name`` in ``root``: ``{"base", "links": [{"id",
    "sequence", "global_step", "rows", "deleted", "ok"}]}`` (links after the inspected delta
    are included and marked ``after``)."""
    from recis_compat.framework.checkpoint_manager import verify_link, read_delta_list
    from recis_compat.serialize.delta import DELTA_META
    from recis_compat.serialize.layout import CheckpointError
    try:
        entries = read_delta_list(root)
    except CheckpointError as e:
        problems.append(str(e))
        return None
    base = delta["base"] if delta is not None else name
    links = sorted((s, d) for d, b, s in entries if b == base)
    if delta is None and not links:
        return {"base": base, "links": []}
    out = []
    parent, after = base, False
    for i, (seq, d) in enumerate(links, 1):
        link: Dict[str, Any] = {"id": d, "sequence": seq, "after": after}
        if seq != i:
            problems.append(f"chain of {base}: link {i} is missing from {root}/{DELTA_LIST_FILE} "
                            f"(sequences listed: {[s for s, _ in links]})")
            link["ok"] = False
            out.append(link)
            break
        try:
            if verify:
                meta = verify_link(root, base, d, seq, parent)
            else:
                with open(os.path.join(root, d, DELTA_META), "rb") as f:
                    meta = json.loads(f.read().decode("utf-8"))
                if meta.get("base") != base or meta.get("sequence") != seq or meta.get("parent") != parent:
                    raise CheckpointError(f"chain of {base}: link {seq} ({d}) does not link (its delta.json says "
                                          f"base {meta.get('base')!r}, sequence {meta.get('sequence')}, parent "
                                          f"{meta.get('parent')!r})")
            link.update(ok=True, global_step=meta.get("global_step"),
                        rows=sum(int(t.get("rows", 0)) for t in meta["tables"].values()),
                        deleted=sum(int(t.get("deleted", 0)) for t in meta["tables"].values()))
        except FileNotFoundError:
            problems.append(f"chain of {base}: link {seq} ({d}) is missing ({os.path.join(root, d)})")
            link["ok"] = False
        except (CheckpointError, OSError, ValueError, KeyError, AttributeError) as e:
            problems.append(str(e) if isinstance(e, CheckpointError) else f"chain of {base}: link {seq} ({d}): {e}")
            link["ok"] = False
        out.append(link)
        parent = d
        if d == name:
            after = True
    return {"base": base, "links": out}


def inspect_checkpoint(path: str, ckpt_id: Optional[str] = None, verify: bool = False) -> Dict[str, Any]:
    """Everything ``ckpt inspect`` prints, as a JSON-serialisable dict. ``verify`` checks every
    file listed in ``checksums.json`` (reads all of them)."""
    from recis_compat.serialize.layout import CheckpointError
    ckpt_dir, root, ids = resolve_checkpoint(path, ckpt_id)
    problems: List[str] = []
    name = os.path.basename(ckpt_dir)
    info: Dict[str, Any] = {
        "path": ckpt_dir, "root": root, "ckpt_id": name, "checkpoints": ids,
        "latest": bool(ids) and ids[-1] == name,
    }
    info["checksums"] = _checksum_part(ckpt_dir, verify, problems)
    info["delta"] = None
    if os.path.isfile(os.path.join(ckpt_dir, "delta.json")):
        info["delta"], files = _delta_part(ckpt_dir, problems)
        tables, dense = [], []
    else:
        tables, dense, files = _sparse_part(ckpt_dir, problems)
    info["chain"] = _chain_part(root, name, info["delta"], verify, problems) if root else None
    info["data_files"] = files
    info["tables"] = tables
    info["dense_tensors"] = dense

    model_path = os.path.join(ckpt_dir, "model.pt")
    info["model"] = None
    if os.path.isfile(model_path):
        try:
            state = _torch_load(model_path, "dense parameters")
            keys = []
            numel = 0
            for k, v in (state.items() if isinstance(state, dict) else []):
                s = _summary(v)
                entry = {"name": str(k)}
                if isinstance(s, dict) and s.get("type") == "tensor":
                    entry.update(shape=s["shape"], dtype=s["dtype"])
                    n = 1
                    for d in s["shape"]:
                        n *= d
                    numel += n
                else:
                    entry["value"] = s
                keys.append(entry)
            info["model"] = {"file": "model.pt", "keys": keys, "numel": numel}
            if not isinstance(state, dict):
                problems.append(f"{model_path}: expected a state dict, got {type(state).__name__}")
        except CheckpointError as e:   # missing, truncated or foreign file
            problems.append(str(e))

    extra_path = os.path.join(ckpt_dir, "extra.pt")
    info["extra"] = None
    info["global_step"] = None
    if os.path.isfile(extra_path):
        try:
            extra = _torch_load(extra_path, "global step and optimizer state")
            if isinstance(extra, dict):
                objs = {str(k): _summary(v) for k, v in extra.items()}
                gs = extra.get("global_step")
                if gs is not None:
                    try:
                        info["global_step"] = int(gs)
                    except (TypeError, ValueError, RuntimeError):
                        pass
                info["extra"] = {"file": "extra.pt", "objects": objs}
            else:
                problems.append(f"{extra_path}: expected a dict, got {type(extra).__name__}")
        except CheckpointError as e:
            problems.append(str(e))

    count_path = os.path.join(ckpt_dir, "io_state_count")
    io_count = None
    if os.path.isfile(count_path):
        with open(count_path, "rb") as f:
            raw = f.read()
        try:
            io_count = int(raw.decode("ascii").strip())
        except (UnicodeDecodeError, ValueError):
            problems.append(f"{count_path}: not a number ({raw[:40]!r})")
    io_files = []
    for fn in sorted(os.listdir(ckpt_dir), key=lambda n: (len(n), n)):
        m = re.fullmatch(r"io_state_(\d+)\.pt", fn)
        if not m:
            continue
        entry: Dict[str, Any] = {"file": fn, "rank": int(m.group(1))}
        try:
            st = _torch_load(os.path.join(ckpt_dir, fn), "dataset IO state")
            entry["states"] = ({str(k): _io_state_summary(v) for k, v in st.items()}
                               if isinstance(st, dict) else _summary(st))
        except CheckpointError as e:
            problems.append(str(e))
        io_files.append(entry)
    if io_count is not None and len(io_files) != io_count:
        problems.append(f"io_state_count is {io_count} but {len(io_files)} io_state_<rank>.pt files exist")
    info["io_state"] = {"count": io_count, "files": io_files}
    if not tables and not dense and info["delta"] is None and info["model"] is None and info["extra"] is None \
            and not problems:
        problems.append(f"{ckpt_dir} holds neither sparse files (index) nor model.pt / extra.pt")
    info["problems"] = problems
    return info


# ------------------------------------------------------------------------------ text output
def _fmt_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def _fmt_value(s: Any) -> str:
    """One-line rendering of a :func:`_summary` result."""
    if isinstance(s, dict):
        t = s.get("type")
        if t == "tensor":
            txt = f"tensor {s['dtype']} {s['shape']}"
            return txt + (f" = {s['value']}" if "value" in s else "")
        if t == "optimizer_state":
            groups = s["param_groups"]
            g = ", ".join(f"lr={x['lr']}" if "lr" in x else f"{x.get('params', 0)} params" for x in groups)
            keys = f" [{', '.join(s['state_keys'])}]" if s["state_keys"] else ""
            return (f"optimizer state: {s['param_states']} param states{keys}, "
                    f"{len(groups)} param group(s)" + (f" ({g})" if g else ""))
        if t == "dict" and "items" in s:
            return "{" + ", ".join(f"{k}: {_fmt_value(v)}" for k, v in s["items"].items()) + "}"
        if t == "dict":
            return f"dict of {s['len']} ({', '.join(s['keys'])}{', ...' if s['len'] > len(s['keys']) else ''})"
        if "len" in s:
            return f"{t} of {s['len']}"
        if "type" in s and len(s) == 1:
            return f"<{t}>"
        return json.dumps(s)
    return repr(s) if isinstance(s, str) else str(s)


def format_text(info: Dict[str, Any]) -> str:
    lines = [f"checkpoint: {info['path']}"]
    if info["root"]:
        ids = info["checkpoints"]
        state = "latest" if info["latest"] else ("listed" if info["ckpt_id"] in ids else "not listed")
        lines.append(f"  root {info['root']}: {len(ids)} listed ({', '.join(ids)}); {info['ckpt_id']} is {state}")
    lines.append(f"global_step: {info['global_step'] if info['global_step'] is not None else '(no extra.pt)'}")
    delta = info.get("delta")
    if delta is not None:
        lines.append(f"delta checkpoint: base {delta['base']}, parent {delta['parent']}, sequence {delta['sequence']}, "
                     f"global_step {delta['global_step']}, {delta['shard_num']} shard(s)")
        for t in delta["tables"]:
            lines.append(f"  {t['name']}: {t['rows']} rows changed, {t['deleted']} ids deleted")
    chain = info.get("chain")
    if chain is not None:
        links = chain["links"]
        if not links:
            lines.append(f"chain: {chain['base']} (full, no deltas)")
        else:
            lines.append(f"chain: {chain['base']} (full) + {len(links)} delta(s):")
            for ln in links:
                mark = "" if ln.get("ok") else "  BROKEN"
                here = "  <- inspected" if ln["id"] == info["ckpt_id"] else ""
                detail = (f"step {ln.get('global_step')}, {ln.get('rows')} rows, {ln.get('deleted')} deleted"
                          if ln.get("ok") else "see problems")
                lines.append(f"  {ln['sequence']}. {ln['id']}: {detail}{mark}{here}")
    cs = info["checksums"]
    if not cs["present"]:
        lines.append("checksums: none (checksums.json absent: written by RecIS or an older recis-compat)")
    else:
        state = f"{cs['verified']} verified" if cs["verified"] is not None else "not verified"
        unlisted = f"; not covered: {', '.join(cs['unlisted'])}" if cs["unlisted"] else ""
        lines.append(f"checksums: {cs['algorithm']}, {cs['files']} files ({state}){unlisted}")
    files = info["data_files"]
    if files:
        total = sum(f["bytes"] for f in files)
        lines.append(f"{'delta' if delta is not None else 'sparse'} data files: {len(files)} ({_fmt_bytes(total)})")
        for f in files:
            lines.append(f"  {f['name']}  {_fmt_bytes(f['bytes'])}")
    else:
        lines.append("sparse data files: none (no index)" if delta is None else "delta data files: none")

    tables = info["tables"]
    lines.append(f"tables ({len(tables)}):")
    for t in tables:
        dim = f"dim {t['dim']}" if t["dim"] is not None else "no embedding slot"
        ids = f", ids {t['id_dtype']}" if t["id_dtype"] else ""
        lines.append(f"  {t['name']}: {t['rows']} rows, {dim}, {t['dtype']}{ids}")
        w = max(len(s["name"]) for s in t["slots"])
        lines.append("    slots:")
        for s in t["slots"]:
            lines.append(f"      {s['name']:<{w}}  {str(s['shape']):<12} {s['dtype']}")
        lines.append("    slices:")
        for s in t["slices"]:
            rng = f"[{s['begin']}, {s['end']}) of {s['size']}" if "begin" in s else repr(s["slice"])
            shard = f"shard {s['shard_index']}/{s['shard_num']}" if "shard_index" in s else (s["part"] or "-")
            lines.append(f"      {rng}  {shard}: {s['rows']} rows")

    dense = info["dense_tensors"]
    lines.append(f"dense tensors of the sparse files ({len(dense)}):")
    w = max((len(d["name"]) for d in dense), default=0)
    for d in dense:
        val = f" = {d['value']}" if "value" in d and d["value"] is not None else ""
        lines.append(f"  {d['name']:<{w}}  {d['dtype']} {d['shape']}{val}")

    model = info["model"]
    if model is None:
        lines.append("model.pt: absent")
    else:
        lines.append(f"model.pt ({len(model['keys'])} keys, {model['numel']} values):")
        w = max((len(k["name"]) for k in model["keys"]), default=0)
        for k in model["keys"]:
            if "shape" in k:
                lines.append(f"  {k['name']:<{w}}  {str(k['shape']):<12} {k['dtype']}")
            else:
                lines.append(f"  {k['name']:<{w}}  {_fmt_value(k['value'])}")

    extra = info["extra"]
    if extra is None:
        lines.append("extra.pt: absent")
    else:
        lines.append(f"extra.pt ({len(extra['objects'])} objects):")
        for k, v in extra["objects"].items():
            lines.append(f"  {k}: {_fmt_value(v)}")

    io = info["io_state"]
    count = io["count"] if io["count"] is not None else "absent"
    lines.append(f"io_state: io_state_count {count}, {len(io['files'])} file(s)")
    for f in io["files"]:
        lines.append(f"  {f['file']} (rank {f['rank']}):")
        for name, st in (f.get("states") or {}).items() if isinstance(f.get("states"), dict) else []:
            if isinstance(st, dict) and st and all(isinstance(v, dict) and "file_index" in v for v in st.values()):
                for sub, d in st.items():
                    lines.append(f"    {name}[{sub}]: next row: file {d['file_index']} (0-based) of {d.get('files')}, row {d['row']} "
                                 f"(worker {d.get('worker_idx')}/{d.get('worker_num')}, "
                                 f"fingerprint {d.get('fingerprint')})")
            else:
                lines.append(f"    {name}: {_fmt_value(st)}")
    if info["problems"]:
        lines.append(f"problems ({len(info['problems'])}):")
        for p in info["problems"]:
            lines.append(f"  {p}")
    return "\n".join(lines)
