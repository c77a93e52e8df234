"""The config tree's layout (shared blocks once, experiments as deltas) changed no composed value: every
experiment (and every method on the benchmark experiments) resolves to the same config as at the commit before
the re-layout, except for the keys that were deliberately added (the ``paths`` group), removed (``method.recipe``,
whose values moved into one experiment file per CLIP-RC / ZegCLIP row) or changed (CHANGED_SINCE); the four entry
configs keep their Hydra run settings."""

from __future__ import annotations

import subprocess
import tarfile
from io import BytesIO
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import zss.cli.common  # noqa: F401  (registers the trainer schema in Hydra's ConfigStore)
from conftest import REPO, TINY

#: the last commit before the config re-layout: its configs/ is the reference the new tree must reproduce
BEFORE = "421e409"
CONFIGS = REPO / "configs"
EXPERIMENTS = sorted(p.stem for p in (CONFIGS / "experiment").glob("*.yaml"))
#: experiments that take the method from the command line: composed with every shipped method
BENCHMARK_EXPERIMENTS = (
    "cocostuff171",
    "context59_cascade",
    "context59_zs3",
    "context60_cascade",
    "context60_zs3",
    "voc20",
)
METHODS = sorted(p.stem for p in (CONFIGS / "method").glob("*.yaml"))
#: top-level keys the re-layout added on purpose (not in the old tree)
ADDED = {"paths"}
#: the CLIP-RC / ZegCLIP rows (one experiment file per reported row, replacing ``method.recipe``): each
#: composes exactly as ``experiment=<benchmark> method=<m>`` did at BEFORE, less the removed ``method.recipe`` block
ROWS = {
    "voc20_clip_rc": ("voc20", "clip_rc"),
    "voc20_zegclip": ("voc20", "zegclip"),
    "cocostuff171_clip_rc": ("cocostuff171", "clip_rc"),
    "cocostuff171_zegclip": ("cocostuff171", "zegclip"),
    "context59_zs3_clip_rc": ("context59_zs3", "clip_rc"),
}
#: keys removed on purpose from every composed config that has them (the values live in the ROWS files)
REMOVED = ("method.recipe",)
#: the public code's trainer values the benchmark experiments read from ``method.recipe`` before the re-layout
_RC_TRAINER = ("trainer.seen_bias", "trainer.amp", "trainer.min_lr")
#: deliberate value changes made after BEFORE, per experiment or "experiment method=m" (key prefixes): a new entry
#: says a change is meant. ``experiment=<benchmark> method=clip_rc|zegclip`` is now the method at the zss
#: trainer recipe (bf16, no seen bias, poly floor 0, the benchmark's steps) with the method config's own (VOC's)
#: values; the public code's values are the ROWS files'.
#: world format 2 (2026-12-06, docs/world.md "Why thin waves"): the world's teacher was taught again, new cache dir
_WORLD_TEACHER = ("teacher.pretrained",)
CHANGED_SINCE = {
    **{e: _WORLD_TEACHER for e in ("world", "world_baseline", "world_chimera", "world_clip_rc")},
    "world_demo": ("transfer_view.reference", *_WORLD_TEACHER),
    "voc20 method=clip_rc": ("trainer.max_steps", *_RC_TRAINER),
    "voc20 method=zegclip": _RC_TRAINER,
    "cocostuff171 method=clip_rc": (
        *_RC_TRAINER,
        "method.num_prompts",
        "method.focal_weight",
        "method.dice_weight",
        "method.recovery_weight",
    ),
    "cocostuff171 method=zegclip": (*_RC_TRAINER, "method.num_prompts"),
    **{f"{e} method={m}": _RC_TRAINER for e in ("context59_zs3", "context59_cascade") for m in ("clip_rc", "zegclip")},
}
#: deliberate changes in every experiment: the taught teachers' warning text names the module that builds them
#: (zss.teachers.taught moved to zss.tools.taught_clip); a text, no number depends on it
CHANGED_EVERYWHERE = ("teacher.warning",)
#: measured numbers a demo prints beside its own row (not settings): re-measured with the transfer check (2026-12-07,
#: docs/methods.md "Transfer check on the bundled VOC images")
REMEASURED = ("transfer_view.reference",)
#: CLIP-ZSS defaults decided on the synthetic world's val split (2026-12-07, docs/methods.md): the paper's readings
#: of five keys that the val split could not tell from zss's earlier values; the paper preset's ``pl_kwargs.mode``
#: became the key ``pl_fusion``; ``ce_reduction`` became ``split`` (ours), which beat the summary's ``joint`` there
CLIP_ZSS_DEFAULTS = (
    "method.ce_reduction",
    "method.synth_query",
    "method.glm_attn_scale",
    "method.pl_seen_margin",
    "method.pseudo_negatives",
    "method.pl_fusion",
    "method.pl_kwargs",
)


