"""``recis.features.op``: the feature-processing ops (RecIS 1.0; see COMPATIBILITY.md).

Every op is an ``nn.Module`` subclass of :class:`_OP` with a ``_get_config()`` dict; its
``get_hash()`` (sha256 of ``"ClassName:sorted(config.items())"``, first 8 bytes big-endian,
signed) identifies it for deduplication inside ``FeatureEngine``. Custom ops subclass
:class:`_OP`, implement ``forward`` and ``_get_config`` (a missing ``_get_config`` raises
``NotImplementedError`` when the engine is built).

Inputs (per op): a dense tensor of any shape, a sparse COO tensor, or a
:class:`~recis_compat.ragged.tensor.RaggedTensor` (values ``[N]``, offsets outermost first,
optional weight ``[N]``). Element-wise ops (Mod, Bucketize, IDMultiHash) keep the structure and
the weight; no op modifies its input (RecIS's ``Mod``/``Bucketize`` do, quirk Q3).

Validation: bad arguments are found when the op is built and reported when it is added to a
``Feature`` (the error then names the feature) or called; bad inputs are reported before any
kernel runs. All errors are :class:`~recis_compat.features.errors.FeatureOpError` subclasses
whose message starts with the op, e.g. ``"Mod(mod_value=0): mod_value must be > 0"``.
"""
from __future__ import annotations

import hashlib
from numbers import Integral
from typing import Dict, List, Optional

import torch
from torch import nn

from recis_compat.features import apply
from recis_compat.features.errors import (FeatureOpAssertionError, FeatureOpError,
                                          FeatureOpIndexError, FeatureOpKeyError,
                                          FeatureOpTypeError)
from recis_compat.features.values import DataValueProcessor, describe, is_feature_value
from recis_compat.ops import features as _kernels
from recis_compat.ragged.tensor import RaggedTensor

__all__ = ["_OP", "DataValueProcessor", "SelectField", "SelectFields", "Mod", "Bucketize",
           "FeatureCross", "SequenceTruncate", "Hash", "IDMultiHash"]

_INT64_MAX = (1 << 63) - 1


def sha256_int64(text: str) -> int:
    """First 8 bytes (big endian) of ``sha256(text)`` as a signed 64-bit int."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big", signed=True)


def _one_of(op: str, name: str, value, alias: str, alias_value):
    """The value of a parameter that also has a documented alias spelling; a TypeError when
    both or neither are given (COMPATIBILITY.md: doc-only names are aliases)."""
    if value is not None and alias_value is not None:
        raise TypeError(f"{op}() got both {name!r} and {alias!r} (an alias of {name!r} from "
                        f"RecIS's documentation); pass only one")
    if value is None and alias_value is None:
        raise TypeError(f"{op}() missing required argument {name!r} (or its alias {alias!r})")
    return value if value is not None else alias_value


def _short(v, limit: int = 48) -> str:
    s = repr(v)
    return s if len(s) <= limit else s[:limit - 3] + "..."


class _OP(nn.Module):
    """Base of every feature op. Subclasses implement ``forward`` and ``_get_config``.

    ``_problem`` (set by the constructor) describes an invalid argument; it is raised by
    :meth:`check_config` when the op is added to a feature or called.
    """

    _problem: Optional[str] = None
    _problem_cls = FeatureOpError

    def _get_config(self) -> Dict[str, object]:
        raise NotImplementedError(
            f"{type(self).__name__} must implement _get_config() returning a dict of its "
            f"settings (FeatureEngine hashes it to deduplicate features)")

    def get_hash(self) -> int:
        """Signed int64: sha256 of ``f"{ClassName}:{sorted(_get_config().items())}"``."""
        return sha256_int64(f"{type(self).__name__}:{sorted(self._get_config().items())}")

    def label(self) -> str:
        """The op as shown in error messages, e.g. ``Mod(mod_value=1000)``."""
        return f"{type(self).__name__}({self._label_args()})"

    def _label_args(self) -> str:
        try:
            cfg = self._get_config()
        except NotImplementedError:
            return ""
        return ", ".join(f"{k}={_short(v)}" for k, v in cfg.items())

    def check_config(self) -> None:
        """Raise the constructor's argument error, if any (see the module docstring)."""
        if self._problem is not None:
            raise self._problem_cls(f"{self.label()}: {self._problem}")

    def check_input(self, x) -> None:
        """Raise a FeatureOpError if ``x`` is not a valid input (no device sync)."""

    # helpers for subclasses ----------------------------------------------------------------
    def _fail(self, message: str, cls=FeatureOpError):
        raise cls(f"{self.label()}: {message}")

    def _require_value(self, x) -> torch.Tensor:
        """The flat values of a dense / sparse COO / ragged input."""
        if not is_feature_value(x):
            self._fail(f"expects a RaggedTensor, a dense tensor or a sparse COO tensor, "
                       f"got {describe(x)}", FeatureOpTypeError)
        return DataValueProcessor(x).get_input_value()

    def _require_ragged(self, x, levels: int = 1) -> RaggedTensor:
        if not isinstance(x, RaggedTensor):
            self._fail(f"expects a RaggedTensor, got {describe(x)}", FeatureOpTypeError)
        if len(x.offsets()) < levels:
            self._fail(f"expects a RaggedTensor with at least {levels} offsets levels, got "
                       f"{len(x.offsets())}")
        return x


