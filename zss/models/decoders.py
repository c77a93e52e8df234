"""Dense decoders for the student: DeepLabV3+-style ASPP head and SegFormer-style all-MLP head.

Both decoders take the backbone's feature list (timm ``features_only``) and return one feature map
``Tensor[B, channels, H/s, W/s] float32`` at the decoder's ``output_stride`` s. Channel counts and strides
come from timm's ``feature_info`` (``in_channels=feature_info.channels()``,
``in_strides=feature_info.reduction()``) and are never hard-coded (docs/architecture.md "Student").

Which levels are used, and at which stride (``plan_levels``; not in the papers: our default):

* Multi-scale backbones (CNNs, e.g. ResNet strides 2/4/8/16/32): levels finer than ``min_stride``
  (default 4, e.g. a ResNet stem at stride 2) are dropped; the output stride is the finest remaining
  stride (4 for a standard CNN; coarser if ``out_indices`` drops the stride-4 level).
* Single-scale backbones (all levels at one stride s > ``min_stride``, e.g. plain ViTs at s=16): a simple
  feature pyramid in the spirit of ViTDet / DPT is built by learned 2x2 stride-2 transposed convolutions
  (each followed by BatchNorm+ReLU and halving the channels). The first (shallowest) level is
  upsampled to ``s / 2**k0`` with ``k0 = floor(log2(s / min_stride))`` (4 for s=16), the last (deepest)
  level stays at s, and level i in between is upsampled by ``2**min(k0, n-1-i)``. With 3 ViT levels at
  stride 16 this gives strides 4/8/16; with one level the map is upsampled to stride 4 (and, for ASPP,
  also used as-is at stride 16). The pyramid layers belong to the decoder (head learning rate).

Every parameter a decoder owns takes part in its forward pass (no unused parameters under DDP).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ASPPDecoder", "MLPDecoder", "ConvBNReLU", "LevelUpsampler", "plan_levels", "build_decoder"]


def _as_stride(x: float) -> int | float:
    """Return ``x`` as an int when it is integral (strides are usually integers)."""
    return int(x) if float(x).is_integer() else float(x)


def plan_levels(in_strides: Sequence[int], min_stride: int = 4) -> list[tuple[int, int]]:
    """Choose the feature levels a decoder uses and how many x2 upsampling steps each one gets.

    Args:
        in_strides: stride (pixels of input per feature pixel, timm ``feature_info.reduction()``) of each
            backbone level, shallow to deep.
        min_stride: finest stride the decoder works at (pixels). Not in the papers: our default 4.

    Returns:
        list of ``(level_index, num_upsample_steps)``; the level's working stride is
        ``in_strides[level_index] / 2**num_upsample_steps``. Multi-scale backbones: levels with stride
        >= ``min_stride``, 0 steps each. Single-scale backbones (all strides equal to s > ``min_stride``):
        every level, steps as described in the module docstring.

    Raises:
        ValueError: if ``in_strides`` is empty, or every level is finer than ``min_stride``.
    """
    strides = [float(s) for s in in_strides]
    if not strides:
        raise ValueError("plan_levels: in_strides is empty; the backbone returned no feature levels")
    if min_stride <= 0:
        raise ValueError(f"plan_levels: min_stride must be > 0, got {min_stride}")
    n = len(strides)
    s = strides[0]
    if all(x == s for x in strides) and s > min_stride:
        k0 = max(0, int(math.floor(math.log2(s / min_stride) + 1e-9)))
        plan = [(0, k0)]
        plan += [(i, min(k0, n - 1 - i)) for i in range(1, n)]
        return plan
    plan = [(i, 0) for i, x in enumerate(strides) if x >= min_stride]
    if not plan:
        raise ValueError(
            f"plan_levels: all feature strides {list(in_strides)} are finer than min_stride={min_stride}; "
            "choose backbone out_indices that include a level at stride >= min_stride or lower min_stride"
        )
    return plan


class ConvBNReLU(nn.Sequential):
    """Conv2d (no bias) + BatchNorm2d + ReLU. ``Tensor[B, cin, H, W] -> Tensor[B, cout, H', W']`` float32."""

    def __init__(self, cin: int, cout: int, kernel_size: int = 1, dilation: int = 1, stride: int = 1):
        padding = dilation * (kernel_size - 1) // 2
        super().__init__(
            nn.Conv2d(cin, cout, kernel_size, stride=stride, padding=padding, dilation=dilation, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )


class LevelUpsampler(nn.Module):
    """Learned x2**steps upsampling of one feature level (ViTDet/DPT-style simple feature pyramid).

    Each step: ``ConvTranspose2d(k=2, s=2)`` halving the channels (at least 1) + BatchNorm2d + ReLU.
    ``steps=0`` is the identity. ``Tensor[B, C, h, w] -> Tensor[B, out_channels, h*2**steps, w*2**steps]``.
    Source: ViTDet (Li et al. 2022) simple feature pyramid; BN+ReLU and channel halving are our default.
    """

    def __init__(self, in_channels: int, steps: int):
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for _ in range(steps):
            cout = max(1, c // 2)
            layers += [
                nn.ConvTranspose2d(c, cout, 2, stride=2, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
            ]
            c = cout
        self.steps = steps
        self.out_channels = c
        self.body = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


def _resize(x: Tensor, size: Sequence[int]) -> Tensor:
    """Bilinear resize (align_corners=False) to ``size`` (h, w); no-op if already that size."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


