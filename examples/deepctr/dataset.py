"""deepctr input pipeline: the ORC reader, the feature transforms and the embedding options.

The only change from RecIS's example is that the device of the reader output and of the
embedding tables is a parameter (``"cpu"`` by default here, ``"cuda"`` in RecIS).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from recis.features.feature import Feature
from recis.features.op import (Bucketize, FeatureCross, Hash, Mod, SelectField, SelectFields,
                               SequenceTruncate)
from recis.io.orc_dataset import OrcDataset
from recis.nn.initializers import TruncNormalInitializer
from recis.nn.modules.embedding import EmbeddingOption

SEQ_LEN = 1000      # ids kept per sparse4 / sparse5 row, and the tile length


@dataclass
class IOArgs:
    """Reader settings (``data_paths``: comma-separated files or directories)."""

    data_paths: str = "./fake_data/"
    batch_size: int = 64
    thread_num: int = 1
    prefetch: int = 1
    drop_remainder: bool = True


def get_dataset(io_args: IOArgs, device: str = "cpu") -> OrcDataset:
    """The ORC reader of this rank (files are split over ``WORLD_SIZE`` ranks)."""
    worker_idx = int(os.environ.get("RANK", "0"))
    worker_num = int(os.environ.get("WORLD_SIZE", "1"))
    dataset = OrcDataset(
        io_args.batch_size,
        worker_idx=worker_idx,
        worker_num=worker_num,
        read_threads_num=io_args.thread_num,
        prefetch=io_args.prefetch,
        is_compressed=False,
        drop_remainder=io_args.drop_remainder,
        transform_fn=[lambda batch: batch[0]],
        dtype=torch.float32,
        device=device,
        save_interval=1000,
    )
    for path in io_args.data_paths.split(","):
        if path:
            dataset.add_path(path)
    dataset.fixedlen_feature("label", [0.0])
    dataset.fixedlen_feature("dense1", [0.0] * 8)
    dataset.fixedlen_feature("dense2", [0.0])
    for name in ("sparse1", "sparse2", "sparse3", "sparse4"):
        dataset.varlen_feature(name)
    # sparse5 holds strings: read them as bytes (int8 with one more offsets level) and hash
    # them in the feature pipeline (the reader could also hash them, with hash_type="farm")
    dataset.varlen_feature("sparse5", hash_type=None, trans_int8=True)
    return dataset


def _truncate() -> SequenceTruncate:
    # check_length is ignored inside FeatureEngine (rows are up to 1999 ids long)
    return SequenceTruncate(seq_len=SEQ_LEN, truncate=True, truncate_side="right",
                            check_length=True, n_dims=2)


def get_feature_conf() -> list:
    """Per-feature transforms run by ``FeatureEngine``."""
    return [
        Feature("dense1").add_op(SelectField("dense1", dim=8)),
        Feature("dense2").add_op(SelectField("dense2", dim=1)).add_op(Bucketize([0, 0.5, 1])),
        Feature("sparse1").add_op(SelectField("sparse1")),
        Feature("sparse2").add_op(SelectField("sparse2")),
        Feature("sparse3").add_op(SelectField("sparse3")).add_op(Mod(10000)),
        Feature("sparse4").add_op(SelectField("sparse4")).add_op(Mod(10000)).add_op(_truncate()),
        Feature("sparse5").add_op(SelectField("sparse5")).add_op(Hash(hash_type="farm"))
        .add_op(Mod(10000)).add_op(_truncate()),
        Feature("sparse1_x_sparse2")
        .add_op(SelectFields([SelectField("sparse1"), SelectField("sparse2")]))
        .add_op(FeatureCross())
        .add_op(Mod(1000)),
    ]


def get_embedding_conf(device: str = "cpu") -> dict:
    """Embedding options by feature name. The dim-8 options end up in one physical table and
    the dim-16 ones in another (``EmbeddingEngine`` merges options with equal settings)."""
    dev = torch.device(device)

    def option(dim, shared_name, combiner="sum", **kwargs):
        return EmbeddingOption(embedding_dim=dim, shared_name=shared_name, combiner=combiner,
                               initializer=TruncNormalInitializer(mean=0, std=0.01), device=dev,
                               **kwargs)

    return {
        "dense2": option(8, "sparse1"),       # bucket ids share the rows of sparse1
        "sparse1": option(8, "sparse1"),
        "sparse2": option(16, "sparse2"),
        "sparse3": option(8, "sparse3"),
        "sparse4": option(16, "sparse4", "tile", combiner_kwargs={"tile_len": SEQ_LEN}),
        "sparse5": option(16, "sparse5", "tile", combiner_kwargs={"tile_len": SEQ_LEN}),
        "sparse1_x_sparse2": option(16, "sparse1_x_sparse2", "mean"),
    }
