"""CLIP-RC's public self-training rule (method.transductive.gt_unseen_mask): it reads the unseen ground
truth, is off by default, refused without the transductive setting, and the trainer hands it full_label."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from zss.engine.trainer import needs_full_label
from zss.methods.clip_rc import ClipRC, ClipRCEncoderSettings, st_pseudo_labels_gt_mask
from zss.teachers.clip import build_tiny_clip

NAMES = ["aeroplane", "bicycle", "bird", "sheep", "sofa"]
UNSEEN = [3, 4]


def _method(**transductive):
    clip = build_tiny_clip(embed_dim=32, image_size=64, patch_size=16, width=32, layers=1, heads=2, seed=0)
    torch.manual_seed(0)
    text = F.normalize(torch.randn(len(NAMES), 32), dim=-1)
    return ClipRC(
        None,
        clip,
        NAMES,
        UNSEEN,
        text_embeds=text,
        encoder=ClipRCEncoderSettings(num_prompts=2),
        transductive=transductive or None,
    )


def test_public_rule_labels_exactly_the_unseen_ground_truth_pixels():
    logits = torch.zeros(1, 5, 2, 3)
    logits[0, 4] = 1.0  # sofa beats sheep everywhere ...
    logits[0, 3, 0, 0] = 2.0  # ... except at (0, 0)
    logits[0, 0] = 9.0  # a seen class is highest everywhere: ignored by the rule (unseen channels only)
    label = torch.tensor([[[0, 255, 255], [1, 255, 255]]])
    full = torch.tensor([[[3, 255, 4], [1, 2, 3]]])  # unseen GT at (0,0), (0,2), (1,2); (1,1) is seen bird
    out = st_pseudo_labels_gt_mask(logits, label, full, torch.tensor(UNSEEN))
    assert out.tolist() == [[[3, 255, 4], [1, 255, 4]]]  # no threshold, unseen argmax; background stays 255


def test_off_by_default_and_refused_in_the_inductive_setting():
    m = _method()
    assert m.transductive_gt_unseen_mask is False and not needs_full_label(m)
    with pytest.raises(ValueError, match="gt_unseen_mask=true reads the unseen ground truth"):
        _method(gt_unseen_mask=True)


def test_enabled_rule_gets_full_label_and_trains():
    m = _method(enabled=True, gt_unseen_mask=True)
    assert needs_full_label(m)  # the trainer keeps full_label for it
    label = torch.full((2, 64, 64), 255, dtype=torch.long)
    label[:, :20] = 0
    full = label.clone()
    full[:, 40:] = 4
    out = m.training_step(dict(image=torch.randn(2, 3, 64, 64), label=label, full_label=full))
    assert torch.isfinite(out["loss"]) and int(out["st_pixels"]) == 2 * 24 * 64
    with pytest.raises(ValueError, match="needs full_label"):
        m.training_step(dict(image=torch.randn(2, 3, 64, 64), label=label))


def test_other_methods_do_not_take_the_key():
    from zss.methods.baseline import SeenOnlyBaseline
    from zss.models.student import Student

    student = Student("test_resnet", embed_dim=32, decoder="mlp", decoder_channels=16)
    text = F.normalize(torch.randn(len(NAMES), 32), dim=-1)
    with pytest.raises(ValueError, match="unknown key"):
        SeenOnlyBaseline(student, None, NAMES, UNSEEN, text_embeds=text, transductive={"gt_unseen_mask": True})
