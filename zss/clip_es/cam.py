"""CLIP-ES class activation maps: softmax-GradCAM on a frozen CLIP ViT (docs/clip_es.md, "CAM").

One pass per image batch through the frozen :class:`~zss.teachers.clip.FrozenCLIP` vision tower:

1. the image (already resized to a multiple of the patch size, :func:`resize_to_patch_multiple`) is
   embedded with an interpolated positional embedding (:func:`embed_tokens`);
2. blocks ``1 .. L-1`` run without autograd; the head-averaged attention maps of the last
   ``attn_layers`` blocks (the last block included) are summed on the way (for CAA, ``zss.clip_es.caa``);
3. the last block is re-run *with* autograd from the output ``A`` of its first LayerNorm (``ln_1``),
   once per (image, present class) pair, batched: the image embedding is the mean of the patch tokens
   after ``ln_post`` and ``proj`` (CLS excluded), the logits are ``logit_scale * cos`` against the
   image's present classes plus the background words, and the GradCAM target is the *softmax
   probability* of the class (absent foreground classes never enter the softmax);
4. GradCAM: ``alpha_k = mean_ij dp_t/dA_k(ij)``, ``CAM = ReLU(sum_k alpha_k A_k)`` over patch tokens,
   min-max normalised per map.

Source: CLIP-ES (Lin et al., CVPR 2023), public code ``linyq2117/CLIP-ES`` (``generate_cams_voc12.py``,
``clip/model.py``, ``pytorch_grad_cam/base_cam.py``), as summarised in docs/clip_es.md. Our GradCAM is
written with ``torch.autograd.grad`` (no ``grad-cam`` dependency): one backward for all pairs.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from zss.models import clip_ops

__all__ = [
    "POS_INTERP_MODES",
    "ClipEsCams",
    "patch_multiple_size",
    "resize_to_patch_multiple",
    "embed_tokens",
    "labels_to_multihot",
    "minmax_normalize",
    "clip_es_cams",
]

#: Positional-embedding interpolation modes of :func:`embed_tokens`.
POS_INTERP_MODES = ("bilinear", "teacher")


class ClipEsCams(NamedTuple):
    """Output of :func:`clip_es_cams`.

    Attributes:
        cams: ``Tensor[B, C, h, w] float32`` GradCAM maps on the patch grid, min-max normalised to
            [0, 1] per (image, class); all zeros for classes absent from the image.
        present: ``Tensor[B, C] bool`` the image-level labels the maps were computed for.
        probs: ``Tensor[B, C] float32`` softmax probability of each present class among the image's
            present classes + background words (0 for absent classes).
        attn: ``Tensor[B, N, N] float32`` mean over the last ``attn_layers`` blocks of the head-averaged
            attention, CLS row/column removed (N = h*w patch tokens; rows = queries).
        grid: ``(h, w)`` patch grid, patches.
    """

    cams: Tensor
    present: Tensor
    probs: Tensor
    attn: Tensor
    grid: tuple[int, int]


def patch_multiple_size(height: int, width: int, patch: int) -> tuple[int, int]:
    """``(ceil(H / p) * p, ceil(W / p) * p)``: the CLIP-ES input size for an image (pixels).

    Source: CLIP-ES public code ``generate_cams_voc12.py`` (``img_ms_and_flip``, scale 1).
    """
    if patch <= 0:
        raise ValueError(f"patch_multiple_size: patch must be positive, got {patch}")
    return (int(math.ceil(height / patch)) * patch, int(math.ceil(width / patch)) * patch)


def resize_to_patch_multiple(images: Tensor, patch: int) -> Tensor:
    """Bicubic resize so both sides are multiples of ``patch`` (rounded up).

    Args:
        images: ``Tensor[B, 3, H, W]`` float (any normalisation: resizing is linear).
        patch: patch size, pixels.
    Returns:
        ``Tensor[B, 3, H', W'] float32`` with ``(H', W') = patch_multiple_size(H, W, patch)``
        (unchanged values when already a multiple). Bicubic, align_corners=False (the public code resizes
        the PIL image bicubically before normalising).
    """
    if images.ndim != 4:
        raise ValueError(f"resize_to_patch_multiple: images must be Tensor[B, 3, H, W], got {tuple(images.shape)}")
    size = patch_multiple_size(images.shape[-2], images.shape[-1], patch)
    x = images.float()
    if tuple(x.shape[-2:]) == size:
        return x
    return F.interpolate(x, size=size, mode="bicubic", align_corners=False)


def _bilinear_pos(teacher, grid: tuple[int, int]) -> Tensor:
    """Positional embedding ``Tensor[1 + h*w, W]`` with the patch part resized bilinearly
    (align_corners=False, no antialias), as CLIP-ES's ``upsample_pos_emb``; CLS row untouched."""
    with torch.no_grad():
        return clip_ops.resample_pos_embed(
            teacher.visual.positional_embedding, grid, teacher.native_grid, mode="bilinear"
        )


