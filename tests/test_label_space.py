"""ZSS evaluation (label_space=unseen): the argmax is over the unseen classes only, taken after resizing.

Regression: seen logits were set to -inf BEFORE the bilinear resizes, which made NaN
wherever an interpolation weight is 0 (``0 * -inf``, e.g. the image border); the argmax then picked
the NaN (a seen class) and those unseen pixels were scored as misses (1.6 % whole / 7.1 % slide on the
toy below).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from zss.engine.evaluate import evaluate
from zss.engine.inference import argmax_classes, predict_segmentation
from zss.methods.base import Method

C, UNSEEN = 6, [3, 4, 5]


class StripeStudent(nn.Module):
    """Toy student that reads the class id from channel 0 of the image: embeds = one-hot class map average-pooled
    to stride 4 (D = C), logits = 10 * <embeds, text>. With horizontal stripes 16 px high (multiples of the
    stride) every pixel of its own stripe is predicted correctly after bilinear upsampling."""

    output_stride = 4

    def forward(self, images):
        cls = images[:, 0].round().long().clamp(0, C - 1)  # [B, H, W]
        return F.avg_pool2d(F.one_hot(cls, C).permute(0, 3, 1, 2).float(), 4)  # [B, C, H/4, W/4]

    def logits(self, embeds, text):
        return 10.0 * torch.einsum("bdhw,cd->bchw", embeds, text)


class StripeSet(torch.utils.data.Dataset):
    """Images whose channel 0 holds the class id, in 16-px horizontal stripes of random classes (all six)."""

    def __init__(self, n=6, h=96, w=128, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.items = []
        for i in range(n):
            lab = torch.randint(0, C, (h // 16,), generator=g).repeat_interleave(16)[:, None].expand(h, w).clone()
            img = torch.zeros(3, h, w)
            img[0] = lab.float()
            self.items.append(dict(image=img, full_label=lab, name=f"img{i}"))

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def _toy_method():
    return Method(StripeStudent(), None, [f"class{i}" for i in range(C)], UNSEEN, text_embeds=torch.eye(C))


def test_zss_scores_every_correct_unseen_pixel_whole_and_slide():
    method, data = _toy_method(), StripeSet()
    n_unseen = sum(int((d["full_label"] >= 3).sum()) for d in data.items)
    assert n_unseen > 0
    for mode in ("whole", "slide"):
        preds = []
        r = evaluate(
            method,
            data,
            mode=mode,
            crop=(64, 64),
            stride=(32, 32),
            label_space="unseen",
            on_prediction=lambda s, p, preds=preds: preds.append(p),
        )
        assert r["label_space"] == "unseen"
        assert r["pAcc"] == 100.0, (mode, r["pAcc"])  # fraction of unseen pixels scored correctly
        assert r["mIoU_unseen"] == 100.0, (mode, r["mIoU_unseen"])
        allp = torch.cat([p.flatten() for p in preds])
        assert set(allp.unique().tolist()) <= set(UNSEEN), mode  # ZSS never predicts a seen class


def test_gzss_of_the_toy_is_exact_too():
    r = evaluate(_toy_method(), StripeSet(), mode="slide", crop=(64, 64), stride=(32, 32), label_space="all")
    assert r["pAcc"] == 100.0 and r["mIoU_seen"] == 100.0 and r["mIoU_unseen"] == 100.0


def test_seen_bias_does_not_change_zss_but_shifts_gzss():
    method, data = _toy_method(), StripeSet(n=2)
    big = 100.0  # larger than any toy logit gap: every seen pixel flips to an unseen class in GZSS
    zss = evaluate(method, data, mode="whole", label_space="unseen", seen_bias=big)
    assert zss["pAcc"] == 100.0
    gz = evaluate(method, data, mode="whole", label_space="all", seen_bias=big)
    assert gz["mIoU_seen"] == 0.0


def test_argmax_classes_restricts_after_resize_without_nan():
    logits = torch.tensor([[5.0, 1.0, 2.0], [0.0, 3.0, -1.0]]).t().reshape(1, 3, 2, 1)  # 2 pixels, 3 classes
    assert argmax_classes(logits).flatten().tolist() == [0, 1]
    assert argmax_classes(logits, [1, 2]).flatten().tolist() == [2, 1]  # ids of the full list
    assert argmax_classes(logits, torch.tensor([2])).flatten().tolist() == [2, 2]
    for bad in ([], [3], [-1]):
        with pytest.raises(ValueError, match="subset"):
            argmax_classes(logits, bad)


def test_predict_segmentation_classes_whole_and_slide():
    method, data = _toy_method(), StripeSet(n=1)
    img, lab = data[0]["image"][None], data[0]["full_label"]
    fn = lambda x: method.predict(x, label_space="all")  # noqa: E731
    for mode in ("whole", "slide"):
        pred = predict_segmentation(fn, img, mode=mode, crop=(64, 64), stride=(32, 32), classes=method.unseen)[0]
        unseen = lab >= 3
        assert torch.equal(pred[unseen], lab[unseen]), mode
        assert set(pred.unique().tolist()) <= set(UNSEEN)


def test_predict_unseen_masks_seen_logits_with_a_finite_value():
    method = _toy_method()
    x = StripeSet(n=1)[0]["image"][None]
    logits = method.predict(x, label_space="unseen")
    assert torch.isfinite(logits).all()
    up = F.interpolate(logits, scale_factor=4, mode="bilinear", align_corners=False)
    assert torch.isfinite(up).all()  # -inf here made NaN at the border (0 * -inf)
    assert set(up.argmax(1).unique().tolist()) <= set(UNSEEN)
    with pytest.raises(ValueError, match="label_space"):
        method.predict(x, label_space="seen")


def test_real_student_on_voc_predicts_only_unseen_classes(voc_root):
    """A real tiny random student on the bundled VOC sample: every ZSS prediction is an unseen class."""
    from zss.data.classes import get_benchmark
    from zss.data.dataset import build_dataset
    from zss.data.transforms import build_test_transform
    from zss.models.student import Student
    from zss.teachers.oracle import OracleTeacher

    bench = get_benchmark("voc20")
    torch.manual_seed(0)
    student = Student("test_resnet", embed_dim=16, decoder="mlp", decoder_channels=16)
    method = Method(student, OracleTeacher(bench.classes, embed_dim=16), bench.classes, bench.unseen)
    ds = build_dataset("voc20", voc_root, split="val", transform=build_test_transform(scale=(256, 64)))
    sub = torch.utils.data.Subset(ds, range(3))
    for mode in ("whole", "slide"):
        preds = []
        evaluate(
            method,
            sub,
            mode=mode,
            crop=(64, 64),
            stride=(48, 48),
            label_space="unseen",
            on_prediction=lambda s, p, preds=preds: preds.append(p),
        )
        ids = set(torch.cat([p.flatten() for p in preds]).unique().tolist())
        assert ids and ids <= set(bench.unseen), (mode, ids)
