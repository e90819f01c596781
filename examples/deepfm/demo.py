"""``make demo``: train the deepfm example on generated data, print eval AUC and samples/s, plot.

Trains ``DeepFM`` (RecIS dynamic tables, SparseAdamW + AdamW, RecIS ``Trainer``) on every ORC
file but the last for ``--epochs`` epochs, evaluates AUC on the last file, prints training
throughput (samples/s, wall time of the training loop) and writes a PNG of loss and batch AUC per
step. One process; for several use run.sh (torchrun).
"""
from __future__ import annotations

import argparse
import glob
import os
import shutil
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from recis.framework.trainer import Trainer, TrainingArguments  # noqa: E402
from recis.hooks.hook import Hook  # noqa: E402
from recis.metrics.auroc import AUROC  # noqa: E402
from recis.nn.modules.hashtable import filter_out_sparse_param  # noqa: E402
from recis.optim import SparseAdamW  # noqa: E402

from dataset import IOArgs, get_dataset  # noqa: E402
from deepfm_model import DeepFM  # noqa: E402


class History(Hook):
    """Records (step, loss, batch AUC) every ``every`` steps."""

    def __init__(self, every: int = 10):
        self.every, self.rows, self.calls = every, [], 0

    def after_step(self, metrics=None, global_step=0):
        self.calls += 1
        if self.calls % self.every == 0 and metrics:
            self.rows.append((int(global_step), float(metrics["loss"]), float(metrics.get("auc", float("nan")))))


def evaluate(model: DeepFM, io_args: IOArgs) -> tuple:
    model.eval()
    auc, rows = AUROC(num_thresholds=200), 0
    with torch.no_grad():
        for end, batch in get_dataset(io_args):
            if end:
                break
            prob, label = model.predict(batch)
            auc.update(prob, label)
            rows += label.shape[0]
    model.train()
    return float(auc.compute()), rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--plot", default=None)
    args = ap.parse_args()
    torch.manual_seed(42)
    files = sorted(glob.glob(os.path.join(args.data, "*.orc")))
    if len(files) < 2:
        raise SystemExit(f"need at least 2 ORC files in {args.data}, found {len(files)}")
    held_out = os.path.basename(files[-1])
    train_io = IOArgs(data_paths=args.data, batch_size=args.batch_size, drop_remainder=False, thread_num=2)
    train_ds = get_dataset(train_io, files=files[:-1])
    eval_io = IOArgs(data_paths=args.data, batch_size=4096, drop_remainder=False, file_pattern=held_out)
    model = DeepFM()
    sparse_opt = SparseAdamW(filter_out_sparse_param(model), lr=2e-3, weight_decay=0.0)
    dense_opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    out_dir = tempfile.mkdtemp(prefix="recis-demo-")
    hist = History(10)
    trainer = Trainer(model=model, args=TrainingArguments(output_dir=out_dir, log_steps=50, save_steps=None,
                                                          train_epoch=args.epochs),
                      train_dataset=train_ds, dense_optimizers=(dense_opt, None), sparse_optimizer=sparse_opt,
                      hooks=[hist])
    t0 = time.perf_counter()
    trainer.train()
    elapsed = time.perf_counter() - t0
    steps = trainer.global_step
    samples = steps * args.batch_size
    auc, rows = evaluate(model, eval_io)
    shutil.rmtree(out_dir, ignore_errors=True)
    print(f"eval AUC {auc:.4f} on {held_out} ({rows} rows)")
    print(f"train throughput {samples / elapsed:,.0f} samples/s over {steps} steps "
          f"(batch {args.batch_size}, {torch.get_num_threads()} threads)")
    if args.plot and hist.rows:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        s, lo, au = zip(*hist.rows)
        fig, ax = plt.subplots(1, 2, figsize=(10, 4))
        ax[0].plot(s, lo)
        ax[0].set_title("training loss")
        ax[1].plot(s, au)
        ax[1].set_title("AUC (running, training batches)")
        for a in ax:
            a.set_xlabel("step")
        fig.tight_layout()
        fig.savefig(args.plot, dpi=100)
        print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
