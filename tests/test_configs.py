"""Every shipped config composes; zss's library modules never import Hydra."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
EXPERIMENTS = sorted(p.stem for p in (CONFIGS / "experiment").glob("*.yaml"))


def _compose(name, overrides):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose(config_name=name, overrides=overrides)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes(experiment):
    from omegaconf import OmegaConf

    cfg = _compose("train", [f"experiment={experiment}"])
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert resolved["method"]["_target_"].startswith("zss.methods.")
    assert resolved["trainer"]["max_steps"] > 0
    from zss.data.classes import get_benchmark

    get_benchmark(resolved["dataset"]["benchmark"], resolved["dataset"].get("split"))


@pytest.mark.parametrize("group", ["dataset", "model", "teacher", "method", "trainer"])
def test_every_group_option_composes(group):
    for opt in sorted(p.stem for p in (CONFIGS / group).glob("*.yaml")):
        _compose("train", [f"{group}={opt}"])


def test_eval_config_composes():
    cfg = _compose("eval", ["ckpt=x.pt"])
    assert cfg.ckpt == "x.pt"


def test_library_does_not_import_hydra():
    code = (
        "import sys, pkgutil, importlib, zss\n"
        "for m in pkgutil.walk_packages(zss.__path__, 'zss.'):\n"
        "    if m.name != 'zss.cli' and not m.name.startswith('zss.cli.'): importlib.import_module(m.name)\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('hydra', 'omegaconf')]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_slurm_launcher_config_composes():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["hydra/launcher=slurm"], return_hydra_config=True)
    assert cfg.hydra.launcher.tasks_per_node == cfg.hydra.launcher.gpus_per_node


def test_slurm_env_maps_to_torchrun_variables(monkeypatch):
    from zss.utils import dist

    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SLURM_JOB_NODELIST"):
        # setenv first so monkeypatch records the variable and removes what _slurm_env sets at teardown (a
        # leaked WORLD_SIZE makes later tests wait forever for a distributed group)
        monkeypatch.setenv(k, "unset")
        monkeypatch.delenv(k)
    monkeypatch.setenv("SLURM_NTASKS", "4")
    monkeypatch.setenv("SLURM_PROCID", "3")
    monkeypatch.setenv("SLURM_LOCALID", "1")
    monkeypatch.setenv("SLURM_JOB_ID", "123")
    dist._slurm_env()
    import os

    assert (os.environ["RANK"], os.environ["WORLD_SIZE"], os.environ["LOCAL_RANK"]) == ("3", "4", "1")
    assert os.environ["MASTER_ADDR"] == "127.0.0.1" and os.environ["MASTER_PORT"] == "20123"


def test_demo_is_the_shipping_recipe_at_cpu_scale():
    """experiment=demo trains the SHIPPING method config (the voc20 preset's); only CPU-scale keys differ:
    crop/scale, augmentation strength, steps, lr and batch (docs/methods.md "Demo scale")."""
    from omegaconf import OmegaConf

    demo = OmegaConf.to_container(_compose("train", ["experiment=demo"]), resolve=True)
    real = OmegaConf.to_container(_compose("train", ["experiment=voc20", "method=clip_zss"]), resolve=True)
    assert demo["method"] == real["method"]
    # and the training list: the bundled sample has train.txt only (voc20), the real run VOC-Aug (voc20_aug)
    allowed = {"crop_size", "scale", "test_scale", "ratio_range", "photometric", "name", "train_split",
               "train_ann_dirs"}
    assert {k for k in demo["dataset"] if demo["dataset"][k] != real["dataset"].get(k)} <= allowed
    assert demo["dataset"]["benchmark"] == real["dataset"]["benchmark"] == "voc20"
