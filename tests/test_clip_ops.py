"""CLIP surgery (zss/models/clip_ops.py): every CLIP block zss runs gives open_clip's own values.

Each user of the module (FrozenCLIP, the Chimera-Seg CLIP Semantic Head, the CLIP-RC prompted encoder, the
CLIP-ES CAM) is compared, fp32 on a tiny random open_clip CLIP, with the same computation through open_clip's
own block forward (``blk(x, attn_mask=...)``, torch ``nn.MultiheadAttention``), values and gradients.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from zss.clip_es import clip_es_cams
from zss.models import clip_ops
from zss.models.chimera import CLIPSemanticHead
from zss.teachers.clip import build_tiny_clip
from zss.teachers.prompted import PromptedCLIPEncoder

ATOL = 1e-5
PKG = Path(__file__).resolve().parents[1] / "zss"


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_clip(embed_dim=32, image_size=32, patch_size=8, width=64, layers=3, heads=4, seed=0)


@pytest.fixture
def open_clip_blocks(monkeypatch):
    """Route zss's block runner through open_clip's own block forward (the reference path)."""

    def own(blk, x, attn_mask=None, drop_prob=0.0, batch_first=True):
        assert drop_prob == 0.0
        return blk(x) if attn_mask is None else blk(x, attn_mask=attn_mask)

    monkeypatch.setattr(clip_ops, "run_block", own)
    monkeypatch.setattr(clip_ops, "cls_query_block", lambda blk, x, batch_first=True: blk(x)[:, :1])


def _x(*shape, seed=0, grad=False):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
    return x.requires_grad_(grad)


# ---------------------------------------------------------------------------------------------- blocks
def test_blocks_equal_open_clip_blocks_for_batches_masks_and_gradients(tiny):
    blk = tiny.visual.transformer.resblocks[0]
    assert clip_ops.is_plain_block(blk)
    x = _x(3, 17, tiny.width, grad=True)
    want, got = blk(x), clip_ops.run_block(blk, x)
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
    (g_want,), (g_got,) = torch.autograd.grad(want.sum(), x), torch.autograd.grad(got.sum(), x)
    torch.testing.assert_close(g_got, g_want, atol=ATOL, rtol=0)
    y = blk.ln_1(x.detach())
    ref = blk.attn(y[:, :1], y, y, need_weights=False)[0]  # cross-attention: CLS query, all keys
    torch.testing.assert_close(clip_ops.self_attention(blk.attn, y[:, :1], y), ref, atol=ATOL, rtol=0)
    mask = torch.zeros(17, 17)
    mask[:, 12:] = float("-inf")
    mask[12:, 12:] = 0.0
    torch.testing.assert_close(clip_ops.run_block(blk, x, mask), blk(x, attn_mask=mask), atol=ATOL, rtol=0)
    # the class-token-only evaluation is the first row of the full block
    torch.testing.assert_close(clip_ops.cls_query_block(blk, x), blk(x)[:, :1], atol=ATOL, rtol=0)


def test_attention_weights_equal_torch_mha(tiny):
    blk = tiny.visual.transformer.resblocks[1]
    y = blk.ln_1(_x(2, 13, tiny.width, seed=1))
    mask = torch.zeros(13, 13)
    mask[:4, 9:] = float("-inf")
    for m in (None, mask):
        want, w_want = blk.attn(y, y, y, need_weights=True, average_attn_weights=True, attn_mask=m)
        got, w_got = clip_ops.attention_with_weights(blk.attn, y, m)
        torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
        torch.testing.assert_close(w_got, w_want, atol=ATOL, rtol=0)
    assert torch.all(w_got[:, :4, 9:] == 0)


def test_drop_path_is_stochastic_depth_on_both_branches(tiny):
    blk = tiny.visual.transformer.resblocks[0]
    x, p = _x(6, 5, tiny.width, seed=2), 0.5
    torch.manual_seed(0)
    got = clip_ops.run_block(blk, x, drop_prob=p)
    torch.manual_seed(0)
    k1 = torch.empty(6, 1, 1).bernoulli_(1 - p)
    k2 = torch.empty(6, 1, 1).bernoulli_(1 - p)
    y = blk.ln_1(x)
    x1 = x + blk.attn(y, y, y, need_weights=False)[0] * k1 / (1 - p)
    want = x1 + blk.mlp(blk.ln_2(x1)) * k2 / (1 - p)
    assert 0 < int(k1.sum()) < 6 or 0 < int(k2.sum()) < 6  # some samples dropped, some kept
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)


# ---------------------------------------------------------------------------------------------- users
@pytest.mark.parametrize("mode", ["maskclip", "tokens"])
@pytest.mark.parametrize("hw", [(32, 32), (48, 40)])
def test_teacher_equals_open_clip_blocks(mode, hw, monkeypatch):
    t = build_tiny_clip(embed_dim=32, width=64, layers=3, heads=4, seed=0, dense_mode=mode)
    x = _x(2, 3, *hw, seed=3)
    got = t(x)
    with monkeypatch.context() as m:
        m.setattr(clip_ops, "run_block", lambda blk, x, attn_mask=None, drop_prob=0.0, batch_first=True: blk(x))
        m.setattr(clip_ops, "cls_query_block", lambda blk, x, batch_first=True: blk(x)[:, :1])
        want = t(x)
    torch.testing.assert_close(got["cls"], want["cls"], atol=ATOL, rtol=0)
    torch.testing.assert_close(got["dense"], want["dense"], atol=ATOL, rtol=0)
    if hw == (32, 32):  # native size: open_clip's encode_image itself
        torch.testing.assert_close(got["cls"], t.model.encode_image(x, normalize=True), atol=ATOL, rtol=0)


@pytest.mark.parametrize("maskclip_last", [False, True])
def test_csh_blocks_equal_open_clip_blocks_with_gradients(tiny, maskclip_last):
    csh = CLIPSemanticHead(tiny, in_channels=16, num_blocks=2, maskclip_last=maskclip_last).train()
    feats = _x(2, 16, 6, 5, seed=4)

    def run(reference: bool):
        csh.zero_grad()
        x, grid = csh.tokens(feats)
        if reference:  # the head's former path: open_clip's own blocks
            blocks = list(csh.blocks)
            for blk in blocks[:-1] if maskclip_last else blocks:
                x = blk(x)
            if maskclip_last:
                x = clip_ops.maskclip_block(blocks[-1], x)
        else:
            x = csh.run_blocks(x)
        out = F.normalize(csh.project(x[:, 1:]), dim=-1)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        return out.detach(), csh.adapter.weight.grad.clone()

    got, g_got = run(False)
    want, g_want = run(True)
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
    torch.testing.assert_close(g_got, g_want, atol=ATOL, rtol=0)
    assert g_got.abs().sum() > 0
    assert all(p.grad is None for p in csh.frozen_parameters())


@pytest.mark.parametrize("cls_input", ["public", "clip"])
def test_prompted_encoder_equals_open_clip_blocks(cls_input, open_clip_blocks, monkeypatch):
    clip = build_tiny_clip(embed_dim=32, image_size=64, patch_size=8, width=64, layers=3, heads=4, seed=0)
    enc = PromptedCLIPEncoder(clip, num_prompts=3, region_grid=2, cls_input=cls_input).eval()
    x = _x(2, 3, 48, 64, seed=5)

    def run():
        enc.zero_grad()
        out = enc(x)
        (out["dense"].sum() + out["regions"].sum() + out["cls"][:, :5].sum()).backward()
        return out, enc.deep_prompt_embeddings.grad.clone()

    want, g_want = run()  # open_clip's blocks (the fixture)
    monkeypatch.undo()
    assert clip_ops.run_block.__module__ == "zss.models.clip_ops"
    got, g_got = run()
    for k in ("cls", "dense", "regions"):
        torch.testing.assert_close(got[k].detach(), want[k].detach(), atol=ATOL, rtol=0)
    torch.testing.assert_close(g_got, g_want, atol=ATOL, rtol=0)
    assert g_got.abs().sum() > 0


def test_clip_es_cams_equal_torch_mha_attention(tiny, monkeypatch):
    fg = F.normalize(_x(3, 32, seed=6), dim=-1)
    bg = F.normalize(_x(2, 32, seed=7), dim=-1)
    x = _x(2, 3, 40, 48, seed=8)
    got = clip_es_cams(tiny, x, [[0, 2], [1]], fg, bg, attn_layers=2)

    def mha(blk, y, attn_mask=None, need_weights=False):
        out, w = blk.attn(y, y, y, need_weights=need_weights, average_attn_weights=True)
        return out, w

    monkeypatch.setattr(clip_ops, "attend", mha)
    want = clip_es_cams(tiny, x, [[0, 2], [1]], fg, bg, attn_layers=2)
    for a, b in ((got.cams, want.cams), (got.probs, want.probs), (got.attn, want.attn)):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0)


# ---------------------------------------------------------------------------------------------- one place
_BLOCK_INTERNALS = re.compile(r"\.(ln_1|ls_1|ln_2|ls_2|ln_pre|in_proj_weight|in_proj_bias|v_proj_weight)\b")


def test_block_internals_are_touched_only_in_clip_ops():
    offenders = []
    for path in sorted(PKG.rglob("*.py")):
        if path.name == "clip_ops.py":
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if _BLOCK_INTERNALS.search(code) and "``" not in code:
                offenders.append(f"{path.relative_to(PKG.parent)}:{n}: {line.strip()}")
    assert not offenders, "open_clip block internals outside zss/models/clip_ops.py:\n" + "\n".join(offenders)


def test_models_do_not_import_teachers():
    bad = [
        str(p.relative_to(PKG.parent))
        for p in sorted((PKG / "models").glob("*.py"))
        if re.search(r"^\s*(from|import) zss\.teachers", p.read_text(), re.M)
    ]
    assert not bad, f"zss.models imports zss.teachers (an upward import): {bad}"
