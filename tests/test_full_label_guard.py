"""full_label (every class, unseen included) reaches a training step only for a teacher that declares it
needs it (the OracleTeacher), and real presets refuse the oracle without allow_oracle_teacher=true.
Issue 8, item 7."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import run_script
from zss.data.classes import get_benchmark
from zss.data.dataset import build_dataset
from zss.data.transforms import build_train_transform
from zss.engine.trainer import TrainConfig, Trainer, needs_full_label, new_run_dir
from zss.methods.clip_zss import ClipZSS
from zss.models.student import Student
from zss.teachers.clip import FrozenCLIP, build_tiny_clip
from zss.teachers.oracle import OracleTeacher

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
D = 16


def _train_set(voc_root):
    tf = build_train_transform(crop_size=(64, 64), scale=(256, 64), ratio_range=(0.75, 1.5))
    return build_dataset("voc20", voc_root, split="train", hide_unseen=True, transform=tf)


def _clip_zss(teacher):
    bench = get_benchmark("voc20")
    torch.manual_seed(0)
    student = Student("test_resnet", embed_dim=D, decoder="mlp", decoder_channels=16)
    return ClipZSS.from_flat(student, teacher, list(bench.classes), list(bench.unseen), list(bench.templates),
                   bank_size=8, pl_scales=(2, 4), pl_min_area=1)


def _batches_seen_by_the_method(method, voc_root, tmp_path, steps=1):
    """Run the real trainer for ``steps`` optimizer steps and record the batches the method receives."""
    seen = []
    step = method.training_step

    def spy(batch):
        seen.append(dict(batch))
        return step(batch)

    method.training_step = spy
    cfg = TrainConfig(max_steps=steps, batch_size=2, lr=1e-4, warmup_steps=0, amp="fp32", eval_interval=0,
                      log_interval=0, ckpt_interval=0, num_workers=0, overlay_count=0)
    Trainer(method, _train_set(voc_root), None, cfg, new_run_dir(tmp_path, "run")).fit()
    assert seen
    return seen


def test_frozen_clip_training_batches_have_no_full_label(voc_root, tmp_path):
    method = _clip_zss(build_tiny_clip(embed_dim=D, patch_size=8))
    assert not needs_full_label(method)
    for batch in _batches_seen_by_the_method(method, voc_root, tmp_path):
        assert "full_label" not in batch
        assert {"image", "label", "valid"} <= set(batch)


def test_oracle_training_batches_keep_full_label(voc_root, tmp_path):
    bench = get_benchmark("voc20")
    method = _clip_zss(OracleTeacher(list(bench.classes), embed_dim=D, patch_size=8, noise=0.0))
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


def test_train_script_refuses_the_oracle_on_voc20(tmp_path):
    out = run_script(["scripts/train.py", "experiment=voc20", "teacher=oracle", f"run_root={tmp_path}"], check=False)
    assert out.returncode != 0
    assert "allow_oracle_teacher=true" in out.stderr
    assert not list(tmp_path.iterdir())  # refused before creating a run dir
