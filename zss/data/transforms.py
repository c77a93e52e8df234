"""Joint image/label transforms on ``torchvision.transforms.v2`` + ``tv_tensors``.

Inputs are ``(tv_tensors.Image uint8 [3, H, W], tv_tensors.Mask int64 [H, W] label,
tv_tensors.Mask int64 [H, W] full_label)``; every geometric op is applied identically to both masks
(v2 samples parameters once per call). Masks are only ever resized with nearest neighbour, stay int64
and are padded with ``ignore_index``.

torchvision already does flip / pad / dtype / normalise; the three mmseg ops it lacks are written here
(docs/protocol.md "Pipeline"):

- ``KeepRatioRescale``: mmcv's keep-ratio rescale with a random ratio (mmseg ``Resize(ratio_range=...)``).
- ``RandomCropCatMax``: mmseg ``RandomCrop(cat_max_ratio=...)``.
- ``PhotoMetricDistortion``: mmseg ``PhotoMetricDistortion``.

Custom transforms use the torchvision >= 0.21 public hooks ``make_params(flat_inputs)`` and
``transform(inpt, params)``.
"""

from __future__ import annotations

from typing import Any, Sequence

import PIL.Image
import torch
from timm.layers import to_2tuple
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from zss.data.normalize import CLIP_MEAN, CLIP_STD  # the default statistics (exported by zss.data.normalize)

__all__ = [
    "as_pair",
    "keep_ratio_size",
    "KeepRatioRescale",
    "RandomCropCatMax",
    "PhotoMetricDistortion",
    "PadToSize",
    "build_train_transform",
    "build_test_transform",
]


def as_pair(value: int | Sequence[int], name: str, *, positive: bool = False) -> tuple[int, int]:
    """``(h, w)`` from an int or a pair of ints (timm's ``to_2tuple``), checked.

    Args:
        value: ``s`` (-> ``(s, s)``) or ``(h, w)``, e.g. a crop, stride or image size in pixels.
        name: the key or argument the value came from, for the error message.
        positive: also require both values to be > 0.
    Returns:
        ``(int, int)``.
    Raises:
        ValueError: not one or two integers (or not positive with ``positive``), naming ``name``.

    Source: not in the papers: our helper.
    """
    try:
        out = tuple(int(v) for v in to_2tuple(value))
    except (TypeError, ValueError):
        out = ()
    if len(out) != 2 or (positive and min(out) <= 0):
        what = "a positive int or an (h, w) pair of positive ints" if positive else "an int or an (h, w) pair of ints"
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return out  # type: ignore[return-value]


def keep_ratio_size(h: int, w: int, scale: Sequence[float]) -> tuple[int, int]:
    """mmcv ``rescale_size`` keep-ratio rule.

    ``factor = min(max(scale) / max(h, w), min(scale) / min(h, w))``;
    new size = ``(int(h * factor + 0.5), int(w * factor + 0.5))``.

    Args:
        h, w: input size in pixels.
        scale: (long edge, short edge) bound in pixels, order irrelevant, e.g. (2048, 512).

    Returns:
        (new_h, new_w) in pixels.

    Source: mmcv ``rescale_size`` / ``imrescale`` (docs/protocol.md "Pipeline" [protocol]).
    """
    long_edge, short_edge = max(scale), min(scale)
    factor = min(long_edge / max(h, w), short_edge / min(h, w))
    return int(h * factor + 0.5), int(w * factor + 0.5)


