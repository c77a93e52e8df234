"""Tests for zss.ops.pseudo_labels (CLIP-ZSS PLM: window seeds, mask fusion, fused labels)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from zss.ops.pseudo_labels import clear_near_seen, fuse_masks, fused_labels, pseudo_labels, window_seeds


@pytest.mark.parametrize("hw,scales", [((12, 12), (2, 4, 8)), ((10, 7), (3, 5)), ((6, 6), (4, 9))])
def test_window_seeds_match_a_python_loop(hw, scales):
    h, w = hw
    g = torch.Generator().manual_seed(0)
    dense = F.normalize(torch.randn(2, 16, h, w, generator=g), dim=1)
    seeds, valid, sidx = window_seeds(dense, scales)
    ref, ref_idx = [], []
    for i, s in enumerate(scales):
        kh, kw = min(s, h), min(s, w)  # windows larger than the grid are clamped to it
        sh, sw = max(1, kh // 2), max(1, kw // 2)
        for y in range(0, h - kh + 1, sh):
            for x in range(0, w - kw + 1, sw):
                ref.append(dense[:, :, y : y + kh, x : x + kw].mean((2, 3)))
                ref_idx.append(i)
    ref = F.normalize(torch.stack(ref, 1), dim=-1)
    assert seeds.shape == ref.shape and valid.shape == ref.shape[:2] and valid.all()
    assert torch.allclose(seeds, ref, atol=1e-6)
    assert sidx.tolist() == ref_idx
    with pytest.raises(ValueError, match="scales"):
        window_seeds(dense, (0, 2))


def _unit(*vals):
    return F.normalize(torch.tensor(vals, dtype=torch.float32), dim=0)


def _constructed():
    """Scale 0: masks a, b, c; scale 1: masks d, e. cos(a,d)=0.98 > lam, cos(b,e)=0.95 > lam,
    cos(c,e)=0.85 < lam, cos(a,b)=0.99 but same scale (never linked directly)."""
    a = _unit(1, 0, 0, 0, 0)
    d = _unit(0.98, -((1 - 0.98**2) ** 0.5), 0, 0, 0)
    e = _unit(0, 0, 1, 0, 0)
    bb = _unit(0, 0, 0.95, (1 - 0.95**2) ** 0.5, 0)
    c = _unit(0, 0, 0.85, 0, (1 - 0.85**2) ** 0.5)
    return torch.stack([a, bb, c, d, e]), torch.tensor([0, 0, 0, 1, 1])


def test_fusion_merges_exactly_the_pairs_above_lambda():
    centers, sidx = _constructed()
    sim = centers @ centers.T
    assert sim[0, 3] > 0.9 and sim[1, 4] > 0.9 and sim[2, 4] < 0.9  # the construction holds
    # 1 x 8 grid. scale 0: a a b b c c c c ; scale 1: d d e e e e e e
    lab = torch.tensor([[[0, 0, 1, 1, 2, 2, 2, 2]], [[3, 3, 4, 4, 4, 4, 4, 4]]]).view(1, 2, 1, 8)
    region, n = fuse_masks(centers[None], lab, None, sidx, lam=0.9, min_area=1)
    r = region[0, 0].tolist()
    # a+d fused (cols 0-1), b+e fused (cols 2-3); cols 4-7: c (scale 0) vs e's region (scale 1), one vote
    # each -> tie -> the earliest scale keeps c
    assert r[0] == r[1] and r[2] == r[3] and r[0] != r[2]
    assert len(set(r[4:])) == 1 and r[4] not in (r[0], r[2])  # c was not fused with e (cos 0.85 < 0.9)
    assert n.tolist() == [3] and sorted(set(r)) == [0, 1, 2]
    assert r[4] == 0  # ids ordered by area: c covers 4 tokens
    # lambda below 0.85: c and e fuse too, so b, e, c form one region (transitive, components mode)
    region, n = fuse_masks(centers[None], lab, None, sidx, lam=0.8, min_area=1)
    r = region[0, 0].tolist()
    assert r[2] == r[3] == r[4] == r[7] and r[0] == r[1] != r[2] and n.item() == 2
    # a same-scale pair above lambda (cos 0.99) is never fused directly
    same = torch.stack([_unit(1, 0, 0, 0, 0), _unit(0.99, 0.141, 0, 0, 0), _unit(0, 1, 0, 0, 0)])
    lab2 = torch.tensor([[[0, 0, 1, 1]], [[2, 2, 2, 2]]]).view(1, 2, 1, 4)
    region, n = fuse_masks(same[None], lab2, None, torch.tensor([0, 0, 1]), lam=0.9, min_area=1)
    assert region[0, 0, 0] != region[0, 0, 2] and n.item() == 2


def test_matching_mode_uses_each_mask_once():
    # scale 0: m0; scale 1: m1 (cos 0.99 with m0) and m2 (cos 0.95 with m0), scale 2: m3 (cos 0.97 with m0)
    m0 = _unit(1, 0, 0, 0)
    m1 = _unit(0.99, (1 - 0.99**2) ** 0.5, 0, 0)
    m2 = _unit(0.95, 0, (1 - 0.95**2) ** 0.5, 0)
    m3 = _unit(0.97, 0, 0, -((1 - 0.97**2) ** 0.5))
    centers = torch.stack([m0, m1, m2, m3])[None]
    sidx = torch.tensor([0, 1, 1, 2])
    lab = torch.tensor([[0, 0, 0, 0, 0, 0], [1, 1, 1, 2, 2, 2], [3, 3, 3, 3, 3, 3]]).view(1, 3, 1, 6)
    sim = centers[0] @ centers[0].T
    assert sim[1, 3] > 0.9 and sim[2, 3] > 0.9  # m1-m3 (0.96) and m2-m3 (0.92) are above lambda too
    region, n = fuse_masks(centers, lab, None, sidx, lam=0.9, min_area=1, mode="matching")
    # greedy by cosine: (m0, m1) = 0.99 first; m1-m3 is then unavailable (m1 used once), so (m2, m3) next.
    # columns 0-2 vote {m0,m1}, {m0,m1}, {m2,m3} -> {m0,m1}; columns 3-5 vote {m0,m1}, {m2,m3}, {m2,m3}
    r = region[0, 0].tolist()
    assert r[0] == r[1] == r[2] and r[3] == r[4] == r[5] and r[0] != r[3] and n.item() == 2
    comp_all, _ = fuse_masks(centers, lab, None, sidx, lam=0.9, min_area=1, mode="components")
    assert comp_all.unique().numel() == 1  # components: everything above lambda is one region
    with pytest.raises(ValueError, match="mode"):
        fuse_masks(centers, lab, None, sidx, mode="union")


def test_pixel_vote_majority_and_finest_scale_tie_break():
    # three scales, masks with no fusion at all (orthogonal centres) except scales 1 and 2 on the right
    e = torch.eye(6)
    centers = torch.stack([e[0], e[1], e[2], e[3], e[3] * 0.999 + e[4] * 0.04])[None]  # m3 ~ m4
    sidx = torch.tensor([0, 0, 1, 2, 2])
    lab = torch.tensor([[0, 0, 1, 1], [2, 2, 2, 2], [4, 4, 3, 3]]).view(1, 3, 1, 4)
    region, n = fuse_masks(centers, lab, None, sidx, lam=0.9, min_area=1)
    r = region[0, 0].tolist()
    # cols 0-1: candidates m0, m2, m4 -> all different -> tie -> scale 0 (m0)
    # cols 2-3: candidates m1, m2, m3 -> all different -> m1
    assert r[0] == r[1] and r[2] == r[3] and r[0] != r[2] and n.item() == 2
    centers2 = torch.stack([e[0], e[1], e[2], e[2], e[5]])[None]  # m2 (scale 1) ~ m3 (scale 2)
    region, n = fuse_masks(centers2, lab, None, sidx, lam=0.9, min_area=1)
    r = region[0, 0].tolist()
    # cols 2-3: m2 and m3 are one region with 2 votes of 3 -> that region beats m1
    assert r[2] == r[3] and r[2] != r[0]
    comp_region = r[2]
    assert all(v != comp_region for v in r[:2])


def test_min_area_max_regions_and_area_mask():
    e = torch.eye(4)
    centers = torch.stack([e[0], e[1], e[2], e[3]])[None]
    sidx = torch.tensor([0, 0, 0, 1])
    # scale 0: region sizes 5, 2, 1 ; scale 1: one mask everywhere (orthogonal to all)
    lab = torch.tensor([[0, 0, 0, 0, 0, 1, 1, 2], [3] * 8]).view(1, 2, 1, 8)
    region, n = fuse_masks(centers, lab, None, sidx, lam=0.9, min_area=2)
    assert region[0, 0].tolist() == [0, 0, 0, 0, 0, 1, 1, -1] and n.tolist() == [2]
    region, n = fuse_masks(centers, lab, None, sidx, lam=0.9, min_area=1, max_regions=1)
    assert region[0, 0].tolist() == [0, 0, 0, 0, 0, -1, -1, -1] and n.tolist() == [1]
    area_mask = torch.tensor([[[False] * 4 + [True] * 4]])  # only the right half counts
    region, n = fuse_masks(centers, lab, None, sidx, lam=0.9, min_area=2, area_mask=area_mask)
    assert region[0, 0].tolist() == [-1, -1, -1, -1, -1, 0, 0, -1] and n.tolist() == [1]


def test_fused_labels_never_overwrite_seen_or_padding():
    num_seen = 15
    lab = torch.full((2, 8, 8), 255, dtype=torch.int64)
    lab[0, :4, :4] = 3
    lab[1, 4:, :] = 14
    valid = torch.ones(2, 8, 8, dtype=torch.bool)
    valid[:, :, 6:] = False  # right columns are crop padding
    region = torch.tensor([[[0, 1], [2, -1]], [[1, 1], [0, 0]]])  # 2x2 token grid, 4x4 pixels per token
    out = fused_labels(lab, region, num_seen, valid)
    assert out.dtype == torch.int64 and out.shape == lab.shape
    seen = lab != 255
    assert torch.equal(out[seen], lab[seen])  # seen GT untouched
    assert (out[~valid & ~seen] == 255).all()  # padding stays ignore
    assert (out[0, :4, 4:6] == num_seen + 1).all() and (out[0, 4:, :4] == num_seen + 2).all()
    assert (out[0, 4:, 4:] == 255).all()  # region -1
    assert (out[1, :4, :6] == num_seen + 1).all()
    capped = fused_labels(lab, region, num_seen, valid, max_regions=2)
    assert (capped[0, 4:, :4] == 255).all() and (capped[0, :4, 4:6] == num_seen + 1).all()
    # dataset ids -> seen indices via seen_ids
    lab_ds = lab.clone()
    lab_ds[lab == 3] = 40
    lab_ds[lab == 14] = 7
    seen_ids = list(range(15))
    seen_ids[3], seen_ids[14] = 40, 7
    assert torch.equal(fused_labels(lab_ds, region, num_seen, valid, seen_ids=seen_ids), out)
    bad = lab.clone()
    bad[0, 0, 0] = 17  # an unseen id that was not hidden
    with pytest.raises(ValueError, match="neither seen"):
        fused_labels(bad, region, num_seen, valid)
    # pseudo ids that would collide with ignore_index are dropped
    big = fused_labels(lab, region + 300 * (region >= 0), 15, valid)
    assert ((big >= 15) & (big != 255)).sum() == 0


@pytest.mark.parametrize("mode", ["merge", "components"])
def test_pseudo_labels_end_to_end_on_a_real_voc_label(mode, voc_root):
    from PIL import Image

    names = (voc_root / "ImageSets" / "Segmentation" / "train.txt").read_text().split()
    raw = torch.from_numpy(np.asarray(Image.open(voc_root / "SegmentationClass" / f"{names[0]}.png")).astype(np.int64))
    H, W = raw.shape
    # VOC training label: background -> 255, classes 1..20 -> 0..19, unseen 15..19 hidden
    lab = torch.where((raw >= 1) & (raw <= 15), raw - 1, torch.full_like(raw, 255))
    h, w = 16, 16
    Hc, Wc = h * 16, w * 16  # a 256x256 crop padded with 255
    train = torch.full((1, Hc, Wc), 255, dtype=torch.int64)
    valid = torch.zeros(1, Hc, Wc, dtype=torch.bool)
    hh, ww = min(H, Hc), min(W, Wc)
    train[0, :hh, :ww] = lab[:hh, :ww]
    valid[0, :hh, :ww] = True
    # tokens: two distinct "semantic" directions in the top and bottom halves, plus noise
    g = torch.Generator().manual_seed(0)
    D = 32
    top, bottom = F.normalize(torch.randn(2, D, generator=g), dim=1)
    dense = torch.empty(1, D, h, w)
    dense[0, :, : h // 2] = top[:, None, None]
    dense[0, :, h // 2 :] = bottom[:, None, None]
    dense = F.normalize(dense + 0.05 * torch.randn(1, D, h, w, generator=g), dim=1)
    out = pseudo_labels(dense, train, valid, num_seen=15, scales=(2, 4, 8), lam=0.8, iters=5, min_area=2, mode=mode)
    F_lab = out.labels
    seen = (train >= 0) & (train < 15)
    assert torch.equal(F_lab[seen], train[seen])
    assert (F_lab[~valid] == 255).all()
    pseudo = (F_lab >= 15) & (F_lab != 255)
    assert pseudo.any()
    # every eligible pixel (ignore, inside the image) of the two planted halves gets a region
    assert pseudo[valid & (train == 255)].float().mean() > 0.95
    assert ((F_lab[pseudo] - 15) < out.num_regions[0]).all()
    # the two planted halves never share a pseudo id
    top_ids = set(F_lab[0, : Hc // 2][pseudo[0, : Hc // 2]].tolist())
    bot_ids = set(F_lab[0, Hc // 2 :][pseudo[0, Hc // 2 :]].tolist())
    assert top_ids.isdisjoint(bot_ids)
    assert out.kmeans.labels.shape == (1, 1 if mode == "merge" else 3, h * w)
    assert out.num_regions[0] == 2  # one region per planted half


def _reference_fusion(centers, labels, sidx, lam, mode, min_area):
    """Plain-Python reference for one image: union-find / sorted greedy matching, votes, area order."""
    S, N = labels.shape
    c = F.normalize(centers, dim=-1)
    sim = (c @ c.T).tolist()
    alive = sorted(set(labels.flatten().tolist()))
    pairs = sorted(
        ((sim[i][j], i, j) for i in alive for j in alive if i < j and sidx[i] != sidx[j] and sim[i][j] > lam),
        key=lambda t: (-t[0], t[1], t[2]),
    )
    parent = list(range(len(centers)))

    def find(i):
        while parent[i] != i:
            i = parent[i]
        return i

    used = set()
    for _, i, j in pairs:
        if mode == "matching":
            if i in used or j in used:
                continue
            used |= {i, j}
        ri, rj = find(i), find(j)
        parent[max(ri, rj)] = min(ri, rj)
    comp = [find(i) for i in range(len(centers))]
    pix = []
    for p in range(N):
        cand = [comp[labels[s, p]] for s in range(S)]
        votes = [cand.count(v) for v in cand]
        pix.append(cand[votes.index(max(votes))])
    area = {k: pix.count(k) for k in set(pix)}
    kept = sorted((k for k in area if area[k] >= min_area), key=lambda k: (-area[k], k))
    rid = {k: r for r, k in enumerate(kept)}
    return [rid.get(k, -1) for k in pix]


@pytest.mark.parametrize("mode", ["components", "matching"])
def test_fusion_matches_a_python_reference(mode):
    g = torch.Generator().manual_seed(3)
    B, D, h, w = 3, 6, 6, 6
    sizes = (8, 5, 3)
    sidx = torch.tensor([s for s, k in enumerate(sizes) for _ in range(k)])
    K = len(sidx)
    base = torch.randn(4, D, generator=g)  # few directions -> many pairs above lambda
    centers = base[torch.randint(0, 4, (B, K), generator=g)] + 0.35 * torch.randn(B, K, D, generator=g)
    offs = [0, 8, 13]
    labels = torch.stack([torch.randint(0, k, (B, h * w), generator=g) + o for k, o in zip(sizes, offs)], 1)
    region, n = fuse_masks(centers, labels.view(B, 3, h, w), None, sidx, lam=0.8, min_area=2, mode=mode)
    for b in range(B):
        ref = _reference_fusion(centers[b], labels[b], sidx.tolist(), 0.8, mode, 2)
        assert region[b].flatten().tolist() == ref
        assert n[b].item() == len(set(ref) - {-1})


def test_clear_near_seen_leaves_a_band_of_ignore_around_seen_pixels_only():
    S, ign = 3, 255
    f = torch.full((2, 12, 12), ign)
    f[0, 4:6, 4:6] = 1  # a seen object in a pseudo region 3 (id S + 0)
    f[0][f[0] == ign] = S
    f[0, 0, 0] = ign  # an unlabelled pixel stays unlabelled
    f[1] = S + 1  # an image without seen pixels is left alone
    out = clear_near_seen(f, S, margin=2, ignore_index=ign)
    near = torch.zeros(12, 12, dtype=torch.bool)
    near[2:8, 2:8] = True  # Chebyshev distance <= 2 from the 2x2 object
    assert torch.equal(out[0][4:6, 4:6], f[0][4:6, 4:6])  # seen labels never change
    band = near.clone()
    band[4:6, 4:6] = False
    assert (out[0][band] == ign).all()
    assert torch.equal(out[0][~near], f[0][~near])
    assert torch.equal(out[1], f[1])
    assert clear_near_seen(f, S, margin=0) is f
    with pytest.raises(ValueError, match="margin"):
        clear_near_seen(f, S, margin=-1)


@pytest.mark.parametrize("margin", [1, 3, 16])
def test_clear_near_seen_is_the_chebyshev_band_on_random_maps(margin):
    # brute force: a pseudo pixel is cleared iff a seen pixel lies within Chebyshev distance `margin`
    S, ign = 4, 255
    g = torch.Generator().manual_seed(margin)
    f = torch.randint(0, 12, (2, 40, 37), generator=g)
    f[f >= 10] = ign
    f[(f >= S) & (f < 10) & (torch.rand(f.shape, generator=g) < 0.9)] = S + 1  # mostly one pseudo region
    f[0, :, :5] = S  # a seen-free strip wider than small margins
    f[0][f[0] < S] = S + 2
    f[0, 20, 30] = 0  # one seen pixel in image 0
    out = clear_near_seen(f, S, margin=margin, ignore_index=ign)
    ys, xs = torch.meshgrid(torch.arange(40), torch.arange(37), indexing="ij")
    for b in range(2):
        seen = (f[b] < S).nonzero()
        dist = ((ys[None] - seen[:, :1, None]).abs().maximum((xs[None] - seen[:, 1:, None]).abs())).amin(0)
        pseudo = (f[b] >= S) & (f[b] != ign)
        want = torch.where(pseudo & (dist <= margin), torch.full_like(f[b], ign), f[b])
        assert torch.equal(out[b], want)