# ================================================================================ selection
class SelectField(_OP):
    """Select the column ``name`` from the input dict (``from_dict=True``) or pass the input
    through (``from_dict=False``).

    ``dtype`` is only recorded. ``dim`` sets the last dense dim of a RaggedTensor **input**
    (RecIS quirk Q2, kept: with ``from_dict=True`` the input is the dict, so it never applies).
    With ``from_dict=False`` and a RaggedTensor input, a shallow copy carries the new dim.
    """

    def __init__(self, name: str, dtype: torch.dtype = torch.long, dim: Optional[int] = None,
                 from_dict: bool = True):
        super().__init__()
        self.name = name
        self.dtype = dtype
        self.dim = dim
        self.from_dict = from_dict
        if not isinstance(name, str):
            self._problem = f"name must be a str, got {type(name).__name__}"

    def _get_config(self):
        return {"name": self.name, "dtype": str(self.dtype), "dim": self.dim,
                "from_dict": self.from_dict}

    def _label_args(self) -> str:
        return repr(self.name)

    def check_input(self, data) -> None:
        if not self.from_dict:
            return
        if not isinstance(data, dict):
            self._fail(f"expects the input dict (from_dict=True), got {describe(data)}",
                       FeatureOpTypeError)
        if self.name not in data:
            cols = ", ".join(repr(k) for k in list(data)[:20])
            self._fail(f"column {self.name!r} is not in the input (columns: {cols})",
                       FeatureOpKeyError)

    def forward(self, data):
        self.check_config()
        self.check_input(data)
        if self.from_dict:
            return data[self.name]
        if self.dim is not None and isinstance(data, RaggedTensor):
            data = data.clone()
            data.set_dim_by_rank(self.dim, len(data.dense_shape) - 1)
        return data


class SelectFields(_OP):
    """Several SelectFields at once: ``forward(data)`` returns a list, one result per child."""

    def __init__(self, input_list: List[SelectField]):
        super().__init__()
        self.input_list = nn.ModuleList(list(input_list))
        bad = [type(f).__name__ for f in self.input_list if not isinstance(f, SelectField)]
        if not self.input_list:
            self._problem = "input_list must hold at least one SelectField"
        elif bad:
            self._problem = f"input_list must hold SelectField ops only, got {bad}"

    def _get_config(self):
        return {"input_list": [f.get_hash() for f in self.input_list]}

    def _label_args(self) -> str:
        return "[" + ", ".join(repr(getattr(f, "name", "?")) for f in self.input_list) + "]"

    def check_config(self) -> None:
        super().check_config()
        for f in self.input_list:
            f.check_config()

    def check_input(self, data) -> None:
        for f in self.input_list:
            f.check_input(data)

    def forward(self, data) -> list:
        self.check_config()
        return [f(data) for f in self.input_list]