class KeepRatioRescale(v2.Transform):
    """Keep-ratio resize with an optional random ratio (mmseg ``Resize(img_scale, ratio_range, keep_ratio=True)``).

    Per call: ``ratio ~ U[ratio_range)`` (1 if ``ratio_range`` is None), target
    ``(int(scale[0] * ratio), int(scale[1] * ratio))``, output size ``keep_ratio_size(h, w, target)``.
    Images: bilinear (``antialias`` False by default, like mmcv's cv2 INTER_LINEAR); masks: nearest
    (int64 kept). All inputs of one call get the same size.

    Args:
        scale: (long, short) edge bound in pixels, default (2048, 512) [protocol].
        ratio_range: (min, max) ratio, default (0.5, 2.0) [protocol]; None = no randomness (test time).
        antialias: antialias images when downsampling. Not in mmseg: our key, default False to match it.
        resize_masks: if False, ``tv_tensors.Mask`` inputs pass through untouched (test time: labels stay
            at the original size, logits are resized to them).

    Shapes: Image ``[..., 3, H, W]`` any dtype -> ``[..., 3, H', W']``; Mask ``[..., H, W]`` -> ``[..., H', W']``.
    Raises: ValueError for a bad ``scale`` / ``ratio_range``.
    """

    def __init__(
        self,
        scale: Sequence[int] = (2048, 512),
        ratio_range: Sequence[float] | None = (0.5, 2.0),
        antialias: bool = False,
        resize_masks: bool = True,
    ) -> None:
        super().__init__()
        self.scale = as_pair(scale, "scale")
        if min(self.scale) <= 0:
            raise ValueError(f"scale must be positive, got {scale!r}.")
        if ratio_range is not None:
            lo, hi = float(ratio_range[0]), float(ratio_range[1])
            if not 0 < lo <= hi:
                raise ValueError(f"ratio_range must satisfy 0 < min <= max, got {ratio_range!r}.")
            ratio_range = (lo, hi)
        self.ratio_range = ratio_range
        self.antialias = antialias
        self.resize_masks = resize_masks

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        h, w = v2.query_size(flat_inputs)
        if self.ratio_range is None:
            ratio = 1.0
        else:
            lo, hi = self.ratio_range
            ratio = lo + float(torch.rand(())) * (hi - lo)
        target = (int(self.scale[0] * ratio), int(self.scale[1] * ratio))
        return dict(size=list(keep_ratio_size(h, w, target)), ratio=ratio)

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, tv_tensors.Mask):
            if not self.resize_masks:
                return inpt
            return self._call_kernel(F.resize, inpt, params["size"], interpolation=v2.InterpolationMode.NEAREST)
        return self._call_kernel(
            F.resize, inpt, params["size"], interpolation=v2.InterpolationMode.BILINEAR, antialias=self.antialias
        )


