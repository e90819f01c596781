"""Checkpoint integrity (issue 13 items 4, 5, 7, 8): checksums turn flipped bytes into an error
naming the file; every path read from a checkpoint's metadata stays inside the checkpoint; no
pickle is loaded without an explicit trusted-source flag; bad list / count files name the file."""
import json
import os
import pickle
import shutil
import warnings

import pytest
import torch
from safetensors import safe_open

from recis.framework.checkpoint_manager import Saver as FrameworkSaver
from recis.serialize import Loader, Saver
from recis.serialize.checkpoint_reader import CheckpointReader
from recis_compat.serialize.integrity import CHECKSUM_FILE, file_checksum
from recis_compat.serialize.layout import CheckpointCorruptError, CheckpointError
from serialize_helpers import assert_same, fill, make_table, snapshot


# ------------------------------------------------------------------------------ helpers
def save_table(d, name="ig_t", ids=(1, 2, 3, 70000), parallel=2):
    t = make_table(name)
    expected = fill(t, {name: list(ids)})
    Saver(path=str(d), hashtables={name: t}, tensors={"sc": torch.tensor([1.0, 2.0])}, parallel=parallel).save()
    return expected


def data_files(d):
    return sorted(n for n in os.listdir(d) if n.endswith(".safetensors"))


def flip_data_byte(path, key=None):
    """Flip one byte inside the data region of a safetensors file (the header stays valid)."""
    raw = bytearray(open(path, "rb").read())
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    key = key or next(k for k, v in header.items()
                      if k != "__metadata__" and v["data_offsets"][1] > v["data_offsets"][0])
    begin = 8 + n + header[key]["data_offsets"][0]
    raw[begin] ^= 0x40
    open(path, "wb").write(bytes(raw))


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(64, 4)


class IoState:
    """The parts of a dataset the framework Saver uses for io state."""

    _worker_num = 1

    def __init__(self):
        self.state = {"0": "pos-17"}

    def dump_io_state(self):
        return dict(self.state)

    def load_io_state(self, st):
        self.state = dict(st)


def framework_save(root, io=None):
    saver = FrameworkSaver(Net(), output_dir=str(root))
    if io is not None:
        saver.register_io_state("train_io", io)
    saver.register_for_checkpointing("global_step", torch.tensor(5))
    saver.save("ckpt_5")
    return saver


# ------------------------------------------------------------------------------ checksums
def test_every_saved_file_has_a_checksum(tmp_path):
    save_table(tmp_path / "ck")
    d = tmp_path / "ck"
    manifest = json.loads((d / CHECKSUM_FILE).read_text())
    assert manifest["algorithm"] == "xxh3_64"
    assert sorted(manifest["files"]) == sorted(n for n in os.listdir(d) if n != CHECKSUM_FILE)
    for name, value in manifest["files"].items():
        assert file_checksum(str(d / name)) == value, name
    # index, tensorkey.json and the data files stay exactly RecIS's: no extra key anywhere
    assert sorted(json.loads((d / "index").read_text())) == ["block_index", "file_index"]
    for f in data_files(d):
        with safe_open(str(d / f), framework="pt") as h:
            assert h.metadata() is None


def test_flipped_byte_in_safetensors_data_is_an_error_naming_the_file(tmp_path):
    d = tmp_path / "ck"
    save_table(d)
    victim = data_files(d)[1]
    flip_data_byte(str(d / victim))
    t = make_table("ig_t")
    with pytest.raises(CheckpointCorruptError, match=f"{d}.*{victim}.*corrupt.*xxh3_64"):
        Loader(str(d), hashtables={"ig_t": t}, tensors={"sc": torch.zeros(2)}).load()
    assert len(t) == 0                       # checked before anything was written into the table
    with pytest.raises(CheckpointCorruptError, match=victim):
        r = CheckpointReader(str(d))
        for name in r.tensor_names():
            r.read_tensor(name)


