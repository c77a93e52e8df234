"""Tests for Chimera-Seg: zss/models/chimera.py (CSH, ChimeraStudent) and zss/methods/chimera_seg.py.

Tiny random open_clip CLIP (3 blocks, width 64, patch 8) and timm ``test_resnet``; CPU, offline, a few seconds.
Run ``python tests/test_chimera.py`` to print the parameter counts of the VOC-experiment model (random weights).
"""

from __future__ import annotations

import io
import math

import open_clip
import pytest
import torch
import torch.nn.functional as F
from open_clip.transformer import TextTransformer, VisionTransformer

import zss.methods.chimera_seg as chimera_seg_mod
from zss.methods.chimera_seg import ChimeraSeg, SGDSettings, keep_ratio, select_top_ratio
from zss.methods.losses import cls_attention_pool, info_nce
from zss.models.chimera import CLIPSemanticHead
from zss.models.student import Student
from zss.teachers.clip import FrozenCLIP, build_tiny_clip
from zss.teachers.oracle import OracleTeacher

NAMES = ["aeroplane", "bicycle", "bird", "boat", "sheep", "sofa"]
UNSEEN = [4, 5]
D, W, LAYERS, PATCH = 32, 64, 3, 8
IMG = 64  # pixels -> 8x8 CSH grid at the teacher's patch 8


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_clip(embed_dim=D, width=W, layers=LAYERS, patch_size=PATCH, seed=0, dense_mode="maskclip")


def _student(seed: int = 0) -> Student:
    torch.manual_seed(seed)
    return Student("test_resnet", embed_dim=D, decoder="mlp", decoder_channels=16)


def _method(teacher, seed: int = 0, **kw) -> ChimeraSeg:
    kw.setdefault("bank_size", 8)
    return ChimeraSeg.from_flat(_student(seed), teacher, NAMES, UNSEEN, **kw)


