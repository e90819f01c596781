"""``recis-compat bench lookup``: EmbeddingEngine forward+backward vs a raw TorchRec/FBGEMM lookup.

Design target (design.md §6): EmbeddingEngine fwd+bwd <= 1.3x the time of a raw TorchRec/FBGEMM
lookup on pre-mapped rows, measured in the same run.

Workloads (ids drawn from a Zipf(``zipf``) distribution over ``vocab`` ids per feature, the same
batches on every side):

* ``one-id``: ``features`` (26) one-id features, dense ``[B, 1]`` int64, ``batch`` 4096, dim 16,
  combiner sum. All features share one physical table of the EmbeddingEngine (one child per
  feature), i.e. one dedupe + one id-map call + one gather + one ``embedding_bag`` per step.
* ``sequence``: one sequence feature, a 2-D RaggedTensor of ``seq_batch`` (512) rows with
  lengths uniform in ``[1, seq_len]`` (1000), combiner sum.

What each side does per timed step (the inputs are built before timing):

* **ours**: ``EmbeddingEngine(inputs)`` in training mode on raw int64 ids (the id -> row mapping
  is the point: child encoding, ``torch.unique``, IdMap find-or-insert of unseen ids, row gather,
  ``embedding_bag`` over the unique rows), then ``torch.autograd.backward`` of the outputs with
  fixed random output gradients; the table's backward hands ``(rows, grad [U, dim])`` to the
  table's gradient buffer (the sparse-gradient "collection"), which is emptied with
  ``clear_grad()`` on every table from ``filter_out_sparse_param(engine)`` after each step. No
  optimizer update.
* **torchrec FusedEmbeddingBagCollection** (baseline 1, what TorchRec runs for sharded/fused
  tables on CPU): one FBGEMM ``SplitTableBatchedEmbeddingBagsCodegen`` (TBE, CPU kernels) over
  ``features`` tables of ``vocab`` rows, SUM pooling, fed a KeyedJaggedTensor of the pre-mapped
  rows; backward runs FBGEMM's fused EXACT_SGD (lr 0.01): the gradient is never materialised and
  the rows are updated in place. So this side does *more* than ours (an update, no collection).
* **torchrec EmbeddingBagCollection, sparse grads** (baseline 2, plain autograd): the unsharded
  EBC (one ``nn.EmbeddingBag`` per table) with ``sparse=True`` flipped on every bag (the default
  dense gradient would zero-fill ``features x vocab`` rows per step; torchrec-cpu-facts §1.2);
  backward produces sparse COO gradients in ``.grad``, which are then ``coalesce()``-d (its
  collection: the row-deduplicated gradient that ours hands its table, and the first thing any
  sparse optimizer does) and reset to ``None``. No optimizer update.

Pre-mapped rows: a feature's row is the id's frequency rank (a count-ordered vocabulary, the
best case for the baseline's cache locality); our raw id is ``rank * 2654435761 + salt[feature]``.

Warm-up: before timing, ``warm_draws`` (4M) ids per feature from the same distribution are
inserted into the engine's table (``find_or_insert_rows`` on the child-encoded ids), so the timed
steps mostly find existing ids (at the defaults about 94% of the ids and 88% of the distinct ids
of a one-id step, 96% / 84% of a sequence step are already stored);
``detail.new_ids_per_step`` / ``new_frac_of_ids`` / ``new_frac_of_unique`` report how many were
inserted during the timed steps. Every timed step uses a batch no side has seen before.

Timing: steps are interleaved (ours, baselines, in alternating order) so all sides see the same
machine load; each side's value is the median over ``repeat * 4`` single-step times after two
warm-up steps. Metric: ms per step (lower is better, ``higher_is_better: false``; ``ratio`` is
baseline/ours, so ``ratio >= 1/1.3 = 0.77`` meets the target; ``detail.time_ratio`` is ours/baseline).
``--quick``: 8 features, batch 512, vocab 50k, sequences of <= 200 ids, one timed step.

Memory: the baselines hold ``2 x features x vocab x dim`` floats (3.3 GB at the defaults), ours
about 11M rows after the warm-up.
"""
from __future__ import annotations

import gc
import statistics
import time
from typing import Callable, Dict, List, Sequence

import click
import torch

from recis_compat.benchmarks import common
from recis_compat.benchmarks.common import BenchOptions, Case

DESCRIPTION = ("EmbeddingEngine fwd+bwd (incl. id->row mapping) vs torchrec FusedEmbeddingBagCollection "
               "(FBGEMM TBE) and EmbeddingBagCollection on pre-mapped rows")
DEFAULTS: Dict[str, object] = {"batch": 4096, "features": 26, "dim": 16, "vocab": 1_000_000, "zipf": 1.05,
                               "warm_draws": 4_000_000, "seq_batch": 512, "seq_len": 1000}
