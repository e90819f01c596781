"""``recis-compat bench train``: DeepFM training samples/s, ours vs the same model hand-written on TorchRec.

Design target (docs/benchmarks.md): a DeepFM train step >= 0.9x the samples/s of the same model
hand-written on TorchRec, measured in the same run.

**Ours** is the deepfm example as users run it: ``examples/deepfm/deepfm_model.py`` ``DeepFM``
(``FeatureEngine`` -> ``EmbeddingEngine`` over 26 categorical columns, each embedded twice:
``cN_emb`` dim 8 and ``cN_bias`` dim 1, sum combiner, dynamic tables; 13 numeric columns; FM +
DNN head; BCE loss; the forward also updates the example's ``AUROC`` metric), trained with
``SparseAdamW`` (tables) + ``torch.optim.AdamW`` (dense), lr 0.001 as in ``runner.py``.
One step = ``loss = model(batch)``, ``loss.backward()``, ``dense_opt.step()``,
``sparse_opt.step()``, both ``zero_grad()`` (what ``Trainer`` does, without hooks/checkpoints).

**Baseline** is the same DeepFM written by hand on TorchRec: one ``FusedEmbeddingBagCollection``
table per categorical column (SUM pooling, ``buckets`` rows), FBGEMM CPU TBE with fused
EXACT_ADAGRAD (the optimizer is applied inside backward; TBE on CPU has no Adam). FBGEMM needs
dims that are multiples of 4, so the dim-1 first-order weight cannot be a table of its own: each
column's table is 12 wide, columns 0-7 are the second-order embedding, column 8 the first-order
weight, 9-11 unused (one lookup per column instead of ours' two). The numeric input is a dense
``[B, 13]`` tensor (0 where missing, as ours gets after ``EmbeddingEngine``), the ids are mapped
by ``id % buckets`` into a ``KeyedJaggedTensor`` -- both prepared before timing. Same dense
layers (initialised from ours), same FM/DNN code, same loss and the same AUROC update;
``torch.optim.AdamW`` on the dense parameters.

Data: Criteo-style ORC files generated with the example's ``make_data.py`` (seed 0) into a
temporary directory and read once with the example's ``get_dataset`` (``OrcDataset`` +
``transform_batch``) into memory before timing, so IO is excluded. Both sides see the same
batches in the same order; step ``k`` of every side uses batch ``k``; sides alternate order
every step (``lookup_bench.interleaved_steps``); each side's value is the median single-step
time, reported as samples/s = batch / median step time.

Where the example code comes from: ``--example-dir``, else ``$RECIS_COMPAT_DEEPFM_EXAMPLE``, else
``examples/deepfm`` next to this file's directory (a source checkout or an editable install).
When none exists (``pip install .`` installs ``benchmarks/`` but not ``examples/``), a bundled
copy of the example (model, feature/embedding config, dataset reader, data generator; below,
``_bundled_example``) is used; ``detail.model_source`` says which. The copy is pinned to the
example by ``tests/unit/test_bench_train_dist.py`` (same parameters, same loss on a batch).

A second case times the same step of ours with the CPU mode (``recis_compat/utils/cpu_mode.py``)
installed vs not installed, alternating on one model in this process; its ratio is the mode's
per-step cost (1.0 = none).

Before timing, a guard checks that both models compute the same loss on the first batch when
the baseline's table rows hold ours' embeddings (a plain EBC with collision-free rows).
``--quick``: batch 200, 1 timed step, 2 warm-up steps, 10k buckets.

**--model dlrm** (issue 15 item 4). Ours is examples/dlrm's ``DLRM`` (``FeatureEngine`` ->
``EmbeddingEngine`` over ``C1..C26``, one dynamic table per field, sum combiner; bottom MLP,
dot interaction, top MLP; BCE-with-logits) built without OneFlow's paddings so that it does
TorchRec's arithmetic, trained with the example's ``SparseSGD`` + ``torch.optim.SGD`` (OneFlow's
DLRM optimizer), lr 0.1. The baseline is ``torchrec.models.dlrm.DLRM`` over a
``FusedEmbeddingBagCollection`` (FBGEMM TBE, EXACT_SGD applied inside backward) + SGD on the
dense arches, same layer sizes. Data: synthetic Criteo (the example's make_data: ``criteo-synth`` +
``criteo-to-parquet``, seed 0) with OneFlow DLRM's table sizes capped at ``--buckets`` (so
every id has its own TorchRec row), read through the example's ``make_dataset`` before timing; the
TorchRec side gets KJTs of the raw ids built before timing. Embedding init
``U(-sqrt(1/n), sqrt(1/n))`` on both sides: with OneFlow's rule (``n`` = each table's size,
"oneflow init") ours holds one physical table per distinct initializer, with one ``n`` for all
("shared init") ours coalesces the 26 tables into one; world 1 reports both. ``--world-size N``
also launches torchrun with N ranks (``python -m recis_compat.benchmarks.train_bench
--worker``): ours sharded by ``shard_model`` (RecIS's slice rule, dense DDP), TorchRec's under
``DistributedModelParallel`` with a row-wise plan; each rank trains its slice of each global
batch (``--batch`` rows per rank), and a side's step time is its slowest rank's median. Guards:
both sides' first-batch loss is a finite BCE (0.05 .. 5). There is no bundled copy of the DLRM
example: it is read from ``--example-dir``, ``$RECIS_COMPAT_DLRM_EXAMPLE`` or ``examples/dlrm``.
``--quick``: batch 256, dim 16, MLPs 32,16, tables capped at 10k rows, 1 timed step.
"""
from __future__ import annotations

import gc
import importlib
import math
import os
import pathlib
import statistics
import sys
import tempfile
import types
from typing import Dict, List, Optional

import click
import torch
from torch import nn

from recis_compat.benchmarks import common
from recis_compat.benchmarks.common import BenchOptions, Case

DESCRIPTION = ("DeepFM train step (examples/deepfm: FeatureEngine + EmbeddingEngine, SparseAdamW + AdamW) vs "
               "the same DeepFM hand-written on TorchRec (FusedEmbeddingBagCollection, fused EXACT_ADAGRAD + AdamW); "
               "--model dlrm: examples/dlrm vs torchrec.models.dlrm.DLRM (fused EXACT_SGD), world 1 and --world-size N")
DEFAULTS: Dict[str, object] = {"batch": 1000, "buckets": 100_000, "example_dir": None}
_QUICK = {"batch": 200, "buckets": 10_000}
STEPS_PER_REPEAT = 10
WARMUP_STEPS = 3
QUICK_WARMUP_STEPS = 2
TARGET_RATIO = 0.9
LR = 0.001
ENV_EXAMPLE_DIR = "RECIS_COMPAT_DEEPFM_EXAMPLE"
_EXAMPLE_MODULES = ("feature_config", "dataset", "deepfm_model", "make_data")


# ----------------------------------------------------------------------------- the example code
def find_example_dir(explicit: Optional[str] = None) -> Optional[pathlib.Path]:
    """The deepfm example directory: ``explicit``, ``$RECIS_COMPAT_DEEPFM_EXAMPLE`` or
    ``<repo>/examples/deepfm``; ``None`` when none exists (use the bundled copy)."""
    for cand, required in ((explicit, True), (os.environ.get(ENV_EXAMPLE_DIR), True),
                           (pathlib.Path(__file__).resolve().parent.parent / "examples" / "deepfm", False)):
        if not cand:
            continue
        path = pathlib.Path(cand)
        if all((path / f"{m}.py").is_file() for m in _EXAMPLE_MODULES):
            return path
        if required:
            raise click.ClickException(f"{path} is not the deepfm example directory (needs "
                                       f"{', '.join(m + '.py' for m in _EXAMPLE_MODULES)})")
    return None


