"""Demo: DeepFM on ORC data through the recis API (OrcDataset + FeatureEngine).

Reads the deepfm-schema ORC files with ``recis.io.orc_dataset.OrcDataset``, maps every
categorical id into a fixed hash space with ``recis.features`` (``Mod``), and trains a DeepFM
whose embeddings are ``torch.nn.EmbeddingBag`` tables (sparse gradients, ``SparseAdam``).
Trains on all files but the last, evaluates AUC on the last, prints samples/s, and writes a
PNG of loss and AUC per logged step.
"""
from __future__ import annotations

import argparse
import glob
import os
import time

import torch
import torch.nn as nn
from torchmetrics.functional.classification import binary_auroc

from recis.features.feature import Feature
from recis.features.feature_engine import FeatureEngine
from recis.features.op import Mod, SelectField
from recis.io.orc_dataset import OrcDataset

DENSE = [f"i{i}" for i in range(1, 14)]
SPARSE = [f"c{i}" for i in range(1, 27)]


def make_dataset(files, batch_size, threads):
    ds = OrcDataset(batch_size, read_threads_num=threads, prefetch=2, drop_remainder=False,
                    transform_fn=[lambda x: x[0]], save_interval=None)
    for f in files:
        ds.add_path(f)
    ds.fixedlen_feature("label", [0.0])
    for name in DENSE + SPARSE:
        ds.varlen_feature(name)
    return ds


class DeepFM(nn.Module):
    """FM (first + second order) + DNN over 26 categorical and 13 numeric features.

    Input: ``ids`` int64 [B, 26] (row per feature, -1 = missing), ``dense`` float [B, 13].
    Output: click probability [B].
    """

    def __init__(self, buckets: int, dim: int = 8):
        super().__init__()
        self.emb = nn.ModuleList(nn.EmbeddingBag(buckets, dim, mode="sum", sparse=True)
                                 for _ in SPARSE)
        self.bias = nn.ModuleList(nn.EmbeddingBag(buckets, 1, mode="sum", sparse=True)
                                  for _ in SPARSE)
        for t in list(self.emb) + list(self.bias):
            nn.init.trunc_normal_(t.weight, std=0.001)
        self.dense_w = nn.Linear(len(DENSE), dim * len(DENSE), bias=False)
        nn.init.trunc_normal_(self.dense_w.weight, std=0.001)
        self.dense_b = nn.Linear(len(DENSE), 1)
        self.dnn = nn.Sequential(nn.Linear((len(SPARSE) + len(DENSE)) * dim, 64), nn.ReLU(),
                                 nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 1))
        self.dim = dim

    def forward(self, sparse: dict, dense: torch.Tensor) -> torch.Tensor:
        b = dense.shape[0]
        embs, first = [], [self.dense_b(dense)]
        for k, name in enumerate(SPARSE):
            rt = sparse[name]
            ids, off = rt.values(), rt.offsets()[0].to(torch.int64)[:-1]
            embs.append(self.emb[k](ids, off))
            first.append(self.bias[k](ids, off))
        dense_emb = self.dense_w(dense).view(b, len(DENSE), self.dim)
        stack = torch.cat([torch.stack(embs, 1), dense_emb], 1)          # [B, 39, dim]
        second = 0.5 * (stack.sum(1).pow(2) - stack.pow(2).sum(1)).sum(1, keepdim=True)
        logit = torch.cat(first, 1).sum(1, keepdim=True) + second + self.dnn(stack.flatten(1))
        return torch.sigmoid(logit).squeeze(1)


def batches(ds, engine):
    it = iter(ds)
    while True:
        end, batch = next(it)
        if end:
            return
        out = engine(batch)
        dense = torch.cat([out[n].to_dense().view(-1, 1) if out[n].values().numel() else
                           torch.zeros(out["label"].shape[0], 1) for n in DENSE], 1)
        dense = torch.log1p(dense.clamp_min(0))
        yield out, dense, out["label"].view(-1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--buckets", type=int, default=1 << 17)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--plot", default=None)
    args = ap.parse_args()
    torch.manual_seed(42)
    files = sorted(glob.glob(os.path.join(args.data, "*.orc")))
    if len(files) < 2:
        raise SystemExit(f"need at least 2 ORC files in {args.data}, found {len(files)}")
    train_files, eval_files = files[:-1], files[-1:]

    features = [Feature(n).add_op(SelectField(n)).add_op(Mod(args.buckets)) for n in SPARSE]
    engine = FeatureEngine(features)
    model = DeepFM(args.buckets)
    sparse_params = [p for m in list(model.emb) + list(model.bias) for p in m.parameters()]
    dense_params = [p for n, p in model.named_parameters() if not n.startswith(("emb.", "bias."))]
    opt_sparse = torch.optim.SparseAdam(sparse_params, lr=1e-3)
    opt_dense = torch.optim.Adam(dense_params, lr=1e-3)
    loss_fn = nn.BCELoss()

    history, step, samples, t_train = [], 0, 0, 0.0
    for _ in range(args.epochs):
        model.train()
        for out, dense, label in batches(make_dataset(train_files, args.batch_size, args.threads), engine):
            t0 = time.perf_counter()
            prob = model(out, dense)
            loss = loss_fn(prob, label)
            opt_sparse.zero_grad()
            opt_dense.zero_grad()
            loss.backward()
            opt_sparse.step()
            opt_dense.step()
            t_train += time.perf_counter() - t0
            samples += label.shape[0]
            step += 1
            if step % 20 == 0:
                auc = float(binary_auroc(prob.detach(), label.long()))
                history.append((step, float(loss.detach()), auc))
                print(f"step {step:5d}  loss {history[-1][1]:.4f}  batch AUC {auc:.4f}")

    model.eval()
    preds, labels = [], []
    with torch.no_grad():
        for out, dense, label in batches(make_dataset(eval_files, 4096, args.threads), engine):
            preds.append(model(out, dense))
            labels.append(label)
    auc = float(binary_auroc(torch.cat(preds), torch.cat(labels).long()))
    print(f"eval AUC {auc:.4f} on {eval_files[0]} ({sum(len(l) for l in labels)} rows)")
    print(f"train throughput {samples / t_train:,.0f} samples/s over {step} steps")
    if args.plot:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        s, lo, au = zip(*history)
        fig, ax = plt.subplots(1, 2, figsize=(10, 4))
        ax[0].plot(s, lo)
        ax[0].set_title("training loss")
        ax[1].plot(s, au)
        ax[1].set_title("batch AUC")
        for a in ax:
            a.set_xlabel("step")
        fig.tight_layout()
        fig.savefig(args.plot, dpi=100)
        print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
