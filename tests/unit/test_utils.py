"""recis.utils (logger, data_utils, parser) and recis.framework.filesystem (RecIS 1.0; see COMPATIBILITY.md)."""
import collections
import dataclasses
import io
import logging
import re
import subprocess
import sys
import uuid
from contextlib import redirect_stdout
from typing import List, Optional

import fsspec
import pytest
import torch

from recis_compat.ragged.tensor import RaggedTensor
from recis_compat.utils.data_utils import copy_data_to_device
from recis_compat.utils.logger import Logger
from recis_compat.utils.parser import ArgumentParser

_LINE = r"\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}\] \[{level}\] \[{name}\] {msg}"


def _name():
    return f"test-logger-{uuid.uuid4().hex[:8]}"


def _match(level, name, msg, text):
    pat = _LINE.replace("{level}", level).replace("{name}", re.escape(name)) \
               .replace("{msg}", re.escape(msg))
    return re.fullmatch(pat, text.rstrip("\n")) is not None


# ------------------------------------------------------------------------ Logger
def test_logger_line_format_and_streams(capsys):
    name = _name()
    log = Logger(name)
    log.info("hello %d", 3)
    log.warning("careful")
    log.error("broken")
    out, err = capsys.readouterr()
    assert _match("INFO", name, "hello 3", out), out
    lines = err.splitlines()
    assert len(lines) == 2
    assert _match("WARNING", name, "careful", lines[0]), lines[0]
    assert _match("ERROR", name, "broken", lines[1]), lines[1]


def test_logger_fd_level_capture(capfd):
    name = _name()
    log = Logger(name)
    log.info("to stdout")
    log.error("to stderr")
    out, err = capfd.readouterr()
    assert "[INFO]" in out and "to stdout" in out and "to stderr" not in out
    assert "[ERROR]" in err and "to stderr" in err and "to stdout" not in err


def test_logger_debug_and_level(capsys):
    name = _name()
    Logger(name).debug("dbg")
    _, err = capsys.readouterr()
    assert _match("DEBUG", name, "dbg", err)
    quiet = Logger(_name(), level=logging.INFO)
    quiet.debug("hidden")
    quiet.info("shown")
    out, err = capsys.readouterr()
    assert err == "" and "shown" in out


def test_logger_configures_named_logger():
    name = _name()
    Logger(name, level=logging.WARNING)
    lg = logging.getLogger(name)
    assert lg.level == logging.WARNING
    assert lg.propagate is False
    assert len(lg.handlers) == 2


def test_logger_does_not_propagate(caplog, capsys):
    name = _name()
    with caplog.at_level(logging.DEBUG):
        Logger(name).info("private")
    assert not any(r.name == name for r in caplog.records)
    assert "private" in capsys.readouterr().out


@pytest.mark.parametrize("rank, logged", [(None, True), ("0", True), ("1", False), ("3", False)])
def test_logger_rank0_variants(monkeypatch, capsys, rank, logged):
    if rank is None:
        monkeypatch.delenv("RANK", raising=False)
    else:
        monkeypatch.setenv("RANK", rank)
    name = _name()
    log = Logger(name)
    log.info_rank0("i0")
    log.warning_rank0("w0")
    log.error_rank0("e0")
    log.info("always")
    out, err = capsys.readouterr()
    assert ("i0" in out) == logged
    assert ("w0" in err) == logged and ("e0" in err) == logged
    assert "always" in out
    if logged:
        assert _match("WARNING", name, "w0", err.splitlines()[0])


def test_logger_same_name_twice_no_duplicates_q20(capsys):
    name = _name()
    a = Logger(name)
    b = Logger(name)
    a.info("once")
    b.error("also once")
    out, err = capsys.readouterr()
    assert out.count("once") == 1
    assert err.count("also once") == 1
    assert len(logging.getLogger(name).handlers) == 2


def test_logger_keeps_foreign_handlers(capsys):
    name = _name()
    lg = logging.getLogger(name)
    buf = io.StringIO()
    foreign = logging.StreamHandler(buf)
    lg.addHandler(foreign)
    Logger(name)
    Logger(name)
    lg.info("x")
    assert foreign in lg.handlers and buf.getvalue() == "x\n"
    lg.removeHandler(foreign)


def test_logger_follows_stdout_redirection():
    log = Logger(_name())
    buf = io.StringIO()
    with redirect_stdout(buf):
        log.info("redirected")
    assert "redirected" in buf.getvalue()


