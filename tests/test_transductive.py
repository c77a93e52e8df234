"""Tests for the transductive setting: Method.configure_transductive / self_training_loss (zss/methods/base.py),
its use in the baseline, CLIP-ZSS and Chimera-Seg training steps, the trainer's set_step hook and the configs.

CPU, offline: timm ``test_resnet`` students, the OracleTeacher, a tiny random CLIP, the bundled VOC sample.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from zss.methods.baseline import SeenOnlyBaseline
from zss.methods.chimera_seg import ChimeraSeg
from zss.methods.clip_zss import ClipZSS
from zss.models.student import Student
from zss.teachers.clip import build_tiny_clip
from zss.teachers.oracle import OracleTeacher

NAMES = ["aeroplane", "bicycle", "bird", "boat", "sheep", "sofa"]
UNSEEN = [4, 5]
D = 32
IMG = 64
CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _student(seed: int = 0, dim: int = D) -> Student:
    torch.manual_seed(seed)
    return Student("test_resnet", embed_dim=dim, decoder="mlp", decoder_channels=16)


def _batch(b: int = 2, seed: int = 0) -> dict:
    """Seen GT on some pixels, unseen pixels hidden as 255, padding on the right of image 1."""
    g = torch.Generator().manual_seed(seed)
    full = torch.full((b, IMG, IMG), 255, dtype=torch.long)
    full[:, 4:28, 4:36] = 0
    full[:, 36:60, 8:40] = 4
    full[0, 10:30, 40:60] = 2
    full[1, 30:50, 44:62] = 5
    label = full.clone()
    label[(label == 4) | (label == 5)] = 255
    valid = torch.ones(b, IMG, IMG, dtype=torch.bool)
    valid[1, :, 56:] = False
    label[~valid] = 255
    full[~valid] = 255
    return dict(
        image=torch.randn(b, 3, IMG, IMG, generator=g),
        label=label,
        full_label=full,
        valid=valid,
        name=[f"img{i}" for i in range(b)],
    )


# ------------------------------------------------------------------ a constructed case: exact pixel selection
def _onehot_method(**trans) -> SeenOnlyBaseline:
    """Baseline whose text embeds are the first 6 basis vectors of R^8 (class c <-> e_c)."""
    text = torch.eye(8)[:6]
    return SeenOnlyBaseline(_student(dim=8), None, NAMES, UNSEEN, text_embeds=text, transductive=trans or None)


def _constructed():
    """embeds Tensor[1, 8, 4, 4] and label/valid Tensor[1, 4, 4] with one pixel per case.

    (0,0) seen GT, confident unseen prediction -> never used (labelled)
    (0,1) unlabelled, valid, confident 'sheep' (4)       -> used, target 4 (the most confident)
    (0,2) unlabelled, valid, confident 'sofa' (5)        -> used, target 5 (slightly less confident)
    (0,3) unlabelled, PADDING, confident 'sofa'          -> never used
    (1,0) unlabelled, valid, confident SEEN 'bicycle'    -> never used (seen-class prediction)
    (1,1) unlabelled, valid, sheep/sofa tie (p ~ 0.5)    -> below threshold, not used
    rest: seen GT 'aeroplane' with matching embeds.
    """
    e = torch.eye(8)
    emb = e[0].view(1, 8, 1, 1).repeat(1, 1, 4, 4).clone()
    label = torch.zeros(1, 4, 4, dtype=torch.long)
    valid = torch.ones(1, 4, 4, dtype=torch.bool)
    emb[0, :, 0, 0] = e[4]
    emb[0, :, 0, 1], label[0, 0, 1] = e[4], 255
    emb[0, :, 0, 2], label[0, 0, 2] = F.normalize(e[5] + 0.1 * e[0], dim=0), 255
    emb[0, :, 0, 3], label[0, 0, 3], valid[0, 0, 3] = e[5], 255, False
    emb[0, :, 1, 0], label[0, 1, 0] = e[1], 255
    emb[0, :, 1, 1], label[0, 1, 1] = F.normalize(e[4] + e[5], dim=0), 255
    return emb, label, valid


def test_targets_select_exactly_the_confident_unseen_unlabelled_valid_pixels():
    m = _onehot_method(enabled=True, threshold=0.7)
    emb, label, valid = _constructed()
    logits = m.student.logits(emb, m.text_embeds)  # [1, 6, 4, 4]
    target = m.self_training_targets(logits, label, valid)
    expected = torch.full_like(label, 255)
    expected[0, 0, 1], expected[0, 0, 2] = 4, 5
    assert torch.equal(target, expected)
    # without a valid mask the padding pixel would be used: the mask is what excludes it
    assert int(m.self_training_targets(logits, label, None)[0, 0, 3]) == 5
    # the tie pixel passes a lower threshold (p ~ 0.5), so the threshold is what excludes it
    m.configure_transductive(enabled=True, threshold=0.4)
    assert int(m.self_training_targets(logits, label, valid)[0, 1, 1]) in UNSEEN


def test_topk_fraction_keeps_only_the_most_confident():
    m = _onehot_method(enabled=True, threshold=0.7, topk_fraction=0.5)
    emb, label, valid = _constructed()
    target = m.self_training_targets(m.student.logits(emb, m.text_embeds), label, valid)
    kept = (target != 255).nonzero().tolist()
    assert kept == [[0, 0, 1]] and int(target[0, 0, 1]) == 4


def test_targets_follow_the_rule_on_hand_written_probabilities():
    """Logits = log(probabilities), so each pixel's softmax is the row below; the rule by hand (threshold 0.7)."""
    rows = [  # (top class, its probability, label): the other 5 classes share the rest equally
        (4, 0.90, 255),  # unlabelled, confident sheep      -> 4
        (5, 0.80, 255),  # unlabelled, confident sofa       -> 5
        (5, 0.60, 255),  # unlabelled, sofa below 0.7       -> ignored
        (4, 0.95, 0),  # labelled aeroplane, sheep predicted -> ignored
        (2, 0.90, 255),  # unlabelled, confident SEEN bird  -> ignored
        (5, 0.80, 255),  # unlabelled, same as px 1 (a tie) -> 5
    ]
    probs = torch.stack([torch.full((6,), (1 - p) / 5).index_fill(0, torch.tensor([c]), p) for c, p, _ in rows])
    logits = probs.log().t().reshape(1, 6, 1, len(rows))  # [1, C=6, 1, 6]
    label = torch.tensor([[[lab for *_, lab in rows]]])  # [1, 1, 6]
    m = _onehot_method(enabled=True, threshold=0.7)
    assert m.self_training_targets(logits, label).tolist() == [[[4, 5, 255, 255, 255, 5]]]
    # top 50% of the 3 kept pixels -> ceil(1.5) = 2: the 0.9 pixel, then the first of the two tied 0.8 pixels
    m.configure_transductive(enabled=True, threshold=0.7, topk_fraction=0.5)
    assert m.self_training_targets(logits, label).tolist() == [[[4, 5, 255, 255, 255, 255]]]
    m.configure_transductive(enabled=True, threshold=0.55)
    assert m.self_training_targets(logits, label).tolist() == [[[4, 5, 5, 255, 255, 5]]]