def import_isolated(path: pathlib.Path, names) -> Dict[str, types.ModuleType]:
    """Import the bare-named modules ``names`` from directory ``path``; afterwards neither the
    names (examples reuse them: ``dataset``, ``make_data``, ...) stay in ``sys.modules`` nor the
    directory on ``sys.path``."""
    saved = {n: sys.modules.pop(n) for n in names if n in sys.modules}
    sys.path.insert(0, str(path))
    try:
        return {n: importlib.import_module(n) for n in names}
    finally:
        sys.path.remove(str(path))
        for n in names:
            sys.modules.pop(n, None)
        sys.modules.update(saved)


def train_step(model: nn.Module, batch: dict, dense_opt, sparse_opt) -> None:
    """What the Trainer does per step, without hooks or checkpoints: loss, backward, both
    optimizers' step and zero_grad."""
    model(batch).backward()
    dense_opt.step()
    sparse_opt.step()
    dense_opt.zero_grad()
    sparse_opt.zero_grad()


def load_example(path: pathlib.Path) -> types.SimpleNamespace:
    """Import the example's modules from ``path`` without leaving its bare module names
    (``dataset``, ``feature_config``, ...) in ``sys.modules`` or its directory on ``sys.path``
    (other examples use the same names)."""
    mods = import_isolated(path, _EXAMPLE_MODULES)
    fc, ds, model, data = (mods[n] for n in _EXAMPLE_MODULES)
    return types.SimpleNamespace(DeepFM=model.DeepFM, IOArgs=ds.IOArgs, get_dataset=ds.get_dataset,
                                 NUMERIC=list(fc.NUMERIC), CATEGORICAL=list(fc.CATEGORICAL), EMB_DIM=int(fc.EMB_DIM),
                                 write_data=data.write, source=str(path))


def _bundled_example() -> types.SimpleNamespace:
    """A copy of examples/deepfm (feature_config, dataset, deepfm_model, make_data) for installs
    without the examples directory. Keep in step with the example (a unit test compares them)."""
    from dataclasses import dataclass
    import glob

    import numpy as np
    import pyarrow as pa
    import pyarrow.orc as orc

    from recis_compat.features.feature import Feature
    from recis_compat.features.feature_engine import FeatureEngine
    from recis_compat.features.op import SelectField
    from recis_compat.framework.metrics import add_metric
    from recis_compat.io.orc_dataset import OrcDataset
    from recis_compat.metrics.auroc import AUROC
    from recis_compat.nn import EmbeddingEngine
    from recis_compat.nn.initializers import TruncNormalInitializer
    from recis_compat.nn.modules.embedding import EmbeddingOption

    NUMERIC = [f"i{i}" for i in range(1, 14)]
    CATEGORICAL = [f"c{i}" for i in range(1, 27)]
    EMB_DIM = 8

    # --- make_data.py
    def _list_column(values, present, value_type):
        offsets = np.zeros(len(values) + 1, dtype=np.int32)
        offsets[1:] = np.cumsum(present.astype(np.int32))
        return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values[present], type=value_type))

    class CriteoLikeGenerator:
        def __init__(self, seed: int, vocab_scale: int = 2000):
            self.rng = rng = np.random.default_rng(seed)
            self.vocab_sizes = rng.integers(3, vocab_scale, size=len(CATEGORICAL))
            self.vocab_ids = [rng.integers(4 * 10**7, 1 << 40, size=v, dtype=np.int64) for v in self.vocab_sizes]
            self.effects = [rng.normal(0.0, 0.8, size=v) for v in self.vocab_sizes]
            self.missing_rate = rng.choice([0.0, 0.04, 0.4], size=len(CATEGORICAL), p=[0.6, 0.25, 0.15])
            self.dense_missing = rng.uniform(0.0, 0.4, size=len(NUMERIC))
            self.dense_weight = rng.normal(0.0, 0.3, size=len(NUMERIC))
            self.bias = -3.0

        def table(self, rows: int):
            rng = self.rng
            logit = np.full(rows, self.bias)
            cols = {}
            for j in range(len(NUMERIC)):
                present = rng.random(rows) >= self.dense_missing[j]
                raw = rng.lognormal(1.0, 1.5, size=rows).round()
                logit += np.where(present, self.dense_weight[j] * np.log1p(raw) / 3.0, 0.0)
                cols[f"i{j + 1}"] = _list_column(raw.astype(np.float64), present, pa.float64())
            for j in range(len(CATEGORICAL)):
                ranks = np.minimum(rng.zipf(1.3, size=rows) - 1, self.vocab_sizes[j] - 1)
                present = rng.random(rows) >= self.missing_rate[j]
                logit += np.where(present, self.effects[j][ranks], 0.0)
                cols[f"c{j + 1}"] = _list_column(self.vocab_ids[j][ranks], present, pa.int64())
            prob = 1.0 / (1.0 + np.exp(-logit))
            label = (rng.random(rows) < prob).astype(np.float64)
            cols["label"] = _list_column(label, np.ones(rows, dtype=bool), pa.float64())
            return pa.table(cols)

    def write_data(out_dir: str, files: int, rows: int, seed: int = 0) -> List[str]:
        os.makedirs(out_dir, exist_ok=True)
        gen = CriteoLikeGenerator(seed)
        paths = []
        for i in range(files):
            path = os.path.join(out_dir, f"part-{i}.orc")
            orc.write_table(gen.table(rows), path + ".tmp", compression="uncompressed")
            os.replace(path + ".tmp", path)
            paths.append(path)
        return paths

    # --- dataset.py
    @dataclass
    class IOArgs:
        data_paths: str = "./data/"
        batch_size: int = 1000
        thread_num: int = 1
        prefetch: int = 1
        drop_remainder: bool = True
        file_pattern: str = "*.orc"

    def transform_batch(batch_list):
        batch = batch_list[0]
        out = {"label": batch["label"]}
        for n in NUMERIC:
            out[n] = batch[n]
        for c in CATEGORICAL:
            out[c + "_emb"] = batch[c]
            out[c + "_bias"] = batch[c]
        return out

    def get_dataset(io_args, worker_idx: int = 0, worker_num: int = 1, device: str = "cpu", files=None):
        if files is None:
            files = sorted(glob.glob(os.path.join(io_args.data_paths, io_args.file_pattern)))
        ds = OrcDataset(io_args.batch_size, worker_idx=worker_idx, worker_num=worker_num,
                        read_threads_num=io_args.thread_num, prefetch=io_args.prefetch, is_compressed=False,
                        drop_remainder=io_args.drop_remainder, transform_fn=transform_batch,
                        dtype=torch.float32, device=device, save_interval=1000)
        ds.add_paths(files)
        ds.fixedlen_feature("label", [0.0])
        for n in NUMERIC + CATEGORICAL:
            ds.varlen_feature(n)
        return ds

    def get_feature_conf():
        feats = [Feature(n).add_op(SelectField(n, dim=1)) for n in NUMERIC]
        for c in CATEGORICAL:
            feats.append(Feature(c + "_emb").add_op(SelectField(c + "_emb")))
            feats.append(Feature(c + "_bias").add_op(SelectField(c + "_bias")))
        return feats

    def get_embedding_conf(device: str = "cpu"):
        conf = {}
        for c in CATEGORICAL:
            for suffix, dim in (("_emb", EMB_DIM), ("_bias", 1)):
                conf[c + suffix] = EmbeddingOption(embedding_dim=dim, shared_name=c + suffix, combiner="sum",
                                                   initializer=TruncNormalInitializer(std=0.001),
                                                   device=torch.device(device))
        return conf

    # --- deepfm_model.py
    def numeric_column(x: torch.Tensor, batch: int) -> torch.Tensor:
        x = x.reshape(batch, -1)
        if x.shape[1] == 0:
            return x.new_zeros(batch, 1)
        return x[:, :1]

    class DeepFM(nn.Module):
        def __init__(self, device: str = "cpu"):
            super().__init__()
            self.feature_engine = FeatureEngine(feature_list=get_feature_conf())
            self.embedding_engine = EmbeddingEngine(get_embedding_conf(device))
            self.numeric_w = nn.Linear(len(NUMERIC), 1)
            self.numeric_emb = nn.Parameter(torch.randn(len(NUMERIC), EMB_DIM) * 0.01)
            n_fields = len(NUMERIC) + len(CATEGORICAL)
            self.dnn = nn.Sequential(nn.Linear(n_fields * EMB_DIM, 64), nn.ReLU(),
                                     nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 1))
            self.loss = nn.BCELoss()
            self.auc = AUROC(num_thresholds=200, dist_sync_on_step=True)

        def predict(self, batch: dict):
            feats = self.embedding_engine(self.feature_engine(batch))
            b = feats["label"].shape[0]
            numeric = torch.cat([numeric_column(feats[n], b) for n in NUMERIC], 1)
            numeric = torch.log1p(numeric.clamp_min(0))
            emb = torch.stack([feats[c + "_emb"] for c in CATEGORICAL], 1)
            num_emb = numeric.unsqueeze(2) * self.numeric_emb.unsqueeze(0)
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

    return types.SimpleNamespace(DeepFM=DeepFM, IOArgs=IOArgs, get_dataset=get_dataset, NUMERIC=NUMERIC,
                                 CATEGORICAL=CATEGORICAL, EMB_DIM=EMB_DIM, write_data=write_data,
                                 source="bundled copy (recis_compat.benchmarks.train_bench)")