_QUICK = {"batch": 512, "features": 8, "vocab": 50_000, "warm_draws": 50_000, "seq_batch": 32,
          "seq_len": 200}
STEPS_PER_REPEAT = 4
WARMUP_STEPS = 2
TARGET_TIME_RATIO = 1.3
ID_MULT = 2654435761


# ----------------------------------------------------------------------------- shared helpers
class ZipfSampler:
    """Ranks ``0..vocab-1`` with P(rank r) proportional to ``1 / (r + 1) ** s``."""

    def __init__(self, vocab: int, s: float, seed: int = 0):
        p = 1.0 / torch.arange(1, vocab + 1, dtype=torch.float64) ** float(s)
        cdf = torch.cumsum(p, 0)
        self.cdf = cdf / cdf[-1]
        self.vocab = int(vocab)
        self.g = torch.Generator().manual_seed(seed)

    def draw(self, n: int) -> torch.Tensor:
        u = torch.rand(int(n), generator=self.g, dtype=torch.float64)
        return torch.searchsorted(self.cdf, u).clamp_(max=self.vocab - 1)


def offsets_of(lengths: torch.Tensor) -> torch.Tensor:
    off = torch.zeros(lengths.numel() + 1, dtype=torch.int64)
    off[1:] = torch.cumsum(lengths, 0)
    return off


def interleaved_steps(sides: Dict[str, Callable[[int], None]], n_steps: int, warmup: int = WARMUP_STEPS,
                      before: Dict[str, Callable[[int], None]] = None,
                      after: Dict[str, Callable[[int], None]] = None) -> Dict[str, float]:
    """Median seconds per step of every side. Step ``k`` of every side uses batch ``k``; the
    sides run in alternating order so they share the machine's load. ``before``/``after`` hooks
    run untimed around a side's step."""
    names = list(sides)
    before, after = before or {}, after or {}
    samples: Dict[str, List[float]] = {n: [] for n in names}
    for k in range(warmup + n_steps):
        for name in (names if k % 2 == 0 else names[::-1]):
            if name in before:
                before[name](k)
            t0 = time.perf_counter()
            sides[name](k)
            dt = time.perf_counter() - t0
            if name in after:
                after[name](k)
            if k >= warmup:
                samples[name].append(dt)
    return {n: statistics.median(v) for n, v in samples.items()}


def _cfg(opts: BenchOptions) -> Dict[str, object]:
    cfg = dict(DEFAULTS)
    cfg.update({k: v for k, v in opts.extra.items() if v is not None and k in DEFAULTS})
    if opts.quick:
        cfg.update(_QUICK)
    return cfg


def _engine(names: Sequence[str], dim: int):
    from recis_compat.nn.modules.embedding import EmbeddingOption
    from recis_compat.nn.modules.embedding_engine import EmbeddingEngine
    from recis_compat.nn.modules.hashtable import filter_out_sparse_param
    from recis_compat.nn.initializers import UniformInitializer
    eng = EmbeddingEngine({n: EmbeddingOption(embedding_dim=dim, shared_name=n, combiner="sum",
                                              initializer=UniformInitializer(-0.01, 0.01)) for n in names})
    eng.train()
    return eng, list(filter_out_sparse_param(eng).values())


def _baselines(names: Sequence[str], vocab: int, dim: int):
    """``(FusedEmbeddingBagCollection, EmbeddingBagCollection with sparse bags)``, one table per
    feature of ``vocab`` rows, SUM pooling."""
    from torchrec import EmbeddingBagCollection, EmbeddingBagConfig
    from torchrec.modules.fused_embedding_modules import FusedEmbeddingBagCollection

    def configs():
        return [EmbeddingBagConfig(name=f"t_{n}", embedding_dim=dim, num_embeddings=vocab, feature_names=[n])
                for n in names]
    fused = FusedEmbeddingBagCollection(configs(), optimizer_type=torch.optim.SGD, optimizer_kwargs={"lr": 0.01},
                                        device=torch.device("cpu"))
    ebc = EmbeddingBagCollection(configs(), device=torch.device("cpu"))
    for bag in ebc.embedding_bags.values():
        bag.sparse = True
    return fused, ebc


def _fused_kernel_name(fused) -> str:
    """Class and optimizer of the FBGEMM module(s) behind a Fused*Collection (for the report)."""
    names = set()
    for lookup in getattr(fused, "_emb_modules", []):
        tbe = getattr(lookup, "_emb_module", None)
        if tbe is not None:
            opt = getattr(tbe, "optimizer", None)
            names.add(f"{type(tbe).__name__}({getattr(opt, 'name', opt)}, "
                      f"{len(getattr(tbe, 'embedding_specs', []))} tables)")
    return ", ".join(sorted(names)) or "unknown"


