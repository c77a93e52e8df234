"""Label guards: full_label (every class, unseen included) reaches a training step only for a teacher that declares
it needs it (the OracleTeacher) -- a CLIP teacher never receives it, in CLIP-ZSS or Chimera-Seg; real presets refuse
the oracle without allow_oracle_teacher=true; and no training label that reaches a step holds an unseen class id."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import run_main
from zss.data.classes import get_benchmark
from zss.data.dataset import UnseenLabelGuard, build_dataset, check_no_unseen
from zss.data.transforms import build_train_transform
from zss.engine.trainer import TrainConfig, Trainer, needs_full_label, new_run_dir
from zss.methods.chimera_seg import ChimeraSeg, SGDSettings
from zss.methods.clip_zss import ClipZSS
from zss.models.student import Student
from zss.teachers.clip import FrozenCLIP, build_tiny_clip
from zss.teachers.oracle import OracleTeacher

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

NAMES = ["aeroplane", "bicycle", "bird", "boat", "sheep", "sofa"]
UNSEEN = [4, 5]
D = 32


class Spy:
    """Wraps a teacher and records the ``full_label`` each call received."""

    def __init__(self, teacher):
        self.teacher, self.calls = teacher, []

    def __getattr__(self, k):
        return getattr(self.teacher, k)

    def __call__(self, images, full_label=None):
        self.calls.append(full_label)
        return self.teacher(images, full_label=full_label)


def _batch(b=2):
    label = torch.full((b, 64, 64), 255, dtype=torch.long)
    label[:, 4:28, 4:36] = 0
    full = label.clone()
    full[:, 40:60, 40:60] = 4  # unseen ground truth: only in full_label
    return dict(image=torch.randn(b, 3, 64, 64), label=label, full_label=full, valid=torch.ones(b, 64, 64, dtype=bool))


def _student():
    torch.manual_seed(0)
    return Student("test_resnet", embed_dim=D, decoder="mlp", decoder_channels=16)


def _chimera(teacher):
    m = ChimeraSeg(_student(), teacher, NAMES, UNSEEN, sgd=SGDSettings(bank_size=8))
    spy = Spy(teacher)
    object.__setattr__(m, "teacher", spy)
    return m, spy


def test_chimera_never_hands_full_label_to_a_clip_teacher():
    clip = build_tiny_clip(embed_dim=D, width=64, layers=3, patch_size=8, seed=0)
    m, spy = _chimera(clip)
    out = m.training_step(_batch())
    assert torch.isfinite(out["loss"]) and spy.calls and all(c is None for c in spy.calls)


def test_chimera_hands_full_label_to_the_oracle():
    oracle = OracleTeacher(NAMES, embed_dim=D, patch_size=8, noise=0.0)
    m, spy = _chimera(build_tiny_clip(embed_dim=D, width=64, layers=3, patch_size=8, seed=0))
    object.__setattr__(spy, "teacher", oracle)  # the CSH was built from the CLIP; the CLS comes from the oracle
    batch = _batch()
    m.training_step(batch)
    assert spy.calls and spy.calls[0] is batch["full_label"]


def test_clip_zss_never_hands_full_label_to_a_clip_teacher():
    clip = build_tiny_clip(embed_dim=D, width=64, layers=3, patch_size=8, seed=0)
    m = ClipZSS.from_flat(_student(), clip, NAMES, UNSEEN, bank_size=8, pl_scales=(2, 4), pl_min_area=1)
    spy = Spy(clip)
    object.__setattr__(m, "teacher", spy)
    m.training_step(_batch())
    assert spy.calls and all(c is None for c in spy.calls)


def test_check_no_unseen_names_sample_and_fix():
    lab = torch.full((8, 8), 255)
    check_no_unseen(lab, [4, 5], "a")  # hidden: fine
    lab[0, 0] = 5
    with pytest.raises(ValueError, match=r"'img7'.*\[5\].*dataset.hide_unseen=true") as e:
        check_no_unseen(lab, [4, 5], "img7")
    assert "\n" not in str(e.value)
    check_no_unseen(lab, [], "x")  # no unseen class (voc21): no check


def _train_cfg():
    return TrainConfig(
        max_steps=1,
        batch_size=2,
        lr=1e-4,
        warmup_steps=0,
        amp="fp32",
        eval_interval=0,
        log_interval=0,
        ckpt_interval=0,
        num_workers=0,
        overlay_count=0,
    )


def _voc_method():
    bench = get_benchmark("voc20")
    teacher = OracleTeacher(list(bench.classes), embed_dim=16, patch_size=8, noise=0.0)
    torch.manual_seed(0)
    student = Student("test_resnet", embed_dim=16, decoder="mlp", decoder_channels=16)
    return ClipZSS.from_flat(
        student, teacher, list(bench.classes), list(bench.unseen), bank_size=8, pl_scales=(2, 4), pl_min_area=1
    )


def test_trainer_refuses_a_train_set_that_shows_unseen_classes(voc_root, tmp_path):
    tf = build_train_transform(crop_size=(64, 64), scale=(256, 64), ratio_range=(0.75, 1.5))
    shown = build_dataset("voc20", voc_root, split="train", hide_unseen=False, transform=tf)
    with pytest.raises(ValueError, match="dataset.hide_unseen=true"):
        Trainer(_voc_method(), shown, None, _train_cfg(), new_run_dir(tmp_path, "run"))


class _NoFlag(torch.utils.data.Dataset):
    """A custom dataset (no hide_unseen attribute) whose labels show the unseen class tvmonitor (19)."""

    def __init__(self, base):
        self.base = base

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        s = dict(self.base[i])
        s["label"] = s["full_label"].clone()
        s["label"][:4, :4] = 19
        return s


def test_trainer_guard_catches_unseen_ids_in_a_custom_label(voc_root, tmp_path):
    tf = build_train_transform(crop_size=(64, 64), scale=(256, 64), ratio_range=(0.75, 1.5))
    base = build_dataset("voc20", voc_root, split="train", hide_unseen=True, transform=tf)
    with pytest.raises(ValueError, match=r"unseen class id\(s\) \[19\]"):
        Trainer(_voc_method(), _NoFlag(base), None, _train_cfg(), new_run_dir(tmp_path, "run")).fit()
    assert len(UnseenLabelGuard(base, [15])) == len(base)


# ---------------------------------------------------------------------------------- full_label only for the oracle
D_VOC = 16  # the VOC-sample runs below use a 16-dim teacher


def _train_set(voc_root):
    tf = build_train_transform(crop_size=(64, 64), scale=(256, 64), ratio_range=(0.75, 1.5))
    return build_dataset("voc20", voc_root, split="train", hide_unseen=True, transform=tf)


def _clip_zss(teacher):
    bench = get_benchmark("voc20")
    torch.manual_seed(0)
    student = Student("test_resnet", embed_dim=D_VOC, decoder="mlp", decoder_channels=16)
    return ClipZSS.from_flat(
        student,
        teacher,
        list(bench.classes),
        list(bench.unseen),
        list(bench.templates),
        bank_size=8,
        pl_scales=(2, 4),
        pl_min_area=1,
    )


def _batches_seen_by_the_method(method, voc_root, tmp_path, steps=1):
    """Run the real trainer for ``steps`` optimizer steps and record the batches the method receives."""
    seen = []
    step = method.training_step

    def spy(batch):
        seen.append(dict(batch))
        return step(batch)

    method.training_step = spy
    cfg = TrainConfig(
        max_steps=steps,
        batch_size=2,
        lr=1e-4,
        warmup_steps=0,
        amp="fp32",
        eval_interval=0,
        log_interval=0,
        ckpt_interval=0,
        num_workers=0,
        overlay_count=0,
    )
    Trainer(method, _train_set(voc_root), None, cfg, new_run_dir(tmp_path, "run")).fit()
    assert seen
    return seen


def test_frozen_clip_training_batches_have_no_full_label(voc_root, tmp_path):
    method = _clip_zss(build_tiny_clip(embed_dim=D_VOC, patch_size=8))
    assert not needs_full_label(method)
    for batch in _batches_seen_by_the_method(method, voc_root, tmp_path):
        assert "full_label" not in batch
        assert {"image", "label", "valid"} <= set(batch)


def test_oracle_training_batches_keep_full_label(voc_root, tmp_path):
    bench = get_benchmark("voc20")
    method = _clip_zss(OracleTeacher(list(bench.classes), embed_dim=D_VOC, patch_size=8, noise=0.0))
    assert needs_full_label(method)
    for batch in _batches_seen_by_the_method(method, voc_root, tmp_path):
        full, label = batch["full_label"], batch["label"]
        assert full.shape == label.shape and full.dtype == torch.int64
        # the training label hides unseen classes; full_label is the all-class ground truth
        assert not torch.isin(label, torch.tensor(bench.unseen)).any()


def test_teacher_declarations():
    assert OracleTeacher.needs_full_label is True
    assert not getattr(FrozenCLIP, "needs_full_label", False)


def _compose(overrides):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


@pytest.mark.parametrize("experiment", ["voc20", "cocostuff171", "context59_zs3", "context60_cascade"])
def test_real_presets_refuse_the_oracle_without_the_flag(experiment):
    from zss.cli.common import check_teacher_allowed

    cfg = _compose([f"experiment={experiment}", "teacher=oracle"])
    assert cfg.allow_oracle_teacher is False
    with pytest.raises(ValueError, match="allow_oracle_teacher=true") as e:
        check_teacher_allowed(cfg)
    assert "\n" not in str(e.value) and "NOT zero-shot" in str(e.value)
    check_teacher_allowed(_compose([f"experiment={experiment}", "teacher=oracle", "allow_oracle_teacher=true"]))
    check_teacher_allowed(_compose([f"experiment={experiment}"]))  # the CLIP teacher needs no flag


@pytest.mark.parametrize("experiment", ["demo", "demo_baseline", "demo_transductive", "chimera_demo"])
def test_demo_experiments_allow_the_oracle(experiment):
    from zss.cli.common import check_teacher_allowed

    cfg = _compose([f"experiment={experiment}"])
    assert cfg.allow_oracle_teacher is True
    check_teacher_allowed(_compose([f"experiment={experiment}", "teacher=oracle"]))


def test_train_command_refuses_the_oracle_on_voc20(tmp_path, monkeypatch, capsys):
    from zss.cli.train import train_main

    code, _, err = run_main(
        train_main, ["experiment=voc20", "teacher=oracle", f"run_root={tmp_path}"], monkeypatch, capsys
    )
    assert code != 0
    assert "allow_oracle_teacher=true" in err
    assert not list(tmp_path.iterdir())  # refused before creating a run dir
