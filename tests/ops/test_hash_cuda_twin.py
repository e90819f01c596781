"""CUDA twins of the string-hash ops agree with their CPU kernels, and no CUDA twin drifts.

The comparison tests need a GPU (skipped without one). The source checks always run: every
``csrc/**/*.cu`` registers CUDA kernels for ``recis_compat``, and every op it registers there
also has a CPU kernel registered in a ``.cpp`` file. (``make cuda-check`` compiles the .cu files;
it is not run from here because it is slow and ``make test`` already runs it.)
"""
import pathlib
import re

import pytest
import torch

REPO = pathlib.Path(__file__).resolve().parents[2]
CSRC = REPO / "csrc"

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

HASH_TYPES = ["farm", "murmur"]
BUCKETS = [-1, 0, 1000]


# ---------------------------------------------------------------- random ragged strings
def _random_strings(n: int, seed: int, max_len: int = 200, dtype=torch.uint8,
                    off_dtype=torch.int64):
    """``n`` random byte strings as (data, offsets); lengths cover every FarmHash length branch
    (0, 1-3, 4-7, 8-16, 17-32, 33-64, > 64 with and without a partial last block)."""
    g = torch.Generator().manual_seed(seed)
    fixed = torch.tensor([0, 1, 3, 4, 7, 8, 16, 17, 32, 33, 64, 65, 127, 128, 129])
    lens = torch.randint(0, max_len + 1, (n,), generator=g)
    lens[: min(n, fixed.numel())] = fixed[: min(n, fixed.numel())]
    offsets = torch.zeros(n + 1, dtype=torch.int64)
    offsets[1:] = torch.cumsum(lens, 0)
    data = torch.randint(0, 256, (int(offsets[-1]),), generator=g, dtype=torch.int64)
    data = data.to(torch.uint8)
    if dtype == torch.int8:
        data = data.view(torch.int8)
    return data, offsets.to(off_dtype)


def _ops():
    import recis_compat.ops  # noqa: F401  (loads the extension)
    from recis_compat.ops import has_cuda_kernel

    for name in ("hash_bytes", "fused_hash_bytes"):
        if not has_cuda_kernel(name):
            pytest.skip(f"this build of recis_compat._C has no CUDA kernel for {name} "
                        "(built without nvcc or against a CPU torch)")
    return torch.ops.recis_compat


