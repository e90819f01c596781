"""Thread safety of the dynamic tables (issue 13 item 5; docs/reliability.md "Thread safety").

Two threads hammer one ``HashTable`` / one ``EmbeddingEngine`` at once (lookups that insert and
grow the table, upserts, gradients, optimizer steps). Afterwards the table must be what a serial
run gives, as a set: every id maps to exactly one row, no two ids share a row, and every row
holds the values of its id. The threads switch every microsecond so that the interleavings the
lock must prevent actually happen (before the lock these tests lost ids, gave two ids one row or
raised ``id_map_rehash: inconsistent state``).
"""
import sys
import threading

import pytest
import torch

from recis.nn import EmbeddingEngine, EmbeddingOption, HashTable
from recis.nn.initializers import UniformInitializer
from recis.nn.modules.hashtable import filter_out_sparse_param
from recis.optim import SparseAdamWTF
from recis.ragged.tensor import RaggedTensor
from recis_compat.backend.id_map import IdMap

ROUNDS = 60
# the races are timing dependent: each test repeats on fresh tables (which grow from empty, where
# most interleavings hit), so that without the lock every test fails in practically every run
TRIALS = 4


@pytest.fixture(autouse=True)
def fast_thread_switches():
    """Switch Python threads every microsecond; one intra-op thread per op (OpenMP workers
    spinning against a 1 us switch interval only slow the test down)."""
    old, old_threads = sys.getswitchinterval(), torch.get_num_threads()
    sys.setswitchinterval(1e-6)
    torch.set_num_threads(1)
    yield
    sys.setswitchinterval(old)
    torch.set_num_threads(old_threads)


def run_threads(*targets):
    """Start every target at once; re-raise the first exception of any thread."""
    errors = []
    barrier = threading.Barrier(len(targets))

    def wrap(fn):
        def body():
            try:
                barrier.wait()
                fn()
            except BaseException as e:   # noqa: BLE001 - reported to the test below
                errors.append(e)
        return body

    threads = [threading.Thread(target=wrap(t)) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def batches(seed, rounds=ROUNDS, n=300, vocab=40_000):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (n,), generator=g, dtype=torch.int64) for _ in range(rounds)]


def value_of(ids, dim=4):
    """The values ``insert`` writes for ``ids``: a function of the id alone."""
    return (ids.to(torch.float32).unsqueeze(1) * 0.001 + torch.arange(dim, dtype=torch.float32)).contiguous()


def assert_exact_map(ids, rows, expected_ids):
    assert ids.numel() == rows.numel()
    assert torch.unique(ids).numel() == ids.numel(), "an id is stored twice"
    assert torch.unique(rows).numel() == rows.numel(), "two ids share a row"
    assert set(ids.tolist()) == set(expected_ids), "ids lost or invented"


def uniform(seed=11):
    return UniformInitializer(a=-1.0, b=1.0, generator=torch.Generator().manual_seed(seed))


def test_id_map_two_threads_find_or_insert_with_growth():
    m = IdMap()
    work = [batches(1, rounds=200, n=500, vocab=400_000), batches(2, rounds=200, n=500, vocab=400_000)]
    results = [[], []]

    def hammer(k):
        def body():
            for ids in work[k]:
                rows, _ = m.find_or_insert(ids)
                results[k].append(rows)
        return body

    run_threads(hammer(0), hammer(1))
    ids, rows = m.ids_and_rows()
    expected = set(torch.cat(work[0] + work[1]).tolist())
    assert_exact_map(ids, rows, expected)
    assert m.num_rehashes > 0, "the test must exercise growth"
    lookup = dict(zip(ids.tolist(), rows.tolist()))
    for k in range(2):     # every row a thread was handed is still its id's row
        for b, r in zip(work[k], results[k]):
            assert r.tolist() == [lookup[i] for i in b.tolist()]


@pytest.mark.parametrize("trial", range(TRIALS))
def test_hashtable_two_threads_lookup_insert_match_serial(trial):
    ht = HashTable([4], block_size=64, initializer=uniform(), name=f"ts_table{trial}")
    serial = HashTable([4], block_size=64, initializer=uniform(), name=f"ts_serial{trial}")
    serial._init_seed.copy_(ht._init_seed)
    looked = batches(3 + 2 * trial, rounds=150)
    inserted = batches(4 + 2 * trial, rounds=150)
    outs = []

    def lookups():
        for ids in looked:
            outs.append((ids, ht(ids).detach().clone()))

    def inserts():
        for ids in inserted:
            ht.insert(ids, value_of(ids))

    run_threads(lookups, inserts)
    for ids in looked:
        serial(ids)
    for ids in inserted:
        serial.insert(ids, value_of(ids))
    ids, rows = ht.ids_map()
    assert_exact_map(ids, rows, set(torch.cat(looked + inserted).tolist()))
    s_ids, s_rows = serial.ids_map()
    mine = ht.embeddings().index_select(0, rows)
    theirs = serial.embeddings().index_select(0, s_rows)
    order, s_order = torch.argsort(ids), torch.argsort(s_ids)
    assert torch.equal(mine[order], theirs[s_order])
    # what a lookup returned is the id's initial value or the inserted one, never another id's row
    fresh = HashTable([4], block_size=64, initializer=uniform(), name=f"ts_fresh{trial}")
    fresh._init_seed.copy_(ht._init_seed)
    for ids, out in outs:
        init = fresh(ids).detach()
        ok = (out == init).all(1) | (out == value_of(ids)).all(1)
        assert bool(ok.all()), "a lookup returned values of another id"