class RandomCropCatMax(v2.Transform):
    """Random crop that avoids crops dominated by one class (mmseg ``RandomCrop(crop_size, cat_max_ratio)``).

    A crop of ``min(crop_size, image size)`` is sampled uniformly. If ``cat_max_ratio < 1`` it is
    re-sampled up to ``max_tries`` times until the crop of the FIRST ``tv_tensors.Mask`` in the input
    (the training label) has more than one non-ignored class and no class covers ``>= cat_max_ratio``
    of its non-ignored pixels; after ``max_tries`` failures the last sample is used unchecked (mmseg).
    All inputs (image, both masks) get the same crop.

    Args:
        crop_size: (h, w) in pixels, or an int; default (512, 512) [protocol].
        cat_max_ratio: max fraction (0..1] of one class in the crop, default 0.75 [protocol]; 1 = plain crop.
        ignore_index: label ignored when counting, default 255.
        max_tries: re-sampling attempts, default 10 (mmseg).

    Shapes: ``[..., H, W]`` -> ``[..., min(ch, H), min(cw, W)]``; dtypes kept.
    Raises: ValueError for non-positive ``crop_size`` or ``cat_max_ratio`` outside (0, 1].
    """

    def __init__(
        self,
        crop_size: int | Sequence[int] = (512, 512),
        cat_max_ratio: float = 0.75,
        ignore_index: int = 255,
        max_tries: int = 10,
    ) -> None:
        super().__init__()
        self.crop_size = as_pair(crop_size, "crop_size")
        if min(self.crop_size) <= 0:
            raise ValueError(f"crop_size must be positive, got {crop_size!r}.")
        if not 0 < cat_max_ratio <= 1:
            raise ValueError(f"cat_max_ratio is a fraction in (0, 1], got {cat_max_ratio!r}.")
        self.cat_max_ratio = float(cat_max_ratio)
        self.ignore_index = int(ignore_index)
        self.max_tries = int(max_tries)

    def _sample_offset(self, margin_h: int, margin_w: int) -> tuple[int, int]:
        top = int(torch.randint(0, margin_h + 1, ()))
        left = int(torch.randint(0, margin_w + 1, ()))
        return top, left

    def _accept(self, crop: torch.Tensor) -> bool:
        labelled = crop.flatten()
        labelled = labelled[labelled != self.ignore_index]
        if labelled.numel() == 0:
            return False
        if labelled.min() < 0:  # bincount needs non-negative ids; the sorting count handles any
            counts = torch.unique(labelled, return_counts=True)[1]
        else:  # the same counts without torch.unique's sort (timing: docs/performance.md, bench_data.py)
            counts = torch.bincount(labelled)
            counts = counts[counts > 0]
        return counts.numel() > 1 and (counts.max().item() / labelled.numel()) < self.cat_max_ratio

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        h, w = v2.query_size(flat_inputs)
        ch, cw = min(self.crop_size[0], h), min(self.crop_size[1], w)
        margin_h, margin_w = h - ch, w - cw
        top, left = self._sample_offset(margin_h, margin_w)
        mask = next((x for x in flat_inputs if isinstance(x, tv_tensors.Mask)), None)
        tries = 0
        if self.cat_max_ratio < 1.0 and mask is not None:
            for _ in range(self.max_tries):
                if self._accept(mask[..., top : top + ch, left : left + cw]):
                    break
                tries += 1
                top, left = self._sample_offset(margin_h, margin_w)
        return dict(top=top, left=left, height=ch, width=cw, retries=tries)

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self._call_kernel(
            F.crop, inpt, top=params["top"], left=params["left"], height=params["height"], width=params["width"]
        )


