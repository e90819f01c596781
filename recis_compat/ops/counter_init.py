"""Counter-based uniforms for per-id initial rows (csrc/embedding/counter_init.{h,cpp,cu}).

``counter_uniform(ids, seed, width)``: ids int64 ``[N]`` -> float64 ``[N, width]`` in (0, 1), a pure
function of ``(seed, id, column)``::

    key = splitmix(splitmix(id) ^ seed)
    u[i, j] = ((splitmix(key + j * 0xD1B54A32D192ED03) >> 11) + 0.5) * 2**-53

(``splitmix`` = SplitMix64: add 0x9E3779B97F4A7C15, then its finalizer; all arithmetic mod 2**64.)
:func:`counter_uniform_ref` is the same function in torch int64 ops, the reference the tests
compare the kernels against bit for bit.
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


# ----------------------------------------------------------------------------- reference
def _shr(x: torch.Tensor, s: int) -> torch.Tensor:
    """Logical right shift of int64 bit patterns."""
    return (x >> s) & ((1 << (64 - s)) - 1)


def _splitmix(x: torch.Tensor) -> torch.Tensor:
    """SplitMix64 (increment + finalizer) on int64 bit patterns (wrapping arithmetic)."""
    x = x + as_int64(0x9E3779B97F4A7C15)
    x = (x ^ _shr(x, 30)) * as_int64(0xBF58476D1CE4E5B9)
    x = (x ^ _shr(x, 27)) * as_int64(0x94D049BB133111EB)
    return x ^ _shr(x, 31)


def counter_uniform_ref(ids: torch.Tensor, seed: int, width: int) -> torch.Tensor:
    """Pure-torch :func:`counter_uniform`."""
    key = _splitmix(_splitmix(ids.reshape(-1).to(torch.int64)) ^ as_int64(int(seed)))
    cols = torch.arange(width, dtype=torch.int64, device=ids.device) * as_int64(0xD1B54A32D192ED03)
    bits = _splitmix(key.unsqueeze(1) + cols.unsqueeze(0))
    return (_shr(bits, 11).to(torch.float64) + 0.5) * (1.0 / (1 << 53))
