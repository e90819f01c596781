"""``recis-compat bench store``: tables in files with a RAM budget (``cached_ssd``) against the
same tables in RAM, and a table larger than the machine's RAM.

Cases (docs/stores.md, docs/benchmarks.md):

* **Zipf / uniform, cached_ssd vs in RAM** (same run, same batches): DeepFM-style training steps
  (``fields`` sparse fields of ``batch`` samples looked up in one ``HashTable`` of width ``dim``,
  FM second-order term + a linear head, BCE loss, backward, ``SparseAdamW`` + ``Adam`` steps) on
  ids drawn from a universe of ``universe`` ids, Zipf(``zipf_s``) distributed (rank k has
  probability ~ k^-s; ranks are scattered over the id space) or uniform. The two tables see the
  same batches, in alternating blocks of ``block`` steps after ``warmup`` untimed steps each;
  samples/s of each. The budget (``budget_mb``) is a fraction of the file-backed table's rows:
  the Zipf case's hot set fits it, the uniform case misses most of its rows every step (the
  detail's ``hot_set``: the ids drawn at least twice over all the batches, and the bytes their
  rows take in the cache, against the cache's bytes). The
  detail counts the row cache's misses, evictions and write-backs in the timed steps, and per
  step (``per_step``) the misses that were new ids, the read/write calls and bytes.
  Target (issue 14 item 2): Zipf >= 0.7x in RAM; uniform: reported.
* **beyond RAM** (opt-in, ``--beyond-ram-ids N``; minutes and 2x the table on disk): a fresh
  process trains a ``cached_ssd`` table (``--beyond-ram-dim``, SparseAdamW) up to N ids under a
  ``--beyond-ram-budget-mb`` budget, batches of 512k new ids plus 10 % repeats; reports its peak
  resident set (sampled every step and the kernel's high-water mark) against id map + budget +
  1 GiB, then saves a checkpoint, deletes the table's files, restores the checkpoint into a fresh
  ``cached_ssd`` table and compares 100k sampled ids' rows and slots bit for bit. The baseline of
  this case is the bound itself (ratio = bound / peak; >= 1 meets it).
"""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional

import click
import torch

from recis_compat.benchmarks import common
from recis_compat.benchmarks.common import BenchOptions, Case

DESCRIPTION = ("DeepFM-style steps with a cached_ssd table (files + RAM budget) vs the same table in RAM, "
               "Zipf and uniform ids; opt-in: a table 1.5x the machine's RAM trained, checkpointed, restored")
DEFAULTS: Dict[str, object] = {"universe": 4_000_000, "dim": 16, "batch": 4096, "fields": 26, "zipf_s": 1.05,
                               "budget_mb": 128, "warmup": 60, "steps": 40, "block": 5, "dir": None,
                               "beyond_ram_ids": 0, "beyond_ram_dim": 24, "beyond_ram_budget_mb": 4096}
_QUICK = {"universe": 200_000, "batch": 512, "budget_mb": 4, "warmup": 4, "steps": 4, "block": 2}
TARGET_ZIPF = 0.7
_GiB = 1 << 30


