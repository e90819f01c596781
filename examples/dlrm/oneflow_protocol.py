"""OneFlow's training protocol on top of recis's Trainer, shared by examples/dlrm and examples/deepfm_criteo.

OneFlow's ``dlrm_train_eval.py`` / ``deepfm_train_eval.py`` (Oneflow-Inc/models,
RecommenderSystems) run a plain loop: train ``train_batches`` steps of a global
``batch_size`` (each of N processes reads ``batch_size // N`` rows of its shard), print the loss
every ``loss_print_interval`` steps, evaluate AUC and logloss on held-out rows every
``eval_interval`` steps (DeepFM: every epoch, ``ceil(num_train_samples / batch_size)`` steps),
optionally save the model after each evaluation, stop early on a plateau (DeepFM) and finish
with a test evaluation. Here recis's ``Trainer`` runs the steps (forward, backward, dense
optimizer + LR scheduler, sparse optimizer, checkpoints, sharding under torchrun) and
:class:`ProtocolHook` (a Trainer hook) adds the rest:

* the sparse optimizer's LR follows the dense one's schedule (one ``LambdaLR`` each);
* loss lines ``Rank[0], Step S, Loss L, Latency ms, Throughput samples/s``;
* evaluation (:func:`evaluate`): the ranks share out the split's batches, run them through the
  Trainer's (sharded) model in eval mode, gather the predictions and compute AUC (ties
  averaged) and logloss over all of them, the same for any number of processes:
  ``Rank[0], Step S, AUC A, LogLoss L, Eval_samples N``;
* ``save_model_after_each_eval`` -> ``<model_save_dir>/step_<S>_val_auc_<A>`` (recis checkpoint
  layout); ``save_initial_model`` -> ``<model_save_dir>/initial_checkpoint``;
* the plateau rule (DeepFM): monitor ``auc - logloss``; no improvement by ``min_delta`` for
  ``patience`` evaluations stops training (:class:`StopAwareDataset` ends the train stream, and
  the Trainer's stop flag is reduced over ranks, so every rank stops at the same step).

Store arguments (:func:`check_store_args`): recis-compat's tables are dynamic hash tables (no
capacity). ``cached_host_mem`` (OneFlow's DeepFM default) keeps every row in RAM; ``device_mem``
puts the tables on the training device (RAM on a CPU run); ``cached_ssd`` (tables larger than
RAM) keeps every table's rows and optimizer slots in files under ``--persistent_path`` (one
directory per table and rank) with ``--cache_memory_budget_mb`` of RAM per process shared by all
tables (docs/stores.md). The choice reaches the RecIS-facade model the way it reaches an
unchanged RecIS script: through the ``RECIS_COMPAT_STORE_TYPE`` /
``RECIS_COMPAT_PERSISTENT_PATH`` / ``RECIS_COMPAT_CACHE_MEMORY_BUDGET_MB`` environment variables,
set here before the model is built.

Mixed precision: ``--amp`` runs the forward under ``torch.autocast`` in bfloat16 (CPU and
GPU); bf16 has float32's exponent range, so no loss scaling is applied and
``--loss_scale_policy`` (``static`` | ``dynamic``) is validated and otherwise unused.
"""
from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from typing import Callable, Dict, Iterable, List, Optional

import numpy as np
import torch
import torch.distributed as dist

from recis.framework.checkpoint_manager import Saver
from recis_compat.backend.row_store import ENV_CACHE_BUDGET_MB, ENV_PERSISTENT_PATH, ENV_STORE_TYPE
from recis.hooks.hook import Hook

STORE_TYPES = ("device_mem", "cached_host_mem", "cached_ssd")
LOSS_SCALE_POLICIES = ("static", "dynamic")
DEFAULT_TABLE_SIZES = (39884406, 39043, 17289, 7420, 20263, 3, 7120, 1543, 63, 38532951, 2953546, 403346, 10,
                       2208, 11938, 155, 4, 976, 14, 39979771, 25641295, 39664984, 585935, 12972, 108, 36)


