"""Hand-written v2 transforms (mmcv keep-ratio rescale, cat_max_ratio crop, photometric distortion)
and the full train / test pipelines on constructed arrays and the real VOC sample."""

from __future__ import annotations

import pytest
import torch
from torchvision import tv_tensors

from zss.data.normalize import CLIP_MEAN, CLIP_STD
from zss.data.transforms import (
    KeepRatioRescale,
    PadToSize,
    PhotoMetricDistortion,
    RandomCropCatMax,
    as_pair,
    build_test_transform,
    build_train_transform,
    keep_ratio_size,
)


def _img(h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    return tv_tensors.Image(torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g))


def _mask(t):
    return tv_tensors.Mask(torch.as_tensor(t, dtype=torch.int64))


# ------------------------------------------------------------------ KeepRatioRescale
@pytest.mark.parametrize(
    "hw,scale,expected",
    [
        ((375, 500), (2048, 512), (512, 683)),  # short side bound: 512/375
        ((500, 375), (2048, 512), (683, 512)),
        ((100, 2000), (2048, 512), (102, 2048)),  # long side bound: 2048/2000
        ((375, 500), (1024, 256), (256, 341)),  # ratio 0.5 target
        ((333, 500), (512, 2048), (512, 769)),  # order of scale does not matter
        ((2, 5), (100, 5), (5, 13)),  # 12.5 rounds half up (int(x + 0.5)), not half-to-even
    ],
)
def test_keep_ratio_rule(hw, scale, expected):
    assert keep_ratio_size(*hw, scale) == expected


def test_keep_ratio_rescale_fixed_ratio_and_nearest_masks():
    img = _img(375, 500)
    lab = _mask(torch.where(torch.rand(375, 500) > 0.5, 3, 255))
    t = KeepRatioRescale((2048, 512), ratio_range=(0.5, 0.5))  # target scale (1024, 256)
    oi, ol, of = t(img, lab, lab.clone())
    assert oi.shape == (3, 256, 341) and oi.dtype == torch.uint8
    assert ol.shape == (256, 341) and ol.dtype == torch.int64 and isinstance(ol, tv_tensors.Mask)
    assert set(ol.unique().tolist()) <= {3, 255}  # nearest, never interpolated
    assert torch.equal(ol, of)


def test_keep_ratio_rescale_random_ratio_in_range():
    torch.manual_seed(0)
    t = KeepRatioRescale((2048, 512), ratio_range=(0.5, 2.0))
    ratios = []
    for _ in range(20):
        p = t.make_params([_img(40, 50)])
        r = p["ratio"]
        assert 0.5 <= r < 2.0
        assert p["size"] == list(keep_ratio_size(40, 50, (int(2048 * r), int(512 * r))))
        ratios.append(r)
    assert max(ratios) - min(ratios) > 0.5


def test_keep_ratio_rescale_test_mode_leaves_masks():
    lab = _mask(torch.zeros(30, 40))
    oi, ol = KeepRatioRescale((2048, 512), None, resize_masks=False)(_img(30, 40), lab)
    assert oi.shape == (3, 512, 683) and ol.shape == (30, 40)


# ------------------------------------------------------------------ RandomCropCatMax
def _count_samples(t, monkeypatch):
    calls = []
    orig = t._sample_offset

    def counting(mh, mw):
        calls.append((mh, mw))
        return orig(mh, mw)

    monkeypatch.setattr(t, "_sample_offset", counting)
    return calls


def test_cat_max_retries_when_one_class_dominates(monkeypatch):
    torch.manual_seed(0)
    # one class everywhere (plus ignore): no crop is acceptable -> 1 + max_tries samples
    lab = torch.full((40, 40), 7)
    lab[:, :20] = 255
    t = RandomCropCatMax((10, 10), cat_max_ratio=0.75, max_tries=10)
    calls = _count_samples(t, monkeypatch)
    oi, ol = t(_img(40, 40), _mask(lab))
    assert len(calls) == 11 and ol.shape == (10, 10) and oi.shape == (3, 10, 10)
    # cat_max_ratio=1 disables the check -> a single sample
    t1 = RandomCropCatMax((10, 10), cat_max_ratio=1.0)
    calls1 = _count_samples(t1, monkeypatch)
    t1(_img(40, 40), _mask(lab))
    assert len(calls1) == 1


