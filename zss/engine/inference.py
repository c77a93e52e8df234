"""Test-time inference: whole-image and sliding-window logits, and argmax segmentation.

``model_fn(images: Tensor[N, 3, h, w]) -> Tensor[N, C, h', w']`` is any callable returning logits at
any resolution (e.g. ``Method.predict``, whose student works at stride 4); the logits are resized
bilinearly (``align_corners=False``) to the window / image size. The sliding-window grid is mmseg's
(docs/protocol.md "Pipeline": crop 512, stride 426, windows clamped to the border, logits summed and divided
by the coverage count, then resized to the original label size). Crops of *all* images of the batch
are queued together and sent through ``model_fn`` in chunks of ``batch_size`` crops.

All functions run under ``torch.no_grad()``; autocast is the caller's choice (logits are accumulated
in float32 whatever ``model_fn`` returns).

Label spaces: ``model_fn`` always returns logits over ALL classes; the ZSS restriction to the unseen
classes is applied at argmax time (:func:`argmax_classes`, ``classes=`` of :func:`predict_segmentation`),
after every resize. Masking logits with ``-inf`` before the bilinear resizes made NaN wherever an
interpolation weight is 0 (``0 * -inf``, e.g. at the image border) and the argmax then picked the NaN
(a seen class); no masked value ever goes through a resize here.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from zss.data.transforms import as_pair

__all__ = [
    "slide_windows",
    "resize_logits",
    "whole_inference",
    "slide_inference",
    "predict_segmentation",
    "argmax_classes",
    "INFERENCE_MODES",
]

ModelFn = Callable[[torch.Tensor], torch.Tensor]
INFERENCE_MODES = ("slide", "whole")


def _size(out_size: int | Sequence[int] | None) -> tuple[int, int] | None:
    if out_size is None:
        return None
    return as_pair(out_size, "out_size", positive=True)


def resize_logits(logits: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinearly resize logits (``align_corners=False``); returned unchanged if already at ``size``.

    Args:
        logits: ``Tensor[B, C, h, w]`` float.
        size: target ``(H, W)`` in pixels.

    Returns:
        ``Tensor[B, C, H, W]``, same dtype as ``logits``.

    Source: mmseg ``resize`` as used by its segmentors (docs/protocol.md "Pipeline").
    """
    size = tuple(int(s) for s in size)
    if tuple(logits.shape[-2:]) == size:
        return logits
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


def slide_windows(
    height: int,
    width: int,
    crop: int | Sequence[int] = (512, 512),
    stride: int | Sequence[int] = (426, 426),
) -> list[tuple[int, int, int, int]]:
    """The mmseg sliding-window grid for an ``height x width`` image (pixels).

    ``h_grids = max(H - crop_h + stride_h - 1, 0) // stride_h + 1`` (same for w); window
    ``(h_idx, w_idx)``: ``y1 = h_idx * stride_h``, ``y2 = min(y1 + crop_h, H)``,
    ``y1 = max(y2 - crop_h, 0)`` (same for x). Every window therefore has the same size
    ``(min(crop_h, H), min(crop_w, W))``; an image smaller than the crop gets one window (itself).

    Args:
        height, width: image size in pixels.
        crop: window ``(h, w)`` in pixels (default 512, docs/protocol.md "Pipeline").
        stride: step ``(h, w)`` in pixels (default 426, docs/protocol.md "Pipeline"); must not exceed ``crop``.

    Returns:
        list of ``(y1, y2, x1, x2)`` in row-major order (h_idx outer, w_idx inner).

    Raises:
        ValueError: non-positive sizes, or a stride larger than the crop (pixels would be uncovered).

    Source: mmseg ``EncoderDecoder.slide_inference``.
    """
    crop_h, crop_w = as_pair(crop, "crop", positive=True)
    stride_h, stride_w = as_pair(stride, "stride", positive=True)
    if stride_h > crop_h or stride_w > crop_w:
        raise ValueError(
            f"sliding window: stride {(stride_h, stride_w)} exceeds crop {(crop_h, crop_w)}, which leaves pixels "
            "uncovered; use stride <= crop (default crop 512, stride 426)"
        )
    if height <= 0 or width <= 0:
        raise ValueError(f"sliding window: image size must be positive, got {(height, width)}")
    h_grids = max(height - crop_h + stride_h - 1, 0) // stride_h + 1
    w_grids = max(width - crop_w + stride_w - 1, 0) // stride_w + 1
    windows = []
    for h_idx in range(h_grids):
        for w_idx in range(w_grids):
            y1 = h_idx * stride_h
            x1 = w_idx * stride_w
            y2 = min(y1 + crop_h, height)
            x2 = min(x1 + crop_w, width)
            y1 = max(y2 - crop_h, 0)
            x1 = max(x2 - crop_w, 0)
            windows.append((y1, y2, x1, x2))
    return windows


