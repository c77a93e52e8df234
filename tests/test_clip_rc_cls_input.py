"""The CLS input of the CLIP-RC / ZegCLIP encoder: by default the public code's (class embedding counted
twice), checked against a transcription of the public encoder forward; ``cls_input="clip"`` is open_clip's."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from zss.teachers.clip import build_tiny_clip
from zss.teachers.prompted import PromptedCLIPEncoder


def _public_forward(visual, x):
    """Transcription of the public ZegCLIP / CLIP-RC image-encoder forward without prompts and region tokens
    (VPTCLIPVisionTransformer / img_encoder_rlb): conv1, CLS slot = class_embedding, positions
    ``[pos[0] + class_embedding, bilinear(pos[1:])]`` added, ln_pre, the blocks, ln_post, proj; L2-normalised."""
    x = visual.conv1(x)
    B, C, H, W = x.shape
    x = x.reshape(B, C, -1).permute(0, 2, 1)
    x = torch.cat([visual.class_embedding.to(x.dtype) + torch.zeros(B, 1, C, dtype=x.dtype), x], dim=1)
    pos = visual.positional_embedding.to(x.dtype)
    cls_pos = pos[0, :] + visual.class_embedding.to(x.dtype)
    g = int((pos.shape[0] - 1) ** 0.5)
    spatial = F.interpolate(pos[1:].reshape(1, g, g, C).permute(0, 3, 1, 2), size=(H, W), mode="bilinear")
    spatial = spatial.reshape(1, C, H * W).permute(0, 2, 1)
    x = x + torch.cat([cls_pos.reshape(1, 1, C), spatial], dim=1)
    x = visual.ln_pre(x)
    for blk in visual.transformer.resblocks:
        x = blk(x)
    x = visual.ln_post(x) @ visual.proj
    return F.normalize(x[:, 0], dim=-1), F.normalize(x[:, 1:], dim=-1).transpose(1, 2).reshape(B, -1, H, W)


@pytest.mark.parametrize("hw", [(64, 64), (48, 80)])
def test_public_cls_input_matches_the_public_forward(hw):
    clip = build_tiny_clip(embed_dim=32, image_size=64, patch_size=8, width=64, layers=2, heads=2, seed=0)
    assert getattr(clip.visual.transformer, "batch_first", True)
    enc = PromptedCLIPEncoder(clip, num_prompts=0, region_grid=0).eval()
    assert enc.cls_input == "public"
    x = torch.randn(2, 3, *hw, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = enc(x)
        ref_cls, ref_dense = _public_forward(clip.visual, enc.prepare(x))
    torch.testing.assert_close(out["cls"], ref_cls, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out["dense"], ref_dense, atol=1e-5, rtol=1e-5)
    other = PromptedCLIPEncoder(clip, num_prompts=0, region_grid=0, cls_input="clip").eval()
    with torch.no_grad():
        assert not torch.allclose(other(x)["cls"], ref_cls, atol=1e-3)  # the switch changes what CLS sees


def test_region_tokens_start_at_cls_pos_and_bad_switch_is_refused():
    clip = build_tiny_clip(embed_dim=32, image_size=64, patch_size=16, width=32, layers=1, heads=2, seed=0)
    enc = PromptedCLIPEncoder(clip, num_prompts=2, region_grid=4)
    v = clip.visual
    torch.testing.assert_close(enc.region_tokens[0], v.class_embedding + v.positional_embedding[0])
    with pytest.raises(ValueError, match="method.cls_input"):
        PromptedCLIPEncoder(clip, cls_input="twice")


def test_shipped_configs_use_the_public_cls_input():
    from pathlib import Path

    from hydra import compose, initialize_config_dir

    from zss.methods.clip_rc import ClipRC

    configs = Path(__file__).resolve().parents[1] / "configs"
    with initialize_config_dir(config_dir=str(configs), version_base="1.3"):
        for m in ("clip_rc", "zegclip"):
            assert compose(config_name="train", overrides=[f"experiment=voc20_{m}"]).method.cls_input == "public"
    assert ClipRC.flat_defaults()["cls_input"] == "public"
