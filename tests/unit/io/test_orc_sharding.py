"""File discovery, sharding across workers and DataLoader sub-workers, shuffle."""
import os
import random

import pytest
import torch
from torch.utils.data import DataLoader, IterableDataset

from recis_compat.io.orc_dataset import OrcDataset

from orc_test_helpers import drain, rids, write_ids


@pytest.fixture
def seven_files(tmp_path):
    # written in an order that differs from the sorted one, one in a subdirectory
    for k in (3, 0, 6, 1, 5, 2):
        write_ids(tmp_path / f"part-{k}.orc", 100 * k, 3)
    write_ids(tmp_path / "sub" / "part-9.orc", 900, 3)
    (tmp_path / "notes.txt").write_text("not orc")
    return tmp_path


def test_sorted_recursive_discovery(seven_files, id_dataset):
    got = rids(drain(iter(id_dataset([seven_files], batch_size=5))))
    expect = [v for k in (0, 1, 2, 3, 5, 6) for v in range(100 * k, 100 * k + 3)]
    assert got == expect + [900, 901, 902]


def test_single_file_path_and_missing_path(tmp_path, id_dataset):
    path = write_ids(tmp_path / "one.orc", 7, 2)
    assert rids(drain(iter(id_dataset([path])))) == [7, 8]
    ds = OrcDataset(2)
    with pytest.raises(FileNotFoundError, match="nope"):
        ds.add_path(str(tmp_path / "nope"))


def test_empty_directory_ends_at_once(tmp_path, id_dataset):
    (tmp_path / "empty").mkdir()
    it = iter(id_dataset([tmp_path / "empty"]))
    assert next(it) == (True, None)


def test_workers_read_every_file_once(seven_files, id_dataset):
    seen = []
    for w in range(3):
        ds = id_dataset([seven_files], batch_size=2, worker_idx=w, worker_num=3)
        got = rids(drain(iter(ds)))
        files = sorted({v // 100 for v in got})
        seen.extend(got)
        order = [0, 1, 2, 3, 5, 6, 9]
        assert files == sorted(order[i] for i in range(len(order)) if i % 3 == w)
    assert sorted(seen) == sorted(v for k in (0, 1, 2, 3, 5, 6, 9)
                                  for v in range(100 * k, 100 * k + 3))


def test_shuffle_files_only_with_fixed_seed(seven_files, id_dataset):
    random.seed(123)
    before = random.random()
    random.seed(123)
    a = rids(drain(iter(id_dataset([seven_files], batch_size=2, shuffle=True))))
    assert random.random() == before  # global random state untouched
    b = rids(drain(iter(id_dataset([seven_files], batch_size=2, shuffle=True))))
    assert a == b
    order = [v // 100 for v in a[::3]]
    expect = [0, 1, 2, 3, 5, 6, 9]
    random.Random(10).shuffle(expect)
    assert order == expect
    for i in range(0, len(a), 3):  # rows keep their order inside a file
        assert a[i + 1] == a[i] + 1 and a[i + 2] == a[i] + 2


class _UntilEnd(IterableDataset):
    """Turn the (is_end, batch) stream into a finite one for DataLoader."""

    def __init__(self, ds):
        self.ds = ds

    def __iter__(self):
        for is_end, batch in self.ds:
            if is_end:
                return
            info = torch.utils.data.get_worker_info()
            yield info.id, batch[0]["rid"].values().clone()


def test_dataloader_two_workers_read_every_file_once(seven_files, id_dataset):
    ds = id_dataset([seven_files], batch_size=2, worker_idx=0, worker_num=1, prefetch=0)
    loader = DataLoader(_UntilEnd(ds), batch_size=None, num_workers=2)
    by_worker = {0: [], 1: []}
    for wid, ids in loader:
        by_worker[int(wid)].extend(int(v) for v in ids)
    order = [0, 1, 2, 3, 5, 6, 9]
    for wid in (0, 1):
        assert sorted({v // 100 for v in by_worker[wid]}) == order[wid::2]
    assert sorted(by_worker[0] + by_worker[1]) == sorted(
        v for k in order for v in range(100 * k, 100 * k + 3))


def test_broken_symlink_in_directory_is_named(tmp_path, id_dataset):
    write_ids(tmp_path / "a.orc", 0, 2)
    os.symlink(tmp_path / "missing-target", tmp_path / "b.orc")
    ds = id_dataset([tmp_path])
    with pytest.raises(FileNotFoundError, match="b.orc"):
        next(iter(ds))