def example(example_dir: Optional[str] = None) -> types.SimpleNamespace:
    """The deepfm example's code: from its directory when found, else the bundled copy."""
    path = find_example_dir(example_dir)
    return load_example(path) if path is not None else _bundled_example()


# ----------------------------------------------------------------------------- the TorchRec model
class TorchRecDeepFM(nn.Module):
    """The example's DeepFM written on TorchRec: ``ebc`` has one table per categorical column,
    ``emb_dim + 1`` wide or more (columns ``[:emb_dim]`` second order, ``[emb_dim]`` first order),
    in ``categorical`` order; inputs are a dense ``[B, n_numeric]`` tensor, a KJT of mapped rows
    and the label ``[B, 1]``."""

    def __init__(self, ebc: nn.Module, n_numeric: int, categorical: List[str], emb_dim: int):
        super().__init__()
        from recis_compat.metrics.auroc import AUROC
        self.ebc = ebc
        self.categorical = list(categorical)
        self.emb_dim = int(emb_dim)
        self.numeric_w = nn.Linear(n_numeric, 1)
        self.numeric_emb = nn.Parameter(torch.randn(n_numeric, emb_dim) * 0.01)
        n_fields = n_numeric + len(categorical)
        self.dnn = nn.Sequential(nn.Linear(n_fields * emb_dim, 64), nn.ReLU(),
                                 nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 1))
        self.loss = nn.BCELoss()
        self.auc = AUROC(num_thresholds=200, dist_sync_on_step=True)

    def predict(self, dense: torch.Tensor, kjt, label: torch.Tensor):
        kt = self.ebc(kjt)
        b, d = dense.shape[0], self.emb_dim
        rows = kt.values().view(b, len(self.categorical), -1)                       # [B, 26, 12]
        numeric = torch.log1p(dense.clamp_min(0))                                   # [B, 13]
        emb = rows[:, :, :d]                                                        # [B, 26, 8]
        num_emb = numeric.unsqueeze(2) * self.numeric_emb.unsqueeze(0)              # [B, 13, 8]
        fields = torch.cat([emb, num_emb], 1)
        first = rows[:, :, d].sum(1, keepdim=True) + self.numeric_w(numeric)
        second = 0.5 * (fields.sum(1).pow(2) - fields.pow(2).sum(1)).sum(1, keepdim=True)
        logit = first + second + self.dnn(fields.flatten(1))
        return torch.sigmoid(logit), label

    def forward(self, dense, kjt, label) -> torch.Tensor:
        from recis_compat.framework.metrics import add_metric
        prob, label = self.predict(dense, kjt, label)
        self.auc.update(prob.detach(), label)
        add_metric("auc", self.auc.compute())
        return self.loss(prob, label)


def _table_width(emb_dim: int) -> int:
    """FBGEMM TBE needs dims that are multiples of 4: ``emb_dim + 1`` rounded up."""
    return 4 * math.ceil((emb_dim + 1) / 4)


def _fused_ebc(categorical: List[str], buckets: int, width: int):
    from torchrec import EmbeddingBagConfig
    from torchrec.modules.fused_embedding_modules import FusedEmbeddingBagCollection
    cfgs = [EmbeddingBagConfig(name=f"t_{c}", embedding_dim=width, num_embeddings=buckets, feature_names=[c],
                               init_fn=lambda w: nn.init.trunc_normal_(w, std=0.001, a=-0.002, b=0.002))
            for c in categorical]
    return FusedEmbeddingBagCollection(cfgs, optimizer_type=torch.optim.Adagrad, optimizer_kwargs={"lr": LR},
                                       device=torch.device("cpu"))


def _ragged_parts(rt):
    """``(values, offsets [B + 1])`` of a 2-D RaggedTensor ``[B, *]``."""
    offsets = rt.offsets()
    if len(offsets) != 1:
        raise ValueError(f"expected a 2-D RaggedTensor, got {len(offsets) + 1} dims")
    return rt.values(), offsets[0].to(torch.int64)


def _dense_numeric(batch: dict, numeric: List[str]) -> torch.Tensor:
    """``[B, n]``: each numeric column's first value, 0 where missing (what ours gets after
    EmbeddingEngine's ``to_dense`` and the example's ``numeric_column``)."""
    b = batch["label"].shape[0]
    out = torch.zeros(b, len(numeric), dtype=torch.float32)
    for j, n in enumerate(numeric):
        vals, off = _ragged_parts(batch[n])
        has = off[1:] > off[:-1]
        out[has, j] = vals[off[:-1][has]].to(torch.float32)
    return out


def _kjt_of(batch: dict, categorical: List[str], buckets: int, remap=None):
    """KJT (one key per column) of ``id % buckets`` (or ``remap[c](ids)``) of each ``cN_emb``."""
    from torchrec import KeyedJaggedTensor
    values, lengths = [], []
    for c in categorical:
        vals, off = _ragged_parts(batch[c + "_emb"])
        values.append(remap[c](vals) if remap is not None else torch.remainder(vals, buckets))
        lengths.append(off[1:] - off[:-1])
    return KeyedJaggedTensor.from_lengths_sync(keys=list(categorical), values=torch.cat(values),
                                               lengths=torch.cat(lengths))


def _copy_dense(src: nn.Module, dst: TorchRecDeepFM) -> None:
    with torch.no_grad():
        dst.numeric_w.load_state_dict(src.numeric_w.state_dict())
        dst.numeric_emb.copy_(src.numeric_emb)
        dst.dnn.load_state_dict(src.dnn.state_dict())


def _our_rows(model: nn.Module, feature: str, ids: torch.Tensor) -> torch.Tensor:
    """Ours' stored embedding rows of ``ids`` of ``feature`` (they must already be stored)."""
    eng = model.embedding_engine
    impl = eng.tables()[eng.table_of(feature)].hashtable.impl
    rows = impl.find_rows(eng.table_ids(feature, ids))
    if not bool((rows >= 0).all()):
        raise RuntimeError(f"same-model check: ids of {feature!r} are not in our table")
    return impl.embedding.index_select(0, rows)