class PhotoMetricDistortion(v2.Transform):
    """mmseg ``PhotoMetricDistortion`` on uint8 RGB images (masks pass through).

    Steps, each applied with probability 0.5, values in uint8 units:
    1. brightness: ``x + U(-brightness_delta, brightness_delta)``;
    2. if mode == 1 (probability 0.5): contrast ``x * U(contrast_range)``;
    3. saturation: HSV S channel ``* U(saturation_range)`` (clipped to [0, 1]; H and V kept);
    4. hue: H rotated by ``randint(-hue_delta, hue_delta)`` degrees/2 (OpenCV uint8 hue, 180 = full
       turn; numpy ``randint`` semantics, high exclusive, as in mmseg);
    5. if mode == 0: contrast.
    Brightness/contrast clip to [0, 255] and truncate to uint8 like mmseg's ``convert``.
    Differences from mmseg: RGB instead of BGR (same maths); saturation in float HSV (mmcv rounds H/S/V
    to uint8 at each HSV round trip); hue via ``torchvision.transforms.v2.functional.adjust_hue``.

    Args:
        brightness_delta: default 32 [mmseg]; contrast_range: default (0.5, 1.5) [mmseg];
        saturation_range: default (0.5, 1.5) [mmseg]; hue_delta: default 18 (OpenCV units) [mmseg].

    Shapes: Image ``[..., 3, H, W] uint8`` -> same shape and dtype.
    Raises: TypeError if the image is not uint8 (put it before ``ToDtype``) or is a PIL image.
    """

    def __init__(
        self,
        brightness_delta: float = 32,
        contrast_range: Sequence[float] = (0.5, 1.5),
        saturation_range: Sequence[float] = (0.5, 1.5),
        hue_delta: int = 18,
    ) -> None:
        super().__init__()
        self.brightness_delta = float(brightness_delta)
        self.contrast_range = (float(contrast_range[0]), float(contrast_range[1]))
        self.saturation_range = (float(saturation_range[0]), float(saturation_range[1]))
        self.hue_delta = int(hue_delta)
        if not 0 <= self.hue_delta <= 90:
            raise ValueError(f"hue_delta is in OpenCV hue units (180 = full turn), expected 0..90, got {hue_delta}.")

    @staticmethod
    def _uniform(lo: float, hi: float) -> float:
        return lo + float(torch.rand(())) * (hi - lo)

    @staticmethod
    def _coin() -> bool:
        return bool(torch.randint(0, 2, ()))

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        d = self.brightness_delta
        return dict(
            brightness=self._uniform(-d, d) if self._coin() else None,
            mode=int(torch.randint(0, 2, ())),
            contrast=self._uniform(*self.contrast_range) if self._coin() else None,
            saturation=self._uniform(*self.saturation_range) if self._coin() else None,
            hue=int(torch.randint(-self.hue_delta, self.hue_delta, ())) if self._coin() and self.hue_delta else None,
        )

    @staticmethod
    def _convert(img: torch.Tensor, alpha: float = 1.0, beta: float = 0.0) -> torch.Tensor:
        # mmseg convert(): float, affine, clip, truncate to uint8
        return (img.float() * alpha + beta).clamp_(0, 255).to(torch.uint8)

    @staticmethod
    def _saturation(img: torch.Tensor, alpha: float) -> torch.Tensor:
        # HSV S <- clip(S * alpha, 0, 1) keeping H, V: c' = V - (V - c) * min(alpha, V / (V - min)).
        x = img.float()  # [..., 3, H, W]
        v = x.amax(dim=-3, keepdim=True)
        mn = x.amin(dim=-3, keepdim=True)
        rng = v - mn
        k = torch.where(rng > 0, torch.clamp(v / rng.clamp(min=1e-6), max=alpha), torch.ones_like(rng))
        return (v - (v - x) * k).round_().clamp_(0, 255).to(torch.uint8)

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, PIL.Image.Image):
            raise TypeError("PhotoMetricDistortion expects a tv_tensors.Image uint8 tensor, got a PIL image.")
        if not isinstance(inpt, torch.Tensor) or (
            isinstance(inpt, tv_tensors.TVTensor) and not isinstance(inpt, tv_tensors.Image)
        ):
            return inpt  # masks, boxes, ... untouched
        if inpt.dtype != torch.uint8:
            raise TypeError(
                f"PhotoMetricDistortion expects a uint8 image (0..255), got {inpt.dtype}; place it before ToDtype."
            )
        img = inpt.as_subclass(torch.Tensor)
        if params["brightness"] is not None:
            img = self._convert(img, beta=params["brightness"])
        if params["mode"] == 1 and params["contrast"] is not None:
            img = self._convert(img, alpha=params["contrast"])
        if params["saturation"] is not None:
            img = self._saturation(img, params["saturation"])
        if params["hue"] is not None:
            img = F.adjust_hue(img, params["hue"] / 180.0)
        if params["mode"] == 0 and params["contrast"] is not None:
            img = self._convert(img, alpha=params["contrast"])
        return tv_tensors.wrap(img, like=inpt) if isinstance(inpt, tv_tensors.TVTensor) else img


class PadToSize(v2.Pad):
    """Pad right/bottom up to ``size`` (h, w) with a per-type fill; larger inputs are left as they are.

    A ``v2.Pad`` whose padding ``[0, 0, max(0, w_t - w), max(0, h_t - h)]`` is computed per call.
    Default fill: ``{tv_tensors.Image: 0, tv_tensors.Mask: 255}`` (mmseg pads the normalised image with 0
    and the label with 255).

    Args:
        size: target (h, w) in pixels, or an int.
        fill: number or dict type -> fill value, as ``v2.Pad``.
    Shapes: ``[..., H, W]`` -> ``[..., max(H, h_t), max(W, w_t)]``.
    """

    def __init__(self, size: int | Sequence[int], fill: Any = None) -> None:
        if fill is None:
            fill = {tv_tensors.Image: 0, tv_tensors.Mask: 255}
        super().__init__(padding=0, fill=fill)
        self.size = as_pair(size, "size")

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        h, w = v2.query_size(flat_inputs)
        return dict(padding=[0, 0, max(0, self.size[1] - w), max(0, self.size[0] - h)])

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if not any(params["padding"]):
            return inpt
        fill = self._fill.get(type(inpt), self._fill.get("others", 0))
        return self._call_kernel(F.pad, inpt, padding=params["padding"], fill=fill, padding_mode=self.padding_mode)


