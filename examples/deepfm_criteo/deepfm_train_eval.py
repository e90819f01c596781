"""Train and evaluate OneFlow's DeepFM on Criteo with recis (run with torchrun; see run.sh and README.md).

Arguments are OneFlow's ``deepfm_train_eval.py`` ones with the same meanings and defaults
(``--data_dir`` with ``train/``, ``val/``, ``test/`` Parquet splits; ``--batch_size`` is global
for training and evaluation: each of N processes reads ``batch_size // N`` rows of its files).
The protocol is theirs: Adam (SparseAdam for the tables, torch Adam for the DNN) at
``--learning_rate``, multiplied by ``--lr_factor`` after every epoch while it stays >=
``--min_lr``; an epoch is ``ceil(num_train_samples / batch_size)`` steps and ends with a
validation of AUC and logloss; the monitor ``AUC - logloss`` not improving by ``--min_delta``
for ``--patience`` epochs stops training (unless ``--disable_early_stop``); ``--save_best_model``
keeps ``best_checkpoint`` and reloads it before the final test evaluation. Differences:

* ``--num_{train,val,test}_samples`` default to ``<data_dir>/dataset_info.json``
  (``criteo-to-parquet --export-dataset-info``); ``--table_size_array`` (39 or 26 sizes) is
  optional and validated only (dynamic tables); ``--store_type cached_ssd`` keeps the tables in
  files under ``--persistent_path`` with ``--cache_memory_budget_mb`` of RAM
  (examples/dlrm/oneflow_protocol.py, docs/stores.md).
* ``--amp`` is bf16 autocast (no loss scaling); ``--disable_fusedmlp`` has no effect;
  ``--save_graph_for_serving`` / ``--model_serving_path`` (OneFlow graphs) are not offered.
* ``--metrics_json`` (ours): rank 0 writes losses and evaluations there.
"""
from __future__ import annotations

import argparse
import math
import os
import shutil
import sys

import torch
import torch.distributed as dist

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(1, os.path.join(os.path.dirname(HERE), "dlrm"))     # oneflow_protocol (shared)

from recis.framework.trainer import Trainer, TrainingArguments  # noqa: E402
from recis.nn.modules.hashtable import filter_out_sparse_param  # noqa: E402
from recis.optim import SparseAdam  # noqa: E402

import oneflow_protocol as P  # noqa: E402
from deepfm_criteo_data import FIELDS, SPARSE, check_files, make_dataset  # noqa: E402
from deepfm_criteo_model import DeepFM  # noqa: E402


def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data_dir", type=str, required=True)
    p.add_argument("--num_train_samples", type=int, default=None)
    p.add_argument("--num_val_samples", type=int, default=None)
    p.add_argument("--num_test_samples", type=int, default=None)
    P.add_save_args(p)
    p.add_argument("--save_best_model", action="store_true")
    p.add_argument("--embedding_vec_size", type=int, default=16)
    p.add_argument("--dnn", type=P.int_list, default=[1000, 1000, 1000, 1000, 1000])
    p.add_argument("--net_dropout", type=float, default=0.2)
    p.add_argument("--disable_fusedmlp", action="store_true", help="accepted (torch has no fused MLP; no effect)")
    p.add_argument("--lr_factor", type=float, default=0.1)
    p.add_argument("--min_lr", type=float, default=1.0e-6)
    p.add_argument("--learning_rate", type=float, default=0.001)
    p.add_argument("--batch_size", type=int, default=10000)
    p.add_argument("--train_batches", type=int, default=75000)
    p.add_argument("--loss_print_interval", type=int, default=100)
    p.add_argument("--patience", type=int, default=2)
    p.add_argument("--min_delta", type=float, default=1.0e-6)
    P.add_store_args(p, store_default="cached_host_mem", budget_default=1024)
    P.add_amp_args(p)
    p.add_argument("--disable_early_stop", action="store_true")
    p.add_argument("--device", type=str, default="cpu")
    p.add_argument("--seed", type=int, default=2019)
    p.add_argument("--read_threads", type=int, default=1)
    p.add_argument("--metrics_json", type=str, default=None)
    return p.parse_args(argv)


def check_args(args, world: int) -> str:
    note = P.check_store_args(args, args.device)
    P.check_amp_args(args)
    if args.table_size_array is not None and len(args.table_size_array) not in (len(FIELDS), len(SPARSE)):
        raise P.ArgumentError(f"--table_size_array needs {len(FIELDS)} sizes (I1..I13, C1..C26, as OneFlow's "
                              f"criteo_x4) or {len(SPARSE)}, got {len(args.table_size_array)}")
    info = P.read_dataset_info(args.data_dir)
    for split in ("train", "val", "test"):
        name = f"num_{split}_samples"
        if getattr(args, name) is None:
            if name not in info:
                raise P.ArgumentError(f"--{name} is required ({os.path.join(args.data_dir, 'dataset_info.json')} "
                                      "does not give it)")
            setattr(args, name, int(info[name]))
        if getattr(args, name) <= 0:
            raise P.ArgumentError(f"--{name} must be > 0, got {getattr(args, name)}")
    if args.batch_size < world or args.batch_size % world:
        raise P.ArgumentError(f"--batch_size {args.batch_size} must be a positive multiple of the number of "
                              f"processes ({world})")
    if args.train_batches < 0:
        raise P.ArgumentError(f"--train_batches must be >= 0 (0: evaluate only), got {args.train_batches}")
    if args.patience < 1:
        raise P.ArgumentError(f"--patience must be >= 1, got {args.patience}")
    return note


