"""unique_first_seen (csrc unique_inverse) over its per-thread scratch table, kept between calls
(csrc/embedding/id_map.cpp): every call's answer equals a first-occurrence reference, whatever
the calls before it left in the scratch (larger and smaller batches, the same ids again, a batch
whose table is freed after the call, calls from several threads at once)."""
import threading

import torch

from recis_compat.ops.id_map import unique_first_seen


def reference(ids):
    seen = {}
    inverse = [seen.setdefault(i, len(seen)) for i in ids.tolist()]
    return torch.tensor(list(seen), dtype=torch.int64), torch.tensor(inverse, dtype=torch.int64)


def check(ids):
    uniq, inverse = unique_first_seen(ids)
    want_u, want_i = reference(ids)
    assert torch.equal(uniq, want_u)
    assert torch.equal(inverse, want_i)


def batch(n, distinct, seed):
    g = torch.Generator().manual_seed(seed)
    pool = torch.randint(-(2 ** 63), 2 ** 63 - 1, (distinct,), generator=g, dtype=torch.int64)
    return pool[torch.randint(0, distinct, (n,), generator=g)]


def test_calls_of_changing_sizes_reuse_the_scratch():
    sizes = [(50_000, 20_000), (10, 4), (50_000, 20_000), (3, 3), (0, 1), (200_000, 150_000), (1, 1),
             (7_000, 10)]
    for k, (n, distinct) in enumerate(sizes):
        check(batch(n, distinct, k))
    same = batch(30_000, 9_000, 99)
    check(same)
    check(same)        # the ids of the previous call are not taken as seen
    check(same[:100])


def test_a_batch_beyond_the_kept_scratch_then_small_ones():
    big = batch(1_200_000, 1_000_000, 5)          # 4M scratch slots: freed after the call
    uniq, inverse = unique_first_seen(big)
    assert torch.equal(uniq[inverse], big)
    assert uniq.numel() == torch.unique(big).numel()
    first = torch.full((uniq.numel(),), big.numel(), dtype=torch.int64)
    first.scatter_reduce_(0, inverse, torch.arange(big.numel()), "amin")
    assert bool((first[1:] > first[:-1]).all())   # first-occurrence order
    check(batch(5_000, 2_000, 6))


def test_threads_have_their_own_scratch():
    inputs = [batch(40_000, 10_000 + 1000 * k, 10 + k) for k in range(4)]
    want = [reference(x) for x in inputs]
    errors = []

    def work(k):
        try:
            for _ in range(5):
                u, i = unique_first_seen(inputs[k])
                if not (torch.equal(u, want[k][0]) and torch.equal(i, want[k][1])):
                    errors.append(k)
        except Exception as e:      # reported below with the thread's index
            errors.append((k, repr(e)))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
