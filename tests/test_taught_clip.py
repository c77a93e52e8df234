"""Label-taught CLIP (zss/tools/taught_clip.py): teach a micro open_clip CLIP on a few bundled VOC images, save it
as an open_clip checkpoint, and load it back through FrozenCLIP exactly as a user loads local weights."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from conftest import train_in_process
from zss.data.classes import get_benchmark
from zss.teachers import OracleTeacher, TeacherWeightsNotFoundError
from zss.tools.taught_clip import (
    DEFAULT_ROOT,
    INFO_FILE,
    TAUGHT_HINT,
    TAUGHT_WARNING,
    WEIGHTS_FILE,
    TaughtClipSettings,
    ensure_taught_clip,
    evaluate_dense_quality,
    load_taught_clip,
    patch_targets,
    quality_dataset,
    save_taught_clip,
    taught_clip_cfg,
    taught_clip_dir,
    taught_forward,
    teach_clip,
)

REPO = Path(__file__).resolve().parents[1]
YAML = REPO / "configs" / "teacher" / "taught_clip.yaml"
VOC = get_benchmark("voc20")
# micro recipe: 64 px crops, 2 blocks of width 32, 3 images, 3 steps (the text tower keeps the default shape)
MICRO = dict(
    width=32,
    layers=2,
    heads=2,
    image_size=64,
    patch_size=16,
    embed_dim=16,
    scale=(256, 64),
    eval_scale=(256, 64),
    steps=3,
    warmup_steps=1,
    batch_size=2,
    max_images=3,
)


@pytest.fixture(autouse=True)
def one_thread():
    """Teaching is many tiny ops: one thread is fastest on the shared 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def micro(voc_root, **kw) -> TaughtClipSettings:
    return TaughtClipSettings(**{**MICRO, "data_root": str(voc_root), **kw})


@pytest.fixture(scope="module")
def taught(voc_root, tmp_path_factory):
    """(settings, in-memory taught model, saved dir)."""
    s = micro(voc_root)
    clip, hist = teach_clip(s, log=None)
    assert len(hist) == s.steps and all(torch.isfinite(torch.tensor(r["loss"])) for r in hist)
    d = save_taught_clip(clip, s, tmp_path_factory.mktemp("taught") / "m")
    return s, clip, d


def _yaml_teacher(**over):
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = OmegaConf.merge(OmegaConf.load(YAML), over)
    return instantiate(cfg)