# ================================================================================ element-wise
class Mod(_OP):
    """``uint64(id) % mod_value`` as int64 in ``[0, mod_value)`` (negative ids by their bit
    pattern). Input: int64 ids, dense (shape kept) / sparse COO / RaggedTensor (new tensor
    sharing offsets and weight)."""

    def __init__(self, mod_value: int):
        super().__init__()
        self.mod_value = mod_value
        if isinstance(mod_value, torch.Tensor) and mod_value.numel() == 1 \
                and not mod_value.is_floating_point():
            self.mod_value = int(mod_value.item())
        if isinstance(self.mod_value, bool) or not isinstance(self.mod_value, Integral):
            self._problem = f"mod_value must be an int, got {type(mod_value).__name__}"
        elif not 0 < int(self.mod_value) <= _INT64_MAX:
            self._problem = f"mod_value must be > 0 (and < 2**63), got {self.mod_value}"
        else:
            self.mod_value = int(self.mod_value)

    def _get_config(self):
        return {"mod": self.mod_value}

    def _label_args(self) -> str:
        return f"mod_value={self.mod_value}"

    def check_input(self, x) -> None:
        v = self._require_value(x)
        if v.dtype != torch.int64:
            self._fail(f"ids must be int64, got {v.dtype} ({describe(x)})", FeatureOpTypeError)

    def forward(self, x):
        self.check_config()
        self.check_input(x)
        proc = DataValueProcessor(x)
        return proc.get_output_value(_kernels.fused_uint64_mod([proc.get_input_value()],
                                                              [int(self.mod_value)])[0])


class Bucketize(_OP):
    """int64 bucket index = number of boundaries ``<= value`` (``torch.bucketize(right=True)``;
    NaN -> last bucket). Input: floating values, dense (shape kept) / sparse COO / RaggedTensor.

    ``boundary``: a list (stored as a float32 tensor) or a 1-D tensor (kept as is); it must be
    sorted ascending. The direct call casts it to the input's dtype (as RecIS's non-fused path).
    ``boundaries=`` (the spelling of RecIS's documentation) is an alias of ``boundary``
    (COMPATIBILITY.md); giving both is a TypeError.
    """

    def __init__(self, boundary=None, *, boundaries=None):
        super().__init__()
        self._fused_boundary: Dict[torch.device, torch.Tensor] = {}
        boundary = _one_of("Bucketize", "boundary", boundary, "boundaries", boundaries)
        if isinstance(boundary, torch.Tensor):
            self.boundary = boundary
        else:
            try:
                self.boundary = torch.tensor(list(boundary), dtype=torch.float32)
            except (TypeError, ValueError) as e:
                self.boundary = torch.zeros(0)
                self._problem = f"boundary must be a list of numbers or a tensor ({e})"
                return
        b = self.boundary
        numeric = b.is_floating_point() or b.dtype in (torch.int8, torch.uint8, torch.int16,
                                                       torch.int32, torch.int64)
        if b.dim() != 1 or not numeric:
            self._problem = (f"boundary must be a 1-D numeric tensor, got shape "
                             f"{tuple(b.shape)} dtype {b.dtype}")
        elif b.numel() and b.is_floating_point() and bool(torch.isnan(b).any()):
            self._problem = "boundary must not contain NaN"
        elif b.numel() > 1 and not bool((b[1:] >= b[:-1]).all()):
            self._problem = f"boundary must be sorted ascending, got {_short(b.tolist())}"

    def _get_config(self):
        return {"boundary": self.boundary.tolist()}

    def _label_args(self) -> str:
        return f"boundary={_short(self.boundary.tolist())}"

    def fused_boundary(self, device: torch.device) -> torch.Tensor:
        """The boundary as float32 on ``device`` (cached), for the fused kernel."""
        b = self._fused_boundary.get(device)
        if b is None:
            b = self.boundary.to(device=device, dtype=torch.float32)
            self._fused_boundary[device] = b
        return b

    def check_input(self, x) -> None:
        v = self._require_value(x)
        if not v.is_floating_point():
            self._fail(f"values must be floating point, got {v.dtype} ({describe(x)}); "
                       f"integer ids are not bucketized", FeatureOpTypeError)

    def forward(self, x):
        self.check_config()
        self.check_input(x)
        proc = DataValueProcessor(x)
        return proc.get_output_value(_kernels.fused_bucketize([proc.get_input_value()],
                                                             [self.boundary])[0])