class ArgumentError(ValueError):
    """A command-line argument with a value this example cannot run with."""


def rank_world():
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_run(seed: int, device: str):
    """One process of a run: intra-op threads = cores / local processes, every RNG seeded with
    ``seed``, the process group (nccl for a CUDA ``device``, else gloo) -> ``(rank, world)``."""
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("WORLD_SIZE", 1))))
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    return dist.get_rank(), dist.get_world_size()


def finish_run(tmp_dir: Optional[str], rank: int) -> None:
    """End of a run: every rank done, rank 0 removes the run's scratch directory (if any), the
    process group is destroyed."""
    dist.barrier()
    if tmp_dir is not None and rank == 0:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    dist.destroy_process_group()


def log0(msg: str) -> None:
    """Print on rank 0 (OneFlow's scripts print there only)."""
    if rank_world()[0] == 0:
        print(msg, flush=True)


def int_list(text: str) -> List[int]:
    """``"512,256,128"`` -> ``[512, 256, 128]`` (OneFlow's ``int_list`` argument type)."""
    try:
        return [int(x) for x in str(text).replace(" ", "").split(",") if x]
    except ValueError:
        raise ArgumentError(f"expected comma-separated integers, got {text!r}") from None


def print_args(args) -> None:
    log0("------------------------ arguments ------------------------")
    for k in sorted(vars(args), key=str.lower):
        log0(f"  {k} {'.' * (48 - len(k))} {getattr(args, k)}")
    log0("-------------------- end of arguments ---------------------")


# ----------------------------------------------------------------------------- arguments
def add_store_args(parser, store_default: str, budget_default: int) -> None:
    parser.add_argument("--table_size_array", type=int_list, default=None,
                        help="rows of each sparse field's table (OneFlow sizes its tables with it; ours are "
                             "dynamic, see the example's README)")
    parser.add_argument("--persistent_path", type=str, default=None,
                        help="directory of the row files of --store_type cached_ssd (one directory per table "
                             "and rank, removed at exit)")
    parser.add_argument("--store_type", type=str, default=store_default, help="/".join(STORE_TYPES))
    parser.add_argument("--cache_memory_budget_mb", type=int, default=budget_default,
                        help="RAM (MiB per process) the rows of cached_ssd tables may take; in-RAM tables "
                             "have no cache")


def add_amp_args(parser) -> None:
    parser.add_argument("--amp", action="store_true", help="bfloat16 autocast for the forward")
    parser.add_argument("--loss_scale_policy", type=str, default="static", help="static or dynamic (bf16: unused)")


def add_save_args(parser) -> None:
    parser.add_argument("--model_load_dir", type=str, default=None, help="checkpoint directory to load first")
    parser.add_argument("--model_save_dir", type=str, default=None, help="where checkpoints are written")
    parser.add_argument("--save_initial_model", action="store_true", help="save the model before training")
    parser.add_argument("--save_model_after_each_eval", action="store_true", help="save after every evaluation")


