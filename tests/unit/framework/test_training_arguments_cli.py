"""TrainingArguments defaults / validation and parsing them from the command line as the RecIS
examples do (RecIS 1.0; see COMPATIBILITY.md)."""
from __future__ import annotations

import dataclasses

import pytest
from recis.framework.trainer import TrainingArguments
from recis.utils.parser import ArgumentParser


def test_defaults_match_recis():
    """RecIS's fields and defaults, plus ours (COMPATIBILITY.md): ``delta_save_steps`` (off)."""
    a = TrainingArguments()
    assert dataclasses.asdict(a) == {
        "gradient_accumulation_steps": 1, "output_dir": "output_dir", "model_bank": None, "log_steps": 100,
        "train_steps": None, "train_epoch": 1, "eval_steps": None, "save_steps": 1000, "max_to_keep": 5,
        "save_concurrency_per_rank": 4, "delta_save_steps": None}


@pytest.mark.parametrize("kwargs", [
    {"gradient_accumulation_steps": 0},
    {"gradient_accumulation_steps": -2},
    {"output_dir": "model.some_table"},
    {"output_dir": "model"},
    {"log_steps": 0},
    {"save_steps": -1},
])
def test_invalid_arguments_raise(kwargs):
    with pytest.raises(ValueError):
        TrainingArguments(**kwargs)


@pytest.mark.parametrize("kwargs", [
    {"save_steps": None}, {"save_steps": 0}, {"output_dir": "./models"}, {"output_dir": "/tmp/model_x"},
    {"gradient_accumulation_steps": 4},
])
def test_valid_arguments(kwargs):
    a = TrainingArguments(**kwargs)
    for k, v in kwargs.items():
        assert getattr(a, k) == v


def test_parse_recis_example_flags():
    parser = ArgumentParser()
    parser.add_arguments(TrainingArguments, dest="train_config")
    args = parser.parse_args(["--gradient_accumulation_steps=4", "--output_dir=./ckpt", "--log_steps=10", "--save_steps=2000", "--train_steps", "5"])
    cfg = args.train_config
    assert isinstance(cfg, TrainingArguments)
    assert cfg.gradient_accumulation_steps == 4
    assert cfg.output_dir == "./ckpt"
    assert cfg.log_steps == 10
    assert cfg.save_steps == 2000
    assert cfg.train_steps == 5
    # untouched fields keep their defaults
    assert cfg.train_epoch == 1 and cfg.max_to_keep == 5 and cfg.model_bank is None and cfg.eval_steps is None


def test_parse_no_flags_gives_defaults_and_default_dest():
    parser = ArgumentParser()
    parser.add_arguments(TrainingArguments)
    args = parser.parse_args([])
    assert args.TrainingArguments == TrainingArguments()


def test_parse_with_other_example_arguments():
    @dataclasses.dataclass
    class ModelConfig:
        embedding_dim: int = 8
        use_bias: bool = False

    parser = ArgumentParser()
    parser.add_arguments(TrainingArguments, dest="train_config")
    parser.add_arguments(ModelConfig, dest="model_config")
    args = parser.parse_args(["--embedding_dim", "16", "--use_bias=true", "--max_to_keep=2"])
    assert args.model_config == ModelConfig(embedding_dim=16, use_bias=True)
    assert args.train_config.max_to_keep == 2


def test_parse_invalid_value_is_rejected():
    parser = ArgumentParser()
    parser.add_arguments(TrainingArguments, dest="train_config")
    with pytest.raises((SystemExit, ValueError)):
        parser.parse_args(["--gradient_accumulation_steps=0"])
    with pytest.raises(SystemExit):
        parser.parse_args(["--log_steps=ten"])
