"""CLIP-ES class-aware attention-based affinity (CAA) refinement of CAMs (docs/clip_es.md, "CAA").

The affinity is built once per image from the teacher's attention (mean over the last 8 blocks of the
head-averaged attention, CLS removed, :func:`zss.clip_es.cam.clip_es_cams`) and shared by all classes:
Sinkhorn normalisation (3 rounds of column- then row-normalisation), symmetrisation ``(T + T^T) / 2`` and
one power step ``T <- T T``. It becomes class-aware only through a box mask per class: the CAM is
thresholded at ``threshold * max`` (on the 8-bit CAM, as the public code), every connected blob gets its
bounding box, and only source patches inside a box propagate: ``c_i = sum_j T_ij m_j CAM_j``, then min-max.
Everything here is batched over images and classes (``Tensor[B, C, ...]``) and runs on any device; the blobs
come from ``scipy.ndimage.label`` on CPU and from a torch label propagation elsewhere.

Source: CLIP-ES (CVPR 2023) public code ``generate_cams_voc12.py`` (refinement loop) and ``utils.py``
(``scoremap2bbox``), summarised in docs/clip_es.md.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .cam import minmax_normalize

__all__ = ["sinkhorn", "caa_transition", "connected_components", "BOX_BACKENDS", "box_mask", "refine_cams"]


def sinkhorn(affinity: Tensor, rounds: int = 3, eps: float = 0.0) -> Tensor:
    """Alternate column and row normalisation of non-negative matrices.

    Args:
        affinity: ``Tensor[..., N, N]`` non-negative (attention weights), float.
        rounds: number of (column, row) rounds (3 in the public code).
        eps: added to the sums before dividing (0 = the public code; attention rows never sum to 0).
    Returns:
        ``Tensor[..., N, N] float32``; the last operation is the row normalisation, so rows sum to 1
        exactly and columns approximately (Sinkhorn-Knopp converges to a doubly-stochastic matrix).
    Raises:
        ValueError: ``rounds < 1`` or a non-square matrix.
    """
    if affinity.shape[-1] != affinity.shape[-2]:
        raise ValueError(f"sinkhorn: expected square matrices [..., N, N], got {tuple(affinity.shape)}")
    if rounds < 1:
        raise ValueError(f"sinkhorn: rounds must be >= 1, got {rounds}")
    t = affinity.float()
    for _ in range(int(rounds)):
        t = t / (t.sum(dim=-2, keepdim=True) + eps)
        t = t / (t.sum(dim=-1, keepdim=True) + eps)
    return t


def caa_transition(attn: Tensor, rounds: int = 3, power_steps: int = 1) -> Tensor:
    """Class-agnostic transition matrix of CAA: Sinkhorn, symmetrise, power.

    Args:
        attn: ``Tensor[B, N, N]`` mean head-averaged attention of the last blocks, CLS removed.
        rounds: Sinkhorn rounds (3, public code).
        power_steps: number of ``T <- T @ T`` steps (1, public code).
    Returns:
        ``Tensor[B, N, N] float32`` symmetric transition matrix ``T``.
    """
    t = sinkhorn(attn, rounds)
    t = (t + t.transpose(-1, -2)) / 2
    for _ in range(int(power_steps)):
        t = t @ t
    return t


def connected_components(fg: Tensor) -> Tensor:
    """8-connected components of binary maps, vectorised label propagation (max-pooling of ids).

    Args:
        fg: ``Tensor[M, h, w] bool`` foreground maps.
    Returns:
        ``Tensor[M, h, w] int64`` component ids: 0 = background, components numbered by the largest
        flat index (1-based) they contain (not consecutive). Iterates until nothing changes (at most the
        longest path inside a component).
    """
    if fg.ndim != 3:
        raise ValueError(f"connected_components: expected Tensor[M, h, w], got {tuple(fg.shape)}")
    M, h, w = fg.shape
    mask = fg.float().unsqueeze(1)  # [M, 1, h, w]
    ids = torch.arange(1, h * w + 1, device=fg.device, dtype=torch.float32).view(1, 1, h, w) * mask
    while True:  # ids < 2**24: exact in float32 for any realistic patch grid
        nxt = F.max_pool2d(ids, kernel_size=3, stride=1, padding=1) * mask
        if torch.equal(nxt, ids):
            break
        ids = nxt
    return ids.squeeze(1).long()


BOX_BACKENDS = ("auto", "scipy", "torch")


def box_mask(cams: Tensor, threshold: float = 0.4, *, backend: str = "auto") -> Tensor:
    """Class-aware box mask of CAA from CAMs on the patch grid.

    Each map is quantised to 8 bits (``uint8(cam * 255)``), thresholded strictly above
    ``int(threshold * max)``; every 8-connected blob gets its bounding box ``[y0, y1) x [x0, x1)`` with
    ``x1 = min(x0 + width, W - 1)`` and ``y1 = min(y0 + height, H - 1)`` (the public code's clamp, so a
    box touching the last row/column stops one patch short); the mask is the union of the boxes. A map
    with no blob gives an empty mask (its refined CAM is then all zeros).

    Args:
        cams: ``Tensor[..., h, w]`` float CAMs in [0, 1].
        threshold: fraction of the map's maximum (0.4 VOC, 0.7 COCO in the public code).
        backend: how the blobs are found: ``"scipy"`` (``scipy.ndimage.label`` + ``find_objects``, CPU),
            ``"torch"`` (:func:`connected_components`, any device, no host copy) or ``"auto"`` (scipy for
            CPU tensors, torch otherwise). Both give the same mask (tested).
    Returns:
        ``Tensor[..., h, w] bool`` on the device of ``cams``.
    Raises:
        ValueError: unknown ``backend``.

    Source: CLIP-ES public code ``utils.py`` ``scoremap2bbox`` (OpenCV ``threshold`` + ``findContours``
    with ``RETR_TREE``, ``multi_contour_eval=True``); hole contours lie inside their blob's box, so blobs
    suffice.
    """
    if backend not in BOX_BACKENDS:
        raise ValueError(f"box_mask: backend={backend!r} is not one of {BOX_BACKENDS}")
    shape = cams.shape
    h, w = shape[-2:]
    maps = cams.reshape(-1, h, w).float()
    q = (maps * 255).clamp(0, 255).to(torch.uint8).to(torch.int32)  # numpy astype(uint8) truncation
    thr = (float(threshold) * q.flatten(1).amax(dim=1).double()).floor().to(torch.int32)  # int(thr * max), float64
    fg = q > thr.view(-1, 1, 1)
    if not bool(fg.any()):
        return torch.zeros_like(fg).reshape(shape)
    if backend == "scipy" or (backend == "auto" and fg.device.type == "cpu"):
        return _boxes_scipy(fg).to(cams.device).reshape(shape)
    return _boxes_torch(fg).reshape(shape)


def _boxes_scipy(fg: Tensor) -> Tensor:
    """Union of the clamped blob boxes of ``fg`` (``Tensor[M, h, w] bool``) with ``scipy.ndimage``."""
    from scipy import ndimage

    M, h, w = fg.shape
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = True  # 8-connected inside a map, never across maps
    labels, _ = ndimage.label(fg.cpu().numpy(), structure=structure)
    out = np.zeros((M, h, w), dtype=bool)
    for sl in ndimage.find_objects(labels):  # one (map, rows, cols) slice per blob
        if sl is not None:
            out[sl[0].start, sl[1].start : min(sl[1].stop, h - 1), sl[2].start : min(sl[2].stop, w - 1)] = True
    return torch.from_numpy(out)


def _boxes_torch(fg: Tensor) -> Tensor:
    """:func:`_boxes_scipy` on the tensor's device: :func:`connected_components` and scatter min/max boxes."""
    M, h, w = fg.shape
    dev = fg.device
    comp = connected_components(fg)  # [M, h, w]
    flat = comp.view(M, -1)
    keep = flat > 0
    # global component key = map index * (h*w + 1) + id
    keys = (torch.arange(M, device=dev).view(M, 1) * (h * w + 1) + flat)[keep]
    uniq, inv = torch.unique(keys, return_inverse=True)
    K = uniq.numel()
    rows = torch.arange(h, device=dev).view(1, h, 1).expand(M, h, w).reshape(M, -1)[keep]
    cols = torch.arange(w, device=dev).view(1, 1, w).expand(M, h, w).reshape(M, -1)[keep]
    big = torch.full((K,), h * w, dtype=torch.long, device=dev)
    y0 = big.clone().scatter_reduce(0, inv, rows, reduce="amin")
    x0 = big.clone().scatter_reduce(0, inv, cols, reduce="amin")
    y1 = torch.full_like(big, -1).scatter_reduce(0, inv, rows, reduce="amax") + 1
    x1 = torch.full_like(big, -1).scatter_reduce(0, inv, cols, reduce="amax") + 1
    y1 = y1.clamp(max=h - 1)
    x1 = x1.clamp(max=w - 1)
    map_of = torch.div(uniq, h * w + 1, rounding_mode="floor")  # [K]
    ar_h = torch.arange(h, device=dev)
    ar_w = torch.arange(w, device=dev)
    in_y = (ar_h.view(1, h) >= y0.view(K, 1)) & (ar_h.view(1, h) < y1.view(K, 1))  # [K, h]
    in_x = (ar_w.view(1, w) >= x0.view(K, 1)) & (ar_w.view(1, w) < x1.view(K, 1))  # [K, w]
    boxes = (in_y.unsqueeze(2) & in_x.unsqueeze(1)).float()  # [K, h, w]
    acc = torch.zeros(M, h, w, device=dev).index_add_(0, map_of, boxes)
    return acc > 0


