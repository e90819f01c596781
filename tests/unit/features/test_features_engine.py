"""FeatureEngine (port of RecIS feature_engine/feature_engine_test.py, on CPU) plus its
compilation rules: steps, fusion, dedup/aliases, remain_no_use_data, no input mutation."""
import pytest
import torch

from fe_helpers import assert_unchanged, ragged, random_ragged, rows_of, snapshot, strings_ragged
from recis_compat.features import (Bucketize, FeatureCross, FeatureEngine, Hash, IDMultiHash, Mod,
                                   SelectField, SelectFields, SequenceTruncate)
from recis_compat.features.feature import Feature
from recis_compat.features.feature_engine import (ExecutionStep, FuseExecutionGroup,
                                                  NonFuseExecutionGroup, RunContext)
from recis_compat.features.op import _OP


def _data():
    return {
        "ids": ragged([[1, 1000000008], [-1], []]),
        "val": ragged([[-1.0, 100.0], [150.0, 250.0, 200.0], []], dtype=torch.float32),
        "seq": random_ragged(3, 40, seed=2),
        "x": ragged([[1], [2], [3]]),
        "y": ragged([[1], [2], [3]]),
        "label": torch.tensor([[1.0], [0.0], [1.0]]),
    }


def _features():
    return [
        Feature("mod_a").add_op(SelectField("ids")).add_op(Mod(1000000007)),
        Feature("mod_b").add_op(SelectField("ids")).add_op(Mod(1000000007)).add_op(Mod(10)),
        Feature("bucket").add_op(SelectField("val")).add_op(Bucketize([0, 100, 200])),
        Feature("trunc").add_op(SelectField("seq")).add_op(SequenceTruncate(16)),
        Feature("cross").add_op(SelectFields([SelectField("x"), SelectField("y")]))
        .add_op(FeatureCross()).add_op(Mod(1000)),
    ]


def test_feature_engine_test_vectors():
    data = _data()
    snaps = {k: snapshot(v) for k, v in data.items() if k != "label"}
    out = FeatureEngine(_features())(data, remain_no_use_data=False)
    assert list(out) == ["mod_a", "mod_b", "bucket", "trunc", "cross"]
    assert rows_of(out["mod_a"]) == [[1, 1], [(2 ** 64 - 1) % 1000000007], []]
    # two features on one column do not stack (Q3 fixed): mod_b is its own chain
    assert rows_of(out["mod_b"]) == [[1, 1], [((2 ** 64 - 1) % 1000000007) % 10], []]
    assert rows_of(out["bucket"]) == [[0, 2], [2, 3, 3], []]
    seq_rows = rows_of(data["seq"])
    assert rows_of(out["trunc"]) == [r[-16:] for r in seq_rows]
    assert out["trunc"]._dense_shape == (3, 16) and out["trunc"].pad_info is not None
    assert out["cross"].values().tolist() == [216, 2, 783]
    assert out["cross"].weight().tolist() == [1.0, 1.0, 1.0]
    for k, s in snaps.items():
        assert_unchanged(data[k], s)


def test_fused_equals_feature_forward():
    data = _data()
    feats = _features()
    direct = {f.name: f(data) for f in _features()[:3]}
    out = FeatureEngine(feats)(data)
    for name, d in direct.items():
        assert torch.equal(out[name].values(), d.values())


def test_remain_no_use_data():
    data = _data()
    feats = [Feature("ids").add_op(SelectField("ids")).add_op(Mod(7))]
    out = FeatureEngine(feats)(data)
    assert list(out) == ["ids", "val", "seq", "x", "y", "label"]
    assert out["label"] is data["label"] and out["val"] is data["val"]
    assert out["ids"] is not data["ids"]
    out = FeatureEngine([Feature("ids").add_op(SelectField("ids"))])(data, False)
    assert list(out) == ["ids"]


def test_execution_steps_and_fusion_groups():
    engine = FeatureEngine(_features())
    steps = engine.execution_steps
    assert [s.index for s in steps] == [0, 1, 2]
    assert all(isinstance(s, ExecutionStep) for s in steps)
    kinds = [[type(g).__name__ for g in s.groups] for s in steps]
    assert kinds[0] == ["NonFuseExecutionGroup"]
    step1 = {type(g.fused_op).__name__: g.feature_names for g in steps[1].groups
             if isinstance(g, FuseExecutionGroup)}
    assert step1 == {"FusedModOP": ["mod_a", "mod_b"], "FusedBoundaryOP": ["bucket"],
                     "FusedCutoffOP": ["trunc"]}
    plain = [g for g in steps[1].groups if isinstance(g, NonFuseExecutionGroup)][0]
    assert [n for n, _ in plain.items] == ["cross"]
    assert {type(g.fused_op).__name__ for g in steps[2].groups} == {"FusedModOP"}
    assert [g.feature_names for g in steps[2].groups] == [["mod_b", "cross"]]


def test_one_kernel_call_per_class_per_step(monkeypatch):
    from recis_compat.ops import features as kernels
    calls = []
    real = kernels.fused_uint64_mod
    monkeypatch.setattr(kernels, "fused_uint64_mod",
                        lambda v, m: calls.append(len(v)) or real(v, m))
    FeatureEngine(_features())(_data())
    assert calls == [2, 2]          # step 1: mod_a + mod_b; step 2: mod_b + cross