def _check_images(images: torch.Tensor, fn: str) -> None:
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"{fn}: images must be a Tensor[B, 3, H, W], got {shape}")


def _check_logits(logits: torch.Tensor, n: int, num_classes: int | None, fn: str) -> None:
    if not isinstance(logits, torch.Tensor) or logits.dim() != 4 or logits.shape[0] != n:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"{fn}: model_fn must return logits Tensor[{n}, C, h, w] for {n} inputs, got {shape}")
    if num_classes is not None and logits.shape[1] != num_classes:
        raise ValueError(
            f"{fn}: model_fn returned {logits.shape[1]} classes but num_classes={num_classes}; "
            "pass the benchmark's number of classes"
        )


@torch.no_grad()
def whole_inference(
    model_fn: ModelFn,
    images: torch.Tensor,
    out_size: int | Sequence[int] | None = None,
) -> torch.Tensor:
    """Run ``model_fn`` on the whole images and return logits at the input size (or ``out_size``).

    Args:
        model_fn: ``Tensor[B, 3, H, W] -> Tensor[B, C, h, w]`` logits at any resolution.
        images: ``Tensor[B, 3, H, W]`` float32, normalised.
        out_size: optional ``(H_out, W_out)`` in pixels (the original label size); the logits are first
            resized to ``(H, W)`` then to ``out_size`` (bilinear, mmseg's two-step order).

    Returns:
        ``Tensor[B, C, H, W]`` (or ``[B, C, *out_size]``) float32 logits.

    Raises:
        ValueError: images not 4-D, or model_fn output not ``[B, C, h, w]``.
    """
    _check_images(images, "whole_inference")
    logits = model_fn(images)
    _check_logits(logits, images.shape[0], None, "whole_inference")
    logits = resize_logits(logits.float(), images.shape[-2:])
    size = _size(out_size)
    if size is not None:
        logits = resize_logits(logits, size)
    return logits


@torch.no_grad()
def slide_inference(
    model_fn: ModelFn,
    images: torch.Tensor,
    num_classes: int | None,
    crop: int | Sequence[int] = (512, 512),
    stride: int | Sequence[int] = (426, 426),
    batch_size: int = 8,
    out_size: int | Sequence[int] | None = None,
) -> torch.Tensor:
    """Sliding-window logits on mmseg's grid, with the crops of all images batched through ``model_fn``.

    The ``B * n_windows`` crops (all of size ``(min(crop_h, H), min(crop_w, W))``, see
    :func:`slide_windows`) are queued image-major and sent through ``model_fn`` in chunks of
    ``batch_size`` crops (``ceil(B * n_windows / batch_size)`` calls). Each output is resized bilinearly
    to its window size, summed into a ``[B, C, H, W]`` float32 buffer and divided by the per-pixel
    window count.

    Args:
        model_fn: ``Tensor[N, 3, h, w] -> Tensor[N, C, h', w']`` logits at any resolution.
        images: ``Tensor[B, 3, H, W]`` float32, normalised (the test transform already resized the
            short side to 512).
        num_classes: C; checked against the model output. ``None`` infers it from the first output.
        crop: window ``(h, w)`` in pixels (default 512, docs/protocol.md "Pipeline").
        stride: window step ``(h, w)`` in pixels (default 426, docs/protocol.md "Pipeline").
        batch_size: crops per ``model_fn`` call (not in the papers: our default 8).
        out_size: optional ``(H_out, W_out)`` in pixels (the original label size) to resize the final
            logits to (bilinear, ``align_corners=False``); one size for the whole batch.

    Returns:
        ``Tensor[B, C, H, W]`` (or ``[B, C, *out_size]``) float32 logits on ``images.device``.

    Raises:
        ValueError: bad shapes / sizes, stride > crop, ``batch_size < 1``, or a class-count mismatch.

    Source: mmseg ``EncoderDecoder.slide_inference`` (docs/protocol.md "Pipeline"); crop batching is ours.
    """
    _check_images(images, "slide_inference")
    if int(batch_size) < 1:
        raise ValueError(f"slide_inference: batch_size must be >= 1, got {batch_size}")
    B, _, H, W = images.shape
    windows = slide_windows(H, W, crop, stride)
    queue = [(b, w) for b in range(B) for w in windows]  # image-major
    count = torch.zeros(1, 1, H, W, dtype=torch.float32, device=images.device)
    for y1, y2, x1, x2 in windows:
        count[..., y1:y2, x1:x2] += 1
    preds: torch.Tensor | None = None
    for start in range(0, len(queue), int(batch_size)):
        chunk = queue[start : start + int(batch_size)]
        crops = torch.stack([images[b, :, y1:y2, x1:x2] for b, (y1, y2, x1, x2) in chunk])  # [n, 3, h, w]
        logits = model_fn(crops)
        _check_logits(logits, len(chunk), num_classes, "slide_inference")
        logits = resize_logits(logits.float(), crops.shape[-2:])  # [n, C, h, w]
        if preds is None:
            num_classes = logits.shape[1]
            preds = torch.zeros(B, num_classes, H, W, dtype=torch.float32, device=images.device)
        for i, (b, (y1, y2, x1, x2)) in enumerate(chunk):
            preds[b, :, y1:y2, x1:x2] += logits[i].to(preds.device)
    assert preds is not None  # at least one window per image
    preds = preds / count
    size = _size(out_size)
    if size is not None:
        preds = resize_logits(preds, size)
    return preds


