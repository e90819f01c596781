"""OneFlow's DeepFM over recis dynamic tables: first order + FM second order + DNN, BCE loss.

Inputs after ``EmbeddingEngine``: ``<f>_emb`` ``[B, E]`` and ``<f>_lr`` ``[B, 1]`` for the 39
fields (deepfm_criteo_data.py), ``label`` ``[B, 1]``. The logit is
``sum_f lr_f + 0.5 * sum_k((sum_f e_fk) ** 2 - sum_f e_fk ** 2) + DNN(flatten(e))``; the DNN
has ``dnn`` hidden layers (ReLU, then dropout ``net_dropout``) and a final linear layer to 1,
weights Xavier-normal and biases 0 as OneFlow's. ``forward`` returns the mean
BCE-with-logits loss and leaves ``last_prob``/``last_label`` ``[B]`` and ``last_compute_dtype``.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from recis.features.feature_engine import FeatureEngine
from recis.nn import EmbeddingEngine

from deepfm_criteo_data import FIELDS, get_embedding_conf, get_feature_conf


def make_dnn(in_features: int, hidden: Sequence[int], dropout: float) -> nn.Sequential:
    layers = []
    dims = [in_features] + list(hidden)
    for i in range(len(hidden)):
        layers += [nn.Linear(dims[i], dims[i + 1]), nn.ReLU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(dims[-1], 1))
    seq = nn.Sequential(*layers)
    with torch.no_grad():
        for m in seq:
            if isinstance(m, nn.Linear):
                nn.init.xavier_normal_(m.weight)
                m.bias.zero_()
    return seq


class DeepFM(nn.Module):
    def __init__(self, embedding_vec_size: int = 16, dnn: Sequence[int] = (1000,) * 5, net_dropout: float = 0.2,
                 device: str = "cpu", amp: bool = False):
        super().__init__()
        if not 0.0 <= float(net_dropout) < 1.0:
            raise ValueError(f"--net_dropout must be in [0, 1), got {net_dropout}")
        self.dim = int(embedding_vec_size)
        self.device_type = "cuda" if str(device).startswith("cuda") else "cpu"
        self.amp = bool(amp)
        self.feature_engine = FeatureEngine(feature_list=get_feature_conf())
        self.embedding_engine = EmbeddingEngine(get_embedding_conf(self.dim, device))
        self.dnn = make_dnn(self.dim * len(FIELDS), dnn, float(net_dropout))
        self.loss_fn = nn.BCEWithLogitsLoss()
        self.last_prob = self.last_label = None
        self.last_compute_dtype = None

    def logits(self, batch: dict) -> torch.Tensor:
        """``[B]`` float32 logits."""
        with torch.autocast(self.device_type, dtype=torch.bfloat16, enabled=self.amp):
            feats = self.embedding_engine(self.feature_engine(batch))
            emb = torch.stack([feats[f + "_emb"] for f in FIELDS], 1)                # [B, 39, E]
            first = torch.cat([feats[f + "_lr"] for f in FIELDS], 1).sum(1)          # [B]
            second = 0.5 * (emb.sum(1).pow(2) - emb.pow(2).sum(1)).sum(1)            # [B]
            deep = self.dnn(emb.flatten(1))                                          # [B, 1]
        self.last_compute_dtype = deep.dtype
        return (first.float() + second.float() + deep.float().reshape(-1))

    def forward(self, batch: dict) -> torch.Tensor:
        logit = self.logits(batch)
        label = batch["label"].reshape(-1).to(torch.float32)
        self.last_prob, self.last_label = torch.sigmoid(logit.detach()), label
        return self.loss_fn(logit, label)