@pytest.mark.parametrize("mode", ["maskclip", "tokens"])
def test_saved_checkpoint_loads_through_frozenclip_with_identical_outputs(taught, mode):
    s, clip, d = taught
    x = torch.randn(2, 3, s.image_size, s.image_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = taught_forward(clip, x, (mode,))
    ref_text = clip.text(VOC.classes, VOC.templates)
    for fc in (
        load_taught_clip(d, dense_mode=mode),
        _yaml_teacher(pretrained=str(d / WEIGHTS_FILE), model_cfg=taught_clip_cfg(s), dense_mode=mode),
    ):
        out = fc(x)
        assert torch.allclose(out["cls"], ref["cls"], atol=1e-5)
        dense = out["dense"].flatten(2).transpose(1, 2)  # [B, N, D]
        assert torch.allclose(dense, ref["dense"][mode], atol=1e-5)
        assert torch.allclose(fc.text(VOC.classes, VOC.templates), ref_text, atol=1e-6)
        assert fc.identity["warning"] == TAUGHT_WARNING and fc.identity["file"].endswith(WEIGHTS_FILE)
        assert fc.clip_mean == fc.input_mean  # taught with CLIP normalisation, read with it
    # open_clip's own hub layout works as well
    import open_clip

    oc = open_clip.create_model(f"local-dir:{d}")
    assert torch.allclose(torch.nn.functional.normalize(oc.encode_image(x), dim=-1), ref["cls"], atol=1e-5)


def test_teaching_is_deterministic_by_seed_and_leaves_the_global_rng(voc_root):
    s = micro(voc_root, steps=2)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a, _ = teach_clip(s, log=None)
    assert torch.equal(torch.get_rng_state(), before)
    b, _ = teach_clip(s, log=None)
    c, _ = teach_clip(micro(voc_root, steps=2, seed=1), log=None)
    sa, sb, sc = a.model.state_dict(), b.model.state_dict(), c.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_cache_is_reused_and_other_settings_get_another_dir(voc_root, tmp_path, monkeypatch):
    import zss.tools.taught_clip as taught_mod

    s = micro(voc_root, steps=2)
    d, built = ensure_taught_clip(s, root=tmp_path, log=None)
    assert built and d == taught_clip_dir(tmp_path, s) and (d / WEIGHTS_FILE).is_file()
    mtime = (d / WEIGHTS_FILE).stat().st_mtime_ns

    def no_teaching(*a, **k):
        raise AssertionError("teach_clip must not run for a cached build")

    monkeypatch.setattr(taught_mod, "teach_clip", no_teaching)
    d2, built2 = ensure_taught_clip(s, root=tmp_path, log=None)
    assert (d2, built2) == (d, False) and (d / WEIGHTS_FILE).stat().st_mtime_ns == mtime
    for other in (
        micro(voc_root, steps=2, seed=1),
        micro(voc_root, steps=2, lr=1e-4),
        micro(voc_root, steps=2, dense_modes=("maskclip",)),
    ):
        assert taught_clip_dir(tmp_path, other) != d
    # a build recording other settings (e.g. an interrupted / edited dir) is not reused
    rec = json.loads((d / INFO_FILE).read_text())
    rec["settings"]["steps"] = 99
    (d / INFO_FILE).write_text(json.dumps(rec))
    with pytest.raises(AssertionError, match="must not run"):
        ensure_taught_clip(s, root=tmp_path, log=None)


def test_patch_targets_majority_and_labelled_rule():
    lab = torch.full((1, 4, 8), 255)
    lab[0, :, :4] = 2  # patch 0: all class 2
    lab[0, :3, 4:] = 5  # patch 1: 12/16 class 5 (75% labelled)
    target, valid, area = patch_targets(lab, num_classes=6, patch_size=4, min_labelled=0.5)
    assert target.tolist() == [[2, 5]] and valid.tolist() == [[True, True]]
    assert torch.allclose(area[0, [2, 5]], torch.tensor([16 / 28, 12 / 28]))
    _, valid, _ = patch_targets(lab, num_classes=6, patch_size=4, min_labelled=0.8)
    assert valid.tolist() == [[True, False]]
    with pytest.raises(ValueError, match="outside"):
        patch_targets(torch.full((1, 4, 4), 7), num_classes=6, patch_size=4)


def test_quality_of_a_label_reading_teacher_is_near_perfect_and_of_wrong_names_is_not(voc_root):
    ds = quality_dataset(TaughtClipSettings(data_root=str(voc_root), max_images=6))
    oracle = OracleTeacher(VOC.classes, embed_dim=512, patch_size=16, noise=0.0, background=False)
    q = evaluate_dense_quality(oracle, ds, VOC.classes, VOC.templates, VOC.unseen)
    assert q["num_images"] == 6 and len(q["per_class_IoU"]) == 20
    assert q["patch_acc"] > 98.0 and q["cls_top1"] == 100.0 and q["cls_mAP"] > 95.0
    assert q["mIoU"] > 60.0 and q["pAcc"] > 90.0 and q["text_max_cos"] < 0.5
    # text embeds of the wrong names: the same dense tokens no longer classify
    wrong = list(VOC.classes[1:]) + [VOC.classes[0]]
    q2 = evaluate_dense_quality(_Renamed(oracle, wrong), ds, VOC.classes, VOC.templates, VOC.unseen)
    assert q2["patch_acc"] < 20.0 and q2["mIoU"] < 20.0


class _Renamed(torch.nn.Module):
    """The oracle, but ``text`` answers for a permuted name list."""

    def __init__(self, oracle, names):
        super().__init__()
        self.oracle, self.names, self.patch_size = oracle, names, oracle.patch_size

    def forward(self, images, full_label=None):
        return self.oracle(images, full_label)

    def text(self, classnames, templates):
        return self.oracle.text(self.names, templates)


def test_yaml_points_at_the_default_build_and_missing_file_says_how_to_build(tmp_path):
    from omegaconf import OmegaConf

    cfg = OmegaConf.to_container(OmegaConf.load(YAML))
    default = TaughtClipSettings()
    assert cfg["pretrained"] == str(taught_clip_dir(DEFAULT_ROOT, default) / WEIGHTS_FILE)
    assert cfg["model_cfg"] == taught_clip_cfg(default)
    assert cfg["warning"] == TAUGHT_WARNING and cfg["missing_weights_hint"] == TAUGHT_HINT
    with pytest.raises(Exception, match="python scripts/teach_clip.py") as err:  # Hydra wraps the error
        _yaml_teacher(pretrained=str(tmp_path / "nothing" / WEIGHTS_FILE))
    assert isinstance(err.value, TeacherWeightsNotFoundError) or isinstance(
        err.value.__cause__, TeacherWeightsNotFoundError
    )


def _script_main():
    import importlib.util

    spec = importlib.util.spec_from_file_location("teach_clip_script", REPO / "scripts" / "teach_clip.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main


def test_teach_clip_script_builds_then_reuses(voc_root, tmp_path, capsys):
    main = _script_main()
    flags = [
        "--root",
        str(tmp_path),
        "--data-root",
        str(voc_root),
        "--width",
        "32",
        "--layers",
        "2",
        "--heads",
        "2",
        "--image-size",
        "64",
        "--embed-dim",
        "16",
        "--scale",
        "256",
        "64",
        "--eval-scale",
        "256",
        "64",
        "--steps",
        "2",
        "--warmup-steps",
        "1",
        "--batch-size",
        "2",
        "--max-images",
        "3",
        "--crop-batches",
        "2",
    ]
    assert main(flags) == 0
    out = capsys.readouterr().out
    assert "teach_clip: built" in out and "not a zero-shot result" in out
    d = taught_clip_dir(tmp_path, micro(voc_root, steps=2, warmup_steps=1))
    assert str(d / WEIGHTS_FILE) in out
    q = json.loads((d / INFO_FILE).read_text())["quality"]
    assert set(q) == {"maskclip", "tokens"} and 0.0 <= q["maskclip"]["crop_patch_acc"] <= 100.0
    assert main(flags) == 0
    assert "teach_clip: reused" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--root", str(tmp_path), "--dense-modes", "cls"])
    assert "dense_modes" in capsys.readouterr().err


@pytest.mark.parametrize("method", ["clip_zss", "chimera_seg"])
def test_train_runs_with_the_taught_teacher(taught, voc_root, tmp_path, method, capsys):
    s, _, d = taught
    args = [
        "experiment=demo",
        "teacher=taught_clip",
        f"method={method}",
        f"teacher.pretrained={d / WEIGHTS_FILE}",
        "teacher.model_cfg.embed_dim=16",
        "teacher.model_cfg.vision_cfg={image_size:64,layers:2,width:32,head_width:16,patch_size:16}",
        "model.backbone=test_resnet",
        "model.decoder_channels=16",
        "dataset.crop_size=[64,64]",
        "dataset.scale=[256,64]",
        "dataset.test_scale=[256,64]",
        "trainer.max_steps=1",
        "trainer.batch_size=2",
        "trainer.eval_interval=0",
        "trainer.ckpt_interval=0",
        "trainer.num_workers=0",
        "trainer.amp=fp32",
        "trainer.overlay_count=0",
        f"run_root={tmp_path}",
        f"dataset.root={voc_root}",
        "trainer.eval_crop=[64,64]",
        "trainer.eval_stride=[48,48]",
    ]
    train_in_process(args)  # the train command, in-process
    assert "NOT a zero-shot result" in capsys.readouterr().out
    assert os.path.isfile(next(tmp_path.glob("*/*/final_results.json")))
