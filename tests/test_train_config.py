"""TrainConfig (zss.engine.trainer) checks its own values: ``TrainConfig(...)`` in Python and ``trainer.<key>=`` on the
command line refuse the same values with the same one-line message; its Python defaults are the shipped
configs/trainer/default.yaml (registered in Hydra's ConfigStore as ``trainer=schema``)."""

from __future__ import annotations

import dataclasses

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from zss.cli.common import CONFIG_DIR, train_config
from zss.cli.train import train_main
from zss.engine.trainer import TrainConfig

#: (override value as typed on the command line, the same value in Python, words the message must hold)
BAD = {
    "max_steps": ("0", 0, ">= 1 (optimizer steps)"),
    "batch_size": ("-3", -3, ">= 1 (images)"),
    "eval_crop_batch": ("0", 0, ">= 1"),
    "lr": ("-0.001", -0.001, ">= 0 (a learning rate)"),
    "warmup_steps": ("-1", -1, ">= 0"),
    "log_interval": ("2.5", 2.5, "an integer"),
    "seed": ("abc", "abc", "an integer"),
    "weight_decay": ("true", True, "a number"),
    "seen_bias": ("nan", float("nan"), "a finite number"),
    "micro_batch_size": ("0", 0, "null (= batch_size / world size) or an integer >= 1"),
}


def _compose(*overrides: str):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("train", overrides=list(overrides))


@pytest.mark.parametrize("key", sorted(BAD))
def test_python_and_cli_refuse_the_same_value_with_the_same_message(key):
    cli_value, py_value, words = BAD[key]
    with pytest.raises(ValueError) as py:
        TrainConfig(**{key: py_value})
    with pytest.raises(ValueError) as cli:
        train_config(_compose(f"trainer.{key}={cli_value}").trainer)
    assert str(py.value) == str(cli.value)
    assert str(py.value).startswith(f"trainer.{key}=") and words in str(py.value)
    assert "\n" not in str(py.value)


def test_train_command_refuses_before_building_anything(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr("sys.argv", ["zss-train", "trainer.max_steps=0", f"run_root={tmp_path}"])
    with pytest.raises(SystemExit) as e:
        train_main()
    assert e.value.code == 1 and not any(tmp_path.iterdir())  # no run folder made
    assert "trainer.max_steps=0: must be an integer >= 1" in capsys.readouterr().err


def test_good_values_pass_and_null_micro_batch_is_allowed():
    cfg = TrainConfig(max_steps=1, batch_size=1, lr=0.0, micro_batch_size=None, seen_bias=-0.5)
    assert (cfg.max_steps, cfg.lr, cfg.micro_batch_size) == (1, 0.0, None)
    assert train_config(_compose("trainer.max_steps=1", "trainer.lr=0").trainer).max_steps == 1


def test_python_defaults_are_the_shipped_trainer_config():
    shipped = OmegaConf.to_container(_compose().trainer, resolve=True)
    schema = OmegaConf.to_container(_compose("trainer=schema").trainer, resolve=True)
    assert schema.pop("extra") == {}  # Python-only pass-through, absent from the YAML
    assert schema == shipped
    defaults = dataclasses.asdict(TrainConfig())
    defaults.pop("extra")
    assert {k: list(v) if isinstance(v, tuple) else v for k, v in defaults.items()} == shipped