def check_same_model(ex: types.SimpleNamespace, ours: nn.Module, batch: dict) -> float:
    """|loss(ours) - loss(TorchRec DeepFM)| on ``batch`` with the baseline's rows set to ours'
    embeddings (plain EBC, one collision-free row per distinct id) and ours' dense weights.
    Inserts the batch's ids into ours' tables (training-mode forward without grad)."""
    from torchrec import EmbeddingBagCollection, EmbeddingBagConfig
    with torch.no_grad():
        loss_ours = float(ours(batch))
        width = _table_width(ex.EMB_DIM)
        uniq, weights = {}, {}
        for c in ex.CATEGORICAL:
            vals, _ = _ragged_parts(batch[c + "_emb"])
            u = torch.unique(vals)
            w = torch.zeros(max(1, u.numel()), width)
            if u.numel():
                w[:u.numel(), :ex.EMB_DIM] = _our_rows(ours, c + "_emb", u)
                w[:u.numel(), ex.EMB_DIM] = _our_rows(ours, c + "_bias", u)[:, 0]
            uniq[c], weights[c] = u, w
        ebc = EmbeddingBagCollection([EmbeddingBagConfig(name=f"t_{c}", embedding_dim=width,
                                                         num_embeddings=weights[c].shape[0], feature_names=[c])
                                      for c in ex.CATEGORICAL], device=torch.device("cpu"))
        for c in ex.CATEGORICAL:
            ebc.embedding_bags[f"t_{c}"].weight.copy_(weights[c])
        ref = TorchRecDeepFM(ebc, len(ex.NUMERIC), ex.CATEGORICAL, ex.EMB_DIM)
        _copy_dense(ours, ref)
        remap = {c: (lambda v, u=uniq[c]: torch.searchsorted(u, v)) for c in ex.CATEGORICAL}
        loss_ref = float(ref(_dense_numeric(batch, ex.NUMERIC), _kjt_of(batch, ex.CATEGORICAL, 0, remap),
                             batch["label"].reshape(-1, 1).to(torch.float32)))
    return abs(loss_ours - loss_ref)


def read_batches(ex: types.SimpleNamespace, data_dir: str, batch: int, n: int) -> List[dict]:
    """Generate ``n * batch`` rows with the example's generator and read them back as ``n``
    batches through the example's dataset (all in memory)."""
    ex.write_data(data_dir, 1, n * batch, 0)
    ds = ex.get_dataset(ex.IOArgs(data_paths=data_dir, batch_size=batch, thread_num=1, prefetch=1,
                                  drop_remainder=True))
    out = []
    for item in ds:
        end, data = item if isinstance(item, tuple) else (False, item)
        if end or data is None:
            break
        out.append(data)
        if len(out) == n:
            break
    if len(out) < n:
        raise RuntimeError(f"read {len(out)} batches of {batch} rows, expected {n}")
    return out


# ----------------------------------------------------------------------------- run
def _measure(ex: types.SimpleNamespace, batches: List[dict], check_batch: dict, buckets: int, warmup: int,
             n_steps: int) -> Dict[str, object]:
    """Build both models, check they agree, time them; the models die with this frame."""
    from recis_compat.benchmarks.lookup_bench import interleaved_steps
    from recis_compat.nn.modules.hashtable import filter_out_sparse_param
    from recis_compat.optim import SparseAdamW

    # --- ours: the example model and optimizers as runner.py builds them
    torch.manual_seed(42)
    ours = ex.DeepFM("cpu")
    ours.train()
    sparse_opt = SparseAdamW(filter_out_sparse_param(ours), lr=LR)
    dense_opt = torch.optim.AdamW(ours.parameters(), lr=LR)

    # --- baseline: the same model on TorchRec; ids mapped and numerics made dense up front
    width = _table_width(ex.EMB_DIM)
    base = TorchRecDeepFM(_fused_ebc(ex.CATEGORICAL, buckets, width), len(ex.NUMERIC), ex.CATEGORICAL, ex.EMB_DIM)
    base.train()
    _copy_dense(ours, base)
    base_dense_opt = torch.optim.AdamW([p for n, p in base.named_parameters() if not n.startswith("ebc.")], lr=LR)
    base_inputs = [(_dense_numeric(b, ex.NUMERIC), _kjt_of(b, ex.CATEGORICAL, buckets),
                    b["label"].reshape(-1, 1).to(torch.float32)) for b in batches]
    assert list(base.ebc(base_inputs[0][1]).keys()) == ex.CATEGORICAL, "KeyedTensor key order"

    loss_diff = check_same_model(ex, ours, check_batch)
    if not loss_diff <= 1e-6:
        raise RuntimeError(f"the TorchRec DeepFM does not compute the example's loss (|diff| = {loss_diff})")

    def ours_step(k):
        train_step(ours, batches[k], dense_opt, sparse_opt)

    def base_step(k):
        loss = base(*base_inputs[k])
        loss.backward()          # the embedding tables are updated here (fused EXACT_ADAGRAD)
        base_dense_opt.step()
        base_dense_opt.zero_grad()

    t = interleaved_steps({"ours": ours_step, "torchrec": base_step}, n_steps, warmup=warmup)
    return {"t": t, "loss_diff": loss_diff, "width": width, "kernel": _kernel_names(base.ebc),
            "ids": statistics.mean(int(inp[1].values().numel()) for inp in base_inputs),
            "table_ids": int(sum(len(i) for i in filter_out_sparse_param(ours).values()))}


def _measure_cpu_mode(ex: types.SimpleNamespace, batches: List[dict], warmup: int,
                      n_steps: int) -> Dict[str, float]:
    """Median seconds of ours' train step with the CPU mode (``recis_compat/utils/cpu_mode.py``,
    what ``import recis`` installs under ``RECIS_COMPAT_DEVICE=cpu``) installed vs not, in this
    process: one model (every batch's ids inserted before timing), both sides train it on batch
    ``k`` at step ``k`` in alternating order; the mode is installed/uninstalled untimed around
    each side's step. Returns ``{"plain": s,
    "cpu_mode": s}``; the process's mode state is restored afterwards."""
    from recis_compat.benchmarks.lookup_bench import interleaved_steps
    from recis_compat.nn.modules.hashtable import filter_out_sparse_param
    from recis_compat.optim import SparseAdamW
    from recis_compat.utils import cpu_mode

    torch.manual_seed(42)
    model = ex.DeepFM("cpu")
    model.train()
    sparse_opt = SparseAdamW(filter_out_sparse_param(model), lr=LR)
    dense_opt = torch.optim.AdamW(model.parameters(), lr=LR)
    # insert every batch's ids up front (training-mode forward without grad): otherwise the side
    # that meets batch k first pays the insertions and the other does not
    with torch.no_grad():
        for b in batches[:warmup + n_steps]:
            model(b)

    def step(k):
        train_step(model, batches[k], dense_opt, sparse_opt)

    was_installed = cpu_mode.installed()
    try:
        return interleaved_steps({"plain": step, "cpu_mode": step}, n_steps, warmup=warmup,
                                 before={"plain": lambda k: cpu_mode.uninstall(),
                                         "cpu_mode": lambda k: cpu_mode.install(announce=False)})
    finally:
        if was_installed:
            cpu_mode.install(announce=False)
        else:
            cpu_mode.uninstall()


