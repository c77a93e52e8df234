"""Tests for CLIP-ZSS: zss/methods/clip_zss.py and zss/models/synthesizer.py (tiny random CLIP, timm test_resnet)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from zss.methods.clip_zss import ClipZSS
from zss.models.student import Student
from zss.models.synthesizer import WeightSynthesizer, region_prototypes
from zss.teachers.clip import build_tiny_clip
from zss.teachers.oracle import OracleTeacher

NAMES = ["aeroplane", "bicycle", "bird", "boat", "sheep", "sofa"]
UNSEEN = [4, 5]
D = 32
IMG = 64  # pixels; tiny CLIP patch 8 -> 8x8 teacher grid; student stride 4 -> 16x16


@pytest.fixture(scope="module")
def tiny_clip():
    return build_tiny_clip(embed_dim=D)


def _student(seed: int = 0) -> Student:
    torch.manual_seed(seed)
    return Student("test_resnet", embed_dim=D, decoder="mlp", decoder_channels=16)


def _batch(b: int = 2, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    full = torch.full((b, IMG, IMG), 255, dtype=torch.long)
    full[:, 4:28, 4:36] = 0
    full[:, 36:60, 8:40] = 4  # unseen: hidden in the training label
    full[0, 10:30, 40:60] = 2
    full[1, 30:50, 44:62] = 5
    label = full.clone()
    label[(label == 4) | (label == 5)] = 255
    valid = torch.ones(b, IMG, IMG, dtype=torch.bool)
    valid[1, :, 56:] = False  # crop padding on the right of image 1
    label[~valid] = 255
    full[~valid] = 255
    return dict(
        image=torch.randn(b, 3, IMG, IMG, generator=g),
        label=label,
        full_label=full,
        valid=valid,
        name=[f"img{i}" for i in range(b)],
    )


def _method(teacher, **kw) -> ClipZSS:
    kw.setdefault("bank_size", 8)
    kw.setdefault("pl_scales", (2, 4))
    kw.setdefault("pl_min_area", 1)
    return ClipZSS.from_flat(_student(), teacher, NAMES, UNSEEN, **kw)


LOSS_KEYS = {"loss", "loss_glm", "loss_ce", "loss_nel", "loss_bce", "loss_focal", "loss_dice", "glm_acc", "pl_regions"}


# ------------------------------------------------------------------------------------- method
def test_training_step_finite_losses_and_gradients_only_on_trainable(tiny_clip):
    m = _method(tiny_clip, nel_weight=1.0)  # every term, NEL (off by default) included
    m.train()
    out = m.training_step(_batch())
    assert LOSS_KEYS <= set(out)
    for k, v in out.items():
        assert v.dim() == 0 and torch.isfinite(v), k
    for k in ("loss_glm", "loss_ce", "loss_nel", "loss_bce"):
        assert out[k].item() > 0, k
    assert out["pl_regions"].item() >= 1
    out["loss"].backward()
    trainable = dict(m.named_parameters())
    assert any(n.startswith("synthesizer.") for n in trainable)
    for n, p in trainable.items():
        assert p.grad is not None and torch.isfinite(p.grad).all(), n
    assert any(p.grad.abs().sum() > 0 for n, p in trainable.items() if n.startswith("synthesizer."))
    for p in tiny_clip.parameters():
        assert not p.requires_grad and p.grad is None
    # loss is computed before the push: after one step the bank holds this batch's CLS tokens
    assert len(m.glm.bank) == 2


def test_teacher_not_in_state_dict_or_param_groups(tiny_clip):
    m = _method(tiny_clip)
    state = m.checkpoint_state()
    assert not any(k.startswith("teacher") for k in state)
    assert any(k.startswith("synthesizer.") for k in state)
    assert not any("bank" in k for k in state)  # FIFO bank is not checkpointed
    groups = m.param_groups(lr=1e-3, head_lr_mult=10.0, weight_decay=0.01)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in m.parameters() if p.requires_grad}
    assert not {id(p) for p in tiny_clip.parameters()} & set(ids)
    synth = {id(p) for p in m.synthesizer.parameters()}
    for g in groups:
        if any(id(p) in synth for p in g["params"]):
            assert g["lr"] == pytest.approx(1e-2) and all(id(p) in synth for p in g["params"])


def test_predict_shape_and_synthesizer_unused(tiny_clip):
    m = _method(tiny_clip).eval()
    images = _batch()["image"]
    logits = m.predict(images)
    assert logits.shape == (2, len(NAMES), IMG, IMG)  # the input size
    # test-time logits are the student's alone: zeroing the synthesizer changes nothing
    with torch.no_grad():
        for p in m.synthesizer.parameters():
            p.zero_()
    assert torch.equal(m.predict(images), logits)


@pytest.mark.parametrize("use_glm,use_plm", [(True, False), (False, True), (False, False)])
def test_ablation_switches(tiny_clip, use_glm, use_plm):
    m = _method(tiny_clip, use_glm=use_glm, use_plm=use_plm)
    out = m.training_step(_batch())
    assert LOSS_KEYS <= set(out) and torch.isfinite(out["loss"])
    assert (out["loss_glm"].item() > 0) == use_glm
    assert (out["loss_bce"].item() > 0) == use_plm
    assert (m.synthesizer is not None) == use_plm and (m.glm is not None) == use_glm
    assert out["loss_ce"].item() > 0  # seen CE always supervises the student
    out["loss"].backward()


def test_pseudo_regions_never_take_seen_gt_or_padding(tiny_clip):
    m = _method(tiny_clip)
    captured = {}
    orig = m.pseudo_label_map

    def spy(dense, seen_label, valid):
        fused = orig(dense, seen_label, valid)
        captured.update(fused=fused, seen=seen_label, valid=valid)
        return fused

    m.pseudo_label_map = spy
    batch = _batch()
    m.training_step(batch)
    fused, seen, valid = captured["fused"], captured["seen"], captured["valid"]
    assert seen.shape == fused.shape == batch["label"].shape
    is_seen = seen != 255
    assert torch.equal(fused[is_seen], seen[is_seen])  # seen GT kept, never overwritten
    pseudo = (fused != 255) & (fused >= m.num_seen)
    assert pseudo.any()  # the K-Means produced pseudo regions
    assert not (pseudo & is_seen).any() and not (pseudo & ~valid).any()
    assert (fused[~valid] == 255).all()
    # seen ids in F are positions among seen classes: benchmark id 2 -> position 2, 0 -> 0
    assert set(torch.unique(seen[is_seen]).tolist()) <= set(range(m.num_seen))


def test_works_with_oracle_teacher_and_loss_goes_down():
    teacher = OracleTeacher(NAMES, embed_dim=D, patch_size=8, noise=0.05, seed=0)
    m = _method(teacher)
    m.train()
    batch = _batch()
    opt = torch.optim.AdamW([g for g in m.param_groups(1e-3, 10.0, 0.0)])
    losses = []
    for _ in range(4):
        out = m.training_step(batch)
        assert all(torch.isfinite(v) for v in out.values())
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(out["loss"].item())
    assert out["pl_regions"].item() >= 1
    assert losses[-1] < losses[0]


def test_missing_valid_means_all_valid_and_logits_resolution(tiny_clip):
    batch = _batch()
    del batch["valid"]
    m = _method(tiny_clip, loss_resolution="logits", glm_pool="none", synth_memory="cls+dense")
    out = m.training_step(batch)
    assert torch.isfinite(out["loss"])
    with pytest.raises(ValueError, match="loss_resolution"):
        _method(tiny_clip, loss_resolution="pixels")
    with pytest.raises(ValueError, match="glm_pool"):
        _method(tiny_clip, glm_pool="max")


# ------------------------------------------------------------------------------------- synthesizer
def test_region_prototypes_match_hand_pooling():
    torch.manual_seed(0)
    R = F.normalize(torch.randn(2, 8, 4, 4), dim=1)
    fused = torch.full((2, 16, 16), 255)
    fused[0, :8, :8] = 1  # 2x2 cells
    fused[0, 8:, :] = 5  # bottom half
    fused[1, 0:2, 0:3] = 0  # 6 pixels inside one cell
    fused[1, 4:6, 4:12] = 3  # half of cells (1,1) and (1,2)
    protos, ids, valid, area = region_prototypes(R, fused, num_ids=6)
    assert ids.tolist() == [[1, 5], [0, 3]]
    assert valid.all() and area.tolist() == [[64.0, 128.0], [6.0, 16.0]]
    assert torch.allclose(protos[0, 0], F.normalize(R[0, :, :2, :2].mean((1, 2)), dim=0), atol=1e-6)
    assert torch.allclose(protos[0, 1], F.normalize(R[0, :, 2:, :].mean((1, 2)), dim=0), atol=1e-6)
    assert torch.allclose(protos[1, 0], R[1, :, 0, 0], atol=1e-6)  # a region smaller than a cell survives
    assert torch.allclose(protos[1, 1], F.normalize(R[1, :, 1, 1:3].mean(1), dim=0), atol=1e-6)
    with pytest.raises(ValueError, match="fused ids"):
        region_prototypes(R, fused, num_ids=4)


def test_synthesizer_batched_equals_per_image_and_handles_empty():
    torch.manual_seed(0)
    syn = WeightSynthesizer(D, depth=2, heads=4, zero_init_residual=False).eval()
    R = F.normalize(torch.randn(3, D, 4, 4), dim=1)
    cls = F.normalize(torch.randn(3, D), dim=-1)
    fused = torch.full((3, 16, 16), 255)
    fused[0, :8] = 0
    fused[0, 8:] = 4
    fused[1, :, :4] = 2
    fused[1, :, 4:8] = 5
    fused[1, :, 8:] = 6  # image 1: 3 regions; image 2: none
    out = syn(R, fused, cls, num_ids=7)
    assert out.weights.shape == (3, 3, D) and out.valid.sum(1).tolist() == [2, 3, 0]
    assert torch.isfinite(out.weights).all()
    assert torch.allclose(out.weights[out.valid].norm(dim=-1), torch.ones(5), atol=1e-5)
    for i in range(2):  # padding slots do not change other images' results
        single = syn(R[i : i + 1], fused[i : i + 1], cls[i : i + 1], num_ids=7)
        n = int(single.valid.sum())
        assert torch.allclose(single.weights[0, :n], out.weights[i, :n], atol=1e-5)
    seen_w, present = out.by_id(0, 3)
    assert present.tolist() == [[True, False, False], [False, False, True], [False, False, False]]
    assert torch.equal(seen_w[1, 2], out.weights[1, 0])
    # queries attend to the CLS token: a different CLS gives different weights
    other = syn(R, fused, F.normalize(torch.randn(3, D), dim=-1), num_ids=7)
    assert not torch.allclose(other.weights[0, :2], out.weights[0, :2])


def test_synthesizer_zero_init_is_identity_and_options():
    torch.manual_seed(0)
    syn = WeightSynthesizer(D, heads=3)  # 3 does not divide 32 -> 2 heads
    assert syn.heads == 2
    R = F.normalize(torch.randn(1, D, 4, 4), dim=1)
    fused = torch.zeros(1, 8, 8, dtype=torch.long)
    fused[:, 4:] = 1
    out = syn(R, fused, torch.randn(1, D))
    assert torch.allclose(out.weights, out.prototypes, atol=1e-6)
    dense_syn = WeightSynthesizer(D, memory="cls+dense")
    with pytest.raises(ValueError, match="dense"):
        dense_syn(R, fused, torch.randn(1, D))
    assert dense_syn(R, fused, torch.randn(1, D), dense=torch.randn(1, D, 2, 2)).weights.shape == (1, 2, D)
    with pytest.raises(ValueError, match="memory"):
        WeightSynthesizer(D, memory="bank")


def test_synthesizer_cls_memory_cannot_tell_regions_apart_but_clip_queries_can():
    # one memory key (the CLS): the cross-attention output is the same for every region, so two regions with
    # the SAME student prototype get the same weight whatever CLIP sees in them; a "clip" query starts from
    # CLIP's own token of each region (zero-init: exactly the normalised region-pooled dense token)
    torch.manual_seed(0)
    R = F.normalize(torch.ones(1, D, 4, 4), dim=1)  # identical student embeds everywhere
    fused = torch.zeros(1, 8, 8, dtype=torch.long)
    fused[:, 4:] = 1
    dense = torch.zeros(1, D, 2, 2)
    dense[0, 0, 0], dense[0, 1, 1] = 1.0, 1.0  # CLIP: top half along e0, bottom half along e1
    cls = F.normalize(torch.randn(1, D), dim=-1)
    for lyr_init in (False, True):  # zero-init and a trained-like (random) decoder
        syn = WeightSynthesizer(D, memory="cls", zero_init_residual=not lyr_init)
        w = syn(R, fused, cls, dense=dense).weights[0]
        assert torch.allclose(w[0], w[1], atol=1e-6)
    clip_q = WeightSynthesizer(D, memory="cls+regions", query="clip")(R, fused, cls, dense=dense)
    assert torch.allclose(clip_q.weights[0, 0], torch.eye(D)[0], atol=1e-6)
    assert torch.allclose(clip_q.weights[0, 1], torch.eye(D)[1], atol=1e-6)
    with pytest.raises(ValueError, match="dense"):
        WeightSynthesizer(D, query="clip")(R, fused, cls)
    with pytest.raises(ValueError, match="query"):
        WeightSynthesizer(D, query="text")


def test_bce_pulls_seen_weights_to_their_text(tiny_clip):
    m = _method(tiny_clip)
    text = m.text_embeds[m.seen]
    from zss.models.synthesizer import SynthOutput

    ids = torch.tensor([[0, 2, 5]])  # two seen regions and a pseudo one
    valid = torch.ones(1, 3, dtype=torch.bool)
    good = torch.stack([text[0], text[2], F.normalize(torch.randn(D), dim=0)])[None]
    bad = torch.stack([text[1], text[0], text[3]])[None]
    mk = lambda w: SynthOutput(w, w, ids, valid, torch.ones(1, 3))  # noqa: E731
    lg = m._bce(mk(good)).item()
    # explicit BCE of the first slot for the "good" weights
    s = m.bce_scale * (good[0, :2] @ text.t())
    ref = F.binary_cross_entropy_with_logits(s, F.one_hot(torch.tensor([0, 2]), m.num_seen).float()).item()
    assert lg == pytest.approx(ref, rel=1e-5)
    assert lg < m._bce(mk(bad)).item()
    assert math.isfinite(lg)


def test_training_step_under_bf16_autocast_matches_fp32(tiny_clip):
    """The same step in fp32 and under CPU bf16 autocast (8 mantissa bits: ~0.4% per rounding): losses within 3%,
    the pseudo-label statistics within 5%, synthesizer gradients pointing the same way (cosine > 0.97)."""
    batch = _batch()
    ref_m, m = _method(tiny_clip), _method(tiny_clip)
    torch.manual_seed(0)
    ref = ref_m.training_step(batch)
    torch.manual_seed(0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m.training_step(batch)
    assert set(out) == set(ref) and all(v.dtype == torch.float32 for v in out.values())
    for k, v in ref.items():
        rel = 0.03 if k.startswith("loss") else 0.05
        assert float(out[k].detach()) == pytest.approx(float(v.detach()), rel=rel, abs=1e-6), k
    assert float(ref["loss"].detach()) > 0
    ref["loss"].backward()
    out["loss"].backward()
    g_ref, g = (torch.cat([p.grad.flatten() for p in x.synthesizer.parameters()]) for x in (ref_m, m))
    assert float(F.cosine_similarity(g_ref, g, dim=0)) > 0.97


# ------------------------------------------------------------------ CE reduction and synthesizer training (ours)
def test_split_ce_averages_seen_and_pseudo_pixels_separately(tiny_clip):
    torch.manual_seed(0)
    m = _method(tiny_clip, use_glm=False, ce_reduction="split", pseudo_ce_weight=0.5)
    logits = torch.randn(2, m.num_seen + 3, IMG, IMG)
    target = torch.full((2, IMG, IMG), 255, dtype=torch.long)
    target[:, :8] = 1  # few seen pixels
    target[:, 8:40] = m.num_seen + 2  # many pseudo pixels
    out = {}
    loss = m._ce(logits, target, out)
    seen_t = torch.where(target < m.num_seen, target, 255)
    pseudo_t = torch.where(target >= m.num_seen, target, 255).masked_fill(target == 255, 255)
    want_seen = F.cross_entropy(logits, seen_t, ignore_index=255)
    want_pseudo = F.cross_entropy(logits, pseudo_t, ignore_index=255)
    assert torch.allclose(loss, want_seen + 0.5 * want_pseudo, atol=1e-5)
    assert torch.allclose(out["loss_ce_seen"], want_seen, atol=1e-5)
    joint = _method(tiny_clip, use_glm=False, ce_reduction="joint")._ce(logits, target, {})
    assert torch.allclose(joint, F.cross_entropy(logits, target, ignore_index=255), atol=1e-5)
    with pytest.raises(ValueError, match="ce_reduction"):
        _method(tiny_clip, ce_reduction="sum")


def test_detached_pseudo_weights_train_the_synthesizer_by_bce_only(tiny_clip):
    grads = {}
    for detach in (False, True):
        m = _method(tiny_clip, use_glm=False, bce_weight=0.0, detach_pseudo_weights=detach)
        m.training_step(_batch())["loss"].backward()
        grads[detach] = sum(float(p.grad.abs().sum()) for p in m.synthesizer.parameters() if p.grad is not None)
    assert grads[False] > 0 and grads[True] == 0


def test_synth_lr_mult_scales_only_the_synthesizer_groups(tiny_clip):
    m = _method(tiny_clip, synth_lr_mult=0.0)
    groups = m.param_groups(1e-3, head_lr_mult=10.0)
    synth = [g for g in groups if g["name"].startswith("synthesizer")]
    assert synth and all(g["lr"] == 0.0 for g in synth)
    assert all(g["lr"] > 0 for g in groups if not g["name"].startswith("synthesizer"))
    with pytest.raises(ValueError, match="synth_lr_mult"):
        _method(tiny_clip, synth_lr_mult=-1)


def test_cross_image_negatives_equal_the_explicit_softmax():
    """The logsumexp channel gives a seen pixel exactly the CE over its own channels plus every present pseudo
    region of the OTHER images (and nothing of its own image twice)."""
    torch.manual_seed(0)
    B, K, h, w = 3, 4, 5, 6
    embeds = torch.randn(B, D, h, w)
    p = F.normalize(torch.randn(B, K, D), dim=-1)
    present = torch.tensor([[True, True, False, False], [True, False, False, False], [False] * K])
    cross = ClipZSS._cross_image_negatives(embeds, p, present, 10.0)
    assert cross.shape == (B, 1, h, w)
    rn = F.normalize(embeds, dim=1)
    own = torch.randn(B, 2, h, w)  # stands for the pixel's seen + own-image channels; target 0
    for b in range(B):
        others = [p[n, k] for n in range(B) for k in range(K) if n != b and present[n, k]]
        explicit = 10.0 * torch.einsum("dhw,kd->khw", rn[b], torch.stack(others))
        want = F.cross_entropy(torch.cat([own[b], explicit])[None], torch.zeros(1, h, w, dtype=torch.long))
        got = F.cross_entropy(torch.cat([own[b], cross[b]])[None], torch.zeros(1, h, w, dtype=torch.long))
        assert torch.allclose(got, want, atol=1e-5)
    lonely = ClipZSS._cross_image_negatives(embeds[:1], p[:1], present[:1], 10.0)  # no other image: no negative
    assert torch.all(lonely < -1e3)
    bank, bank_valid = F.normalize(torch.randn(5, D), dim=-1), torch.tensor([True, False, True, True, False])
    with_bank = ClipZSS._cross_image_negatives(embeds, p, present, 10.0, bank=bank, bank_valid=bank_valid)
    for b in range(B):
        others = [p[n, k] for n in range(B) for k in range(K) if n != b and present[n, k]] + list(bank[bank_valid])
        explicit = 10.0 * torch.einsum("dhw,kd->khw", rn[b], torch.stack(others))
        assert torch.allclose(with_bank[b], torch.logsumexp(explicit, 0, keepdim=True), atol=1e-4)

    # de-duplicated: a copy of image 0's own region is dropped for image 0, and a concept held twice counts once
    bank = torch.stack([p[0, 0], p[1, 0], p[1, 0] * 2.0])  # image 0's region; image 1's region twice
    dedup = ClipZSS._cross_image_negatives(
        embeds, p, present, 10.0, same=0.9, bank=bank, bank_valid=torch.ones(3, dtype=torch.bool)
    )
    concepts = {0: [p[1, 0]], 1: [p[0, 0], p[0, 1]], 2: [p[0, 0], p[0, 1], p[1, 0]]}  # per image, once each
    for b, ws in concepts.items():
        want = torch.logsumexp(10.0 * torch.einsum("dhw,kd->khw", rn[b], torch.stack(ws)), 0, keepdim=True)
        assert torch.allclose(dedup[b], want, atol=1e-4), b


def test_pseudo_bank_is_a_fifo_of_present_regions(tiny_clip):
    m = _method(tiny_clip, pseudo_negatives="bank", pseudo_bank_size=4)
    bank = m.pseudo_bank
    w = torch.arange(2 * 3, dtype=torch.float32)[:, None].expand(6, D).reshape(2, 3, D)  # row value = slot id
    bank.push(w, torch.tensor([[True, False, True], [False, True, False]]))  # slots 0, 2, 4
    weights, valid = bank.get()
    assert valid.tolist() == [True, True, True, False] and int(bank.ptr) == 3 and weights[:3, 0].tolist() == [0, 2, 4]
    bank.push(w + 10, torch.tensor([[False, True, True], [False, False, False]]))  # 11, 12: wraps around
    weights, valid = bank.get()
    assert weights[:, 0].tolist() == [12.0, 2.0, 4.0, 11.0] and valid.all() and int(bank.ptr) == 1
    saved = bank.train_state()
    out = m.training_step(_batch())  # a step reads the bank, then pushes its own regions
    assert torch.isfinite(out["loss"]) and not torch.equal(bank.weights, saved["weights"])
    bank.load_train_state(saved)  # the trainer restores it on resume; the model's state_dict does not carry it
    assert int(bank.ptr) == 1 and not any(k.startswith("pseudo_bank") for k in m.state_dict())
    with pytest.raises(ValueError, match="pseudo_bank_size"):
        bank.load_train_state(_bank_state(5))


def _bank_state(size: int) -> dict:
    from zss.methods.clip_zss import PseudoBank

    return PseudoBank(size, D).train_state()


def test_batch_pseudo_negatives_add_negatives_for_seen_pixels_only(tiny_clip):
    out = {}
    for mode in ("image", "batch"):
        torch.manual_seed(0)
        m = _method(tiny_clip, use_glm=False, ce_reduction="split", pseudo_negatives=mode)
        out[mode] = m.training_step(_batch())
        assert torch.isfinite(out[mode]["loss"])
    assert out["batch"]["pl_regions"] > 0
    assert torch.allclose(out["batch"]["loss_ce_pseudo"], out["image"]["loss_ce_pseudo"])
    assert out["batch"]["loss_ce_seen"] > out["image"]["loss_ce_seen"] + 1e-4
    single = {mode: _method(tiny_clip, use_glm=False, pseudo_negatives=mode) for mode in ("image", "batch")}
    single["batch"].load_state_dict(single["image"].state_dict())
    one = {}
    for k, v in single.items():
        torch.manual_seed(1)  # the same dropout masks
        one[k] = v.training_step({kk: vv[:1] for kk, vv in _batch().items()})["loss_ce"]
    assert torch.allclose(one["batch"], one["image"])  # a batch of one image has no other image
    with pytest.raises(ValueError, match="pseudo_negatives"):
        _method(tiny_clip, pseudo_negatives="all")
    with pytest.raises(ValueError, match="pseudo_bank_size"):
        _method(tiny_clip, pseudo_negatives="bank", pseudo_bank_size=0)
    assert _method(tiny_clip, pseudo_negatives="bank", use_plm=False).pseudo_bank is None


def test_seen_margin_leaves_one_teacher_patch_around_seen_pixels_unlabelled(tiny_clip):
    batch = _batch()
    fused = {}
    for margin in (0.0, 1.0):
        m = _method(tiny_clip, pl_seen_margin=margin)
        teach = tiny_clip(batch["image"])
        fused[margin] = m._fused_labels(
            batch["image"], teach["cls"], teach["dense"], m.to_seen_ids(batch["label"]), batch["valid"]
        )
    px = IMG // teach["dense"].shape[-2]  # one teacher patch in label pixels
    seen = (fused[0.0] < m.num_seen).float()[:, None]
    near = F.max_pool2d(seen, 2 * px + 1, stride=1, padding=px)[:, 0] > 0
    pseudo = (fused[0.0] >= m.num_seen) & (fused[0.0] != 255)
    assert (pseudo & near).any()  # without the margin, pseudo regions touch the seen objects
    assert (fused[1.0][pseudo & near] == 255).all()
    assert torch.equal(fused[1.0][~(pseudo & near)], fused[0.0][~(pseudo & near)])
    with pytest.raises(ValueError, match="pl_seen_margin"):
        _method(tiny_clip, pl_seen_margin=-1)
