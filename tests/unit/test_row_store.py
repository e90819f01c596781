"""The ``cached_ssd`` row store (backend/row_store.py): rows and every slot in files under a RAM
budget, chosen per table (``StoreConfig``) or for unchanged RecIS scripts by environment.

A RecIS-style model (HashTable, a GlobalStepFilter eviction hook, each sparse optimizer) trains
once in memory and once with its rows in files under a budget far below the table, so pages are
released and read back every few steps; both give the same rows bit for bit. Checkpoints cross
between the two kinds both ways; a copy gets its own files; files go with the table; the
resident set of a process stays near the budget while its table is many times larger; bad
settings name the setting.
"""
from __future__ import annotations

import copy
import gc
import mmap
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest
import torch

from recis.nn.hashtable_hook import FilterHook
from recis.nn.initializers import ConstantInitializer
from recis.nn.modules.hashtable import HashTable, HashtableRegister, filter_out_sparse_param
from recis.nn.modules.hashtable_hook_impl import HashtableHookFactory
from recis.optim import SparseAdam, SparseAdamW, SparseAdamWTF
from recis.serialize import Loader, Saver
from recis_compat.backend.row_store import (ENV_CACHE_BUDGET_MB, ENV_PERSISTENT_PATH, ENV_STORE_TYPE, StoreConfig,
                                            store_from_env)
from recis_compat.backend.dynamic_table import DynamicTable, DynamicTableConfig

REPO = pathlib.Path(__file__).resolve().parents[2]
DIM = 16
IDS = 40_000            # distinct ids the training draws from: ~40k rows x 200 B = 8 MB of rows
OPTIMIZERS = {"adamw": SparseAdamW, "adam": SparseAdam, "adamw_tf": SparseAdamWTF}


def _set_store(monkeypatch, path, budget_mb="1"):
    monkeypatch.setenv(ENV_STORE_TYPE, "cached_ssd")
    monkeypatch.setenv(ENV_PERSISTENT_PATH, str(path))
    monkeypatch.setenv(ENV_CACHE_BUDGET_MB, budget_mb)


def _train(tag: str, opt_cls, steps: int = 10):
    """Train one table for ``steps`` steps (lookups of 6000 ids, eviction every 4 steps);
    returns (table, optimizer, final state by id)."""
    ht = HashTable([DIM], block_size=1000, name=tag, initializer=ConstantInitializer(init_val=0.1),
                   filter_hook=FilterHook("GlobalStepFilter", {"filter_step": 3}))
    filt = HashtableHookFactory().get_filters()["GlobalStepFilter"][ht]
    opt = opt_cls(filter_out_sparse_param(ht), lr=0.05)
    g = torch.Generator().manual_seed(7)
    for step in range(steps):
        lo = 0 if step < 6 else IDS // 2          # later steps leave the low ids to be evicted
        ids = torch.randint(lo, IDS, (6000,), generator=g)
        w = torch.randn(6000, DIM, generator=g)
        opt.zero_grad()
        (ht(ids) * w).sum().backward()
        opt.step()
        filt.update_step()
        if step % 4 == 3:
            filt.do_filter()
    return ht, opt, _by_id(ht.impl.state_dict())


def _by_id(state):
    order = torch.argsort(state["id"])
    return {k: v.index_select(0, order) for k, v in state.items()}


def _assert_same(a, b):
    assert sorted(a) == sorted(b)
    for k in a:
        assert torch.equal(a[k], b[k]), f"slot {k} differs"


def _mapped_rss(directory: str) -> int:
    """Bytes of the files under ``directory`` resident in this process (/proc/self/smaps)."""
    total, inside = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()
            if head and "-" in head[0] and len(head) >= 5:        # a mapping's first line
                inside = len(head) >= 6 and head[5].startswith(directory)
            elif inside and line.startswith("Rss:"):
                total += int(head[1]) << 10
    return total