def build_train_transform(
    crop_size: int | Sequence[int] = (512, 512),
    scale: Sequence[int] = (2048, 512),
    ratio_range: Sequence[float] | None = (0.5, 2.0),
    cat_max_ratio: float = 0.75,
    flip_prob: float = 0.5,
    photometric: bool = True,
    mean: Sequence[float] = CLIP_MEAN,
    std: Sequence[float] = CLIP_STD,
    ignore_index: int = 255,
    antialias: bool = False,
) -> v2.Compose:
    """Training pipeline of docs/protocol.md "Pipeline" (mmseg order).

    KeepRatioRescale(scale, ratio_range) -> RandomCropCatMax(crop_size, cat_max_ratio) ->
    RandomHorizontalFlip(flip_prob) -> PhotoMetricDistortion (if ``photometric``) ->
    ToDtype(float32, scale=True) -> Normalize(mean, std) -> PadToSize(crop_size, image 0 / mask ignore_index).

    Args:
        crop_size: (h, w) pixels, default (512, 512) [protocol]. scale, ratio_range: see ``KeepRatioRescale``.
        cat_max_ratio: see ``RandomCropCatMax`` [protocol 0.75]. flip_prob: [protocol 0.5].
        photometric: apply ``PhotoMetricDistortion`` [protocol True].
        mean, std: RGB in [0, 1] units, default CLIP's (the teacher's input statistics).
        ignore_index: mask padding / ignored label, default 255.
        antialias: see ``KeepRatioRescale`` (ours, default False = mmcv).

    Returns:
        ``v2.Compose`` called as ``t(image uint8 [3,H,W], label Mask int64, full_label Mask int64)`` ->
        ``(Image float32 [3,ch,cw], Mask int64 [ch,cw], Mask int64 [ch,cw])``.
    """
    crop = as_pair(crop_size, "crop_size")
    ops: list[v2.Transform] = [
        KeepRatioRescale(scale, ratio_range, antialias=antialias),
        RandomCropCatMax(crop, cat_max_ratio, ignore_index=ignore_index),
        v2.RandomHorizontalFlip(flip_prob),
    ]
    if photometric:
        ops.append(PhotoMetricDistortion())
    ops += [
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(list(mean), list(std)),
        PadToSize(crop, fill={tv_tensors.Image: 0, tv_tensors.Mask: ignore_index}),
    ]
    return v2.Compose(ops)


def build_test_transform(
    scale: Sequence[int] = (2048, 512),
    mean: Sequence[float] = CLIP_MEAN,
    std: Sequence[float] = CLIP_STD,
    antialias: bool = False,
) -> v2.Compose:
    """Test pipeline of docs/protocol.md "Pipeline": keep-ratio resize (no random ratio) + normalise, image only.

    Masks pass through at their original size (evaluation resizes logits to the label size).

    Args:
        scale: (long, short) bound in pixels, default (2048, 512) [protocol: short side 512].
        mean, std: RGB in [0, 1] units, default CLIP's.
        antialias: see ``KeepRatioRescale`` (ours, default False = mmcv).

    Returns:
        ``v2.Compose``: ``(Image uint8 [3,H,W], Mask, Mask)`` -> ``(Image float32 [3,H',W'], Mask [H,W], Mask [H,W])``.
    """
    return v2.Compose(
        [
            KeepRatioRescale(scale, None, antialias=antialias, resize_masks=False),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(list(mean), list(std)),
        ]
    )
