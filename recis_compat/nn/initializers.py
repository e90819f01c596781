"""``recis.nn.initializers``: initial values of new embedding rows (RecIS 1.0; see COMPATIBILITY.md).

The table calls ``set_shape([block_size] + embedding_shape)``, ``set_dtype(dtype)`` and
``build()``; ``generate()`` then returns one block. Fans of the Xavier/Kaiming initializers are
computed from that block shape exactly as RecIS does (fan_in = dim, fan_out = block_size).
``sample(rows)`` draws any number of rows from the same distribution, which is what our
growable row storage uses.

Fixes (COMPATIBILITY.md): ``KaimingNormalInitializer`` draws from a normal distribution (RecIS
builds a uniform one, Q14); ``str()`` of an initializer holding a ``torch.Generator`` reports the
generator's initial seed instead of reseeding it (RecIS calls ``generator.seed()``, so the
string, and with it ``coalesced_info``, changed on every call).
"""
from __future__ import annotations

import abc
import json
import math
from typing import List, Optional

import torch

from recis_compat.ops.counter_init import (
    counter_uniform,  # (seed, id, column) -> uniform, csrc op
)

__all__ = ["Initializer", "ConstantInitializer", "UniformInitializer", "NormalInitializer",
           "XavierUniformInitializer", "XavierNormalInitializer", "KaimingUniformInitializer",
           "KaimingNormalInitializer", "TruncNormalInitializer"]


class Initializer(abc.ABC):
    """Base class: holds the shape/dtype, builds once, generates blocks."""

    def __init__(self):
        self._shape: Optional[List[int]] = None
        self._dtype: torch.dtype = torch.float32
        self._built = False
        self._generator: Optional[torch.Generator] = None

    # -------------------------------------------------------------- configuration
    def set_shape(self, shape=None) -> None:
        self._shape = None if shape is None else [int(s) for s in shape]

    def set_dtype(self, dtype=torch.float32) -> None:
        self._dtype = dtype

    def build(self) -> None:
        if self._built:
            raise RuntimeError("rebuild initializer")
        if self._shape is None:
            raise RuntimeError(f"{type(self).__name__}: set_shape() before build()")
        self._built = True

    def impl(self) -> "Initializer":
        if not self._built:
            raise RuntimeError(f"{type(self).__name__} is not built; call build() first")
        return self

    # -------------------------------------------------------------- generation
    def generate(self) -> torch.Tensor:
        """One block: a tensor of the set shape and dtype."""
        self.impl()
        return self.sample(self._shape[0])

    def sample(self, rows: int) -> torch.Tensor:
        """``[rows, *shape[1:]]`` values from this initializer's distribution (float math, then
        cast to the set dtype)."""
        self.impl()
        shape = [int(rows)] + list(self._shape[1:])
        out = torch.empty(shape, dtype=torch.float32)
        self._fill(out)
        return out.to(self._dtype)

    @abc.abstractmethod
    def _fill(self, out: torch.Tensor) -> None:
        """Fill the float32 tensor ``out`` in place with this initializer's distribution."""

    # -------------------------------------------------------------- per-id (deterministic) draws
    def _from_uniform(self, u: torch.Tensor) -> Optional[torch.Tensor]:
        """Map float64 uniforms in (0, 1) to this distribution (same shape); None when the
        subclass only knows how to fill tensors (then :meth:`sample_for_ids` is unavailable)."""
        return None

    def supports_id_init(self) -> bool:
        """Whether :meth:`sample_for_ids` works (every built-in initializer)."""
        return type(self)._from_uniform is not Initializer._from_uniform

    def sample_for_ids(self, ids: torch.Tensor, seed: int) -> torch.Tensor:
        """``[N, *shape[1:]]`` initial values of the rows of int64 ``ids`` ``[N]``: a pure function
        of ``(seed, id, position)`` with this initializer's distribution.

        Why (a difference from RecIS, which draws a whole block when it is allocated): the value
        a new id starts from must not depend on when or on which rank its row was created, so
        that a resumed or resharded run and a single-process run produce the same numbers."""
        self.impl()
        width = int(math.prod(self._shape[1:])) if len(self._shape) > 1 else 1
        u = counter_uniform(ids.reshape(-1), int(seed), width)
        vals = self._from_uniform(u)
        if vals is None:
            raise NotImplementedError(f"{type(self).__name__} has no per-id sampler")
        return vals.to(torch.float32).to(self._dtype).view([ids.numel()] + list(self._shape[1:]))

    def _fans(self):
        """(fan_in, fan_out) of the built block shape ``[block_size, dim...]``."""
        shape = self._shape
        fan_in = int(math.prod(shape[1:])) if len(shape) > 1 else 1
        return fan_in, shape[0]

    # -------------------------------------------------------------- description
    def _params(self) -> dict:
        return {}

    def __str__(self) -> str:
        params = {k: (str(v) if not isinstance(v, (int, float, str, bool, type(None))) else v)
                  for k, v in self._params().items()}
        if self._generator is not None:
            params["generator"] = f"seed={self._generator.initial_seed()}"
        params["name"] = type(self).__name__
        params["shape"] = "None" if self._shape is None else str(self._shape)
        params["dtype"] = "None" if not self._built else str(self._dtype)
        return json.dumps(params, sort_keys=True)

    __repr__ = __str__


