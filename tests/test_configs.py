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
    allowed = {
        "crop_size",
        "scale",
        "test_scale",
        "ratio_range",
        "photometric",
        "name",
        "train_split",
        "train_ann_dirs",
    }
    assert {k for k in demo["dataset"] if demo["dataset"][k] != real["dataset"].get(k)} <= allowed
    assert demo["dataset"]["benchmark"] == real["dataset"]["benchmark"] == "voc20"


#: the CLIP-RC / ZegCLIP rows: experiment file -> (method, benchmark, trainer max_steps, method num_prompts,
#: focal / dice / recovery weights), the public codes' values (docs/clip_rc.md; Context-59: VOC's, ours)
ROWS = {
    "voc20_clip_rc": ("clip_rc", "voc20", 40000, 10, 100.0, 1.0, 2.0),
    "cocostuff171_clip_rc": ("clip_rc", "cocostuff171", 80000, 100, 200.0, 3.0, 50.0),
    "context59_zs3_clip_rc": ("clip_rc", "context59", 40000, 10, 100.0, 1.0, 2.0),
    "voc20_zegclip": ("zegclip", "voc20", 20000, 10, 100.0, 1.0, 0.0),
    "cocostuff171_zegclip": ("zegclip", "cocostuff171", 80000, 100, 100.0, 1.0, 0.0),
}


@pytest.mark.parametrize("row", sorted(ROWS))
def test_clip_rc_and_zegclip_rows_compose_to_the_public_codes_values(row):
    """Each reported row is one experiment file whose composed config has the public code's values: seen_bias 0.1
    (probability units), fp32, poly floor 1e-6, and the per-benchmark steps, prompts and loss weights."""
    from omegaconf import OmegaConf

    method, benchmark, steps, prompts, focal, dice, recovery = ROWS[row]
    cfg = OmegaConf.to_container(_compose("train", [f"experiment={row}"]), resolve=True)
    tr, m = cfg["trainer"], cfg["method"]
    assert (m["name"], cfg["dataset"]["benchmark"]) == (method, benchmark)
    assert (tr["max_steps"], tr["seen_bias"], tr["amp"], tr["min_lr"]) == (steps, 0.1, "fp32", 1e-6)
    assert (m["num_prompts"], m["focal_weight"], m["dice_weight"], m["recovery_weight"]) == (
        prompts,
        focal,
        dice,
        recovery,
    )
    assert "recipe" not in m
    # the same benchmark experiment with method=<m> is the method at the zss trainer recipe, not the row
    base = row.removesuffix(f"_{method}")
    plain = OmegaConf.to_container(_compose("train", [f"experiment={base}", f"method={method}"]), resolve=True)[
        "trainer"
    ]
    assert (plain["seen_bias"], plain["amp"], plain["min_lr"]) == (0.0, "bf16", 0.0)


def test_no_config_reads_a_method_recipe():
    """The per-benchmark ``method.recipe`` indirection is gone from every shipped config."""
    for path in sorted(CONFIGS.rglob("*.yaml")):
        assert "method.recipe" not in path.read_text(), path
