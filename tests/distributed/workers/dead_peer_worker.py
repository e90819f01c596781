"""Worker for ``tests/distributed/test_dead_peer.py``: a RecIS-style training script in which
one rank stops itself (SIGSTOP) in the middle of a step.

Like a RecIS script it does ``import recis`` and calls ``dist.init_process_group()`` itself,
bare (no backend, no timeout): the timeout must come from ``RECIS_COMPAT_DIST_TIMEOUT`` through
``recis_compat/utils/dist_timeout.py``. The model is a ``DynamicEmbedding`` (sharded over the
ranks by ``shard_model``) feeding a dense head (data-parallel), trained with SparseAdamW + Adam.

Args: ``--out DIR``; ``--stop-rank R``, ``--stop-step K`` and
``--stop-at {forward,backward,barrier}``: rank R stops itself before the forward of step K (the
others block in the id all-to-all), after it, before ``loss.backward()`` (the others block in
the embedding-gradient all-to-all), or after the whole step (``barrier``: every step ends with
``dist.all_reduce`` and ``dist.barrier`` on the default group, where the others block).
Files written in ``DIR``: ``pid<r>`` (every rank's pid, at start), ``stopped<r>`` (wall time
just before the stop), ``error<r>`` (``time``, type and message of the exception that ended
rank r, which is then re-raised so the process exits non-zero as an unhandled error would).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time

import torch
import torch.distributed as dist

import recis  # noqa: F401  (installs the process-group timeout rule, as in a RecIS script)
from recis.nn import DynamicEmbedding, EmbeddingOption
from recis.nn.initializers import ConstantInitializer
from recis.nn.modules.hashtable import filter_out_sparse_param
from recis.optim import SparseAdamW

BATCH = 8
POOL = 64
DIM = 4
TABLE = "dead_peer_user"


class Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.user = DynamicEmbedding(EmbeddingOption(embedding_dim=DIM, shared_name=TABLE,
                                                     initializer=ConstantInitializer(0.05)))
        self.head = torch.nn.Linear(DIM, 1)

    def forward(self, ids):
        return self.head(self.user(ids)).squeeze(1)


def batch(step: int, rank: int):
    g = torch.Generator().manual_seed(1000 * step + rank)
    # ids spread over both ranks' slices (id & 0xFFFF decides the owner)
    ids = torch.randint(0, POOL, (BATCH, 2), generator=g) * 9973
    return ids, torch.rand(BATCH, generator=g)


def _write(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def train(args, rank: int) -> None:
    from recis_compat.backend.sharding import shard_model
    model = Model()
    runner = shard_model(model)
    sparse_opt = SparseAdamW(filter_out_sparse_param(model), lr=0.05)
    dense_opt = torch.optim.Adam(model.head.parameters(), lr=0.01)
    for step in range(args.stop_step + 2):
        stop_here = rank == args.stop_rank and step == args.stop_step
        if stop_here and args.stop_at == "forward":
            _stop(args.out, rank)
        ids, label = batch(step, rank)
        pred = runner(ids)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(pred, label)
        if stop_here and args.stop_at == "backward":
            _stop(args.out, rank)
        loss.backward()
        sparse_opt.step()
        dense_opt.step()
        sparse_opt.zero_grad()
        dense_opt.zero_grad()
        if args.stop_at == "barrier":
            # what the Trainer (stop-state all-reduce) and the checkpoint manager (barrier) call
            if stop_here:
                _stop(args.out, rank)
            dist.all_reduce(torch.zeros(1), op=dist.ReduceOp.MAX)
            dist.barrier()


def _stop(out: str, rank: int) -> None:
    _write(os.path.join(out, f"stopped{rank}"), repr(time.time()))
    os.kill(os.getpid(), signal.SIGSTOP)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--stop-rank", type=int, default=1)
    ap.add_argument("--stop-step", type=int, default=1)
    ap.add_argument("--stop-at", choices=("forward", "backward", "barrier"), required=True)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    rank = int(os.environ["RANK"])
    _write(os.path.join(args.out, f"pid{rank}"), str(os.getpid()))
    dist.init_process_group()
    try:
        train(args, rank)
    except Exception as e:
        _write(os.path.join(args.out, f"error{rank}"), json.dumps(
            {"time": time.time(), "type": type(e).__name__, "message": str(e),
             "cause": type(e.__cause__).__name__ if e.__cause__ is not None else None}))
        raise
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
