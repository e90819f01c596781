"""Initializers (§1.4.7) and hook descriptors (§1.4.5)."""
import json
import math

import pytest
import torch

from recis.nn import initializers as I
from recis.nn.hashtable_hook import AdmitHook, FilterHook

ALL = [I.ConstantInitializer, I.UniformInitializer, I.NormalInitializer, I.XavierUniformInitializer,
       I.XavierNormalInitializer, I.KaimingUniformInitializer, I.KaimingNormalInitializer,
       I.TruncNormalInitializer]


@pytest.mark.parametrize("cls", ALL)
def test_build_generate_and_rebuild_error(cls):
    init = cls()
    assert json.loads(str(init))["shape"] == "None"
    with pytest.raises(RuntimeError, match="not built"):
        init.generate()
    init.set_shape([8, 8])
    init.set_dtype(torch.float32)
    init.build()
    a, b = init.generate(), init.generate()
    assert a.shape == (8, 8) and a.dtype == torch.float32
    if cls is I.ConstantInitializer:
        assert torch.equal(a, torch.zeros(8, 8))
    else:
        assert not torch.equal(a, b)
    with pytest.raises(RuntimeError, match="rebuild initializer"):
        init.build()


def stats(init, shape, rows=200_000):
    init.set_shape(shape)
    init.build()
    x = init.sample(rows)
    return float(x.mean()), float(x.std()), float(x.min()), float(x.max())


def test_distributions_use_block_fans():
    # fan_in = dim = 16, fan_out = block_size = 1024 (RecIS computes fans on the block)
    _, std, lo, hi = stats(I.XavierUniformInitializer(), [1024, 16])
    bound = math.sqrt(6 / (16 + 1024))
    assert -bound <= lo and hi <= bound and std == pytest.approx(bound / math.sqrt(3), rel=0.02)
    _, std, _, _ = stats(I.XavierNormalInitializer(), [1024, 16])
    assert std == pytest.approx(math.sqrt(2 / (16 + 1024)), rel=0.02)
    gain = torch.nn.init.calculate_gain("leaky_relu", 0.0)
    _, std, lo, hi = stats(I.KaimingNormalInitializer(), [1024, 16])
    assert std == pytest.approx(gain / 4, rel=0.02)
    # a normal has tails past the uniform bound sqrt(3)*std (RecIS's KaimingNormal was uniform)
    assert hi > 1.5 * math.sqrt(3) * gain / 4 and lo < -1.5 * math.sqrt(3) * gain / 4
    mean, std, lo, hi = stats(I.TruncNormalInitializer(std=0.01), [16, 8])
    assert std == pytest.approx(0.01, rel=0.02) and abs(mean) < 1e-3


def test_trunc_normal_bounds_are_absolute():
    _, _, lo, hi = stats(I.TruncNormalInitializer(mean=0.0, std=1.0, a=-0.5, b=0.25), [4, 4])
    assert lo >= -0.5 and hi <= 0.25


def test_generator_makes_it_reproducible_and_str_is_stable():
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    x, y = I.NormalInitializer(generator=g1), I.NormalInitializer(generator=g2)
    assert str(x) == str(x) == str(y)
    for i in (x, y):
        i.set_shape([4, 3])
        i.build()
    assert torch.equal(x.generate(), y.generate())


def test_dtype_cast_and_bad_args():
    c = I.ConstantInitializer(3.0)
    c.set_shape([2, 2])
    c.set_dtype(torch.float16)
    c.build()
    assert c.generate().dtype == torch.float16
    with pytest.raises(ValueError):
        I.UniformInitializer(a=1.0, b=0.0)
    with pytest.raises(ValueError):
        I.KaimingUniformInitializer(mode="fan_avg")
    with pytest.raises(ValueError):
        I.TruncNormalInitializer(a=1.0, b=-1.0)


def test_hook_descriptors():
    admit = AdmitHook("ReadOnly")
    assert admit.type == "admit" and admit.name == "ReadOnly" and admit.params == {}
    assert json.loads(str(admit)) == {"name": "ReadOnly", "params": {}}
    f = FilterHook("GlobalStepFilter", {"filter_step": 3})
    assert f.type == "filter" and f.params == {"filter_step": 3}
    assert FilterHook("GlobalStepFilter").params == {"filter_step": 100}
    with pytest.raises(ValueError, match="unknown admit hook"):
        AdmitHook("Frequency")
    with pytest.raises(ValueError, match="filter_step must be an int > 0"):
        FilterHook("GlobalStepFilter", {"filter_step": 0})
