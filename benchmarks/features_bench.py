"""``recis-compat bench features``: the fused FeatureEngine vs the same ops one feature at a time.

Workload: the CTR seed's (deepctr example's) feature configuration on generated data, one batch
of ``batch`` rows (default 4096):

* ``dense2`` ``[B, 1]`` float32 -> ``Bucketize([0, 0.5, 1])``
* ``sparse3`` (one id per row) -> ``Mod(10000)``
* ``sparse4`` (1..``max_len`` ids per row) -> ``Mod(10000)``, ``SequenceTruncate(seq_len,
  right)``
* ``sparse5`` (1..``max_len`` 10-byte strings per row, ``trans_int8`` bytes) -> ``Hash("farm")``,
  ``Mod(10000)``, ``SequenceTruncate(seq_len, left)``
* ``sparse1_x_sparse2`` -> ``FeatureCross()``, ``Mod(1000)``; ``sparse1``/``sparse2`` selected.

Baseline (same run): every feature on its own in plain torch/Python, vectorised where that is
natural -- ``torch.bucketize``, ``torch.remainder``, per-row truncation by slicing, per-string
``farmhash.fingerprint64`` (pyfarmhash), a per-row ``torch.unique`` cross with a vectorised torch
MurmurHash64A. Its results are checked against the engine's before timing.

Cases (samples/s, higher is better): the full pipeline (target >= 3x), and the same pipeline
without the string feature (torch-only baseline).
"""
from __future__ import annotations

from typing import Dict, List

import click
import numpy as np
import torch

from recis_compat.benchmarks import common
from recis_compat.benchmarks.common import BenchOptions, Case
from recis_compat.features import (Bucketize, FeatureCross, FeatureEngine, Hash, Mod,
                                   SelectField, SelectFields, SequenceTruncate)
from recis_compat.features.feature import Feature
from recis_compat.ops.features import murmur64a_pair_torch
from recis_compat.ragged.tensor import RaggedTensor

DESCRIPTION = ("FeatureEngine (fused kernels) vs the same ops one feature at a time in plain "
               "torch/Python, CTR seed feature config")
DEFAULTS: Dict[str, object] = {"batch": 4096, "max_len": 1999, "seq_len": 1000}
_QUICK = {"batch": 256, "max_len": 120, "seq_len": 60}
_ALNUM = np.frombuffer(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789",
                       dtype=np.int8)


# ----------------------------------------------------------------------------- data
def _offsets(lens: torch.Tensor) -> torch.Tensor:
    off = torch.zeros(lens.numel() + 1, dtype=torch.int64)
    off[1:] = torch.cumsum(lens, 0)
    return off.to(torch.int32)


def make_batch(batch: int, max_len: int, seed: int = 0) -> Dict[str, object]:
    """One deepctr-style batch: dense ``[B, 8]``/``[B, 1]`` float32, ragged int64 ids
    (int32 offsets) and a byte-level string column (int8, offsets ``[rows, strings]``)."""
    g = torch.Generator().manual_seed(seed)
    rows = torch.arange(batch, dtype=torch.int64)
    ones = torch.ones(batch, dtype=torch.int64)
    lens4 = torch.randint(1, max_len + 1, (batch,), generator=g)
    ids4 = torch.randint(0, 1_000_000, (int(lens4.sum()),), generator=g)
    rs = np.random.default_rng(seed)
    table = torch.from_numpy(_ALNUM[rs.integers(0, len(_ALNUM), (1000, 10))])
    lens5 = torch.randint(1, max_len + 1, (batch,), generator=g)
    picks = torch.randint(0, 1000, (int(lens5.sum()),), generator=g)
    str_off = torch.arange(0, 10 * picks.numel() + 1, 10, dtype=torch.int32)
    return {
        "label": torch.randint(0, 2, (batch, 1), generator=g).float(),
        "dense1": torch.rand(batch, 8, generator=g),
        "dense2": torch.rand(batch, 1, generator=g),
        "sparse1": RaggedTensor(rows.clone(), _offsets(ones)),
        "sparse2": RaggedTensor(rows.clone(), _offsets(ones)),
        "sparse3": RaggedTensor(rows.clone(), _offsets(ones)),
        "sparse4": RaggedTensor(ids4, _offsets(lens4)),
        "sparse5": RaggedTensor(table[picks].reshape(-1), [_offsets(lens5), str_off]),
    }


def make_features(seq_len: int, with_strings: bool = True) -> List[Feature]:
    """The deepctr example's feature list (``seq_len`` for both truncations)."""
    feats = [
        Feature("dense2").add_op(SelectField("dense2", dim=1)).add_op(Bucketize([0, 0.5, 1])),
        Feature("sparse1").add_op(SelectField("sparse1")),
        Feature("sparse2").add_op(SelectField("sparse2")),
        Feature("sparse3").add_op(SelectField("sparse3")).add_op(Mod(10000)),
        Feature("sparse4").add_op(SelectField("sparse4")).add_op(Mod(10000))
        .add_op(SequenceTruncate(seq_len=seq_len, truncate=True, truncate_side="right",
                                 check_length=True, n_dims=2)),
        Feature("sparse1_x_sparse2")
        .add_op(SelectFields([SelectField("sparse1"), SelectField("sparse2")]))
        .add_op(FeatureCross()).add_op(Mod(1000)),
    ]
    if with_strings:
        feats.append(Feature("sparse5").add_op(SelectField("sparse5")).add_op(Hash("farm"))
                     .add_op(Mod(10000)).add_op(SequenceTruncate(seq_len=seq_len)))
    return feats