def argmax_classes(logits: torch.Tensor, classes: torch.Tensor | Sequence[int] | None = None) -> torch.Tensor:
    """Per-pixel argmax over all classes or over a subset of them (the ZSS label space).

    Args:
        logits: ``Tensor[B, C, H, W]`` float logits (at the final size: restrict AFTER resizing).
        classes: None (argmax over all C classes, GZSS) or the class ids to choose from
            (``Tensor[K] int64`` or a sequence, e.g. ``method.unseen`` for ZSS), each in ``[0, C)``.

    Returns:
        ``Tensor[B, H, W]`` int64 class ids in ``[0, C)`` (always ids of the full class list); with
        ``classes`` only those ids occur. Ties go to the first of ``classes`` (ascending ids).

    Raises:
        ValueError: ``classes`` empty or holding an id outside ``[0, C)``.

    Source: ours (the ZSS label space of docs/protocol.md "Evaluation modes": prediction restricted to the unseen
        classes).
    """
    if classes is None:
        return logits.argmax(dim=1)
    ids = torch.as_tensor(classes, dtype=torch.long).flatten().to(logits.device)
    C = logits.shape[1]
    if ids.numel() == 0 or int(ids.min()) < 0 or int(ids.max()) >= C:
        raise ValueError(
            f"argmax_classes: classes {ids.tolist()} must be a non-empty subset of [0, {C}); "
            "label_space=unseen needs unseen classes"
        )
    return ids[logits.index_select(1, ids).argmax(dim=1)]


@torch.no_grad()
def predict_segmentation(
    model_fn: ModelFn,
    images: torch.Tensor,
    mode: str = "slide",
    num_classes: int | None = None,
    crop: int | Sequence[int] = (512, 512),
    stride: int | Sequence[int] = (426, 426),
    batch_size: int = 8,
    out_size: int | Sequence[int] | None = None,
    classes: torch.Tensor | Sequence[int] | None = None,
) -> torch.Tensor:
    """Argmax segmentation from :func:`slide_inference` or :func:`whole_inference`.

    Args:
        model_fn: ``Tensor[N, 3, h, w] -> Tensor[N, C, h', w']`` logits over ALL classes (any seen-class
            bias is the caller's job; never mask logits with ``-inf`` here, pass ``classes`` instead).
        images: ``Tensor[B, 3, H, W]`` float32, normalised.
        mode: ``"slide"`` (default, docs/protocol.md "Pipeline") or ``"whole"``.
        num_classes, crop, stride, batch_size: see :func:`slide_inference` (ignored for ``"whole"``
            except ``num_classes``, which is checked when given).
        out_size: optional ``(H_out, W_out)`` pixels, the original label size.
        classes: None (GZSS: every class) or the class ids the argmax may choose (ZSS: ``method.unseen``),
            applied after all resizing (:func:`argmax_classes`).

    Returns:
        ``Tensor[B, H, W]`` (or ``[B, *out_size]``) int64 class ids of the full class list.

    Raises:
        ValueError: unknown ``mode``, bad ``classes`` (plus the errors of the inference functions).
    """
    if mode == "slide":
        logits = slide_inference(model_fn, images, num_classes, crop, stride, batch_size, out_size)
    elif mode == "whole":
        logits = whole_inference(model_fn, images, out_size)
        if num_classes is not None and logits.shape[1] != num_classes:
            raise ValueError(
                f"predict_segmentation: model_fn returned {logits.shape[1]} classes but num_classes={num_classes}"
            )
    else:
        raise ValueError(f"predict_segmentation: mode={mode!r} is not one of {INFERENCE_MODES}")
    return argmax_classes(logits, classes)