def test_logger_default_name_is_a_path():
    import recis_compat.utils.logger as mod
    log = Logger()
    assert log._logger.name == mod.__file__


# ------------------------------------------------------------------------ copy_data_to_device
class _Probe:
    """Records how .to was called; returns a marked copy."""

    def __init__(self, tag="p"):
        self.tag = tag
        self.calls = []

    def to(self, *args, **kwargs):
        out = _Probe(self.tag)
        out.calls = [(args, kwargs)]
        return out


Pair = collections.namedtuple("Pair", ["a", "b"])


@dataclasses.dataclass
class _Batch:
    x: object
    meta: dict
    derived: object = dataclasses.field(init=False, default=None)


def test_copy_tensor_args_forwarded():
    t = torch.arange(3)
    out = copy_data_to_device(t, "cpu", torch.float64)
    assert out.dtype == torch.float64
    p = copy_data_to_device(_Probe(), "cuda:1", non_blocking=True)
    assert p.calls == [(("cuda:1",), {"non_blocking": True})]


def test_copy_namedtuple_list_tuple_keep_type():
    data = Pair(a=_Probe("a"), b=[_Probe("b"), (_Probe("c"), 3)])
    out = copy_data_to_device(data, "dev")
    assert type(out) is Pair
    assert out.a.calls[0][0] == ("dev",)
    assert type(out.b) is list and type(out.b[1]) is tuple
    assert out.b[1][1] == 3 and out.b[1][0].tag == "c" and out.b[1][0].calls


def test_copy_mappings_keep_type_and_factory():
    dd = collections.defaultdict(list, {"k": _Probe()})
    out = copy_data_to_device(dd, "dev")
    assert type(out) is collections.defaultdict and out.default_factory is list
    assert out["k"].calls and out["missing"] == []
    od = collections.OrderedDict([("z", _Probe()), ("a", 1)])
    out = copy_data_to_device(od, "dev")
    assert type(out) is collections.OrderedDict and list(out) == ["z", "a"]
    assert out["a"] == 1


def test_copy_dataclass_rebuilt_field_by_field():
    b = _Batch(x=_Probe(), meta={"n": _Probe()})
    b.derived = _Probe("d")
    out = copy_data_to_device(b, "dev")
    assert type(out) is _Batch and out is not b
    assert out.x.calls and out.meta["n"].calls
    assert out.derived.tag == "d" and out.derived.calls


def test_copy_ragged_tensor_and_nested():
    rt = RaggedTensor(torch.tensor([1, 2, 3]), torch.tensor([0, 1, 3], dtype=torch.int32),
                      weight=torch.ones(3))
    data = {"feat": rt, "label": torch.zeros(2), "rows": [rt, "text", 7, None]}
    out = copy_data_to_device(data, "cpu", torch.float32)
    assert isinstance(out["feat"], RaggedTensor) and out["feat"] is not rt
    assert out["feat"].dtype == torch.float32
    assert out["feat"].offsets()[0].dtype == torch.int32
    assert out["rows"][1:] == ["text", 7, None]
    out2 = copy_data_to_device(data, torch.device("cpu"))
    assert out2["feat"].values().data_ptr() == rt.values().data_ptr()


def test_copy_other_objects_unchanged():
    obj = object()
    assert copy_data_to_device(obj, "cpu") is obj
    assert copy_data_to_device("abc", "cpu") == "abc"
    assert copy_data_to_device(_Batch, "cpu") is _Batch  # a dataclass *type* is left alone


# ------------------------------------------------------------------------ ArgumentParser
@dataclasses.dataclass
class TrainingArguments:
    gradient_accumulation_steps: int = 1
    output_dir: str = "output_dir"
    model_bank: Optional[list] = None
    log_steps: int = 100
    train_steps: Optional[int] = None
    train_epoch: Optional[int] = 1
    save_steps: Optional[int] = 1000
    max_to_keep: int = 5


@dataclasses.dataclass
class IOArgs:
    data_paths: str = "./data/"
    batch_size: int = 1024
    thread_num: int = 1
    prefetch: int = 1
    drop_remainder: bool = False
    files: List[str] = dataclasses.field(default_factory=lambda: ["a.orc"])


@dataclasses.dataclass
class LRConfig:
    sparse_lr: float = 0.001
    dense_lr: float = 0.001


