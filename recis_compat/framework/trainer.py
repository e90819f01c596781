"""``recis.framework.trainer``: TrainingArguments and Trainer (RecIS 1.0; see COMPATIBILITY.md).

The model's forward returns the scalar loss. Each step: forward, backward, dense optimizer (+ LR
scheduler), sparse optimizer, hooks ``after_step(metrics, global_step)``, checkpoint manager
``step()`` (saves every ``save_steps``, and with ``delta_save_steps`` a delta checkpoint every that
many steps in between: recis_compat/framework/checkpoint_manager.py); a checkpoint is also
written at the end of training.

Multi-process (torchrun, ``torch.distributed`` initialised): the model is wrapped by
``recis_compat.backend.sharding.shard_model`` (TorchRec DistributedModelParallel: dynamic tables
sharded by RecIS's slice rule, dense part in DDP); the stop flag is reduced over ranks so every
rank stops at the same step. No ``accelerate``: plain torch.

Fixes (COMPATIBILITY.md): ``train_steps=N`` runs N steps (Q1); ``save_steps=None`` never saves
periodically (Q17); gradient accumulation sums the dense gradients of the N micro-batches of a
window (RecIS keeps only the last one, Q24) while the sparse ones are averaged, as in RecIS; the
end-of-training checkpoint is not written twice (Q19); ``evaluate`` puts the model back into the
mode it found it in; the LR scheduler and the RNG state are checkpointed (exact resume).
"""
from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch
import torch.distributed as dist
from torch import nn

from recis_compat.framework.checkpoint_manager import CheckpointManager, Saver
from recis_compat.framework.metrics import get_global_metrics
from recis_compat.hooks.hook import Hook
from recis_compat.hooks.logger_hook import LoggerHook
from recis_compat.utils.data_utils import copy_data_to_device
from recis_compat.utils import dist_timeout
from recis_compat.utils.device import resolve_device
from recis_compat.utils.logger import Logger

# Scripts that import the Trainer without `import recis` call init_process_group() before a
# Trainer exists: bound their collectives too (docs/reliability.md, timeouts).
dist_timeout.install()

__all__ = ["TrainingArguments", "Trainer"]

logger = Logger(__name__)


@dataclass
class TrainingArguments:
    """Training configuration (parsed from the CLI by ``recis.utils.parser.ArgumentParser``)."""

    gradient_accumulation_steps: int = 1
    output_dir: str = "output_dir"
    model_bank: Optional[list] = None
    log_steps: int = 100
    train_steps: Optional[int] = None
    train_epoch: Optional[int] = 1
    eval_steps: Optional[int] = None
    save_steps: Optional[int] = 1000
    # not in RecIS: a delta checkpoint (rows changed since the previous checkpoint) every N steps
    # between full ones (recis_compat/framework/checkpoint_manager.py); None / 0: never
    delta_save_steps: Optional[int] = None
    max_to_keep: int = 5
    save_concurrency_per_rank: int = 4

    def __post_init__(self):
        if str(self.output_dir).startswith("model"):
            raise ValueError(f"TrainingArguments: output_dir {self.output_dir!r} looks like a MOS URI "
                             "(RecIS internal build only); use a local or fsspec path")
        if int(self.gradient_accumulation_steps) < 1:
            raise ValueError(f"TrainingArguments: gradient_accumulation_steps must be >= 1, "
                             f"got {self.gradient_accumulation_steps}")
        if int(self.log_steps) < 1:
            raise ValueError(f"TrainingArguments: log_steps must be >= 1, got {self.log_steps}")
        if self.save_steps is not None and int(self.save_steps) < 0:
            raise ValueError(f"TrainingArguments: save_steps must be >= 0 or None, got {self.save_steps}")
        if self.delta_save_steps is not None and int(self.delta_save_steps) < 0:
            raise ValueError(f"TrainingArguments: delta_save_steps must be >= 0 or None, got {self.delta_save_steps}")


class _RngState:
    """The CPU (and CUDA) RNG state as a checkpointable object."""

    def state_dict(self):
        out = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available():
            out["cuda"] = torch.cuda.get_rng_state_all()
        return out

    def load_state_dict(self, state):
        torch.set_rng_state(state["cpu"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])


def _close_iterator(it) -> None:
    """Stop a dataset iterator's reader / prefetch threads when a loop ends before the data does
    (threads left running into interpreter shutdown can abort the process at exit)."""
    close = getattr(it, "close", None)
    if close is not None:
        close()


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


