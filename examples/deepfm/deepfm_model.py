"""DeepFM over RecIS dynamic tables: first-order + second-order FM + DNN, BCE loss.

Inputs after ``EmbeddingEngine``: ``cN_emb`` ``[B, 8]``, ``cN_bias`` ``[B, 1]`` (26 each), numeric
``iN`` ``[B, 1]`` (dense, 0 where missing; log1p-scaled here), ``label`` ``[B, 1]``.
``forward`` returns the loss and records the batch AUC with ``add_metric("auc", ...)``.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from recis.features.feature_engine import FeatureEngine
from recis.framework.metrics import add_metric
from recis.metrics.auroc import AUROC
from recis.nn import EmbeddingEngine
from recis.utils.logger import Logger

from dataset import get_embedding_conf, get_feature_conf
from feature_config import CATEGORICAL, EMB_DIM, NUMERIC

logger = Logger(__name__)


def numeric_column(x: torch.Tensor, batch: int) -> torch.Tensor:
    """A passed-through numeric feature as ``[B, 1]`` (``[B, 0]`` when the whole batch is empty)."""
    x = x.reshape(batch, -1)
    if x.shape[1] == 0:
        return x.new_zeros(batch, 1)
    return x[:, :1]


class DeepFM(nn.Module):
    def __init__(self, device: str = "cpu"):
        super().__init__()
        self.feature_engine = FeatureEngine(feature_list=get_feature_conf())
        self.embedding_engine = EmbeddingEngine(get_embedding_conf(device))
        self.numeric_w = nn.Linear(len(NUMERIC), 1)                         # first order
        self.numeric_emb = nn.Parameter(torch.randn(len(NUMERIC), EMB_DIM) * 0.01)   # second order
        n_fields = len(NUMERIC) + len(CATEGORICAL)
        self.dnn = nn.Sequential(nn.Linear(n_fields * EMB_DIM, 64), nn.ReLU(),
                                 nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 1))
        self.loss = nn.BCELoss()
        self.auc = AUROC(num_thresholds=200, dist_sync_on_step=True)

    def predict(self, batch: dict) -> torch.Tensor:
        feats = self.embedding_engine(self.feature_engine(batch))
        b = feats["label"].shape[0]
        numeric = torch.cat([numeric_column(feats[n], b) for n in NUMERIC], 1)
        numeric = torch.log1p(numeric.clamp_min(0))                               # [B, 13]
        emb = torch.stack([feats[c + "_emb"] for c in CATEGORICAL], 1)             # [B, 26, 8]
        num_emb = numeric.unsqueeze(2) * self.numeric_emb.unsqueeze(0)             # [B, 13, 8]
        fields = torch.cat([emb, num_emb], 1)
        first = torch.cat([feats[c + "_bias"] for c in CATEGORICAL], 1).sum(1, keepdim=True) \
            + self.numeric_w(numeric)
        second = 0.5 * (fields.sum(1).pow(2) - fields.pow(2).sum(1)).sum(1, keepdim=True)
        logit = first + second + self.dnn(fields.flatten(1))
        return torch.sigmoid(logit), feats["label"].reshape(b, 1)

    def forward(self, batch: dict) -> torch.Tensor:
        prob, label = self.predict(batch)
        self.auc.update(prob.detach(), label)
        add_metric("auc", self.auc.compute())
        return self.loss(prob, label)