class _Decoder(nn.Module):
    """Common bookkeeping: input channels/strides and the level plan."""

    def __init__(self, in_channels: Sequence[int], in_strides: Sequence[int], min_stride: int):
        super().__init__()
        in_channels = [int(c) for c in in_channels]
        in_strides = [int(s) if float(s).is_integer() else float(s) for s in in_strides]
        if len(in_channels) != len(in_strides) or not in_channels:
            raise ValueError(
                f"{type(self).__name__}: in_channels {in_channels} and in_strides {in_strides} must be "
                "non-empty lists of the same length (use the backbone's feature_info.channels()/reduction())"
            )
        self.in_channels = in_channels
        self.in_strides = in_strides
        self.min_stride = min_stride
        self.plan = plan_levels(in_strides, min_stride)

    def _check(self, features: Sequence[Tensor]) -> None:
        if len(features) != len(self.in_channels):
            raise ValueError(
                f"{type(self).__name__}: expected {len(self.in_channels)} feature maps "
                f"(channels {self.in_channels}), got {len(features)}"
            )


class ASPPDecoder(_Decoder):
    """DeepLabV3+-style decoder: ASPP on the coarsest level + a reduced low-level (finest) feature.

    ASPP (DeepLabV3, Chen et al. 2017): parallel 1x1 conv, three 3x3 atrous convs (``dilations``) and image
    pooling (global average pool -> 1x1 conv -> broadcast), concatenated and projected by a 1x1 conv to
    ``channels``. Decoder (DeepLabV3+, Chen et al. 2018): the ASPP output is bilinearly upsampled to the
    low-level map, which is reduced by a 1x1 conv to ``low_channels`` (48); concat; two 3x3 convs to
    ``channels``. All convs are conv+BatchNorm+ReLU, except the image-pooling branch which is conv(bias)+ReLU
    without BatchNorm (not in the paper: our choice, BatchNorm on a 1x1 pooled map fails in training with a
    per-device batch of 1).

    Levels (see module docstring): ASPP runs on the deepest level at its native stride; the low-level
    feature is the finest planned level (stride 4 for ResNets; for single-scale ViTs the first level
    upsampled by a learned pyramid step to stride 4). Note the default dilations (6, 12, 18) are the
    DeepLabV3+ values for an output-stride-16 backbone; for a stride-32 coarsest map consider (3, 6, 9) or a
    dilated backbone (``Student(backbone_output_stride=16)``, config key ``model.backbone_output_stride``).

    Args:
        in_channels: channels per backbone level (timm ``feature_info.channels()``).
        in_strides: stride in pixels per backbone level (timm ``feature_info.reduction()``).
        channels: ASPP and decoder width. DeepLabV3+: 256.
        dilations: atrous rates of the three 3x3 branches (DeepLabV3+: (6, 12, 18) at output stride 16).
        low_channels: width of the reduced low-level feature (DeepLabV3+: 48).
        dropout: dropout probability on the output (not in the paper: our default 0.1, as mmseg heads).
        min_stride: finest working stride in pixels (our default 4).

    Shapes: ``forward(features: list[Tensor[B, in_channels[i], H/in_strides[i], W/in_strides[i]]])
    -> Tensor[B, channels, H/output_stride, W/output_stride] float32``.

    Raises:
        ValueError: inconsistent ``in_channels``/``in_strides``, or the wrong number of feature maps.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        in_strides: Sequence[int],
        channels: int = 256,
        dilations: Sequence[int] = (6, 12, 18),
        low_channels: int = 48,
        dropout: float = 0.1,
        min_stride: int = 4,
    ):
        super().__init__(in_channels, in_strides, min_stride)
        self.channels = channels
        self.dilations = tuple(int(d) for d in dilations)
        # deepest level (the last one of those with the coarsest stride), used at its native stride
        coarsest = max(self.in_strides)
        self.high_index = max(i for i, s in enumerate(self.in_strides) if s == coarsest)
        # low-level: the finest planned level, possibly upsampled by a pyramid step
        self.low_index, low_steps = min(self.plan, key=lambda p: (self.in_strides[p[0]] / 2 ** p[1], p[0]))
        self.low_up = LevelUpsampler(self.in_channels[self.low_index], low_steps)
        self.output_stride = _as_stride(self.in_strides[self.low_index] / 2**low_steps)

        cin = self.in_channels[self.high_index]
        self.aspp = nn.ModuleList(
            [ConvBNReLU(cin, channels, 1)] + [ConvBNReLU(cin, channels, 3, dilation=d) for d in self.dilations]
        )
        self.image_pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(cin, channels, 1), nn.ReLU(inplace=True))
        self.aspp_proj = ConvBNReLU(channels * (len(self.dilations) + 2), channels, 1)
        self.low_reduce = ConvBNReLU(self.low_up.out_channels, low_channels, 1)
        self.fuse = nn.Sequential(ConvBNReLU(channels + low_channels, channels, 3), ConvBNReLU(channels, channels, 3))
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        self._check(features)
        x = features[self.high_index]  # [B, Cin, h, w]
        branches = [b(x) for b in self.aspp]
        branches.append(self.image_pool(x).expand(-1, -1, *x.shape[-2:]))
        x = self.aspp_proj(torch.cat(branches, dim=1))  # [B, C, h, w]
        low = self.low_reduce(self.low_up(features[self.low_index]))  # [B, 48, H/4, W/4]
        x = _resize(x, low.shape[-2:])
        x = self.fuse(torch.cat([x, low], dim=1))  # [B, C, H/4, W/4]
        return self.dropout(x)


class MLPDecoder(_Decoder):
    """SegFormer-style all-MLP decoder (Xie et al. 2021).

    Per planned level: (optional learned pyramid upsampling for single-scale backbones, see module
    docstring) -> 1x1 conv ("linear") to ``channels`` -> bilinear upsample to the finest planned stride;
    concat over levels -> 1x1 conv + BatchNorm + ReLU fuse to ``channels`` -> dropout.

    Args:
        in_channels: channels per backbone level (timm ``feature_info.channels()``).
        in_strides: stride in pixels per backbone level (timm ``feature_info.reduction()``).
        channels: embedding width (SegFormer: 256 for B0, 768 for B1+; our default 256).
        dropout: dropout probability on the output (SegFormer: 0.1).
        min_stride: finest working stride in pixels (our default 4).

    Shapes: ``forward(features) -> Tensor[B, channels, H/output_stride, W/output_stride] float32``.

    Raises:
        ValueError: inconsistent ``in_channels``/``in_strides``, or the wrong number of feature maps.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        in_strides: Sequence[int],
        channels: int = 256,
        dropout: float = 0.1,
        min_stride: int = 4,
    ):
        super().__init__(in_channels, in_strides, min_stride)
        self.channels = channels
        self.levels = [i for i, _ in self.plan]
        self.ups = nn.ModuleList([LevelUpsampler(self.in_channels[i], k) for i, k in self.plan])
        self.linears = nn.ModuleList([nn.Conv2d(up.out_channels, channels, 1) for up in self.ups])
        self.fuse = ConvBNReLU(channels * len(self.plan), channels, 1)
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.output_stride = _as_stride(min(self.in_strides[i] / 2**k for i, k in self.plan))

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        self._check(features)
        xs = [lin(up(features[i])) for i, up, lin in zip(self.levels, self.ups, self.linears)]
        size = max((x.shape[-2:] for x in xs), key=lambda hw: hw[0] * hw[1])  # finest map
        x = torch.cat([_resize(x, size) for x in xs], dim=1)  # [B, C*L, H/4, W/4]
        return self.dropout(self.fuse(x))


DECODERS = {"aspp": ASPPDecoder, "mlp": MLPDecoder}


def build_decoder(
    name: str, in_channels: Sequence[int], in_strides: Sequence[int], channels: int = 256, **kwargs
) -> _Decoder:
    """Build a decoder by name: ``"aspp"`` (:class:`ASPPDecoder`) or ``"mlp"`` (:class:`MLPDecoder`).

    Raises:
        ValueError: unknown ``name`` (message lists the valid names and the config key ``model.decoder``).
    """
    if name not in DECODERS:
        raise ValueError(f"Unknown decoder {name!r}; valid: {sorted(DECODERS)} (set model.decoder=aspp|mlp)")
    return DECODERS[name](in_channels, in_strides, channels=channels, **kwargs)
