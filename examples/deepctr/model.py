"""deepctr model: FeatureEngine + EmbeddingEngine (sparse part) and an MLP (dense part).

Shapes for a batch of B rows: dense1 [B,8]; dense2 -> bucket ids -> [B,8]; sparse1 [B,8];
sparse2 [B,16]; sparse3 [B,8]; sparse4 and sparse5 -> tile [B,1000,16] -> [B,16000];
sparse1_x_sparse2 [B,16]. Concatenated: [B, 32064].
"""
from __future__ import annotations

import torch
import torch.nn as nn
from dataset import SEQ_LEN, get_embedding_conf, get_feature_conf

from recis.features.feature_engine import FeatureEngine
from recis.framework.metrics import add_metric
from recis.metrics.auroc import AUROC
from recis.nn import EmbeddingEngine
from recis.utils.logger import Logger

logger = Logger(__name__)

DENSE_INPUTS = ["dense1", "dense2", "sparse1", "sparse2", "sparse3", "sparse4", "sparse5",
                "sparse1_x_sparse2"]
INPUT_WIDTH = 8 + 8 + 8 + 16 + 8 + SEQ_LEN * 16 + SEQ_LEN * 16 + 16     # 32064


class SparseModel(nn.Module):
    """Raw batch dict -> (dict of dense feature tensors, labels [B,1])."""

    def __init__(self, device: str = "cpu"):
        super().__init__()
        self.feature_engine = FeatureEngine(feature_list=get_feature_conf())
        self.embedding_engine = EmbeddingEngine(get_embedding_conf(device))

    def forward(self, samples: dict):
        samples = self.feature_engine(samples)
        samples = self.embedding_engine(samples)
        labels = samples.pop("label")
        return samples, labels


class DenseModel(nn.Module):
    """MLP 32064 -> 128 -> 64 -> 32 -> 1, sigmoid."""

    def __init__(self, width: int = INPUT_WIDTH):
        super().__init__()
        dims = [width, 128, 64, 32]
        layers = []
        for d_in, d_out in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(d_in, d_out), nn.ReLU()]
        layers.append(nn.Linear(dims[-1], 1))
        self.dnn = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.dnn(x))


class DeepCTR(nn.Module):
    """forward(batch dict) -> BCE loss; records the running AUC as metric ``auc``."""

    def __init__(self, device: str = "cpu"):
        super().__init__()
        self.sparse_arch = SparseModel(device)
        self.dense_arch = DenseModel()
        self.auc_metric = AUROC(num_thresholds=200, dist_sync_on_step=True)
        self.loss = nn.BCELoss()

    @staticmethod
    def dense_input(samples: dict) -> torch.Tensor:
        """The embedded features flattened per row and concatenated: [B, 32064]."""
        return torch.cat([samples[name].reshape(samples[name].shape[0], -1)
                          for name in DENSE_INPUTS], dim=-1)

    def forward(self, samples: dict) -> torch.Tensor:
        samples, labels = self.sparse_arch(samples)
        probs = self.dense_arch(self.dense_input(samples))
        loss = self.loss(probs, labels)
        self.auc_metric.update(probs, labels)
        add_metric("auc", self.auc_metric.compute())
        return loss