def _normal_from_uniform(u: torch.Tensor) -> torch.Tensor:
    return math.sqrt(2.0) * torch.erfinv(2.0 * u - 1.0)


class ConstantInitializer(Initializer):
    """Fill with ``init_val`` (the ``dtype`` argument is accepted and ignored, as in RecIS)."""

    def __init__(self, init_val: float = 0.0, dtype=torch.float32):
        super().__init__()
        self.init_val = float(init_val)

    def _params(self):
        return {"init_val": self.init_val}

    def _fill(self, out):
        out.fill_(self.init_val)

    def _from_uniform(self, u):
        return torch.full_like(u, self.init_val)

    def sample_for_ids(self, ids: torch.Tensor, seed: int) -> torch.Tensor:
        """``[N, *shape[1:]]`` filled with ``init_val``: the values :meth:`Initializer.sample_for_ids`
        gives, without drawing the per-id uniforms it would discard (the default initializer of
        a table: a growing table spent a quarter of its row-initialisation time on them)."""
        self.impl()
        shape = [ids.numel()] + list(self._shape[1:])
        return torch.full(shape, self.init_val, dtype=torch.float32, device=ids.device).to(self._dtype)


class UniformInitializer(Initializer):
    """U(a, b)."""

    def __init__(self, a: float = 0.0, b: float = 1.0, generator: Optional[torch.Generator] = None):
        super().__init__()
        if b < a:
            raise ValueError(f"UniformInitializer: need a <= b, got a={a}, b={b}")
        self.a, self.b = float(a), float(b)
        self._generator = generator

    def _params(self):
        return {"a": self.a, "b": self.b}

    def _fill(self, out):
        out.uniform_(self.a, self.b, generator=self._generator)

    def _from_uniform(self, u):
        return self.a + (self.b - self.a) * u


class NormalInitializer(Initializer):
    """N(mean, std)."""

    def __init__(self, mean: float = 0.0, std: float = 1.0, generator: Optional[torch.Generator] = None):
        super().__init__()
        if std < 0:
            raise ValueError(f"NormalInitializer: std must be >= 0, got {std}")
        self.mean, self.std = float(mean), float(std)
        self._generator = generator

    def _params(self):
        return {"mean": self.mean, "std": self.std}

    def _fill(self, out):
        out.normal_(self.mean, self.std, generator=self._generator)

    def _from_uniform(self, u):
        return self.mean + self.std * _normal_from_uniform(u)


class XavierUniformInitializer(Initializer):
    """Xavier/Glorot uniform with fans of the block shape: U(±gain·sqrt(6/(fan_in+fan_out)))."""

    def __init__(self, gain: float = 1.0, generator: Optional[torch.Generator] = None):
        super().__init__()
        self.gain = float(gain)
        self._generator = generator

    def _params(self):
        return {"gain": self.gain}

    def _fill(self, out):
        fan_in, fan_out = self._fans()
        bound = self.gain * math.sqrt(6.0 / (fan_in + fan_out))
        out.uniform_(-bound, bound, generator=self._generator)

    def _from_uniform(self, u):
        fan_in, fan_out = self._fans()
        bound = self.gain * math.sqrt(6.0 / (fan_in + fan_out))
        return (2.0 * u - 1.0) * bound


