"""CLIP-ES (Lin et al., CVPR 2023): training-free pseudo masks from a frozen CLIP (docs/clip_es.md).

- :mod:`zss.clip_es.cam`: softmax-GradCAM at the last block's ``ln_1`` (patch-GAP image embedding,
  softmax over the image's classes + background words) and the attention kept for CAA;
- :mod:`zss.clip_es.caa`: class-aware attention affinity (Sinkhorn, symmetrise, power, box mask);
- :mod:`zss.clip_es.masks`: background score, dense CRF (optional ``pydensecrf2``), confidence ignore,
  and :func:`clip_es_regions` (CLIP-ES masks as region ids for another method).

The split-level runner (PNGs + mIoU report, ``zss-clip-es-masks``) is :mod:`zss.engine.clip_es_masks`.
"""

from .caa import box_mask, caa_transition, connected_components, refine_cams, sinkhorn
from .cam import (
    ClipEsCams,
    clip_es_cams,
    embed_tokens,
    labels_to_multihot,
    minmax_normalize,
    patch_multiple_size,
    resize_to_patch_multiple,
)
from .masks import (
    CRF_PUBLIC,
    background_score,
    cams_to_labels,
    clip_es_regions,
    confidence_ignore,
    crf_color_image,
    dense_crf,
    densecrf_available,
    save_mask_png,
)

__all__ = [
    "ClipEsCams",
    "clip_es_cams",
    "embed_tokens",
    "labels_to_multihot",
    "minmax_normalize",
    "patch_multiple_size",
    "resize_to_patch_multiple",
    "sinkhorn",
    "caa_transition",
    "connected_components",
    "box_mask",
    "refine_cams",
    "CRF_PUBLIC",
    "background_score",
    "cams_to_labels",
    "clip_es_regions",
    "confidence_ignore",
    "crf_color_image",
    "dense_crf",
    "densecrf_available",
    "save_mask_png",
]
