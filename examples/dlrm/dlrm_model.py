"""OneFlow's DLRM over recis dynamic tables: bottom MLP, dot interaction, top MLP, BCE loss.

Inputs (``dlrm_data.transform_batch``): ``dense`` float32 ``[B, 13]`` (already log-scaled),
``C1..C26`` RaggedTensor ``[B, 1]`` int64, ``label`` float32 ``[B, 1]``.

* ``dense`` is zero-padded to a multiple of 8 columns (OneFlow's dense input padding;
  ``dense_input_padding=False`` keeps 13) and goes through the bottom MLP (ReLU after every
  layer) to ``[B, D]``, ``D = bottom_mlp[-1] = embedding_vec_size``.
* ``EmbeddingEngine`` gives ``[B, D]`` per field; with the bottom output they form
  ``T`` ``[B, 27, D]``; the interaction is the strictly lower triangle of ``T T^T``
  (``interaction_itself``: with the diagonal) concatenated after the bottom output, zero-padded
  to a multiple of 8 (``interaction_padding``).
* The top MLP (``top_mlp`` then 1, ReLU except after the last layer) gives the logit ``[B]``.
* Dense init as OneFlow's: weights ``N(0, sqrt(2 / (fan_in + fan_out)))``, biases
  ``N(0, sqrt(1 / fan_out))``.

``forward`` returns the mean BCE-with-logits loss and leaves ``last_prob``/``last_label``
(``[B]``) for evaluation and ``last_compute_dtype`` (the top MLP's dtype: bfloat16 under
``amp``).
"""
from __future__ import annotations

from typing import List, Sequence

import torch
import torch.nn as nn

from recis.features.feature_engine import FeatureEngine
from recis.nn import EmbeddingEngine

from dlrm_data import DENSE, SPARSE, get_embedding_conf, get_feature_conf


def make_mlp(in_features: int, units: Sequence[int], relu_last: bool) -> nn.Sequential:
    layers: List[nn.Module] = []
    dims = [in_features] + list(units)
    for i in range(len(units)):
        layers.append(nn.Linear(dims[i], dims[i + 1]))
        if relu_last or i + 1 < len(units):
            layers.append(nn.ReLU())
    seq = nn.Sequential(*layers)
    with torch.no_grad():
        for m in seq:
            if isinstance(m, nn.Linear):
                m.weight.normal_(0.0, (2.0 / (m.in_features + m.out_features)) ** 0.5)
                m.bias.normal_(0.0, (1.0 / m.out_features) ** 0.5)
    return seq


def round8(n: int) -> int:
    return (n + 7) // 8 * 8


class DotInteraction(nn.Module):
    """``[B, D]`` bottom output and the embeddings (``[B, F, D]``, or a list of F ``[B, D]``)
    -> ``[B, output_size]``. A list is stacked together with the bottom output in one copy (what
    the model passes: stacking the fields first and then prepending the bottom output copied the
    ``[B, F, D]`` block twice)."""

    def __init__(self, dim: int, num_fields: int, itself: bool = False, padding: bool = True):
        super().__init__()
        n = num_fields + 1
        li, lj = torch.tril_indices(n, n, offset=0 if itself else -1)
        self.register_buffer("li", li, persistent=False)
        self.register_buffer("lj", lj, persistent=False)
        raw = dim + li.numel()
        self.output_size = round8(raw) if padding else raw
        self.pad = self.output_size - raw

    def forward(self, x: torch.Tensor, emb) -> torch.Tensor:
        if isinstance(emb, torch.Tensor):
            t = torch.cat([x.unsqueeze(1), emb], 1)                  # [B, F + 1, D]
        else:
            t = torch.stack([x] + list(emb), 1)                      # [B, F + 1, D]
        z = torch.bmm(t, t.transpose(1, 2))                          # [B, F + 1, F + 1]
        out = torch.cat([x, z[:, self.li, self.lj]], 1)
        if self.pad:
            out = nn.functional.pad(out, (0, self.pad))
        return out


class DLRM(nn.Module):
    def __init__(self, embedding_vec_size: int = 128, bottom_mlp: Sequence[int] = (512, 256, 128),
                 top_mlp: Sequence[int] = (1024, 1024, 512, 256), table_size_array: Sequence[int] = (),
                 interaction_itself: bool = False, interaction_padding: bool = True,
                 dense_input_padding: bool = True, device: str = "cpu", amp: bool = False):
        super().__init__()
        if int(bottom_mlp[-1]) != int(embedding_vec_size):
            raise ValueError(f"--bottom_mlp must end with --embedding_vec_size ({embedding_vec_size}), "
                             f"got {list(bottom_mlp)}")
        self.device_type = "cuda" if str(device).startswith("cuda") else "cpu"
        self.amp = bool(amp)
        self.num_dense = round8(len(DENSE)) if dense_input_padding else len(DENSE)
        self.feature_engine = FeatureEngine(feature_list=get_feature_conf())
        self.embedding_engine = EmbeddingEngine(get_embedding_conf(embedding_vec_size, table_size_array, device))
        self.bottom_mlp = make_mlp(self.num_dense, bottom_mlp, relu_last=True)
        self.interaction = DotInteraction(int(embedding_vec_size), len(SPARSE), interaction_itself,
                                          interaction_padding)
        self.top_mlp = make_mlp(self.interaction.output_size, list(top_mlp) + [1], relu_last=False)
        self.loss_fn = nn.BCEWithLogitsLoss()
        self.last_prob = self.last_label = None
        self.last_compute_dtype = None

    def logits(self, batch: dict) -> torch.Tensor:
        """``[B]`` float32 logits of a batch (``transform_batch`` output)."""
        with torch.autocast(self.device_type, dtype=torch.bfloat16, enabled=self.amp):
            feats = self.embedding_engine(self.feature_engine(batch))
            dense = feats["dense"]
            if self.num_dense > dense.shape[1]:
                dense = nn.functional.pad(dense, (0, self.num_dense - dense.shape[1]))
            x = self.bottom_mlp(dense)
            emb = [feats[c].to(x.dtype) for c in SPARSE]                   # 26 x [B, D]
            out = self.top_mlp(self.interaction(x, emb))
        self.last_compute_dtype = out.dtype
        return out.float().reshape(-1)

    def forward(self, batch: dict) -> torch.Tensor:
        logit = self.logits(batch)
        label = batch["label"].reshape(-1).to(torch.float32)
        self.last_prob, self.last_label = torch.sigmoid(logit.detach()), label
        return self.loss_fn(logit, label)
