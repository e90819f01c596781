"""Worker of tests/distributed/test_exchange_order.py: one EmbeddingEngine forward + backward
under torchrun with the all-to-alls of ``recis_compat/backend/exchange.py`` logged.

The engine has three lookup groups: two physical tables (dims 4 and 8) and, in the dim-8
table, a second runtime group (mean instead of sum). Every ``all_to_all_single`` call is
logged as ``("issue", call, kind, async)`` and every wait on its work as ``("wait", call)``;
``kind`` is ``counts`` (the per-rank counts), ``ids`` (int64 ids) or ``rows`` (float rows).
Rank 0 writes the log and the forward's outputs (by feature, for the given global batch) to
``--out`` as JSON. ``--exchange grouped`` (the engine's default) sends the three groups' ids,
rows and gradients in one all-to-all each (``backend/grouped_exchange.py``); ``per-group``
(``engine.grouped_exchange = False``) keeps one exchange per group.
"""
import argparse
import json
import os

import torch
import torch.distributed as dist

from recis_compat.backend import exchange
from recis_compat.backend.sharding import init_process_group, shard_model
from recis_compat.nn.initializers import UniformInitializer
from recis_compat.nn.modules.embedding import EmbeddingOption
from recis_compat.nn.modules.embedding_engine import EmbeddingEngine

FEATURES = {"a": (4, "sum"), "b": (8, "sum"), "c": (8, "mean")}


def engine() -> EmbeddingEngine:
    return EmbeddingEngine({name: EmbeddingOption(embedding_dim=dim, shared_name=name, combiner=comb,
                                                  initializer=UniformInitializer(-0.5, 0.5,
                                                                                 generator=torch.Generator().manual_seed(3)))
                            for name, (dim, comb) in FEATURES.items()})


def global_batch():
    g = torch.Generator().manual_seed(11)
    return {name: torch.randint(0, 1 << 40, (8, 3), generator=g) for name in FEATURES}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--exchange", choices=("grouped", "per-group"), default="grouped")
    args = ap.parse_args()
    init_process_group("cpu")
    rank, world = dist.get_rank(), dist.get_world_size()
    e = engine()
    e.grouped_exchange = args.exchange == "grouped"
    model = shard_model(e)
    log = []
    real = exchange.dist.all_to_all_single

    class LoggedWork:
        def __init__(self, work, call):
            self.work, self.call = work, call

        def wait(self):
            log.append(("wait", self.call))
            return self.work.wait()

    def logged(out, inp, output_split_sizes=None, input_split_sizes=None, group=None, async_op=False):
        call = sum(1 for e in log if e[0] == "issue")
        kind = "rows" if inp.is_floating_point() else ("ids" if output_split_sizes is not None else "counts")
        log.append(("issue", call, kind, bool(async_op)))
        work = real(out, inp, output_split_sizes=output_split_sizes, input_split_sizes=input_split_sizes,
                    group=group, async_op=async_op)
        return LoggedWork(work, call) if async_op else work

    exchange.dist.all_to_all_single = logged
    batch = {k: v.chunk(world)[rank] for k, v in global_batch().items()}
    out = model(batch)
    forward_log = list(log)
    torch.autograd.backward([out[k] for k in FEATURES], [torch.ones_like(out[k]) for k in FEATURES])
    exchange.dist.all_to_all_single = real
    gathered = [None] * world
    dist.all_gather_object(gathered, {k: out[k].detach().tolist() for k in FEATURES})
    if rank == 0:
        merged = {k: sum((g[k] for g in gathered), []) for k in FEATURES}
        with open(args.out + ".tmp", "w") as f:
            json.dump({"forward_log": forward_log, "log": log, "out": merged}, f)
        os.replace(args.out + ".tmp", args.out)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
