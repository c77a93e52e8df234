"""PLM fusion on the real VOC sample: the unseen object must get a pseudo region of its own."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from zss.data.classes import get_benchmark
from zss.data.dataset import build_dataset
from zss.data.transforms import build_test_transform
from zss.ops.pseudo_labels import merge_clusters, pseudo_label_quality, pseudo_labels
from zss.teachers.oracle import OracleTeacher


def _unseen_images(voc_root):
    """(seen-only training label, full label) of every bundled image (train + val) that holds an unseen class,
    resized as the demo does (short side 224) and cut to whole 16-px patches."""
    bench = get_benchmark("voc20")
    tf = build_test_transform(scale=(896, 224), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    unseen = torch.tensor(bench.unseen)
    out = []
    for split in ("train", "val"):
        ds = build_dataset("voc20", voc_root, split=split, hide_unseen=True, transform=tf)
        for i in range(len(ds)):
            full = ds[i]["full_label"]
            full = full[: full.shape[0] // 16 * 16, : full.shape[1] // 16 * 16]
            if torch.isin(full, unseen).any():
                seen_pos = torch.full((256,), 255, dtype=torch.long)
                seen_pos[torch.tensor(bench.seen)] = torch.arange(len(bench.seen))
                out.append((seen_pos[full], full))
    return bench, out


def _isolated_count(voc_root, **kw):
    bench, images = _unseen_images(voc_root)
    teacher = OracleTeacher(list(bench.classes), embed_dim=64, noise=0.1, seed=0)
    good, regions = 0, []
    for train, full in images:
        dense = teacher(None, full_label=full[None])["dense"]
        pl = pseudo_labels(dense, train[None], None, num_seen=len(bench.seen), **kw)
        q = pseudo_label_quality(pl.labels, full[None], len(bench.seen), bench.unseen, len(bench.classes))
        good += int(q["unseen_isolated"][0] >= 0.5)
        regions.append(float(q["regions"][0]))
    return good, len(images), sorted(regions)[len(regions) // 2]


def test_merge_fusion_isolates_the_unseen_object_with_the_oracle(voc_root):
    good, n, median_regions = _isolated_count(voc_root, mode="merge")
    assert n == 22
    assert good >= 18, f"unseen object in a region of its own on only {good}/{n} images"
    assert 2 <= median_regions <= 20


def test_components_fusion_chains_regions_together(voc_root):
    # why "merge" exists: components over fixed centres (the default, the summary's reading) merges the unseen
    # object with background through boundary clusters (docs/methods.md, "PLM fusion")
    good, n, median_regions = _isolated_count(voc_root)
    assert good < 18 and median_regions <= 2


def test_merge_clusters_does_not_chain_through_a_mixture_cluster():
    # clusters a and b are distinct (cos 0); m is a small boundary cluster halfway between them (cos 0.71 to
    # each). Components over fixed centres at lam=0.7 would link a-m-b into one region; the agglomerative
    # merge lets m join one side, after which the recomputed centres of the two sides stay apart.
    a, b = torch.eye(4)[0], torch.eye(4)[1]
    m = F.normalize(a + b, dim=0)
    x = torch.stack([a] * 10 + [b] * 10 + [m] * 2)[None]  # [1, 22, 4]
    labels = torch.tensor([[0] * 10 + [1] * 10 + [2] * 2])
    out = merge_clusters(x, labels, 3, lam=0.7)[0]
    assert out[:10].unique().numel() == 1 and out[10:20].unique().numel() == 1
    assert out[0] != out[10]  # a and b stay apart
    assert out[20] in (out[0], out[10])  # m joined one side


def test_pseudo_label_quality_on_a_hand_built_map():
    # 1 image, 2 pseudo regions (ids 3, 4 with num_seen=3); classes 0..4, unseen = [4]
    fused = torch.tensor([[[3, 3, 3, 4], [4, 4, 0, 255]]])
    full = torch.tensor([[[4, 4, 255, 4], [4, 4, 0, 1]]])
    q = pseudo_label_quality(fused, full, num_seen=3, unseen_ids=[4], num_classes=5)
    assert q["regions"].tolist() == [2.0]
    # region 3: {4, 4, bg} -> majority 4 (2/3); region 4: {4, 4, 4} -> 3/3; purity = 5/6
    assert abs(float(q["purity"][0]) - 5 / 6) < 1e-6
    assert float(q["unseen_isolated"][0]) == 1.0  # all five unseen pixels in unseen-majority regions