@pytest.mark.parametrize("trial", range(TRIALS))
def test_hashtable_two_threads_train_steps_keep_gradients(trial):
    """Two threads look up and back-propagate into one table: every gradient reaches the row of
    its id (nothing dropped or misrouted), and the optimizer then updates a consistent table."""
    ht = HashTable([4], block_size=32, name=f"ts_grad{trial}")
    opt = SparseAdamWTF(filter_out_sparse_param(ht), lr=0.1, weight_decay=0.0)
    work = [batches(5 + 2 * trial, rounds=150, n=200, vocab=100_000),
            batches(6 + 2 * trial, rounds=150, n=200, vocab=100_000)]

    def train(k):
        def body():
            for ids in work[k]:
                ht(ids).sum().backward()
        return body

    run_threads(train(0), train(1))
    all_ids = torch.cat(work[0] + work[1])
    ids, rows = ht.ids_map()
    assert_exact_map(ids, rows, set(all_ids.tolist()))
    counts = torch.bincount(torch.searchsorted(torch.sort(ids).values, all_ids), minlength=ids.numel())
    grad = ht.grad().to_dense()
    expected = torch.zeros_like(grad)
    expected[rows[torch.argsort(ids)]] = counts.to(torch.float32).unsqueeze(1).expand(-1, 4)
    # every lookup of an id adds 1 (sum of the output) to its row: nothing dropped or misrouted
    assert torch.equal(grad, expected)
    opt.step()
    opt.zero_grad()
    assert not ht.impl.has_grad()


def ragged(ids, per_row=3):
    n = ids.numel() // per_row
    off = torch.arange(0, n * per_row + 1, per_row, dtype=torch.int32)
    return RaggedTensor(ids[:n * per_row], off)


def engine(tag):
    opts = {"f1": EmbeddingOption(embedding_dim=4, shared_name=f"{tag}_a", initializer=uniform(), combiner="sum"),
            "f2": EmbeddingOption(embedding_dim=4, shared_name=f"{tag}_b", initializer=uniform(), combiner="mean"),
            "f3": EmbeddingOption(embedding_dim=4, shared_name=f"{tag}_a", initializer=uniform(), combiner="mean")}
    return EmbeddingEngine(opts)


@pytest.mark.parametrize("trial", range(TRIALS))
def test_embedding_engine_two_threads_forward_match_serial(trial):
    eng = engine(f"ts_eng{trial}")
    ref = engine(f"ts_ref{trial}")
    for (_, a), (_, b) in zip(eng.named_buffers(), ref.named_buffers()):
        b.copy_(a)          # the same init seeds: the same initial rows per id
    work = []
    for k in range(2):
        g = batches(20 + k + 2 * trial, rounds=60, n=120)
        work.append([{"f1": ragged(g[i]), "f2": ragged(g[(i + 1) % len(g)][:60]),
                      "f3": ragged(g[(i + 2) % len(g)][:90]), "label": torch.ones(40, 1)} for i in range(len(g))])
    outs = [[], []]

    def forwards(k):
        def body():
            for batch in work[k]:
                out = eng(batch)
                outs[k].append({n: v.detach().clone() for n, v in out.items()})
        return body

    run_threads(forwards(0), forwards(1))
    for k in range(2):
        for batch, out in zip(work[k], outs[k]):
            want = ref(batch)
            assert list(out) == list(want)
            for name in want:
                assert torch.equal(out[name], want[name].detach()), f"feature {name}: wrong result"
    got, exp = filter_out_sparse_param(eng), filter_out_sparse_param(ref)
    for (name, impl), ref_impl in zip(got.items(), exp.values()):
        ids, rows = impl.ids_map()
        r_ids, r_rows = ref_impl.ids_map()
        assert_exact_map(ids, rows, set(r_ids.tolist()))
        mine = impl.embedding.index_select(0, rows)[torch.argsort(ids)]
        theirs = ref_impl.embedding.index_select(0, r_rows)[torch.argsort(r_ids)]
        assert torch.equal(mine, theirs), f"table {name}: rows differ from the serial run"


@pytest.mark.parametrize("trial", range(TRIALS))
def test_lookups_concurrent_with_eviction_never_return_another_ids_row(trial):
    """One thread looks ids up while another evicts ids and inserts new ones (rows are reused
    at once): a lookup is atomic (find + gather under one lock hold), so it returns its ids'
    own initial values, never those of an id that took over a freed row in between."""
    ht = HashTable([4], block_size=64, initializer=uniform(), name=f"ts_evict{trial}")
    fresh = HashTable([4], block_size=64, initializer=uniform(), name=f"ts_evict_ref{trial}")
    fresh._init_seed.copy_(ht._init_seed)
    looked = batches(30 + trial, rounds=150, n=200, vocab=3000)
    churn = batches(40 + trial, rounds=150, n=200, vocab=3000)
    outs = []

    def lookups():
        for ids in looked:
            outs.append((ids, ht(ids).detach().clone()))

    def evict_and_insert():
        for ids in churn:
            ht.delete(ids)
            ht(ids + 3000)       # new ids take the freed rows

    run_threads(lookups, evict_and_insert)
    for ids, out in outs:
        assert torch.equal(out, fresh(ids).detach()), "a lookup returned another id's row"
    ids, rows = ht.ids_map()
    assert torch.unique(rows).numel() == rows.numel()