# ----------------------------------------------------------------------------- baseline
def _umod(x: torch.Tensor, m: int) -> torch.Tensor:
    """``uint64(x) % m`` in plain torch (torch has no uint64 remainder on CPU)."""
    return torch.remainder(torch.remainder(x, m) + (x < 0) * ((1 << 64) % m), m)


def _truncate_rows(values: torch.Tensor, offsets: torch.Tensor, keep: int, left: bool):
    """Per-row slicing: each row cut to ``keep`` values."""
    off = offsets.tolist()
    parts, lens = [], []
    for s, e in zip(off[:-1], off[1:]):
        row = values[s:e]
        row = row[-keep:] if left else row[:keep]
        parts.append(row)
        lens.append(row.numel())
    return torch.cat(parts), _offsets(torch.tensor(lens))


def _farm_strings(data: torch.Tensor, str_off: torch.Tensor) -> torch.Tensor:
    import farmhash
    raw = data.numpy().tobytes()
    off = str_off.tolist()
    fp = farmhash.fingerprint64
    hashes = np.array([fp(raw[s:e]) for s, e in zip(off[:-1], off[1:])], dtype=np.uint64)
    return torch.from_numpy(hashes.view(np.int64))


def _cross_rows(x: RaggedTensor, y: RaggedTensor):
    xo, yo = x.offsets()[-1].tolist(), y.offsets()[-1].tolist()
    xs, ys, lens = [], [], []
    for i in range(len(xo) - 1):
        ux = torch.unique(x.values()[xo[i]:xo[i + 1]])
        uy = torch.unique(y.values()[yo[i]:yo[i + 1]])
        xs.append(ux.repeat_interleave(uy.numel()))
        ys.append(uy.repeat(ux.numel()))
        lens.append(ux.numel() * uy.numel())
    return murmur64a_pair_torch(torch.cat(xs), torch.cat(ys)), _offsets(torch.tensor(lens))


def baseline(data: Dict[str, object], seq_len: int, with_strings: bool = True) -> Dict[str, object]:
    """The same features, one at a time, in plain torch/Python."""
    out: Dict[str, object] = {}
    out["dense2"] = torch.bucketize(data["dense2"], torch.tensor([0, 0.5, 1]), right=True)
    out["sparse1"], out["sparse2"] = data["sparse1"], data["sparse2"]
    s3 = data["sparse3"]
    out["sparse3"] = RaggedTensor(torch.remainder(s3.values(), 10000), s3.offsets())
    s4 = data["sparse4"]
    v, o = _truncate_rows(torch.remainder(s4.values(), 10000), s4.offsets()[0], seq_len, False)
    out["sparse4"] = RaggedTensor(v, o)
    v, o = _cross_rows(data["sparse1"], data["sparse2"])
    out["sparse1_x_sparse2"] = RaggedTensor(_umod(v, 1000), o)
    if with_strings:
        s5 = data["sparse5"]
        h = _umod(_farm_strings(s5.values(), s5.offsets()[1]), 10000)
        v, o = _truncate_rows(h, s5.offsets()[0], seq_len, True)
        out["sparse5"] = RaggedTensor(v, o)
    return out


def _check_same(ours: Dict[str, object], ref: Dict[str, object]) -> None:
    """Raise if the engine and the baseline disagree (a cross row's order is unspecified, so
    the cross is compared sorted)."""
    for name, r in ref.items():
        o = ours[name]
        if isinstance(r, RaggedTensor):
            ov, rv = o.values(), r.values()
            if name == "sparse1_x_sparse2":
                ov, rv = torch.sort(ov)[0], torch.sort(rv)[0]
            same = (torch.equal(o.offsets()[-1].long(), r.offsets()[-1].long())
                    and torch.equal(ov, rv))
        else:
            same = torch.equal(o, r)
        if not same:
            raise RuntimeError(f"features bench: engine and baseline disagree on {name!r}")

# ----------------------------------------------------------------------------- run
def run(opts: BenchOptions) -> List[Case]:
    params = dict(DEFAULTS)
    if opts.quick:
        params.update(_QUICK)
    params.update({k: v for k, v in opts.extra.items() if v is not None})
    batch, max_len, seq_len = int(params["batch"]), int(params["max_len"]), int(params["seq_len"])
    data = make_batch(batch, max_len)
    cases = []
    for with_strings, label in ((True, "full pipeline"), (False, "without string hash")):
        engine = FeatureEngine(make_features(seq_len, with_strings))
        _check_same(engine(data), baseline(data, seq_len, with_strings))
        t_ours = common.time_fn(lambda: engine(data), opts.repeat)
        t_base = common.time_fn(lambda: baseline(data, seq_len, with_strings), opts.repeat)
        cases.append(Case(
            name=f"FeatureEngine fused, {label}", metric="samples/s", value=batch / t_ours,
            baseline="per-feature plain torch/Python", baseline_value=batch / t_base,
            higher_is_better=True,
            detail={"batch": batch, "max_len": max_len, "seq_len": seq_len,
                    "ours_ms": round(t_ours * 1e3, 3), "baseline_ms": round(t_base * 1e3, 3),
                    "target_ratio": 3.0 if with_strings else None}))
    return cases


command = common.make_command(
    "features", run, DESCRIPTION,
    extra_options=[
        click.option("--batch", type=int, default=None,
                                   help=f"Rows per batch (default {DEFAULTS['batch']})."),
        click.option("--max-len", "max_len", type=int, default=None,
                                   help=f"Longest sequence (default {DEFAULTS['max_len']})."),
        click.option("--seq-len", "seq_len", type=int, default=None,
                                   help=f"Truncation length (default {DEFAULTS['seq_len']})."),
    ])