def run(opts: BenchOptions) -> List[Case]:
    model = opts.extra.get("model") or "deepfm"
    if model == "dlrm":
        return run_dlrm(opts)
    if int(opts.extra.get("world_size") or 1) != 1:
        raise click.ClickException("bench train: --world-size > 1 is measured for --model dlrm only")
    cfg = dict(DEFAULTS)
    cfg.update({k: v for k, v in opts.extra.items() if v is not None and k in DEFAULTS})
    if opts.quick:
        cfg.update(_QUICK)
    batch, buckets = int(cfg["batch"]), int(cfg["buckets"])
    warmup = QUICK_WARMUP_STEPS if opts.quick else WARMUP_STEPS
    n_steps = 1 if opts.quick else max(1, opts.repeat) * STEPS_PER_REPEAT
    ex = example(cfg.get("example_dir"))

    with tempfile.TemporaryDirectory(prefix="recis-bench-train-") as tmp:
        batches = read_batches(ex, tmp, batch, warmup + n_steps + 1)
    # Table names are process-wide (RecIS's HashtableRegister) and released when a model is
    # collected: collect any earlier DeepFM before building ours, and ours after measuring.
    gc.collect()
    m = _measure(ex, batches[1:], batches[0], buckets, warmup, n_steps)
    gc.collect()
    tm = _measure_cpu_mode(ex, batches[1:], warmup, n_steps)
    gc.collect()
    t, width = m["t"], m["width"]
    detail = {
        "batch": batch, "timed_steps": n_steps, "warmup_steps": warmup, "threads": torch.get_num_threads(),
        "ours_ms_per_step": round(t["ours"] * 1e3, 4), "baseline_ms_per_step": round(t["torchrec"] * 1e3, 4),
        "model_source": ex.source,
        "ours": "examples/deepfm DeepFM (FeatureEngine + EmbeddingEngine, 52 logical tables of dim 8/1 in 2 "
                "physical dynamic tables), SparseAdamW + AdamW, lr 0.001",
        "baseline_does": f"FusedEmbeddingBagCollection, {len(ex.CATEGORICAL)} tables x {buckets} rows x dim {width} "
                         f"(cols 0-{ex.EMB_DIM - 1} 2nd order, col {ex.EMB_DIM} 1st order), fused EXACT_ADAGRAD "
                         "lr 0.001 in backward; ids % buckets and dense numerics prepared before timing; AdamW",
        "baseline_kernel": m["kernel"],
        "categorical_ids_per_step": round(m["ids"]),
        "ours_table_ids": m["table_ids"],
        "same_model_loss_abs_diff": m["loss_diff"],
        "target_ratio_min": TARGET_RATIO,
    }
    from recis_compat.utils.cpu_mode import MAPPED_CALLS
    mode_detail = {
        "batch": batch, "timed_steps": n_steps, "warmup_steps": warmup, "threads": torch.get_num_threads(),
        "cpu_mode_ms_per_step": round(tm["cpu_mode"] * 1e3, 4), "plain_ms_per_step": round(tm["plain"] * 1e3, 4),
        "model_source": ex.source,
        "what": "the same examples/deepfm train step (SparseAdamW + AdamW) on one model, alternating steps with "
                "recis_compat/utils/cpu_mode.py installed (as `import recis` does under RECIS_COMPAT_DEVICE=cpu: "
                "torch factories, Tensor.to/cuda/new_*, set_num_threads, autocast wrapped) and not installed",
        "mapped_calls": len(MAPPED_CALLS),
    }
    return [Case("DeepFM train step (ours)", "samples/s", round(batch / t["ours"], 2),
                 "DeepFM hand-written on TorchRec (FusedEBC EXACT_ADAGRAD + AdamW)", round(batch / t["torchrec"], 2),
                 higher_is_better=True, detail=detail),
            Case("DeepFM train step under CPU mode (ours)", "samples/s", round(batch / tm["cpu_mode"], 2),
                 "the same step without the CPU mode", round(batch / tm["plain"], 2),
                 higher_is_better=True, detail=mode_detail)]


def _kernel_names(fused) -> str:
    from recis_compat.benchmarks.lookup_bench import _fused_kernel_name
    return _fused_kernel_name(fused)


# ============================================================================= --model dlrm
# DLRM (issue 15 item 4): ours = examples/dlrm (FeatureEngine + EmbeddingEngine, 26 dynamic
# tables, SparseSGD + torch SGD) against torchrec.models.dlrm.DLRM over a
# FusedEmbeddingBagCollection (FBGEMM TBE, fused EXACT_SGD) + torch SGD, on the same synthetic
# Criteo batches. See the DLRM paragraph of the module docstring.
DLRM_DEFAULTS: Dict[str, object] = {"batch": 2048, "buckets": 100_000, "dim": 32, "bottom_mlp": "128,64,32",
                                    "top_mlp": "256,128"}
_DLRM_QUICK = {"batch": 256, "buckets": 10_000, "dim": 16, "bottom_mlp": "32,16", "top_mlp": "32,16"}
DLRM_LR = 0.1
ENV_DLRM_EXAMPLE = "RECIS_COMPAT_DLRM_EXAMPLE"
_DLRM_MODULES = ("dlrm_data", "dlrm_model", "sparse_optimizers", "oneflow_protocol", "make_data")


def find_dlrm_example(explicit: Optional[str] = None) -> pathlib.Path:
    """The dlrm example directory: ``explicit``, ``$RECIS_COMPAT_DLRM_EXAMPLE`` or
    ``<repo>/examples/dlrm``; ClickException naming what is missing otherwise (there is no
    bundled copy of the DLRM example)."""
    tried = []
    for cand in (explicit, os.environ.get(ENV_DLRM_EXAMPLE),
                 pathlib.Path(__file__).resolve().parent.parent / "examples" / "dlrm"):
        if not cand:
            continue
        path = pathlib.Path(cand)
        if all((path / f"{m}.py").is_file() for m in _DLRM_MODULES):
            return path
        tried.append(str(path))
        if cand == explicit:
            break               # an explicit directory is not replaced by a default one
    raise click.ClickException("bench train --model dlrm needs the dlrm example (examples/dlrm of a source checkout, "
                               f"or --example-dir / ${ENV_DLRM_EXAMPLE}); not found in: {', '.join(tried)} "
                               f"(needs {', '.join(m + '.py' for m in _DLRM_MODULES)})")


def load_dlrm_example(path: pathlib.Path) -> types.SimpleNamespace:
    """Import examples/dlrm's modules from ``path`` without leaving their bare names in
    ``sys.modules`` or the directory on ``sys.path``."""
    mods = import_isolated(path, _DLRM_MODULES)
    md = mods["make_data"]
    return types.SimpleNamespace(DLRM=mods["dlrm_model"].DLRM, make_dataset=mods["dlrm_data"].make_dataset,
                                 SPARSE=list(mods["dlrm_data"].SPARSE), SparseSGD=mods["sparse_optimizers"].SparseSGD,
                                 write_data=md.write, MOD_IDX=int(md.MOD_IDX),
                                 TABLE_SIZES=[int(x) for x in md.DLRM_TABLE_SIZES], source=str(path))


def _int_list(text) -> List[int]:
    return [int(x) for x in str(text).split(",") if x.strip()]


def dlrm_sizes(ex: types.SimpleNamespace, buckets: int) -> List[int]:
    """OneFlow DLRM's table_size_array (the example's ``make_data.DLRM_TABLE_SIZES``) capped at
    ``buckets`` rows: the synthetic ids of field ``i`` lie in ``[0, size_i)``, so the TorchRec
    tables hold every id without collisions."""
    return [min(int(s), int(buckets)) for s in ex.TABLE_SIZES]


def _write_dlrm_data(ex: types.SimpleNamespace, data_dir: str, rows: int, sizes: List[int]) -> List[str]:
    """``rows`` synthetic Criteo rows (seed 0) in one train file, written by the example's
    make_data (criteo-synth + criteo-to-parquet); returns the train files."""
    ex.write_data(data_dir, rows, 2, 0, 0, sizes, row_group_rows=1 << 16)
    return sorted(str(p) for p in (pathlib.Path(data_dir) / "train").glob("*.parquet"))