def test_dedup_and_aliases():
    a1 = Feature("a").add_op(SelectField("ids")).add_op(Mod(7))
    a2 = Feature("a").add_op(SelectField("ids")).add_op(Mod(7))
    engine = FeatureEngine([a1, a2, a1])
    assert engine.features == [a1] and engine.aliases == {"a": "a"}
    assert a1.compiled and a2.compiled
    assert len(engine.execution_steps[1].groups[0].feature_names) == 1
    assert rows_of(engine(_data())["a"]) == [[1, 1000000008 % 7], [(2 ** 64 - 1) % 7], []]


def test_feature_hash_ignores_op_order_but_not_name():
    f1 = Feature("f").add_op(SelectField("ids")).add_op(Mod(7)).add_op(Mod(5))
    f2 = Feature("f").add_op(SelectField("ids")).add_op(Mod(5)).add_op(Mod(7))
    f3 = Feature("g").add_op(SelectField("ids")).add_op(Mod(7)).add_op(Mod(5))
    assert f1.get_hash() == f2.get_hash() != f3.get_hash()
    assert Feature("empty").get_hash() == 0


def test_duplicate_name_and_compiled_errors():
    a = Feature("a").add_op(SelectField("ids")).add_op(Mod(7))
    b = Feature("a").add_op(SelectField("ids")).add_op(Mod(8))
    with pytest.raises(ValueError, match="Duplicate feature name"):
        FeatureEngine([a, b])
    c = Feature("c").add_op(SelectField("ids"))
    FeatureEngine([c])
    with pytest.raises(ValueError, match="feature c has been compiled"):
        FeatureEngine([c])
    with pytest.raises(ValueError, match="has been compiled"):
        c.add_op(Mod(3))


def test_first_op_must_be_exactly_select_field():
    class MySelect(SelectField):
        pass
    with pytest.raises(ValueError, match="feature 'f' must start with DataInputOP"):
        Feature("f").add_op(MySelect("ids"))
    with pytest.raises(ValueError, match="must start with DataInputOP"):
        Feature("f").add_op(Mod(3))
    bad = Feature("g")
    bad.ops.append(Mod(3))                       # bypassing add_op is caught by the engine
    with pytest.raises(ValueError, match="feature g must start with DataInputOP"):
        FeatureEngine([bad])
    with pytest.raises(ValueError, match="no ops"):
        FeatureEngine([Feature("h")])


class Scale(_OP):
    """A custom op: multiplies values by a factor (config given)."""

    def __init__(self, factor):
        super().__init__()
        self.factor = factor

    def _get_config(self):
        return {"factor": self.factor}

    def forward(self, x):
        return x * self.factor


def test_custom_op_runs_unfused_and_needs_config():
    f = Feature("d").add_op(SelectField("label")).add_op(Scale(3.0)).add_op(Bucketize([1.0, 2.5]))
    out = FeatureEngine([f])({"label": torch.tensor([[1.0], [0.0]])})
    assert out["d"].tolist() == [[2], [0]]
    assert isinstance(FeatureEngine([Feature("e").add_op(SelectField("label"))
                                     .add_op(Scale(1.0))]).execution_steps[1].groups[0],
                      NonFuseExecutionGroup)

    class NoConfig(_OP):
        def forward(self, x):
            return x
    with pytest.raises(NotImplementedError, match="feature 'n'.*NoConfig"):
        FeatureEngine([Feature("n").add_op(SelectField("label")).add_op(NoConfig())])


def test_hash_multihash_and_3d_in_engine():
    strs = strings_ragged([[b"\x00\x01\x02"], [b"\x01\x02\x03", b"\x00\x05\x05"]])
    feats = [
        Feature("h_farm").add_op(SelectField("s")).add_op(Hash("farm")),
        Feature("h_mm").add_op(SelectField("s")).add_op(Hash("murmur")).add_op(Mod(1 << 40)),
        Feature("mh").add_op(SelectField("ids")).add_op(IDMultiHash([1000, 10])),
    ]
    out = FeatureEngine(feats)({"s": strs, "ids": ragged([[1001, 1002]])}, False)
    assert out["h_farm"].values().tolist() == [-7736835464683084646, -5546720800891377920,
                                               -4442022684725028445]
    assert out["h_mm"].values().tolist() == [
        (v % 2 ** 64) % (1 << 40) for v in (-4003751876240412087, -1042754718167355375,
                                             -5541886947548579749)]
    assert out["mh"]["multi_hash_0"].values().tolist() == [1, 2]
    assert sorted(out["mh"]) == ["multi_hash_0", "multi_hash_1"]


def test_engine_truncation_ignores_check_length_but_feature_forward_asserts():
    data = {"seq": random_ragged(4, 60, seed=11)}
    f = Feature("t").add_op(SelectField("seq")).add_op(SequenceTruncate(8, truncate=False))
    with pytest.raises(AssertionError, match="feature 't'"):
        f(data)
    out = FeatureEngine([f])(data)["t"]
    assert rows_of(out) == [r[-8:] for r in rows_of(data["seq"])]


def test_run_context():
    data = {"a": 1, "b": 2}
    ctx = RunContext(data, remain_no_use_data=True)
    assert ctx.get("f") is data
    ctx.set("f", 5)
    ctx.set("a", 7)
    assert ctx.get("f") == 5
    assert ctx.results() == {"f": 5, "a": 7, "b": 2}
    assert RunContext(data, False).results() == {}


def test_engine_requires_dict():
    engine = FeatureEngine([Feature("a").add_op(SelectField("a"))])
    with pytest.raises(TypeError, match="dict"):
        engine([1, 2])
