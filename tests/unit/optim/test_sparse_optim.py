"""Row-sparse optimizers (``recis.optim.SparseAdamW / SparseAdam / SparseAdamWTF``) on dynamic
tables, checked against an independent NumPy implementation of RecIS's API:

* per table, running powers ``b1p, b2p`` (float32, float64 for SparseAdam) advanced once per
  ``step()`` in which that table had gradients;
* ``alpha = -lr sqrt(1-b2p)/(1-b1p)``; per row with gradient g (summed over repeats):
  ``theta *= D; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2; theta += alpha m/(sqrt(v)+eps)``;
* ``D``: SparseAdamW ``1 - lr wd``, SparseAdamWTF ``1 - wd``, SparseAdam ``1``;
* rows without a gradient are not touched at all.

Plus gradient accumulation, LR schedulers, state_dict / load_state_dict, eviction, errors,
RecIS's own SparseAdamWTF-vs-torch.AdamW test, and dense AdamWTF fuse on/off agreement in
float32 with several groups (tests/unit/optim/test_adamw_tf.py covers one float64 group).
"""
import math

import numpy as np
import pytest
import torch
from torch import nn

from recis.nn.hashtable_hook import FilterHook
from recis.nn.initializers import ConstantInitializer
from recis.nn.modules.hashtable import HashTable, filter_out_sparse_param
from recis.nn.modules.hashtable_hook_impl import HashtableHookFactory
from recis.optim import AdamWTF, SparseAdam, SparseAdamW, SparseAdamWTF

DIM = 4
INIT = 0.25       # initializer value of rows created by a lookup
# non-default hyper-parameters so that every term is visible in float32: a large eps shows the
# TF epsilon form, a large wd the decay factor, small betas the bias correction
HP = dict(lr=0.05, beta1=0.8, beta2=0.95, eps=1e-3, weight_decay=0.1)

KINDS = {
    "adamw": (SparseAdamW, "sparse_adamw_", np.float32),
    "adam": (SparseAdam, "sparse_adam_", np.float64),
    "adamw_tf": (SparseAdamWTF, "sparse_adamw_tf_", np.float32),
}
TORCH_POWER = {np.float32: torch.float32, np.float64: torch.float64}


def decay_of(kind, lr, wd):
    return {"adamw": 1.0 - lr * wd, "adamw_tf": 1.0 - wd, "adam": 1.0}[kind]


# ----------------------------------------------------------------------------- NumPy reference
class RefSparseAdam:
    """§1.6.2 in NumPy, keyed by (table, id); values in float64, powers in ``power_dtype``."""

    def __init__(self, kind, power_dtype, lr, beta1, beta2, eps, weight_decay):
        self.kind, self.pd = kind, power_dtype
        self.lr, self.b1, self.b2, self.eps, self.wd = lr, beta1, beta2, eps, weight_decay
        self.theta, self.m, self.v, self.powers = {}, {}, {}, {}

    def add_table(self, table, rows: dict):
        self.theta[table] = {k: np.asarray(x, np.float64).copy() for k, x in rows.items()}
        self.m[table], self.v[table] = {}, {}
        self.powers[table] = (self.pd(1.0), self.pd(1.0))

    def ensure(self, table, ids):
        """Ids a training lookup inserted start at INIT."""
        for i in ids:
            self.theta[table].setdefault(int(i), np.full(DIM, INIT, np.float64))

    def step(self, grads: dict, lr=None):
        """``grads``: {table: {id: summed gradient}} (tables without gradients absent or empty)."""
        lr = self.lr if lr is None else lr
        for table, g in grads.items():
            if not g:
                continue
            b1p, b2p = self.powers[table]
            b1p = self.pd(b1p * self.pd(self.b1))
            b2p = self.pd(b2p * self.pd(self.b2))
            self.powers[table] = (b1p, b2p)
            alpha = -lr * math.sqrt(1.0 - float(b2p)) / (1.0 - float(b1p))
            d = decay_of(self.kind, lr, self.wd)
            for i, gi in g.items():
                m = self.b1 * self.m[table].get(i, np.zeros(DIM)) + (1 - self.b1) * gi
                v = self.b2 * self.v[table].get(i, np.zeros(DIM)) + (1 - self.b2) * gi * gi
                self.m[table][i], self.v[table][i] = m, v
                self.theta[table][i] = self.theta[table][i] * d + alpha * m / (np.sqrt(v) + self.eps)


def table_arrays(ht: HashTable, prefix: str):
    """{id: (theta, m, v)} of every stored id, float64 copies."""
    ids, rows = ht.ids_map()
    sg = ht.slot_group()
    th = ht.impl.embedding.index_select(0, rows).double()
    m = sg.slot_by_name(prefix + "exp_avg").value().index_select(0, rows).double()
    v = sg.slot_by_name(prefix + "exp_avg_sq").value().index_select(0, rows).double()
    return {int(i): (th[k].numpy(), m[k].numpy(), v[k].numpy()) for k, i in enumerate(ids.tolist())}