def dlrm_batches(ex: types.SimpleNamespace, data_dir: str, batch: int, n: int, sizes: List[int],
                 rank: int = 0, world: int = 1) -> List[dict]:
    """``n`` batches of ``batch`` rows for ``rank``: synthetic Criteo (``criteo-synth``, seed 0,
    ``sizes``) written as criteo-to-parquet's layout (mod_idx ids) and read back through the
    example's ``make_dataset`` (ParquetDataset + transform), all in memory. Rank ``r`` of ``world``
    takes rows ``[k * batch * world + r * batch, ...)`` of global step ``k``."""
    files = _write_dlrm_data(ex, data_dir, n * batch * world, sizes)
    out = []
    for item in ex.make_dataset(files, batch, drop_remainder=True):
        end, data = item
        if end or data is None:
            break
        out.append(data)
    out = out[rank::world][:n]
    if len(out) < n:
        raise RuntimeError(f"read {len(out)} batches of {batch} rows for rank {rank}, expected {n}")
    return out


def _dlrm_kjt(batch: dict, sparse: List[str], mod_idx: int):
    """KJT (keys C1..C26) of each field's row ``id - mod_idx * i`` (the raw synthetic id)."""
    from torchrec import KeyedJaggedTensor
    values, lengths = [], []
    for i, c in enumerate(sparse):
        vals, off = _ragged_parts(batch[c])
        values.append(vals - mod_idx * i)
        lengths.append(off[1:] - off[:-1])
    return KeyedJaggedTensor.from_lengths_sync(keys=list(sparse), values=torch.cat(values),
                                               lengths=torch.cat(lengths))


def _dlrm_configs(sparse: List[str], sizes: List[int], dim: int, init_sizes: List[int]):
    from torchrec import EmbeddingBagConfig

    def init(scale):
        return lambda w: nn.init.uniform_(w, -scale, scale)
    return [EmbeddingBagConfig(name=f"t_{c}", embedding_dim=dim, num_embeddings=n, feature_names=[c],
                               init_fn=init(float(1.0 / m) ** 0.5)) for c, n, m in zip(sparse, sizes, init_sizes)]


def _init_sizes(sizes: List[int], init: str) -> List[int]:
    """The sizes that set the embedding init ``U(-sqrt(1/n), sqrt(1/n))`` of each table:
    ``oneflow`` = each table's own size (OneFlow's rule; 19 distinct initializers, so ours keeps
    19 physical tables), ``shared`` = the largest size for all (one initializer: ours coalesces
    the 26 tables into one physical table)."""
    return list(sizes) if init == "oneflow" else [max(sizes)] * len(sizes)


def _ours_dlrm(ex, cfg, sizes):
    """Our DLRM as TorchRec's is built (no OneFlow paddings: same arithmetic)."""
    bottom = _int_list(cfg["bottom_mlp"])
    if not bottom or bottom[-1] != int(cfg["dim"]):
        raise click.ClickException(f"--bottom-mlp must end with --dim ({cfg['dim']}), got {cfg['bottom_mlp']!r}")
    return ex.DLRM(int(cfg["dim"]), bottom, _int_list(cfg["top_mlp"]), sizes, interaction_padding=False,
                   dense_input_padding=False)


def _torchrec_dlrm(ebc, cfg, ours):
    from torchrec.models.dlrm import DLRM as TorchRecDLRMModel
    return TorchRecDLRMModel(embedding_bag_collection=ebc, dense_in_features=13,
                             dense_arch_layer_sizes=[m.out_features for m in ours.bottom_mlp
                                                     if isinstance(m, nn.Linear)],
                             over_arch_layer_sizes=_int_list(cfg["top_mlp"]) + [1], dense_device=torch.device("cpu"))


def _sane_loss(name: str, loss: float) -> None:
    if not (math.isfinite(loss) and 0.05 < loss < 5.0):
        raise RuntimeError(f"bench train --model dlrm: {name} computes loss {loss} on the first batch "
                           "(expected a finite BCE near log 2)")


def _measure_dlrm(ex, cfg, batches, sizes, warmup: int, n_steps: int, init: str) -> Dict[str, object]:
    from recis_compat.benchmarks.lookup_bench import interleaved_steps
    from recis_compat.nn.modules.hashtable import filter_out_sparse_param
    from torchrec.modules.fused_embedding_modules import FusedEmbeddingBagCollection

    torch.manual_seed(42)
    ours = _ours_dlrm(ex, cfg, _init_sizes(sizes, init))
    ours.train()
    dense_opt = torch.optim.SGD(ours.parameters(), lr=DLRM_LR)
    sparse_opt = ex.SparseSGD(filter_out_sparse_param(ours), lr=DLRM_LR)
    ebc = FusedEmbeddingBagCollection(_dlrm_configs(ex.SPARSE, sizes, int(cfg["dim"]), _init_sizes(sizes, init)),
                                      optimizer_type=torch.optim.SGD, optimizer_kwargs={"lr": DLRM_LR},
                                      device=torch.device("cpu"))
    base = _torchrec_dlrm(ebc, cfg, ours)
    base.train()
    base_opt = torch.optim.SGD([p for n, p in base.named_parameters() if "embedding_bag_collection" not in n],
                               lr=DLRM_LR)
    inputs = [(b["dense"], _dlrm_kjt(b, ex.SPARSE, ex.MOD_IDX), b["label"].reshape(-1)) for b in batches]
    bce = nn.BCEWithLogitsLoss()
    with torch.no_grad():
        _sane_loss("ours", float(ours(batches[0])))
        _sane_loss("torchrec.models.dlrm.DLRM", float(bce(base(inputs[0][0], inputs[0][1]).reshape(-1),
                                                           inputs[0][2])))

    def ours_step(k):
        train_step(ours, batches[k], dense_opt, sparse_opt)

    def base_step(k):
        d, kjt, label = inputs[k]
        loss = bce(base(d, kjt).reshape(-1), label)
        loss.backward()          # the tables are updated here (fused EXACT_SGD)
        base_opt.step()
        base_opt.zero_grad()

    t = interleaved_steps({"ours": ours_step, "torchrec": base_step}, n_steps, warmup=warmup)
    tables = filter_out_sparse_param(ours)
    return {"t": t, "kernel": _kernel_names(ebc), "ours_physical_tables": len(tables),
            "ours_table_ids": int(sum(len(i) for i in tables.values()))}


def _dlrm_cfg(opts: BenchOptions) -> Dict[str, object]:
    """Defaults, then ``--quick``'s, then the options given (they win over both)."""
    cfg = dict(DLRM_DEFAULTS)
    if opts.quick:
        cfg.update(_DLRM_QUICK)
    user = {k: v for k, v in opts.extra.items() if v is not None}
    cfg.update({k: user[k] for k in DLRM_DEFAULTS if k in user})
    cfg["world_size"] = int(user.get("world_size") or 1)
    cfg["init"] = user.get("dlrm_init") or "oneflow"
    cfg["example_dir"] = user.get("example_dir")
    bottom = _int_list(cfg["bottom_mlp"])
    if not bottom or bottom[-1] != int(cfg["dim"]):
        raise click.ClickException(f"--bottom-mlp must end with --dim ({cfg['dim']}), got {cfg['bottom_mlp']!r}")
    if cfg["world_size"] < 1:
        raise click.ClickException(f"--world-size must be >= 1, got {cfg['world_size']}")
    return cfg


