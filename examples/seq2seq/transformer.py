"""A causal (decoder-only) pre-norm transformer stack and the model configuration."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class ModelConfig:
    """Model sizes (RecIS's defaults; run.sh passes a small model for the CPU)."""

    seq_len: int = 1024             # behaviour steps per sample
    hidden_size: int = 1024
    num_layers: int = 8
    nhead: int = 8
    dim_feedforward: int = 1024
    dropout: float = 0.1
    emb_size: int = 512             # concatenated width of the 4 feature embeddings


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.hidden_size % cfg.nhead:
            raise ValueError(f"hidden_size {cfg.hidden_size} is not a multiple of nhead {cfg.nhead}")
        self.nhead = cfg.nhead
        self.qkv = nn.Linear(cfg.hidden_size, 3 * cfg.hidden_size)
        self.out = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.p_drop = cfg.dropout
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, h = x.shape
        # [B, T, 3H] -> 3 x [B, heads, T, H/heads]
        q, k, v = self.qkv(x).view(b, t, 3, self.nhead, h // self.nhead).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                           dropout_p=self.p_drop if self.training else 0.0)
        return self.drop(self.out(y.transpose(1, 2).reshape(b, t, h)))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.ln_attn = nn.LayerNorm(cfg.hidden_size)
        self.attn = CausalSelfAttention(cfg)
        self.ln_mlp = nn.LayerNorm(cfg.hidden_size)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.hidden_size, cfg.dim_feedforward),
            nn.GELU(),
            nn.Linear(cfg.dim_feedforward, cfg.hidden_size),
            nn.Dropout(cfg.dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_attn(x))
        return x + self.mlp(self.ln_mlp(x))


class Transformer(nn.Module):
    """``[B, T, hidden] -> [B, T, hidden]``; position t attends to positions <= t."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        self.ln_out = nn.LayerNorm(cfg.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.ln_out(x)