def test_loss_is_ce_on_kept_pixels_and_gradients_touch_only_them():
    m = _onehot_method(enabled=True, threshold=0.7)
    emb, label, valid = _constructed()
    emb = emb.clone().requires_grad_(True)
    loss = m.self_training_loss(emb, label, valid)
    logits = m.student.logits(emb.detach(), m.text_embeds)
    ref = F.cross_entropy(logits[0, :, 0, 1:3].t(), torch.tensor([4, 5]))
    assert torch.allclose(loss.detach(), ref, atol=1e-6) and float(loss.detach()) > 0
    loss.backward()
    touched = emb.grad.abs().sum(1)[0] > 0  # [4, 4]
    expected = torch.zeros(4, 4, dtype=torch.bool)
    expected[0, 1:3] = True
    assert torch.equal(touched, expected)


def test_loss_with_upsampling_to_label_size():
    m = _onehot_method(enabled=True, threshold=0.7)
    emb, label, valid = _constructed()
    big_label = label.repeat_interleave(4, 1).repeat_interleave(4, 2)  # [1, 16, 16]
    big_valid = valid.repeat_interleave(4, 1).repeat_interleave(4, 2)
    up = F.interpolate(m.student.logits(emb, m.text_embeds), size=(16, 16), mode="bilinear")  # [1, 6, 16, 16]
    target = m.self_training_targets(up, big_label, big_valid)
    kept = target != 255
    assert kept.any() and bool((big_label[kept] == 255).all()) and bool(big_valid[kept].all())
    assert set(target[kept].tolist()) <= set(UNSEEN)
    # the loss is the mean CE of the upsampled logits on the kept pixels
    ref = F.cross_entropy(up.permute(0, 2, 3, 1)[kept], target[kept])
    assert float(m.self_training_loss(emb, big_label, big_valid).detach()) == pytest.approx(float(ref), rel=1e-6)


