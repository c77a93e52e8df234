"""FrozenCLIP on tiny random open_clip models: outputs against open_clip references, loading, errors.

Offline: HF_HUB_OFFLINE=1 and every download function that a test reaches is monkeypatched to fail.
"""

from __future__ import annotations

import hashlib
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import open_clip  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from zss.data.normalize import CLIP_MEAN, CLIP_STD  # noqa: E402
from zss.teachers.clip import (  # noqa: E402
    FrozenCLIP,
    TeacherWeightsError,
    TeacherWeightsNotFoundError,
    build_tiny_clip,
    tiny_clip_cfg,
)

ATOL = 1e-5


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def tiny() -> FrozenCLIP:
    return build_tiny_clip(seed=0, dense_mode="maskclip")


@pytest.fixture(scope="module")
def tiny_tokens() -> FrozenCLIP:
    return build_tiny_clip(seed=0, dense_mode="tokens")


def _images(b=2, h=32, w=32, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 3, h, w, generator=g)


def _tokens_reference(model: FrozenCLIP, x: torch.Tensor) -> torch.Tensor:
    """Dense tokens via open_clip's own forward with output_tokens=True: Tensor[B, D, h, w] normalised."""
    v = model.visual
    v.output_tokens = True
    try:
        _, toks = v(x)  # [B, N, W] after ln_post
    finally:
        v.output_tokens = False
    d = F.normalize(toks @ v.proj, dim=-1)
    g = model.native_grid
    return d.transpose(1, 2).reshape(x.shape[0], -1, *g)


def _maskclip_reference(model: FrozenCLIP, x: torch.Tensor) -> torch.Tensor:
    """Hand-written MaskCLIP: open_clip embeds, blocks 0..L-2, then the value path of the last block."""
    v = model.visual
    t = v._embeds(x)
    for blk in v.transformer.resblocks[:-1]:
        t = blk(t)
    last = v.transformer.resblocks[-1]
    W = model.width
    y = last.ln_1(t)
    val = y @ last.attn.in_proj_weight[2 * W :].T + last.attn.in_proj_bias[2 * W :]
    val = val @ last.attn.out_proj.weight.T + last.attn.out_proj.bias
    t = t + val
    t = t + last.mlp(last.ln_2(t))
    d = F.normalize(v.ln_post(t[:, 1:]) @ v.proj, dim=-1)
    g = model.native_grid
    return d.transpose(1, 2).reshape(x.shape[0], -1, *g)


@pytest.mark.parametrize("size", [(32, 32), (48, 40)])
@pytest.mark.parametrize("mode", ["maskclip", "tokens"])
def test_shapes_and_unit_norms(tiny, tiny_tokens, size, mode):
    m = tiny if mode == "maskclip" else tiny_tokens
    out = m(_images(2, *size))
    h, w = size[0] // 8, size[1] // 8
    assert out["cls"].shape == (2, 32) and out["cls"].dtype == torch.float32
    assert out["dense"].shape == (2, 32, h, w) and out["dense"].dtype == torch.float32
    assert (out["h"], out["w"]) == (h, w)
    torch.testing.assert_close(out["cls"].norm(dim=-1), torch.ones(2))
    torch.testing.assert_close(out["dense"].norm(dim=1), torch.ones(2, h, w))
    assert torch.isfinite(out["dense"]).all()


@pytest.mark.parametrize("mode", ["maskclip", "tokens"])
def test_cls_equals_encode_image(tiny, tiny_tokens, mode):
    m = tiny if mode == "maskclip" else tiny_tokens
    x = _images()
    ref = m.model.encode_image(x, normalize=True)
    torch.testing.assert_close(m(x)["cls"], ref, atol=ATOL, rtol=0)


def test_tokens_dense_equals_open_clip_output_tokens(tiny_tokens):
    x = _images()
    torch.testing.assert_close(tiny_tokens(x)["dense"], _tokens_reference(tiny_tokens, x), atol=ATOL, rtol=0)


def test_maskclip_equals_hand_reference_and_differs_from_tokens(tiny, tiny_tokens):
    x = _images()
    dense = tiny(x)["dense"]
    torch.testing.assert_close(dense, _maskclip_reference(tiny, x), atol=ATOL, rtol=0)
    assert (dense - tiny_tokens(x)["dense"]).abs().max() > 1e-2


def test_pos_embed_interpolation_matches_open_clip_resize(tiny):
    """At 48x48 (grid 6 vs native 4) the result equals open_clip's own load-time resize_pos_embed."""
    cfg = tiny_clip_cfg()
    cfg["vision_cfg"]["image_size"] = 48
    big = open_clip.CLIP(**cfg).eval()
    sd = {k: v.clone() for k, v in tiny.model.state_dict().items()}
    open_clip.model.resize_pos_embed(sd, big)
    big.load_state_dict(sd)
    x = _images(2, 48, 48)
    torch.testing.assert_close(tiny(x)["cls"], big.encode_image(x, normalize=True), atol=ATOL, rtol=0)
    pe = tiny.positional_embedding((6, 6))
    assert pe is tiny.positional_embedding((6, 6))  # cached per grid
    torch.testing.assert_close(pe[0], tiny.visual.positional_embedding[0])  # class token untouched
    assert tiny.positional_embedding(tiny.native_grid) is tiny.visual.positional_embedding