@pytest.mark.parametrize("kind", list(OPTIMIZERS))
def test_training_in_files_under_a_small_budget_equals_in_memory(kind, tmp_path, monkeypatch):
    gc.collect()                                    # earlier tests' tables (and budgets) gone
    _, _, ref = _train(f"mem_{kind}", OPTIMIZERS[kind])
    _set_store(monkeypatch, tmp_path, budget_mb="2")   # ~9.6k of the table's ~40k rows
    ht, _, got = _train(f"ssd_{kind}", OPTIMIZERS[kind])
    impl = ht.impl
    assert impl.storage.file_backed
    files = sorted(os.listdir(impl.storage.store_directory))
    assert files == ["rows"], files          # one file of row records: embedding, moments, filter steps
    assert impl.storage._files.record_bytes == sum(f.row_bytes for f in impl.storage._files.files.values())
    budget = impl.storage.store.budget()
    assert budget.limit_bytes == 2 << 20
    # the table outgrew the budget: rows were evicted, changed ones written back and read again
    assert budget.evictions > 0 and budget.writebacks > 0 and budget.misses > len(impl)
    assert budget.over_budget_bytes == 0
    assert impl.evicted_total > 0
    _assert_same(got, ref)
    # the cache's RAM: the budget, plus 4 bytes per table row for the row -> cache slot index
    assert impl.storage.memory_bytes() <= (2 << 20) + 4 * 2 * impl.storage.capacity


def _fresh(tag):
    ht = HashTable([DIM], block_size=1000, name=tag, initializer=ConstantInitializer(init_val=0.1),
                   filter_hook=FilterHook("GlobalStepFilter", {"filter_step": 3}))
    SparseAdamW(filter_out_sparse_param(ht), lr=0.05)      # adds the moment slots
    return ht


def test_checkpoints_cross_between_memory_and_files(tmp_path, monkeypatch):
    """In-memory table -> checkpoint -> file-backed table -> checkpoint -> in-memory table: the
    rows of every slot survive both crossings (RecIS's checkpoint layout either way)."""
    ht, _, ref = _train("ckpt_x", SparseAdamW, steps=5)
    Saver(path=str(tmp_path / "from_mem"), hashtables=filter_out_sparse_param(ht)).save()
    del ht
    HashtableRegister().clear()            # the same name again in a fresh model
    _set_store(monkeypatch, tmp_path / "store")
    ht = _fresh("ckpt_x")
    Loader(str(tmp_path / "from_mem"), hashtables=filter_out_sparse_param(ht)).load()
    assert ht.impl.storage.file_backed
    _assert_same(_by_id(ht.impl.state_dict()), ref)
    Saver(path=str(tmp_path / "from_ssd"), hashtables=filter_out_sparse_param(ht)).save()
    del ht
    HashtableRegister().clear()
    monkeypatch.delenv(ENV_STORE_TYPE)
    ht = _fresh("ckpt_x")
    Loader(str(tmp_path / "from_ssd"), hashtables=filter_out_sparse_param(ht)).load()
    assert not ht.impl.storage.file_backed
    _assert_same(_by_id(ht.impl.state_dict()), ref)