def _batch(b: int = 2, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    label = torch.full((b, IMG, IMG), 255, dtype=torch.long)
    label[:, 4:28, 4:36] = 0
    label[0, 10:30, 40:60] = 2
    label[1, 30:50, 8:40] = 3
    valid = torch.ones(b, IMG, IMG, dtype=torch.bool)
    valid[1, :, 40:] = False  # crop padding on the right of image 1 (3 of 8 token columns)
    label[~valid] = 255
    return dict(
        image=torch.randn(b, 3, IMG, IMG, generator=g),
        label=label,
        full_label=label.clone(),
        valid=valid,
        name=[f"img{i}" for i in range(b)],
    )


def _frozen_named(m: ChimeraSeg) -> dict[str, torch.Tensor]:
    csh = m.student.csh
    ids = {id(p) for p in csh.frozen_parameters()}
    return {n: p for n, p in m.named_parameters() if id(p) in ids}


# ----------------------------------------------------------------------------------------------- CSH
def test_csh_output_shape_and_unit_norm(tiny):
    for kw, size, grid in [
        (dict(), (IMG, IMG), (8, 8)),
        (dict(token_stride=4, csh_input="backbone"), (IMG, IMG), (16, 16)),
        # non-square input, not a multiple of the stride: floor grid
        (dict(prepend_cls=False, pos_embed="learnable", maskclip_last=True, adapter_hidden=24), (40, 72), (5, 9)),
    ]:
        m = _method(tiny, **kw)
        with torch.no_grad():
            emb = m.student(torch.randn(2, 3, *size))
        assert emb.shape == (2, D, *grid), kw
        torch.testing.assert_close(emb.norm(dim=1), torch.ones(2, *grid), atol=1e-5, rtol=0)
    with torch.no_grad():
        assert m.predict(torch.randn(1, 3, IMG, IMG)).shape == (1, len(NAMES), IMG, IMG)  # the input size


def test_csh_positional_embedding_matches_teacher(tiny):
    csh = CLIPSemanticHead(tiny, in_channels=16)
    for grid in [tiny.native_grid, (8, 8), (5, 11)]:
        torch.testing.assert_close(
            csh.positional_embedding(grid), tiny.positional_embedding(grid).float(), atol=1e-6, rtol=0
        )


@pytest.mark.parametrize("mode", ["tokens", "maskclip"])
@pytest.mark.parametrize("k", [1, 2])
def test_identity_adapter_reproduces_teacher_dense(mode, k):
    """Adapter = identity (C = W, no LN, no pos), input = the teacher's own tokens after block L-k: the CSH
    output must be the teacher's dense output, so the frozen part really is CLIP's last k blocks."""
    teacher = build_tiny_clip(embed_dim=D, width=W, layers=LAYERS, patch_size=PATCH, seed=3, dense_mode=mode)
    x = torch.randn(2, 3, IMG, IMG)
    L = teacher.num_layers
    with torch.no_grad():
        tok, (h, w) = teacher.embed(teacher.prepare(x))  # [B, 1 + N, W]
        for blk in teacher.visual.transformer.resblocks[: L - k]:
            tok = blk(tok)
        ref = teacher(x)["dense"]  # [B, D, h, w]
    csh = CLIPSemanticHead(
        teacher,
        in_channels=W,
        num_blocks=k,
        maskclip_last=mode == "maskclip",
        prepend_cls=True,
        pos_embed="none",
        adapter_norm=False,
    )
    with torch.no_grad():
        csh.adapter.weight.copy_(torch.eye(W))
        csh.adapter.bias.zero_()
    feats = tok[:, 1:].transpose(1, 2).reshape(2, W, h, w)  # patch tokens as a body map [B, W, h, w]
    with torch.no_grad():
        # the whole token sequence (teacher's own CLS state included), batch of 2
        torch.testing.assert_close(csh.forward_tokens(tok, (h, w)), ref, atol=1e-5, rtol=0)
        # the full forward path (adapter, grid, CLS prepending): image 0 with the CSH CLS set to its CLS state
        csh.cls_token.copy_(tok[0, 0])
        torch.testing.assert_close(csh(feats[:1]), ref[:1], atol=1e-5, rtol=0)
        if mode == "maskclip" and k == 1:  # per-token last block: the CLS token is irrelevant
            csh.cls_token = None
            torch.testing.assert_close(csh(feats), ref, atol=1e-5, rtol=0)
        else:  # sanity: a different CLS token changes the result, so the comparison above can fail
            csh.cls_token.copy_(tok[1, 0])
            assert not torch.allclose(csh(feats[:1]), ref[:1], atol=1e-4)


def test_frozen_blocks_get_no_grad_stay_identical_and_are_not_in_param_groups(tiny):
    m = _method(tiny, pos_embed="frozen")
    csh = m.student.csh
    frozen = _frozen_named(m)
    assert frozen and all(not p.requires_grad for p in frozen.values())
    assert any(n.startswith("student.csh.blocks.") for n in frozen) and "student.csh.proj" in frozen
    # deep copies: no storage shared with the teacher
    teacher_ptrs = {p.data_ptr() for p in tiny.parameters()}
    assert not {p.data_ptr() for p in frozen.values()} & teacher_ptrs
    before = {n: p.detach().clone() for n, p in frozen.items()}
    pos_before = csh.pos_embed.clone()
    groups = m.param_groups(lr=1e-2, head_lr_mult=10.0, weight_decay=0.5)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids))
    assert not {id(p) for p in frozen.values()} & set(ids)
    assert set(ids) == {id(p) for p in m.parameters() if p.requires_grad}
    opt = torch.optim.AdamW(groups)
    m.train()
    assert not csh.blocks.training and not csh.ln_post.training and csh.adapter_norm.training
    for _ in range(3):
        opt.zero_grad()
        m.training_step(_batch())["loss"].backward()
        for n, p in frozen.items():
            assert p.grad is None, n
        opt.step()
    for n, p in frozen.items():
        assert torch.equal(p, before[n]), n
    assert torch.equal(csh.pos_embed, pos_before)
    assert not csh.blocks.training  # still eval after the training loop


def test_param_group_learning_rates(tiny):
    m = _method(tiny)
    groups = {g["name"]: g for g in m.param_groups(lr=1e-3, head_lr_mult=10.0, weight_decay=0.01)}
    assert groups["backbone"]["lr"] == pytest.approx(1e-3)
    for name in ("head", "csh", "csh_no_decay"):
        assert groups[name]["lr"] == pytest.approx(1e-2), name
    adapter = {id(p) for p in m.student.csh.trainable_parameters()}
    assert {id(p) for g in ("csh", "csh_no_decay") for p in groups[g]["params"]} == adapter
    assert id(m.student.csh.cls_token) in {id(p) for p in groups["csh_no_decay"]["params"]}
    decoder = {id(p) for p in m.student.body.decoder.parameters()}
    assert decoder <= {id(p) for g in ("head", "head_no_decay") for p in groups[g]["params"]}


