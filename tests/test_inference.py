"""Whole / sliding-window inference: mmseg grid, coverage, batching, exact reconstruction."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from zss.engine.inference import (
    predict_segmentation,
    resize_logits,
    slide_inference,
    slide_windows,
    whole_inference,
)


class CountingFn:
    """Wraps a model_fn and records the batch sizes it was called with."""

    def __init__(self, fn):
        self.fn = fn
        self.calls: list[int] = []

    def __call__(self, x):
        self.calls.append(x.shape[0])
        return self.fn(x)


def _stride4_conv(num_classes=5, seed=0):
    torch.manual_seed(seed)
    net = nn.Conv2d(3, num_classes, kernel_size=4, stride=4).eval()
    return net


@pytest.mark.parametrize(
    "hw, expected_y, expected_x",
    [
        ((512, 683), [0], [0, 171]),
        ((512, 512), [0], [0]),
        ((300, 200), [0], [0]),  # smaller than the crop: one window, the image itself
        ((1024, 939), [0, 426, 512], [0, 426, 427]),  # mmseg quirk: near-duplicate last window
    ],
)
def test_grid_matches_mmseg(hw, expected_y, expected_x):
    H, W = hw
    wins = slide_windows(H, W, (512, 512), (426, 426))
    ys = sorted({w[0] for w in wins})
    xs = sorted({w[2] for w in wins})
    assert ys == expected_y and xs == expected_x
    assert len(wins) == len(ys) * len(xs)
    sizes = {(y2 - y1, x2 - x1) for y1, y2, x1, x2 in wins}
    assert sizes == {(min(512, H), min(512, W))}  # all windows share one size
    # mmseg formula for the number of windows
    h_grids = max(H - 512 + 426 - 1, 0) // 426 + 1
    w_grids = max(W - 512 + 426 - 1, 0) // 426 + 1
    assert len(wins) == h_grids * w_grids


def test_grid_errors():
    with pytest.raises(ValueError, match="stride"):
        slide_windows(100, 100, (32, 32), (40, 40))
    with pytest.raises(ValueError, match="crop"):
        slide_windows(100, 100, (0, 32), (16, 16))


def test_count_map_covers_every_pixel():
    for H, W, crop, stride in [
        (97, 131, (32, 40), (21, 27)),
        (64, 64, (32, 32), (32, 32)),
        (50, 20, (64, 64), (48, 48)),
    ]:
        count = torch.zeros(H, W)
        for y1, y2, x1, x2 in slide_windows(H, W, crop, stride):
            assert 0 <= y1 < y2 <= H and 0 <= x1 < x2 <= W
            count[y1:y2, x1:x2] += 1
        assert bool((count >= 1).all())


def test_slide_equals_whole_when_crop_covers_image():
    net = _stride4_conv()
    images = torch.randn(2, 3, 48, 64)
    whole = whole_inference(net, images)
    assert whole.shape == (2, 5, 48, 64) and whole.dtype == torch.float32
    slide = slide_inference(net, images, 5, crop=(64, 64), stride=(48, 48), batch_size=4)
    torch.testing.assert_close(slide, whole)
    # the resize path really was exercised: the raw output is at stride 4
    assert net(images).shape[-2:] == (12, 16)


def test_identity_model_exact_reconstruction_with_overlaps():
    images = torch.randn(3, 3, 70, 93)
    fn = CountingFn(lambda x: x * 2.0)  # location-dependent: logits are the input pixels
    out = slide_inference(fn, images, 3, crop=(32, 40), stride=(20, 25), batch_size=5)
    torch.testing.assert_close(out, images * 2.0)
    n = len(slide_windows(70, 93, (32, 40), (20, 25))) * 3
    assert fn.calls == [5] * (n // 5) + ([n % 5] if n % 5 else [])
    assert len(fn.calls) == math.ceil(n / 5)


def test_windows_batched_across_images():
    images = torch.randn(2, 3, 40, 56)
    fn = CountingFn(lambda x: x[:, :2])
    n_win = len(slide_windows(40, 56, 24, 16))
    assert n_win > 1
    slide_inference(fn, images, 2, crop=24, stride=16, batch_size=3)
    assert sum(fn.calls) == 2 * n_win
    assert len(fn.calls) == math.ceil(2 * n_win / 3)


def test_low_res_model_in_slide_matches_per_window_resize():
    net = _stride4_conv(num_classes=4, seed=1)
    images = torch.randn(1, 3, 40, 52)
    out = slide_inference(net, images, 4, crop=(32, 32), stride=(20, 20), batch_size=2)
    ref = torch.zeros(1, 4, 40, 52)
    cnt = torch.zeros(1, 1, 40, 52)
    for y1, y2, x1, x2 in slide_windows(40, 52, 32, 20):
        crop = images[..., y1:y2, x1:x2]
        ref[..., y1:y2, x1:x2] += F.interpolate(net(crop), size=crop.shape[-2:], mode="bilinear", align_corners=False)
        cnt[..., y1:y2, x1:x2] += 1
    torch.testing.assert_close(out, ref / cnt)


def test_out_size_and_predict_segmentation():
    net = _stride4_conv()
    images = torch.randn(2, 3, 48, 64)
    logits = slide_inference(net, images, 5, crop=32, stride=24, out_size=(30, 40))
    assert logits.shape == (2, 5, 30, 40)
    base = slide_inference(net, images, 5, crop=32, stride=24)
    torch.testing.assert_close(logits, resize_logits(base, (30, 40)))
    seg = predict_segmentation(net, images, mode="slide", num_classes=5, crop=32, stride=24, out_size=(30, 40))
    assert seg.dtype == torch.int64 and seg.shape == (2, 30, 40)
    assert torch.equal(seg, logits.argmax(1))
    seg_w = predict_segmentation(net, images, mode="whole", out_size=(30, 40))
    assert torch.equal(seg_w, whole_inference(net, images, out_size=(30, 40)).argmax(1))
    with pytest.raises(ValueError, match="mode"):
        predict_segmentation(net, images, mode="tile")


def test_class_count_mismatch_and_bad_input():
    net = _stride4_conv()
    with pytest.raises(ValueError, match="num_classes=7"):
        slide_inference(net, torch.randn(1, 3, 32, 32), 7, crop=32, stride=32)
    with pytest.raises(ValueError, match="Tensor\\[B, 3, H, W\\]"):
        whole_inference(net, torch.randn(3, 32, 32))
    with pytest.raises(ValueError, match="batch_size"):
        slide_inference(net, torch.randn(1, 3, 32, 32), 5, crop=32, stride=32, batch_size=0)


def test_num_classes_inferred_and_no_grad():
    net = _stride4_conv()
    images = torch.randn(1, 3, 32, 48)
    out = slide_inference(net, images, None, crop=32, stride=16)
    assert out.shape == (1, 5, 32, 48) and not out.requires_grad
    torch.testing.assert_close(out, slide_inference(net, images, 5, crop=32, stride=16))  # same as told C=5


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_slide_matches_cpu():
    net = _stride4_conv()
    images = torch.randn(2, 3, 70, 90)
    cpu = slide_inference(net, images, 5, crop=48, stride=32, batch_size=3)
    gpu = slide_inference(net.cuda(), images.cuda(), 5, crop=48, stride=32, batch_size=3)
    assert gpu.is_cuda
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-4, rtol=1e-4)