class Trainer:
    """RecIS's training loop (see the module docstring)."""

    def __init__(self, model: Optional[nn.Module] = None, args: Optional[TrainingArguments] = None,
                 train_dataset=None, eval_dataset=None, hooks: Optional[List[Hook]] = None,
                 dense_optimizers: Tuple[Optional[torch.optim.Optimizer], Optional[object]] = (None, None),
                 sparse_optimizer=None, data_to_cuda: bool = False, **kwargs):
        if model is None:
            raise ValueError("Trainer: model is required (its forward must return the loss)")
        self.args = args if args is not None else TrainingArguments()
        if kwargs:
            logger.warning(f"Trainer: ignoring accelerate options {sorted(kwargs)} (recis-compat uses plain torch)")
        self.unwrapped_model = model
        self.model = self._wrap(model)
        self.train_dataset = train_dataset
        self.eval_dataset = eval_dataset
        if not isinstance(dense_optimizers, (tuple, list)) or len(dense_optimizers) != 2:
            raise TypeError("Trainer: dense_optimizers must be a (optimizer, lr_scheduler) pair")
        self.dense_optimizer, self.dense_lr_scheduler = dense_optimizers
        self.sparse_optimizer = sparse_optimizer
        self.data_to_cuda = data_to_cuda
        self._device = resolve_device("cuda", "Trainer(data_to_cuda=True)") if data_to_cuda else None
        self._accum = int(self.args.gradient_accumulation_steps)
        if self._accum > 1 and self.args.save_steps and int(self.args.save_steps) % self._accum:
            logger.warning(f"Trainer: save_steps={self.args.save_steps} is not a multiple of "
                           f"gradient_accumulation_steps={self._accum}; a checkpoint taken inside an "
                           "accumulation window does not hold the window's partial gradients, so resuming "
                           "from it is not exact")
        if sparse_optimizer is not None:
            sparse_optimizer.set_grad_accum_steps(self._accum)
        self.checkpoint_manager = self.build_checkpoint_manager(model, self.args)
        self.hooks: List[Hook] = []
        for hook in list(hooks or []) + [LoggerHook(self.args.log_steps)]:
            self.add_hook(hook)
        self._global_step = self.checkpoint_manager.global_step
        if train_dataset is not None and hasattr(train_dataset, "dump_io_state"):
            self.checkpoint_manager.register_io_state("train_io", train_dataset)
        if self.dense_optimizer is not None:
            self.checkpoint_manager.register_for_checkpointing("dense_optimizer", self.dense_optimizer)
        if self.dense_lr_scheduler is not None:
            self.checkpoint_manager.register_for_checkpointing("lr_scheduler", self.dense_lr_scheduler)
        self.checkpoint_manager.register_for_checkpointing("rng_state", _RngState())
        self.stop_state = torch.zeros((), dtype=torch.int64)
        self.has_restore = False
        self._micro_step = 0

    # ------------------------------------------------------------------ construction helpers
    @staticmethod
    def _wrap(model: nn.Module) -> nn.Module:
        if not _distributed():
            return model
        from torchrec.distributed.model_parallel import DefaultDataParallelWrapper, DistributedModelParallel
        if isinstance(model, DistributedModelParallel):
            return model
        from recis_compat.backend.sharding import shard_model
        if not any(p.requires_grad for p in model.parameters()):
            return shard_model(model, init_data_parallel=False)
        return shard_model(model, data_parallel_wrapper=DefaultDataParallelWrapper(
            static_graph=False, find_unused_parameters=True))

    def build_saver(self, model: nn.Module, args: TrainingArguments) -> Saver:
        return Saver(model, self.sparse_optimizer, output_dir=args.output_dir, max_keep=args.max_to_keep,
                     concurrency=args.save_concurrency_per_rank)

    def build_checkpoint_manager(self, model: nn.Module, args: TrainingArguments) -> CheckpointManager:
        return CheckpointManager(self.build_saver(model, args), args.save_steps,
                                 getattr(args, "delta_save_steps", None))

    def add_hook(self, hook: Hook) -> None:
        """Append ``hook``; a hook with ``state_dict``/``load_state_dict`` (e.g. HashTableFilterHook)
        is checkpointed in ``extra.pt`` as ``hook_<position>_<ClassName>`` and restored on resume."""
        if not hasattr(hook, "after_step"):
            raise TypeError(f"add_hook: {type(hook).__name__} has no after_step(metrics, global_step)")
        if callable(getattr(hook, "state_dict", None)) and callable(getattr(hook, "load_state_dict", None)):
            self.checkpoint_manager.register_for_checkpointing(f"hook_{len(self.hooks)}_{type(hook).__name__}", hook)
        self.hooks.append(hook)

    def add_hooks(self, hooks: List[Hook]) -> None:
        for h in hooks:
            self.add_hook(h)

    # ------------------------------------------------------------------ restore
    def restore(self) -> None:
        if self.has_restore:
            return
        self.checkpoint_manager.load_model_bank(self.args.model_bank)
        self.checkpoint_manager.restore()
        # accumulation windows continue where the checkpoint left them
        self._micro_step = int(self._global_step)
        if self.sparse_optimizer is not None and hasattr(self.sparse_optimizer, "set_local_step"):
            self.sparse_optimizer.set_local_step(int(self._global_step))
        self.has_restore = True

    # ------------------------------------------------------------------ loops
    def sync_exit_flag(self, flag) -> bool:
        """True when any rank is done (all-reduce MAX)."""
        self.stop_state.fill_(int(bool(flag)))
        if _distributed() and dist.get_world_size() > 1:
            dist.all_reduce(self.stop_state, op=dist.ReduceOp.MAX)
        return bool(self.stop_state.item())

    def _next(self, it):
        try:
            item = next(it)
        except StopIteration:
            return True, None
        if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], (bool, int)) and not isinstance(item[0], torch.Tensor):
            stop, data = item
        else:
            stop, data = False, item
        if stop or data is None:
            return True, None
        if self.data_to_cuda:
            data = copy_data_to_device(data, self._device)
        return False, data

    def _progress(self, total: Optional[int]):
        if not sys.stdout.isatty() or os.environ.get("RECIS_COMPAT_NO_PROGRESS"):
            return None
        from tqdm import tqdm
        return tqdm(total=total, unit="step", dynamic_ncols=True, leave=False)

    def _check_trainable(self, what: str) -> None:
        if self.train_dataset is None:
            raise ValueError(f"Trainer.{what}: no train_dataset")
        if self.dense_optimizer is None and any(p.requires_grad for p in self.unwrapped_model.parameters()):
            raise ValueError(f"Trainer.{what}: dense_optimizers[0] is None but the model has dense parameters")

    def train(self, train_steps: Optional[int] = None) -> None:
        self._check_trainable("train")
        self.restore()
        for epoch in range(int(self.args.train_epoch or 1)):
            self._train_loop(train_steps or self.args.train_steps, epoch)
        self._save_final()
        for hook in self.hooks:
            hook.end()

    def train_and_evaluate(self, epochs: int = 1, train_steps: Optional[int] = None,
                           eval_steps: Optional[int] = None) -> None:
        self._check_trainable("train_and_evaluate")
        self.restore()
        for epoch in range(int(epochs)):
            self._train_loop(train_steps or self.args.train_steps, epoch)
            self._save_final()
            self._evaluate_loop(eval_steps)
        for hook in self.hooks:
            hook.end()

    def _save_final(self) -> None:
        if self.checkpoint_manager.last_saved_step != int(self._global_step):
            self.checkpoint_manager.save()

    def _train_loop(self, max_steps: Optional[int] = None, epoch: int = 1) -> None:
        self.model.train()
        it = iter(self.train_dataset)
        lstep = 0
        bar = self._progress(max_steps)
        try:
            while True:
                if max_steps is not None and lstep >= int(max_steps):
                    break
                stop, data = self._next(it)
                if self.sync_exit_flag(stop):
                    break
                metrics = {}
                self._train_step(data, epoch, metrics)
                lstep += 1
                for hook in self.hooks:
                    hook.after_step(metrics, self._global_step)
                self.checkpoint_manager.step()
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=float(metrics["loss"].detach()) if "loss" in metrics else None)
        finally:
            _close_iterator(it)
            if bar is not None:
                bar.close()

    def _ddp(self):
        """The DistributedDataParallel wrapper that TorchRec's DistributedModelParallel puts
        around the dense part: a direct child of the model (None without DMP)."""
        ddp = torch.nn.parallel.DistributedDataParallel
        return next((c for c in self.model.children() if isinstance(c, ddp)), None)

    def _train_step(self, data, epoch, metrics: dict) -> None:
        first = self._micro_step % self._accum == 0
        last = (self._micro_step + 1) % self._accum == 0
        self._micro_step += 1
        if first and self.dense_optimizer is not None:
            self.dense_optimizer.zero_grad()
        if self.sparse_optimizer is not None:
            self.sparse_optimizer.zero_grad()
        ddp = self._ddp()
        sync = contextlib.nullcontext() if (last or ddp is None) else ddp.no_sync()
        with sync:
            loss = self.model(data)
            if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
                raise TypeError(f"Trainer: the model's forward must return the scalar loss tensor, got "
                                f"{type(loss).__name__}{'' if not isinstance(loss, torch.Tensor) else tuple(loss.shape)}")
            metrics.update(epoch=epoch, loss=loss)
            metrics.update(get_global_metrics())
            loss.backward()
        if last:
            if self.dense_optimizer is not None:
                self.dense_optimizer.step()
            if self.dense_lr_scheduler is not None:
                self.dense_lr_scheduler.step()
        if self.sparse_optimizer is not None:
            self.sparse_optimizer.step()

    def evaluate(self, eval_steps: Optional[int] = None) -> None:
        self.restore()
        self._evaluate_loop(eval_steps)
        for hook in self.hooks:
            hook.end()

    def _evaluate_loop(self, eval_steps: Optional[int] = None) -> None:
        if self.eval_dataset is None:
            raise ValueError("Trainer.evaluate: no eval_dataset")
        was_training = self.model.training
        self.model.eval()
        it = iter(self.eval_dataset)
        lstep = 0
        try:
            with torch.no_grad():
                while eval_steps is None or lstep < int(eval_steps):
                    stop, data = self._next(it)
                    if self.sync_exit_flag(stop):
                        break
                    self.model(data)
                    metrics = dict(get_global_metrics())
                    for hook in self.hooks:
                        hook.after_step(metrics, self._global_step)
                    lstep += 1
        finally:
            _close_iterator(it)
            self.model.train(was_training)

    @property
    def global_step(self) -> int:
        return int(self._global_step)