def _dominated_label():
    # left half class 1; right half a 2/3 checkerboard. Crops of 20x20 starting at col < 36 are
    # > 75 % class 1 (or only class 1) and must be rejected.
    lab = torch.ones(100, 100, dtype=torch.int64)
    yy, xx = torch.meshgrid(torch.arange(100), torch.arange(50, 100), indexing="ij")
    lab[:, 50:] = 2 + (yy + xx) % 2
    return lab


def _ok(crop, ratio=0.75):
    v, c = torch.unique(crop[crop != 255], return_counts=True)
    return len(c) > 1 and c.max().item() / c.sum().item() < ratio


def test_cat_max_ratio_rejects_dominated_crops():
    lab = _dominated_label()
    img = _img(100, 100)
    torch.manual_seed(0)
    t = RandomCropCatMax((20, 20), cat_max_ratio=0.75)
    assert all(_ok(t(img, _mask(lab))[1]) for _ in range(60))
    plain = RandomCropCatMax((20, 20), cat_max_ratio=1.0)
    assert not all(_ok(plain(img, _mask(lab))[1]) for _ in range(60))


def test_cat_max_accepts_exactly_the_crops_the_sorting_count_accepts():
    # the acceptance rule counts classes with a bincount; its decisions must be those of torch.unique's counts
    # (mmseg's rule), on crops with ignore, on all-ignore crops and on negative ids
    g = torch.Generator().manual_seed(0)
    t = RandomCropCatMax((8, 8), cat_max_ratio=0.75)
    for i in range(300):
        crop = torch.randint(0, 1 + i % 5, (8, 8), generator=g)
        crop[torch.rand(8, 8, generator=g) < (i % 4) / 3] = 255
        if i % 7 == 0:
            crop[0, 0] = -1
        assert t._accept(crop) == _ok(crop), crop


def test_cat_max_uses_first_mask_and_crops_all_identically():
    lab = _dominated_label()
    code = _mask(torch.arange(100 * 100).reshape(100, 100) + 1000)  # second mask: pixel coordinates
    img = tv_tensors.Image(
        torch.stack(
            [
                torch.arange(100).view(100, 1).expand(100, 100),
                torch.arange(100).view(1, 100).expand(100, 100),
                torch.zeros(100, 100, dtype=torch.int64),
            ]
        ).to(torch.uint8)
    )
    torch.manual_seed(1)
    t = RandomCropCatMax((20, 30))
    for _ in range(10):
        oi, ol, oc = t(img, _mask(lab), code)
        top, left = int(oi[0, 0, 0]), int(oi[1, 0, 0])
        assert oi.shape == (3, 20, 30) and ol.shape == oc.shape == (20, 30)
        assert torch.equal(ol, lab[top : top + 20, left : left + 30])
        assert torch.equal(oc, code[top : top + 20, left : left + 30])
        assert _ok(ol)


def test_crop_size_clipped_to_image():
    oi, ol = RandomCropCatMax((512, 512))(_img(30, 700), _mask(torch.arange(700).repeat(30, 1)))
    assert oi.shape == (3, 30, 512) and ol.shape == (30, 512)


def test_crop_validation():
    with pytest.raises(ValueError, match="cat_max_ratio"):
        RandomCropCatMax(512, cat_max_ratio=75)


# ------------------------------------------------------------------ PhotoMetricDistortion
ALL_ON = dict(brightness=None, mode=1, contrast=None, saturation=None, hue=None)


