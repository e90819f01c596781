"""Train a model holding our dynamic collections beside an ordinary TorchRec EBC, under DMP.

Run alone or under ``torchrun --nproc_per_node W``: every step has a global batch of
``GLOBAL_B`` samples; rank r takes its slice. The model (``Net``): a
``DynamicEmbeddingBagCollection`` (sum and mean tables), a ``DynamicEmbeddingCollection``
(sequence, summed here), TorchRec's own ``EmbeddingBagCollection`` (table-wise, fused
EXACT_SGD) and a linear head; loss: BCE mean over the local batch (DDP / the "worker" rule /
TorchRec's gradient division make the update equal to the global mean's).

Two trainings from the same start: a plain loop (``model.fused_optimizer`` + Adam in a
``CombinedOptimizer``, then eval logits), and TorchRec's ``TrainPipelineSparseDist``. Written
to ``<out>/rank<r>.pt``: per-step global losses, eval logits of the rank's slice, and the
rank's dynamic rows by table; the loop model (and its fused optimizers) is also saved with
``recis_compat.torchrec.checkpoint.save_checkpoint`` to ``<out>/dcp``. ``--load DIR`` instead
loads such a checkpoint into a fresh DMP model at this world size and writes its eval logits
and AdamW beta powers to ``<out>/load<r>.pt``.
"""
from __future__ import annotations

import argparse
import os
import pathlib

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, EmbeddingConfig, KeyedJaggedTensor
from torchrec.datasets.utils import Batch
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints, Topology
from torchrec.distributed.train_pipeline import TrainPipelineSparseDist
from torchrec.distributed.train_pipeline.runtime_forwards import PipelinedForward
from torchrec.distributed.types import ShardingEnv
from torchrec.modules.embedding_configs import PoolingType
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
from torchrec.optim.optimizers import in_backward_optimizer_filter
from fbgemm_gpu.split_embedding_configs import EmbOptimType

from recis_compat.backend.sharding import init_process_group
from recis_compat.torchrec import (DynamicEmbeddingBagCollection, DynamicEmbeddingCollection, DynamicTableOptions,
                                   Normal)
from recis_compat.torchrec.checkpoint import load_checkpoint, save_checkpoint
from recis_compat.torchrec.distributed import shard_model

GLOBAL_B = 8
DIM = 8
PLAIN_ROWS = 64
FUSED = dict(optimizer="adamw", learning_rate=0.05, beta1=0.9, beta2=0.99, eps=1e-6, weight_decay=0.01)
KEYS = ["u", "i", "j", "h", "p"]


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        opts = DynamicTableOptions(initializer=Normal(0.0, 0.1), seed=5)
        self.dyn = DynamicEmbeddingBagCollection(
            [EmbeddingBagConfig(name="user", embedding_dim=DIM, num_embeddings=1000, feature_names=["u"]),
             EmbeddingBagConfig(name="item", embedding_dim=DIM, num_embeddings=1000, feature_names=["i", "j"],
                                pooling=PoolingType.MEAN)], options=opts, fused_params=FUSED)
        self.seq = DynamicEmbeddingCollection(
            [EmbeddingConfig(name="hist", embedding_dim=DIM, num_embeddings=1000, feature_names=["h"])],
            options=opts, fused_params=FUSED)
        self.plain = EmbeddingBagCollection([EmbeddingBagConfig(name="plain", embedding_dim=DIM,
                                                                num_embeddings=PLAIN_ROWS, feature_names=["p"])])
        self.head = nn.Linear(DIM * 5 + 2, 1)

    def forward(self, batch: Batch):
        kt = self.dyn(batch.sparse_features)
        pt = self.plain(batch.sparse_features)
        seq = self.seq(batch.sparse_features)
        hist = seq["h"].to_padded_dense(4).sum(1)
        x = torch.cat([kt.values(), pt.values(), hist, batch.dense_features], 1)
        logits = self.head(x).squeeze(1)
        loss = F.binary_cross_entropy_with_logits(logits, batch.labels)
        return loss, (loss.detach(), logits.detach())


def global_batch(step: int):
    """Per-sample id lists of every key, dense features and labels of step ``step``."""
    g = torch.Generator().manual_seed(1000 + step)
    samples = []
    for _ in range(GLOBAL_B):
        big = lambda n: ((torch.randint(0, 30, (n,), generator=g) * 7919) + (1 << 33)).tolist()  # noqa: E731
        samples.append({"u": big(1), "i": big(int(torch.randint(0, 4, (1,), generator=g))), "j": big(1),
                        "h": big(int(torch.randint(0, 5, (1,), generator=g))),
                        "p": torch.randint(0, PLAIN_ROWS, (1,), generator=g).tolist()})
    dense = torch.randn(GLOBAL_B, 2, generator=g)
    labels = (torch.rand(GLOBAL_B, generator=g) > 0.5).float()
    return samples, dense, labels


