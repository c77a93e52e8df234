"""CLIP-ES as CLIP-ZSS's PLM region source (``method.pl_source=clip_es``): transductive only (docs/clip_es.md)."""

from __future__ import annotations

import pytest
import torch

from zss.methods.clip_zss import ClipZSS
from zss.models.student import Student
from zss.teachers.clip import build_tiny_clip

NAMES = ["aeroplane", "bicycle", "bird", "boat", "sheep", "sofa"]
UNSEEN = [4, 5]
D, IMG = 32, 64
ES = dict(template="a clean origami {}.", background_words=["ground", "sky", "wall"], synonyms={"bird": "bird avian"})


@pytest.fixture(scope="module")
def teacher():
    return build_tiny_clip(embed_dim=D)


def _method(teacher, transductive=True, **es) -> ClipZSS:
    torch.manual_seed(0)
    student = Student("test_resnet", embed_dim=D, decoder="mlp", decoder_channels=16)
    return ClipZSS.from_flat(
        student,
        teacher,
        NAMES,
        UNSEEN,
        bank_size=8,
        pl_source="clip_es",
        pl_clip_es={**ES, **es},
        transductive=dict(enabled=transductive, weight=0.0),
    )


def _batch(b: int = 2) -> dict:
    g = torch.Generator().manual_seed(0)
    label = torch.full((b, IMG, IMG), 255, dtype=torch.long)
    label[:, 4:28, 4:36] = 0
    label[0, 10:30, 40:60] = 2
    valid = torch.ones(b, IMG, IMG, dtype=torch.bool)
    valid[1, :, 56:] = False
    return dict(image=torch.randn(b, 3, IMG, IMG, generator=g), label=label, valid=valid)


def test_inductive_run_refuses_clip_es(teacher):
    with pytest.raises(ValueError, match="transductive setting only"):
        _method(teacher, transductive=False)


def test_clip_es_needs_its_text_data_and_known_keys(teacher):
    with pytest.raises(ValueError, match="background_words"):
        _method(teacher, background_words=[])
    with pytest.raises(ValueError, match="unknown keys"):
        _method(teacher, tag_treshold=0.1)
    with pytest.raises(ValueError, match="not classes"):
        _method(teacher, synonyms={"cat": "kitty"})


def test_tags_seen_from_labels_unseen_from_cls_threshold(teacher):
    m = _method(teacher)
    batch = _batch()
    seen_label = m.to_seen_ids(batch["label"])
    cls = teacher(batch["image"])["cls"]
    m.clip_es_cfg["tag_threshold"] = 0.0  # every unseen class passes
    tags = m.clip_es_tags(cls, seen_label)
    assert tags[:, UNSEEN].all()
    assert tags[0, [0, 2]].all() and not tags[0, [1, 3]].any()  # seen tags = seen classes in the label
    assert tags[1, 0] and not tags[1, [1, 2, 3]].any()
    m.clip_es_cfg["tag_threshold"] = 1.01  # no unseen class can pass
    assert not m.clip_es_tags(cls, seen_label)[:, UNSEEN].any()


def test_fused_labels_keep_seen_gt_and_put_regions_only_on_ignored_valid_pixels(teacher):
    m = _method(teacher, tag_threshold=0.0)
    batch = _batch()
    seen_label = m.to_seen_ids(batch["label"])
    cls = teacher(batch["image"])["cls"]
    fused = m.clip_es_label_map(batch["image"], cls, seen_label, batch["valid"])
    labelled = seen_label != 255
    assert torch.equal(fused[labelled], seen_label[labelled])
    assert (fused[~batch["valid"]] == 255).all()
    write = ~labelled & batch["valid"]
    assert (fused[write] >= m.num_seen).all() and (fused[write] != 255).all()
    for b in range(2):  # ids are compact per image: N_seen .. N_seen + n - 1, at most (tags + background) regions
        ids = fused[b][write[b]].unique()
        assert torch.equal(ids, torch.arange(m.num_seen, m.num_seen + len(ids)))
        assert len(ids) <= int(m.clip_es_tags(cls, seen_label)[b].sum()) + 1


def test_training_step_with_clip_es_regions(teacher):
    m = _method(teacher, tag_threshold=0.0)
    out = m.training_step(_batch())
    assert torch.isfinite(out["loss"]) and out["pl_regions"] > 0
    out["loss"].backward()
    assert any(p.grad is not None for p in m.synthesizer.parameters())