@pytest.mark.parametrize("name", ["index", "tensorkey.json"])
def test_flipped_byte_in_metadata_is_an_error_naming_the_file(tmp_path, name):
    d = tmp_path / "ck"
    save_table(d)
    text = (d / name).read_text()
    (d / name).write_text(text.replace("0", "1", 1))      # still valid JSON, different meaning
    with pytest.raises(CheckpointCorruptError, match=f"'{name}'.*corrupt"):
        Loader(str(d), hashtables={"ig_t": make_table("ig_t")}).load()


def test_checkpoint_without_checksums_loads_with_one_warning(tmp_path):
    d = tmp_path / "ck"
    expected = save_table(d)
    (d / CHECKSUM_FILE).unlink(missing_ok=True)              # as RecIS (or an older recis-compat) writes it
    t = make_table("ig_t")
    with pytest.warns(RuntimeWarning, match="no checksums.json") as rec:
        Loader(str(d), hashtables={"ig_t": t}).load()
        CheckpointReader(str(d)).read_tensor("ig_t@embedding")
    assert len([w for w in rec if "checksums.json" in str(w.message)]) == 1
    assert_same(snapshot(t), expected)


def test_crc32_manifests_are_read_and_unknown_algorithms_are_an_error(tmp_path, monkeypatch):
    """crc32 is what a writer without xxhash records; readers accept both."""
    from recis_compat.serialize import integrity
    monkeypatch.setattr(integrity, "ALGORITHM", "crc32")
    d = tmp_path / "ck"
    expected = save_table(d)
    m = json.loads((d / CHECKSUM_FILE).read_text())
    assert m["algorithm"] == "crc32" and all(len(v) == 8 for v in m["files"].values())
    t = make_table("ig_t")
    Loader(str(d), hashtables={"ig_t": t}).load()
    assert_same(snapshot(t), expected)
    flip_data_byte(str(d / data_files(d)[0]))
    with pytest.raises(CheckpointCorruptError, match="crc32"):
        Loader(str(d), hashtables={"ig_t": make_table("ig_t2", children=["ig_t"])}).load()
    m["algorithm"] = "md4"
    (d / CHECKSUM_FILE).write_text(json.dumps(m))
    with pytest.raises(CheckpointError, match="checksums.json.*'md4'"):
        CheckpointReader(str(d))


def test_data_file_missing_from_checksums_is_an_error(tmp_path):
    d = tmp_path / "ck"
    save_table(d)
    m = json.loads((d / CHECKSUM_FILE).read_text())
    victim = data_files(d)[0]
    del m["files"][victim]
    (d / CHECKSUM_FILE).write_text(json.dumps(m))
    with pytest.raises(CheckpointError, match=f"{victim}.*not listed in 'checksums.json'"):
        Loader(str(d), hashtables={"ig_t": make_table("ig_t")}).load()


def test_intact_checkpoint_loads_exactly_and_verifies_each_file_once(tmp_path, monkeypatch):
    from recis_compat.serialize import integrity
    d = tmp_path / "ck"
    expected = save_table(d)
    reads = []
    real = integrity.file_checksum
    monkeypatch.setattr(integrity, "file_checksum", lambda p, a=None: reads.append(os.path.basename(p)) or real(p, a))
    t = make_table("ig_t")
    with warnings.catch_warnings():
        warnings.simplefilter("error")       # a checkpoint with checksums loads without warnings
        Loader(str(d), hashtables={"ig_t": t}, tensors={"sc": torch.zeros(2)}).load()
        Loader(str(d), hashtables={"ig_t": make_table("ig_t2", children=["ig_t"])}).load()
    assert_same(snapshot(t), expected)
    assert sorted(reads) == sorted(["index", "tensorkey.json"] + data_files(d))   # unchanged files: read once