def _parser():
    p = ArgumentParser()
    p.add_arguments(LRConfig, dest="lr")
    p.add_arguments(TrainingArguments, dest="train_config")
    p.add_arguments(IOArgs, dest="dataset")
    return p


def test_parser_examples_command_line():
    argv = ["--data_paths=./data/", "--batch_size=1000", "--thread_num=1", "--prefetch=1",
            "--drop_remainder=true", "--gradient_accumulation_steps=4", "--output_dir=./ckpt",
            "--log_steps=10", "--save_steps=2000", "--sparse_lr=0.01"]
    ns = _parser().parse_args(argv)
    assert isinstance(ns.dataset, IOArgs) and isinstance(ns.train_config, TrainingArguments)
    assert ns.dataset.drop_remainder is True and ns.dataset.batch_size == 1000
    assert ns.train_config.gradient_accumulation_steps == 4
    assert ns.train_config.output_dir == "./ckpt" and ns.train_config.save_steps == 2000
    assert ns.train_config.train_steps is None and ns.train_config.model_bank is None
    assert ns.lr.sparse_lr == 0.01 and ns.lr.dense_lr == 0.001


@pytest.mark.parametrize("flag, value", [
    (["--drop_remainder=true"], True), (["--drop_remainder=True"], True),
    (["--drop_remainder=false"], False), (["--drop_remainder=False"], False),
    (["--drop_remainder", "true"], True), (["--drop_remainder"], True),
    (["--drop_remainder=1"], True), (["--drop_remainder=0"], False), ([], False)])
def test_parser_boolean_spellings(flag, value):
    assert _parser().parse_args(flag).dataset.drop_remainder is value


def test_parser_list_and_optional_fields():
    ns = _parser().parse_args(["--files", "x.orc", "y.orc", "--train_steps=7"])
    assert ns.dataset.files == ["x.orc", "y.orc"]
    assert ns.train_config.train_steps == 7
    assert _parser().parse_args([]).dataset.files == ["a.orc"]


def test_parser_default_dest_is_class_name():
    p = ArgumentParser()
    p.add_arguments(IOArgs)
    ns = p.parse_args(["--batch_size=8"])
    assert ns.IOArgs.batch_size == 8
    p = ArgumentParser()
    p.add_arguments(IOArgs(batch_size=5))  # an instance: its values are the defaults
    assert p.parse_args([]).IOArgs.batch_size == 5


def test_parser_rejects_bad_values():
    with pytest.raises(SystemExit):
        _parser().parse_args(["--batch_size=abc"])


# ------------------------------------------------------------------------ filesystem
def test_get_file_system():
    from recis_compat.framework.filesystem import get_file_system
    local = fsspec.filesystem("file")
    assert get_file_system("/tmp/x") is local or isinstance(get_file_system("/tmp/x"),
                                                            type(local))
    assert get_file_system("relative/dir").protocol == local.protocol
    assert get_file_system("file:///tmp/x").protocol == local.protocol
    import pathlib
    assert get_file_system(pathlib.Path("/tmp")).protocol == local.protocol
    for url, proto in (("hdfs://nn/path", "hdfs"), ("s3://b/k", "s3"), ("dfs://x/y", "dfs")):
        with pytest.raises(NotImplementedError, match=f"'{proto}'"):
            get_file_system(url)


def test_get_file_system_works_on_tmp(tmp_path):
    from recis_compat.framework.filesystem import get_file_system
    fs = get_file_system(str(tmp_path))
    fs.makedirs(str(tmp_path / "a"), exist_ok=True)
    with fs.open(str(tmp_path / "a" / "f.txt"), "w") as f:
        f.write("hi")
    assert fs.exists(str(tmp_path / "a" / "f.txt"))


# ------------------------------------------------------------------------ layering
def test_utils_and_common_import_nothing_above():
    code = ("import sys\n"
            "import recis_compat.utils, recis_compat.utils.logger, recis_compat.utils.data_utils\n"
            "import recis_compat.utils.parser, recis_compat.common.singleton\n"
            "import recis_compat.common.common_config, recis_compat.common.crypto_utils\n"
            "bad = [m for m in sys.modules if m.startswith(('recis_compat.framework', "
            "'recis_compat.nn', 'recis_compat.features', 'recis_compat.io', "
            "'recis_compat.backend', 'torchrec'))]\n"
            "print(bad); sys.exit(1 if bad else 0)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
