"""Colouring and overlays of segmentation maps (for TensorBoard, ``scripts/predict.py`` and docs).

Colours come from the standard PASCAL VOC bit-pattern colour map (:func:`voc_palette`). Class id ``k``
is drawn with VOC entry ``k + 1`` (:func:`color_palette`): entry 0 is black, which we reserve for
``ignore_index``/unlabelled pixels, and with ``reduce_zero_label`` VOC20 ids this gives every class its
official VOC colour (aeroplane = id 0 = VOC label 1 = (128, 0, 0)). Overlays use
``torchvision.utils.draw_segmentation_masks`` (docs/architecture.md "Trainer"); ignored pixels are left untouched.
"""

from __future__ import annotations

from typing import Sequence

import torch
from PIL import Image, ImageDraw, ImageFont
from torchvision.utils import draw_segmentation_masks

from zss.data.normalize import CLIP_MEAN, CLIP_STD  # the default statistics (exported by zss.data.normalize)
from zss.data.palette import voc_palette

__all__ = [
    "voc_palette",
    "color_palette",
    "colorize",
    "overlay",
    "denormalize",
    "overlay_with_legend",
]


def color_palette(n: int) -> torch.Tensor:
    """Colours of class ids ``0 .. n-1``: VOC colour-map entries ``1 .. n`` (no class is black).

    Args:
        n: number of classes C.

    Returns:
        ``Tensor[n, 3] uint8``; row ``k`` is the colour of class id ``k``.

    Source: not in the papers: our convention (black is reserved for ignore/unlabelled; VOC20 ids with
    ``reduce_zero_label`` keep their official VOC colours).
    """
    return voc_palette(n + 1)[1:]


def _check_label(label: torch.Tensor, fn: str) -> None:
    if not isinstance(label, torch.Tensor) or label.dim() != 2:
        shape = tuple(label.shape) if isinstance(label, torch.Tensor) else type(label).__name__
        raise ValueError(f"{fn}: label must be a Tensor[H, W] of class ids, got {shape}")
    if label.is_floating_point() or label.dtype == torch.bool:
        raise ValueError(f"{fn}: label must be an integer tensor (int64 class ids), got {label.dtype}")


def _check_ids(label: torch.Tensor, num_classes: int, ignore_index: int, fn: str) -> None:
    valid = label[label != ignore_index]
    if valid.numel():
        lo, hi = int(valid.min()), int(valid.max())
        if lo < 0 or hi >= num_classes:
            bad = lo if lo < 0 else hi
            raise ValueError(
                f"{fn}: label value {bad} is outside [0, {num_classes}) and is not ignore_index={ignore_index}; "
                "pass the benchmark's num_classes"
            )


def colorize(
    label: torch.Tensor,
    num_classes: int | None = None,
    ignore_index: int = 255,
    palette: torch.Tensor | None = None,
) -> torch.Tensor:
    """Colour a label map.

    Args:
        label: ``Tensor[H, W]`` int64 class ids, ``ignore_index`` for unlabelled pixels.
        num_classes: C (default: ``max id + 1``); ids must lie in ``[0, C)`` or equal ``ignore_index``.
        ignore_index: drawn black (default 255).
        palette: optional ``Tensor[>=C, 3] uint8`` colours per class id (default :func:`color_palette`).

    Returns:
        ``Tensor[3, H, W] uint8`` RGB image on ``label``'s device.

    Raises:
        ValueError: label not 2-D integer, ids out of range, palette too short.
    """
    _check_label(label, "colorize")
    valid = label[label != ignore_index]
    if num_classes is None:
        num_classes = int(valid.max()) + 1 if valid.numel() else 1
    _check_ids(label, num_classes, ignore_index, "colorize")
    pal = color_palette(num_classes) if palette is None else torch.as_tensor(palette, dtype=torch.uint8)
    if pal.shape[0] < num_classes or pal.dim() != 2 or pal.shape[1] != 3:
        raise ValueError(f"colorize: palette must be [>= {num_classes}, 3] uint8, got {tuple(pal.shape)}")
    lut = torch.cat([pal[:num_classes], torch.zeros(1, 3, dtype=torch.uint8)]).to(label.device)  # last = ignore
    idx = torch.where(label == ignore_index, torch.full_like(label, num_classes), label).long()
    return lut[idx].permute(2, 0, 1).contiguous()  # [3, H, W]


