"""seq2seq model: behaviour sequences -> embeddings -> causal transformer -> next-step loss.

Sparse part: ``FeatureEngine`` (truncate every feature to ``seq_len`` steps) and
``EmbeddingEngine`` (``[B, seq_len, emb_size / 4]`` per feature, one shared physical table).
Dense part (under bfloat16 autocast): the 4 embeddings concatenated to ``[B, seq_len, emb_size]``,
projected to ``hidden_size``, run through the transformer. Loss: in-batch contrastive
cross-entropy between the normalised prediction at step t+1 and the normalised projected
input at step t (every other (sample, step) pair of the batch is a negative).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from dataset import get_embedding_conf, get_feature_conf
from feature_config import FEATURE_CONFIG
from transformer import ModelConfig, Transformer

from recis.features.feature_engine import FeatureEngine
from recis.framework.metrics import add_metric
from recis.nn import EmbeddingEngine
from recis.utils.logger import Logger

logger = Logger(__name__)

__all__ = ["ModelConfig", "SparseModel", "Decoder", "Seq2SeqModel"]


class SparseModel(nn.Module):
    def __init__(self, config: ModelConfig, device: str = "cpu"):
        super().__init__()
        if config.emb_size % len(FEATURE_CONFIG):
            raise ValueError(f"emb_size {config.emb_size} must be a multiple of {len(FEATURE_CONFIG)}")
        self.feature_engine = FeatureEngine(feature_list=get_feature_conf(config.seq_len))
        self.embedding_engine = EmbeddingEngine(
            get_embedding_conf(config.emb_size // len(FEATURE_CONFIG), device))

    def forward(self, samples: dict) -> dict:
        return self.embedding_engine(self.feature_engine(samples))


class Decoder(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.proj = nn.Linear(config.emb_size, config.hidden_size)
        self.trans = Transformer(config)
        self.loss_fn = nn.CrossEntropyLoss()

    def cal_loss(self, preds: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """preds, items: ``[B, T, H]``. Row i of the score matrix should peak at column i."""
        hidden = preds.shape[-1]
        query = F.normalize(preds[:, 1:].reshape(-1, hidden), dim=-1, eps=1e-6)
        target = F.normalize(items[:, :-1].reshape(-1, hidden), dim=-1, eps=1e-6)
        scores = query @ target.t()
        labels = torch.arange(scores.shape[0], device=scores.device)
        loss = self.loss_fn(scores, labels)
        with torch.no_grad():
            hit_rate = (scores.argmax(dim=1) == labels).float().mean()
        add_metric("hit_rate", hit_rate)
        add_metric("loss", loss)
        return loss

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        items = self.proj(x)
        preds = self.trans(items)
        return self.cal_loss(preds, items) if self.training else preds


class Seq2SeqModel(nn.Module):
    """forward(batch dict) -> the loss in training mode, the predictions ``[B, T, H]`` in eval."""

    def __init__(self, config: ModelConfig, device: str = "cpu"):
        super().__init__()
        self.config = config
        self.dense = Decoder(config)
        self.sparse = SparseModel(config, device)

    @staticmethod
    def build_embedding(samples: dict) -> torch.Tensor:
        return torch.cat([samples[item["name"]] for item in FEATURE_CONFIG], dim=-1)

    def forward(self, samples: dict):
        emb = self.build_embedding(self.sparse(samples))
        with torch.amp.autocast(device_type=emb.device.type, dtype=torch.bfloat16):
            return self.dense(emb)
