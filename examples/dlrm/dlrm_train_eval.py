"""Train and evaluate OneFlow's DLRM with recis (run with torchrun; see run.sh and README.md).

Arguments are OneFlow's ``dlrm_train_eval.py`` ones with the same meanings and defaults
(``--data_dir`` with ``train/``, ``val/``, ``test/`` Parquet splits; ``--train_batch_size`` is
global: each of N processes reads ``train_batch_size // N`` rows of its files). Differences:

* ``--store_type cached_ssd`` keeps the tables' rows and optimizer slots in files under
  ``--persistent_path`` with ``--cache_memory_budget_mb`` of RAM per process (docs/stores.md);
  ``--table_size_array`` only scales the embedding init (tables are dynamic, ids need no bound).
* Periodic evaluation (every ``--eval_interval`` steps, ``--eval_batches`` batches of
  ``--eval_batch_size``) runs on ``val/`` and a final one on ``test/`` (OneFlow evaluates
  ``test/`` periodically and has no final one); both print AUC and logloss.
* ``--optimizer`` (ours): ``sgd`` (OneFlow's: SGD on every parameter), ``adagrad``, ``adamw``
  (SparseAdamW + AdamW). ``--amp`` is bf16 autocast (no loss scaling).
* ``--metrics_json`` (ours): rank 0 writes losses, evaluations and the run's settings there.
* Saving: ``--model_save_dir`` holds ``initial_checkpoint`` / ``step_<S>_val_auc_<A>`` as OneFlow
  names them and ``train_state/`` (the Trainer's ``ckpt_<step>``, resumed from when present);
  ``--model_load_dir`` loads such a directory (tables, optimizer slots, dense weights) first.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.distributed as dist

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from recis.framework.trainer import Trainer, TrainingArguments  # noqa: E402
from recis.nn.modules.hashtable import filter_out_sparse_param  # noqa: E402
from recis.optim import SparseAdamW  # noqa: E402

import oneflow_protocol as P  # noqa: E402
from dlrm_data import dense_is_log, make_dataset  # noqa: E402
from dlrm_model import DLRM  # noqa: E402
from sparse_optimizers import SparseAdagrad, SparseSGD  # noqa: E402


def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data_dir", type=str, required=True)
    p.add_argument("--disable_fusedmlp", action="store_true", help="accepted (torch has no fused MLP; no effect)")
    p.add_argument("--embedding_vec_size", type=int, default=128)
    p.add_argument("--one_embedding_key_type", type=str, default="int64", help="int32 or int64 (ids are int64)")
    p.add_argument("--bottom_mlp", type=P.int_list, default=[512, 256, 128])
    p.add_argument("--top_mlp", type=P.int_list, default=[1024, 1024, 512, 256])
    p.add_argument("--disable_interaction_padding", action="store_true")
    p.add_argument("--disable_dense_input_padding", action="store_true")
    p.add_argument("--interaction_itself", action="store_true")
    P.add_save_args(p)
    p.add_argument("--eval_batches", type=int, default=1612)
    p.add_argument("--eval_batch_size", type=int, default=55296)
    p.add_argument("--eval_interval", type=int, default=10000)
    p.add_argument("--train_batch_size", type=int, default=55296)
    p.add_argument("--learning_rate", type=float, default=24)
    p.add_argument("--warmup_batches", type=int, default=2750)
    p.add_argument("--decay_batches", type=int, default=27772)
    p.add_argument("--decay_start", type=int, default=49315)
    p.add_argument("--train_batches", type=int, default=75000)
    p.add_argument("--loss_print_interval", type=int, default=1000)
    P.add_store_args(p, store_default="cached_host_mem", budget_default=8192)
    P.add_amp_args(p)
    p.add_argument("--optimizer", choices=("sgd", "adagrad", "adamw"), default="sgd")
    p.add_argument("--device", type=str, default="cpu")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--read_threads", type=int, default=1)
    p.add_argument("--metrics_json", type=str, default=None)
    args = p.parse_args(argv)
    if args.table_size_array is None:
        args.table_size_array = list(P.DEFAULT_TABLE_SIZES)
    return args


def check_args(args, world: int) -> str:
    note = P.check_store_args(args, args.device)
    P.check_amp_args(args)
    if args.one_embedding_key_type not in ("int32", "int64"):
        raise P.ArgumentError(f"--one_embedding_key_type must be int32 or int64, got {args.one_embedding_key_type!r}")
    for name in ("train_batch_size", "eval_batch_size"):
        v = getattr(args, name)
        if v < world or v % world:
            raise P.ArgumentError(f"--{name} {v} must be a positive multiple of the number of processes ({world})")
    if args.train_batches < 0:
        raise P.ArgumentError(f"--train_batches must be >= 0 (0: evaluate only), got {args.train_batches}")
    return note


def build_optimizers(model, args):
    sparse = filter_out_sparse_param(model)
    if args.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=args.learning_rate), SparseSGD(sparse, lr=args.learning_rate)
    if args.optimizer == "adagrad":
        return (torch.optim.Adagrad(model.parameters(), lr=args.learning_rate),
                SparseAdagrad(sparse, lr=args.learning_rate))
    return torch.optim.AdamW(model.parameters(), lr=args.learning_rate), SparseAdamW(sparse, lr=args.learning_rate)


def main(argv=None):
    args = get_args(argv)
    rank, world = P.init_run(args.seed, args.device)
    try:
        note = check_args(args, world)
    except P.ArgumentError as e:
        if rank == 0:
            print(f"error: {e}", file=sys.stderr, flush=True)
        dist.destroy_process_group()
        return 2
    P.print_args(args)
    P.log0(note)
    train_files = P.split_files(args.data_dir, "train")
    val_files, test_files = P.split_files(args.data_dir, "val"), P.split_files(args.data_dir, "test")
    log_applied = dense_is_log(train_files)

    model = DLRM(args.embedding_vec_size, args.bottom_mlp, args.top_mlp, args.table_size_array,
                 interaction_itself=args.interaction_itself,
                 interaction_padding=not args.disable_interaction_padding,
                 dense_input_padding=not args.disable_dense_input_padding, device=args.device,
                 amp=args.amp).to(args.device)
    dense_opt, sparse_opt = build_optimizers(model, args)

    def factor(step):
        return P.dlrm_lr_factor(step, args.warmup_batches, args.decay_start, args.decay_batches)

    dense_sched = P.lambda_scheduler(dense_opt, factor)
    sparse_sched = P.lambda_scheduler(sparse_opt, factor)
    tmp, out_dir = P.checkpoint_root(args.model_save_dir, "dlrm")
    targs = TrainingArguments(output_dir=out_dir, log_steps=max(1, args.loss_print_interval),
                              train_steps=args.train_batches, save_steps=None, max_to_keep=2)
    hook_holder = {}

    def train_ds():
        return make_dataset(train_files, args.train_batch_size // world, rank, world, args.device, log_applied,
                            args.read_threads)

    def eval_on(files, batches):
        return P.evaluate(trainer, model, lambda: make_dataset(files, args.eval_batch_size // world, 0, 1,
                                                               args.device, log_applied, args.read_threads,
                                                               drop_remainder=False), batches)

    def on_eval(step, m):
        if args.save_model_after_each_eval:
            P.save_model(model, sparse_opt, args.model_save_dir, f"step_{step}_val_auc_{m['auc']:0.5f}")

    stream = P.StopAwareDataset(train_ds, P.LateStopFlag(hook_holder))
    trainer = Trainer(model=model, args=targs, train_dataset=stream, dense_optimizers=(dense_opt, dense_sched),
                      sparse_optimizer=sparse_opt)
    hook = P.ProtocolHook(trainer, model, sparse_sched, args.eval_interval,
                          lambda step: eval_on(val_files, args.eval_batches), args.train_batch_size,
                          args.loss_print_interval, early_stop=None, on_eval=on_eval)
    hook_holder["hook"] = hook
    trainer.add_hook(hook)
    if args.model_load_dir:
        P.load_model(model, sparse_opt, args.model_load_dir)
    if args.save_initial_model:
        P.save_model(model, sparse_opt, args.model_save_dir, "initial_checkpoint")
    trainer.train()
    step = trainer.global_step
    if args.eval_interval > 0 and hook.last_eval_step != step:
        hook.run_eval(step)
    P.log0("================ Test Evaluation ================")
    test = eval_on(test_files, None)
    P.log0(f"Rank[{rank}], Step {step}, Test AUC {test['auc']:0.6f}, LogLoss {test['logloss']:0.6f}, "
           f"Eval_samples {test['samples']}")
    # ids stored over all ranks (a sharded table holds each id on one rank)
    table_ids = torch.tensor([sum(len(t) for t in filter_out_sparse_param(model).values())], dtype=torch.int64)
    dist.all_reduce(table_ids)
    P.write_metrics(args.metrics_json, {
        "model": "dlrm", "world_size": world, "steps": step, "losses": hook.losses, "evals": hook.evals,
        "test": test, "amp": bool(args.amp), "compute_dtype": str(model.last_compute_dtype),
        "optimizer": args.optimizer, "store_note": note,
        "table_ids": int(table_ids)})
    P.finish_run(tmp, rank)
    return 0


if __name__ == "__main__":
    sys.exit(main())
