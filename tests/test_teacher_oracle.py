"""OracleTeacher: label-derived stand-in for CLIP (shapes, exact mixes at noise 0, unseen classes, seeds)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from zss.teachers import ORACLE_WARNING, OracleTeacher

NAMES = ("cat", "dog", "sofa", "train")  # pretend sofa/train are unseen
N_NAMES = len(NAMES)


def _label(b=2, h=32, w=48, seed=0, n=N_NAMES):
    g = torch.Generator().manual_seed(seed)
    lab = torch.randint(0, n, (b, h, w), generator=g)
    lab[:, :3, :5] = 255
    return lab


def _reference_dense(t: OracleTeacher, lab: torch.Tensor) -> torch.Tensor:
    """one_hot + avg_pool2d reference of the noise-free mix: Tensor[B, D, h, w] normalised."""
    C = t.num_classes
    m = lab.clone()
    m[m == 255] = C
    oh = F.one_hot(m, C + 1).permute(0, 3, 1, 2).float()  # [B, C+1, H, W]
    frac = F.avg_pool2d(oh, t.patch_size)  # [B, C+1, h, w]
    return F.normalize(torch.einsum("bkhw,kd->bdhw", frac, t.class_embeds), dim=1)


def test_shapes_norms_and_reference():
    t = OracleTeacher(NAMES, embed_dim=16, patch_size=8, noise=0.0)
    lab = _label()
    out = t(torch.zeros(2, 3, 32, 48), lab)
    assert out["dense"].shape == (2, 16, 4, 6) and (out["h"], out["w"]) == (4, 6)
    assert out["cls"].shape == (2, 16) and out["cls"].dtype == torch.float32
    torch.testing.assert_close(out["dense"].norm(dim=1), torch.ones(2, 4, 6))
    torch.testing.assert_close(out["cls"].norm(dim=-1), torch.ones(2))
    torch.testing.assert_close(out["dense"], _reference_dense(t, lab), atol=1e-6, rtol=0)
    # cls: area-weighted mix over the whole image
    m = lab.clone()
    m[m == 255] = 4
    frac = F.one_hot(m, 5).float().mean(dim=(1, 2))
    torch.testing.assert_close(out["cls"], F.normalize(frac @ t.class_embeds, dim=-1), atol=1e-6, rtol=0)
    noisy = OracleTeacher(NAMES, embed_dim=16, patch_size=8, noise=0.1)(None, lab)
    torch.testing.assert_close(noisy["dense"].norm(dim=1), torch.ones(2, 4, 6))


def test_pure_patch_matches_text_and_unseen_present():
    t = OracleTeacher(NAMES, embed_dim=32, patch_size=4, noise=0.0)
    lab = torch.zeros(1, 8, 8, dtype=torch.long)
    lab[:, :4, :4] = 3  # "train" (unseen) fills patch (0, 0)
    lab[:, 4:, 4:] = 255  # ignored patch (1, 1) -> background vector
    lab[:, :4, 4:6] = 1  # patch (0, 1): half dog, half cat
    d = t(None, lab)["dense"][0]  # [D, 2, 2]
    text = t.text(["cat", "dog", "train"], ["a photo of a {}."])
    assert torch.dot(d[:, 0, 0], text[2]) > 0.999  # the unseen class is in the dense tokens
    assert torch.dot(d[:, 1, 0], text[0]) > 0.999
    torch.testing.assert_close(d[:, 0, 1], F.normalize(text[0] + text[1], dim=0), atol=1e-6, rtol=0)
    torch.testing.assert_close(d[:, 1, 1], t.class_embeds[t.num_classes], atol=1e-6, rtol=0)
    # with noise the cosine stays high but not exact
    n = OracleTeacher(NAMES, embed_dim=32, patch_size=4, noise=0.05)(None, lab)["dense"][0]
    assert 0.8 < torch.dot(n[:, 0, 0], text[2]) < 0.9999


def test_determinism_and_noise_stream():
    lab = _label()
    a, b = OracleTeacher(NAMES, patch_size=8, seed=3), OracleTeacher(NAMES, patch_size=8, seed=3)
    c = OracleTeacher(NAMES, patch_size=8, seed=4)
    assert torch.equal(a.text(NAMES), b.text(NAMES)) and not torch.equal(a.text(NAMES), c.text(NAMES))
    a1, b1 = a(None, lab), b(None, lab)
    assert torch.equal(a1["dense"], b1["dense"]) and torch.equal(a1["cls"], b1["cls"])
    a2 = a(None, lab)  # next draw of the noise stream differs ...
    assert not torch.equal(a1["dense"], a2["dense"])
    a.reset_noise()  # ... and restarting the stream reproduces the first call
    assert torch.equal(a(None, lab)["dense"], a1["dense"])


def test_text_errors_and_identity():
    t = OracleTeacher(NAMES, embed_dim=8, patch_size=4)
    e = t.text(["sofa", "cat"], [])
    assert e.shape == (2, 8)
    torch.testing.assert_close(e.norm(dim=-1), torch.ones(2))
    # vectors are per NAME: the same in any vocabulary, so checkpoints can be evaluated across datasets
    other = OracleTeacher(["zebra", "cat"], embed_dim=8, patch_size=4)
    torch.testing.assert_close(t.text(["cat", "zebra"]), other.text(["cat", "zebra"]))
    torch.testing.assert_close(t.text(["cat"]), t.class_embeds[NAMES.index("cat")][None])
    assert not torch.allclose(t.text(["zebra"]), t.text(["cat"]))
    assert t.identity["kind"] == "oracle" and t.identity["warning"] == ORACLE_WARNING
    assert "NOT zero-shot results" in ORACLE_WARNING
    assert (t.embed_dim, t.patch_size) == (8, 4)
    t.train()
    assert not t.training


def test_bad_inputs_and_no_background():
    t = OracleTeacher(NAMES, embed_dim=8, patch_size=4, noise=0.0, background=False)
    with pytest.raises(ValueError, match="full_label"):
        t(torch.zeros(1, 3, 8, 8), None)
    with pytest.raises(ValueError, match="outside"):
        t(None, torch.full((1, 8, 8), 7, dtype=torch.long))
    lab = torch.full((1, 8, 8), 255, dtype=torch.long)
    lab[:, :4, :4] = 2
    out = t(None, lab)["dense"][0]
    assert out[:, 1, 1].abs().sum() == 0  # fully ignored patch contributes nothing
    torch.testing.assert_close(out[:, 0, 0], t.class_embeds[2])