def _status_bytes(field: str) -> int:
    """A memory field of /proc/self/status (``VmRSS``, ``VmHWM``, ...) in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) << 10
    return 0


def _rss() -> int:
    return _status_bytes("VmRSS")


def _hwm() -> int:
    return _status_bytes("VmHWM")


def _io() -> Dict[str, int]:
    """This process's read/write system calls and bytes (/proc/self/io: ``syscr``, ``syscw``,
    ``rchar``, ``wchar``); zeros where the file is missing."""
    out = {"syscr": 0, "syscw": 0, "rchar": 0, "wchar": 0}
    try:
        with open("/proc/self/io") as f:
            lines = f.read().splitlines()
    except OSError:               # no /proc/self/io (another OS, a restricted container)
        return out
    for line in lines:
        k, _, v = line.partition(":")
        if k in out:
            out[k] = int(v)
    return out


# ----------------------------------------------------------------------------- ids
class IdSampler:
    """Ids of a ``universe``: Zipf(s) by rank (inverse CDF over k^-s, k = 1..universe) or uniform;
    rank k maps to id ``k * 2654435761 + 17`` (scattered, as real ids are)."""

    def __init__(self, universe: int, zipf_s: Optional[float], seed: int):
        self.universe = universe
        self.g = torch.Generator().manual_seed(seed)
        self.cdf = None
        if zipf_s is not None:
            w = torch.arange(1, universe + 1, dtype=torch.float64).pow_(-float(zipf_s))
            self.cdf = torch.cumsum(w, 0)
            self.cdf /= self.cdf[-1].clone()

    def draw(self, n: int) -> torch.Tensor:
        if self.cdf is None:
            ranks = torch.randint(0, self.universe, (n,), generator=self.g)
        else:
            u = torch.rand(n, generator=self.g, dtype=torch.float64)
            ranks = torch.searchsorted(self.cdf, u).clamp_(max=self.universe - 1)
        return ranks.to(torch.int64) * 2654435761 + 17


def _row_bytes(impl) -> int:
    """Bytes of one row over every slot of a table."""
    return sum(max(1, math.prod(sp.tail)) * torch.empty((), dtype=sp.dtype).element_size()
               for sp in impl.storage.specs.values())


# ----------------------------------------------------------------------------- DeepFM-style model
class _FMModel(torch.nn.Module):
    def __init__(self, name: str, dim: int, fields: int, store):
        super().__init__()
        from recis_compat.nn.initializers import TruncNormalInitializer
        from recis_compat.nn.modules.hashtable import HashTable, HashtableRegister
        HashtableRegister().unregister(name)
        self.fields, self.dim = fields, dim
        self.table = HashTable([dim], block_size=65536, name=name, store=store,
                               initializer=TruncNormalInitializer(std=0.01))
        self.head = torch.nn.Sequential(torch.nn.Linear(fields * dim, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        emb = self.table(ids).view(-1, self.fields, self.dim)            # [B, F, D]
        fm = 0.5 * (emb.sum(1).pow(2) - emb.pow(2).sum(1)).sum(1, keepdim=True)
        return (self.head(emb.flatten(1)) + fm).squeeze(1)


class _Trainer:
    def __init__(self, name: str, dim: int, fields: int, store):
        from recis_compat.nn.modules.hashtable import filter_out_sparse_param
        from recis_compat.optim import SparseAdamW
        self.model = _FMModel(name, dim, fields, store)
        self.sparse = SparseAdamW(filter_out_sparse_param(self.model), lr=1e-3)
        self.dense = torch.optim.Adam(self.model.head.parameters(), lr=1e-3)
        self.loss_fn = torch.nn.BCEWithLogitsLoss()

    def step(self, ids: torch.Tensor, labels: torch.Tensor) -> float:
        self.sparse.zero_grad()
        self.dense.zero_grad()
        loss = self.loss_fn(self.model(ids), labels)
        loss.backward()
        self.sparse.step()
        self.dense.step()
        return float(loss.detach())

    @property
    def impl(self):
        return self.model.table.impl


def _hot_set(batches, impl) -> Dict[str, object]:
    """The ids drawn at least twice over ``batches`` (``[(ids, labels)]``) and the bytes a
    ``cached_ssd`` cache needs to hold their rows (every slot plus the cache's bookkeeping per
    row, and the row index of the whole table, backend/row_cache.py), against the cache's
    bytes at the end."""
    from recis_compat.backend.row_cache import INDEX_BYTES, META_BYTES
    _, counts = torch.unique(torch.cat([ids for ids, _ in batches]), return_counts=True)
    ids = int((counts >= 2).sum())
    need = ids * (_row_bytes(impl) + META_BYTES) + len(impl) * INDEX_BYTES
    have = impl.storage.memory_bytes()
    return {"ids": ids, "bytes": need, "cache_bytes": have, "fits": need <= have}


def _ratio_case(label: str, zipf_s: Optional[float], cfg: Dict[str, object], workdir: str) -> Case:
    from recis_compat.backend.row_store import StoreConfig
    universe, dim, batch, fields = (int(cfg[k]) for k in ("universe", "dim", "batch", "fields"))
    warmup, steps, block = int(cfg["warmup"]), int(cfg["steps"]), max(1, int(cfg["block"]))
    sampler = IdSampler(universe, zipf_s, seed=1)
    g = torch.Generator().manual_seed(2)
    batches = [(sampler.draw(batch * fields), torch.randint(0, 2, (batch,), generator=g).float())
               for _ in range(warmup + steps)]
    store = StoreConfig("cached_ssd", os.path.join(workdir, label), int(cfg["budget_mb"]))
    torch.manual_seed(0)
    ram = _Trainer(f"bench_store_ram_{label}", dim, fields, None)
    torch.manual_seed(0)
    ssd = _Trainer(f"bench_store_ssd_{label}", dim, fields, store)
    for ids, y in batches[:warmup]:
        ram.step(ids, y)
        ssd.step(ids, y)
    t_ram = t_ssd = 0.0
    faults0 = common.page_faults()
    budget = store.budget()
    misses0, evictions0, writebacks0, fresh0 = budget.misses, budget.evictions, budget.writebacks, budget.fresh
    new_writes0 = budget.new_row_writes
    io_ssd = dict.fromkeys(_io(), 0)
    for b in range(warmup, warmup + steps, block):
        chunk = batches[b:b + block]
        t0 = time.perf_counter()
        for ids, y in chunk:
            ram.step(ids, y)
        t1 = time.perf_counter()
        io0 = _io()
        for ids, y in chunk:
            ssd.step(ids, y)
        t2 = time.perf_counter()
        io1 = _io()
        for k in io_ssd:
            io_ssd[k] += io1[k] - io0[k]
        t_ram += t1 - t0
        t_ssd += t2 - t1
    faults1 = common.page_faults()
    # correctness guard: both tables hold the same rows (same batches, same math)
    probe = batches[-1][0][:1000]
    r_ram, r_ssd = ram.impl.find_rows(probe), ssd.impl.find_rows(probe)
    assert torch.equal(ram.impl.gather(r_ram), ssd.impl.gather(r_ssd)), "cached_ssd rows differ from in-RAM rows"
    n_ids = len(ssd.impl)
    row_bytes = _row_bytes(ssd.impl)
    hot = _hot_set(batches, ssd.impl)
    evictions = budget.evictions - evictions0
    detail = {"universe": universe, "zipf_s": zipf_s, "dim": dim, "batch": batch, "fields": fields,
              "ids_per_step": batch * fields, "warmup_steps": warmup, "timed_steps": steps,
              "distinct_ids": n_ids, "table_row_bytes": row_bytes * n_ids,
              "budget_bytes": store.budget().limit_bytes,
              "budget_over_table": round(store.budget().limit_bytes / max(1, row_bytes * n_ids), 3),
              "cache_bytes": ssd.impl.storage.memory_bytes(), "over_budget_bytes": budget.over_budget_bytes,
              "hot_set": hot,
              "misses_timed": budget.misses - misses0, "evictions_timed": evictions,
              "writebacks_timed": budget.writebacks - writebacks0,
              # per timed cached_ssd step: rows read in (of them new ids, filled or read as one
              # run, never read back), evicted, written back at eviction, new ids' rows written
              # once their step was done; read/write calls and bytes (/proc/self/io)
              "per_step": {"misses": round((budget.misses - misses0) / steps, 1),
                           "new_id_misses": round((budget.fresh - fresh0) / steps, 1),
                           "evictions": round(evictions / steps, 1),
                           "writebacks": round((budget.writebacks - writebacks0) / steps, 1),
                           "new_row_writes": round((budget.new_row_writes - new_writes0) / steps, 1),
                           "read_calls": round(io_ssd["syscr"] / steps, 1),
                           "read_bytes": round(io_ssd["rchar"] / steps),
                           "write_calls": round(io_ssd["syscw"] / steps, 1),
                           "write_bytes": round(io_ssd["wchar"] / steps)},
              "page_faults_timed": {k: faults1[k] - faults0[k] for k in faults1},
              "ram_step_ms": round(t_ram / steps * 1e3, 2), "ssd_step_ms": round(t_ssd / steps * 1e3, 2),
              "threads": torch.get_num_threads(),
              "timed": "lookup + FM head fwd/bwd + SparseAdamW + Adam, the same batches for both tables"}
    ram.impl.close()
    ssd.impl.close()
    return Case(f"DeepFM-style steps, cached_ssd, {label} ids", "samples/s", round(steps * batch / t_ssd, 1),
                "the same table in RAM", round(steps * batch / t_ram, 1), detail=detail,
                target=TARGET_ZIPF if zipf_s is not None else None)


# ----------------------------------------------------------------------------- beyond RAM (child process)
def _beyond_ram_child(n_ids: int, dim: int, budget_mb: int, workdir: str) -> Dict[str, object]:
    from recis_compat.backend.row_store import StoreConfig
    from recis_compat.nn.initializers import ConstantInitializer
    from recis_compat.nn.modules.hashtable import HashTable, HashtableRegister, filter_out_sparse_param
    from recis_compat.optim import SparseAdamW
    from recis_compat.serialize import Loader, Saver

    store = StoreConfig("cached_ssd", os.path.join(workdir, "store"), budget_mb)
    ht = HashTable([dim], block_size=1 << 20, name="beyond_ram", store=store,
                   initializer=ConstantInitializer(init_val=0.01))
    opt = SparseAdamW(filter_out_sparse_param(ht), lr=1e-3)
    impl = ht.impl
    impl.id_map.reserve(n_ids)
    g = torch.Generator().manual_seed(3)
    step_ids = 1 << 19
    peak_rss, t0 = _rss(), time.perf_counter()
    done = 0
    while done < n_ids:
        k = min(step_ids, n_ids - done)
        new = torch.arange(done, done + k, dtype=torch.int64) * 2654435761 + 17
        old = torch.randint(0, max(1, done), (k // 10,), generator=g) * 2654435761 + 17 if done else new[:0]
        ids = torch.cat([new, old])
        opt.zero_grad()
        (ht(ids) * 1e-3).sum().backward()
        opt.step()
        done += k
        peak_rss = max(peak_rss, _rss())
    t_train = time.perf_counter() - t0
    id_map_bytes = impl.id_map.memory_bytes()
    row_bytes = _row_bytes(impl)
    disk = impl.storage.disk_bytes()
    hwm_train = _hwm()
    sample = torch.randint(0, n_ids, (100_000,), generator=g) * 2654435761 + 17
    rows = impl.find_rows(sample)
    expect = {s: impl.read_slot(s, rows) for s in impl.storage.slots}
    ckpt = os.path.join(workdir, "ckpt")
    t1 = time.perf_counter()
    Saver(path=ckpt, hashtables=filter_out_sparse_param(ht)).save()
    t_save = time.perf_counter() - t1
    ckpt_bytes = sum(os.path.getsize(os.path.join(ckpt, f)) for f in os.listdir(ckpt))
    peak_after_save = _hwm()
    impl.close()
    del ht, opt, impl
    HashtableRegister().unregister("beyond_ram")
    ht2 = HashTable([dim], block_size=1 << 20, name="beyond_ram", store=store,
                    initializer=ConstantInitializer(init_val=0.01))
    SparseAdamW(filter_out_sparse_param(ht2), lr=1e-3)
    t2 = time.perf_counter()
    Loader(ckpt, hashtables=filter_out_sparse_param(ht2)).load()
    t_load = time.perf_counter() - t2
    rows2 = ht2.impl.find_rows(sample)
    same = bool((rows2 >= 0).all()) and all(torch.equal(ht2.impl.read_slot(s, rows2), v) for s, v in expect.items())
    restored_ids = len(ht2.impl)
    ht2.impl.close()
    shutil.rmtree(ckpt, ignore_errors=True)
    return {"ids": n_ids, "dim": dim, "row_and_slot_bytes": row_bytes * n_ids,
            "ram_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
            "budget_bytes": budget_mb << 20, "id_map_bytes": id_map_bytes, "disk_bytes": disk,
            "peak_rss_training": peak_rss, "hwm_training": hwm_train, "hwm_after_save": peak_after_save,
            "hwm_after_restore": _hwm(), "train_s": round(t_train, 1),
            "new_ids_per_s": round(n_ids / t_train, 1), "save_s": round(t_save, 1), "restore_s": round(t_load, 1),
            "checkpoint_bytes": ckpt_bytes, "restored_ids": restored_ids, "restored_rows_equal": same}


def _beyond_ram_case(cfg: Dict[str, object], workdir: str) -> Case:
    args = json.dumps({"n_ids": int(cfg["beyond_ram_ids"]), "dim": int(cfg["beyond_ram_dim"]),
                       "budget_mb": int(cfg["beyond_ram_budget_mb"]), "workdir": workdir})
    proc = subprocess.run([sys.executable, "-m", "recis_compat.benchmarks.store_bench", "--beyond-ram-child", args],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"bench store: the beyond-RAM process failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    d = json.loads(proc.stdout.strip().splitlines()[-1])
    bound = d["id_map_bytes"] + d["budget_bytes"] + _GiB
    peak = max(d["peak_rss_training"], d["hwm_training"])
    d.update({"bound_bytes": bound, "rows_over_ram": round(d["row_and_slot_bytes"] / d["ram_bytes"], 3),
              "bound": "id map + budget + 1 GiB (training)"})
    if not d["restored_rows_equal"]:
        raise RuntimeError("bench store: the restored beyond-RAM table differs from the trained one")
    return Case(f"beyond RAM: {d['ids'] / 1e6:.0f}M ids x dim {d['dim']} in files, peak RSS", "GiB",
                round(peak / _GiB, 3), "id map + budget + 1 GiB", round(bound / _GiB, 3), higher_is_better=False,
                detail=d, target=1.0)


# ----------------------------------------------------------------------------- run
def run(opts: BenchOptions) -> List[Case]:
    cfg = dict(DEFAULTS)
    cfg.update({k: v for k, v in opts.extra.items() if v is not None})
    if opts.quick:
        cfg.update(_QUICK)
    for k in ("universe", "dim", "batch", "fields", "budget_mb", "steps"):
        if int(cfg[k]) <= 0:
            raise click.BadParameter(f"--{k.replace('_', '-')} must be > 0, got {cfg[k]}")
    opts.extra.update({k: cfg[k] for k in DEFAULTS})
    workdir = tempfile.mkdtemp(prefix="bench_store_", dir=cfg["dir"])
    try:
        cases = [_ratio_case("zipf", float(cfg["zipf_s"]), cfg, workdir),
                 _ratio_case("uniform", None, cfg, workdir)]
        if int(cfg["beyond_ram_ids"]) > 0:
            cases.append(_beyond_ram_case(cfg, workdir))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return cases


command = common.make_command(
    "store", run, help=DESCRIPTION,
    extra_options=[
        click.option("--universe", type=int, default=DEFAULTS["universe"], show_default=True,
                     help="Distinct ids the Zipf / uniform draws come from."),
        click.option("--dim", type=int, default=DEFAULTS["dim"], show_default=True, help="Embedding width."),
        click.option("--batch", type=int, default=DEFAULTS["batch"], show_default=True, help="Samples per step."),
        click.option("--fields", type=int, default=DEFAULTS["fields"], show_default=True,
                     help="Sparse fields per sample (ids per step = batch x fields)."),
        click.option("--zipf-s", "zipf_s", type=float, default=DEFAULTS["zipf_s"], show_default=True),
        click.option("--budget-mb", "budget_mb", type=int, default=DEFAULTS["budget_mb"], show_default=True,
                     help="RAM budget of the cached_ssd table (MiB)."),
        click.option("--warmup", type=int, default=DEFAULTS["warmup"], show_default=True),
        click.option("--steps", type=int, default=DEFAULTS["steps"], show_default=True),
        click.option("--block", type=int, default=DEFAULTS["block"], show_default=True,
                     help="Steps per alternating block (in RAM, then cached_ssd)."),
        click.option("--dir", default=None, help="Where the row files and checkpoints go (default: the temp dir)."),
        click.option("--beyond-ram-ids", "beyond_ram_ids", type=int, default=0, show_default=True,
                     help="Also train a cached_ssd table of this many ids in a fresh process (0: skip)."),
        click.option("--beyond-ram-dim", "beyond_ram_dim", type=int, default=DEFAULTS["beyond_ram_dim"],
                     show_default=True),
        click.option("--beyond-ram-budget-mb", "beyond_ram_budget_mb", type=int,
                     default=DEFAULTS["beyond_ram_budget_mb"], show_default=True),
    ])


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--beyond-ram-child":
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
        print(json.dumps(_beyond_ram_child(**json.loads(sys.argv[2]))))
