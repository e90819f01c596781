"""Per-id initial values (``Initializer.sample_for_ids``): the constant initializer's shortcut."""
import pytest
import torch

import recis_compat.nn.initializers as inits
from recis_compat.nn.initializers import ConstantInitializer, Initializer


def _built(init, shape, dtype):
    init.set_shape(shape)
    init.set_dtype(dtype)
    init.build()
    return init


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("value", [0.0, 0.1, -3.7])
def test_constant_sample_for_ids_equals_the_generic_path_without_drawing(monkeypatch, dtype, value):
    """Same values, dtype and shape as the generic per-id sampler (uniforms mapped through
    ``_from_uniform``), and the uniforms are never drawn."""
    init = _built(ConstantInitializer(init_val=value), [1024, 2, 3], dtype)
    ids = torch.tensor([5, -1, 2 ** 62, 7, 7], dtype=torch.int64)
    generic = Initializer.sample_for_ids(init, ids, 1234)

    def no_draws(*args, **kwargs):
        raise AssertionError("counter_uniform drawn for a constant initializer")
    monkeypatch.setattr(inits, "counter_uniform", no_draws)
    got = init.sample_for_ids(ids, 1234)
    assert got.dtype == generic.dtype == dtype and got.shape == generic.shape == (5, 2, 3)
    assert torch.equal(got, generic)
    assert init.sample_for_ids(ids[:0], 1).shape == (0, 2, 3)


def test_constant_sample_for_ids_needs_build():
    with pytest.raises(RuntimeError, match="not built"):
        ConstantInitializer(1.0).sample_for_ids(torch.tensor([1]), 0)