# ================================================================================ cross
class FeatureCross(_OP):
    """``forward([x, y])``: per row, every pair of the row's unique x ids and unique y ids
    becomes ``MurmurHash64A(int64_le(x) || int64_le(y))`` (int64) with weight ``w_x * w_y``
    (missing weights = 1.0). ``x``, ``y``: RaggedTensors with int64 ids, the same number of
    rows and the same offsets dtype (each uses its last offsets level).
    Output: ``RaggedTensor(int64 [M], [offsets [B+1]], weight [M])``.
    """

    def _get_config(self):
        return {}

    def check_input(self, xs) -> None:
        if not isinstance(xs, (list, tuple)) or len(xs) != 2:
            self._fail(f"expects a list [x, y] of two RaggedTensors (e.g. from SelectFields), "
                       f"got {describe(xs)}", FeatureOpTypeError)
        x, y = (self._require_ragged(t) for t in xs)
        for side, t in (("x", x), ("y", y)):
            if t.dtype != torch.int64:
                self._fail(f"{side} ids must be int64, got {t.dtype}", FeatureOpTypeError)
        xo, yo = x.offsets()[-1], y.offsets()[-1]
        if xo.dtype != yo.dtype:
            self._fail(f"x and y offsets must share one dtype, got {xo.dtype} and {yo.dtype}",
                       FeatureOpTypeError)
        if xo.shape[0] != yo.shape[0]:
            self._fail(f"x and y rows do not line up: x has {xo.shape[0] - 1} rows, y has "
                       f"{yo.shape[0] - 1}")

    def forward(self, xs) -> RaggedTensor:
        self.check_input(xs)
        return apply.cross(xs[0], xs[1])


# ================================================================================ truncation
class SequenceTruncate(_OP):
    """Truncate sequences to ``seq_len``.

    * ``n_dims=2``: each row of the last offsets level keeps at most ``seq_len`` values (the
      last ones when ``truncate_side == "left"``, else the first ones); weights are cut too.
      Output ``RaggedTensor(values, [offsets [B+1]], weight, dense_shape=(B, seq_len))`` with a
      ``RaggedPadInfo`` (per-row int32 drop/pad counts).
    * ``n_dims=3`` (last two levels ``[outer, inner]``): every row gets exactly ``seq_len``
      sub-lists (cut on the drop side, padded with empty sub-lists on the right); outer offsets
      ``arange(0, (B+1)*seq_len, seq_len)``.

    Direct call: with ``check_length`` a sequence longer than ``seq_len`` raises an
    AssertionError (RecIS); with ``truncate=False`` the input is returned unchanged (RecIS
    returns ``None``). Inside ``FeatureEngine`` both flags are ignored and it always truncates
    (RecIS quirk Q4, kept; the deepctr example relies on it).
    """

    def __init__(self, seq_len: int = 64, check_length: bool = True, truncate: bool = True,
                 truncate_side: str = "left", n_dims: int = 2, dtype: torch.dtype = torch.long):
        super().__init__()
        self.seq_len = seq_len
        self.check_length = check_length
        self.truncate = truncate
        self.truncate_side = truncate_side
        self.n_dims = n_dims
        self.dtype = dtype
        if isinstance(seq_len, bool) or not isinstance(seq_len, Integral) or seq_len <= 0:
            self._problem = f"seq_len must be an int > 0, got {seq_len!r}"
        elif n_dims not in (2, 3):
            self._problem = f"n_dims must be 2 or 3, got {n_dims!r}"
        elif not isinstance(truncate_side, str):
            self._problem = f"truncate_side must be a str, got {type(truncate_side).__name__}"

    @property
    def drop_left(self) -> bool:
        """True when values are dropped from the left (the last ``seq_len`` are kept)."""
        return self.truncate_side == "left"

    def _get_config(self):
        return {"seq_len": self.seq_len, "check_length": self.check_length,
                "truncate": self.truncate, "truncate_side": self.truncate_side,
                "n_dims": self.n_dims, "dtype": str(self.dtype)}

    def _label_args(self) -> str:
        return (f"seq_len={self.seq_len}, truncate_side={self.truncate_side!r}, "
                f"n_dims={self.n_dims}")

    def check_input(self, x) -> None:
        self._require_ragged(x, levels=self.n_dims - 1)

    def forward(self, x):
        self.check_config()
        self.check_input(x)
        if self.check_length:
            longest = x.get_shape(1)
            if longest > self.seq_len:
                self._fail(f"check_length=True but the input has {longest} entries in a row "
                           f"(> seq_len); pass check_length=False to truncate",
                           FeatureOpAssertionError)
        if not self.truncate:
            return x
        fn = apply.cutoff_2d if self.n_dims == 2 else apply.cutoff_3d
        return fn([x], [self.seq_len], [self.drop_left])[0]


