"""A RecIS training script written against the RecIS API only (``import recis...``), exercising
every behaviour of RecIS's API; run by tests/compat/test_recis_scripts.py under torchrun.

It asserts the §6.1 facts inline (batch structure, ragged layouts, pass-through keys, output
shapes) and prints ``COMPAT-OK <rank>`` at the end. Usage:
    torchrun --nproc_per_node N recis_script.py --data_dir DIR --output_dir DIR --train_steps 6
It runs under ``RECIS_COMPAT_DEVICE=cpu`` (``model.cuda()`` stays on the CPU); the dataset asks
for ``device="cpu"``. ``recis_script_as_shipped.py`` keeps every CUDA call of RecIS's examples.
"""
import os
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.orc as orc
import torch
import torch.distributed as dist

from recis.features.feature import Feature
from recis.features.feature_engine import FeatureEngine
from recis.features.op import (Bucketize, FeatureCross, Hash, Mod, SelectField, SelectFields,
                               SequenceTruncate)
from recis.framework.metrics import add_metric
from recis.framework.trainer import Trainer, TrainingArguments
from recis.hooks import HashTableFilterHook, ProfilerHook
from recis.io.orc_dataset import OrcDataset
from recis.metrics.auroc import AUROC
from recis.nn import EmbeddingEngine
from recis.nn.hashtable_hook import FilterHook
from recis.nn.initializers import TruncNormalInitializer
from recis.nn.modules.embedding import EmbeddingOption
from recis.nn.modules.hashtable import filter_out_sparse_param
from recis.optim import SparseAdamWTF
from recis.ragged.tensor import RaggedTensor
from recis.utils.logger import Logger
from recis.utils.parser import ArgumentParser

logger = Logger(__name__)
B = 32
TILE = 6


@dataclass
class IOArgs:
    data_dir: str = "./data"
    batch_size: int = B


def make_data(path):
    os.makedirs(path, exist_ok=True)
    rng = np.random.default_rng(0)
    words = ["".join(rng.choice(list("abcdefgh"), 5)) for _ in range(50)]
    for f in range(2):
        n = 200
        lens = rng.integers(1, 12, n)
        orc.write_table(pa.table({
            "label": pa.array([[float(x)] for x in rng.integers(0, 2, n)], pa.list_(pa.float64())),
            "dense1": pa.array([list(rng.random(4)) for _ in range(n)], pa.list_(pa.float64())),
            "price": pa.array([[float(x)] for x in rng.random(n)], pa.list_(pa.float64())),
            "user": pa.array([[int(x)] for x in rng.integers(0, 500, n)], pa.list_(pa.int64())),
            "item": pa.array([[int(x)] for x in rng.integers(0, 900, n)], pa.list_(pa.int64())),
            "hist": pa.array([list(rng.integers(0, 10 ** 9, k)) for k in lens], pa.list_(pa.int64())),
            "tags": pa.array([list(rng.choice(words, k)) for k in lens], pa.list_(pa.string())),
            "score": pa.array([list(rng.random(k)) for k in lens], pa.list_(pa.float64())),
        }), os.path.join(path, f"part-{f}.orc"))


def check_raw_batch(batch):
    # §6.1.1/2/3: a list with one dict; ragged int64 ids with int32 offsets of B+1; fixedlen [B,D];
    # label [B,1] float32; trans_int8 strings have one extra offsets level of bytes
    assert isinstance(batch, list) and len(batch) == 1 and isinstance(batch[0], dict)
    d = batch[0]
    bs = d["label"].shape[0]
    assert d["label"].shape == (bs, 1) and d["label"].dtype == torch.float32
    assert d["dense1"].shape == (bs, 4)
    assert isinstance(d["hist"], RaggedTensor) and d["hist"].values().dtype == torch.int64
    assert d["hist"].offsets()[0].dtype == torch.int32 and d["hist"].offsets()[0].numel() == bs + 1
    assert isinstance(d["tags"], RaggedTensor) and len(d["tags"].offsets()) == 2
    assert d["tags"].values().dtype == torch.int8
    assert d["score"].values().dtype == torch.float32
    return batch


def seen(batch):
    check_raw_batch(batch)
    return batch


def build_dataset(io, rank, world):
    ds = OrcDataset(io.batch_size, worker_idx=rank, worker_num=world, read_threads_num=1, prefetch=1,
                    is_compressed=False, drop_remainder=True, transform_fn=[seen, lambda x: x[0]],
                    dtype=torch.float32, device="cpu", save_interval=1000)
    ds.add_path(io.data_dir)
    ds.fixedlen_feature("label", [0.0])
    ds.fixedlen_feature("dense1", [0.0] * 4)
    ds.fixedlen_feature("price", [0.0])
    for c in ("user", "item", "hist", "score"):
        ds.varlen_feature(c)
    ds.varlen_feature("tags", hash_type=None, trans_int8=True)
    return ds


class Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        init = TruncNormalInitializer(std=0.01)
        self.fe = FeatureEngine(feature_list=[
            Feature("price").add_op(SelectField("price", dim=1)).add_op(Bucketize([0.25, 0.5, 0.75])),
            Feature("user").add_op(SelectField("user")).add_op(Mod(1000)),
            Feature("item").add_op(SelectField("item")),
            Feature("hist").add_op(SelectField("hist")).add_op(Mod(100000)).add_op(
                SequenceTruncate(seq_len=TILE, truncate=True, truncate_side="right", check_length=True, n_dims=2)),
            Feature("tags").add_op(SelectField("tags")).add_op(Hash(hash_type="farm")).add_op(Mod(10000)),
            Feature("user_x_item").add_op(SelectFields([SelectField("user"), SelectField("item")])).add_op(
                FeatureCross()).add_op(Mod(5000)),
        ])
        self.ee = EmbeddingEngine({
            "price": EmbeddingOption(embedding_dim=8, shared_name="user", combiner="sum", initializer=init),
            "user": EmbeddingOption(embedding_dim=8, shared_name="user", combiner="sum", initializer=init),
            "item": EmbeddingOption(embedding_dim=8, shared_name="item", combiner="sum", initializer=init,
                                    filter_hook=FilterHook("GlobalStepFilter", {"filter_step": 50})),
            "hist": EmbeddingOption(embedding_dim=8, shared_name="hist", combiner="tile",
                                    combiner_kwargs={"tile_len": TILE}, initializer=init),
            "tags": EmbeddingOption(embedding_dim=8, shared_name="tags", combiner="mean", initializer=init),
            "user_x_item": EmbeddingOption(embedding_dim=8, shared_name="cross", combiner="mean",
                                           initializer=init),
        })
        self.mlp = torch.nn.Sequential(torch.nn.Linear(8 * 5 + 8 * TILE + 4, 16), torch.nn.ReLU(),
                                       torch.nn.Linear(16, 1))
        self.loss = torch.nn.BCELoss()
        self.auc = AUROC(num_thresholds=200, dist_sync_on_step=True)

    def forward(self, batch):
        feats = self.fe(batch)
        assert "label" in feats and "dense1" in feats and "score" in feats    # §6.1.4 untouched keys
        out = self.ee(feats)
        bs = out["label"].shape[0]
        # §6.1.5: embeds only option keys; ragged pass-through becomes dense; shapes
        assert out["user"].shape == (bs, 8) and out["price"].shape == (bs, 8)
        assert out["hist"].shape == (bs, TILE, 8), out["hist"].shape
        assert out["tags"].shape == (bs, 8) and out["user_x_item"].shape == (bs, 8)
        assert isinstance(out["score"], torch.Tensor) and out["score"].dim() == 2 and out["score"].shape[0] == bs
        assert torch.equal(out["dense1"], feats["dense1"])
        x = torch.cat([out["user"], out["price"], out["item"], out["tags"], out["user_x_item"],
                       out["hist"].reshape(bs, -1), out["dense1"]], 1)
        prob = torch.sigmoid(self.mlp(x))
        label = out["label"]
        self.auc.update(prob.detach(), label)
        add_metric("auc", self.auc.compute())
        return self.loss(prob, label)


def main():
    parser = ArgumentParser()
    parser.add_arguments(TrainingArguments, dest="train_config")
    parser.add_arguments(IOArgs, dest="io")
    args = parser.parse_args()
    dist.init_process_group()
    rank, world = dist.get_rank(), dist.get_world_size()
    if rank == 0 and not os.path.isdir(args.io.data_dir):
        make_data(args.io.data_dir)
    dist.barrier()
    torch.manual_seed(42)
    model = Model()
    sparse = filter_out_sparse_param(model)
    assert len(sparse) == 2 and all(k.startswith("CoalescedHashtable_") for k in sparse)  # dims agree: 2 tables
    model = model.cuda()
    assert filter_out_sparse_param(model).keys() == sparse.keys()
    sparse_opt = SparseAdamWTF(sparse, lr=0.001)
    dense_opt = torch.optim.AdamW(model.parameters(), lr=0.001)
    trainer = Trainer(model=model, args=args.train_config, train_dataset=build_dataset(args.io, rank, world),
                      dense_optimizers=(dense_opt, None), sparse_optimizer=sparse_opt, data_to_cuda=False)
    hooks = [HashTableFilterHook(filter_interval=2)]
    if rank == 0:
        hooks.append(ProfilerHook(wait=1, warmup=1, active=1, repeat=1, output_dir=args.train_config.output_dir))
    trainer.add_hooks(hooks)
    trainer.train()
    logger.info(f"COMPAT-OK {rank}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