def raw_rows(ht: HashTable, prefix: str):
    """{id: (theta, m, v)} as exact tensors (bit-level comparisons)."""
    ids, rows = ht.ids_map()
    sg = ht.slot_group()
    out = {}
    for name in ("embedding", prefix + "exp_avg", prefix + "exp_avg_sq"):
        t = ht.impl.embedding if name == "embedding" else sg.slot_by_name(name).value()
        out[name] = t.index_select(0, rows).clone()
    return {int(i): tuple(out[n][k] for n in out) for k, i in enumerate(ids.tolist())}


def assert_matches_ref(ht, table, ref, prefix, tol):
    got = table_arrays(ht, prefix)
    assert set(got) == set(ref.theta[table]), (sorted(got), sorted(ref.theta[table]))
    for i, (th, m, v) in got.items():
        np.testing.assert_allclose(th, ref.theta[table][i], rtol=tol, atol=tol, err_msg=f"{table} id {i} theta")
        np.testing.assert_allclose(m, ref.m[table].get(i, np.zeros(DIM)), rtol=tol, atol=tol,
                                   err_msg=f"{table} id {i} exp_avg")
        np.testing.assert_allclose(v, ref.v[table].get(i, np.zeros(DIM)), rtol=tol, atol=tol,
                                   err_msg=f"{table} id {i} exp_avg_sq")


# ----------------------------------------------------------------------------- model and data
class TwoTables(nn.Module):
    """Two dynamic tables; ``forward(batch)`` looks up each ``(key, ids)`` of the batch and
    returns ``sum(emb * weight)`` so that every id's gradient is the sum of its weight rows."""

    def __init__(self, tag, dtype, filter_hook=None):
        super().__init__()
        self.a = HashTable([DIM], block_size=4, dtype=dtype, name=f"{tag}_a",
                           initializer=ConstantInitializer(init_val=INIT), filter_hook=filter_hook)
        self.b = HashTable([DIM], block_size=4, dtype=dtype, name=f"{tag}_b",
                           initializer=ConstantInitializer(init_val=INIT))

    def forward(self, batch):
        loss = 0
        for key, ids, w in batch:
            emb = getattr(self, key)(torch.tensor(ids, dtype=torch.int64))
            loss = loss + (emb * w).sum()
        return loss


# (table key, ids) lookups per step; a table absent from a step gets no gradient in it. Ids repeat
# inside a lookup and across two lookups of one step; ids >= 40 / >= 150 are new (inserted).
SCHEDULE = [
    [("a", [1, 2, 2, 5, 5, 5, 40]), ("a", [2, 7]), ("b", [100, 101, 101])],
    [("a", [1, 3, 3, 41, 42, 43])],                                   # b: no gradient
    [("a", [5, 40, 44, 45, 46, 47, 1]), ("b", [100, 102, 150])],
    [("b", [101, 101, 150, 151])],                                    # a: no gradient
    [("a", [1, 2]), ("b", [100])],
]