def main(argv=None):
    args = get_args(argv)
    rank, world = P.init_run(args.seed, args.device)
    try:
        note = check_args(args, world)
        train_files = P.split_files(args.data_dir, "train")
        val_files, test_files = P.split_files(args.data_dir, "val"), P.split_files(args.data_dir, "test")
        check_files(train_files)
    except (P.ArgumentError, ValueError) as e:
        if rank == 0:
            print(f"error: {e}", file=sys.stderr, flush=True)
        dist.destroy_process_group()
        return 2
    P.print_args(args)
    P.log0(note)

    model = DeepFM(args.embedding_vec_size, args.dnn, args.net_dropout, args.device, args.amp).to(args.device)
    dense_opt = torch.optim.Adam(model.parameters(), lr=args.learning_rate)
    sparse_opt = SparseAdam(filter_out_sparse_param(model), lr=args.learning_rate)
    batches_per_epoch = math.ceil(args.num_train_samples / args.batch_size)
    milestones = P.multistep_milestones(batches_per_epoch, args.learning_rate, args.min_lr, args.lr_factor)

    def factor(step):
        return args.lr_factor ** sum(1 for m in milestones if step >= m)

    dense_sched = P.lambda_scheduler(dense_opt, factor)
    sparse_sched = P.lambda_scheduler(sparse_opt, factor)
    tmp, out_dir = P.checkpoint_root(args.model_save_dir, "deepfm")
    targs = TrainingArguments(output_dir=out_dir, log_steps=max(1, args.loss_print_interval),
                              train_steps=args.train_batches, save_steps=None, max_to_keep=2)
    holder = {}
    per_rank = args.batch_size // world

    def eval_on(files, n_samples):
        return P.evaluate(trainer, model, lambda: make_dataset(files, per_rank, 0, 1, args.device,
                                                               args.read_threads, drop_remainder=False),
                          math.ceil(n_samples / args.batch_size))

    def on_eval(step, m):
        if args.save_model_after_each_eval:
            P.save_model(model, sparse_opt, args.model_save_dir, f"step_{step}_val_auc_{m['auc']:0.5f}")
        if args.save_best_model and m.get("improved"):
            P.log0(f"Save best model: monitor(max): {hook.best_metric:.6f}")
            if rank == 0 and args.model_save_dir:
                shutil.rmtree(os.path.join(args.model_save_dir, "best_checkpoint"), ignore_errors=True)
            dist.barrier()
            P.save_model(model, sparse_opt, args.model_save_dir, "best_checkpoint")
        if m.get("plateau"):
            P.log0(f"Early stopping at epoch={len(hook.evals)}!" if not args.disable_early_stop else
                   "plateau reached (--disable_early_stop: training goes on)")
            hook.stop_requested = not args.disable_early_stop

    stream = P.StopAwareDataset(lambda: make_dataset(train_files, per_rank, rank, world, args.device,
                                                     args.read_threads), P.LateStopFlag(holder))
    trainer = Trainer(model=model, args=targs, train_dataset=stream, dense_optimizers=(dense_opt, dense_sched),
                      sparse_optimizer=sparse_opt)
    hook = P.ProtocolHook(trainer, model, sparse_sched, batches_per_epoch,
                          lambda step: eval_on(val_files, args.num_val_samples), args.batch_size,
                          args.loss_print_interval, early_stop=(args.patience, args.min_delta), on_eval=on_eval)
    holder["hook"] = hook
    trainer.add_hook(hook)
    if args.model_load_dir:
        P.load_model(model, sparse_opt, args.model_load_dir)
    if args.save_initial_model:
        P.save_model(model, sparse_opt, args.model_save_dir, "initial_checkpoint")
    trainer.train()
    step = trainer.global_step
    if args.save_best_model and args.model_save_dir and os.path.isdir(os.path.join(args.model_save_dir,
                                                                                  "best_checkpoint")):
        P.load_model(model, sparse_opt, os.path.join(args.model_save_dir, "best_checkpoint"))
    P.log0("================ Test Evaluation ================")
    test = eval_on(test_files, args.num_test_samples)
    P.log0(f"Rank[{rank}], Epoch {len(hook.evals)}, Step {step}, Test AUC {test['auc']:0.6f}, "
           f"LogLoss {test['logloss']:0.6f}, Eval_samples {test['samples']}")
    P.write_metrics(args.metrics_json, {
        "model": "deepfm", "world_size": world, "steps": step, "losses": hook.losses, "evals": hook.evals,
        "test": test, "amp": bool(args.amp), "compute_dtype": str(model.last_compute_dtype),
        "early_stopped": bool(hook.stop_requested), "batches_per_epoch": batches_per_epoch,
        "lr_milestones": milestones, "final_lr": float(dense_opt.param_groups[0]["lr"]),
        "final_sparse_lr": float(sparse_opt.param_groups[0]["lr"]), "store_note": note})
    P.finish_run(tmp, rank)
    return 0


if __name__ == "__main__":
    sys.exit(main())
