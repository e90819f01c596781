"""RowStorage: amortised growth, initial values, slots, reset on eviction."""
import pytest
import torch

from recis_compat.backend.row_storage import RowStorage


def counter_sampler():
    state = {"n": 0}

    def sample(k):
        vals = torch.arange(state["n"], state["n"] + k, dtype=torch.float32).unsqueeze(1).repeat(1, 2)
        state["n"] += k
        return vals
    return sample


def test_growth_is_amortised_and_initialises_new_rows():
    st = RowStorage(2, torch.float32, "cpu", counter_sampler(), block=4)
    assert st.capacity == 0
    st.ensure_capacity(1)
    assert st.capacity == 4
    assert st.embedding[:, 0].tolist() == [0, 1, 2, 3]
    for n in range(5, 2000, 37):
        st.ensure_capacity(n)
        # capacity: whole blocks, never more than one block beyond the rows needed
        assert st.capacity == -(-n // 4) * 4
        assert st.reserved_rows >= st.capacity
    # the reserve grows x8: a handful of copies for 2000 rows, not one per call
    assert 1 <= st.num_reallocations <= 4
    assert st.embedding[:, 0].tolist() == list(range(st.capacity))  # rows kept their values


def test_slots_and_reset_rows():
    st = RowStorage(2, torch.float32, "cpu", counter_sampler(), block=4)
    st.ensure_capacity(4)
    st.add_slot("exp_avg", [2], torch.float32)
    st.add_slot("step_filter", [1], torch.int64, init=7)
    assert st.slot("step_filter").flatten().tolist() == [7] * 4
    st.write_rows("exp_avg", torch.tensor([1, 2]), torch.ones(2, 2))
    st.write_rows("step_filter", torch.tensor([1]), torch.tensor([[99]]))
    st.reset_rows(torch.tensor([1]), preserve=["step_filter"])
    assert st.slot("exp_avg")[1].tolist() == [0, 0] and st.slot("exp_avg")[2].tolist() == [1, 1]
    assert st.slot("step_filter")[1].item() == 99
    assert st.embedding[1, 0].item() == 4  # fresh initializer value
    st.ensure_capacity(10)
    assert st.slot("step_filter").shape == (st.capacity, 1)
    assert st.slot("step_filter")[-1].item() == 7
    with pytest.raises(ValueError, match="already exists"):
        st.add_slot("exp_avg", [3], torch.float32)
    with pytest.raises(KeyError, match="no slot"):
        st.slot("nope")
    assert st.memory_bytes() == st.capacity * (2 * 4 + 2 * 4 + 8)


def test_bad_initializer_shape_is_reported():
    st = RowStorage(3, torch.float32, "cpu", lambda k: torch.zeros(k, 2))
    with pytest.raises(RuntimeError, match="expected"):
        st.ensure_capacity(1)


def test_growth_within_the_reserve_does_not_copy():
    """Growing inside the reserve widens a view of the same memory: rows written before keep
    their address, and writes through the new view land in the same tensor."""
    st = RowStorage(3, torch.float32, "cpu", None, block=8)
    st.add_slot("m", [3], torch.float32, init=0.5)
    st.ensure_capacity(100)
    reserved, ptr, ptr_m = st.reserved_rows, st.embedding.data_ptr(), st.slot("m").data_ptr()
    assert reserved >= 800
    st.write_rows("embedding", torch.tensor([5]), torch.full((1, 3), 9.0))
    st.ensure_capacity(reserved)
    assert st.num_reallocations == 1 and st.capacity == reserved
    assert st.embedding.data_ptr() == ptr and st.slot("m").data_ptr() == ptr_m
    assert st.embedding[5].tolist() == [9.0] * 3
    assert bool((st.slot("m")[100:] == 0.5).all()) and bool((st.embedding[100:] == 0).all())
    st.ensure_capacity(reserved + 1)          # past the reserve: one copy, values kept
    assert st.num_reallocations == 2 and st.embedding[5].tolist() == [9.0] * 3
    assert st.memory_bytes() == st.capacity * (3 * 4 + 3 * 4)
    assert st.reserved_bytes() == st.reserved_rows * (3 * 4 + 3 * 4)


def _rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def test_unused_reserve_is_not_resident():
    """The reserve beyond the capacity is address space only: 64 MiB of rows used inside a
    512 MiB reserve (plus a 512 MiB moment slot) adds about 128 MiB of resident memory."""
    st = RowStorage(64, torch.float32, "cpu", None, block=1024)
    st.add_slot("exp_avg", [64], torch.float32)
    rows = (64 << 20) // 256          # 64 MiB of embedding rows
    before = _rss_bytes()
    st.ensure_capacity(rows)
    grown = _rss_bytes() - before
    assert st.reserved_bytes() >= 4 * st.memory_bytes()
    assert grown < st.memory_bytes() + (48 << 20), (grown, st.memory_bytes(), st.reserved_bytes())


def test_copies_hold_compact_slots():
    """pickle / deepcopy of the storage carry ``capacity`` rows per slot, not the reserve."""
    import copy
    import pickle
    st = RowStorage(2, torch.float32, "cpu", None, block=4)
    st.add_slot("v", [2], torch.float32, init=1.0)
    st.ensure_capacity(10)
    st.write_rows("embedding", torch.arange(10), torch.randn(10, 2))
    for dup in (copy.deepcopy(st), pickle.loads(pickle.dumps(st))):
        assert dup.capacity == 12 and dup.reserved_rows == 12
        assert dup.slot("v").untyped_storage().nbytes() == 12 * 2 * 4
        assert torch.equal(dup.embedding, st.embedding)
        dup.ensure_capacity(13)               # grows on its own reserve
        assert dup.capacity == 16 and torch.equal(dup.embedding[:12], st.embedding)
        assert st.capacity == 12


def test_strict_overcommit_reserves_only_x1_5(monkeypatch):
    """With vm.overcommit_memory = 2 reserved address space is charged as memory: the reserve
    then grows by x1.5 (as on CUDA) instead of x8."""
    import recis_compat.backend.row_storage as rs
    monkeypatch.setattr(rs, "_strict_overcommit", lambda: True)
    st = RowStorage(2, torch.float32, "cpu", None, block=10)
    st.ensure_capacity(100)
    assert st.reserved_rows == 100
    st.ensure_capacity(101)
    assert st.capacity == 110 and st.reserved_rows == 150
    monkeypatch.setattr(rs, "_strict_overcommit", lambda: False)
    st.ensure_capacity(151)
    assert st.capacity == 160 and st.reserved_rows == 8 * 160