# ------------------------------------------------------------------------------------------ schedule
@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_keep_ratio_endpoints_and_monotone(schedule):
    r = [keep_ratio(t, 100, 0.9, 0.2, schedule) for t in range(0, 121)]
    assert r[0] == pytest.approx(0.9) and r[100] == pytest.approx(0.2) and r[120] == pytest.approx(0.2)
    assert all(a >= b - 1e-12 for a, b in zip(r, r[1:]))
    assert r[10] > r[90]
    assert keep_ratio(50, 100, 0.9, 0.2, schedule, decay_fraction=0.5) == pytest.approx(0.2)
    mid = keep_ratio(50, 100, 1.0, 0.2, schedule)
    assert mid == pytest.approx(0.6)  # both schedules cross the midpoint half-way
    assert keep_ratio(-5, 100, 0.9, 0.2, schedule) == pytest.approx(0.9)


def test_keep_ratio_shapes_and_errors():
    # cosine decays slower than linear at the start, faster in the middle
    assert keep_ratio(10, 100, 1.0, 0.2, "cosine") > keep_ratio(10, 100, 1.0, 0.2, "linear")
    for bad in [dict(r0=0.2, r_min=0.5), dict(r0=1.5), dict(r_min=0.0), dict(schedule="step")]:
        kw = dict(step=1, max_steps=10, r0=0.9, r_min=0.2, schedule="linear") | bad
        with pytest.raises(ValueError):
            keep_ratio(**kw)


def test_on_step_sets_ratio_reported_by_training_step(tiny):
    m = _method(tiny, r0=0.8, r_min=0.2, r_schedule="linear")
    m.on_step(50, 100)
    out = m.training_step(_batch())
    assert out["keep_ratio"].item() == pytest.approx(0.5)
    assert out["kept_tokens"].item() == pytest.approx((32 + math.ceil(0.5 * 40)) / 2)  # image 1: 40 valid cells


# ----------------------------------------------------------------------------------------- selection
def test_select_top_ratio_picks_most_cls_similar_positions():
    torch.manual_seed(0)
    B, Dd, h, w = 2, 5, 3, 4
    cls = F.normalize(torch.randn(B, Dd), dim=-1)
    # embeds with prescribed cosines to the CLS: cos_l = c_l, random orthogonal part
    cos = torch.stack([torch.randperm(h * w).float() / (h * w) for _ in range(B)])  # [B, L] distinct in [0, 1)
    ortho = torch.randn(B, h * w, Dd)
    ortho = F.normalize(ortho - (ortho @ cls[:, :, None]) * cls[:, None], dim=-1)
    emb = cos[..., None] * cls[:, None] + (1 - cos[..., None] ** 2).sqrt() * ortho  # [B, L, D] unit rows
    emb = (emb * 3.0).transpose(1, 2).reshape(B, Dd, h, w)  # scale does not matter (cosine)
    keep = select_top_ratio(emb, cls, 0.25)
    assert keep.shape == (B, h, w)
    for b in range(B):
        top = set(torch.topk(cos[b], 3).indices.tolist())  # ceil(0.25 * 12) = 3
        assert set(keep[b].flatten().nonzero().flatten().tolist()) == top
    # validity: the best position is excluded; counts follow ceil(r * valid)
    valid = torch.ones(B, h, w, dtype=torch.bool)
    best0 = int(cos[0].argmax())
    valid[0].view(-1)[best0] = False
    valid[1].view(-1)[:8] = False  # 4 valid positions left
    keep = select_top_ratio(emb, cls, 0.25, valid)
    assert keep.flatten(1).sum(1).tolist() == [3, 1]
    masked0 = cos[0].clone()
    masked0[best0] = -1
    assert set(keep[0].flatten().nonzero().flatten().tolist()) == set(torch.topk(masked0, 3).indices.tolist())
    assert int(keep[1].flatten().nonzero()) == 8 + int(cos[1, 8:].argmax())
    assert not (keep & ~valid).any()
    assert select_top_ratio(emb, cls, 1.0).all() and select_top_ratio(emb, cls, 1e-6).flatten(1).sum(1).eq(1).all()
    with pytest.raises(ValueError):
        select_top_ratio(emb, cls, 0.0)


