"""coalesce_ids (csrc/embedding/coalesce.cpp): the merged ids and offsets of an EmbeddingEngine
group against the pure-torch reference, opcheck, errors, CUDA twin."""
import pytest
import torch

from recis_compat.ops.coalesce import coalesce_ids
from reference_kernels import coalesce_ids_ref


def _group(sizes, seed=0, off_dtypes=(torch.int32, torch.int64)):
    g = torch.Generator().manual_seed(seed)
    vals, offs = [], []
    for k, n in enumerate(sizes):
        vals.append(torch.randint(-(1 << 62), 1 << 62, (n,), generator=g))
        bags = int(torch.randint(0, 40, (1,), generator=g))
        cuts = torch.sort(torch.randint(0, n + 1, (bags,), generator=g)).values
        off = torch.cat([torch.tensor([0]), cuts, torch.tensor([n])])
        offs.append(off.to(off_dtypes[k % len(off_dtypes)]))
    return vals, offs


@pytest.mark.parametrize("sizes", [[5], [0], [3, 0, 7, 1], [100] * 26, [0, 0], [200_000, 150_000]])
def test_matches_reference(sizes):
    vals, offs = _group(sizes)
    children = [(7 * k + 1) % 4096 for k in range(len(sizes))]
    children[0] = 4095
    ids, merged = coalesce_ids(vals, offs, children)
    ref_ids, ref_off = coalesce_ids_ref(vals, offs, children)
    assert ids.dtype == merged.dtype == torch.int64
    assert torch.equal(ids, ref_ids) and torch.equal(merged, ref_off)
    # the merged offsets describe the same bags: feature k's bag b holds the same encoded ids
    assert merged.numel() == 1 + sum(o.numel() - 1 for o in offs)


def test_encoding_keeps_the_low_52_bits_and_tags_the_child():
    ids, off = coalesce_ids([torch.tensor([-1, 5]), torch.tensor([1 << 60])],
                            [torch.tensor([0, 2]), torch.tensor([0, 0, 1], dtype=torch.int32)], [0, 3])
    mask = (1 << 52) - 1
    assert [x & ((1 << 64) - 1) for x in ids.tolist()] == [mask, 5, ((1 << 60) & mask) | (3 << 52)]
    assert off.tolist() == [0, 2, 2, 3]


def test_bad_inputs_name_the_op_and_the_feature():
    v, o = [torch.tensor([1, 2])], [torch.tensor([0, 2])]
    with pytest.raises(RuntimeError, match=r"coalesce_ids: children\[0\] must be in \[0, 4096\)"):
        coalesce_ids(v, o, [4096])
    with pytest.raises(RuntimeError, match=r"coalesce_ids: values\[1\] must be 1-D int64"):
        coalesce_ids(v + [torch.tensor([1.0])], o + [torch.tensor([0, 1])], [0, 1])
    with pytest.raises(RuntimeError, match=r"coalesce_ids: offsets\[0\] must be 1-D int32/int64"):
        coalesce_ids(v, [torch.tensor([0.0, 2.0])], [0])
    with pytest.raises(RuntimeError, match="got 1 values, 1 offsets and 2 children"):
        coalesce_ids(v, o, [0, 1])
    with pytest.raises(ValueError, match="needs at least one feature"):
        coalesce_ids([], [], [])


def test_opcheck():
    vals, offs = _group([30, 0, 12])
    torch.library.opcheck(torch.ops.recis_compat.coalesce_ids.default, (vals, offs, [1, 2, 3]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    vals, offs = _group([100, 0, 33, 7])
    cpu = coalesce_ids(vals, offs, [1, 2, 3, 4])
    gpu = coalesce_ids([v.cuda() for v in vals], [o.cuda() for o in offs], [1, 2, 3, 4])
    assert torch.equal(gpu[0].cpu(), cpu[0]) and torch.equal(gpu[1].cpu(), cpu[1])
