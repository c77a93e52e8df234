"""Dataset-level evaluation of a method: inference over a split, one confusion matrix, metrics."""

from __future__ import annotations

import math
import time
from typing import Callable, Sequence

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset

from zss.engine.inference import argmax_classes, slide_inference, whole_inference
from zss.engine.metrics import SegEvaluator
from zss.engine.sampling import shard_indices
from zss.utils.dist import get_rank, get_world_size
from zss.utils.progress import progress_bar


def make_logits_fn(method: torch.nn.Module, *, seen_bias: float = 0.0) -> Callable[[Tensor], Tensor]:
    """The function inference calls on a batch of crops: ``Tensor[N, 3, h, w] -> logits Tensor[N, C, h', w']``.

    Logits over ALL classes (``method.predict(images, label_space="all")``): the label space (ZSS = unseen
    classes only) is applied at argmax time, after the resizes, with ``method.label_space_ids`` and
    :func:`zss.engine.inference.argmax_classes` (masking before resizing made NaN, see inference.py).

    ``seen_bias`` is subtracted from the seen classes' logits (explicit form of the calibration
    ZegCLIP / CLIP-RC apply silently with 0.1; our default 0 = none). It is in the units of ``predict``'s output
    for every method (logits at the input size; CLIP-RC / ZegCLIP return sigmoid probabilities as their logits, so
    there it is the public code's probability margin) and only matters for ``label_space="all"`` (in ZSS no seen
    class can win anyway).

    Raises:
        ValueError: ``seen_bias`` is not a finite number (NaN would turn every seen logit into NaN).
    """
    if isinstance(seen_bias, bool) or not isinstance(seen_bias, (int, float)) or not math.isfinite(seen_bias):
        raise ValueError(
            f"seen_bias={seen_bias!r}: must be a finite number (units of predict's output; 0 = no calibration)"
        )

    def fn(images: Tensor) -> Tensor:
        logits = method.predict(images, label_space="all")
        if seen_bias:
            logits = logits.clone()
            logits[:, method.seen] -= seen_bias
        return logits

    return fn


@torch.no_grad()
def evaluate(
    method: torch.nn.Module,
    dataset: Dataset,
    *,
    mode: str = "slide",
    crop: Sequence[int] = (512, 512),
    stride: Sequence[int] = (426, 426),
    crop_batch: int = 8,
    label_space: str = "all",
    seen_bias: float = 0.0,
    amp_dtype: torch.dtype | None = None,
    num_workers: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = False,
    on_prediction: Callable[[dict, Tensor], None] | None = None,
) -> dict:
    """Evaluate ``method`` on every image of ``dataset`` (sharded across ranks, all-reduced).

    Args:
        method: a :class:`~zss.methods.base.Method` (``predict``, ``seen``, ``classnames``,
            ``unseen``).
        dataset: yields ``image`` Tensor[3, H', W'] float32 (test transform applied: resized),
            ``full_label`` Tensor[H, W] int64 at the original size, ``name``.
        mode: ``slide`` (mmseg sliding window: ``crop``/``stride`` in pixels, ``crop_batch`` crops per
            forward) or ``whole``.
        label_space: ``all`` (GZSS) or ``unseen`` (ZSS: the argmax is over the unseen classes only, taken
            after resizing the all-class logits to the label size).
        seen_bias: subtracted from seen-class logits (the units of ``Method.predict``'s output: logits; CLIP-RC /
            ZegCLIP's are sigmoid probabilities; 0 = off).
        amp_dtype: autocast dtype for the forward pass (``torch.bfloat16``) or None.
        progress: draw a bar over the images (:func:`zss.utils.progress.progress_bar`, only when stderr is a
            terminal; the bar is removed when done). Pass ``zss.utils.dist.is_main()`` under DDP.
        on_prediction: optional callback ``(sample, pred Tensor[H, W] int64)`` per image (rank-local),
            e.g. for overlays.

    Returns:
        :meth:`SegEvaluator.compute` results (percent) plus ``img_per_s`` and ``num_images``.

    The global torch RNG is forked for the duration (DataLoader creation draws from it), so a run
    evaluated every N steps trains exactly like one evaluated only at the end.

    Raises:
        ValueError: unknown ``mode`` or ``label_space`` (or ``unseen`` without unseen classes).
    """
    with torch.random.fork_rng(devices=[]):
        return _evaluate(
            method,
            dataset,
            mode,
            crop,
            stride,
            crop_batch,
            label_space,
            seen_bias,
            amp_dtype,
            num_workers,
            device,
            progress,
            on_prediction,
        )


def _evaluate(
    method,
    dataset,
    mode,
    crop,
    stride,
    crop_batch,
    label_space,
    seen_bias,
    amp_dtype,
    num_workers,
    device,
    progress,
    on_prediction,
) -> dict:
    if mode not in ("slide", "whole"):
        raise ValueError(f"eval mode must be 'slide' or 'whole', got {mode!r}")
    was_training = method.training
    method.eval()
    device = torch.device(device)
    evaluator = SegEvaluator(
        method.num_classes,
        method.classnames,
        method.unseen.tolist(),
        ignore_index=method.ignore_index,
        label_space=label_space,
    )
    part = Subset(dataset, shard_indices(len(dataset), get_rank(), get_world_size()))
    loader = DataLoader(part, batch_size=1, shuffle=False, num_workers=num_workers)
    classes = method.label_space_ids(label_space)  # None (all) or the unseen ids (ZSS)
    logits_fn = make_logits_fn(method, seen_bias=seen_bias)
    bar = progress_bar(loader, desc="eval", enabled=progress, leave=False, unit="img")
    t0, n = time.perf_counter(), 0
    for batch in bar:
        image = batch["image"].to(device)  # [1, 3, H', W']
        target = batch["full_label"].to(device)  # [1, H, W]
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            if mode == "slide":
                logits = slide_inference(
                    logits_fn,
                    image,
                    method.num_classes,
                    crop=tuple(crop),
                    stride=tuple(stride),
                    batch_size=crop_batch,
                    out_size=tuple(target.shape[-2:]),
                )
            else:
                logits = whole_inference(logits_fn, image, out_size=tuple(target.shape[-2:]))
        pred = argmax_classes(logits.float(), classes)  # [1, H, W] ids of the full class list
        evaluator.update(pred, target)
        if on_prediction is not None:
            on_prediction({k: (v[0] if isinstance(v, (list, Tensor)) else v) for k, v in batch.items()}, pred[0])
        n += 1
    bar.close()
    evaluator.all_reduce()
    results = evaluator.compute()
    results["num_images"] = len(dataset)
    results["img_per_s"] = n / max(time.perf_counter() - t0, 1e-9)
    results["seen_bias"] = seen_bias
    method.train(was_training)
    return results