# ================================================================================ hashing
class Hash(_OP):
    """Hash each string of a byte-level RaggedTensor to one int64 (``"farm"``: FarmHash
    Fingerprint64; ``"murmur"``: MurmurHash64A seed 0; no modulo).

    Input: int8/uint8 values, at least two offsets levels, the last one delimiting strings
    (what ``varlen_feature(trans_int8=True)`` gives) and no weight.
    Output: ``RaggedTensor(int64 [num_strings], x.offsets()[:-1], dense_shape[:-1])``.

    ``bucket_size=N`` (the form of RecIS's documentation, ``Hash(bucket_size=...)``; RecIS's
    class has no such argument, COMPATIBILITY.md) buckets the hashes: values
    ``uint64(h) % N`` in ``[0, N)``, exactly ``Hash(hash_type)`` followed by ``Mod(N)``, which
    is what :meth:`Feature.add_op <recis_compat.features.feature.Feature.add_op>` turns it into
    (see :meth:`split`). ``hash_type`` defaults to ``"farm"`` when ``bucket_size`` is given.
    """

    def __init__(self, hash_type: Optional[str] = None, bucket_size: Optional[int] = None):
        super().__init__()
        if hash_type is None and bucket_size is None:
            raise TypeError("Hash() needs hash_type ('farm' or 'murmur'), or bucket_size=N "
                            "(documented form: farm hash, then modulo N)")
        if hash_type is None:
            hash_type = "farm"
        self.hash_type = hash_type
        self.bucket_size = bucket_size
        if hash_type not in ("farm", "murmur"):
            self._problem = f"hash_type must be 'farm' or 'murmur', got {hash_type!r}"
        elif bucket_size is not None:
            if isinstance(bucket_size, bool) or not isinstance(bucket_size, Integral):
                self._problem = f"bucket_size must be an int, got {type(bucket_size).__name__}"
            elif not 0 < int(bucket_size) <= _INT64_MAX:
                self._problem = f"bucket_size must be > 0 (and < 2**63), got {bucket_size}"
            else:
                self.bucket_size = int(bucket_size)

    def _get_config(self):
        if self.bucket_size is None:
            return {"hash_type": self.hash_type}
        return {"hash_type": self.hash_type, "bucket_size": self.bucket_size}

    def _label_args(self) -> str:
        if self.bucket_size is None:
            return repr(self.hash_type)
        return f"{self.hash_type!r}, bucket_size={self.bucket_size}"

    def split(self) -> List[_OP]:
        """The RecIS ops this op is: ``[self]`` without ``bucket_size``, else
        ``[Hash(hash_type), Mod(bucket_size)]`` (what a ``FeatureEngine`` fuses)."""
        self.check_config()
        if self.bucket_size is None:
            return [self]
        return [Hash(self.hash_type), Mod(self.bucket_size)]

    def check_input(self, x) -> None:
        self._require_ragged(x, levels=2)
        if x.dtype not in (torch.int8, torch.uint8):
            self._fail(f"expects string bytes (int8/uint8 values, e.g. "
                       f"varlen_feature(trans_int8=True)), got {x.dtype}", FeatureOpTypeError)
        if x.weight() is not None:
            self._fail("the input has a per-byte weight, which cannot be carried to per-string "
                       "hashes; drop the weight before hashing")

    def forward(self, x) -> RaggedTensor:
        self.check_config()
        self.check_input(x)
        out = apply.hash_strings([x], self.hash_type)[0]
        if self.bucket_size is None:
            return out
        proc = DataValueProcessor(out)
        return proc.get_output_value(_kernels.fused_uint64_mod([proc.get_input_value()],
                                                              [int(self.bucket_size)])[0])


