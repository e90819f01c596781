"""recis-compat ckpt inspect: a checkpoint written by Trainer (tables, slots, optimizer scalars,
model.pt, extra.pt, io_state), --json, --ckpt-id, ckpt directories, errors."""
import json
import os
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.orc as orc
import pytest
import torch
from click.testing import CliRunner

from recis.framework.trainer import Trainer, TrainingArguments
from recis.io.orc_dataset import OrcDataset
from recis.nn import DynamicEmbedding, EmbeddingOption
from recis.nn.modules.hashtable import filter_out_sparse_param
from recis.optim import SparseAdamW
from recis.serialize import Saver
from recis_compat.cli import main
from recis_compat.tools.ckpt_inspect import NotACheckpointError, inspect_checkpoint

STEPS = 5


class Model(torch.nn.Module):
    """Two DynamicEmbedding tables (one per shared_name, so len(table) is the row count of that
    shared_name in the checkpoint) and an MLP."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.user = DynamicEmbedding(EmbeddingOption(embedding_dim=4, shared_name="ins_user"))
        self.item = DynamicEmbedding(EmbeddingOption(embedding_dim=8, shared_name="ins_item", combiner="mean"))
        self.mlp = torch.nn.Sequential(torch.nn.Linear(12, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))

    def forward(self, batch):
        d = batch[0]
        x = torch.cat([self.user(d["user"]), self.item(d["item"])], 1)
        logit = self.mlp(x).reshape(-1)
        return torch.nn.functional.binary_cross_entropy_with_logits(logit, d["label"].reshape(-1))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A Trainer run of STEPS steps on ORC data (checkpoints at steps 2, 4 and the end)."""
    base = tmp_path_factory.mktemp("ckpt_inspect")
    data = base / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    for f in range(2):
        n = 24
        orc.write_table(pa.table({
            "label": pa.array([[float(x)] for x in rng.integers(0, 2, n)], type=pa.list_(pa.float32())),
            "user": pa.array([[int(x)] for x in rng.integers(0, 30, n)], type=pa.list_(pa.int64())),
            "item": pa.array([list(rng.integers(0, 50, k)) for k in rng.integers(1, 4, n)],
                             type=pa.list_(pa.int64())),
        }), str(data / f"part-{f}.orc"))
    ds = OrcDataset(8, read_threads_num=1, prefetch=0, save_interval=1)
    ds.add_path(str(data))
    ds.fixedlen_feature("label", [0.0])
    ds.varlen_feature("user")
    ds.varlen_feature("item")
    model = Model()
    out = base / "out"
    trainer = Trainer(model=model, args=TrainingArguments(output_dir=str(out), save_steps=2, log_steps=1000,
                                                          train_steps=STEPS, max_to_keep=5),
                      train_dataset=ds,
                      dense_optimizers=(torch.optim.AdamW(model.parameters(), lr=0.01), None),
                      sparse_optimizer=SparseAdamW(filter_out_sparse_param(model), lr=0.01))
    trainer.train()
    lengths = {name: len(t) for name, t in filter_out_sparse_param(model).items()}
    dense_keys = {k: list(v.shape) for k, v in model.mlp.state_dict().items()}
    return out, lengths, dense_keys


def invoke(*args):
    return CliRunner().invoke(main, ["ckpt", "inspect", *map(str, args)])


def test_inspect_latest_text(trained):
    out, lengths, _ = trained
    res = invoke(out)
    assert res.exit_code == 0, res.output
    text = res.output
    assert f"checkpoint: {out}/ckpt_{STEPS}" in text
    assert f"ckpt_{STEPS} is latest" in text
    assert f"global_step: {STEPS}" in text
    for name, n in lengths.items():
        assert f"  {name}: {n} rows, dim" in text
    assert "sparse_adamw_exp_avg " in text and "sparse_adamw_exp_avg_sq" in text
    assert "shard 0/1" in text
    assert "mlp.0.weight" in text and "[4, 12]" in text
    assert "dense_optimizer: optimizer state:" in text
    assert "io_state: io_state_count 1, 1 file(s)" in text
    assert "train_io[0]: next row: file" in text


