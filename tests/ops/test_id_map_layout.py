"""The id map's 64-byte bucket layout (csrc/embedding/id_map.h): overflow chains across buckets
and around the table's end, loading the earlier int32 [capacity, 3] layout, and layout checks."""
import warnings

import pytest
import torch

from recis_compat.backend.id_map import IdMap, empty_table, slot_keys_and_states
from recis_compat.ops import id_map as ops
import reference_kernels as R
from reference_kernels import IdMapRef

I64_MIN, I64_MAX = -(2 ** 63), 2 ** 63 - 1


def ids_with_home_bucket(bucket, num_buckets, count, start=0):
    """``count`` ids (from ``start`` upwards, signed and near the int64 ends) whose home bucket
    in a table of ``num_buckets`` buckets is ``bucket``."""
    out, k = [], start
    while len(out) < count:
        for cand in (k, -k - 1, I64_MIN + k, I64_MAX - k):
            if R.id_map_home_slot_ref(cand, num_buckets) == bucket and cand not in out:
                out.append(cand)
        k += 1
    return out[:count]


def fresh(capacity):
    return empty_table(capacity), torch.zeros(4, dtype=torch.int64), torch.zeros(64, dtype=torch.int64)


def test_overflow_chain_wraps_around_the_last_bucket():
    """Thirteen ids sharing the last bucket of a 4-bucket table fill it, then buckets 0 and 1
    (wrap-around); find, delete (tombstones inside the chain) and re-insert behave as the
    reference, and the slots sit where linear probing from lane 0 of the home bucket puts them."""
    table, meta, free = fresh(20)
    nb = table.shape[0]
    assert nb == 4
    chain = ids_with_home_bucket(nb - 1, nb, 13)
    ref = IdMapRef()
    rows, new = ops.find_or_insert(table, meta, free, torch.tensor(chain))
    rrows, rnew = R.find_or_insert_ref(ref, torch.tensor(chain))
    assert torch.equal(rows, rrows) and torch.equal(new, rnew)
    keys, states = slot_keys_and_states(table)
    # first-come order: lanes 0..4 of bucket 3, then bucket 0, then three lanes of bucket 1
    assert keys[15:20].tolist() == chain[:5] and keys[0:5].tolist() == chain[5:10]
    assert keys[5:8].tolist() == chain[10:13] and states[8:15].tolist() == [-1] * 7
    assert ops.find(table, torch.tensor(chain)).tolist() == list(range(13))
    victims = torch.tensor([chain[0], chain[7], chain[12], 424242])
    assert torch.equal(ops.delete(table, meta, free, victims), R.delete_ref(ref, victims))
    assert states.numel() == 20 and slot_keys_and_states(table)[1][15].item() == -2   # tombstone
    probe = torch.tensor(chain + [424242])
    assert torch.equal(ops.find(table, probe), R.find_ref(ref, probe))
    again = torch.tensor([chain[7], chain[3], chain[0]] + ids_with_home_bucket(nb - 1, nb, 2, start=10 ** 6))
    rows, new = ops.find_or_insert(table, meta, free, again)
    rrows, rnew = R.find_or_insert_ref(ref, again)
    assert torch.equal(rows, rrows) and torch.equal(new, rnew)
    ids, rows = ops.export(table, meta)
    assert [ids.tolist(), rows.tolist()] == list(map(list, ref.export()))
    t2, m2 = ops.rehash(table, meta, 40)
    assert t2.shape == (8, 8) and int(m2[2]) == 0
    assert torch.equal(ops.find(t2, probe), R.find_ref(ref, probe))


@pytest.mark.parametrize("threads", [1, 2])
def test_full_table_high_load_vs_reference(threads):
    """At load 0.9 (max_load's upper bound) long chains span many buckets; inserts, deletes and
    finds still match the reference on 1 and 2 threads."""
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        m, ref = IdMap(max_load=0.9), IdMapRef()
        g = torch.Generator().manual_seed(31)
        for step in range(8):
            ids = torch.randint(I64_MIN, I64_MAX, (6000,), generator=g)
            ids = torch.cat([ids, ids[:2000]])
            rows, new = m.find_or_insert(ids)
            rrows, rnew = R.find_or_insert_ref(ref, ids)
            assert torch.equal(rows, rrows) and torch.equal(new, rnew)
            victims = ids[::3]
            assert torch.equal(m.delete(victims), R.delete_ref(ref, victims))
            probe = torch.cat([ids[::2], torch.randint(I64_MIN, I64_MAX, (500,), generator=g)])
            assert torch.equal(m.find(probe), R.find_ref(ref, probe))
        assert (len(m) + m.num_tombstones()) / m.capacity > 0.6
        ids, rows = m.ids_and_rows()
        assert [ids.tolist(), rows.tolist()] == list(map(list, ref.export()))
    finally:
        torch.set_num_threads(old)


def int32x3_state(ref, capacity, tombstones):
    """The state dict an IdMap of the int32 [capacity, 3] layout held for ``ref``'s map: slot j =
    (key_lo, key_hi, state), home slot ``id_map_home_slot_ref(key, capacity)`` (multiply-shift),
    linear probing; ``tombstones`` extra tombstoned slots (deleted keys) on the probe paths."""
    keys, states = [0] * capacity, [-1] * capacity
    ids, rows = ref.export()
    for k, r in zip(ids, rows):
        j = R.id_map_home_slot_ref(k, capacity)
        while states[j] != -1:
            j = (j + 1) % capacity
        keys[j], states[j] = k, r
    placed = 0
    for j in range(capacity):
        if states[j] == -1 and placed < tombstones:
            keys[j], states[j] = 987654321, -2
            placed += 1
    table = torch.empty(capacity, 3, dtype=torch.int32)
    table[:, :2] = torch.tensor(keys, dtype=torch.int64).view(torch.int32).view(-1, 2)
    table[:, 2] = torch.tensor(states, dtype=torch.int32)
    meta = torch.tensor([len(ref), ref.next_row, placed, len(ref.free)], dtype=torch.int64)
    return {"table": table, "meta": meta, "free_rows": torch.tensor(list(ref.free), dtype=torch.int64)}