def local_batch(step: int, rank: int, world: int) -> Batch:
    samples, dense, labels = global_batch(step)
    per = GLOBAL_B // world
    lo, hi = rank * per, (rank + 1) * per
    values, lengths = [], []
    for k in KEYS:
        for s in samples[lo:hi]:
            values += s[k]
            lengths.append(len(s[k]))
    kjt = KeyedJaggedTensor.from_lengths_sync(keys=KEYS, values=torch.tensor(values, dtype=torch.int64),
                                              lengths=torch.tensor(lengths, dtype=torch.int32))
    return Batch(dense_features=dense[lo:hi], sparse_features=kjt, labels=labels[lo:hi])


def build(world: int):
    torch.manual_seed(0)
    net = Net()
    env = ShardingEnv.from_process_group(dist.group.WORLD)
    sharder = EmbeddingBagCollectionSharder(fused_params={"optimizer": EmbOptimType.EXACT_SGD, "learning_rate": 0.05})
    planner = EmbeddingShardingPlanner(
        topology=Topology(world_size=world, compute_device="cpu", local_world_size=world),
        constraints={"plain": ParameterConstraints(sharding_types=["table_wise"], compute_kernels=["fused"])})
    plan = planner.collective_plan(net, [sharder], env.process_group)
    model = shard_model(net, device=torch.device("cpu"), env=env, sharders=[sharder], plan=plan)
    # the same start for the TorchRec table at every world size
    full = torch.randn(PLAIN_ROWS, DIM, generator=torch.Generator().manual_seed(3)) * 0.1
    for key, t in model.state_dict().items():
        if key.endswith("plain.weight"):
            for shard in t.local_shards():
                r0, c0 = shard.metadata.shard_offsets
                r1, c1 = r0 + shard.tensor.shape[0], c0 + shard.tensor.shape[1]
                shard.tensor.copy_(full[r0:r1, c0:c1])
    dense = KeyedOptimizerWrapper(dict(in_backward_optimizer_filter(model.named_parameters())),
                                  lambda params: torch.optim.Adam(params, lr=0.01))
    return model, CombinedOptimizer([model.fused_optimizer, dense])


def mean_loss(loss: torch.Tensor, world: int) -> float:
    t = loss.detach().clone()
    dist.all_reduce(t)
    return float(t) / world


def dynamic_rows(model) -> dict:
    from recis_compat.backend.table_dcp import dynamic_tables
    return {name: t.impl.state_dict() for name, t in dynamic_tables(model)}


def fused_optimizers(model) -> dict:
    """Our collections' fused optimizers (under DMP: of the sharded twins)."""
    return {"dyn": model.module.dyn.fused_optimizer, "seq": model.module.seq.fused_optimizer}


def load_and_eval(args, rank: int, world: int) -> None:
    """``--load DIR``: a fresh DMP model at this world size loads the checkpoint, evaluates."""
    model, _ = build(world)
    opts = fused_optimizers(model)
    load_checkpoint(model, args.load, optimizers=opts, trusted_source=True)
    model.eval()
    with torch.no_grad():
        logits = model(local_batch(99, rank, world))[1][1]
    torch.save({"eval": logits, "powers": opts["dyn"].beta_powers("user")}, pathlib.Path(args.out) / f"load{rank}.pt")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--load", default="", help="load this checkpoint into a fresh DMP model and evaluate")
    args = ap.parse_args()
    init_process_group(device="cpu")
    rank, world = dist.get_rank(), dist.get_world_size()
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.load:
        load_and_eval(args, rank, world)
        dist.barrier()
        dist.destroy_process_group()
        return
    result = {"world": world}

    model, opt = build(world)
    losses = []
    for step in range(args.steps):
        loss, _ = model(local_batch(step, rank, world))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(mean_loss(loss, world))
    model.eval()
    with torch.no_grad():
        result["eval_loop"] = model(local_batch(99, rank, world))[1][1]
    result["losses_loop"], result["rows_loop"] = losses, dynamic_rows(model)
    result["powers_loop"] = fused_optimizers(model)["dyn"].beta_powers("user")
    save_checkpoint(model, str(out / "dcp"), optimizers=fused_optimizers(model))

    model, opt = build(world)
    pipeline = TrainPipelineSparseDist(model, opt, torch.device("cpu"))
    batches = iter([local_batch(step, rank, world) for step in range(args.steps)])
    losses = []
    while True:
        try:
            loss, _ = pipeline.progress(batches)     # the model's second output
        except StopIteration:
            break
        losses.append(mean_loss(loss, world))
    result["losses_pipe"], result["rows_pipe"] = losses, dynamic_rows(model)
    # which modules the pipeline runs input_dist for ahead of time (their forward was replaced)
    result["pipelined"] = sorted(type(m).__name__ for m in model.modules()
                                 if isinstance(getattr(m, "forward", None), PipelinedForward))
    torch.save(result, out / f"rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()
    print(f"rank {rank}: done", flush=True)


if __name__ == "__main__":
    if "RANK" not in os.environ:
        os.environ.update(RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT="0",
                          LOCAL_RANK="0", LOCAL_WORLD_SIZE="1")
    main()
