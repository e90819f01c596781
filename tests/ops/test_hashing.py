"""hash_bytes / fused_hash_bytes: contract vectors, pyfarmhash and MurmurHash64A oracles, opcheck."""
import itertools
import random

import numpy as np
import pytest
import torch

import reference_kernels as R

from recis_compat.ops import hashing

VECTOR_INPUTS = [b"\x00\x01\x02", b"\x01\x02\x03", b"\x00\x05\x05", b"\x05\x06\x07", b""]
FARM = [-7736835464683084646, -5546720800891377920, -4442022684725028445, -909183002746659612,
        -7286425919675154353]
MURMUR = [-4003751876240412087, -1042754718167355375, -5541886947548579749, 4434088491466393040, 0]


def pack(strings, offset_dtype=torch.int64, data_dtype=torch.uint8):
    data = torch.tensor(list(b"".join(strings)), dtype=torch.uint8).to(data_dtype)
    offsets = torch.tensor([0] + list(itertools.accumulate(len(s) for s in strings)),
                           dtype=offset_dtype)
    return data, offsets


@pytest.mark.parametrize("offset_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("data_dtype", [torch.uint8, torch.int8])
def test_contract_vectors(offset_dtype, data_dtype):
    data, off = pack(VECTOR_INPUTS, offset_dtype, data_dtype)
    assert hashing.hash_bytes(data, off, "farm").tolist() == FARM
    assert hashing.hash_bytes(data, off, "murmur").tolist() == MURMUR


def test_python_murmur_reference_matches_vectors():
    got = [R.bucket_ref(R.murmur64a_ref(s), -1) for s in VECTOR_INPUTS]
    assert got == MURMUR


@pytest.mark.parametrize("hash_type", ["farm", "murmur"])
@pytest.mark.parametrize("bucket", [-1, 0, 1000, (1 << 40) + 7])
def test_random_strings_against_oracles(hash_type, bucket):
    rng = random.Random(1234)
    # 10,000 strings covering every FarmHash length branch (0-16, 17-32, 33-64, >64)
    strings = [bytes(rng.getrandbits(8) for _ in range(rng.choice([rng.randint(0, 16), rng.randint(17, 32),
                                                                   rng.randint(33, 64), rng.randint(65, 300)])))
               for _ in range(10_000)]
    data, off = pack(strings)
    assert hashing.hash_bytes(data, off, hash_type, bucket).tolist() == \
        R.hash_strings_ref(strings, hash_type, bucket)


def test_bucket_rules():
    data, off = pack([b"abc", b"hello world"])
    raw = hashing.hash_bytes(data, off, "farm").numpy().view(np.uint64)
    assert hashing.hash_bytes(data, off, "farm", 0).numpy().tolist() == \
        [int(h) & 0x7FFFFFFFFFFFFFFF for h in raw]
    assert hashing.hash_bytes(data, off, "farm", 97).numpy().tolist() == [int(h) % 97 for h in raw]


def test_fused_equals_single_calls():
    rng = random.Random(7)
    cols = [[bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 40))) for _ in range(n)]
            for n in (0, 1, 513, 3000)]
    packed = [pack(c, dt) for c, dt in zip(cols, [torch.int32, torch.int64, torch.int32, torch.int64])]
    buckets = [0, -1, 10, 12345]
    fused = hashing.fused_hash_bytes([p[0] for p in packed], [p[1] for p in packed], "murmur", buckets)
    for (d, o), b, f in zip(packed, buckets, fused):
        assert torch.equal(f, hashing.hash_bytes(d, o, "murmur", b))


def test_sliced_offsets_not_starting_at_zero():
    strings = [b"a", b"bb", b"ccc", b"dddd"]
    data, off = pack(strings)
    got = hashing.hash_bytes(data, off[1:], "farm")
    assert got.tolist() == R.hash_strings_ref(strings[1:], "farm")


@pytest.mark.parametrize("bad, match", [
    (dict(hash_type="city"), "hash_type must be 'farm' or 'murmur'"),
])
def test_bad_hash_type(bad, match):
    data, off = pack([b"x"])
    with pytest.raises(ValueError, match=match):
        hashing.hash_bytes(data, off, **bad)


def test_bad_inputs_name_the_op():
    data, off = pack([b"xyz"])
    with pytest.raises(RuntimeError, match="hash_bytes.*offsets run from 0 to 9"):
        torch.ops.recis_compat.hash_bytes(data, torch.tensor([0, 9]), "farm", -1)
    with pytest.raises(RuntimeError, match="non-decreasing"):
        torch.ops.recis_compat.hash_bytes(data, torch.tensor([0, 2, 1]), "farm", -1)
    with pytest.raises(RuntimeError, match="uint8 or int8"):
        torch.ops.recis_compat.hash_bytes(data.float(), off, "farm", -1)
    with pytest.raises(RuntimeError, match="int32 or int64"):
        torch.ops.recis_compat.hash_bytes(data, off.float(), "farm", -1)


def test_opcheck():
    data, off = pack([b"abc", b"", b"0123456789abcdefghij"])
    torch.library.opcheck(torch.ops.recis_compat.hash_bytes.default, (data, off, "farm", -1))
    torch.library.opcheck(torch.ops.recis_compat.fused_hash_bytes.default,
                          ([data, data], [off, off[:2]], "murmur", [0, 5]))