def test_int32x3_layout_state_dict_loads():
    """A checkpoint written with the int32 [capacity, 3] table (any capacity, tombstones, a free
    stack) loads into the bucketed layout: the same ids keep the same rows, the free stack is
    kept and reused, the capacity follows the growth policy."""
    ref = IdMapRef()
    g = torch.Generator().manual_seed(41)
    ids = torch.cat([torch.randint(I64_MIN, I64_MAX, (2500,), generator=g),
                     torch.tensor([I64_MIN, I64_MAX, -1, 0, 1])])
    ref.find_or_insert(ids.tolist())
    ref.delete(ids[::5].tolist())
    sd = int32x3_state(ref, capacity=4001, tombstones=100)
    keys, states = slot_keys_and_states(sd["table"])                    # the decoder reads it back
    assert sorted(k for k, s in zip(keys.tolist(), states.tolist()) if s >= 0) == sorted(ref.export()[0])
    m = IdMap.from_state_dict(sd)
    table = m.state_dict()["table"]
    assert table.dtype == torch.int64 and table.shape[1] == 8 and m.num_tombstones() == 0
    assert m.capacity == 5 * -(-m._capacity_for(len(ref)) // 5)
    exported = m.ids_and_rows()
    assert [exported[0].tolist(), exported[1].tolist()] == list(map(list, ref.export()))
    assert m.num_free_rows() == len(ref.free) and m.num_rows_allocated() == ref.next_row
    probe = torch.cat([ids, torch.randint(I64_MIN, I64_MAX, (300,), generator=g)])
    assert torch.equal(m.find(probe), R.find_ref(ref, probe))
    more = torch.randint(I64_MIN, I64_MAX, (1000,), generator=g)
    assert torch.equal(m.find_or_insert(more)[0], R.find_or_insert_ref(ref, more)[0])  # free rows reused
    # a transient state (a crashed insert's pending slot) is refused with a clear error
    bad = dict(sd, table=sd["table"].clone())
    bad["table"][int(torch.nonzero(bad["table"][:, 2] >= 0)[0]), 2] = -7
    with pytest.raises(ValueError, match="transient"):
        IdMap.from_state_dict(bad)
    # a meta that disagrees with the table is refused too
    with pytest.raises(ValueError, match="consistent"):
        IdMap.from_state_dict(dict(sd, meta=sd["meta"] + torch.tensor([1, 1, 0, 0])))


def test_layout_checks():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")                     # frombuffer on a non-writable-aware buffer
        buf = bytearray(b"\xff" * (64 * 2 + 4))
        misaligned = torch.frombuffer(buf, dtype=torch.int64, offset=4, count=16).view(2, 8)
    with pytest.raises(RuntimeError, match="8-byte aligned"):
        ops.find(misaligned, torch.tensor([1]))
    with pytest.raises(RuntimeError, match=r"int64 \[num_buckets, 8\]"):
        ops.find(torch.zeros(4, 8, dtype=torch.int32), torch.tensor([1]))
    with pytest.raises(RuntimeError, match="must be contiguous"):
        ops.find(torch.full((8, 4), -1, dtype=torch.int64).t(), torch.tensor([1]))
    with pytest.raises(ValueError, match=r"must be int64 \[num_buckets, 8\]"):
        IdMap().load_state_dict({"table": torch.zeros(4, 4, dtype=torch.int64),
                                 "meta": torch.zeros(4, dtype=torch.int64),
                                 "free_rows": torch.zeros(0, dtype=torch.int64)})
    # an empty table: every word -1, so every state is empty and nothing is found
    t = empty_table(11)
    assert t.shape == (3, 8) and ops.find(t, torch.tensor([-1, 0, I64_MIN])).tolist() == [-1, -1, -1]


def test_tombstoned_copy_before_the_live_key_in_one_bucket():
    """A deleted id leaves its key in a tombstoned lane; re-inserted, it lands in a later lane of
    the same bucket. Lookups (find, find_or_insert of the known id, delete) must skip the stale
    copy, whose key compares equal, and reach the live lane."""
    table, meta, free = fresh(10)                         # two buckets
    a, b, c = ids_with_home_bucket(0, 2, 3)
    assert ops.find_or_insert(table, meta, free, torch.tensor([a, b]))[0].tolist() == [0, 1]
    assert ops.delete(table, meta, free, torch.tensor([a])).tolist() == [0]
    assert ops.find_or_insert(table, meta, free, torch.tensor([c]))[0].tolist() == [0]   # row 0 reused
    assert ops.find_or_insert(table, meta, free, torch.tensor([a]))[0].tolist() == [2]
    keys, states = slot_keys_and_states(table)
    assert keys[0].item() == a and states[0].item() == -2 and keys[3].item() == a and states[3].item() == 2
    absent = ids_with_home_bucket(0, 2, 1, start=10 ** 6)[0]
    assert ops.find(table, torch.tensor([a, b, c, absent])).tolist() == [2, 1, 0, -1]
    rows, new = ops.find_or_insert(table, meta, free, torch.tensor([a, c]))
    assert rows.tolist() == [2, 0] and not new.any()
    assert ops.delete(table, meta, free, torch.tensor([a])).tolist() == [2]
    assert ops.find(table, torch.tensor([a, b, c])).tolist() == [-1, 1, 0]