# ---------------------------------------------------------------- CUDA vs CPU
@needs_cuda
@pytest.mark.parametrize("hash_type", HASH_TYPES)
@pytest.mark.parametrize("bucket", BUCKETS)
@pytest.mark.parametrize("off_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("dtype", [torch.uint8, torch.int8])
def test_hash_bytes_cuda_matches_cpu(hash_type, bucket, off_dtype, dtype):
    ops = _ops()
    data, offsets = _random_strings(3000, seed=7, dtype=dtype, off_dtype=off_dtype)
    want = ops.hash_bytes(data, offsets, hash_type, bucket)
    got = ops.hash_bytes(data.cuda(), offsets.cuda(), hash_type, bucket)
    assert got.device.type == "cuda" and got.dtype == torch.int64
    assert torch.equal(got.cpu(), want)


@needs_cuda
@pytest.mark.parametrize("hash_type", HASH_TYPES)
def test_fused_hash_bytes_cuda_matches_cpu(hash_type):
    ops = _ops()
    # mixed sizes (incl. an input with no strings and one with only empty strings), dtypes, buckets
    inputs = [
        _random_strings(1000, seed=1),
        _random_strings(0, seed=2),
        _random_strings(5, seed=3, off_dtype=torch.int32, dtype=torch.int8),
        (torch.empty(0, dtype=torch.uint8), torch.zeros(4, dtype=torch.int64)),
        _random_strings(2500, seed=4, max_len=40, off_dtype=torch.int32),
        _random_strings(300, seed=5, max_len=600),
    ]
    data = [d for d, _ in inputs]
    offsets = [o for _, o in inputs]
    buckets = [BUCKETS[k % len(BUCKETS)] for k in range(len(inputs))]
    want = ops.fused_hash_bytes(data, offsets, hash_type, buckets)
    got = ops.fused_hash_bytes([d.cuda() for d in data], [o.cuda() for o in offsets], hash_type,
                               buckets)
    assert len(got) == len(want)
    for k, (g, w) in enumerate(zip(got, want)):
        assert g.device.type == "cuda", k
        assert torch.equal(g.cpu(), w), f"input {k}"
    # the fused op equals one hash_bytes call per input
    for k in range(len(inputs)):
        single = ops.hash_bytes(data[k].cuda(), offsets[k].cuda(), hash_type, buckets[k])
        assert torch.equal(single.cpu(), want[k]), f"input {k}"


@needs_cuda
def test_fused_hash_bytes_cuda_no_inputs():
    ops = _ops()
    assert ops.fused_hash_bytes([], [], "farm", []) == []


@needs_cuda
@pytest.mark.parametrize("bad", [
    [0, 3, 2, 5],    # decreasing
    [-1, 2, 5],      # negative start
    [0, 2, 99],      # past the data
    [99],            # no strings, still out of range
])
def test_bad_offsets_raise_like_cpu(bad):
    ops = _ops()
    data = torch.arange(5, dtype=torch.uint8)
    offsets = torch.tensor(bad, dtype=torch.int64)
    with pytest.raises(RuntimeError) as cpu_err:
        ops.hash_bytes(data, offsets, "farm", -1)
    with pytest.raises(RuntimeError) as cuda_err:
        ops.hash_bytes(data.cuda(), offsets.cuda(), "farm", -1)
    first_line = str(cpu_err.value).splitlines()[0]
    assert first_line in str(cuda_err.value)


@needs_cuda
def test_bad_arguments_name_the_op():
    ops = _ops()
    data, offsets = _random_strings(10, seed=0)
    with pytest.raises(RuntimeError, match="hash_type must be 'farm' or 'murmur'"):
        ops.hash_bytes(data.cuda(), offsets.cuda(), "md5", -1)
    with pytest.raises(RuntimeError, match="recis_compat::fused_hash_bytes: data and offsets must be on one device"):
        ops.hash_bytes(data.cuda(), offsets, "farm", -1)
    with pytest.raises(RuntimeError, match="recis_compat::fused_hash_bytes: offsets must be int32 or int64"):
        ops.hash_bytes(data.cuda(), offsets.cuda().float(), "farm", -1)
    with pytest.raises(RuntimeError, match="recis_compat::fused_hash_bytes: data must be uint8 or int8"):
        ops.hash_bytes(data.cuda().float(), offsets.cuda(), "farm", -1)


# ---------------------------------------------------------------- source checks (no GPU needed)
_IMPL_BLOCK = re.compile(r"TORCH_LIBRARY_IMPL\s*\(\s*(\w+)\s*,\s*(\w+)\s*,\s*(\w+)\s*\)\s*\{")
# dispatch keys whose kernels serve CPU tensors
_CPU_KEYS = {"CPU", "CompositeExplicitAutograd", "CompositeImplicitAutograd",
             "CompositeExplicitAutogradNonFunctional"}


def _strip_comments(src: str) -> str:
    """C++ source without comments (string literals kept, so m.impl("...") survives)."""
    token = re.compile(r'//[^\n]*|/\*.*?\*/|"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'', re.S)
    return token.sub(lambda m: m.group(0) if m.group(0)[0] in "\"'" else " ", src)


def _impl_blocks(path: pathlib.Path):
    """Yield (namespace, dispatch_key, [op names]) for each TORCH_LIBRARY_IMPL block in a file."""
    src = _strip_comments(path.read_text())
    for m in _IMPL_BLOCK.finditer(src):
        ns, key, var = m.groups()
        depth, i = 1, m.end()
        while i < len(src) and depth:
            depth += {"{": 1, "}": -1}.get(src[i], 0)
            i += 1
        body = src[m.end():i - 1]
        names = re.findall(rf'\b{re.escape(var)}\s*\.\s*impl\s*\(\s*"([^"]+)"', body)
        yield ns, key, [n.split("::", 1)[1] if "::" in n else n for n in names]


def _registrations(suffix: str):
    """{file: [(key, op), ...]} for recis_compat registrations in csrc/**/*<suffix>."""
    out = {}
    for path in sorted(CSRC.rglob(f"*{suffix}")):
        out[path] = [(key, op) for ns, key, ops in _impl_blocks(path) if ns == "recis_compat"
                     for op in ops]
    return out


def test_parser_reads_the_string_hash_registrations():
    cpu = _registrations(".cpp")[CSRC / "hash" / "string_hash.cpp"]
    assert ("CPU", "hash_bytes") in cpu and ("CPU", "fused_hash_bytes") in cpu
    cuda = _registrations(".cu")[CSRC / "hash" / "string_hash.cu"]
    assert set(cuda) == {("CUDA", "hash_bytes"), ("CUDA", "fused_hash_bytes")}


def test_every_cu_file_registers_cuda_kernels():
    cu = _registrations(".cu")
    assert cu, "no csrc/**/*.cu files found"
    for path, regs in cu.items():
        rel = path.relative_to(REPO)
        assert any(key == "CUDA" for key, _ in regs), (
            f"{rel} registers no op in a TORCH_LIBRARY_IMPL(recis_compat, CUDA, m) block")
        others = sorted({key for key, _ in regs} - {"CUDA"})
        assert not others, f"{rel} registers kernels for {others}; .cu files register CUDA only"


def test_every_cuda_op_has_a_cpu_twin():
    cpu_ops = {op for regs in _registrations(".cpp").values() for key, op in regs
               if key in _CPU_KEYS}
    missing = {}
    for path, regs in _registrations(".cu").items():
        for key, op in regs:
            if key == "CUDA" and op not in cpu_ops:
                missing.setdefault(str(path.relative_to(REPO)), []).append(op)
    assert not missing, f"ops with a CUDA kernel but no CPU kernel in any csrc .cpp: {missing}"


def test_cu_files_avoid_headers_cuda_check_cannot_compile():
    # tools/cuda_check.sh compiles against the CUDA torch wheel's headers and a bare CUDA toolkit:
    # no Python.h (torch/extension.h) and no cuBLAS/cuSPARSE (ATen/cuda/CUDAContext.h).
    banned = re.compile(r'#\s*include\s*[<"](torch/extension\.h|ATen/cuda/CUDAContext\.h)[>"]')
    bad = {str(p.relative_to(REPO)): banned.findall(_strip_comments(p.read_text()))
           for p in sorted(CSRC.rglob("*.cu"))}
    bad = {k: v for k, v in bad.items() if v}
    assert not bad, (f"{bad}: include <ATen/ATen.h>, <torch/library.h> and c10/cuda headers "
                     "(c10/cuda/CUDAStream.h for the current stream) instead")