@pytest.fixture(scope="module")
def before_configs(tmp_path_factory) -> Path:
    """configs/ as of commit BEFORE, extracted from git (skipped where the history is not there)."""
    try:
        tar = subprocess.run(
            ["git", "-C", str(REPO), "archive", BEFORE, "configs"], capture_output=True, check=True, timeout=60
        ).stdout
    except (OSError, subprocess.SubprocessError):
        pytest.skip(f"git history with commit {BEFORE} is not available (a shallow clone or no git)")
    out = tmp_path_factory.mktemp("before")
    with tarfile.open(fileobj=BytesIO(tar)) as t:
        # extraction filters exist from Python 3.11.4 on; Debian 12's 3.11.2 lacks them (the archive is our own)
        t.extractall(out, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    return out / "configs"


def _resolved(config_dir: Path, name: str, overrides: list[str], hydra: bool = False) -> dict:
    with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
        cfg = compose(config_name=name, overrides=overrides, return_hydra_config=hydra)
    if hydra:
        h = cfg.hydra
        return dict(
            run=OmegaConf.to_container(h.run),
            output_subdir=h.output_subdir,
            chdir=h.job.chdir,
            job_logging=OmegaConf.to_container(h.job_logging),
        )
    out = OmegaConf.to_container(cfg, resolve=True)
    for key in ADDED:
        out.pop(key, None)
    return out


def _diff(a, b, key="") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [
            d
            for k in sorted(set(a) | set(b))
            for d in _diff(a.get(k, "<missing>"), b.get(k, "<missing>"), f"{key}.{k}" if key else str(k))
        ]
    return (
        []
        if a == b and type(a) is type(b) or (a == b and {type(a), type(b)} <= {int, float})
        else [f"{key}: {a!r} -> {b!r}"]
    )


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_as_before(experiment, before_configs):
    if experiment in ROWS:  # a new file: as the combination it replaces composed before
        base, method = ROWS[experiment]
        old = _resolved(before_configs, "train", [f"experiment={base}", f"method={method}"])
        new = _resolved(CONFIGS, "train", [f"experiment={experiment}"])
        diff = [d for d in _diff(old, new) if not d.startswith((*REMOVED, *CHANGED_EVERYWHERE))]
        assert not diff, (experiment, diff)
        assert "recipe" in old["method"] and "recipe" not in new["method"]
        return
    runs = {experiment: [f"experiment={experiment}"]}
    if experiment in BENCHMARK_EXPERIMENTS:
        runs.update({f"{experiment} method={m}": [f"experiment={experiment}", f"method={m}"] for m in METHODS})
    for key, overrides in runs.items():
        old = _resolved(before_configs, "train", overrides)
        new = _resolved(CONFIGS, "train", overrides)
        allowed = (*REMOVED, *CHANGED_EVERYWHERE, *CLIP_ZSS_DEFAULTS, *REMEASURED, *CHANGED_SINCE.get(key, ()))
        diff = [d for d in _diff(old, new) if not d.startswith(allowed)]
        assert not diff, (overrides, diff)


def test_changed_since_lists_only_real_changes(before_configs):
    """Every CHANGED_SINCE prefix of a method combination names a value that did change (no stale allowance)."""
    for key, prefixes in CHANGED_SINCE.items():
        if " method=" not in key:
            continue
        experiment, method = key.split(" method=")
        overrides = [f"experiment={experiment}", f"method={method}"]
        diff = _diff(_resolved(before_configs, "train", overrides), _resolved(CONFIGS, "train", overrides))
        assert all(any(d.startswith(p) for d in diff) for p in prefixes), (key, diff)


@pytest.mark.parametrize("entry", ["train", "eval", "predict", "clip_es"])
def test_entry_configs_keep_their_hydra_run_settings(entry, before_configs):
    overrides = {"eval": ["ckpt=x.pt"], "predict": ["ckpt=x.pt", "image=x.png"]}.get(entry, [])
    new = _resolved(CONFIGS, entry, overrides, hydra=True)
    assert new == _resolved(before_configs, entry, overrides, hydra=True)
    assert new["run"]["dir"] == "." and new["output_subdir"] is None and new["chdir"] is False


#: the tests' tiny-run overrides as conftest.TINY spelled them out before configs/debug/tiny.yaml
TINY_BEFORE = [
    "experiment=demo",
    "model.backbone=test_resnet",
    "model.decoder_channels=16",
    "teacher.embed_dim=16",
    "dataset.crop_size=[64,64]",
    "dataset.scale=[256,64]",
    "dataset.test_scale=[256,64]",
    "trainer.max_steps=2",
    "trainer.batch_size=4",
    "trainer.eval_interval=0",
    "trainer.ckpt_interval=0",
    "trainer.num_workers=0",
    "trainer.log_interval=1",
    "trainer.amp=fp32",
    "trainer.overlay_count=0",
    "++transfer_view.enabled=false",
]


@pytest.mark.parametrize(
    "extra",
    [[], ["experiment=demo_clip_rc", "teacher.embed_dim=16"], ["trainer.max_steps=1", "transfer_view.enabled=true"]],
)
def test_debug_tiny_is_the_old_tiny_override_list(extra, before_configs):
    """``debug=tiny`` (conftest.TINY) composes exactly what the spelled-out list did, and command-line overrides
    (another experiment, a step count, the transfer view back on) still win over it."""
    old = _resolved(before_configs, "train", [*TINY_BEFORE, *extra])
    new = _resolved(CONFIGS, "train", [*TINY, *extra])
    diff = [d for d in _diff(old, new) if not d.startswith((*REMOVED, *CLIP_ZSS_DEFAULTS, *REMEASURED))]
    assert not diff, diff
    assert new["trainer"]["max_steps"] == (1 if "trainer.max_steps=1" in extra else 2)


@pytest.mark.parametrize("experiment", [e for e in EXPERIMENTS if "world" not in e])
def test_experiments_are_deltas_over_their_base(experiment):
    """An experiment's ``trainer:`` and ``method:`` keys each change something: none restates the value of its base
    (its base experiment where it extends one, else configs/trainer/default.yaml; with the method it picks). The
    world experiments are left out (kept as they are for scripts/world_check.py)."""
    import yaml

    raw = yaml.safe_load((CONFIGS / "experiment" / f"{experiment}.yaml").read_text())
    bases = [d for d in raw.get("defaults", []) if isinstance(d, str)]
    methods = [
        m for d in raw.get("defaults", []) if isinstance(d, dict) for k, m in d.items() if k == "override /method"
    ]
    base = _resolved(CONFIGS, "train", ([f"experiment={bases[0]}"] if bases else []) + [f"method={m}" for m in methods])
    here = _resolved(CONFIGS, "train", [f"experiment={experiment}"])
    for group in ("trainer", "method"):  # method: against the method config the experiment picks
        repeated = [
            k
            for k, v in (raw.get(group) or {}).items()
            if not (isinstance(v, str) and v.startswith("${")) and here[group][k] == base[group][k]
        ]
        assert not repeated, f"configs/experiment/{experiment}.yaml restates its base's {group} values: {repeated}"
