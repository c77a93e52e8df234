"""Palette, colouring, overlays and legend images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from zss.data.normalize import CLIP_MEAN, CLIP_STD
from zss.engine.visualize import (
    color_palette,
    colorize,
    denormalize,
    overlay,
    overlay_with_legend,
    voc_palette,
)


def test_voc_palette_known_entries():
    pal = voc_palette(256)
    assert pal.shape == (256, 3) and pal.dtype == torch.uint8
    known = {
        0: (0, 0, 0),
        1: (128, 0, 0),
        2: (0, 128, 0),
        3: (128, 128, 0),
        4: (0, 0, 128),
        15: (192, 128, 128),
        20: (0, 64, 128),
        255: (224, 224, 192),
    }
    for i, rgb in known.items():
        assert tuple(pal[i].tolist()) == rgb, i
    assert len({tuple(c) for c in pal.tolist()}) == 256  # all distinct


def test_color_palette_and_colorize():
    cp = color_palette(20)
    assert tuple(cp[0].tolist()) == (128, 0, 0)  # VOC20 aeroplane keeps its VOC colour
    assert tuple(cp[14].tolist()) == (192, 128, 128)  # person
    assert not (cp == 0).all(1).any()  # no class is black
    label = torch.tensor([[0, 1], [255, 14]])
    img = colorize(label, num_classes=20)
    assert img.shape == (3, 2, 2) and img.dtype == torch.uint8
    assert tuple(img[:, 0, 0].tolist()) == (128, 0, 0)
    assert tuple(img[:, 0, 1].tolist()) == (0, 128, 0)
    assert tuple(img[:, 1, 0].tolist()) == (0, 0, 0)  # ignore -> black
    assert tuple(img[:, 1, 1].tolist()) == (192, 128, 128)
    with pytest.raises(ValueError, match="label value 20"):
        colorize(torch.tensor([[20]]), num_classes=20)


@pytest.mark.parametrize("alpha", [0.1, 0.35, 0.5, 0.9])  # 0.1/0.35/0.9: torchvision alone truncates x*(1-a)+x*a
def test_overlay_keeps_unlabelled_pixels(alpha):
    image = torch.arange(3 * 16 * 16).remainder(256).to(torch.uint8).reshape(3, 16, 16)  # every uint8 value
    label = torch.full((16, 16), 255, dtype=torch.int64)
    label[:8, :8] = 2
    label[8:, 8:] = 0
    out = overlay(image, label, num_classes=3, alpha=alpha)
    assert out.dtype == torch.uint8 and out.shape == image.shape
    unl = label == 255
    assert torch.equal(out[:, unl], image[:, unl])
    assert not torch.equal(out[:, ~unl], image[:, ~unl])
    # painted pixels are blended towards the class colour
    color = color_palette(3)[2].float()
    blended = image[:, :8, :8].float() * (1 - alpha) + color[:, None, None] * alpha
    assert (out[:, :8, :8].float() - blended).abs().max() <= 1.0
    assert torch.equal(overlay(image, torch.full((16, 16), 255), 3), image)
    with pytest.raises(ValueError, match="size"):
        overlay(image, label[:8], 3)
    with pytest.raises(ValueError, match="uint8"):
        overlay(image.float(), label, 3)


def test_denormalize_roundtrip():
    g = torch.Generator().manual_seed(0)
    u8 = torch.randint(0, 256, (3, 5, 7), dtype=torch.uint8, generator=g)
    mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(CLIP_STD).view(3, 1, 1)
    norm = (u8.float() / 255.0 - mean) / std
    assert torch.equal(denormalize(norm), u8)
    assert torch.equal(denormalize(norm[None].repeat(2, 1, 1, 1)), u8[None].repeat(2, 1, 1, 1))
    with pytest.raises(ValueError):
        denormalize(u8)


def test_overlay_with_legend():
    image = torch.full((3, 40, 50), 90, dtype=torch.uint8)
    label = torch.full((40, 50), 255, dtype=torch.int64)
    label[5:20, 5:20] = 1
    label[25:35, 30:45] = 3
    names = ["zero", "one", "two", "three"]
    pil = overlay_with_legend(image, label, names)
    assert isinstance(pil, Image.Image) and pil.mode == "RGB"
    assert pil.width > 50 and pil.height >= 40
    arr = np.asarray(pil)
    colours = {tuple(c) for c in arr.reshape(-1, 3).tolist()}
    pal = color_palette(4)
    assert tuple(pal[1].tolist()) in colours and tuple(pal[3].tolist()) in colours
    legend = arr[:, 50:]
    legend_colours = {tuple(c) for c in legend.reshape(-1, 3).tolist()}
    assert tuple(pal[1].tolist()) in legend_colours  # swatch of a present class
    assert tuple(pal[2].tolist()) not in legend_colours  # absent class not listed
    # the image part is the overlay
    np.testing.assert_array_equal(arr[:40, :50], overlay(image, label, 4).permute(1, 2, 0).numpy())
    # many classes: the legend grows the canvas height
    big = torch.arange(30).repeat_interleave(2)[None].repeat(4, 1)  # [4, 60], 30 classes
    tall = overlay_with_legend(torch.zeros(3, 4, 60, dtype=torch.uint8), big, [f"class{i}" for i in range(30)])
    assert tall.height > 4 and tall.width > 60