def check_store_args(args, device: str) -> str:
    """Validate the OneEmbedding store arguments; returns the note printed at start.
    Raises :class:`ArgumentError` for values that cannot run here (naming the argument)."""
    st = args.store_type
    if st not in STORE_TYPES:
        raise ArgumentError(f"--store_type must be one of {', '.join(STORE_TYPES)}, got {st!r}")
    if st == "cached_ssd" and not args.persistent_path:
        raise ArgumentError("--store_type cached_ssd needs --persistent_path (a directory for the row files)")
    if st in ("cached_host_mem", "cached_ssd") and not int(args.cache_memory_budget_mb) > 0:
        raise ArgumentError(f"--cache_memory_budget_mb must be > 0 with --store_type {st}, "
                            f"got {args.cache_memory_budget_mb}")
    if args.persistent_path:
        p = args.persistent_path
        if os.path.exists(p) and not os.path.isdir(p):
            raise ArgumentError(f"--persistent_path {p} exists and is not a directory")
    if args.table_size_array is not None:
        bad = [s for s in args.table_size_array if s <= 0]
        if bad:
            raise ArgumentError(f"--table_size_array sizes must be > 0, got {bad[:3]}")
    if st == "cached_ssd":
        if device != "cpu":
            raise ArgumentError(f"--store_type cached_ssd keeps rows in host memory and files; run with "
                                f"--device cpu (got {device})")
        os.environ[ENV_STORE_TYPE] = "cached_ssd"
        os.environ[ENV_PERSISTENT_PATH] = os.path.abspath(args.persistent_path)
        os.environ[ENV_CACHE_BUDGET_MB] = str(int(args.cache_memory_budget_mb))
        return (f"store_type cached_ssd: dynamic tables in files under {args.persistent_path} with a "
                f"{int(args.cache_memory_budget_mb)} MiB RAM budget per process")
    if st == "device_mem":
        where = "RAM (a CPU run: device_mem = host memory)" if device == "cpu" else f"{device} memory"
        return f"store_type device_mem: dynamic tables in {where}"
    return ("store_type cached_host_mem: dynamic tables in RAM (every row resident; no cache, so "
            "--cache_memory_budget_mb does not bound them)")


def check_amp_args(args) -> None:
    if args.loss_scale_policy not in LOSS_SCALE_POLICIES:
        raise ArgumentError(f"--loss_scale_policy must be static or dynamic, got {args.loss_scale_policy!r}")


def autocast(enabled: bool, device: str):
    """bf16 autocast on ``device`` when enabled (a disabled autocast otherwise)."""
    return torch.autocast(device_type="cuda" if device.startswith("cuda") else "cpu", dtype=torch.bfloat16,
                          enabled=bool(enabled))


# ----------------------------------------------------------------------------- LR schedules
def dlrm_lr_factor(step: int, warmup_batches: int, decay_start: int, decay_batches: int) -> float:
    """OneFlow DLRM's schedule at 0-based ``step``: linear warmup from 0 over ``warmup_batches``,
    constant until ``decay_start``, then polynomial decay (power 2) to 0 over ``decay_batches``."""
    if warmup_batches > 0 and step < warmup_batches:
        return step / warmup_batches
    if step < decay_start or decay_batches <= 0:
        return 1.0
    t = min(step - decay_start, decay_batches)
    return (1.0 - t / decay_batches) ** 2


def multistep_milestones(batches_per_epoch: int, learning_rate: float, min_lr: float, lr_factor: float) -> List[int]:
    """OneFlow DeepFM's MultiStepLR: the LR is multiplied by ``lr_factor`` at the end of each of the
    first ``floor(log(min_lr / lr, lr_factor))`` epochs (so it never goes below ``min_lr``)."""
    if not (0 < lr_factor < 1) or min_lr <= 0 or min_lr >= learning_rate:
        return []
    n = math.floor(math.log(min_lr / learning_rate, lr_factor))
    return [batches_per_epoch * (i + 1) for i in range(max(0, n))]


def lambda_scheduler(optimizer, factor: Callable[[int], float]):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# ----------------------------------------------------------------------------- metrics
def auc_score(pred: torch.Tensor, label: torch.Tensor) -> float:
    """ROC AUC of ``pred`` ``[N]`` against 0/1 ``label`` ``[N]``; tied scores get their average rank.
    NaN when one class is absent."""
    pred = pred.reshape(-1).to(torch.float64)
    label = label.reshape(-1).to(torch.float64)
    n = pred.numel()
    npos = float(label.sum())
    nneg = n - npos
    if npos == 0 or nneg == 0:
        return float("nan")
    p, order = torch.sort(pred)
    y = label[order]
    _, inv, counts = torch.unique_consecutive(p, return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).to(torch.float64)
    avg_rank = ends - (counts.to(torch.float64) - 1) / 2
    ranks = avg_rank[inv]
    return float(((ranks * y).sum() - npos * (npos + 1) / 2) / (npos * nneg))