def make_batches(dtype, schedule=SCHEDULE, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for lookups in schedule:
        out.append([(key, ids, torch.randn(len(ids), DIM, generator=g, dtype=dtype)) for key, ids in lookups])
    return out


def grads_of(batch, names):
    """{table name: {id: summed gradient (float64)}} of one step's lookups."""
    out = {n: {} for n in names.values()}
    for key, ids, w in batch:
        for i, wi in zip(ids, w.double().numpy()):
            d = out[names[key]]
            d[i] = d.get(i, np.zeros(DIM)) + wi
    return out


def build(kind, tag, dtype, seed=1, **hp):
    """Model with pre-populated tables (a: ids 0..11, b: ids 100..107), its optimizer and the
    reference at the same starting point."""
    cls, prefix, pd = KINDS[kind]
    model = TwoTables(tag, dtype)
    g = torch.Generator().manual_seed(seed)
    init = {}
    for key, ids in (("a", list(range(12))), ("b", list(range(100, 108)))):
        vals = torch.randn(len(ids), DIM, generator=g, dtype=dtype)
        getattr(model, key).insert(torch.tensor(ids), vals)
        init[key] = {i: vals[k].double().numpy() for k, i in enumerate(ids)}
    params = filter_out_sparse_param(model)
    hp = {**HP, **hp}
    opt = cls(params, **hp)
    ref = RefSparseAdam(kind, pd, **hp)
    names = {"a": f"{tag}_a", "b": f"{tag}_b"}
    for key, n in names.items():
        ref.add_table(n, init[key])
    return model, opt, ref, names, prefix


def ids_of(batch, key):
    return sorted({i for k, ids, _ in batch if k == key for i in ids})


# ----------------------------------------------------------------------------- 1. the update
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kind", list(KINDS))
def test_steps_match_numpy_reference(kind, dtype):
    model, opt, ref, names, prefix = build(kind, f"upd_{kind}", dtype)
    params = filter_out_sparse_param(model)
    assert list(params) == [names["a"], names["b"]]
    assert all(params[n] is getattr(model, k).impl for k, n in names.items())
    tol = 2e-5 if dtype == torch.float32 else 1e-12
    pd = KINDS[kind][2]
    for step, batch in enumerate(make_batches(dtype), 1):
        before = {k: raw_rows(getattr(model, k), prefix) for k in names}
        opt.zero_grad()
        loss = model(batch)
        loss.backward()
        opt.step()
        for key, n in names.items():
            ref.ensure(n, ids_of(batch, key))
        ref.step(grads_of(batch, names))
        for key, n in names.items():
            ht = getattr(model, key)
            assert_matches_ref(ht, n, ref, prefix, tol)
            # powers: exact, in the optimizer's power dtype, advanced only with gradients
            assert opt.beta_powers(n) == tuple(float(x) for x in ref.powers[n]), (step, n)
            # rows without a gradient in this step: bit-identical (no decay, no moment decay)
            touched = set(ids_of(batch, key))
            after = raw_rows(ht, prefix)
            for i, old in before[key].items():
                if i not in touched:
                    assert all(torch.equal(x, y) for x, y in zip(old, after[i])), (step, n, i)
                else:
                    assert not torch.equal(old[0], after[i][0]), (step, n, i)
    # table b skipped step 2, table a step 4: each advanced 4 times out of 5
    b1, b2 = HP["beta1"], HP["beta2"]
    for n in names.values():
        p1, p2 = opt.beta_powers(n)
        assert p1 == pytest.approx(b1 ** 4, rel=1e-6) and p2 == pytest.approx(b2 ** 4, rel=1e-6)
    sd = opt.state_dict()
    assert sd[prefix + "beta1"].dtype == TORCH_POWER[pd]


@pytest.mark.parametrize("kind", list(KINDS))
def test_decay_factor_on_zero_gradient_row(kind):
    # a row with gradient 0 and fresh moments: m = v = 0, update 0, so theta_new = theta * D exactly
    cls, prefix, _ = KINDS[kind]
    ht = HashTable([DIM], dtype=torch.float64, name=f"decay_{kind}")
    model = nn.ModuleDict({"t": ht})
    theta = torch.tensor([[1.5, -2.0, 0.5, 4.0], [1.0, 1.0, 1.0, 1.0]], dtype=torch.float64)
    ht.insert(torch.tensor([7, 8]), theta)
    opt = cls(filter_out_sparse_param(model), **HP)
    (ht(torch.tensor([7, 8])) * torch.tensor([[0.0] * DIM, [1.0] * DIM], dtype=torch.float64)).sum().backward()
    opt.step()
    d = decay_of(kind, HP["lr"], HP["weight_decay"])
    rows = ht.impl.find_rows(torch.tensor([7]))
    torch.testing.assert_close(ht.impl.embedding[rows], theta[:1] * d, rtol=0, atol=1e-15)
    m = ht.slot_group().slot_by_name(prefix + "exp_avg").value()
    assert torch.equal(m[rows], torch.zeros(1, DIM, dtype=torch.float64))
    expected_d = {"adamw": 1 - 0.05 * 0.1, "adamw_tf": 0.9, "adam": 1.0}[kind]
    assert d == pytest.approx(expected_d)


@pytest.mark.parametrize("kind", list(KINDS))
def test_slots_are_table_slots(kind):
    cls, prefix, _ = KINDS[kind]
    model = TwoTables(f"slots_{kind}", torch.float32)
    model.a.insert(torch.arange(3), torch.ones(3, DIM))
    opt = cls(filter_out_sparse_param(model))
    for ht in (model.a, model.b):
        names = ht.slot_group().names()
        assert prefix + "exp_avg" in names and prefix + "exp_avg_sq" in names
        for s in ("exp_avg", "exp_avg_sq"):
            val = ht.slot_group().slot_by_name(prefix + s).value()
            assert val.shape == ht.impl.embedding.shape and val.dtype == ht.dtype
            assert not val.any()
    # slots grow with the table (block_size 4, 30 new ids)
    model.a(torch.arange(100, 130)).sum().backward()
    opt.step()
    m = model.a.slot_group().slot_by_name(prefix + "exp_avg").value()
    assert m.shape == model.a.impl.embedding.shape and m.shape[0] >= 33
    rows = model.a.impl.find_rows(torch.arange(100, 130))
    torch.testing.assert_close(m[rows], torch.full((30, DIM), 1 - 0.9))   # (1-beta1) * g, g = 1


def test_two_lookups_of_one_table_sum_their_gradients():
    # the same id looked up in two lookups of one step: one update with the summed gradient
    model, opt, ref, names, prefix = build("adamw", "sum2", torch.float64)
    batch = [("a", [3, 3], torch.full((2, DIM), 0.5, dtype=torch.float64)),
             ("a", [3], torch.full((1, DIM), 2.0, dtype=torch.float64))]
    model(batch).backward()
    rows, grad = model.a.impl.grad_rows()
    assert rows.tolist() == model.a.impl.find_rows(torch.tensor([3])).tolist()
    torch.testing.assert_close(grad, torch.full((1, DIM), 3.0, dtype=torch.float64))
    opt.step()
    ref.step(grads_of(batch, names))
    assert_matches_ref(model.a, names["a"], ref, prefix, 1e-12)


def test_add_params_and_dedupe_by_identity():
    a = HashTable([DIM], name="add_a", initializer=ConstantInitializer(init_val=INIT))
    b = HashTable([DIM], name="add_b", initializer=ConstantInitializer(init_val=INIT))
    opt = SparseAdamW({"add_a": a.impl, "alias_of_a": a.impl})
    assert list(opt.tables) == ["add_a"]
    assert "sparse_adamw_exp_avg" not in b.slot_group().names()
    opt.add_params({"add_b": b.impl, "again_a": a.impl})
    assert list(opt.tables) == ["add_a", "add_b"]
    assert opt.beta_powers("add_b") == (1.0, 1.0)
    assert {"sparse_adamw_exp_avg", "sparse_adamw_exp_avg_sq"} <= set(b.slot_group().names())
    b(torch.tensor([3, 3, 4])).sum().backward()
    opt.step()
    assert opt.beta_powers("add_a") == (1.0, 1.0) and opt.beta_powers("add_b")[0] == pytest.approx(0.9)
    rows = b.impl.find_rows(torch.tensor([3, 4]))
    m = b.slot_group().slot_by_name("sparse_adamw_exp_avg").value()[rows]
    torch.testing.assert_close(m, torch.tensor([[0.2] * DIM, [0.1] * DIM]))   # (1-b1) * g, g = 2 and 1


# ----------------------------------------------------------------------------- 2. accumulation
@pytest.mark.parametrize("zero_first", [False, True])
def test_grad_accumulation(zero_first):
    model, opt, ref, names, prefix = build("adamw", f"acc{int(zero_first)}", torch.float64)
    opt.set_grad_accum_steps(3)
    sched = SCHEDULE * 2   # 10 micro-batches: updates after micro 3, 6, 9
    batches = make_batches(torch.float64, sched, seed=3)
    window = []
    for k, batch in enumerate(batches, 1):
        if zero_first:
            opt.zero_grad()
        before = {key: raw_rows(getattr(model, key), prefix) for key in names}
        model(batch).backward()
        opt.step()
        if not zero_first:
            opt.zero_grad()
        for key, n in names.items():
            ref.ensure(n, ids_of(batch, key))
        window.append(grads_of(batch, names))
        if k % 3 == 0:
            acc = {}
            for g in window:
                for n, per_id in g.items():
                    for i, gi in per_id.items():
                        acc.setdefault(n, {})
                        acc[n][i] = acc[n].get(i, np.zeros(DIM)) + gi
            ref.step({n: {i: gi / 3.0 for i, gi in per_id.items()} for n, per_id in acc.items()})
            window = []
            if not zero_first:
                assert not model.a.impl.has_grad() and not model.b.impl.has_grad()
        else:
            # no update; the buffers keep every micro-batch's gradients
            for key in names:
                after = raw_rows(getattr(model, key), prefix)
                for i, old in before[key].items():
                    assert all(torch.equal(x, y) for x, y in zip(old, after[i])), (k, key, i)
            for key, n in names.items():
                seen = any(g[n] for g in window)
                assert getattr(model, key).impl.has_grad() == seen, (k, key)
        for key, n in names.items():
            assert_matches_ref(getattr(model, key), n, ref, prefix, 1e-12)
            assert opt.beta_powers(n) == tuple(float(x) for x in ref.powers[n])
    assert opt.state_dict()[prefix + "step"].item() == 3


# ----------------------------------------------------------------------------- 3. LR scheduler
@pytest.mark.parametrize("kind", list(KINDS))
def test_step_lr_scheduler_changes_lr(kind):
    model, opt, ref, names, prefix = build(kind, f"lr_{kind}", torch.float64)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    assert opt.param_groups[0]["initial_lr"] == HP["lr"]
    for step, batch in enumerate(make_batches(torch.float64, seed=5)):
        lr = HP["lr"] * 0.5 ** (step // 2)
        assert opt.param_groups[0]["lr"] == pytest.approx(lr)
        opt.zero_grad()
        model(batch).backward()
        opt.step()
        sched.step()
        for key, n in names.items():
            ref.ensure(n, ids_of(batch, key))
        ref.step(grads_of(batch, names), lr=lr)
        for key, n in names.items():
            assert_matches_ref(getattr(model, key), n, ref, prefix, 1e-12)
    assert opt.param_groups[0]["lr"] == pytest.approx(HP["lr"] * 0.5 ** 2)


# ----------------------------------------------------------------------------- 4. vs torch AdamW
class RecISModel(nn.Module):
    """RecIS tests/optim/sparse_adamw_test.py's model on CPU: a table and a zero dense
    parameter whose row k takes a gradient from call k on (as the table rows of call k's ids)."""

    def __init__(self, name, order=3):
        super().__init__()
        self._emb_one = HashTable([DIM], block_size=1024, name=name)
        self._dense_param = nn.Parameter(torch.zeros([order, DIM], dtype=torch.float32))
        self._cur = 0

    def forward(self, ids):
        ret = torch.concat([self._emb_one(ids), self._dense_param[: self._cur + 1, :]], dim=0)
        self._cur += 1
        return ret


@pytest.mark.parametrize("prefilled", [False, True], ids=["missing", "no_missing"])
def test_sparse_adamw_tf_matches_torch_adamw_from_zero(prefilled):
    model = RecISModel(f"recis_{prefilled}")
    if prefilled:
        model._emb_one.insert(torch.arange(2048), torch.zeros([2048, DIM]))
    optim = SparseAdamWTF(param_dict=filter_out_sparse_param(model))
    dense_optim = torch.optim.AdamW(model.parameters())
    params = list(model.parameters())
    assert len(params) == 1 and params[0] is model._dense_param
    bounds = [512, 1024, 1536]
    for step, n in enumerate(bounds):
        emb = model(torch.arange(n))
        torch.sum(emb).backward()
        optim.step()
        dense_optim.step()
        optim.zero_grad()
        dense_optim.zero_grad()
        tol = 1e-5 if step < 2 else 1e-4
        lo = 0
        for k, hi in enumerate(bounds[: step + 1]):
            rows = model._emb_one.impl.find_rows(torch.arange(lo, hi))
            assert (rows >= 0).all()
            got = model._emb_one.impl.embedding[rows]
            want = model._dense_param[k].detach().expand_as(got)
            assert torch.allclose(got, want, rtol=tol, atol=tol), (step, k, (got - want).abs().max())
            lo = hi
        if prefilled:   # ids never looked up stay exactly zero
            rows = model._emb_one.impl.find_rows(torch.arange(bounds[step], 2048))
            assert not model._emb_one.impl.embedding[rows].any()
    assert model._dense_param.abs().min() > 0   # every dense row was trained


# ----------------------------------------------------------------------------- 5. state dict
@pytest.mark.parametrize("opt_first", [True, False])
@pytest.mark.parametrize("kind", list(KINDS))
def test_state_dict_resume_continues_exactly(kind, opt_first):
    cls, prefix, pd = KINDS[kind]
    batches = make_batches(torch.float32, seed=7)
    model, opt, _, names, _ = build(kind, f"sd_{kind}", torch.float32)
    for batch in batches[:3]:
        opt.zero_grad()
        model(batch).backward()
        opt.step()
    opt.zero_grad()
    sd = opt.state_dict()
    a, b = names["a"], names["b"]
    assert set(sd) == {prefix + k for k in ("step", "beta1", "beta2", f"beta1:{a}", f"beta2:{a}",
                                            f"beta1:{b}", f"beta2:{b}")}
    assert sd[prefix + "step"].dtype == torch.int64 and sd[prefix + "step"].shape == (1,)
    assert sd[prefix + "step"].item() == 3
    for k, v in sd.items():
        if k != prefix + "step":
            assert v.dtype == TORCH_POWER[pd] and v.dim() == 0, k
    # table b had no gradient in step 2: its powers lag table a's by one factor
    assert opt.beta_powers(a) == (float(sd[f"{prefix}beta1:{a}"]), float(sd[f"{prefix}beta2:{a}"]))
    assert opt.beta_powers(b) == (float(sd[f"{prefix}beta1:{b}"]), float(sd[f"{prefix}beta2:{b}"]))
    assert float(sd[prefix + "beta1"]) == opt.beta_powers(a)[0]
    assert opt.beta_powers(a)[0] == pytest.approx(HP["beta1"] ** 3) and \
        opt.beta_powers(b)[0] == pytest.approx(HP["beta1"] ** 2)
    # state_dict returns copies
    sd[f"{prefix}beta1:{a}"].fill_(0.5)
    assert opt.beta_powers(a)[0] != 0.5
    sd = opt.state_dict()

    # a copy of the tables (renamed: one name per process) under the original table names
    copy = TwoTables(f"sd_{kind}_copy", torch.float32)
    pairs = ((model.a, copy.a), (model.b, copy.b))

    def load_tables():
        for src, dst in pairs:
            dst.impl.load_state_dict(src.impl.state_dict())

    if not opt_first:
        load_tables()
    opt2 = cls({a: copy.a.impl, b: copy.b.impl}, **HP)
    if opt_first:
        load_tables()
    assert opt2.beta_powers(a) == (1.0, 1.0) != opt.beta_powers(a)
    opt2.load_state_dict(sd)
    assert opt2.beta_powers(a) == opt.beta_powers(a) and opt2.beta_powers(b) == opt.beta_powers(b)
    for k, v in opt2.state_dict().items():
        assert torch.equal(v, sd[k]) and v.dtype == sd[k].dtype, k
    for src, dst in pairs:
        for i, vals in raw_rows(src, prefix).items():
            assert all(torch.equal(x, y) for x, y in zip(vals, raw_rows(dst, prefix)[i]))

    for batch in batches[3:]:
        for mdl, o in ((model, opt), (copy, opt2)):
            o.zero_grad()
            mdl(batch).backward()
            o.step()
    for src, dst in pairs:
        got, want = raw_rows(dst, prefix), raw_rows(src, prefix)
        assert set(got) == set(want)
        for i in want:
            assert all(torch.equal(x, y) for x, y in zip(want[i], got[i])), (src.name, i)
    for k, v in opt2.state_dict().items():
        assert torch.equal(v, opt.state_dict()[k]), k


@pytest.mark.parametrize("kind", list(KINDS))
def test_load_recis_style_state_dict_sets_every_table(kind):
    cls, prefix, pd = KINDS[kind]
    model = TwoTables(f"rsd_{kind}", torch.float32)
    opt = cls(filter_out_sparse_param(model))
    dt = TORCH_POWER[pd]
    opt.load_state_dict({prefix + "step": torch.tensor([5], dtype=torch.int64),
                         prefix + "beta1": torch.tensor(0.5, dtype=dt),
                         prefix + "beta2": torch.tensor(0.25, dtype=dt)})
    for n in (model.a.name, model.b.name):
        assert opt.beta_powers(n) == (0.5, 0.25)
    assert opt.state_dict()[prefix + "step"].tolist() == [5]
    # the next update advances from the loaded powers: alpha uses 0.5*b1 and 0.25*b2
    model.a.insert(torch.tensor([1]), torch.zeros(1, DIM))
    model.a(torch.tensor([1])).sum().backward()
    opt.step()
    b1p, b2p = 0.5 * 0.9, 0.25 * 0.999
    if pd is np.float32:
        b1p, b2p = float(np.float32(0.5) * np.float32(0.9)), float(np.float32(0.25) * np.float32(0.999))
    assert opt.beta_powers(model.a.name) == (b1p, b2p)
    assert opt.beta_powers(model.b.name) == (0.5, 0.25)
    alpha = -1e-3 * math.sqrt(1 - b2p) / (1 - b1p)
    m, v = 0.1, 0.001
    want = alpha * m / (math.sqrt(v) + 1e-8)
    torch.testing.assert_close(model.a.impl.embedding[model.a.impl.find_rows(torch.tensor([1]))],
                               torch.full((1, DIM), want), rtol=1e-5, atol=1e-8)
    with pytest.raises(KeyError, match="prefix"):
        opt.load_state_dict({"other_step": torch.tensor([1])})


# ----------------------------------------------------------------------------- 6. eviction
@pytest.mark.parametrize("kind", list(KINDS))
def test_eviction_resets_optimizer_slots(kind):
    cls, prefix, pd = KINDS[kind]
    model = TwoTables(f"evict_{kind}", torch.float64, filter_hook=FilterHook("GlobalStepFilter", {"filter_step": 1}))
    ht = model.a
    filt = HashtableHookFactory().get_filters()["GlobalStepFilter"][ht]
    opt = cls(filter_out_sparse_param(model), **HP)
    ref = RefSparseAdam(kind, pd, **HP)
    ref.add_table(ht.name, {})
    w = lambda n, s: torch.full((n, DIM), s, dtype=torch.float64)  # noqa: E731
    steps = [([1, 2, 3], w(3, 1.0)), ([3, 4], w(2, -0.5))]
    for ids, wt in steps:                       # global steps 0 and 1
        opt.zero_grad()
        (ht(torch.tensor(ids)) * wt).sum().backward()
        opt.step()
        ref.ensure(ht.name, ids)
        ref.step({ht.name: {i: wt[0].numpy().copy() for i in ids}})
        filt.update_step()
    assert filt.global_step == 2
    freed = ht.impl.find_rows(torch.tensor([1, 2]))
    kept = ht.impl.find_rows(torch.tensor([3, 4]))
    m_slot = ht.slot_group().slot_by_name(prefix + "exp_avg").value()
    v_slot = ht.slot_group().slot_by_name(prefix + "exp_avg_sq").value()
    assert m_slot[freed].abs().min() > 0 and v_slot[freed].abs().min() > 0
    stamps = ht.impl.get_slot("step_filter")[freed].clone()

    assert filt.do_filter() == 2                # ids 1, 2: last seen at step 0 < 2 - 1
    assert ht.impl.find_rows(torch.tensor([1, 2])).tolist() == [-1, -1]
    assert not m_slot[freed].any() and not v_slot[freed].any()
    m_slot = ht.slot_group().slot_by_name(prefix + "exp_avg").value()
    v_slot = ht.slot_group().slot_by_name(prefix + "exp_avg_sq").value()
    assert not m_slot[freed].any() and not v_slot[freed].any()
    assert torch.equal(ht.impl.embedding[freed], torch.full((2, DIM), INIT, dtype=torch.float64))
    assert torch.equal(ht.impl.get_slot("step_filter")[freed], stamps)     # the stamp slot is preserved
    assert m_slot[kept].abs().min() > 0 and v_slot[kept].abs().min() > 0  # survivors keep theirs
    for i in (1, 2):
        for d in (ref.theta, ref.m, ref.v):
            d[ht.name].pop(i, None)

    # new ids reuse the freed rows and start from zero moments; evicted id 1 comes back fresh
    opt.zero_grad()
    ids = [9, 1, 3]
    (ht(torch.tensor(ids)) * w(3, 2.0)).sum().backward()
    opt.step()
    ref.ensure(ht.name, ids)
    ref.step({ht.name: {i: np.full(DIM, 2.0) for i in ids}})
    assert sorted(ht.impl.find_rows(torch.tensor([9, 1])).tolist()) == sorted(freed.tolist())
    assert_matches_ref(ht, ht.name, ref, prefix, 1e-12)
    assert opt.beta_powers(ht.name) == tuple(float(x) for x in ref.powers[ht.name])


# ----------------------------------------------------------------------------- 7. errors
@pytest.mark.parametrize("kind", list(KINDS))
def test_constructor_errors(kind):
    cls = KINDS[kind][0]
    model = TwoTables(f"err_{kind}", torch.float32)
    params = filter_out_sparse_param(model)
    with pytest.raises(TypeError):
        cls(list(params.values()))
    with pytest.raises(TypeError, match="dense_w"):
        cls({**params, "dense_w": torch.zeros(3, requires_grad=True)})
    with pytest.raises(TypeError, match="dense_w"):
        cls({**params, "dense_w": nn.Parameter(torch.zeros(3))})
    for bad in (dict(lr=-0.1), dict(beta1=1.0), dict(beta2=1.0), dict(beta1=-0.1), dict(eps=-1e-8),
                dict(weight_decay=-0.01), dict(lr=float("nan"))):
        with pytest.raises(ValueError):
            cls(params, **bad)
    flag = "use_nesterov" if kind == "adamw_tf" else "amsgrad"
    with pytest.raises(ValueError, match="is not support now"):
        cls(params, **{flag: True})
    other = "amsgrad" if kind == "adamw_tf" else "use_nesterov"
    with pytest.raises(TypeError):
        cls(params, **{other: True})
    # zero weight decay, zero lr and zero eps are valid
    cls(params, lr=0.0, eps=0.0, weight_decay=0.0, beta1=0.0, beta2=0.0)


def test_runtime_errors():
    model = TwoTables("rt_err", torch.float32)
    opt = SparseAdamW(filter_out_sparse_param(model))
    model.a.insert(torch.tensor([1, 2]), torch.zeros(2, DIM))
    rows = model.a.impl.find_rows(torch.tensor([1, 2]))
    with pytest.raises(TypeError, match="rt_err_a"):
        model.a.accept_grad(rows, torch.ones(2, DIM, dtype=torch.float64))
    with pytest.raises(TypeError, match="rt_err_a"):
        model.a.impl.accept_grad(rows.int(), torch.ones(2, DIM))
    for bad in (0, -1, 1.5, True, "3"):
        with pytest.raises(ValueError):
            opt.set_grad_accum_steps(bad)
    opt.set_grad_accum_steps(1)
    # nothing reached the tables: step() is a no-op (powers stay 1, nothing changes)
    opt.step()
    assert opt.beta_powers("rt_err_a") == (1.0, 1.0)
    assert opt.state_dict()["sparse_adamw_step"].item() == 0


def test_integer_table_is_skipped():
    # a read-only (integer) table takes no gradients and gets no slots; the optimizer accepts it
    ht = HashTable([DIM], dtype=torch.int64, name="int_table")
    fl = HashTable([DIM], name="float_table")
    opt = SparseAdamW(filter_out_sparse_param(nn.ModuleDict({"i": ht, "f": fl})))
    assert "sparse_adamw_exp_avg" not in ht.slot_group().names()
    fl(torch.tensor([1, 2])).sum().backward()
    opt.step()
    assert opt.beta_powers("int_table") == (1.0, 1.0) and opt.beta_powers("float_table")[0] < 1.0


# ----------------------------------------------------------------------------- 8. dense AdamWTF
def _adamwtf_run(fuse, steps=5):
    """float32, two groups with their own hyper-parameters, a parameter without a gradient in
    some steps (its own step count), a tensor lr in one group, an lr change mid-way."""
    g0 = torch.Generator().manual_seed(0)
    w1 = nn.Parameter(torch.randn(7, 3, generator=g0))
    w2 = nn.Parameter(torch.randn(5, generator=g0))
    w3 = nn.Parameter(torch.randn(2, 2, generator=g0))
    opt = AdamWTF([{"params": [w1, w2]},
                   {"params": [w3], "lr": torch.tensor(0.02), "betas": (0.5, 0.9), "weight_decay": 0.2,
                    "eps": 1e-4}], lr=0.05, fuse=fuse)
    g = torch.Generator().manual_seed(1)
    for step in range(steps):
        opt.zero_grad()
        loss = (w1 * torch.randn(7, 3, generator=g)).sum() + (w3 ** 2).sum()
        if step % 2 == 0:
            loss = loss + (w2 * torch.randn(5, generator=g)).sum() ** 2
        loss.backward()
        opt.step()
        if step == 2:
            opt.param_groups[0]["lr"] = 0.01
    return [w1.detach().clone(), w2.detach().clone(), w3.detach().clone()], opt


def test_adamwtf_fuse_and_unfused_identical_float32_groups():
    (a, oa), (b, ob) = _adamwtf_run(True), _adamwtf_run(False)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-7)
    # per-parameter step counts: w2 had a gradient in steps 0, 2, 4 only
    for o in (oa, ob):
        steps = [float(o.state[p]["step"]) for g in o.param_groups for p in g["params"]]
        assert steps == [5.0, 3.0, 5.0]
        assert all(o.state[p]["step"].dtype == torch.float32 for g in o.param_groups for p in g["params"])


def test_adamwtf_groups_match_reference():
    got, _ = _adamwtf_run(True)
    g0 = torch.Generator().manual_seed(0)
    w = [torch.randn(7, 3, generator=g0).double(), torch.randn(5, generator=g0).double(),
         torch.randn(2, 2, generator=g0).double()]
    hp = [dict(lr=0.05, b1=0.9, b2=0.999, wd=0.01, eps=1e-8)] * 2 + \
         [dict(lr=0.02, b1=0.5, b2=0.9, wd=0.2, eps=1e-4)]
    m = [torch.zeros_like(x) for x in w]
    v = [torch.zeros_like(x) for x in w]
    t = [0, 0, 0]
    g = torch.Generator().manual_seed(1)
    for step in range(5):
        r1 = torch.randn(7, 3, generator=g).double()
        grads = [r1, None, 2 * w[2]]
        if step % 2 == 0:
            r2 = torch.randn(5, generator=g).double()
            grads[1] = 2 * (w[1] * r2).sum() * r2
        for k, gk in enumerate(grads):
            if gk is None:
                continue
            h = hp[k]
            lr = 0.01 if (k < 2 and step > 2) else h["lr"]
            t[k] += 1
            w[k] = w[k] * (1 - h["wd"])
            m[k] = h["b1"] * m[k] + (1 - h["b1"]) * gk
            v[k] = h["b2"] * v[k] + (1 - h["b2"]) * gk * gk
            w[k] = w[k] - lr * math.sqrt(1 - h["b2"] ** t[k]) / (1 - h["b1"] ** t[k]) * m[k] / (v[k].sqrt() + h["eps"])
    for x, y in zip(got, w):
        torch.testing.assert_close(x.double(), y, rtol=1e-5, atol=1e-5)


def test_user_sparse_optimizer_without_scalars_checkpoints(tmp_path):
    """A SparseOptimizer subclass that only implements _apply (e.g. a row-sparse SGD) saves and
    restores through the RecIS Saver: its state_dict is empty flat tensors, not torch's
    {"state", "param_groups"} dict."""
    from recis.framework.checkpoint_manager import Saver
    from recis.optim.sparse_optim import SparseOptimizer

    class RowSGD(SparseOptimizer):
        def __init__(self, params, lr=0.1):
            super().__init__(lr)
            self.add_params(params)

        def _apply(self, lr):
            for table in self.tables.values():
                got = table.grad_rows(1)
                if got is not None:
                    rows, grad = got
                    table.embedding.index_add_(0, rows, grad, alpha=-lr)

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.t = HashTable([4], name="rowsgd_t", initializer=ConstantInitializer(init_val=1.0))

    m = M()
    opt = RowSGD(filter_out_sparse_param(m))
    m.t(torch.tensor([1, 2])).sum().backward()
    opt.step()
    assert opt.state_dict() == {}
    opt.load_state_dict({})
    with pytest.raises(KeyError, match="RowSGD.load_state_dict: this optimizer has no scalars"):
        opt.load_state_dict({"x": torch.zeros(1)})
    Saver(model=m, sparse_optim=opt, output_dir=str(tmp_path)).save("ckpt_1")
    assert (tmp_path / "ckpt_1" / "index").exists()
    torch.testing.assert_close(m.t(torch.tensor([1])), torch.full((1, 4), 0.9))
