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
    caps = []
    for n in range(5, 2000, 37):
        st.ensure_capacity(n)
        caps.append(st.capacity)
        assert st.capacity >= n and st.capacity <= max(int(1.5 * n) + 4, n + 4)
    assert len(set(caps)) < len(caps)  # not a reallocation per call
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
