"""The PASCAL VOC colour map: the palette of label PNGs (VOC's own, the synthetic world's, CLIP-ES masks)."""

from __future__ import annotations

import torch


def voc_palette(n: int = 256) -> torch.Tensor:
    """The standard PASCAL VOC bit-pattern colour map (the palette of VOC's label PNGs).

    Entry ``i`` spreads the bits of ``i`` over the high bits of R, G, B (bit 0 -> R, 1 -> G, 2 -> B, ...).
    Entry 0 is black, 1 = (128, 0, 0), 2 = (0, 128, 0), 15 = (192, 128, 128), 255 = (224, 224, 192).
    Works for ``n > 256`` (unique colours up to 2**24).

    Args:
        n: number of entries.

    Returns:
        ``Tensor[n, 3] uint8``.

    Source: the VOC devkit ``VOClabelcolormap.m``.
    """
    if n < 0:
        raise ValueError(f"voc_palette: n must be >= 0, got {n}")
    rows = []
    for i in range(n):
        r = g = b = 0
        c = i
        j = 0
        while c:
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
            j += 1
            if j == 8:  # beyond 2**24 the pattern would wrap; keep it a valid 8-bit colour
                break
        rows.append((r, g, b))
    return torch.tensor(rows, dtype=torch.uint8).reshape(n, 3)