def test_photometric_ops_values():
    t = PhotoMetricDistortion()
    img = tv_tensors.Image(torch.tensor([[[10, 250]], [[100, 20]], [[200, 30]]], dtype=torch.uint8))  # [3,1,2]
    out = t.transform(img, {**ALL_ON, "brightness": 10.7})
    assert out.tolist() == [[[20, 255]], [[110, 30]], [[210, 40]]]  # +10.7, clip, truncate
    assert isinstance(out, tv_tensors.Image) and out.dtype == torch.uint8
    out = t.transform(img, {**ALL_ON, "contrast": 0.5})
    assert out.tolist() == [[[5, 125]], [[50, 10]], [[100, 15]]]
    grey = t.transform(img, {**ALL_ON, "saturation": 0.0})  # S -> 0: every channel = V (max)
    assert grey.tolist() == [[[200, 250]], [[200, 250]], [[200, 250]]]
    full = t.transform(img, {**ALL_ON, "saturation": 10.0})  # S clipped to 1: min channel -> 0, max kept
    assert full.amin(0).tolist() == [[0, 0]] and full.amax(0).tolist() == [[200, 250]]
    flat = tv_tensors.Image(torch.full((3, 2, 2), 77, dtype=torch.uint8))
    assert torch.equal(t.transform(flat, {**ALL_ON, "hue": 17}), flat)  # hue of grey is undefined: unchanged
    hued = t.transform(img, {**ALL_ON, "hue": 17})
    assert not torch.equal(hued, img) and torch.equal(hued.amax(0), img.amax(0))  # V kept


def test_photometric_contrast_order_by_mode():
    t = PhotoMetricDistortion()
    img = tv_tensors.Image(torch.tensor([[[200]], [[100]], [[50]]], dtype=torch.uint8))
    p = {**ALL_ON, "contrast": 1.5, "saturation": 0.5}
    a = t.transform(img, {**p, "mode": 1})  # contrast first
    b = t.transform(img, {**p, "mode": 0})  # contrast last
    assert not torch.equal(a, b)


def test_photometric_random_changes_image_not_mask():
    torch.manual_seed(0)
    t = PhotoMetricDistortion()
    img, lab = _img(16, 16), _mask(torch.randint(0, 5, (16, 16)))
    changed = 0
    for _ in range(10):
        oi, ol = t(img, lab)
        assert oi.shape == img.shape and oi.dtype == torch.uint8
        assert ol is lab or torch.equal(ol, lab)
        changed += not torch.equal(oi, img)
    assert changed >= 5
    with pytest.raises(TypeError, match="uint8"):
        t(tv_tensors.Image(torch.rand(3, 4, 4)))


# ------------------------------------------------------------------ Pad and full pipelines
def test_pad_to_size_right_bottom():
    oi, ol = PadToSize((8, 10))(tv_tensors.Image(torch.ones(3, 5, 6)), _mask(torch.zeros(5, 6)))
    assert oi.shape == (3, 8, 10) and ol.shape == (8, 10)
    assert (oi[:, :5, :6] == 1).all() and oi[:, 5:].abs().sum() == 0 and oi[:, :, 6:].abs().sum() == 0
    assert (ol[:5, :6] == 0).all() and (ol[5:] == 255).all() and (ol[:, 6:] == 255).all()
    big = tv_tensors.Image(torch.ones(3, 9, 12))
    assert PadToSize((8, 10))(big).shape == (3, 9, 12)


