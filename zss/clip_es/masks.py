"""CLIP-ES pseudo masks: background score, argmax, optional dense CRF, confidence ignore (docs/clip_es.md).

- score maps ``[bg; CAM_1 .. CAM_K]`` with ``bg = (1 - max_k CAM_k) ** alpha`` over the image's present
  classes; label = argmax mapped to dataset class ids (:func:`cams_to_labels`);
- optional fully-connected CRF (``pydensecrf``, optional extra ``pip install -e '.[crf]'``) on those scores
  with the public parameters (:func:`dense_crf`);
- pixels whose CRF probability is below 0.95 become ``ignore_index`` (:func:`confidence_ignore`): the
  "confidence-guided loss" of CLIP-ES is exactly that ignore region with plain cross-entropy.

Also :func:`clip_es_regions`, CLIP-ES masks as per-class regions for another method (e.g. PLM's pseudo
regions in a transductive setting). Source: CLIP-ES public code ``eval_cam.py`` and
``eval_cam_with_crf.py`` (docs/clip_es.md).
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from .caa import box_mask, caa_transition, refine_cams
from .cam import clip_es_cams, labels_to_multihot, resize_to_patch_multiple

__all__ = [
    "CRF_PUBLIC",
    "CRF_INSTALL_HINT",
    "CRF_COLOR_MODES",
    "densecrf_available",
    "background_score",
    "cams_to_labels",
    "crf_color_image",
    "dense_crf",
    "confidence_ignore",
    "save_mask_png",
    "clip_es_regions",
]

#: Dense-CRF parameters of the CLIP-ES public code (``eval_cam_with_crf.py``).
CRF_PUBLIC: dict = dict(iters=10, pos_xy_std=1.0, pos_w=3.0, bi_xy_std=67.0, bi_rgb_std=3.0, bi_w=4.0)
#: How to install the optional CRF dependency.
CRF_INSTALL_HINT = "pip install -e '.[crf]'  (installs pydensecrf2, which provides the pydensecrf module)"
#: Colour image given to the CRF's bilateral term: ``public`` (BGR minus the ImageNet mean, wrapped to
#: uint8, as the public code) or ``rgb`` (the plain image).
CRF_COLOR_MODES = ("public", "rgb")
_MEAN_BGR = (104.008, 116.669, 122.675)  # public code eval_cam_with_crf.py


def densecrf_available() -> bool:
    """True when the ``pydensecrf`` module (package ``pydensecrf2``) can be imported."""
    try:
        import pydensecrf.densecrf  # noqa: F401
    except ImportError:
        return False
    return True


def background_score(cams: Tensor, present: Tensor | None = None, alpha: float = 1.0) -> Tensor:
    """``(1 - max_c CAM_c) ** alpha`` over the present classes.

    Args:
        cams: ``Tensor[B, C, H, W]`` float in [0, 1].
        present: ``Tensor[B, C] bool`` (None: all classes). An image with no present class gets 1.
        alpha: exponent (public code: 1 for the CRF input; the CAM evaluation picks the best of {1, 2}).
    Returns:
        ``Tensor[B, 1, H, W] float32``.
    """
    c = cams.float()
    if present is not None:
        c = c.masked_fill(~present.to(c.device, torch.bool)[:, :, None, None], 0.0)
    mx = c.amax(dim=1, keepdim=True) if c.shape[1] else torch.zeros_like(c[:, :1])
    return (1.0 - mx).clamp_min(0.0) ** float(alpha)


def cams_to_labels(
    cams: Tensor,
    present: Tensor,
    class_ids: Sequence[int] | Tensor,
    alpha: float = 1.0,
    background_id: int = 0,
) -> Tensor:
    """Pseudo labels from CAMs: argmax over ``[background_score; present CAMs]``.

    Args:
        cams: ``Tensor[B, C, H, W]`` float in [0, 1] (rows = foreground classes).
        present: ``Tensor[B, C] bool`` image-level labels; absent classes can never win.
        class_ids: dataset label id of each of the C rows (e.g. ``1..20`` for voc21).
        alpha: background exponent (see :func:`background_score`).
        background_id: dataset label id of the background (0 for voc21).
    Returns:
        ``Tensor[B, H, W] int64`` dataset label ids.
    """
    ids = torch.as_tensor(list(class_ids) if not isinstance(class_ids, Tensor) else class_ids, dtype=torch.long)
    if ids.numel() != cams.shape[1]:
        raise ValueError(f"cams_to_labels: {ids.numel()} class ids for {cams.shape[1]} CAM rows")
    present = present.to(cams.device, torch.bool)
    bg = background_score(cams, present, alpha)
    scores = cams.float().masked_fill(~present[:, :, None, None], float("-inf"))
    idx = torch.cat([bg, scores], dim=1).argmax(dim=1)  # [B, H, W]
    lut = torch.cat([torch.tensor([background_id], dtype=torch.long), ids]).to(cams.device)
    return lut[idx]


def crf_color_image(image: np.ndarray, mode: str = "public") -> np.ndarray:
    """The colour image for the CRF's bilateral term.

    Args:
        image: ``np.ndarray[H, W, 3] uint8`` RGB.
        mode: ``"public"``: BGR minus the mean (104.008, 116.669, 122.675), truncated and wrapped to uint8
            the way the public code's ``astype(np.uint8)`` does on x86 (negative values wrap around);
            ``"rgb"``: the image unchanged (ours). The kernel is isotropic in colour, so channel order
            does not matter, only the values.
    Returns:
        ``np.ndarray[H, W, 3] uint8`` C-contiguous.
    Raises:
        ValueError: unknown mode or not an [H, W, 3] image.
    """
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"crf_color_image: expected an [H, W, 3] uint8 image, got shape {image.shape}")
    if mode == "rgb":
        return np.ascontiguousarray(image.astype(np.uint8))
    if mode != "public":
        raise ValueError(f"crf_color_image: mode={mode!r} is not one of {CRF_COLOR_MODES} (clip_es.crf.color=...)")
    bgr = image[:, :, ::-1].astype(np.float32) - np.asarray(_MEAN_BGR, dtype=np.float32)
    return np.ascontiguousarray((np.trunc(bgr).astype(np.int64) % 256).astype(np.uint8))


def dense_crf(
    image: np.ndarray,
    prob: np.ndarray,
    iters: int = 10,
    pos_xy_std: float = 1.0,
    pos_w: float = 3.0,
    bi_xy_std: float = 67.0,
    bi_rgb_std: float = 3.0,
    bi_w: float = 4.0,
) -> np.ndarray:
    """Fully-connected CRF (Krähenbühl & Koltun) on score maps, through ``pydensecrf``.

    Unary ``-log(clip(prob, 1e-5))`` (``pydensecrf.utils.unary_from_softmax``; the scores need not sum
    to 1), a Gaussian term (``pos_xy_std``, compat ``pos_w``) and a bilateral term (``bi_xy_std``,
    ``bi_rgb_std``, compat ``bi_w``); defaults = the public CLIP-ES parameters (:data:`CRF_PUBLIC`).

    Args:
        image: ``np.ndarray[H, W, 3] uint8`` colour image of the bilateral term (:func:`crf_color_image`).
        prob: ``np.ndarray[K, H, W]`` float scores (background first).
        iters: mean-field iterations.
    Returns:
        ``np.ndarray[K, H, W] float32`` marginals Q (sum to 1 over K).
    Raises:
        ImportError: ``pydensecrf`` is not installed (the message gives :data:`CRF_INSTALL_HINT`).
        ValueError: image and scores of different sizes.
    """
    try:
        import pydensecrf.densecrf as dcrf
        from pydensecrf.utils import unary_from_softmax
    except ImportError as e:
        raise ImportError(
            f"The dense CRF of CLIP-ES needs the optional package pydensecrf2: {CRF_INSTALL_HINT}; "
            f"or run without it (clip_es.crf.enabled=false)."
        ) from e
    K, H, W = prob.shape
    if image.shape[:2] != (H, W):
        raise ValueError(f"dense_crf: image {image.shape[:2]} and scores {(H, W)} differ in size")
    d = dcrf.DenseCRF2D(W, H, K)
    d.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(prob.astype(np.float32))))
    d.addPairwiseGaussian(sxy=pos_xy_std, compat=pos_w)
    d.addPairwiseBilateral(sxy=bi_xy_std, srgb=bi_rgb_std, rgbim=np.ascontiguousarray(image), compat=bi_w)
    q = d.inference(int(iters))
    return np.asarray(q, dtype=np.float32).reshape(K, H, W)


def confidence_ignore(
    labels: Tensor | np.ndarray, prob: Tensor | np.ndarray, threshold: float = 0.95, ignore_index: int = 255
):
    """Set pixels whose maximum class probability is below ``threshold`` to ``ignore_index``.

    This is CLIP-ES's confidence-guided loss: training with plain cross-entropy (``ignore_index=255``)
    on these labels skips exactly the unconfident pixels.

    Args:
        labels: ``[..., H, W]`` integer labels (torch or numpy; not modified).
        prob: ``[..., K, H, W]`` probabilities (the CRF marginals), same backend as ``labels``.
        threshold: 0.95 in the public code (``eval_cam_with_crf.py``).
    Returns:
        A copy of ``labels`` with the unconfident pixels set to ``ignore_index``.
    """
    if isinstance(labels, np.ndarray):
        out = labels.copy()
        out[np.asarray(prob).max(axis=-3) < threshold] = ignore_index
        return out
    out = labels.clone()
    out[prob.amax(dim=-3) < threshold] = ignore_index
    return out


def save_mask_png(label: np.ndarray | Tensor, path: str | os.PathLike, palette: Sequence[int] | None = None) -> None:
    """Write a label map as an 8-bit palette PNG (pixel value = class id, 255 = ignore).

    Args:
        label: ``[H, W]`` integer ids in ``0..255``.
        path: output file.
        palette: 768 ints (default: the standard VOC colour map, so the file looks like VOC's own labels).
    Raises:
        ValueError: not 2-D or values outside 0..255.
    """
    arr = label.cpu().numpy() if isinstance(label, Tensor) else np.asarray(label)
    if arr.ndim != 2:
        raise ValueError(f"save_mask_png: expected an [H, W] label map, got shape {arr.shape}")
    if arr.size and (arr.min() < 0 or arr.max() > 255):
        raise ValueError(f"save_mask_png: values {arr.min()}..{arr.max()} outside 0..255")
    im = Image.fromarray(arr.astype(np.uint8), mode="P")
    if palette is None:
        from zss.data.palette import voc_palette

        palette = voc_palette(256).reshape(-1).tolist()
    im.putpalette(list(palette))
    im.save(path)


@torch.no_grad()
def _upsample(maps: Tensor, size: tuple[int, int]) -> Tensor:
    return F.interpolate(maps, size=size, mode="bilinear", align_corners=False)


def clip_es_regions(
    teacher,
    images: Tensor,
    class_ids: Tensor | Sequence[Sequence[int]],
    class_embeds: Tensor,
    bg_embeds: Tensor,
    *,
    refine: bool = True,
    alpha: float = 1.0,
    box_threshold: float = 0.4,
    attn_layers: int = 8,
    sinkhorn_rounds: int = 3,
    power_steps: int = 1,
    min_score: float = 0.0,
    out_size: tuple[int, int] | None = None,
    pos_interp: str = "bilinear",
) -> Tensor:
    """CLIP-ES masks as region ids: one region per image-level class, for use by another method.

    Intended as an alternative source of CLIP-ZSS PLM pseudo regions in the *transductive* setting only
    (the image-level labels include unseen classes, which an inductive setting must not know).

    Args:
        teacher: frozen :class:`~zss.teachers.clip.FrozenCLIP` with ``image_size`` None.
        images: ``Tensor[B, 3, H, W]`` float, normalised with the teacher's ``input_mean``/``input_std``;
            any size (resized to patch multiples internally).
        class_ids: image-level labels, rows of ``class_embeds``: ``Tensor[B, C] bool`` multi-hot or one
            index list per image.
        class_embeds: ``Tensor[C, D]`` L2-normalised text embeds of the candidate classes.
        bg_embeds: ``Tensor[C_bg, D]`` L2-normalised text embeds of the background words.
        refine: apply CAA (True) or use the raw CAMs.
        alpha: background exponent; box_threshold, attn_layers, sinkhorn_rounds, power_steps: see
            ``zss.clip_es.caa`` (public-code defaults).
        min_score: pixels whose winning class score is below this become background (0 = off; ours).
        out_size: (H_out, W_out) of the result, pixels; None = the input size (H, W).
    Returns:
        ``Tensor[B, H_out, W_out] int64``: the row of ``class_embeds`` of the pixel's class, ``-1`` for
        background. Regions are therefore per (image, class); their ids are class indices.
    """
    H, W = images.shape[-2:]
    out_size = (int(H), int(W)) if out_size is None else (int(out_size[0]), int(out_size[1]))
    x = resize_to_patch_multiple(images, teacher.patch_size)
    C = class_embeds.shape[0]
    present = labels_to_multihot(class_ids, C, device=teacher.device)
    res = clip_es_cams(teacher, x, present, class_embeds, bg_embeds, attn_layers=attn_layers, pos_interp=pos_interp)
    cams = res.cams
    if refine:
        t = caa_transition(res.attn, sinkhorn_rounds, power_steps)
        cams = refine_cams(t, cams, box_mask(cams, box_threshold) & present[:, :, None, None])
    cams = _upsample(cams, out_size)
    lab = cams_to_labels(cams, present, torch.arange(C), alpha=alpha, background_id=-1)
    if min_score > 0:
        win = cams.masked_fill(~present[:, :, None, None], 0).amax(dim=1)
        lab[win < min_score] = -1
    return lab
