"""``IdMap.find_or_insert(expect_new=True)`` (a growing table's batch, backend/id_map.py): a batch
that needs a growth is inserted into a copy grown for all of it, without counting its absent ids
(no find and no dedupe of the batch); a wrong guess (a known or repeated id) drops the copy and
the batch takes the counted path. Either way rows, new marks, capacity and later answers equal
the counted path's (``expect_new=False``)."""
import pytest
import torch

import recis_compat.backend.id_map as id_map_module
from recis_compat.backend.id_map import IdMap


def _fresh(n, seed):
    g = torch.Generator().manual_seed(seed)
    ids = torch.unique(torch.randint(-(2 ** 62), 2 ** 62, (n + n // 8,), generator=g))[:n]
    return ids[torch.randperm(ids.numel(), generator=g)]


class _Spy:
    """Counts the batch-sized finds and dedupes the map makes (ids beyond the guess probe)."""

    def __init__(self, monkeypatch):
        self.big = []
        for name in ("find", "unique_first_seen"):
            real = getattr(id_map_module._ops, name)

            def spy(*args, _real=real, _name=name):
                ids = args[-1] if _name == "find" else args[0]
                if ids.numel() > id_map_module._GUESS_PROBE:
                    self.big.append((_name, ids.numel()))
                return _real(*args)
            monkeypatch.setattr(id_map_module._ops, name, spy)


def _same(a: IdMap, b: IdMap):
    assert a.capacity == b.capacity
    assert len(a) == len(b) and a.num_rows_allocated() == b.num_rows_allocated()
    ia, ra = a.ids_and_rows()
    ib, rb = b.ids_and_rows()
    assert torch.equal(ia, ib) and torch.equal(ra, rb)


def test_growing_batches_skip_the_count_and_equal_the_counted_path(monkeypatch):
    counted, guessed = IdMap(), IdMap()
    batches = [_fresh(6000, s) for s in range(12)]
    spy = _Spy(monkeypatch)
    for b in batches:
        r1, n1 = counted.find_or_insert(b)
        before = len(spy.big)
        r2, n2 = guessed.find_or_insert(b, expect_new=True)
        assert len(spy.big) == before, spy.big[before:]     # no find / dedupe of the batch
        assert torch.equal(r1, r2) and torch.equal(n1, n2)
        _same(counted, guessed)
    assert spy.big, "the counted path must have counted (the test must exercise growth)"
    assert guessed.num_rehashes == counted.num_rehashes >= 3
    assert guessed.num_discarded_rehashes == 0
    # the grown map answers as the counted one
    probe = torch.cat([b[::97] for b in batches] + [_fresh(50, 99)])
    assert torch.equal(guessed.find(probe), counted.find(probe))


@pytest.mark.parametrize("wrong", ["repeat", "known"])
def test_a_wrong_guess_past_the_probe_is_dropped_and_changes_nothing(wrong):
    """An id past the first ``_GUESS_PROBE`` that repeats or is already stored: the grown copy is
    dropped (one discarded rehash) and the result is the counted path's."""
    counted, guessed = IdMap(), IdMap()
    for m in (counted, guessed):
        m.find_or_insert(_fresh(3000, 1))
    known = _fresh(3000, 1)[:40]
    batch = _fresh(4000, 2)
    if wrong == "repeat":
        batch = torch.cat([batch, batch[1000:1040]])
    else:
        batch = torch.cat([batch, known])
    r1, n1 = counted.find_or_insert(batch)
    r2, n2 = guessed.find_or_insert(batch, expect_new=True)
    assert torch.equal(r1, r2) and torch.equal(n1, n2)
    assert guessed.num_discarded_rehashes == 1
    assert guessed.num_rehashes == counted.num_rehashes
    _same(counted, guessed)


def test_a_wrong_guess_in_the_probe_costs_no_rehash():
    m = IdMap()
    first = _fresh(3000, 3)
    m.find_or_insert(first)
    batch = torch.cat([first[:5], _fresh(4000, 4)])     # known ids at the front
    m.find_or_insert(batch, expect_new=True)
    assert m.num_discarded_rehashes == 0
    assert len(m) == 3000 + 4000


def test_free_rows_and_tombstones_take_the_same_rows():
    """Deleted ids leave tombstones and a free stack: the guessed growth drops the tombstones and
    hands out the freed rows first, as the counted path does."""
    counted, guessed = IdMap(), IdMap()
    first = _fresh(5000, 5)
    for m in (counted, guessed):
        m.find_or_insert(first)
        m.delete(first[::3])
    batch = _fresh(4000, 6)
    r1, n1 = counted.find_or_insert(batch)
    r2, n2 = guessed.find_or_insert(batch, expect_new=True)
    assert torch.equal(r1, r2) and torch.equal(n1, n2)
    assert guessed.num_discarded_rehashes == 0 and guessed.num_tombstones() == counted.num_tombstones() == 0
    _same(counted, guessed)


def test_a_map_pickled_without_the_counter_still_guesses():
    """An IdMap pickled before ``num_discarded_rehashes`` existed (its ``__dict__`` lacks it)
    loads and takes the guessed growth, counting a dropped one from 0."""
    import pickle

    m = IdMap()
    m.find_or_insert(_fresh(3000, 7))
    del m.__dict__["num_discarded_rehashes"]
    old = pickle.loads(pickle.dumps(m))
    batch = torch.cat([_fresh(4000, 8), _fresh(3000, 7)[:3]])     # known ids past the probe
    old.find_or_insert(batch, expect_new=True)
    assert old.num_discarded_rehashes == 1 and len(old) == 3000 + 4000