def _check_against_table(eng, impls, names, inp, n_rows, dim) -> None:
    """Correctness guard: each output equals a plain gather-sum over our own table's rows."""
    from recis_compat.backend.children import encode_ids
    from recis_compat.nn.modules.embedding import deal_with_tensor
    assert len(impls) == 1, "expected one physical table"
    impl = impls[0]
    with torch.no_grad():
        out = eng(inp)
        for child, n in enumerate(names):
            vals, off, _, _ = deal_with_tensor(inp[n])
            rows = impl.find_rows(encode_ids(vals, child))
            assert bool((rows >= 0).all()), "a looked-up id was not inserted"
            ref = torch.nn.functional.embedding_bag(rows, impl.embedding, off, mode="sum", include_last_offset=True)
            assert tuple(out[n].shape) == (n_rows, dim) and torch.allclose(out[n], ref, atol=1e-6), \
                f"EmbeddingEngine output of {n!r} differs from a gather-sum over its table"


# ----------------------------------------------------------------------------- one workload
def _warm(impls, names: Sequence[str], draw_ids: Callable[[int, int], torch.Tensor], n: int) -> None:
    """Insert ``n`` draws per feature into the engine's table (feature ``i`` is child ``i`` of the
    one physical table: children are numbered in order of first appearance)."""
    from recis_compat.backend.children import encode_ids
    for child in range(len(names)):
        left = n
        while left > 0:
            k = min(left, 1 << 20)
            impls[0].find_or_insert_rows(encode_ids(draw_ids(child, k), child))
            left -= k


def _run_workload(label: str, names: Sequence[str], make_batch: Callable[[], tuple],
                  draw_ids: Callable[[int, int], torch.Tensor], cfg: Dict[str, object], n_steps: int) -> List[Case]:
    """``make_batch() -> (our input dict, KJT of pre-mapped rows, rows per batch, ids, unique ids)``;
    ``draw_ids(feature index, n)``: ``n`` raw ids of that feature for the warm-up."""
    dim, vocab = int(cfg["dim"]), int(cfg["vocab"])
    eng, impls = _engine(names, dim)
    _warm(impls, names, draw_ids, int(cfg["warm_draws"]))
    table_rows_warm = sum(len(i) for i in impls)
    fused, ebc = _baselines(names, vocab, dim)
    ebc_params = list(ebc.parameters())

    batches = [make_batch() for _ in range(WARMUP_STEPS + n_steps)]
    g = torch.Generator().manual_seed(1)
    n_rows = batches[0][2]
    out_grads = [torch.randn(n_rows, dim, generator=g) for _ in names]
    kt_grad = torch.cat(out_grads, 1)

    def ours(k):
        out = eng(batches[k][0])
        torch.autograd.backward([out[n] for n in names], out_grads)
        for impl in impls:
            impl.clear_grad()

    def tbe(k):
        kt = fused(batches[k][1])
        kt.values().backward(kt_grad)

    def ebc_sparse(k):
        kt = ebc(batches[k][1])
        kt.values().backward(kt_grad)
        for p in ebc_params:
            p.grad.coalesce()   # the row-deduplicated gradient, as ours hands its table
            p.grad = None

    _check_against_table(eng, impls, names, batches[0][0], n_rows, dim)

    inserted: List[int] = []
    size_before = {}

    def count_before(k):
        size_before["n"] = sum(len(i) for i in impls)

    def count_after(k):
        if k >= WARMUP_STEPS:
            inserted.append(sum(len(i) for i in impls) - size_before["n"])

    t = interleaved_steps({"ours": ours, "tbe": tbe, "ebc": ebc_sparse}, n_steps,
                          before={"ours": count_before}, after={"ours": count_after})

    ids_per_step = statistics.mean(b[3] for b in batches[WARMUP_STEPS:])
    uniq_per_step = statistics.mean(b[4] for b in batches[WARMUP_STEPS:])
    new_per_step = statistics.mean(inserted) if inserted else 0.0
    detail = {"features": len(names), "rows_per_step": n_rows, "ids_per_step": round(ids_per_step),
              "unique_ids_per_step": round(uniq_per_step), "dim": dim, "vocab_per_feature": vocab,
              "zipf_s": cfg["zipf"], "table_ids_after_warmup": table_rows_warm,
              "new_ids_per_step": round(new_per_step, 1),
              "new_frac_of_ids": round(new_per_step / ids_per_step, 5),
              "new_frac_of_unique": round(new_per_step / max(1.0, uniq_per_step), 5),
              "timed_steps": n_steps, "threads": torch.get_num_threads(),
              "target_time_ratio_max": TARGET_TIME_RATIO}

    def case(base_key: str, base_label: str, extra: dict) -> Case:
        ours_ms, base_ms = t["ours"] * 1e3, t[base_key] * 1e3
        d = {**detail, **extra, "time_ratio": round(ours_ms / base_ms, 4),
             "ours_M_ids_per_s": round(ids_per_step / t["ours"] / 1e6, 3),
             "baseline_M_ids_per_s": round(ids_per_step / t[base_key] / 1e6, 3)}
        return Case(f"{label} fwd+bwd", "ms/step", round(ours_ms, 4), base_label, round(base_ms, 4),
                    higher_is_better=False, detail=d)

    cases = [
        case("tbe", "torchrec FusedEmbeddingBagCollection (FBGEMM TBE, fused SGD)",
             {"baseline_kernel": _fused_kernel_name(fused), "baseline_does": "fwd + bwd with fused EXACT_SGD update"}),
        case("ebc", "torchrec EmbeddingBagCollection (sparse grads, coalesced)",
             {"baseline_does": "fwd + bwd to sparse COO .grad, then .coalesce() (no update)"}),
    ]
    return cases