def _dlrm_detail(cfg, t, world, extra) -> Dict[str, object]:
    d = {"batch_per_rank": int(cfg["batch"]), "world_size": world, "embedding_dim": int(cfg["dim"]),
         "bottom_mlp": cfg["bottom_mlp"], "top_mlp": cfg["top_mlp"], "table_rows_cap": int(cfg["buckets"]),
         "ours_ms_per_step": round(t["ours"] * 1e3, 4), "baseline_ms_per_step": round(t["torchrec"] * 1e3, 4),
         "ours": "examples/dlrm DLRM (FeatureEngine + EmbeddingEngine, 26 dynamic tables), SparseSGD + SGD, "
                 f"lr {DLRM_LR}; no OneFlow paddings (TorchRec's arithmetic)",
         "baseline_does": "torchrec.models.dlrm.DLRM over FusedEmbeddingBagCollection (FBGEMM TBE, fused "
                          "EXACT_SGD in backward), 26 tables sized min(OneFlow table size, cap), SGD dense; KJTs "
                          "built before timing",
         "target_ratio_min": TARGET_RATIO}
    d.update(extra)
    return d


def run_dlrm(opts: BenchOptions) -> List[Case]:
    cfg = _dlrm_cfg(opts)
    ex = load_dlrm_example(find_dlrm_example(cfg.get("example_dir")))
    warmup = QUICK_WARMUP_STEPS if opts.quick else WARMUP_STEPS
    n_steps = 1 if opts.quick else max(1, opts.repeat) * STEPS_PER_REPEAT
    sizes = dlrm_sizes(ex, int(cfg["buckets"]))
    with tempfile.TemporaryDirectory(prefix="recis-bench-train-dlrm-") as tmp:
        batches = dlrm_batches(ex, tmp, int(cfg["batch"]), warmup + n_steps, sizes)
    b = int(cfg["batch"])
    cases = []
    for init in ("oneflow", "shared"):
        gc.collect()
        m = _measure_dlrm(ex, cfg, batches, sizes, warmup, n_steps, init)
        gc.collect()
        cases.append(Case(f"DLRM train step (ours), world 1, {init} init", "samples/s",
                          round(b / m["t"]["ours"], 2),
                          "torchrec.models.dlrm.DLRM (FusedEBC EXACT_SGD + SGD), world 1",
                          round(b / m["t"]["torchrec"], 2), higher_is_better=True,
                          detail=_dlrm_detail(cfg, m["t"], 1, {
                              "timed_steps": n_steps, "warmup_steps": warmup, "threads": torch.get_num_threads(),
                              "model_source": ex.source, "baseline_kernel": m["kernel"], "init": init,
                              "init_rule": _init_sizes.__doc__.split("``oneflow``")[1].strip(),
                              "ours_physical_tables": m["ours_physical_tables"],
                              "ours_table_ids": m["ours_table_ids"]})))
    world = int(cfg["world_size"])
    if world > 1:
        r = _launch_dlrm(world, cfg, ex.source, n_steps, warmup, opts.quick)
        init = str(cfg["init"])
        t = {"ours": r["ours_s"], "torchrec": r["torchrec_s"]}
        cases.append(Case(f"DLRM train step (ours), world {world}, {init} init", "samples/s",
                          round(world * b / t["ours"], 2),
                          f"torchrec.models.dlrm.DLRM under DistributedModelParallel (row-wise, fused EXACT_SGD), "
                          f"world {world}", round(world * b / t["torchrec"], 2), higher_is_better=True,
                          detail=_dlrm_detail(cfg, t, world, {
                              "timed_steps": n_steps, "warmup_steps": warmup, "model_source": ex.source,
                              "init": init, "threads_per_rank": r["threads"], "baseline_kernel": r["kernel"],
                              "step_time": "per side, the slowest rank's median step time",
                              "first_losses": r["first_losses"], "worker_code": r.get("worker_code"),
                              **({"collectives_per_rank": r["collectives"]} if any(r.get("collectives") or [])
                                 else {})})))
    return cases