def test_train_pipeline_masks_aligned_and_padded():
    # 40x60 image, two-region image/label; scale (64, 32) -> 32x48, crop 64 -> clipped, pad to 64x64.
    h, w = 40, 60
    lab = torch.ones(h, w, dtype=torch.int64)
    lab[:, 30:] = 2
    lab[:5, :5] = 255
    full = lab.clone()
    full[:5, :5] = 4  # "unseen" in the full label, hidden in the training label
    img = torch.zeros(3, h, w, dtype=torch.uint8)
    img[:, :, 30:] = 255
    t = build_train_transform(crop_size=(64, 64), scale=(64, 32), ratio_range=None, photometric=False, flip_prob=0.5)
    mean, std = torch.tensor(CLIP_MEAN).view(3, 1, 1), torch.tensor(CLIP_STD).view(3, 1, 1)
    flips = set()
    torch.manual_seed(0)
    for _ in range(8):
        oi, ol, of = t(tv_tensors.Image(img), _mask(lab), _mask(full))
        assert oi.shape == (3, 64, 64) and oi.dtype == torch.float32
        assert ol.shape == of.shape == (64, 64) and ol.dtype == of.dtype == torch.int64
        assert set(ol.unique().tolist()) <= {1, 2, 255} and set(of.unique().tolist()) <= {1, 2, 4, 255}
        # identical geometry: the masks differ only where the label hides "unseen"
        assert torch.equal(ol == 255, (of == 255) | (of == 4)) and torch.equal(ol[of != 4], of[of != 4])
        # padding: right/bottom only, label 255, image 0 (in normalised space)
        assert (ol[32:] == 255).all() and (ol[:, 48:] == 255).all() and (ol[:32, :48] != 255).any()
        assert oi[:, 32:].abs().sum() == 0 and oi[:, :, 48:].abs().sum() == 0
        # image/label alignment: white side of the image is class 2 (away from the bilinear seam)
        raw = (oi[:, :32, :48] * std + mean)[0]
        l2 = of[:32, :48]
        seam = (l2[:, 1:] != l2[:, :-1]).any(0).nonzero().flatten()
        keep = torch.ones(48, dtype=torch.bool)
        for c in seam.tolist():
            keep[max(0, c - 1) : c + 3] = False
        assert ((raw[:, keep] > 0.5) == (l2[:, keep] == 2)).all()
        flips.add(int(l2[10, 0]))
    assert flips == {1, 2}  # both flip outcomes were exercised


def test_train_pipeline_on_real_voc(voc_root):
    from zss.data.dataset import build_dataset

    torch.manual_seed(0)
    ds = build_dataset(
        "voc20",
        voc_root,
        "train",
        hide_unseen=True,
        transform=build_train_transform(crop_size=(128, 128), scale=(512, 128)),
    )
    i = ds.names.index("2007_006066")
    s = ds[i]
    assert s["image"].shape == (3, 128, 128) and s["image"].dtype == torch.float32
    assert s["label"].shape == s["full_label"].shape == (128, 128)
    assert set(s["label"].unique().tolist()) <= {8, 255}
    assert set(s["full_label"].unique().tolist()) <= {8, 17, 19, 255}
    known = s["full_label"] != 255
    hidden = torch.isin(s["full_label"], torch.tensor([17, 19]))
    assert torch.equal(s["label"][known & ~hidden], s["full_label"][known & ~hidden])


def test_test_pipeline_image_only(voc_root):
    from zss.data.dataset import build_dataset

    ds = build_dataset("voc20", voc_root, "val", transform=build_test_transform(scale=(2048, 512)))
    raw = build_dataset("voc20", voc_root, "val")[0]
    s = ds[0]
    h, w = raw["image"].shape[1:]
    assert s["image"].shape == (3, *keep_ratio_size(h, w, (2048, 512))) and s["image"].dtype == torch.float32
    assert torch.equal(s["label"], raw["label"]) and torch.equal(s["full_label"], raw["full_label"])
    assert abs(s["image"].mean().item()) < 3  # normalised


def test_as_pair_reads_sizes_and_names_the_bad_key():
    assert as_pair(512, "crop") == (512, 512) and as_pair((512, 384), "crop") == (512, 384)
    assert as_pair([2048, 512], "scale") == (2048, 512)  # Hydra lists
    assert as_pair((0, -1), "size") == (0, -1)  # only checked with positive=True
    for bad, positive in (((1, 2, 3), False), ("ab", False), ((512, 0), True), (None, False)):
        with pytest.raises(ValueError, match="crop_size must be"):
            as_pair(bad, "crop_size", positive=positive)