def test_resume_from_checkpoint_continues_exactly_in_files(tmp_path, monkeypatch):
    """10 steps straight equal 5 steps, save, restore into a fresh file-backed table, 5 more."""
    _set_store(monkeypatch, tmp_path / "store")
    _, _, straight = _train("resume_a", SparseAdamW, steps=10)

    ht = HashTable([DIM], block_size=1000, name="resume_b", initializer=ConstantInitializer(init_val=0.1))
    opt = SparseAdamW(filter_out_sparse_param(ht), lr=0.05)
    g = torch.Generator().manual_seed(7)
    batches = []
    for step in range(10):
        lo = 0 if step < 6 else IDS // 2
        batches.append((torch.randint(lo, IDS, (6000,), generator=g), torch.randn(6000, DIM, generator=g)))
    # the same run, split by a checkpoint (no eviction hook here: compare with a matching straight run)
    ref = HashTable([DIM], block_size=1000, name="resume_c", initializer=ConstantInitializer(init_val=0.1))
    ref_opt = SparseAdamW(filter_out_sparse_param(ref), lr=0.05)

    def step(table, optim, b):
        optim.zero_grad()
        (table(b[0]) * b[1]).sum().backward()
        optim.step()

    for b in batches:
        step(ref, ref_opt, b)
    for b in batches[:5]:
        step(ht, opt, b)
    Saver(path=str(tmp_path / "ck"), hashtables=filter_out_sparse_param(ht), tensors=opt.state_dict()).save()
    old_dir = ht.impl.storage.store_directory
    del ht, opt
    gc.collect()
    assert not os.path.exists(old_dir), "the table's files outlived it"
    ht2 = HashTable([DIM], block_size=1000, name="resume_b", initializer=ConstantInitializer(init_val=0.1))
    opt2 = SparseAdamW(filter_out_sparse_param(ht2), lr=0.05)
    opt_state = opt2.state_dict()
    Loader(str(tmp_path / "ck"), hashtables=filter_out_sparse_param(ht2), tensors=opt_state).load()
    opt2.load_state_dict(opt_state)
    for b in batches[5:]:
        step(ht2, opt2, b)
    assert ht2.impl.storage.file_backed
    _assert_same(_by_id(ht2.impl.state_dict()), _by_id(ref.impl.state_dict()))
    assert len(straight["id"]) > 0


def test_config_option_copy_and_file_lifetime(tmp_path):
    store = StoreConfig("cached_ssd", str(tmp_path / "s"), 2)
    cfg = DynamicTableConfig(name="cfg_table", embedding_dim=8, sample_rows=lambda k: torch.ones(k, 8),
                             block_size=64, store=store)
    t = DynamicTable(cfg)
    impl = t.impl
    rows = impl.find_or_insert_rows(torch.arange(1000))
    impl.update_slot("embedding", rows[:10], torch.full((10, 8), 3.0))
    directory = impl.storage.store_directory
    assert pathlib.Path(directory).parent == tmp_path / "s"
    assert impl.storage.disk_bytes() > 0
    twin = copy.deepcopy(impl)                      # its own files, the same rows
    assert twin.storage.store_directory != directory
    assert torch.equal(twin.gather(twin.find_rows(torch.arange(1000))), impl.gather(rows))
    twin.update_slot("embedding", rows[:1], torch.zeros(1, 8))
    assert impl.gather(rows[:1]).eq(3.0).all()      # files are not shared
    assert impl.storage.store is twin.storage.store  # one budget for both
    impl.clear()                                    # files emptied, table usable
    assert len(impl) == 0 and impl.gather(impl.find_or_insert_rows(torch.tensor([5]))).eq(1.0).all()
    impl.close()
    assert not os.path.exists(directory)
    twin_dir = twin.storage.store_directory
    del twin
    gc.collect()
    assert not os.path.exists(twin_dir)


def test_bad_settings_name_the_setting(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="store_type must be one of"):
        StoreConfig("ssd")
    with pytest.raises(ValueError, match="needs persistent_path"):
        StoreConfig("cached_ssd", None, 10)
    with pytest.raises(ValueError, match="cache_memory_budget_mb"):
        StoreConfig("cached_ssd", str(tmp_path), 0)
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(ValueError, match="is not a directory"):
        StoreConfig("cached_ssd", str(f), 10)
    monkeypatch.setenv(ENV_STORE_TYPE, "cached_ssd")
    monkeypatch.setenv(ENV_PERSISTENT_PATH, str(tmp_path))
    monkeypatch.setenv(ENV_CACHE_BUDGET_MB, "lots")
    with pytest.raises(ValueError, match=ENV_CACHE_BUDGET_MB):
        store_from_env()
    monkeypatch.setenv(ENV_CACHE_BUDGET_MB, "16")
    assert store_from_env() is store_from_env()      # one budget per process and setting
    cfg = DynamicTableConfig(name="gpu_table", embedding_dim=4, sample_rows=lambda k: torch.zeros(k, 4),
                             device=torch.device("cuda"))
    with pytest.raises(ValueError, match="'gpu_table'.*host memory"):
        DynamicTable(cfg)
    t = DynamicTable(DynamicTableConfig(name="cpu_table", embedding_dim=4, sample_rows=lambda k: torch.zeros(k, 4)))
    with pytest.raises(ValueError, match="'cpu_table'.*cannot move to cuda"):
        t.impl.storage.to("cuda")
    monkeypatch.setenv(ENV_STORE_TYPE, "")
    assert store_from_env() is None


