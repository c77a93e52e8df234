"""Each network gets the normalisation it was trained with: images are normalised once with
dataset.mean/std; the student (pretrained timm backbone: its pretrained_cfg stats) and the teacher (CLIP's
stats) convert them inside their own module with the affine map of zss/data/normalize.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch

from zss.data.normalize import CLIP_MEAN, CLIP_STD, Renormalize, renormalize_affine
from zss.models.student import Student
from zss.teachers.clip import build_tiny_clip

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
ATOL = 1e-5


def _norm(raw, mean, std):
    return (raw - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def _raw(b=2, h=64, w=64, seed=0):
    return torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(seed))  # [0, 1] RGB


@pytest.fixture(scope="module")
def resnet_file(tmp_path_factory):
    """A local weights file of timm's test_resnet (its pretrained_cfg says mean = std = 0.5)."""
    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("w") / "test_resnet.pth"
    torch.save(timm.create_model("test_resnet").state_dict(), path)
    return path


def test_affine_map_is_exact():
    raw = _raw()
    scale, shift = renormalize_affine(CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD)
    assert scale.shape == shift.shape == (1, 3, 1, 1)
    torch.testing.assert_close(
        _norm(raw, CLIP_MEAN, CLIP_STD) * scale + shift, _norm(raw, IMAGENET_MEAN, IMAGENET_STD), atol=ATOL, rtol=0
    )
    same = Renormalize(CLIP_MEAN, CLIP_STD, CLIP_MEAN, CLIP_STD)
    x = _norm(raw, CLIP_MEAN, CLIP_STD)
    assert same.identity and same(x) is x  # no op, bit-exact
    with pytest.raises(ValueError, match="std"):
        renormalize_affine(CLIP_MEAN, (0.2, 0.0, 0.2), CLIP_MEAN, CLIP_STD)
    with pytest.raises(ValueError, match="3"):
        Renormalize((0.5, 0.5), CLIP_STD, CLIP_MEAN, CLIP_STD)


def test_pretrained_student_sees_its_pretrained_cfg_stats(resnet_file):
    student = Student(
        "test_resnet",
        embed_dim=8,
        decoder="mlp",
        decoder_channels=16,
        pretrained=str(resnet_file),
        input_mean=CLIP_MEAN,
        input_std=CLIP_STD,
    )
    assert student.normalization["source"] == "timm pretrained_cfg"
    assert student.backbone_mean == (0.5, 0.5, 0.5) and student.backbone_std == (0.5, 0.5, 0.5)
    # the same network fed images already in its own normalisation (no conversion)
    own = Student(
        "test_resnet",
        embed_dim=8,
        decoder="mlp",
        decoder_channels=16,
        pretrained=str(resnet_file),
        input_mean=(0.5, 0.5, 0.5),
        input_std=(0.5, 0.5, 0.5),
    )
    own.load_state_dict(student.state_dict())
    assert own.renormalize.identity
    student.eval(), own.eval()
    raw = _raw()
    with torch.no_grad():
        a = student(_norm(raw, CLIP_MEAN, CLIP_STD))
        b = own(_norm(raw, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)))
        c = own(_norm(raw, CLIP_MEAN, CLIP_STD))  # what feeding the dataset normalisation unconverted gives
    torch.testing.assert_close(a, b, atol=ATOL, rtol=0)
    assert (a - c).abs().max() > 1e-3


def test_random_init_student_keeps_the_input_normalisation():
    torch.manual_seed(0)
    s = Student(
        "test_resnet", embed_dim=8, decoder="mlp", decoder_channels=16, input_mean=IMAGENET_MEAN, input_std=IMAGENET_STD
    )
    assert s.normalization["source"] == "input (random init)"
    assert s.backbone_mean == IMAGENET_MEAN and s.renormalize.identity
    x = _norm(_raw(), IMAGENET_MEAN, IMAGENET_STD)
    s.eval()
    with torch.no_grad():
        assert all(torch.equal(f, g) for f, g in zip(s.features(x), s.backbone(x)))


def test_explicit_backbone_stats_and_errors():
    s = Student(
        "test_resnet",
        embed_dim=8,
        decoder="mlp",
        decoder_channels=16,
        backbone_mean=IMAGENET_MEAN,
        backbone_std=IMAGENET_STD,
    )
    assert s.normalization["source"] == "model.backbone_mean/std"
    assert s.input_mean == CLIP_MEAN and not s.renormalize.identity
    with pytest.raises(ValueError, match="backbone_std"):
        Student("test_resnet", embed_dim=8, decoder="mlp", decoder_channels=16, backbone_mean=IMAGENET_MEAN)
    with pytest.raises(ValueError, match="dataset.std"):
        Student("test_resnet", embed_dim=8, decoder="mlp", decoder_channels=16, input_std=(0.2, 0.2, -1.0))


