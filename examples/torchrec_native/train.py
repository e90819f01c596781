"""TorchRec's DLRM with our dynamic EmbeddingBagCollection swapped in, trained under torchrun.

The model is ``torchrec.models.dlrm.DLRM`` (wrapped in ``DLRMTrain`` for the loss) whose
``embedding_bag_collection`` is a ``recis_compat.torchrec.DynamicEmbeddingBagCollection``:
26 dynamic tables (one per categorical column ``c1..c26``), keyed by the raw 40-bit ids of
the data, no hashing into a fixed number of rows. ``DistributedModelParallel`` shards them
row-wise by RecIS's slice rule (``recis_compat.torchrec.distributed.shard_model``), the dense
arches are data-parallel, and TorchRec's ``TrainPipelineSparseDist`` runs the training loop;
the optimizer is ``model.fused_optimizer`` (our row-sparse AdamW) plus Adam for the dense part
in a TorchRec ``CombinedOptimizer``.

Data: Criteo-like rows from ``examples/deepfm/make_data.py`` (13 numeric, 26 categorical
columns, a learnable click signal), generated in memory with a fixed seed; every step takes a
global batch of ``--batch-size`` rows and each rank trains on its slice, so 1 and N processes
see the same samples. At the end, rank 0 writes ``--metrics`` (JSON): the per-step global
training losses, the eval loss and AUC on held-out rows, the number of ids stored and the
training throughput (global samples per second, wall clock of the training loop).

    bash examples/torchrec_native/run.sh                 # 1 process
    WORLD_SIZE=2 bash examples/torchrec_native/run.sh    # 2 processes (gloo on CPU)
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import pathlib
import time

import numpy as np
import torch
import torch.distributed as dist
from torchrec import EmbeddingBagConfig, KeyedJaggedTensor
from torchrec.datasets.utils import Batch
from torchrec.distributed.train_pipeline import TrainPipelineSparseDist
from torchrec.models.dlrm import DLRM, DLRMTrain
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
from torchrec.optim.optimizers import in_backward_optimizer_filter

from recis_compat.backend.sharding import init_process_group
from recis_compat.torchrec import DynamicEmbeddingBagCollection, DynamicTableOptions, Normal
from recis_compat.torchrec.distributed import shard_model

HERE = pathlib.Path(__file__).resolve().parent
NUM_DENSE, NUM_SPARSE = 13, 26
SPARSE = [f"c{j + 1}" for j in range(NUM_SPARSE)]


def _generator(seed: int):
    spec = importlib.util.spec_from_file_location("deepfm_make_data", HERE.parent / "deepfm" / "make_data.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.CriteoLikeGenerator(seed)


def load_rows(rows: int, seed: int):
    """``(dense [rows, 13] float32, ids: list of 26 (values int64, lengths int32), labels [rows])``."""
    table = _generator(seed).table(rows)
    dense = np.zeros((rows, NUM_DENSE), dtype=np.float32)
    for j in range(NUM_DENSE):
        col = table.column(f"i{j + 1}").combine_chunks()
        lengths = np.diff(col.offsets.to_numpy())
        vals = np.zeros(rows)
        vals[lengths > 0] = col.flatten().to_numpy()
        dense[:, j] = np.log1p(np.maximum(vals, 0.0))
    sparse = []
    for name in SPARSE:
        col = table.column(name).combine_chunks()
        sparse.append((torch.from_numpy(col.flatten().to_numpy().astype(np.int64)),
                       torch.from_numpy(np.diff(col.offsets.to_numpy()).astype(np.int32))))
    labels = torch.from_numpy(table.column("label").combine_chunks().flatten().to_numpy().astype(np.float32))
    return torch.from_numpy(dense), sparse, labels


def batch_of(data, lo: int, hi: int) -> Batch:
    """Rows ``[lo, hi)`` as a TorchRec ``Batch`` (KJT keys c1..c26)."""
    dense, sparse, labels = data
    values, lengths = [], []
    for vals, lens in sparse:
        offsets = torch.zeros(lens.numel() + 1, dtype=torch.int64)
        torch.cumsum(lens.to(torch.int64), 0, out=offsets[1:])
        values.append(vals[offsets[lo]:offsets[hi]])
        lengths.append(lens[lo:hi])
    kjt = KeyedJaggedTensor.from_lengths_sync(keys=SPARSE, values=torch.cat(values), lengths=torch.cat(lengths))
    return Batch(dense_features=dense[lo:hi], sparse_features=kjt, labels=labels[lo:hi])


def auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """ROC AUC by ranks (ties averaged)."""
    order = torch.argsort(scores)
    ranks = torch.empty(scores.numel(), dtype=torch.float64)
    ranks[order] = torch.arange(1, scores.numel() + 1, dtype=torch.float64)
    s_sorted = scores[order]
    _, inverse, counts = torch.unique_consecutive(s_sorted, return_inverse=True, return_counts=True)
    first = torch.cumsum(counts, 0) - counts + 1
    ranks[order] = (first + (counts - 1) / 2.0).to(torch.float64)[inverse]
    pos = labels > 0.5
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def build_model(dim: int, lr: float):
    tables = [EmbeddingBagConfig(name=f"t_{name}", embedding_dim=dim, num_embeddings=1 << 20, feature_names=[name])
              for name in SPARSE]
    ebc = DynamicEmbeddingBagCollection(tables, options=DynamicTableOptions(initializer=Normal(0.0, 0.05), seed=7),
                                        fused_params={"optimizer": "adamw", "learning_rate": lr,
                                                      "weight_decay": 0.0})
    return DLRMTrain(DLRM(embedding_bag_collection=ebc, dense_in_features=NUM_DENSE,
                          dense_arch_layer_sizes=[32, dim], over_arch_layer_sizes=[32, 1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=20000, help="training rows")
    ap.add_argument("--eval-rows", type=int, default=4000)
    ap.add_argument("--batch-size", type=int, default=512, help="global batch (split over the ranks)")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--dim", type=int, default=8)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--metrics", default="", help="JSON file rank 0 writes at the end")
    args = ap.parse_args()

    init_process_group(device="cpu")
    rank, world = dist.get_rank(), dist.get_world_size()
    if args.batch_size % world:
        raise SystemExit(f"--batch-size {args.batch_size} must be a multiple of the world size {world}")
    torch.manual_seed(args.seed)
    data = load_rows(args.rows + args.eval_rows, args.seed)
    model = shard_model(build_model(args.dim, args.lr), device=torch.device("cpu"))
    dense_opt = KeyedOptimizerWrapper(dict(in_backward_optimizer_filter(model.named_parameters())),
                                      lambda params: torch.optim.Adam(params, lr=args.lr))
    optimizer = CombinedOptimizer([model.fused_optimizer, dense_opt])
    pipeline = TrainPipelineSparseDist(model, optimizer, torch.device("cpu"))

    per = args.batch_size // world
    steps = args.rows // args.batch_size
    losses = []
    dist.barrier()
    start = time.perf_counter()
    for _ in range(args.epochs):
        batches = iter([batch_of(data, s * args.batch_size + rank * per, s * args.batch_size + (rank + 1) * per)
                        for s in range(steps)])
        while True:
            try:
                loss, _, _ = pipeline.progress(batches)
            except StopIteration:
                break
            t = loss.detach().clone()
            dist.all_reduce(t)
            losses.append(float(t) / world)
            if rank == 0 and len(losses) % 10 == 0:
                print(f"step {len(losses)}: loss {losses[-1]:.4f}", flush=True)

    train_s = time.perf_counter() - start

    # evaluation: the held-out rows, each rank its slice; logits gathered on every rank
    model = pipeline.detach()
    model.eval()
    lo = args.rows + rank * (args.eval_rows // world)
    with torch.no_grad():
        _, (_, logits, labels) = model(batch_of(data, lo, lo + args.eval_rows // world))
    gathered = [torch.empty_like(logits) for _ in range(world)]
    dist.all_gather(gathered, logits.contiguous())
    logits = torch.cat(gathered)
    labels = data[2][args.rows:args.rows + logits.numel()]
    eval_loss = float(torch.nn.functional.binary_cross_entropy_with_logits(logits, labels))
    ids = torch.tensor([sum(len(t.impl) for t in model.module.model.sparse_arch.embedding_bag_collection.tables.values())])
    dist.all_reduce(ids)
    metrics = {"world": world, "steps": len(losses), "losses": losses, "eval_loss": eval_loss,
               "eval_auc": auc(logits, labels), "ids_stored": int(ids),
               "train_samples_per_s": len(losses) * args.batch_size / train_s}
    if rank == 0:
        print(json.dumps({k: v for k, v in metrics.items() if k != "losses"}), flush=True)
        if args.metrics:
            pathlib.Path(args.metrics).write_text(json.dumps(metrics))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    if "RANK" not in os.environ:
        os.environ.update(RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT="0", LOCAL_RANK="0",
                          LOCAL_WORLD_SIZE="1")
    main()
