"""recis.serialize with a real process group (2 gloo ranks, spawned): the shards meet at
torch.distributed.barrier() instead of polling, save() returns on every rank only once shard 0
has merged the metadata, and the 2-shard checkpoint loads into one table."""
import json
import os

import pytest
import torch
import torch.multiprocessing as mp

from recis.serialize import Loader
from recis_compat.serialize.integrity import file_checksum
from serialize_dist_worker import run
from serialize_helpers import make_table

pytestmark = pytest.mark.distributed


def test_two_ranks_save_with_barrier(tmp_path):
    ck = tmp_path / "ck"
    mp.start_processes(run, args=(2, str(ck), str(tmp_path / "store")), nprocs=2, join=True,
                       start_method="spawn")
    names = os.listdir(ck)
    assert not [n for n in names if n.endswith(".fragment.json") or ".tmp" in n]
    # shard 0 merged both shards' data-file checksums into checksums.json
    manifest = json.loads((ck / "checksums.json").read_text())
    assert sorted(manifest["files"]) == sorted(n for n in names if n != "checksums.json")
    assert any("-of-" in n and n.startswith("model-") for n in manifest["files"])
    for n, v in manifest["files"].items():
        assert file_checksum(str(ck / n), manifest["algorithm"]) == v, n
    states = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    t = make_table("dist_t")
    sc = torch.tensor([0.0])
    Loader(str(ck), hashtables={"t": t}, tensors={"sc": sc}).load()
    assert sc.tolist() == [2.0]
    got = t.state_dict()
    want_ids = torch.cat([s["id"] for s in states])
    assert sorted(got["id"].tolist()) == sorted(want_ids.tolist()) and want_ids.numel() == 16
    pos = {i: k for k, i in enumerate(got["id"].tolist())}
    for s in states:
        for k, i in enumerate(s["id"].tolist()):
            for slot, v in s.items():
                if slot != "id":
                    assert torch.equal(got[slot][pos[i]], v[k]), (i, slot)