def test_disabled_or_before_start_step_is_exactly_zero_with_graph():
    emb, label, valid = _constructed()
    emb = emb.clone().requires_grad_(True)
    off = _onehot_method()
    assert off.transductive_enabled is False
    z = off.self_training_loss(emb, label, valid)
    assert float(z.detach()) == 0.0 and z.requires_grad
    m = _onehot_method(enabled=True, start_step=5)
    m.set_step(4)
    assert float(m.self_training_loss(emb, label, valid).detach()) == 0.0
    m.set_step(5)
    assert float(m.self_training_loss(emb, label, valid).detach()) > 0.0


def test_no_qualifying_pixel_gives_zero():
    m = _onehot_method(enabled=True, threshold=0.7)
    emb, label, valid = _constructed()
    label = torch.zeros_like(label)  # everything labelled
    loss = m.self_training_loss(emb.requires_grad_(True), label, valid)
    assert float(loss.detach()) == 0.0 and loss.requires_grad


def test_bad_settings_raise_clear_errors():
    with pytest.raises(ValueError, match="unknown key.*thresh"):
        _onehot_method(enabled=True, thresh=0.5)
    with pytest.raises(ValueError, match="method.transductive.threshold"):
        _onehot_method(enabled=True, threshold=1.5)
    with pytest.raises(ValueError, match="method.transductive.topk_fraction"):
        _onehot_method(enabled=True, topk_fraction=0.0)
    with pytest.raises(ValueError, match="method.transductive.start_step"):
        _onehot_method(enabled=True, start_step=-1)


# ------------------------------------------------------------------ real training steps
def _oracle():
    return OracleTeacher(NAMES, embed_dim=D, patch_size=8, noise=0.1, seed=0)


def _bias_unseen_towards_student(m, batch) -> None:
    """Point the 'sheep' text embed at the student's mean embed so it is confidently predicted somewhere."""
    with torch.no_grad():
        m.text_embeds[4] = F.normalize(m.student(batch["image"]).mean(dim=(0, 2, 3)), dim=0)


def test_baseline_total_unchanged_when_disabled_or_before_start():
    batch = _batch()
    m = SeenOnlyBaseline(_student(), _oracle(), NAMES, UNSEEN)
    torch.manual_seed(0)  # test_resnet draws random numbers in train mode
    ref = m.training_step(batch)
    assert float(ref["loss_st"]) == 0.0 and float(ref["loss"].detach()) == float(ref["loss_ce"])
    m.configure_transductive(enabled=True, start_step=10, threshold=0.0)
    m.set_step(9)
    torch.manual_seed(0)
    out = m.training_step(batch)
    assert str(float(out["loss_st"])) == "0.0" and float(out["loss"].detach()) == float(ref["loss"].detach())
    m.set_step(10)  # active: the same step now changes the total
    torch.manual_seed(0)
    act = m.training_step(batch)
    assert float(act["st_pixels"]) > 0 and float(act["loss"].detach()) != float(ref["loss"].detach())