@pytest.mark.parametrize("mode", ["bicubic", "bilinear"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_resample_pos_embed_is_the_hand_written_grid_resize(mode, dtype):
    """The one positional-embedding resampler (timm's resample_abs_pos_embed) gives bit-identical results to the
    hand-written 2-D resize the teacher (bicubic + antialias) and CLIP-ES / CLIP-RC (bilinear) used before."""
    from zss.teachers.clip import resample_pos_embed

    torch.manual_seed(0)
    pos = torch.randn(1 + 4 * 5, 8).to(dtype)
    grid = (7, 3)
    patch = pos[1:].float().reshape(1, 4, 5, -1).permute(0, 3, 1, 2)
    patch = F.interpolate(patch, size=grid, mode=mode, align_corners=False, antialias=mode == "bicubic")
    ref = torch.cat([pos[:1], patch.permute(0, 2, 3, 1).reshape(21, -1).to(dtype)], dim=0)
    out = resample_pos_embed(pos, grid, (4, 5), mode=mode)
    assert out.dtype == dtype and torch.equal(out, ref)
    assert resample_pos_embed(pos, (4, 5), (4, 5), mode=mode) is pos
    with pytest.raises(ValueError, match="mode"):
        resample_pos_embed(pos, grid, (4, 5), mode="nearest")


def test_image_size_resizes_input():
    m = build_tiny_clip(input_size=32)
    ref = build_tiny_clip()
    x = _images(1, 64, 56)
    out = m(x)
    assert (out["h"], out["w"]) == (4, 4)
    x32 = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out["dense"], ref(x32)["dense"], atol=ATOL, rtol=0)
    assert m.identity["image_size"] == [32, 32]


def test_input_normalisation_is_converted():
    half = (0.5, 0.5, 0.5)
    m_half = build_tiny_clip(input_mean=half, input_std=half)
    m_clip = build_tiny_clip()
    raw = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    x_half = (raw - 0.5) / 0.5
    x_clip = (raw - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    a, b = m_half(x_half), m_clip(x_clip)
    torch.testing.assert_close(a["cls"], b["cls"], atol=ATOL, rtol=0)
    torch.testing.assert_close(a["dense"], b["dense"], atol=ATOL, rtol=0)


def test_seed_determinism():
    a, b, c = build_tiny_clip(seed=0), build_tiny_clip(seed=0), build_tiny_clip(seed=1)
    x = _images()
    torch.testing.assert_close(a(x)["dense"], b(x)["dense"], atol=0, rtol=0)
    assert (a(x)["dense"] - c(x)["dense"]).abs().max() > 1e-3


def test_frozen_eval_and_no_grad(tiny):
    tiny.train()
    assert not tiny.training and not tiny.model.training and not tiny.visual.training
    assert all(not p.requires_grad for p in tiny.parameters())
    x = _images().requires_grad_(True)
    out = tiny(x)
    assert not out["cls"].requires_grad and not out["dense"].requires_grad
    tiny.train(True)
    assert not any(mod.training for mod in tiny.modules())


def test_run_blocks_and_project_reproduce_forward_and_pass_gradients(tiny):
    x = _images()
    with torch.no_grad():
        tok, (h, w) = tiny.embed(tiny.prepare(x))
        out = tiny.run_blocks(tok, 0, maskclip_last=True)
        dense = F.normalize(tiny.project(out[:, 1:]), dim=-1).transpose(1, 2).reshape(2, -1, h, w)
    torch.testing.assert_close(dense, tiny(x)["dense"], atol=ATOL, rtol=0)
    # the last k blocks on patch tokens only, with autograd reaching the input (Chimera-Seg's CSH)
    z = torch.randn(2, 16, tiny.width, requires_grad=True)
    y = tiny.project(tiny.run_blocks(z, start_block=-1, maskclip_last=False))
    assert y.shape == (2, 16, tiny.embed_dim)
    y.square().sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    assert all(p.grad is None for p in tiny.parameters())
    assert torch.equal(tiny.run_blocks(z.detach(), start_block=tiny.num_layers), z.detach())
    with pytest.raises(ValueError, match="start_block"):
        tiny.run_blocks(z, start_block=tiny.num_layers + 1)
    with pytest.raises(ValueError, match="maskclip_last"):
        tiny.run_blocks(z, start_block=tiny.num_layers, maskclip_last=True)


def test_text_embeddings_and_cache(tiny):
    names, tmpl = ["cat", "dog", "sofa"], ["a photo of a {}.", "a {} in the scene."]
    e = tiny.text(names, tmpl)
    assert e.shape == (3, 32) and e.dtype == torch.float32
    torch.testing.assert_close(e.norm(dim=-1), torch.ones(3))
    assert tiny.text(tuple(names), tuple(tmpl)) is e
    # reference: per-template normalised embeddings, averaged, renormalised
    tok = open_clip.SimpleTokenizer(context_length=77)
    with torch.no_grad():
        per = torch.stack([tiny.model.encode_text(tok([t.format(c) for t in tmpl]), normalize=True) for c in names])
    torch.testing.assert_close(e, F.normalize(per.mean(1), dim=-1), atol=ATOL, rtol=0)
    e1 = tiny.text(names, tmpl[:1])
    assert e1 is not e and (e1 - e).abs().max() > 1e-4
    with pytest.raises(ValueError, match="placeholder"):
        tiny.text(names, ["a photo"])


def test_load_weights_file_with_model_cfg(tiny, tmp_path):
    path = tmp_path / "tiny.pt"
    torch.save(tiny.model.state_dict(), path)
    torch.manual_seed(123)  # the freshly built random model differs before loading
    m = FrozenCLIP(model_name="tiny", model_cfg=tiny_clip_cfg(), pretrained=str(path))
    x = _images(2, 40, 40)
    a, b = m(x), tiny(x)
    torch.testing.assert_close(a["cls"], b["cls"], atol=0, rtol=0)
    torch.testing.assert_close(a["dense"], b["dense"], atol=0, rtol=0)
    assert m.identity["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert m.identity["file"] == str(path) and m.identity["pretrained"] == str(path)


def test_named_model_through_create_model(tiny, tmp_path):
    """A registered open_clip config name: random init and a local weights file via create_model."""
    cfg_dir = tmp_path / "cfgs"
    cfg_dir.mkdir()
    (cfg_dir / "zss-tiny-test-vit.json").write_text(json.dumps(tiny_clip_cfg()))
    open_clip.add_model_config(cfg_dir)
    path = tmp_path / "w.pt"
    torch.save(tiny.model.state_dict(), path)
    m = FrozenCLIP("zss-tiny-test-vit", pretrained=str(path))
    assert m.identity["source"] == "file" and m.embed_dim == 32
    x = _images()
    torch.testing.assert_close(m(x)["dense"], tiny(x)["dense"], atol=0, rtol=0)
    torch.testing.assert_close(m.text(["cat"], ["a {}."]), tiny.text(["cat"], ["a {}."]), atol=ATOL, rtol=0)
    r = FrozenCLIP("zss-tiny-test-vit", pretrained="random")
    assert r.identity["pretrained"] is None and r.identity["source"] == "random"
    with pytest.raises(ValueError, match="known tags"):
        FrozenCLIP("zss-tiny-test-vit", pretrained="not_a_tag")


def _check_offline_message(msg: str):
    assert "could not be loaded" in msg
    assert "offline" in msg
    assert "teacher.pretrained=<path to a local .pt/.bin/.safetensors file>" in msg
    assert "teacher.pretrained=random" in msg and "meaningless" in msg


def test_missing_local_weights_file(tmp_path):
    missing = str(tmp_path / "nope" / "clip.pt")
    with pytest.raises(RuntimeError) as ei:
        FrozenCLIP("ViT-B-16-quickgelu", pretrained=missing)
    assert isinstance(ei.value, TeacherWeightsNotFoundError) and isinstance(ei.value, FileNotFoundError)
    _check_offline_message(str(ei.value))
    with pytest.raises(TeacherWeightsError) as ei:
        FrozenCLIP(model_cfg=tiny_clip_cfg(), pretrained=missing)
    _check_offline_message(str(ei.value))


def test_download_failure_is_actionable(monkeypatch):
    def boom(*a, **k):
        raise OSError("simulated: network is unreachable")

    monkeypatch.setattr(open_clip.pretrained, "download_pretrained", boom)
    monkeypatch.setattr(open_clip.factory, "download_pretrained", boom)
    monkeypatch.setattr(open_clip.pretrained, "download_pretrained_from_hf", boom)
    monkeypatch.setattr(open_clip.factory, "download_pretrained_from_hf", boom)
    monkeypatch.setattr(open_clip.factory, "_get_hf_config", boom)
    with pytest.raises(RuntimeError) as ei:
        FrozenCLIP("ViT-B-16-quickgelu", pretrained="openai")
    _check_offline_message(str(ei.value))
    assert "network is unreachable" in str(ei.value)
    with pytest.raises(RuntimeError) as ei:
        FrozenCLIP(pretrained="hf-hub:nobody/no-such-clip")
    _check_offline_message(str(ei.value))


def test_unknown_model_name_lists_close_names():
    with pytest.raises(ValueError) as ei:
        FrozenCLIP("ViT-B-16-quickgelo", pretrained=None)
    msg = str(ei.value)
    assert "teacher.model_name=" in msg and "ViT-B-16-quickgelu" in msg


def test_bad_dense_mode_and_resnet_tower():
    with pytest.raises(ValueError, match="dense_mode"):
        build_tiny_clip(dense_mode="attn")
    cfg = tiny_clip_cfg()
    cfg["vision_cfg"] = {"image_size": 32, "layers": [1, 1, 1, 1], "width": 8, "head_width": 64}
    cfg["text_cfg"]["layers"] = 1
    with pytest.raises(ValueError, match="ViT visual towers only"):
        FrozenCLIP(model_cfg=cfg, pretrained=None)