def test_inspect_json_matches_model(trained):
    out, lengths, dense_keys = trained
    res = invoke(out, "--json")
    assert res.exit_code == 0, res.output
    info = json.loads(res.output)
    assert info["ckpt_id"] == f"ckpt_{STEPS}" and info["latest"]
    assert info["checkpoints"] == ["ckpt_2", "ckpt_4", f"ckpt_{STEPS}"]
    assert info["global_step"] == STEPS
    assert info["problems"] == []
    tables = {t["name"]: t for t in info["tables"]}
    assert set(tables) == set(lengths) == {"ins_user", "ins_item"}
    for name, n in lengths.items():
        t = tables[name]
        assert t["rows"] == n > 0
        assert t["dim"] == (4 if name == "ins_user" else 8)
        assert t["dtype"] == "float32" and t["id_dtype"] == "int64"
        slots = {s["name"]: s for s in t["slots"]}
        assert set(slots) == {"id", "embedding", "sparse_adamw_exp_avg", "sparse_adamw_exp_avg_sq"}
        assert slots["sparse_adamw_exp_avg"]["shape"] == [n, t["dim"]]
        assert slots["id"]["shape"] == [n]
        assert sum(s["rows"] for s in t["slices"]) == n
        assert all(s["shard_num"] == 1 and s["end"] <= s["size"] for s in t["slices"])
    dense = {d["name"]: d for d in info["dense_tensors"]}
    step = [d for n, d in dense.items() if n.endswith("step")]
    assert step and step[0]["value"] in (STEPS, [STEPS])
    assert all("value" in d for d in dense.values())
    model_keys = {k["name"]: k for k in info["model"]["keys"]}
    for k, shape in dense_keys.items():
        assert model_keys[f"mlp.{k}"]["shape"] == shape
    objs = info["extra"]["objects"]
    assert objs["global_step"]["value"] == STEPS
    assert objs["dense_optimizer"]["type"] == "optimizer_state"
    assert objs["dense_optimizer"]["param_groups"][0]["lr"] == 0.01
    assert info["io_state"]["count"] == 1
    (io,) = info["io_state"]["files"]
    assert io["file"] == "io_state_0.pt" and io["rank"] == 0
    state = io["states"]["train_io"]["0"]
    assert state["files"] == 2 and state["worker_num"] == 1


def test_ckpt_id_and_ckpt_directory(trained):
    out, _, _ = trained
    for args in ((out, "--ckpt-id", "2"), (out, "--ckpt-id", "ckpt_2"), (out / "ckpt_2",)):
        res = invoke(*args, "--json")
        assert res.exit_code == 0, res.output
        info = json.loads(res.output)
        assert info["global_step"] == 2 and info["ckpt_id"] == "ckpt_2" and not info["latest"]
    assert "ckpt_2 is listed" in invoke(out / "ckpt_2").output


def test_not_a_checkpoint_exit_2(tmp_path, trained):
    out, _, _ = trained
    (tmp_path / "empty").mkdir()
    res = invoke(tmp_path / "empty")
    assert res.exit_code == 2
    assert "is not a checkpoint" in res.output and "'checkpoint' file" in res.output
    assert invoke(tmp_path / "missing").exit_code == 2
    (tmp_path / "f.txt").write_text("x")
    assert invoke(tmp_path / "f.txt").exit_code == 2
    res = invoke(out, "--ckpt-id", "3")
    assert res.exit_code == 2 and "ckpt_3" in res.output and "ckpt_4" in res.output
    res = invoke(out / "ckpt_2", "--ckpt-id", "4")
    assert res.exit_code == 2 and "checkpoint root" in res.output
    # a root without its checkpoint file: the ckpt_ directories are suggested
    shutil.copytree(out / "ckpt_2", tmp_path / "noroot" / "ckpt_2")
    with pytest.raises(NotACheckpointError, match="holds ckpt_2"):
        inspect_checkpoint(str(tmp_path / "noroot"))


def test_unreadable_files_are_problems_exit_1(tmp_path, trained):
    out, _, _ = trained
    bad = tmp_path / "ckpt_4"
    shutil.copytree(out / "ckpt_4", bad)
    (bad / "model.pt").write_bytes(b"not a torch file")
    os.remove(bad / "io_state_0.pt")
    res = invoke(bad)
    assert res.exit_code == 1
    # the Trainer's loader (checkpoint_manager.load_torch_file) reads it: same message as a resume
    assert "model.pt cannot be read (dense parameters)" in res.output
    assert "io_state_count is 1 but 0 io_state_<rank>.pt files exist" in res.output
    assert "global_step: 4" in res.output          # the rest is still shown