def overlay(
    image: torch.Tensor,
    label: torch.Tensor,
    num_classes: int,
    alpha: float = 0.5,
    ignore_index: int = 255,
    palette: torch.Tensor | None = None,
) -> torch.Tensor:
    """Blend a label map onto an image with ``torchvision.utils.draw_segmentation_masks``.

    Args:
        image: ``Tensor[3, H, W] uint8`` RGB (use :func:`denormalize` on a normalised float image).
        label: ``Tensor[H, W]`` int64 class ids, same ``H, W``; ``ignore_index`` pixels are left unpainted.
        num_classes: C; ids must lie in ``[0, C)`` or equal ``ignore_index``.
        alpha: mask opacity in ``[0, 1]`` (0 = invisible; default 0.5, not in the papers: our default).
        ignore_index: unlabelled value (default 255).
        palette: optional ``Tensor[>=C, 3] uint8`` (default :func:`color_palette`).

    Returns:
        ``Tensor[3, H, W] uint8``; pixels with ``label == ignore_index`` are bit-identical to ``image``.

    Raises:
        ValueError: wrong dtype/shape, size mismatch, ids out of range, alpha outside [0, 1].
    """
    if not isinstance(image, torch.Tensor) or image.dim() != 3 or image.shape[0] != 3 or image.dtype != torch.uint8:
        desc = (tuple(image.shape), image.dtype) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"overlay: image must be a Tensor[3, H, W] uint8, got {desc}; use denormalize() first")
    _check_label(label, "overlay")
    if tuple(label.shape) != tuple(image.shape[-2:]):
        raise ValueError(
            f"overlay: label size {tuple(label.shape)} != image size {tuple(image.shape[-2:])}; "
            "resize the prediction to the image (out_size=image.shape[-2:])"
        )
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"overlay: alpha must be in [0, 1], got {alpha}")
    _check_ids(label, num_classes, ignore_index, "overlay")
    pal = color_palette(num_classes) if palette is None else torch.as_tensor(palette, dtype=torch.uint8)
    label = label.to(image.device)
    present = [int(c) for c in torch.unique(label[label != ignore_index]).tolist()]
    if not present:
        return image.clone()
    ids = torch.tensor(present, device=image.device)
    masks = label[None] == ids[:, None, None]  # [K, H, W] bool, disjoint
    colors = [tuple(int(v) for v in pal[c].tolist()) for c in present]
    out = draw_segmentation_masks(image, masks, alpha=float(alpha), colors=colors)
    # draw_segmentation_masks blends every pixel in float and truncates; restore unpainted ones exactly.
    painted = masks.any(0)
    return torch.where(painted[None], out, image)


def denormalize(
    image: torch.Tensor,
    mean: Sequence[float] = CLIP_MEAN,
    std: Sequence[float] = CLIP_STD,
) -> torch.Tensor:
    """Undo ``Normalize(mean, std)`` and convert to uint8.

    Args:
        image: ``Tensor[3, H, W]`` or ``Tensor[B, 3, H, W]`` float, normalised.
        mean, std: per-channel values in **[0, 1] units** (default CLIP's, the SPEC default).

    Returns:
        same shape, ``uint8`` in [0, 255] (``round(clamp(x * std + mean, 0, 1) * 255)``).

    Raises:
        ValueError: not a float tensor with 3 channels at dim -3.
    """
    if (
        not isinstance(image, torch.Tensor)
        or not image.is_floating_point()
        or image.dim() not in (3, 4)
        or image.shape[-3] != 3
    ):
        desc = (tuple(image.shape), image.dtype) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"denormalize: image must be a float Tensor[(B,) 3, H, W], got {desc}")
    m = torch.as_tensor(mean, dtype=torch.float32, device=image.device).view(3, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32, device=image.device).view(3, 1, 1)
    x = image.float() * s + m
    return (x.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)


def overlay_with_legend(
    image: torch.Tensor,
    label: torch.Tensor,
    class_names: Sequence[str],
    alpha: float = 0.5,
    ignore_index: int = 255,
    palette: torch.Tensor | None = None,
    swatch: int = 12,
    padding: int = 6,
) -> Image.Image:
    """:func:`overlay` plus a legend strip on the right listing the classes present (id order).

    Args:
        image: ``Tensor[3, H, W] uint8`` RGB.
        label: ``Tensor[H, W]`` int64 class ids (``ignore_index`` unpainted).
        class_names: C names in label-id order (C = ``len(class_names)``).
        alpha, ignore_index, palette: see :func:`overlay`.
        swatch: colour-swatch side in pixels (our default 12).
        padding: margin in pixels (our default 6).

    Returns:
        ``PIL.Image`` RGB of size ``(W + legend_width, max(H, legend_height))``; the legend is on a white
        background, one row per present class (swatch + name), drawn with Pillow's default font.

    Raises:
        ValueError: see :func:`overlay`.
    """
    num_classes = len(class_names)
    pal = color_palette(num_classes) if palette is None else torch.as_tensor(palette, dtype=torch.uint8)
    blended = overlay(image, label, num_classes, alpha=alpha, ignore_index=ignore_index, palette=pal)
    present = [int(c) for c in torch.unique(label[label != ignore_index]).tolist()]
    base = Image.fromarray(blended.permute(1, 2, 0).cpu().numpy(), mode="RGB")
    W, H = base.size
    font = ImageFont.load_default()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    texts = [class_names[c] for c in present] or ["(no labelled pixel)"]
    boxes = [probe.textbbox((0, 0), t, font=font) for t in texts]
    text_h = max(max(b[3] - b[1] for b in boxes), swatch)
    text_w = max(b[2] - b[0] for b in boxes)
    row_h = text_h + padding // 2
    legend_w = padding + swatch + padding + text_w + padding
    legend_h = padding + row_h * len(texts) + padding
    canvas = Image.new("RGB", (W + legend_w, max(H, legend_h)), (255, 255, 255))
    canvas.paste(base, (0, 0))
    draw = ImageDraw.Draw(canvas)
    for row, text in enumerate(texts):
        y = padding + row * row_h
        x = W + padding
        if present:
            color = tuple(int(v) for v in pal[present[row]].tolist())
            draw.rectangle([x, y, x + swatch - 1, y + swatch - 1], fill=color, outline=(0, 0, 0))
        box = boxes[row]
        draw.text((x + swatch + padding, y - box[1]), text, fill=(0, 0, 0), font=font)
    return canvas