def test_framework_files_are_checksummed_and_flips_are_errors(tmp_path):
    root = tmp_path / "out"
    framework_save(root, IoState())
    ck = root / "ckpt_5"
    listed = json.loads((ck / CHECKSUM_FILE).read_text())["files"]
    assert {"model.pt", "extra.pt", "io_state_0.pt", "io_state_count"} <= set(listed)
    assert sorted(listed) == sorted(n for n in os.listdir(ck) if n != CHECKSUM_FILE)
    good = FrameworkSaver(Net(), output_dir=str(root))
    good.register_io_state("train_io", IoState())
    good.register_for_checkpointing("global_step", torch.tensor(0))
    assert good.load()
    for name in ("model.pt", "extra.pt", "io_state_0.pt"):
        bad = tmp_path / f"bad_{name}"
        shutil.copytree(root, bad)
        raw = bytearray((bad / "ckpt_5" / name).read_bytes())
        raw[len(raw) // 3] ^= 0x01            # inside the zip's stored tensor data
        (bad / "ckpt_5" / name).write_bytes(bytes(raw))
        s = FrameworkSaver(Net(), output_dir=str(bad))
        s.register_io_state("train_io", IoState())
        s.register_for_checkpointing("global_step", torch.tensor(0))
        with pytest.raises(CheckpointCorruptError, match=f"ckpt_5.*'{name}'.*corrupt"):
            s.load()


def test_flipped_byte_in_model_pt_tensor_data_is_caught(tmp_path):
    """torch.load itself does not notice: the flipped weight would load silently."""
    root = tmp_path / "out"
    framework_save(root)
    path = root / "ckpt_5" / "model.pt"
    weight = torch.load(path, weights_only=True)["lin.weight"]
    raw = bytearray(path.read_bytes())
    at = bytes(raw).find(weight.numpy().tobytes()[:64])
    assert at > 0
    raw[at + 5] ^= 0x10
    path.write_bytes(bytes(raw))
    assert not torch.equal(torch.load(path, weights_only=True)["lin.weight"], weight)
    with pytest.raises(CheckpointCorruptError, match="'model.pt'"):
        FrameworkSaver(Net(), output_dir=str(root)).load()


def test_old_framework_checkpoint_without_checksums_loads_with_a_warning(tmp_path):
    root = tmp_path / "out"
    framework_save(root)
    (root / "ckpt_5" / CHECKSUM_FILE).unlink(missing_ok=True)
    net = Net()
    with pytest.warns(RuntimeWarning, match="no checksums.json"):
        assert FrameworkSaver(net, output_dir=str(root)).load()
    saved = torch.load(root / "ckpt_5" / "model.pt", weights_only=True)
    assert torch.equal(net.lin.weight, saved["lin.weight"])


# ------------------------------------------------------------------------------ paths
@pytest.fixture
def escape(tmp_path):
    """A checkpoint ``ck`` and a valid copy of one of its data files outside it."""
    d = tmp_path / "ck"
    save_table(d)
    (d / CHECKSUM_FILE).unlink(missing_ok=True)              # the path check must not depend on checksums
    victim = data_files(d)[0]
    (tmp_path / "elsewhere").mkdir()
    shutil.copy(d / victim, tmp_path / "elsewhere" / "secret.safetensors")
    return d, victim, tmp_path / "elsewhere" / "secret.safetensors"


def _point_index_at(d, victim, name):
    idx = json.loads((d / "index").read_text())
    n = idx["file_index"].pop(victim)
    idx["file_index"][name] = n
    (d / "index").write_text(json.dumps(idx))


@pytest.mark.parametrize("kind", ["absolute", "dotdot", "nested_dotdot", "symlink"])
@pytest.mark.filterwarnings("ignore:.*has no checksums.json:RuntimeWarning")
def test_index_file_names_escaping_the_checkpoint_are_rejected(escape, kind):
    d, victim, secret = escape
    os.unlink(d / victim)
    name = {"absolute": str(secret), "dotdot": "../elsewhere/secret.safetensors",
            "nested_dotdot": "sub/../../elsewhere/secret.safetensors", "symlink": "link.safetensors"}[kind]
    if kind == "symlink":
        os.symlink(secret, d / "link.safetensors")
    (d / "sub").mkdir()                      # so that sub/../.. resolves
    _point_index_at(d, victim, name)
    with pytest.raises(CheckpointError, match="outside"):
        Loader(str(d), hashtables={"ig_t": make_table("ig_t")}).load()
    with pytest.raises(CheckpointError, match="outside"):
        CheckpointReader(str(d))


def test_checksum_file_names_escaping_the_checkpoint_are_rejected(tmp_path):
    d = tmp_path / "ck"
    save_table(d)
    m = json.loads((d / CHECKSUM_FILE).read_text())
    m["files"]["../x"] = "00000000"
    (d / CHECKSUM_FILE).write_text(json.dumps(m))
    with pytest.raises(CheckpointError, match="checksums.json.*outside"):
        CheckpointReader(str(d))


@pytest.mark.parametrize("entry", ["../victim/ckpt_5", "{abs}", "ckpt_5/..", "sub/ckpt_5", ".."])
def test_checkpoint_list_entries_escaping_the_root_are_rejected(tmp_path, entry):
    framework_save(tmp_path / "victim")
    root = tmp_path / "run"
    root.mkdir()
    (root / "sub").mkdir()
    shutil.copytree(tmp_path / "victim" / "ckpt_5", root / "sub" / "ckpt_5")
    entry = entry.replace("{abs}", str(tmp_path / "victim" / "ckpt_5"))
    (root / "checkpoint").write_text(f"{entry}\n")
    with pytest.raises(CheckpointError, match=f"{root}/checkpoint.*{entry}"):
        FrameworkSaver(Net(), output_dir=str(root)).load()


def test_checkpoint_list_entry_symlinked_out_of_the_root_is_rejected(tmp_path):
    framework_save(tmp_path / "victim")
    root = tmp_path / "run"
    root.mkdir()
    os.symlink(tmp_path / "victim" / "ckpt_5", root / "ckpt_9")
    (root / "checkpoint").write_text("ckpt_9\n")
    with pytest.raises(CheckpointError, match="outside"):
        FrameworkSaver(Net(), output_dir=str(root)).load()


# ------------------------------------------------------------------------------ bad files name the file
def test_binary_checkpoint_list_names_the_file(tmp_path):
    root = tmp_path / "out"
    framework_save(root)
    (root / "checkpoint").write_bytes(b"\xff\xfe\x00\x81ckpt_5\n")
    with pytest.raises(CheckpointError, match=f"{root}/checkpoint is not UTF-8"):
        FrameworkSaver(Net(), output_dir=str(root)).load()


@pytest.mark.parametrize("content", [b"two\n", b"", b"\xff1"])
@pytest.mark.filterwarnings("ignore:.*has no checksums.json:RuntimeWarning")
def test_non_integer_io_state_count_names_the_file(tmp_path, content):
    root = tmp_path / "out"
    framework_save(root, IoState())
    (root / "ckpt_5" / "io_state_count").write_bytes(content)
    (root / "ckpt_5" / CHECKSUM_FILE).unlink(missing_ok=True)     # the content check itself, not the checksum
    s = FrameworkSaver(Net(), output_dir=str(root))
    s.register_io_state("train_io", IoState())
    with pytest.raises(CheckpointError, match="ckpt_5/io_state_count must hold .* decimal integer"):
        s.load()


# ------------------------------------------------------------------------------ no silent pickle
class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_table_dcp_load_requires_trusted_source_and_unpickles_nothing_without_it(tmp_path):
    from recis_compat.backend.table_dcp import load_tables
    d = tmp_path / "dcp"
    d.mkdir()
    marker = tmp_path / "code_ran"
    (d / ".metadata").write_bytes(pickle.dumps(_Exploit(str(marker))))
    with pytest.raises(PermissionError, match="trusted_source=True"):
        load_tables(torch.nn.Module(), str(d))
    with pytest.raises(PermissionError, match="unpickles"):
        load_tables(torch.nn.Module(), str(d), trusted_source="yes")
    assert not marker.exists()


def test_framework_torch_files_are_loaded_without_pickled_code(tmp_path):
    root = tmp_path / "out"
    framework_save(root)
    marker = tmp_path / "code_ran"
    path = root / "ckpt_5" / "extra.pt"
    torch.save({"global_step": _Exploit(str(marker))}, path)
    (root / "ckpt_5" / CHECKSUM_FILE).unlink(missing_ok=True)     # even an unverifiable file is not unpickled
    with pytest.warns(RuntimeWarning, match="no checksums.json"):
        with pytest.raises(CheckpointError, match="extra.pt"):
            FrameworkSaver(Net(), output_dir=str(root)).load()
    assert not marker.exists()