def _launch_dlrm(world: int, cfg, example_dir: str, n_steps: int, warmup: int, quick: bool) -> Dict[str, object]:
    import json
    import subprocess
    from recis_compat.benchmarks.lookup_bench import _torchrun_cmd, _worker_env
    threads = max(1, torch.get_num_threads() // world)
    with tempfile.TemporaryDirectory(prefix="recis-bench-train-dlrm-") as tmp:
        out = os.path.join(tmp, "result.json")
        cmd = _torchrun_cmd() + ["--nproc_per_node", str(world), "--master_port", "0", "--rdzv_backend", "c10d",
                                 "--rdzv_endpoint", "localhost:0", "-m", "recis_compat.benchmarks.train_bench",
                                 "--worker", "--out", out, "--example-dir", example_dir, "--steps", str(n_steps),
                                 "--warmup", str(warmup), "--threads", str(threads)]
        for k in ("batch", "buckets", "dim", "bottom_mlp", "top_mlp", "init"):
            cmd += [f"--{k.replace('_', '-')}", str(cfg[k])]
        click.echo(f"bench train --model dlrm: torchrun with {world} ranks, {threads} thread(s) each ...", err=True)
        timeout = 600 if quick else 3600
        try:
            proc = subprocess.run(cmd, env=_worker_env(threads), capture_output=True, text=True, timeout=timeout,
                                  cwd=tmp)
        except subprocess.TimeoutExpired as e:
            raise click.ClickException(f"bench train --model dlrm: torchrun with {world} ranks timed out after "
                                       f"{timeout} s") from e
        if proc.returncode != 0 or not os.path.exists(out):
            raise click.ClickException(f"bench train --model dlrm: torchrun with {world} ranks failed "
                                       f"(exit {proc.returncode}):\n{proc.stderr[-4000:]}")
        with open(out) as f:
            return json.load(f)


PROFILE_ENV = "RECIS_COMPAT_BENCH_PROFILE_STEPS"


def _profile_collectives(step, n: int) -> Dict[str, object]:
    """Run ``step(0)``, ... ``step(n - 1)`` (the first batches again) under ``torch.profiler``
    (CPU): per step, the collectives issued (gloo / c10d events by name: count, milliseconds of
    CPU time in them, waits included) and the step's wall time."""
    import time
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        for k in range(n):
            step(k)
        wall = time.perf_counter() - t0
    by_name: Dict[str, List[float]] = {}
    for e in prof.key_averages():
        if e.key.startswith("gloo:") or e.key in ("c10d::allreduce_", "c10d::alltoall_base_", "c10d::wait"):
            by_name[e.key] = [e.count / n, round(e.cpu_time_total / 1e3 / n, 3)]
    return {"per_step": by_name, "profiled_ms_per_step": round(wall * 1e3 / n, 3)}


def _worker_main(argv: Optional[List[str]] = None) -> None:
    """One rank of ``bench train --model dlrm --world-size N``: ours sharded by
    ``shard_model`` (dynamic tables by RecIS's slice rule, dense DDP), TorchRec's DLRM under
    DistributedModelParallel (row-wise FBGEMM tables, fused EXACT_SGD); interleaved steps on
    this rank's slice of each global batch. Rank 0 writes ``--out``."""
    import argparse
    import json
    import torch.distributed as dist
    from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
    from torchrec.distributed.model_parallel import DefaultDataParallelWrapper, DistributedModelParallel
    from torchrec.distributed.sharding_plan import construct_module_sharding_plan, row_wise
    from torchrec.distributed.types import ShardingPlan
    from torchrec import EmbeddingBagCollection
    from fbgemm_gpu.split_embedding_configs import EmbOptimType

    from recis_compat.backend.sharding import init_process_group, shard_model
    from recis_compat.benchmarks.lookup_bench import _dmp_kernel_name, interleaved_steps
    from recis_compat.nn.modules.hashtable import filter_out_sparse_param

    ap = argparse.ArgumentParser(prog="train_bench --worker")
    ap.add_argument("--worker", action="store_true")
    ap.add_argument("--out", required=True)
    ap.add_argument("--example-dir", dest="example_dir", required=True)
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--warmup", type=int, required=True)
    ap.add_argument("--threads", type=int, default=1)
    for k in ("batch", "buckets", "dim"):
        ap.add_argument(f"--{k}", type=int, required=True)
    ap.add_argument("--bottom-mlp", dest="bottom_mlp", required=True)
    ap.add_argument("--top-mlp", dest="top_mlp", required=True)
    ap.add_argument("--init", choices=("oneflow", "shared"), required=True)
    args = ap.parse_args(argv)
    cfg = vars(args)
    torch.set_num_threads(max(1, args.threads))
    init_process_group("cpu")
    rank, world = dist.get_rank(), dist.get_world_size()
    ex = load_dlrm_example(pathlib.Path(args.example_dir))
    sizes = dlrm_sizes(ex, args.buckets)
    n = args.warmup + args.steps
    data_dir = [tempfile.mkdtemp(prefix="recis-bench-dlrm-data-") if rank == 0 else None]
    dist.broadcast_object_list(data_dir, src=0)
    if rank == 0:
        _write_dlrm_data(ex, data_dir[0], n * args.batch * world, sizes)
    dist.barrier()
    files = sorted(str(p) for p in (pathlib.Path(data_dir[0]) / "train").glob("*.parquet"))
    batches = []
    for item in ex.make_dataset(files, args.batch, drop_remainder=True):
        end, data = item
        if end or data is None:
            break
        batches.append(data)
    batches = batches[rank::world][:n]
    dist.barrier()
    if rank == 0:
        import shutil
        shutil.rmtree(data_dir[0], ignore_errors=True)

    torch.manual_seed(42)
    ours = _ours_dlrm(ex, cfg, _init_sizes(sizes, args.init))
    dense_opt = torch.optim.SGD(ours.parameters(), lr=DLRM_LR)
    sparse_opt = ex.SparseSGD(filter_out_sparse_param(ours), lr=DLRM_LR)
    ours_dmp = shard_model(ours, data_parallel_wrapper=DefaultDataParallelWrapper(static_graph=False,
                                                                                  find_unused_parameters=False))
    sharder = EmbeddingBagCollectionSharder(fused_params={"optimizer": EmbOptimType.EXACT_SGD,
                                                          "learning_rate": DLRM_LR})
    ebc = EmbeddingBagCollection(_dlrm_configs(ex.SPARSE, sizes, args.dim, _init_sizes(sizes, args.init)),
                                 device=torch.device("meta"))
    base = _torchrec_dlrm(ebc, cfg, ours)
    plan = construct_module_sharding_plan(ebc, {f"t_{c}": row_wise(compute_kernel="fused") for c in ex.SPARSE},
                                          sharder=sharder, local_size=world, world_size=world, device_type="cpu")
    base_dmp = DistributedModelParallel(base, device=torch.device("cpu"),
                                        plan=ShardingPlan({"sparse_arch.embedding_bag_collection": plan}),
                                        sharders=[sharder])
    base_opt = torch.optim.SGD([p for nm, p in base_dmp.named_parameters() if "embedding_bag_collection" not in nm],
                               lr=DLRM_LR)
    inputs = [(b["dense"], _dlrm_kjt(b, ex.SPARSE, ex.MOD_IDX), b["label"].reshape(-1)) for b in batches]
    bce = nn.BCEWithLogitsLoss()
    with torch.no_grad():
        first = [float(ours_dmp(batches[0])), float(bce(base_dmp(inputs[0][0], inputs[0][1]).reshape(-1),
                                                        inputs[0][2]))]
    _sane_loss("ours", first[0])
    _sane_loss("torchrec.models.dlrm.DLRM", first[1])

    def ours_step(k):
        train_step(ours_dmp, batches[k], dense_opt, sparse_opt)

    def base_step(k):
        d, kjt, label = inputs[k]
        loss = bce(base_dmp(d, kjt).reshape(-1), label)
        loss.backward()
        base_opt.step()
        base_opt.zero_grad()

    t = interleaved_steps({"ours": ours_step, "torchrec": base_step}, args.steps, warmup=args.warmup)
    # instrumentation, after the timed steps (RECIS_COMPAT_BENCH_PROFILE_STEPS=n): n more steps
    # of each side under torch.profiler -> the collectives per step and the time in them
    profile_steps = int(os.environ.get(PROFILE_ENV, "0") or 0)
    if profile_steps > 0:
        t["collectives"] = {name: _profile_collectives(fn, min(profile_steps, args.warmup + args.steps))
                            for name, fn in (("ours", ours_step), ("torchrec", base_step))}
    got = [None] * world
    dist.all_gather_object(got, t)
    if rank == 0:
        result = {"ours_s": max(g["ours"] for g in got), "torchrec_s": max(g["torchrec"] for g in got),
                  "collectives": [g.get("collectives") for g in got],
                  "threads": torch.get_num_threads(), "kernel": _dmp_kernel_name(base_dmp), "first_losses": first,
                  # which checkout the ranks ran (a worktree's or the installed one)
                  "worker_code": [os.path.abspath(__file__), os.path.abspath(sys.modules["recis_compat"].__file__)]}
        with open(args.out + ".tmp", "w") as f:
            json.dump(result, f)
        os.replace(args.out + ".tmp", args.out)
    dist.barrier()
    dist.destroy_process_group()
    # Skip interpreter teardown, as lookup_bench's worker does: two-rank processes that ran
    # TorchRec's row-wise EmbeddingBagCollection on gloo sometimes abort at exit after the
    # results are written (docs/reliability.md, the known abort at a normal exit).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


command = common.make_command(
    "train", run, help=DESCRIPTION,
    extra_options=[
        click.option("--model", type=click.Choice(["deepfm", "dlrm"]), default="deepfm", show_default=True,
                     help="deepfm: examples/deepfm vs a hand-written TorchRec DeepFM; dlrm: examples/dlrm vs "
                          "torchrec.models.dlrm.DLRM."),
        click.option("--batch", type=int, default=None,
                     help=f"Rows per batch (per rank).  [default: deepfm {DEFAULTS['batch']}, dlrm "
                          f"{DLRM_DEFAULTS['batch']}]"),
        click.option("--buckets", type=int, default=None,
                     help=f"deepfm: rows per TorchRec table (ids % buckets); dlrm: cap on OneFlow's table sizes "
                          f"(synthetic ids stay below it).  [default: {DEFAULTS['buckets']}]"),
        click.option("--world-size", "world_size", type=int, default=1, show_default=True,
                     help="dlrm: N > 1 also launches torchrun with N ranks (both models sharded row-wise)."),
        click.option("--dlrm-init", "dlrm_init", type=click.Choice(["oneflow", "shared"]), default="oneflow",
                     show_default=True, help="dlrm, --world-size N: the embedding init of the N-rank case "
                                             "(world 1 measures both; see _init_sizes)."),
        click.option("--dim", type=int, default=None, help=f"dlrm: embedding dim.  [default: {DLRM_DEFAULTS['dim']}]"),
        click.option("--bottom-mlp", "bottom_mlp", default=None,
                     help=f"dlrm: bottom MLP sizes, ending with --dim.  [default: {DLRM_DEFAULTS['bottom_mlp']}]"),
        click.option("--top-mlp", "top_mlp", default=None,
                     help=f"dlrm: top MLP sizes (a final 1 is added).  [default: {DLRM_DEFAULTS['top_mlp']}]"),
        click.option("--example-dir", "example_dir", type=click.Path(file_okay=False), default=None,
                     help=f"The example directory (deepfm: default ${ENV_EXAMPLE_DIR}, else examples/deepfm of "
                          f"the source tree, else a bundled copy; dlrm: ${ENV_DLRM_EXAMPLE}, else examples/dlrm)."),
    ])


if __name__ == "__main__":
    _worker_main()
