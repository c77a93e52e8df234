"""Leak guards (issue 19): a CLIP teacher never receives the full label in Chimera-Seg (as in CLIP-ZSS), and no
training label that reaches a step holds an unseen class id."""
from __future__ import annotations

import pytest
import torch

from zss.data.classes import get_benchmark
from zss.data.dataset import UnseenLabelGuard, build_dataset, check_no_unseen
from zss.data.transforms import build_train_transform
from zss.engine.trainer import TrainConfig, Trainer, new_run_dir
from zss.methods.chimera_seg import ChimeraSeg, SGDSettings
from zss.methods.clip_zss import ClipZSS
from zss.models.student import Student
from zss.teachers.clip import build_tiny_clip
from zss.teachers.oracle import OracleTeacher

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
    return TrainConfig(max_steps=1, batch_size=2, lr=1e-4, warmup_steps=0, amp="fp32", eval_interval=0,
                       log_interval=0, ckpt_interval=0, num_workers=0, overlay_count=0)


def _voc_method():
    bench = get_benchmark("voc20")
    teacher = OracleTeacher(list(bench.classes), embed_dim=16, patch_size=8, noise=0.0)
    torch.manual_seed(0)
    student = Student("test_resnet", embed_dim=16, decoder="mlp", decoder_channels=16)
    return ClipZSS.from_flat(student, teacher, list(bench.classes), list(bench.unseen), bank_size=8, pl_scales=(2, 4),
                   pl_min_area=1)


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