# ----------------------------------------------------------------------------- run
def run(opts: BenchOptions) -> List[Case]:
    from torchrec import KeyedJaggedTensor

    from recis_compat.ragged.tensor import RaggedTensor

    cfg = _cfg(opts)
    n_steps = 1 if opts.quick else max(1, opts.repeat) * STEPS_PER_REPEAT
    batch, nfeat, vocab = int(cfg["batch"]), int(cfg["features"]), int(cfg["vocab"])
    s = float(cfg["zipf"])
    cases: List[Case] = []

    # --- (a) one-id features
    names = [f"f{i}" for i in range(nfeat)]
    salts = torch.randint(1, 2 ** 40, (nfeat,), generator=torch.Generator().manual_seed(7)).tolist()
    sampler = ZipfSampler(vocab, s, seed=0)
    keys_lengths = torch.ones(nfeat * batch, dtype=torch.int64)

    def one_id_batch():
        ranks = [sampler.draw(batch) for _ in names]
        inp = {n: (r * ID_MULT + salts[i]).view(batch, 1) for i, (n, r) in enumerate(zip(names, ranks))}
        kjt = KeyedJaggedTensor.from_lengths_sync(keys=list(names), values=torch.cat(ranks), lengths=keys_lengths)
        uniq = sum(int(torch.unique(r).numel()) for r in ranks)
        return inp, kjt, batch, nfeat * batch, uniq

    cases += _run_workload(f"{nfeat} one-id features", names, one_id_batch,
                           lambda i, n: sampler.draw(n) * ID_MULT + salts[i], cfg, n_steps)
    gc.collect()   # free the first workload's tables before building the second

    # --- (b) one sequence feature
    sb, sl = int(cfg["seq_batch"]), int(cfg["seq_len"])
    seq_sampler = ZipfSampler(vocab, s, seed=3)
    gl = torch.Generator().manual_seed(5)
    salt = salts[0]

    def seq_batch():
        lengths = torch.randint(1, sl + 1, (sb,), generator=gl)
        ranks = seq_sampler.draw(int(lengths.sum()))
        rt = RaggedTensor(ranks * ID_MULT + salt, offsets_of(lengths), dense_shape=[sb, -1])
        kjt = KeyedJaggedTensor.from_lengths_sync(keys=["seq"], values=ranks, lengths=lengths)
        return {"seq": rt}, kjt, sb, int(ranks.numel()), int(torch.unique(ranks).numel())

    cases += _run_workload(f"sequence feature (len<={sl}, batch {sb})", ["seq"], seq_batch,
                           lambda i, n: seq_sampler.draw(n) * ID_MULT + salt, cfg, n_steps)
    return cases


command = common.make_command(
    "lookup", run, help=DESCRIPTION,
    extra_options=[
        click.option("--batch", type=int, default=DEFAULTS["batch"], show_default=True,
                     help="Rows per batch of the one-id workload."),
        click.option("--features", type=int, default=DEFAULTS["features"], show_default=True,
                     help="One-id features."),
        click.option("--dim", type=int, default=DEFAULTS["dim"], show_default=True, help="Embedding dim."),
        click.option("--vocab", type=int, default=DEFAULTS["vocab"], show_default=True,
                     help="Distinct ids per feature (baseline table rows)."),
        click.option("--zipf", type=float, default=DEFAULTS["zipf"], show_default=True,
                     help="Zipf exponent of the id distribution."),
        click.option("--warm-draws", "warm_draws", type=int, default=DEFAULTS["warm_draws"], show_default=True,
                     help="Ids per feature looked up before timing (pre-warms the table)."),
        click.option("--seq-batch", "seq_batch", type=int, default=DEFAULTS["seq_batch"], show_default=True,
                     help="Rows per batch of the sequence workload."),
        click.option("--seq-len", "seq_len", type=int, default=DEFAULTS["seq_len"], show_default=True,
                     help="Longest sequence (lengths uniform in [1, seq_len])."),
    ])
