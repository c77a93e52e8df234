"""Re-normalisation between two per-channel image normalisations (one affine map per network).

Images are normalised ONCE by the data pipeline with ``dataset.mean/std`` (the *input* normalisation).
Each network that was trained with other statistics converts them itself, inside its own module, with
the exact affine map

    x_net = (x_in * std_in + mean_in - mean_net) / std_net = x_in * scale + shift,
    scale = std_in / std_net,  shift = (mean_in - mean_net) / std_net        (per RGB channel)

so the teacher (FrozenCLIP: CLIP's statistics) and the student (a pretrained timm backbone: its
``pretrained_cfg`` statistics, e.g. ImageNet's) each see what they were trained on, whatever
``dataset.mean/std`` says. Padding added in the input space (value 0 = ``mean_in``) becomes ``shift``,
i.e. the same colour. Source: not in the papers; ours (the standard torchvision ``Normalize`` algebra).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from torch import Tensor, nn

__all__ = ["CLIP_MEAN", "CLIP_STD", "check_stats", "renormalize_affine", "Renormalize"]

#: OpenAI CLIP input mean, RGB, [0, 1] units (open_clip ``OPENAI_DATASET_MEAN``); the default ``dataset.mean``.
CLIP_MEAN: tuple[float, float, float] = tuple(float(v) for v in OPENAI_DATASET_MEAN)
#: OpenAI CLIP input std, RGB, [0, 1] units (open_clip ``OPENAI_DATASET_STD``); the default ``dataset.std``.
CLIP_STD: tuple[float, float, float] = tuple(float(v) for v in OPENAI_DATASET_STD)


def check_stats(values: Sequence[float], name: str, positive: bool = False) -> tuple[float, float, float]:
    """Validate one RGB statistic (a mean or a std, [0, 1] units) and return it as a float 3-tuple.

    Args:
        values: 3 numbers (R, G, B). name: what they are, for the error (e.g. ``"dataset.std"``).
        positive: require every value > 0 (stds).

    Raises:
        ValueError: not 3 finite numbers, or a non-positive std; the message names ``name`` and the values.
    """
    try:
        out = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be 3 numbers (RGB, [0, 1] units), got {values!r}") from None
    if len(out) != 3 or not all(math.isfinite(v) for v in out):
        raise ValueError(f"{name} must be 3 finite numbers (RGB, [0, 1] units), got {values!r}")
    if positive and min(out) <= 0:
        raise ValueError(f"{name} must be > 0 per channel (a std), got {values!r}")
    return out  # type: ignore[return-value]


def renormalize_affine(
    in_mean: Sequence[float],
    in_std: Sequence[float],
    out_mean: Sequence[float],
    out_std: Sequence[float],
) -> tuple[Tensor, Tensor]:
    """``(scale, shift)`` such that ``x_out = x_in * scale + shift`` (see the module docstring).

    Args:
        in_mean, in_std: the normalisation the images carry (RGB, [0, 1] units).
        out_mean, out_std: the normalisation the network expects (RGB, [0, 1] units).

    Returns:
        ``(scale, shift)``, each ``Tensor[1, 3, 1, 1] float32`` (broadcast over ``Tensor[B, 3, H, W]``).

    Raises:
        ValueError: a statistic that is not 3 finite numbers, or a std <= 0.
    """
    im = torch.tensor(check_stats(in_mean, "input mean"), dtype=torch.float64)
    is_ = torch.tensor(check_stats(in_std, "input std", positive=True), dtype=torch.float64)
    om = torch.tensor(check_stats(out_mean, "target mean"), dtype=torch.float64)
    os_ = torch.tensor(check_stats(out_std, "target std", positive=True), dtype=torch.float64)
    scale = (is_ / os_).float().view(1, 3, 1, 1)
    shift = ((im - om) / os_).float().view(1, 3, 1, 1)
    return scale, shift


class Renormalize(nn.Module):
    """``x -> x * scale + shift`` from the input normalisation to a network's own (non-persistent buffers).

    Args:
        in_mean, in_std: normalisation of the incoming images (RGB, [0, 1] units).
        out_mean, out_std: normalisation the wrapped network was trained with (RGB, [0, 1] units).

    Attributes:
        identity (bool): True when both normalisations are equal; ``forward`` then returns its input
            unchanged (bit-exact, no op).
        in_mean, in_std, out_mean, out_std (tuple[float, float, float]).

    Raises:
        ValueError: see :func:`renormalize_affine`.
    """

    def __init__(
        self, in_mean: Sequence[float], in_std: Sequence[float], out_mean: Sequence[float], out_std: Sequence[float]
    ) -> None:
        super().__init__()
        scale, shift = renormalize_affine(in_mean, in_std, out_mean, out_std)
        self.in_mean, self.in_std = check_stats(in_mean, "input mean"), check_stats(in_std, "input std")
        self.out_mean, self.out_std = check_stats(out_mean, "target mean"), check_stats(out_std, "target std")
        self.identity = self.in_mean == self.out_mean and self.in_std == self.out_std
        self.register_buffer("scale", scale, persistent=False)
        self.register_buffer("shift", shift, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        """``Tensor[B, 3, H, W]`` float in the input normalisation -> the same in the target normalisation.

        The affine map runs in ``x``'s dtype when it is floating (float32 images under autocast stay float32).

        Raises:
            ValueError: ``x`` is not ``[B, 3, H, W]``.
        """
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"Renormalize: images must be Tensor[B, 3, H, W], got shape {tuple(x.shape)}")
        if self.identity:
            return x
        return x * self.scale.to(x.dtype) + self.shift.to(x.dtype)

    def extra_repr(self) -> str:
        if self.identity:
            return "identity"
        return f"in=({self.in_mean}, {self.in_std}) -> out=({self.out_mean}, {self.out_std})"
