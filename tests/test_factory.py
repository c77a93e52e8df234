"""``zss.create_method`` / ``zss.list_methods`` (zss.factory): every shipped method built in Python with tiny models,
with exactly the settings ``scripts/train.py method=<name>`` composes, and without Hydra."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir

import zss
from conftest import ENV, REPO
from zss.data.classes import get_benchmark
from zss.factory import method_settings
from zss.methods import ChimeraSeg, ClipRC, ClipZSS, SeenOnlyBaseline
from zss.models.student import Student
from zss.resources import config_dir
from zss.teachers.clip import build_tiny_clip

CLASSES = {
    "baseline": SeenOnlyBaseline,
    "clip_zss": ClipZSS,
    "clip_zss_paper": ClipZSS,
    "chimera_seg": ChimeraSeg,
    "chimera_seg_paper": ChimeraSeg,
    "clip_rc": ClipRC,
    "zegclip": ClipRC,
}
D = 32
VOC20 = get_benchmark("voc20")


@pytest.fixture(scope="module")
def tiny_clip():
    return build_tiny_clip(
        embed_dim=D, image_size=64, patch_size=16, width=32, layers=2, heads=2, seed=0, dense_mode="maskclip"
    )


@pytest.fixture(scope="module")
def text(tiny_clip):
    torch.manual_seed(0)  # random unit text embeds: the text tower is exercised once, in test_text_from_teacher
    return F.normalize(torch.randn(len(VOC20.classes), D), dim=-1)


def _student():
    torch.manual_seed(0)
    return Student("test_resnet", embed_dim=D, decoder="mlp", decoder_channels=16)


def _hydra_method(name: str, dataset: str) -> dict:
    """The method node Hydra composes for the benchmark's row experiment where one ships, else dataset + method."""
    from zss.factory import row_experiment

    row = row_experiment(name, dataset)
    overrides = [f"experiment={row}"] if row else [f"method={name}", f"dataset={dataset}"]
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    from omegaconf import OmegaConf

    node = OmegaConf.to_container(cfg.method, resolve=True)
    return node


def test_list_methods_names_the_shipped_configs():
    assert zss.list_methods() == sorted(p.stem for p in (REPO / "configs" / "method").glob("*.yaml"))
    assert set(zss.list_methods()) == set(CLASSES)


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_settings_equal_what_hydra_composes(name):
    for dataset, bench in (("voc20", "voc20"), ("cocostuff171", "cocostuff171")):
        node = _hydra_method(name, dataset)
        target, settings = method_settings(name, bench)
        assert target == node["_target_"]
        assert settings == {k: v for k, v in node.items() if k not in ("_target_", "name")}, (name, dataset)
    if name == "clip_rc":  # COCO-Stuff's values come from its row experiment (experiment=cocostuff171_clip_rc)
        assert method_settings(name, "cocostuff171")[1]["num_prompts"] == 100
        assert method_settings(name, "voc20")[1]["num_prompts"] == 10
        assert method_settings(name, "context59", split="zs3")[1]["num_prompts"] == 10


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_every_method_builds_with_tiny_models_and_trains_one_step(name, tiny_clip, text):
    m = zss.create_method(
        name,
        benchmark="voc20",
        student=_student(),
        teacher=tiny_clip,
        text_embeds=text,
        **({"num_prompts": 2} if CLASSES[name] is ClipRC else {}),
    )
    assert type(m) is CLASSES[name] and m.classnames == list(VOC20.classes)
    assert m.unseen.tolist() == sorted(VOC20.unseen)
    _, settings = method_settings(name)
    for key in ("nel_weight", "pseudo_negatives", "synth_query", "sam_loss", "cls_input", "recovery_weight"):
        if key in settings:
            got = m.recovery is not None if key == "recovery_weight" else getattr(m, key, None)
            if got is None and key == "synth_query":
                got = m.synthesizer.query
            if got is None and key == "cls_input":
                got = m.student.encoder.cls_input
            want = settings[key] > 0 if key == "recovery_weight" else settings[key]
            assert got == want, (name, key)
    g = torch.Generator().manual_seed(0)
    label = torch.randint(0, 15, (2, 64, 64), generator=g)  # seen ids only
    label[:, :8] = 255
    batch = dict(
        image=torch.randn(2, 3, 64, 64, generator=g),
        label=label,
        full_label=label.clone(),
        valid=torch.ones(2, 64, 64, dtype=torch.bool),
    )
    out = m.train().training_step(batch)
    assert torch.isfinite(out["loss"]) and out["loss"].requires_grad


def test_overrides_win_and_merge_into_mapping_settings(tiny_clip, text):
    m = zss.create_method(
        "clip_zss",
        student=_student(),
        teacher=tiny_clip,
        text_embeds=text,
        nel_weight=1.0,
        pseudo_negatives="image",
        transductive=dict(enabled=True),
    )
    assert m.nel_weight == 1.0 and m.pseudo_negatives == "image" and m.pseudo_bank is None
    assert m.transductive_enabled and m.transductive_threshold == 0.7  # the block's other keys kept
    paper = zss.create_method("clip_zss_paper", student=_student(), teacher=tiny_clip, text_embeds=text)
    assert paper.pseudo_negatives == "image" and paper.pl_kwargs["mode"] == "components"


def test_text_from_teacher_and_benchmark_split(tiny_clip):
    m = zss.create_method("baseline", benchmark="context59", split="zs3", student=_student(), teacher=tiny_clip)
    bench = get_benchmark("context59", "zs3")
    assert m.classnames == list(bench.classes) and m.unseen.tolist() == sorted(bench.unseen)
    torch.testing.assert_close(
        m.text_embeds, F.normalize(tiny_clip.text(list(bench.classes), list(bench.templates)), dim=-1)
    )


def test_bad_calls_name_the_fix(tiny_clip, text):
    with pytest.raises(ValueError, match="unknown method 'clip-zss'.*clip_zss"):
        zss.create_method("clip-zss", student=_student(), teacher=tiny_clip)
    with pytest.raises(ValueError, match="pass student="):
        zss.create_method("clip_zss", teacher=tiny_clip, text_embeds=text)
    with pytest.raises(ValueError, match="pass teacher="):
        zss.create_method("baseline", student=_student())
    with pytest.raises(TypeError, match="nel_wieght"):
        zss.create_method("clip_zss", student=_student(), teacher=tiny_clip, text_embeds=text, nel_wieght=1.0)
    with pytest.raises(KeyError, match="voc_20"):
        zss.create_method("baseline", benchmark="voc_20", student=_student(), teacher=tiny_clip, text_embeds=text)


def test_create_method_imports_no_hydra():
    code = (
        "import sys, zss; from zss.models import Student; from zss.teachers.oracle import OracleTeacher; "
        "from zss.data.classes import get_benchmark; "
        "t = OracleTeacher(list(get_benchmark('voc20').classes), embed_dim=16); "
        "m = zss.create_method('clip_zss', student=Student('test_resnet', embed_dim=16, decoder='mlp', "
        "decoder_channels=8), teacher=t); "
        "print(type(m).__name__, sorted(k for k in sys.modules if k.split('.')[0] == 'hydra'))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "ClipZSS []", out.stdout