class XavierNormalInitializer(XavierUniformInitializer):
    """Xavier/Glorot normal: N(0, gain·sqrt(2/(fan_in+fan_out)))."""

    def _fill(self, out):
        fan_in, fan_out = self._fans()
        out.normal_(0.0, self.gain * math.sqrt(2.0 / (fan_in + fan_out)), generator=self._generator)

    def _from_uniform(self, u):
        fan_in, fan_out = self._fans()
        return self.gain * math.sqrt(2.0 / (fan_in + fan_out)) * _normal_from_uniform(u)


class KaimingUniformInitializer(Initializer):
    """He uniform: U(±gain/sqrt(fan)·sqrt(3)), ``gain = torch.nn.init.calculate_gain``."""

    def __init__(self, a: float = 0.0, mode: str = "fan_in", nonlinearity: str = "leaky_relu",
                 generator: Optional[torch.Generator] = None):
        super().__init__()
        if mode not in ("fan_in", "fan_out"):
            raise ValueError(f"{type(self).__name__}: mode must be 'fan_in' or 'fan_out', got {mode!r}")
        self.a, self.mode, self.nonlinearity = float(a), mode, nonlinearity
        torch.nn.init.calculate_gain(nonlinearity, a)  # validates nonlinearity
        self._generator = generator

    def _params(self):
        return {"a": self.a, "mode": self.mode, "nonlinearity": self.nonlinearity}

    def _std(self) -> float:
        fan_in, fan_out = self._fans()
        fan = fan_in if self.mode == "fan_in" else fan_out
        return torch.nn.init.calculate_gain(self.nonlinearity, self.a) / math.sqrt(fan)

    def _fill(self, out):
        bound = math.sqrt(3.0) * self._std()
        out.uniform_(-bound, bound, generator=self._generator)

    def _from_uniform(self, u):
        return (2.0 * u - 1.0) * (math.sqrt(3.0) * self._std())


class KaimingNormalInitializer(KaimingUniformInitializer):
    """He normal: N(0, gain/sqrt(fan)). ``shape`` and ``dtype`` are accepted and ignored."""

    def __init__(self, shape=None, dtype=torch.float32, a: float = 0.0, mode: str = "fan_in",
                 nonlinearity: str = "leaky_relu", generator: Optional[torch.Generator] = None):
        super().__init__(a=a, mode=mode, nonlinearity=nonlinearity, generator=generator)

    def _fill(self, out):
        out.normal_(0.0, self._std(), generator=self._generator)

    def _from_uniform(self, u):
        return self._std() * _normal_from_uniform(u)


class TruncNormalInitializer(Initializer):
    """Truncated normal N(mean, std) cut to the ABSOLUTE bounds [a, b] (as RecIS/torch)."""

    def __init__(self, mean: float = 0.0, std: float = 1.0, a: float = -2.0, b: float = 2.0,
                 generator: Optional[torch.Generator] = None):
        super().__init__()
        if std < 0 or b <= a:
            raise ValueError(f"TruncNormalInitializer: need std >= 0 and a < b, got std={std}, "
                             f"a={a}, b={b}")
        self.mean, self.std, self.a, self.b = float(mean), float(std), float(a), float(b)
        self._generator = generator

    def _params(self):
        return {"mean": self.mean, "std": self.std, "a": self.a, "b": self.b}

    def _fill(self, out):
        torch.nn.init.trunc_normal_(out, self.mean, self.std, self.a, self.b, generator=self._generator)

    def _from_uniform(self, u):
        # inverse-CDF method between the absolute bounds, as torch.nn.init.trunc_normal_
        if self.std == 0:
            return torch.full_like(u, min(max(self.mean, self.a), self.b))
        cdf = lambda x: 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))  # noqa: E731
        lo, hi = cdf((self.a - self.mean) / self.std), cdf((self.b - self.mean) / self.std)
        p = lo + (hi - lo) * u
        x = self.mean + self.std * _normal_from_uniform(p)
        return x.clamp_(self.a, self.b)