def test_sgd_loss_is_infonce_of_mean_of_kept_embeds(tiny, monkeypatch):
    m = _method(tiny, bank_size=0, r0=0.5, r_min=0.5)
    captured = {}
    orig = chimera_seg_mod.select_top_ratio

    def spy(embeds, cls, ratio, valid=None):
        keep = orig(embeds, cls, ratio, valid)
        captured.update(embeds=embeds.clone(), cls=cls.clone(), keep=keep, valid=valid)
        return keep

    monkeypatch.setattr(chimera_seg_mod, "select_top_ratio", spy)
    batch = _batch()
    out = m.training_step(batch)
    emb, cls, keep = captured["embeds"], captured["cls"], captured["keep"]
    # padding: image 1 columns 5..7 (> half padding) are never eligible, columns 0..4 are
    assert captured["valid"][1, :, 5:].logical_not().all() and captured["valid"][1, :, :5].all()
    assert not keep[1, :, 5:].any()
    assert keep.flatten(1).sum(1).tolist() == [32, 20]
    pooled = torch.stack([emb[b][:, keep[b]].mean(1) for b in range(2)])  # mean over kept positions
    ref = info_nce(F.normalize(pooled, dim=-1), cls, None, 0.07)
    assert out["loss_sgd"].item() == pytest.approx(ref.item(), rel=1e-5)
    # mean pooling is CLS-query pooling with scale 0 restricted to the mask
    torch.testing.assert_close(cls_attention_pool(emb, cls, 0.0, keep), pooled, atol=1e-6, rtol=0)


# ------------------------------------------------------------------------------------------ training
@pytest.mark.parametrize(
    "kw",
    [
        dict(),
        dict(sam_loss="ce+nel", csh_input="backbone", maskclip_last=True),
        dict(sam_loss="nel", sgd_pool="attention", loss_resolution="logits", pos_embed="learnable"),
    ],
)
def test_training_step_finite_and_gradients_on_body_and_adapter_only(tiny, kw):
    m = _method(tiny, **kw)
    m.train()
    out = m.training_step(_batch())
    for k in ("loss", "loss_sgd", "loss_sam", "loss_ce", "loss_nel", "keep_ratio", "sgd_acc"):
        assert k in out and out[k].dim() == 0 and torch.isfinite(out[k]), k
    assert out["loss_sgd"].item() > 0 and out["loss_sam"].item() > 0
    sam = kw.get("sam_loss", "ce")
    assert (out["loss_ce"].item() > 0) == ("ce" in sam.split("+"))
    assert (out["loss_nel"].item() > 0) == ("nel" in sam)
    out["loss"].backward()
    frozen = {id(p) for p in m.student.csh.frozen_parameters()}
    for n, p in m.named_parameters():
        if id(p) in frozen:
            assert p.grad is None, n
        else:
            assert p.requires_grad and p.grad is not None and torch.isfinite(p.grad).all(), n
    for part in ("student.body.backbone.", "student.csh.adapter."):
        assert any(p.grad.abs().sum() > 0 for n, p in m.named_parameters() if n.startswith(part)), part
    if kw.get("csh_input", "decoder") == "decoder":
        assert any(p.grad.abs().sum() > 0 for n, p in m.named_parameters() if n.startswith("student.body.decoder."))
    else:
        assert m.student.body.decoder is None
    assert m.student.body.proj is None  # replaced by the CSH
    for p in tiny.parameters():
        assert not p.requires_grad and p.grad is None
    assert len(m.sgd.bank) == 2  # loss before push: this batch's CLS tokens are now in the bank


def test_training_step_under_bf16_autocast_matches_fp32(tiny):
    """The same step in fp32 and under CPU bf16 autocast (8 mantissa bits: ~0.4% per rounding): losses within 3%,
    the other logged values within 5%, the CSH adapter's gradient pointing the same way (cosine > 0.97)."""
    batch = _batch()
    ref_m, m = _method(tiny), _method(tiny)
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
    g_ref, g = (x.student.csh.adapter.weight.grad.flatten() for x in (ref_m, m))
    assert float(F.cosine_similarity(g_ref, g, dim=0)) > 0.97


def test_bad_arguments(tiny):
    with pytest.raises(ValueError, match="FrozenCLIP"):
        ChimeraSeg(_student(), OracleTeacher(NAMES, embed_dim=D), NAMES, UNSEEN)
    with pytest.raises(ValueError, match="FrozenCLIP"):
        ChimeraSeg(_student(), None, NAMES, UNSEEN, text_embeds=torch.randn(len(NAMES), D))
    for kw, match in [
        (dict(csh_blocks=4), "csh_blocks"),
        (dict(csh_blocks=0, maskclip_last=True), "maskclip_last"),
        (dict(csh_input="neck"), "csh_input"),
        (dict(sam_loss="bce"), "sam_loss"),
        (dict(r0=0.1, r_min=0.5), "r_min"),
        (dict(pos_embed="sine"), "pos_embed"),
        (dict(sgd_pool="max"), "sgd_pool"),
    ]:
        with pytest.raises(ValueError, match=match):
            _method(tiny, **kw)
    m = _method(tiny, csh_blocks=0)  # k = 0: adapter -> ln_post -> proj
    assert len(m.student.csh.blocks) == 0 and torch.isfinite(m.training_step(_batch())["loss"])