def test_baseline_training_step_with_self_training():
    batch = _batch()
    m = SeenOnlyBaseline(
        _student(), _oracle(), NAMES, UNSEEN, transductive=dict(enabled=True, threshold=0.5, weight=0.5)
    )
    _bias_unseen_towards_student(m, batch)
    out = m.training_step(batch)
    assert {"loss", "loss_ce", "loss_st", "st_pixels"} <= set(out)
    assert float(out["st_pixels"]) > 0 and float(out["loss_st"]) > 0 and math.isfinite(float(out["loss"].detach()))
    assert torch.allclose(out["loss"], out["loss_ce"] + 0.5 * out["loss_st"], atol=1e-6)
    out["loss"].backward()
    grads = [p.grad for p in m.student.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_clip_zss_training_step_reports_loss_st():
    batch = _batch()
    kw = dict(bank_size=8, pl_scales=(2, 4), pl_min_area=1)
    off = ClipZSS.from_flat(_student(), _oracle(), NAMES, UNSEEN, **kw)
    on = ClipZSS.from_flat(_student(), _oracle(), NAMES, UNSEEN, transductive=dict(enabled=True, threshold=0.5), **kw)
    _bias_unseen_towards_student(off, batch)
    _bias_unseen_towards_student(on, batch)
    torch.manual_seed(0)
    o = off.training_step(batch)
    torch.manual_seed(0)
    n = on.training_step(batch)
    assert float(o["loss_st"]) == 0.0 and float(o["st_pixels"]) == 0.0
    assert float(n["st_pixels"]) > 0 and math.isfinite(float(n["loss_st"])) and float(n["loss_st"]) > 0
    assert torch.allclose(n["loss"], o["loss"] + n["loss_st"], atol=1e-4)
    n["loss"].backward()
    assert all(torch.isfinite(p.grad).all() for p in on.student.parameters() if p.grad is not None)


def test_chimera_training_step_reports_loss_st():
    tiny = build_tiny_clip(embed_dim=D, width=64, layers=3, patch_size=8, seed=0)
    m = ChimeraSeg.from_flat(
        _student(), tiny, NAMES, UNSEEN, csh_blocks=1, bank_size=8, transductive=dict(enabled=True, threshold=0.0)
    )
    out = m.training_step(_batch())
    assert "loss_st" in out and math.isfinite(float(out["loss_st"])) and math.isfinite(float(out["loss"].detach()))


# ------------------------------------------------------------------ trainer hook and configs
def test_trainer_calls_set_step(voc_root, tmp_path):
    from zss.data.dataset import build_dataset
    from zss.data.transforms import build_train_transform
    from zss.engine.trainer import TrainConfig, Trainer, new_run_dir

    class Spy(SeenOnlyBaseline):
        seen_steps: list

        def training_step(self, batch):
            self.seen_steps.append(self._step)
            return super().training_step(batch)

    tf = build_train_transform(crop_size=(64, 64), scale=(256, 64), ratio_range=(0.75, 1.5))
    train = build_dataset("voc20", voc_root, split="train", hide_unseen=True, transform=tf)
    from zss.data.classes import get_benchmark

    bench = get_benchmark("voc20")
    teacher = OracleTeacher(list(bench.classes), embed_dim=16, patch_size=16, seed=0)
    m = Spy(
        _student(dim=16),
        teacher,
        list(bench.classes),
        list(bench.unseen),
        transductive=dict(enabled=True, start_step=2, threshold=0.0),
    )
    m.seen_steps = []
    cfg = TrainConfig(
        max_steps=3,
        batch_size=2,
        lr=1e-3,
        warmup_steps=1,
        amp="fp32",
        eval_interval=0,
        log_interval=1,
        ckpt_interval=0,
        num_workers=0,
        eval_mode="whole",
        overlay_count=0,
    )
    run = new_run_dir(tmp_path, "t")
    Trainer(m, train, None, cfg, run).fit()
    assert m.seen_steps == [0, 1, 2]
    import json

    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    st = [r["loss_st"] for r in rows if r["split"] == "train"]
    assert len(st) == 3 and st[0] == 0.0 and st[1] == 0.0  # steps 0, 1 < start_step 2


def test_experiment_demo_transductive_composes_and_instantiates():
    from hydra import compose, initialize_config_dir

    from zss.cli.common import build_method

    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["experiment=demo_transductive"])
        default = compose(config_name="train", overrides=["method=clip_zss"])
    assert cfg.method.transductive.enabled is True and cfg.method.transductive.start_step == 100
    assert default.method.transductive.enabled is False
    assert cfg.name == "demo_transductive_clip_zss"
    m = build_method(cfg.method, student=_student(), teacher=_oracle(), classnames=NAMES, unseen=UNSEEN)
    assert isinstance(m, ClipZSS) and m.transductive_enabled and m.transductive_start_step == 100
    assert m.transductive_threshold == 0.7 and m.transductive_topk_fraction is None
