"""Counter-based uniforms for per-id initial rows (csrc/embedding/counter_init.{h,cpp,cu}).

``counter_uniform(ids, seed, width)``: ids int64 ``[N]`` -> float64 ``[N, width]`` in (0, 1), a pure
function of ``(seed, id, column)``::

    key = splitmix(splitmix(id) ^ seed)
    u[i, j] = ((splitmix(key + j * 0xD1B54A32D192ED03) >> 11) + 0.5) * 2**-53

(``splitmix`` = SplitMix64: add 0x9E3779B97F4A7C15, then its finalizer; all arithmetic mod 2**64.)
``counter_uniform_ref`` in ``tests/ops/reference_kernels.py`` is the same function in torch int64
ops, the reference the tests compare the kernels against bit for bit.
"""
from __future__ import annotations

import torch

_MASK64 = (1 << 64) - 1


@torch.library.register_fake("recis_compat::counter_uniform")
def _counter_uniform_fake(ids, seed, width):
    return ids.new_empty((ids.shape[0], width), dtype=torch.float64)


def as_int64(x: int) -> int:
    """The int64 with the low 64 bits of the Python int ``x`` (seeds may be any int)."""
    x &= _MASK64
    return x - (1 << 64) if x >= (1 << 63) else x


def counter_uniform(ids: torch.Tensor, seed: int, width: int) -> torch.Tensor:
    """float64 ``[N, width]`` uniforms of int64 ``ids`` (any shape, flattened to ``[N]``)."""
    return torch.ops.recis_compat.counter_uniform(ids.reshape(-1).to(torch.int64), as_int64(int(seed)), int(width))