def log_loss(pred: torch.Tensor, label: torch.Tensor, eps: float = 1e-7) -> float:
    """Mean binary cross entropy of probabilities ``pred`` ``[N]`` (clamped to ``[eps, 1 - eps]``)."""
    p = pred.reshape(-1).to(torch.float64).clamp(eps, 1 - eps)
    y = label.reshape(-1).to(torch.float64)
    return float(-(y * p.log() + (1 - y) * (1 - p).log()).mean())


def _gather(t: torch.Tensor) -> torch.Tensor:
    """Concatenate a 1-D float tensor of every rank (rank order)."""
    rank, world = rank_world()
    if world == 1:
        return t
    n = torch.tensor([t.numel()], dtype=torch.int64)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n)
    m = int(max(int(s) for s in sizes))
    padded = torch.zeros(m, dtype=t.dtype)
    padded[:t.numel()] = t
    parts = [torch.zeros_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return torch.cat([p[:int(s)] for p, s in zip(parts, sizes)])


def evaluate(trainer, unwrapped, batches: Callable[[], Iterable],
             max_batches: Optional[int] = None) -> Dict[str, float]:
    """AUC, logloss and sample count of the model on a split.

    ``batches()`` gives the whole split in a fixed order (every rank reads all of it, in batches
    of ``global batch // world`` rows); consecutive groups of ``world`` batches form one global
    batch and rank ``r`` runs the ``r``-th of each group through the Trainer's model
    (``trainer.model``, sharded under torchrun) in eval mode without gradients. In the last,
    partial group a rank without a batch of its own runs the group's first batch and drops the
    result, so every rank makes the same number of calls (the collectives of a sharded lookup
    stay matched) and the predictions cover each row once, for any world size and file count.
    ``max_batches``: at most this many global batches. The model's forward leaves
    ``unwrapped.last_prob`` / ``unwrapped.last_label`` (``[B]`` each). Predictions and labels
    are gathered on every rank, so every rank returns the same numbers."""
    rank, world = rank_world()
    model = trainer.model
    was_training = model.training
    model.eval()
    probs, labels = [], []
    it = iter(batches())
    group: list = []
    done = 0

    def run(batch, keep: bool):
        model(batch)
        if keep:
            probs.append(unwrapped.last_prob.detach().float().reshape(-1).cpu())
            labels.append(unwrapped.last_label.detach().float().reshape(-1).cpu())

    try:
        with torch.no_grad():
            while max_batches is None or done < max_batches:
                item = next(it, (True, None))
                end, data = item if isinstance(item, tuple) else (False, item)
                if not (end or data is None):
                    group.append(data)
                if len(group) == world or ((end or data is None) and group):
                    mine = rank < len(group)
                    run(group[rank] if mine else group[0], mine)
                    group = []
                    done += 1
                if end or data is None:
                    break
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            close()
        model.train(was_training)
    prob = _gather(torch.cat(probs) if probs else torch.zeros(0))
    label = _gather(torch.cat(labels) if labels else torch.zeros(0))
    return {"auc": auc_score(prob, label), "logloss": log_loss(prob, label) if prob.numel() else float("nan"),
            "samples": int(prob.numel())}


# ----------------------------------------------------------------------------- save / load
def save_model(model, sparse_optimizer, model_save_dir: Optional[str], subdir: str) -> Optional[str]:
    """Write ``<model_save_dir>/<subdir>`` in recis's checkpoint layout (tables, their optimizer
    slots, dense state; every rank writes its shards). No-op without ``model_save_dir``."""
    if not model_save_dir:
        return None
    rank, world = rank_world()
    log0(f"Saving model to {os.path.join(model_save_dir, subdir)}")
    saver = Saver(model, sparse_optimizer, output_dir=model_save_dir, max_keep=1 << 30)
    return saver.save(subdir, shard_id=rank, shard_num=world)


def load_model(model, sparse_optimizer, path: str) -> None:
    """Load the tables (with their optimizer slots) and dense parameters of a checkpoint
    directory written by :func:`save_model` (or a Trainer checkpoint directory ``.../ckpt_N``)."""
    if not os.path.isdir(path):
        raise ArgumentError(f"--model_load_dir {path} is not a directory")
    log0(f"Loading model from {path}")
    rank, _ = rank_world()
    Saver(model, sparse_optimizer).load(ckpt_path=path, direct_path=True,
                                        load_conf={"load": ["sparse", "dense", "sparse_opt"]}, shard_id=rank)


# ----------------------------------------------------------------------------- the Trainer side
class LateStopFlag:
    """``stop_requested`` of a hook created after the Trainer (the training stream needs the
    flag first): reads ``holder["hook"]`` when asked."""

    def __init__(self, holder: dict):
        self._holder = holder

    @property
    def stop_requested(self) -> bool:
        h = self._holder.get("hook")
        return bool(h is not None and h.stop_requested)


class StopAwareDataset:
    """The train dataset, read pass after pass (OneFlow's loaders repeat; ``train_batches``
    bounds the run), ending as soon as ``hook.stop_requested`` is set (early stop). Everything
    else (``dump_io_state`` ...) is the wrapped dataset's."""

    def __init__(self, make_dataset: Callable[[], object], hook: "ProtocolHook"):
        self._make = make_dataset
        self._ds = make_dataset()
        self._hook = hook

    def __getattr__(self, name):
        return getattr(self._ds, name)

    def __iter__(self):
        while True:
            got_any = False
            it = iter(self._ds)
            try:
                for item in it:
                    if self._hook.stop_requested:
                        return
                    end, data = item if isinstance(item, tuple) else (False, item)
                    if end or data is None:
                        break
                    got_any = True
                    yield item
            finally:
                close = getattr(it, "close", None)
                if close is not None:
                    close()
            if not got_any or self._hook.stop_requested:
                return
            self._ds = self._make()     # next pass over the files


class ProtocolHook(Hook):
    """OneFlow's per-step protocol as a Trainer hook (module docstring).

    Args:
        trainer: the Trainer (its model is called for evaluation).
        unwrapped: the user model (its forward leaves ``last_prob``/``last_label``).
        sparse_scheduler: LR scheduler of the sparse optimizer, stepped with the dense one.
        eval_every: evaluate every this many steps (0: never during training).
        eval_fn: ``step -> metrics`` (runs :func:`evaluate` on the validation split).
        batch_size: global samples per step (throughput lines).
        loss_print_interval: loss line every this many steps.
        early_stop: ``(patience, min_delta)`` of the plateau rule, or None.
        on_eval: ``(step, metrics) -> None`` after each evaluation (saving).
    """

    def __init__(self, trainer, unwrapped, sparse_scheduler, eval_every: int, eval_fn, batch_size: int,
                 loss_print_interval: int, early_stop=None, on_eval=None, lr_factor_fn=None):
        self.trainer, self.unwrapped = trainer, unwrapped
        self.sparse_scheduler = sparse_scheduler
        self.eval_every, self.eval_fn = int(eval_every), eval_fn
        self.batch_size, self.loss_print_interval = int(batch_size), max(1, int(loss_print_interval))
        self.early_stop, self.on_eval = early_stop, on_eval
        self.stop_requested = False
        self.best_metric = -math.inf
        self.stopping_steps = 0
        self.evals: List[dict] = []
        self.losses: List[float] = []
        self.last_eval_step = -1
        self._t, self._tstep = time.time(), 0

    # checkpointed with the Trainer's checkpoints (resume keeps the plateau state and sparse LR)
    def state_dict(self):
        return {"best_metric": self.best_metric, "stopping_steps": self.stopping_steps,
                "sparse_scheduler": self.sparse_scheduler.state_dict() if self.sparse_scheduler else None}

    def load_state_dict(self, state):
        self.best_metric = float(state["best_metric"])
        self.stopping_steps = int(state["stopping_steps"])
        if self.sparse_scheduler is not None and state.get("sparse_scheduler") is not None:
            self.sparse_scheduler.load_state_dict(state["sparse_scheduler"])

    def after_step(self, metrics, global_step):
        if "loss" not in metrics:
            return          # an evaluation step of Trainer.evaluate
        step = int(global_step) + 1        # the CheckpointManager counts the step after the hooks
        if self.sparse_scheduler is not None:
            self.sparse_scheduler.step()
        loss = float(metrics["loss"].detach())
        self.losses.append(loss)
        if step % self.loss_print_interval == 0:
            now = time.time()
            latency = (now - self._t) / max(1, step - self._tstep)
            self._t, self._tstep = now, step
            log0(f"Rank[{rank_world()[0]}], Step {step}, Loss {loss:0.4f}, Latency {latency * 1000:0.3f} ms, "
                 f"Throughput {self.batch_size / latency:0.1f}, {time.strftime('%Y-%m-%d %H:%M:%S')}")
        if self.eval_every > 0 and step % self.eval_every == 0:
            self.run_eval(step)
            self._t = time.time()

    def run_eval(self, step: int) -> dict:
        m = dict(self.eval_fn(step))
        m["step"] = step
        self.evals.append(m)
        self.last_eval_step = step
        log0(f"Rank[{rank_world()[0]}], Step {step}, AUC {m['auc']:0.6f}, LogLoss {m['logloss']:0.6f}, "
             f"Eval_samples {m['samples']}, {time.strftime('%Y-%m-%d %H:%M:%S')}")
        if self.early_stop is not None:
            patience, min_delta = self.early_stop
            monitor = m["auc"] - m["logloss"]
            m["improved"] = False
            if monitor < self.best_metric + min_delta:
                self.stopping_steps += 1
                log0(f"Monitor(max) STOP: {monitor:.6f}!")
            else:
                self.stopping_steps = 0
                self.best_metric = monitor
                m["improved"] = True
            if self.stopping_steps >= patience:
                m["plateau"] = True
        if self.on_eval is not None:
            self.on_eval(step, m)
        return m


def write_metrics(path: Optional[str], payload: dict) -> None:
    """Rank 0 writes ``payload`` as JSON to ``path`` (atomically)."""
    if not path or rank_world()[0] != 0:
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=1, default=float)
    os.replace(tmp, path)