# ----------------------------------------------------------------------------------------- inference
_OPEN_CLIP_WHOLE = (FrozenCLIP, open_clip.CLIP, open_clip.CustomTextCLIP, VisionTransformer, TextTransformer)


def test_rebuild_from_state_dict_predicts_the_same_without_teacher(tiny):
    """As cli.load_for_inference: a fresh ChimeraSeg around a *different* random teacher of the same
    architecture, state loaded strictly, teacher dropped -> same predictions; no CLIP beyond the CSH copies."""
    m = _method(tiny, seed=0)
    opt = torch.optim.AdamW(m.param_groups(1e-2, 10.0, 0.01))
    m.train()
    m.training_step(_batch())["loss"].backward()
    opt.step()
    m.eval()
    images = _batch(seed=5)["image"]
    with torch.no_grad():
        ref = m.predict(images)

    buf = io.BytesIO()  # checkpoints are loaded with weights_only=True
    torch.save(m.checkpoint_state(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    assert any(k.startswith("student.csh.blocks.") for k in state) and not any("teacher" in k for k in state)

    other = build_tiny_clip(embed_dim=D, width=W, layers=LAYERS, patch_size=PATCH, seed=7)
    new = ChimeraSeg(
        _student(seed=1), other, NAMES, UNSEEN, sgd=SGDSettings(bank_size=8), text_embeds=state["text_embeds"]
    ).eval()
    with torch.no_grad():
        assert not torch.allclose(new.predict(images), ref, atol=1e-3)  # different weights before loading
    new.load_state_dict(state)  # strict
    object.__setattr__(new, "teacher", None)
    del other
    with torch.no_grad():
        torch.testing.assert_close(new.predict(images), ref, atol=1e-6, rtol=0)
        torch.testing.assert_close(new.predict(images, label_space="unseen")[:, UNSEEN], ref[:, UNSEEN])

    # nothing of the full CLIP is reachable: only the copied blocks (and ln_post) are open_clip modules
    assert new.teacher is None
    names = {id(mod): n for n, mod in new.named_modules()}
    for n, mod in new.named_modules():
        assert not isinstance(mod, _OPEN_CLIP_WHOLE), n
        if type(mod).__module__.startswith("open_clip"):
            assert n.startswith(("student.csh.blocks.", "student.csh.ln_post")), n
        for attr, v in vars(mod).items():  # no hidden (unregistered) module references either
            if isinstance(v, torch.nn.Module):
                assert not isinstance(v, _OPEN_CLIP_WHOLE) and id(v) in names, (n, attr)


# ------------------------------------------------------------------------------ parameter counts
def voc_param_counts() -> dict[str, int]:
    """Trainable / frozen parameter counts of the VOC model: resnet101 + ASPP body, ViT-B-16-quickgelu CSH (k=2),
    everything random (no download). Not a test (builds ~200M params); run this file as a script."""
    clip = FrozenCLIP(model_name="ViT-B-16-quickgelu", pretrained=None)
    body = Student("resnet101.tv_in1k", embed_dim=clip.embed_dim, decoder="aspp", decoder_channels=256)
    body_proj = sum(p.numel() for p in body.proj.parameters())
    m = ChimeraSeg(body, clip, NAMES, UNSEEN, text_embeds=torch.randn(len(NAMES), clip.embed_dim))
    csh = m.student.csh
    trainable = sum(p.numel() for p in m.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in m.parameters() if not p.requires_grad)
    return {
        "trainable_total": trainable,
        "trainable_body_backbone": sum(p.numel() for p in m.student.body.backbone.parameters()),
        "trainable_body_decoder": sum(p.numel() for p in m.student.body.decoder.parameters()),
        "trainable_csh_adapter_ln_cls": sum(p.numel() for p in csh.trainable_parameters()),
        "frozen_total_params": frozen,
        "frozen_per_block": sum(p.numel() for p in csh.blocks[0].parameters()),
        "frozen_ln_post_proj": sum(p.numel() for p in csh.ln_post.parameters()) + csh.proj.numel(),
        "frozen_pos_embed_buffer": csh.pos_embed.numel(),
        "checkpoint_state_elements": sum(t.numel() for t in m.checkpoint_state().values()),
        "removed_body_proj": body_proj,
        "clip_visual_total": sum(p.numel() for p in clip.visual.parameters()),
        "clip_total": sum(p.numel() for p in clip.parameters()),
    }


if __name__ == "__main__":  # pragma: no cover
    torch.set_num_threads(1)
    for k, v in voc_param_counts().items():
        print(f"{k:32s} {v:>12,d}  ({v / 1e6:.2f}M)")
