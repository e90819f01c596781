"""``recis-compat bench tile``: the tile combiner fwd+bwd vs TorchRec EmbeddingCollection + FBGEMM.

Design target (docs/benchmarks.md): tile combiner fwd+bwd >= 1.0x a TorchRec EmbeddingCollection
(unpooled lookup) followed by ``torch.ops.fbgemm.jagged_to_padded_dense`` to ``[B, T, D]``.

Workload: ``batch`` (512) sequences with lengths uniform in ``[1, seq_len]`` (1000), ids drawn
from a Zipf(``zipf``) distribution over ``vocab`` (1M) pre-mapped rows, dim 16, for each tile
length T in ``tile_lens`` (50 and 1000). Both sides read the same table: the EmbeddingCollection's
weight ``W [vocab, D]``; outputs are checked equal before timing. Backward gets a fixed random
``[B, T, D]`` output gradient.

Cases per T (ms per step, lower is better, ``higher_is_better: false``; ``ratio`` = baseline/ours,
so ``>= 1`` meets the target; ``detail.time_ratio`` = ours/baseline):

* ``tile T=.. combiner`` -- exactly the design row. Ours: ``recis_compat.ops.tile.tile`` on the
  unique rows' embeddings ``[U, D]`` (a leaf, gathered before timing, as EmbeddingEngine's lookup
  hands them over) with the int64 reverse index ``[N]`` over all N ids and int64 offsets, then
  its backward (csrc ``tile_backward``) -> ``.grad [U, D]``: one row per distinct id.
  Baseline: truncate each sequence to T (``fbgemm.jagged_1d_to_truncated_values`` + clamped
  lengths -> KeyedJaggedTensor; skipped when T >= seq_len) -> torchrec ``EmbeddingCollection``
  (unsharded; ``nn.Embedding`` with ``sparse=True`` flipped on, as the default dense gradient
  would zero-fill all ``vocab`` rows per step) -> ``jagged_to_padded_dense(values, [offsets],
  [T])``, then backward -> an uncoalesced sparse COO ``.grad`` (TorchRec's natural output; the
  fused TBE path would be slower on CPU, torchrec-cpu-facts §2: nobag backward 30-80x pooled).
* ``tile T=.. incl. dedupe+gather`` -- the whole path after the id->row mapping, with matching
  gradient collection on both sides. Ours adds the dedupe EmbeddingEngine does
  (``unique_first_seen``: a scratch csrc id map) over all N ids and the gather
  ``W.index_select(0, unique)``; the baseline adds ``.grad.coalesce()``
  (the row-deduplicated gradient ours produces).

Timing: steps interleaved across the sides (shared machine load), median over ``repeat * 4``
single steps after two warm-up steps; each step uses a fresh batch.
"""
from __future__ import annotations

from typing import Dict, List

import click
import torch

from recis_compat.benchmarks import common
from recis_compat.benchmarks.common import BenchOptions, Case
from recis_compat.benchmarks.lookup_bench import (STEPS_PER_REPEAT, WARMUP_STEPS, ZipfSampler,
                                                  interleaved_steps, offsets_of)

DESCRIPTION = ("tile combiner fwd+bwd (csrc tile op) vs torchrec EmbeddingCollection + "
               "fbgemm jagged_to_padded_dense")
DEFAULTS: Dict[str, object] = {"batch": 512, "seq_len": 1000, "tile_lens": "50,1000", "dim": 16,
                               "vocab": 1_000_000, "zipf": 1.05}
_QUICK = {"batch": 64, "seq_len": 200, "tile_lens": "20,200", "vocab": 50_000}
TARGET_RATIO = 1.0


def _cfg(opts: BenchOptions) -> Dict[str, object]:
    cfg = dict(DEFAULTS)
    cfg.update({k: v for k, v in opts.extra.items() if v is not None and k in DEFAULTS})
    if opts.quick:
        cfg.update(_QUICK)
    return cfg


def _ec(vocab: int, dim: int):
    from torchrec import EmbeddingCollection
    from torchrec.modules.embedding_configs import EmbeddingConfig
    ec = EmbeddingCollection([EmbeddingConfig(name="t", embedding_dim=dim, num_embeddings=vocab,
                                              feature_names=["seq"])], device=torch.device("cpu"))
    for emb in ec.embeddings.values():
        emb.sparse = True
    return ec