def _is_prime(n: int) -> bool:
    """Deterministic Miller-Rabin for n < 3.3e24 (same answer as trial division)."""
    if n < 2:
        return False
    small = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37)
    for p in small:
        if n % p == 0:
            return n == p
    d, s = n - 1, 0
    while d % 2 == 0:
        d, s = d // 2, s + 1
    for a in small:
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = x * x % n
            if x == n - 1:
                break
        else:
            return False
    return True


def largest_prime_at_most(n: int) -> int:
    """The largest prime ``<= n`` (``n >= 2``)."""
    while n >= 2 and not _is_prime(n):
        n -= 1
    if n < 2:
        raise ValueError("no prime <= n")
    return n


class IDMultiHash(_OP):
    """Up to 4 hashes of int64 ids: ``h_j(x) = (((x*mul_j) % p_j + p_j) % p_j) % num_buckets[j]``
    (C int64 semantics), ``p_j`` the largest prime ``<= multi_mods[j] * num_buckets[j]``.

    Output: ``{"multi_hash_0": ..., ...}``, each in the input's structure (RaggedTensors share
    the input's offsets and weight; dense tensors keep the shape).
    """

    multi_muls = [1, 3, 5, 7]
    multi_mods = [29, 47, 67, 83]

    def __init__(self, num_buckets: List[int]):
        super().__init__()
        self.num_buckets = list(num_buckets) if isinstance(num_buckets, (list, tuple)) \
            else num_buckets
        self.primes: List[int] = []
        nb = self.num_buckets
        if not isinstance(nb, list):
            self._problem = f"num_buckets must be a list of ints, got {type(nb).__name__}"
        elif not nb:
            self._problem = "num_buckets must not be empty"
            self._problem_cls = FeatureOpAssertionError
        elif len(nb) > len(self.multi_muls):
            self._problem = (f"num_buckets has {len(nb)} entries; at most "
                             f"{len(self.multi_muls)} hashes are supported")
            self._problem_cls = FeatureOpIndexError
        elif any(isinstance(b, bool) or not isinstance(b, Integral) or b <= 0 for b in nb):
            self._problem = f"every bucket count must be an int > 0, got {nb}"
        else:
            self.num_buckets = [int(b) for b in nb]
            self.primes = [largest_prime_at_most(m * b)
                           for m, b in zip(self.multi_mods, self.num_buckets)]

    def _get_config(self):
        return {"num_buckets": self.num_buckets, "multi_muls": list(self.multi_muls),
                "multi_mods": list(self.multi_mods)}

    def _label_args(self) -> str:
        return f"num_buckets={_short(self.num_buckets)}"

    @property
    def muls(self) -> List[int]:
        """The multipliers in use (one per bucket count)."""
        return list(self.multi_muls[:len(self.primes)])

    def check_input(self, x) -> None:
        v = self._require_value(x)
        if v.dtype != torch.int64:
            self._fail(f"ids must be int64, got {v.dtype} ({describe(x)})", FeatureOpTypeError)

    def forward(self, x) -> Dict[str, object]:
        self.check_config()
        self.check_input(x)
        return apply.multi_hash([x], [self.muls], [self.primes], [self.num_buckets])[0]