def read_dataset_info(data_dir: str) -> dict:
    """``<data_dir>/dataset_info.json`` as ``criteo-to-parquet --export-dataset-info`` writes it ({} if absent)."""
    path = os.path.join(data_dir, "dataset_info.json")
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def split_files(data_dir: str, split: str) -> List[str]:
    """``<data_dir>/<split>/*.parquet`` sorted; ArgumentError naming the directory when none."""
    d = os.path.join(data_dir, split)
    files = sorted(os.path.join(d, f) for f in os.listdir(d) if f.endswith(".parquet")) if os.path.isdir(d) else []
    if not files:
        raise ArgumentError(f"--data_dir {data_dir}: no *.parquet files in {d} (the {split} split; make it with "
                            "`recis-compat criteo-to-parquet` or the example's make_data.py)")
    return files


def checkpoint_root(model_save_dir: Optional[str], name: str):
    """``(temporary_dir or None, root)``: the Trainer's checkpoint root (its ``ckpt_<step>``
    checkpoints, resumed from when present): ``<model_save_dir>/train_state`` or, without
    ``model_save_dir``, a temporary directory made by rank 0 and shared with every rank (removed
    by the caller at the end). OneFlow-named snapshots go to ``model_save_dir`` itself."""
    if model_save_dir:
        return None, os.path.join(model_save_dir, "train_state")
    import tempfile
    rank, world = rank_world()
    path = [tempfile.mkdtemp(prefix=f"{name}-ckpt-") if rank == 0 else None]
    if world > 1:
        dist.broadcast_object_list(path, src=0)
    return path[0], path[0]