def test_checksums_are_reported_and_verified_on_request(tmp_path, trained):
    out, _, _ = trained
    info = inspect_checkpoint(str(out))
    cs = info["checksums"]
    assert cs["present"] and cs["algorithm"] == "xxh3_64" and cs["unlisted"] == [] and cs["verified"] is None
    assert cs["files"] == len(os.listdir(out / "ckpt_5")) - 1
    assert inspect_checkpoint(str(out), verify=True)["checksums"]["verified"] == cs["files"]
    assert "checksums: xxh3_64" in invoke(out).output
    bad = tmp_path / "ckpt_4"
    shutil.copytree(out / "ckpt_4", bad)
    data = sorted(bad.glob("*.safetensors"))[0]
    raw = bytearray(data.read_bytes())
    raw[-3] ^= 0x01                            # last bytes: table data, headers stay valid
    data.write_bytes(bytes(raw))
    (bad / "stray.txt").write_text("added later")
    fast = inspect_checkpoint(str(bad))
    assert fast["problems"] == [] and fast["checksums"]["unlisted"] == ["stray.txt"]
    slow = inspect_checkpoint(str(bad), verify=True)
    assert [p for p in slow["problems"] if data.name in p and "corrupt" in p]
    assert invoke(bad).exit_code == 0                 # headers only: the flip is not seen
    res = invoke(bad, "--verify")
    assert res.exit_code == 1 and data.name in res.output and "corrupt" in res.output
    os.remove(bad / "checksums.json")
    assert "checksums: none" in invoke(bad).output


def test_checkpoint_list_must_be_text_naming_directories_inside_the_root(tmp_path, trained):
    out, _, _ = trained
    root = tmp_path / "root"
    shutil.copytree(out, root)
    (root / "checkpoint").write_text(f"ckpt_2\n../{out.name}/ckpt_4\n")
    with pytest.raises(NotACheckpointError, match="points outside the checkpoint directory"):
        inspect_checkpoint(str(root))
    (root / "checkpoint").write_text(f"{out / 'ckpt_4'}\n")
    assert invoke(root).exit_code == 2
    (root / "checkpoint").write_bytes(b"\xff\xfeckpt_2\n")
    with pytest.raises(NotACheckpointError, match="checkpoint is not UTF-8"):
        inspect_checkpoint(str(root))


def test_two_shard_sparse_checkpoint(tmp_path):
    """Shards and slices of a sparse checkpoint written by two serialize.Saver shards."""
    ckpt = tmp_path / "ckpt_9"
    lens = []
    for shard in (1, 0):          # shard 0 merges the metadata, so it saves last
        emb = DynamicEmbedding(EmbeddingOption(embedding_dim=3, shared_name="two"))
        emb(torch.tensor([[1 + 10 * shard], [2 + 10 * shard], [3 + 10 * shard]]))
        tables = filter_out_sparse_param(emb)
        lens.append(len(tables["two"]))
        Saver(shard_index=shard, shard_num=2, parallel=1, path=str(ckpt), hashtables=tables,
              tensors={"my_step": torch.tensor(9)}).save()
        from recis_compat.nn.modules.hashtable import HashtableRegister
        HashtableRegister().unregister("two")
    info = inspect_checkpoint(str(ckpt))
    (t,) = info["tables"]
    assert t["name"] == "two" and t["rows"] == sum(lens) and t["dim"] == 3
    assert sorted((s["shard_index"], s["shard_num"], s["rows"]) for s in t["slices"]) == [(0, 2, 3), (1, 2, 3)]
    assert info["dense_tensors"] == [{"name": "my_step", "shape": [], "dtype": "int64",
                                      "file": info["dense_tensors"][0]["file"], "value": 9}]
    assert info["model"] is None and info["extra"] is None and info["global_step"] is None
    assert info["problems"] == []
    res = invoke(ckpt)
    assert res.exit_code == 0 and "shard 1/2: 3 rows" in res.output and "model.pt: absent" in res.output


def test_help():
    res = CliRunner().invoke(main, ["ckpt", "inspect", "--help"])
    assert res.exit_code == 0
    for word in ("checkpoint root", "--ckpt-id", "--json", "slots", "io_state_count", "weights_only"):
        assert word in res.output
    assert "inspect" in CliRunner().invoke(main, ["ckpt", "--help"]).output
