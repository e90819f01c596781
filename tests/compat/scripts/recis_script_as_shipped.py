"""A RecIS training script as RecIS ships its examples, run unchanged on a CPU host.

It keeps every plain torch CUDA call RecIS's examples make (RecIS 1.0; see COMPATIBILITY.md): the
``set_num_threads()`` setup from ``cpu_count() // 16`` with ``torch.set_num_threads`` /
``torch.set_num_interop_threads`` and ``torch.cuda.set_device(int(os.getenv("RANK", "-1")))``,
``dist.init_process_group()`` without arguments, ``OrcDataset(device="cuda")``, tables on
``torch.device("cuda")``, ``model = model.cuda()``, ``.cuda()`` on a tensor and
``torch.autocast("cuda", dtype=torch.bfloat16)`` around the dense forward. Nothing here knows it
runs on a CPU: ``RECIS_COMPAT_DEVICE=cpu`` and ``import recis`` do that
(``recis_compat/utils/cpu_mode.py``). Run by tests/compat/test_recis_scripts.py under torchrun:
    RECIS_COMPAT_DEVICE=cpu torchrun --nproc_per_node N recis_script_as_shipped.py \
        --data_dir DIR --output_dir DIR --train_steps 4
It prints ``SHIPPED-OK <rank>`` at the end.
"""
import os
import random
from dataclasses import dataclass
from multiprocessing import cpu_count

import numpy as np
import pyarrow as pa
import pyarrow.orc as orc
import torch
import torch.distributed as dist

from recis.features.feature import Feature
from recis.features.feature_engine import FeatureEngine
from recis.features.op import Mod, SelectField
from recis.framework.trainer import Trainer, TrainingArguments
from recis.io.orc_dataset import OrcDataset
from recis.nn import EmbeddingEngine
from recis.nn.initializers import TruncNormalInitializer
from recis.nn.modules.embedding import EmbeddingOption
from recis.nn.modules.hashtable import filter_out_sparse_param
from recis.optim import SparseAdamW
from recis.utils.logger import Logger
from recis.utils.parser import ArgumentParser

logger = Logger(__name__)


@dataclass
class IOArgs:
    data_dir: str = "./data"
    batch_size: int = 32


def set_num_threads():
    cpu_num = cpu_count() // 16
    os.environ["OMP_NUM_THREADS"] = str(cpu_num)
    os.environ["OPENBLAS_NUM_THREADS"] = str(cpu_num)
    os.environ["MKL_NUM_THREADS"] = str(cpu_num)
    os.environ["VECLIB_MAXIMUM_THREADS"] = str(cpu_num)
    os.environ["NUMEXPR_NUM_THREADS"] = str(cpu_num)
    torch.set_num_interop_threads(cpu_num)
    torch.set_num_threads(cpu_num)
    # set device for local run
    torch.cuda.set_device(int(os.getenv("RANK", "-1")))


def set_seed(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def make_data(path):
    os.makedirs(path, exist_ok=True)
    rng = np.random.default_rng(1)
    for f in range(2):
        n = 160
        lens = rng.integers(0, 5, n)
        orc.write_table(pa.table({
            "label": pa.array([[float(x)] for x in rng.integers(0, 2, n)], pa.list_(pa.float64())),
            "dense": pa.array([list(rng.random(4)) for _ in range(n)], pa.list_(pa.float64())),
            "user": pa.array([[int(x)] for x in rng.integers(0, 300, n)], pa.list_(pa.int64())),
            "hist": pa.array([list(rng.integers(0, 10 ** 6, k)) for k in lens], pa.list_(pa.int64())),
        }), os.path.join(path, f"part-{f}.orc"))


def get_dataset(io, rank, world):
    ds = OrcDataset(io.batch_size, worker_idx=rank, worker_num=world, read_threads_num=1, prefetch=1,
                    is_compressed=False, drop_remainder=True, transform_fn=[lambda x: x[0]],
                    dtype=torch.float32, device="cuda", save_interval=1000)
    ds.add_path(io.data_dir)
    ds.fixedlen_feature("label", [0.0])
    ds.fixedlen_feature("dense", [0.0] * 4)
    ds.varlen_feature("user")
    ds.varlen_feature("hist")
    return ds


class Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        init = TruncNormalInitializer(std=0.01)
        self.feature_engine = FeatureEngine(feature_list=[
            Feature("user").add_op(SelectField("user")).add_op(Mod(1000)),
            Feature("hist").add_op(SelectField("hist")).add_op(Mod(100000)),
        ])
        self.embedding_engine = EmbeddingEngine({
            "user": EmbeddingOption(embedding_dim=8, shared_name="user", combiner="sum", initializer=init,
                                    device=torch.device("cuda")),
            "hist": EmbeddingOption(embedding_dim=8, shared_name="hist", combiner="mean", initializer=init,
                                    device=torch.device("cuda")),
        })
        self.dnn = torch.nn.Sequential(torch.nn.Linear(8 + 8 + 4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
        self.loss = torch.nn.BCEWithLogitsLoss()
        self.dense_scale = torch.ones(4, device="cuda")

    def forward(self, batch):
        out = self.embedding_engine(self.feature_engine(batch))
        label = out["label"].cuda()
        dense = out["dense"].to("cuda") * self.dense_scale
        x = torch.cat([out["user"], out["hist"], dense], 1)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = self.dnn(x)
        assert logits.dtype == torch.bfloat16, logits.dtype       # autocast is really on
        return self.loss(logits.float(), label)


def main():
    parser = ArgumentParser()
    parser.add_arguments(TrainingArguments, dest="train_config")
    parser.add_arguments(IOArgs, dest="io")
    args = parser.parse_args()
    set_num_threads()
    set_seed(42)
    dist.init_process_group()
    rank, world = dist.get_rank(), dist.get_world_size()
    if rank == 0 and not os.path.isdir(args.io.data_dir):
        make_data(args.io.data_dir)
    dist.barrier()
    model = Model()
    sparse_params = filter_out_sparse_param(model)
    model = model.cuda()
    sparse_opt = SparseAdamW(sparse_params, lr=0.001)
    dense_opt = torch.optim.AdamW(model.parameters(), lr=0.001)
    trainer = Trainer(model=model, args=args.train_config, train_dataset=get_dataset(args.io, rank, world),
                      dense_optimizers=(dense_opt, None), sparse_optimizer=sparse_opt, data_to_cuda=True)
    trainer.train()
    torch.cuda.synchronize()
    logger.info(f"SHIPPED-OK {rank} device={torch.cuda.current_device()} threads={torch.get_num_threads()}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