def run(opts: BenchOptions) -> List[Case]:
    from torchrec import KeyedJaggedTensor

    from recis_compat.ops.id_map import unique_first_seen
    from recis_compat.ops.tile import tile

    cfg = _cfg(opts)
    n_steps = 1 if opts.quick else max(1, opts.repeat) * STEPS_PER_REPEAT
    batch, seq_len, dim, vocab = int(cfg["batch"]), int(cfg["seq_len"]), int(cfg["dim"]), int(cfg["vocab"])
    tile_lens = [int(x) for x in str(cfg["tile_lens"]).split(",") if x.strip()]
    sampler = ZipfSampler(vocab, float(cfg["zipf"]), seed=11)
    gl = torch.Generator().manual_seed(13)
    ec = _ec(vocab, dim)
    weight = ec.embeddings["t"].weight
    table = weight.detach()

    batches = []
    for _ in range(WARMUP_STEPS + n_steps):
        lengths = torch.randint(1, seq_len + 1, (batch,), generator=gl)
        rows = sampler.draw(int(lengths.sum()))
        offsets = offsets_of(lengths)
        uniq, inverse = torch.unique(rows, return_inverse=True)
        batches.append({"rows": rows, "lengths": lengths, "offsets": offsets, "uniq": uniq, "inverse": inverse,
                        "emb": table.index_select(0, uniq).requires_grad_()})
    ids_per_step = sum(b["rows"].numel() for b in batches) / len(batches)
    uniq_per_step = sum(b["uniq"].numel() for b in batches) / len(batches)

    cases: List[Case] = []
    for T in tile_lens:
        g = torch.Generator().manual_seed(T)
        out_grad = torch.randn(batch, T, dim, generator=g)
        truncate = T < seq_len

        def base_kjt(b):
            if truncate:
                vals = torch.ops.fbgemm.jagged_1d_to_truncated_values(b["rows"], b["lengths"], T)
                return KeyedJaggedTensor.from_lengths_sync(keys=["seq"], values=vals, lengths=b["lengths"].clamp(max=T))
            return KeyedJaggedTensor.from_lengths_sync(keys=["seq"], values=b["rows"], lengths=b["lengths"])

        def base_forward(b):
            jt = ec(base_kjt(b))["seq"]
            return torch.ops.fbgemm.jagged_to_padded_dense(jt.values(), [jt.offsets()], [T], 0.0)

        # correctness guard: both sides give the same [B, T, D]
        with torch.no_grad():
            b0 = batches[0]
            ours_out = tile(b0["emb"], b0["inverse"], b0["offsets"], T)
            assert torch.equal(ours_out, base_forward(b0)), f"tile T={T} differs from EC + jagged_to_padded_dense"

        def ours_combiner(k):
            b = batches[k]
            tile(b["emb"], b["inverse"], b["offsets"], T).backward(out_grad)
            b["emb"].grad = None

        def ours_full(k):
            b = batches[k]
            uniq, inverse = unique_first_seen(b["rows"])
            emb = table.index_select(0, uniq).requires_grad_()
            tile(emb, inverse, b["offsets"], T).backward(out_grad)

        def base_plain(k):
            base_forward(batches[k]).backward(out_grad)
            weight.grad = None

        def base_coalesced(k):
            base_forward(batches[k]).backward(out_grad)
            weight.grad.coalesce()
            weight.grad = None

        t = interleaved_steps({"ours": ours_combiner, "base": base_plain, "ours_full": ours_full,
                               "base_full": base_coalesced}, n_steps)
        used = sum(int(b["lengths"].clamp(max=T).sum()) for b in batches) / len(batches)
        detail = {"batch": batch, "seq_len_max": seq_len, "tile_len": T, "dim": dim, "vocab": vocab,
                  "zipf_s": cfg["zipf"], "ids_per_step": round(ids_per_step),
                  "unique_ids_per_step": round(uniq_per_step),
                  "ids_within_tile_len": round(used), "baseline_truncates_first": truncate,
                  "timed_steps": n_steps, "threads": torch.get_num_threads(), "target_ratio_min": TARGET_RATIO}
        for name, ours_key, base_key, base_label, extra in [
            (f"tile T={T} combiner", "ours", "base",
             "torchrec EmbeddingCollection (sparse grad) + fbgemm jagged_to_padded_dense",
             {"ours_does": "tile fwd+bwd on the unique rows [U, D] (gathered untimed) -> grad [U, D]",
              "baseline_does": ("truncate to T + " if truncate else "") + "EC lookup + jagged_to_padded_dense "
                               "fwd+bwd -> uncoalesced sparse grad"}),
            (f"tile T={T} incl. dedupe+gather", "ours_full", "base_full",
             "torchrec EmbeddingCollection (sparse grad, coalesced) + fbgemm jagged_to_padded_dense",
             {"ours_does": "unique_first_seen + gather [U, D] + tile fwd+bwd -> grad [U, D]",
              "baseline_does": ("truncate to T + " if truncate else "") + "EC lookup + jagged_to_padded_dense "
                               "fwd+bwd + grad.coalesce()"}),
        ]:
            ours_ms, base_ms = t[ours_key] * 1e3, t[base_key] * 1e3
            cases.append(Case(name, "ms/step", round(ours_ms, 4), base_label, round(base_ms, 4),
                              higher_is_better=False,
                              detail={**detail, **extra, "time_ratio": round(ours_ms / base_ms, 4)}))
    return cases


command = common.make_command(
    "tile", run, help=DESCRIPTION,
    extra_options=[
        click.option("--batch", type=int, default=DEFAULTS["batch"], show_default=True, help="Sequences per batch."),
        click.option("--seq-len", "seq_len", type=int, default=DEFAULTS["seq_len"], show_default=True,
                     help="Longest sequence (lengths uniform in [1, seq_len])."),
        click.option("--tile-lens", "tile_lens", type=str, default=DEFAULTS["tile_lens"], show_default=True,
                     help="Comma-separated tile lengths T."),
        click.option("--dim", type=int, default=DEFAULTS["dim"], show_default=True, help="Embedding dim."),
        click.option("--vocab", type=int, default=DEFAULTS["vocab"], show_default=True, help="Table rows."),
        click.option("--zipf", type=float, default=DEFAULTS["zipf"], show_default=True,
                     help="Zipf exponent of the id distribution."),
    ])