def test_teacher_given_input_stats_reproduces_clip_normalised_output():
    raw = _raw(h=32, w=32)
    ref = build_tiny_clip()(_norm(raw, CLIP_MEAN, CLIP_STD))
    t = build_tiny_clip(input_mean=IMAGENET_MEAN, input_std=IMAGENET_STD)
    out = t(_norm(raw, IMAGENET_MEAN, IMAGENET_STD))
    torch.testing.assert_close(out["cls"], ref["cls"], atol=ATOL, rtol=0)
    torch.testing.assert_close(out["dense"], ref["dense"], atol=ATOL, rtol=0)


def _compose(overrides):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def test_cli_gives_every_network_the_dataset_normalisation():
    from zss.cli.common import build_benchmark, build_student, build_teacher

    stats = [f"dataset.mean=[{','.join(map(str, IMAGENET_MEAN))}]", f"dataset.std=[{','.join(map(str, IMAGENET_STD))}]"]
    cfg = _compose(
        [
            "experiment=chimera_demo",
            "teacher.image_size=32",
            "teacher.patch_size=8",
            "model.backbone=test_resnet",
            *stats,
        ]
    )
    bench = build_benchmark(cfg.dataset)
    teacher = build_teacher(cfg, bench)
    assert teacher.input_mean == IMAGENET_MEAN and teacher.input_std == IMAGENET_STD
    raw = _raw(h=32, w=32)
    ref = build_tiny_clip(embed_dim=64, image_size=32, patch_size=8, seed=0)(_norm(raw, CLIP_MEAN, CLIP_STD))
    torch.testing.assert_close(
        teacher(_norm(raw, IMAGENET_MEAN, IMAGENET_STD))["dense"], ref["dense"], atol=ATOL, rtol=0
    )
    student = build_student(cfg.model, 64, cfg.dataset.mean, cfg.dataset.std)
    assert student.input_mean == IMAGENET_MEAN and student.input_std == IMAGENET_STD
    # an explicit teacher.input_mean that contradicts dataset.mean is an error, not a silent mismatch
    bad = _compose(["experiment=chimera_demo", "+teacher.input_mean=[0.5,0.5,0.5]", *stats])
    with pytest.raises(ValueError, match="teacher.input_mean"):
        build_teacher(bad, bench)
    oracle = build_teacher(_compose(["experiment=demo", *stats]), bench)  # labels only: no normalisation
    assert not hasattr(oracle, "input_mean")


def test_training_run_records_the_normalisations(tiny_ckpt):
    from zss.cli.common import load_for_inference

    ckpt = torch.load(tiny_ckpt, map_location="cpu", weights_only=True)
    norm = ckpt["config"]["normalization"]
    assert norm["images"] == {"mean": list(CLIP_MEAN), "std": list(CLIP_STD)}
    assert norm["student"]["source"] == "input (random init)"
    assert ckpt["config"]["model"]["backbone_mean"] == norm["student"]["backbone_mean"]
    assert "labels only" in norm["teacher"]["source"]  # experiment=demo: the oracle
    method, _ = load_for_inference(tiny_ckpt)
    assert list(method.student.backbone_mean) == norm["student"]["backbone_mean"]


def test_clip_statistics_are_open_clips_defined_once():
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    import zss.data.normalize as norm
    import zss.data.transforms as transforms
    import zss.engine.visualize as visualize
    import zss.teachers.clip as clip

    assert norm.CLIP_MEAN == tuple(OPENAI_DATASET_MEAN) and norm.CLIP_STD == tuple(OPENAI_DATASET_STD)
    for mod in (transforms, visualize, clip):  # their defaults use the one definition, not copies
        assert mod.CLIP_MEAN is norm.CLIP_MEAN and mod.CLIP_STD is norm.CLIP_STD, mod.__name__
    # exported from one module (and its package), not re-exported by every module that uses it
    exporters = sorted(m.__name__ for m in _zss_modules() if "CLIP_MEAN" in getattr(m, "__all__", ()))
    assert exporters == ["zss.data", "zss.data.normalize"], exporters


def _zss_modules():
    import importlib
    import pkgutil

    import zss

    names = ["zss"] + [m.name for m in pkgutil.walk_packages(zss.__path__, "zss.")]
    return [importlib.import_module(n) for n in names]