_RSS_SCRIPT = textwrap.dedent("""
    import sys, torch
    from recis_compat.backend.row_store import StoreConfig
    from recis_compat.backend.dynamic_table import DynamicTable, DynamicTableConfig

    def rss():
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) << 10

    torch.set_num_threads(1)
    store = StoreConfig("cached_ssd", sys.argv[1], 32)
    t = DynamicTable(DynamicTableConfig(name="big", embedding_dim=64, sample_rows=lambda k: torch.zeros(k, 64),
                                        block_size=65536, store=store))
    t.impl.add_slot("m", [64], torch.float32, 0.0)
    t.impl.id_map.reserve(2_000_000)
    base = rss()
    for b in range(0, 2_000_000, 50_000):            # 2M ids x 512 B = 1 GB of rows
        rows = t.impl.find_or_insert_rows(torch.arange(b, b + 50_000))
        t.impl.update_slot("m", rows, torch.ones(rows.numel(), 64))
    grown = rss() - base
    print(grown, t.impl.storage.disk_bytes(), store.budget().evictions)
""")


def test_resident_memory_stays_near_the_budget(tmp_path):
    """A table of 1 GB of rows (2M ids, two 64-wide slots) in files under a 32 MiB budget grows
    the process's resident set by far less than the rows (budget + transient batch tensors)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "adapters")]), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", _RSS_SCRIPT, str(tmp_path)], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    grown, disk, evictions = (int(x) for x in proc.stdout.split())
    assert disk >= 1_000_000_000                    # the rows are in the files
    assert evictions > 0
    assert grown < 32 * 2 ** 20 + 150 * 2 ** 20, f"resident set grew by {grown / 2 ** 20:.0f} MiB"


def test_torchrec_native_collection_with_a_store_option_trains_like_in_ram(tmp_path):
    """``DynamicTableOptions(store=StoreConfig("cached_ssd", ...))``: the TorchRec-native bag
    collection with its fused SparseAdamW and eviction gives what the in-RAM one gives."""
    from torchrec import EmbeddingBagConfig, KeyedJaggedTensor
    from recis_compat.torchrec import Constant, DynamicEmbeddingBagCollection, DynamicTableOptions

    def build(store):
        cfg = EmbeddingBagConfig(name="tr", embedding_dim=8, num_embeddings=100, feature_names=["a"])
        return DynamicEmbeddingBagCollection(
            [cfg], options=DynamicTableOptions(initializer=Constant(0.2), evict_after_steps=2, store=store),
            fused_params={"optimizer": "adamw", "learning_rate": 0.05})

    store = StoreConfig("cached_ssd", str(tmp_path), 1)
    ebcs = [build(None), build(store)]
    g = torch.Generator().manual_seed(0)
    for step in range(6):
        lengths = torch.randint(0, 30, (64,), generator=g)
        ids = torch.randint(0, 5000 if step < 3 else 2500, (int(lengths.sum()),), generator=g)
        kjt = KeyedJaggedTensor.from_lengths_sync(keys=["a"], values=ids, lengths=lengths)
        w = torch.randn(64, 8, generator=g)
        for ebc in ebcs:
            (ebc(kjt).values() * w).sum().backward()
            ebc.fused_optimizer.step()
    a, b = (e.tables["tr"].impl for e in ebcs)
    assert b.storage.file_backed and not a.storage.file_backed
    assert a.evicted_total > 0 and a.evicted_total == b.evicted_total
    _assert_same(_by_id(b.state_dict()), _by_id(a.state_dict()))


def test_change_tracking_for_delta_checkpoints_in_files(tmp_path):
    """The change log (delta checkpoints) sees the same changed ids and values in files as in RAM."""
    impls = []
    for store in (None, StoreConfig("cached_ssd", str(tmp_path), 1)):
        t = DynamicTable(DynamicTableConfig(name="delta_t", embedding_dim=8, sample_rows=lambda k: torch.ones(k, 8),
                                            block_size=256, store=store)).impl
        t.find_or_insert_rows(torch.arange(20_000))
        t.track_changes()
        rows = t.find_or_insert_rows(torch.arange(19_000, 21_000))
        t.update_slot("embedding", rows[:500], torch.full((500, 8), 2.0))
        t.delete(torch.arange(0, 100))
        impls.append(t.take_changes())
    a, b = impls
    assert torch.equal(a.ids, b.ids) and torch.equal(a.deleted, b.deleted)
    assert sorted(a.values) == sorted(b.values)
    for k in a.values:
        assert torch.equal(a.values[k], b.values[k])


def test_a_full_disk_is_a_clear_error_not_a_bus_error(tmp_path, monkeypatch):
    """Rows get disk blocks before they are written; ENOSPC there names the table and directory
    (a page of a sparse mapped file with no block to write would kill the process with SIGBUS)."""
    import errno
    store = StoreConfig("cached_ssd", str(tmp_path), 4)
    impl = DynamicTable(DynamicTableConfig(name="full_disk", embedding_dim=8, sample_rows=lambda k: torch.zeros(k, 8),
                                           block_size=128, store=store)).impl
    impl.find_or_insert_rows(torch.arange(100))

    def no_space(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", no_space)
    with pytest.raises(OSError, match=r"table 'full_disk': cannot reserve disk for rows \[128, 256\) of slot "
                                      r"'embedding'.*No space left on device") as e:
        impl.find_or_insert_rows(torch.arange(100, 200))
    assert e.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert len(impl.find_rows(torch.arange(100)).ne(-1).nonzero()) == 100   # the table still answers


def test_close_releases_the_files_disk_space(tmp_path):
    store = StoreConfig("cached_ssd", str(tmp_path), 4)
    impl = DynamicTable(DynamicTableConfig(name="closing", embedding_dim=64, sample_rows=lambda k: torch.ones(k, 64),
                                           block_size=4096, store=store)).impl
    impl.find_or_insert_rows(torch.arange(50_000))
    directory = impl.storage.store_directory
    free_before = os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize
    impl.close()
    free_after = os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize
    assert not os.path.exists(directory)
    assert impl.storage.slots["embedding"].numel() == 0          # no view keeps the mapping alive
    assert free_after - free_before >= 50_000 * 64 * 4 * 0.9     # the blocks came back


def _embedding_file(tmp_path, name: str, n: int):
    """A row file of one 64-byte slot (64 rows a page), ``n`` rows given disk blocks."""
    from recis_compat.backend import row_store
    files = row_store.FileSlots(row_store.StoreConfig("cached_ssd", str(tmp_path), 4), name)
    files.add("embedding", [16], torch.float32)
    files.resize(n)
    files.allocate(0, n)
    return files


def _write_100_scattered_rows(files, expect: torch.Tensor, g: torch.Generator) -> int:
    """Write ~100 random distinct rows of ``files`` (and of ``expect``, the rows it should hold);
    returns the bytes of the file resident in this process afterwards."""
    rows = torch.unique(torch.randint(0, expect.shape[0], (100,), generator=g))
    vals = torch.randn(rows.numel(), 16, generator=g)
    files.write("embedding", rows, vals)
    expect[rows] = vals
    return _mapped_rss(files.directory)


def test_scattered_writes_keep_few_pages_mapped_and_drop_them_together(tmp_path, monkeypatch):
    """Write-backs go through the row file's mapping; the pages written into stay mapped until
    about DROP_PAGES of them were (counted over calls), then one madvise drops them: the file's
    resident pages in this process stay under DROP_PAGES + one call's pages, drops are fewer
    than calls, and every written row reads back (pread sees the mapping's writes)."""
    from recis_compat.backend import row_store
    monkeypatch.setattr(row_store, "DROP_PAGES", 256)
    n = 200_000
    files = f = _embedding_file(tmp_path, "drops", n)
    drops = []
    orig = f.drop_pages
    monkeypatch.setattr(f, "drop_pages", lambda: (drops.append(f.mapped_pages), orig())[1])
    g = torch.Generator().manual_seed(0)
    expect = torch.zeros(n, 16)
    calls = 0
    for _ in range(12):
        resident = _write_100_scattered_rows(files, expect, g)             # ~100 distinct pages
        calls += 1
        assert resident <= (256 + 100) * mmap.PAGESIZE, resident
    assert 0 < len(drops) < calls and all(d >= 256 for d in drops)
    assert torch.equal(files.read("embedding", torch.arange(n)), expect)
    files.close()


def test_scattered_writes_onto_rows_written_in_runs_keep_few_pages_mapped(tmp_path, monkeypatch):
    """Rows first written in long runs (``pwrite``: a growth fill, a restore, new ids' rows) sit
    in the page cache in multi-page folios, and a write fault maps a whole folio: the mapping
    path counts what the process really maps (``/proc/self/statm``) besides the pages it writes
    into, so the file's resident pages in this process stay under DROP_PAGES plus one window's
    folios, and every written row reads back."""
    from recis_compat.backend import row_store
    monkeypatch.setattr(row_store, "DROP_PAGES", 256)
    n = 200_000
    files = _embedding_file(tmp_path, "folios", n)
    g = torch.Generator().manual_seed(3)
    expect = torch.randn(n, 16, generator=g)
    files.write_range("embedding", 0, expect)                     # one run: written by pwrite
    span_pages = row_store.WRITE_SPAN // mmap.PAGESIZE
    worst = 0
    for _ in range(30):
        worst = max(worst, _write_100_scattered_rows(files, expect, g))   # ~100 distinct folios
    assert worst <= (256 + 100 * span_pages) * mmap.PAGESIZE, worst
    assert torch.equal(files.read("embedding", torch.arange(n)), expect)
    files.close()


def test_write_backs_on_more_pages_than_the_mapping_keeps_are_pwritten(tmp_path, monkeypatch):
    """Whole records of scattered rows lying on more pages than DROP_PAGES are written with
    pwrite (one per run of rows), not through the mapping (which would fault every page in and
    drop it again); fewer pages go through the mapping. Every row reads back either way."""
    from recis_compat.backend import row_store
    monkeypatch.setattr(row_store, "DROP_PAGES", 64)
    files = row_store.FileSlots(row_store.StoreConfig("cached_ssd", str(tmp_path), 4), "pwritten")
    files.add("embedding", [16], torch.float32)
    files.add("exp_avg", [16], torch.float32)                  # 128-byte records, 32 a page
    n = 100_000
    files.resize(n)
    files.allocate(0, n)
    calls = []
    orig = row_store.rows_pwrite
    monkeypatch.setattr(row_store, "rows_pwrite", lambda fd, rows, values: (calls.append(rows.numel()),
                                                                             orig(fd, rows, values))[1])
    g = torch.Generator().manual_seed(1)
    slab = {"embedding": torch.randn(500, 16, generator=g), "exp_avg": torch.randn(500, 16, generator=g)}
    many = torch.unique(torch.randint(0, n, (300,), generator=g))        # ~300 pages > 64
    files.write_slots(many, slab, src_rows=torch.arange(many.numel()))
    assert calls == [many.numel()] and files.mapped_pages == 0
    few = torch.tensor([7, 900, 5000], dtype=torch.int64)                # 3 pages < 64: the mapping
    files.write_slots(few, slab, src_rows=torch.tensor([400, 401, 402]))
    assert calls == [many.numel()] and files.mapped_pages == 3
    got = files.read_slots(torch.cat([many, few]), ["embedding", "exp_avg"])
    for k in slab:
        assert torch.equal(got[k], torch.cat([slab[k][:many.numel()], slab[k][400:403]]))
    files.close()