def embed_tokens(teacher, x: Tensor, pos_interp: str = "bilinear") -> tuple[Tensor, tuple[int, int]]:
    """Patch embedding + CLS + interpolated positional embedding + ``ln_pre``.

    Args:
        teacher: a :class:`~zss.teachers.clip.FrozenCLIP`.
        x: ``Tensor[B, 3, H, W]`` in CLIP normalisation and the teacher's dtype, H and W multiples of the
            patch size.
        pos_interp: ``"bilinear"`` (CLIP-ES public code, ``clip/model.py`` ``upsample_pos_emb``) or
            ``"teacher"`` (FrozenCLIP's own bicubic + antialias interpolation, :meth:`FrozenCLIP.embed`).
    Returns:
        (tokens ``Tensor[B, 1 + h*w, W]``, (h, w) patch grid).
    Raises:
        ValueError: unknown ``pos_interp``.
    """
    if pos_interp == "teacher":
        return teacher.embed(x)
    if pos_interp != "bilinear":
        raise ValueError(
            f"embed_tokens: pos_interp={pos_interp!r} is not one of {POS_INTERP_MODES} (clip_es.cam.pos_interp=...)"
        )
    p = teacher.patch_size
    return clip_ops.embed(teacher.visual, x, _bilinear_pos(teacher, (x.shape[-2] // p, x.shape[-1] // p)))


def labels_to_multihot(
    class_ids: Tensor | Sequence[Sequence[int]], num_classes: int, device: torch.device | str | None = None
) -> Tensor:
    """Image-level labels as ``Tensor[B, C] bool``.

    Args:
        class_ids: a ``Tensor[B, C]`` bool/0-1 multi-hot, or one sequence of class indices (rows of the
            class text embeddings, ``0 .. C-1``) per image.
        num_classes: C.
        device: device of the result (default: the input's, else CPU).
    Raises:
        ValueError: wrong multi-hot shape or an index outside ``[0, C)`` (names the image and value).
    """
    if isinstance(class_ids, Tensor):
        if class_ids.ndim != 2 or class_ids.shape[1] != num_classes:
            raise ValueError(f"labels: expected a multi-hot Tensor[B, {num_classes}], got {tuple(class_ids.shape)}")
        return class_ids.to(device=device if device is not None else class_ids.device, dtype=torch.bool)
    out = torch.zeros(len(class_ids), num_classes, dtype=torch.bool)
    for b, ids in enumerate(class_ids):
        for c in ids:
            c = int(c)
            if not 0 <= c < num_classes:
                raise ValueError(f"labels: image {b} has class index {c} outside [0, {num_classes})")
            out[b, c] = True
    return out.to(device if device is not None else "cpu")


def minmax_normalize(x: Tensor, dims: int = 1, eps: float = 1e-7) -> Tensor:
    """``(x - min) / (eps + max(x - min))`` over the last ``dims`` dimensions (each map separately).

    An all-constant map becomes all zeros. Source: ``pytorch_grad_cam`` ``scale_cam_image`` as used by the
    CLIP-ES public code (eps 1e-7). The public code applies it twice in a row; the second pass changes
    values by < 2e-7 and is skipped here.
    """
    flat = x.flatten(-dims) if dims > 1 else x
    lo = flat.amin(dim=-1, keepdim=True)
    flat = flat - lo
    flat = flat / (eps + flat.amax(dim=-1, keepdim=True))
    return flat.view_as(x) if dims > 1 else flat


def _check_blocks(teacher) -> None:
    for i, blk in enumerate(teacher.visual.transformer.resblocks):
        attn = getattr(blk, "attn", None)
        if not clip_ops.is_plain_block(blk):
            raise ValueError(
                f"CLIP-ES: vision block {i} of teacher {teacher.identity.get('model_name')!r} is a "
                f"{type(blk).__name__} with {type(attn).__name__} attention; CLIP-ES needs open_clip's standard "
                f"ResidualAttentionBlock (torch MultiheadAttention), e.g. teacher.model_name=ViT-B-16-quickgelu."
            )


def clip_es_cams(
    teacher,
    images: Tensor,
    labels: Tensor | Sequence[Sequence[int]],
    fg_embeds: Tensor,
    bg_embeds: Tensor,
    attn_layers: int = 8,
    logit_scale: float | None = None,
    pos_interp: str = "bilinear",
    pair_chunk: int = 16,
) -> ClipEsCams:
    """Softmax-GradCAM maps of every present class plus the attention used by CAA (docs/clip_es.md).

    Args:
        teacher: frozen :class:`~zss.teachers.clip.FrozenCLIP` (open_clip ViT with standard blocks) whose
            ``image_size`` is None (CLIP-ES runs at the image's own size).
        images: ``Tensor[B, 3, H, W]`` float, normalised with the teacher's ``input_mean``/``input_std``;
            H and W multiples of the patch size (see :func:`resize_to_patch_multiple`); any aspect ratio.
        labels: image-level labels, a ``Tensor[B, C] bool`` multi-hot or per-image class-index lists (rows
            of ``fg_embeds``). Images without a label get all-zero maps.
        fg_embeds: ``Tensor[C, D] float32`` L2-normalised text embeds of the foreground classes
            (``teacher.text(names, [template])``).
        bg_embeds: ``Tensor[C_bg, D] float32`` L2-normalised text embeds of the background words
            (25 for VOC, 23 for COCO in the public code).
        attn_layers: number of last blocks whose attention is averaged for CAA (8, public code).
        logit_scale: multiplier of the cosine logits; None = the teacher's ``exp(logit_scale)``
            (100 for OpenAI CLIP, as the public code).
        pos_interp: positional-embedding interpolation, see :func:`embed_tokens`.
        pair_chunk: (image, class) pairs per batched backward (memory bound; ours, no effect on values).

    Returns:
        :class:`ClipEsCams` (maps on the patch grid; upsample with ``F.interpolate(..., "bilinear")``).

    Raises:
        ValueError: teacher with ``image_size`` set or non-standard blocks, bad shapes (images not
            multiples of the patch size, embeds of another width, labels of another class count).
    """
    if getattr(teacher, "image_size", None) is not None:
        raise ValueError(
            f"CLIP-ES runs the teacher at each image's own size, but teacher.image_size="
            f"{teacher.image_size}; set teacher.image_size=null."
        )
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"clip_es_cams: images must be Tensor[B, 3, H, W], got {tuple(images.shape)}")
    p = teacher.patch_size
    if images.shape[-2] % p or images.shape[-1] % p:
        raise ValueError(
            f"clip_es_cams: image size {tuple(images.shape[-2:])} is not a multiple of the patch size "
            f"{p}; resize with zss.clip_es.resize_to_patch_multiple first."
        )
    C, D = fg_embeds.shape
    if bg_embeds.ndim != 2 or bg_embeds.shape[1] != D or D != teacher.embed_dim:
        raise ValueError(
            f"clip_es_cams: fg_embeds {tuple(fg_embeds.shape)} / bg_embeds {tuple(bg_embeds.shape)} do "
            f"not match the teacher's embed_dim={teacher.embed_dim}"
        )
    if attn_layers < 1:
        raise ValueError(f"clip_es_cams: attn_layers must be >= 1, got {attn_layers}")
    _check_blocks(teacher)
    dev = teacher.device
    present = labels_to_multihot(labels, C, device=dev)
    B = images.shape[0]
    if present.shape[0] != B:
        raise ValueError(f"clip_es_cams: labels for {present.shape[0]} images but {B} images given")

    blocks = teacher.visual.transformer.resblocks
    L = len(blocks)
    k = min(int(attn_layers), L)
    with torch.no_grad():
        x = teacher.prepare(images.to(dev))  # CLIP normalisation, weights' dtype
        tok, (h, w) = embed_tokens(teacher, x, pos_interp)
        attn_sum = None
        for i in range(L - 1):
            blk = blocks[i]
            a, wts = clip_ops.attend(blk, clip_ops.pre_attention_norm(blk, tok), need_weights=i >= L - k)
            if wts is not None:
                attn_sum = wts.float() if attn_sum is None else attn_sum + wts.float()
            tok = clip_ops.finish_block(blk, tok, a)
        last = blocks[L - 1]
        y = clip_ops.pre_attention_norm(last, tok)  # GradCAM target activations [B, 1+N, W]
        _, w_last = clip_ops.attend(last, y, need_weights=True)
        attn_sum = w_last.float() if attn_sum is None else attn_sum + w_last.float()
        attn = (attn_sum / k)[:, 1:, 1:].contiguous()  # [B, N, N]

    text = torch.cat([fg_embeds, bg_embeds], dim=0).to(dev).float()  # [C + C_bg, D]
    scale = float(teacher.model.logit_scale.exp()) if logit_scale is None else float(logit_scale)
    N = h * w
    cams = torch.zeros(B, C, N, dtype=torch.float32, device=dev)
    probs = torch.zeros(B, C, dtype=torch.float32, device=dev)
    pairs = present.nonzero()  # [P, 2] (image, class)
    for chunk in pairs.split(max(1, int(pair_chunk))):
        b, c = chunk[:, 0], chunk[:, 1]
        with torch.enable_grad():
            A = y[b].detach().clone().requires_grad_(True)  # [p, 1+N, W], one copy per pair
            a, _ = clip_ops.attend(last, A)
            out = clip_ops.finish_block(last, tok[b], a)
            feat = F.normalize(teacher.project(out[:, 1:]).float().mean(dim=1), dim=-1)  # [p, D] patch GAP
            logits = scale * feat @ text.t()  # [p, C + C_bg]
            absent = torch.zeros_like(logits, dtype=torch.bool)
            absent[:, :C] = ~present[b]
            prob = logits.masked_fill(absent, float("-inf")).softmax(dim=-1)
            target = prob[torch.arange(len(b), device=dev), c]  # [p]
            (grad,) = torch.autograd.grad(target.sum(), A)
        act = A.detach()[:, 1:].float()  # [p, N, W], CLS dropped
        alpha = grad[:, 1:].float().mean(dim=1)  # [p, W]  (GradCAM channel weights)
        cam = torch.relu(torch.einsum("pnw,pw->pn", act, alpha))
        cams[b, c] = minmax_normalize(cam)
        probs[b, c] = target.detach()
    return ClipEsCams(cams.view(B, C, h, w), present, probs, attn, (h, w))