def refine_cams(transition: Tensor, cams: Tensor, mask: Tensor) -> Tensor:
    """Propagate CAMs with the shared transition matrix, masked by each class's boxes, then min-max.

    ``refined[b, c, i] = sum_j T[b, i, j] * mask[b, c, j] * cam[b, c, j]``, min-max normalised per map
    (an all-zero result stays zero).

    Args:
        transition: ``Tensor[B, N, N]`` from :func:`caa_transition` (one per image, reused for all classes).
        cams: ``Tensor[B, C, h, w]`` CAMs on the patch grid, N = h*w.
        mask: ``Tensor[B, C, h, w] bool`` from :func:`box_mask`.
    Returns:
        ``Tensor[B, C, h, w] float32`` refined CAMs in [0, 1].
    Raises:
        ValueError: shapes that do not match.
    """
    B, C, h, w = cams.shape
    if transition.shape != (B, h * w, h * w) or mask.shape != cams.shape:
        raise ValueError(
            f"refine_cams: transition {tuple(transition.shape)} / mask {tuple(mask.shape)} do not match "
            f"cams {tuple(cams.shape)} (expected [B, h*w, h*w] and [B, C, h, w])"
        )
    src = (cams.float() * mask.float()).view(B, C, h * w)
    out = torch.einsum("bij,bcj->bci", transition.float(), src)
    return minmax_normalize(out).view(B, C, h, w)
