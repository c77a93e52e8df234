"""CLIP-ZSS PLM pseudo labels: multi-scale window seeds -> batched K-Means -> mask fusion -> fused labels.

docs/methods.md (CLIP-ZSS) ("PLM — pseudo labels", [summary]): on the frozen CLIP dense tokens ``O [h, w, D]`` of each
image, seeds are average-pooled windows of size ``s`` and stride ``floor(s/2)`` for each scale ``s``;
a cosine K-Means is initialised from each scale's seeds; masks whose centres have cosine ``> lam``
are fused (each mask used once); the fused masks are written only where the training label is
``ignore_index`` (background, unseen, unlabelled) as per-image pseudo ids ``num_seen + k`` next to
the seen ground truth -> fused labels ``F``.

Everything the summary does not state is ours (documented at each function): scales, ``lam``,
iteration count, minimum area, how fused masks from different scales that overlap share a pixel,
and how region ids are numbered. The pipeline is batched: all images and all scales go through one
:func:`~zss.ops.kmeans.batched_kmeans` call (one group per scale); fusion is vectorised over images.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from zss.ops.kmeans import KMeansResult, batched_kmeans

__all__ = [
    "window_seeds",
    "fuse_masks",
    "merge_clusters",
    "pseudo_label_quality",
    "fused_labels",
    "pseudo_labels",
    "PseudoLabels",
    "num_seeds",
    "DEFAULT_SCALES",
    "DEFAULT_LAMBDA",
    "DEFAULT_MIN_AREA",
    "FUSION_MODES",
]

#: Window sizes in patches (tokens) for a 32x32 token grid (512 crop, ViT-B/16): windows of 64, 128
#: and 256 pixels = 1/8, 1/4, 1/2 of the crop side -> 15x15 + 7x7 + 3x3 = 283 seeds per image.
#: Not in the paper: our default.
DEFAULT_SCALES: tuple[int, ...] = (4, 8, 16)
#: Cosine threshold above which masks (K-Means centres) of different scales are fused. Not in the
#: paper (the summary only names lambda): our default.
DEFAULT_LAMBDA: float = 0.9
#: Fused regions covering fewer eligible tokens than this are dropped to ignore. Not in the paper: ours.
DEFAULT_MIN_AREA: int = 4
#: The fusion rules of :func:`pseudo_labels` (``mode``; docs/methods.md "PLM fusion").
FUSION_MODES: tuple[str, ...] = ("merge", "components", "matching")


@torch.no_grad()
def window_seeds(dense: Tensor, scales: Sequence[int] = DEFAULT_SCALES) -> tuple[Tensor, Tensor, Tensor]:
    """Multi-scale sliding-window seeds from dense tokens (docs/methods.md (CLIP-ZSS) PLM; windows/stride per the
    summary).

    For each scale ``s`` (window side in patches): ``F.avg_pool2d`` with kernel ``s`` and stride
    ``max(1, s // 2)`` over the dense tokens (windows that do not fit at the right/bottom border are
    not used: PyTorch's floor mode), then L2 normalisation. A window larger than the grid is clamped
    to the grid side (one window along that axis) — ours.

    Args:
        dense: ``Tensor[B, D, h, w]`` dense tokens (any float dtype; L2-normalised CLIP embeds).
        scales: window sides in patches (positive ints), in the order the groups are wanted.
            Default :data:`DEFAULT_SCALES` (ours, for 32x32 grids).

    Returns:
        ``(seeds, valid, scale_index)``: ``seeds`` ``Tensor[B, K, D] float32`` unit vectors, all
        scales concatenated (scale 0 first, windows in row-major order); ``valid``
        ``BoolTensor[B, K]`` (all True: every image has the same grid; kept so callers can pad
        problems of different sizes); ``scale_index`` ``Tensor[K] int64`` on ``dense.device``: the
        position in ``scales`` each seed comes from (use as ``groups`` for
        :func:`~zss.ops.kmeans.batched_kmeans`). ``K = sum_s n_h(s) * n_w(s)`` with
        ``n(s) = (side - s) // max(1, s // 2) + 1``.

    Raises:
        ValueError: ``dense`` is not 4-D, ``scales`` empty or not positive.
    """
    if dense.dim() != 4:
        raise ValueError(f"window_seeds: dense must be [B, D, h, w], got shape {tuple(dense.shape)}")
    scales = tuple(int(s) for s in scales)
    if not scales or min(scales) < 1:
        raise ValueError(
            f"window_seeds: scales must be a non-empty sequence of positive window sides (patches), got {scales}"
        )
    B, D, h, w = dense.shape
    x = dense.float()
    seeds, index = [], []
    for i, s in enumerate(scales):
        kh, kw = min(s, h), min(s, w)
        pooled = F.avg_pool2d(x, kernel_size=(kh, kw), stride=(max(1, kh // 2), max(1, kw // 2)))
        pooled = pooled.flatten(2).transpose(1, 2)  # [B, n_s, D]
        seeds.append(pooled)
        index.append(torch.full((pooled.shape[1],), i, dtype=torch.int64, device=dense.device))
    seeds_t = F.normalize(torch.cat(seeds, 1), dim=-1)
    valid = torch.ones(B, seeds_t.shape[1], dtype=torch.bool, device=dense.device)
    return seeds_t, valid, torch.cat(index)


def num_seeds(grid: tuple[int, int], scales: Sequence[int] = DEFAULT_SCALES) -> int:
    """Number of window seeds :func:`window_seeds` makes on a ``grid`` of ``(h, w)`` patches (host ints only).

    ``sum_s n_h(s) * n_w(s)`` with ``n(side) = (side - k) // max(1, k // 2) + 1``, ``k = min(s, side)``
    (duplicate scales counted once, as :func:`pseudo_labels` does). It bounds the number of K-Means
    clusters, hence of pseudo regions per image: a static size for sync-free padding (283 for the
    default scales on a 32x32 grid).
    """
    return sum(_scale_sizes(grid, sorted({int(v) for v in scales})))


def _scale_sizes(grid: tuple[int, int], scales: Sequence[int]) -> list[int]:
    """Seeds per scale (in the given order) of :func:`window_seeds` on a ``grid``, as host ints."""
    h, w = int(grid[0]), int(grid[1])
    out = []
    for s in scales:
        kh, kw = min(int(s), h), min(int(s), w)
        out.append(((h - kh) // max(1, kh // 2) + 1) * ((w - kw) // max(1, kw // 2) + 1))
    return out


def _components(adj: Tensor, sync_free: bool = False) -> Tensor:
    """Connected components of ``adj [B, M, M]`` (symmetric bool) -> smallest node index per node.

    ``sync_free``: run all ``M`` propagation rounds (a fixed point is reached earlier and kept, so the
    result is the same) instead of stopping when nothing changes (a host read-back per round)."""
    B, M, _ = adj.shape
    comp = torch.arange(M, device=adj.device).expand(B, M).contiguous()
    big = torch.full((), M, dtype=comp.dtype, device=adj.device)
    for _ in range(M):
        nb = torch.where(adj, comp.unsqueeze(1), big).amin(-1)  # smallest label among neighbours
        new = torch.minimum(comp, nb)
        new = new.gather(1, new)  # pointer jumping (labels are node ids of the same component)
        if not sync_free and torch.equal(new, comp):
            break
        comp = new
    return comp


def _greedy_matching(sim: Tensor, adj: Tensor, sync_free: bool = False) -> Tensor:
    """Greedy one-to-one matching on edges ``adj`` in descending ``sim`` -> partner ``[B, M]`` (-1: none).

    Vectorised as rounds of mutually-best pairs (locally dominant edges), which equals the greedy
    matching over globally sorted pairs (ties: lowest index first). ``sync_free``: all ``M`` rounds
    (rounds after the last match change nothing) instead of an early exit that reads a value back.
    """
    B, M, _ = adj.shape
    ar = torch.arange(M, device=adj.device).expand(B, M)
    partner = torch.full((B, M), -1, dtype=torch.int64, device=adj.device)
    free = torch.ones(B, M, dtype=torch.bool, device=adj.device)
    for _ in range(M):
        ok = adj & free.unsqueeze(1) & free.unsqueeze(2)
        s = torch.where(ok, sim, float("-inf"))
        val, best = s.max(-1)
        has = val > float("-inf")
        mutual = has & (best.gather(1, best) == ar)
        if not sync_free and not bool(mutual.any()):
            break
        partner = torch.where(mutual, best, partner)
        free = free & ~mutual
    return partner


@torch.no_grad()
def fuse_masks(
    centers: Tensor,
    labels: Tensor,
    valid: Tensor | None,
    scale_index: Tensor,
    lam: float = DEFAULT_LAMBDA,
    min_area: int = DEFAULT_MIN_AREA,
    max_regions: int | None = None,
    area_mask: Tensor | None = None,
    mode: str = "components",
    sync_free: bool = False,
) -> tuple[Tensor, Tensor]:
    """Fuse the multi-scale K-Means masks of each image into one region map (docs/methods.md (CLIP-ZSS) PLM).

    A *mask* is one non-empty cluster (centre ``k``) of one scale. Rules (the cosine threshold
    ``lam`` is the paper's; everything else is ours):

    1. **Edges**: masks ``a``, ``b`` of *different* scales of the same image with
       ``cos(centre_a, centre_b) > lam`` (strict). Masks of the same scale are never linked
       directly (K-Means already separated them).
    2. **Fusion** (``mode``): ``"components"`` (default): fused regions are the connected components
       of that graph (transitive; equal to union-find over the pairs in any order). "Each mask used
       once" = every mask belongs to exactly one fused region. ``"matching"``: the strict reading —
       greedy one-to-one matching over pairs sorted by descending cosine (ties: lowest index); each
       mask is fused with at most one other mask.
    3. **Pixels** (overlaps across scales): every token has one mask per scale, hence up to ``S``
       candidate regions. It takes the region that most of its scales vote for; ties go to the
       earliest scale along ``labels``' S axis (:func:`pseudo_labels` orders scales finest first,
       so ties keep the finest, most precise boundary).
    4. **Ids**: regions are numbered ``0..R-1`` per image by decreasing area (area counted on
       ``area_mask`` tokens, e.g. the tokens where the label is ignore), ties by lower mask index.
       Regions with area ``< min_area`` tokens become ``-1`` (ignore); with ``max_regions`` only the
       ``max_regions`` largest are kept.

    Args:
        centers: ``Tensor[B, K, D]`` K-Means centres of all scales (any norm; compared by cosine).
        labels: ``Tensor[B, S, h, w] int64`` cluster of each token per scale, as indices into ``K``
            (the ``labels`` of :func:`~zss.ops.kmeans.batched_kmeans` with ``groups``, reshaped).
        valid: ``BoolTensor[B, K]`` or None; invalid centres are never masks.
        scale_index: ``Tensor[K] int64`` scale of each centre (from :func:`window_seeds`).
        lam: cosine threshold in ``[-1, 1]`` (fraction, not percent). Default 0.9 (ours).
        min_area: minimum region area in tokens (patches). Default 4 (ours).
        max_regions: keep at most this many regions per image (largest first); None = no cap.
        area_mask: ``BoolTensor[B, h, w]`` tokens counted for the area (None = all tokens).
        mode: ``"components"`` or ``"matching"`` (see rule 2).
        sync_free: run the fusion's fixed number of rounds (``K``) without reading a value back to the
            host (same result; see :func:`pseudo_labels`). Default False (stop early).

    Returns:
        ``(region_ids, num_regions)``: ``Tensor[B, h, w] int64`` in ``{-1, 0..R_b-1}`` (``-1`` = no
        region) and ``Tensor[B] int64`` ``R_b``.

    Raises:
        ValueError: shape mismatches, unknown ``mode``, ``lam`` outside ``[-1, 1]``.
    """
    if labels.dim() != 4:
        raise ValueError(f"fuse_masks: labels must be [B, S, h, w], got {tuple(labels.shape)}")
    B, S, h, w = labels.shape
    if centers.dim() != 3 or centers.shape[0] != B:
        raise ValueError(f"fuse_masks: centers must be [B, K, D] with B={B}, got {tuple(centers.shape)}")
    K = centers.shape[1]
    if scale_index.shape != (K,):
        raise ValueError(f"fuse_masks: scale_index must be [K]={K}, got {tuple(scale_index.shape)}")
    if mode not in ("components", "matching"):
        raise ValueError(f"fuse_masks: mode must be 'components' or 'matching', got {mode!r}")
    if not -1.0 <= lam <= 1.0:
        raise ValueError(f"fuse_masks: lam is a cosine threshold in [-1, 1], got {lam}")
    dev = labels.device
    N = h * w
    lab = labels.reshape(B, S * N).long()
    counts = torch.zeros(B, K, device=dev).scatter_add_(1, lab, torch.ones(B, S * N, device=dev))
    alive = counts > 0
    if valid is not None:
        if valid.shape != (B, K):
            raise ValueError(f"fuse_masks: valid must be [B, K]={(B, K)}, got {tuple(valid.shape)}")
        alive &= valid.to(dev, torch.bool)
    c = F.normalize(centers.to(dev).float(), dim=-1)
    sim = torch.bmm(c, c.transpose(1, 2))  # [B, K, K]
    sidx = scale_index.to(dev)
    cross = sidx.unsqueeze(0) != sidx.unsqueeze(1)  # [K, K]
    adj = (sim > lam) & cross & alive.unsqueeze(1) & alive.unsqueeze(2)
    if mode == "components":
        comp = _components(adj, sync_free)
    else:
        partner = _greedy_matching(sim, adj, sync_free)
        ar = torch.arange(K, device=dev).expand(B, K)
        comp = torch.where(partner >= 0, torch.minimum(ar, partner), ar)

    pc = comp.gather(1, lab).view(B, S, N)  # region candidate per scale
    votes = (pc.unsqueeze(1) == pc.unsqueeze(2)).sum(2)  # [B, S, N]
    win = votes.argmax(1, keepdim=True)  # first max -> earliest scale
    pix = pc.gather(1, win).squeeze(1)  # [B, N] component id in [0, K)

    return _number_regions(pix, K, (h, w), min_area, max_regions, area_mask)


def _number_regions(
    pix: Tensor, K: int, grid: tuple[int, int], min_area: int, max_regions: int | None, area_mask: Tensor | None
) -> tuple[Tensor, Tensor]:
    """Number the regions of ``pix [B, N]`` (ids in ``[0, K)``) by decreasing area (rule 4 of
    :func:`fuse_masks`) -> ``(Tensor[B, h, w] int64 in {-1, 0..R-1}, Tensor[B] int64 R)``."""
    B, N = pix.shape
    h, w = grid
    dev = pix.device
    if area_mask is None:
        wts = torch.ones(B, N, device=dev)
    else:
        if area_mask.shape != (B, h, w):
            raise ValueError(f"fuse_masks: area_mask must be [B, h, w]={(B, h, w)}, got {tuple(area_mask.shape)}")
        wts = area_mask.reshape(B, N).to(dev).float()
    area = torch.zeros(B, K, device=dev).scatter_add_(1, pix, wts)
    present = torch.zeros(B, K, dtype=torch.bool, device=dev).scatter_(1, pix, True)
    keep = present & (area >= min_area)
    key = torch.where(keep, area, torch.full_like(area, -1.0))
    order = torch.sort(key, dim=1, descending=True, stable=True).indices  # [B, K]
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(K, device=dev).expand(B, K).contiguous())
    if max_regions is not None:
        keep &= rank < max_regions
    region_of = torch.where(keep, rank, torch.full_like(rank, -1))
    region = region_of.gather(1, pix).view(B, h, w)
    return region, keep.sum(1)


@torch.no_grad()
def merge_clusters(
    x: Tensor,
    labels: Tensor,
    num_clusters: int,
    lam: float = DEFAULT_LAMBDA,
    max_rounds: int = 64,
    sync_free: bool = False,
) -> Tensor:
    """Agglomerative fusion of K-Means clusters with recomputed centres (``mode="merge"``; ours).

    The summary's rule "masks whose centres have cosine > λ are fused" read as greedy agglomerative
    merging: in each round every cluster whose most similar cluster (cosine of the centres) exceeds
    ``lam`` and is larger (token count; ties: lower id) joins it, unless that cluster is itself joining
    another one in the same round (so no chain forms within a round); centres are then recomputed as
    the normalised mean of all member tokens. Rounds repeat until no cluster moves (or ``max_rounds``);
    every round with a pair above ``lam`` moves at least one cluster.
    Unlike connected components over fixed centres, a boundary cluster that mixes two objects cannot
    chain them into one region: after it joins one side, the recomputed centre moves away from the
    other (docs/methods.md, "PLM fusion", has the measurements).

    Args:
        x: ``Tensor[B, N, D] float32`` tokens (L2-normalised).
        labels: ``Tensor[B, N] int64`` cluster of each token in ``[0, num_clusters)``.
        num_clusters: K.
        lam: cosine threshold in ``[-1, 1]`` (fraction). Default 0.9 (ours).
        max_rounds: cap on merge rounds. Default 64 (ours).
        sync_free: always run ``max_rounds`` rounds instead of stopping at the first round in which no
            cluster moves (that check reads a value back to the host: a GPU sync per round). A round in
            which nothing moves changes nothing, so the result is the same; only the cost differs.

    Returns:
        ``Tensor[B, N] int64``: merged cluster of each token (ids in ``[0, K)``: the original id of the
        cluster each group grew from).

    Raises:
        ValueError: shape mismatch or ``lam`` outside ``[-1, 1]``.
    """
    if x.dim() != 3 or labels.shape != x.shape[:2]:
        raise ValueError(
            f"merge_clusters: need x [B, N, D] and labels [B, N], got {tuple(x.shape)} and {tuple(labels.shape)}"
        )
    if not -1.0 <= lam <= 1.0:
        raise ValueError(f"merge_clusters: lam is a cosine threshold in [-1, 1], got {lam}")
    B, N, D = x.shape
    K = int(num_clusters)
    dev = x.device
    lab = labels.long()
    sums = x.new_zeros(B, K, D).scatter_add_(1, lab[..., None].expand(B, N, D), x.float())
    cnt = x.new_zeros(B, K).scatter_add_(1, lab, x.new_ones(B, N))
    ar = torch.arange(K, device=dev).expand(B, K)
    eye = torch.eye(K, dtype=torch.bool, device=dev)
    for _ in range(max_rounds):
        c = F.normalize(sums, dim=-1)
        alive = cnt > 0
        ok = alive[:, None, :] & alive[:, :, None] & ~eye
        sim = torch.bmm(c, c.transpose(1, 2)).masked_fill(~ok, -2.0)
        val, best = sim.max(-1)  # [B, K]
        # a cluster may join its most similar cluster when that one is larger (count, then lower id) ...
        bigger = (cnt.gather(1, best) > cnt) | ((cnt.gather(1, best) == cnt) & (best < ar))
        cand = (val > lam) & alive & bigger
        # ... and is not itself joining another cluster this round (no chains within a round)
        move = cand & ~cand.gather(1, best)
        if not sync_free and not bool(move.any()):
            break
        tgt = torch.where(move, best, ar)
        sums = torch.zeros_like(sums).scatter_add_(1, tgt[..., None].expand(B, K, D), sums)
        cnt = torch.zeros_like(cnt).scatter_add_(1, tgt, cnt)
        lab = tgt.gather(1, lab)
    return lab


@torch.no_grad()
def fused_labels(
    train_label: Tensor,
    region_ids: Tensor,
    num_seen: int,
    valid_mask: Tensor | None = None,
    ignore_index: int = 255,
    max_regions: int | None = None,
    seen_ids: Sequence[int] | Tensor | None = None,
    validate: bool = True,
) -> Tensor:
    """Fused labels ``F``: seen ground truth, plus pseudo ids where the label is ignore (docs/methods.md (CLIP-ZSS)).

    ``region_ids`` are upsampled to the label size with nearest-neighbour interpolation. Per pixel:
    a seen class -> its seen index (never overwritten); ``ignore_index`` inside the image
    (``valid_mask``) with a region ``r >= 0`` -> ``num_seen + r``; everything else (padding, no
    region, regions beyond ``max_regions``) -> ``ignore_index``. Pseudo ids that would reach
    ``ignore_index`` (``num_seen + r >= ignore_index`` when ``ignore_index >= num_seen``) are dropped
    to ignore — ours; cap ``max_regions`` to avoid it.

    Args:
        train_label: ``Tensor[B, H, W] int64`` training label (unseen already hidden as ignore). Seen
            classes must be the contiguous seen indices ``0..num_seen-1`` — the order of the seen
            text embeddings in the logits — unless ``seen_ids`` is given.
        region_ids: ``Tensor[B, h, w] int64`` from :func:`fuse_masks` (``-1`` = no region).
        num_seen: number of seen classes (first pseudo id).
        valid_mask: ``BoolTensor[B, H, W]`` True inside the image, False on padding; None = all True.
        ignore_index: ignore label, default 255.
        max_regions: pseudo ids ``r >= max_regions`` become ignore; None = no cap.
        seen_ids: optional dataset class ids of the seen classes (``len == num_seen``); if given,
            ``train_label`` holds dataset ids and ``seen_ids[i]`` is mapped to ``i``.
        validate: raise on labels that are neither seen nor ignore (one host sync).

    Returns:
        ``Tensor[B, H, W] int64`` fused labels with values in ``0..num_seen-1`` (seen),
        ``num_seen..`` (pseudo, per image) and ``ignore_index``.

    Raises:
        ValueError: shape mismatch, ``len(seen_ids) != num_seen``, or (``validate``) a label value
            that is neither a seen class nor ``ignore_index``.
    """
    if train_label.dim() != 3 or region_ids.dim() != 3 or region_ids.shape[0] != train_label.shape[0]:
        raise ValueError(
            f"fused_labels: need train_label [B, H, W] and region_ids [B, h, w] with the same B, "
            f"got {tuple(train_label.shape)} and {tuple(region_ids.shape)}"
        )
    B, H, W = train_label.shape
    lab = train_label.long()
    dev = lab.device
    if seen_ids is not None:
        ids = torch.as_tensor(seen_ids, dtype=torch.int64, device=dev).flatten()
        if ids.numel() != num_seen:
            raise ValueError(f"fused_labels: seen_ids has {ids.numel()} ids but num_seen={num_seen}")
        L = int(ids.max().item()) + 1 if ids.numel() else 1
        lut = torch.full((L,), -1, dtype=torch.int64, device=dev)
        lut[ids] = torch.arange(num_seen, device=dev)
        inside = (lab >= 0) & (lab < L)
        mapped = torch.where(inside, lut[lab.clamp(0, L - 1)], torch.full_like(lab, -1))
        seen = mapped >= 0
        lab = torch.where(seen, mapped, lab)
    else:
        seen = (lab >= 0) & (lab < num_seen)
    ign = train_label.long() == ignore_index
    if validate and bool((~seen & ~ign).any()):
        bad = torch.unique(train_label[~seen & ~ign])[:10].tolist()
        raise ValueError(
            f"fused_labels: train_label has values {bad} that are neither seen classes "
            f"(0..{num_seen - 1}{' via seen_ids' if seen_ids is not None else ''}) nor "
            f"ignore_index={ignore_index}; remap labels to seen indices or pass seen_ids="
        )
    if valid_mask is None:
        valid_mask = torch.ones(B, H, W, dtype=torch.bool, device=dev)
    elif valid_mask.shape != (B, H, W):
        raise ValueError(f"fused_labels: valid_mask must be [B, H, W]={(B, H, W)}, got {tuple(valid_mask.shape)}")
    up = F.interpolate(region_ids.to(dev).unsqueeze(1).float(), size=(H, W), mode="nearest").squeeze(1).long()
    ok = ign & valid_mask.to(dev, torch.bool) & (up >= 0)
    if max_regions is not None:
        ok &= up < max_regions
    if ignore_index >= num_seen:
        ok &= (num_seen + up) < ignore_index
    out = torch.where(seen, lab, torch.full_like(lab, ignore_index))
    return torch.where(ok, num_seen + up, out)


class PseudoLabels(NamedTuple):
    """Output of :func:`pseudo_labels`.

    Attributes:
        labels: ``Tensor[B, H, W] int64`` fused labels ``F`` (seen ``0..num_seen-1``, pseudo
            ``num_seen + r``, ``ignore_index``).
        region_ids: ``Tensor[B, h, w] int64`` fused regions on the token grid (-1 = none).
        num_regions: ``Tensor[B] int64`` regions per image.
        kmeans: the :class:`~zss.ops.kmeans.KMeansResult` (labels ``[B, S, h*w]``).
        scale_index: ``Tensor[K] int64`` scale of each centre (index into the sorted scales).
    """

    labels: Tensor
    region_ids: Tensor
    num_regions: Tensor
    kmeans: KMeansResult
    scale_index: Tensor


@torch.no_grad()
def pseudo_labels(
    dense: Tensor,
    train_label: Tensor,
    valid_mask: Tensor | None,
    num_seen: int,
    scales: Sequence[int] = DEFAULT_SCALES,
    lam: float = DEFAULT_LAMBDA,
    iters: int = 10,
    min_area: int = DEFAULT_MIN_AREA,
    max_regions: int | None = None,
    ignore_index: int = 255,
    mode: str = "components",
    relocate_empty: bool = True,
    assign_dtype: torch.dtype | str | None = "auto",
    seen_ids: Sequence[int] | Tensor | None = None,
    merge_rounds: int = 64,
    sync_free: bool | None = None,
    validate: bool = True,
) -> PseudoLabels:
    """CLIP-ZSS PLM pseudo labels end to end (docs/methods.md (CLIP-ZSS)): seeds -> K-Means -> fusion -> fused labels.

    Steps: ``scales`` sorted ascending (finest first); :func:`window_seeds`; one
    :func:`~zss.ops.kmeans.batched_kmeans` call (spherical, all images) over the image's ``h*w`` dense
    tokens; fusion; region numbering with areas counted on tokens whose pixels are mostly (>= 50%,
    ours) ignore-and-inside-the-image; :func:`fused_labels`. Padding tokens take part in the clustering
    but can never be written (ours).

    Fusion ``mode`` (docs/methods.md "PLM fusion" has the measurements):

    * ``"components"`` (default; the summary's "fuse masks whose centres' cosine is above λ", and
      ``ClipZSS``'s ``pl_fusion`` default) / ``"matching"`` (ours): one K-Means per scale, then
      :func:`fuse_masks` over the fixed centres. ``components`` can chain an object and its background into
      one region through a boundary "mixture" centre; ``matching`` over-segments.
    * ``"merge"`` (ours): ONE K-Means seeded by the windows of all scales together, then
      :func:`merge_clusters` (agglomerative, centres recomputed after every merge, threshold ``lam``), which
      does not chain through a mixture centre.

    Args:
        dense: ``Tensor[B, D, h, w]`` teacher dense tokens (L2-normalised CLIP embeds).
        train_label: ``Tensor[B, H, W] int64`` seen-only training label (see :func:`fused_labels`).
        valid_mask: ``BoolTensor[B, H, W]`` True inside the image (False on crop padding) or None.
        num_seen: number of seen classes.
        scales: window sides in patches (default (4, 8, 16), ours for 32x32 grids).
        lam: fusion cosine threshold (default 0.9, ours).
        iters: K-Means iterations (default 10, ours).
        min_area: minimum region area in tokens (default 4, ours).
        max_regions: cap on regions per image (None = no cap).
        ignore_index: default 255.
        mode: ``"components"`` (default), ``"merge"`` or ``"matching"`` (see above).
        relocate_empty: K-Means empty-cluster relocation (default True, scikit-learn's behaviour).
        assign_dtype: ``"auto"`` (bfloat16 on CUDA, where products are fp32-accumulated and
            returned; float32 on CPU), None (float32) or a dtype.
        seen_ids: see :func:`fused_labels`.
        merge_rounds: ``max_rounds`` of :func:`merge_clusters` (``mode="merge"`` only).
        sync_free: no host synchronisation anywhere in the call (ours): the merge / fusion rounds run
            their fixed count instead of stopping early (same result: the rounds after convergence change
            nothing), and the K-Means centre sums use the one-hot matmul (``update="matmul"``: float sums in
            another order than the CPU's incremental ``index_add_``). None (default): True on CUDA, where a
            read-back stalls the GPU queue, False elsewhere, where it costs nothing and the early exits save
            work.
        validate: check the label values in :func:`fused_labels` (one host sync). Pass False in a training
            step whose labels are seen-or-ignore by construction.

    Returns:
        :class:`PseudoLabels` (for ``mode="merge"``, ``kmeans.labels`` is ``[B, 1, h*w]`` and
        ``scale_index`` holds each seed's scale).

    Raises:
        ValueError: from the functions above (shapes, labels, scales).
    """
    if dense.dim() != 4:
        raise ValueError(f"pseudo_labels: dense must be [B, D, h, w], got {tuple(dense.shape)}")
    B, D, h, w = dense.shape
    if train_label.dim() != 3 or train_label.shape[0] != B:
        raise ValueError(f"pseudo_labels: train_label must be [B, H, W] with B={B}, got {tuple(train_label.shape)}")
    scales = tuple(sorted({int(s) for s in scales}))
    if assign_dtype == "auto":
        assign_dtype = torch.bfloat16 if dense.is_cuda else None
    if mode not in FUSION_MODES:
        raise ValueError(f"pseudo_labels: mode must be one of {FUSION_MODES}, got {mode!r}")
    sync_free = dense.is_cuda if sync_free is None else bool(sync_free)
    seeds, valid, sidx = window_seeds(dense, scales)
    x = dense.float().flatten(2).transpose(1, 2)  # [B, N, D]
    merge = mode == "merge"
    # group ids as host ints from the shapes (no device read-back); every seed is valid (window_seeds)
    sizes = _scale_sizes((h, w), scales)
    groups = [0] * sum(sizes) if merge else [g for g, n in enumerate(sizes) for _ in range(n)]
    km = batched_kmeans(
        x,
        seeds,
        None,
        iters=iters,
        spherical=True,
        relocate_empty=relocate_empty,
        assign_dtype=assign_dtype,
        groups=groups,
        update="matmul" if sync_free else "auto",
        validate=validate,
    )
    S = len(scales)
    eligible = train_label.long() == ignore_index
    if valid_mask is not None:
        eligible &= valid_mask.to(eligible.device, torch.bool)
    area_mask = F.interpolate(eligible.unsqueeze(1).float(), size=(h, w), mode="area").squeeze(1) >= 0.5
    area_mask = area_mask.to(dense.device)
    if merge:
        K = seeds.shape[1]
        pix = merge_clusters(
            F.normalize(x, dim=-1), km.labels.view(B, h * w), K, lam=lam, max_rounds=merge_rounds, sync_free=sync_free
        )
        region, nreg = _number_regions(pix, K, (h, w), min_area, max_regions, area_mask)
    else:
        region, nreg = fuse_masks(
            km.centers,
            km.labels.view(B, S, h, w),
            valid,
            sidx,
            lam=lam,
            min_area=min_area,
            max_regions=max_regions,
            area_mask=area_mask,
            mode=mode,
            sync_free=sync_free,
        )
    F_lab = fused_labels(
        train_label,
        region.to(train_label.device),
        num_seen,
        valid_mask,
        ignore_index,
        max_regions,
        seen_ids,
        validate=validate,
    )
    return PseudoLabels(F_lab, region, nreg, km, sidx)


@torch.no_grad()
def clear_near_seen(fused: Tensor, num_seen: int, margin: int, ignore_index: int = 255) -> Tensor:
    """Set pseudo-labelled pixels within ``margin`` pixels of a seen-labelled pixel to ``ignore_index``.

    Pseudo regions come from the teacher's patch grid (16 px per token for ViT-B/16), nearest-upsampled, so
    the pixels where a pseudo region meets a seen object are the least certain ones; the student also cannot
    resolve that boundary finer than its own output stride. Leaving a band unlabelled lets the seen object
    keep its edge instead of the neighbouring (mostly background) region taking it [ours; not in the paper:
    docs/methods.md "Seen margin"]. Chebyshev distance (a square window), computed with two 1-D ``max_pool2d``
    (rows, then columns; the same result as one square window): no host sync.

    Args:
        fused: ``Tensor[B, H, W] int64`` fused labels: seen ids ``[0, num_seen)``, pseudo ids
            ``[num_seen, ignore_index)``, ``ignore_index``.
        num_seen: N_seen.
        margin: band width in label pixels (0 returns ``fused`` unchanged).
        ignore_index: the ignore label (255).

    Returns:
        ``Tensor[B, H, W] int64``: ``fused`` with pseudo ids inside the band replaced by ``ignore_index``;
        seen labels are never changed.

    Raises:
        ValueError: ``margin`` < 0 or ``fused`` not 3-D.
    """
    if margin < 0:
        raise ValueError(f"clear_near_seen: margin must be >= 0 pixels, got {margin}")
    if fused.dim() != 3:
        raise ValueError(f"clear_near_seen: fused must be [B, H, W], got {tuple(fused.shape)}")
    if margin == 0:
        return fused
    seen = (fused < num_seen).to(torch.float32)[:, None]  # [B, 1, H, W]
    k = 2 * margin + 1  # the square window's max is a column max of row maxes: 2k instead of k² reads per pixel
    near = F.max_pool2d(seen, (1, k), stride=1, padding=(0, margin))
    near = F.max_pool2d(near, (k, 1), stride=1, padding=(margin, 0))[:, 0] > 0
    pseudo = (fused >= num_seen) & (fused != ignore_index)
    return torch.where(near & pseudo, torch.full_like(fused, ignore_index), fused)


@torch.no_grad()
def pseudo_label_quality(
    fused: Tensor,
    full_label: Tensor,
    num_seen: int,
    unseen_ids: Sequence[int] | Tensor,
    num_classes: int,
    ignore_index: int = 255,
    num_regions: int | None = None,
) -> dict[str, Tensor]:
    """Diagnostics of pseudo regions against the FULL ground truth (ours; for logging, never for training).

    A pseudo region is the set of pixels of one image with fused id ``num_seen + k``. Unlabelled
    ground truth (``ignore_index`` in ``full_label``: VOC background) counts as one extra category, so
    a region that mixes an object with background is impure.

    Args:
        fused: F ``Tensor[B, H, W] int64`` from :func:`pseudo_labels` (seen ids, pseudo ids, ignore).
        full_label: ``Tensor[B, H, W] int64`` all-class ground truth (benchmark ids, ``ignore_index``).
        num_seen: first pseudo id.
        unseen_ids: benchmark ids of the unseen classes (a sequence, or a ``Tensor[U] int64`` on any device).
        num_classes: number of benchmark classes C (ids ``0..C-1``).
        ignore_index: default 255.
        num_regions: an upper bound on the pseudo ids per image (``fused < num_seen + num_regions``), e.g.
            the ``max_regions`` the labels were made with; pseudo ids at or above it are not counted. Given,
            the call makes no host sync (a training-step diagnostic); None reads the largest id back.

    Returns:
        dict of ``Tensor[B] float32``: ``regions`` (pseudo regions per image), ``purity`` (fraction of
        pseudo-region pixels that belong to their region's majority category; NaN without regions) and
        ``unseen_isolated`` (fraction of unseen-class pixels that lie in a pseudo region whose majority
        category is an unseen class; NaN where the image has no unseen pixel).

    Raises:
        ValueError: shape mismatch.
    """
    if fused.shape != full_label.shape or fused.dim() != 3:
        raise ValueError(
            f"pseudo_label_quality: fused and full_label must both be [B, H, W], got "
            f"{tuple(fused.shape)} and {tuple(full_label.shape)}"
        )
    B = fused.shape[0]
    dev = fused.device
    gt = full_label.to(dev).long()
    cat = torch.where((gt >= 0) & (gt < num_classes), gt, torch.full_like(gt, num_classes))  # C = unlabelled
    nc = num_classes + 1
    is_pseudo = (fused >= num_seen) & (fused != ignore_index)
    r = torch.where(is_pseudo, fused - num_seen, torch.zeros_like(fused))
    if num_regions is None:
        R = int(r.max()) + 1 if bool(is_pseudo.any()) else 1
    else:
        R = max(1, int(num_regions))
        is_pseudo = is_pseudo & (r < R)
        r = torch.where(is_pseudo, r, torch.zeros_like(r))
    bidx = torch.arange(B, device=dev).view(B, 1, 1).expand_as(r)
    key = ((bidx * R + r) * nc + cat).flatten()
    hist = torch.zeros(B * R * nc, device=dev).scatter_add_(0, key, is_pseudo.flatten().float())
    hist = hist.view(B, R, nc)  # [B, R, C+1] pixel counts (exact integers in float32)
    size = hist.sum(-1)  # [B, R]
    top, arg = hist.max(-1)  # majority category per region
    regions = (size > 0).sum(1).float()
    purity = top.sum(1) / size.sum(1)  # NaN when no region
    ids = (
        unseen_ids.to(dev)
        if isinstance(unseen_ids, Tensor)
        else torch.as_tensor(unseen_ids, dtype=torch.long, device=dev)
    )
    unseen = torch.zeros(nc, dtype=torch.bool, device=dev).index_fill_(0, ids.long(), True)  # no value tensor copy
    unseen_px = unseen[cat]  # [B, H, W]
    maj_unseen = unseen[arg] & (size > 0)  # [B, R]
    in_unseen_region = is_pseudo & maj_unseen.gather(1, r.view(B, -1)).view_as(r)
    n_unseen = unseen_px.flatten(1).sum(1).float()
    isolated = (unseen_px & in_unseen_region).flatten(1).sum(1).float() / n_unseen  # NaN without unseen
    return {"regions": regions, "purity": purity, "unseen_isolated": isolated}
