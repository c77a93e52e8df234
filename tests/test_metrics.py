"""SegEvaluator: dataset-level confusion matrix, GZSS/ZSS metrics, NaN rules, formatting."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from zss.engine.metrics import SegEvaluator, format_table, harmonic_iou, summary_line, to_json

NAMES4 = ["a", "b", "c", "d"]


def _ev(num_classes=4, unseen=(2, 3), **kw):
    return SegEvaluator(
        num_classes, NAMES4[:num_classes] if num_classes <= 4 else [f"c{i}" for i in range(num_classes)], unseen, **kw
    )


def _t(rows):
    return torch.tensor(rows, dtype=torch.int64)


def test_confusion_and_exact_iou():
    ev = _ev()
    target = _t([[0, 0, 1, 1], [2, 2, 3, 255]])[None]
    pred = _t([[0, 1, 1, 1], [2, 3, 3, 0]])[None]
    ev.update(pred, target)
    conf = ev.confusion
    assert conf.dtype == torch.int64
    expected = np.zeros((4, 4), dtype=np.int64)
    for t, p in [(0, 0), (0, 1), (1, 1), (1, 1), (2, 2), (2, 3), (3, 3)]:  # 255 pixel skipped
        expected[t, p] += 1
    np.testing.assert_array_equal(conf.numpy(), expected)
    r = ev.compute()
    ious = [row["IoU"] for row in r["per_class"]]
    # class0: TP1 FP0 FN1 -> 1/2; class1: TP2 FP1 FN0 -> 2/3; class2: TP1 FN1 -> 1/2; class3: TP1 FP1 -> 1/2
    np.testing.assert_allclose(ious, [50.0, 200 / 3, 50.0, 50.0])
    accs = [row["Acc"] for row in r["per_class"]]
    np.testing.assert_allclose(accs, [50.0, 100.0, 50.0, 100.0])
    assert r["mIoU_seen"] == pytest.approx((50 + 200 / 3) / 2)
    assert r["mIoU_unseen"] == pytest.approx(50.0)
    s, u = (50 + 200 / 3) / 2, 50.0
    assert r["hIoU"] == pytest.approx(2 * s * u / (s + u))
    assert r["pAcc"] == pytest.approx(5 / 7 * 100)
    assert r["mIoU"] == pytest.approx(np.mean([50.0, 200 / 3, 50.0, 50.0]))
    assert r["mAcc"] == pytest.approx(np.mean([50.0, 100.0, 50.0, 100.0]))
    assert r["num_pixels"] == 7 and r["label_space"] == "all"
    assert [row["seen"] for row in r["per_class"]] == [True, True, False, False]
    assert [row["name"] for row in r["per_class"]] == NAMES4


def test_absent_class_is_nan_and_excluded_from_means():
    ev = _ev()
    # class 1 never appears in GT nor prediction; class 3 appears only in GT (IoU 0, not NaN)
    target = _t([[0, 0, 2, 3]])
    pred = _t([[0, 0, 2, 2]])
    ev.update(pred, target)
    r = ev.compute()
    iou = [row["IoU"] for row in r["per_class"]]
    assert math.isnan(iou[1]) and math.isnan(r["per_class"][1]["Acc"])
    assert iou[0] == 100.0 and iou[2] == pytest.approx(50.0) and iou[3] == 0.0
    assert r["mIoU_seen"] == 100.0  # NaN class 1 not poisoning nor counted as 0
    assert r["mIoU_unseen"] == pytest.approx(25.0)
    assert r["mIoU"] == pytest.approx((100 + 50 + 0) / 3)
    assert not math.isnan(r["hIoU"])


def test_predicted_but_absent_from_gt_has_iou_zero_acc_nan():
    ev = _ev()
    ev.update(_t([[1, 0]]), _t([[0, 0]]))
    row = ev.compute()["per_class"][1]
    assert row["IoU"] == 0.0 and math.isnan(row["Acc"])


def test_hiou_zero_when_unseen_zero_and_nan_without_unseen():
    ev = _ev()
    ev.update(_t([[0, 1, 0]]), _t([[0, 1, 2]]))  # unseen class 2 in GT, never right
    r = ev.compute()
    assert r["mIoU_unseen"] == 0.0 and r["hIoU"] == 0.0
    ev2 = _ev()
    ev2.update(_t([[0, 1]]), _t([[0, 1]]))  # no unseen class anywhere
    r2 = ev2.compute()
    assert math.isnan(r2["mIoU_unseen"]) and math.isnan(r2["hIoU"]) and r2["mIoU_seen"] == 100.0
    assert harmonic_iou(0.0, 50.0) == 0.0 and harmonic_iou(40.0, 60.0) == pytest.approx(48.0)


def test_ignore_index_skipped_and_custom_ignore():
    ev = _ev()
    ev.update(_t([[0, 3, 3]]), _t([[0, 255, 255]]))
    r = ev.compute()
    assert r["num_pixels"] == 1 and r["pAcc"] == 100.0
    assert int(ev.confusion[:, 3].sum()) == 0
    ev2 = _ev(ignore_index=-1)
    ev2.update(_t([[0, 3]]), _t([[0, -1]]))
    assert ev2.compute()["num_pixels"] == 1


def test_label_space_unseen():
    ev = _ev(label_space="unseen")
    target = _t([[0, 1, 2, 2, 3, 3]])
    pred = _t([[2, 1, 2, 0, 3, 2]])
    ev.update(pred, target)
    r = ev.compute()
    # seen GT pixels (0, 1) ignored: the pred 2 at the GT-0 pixel is NOT a false positive of class 2
    # class 2: TP1, FN1 (pred 0), FP1 (GT 3 -> 2) -> 1/3; class 3: TP1 FN1 -> 1/2
    assert r["per_class"][2]["IoU"] == pytest.approx(100 / 3)
    assert r["per_class"][3]["IoU"] == pytest.approx(50.0)
    assert all(math.isnan(r["per_class"][c]["IoU"]) for c in (0, 1))
    assert math.isnan(r["mIoU_seen"]) and math.isnan(r["hIoU"])
    assert r["mIoU_unseen"] == pytest.approx((100 / 3 + 50) / 2) == pytest.approx(r["mIoU"])
    assert r["num_pixels"] == 4 and r["pAcc"] == pytest.approx(50.0)
    assert r["label_space"] == "unseen"
    assert "unseen (ZSS)" in format_table(r)


def test_update_accumulates_like_one_big_update():
    g = torch.Generator().manual_seed(0)
    preds = torch.randint(0, 5, (6, 7, 9), generator=g)
    targets = torch.randint(0, 5, (6, 7, 9), generator=g)
    targets[targets == 4] = 255
    names = [f"c{i}" for i in range(5)]
    one = SegEvaluator(5, names, [3, 4])
    one.update(preds, targets)
    many = SegEvaluator(5, names, [3, 4])
    for i in range(6):
        many.update(preds[i : i + 1], targets[i : i + 1])
    assert torch.equal(one.confusion, many.confusion)
    # dataset-level, not the mean of per-image mIoUs
    r_one = one.compute()
    per_img = []
    for i in range(6):
        e = SegEvaluator(5, names, [3, 4])
        e.update(preds[i], targets[i])
        per_img.append(e.compute()["mIoU"])
    assert r_one["mIoU"] != pytest.approx(float(np.mean(per_img)), abs=1e-9)
    many.reset()
    assert int(many.confusion.sum()) == 0


def test_int64_no_overflow():
    ev = _ev()
    big = np.zeros((4, 4), dtype=np.int64)
    big[0, 0] = 3 * 2**31  # > int32 range
    big[0, 1] = 2**31
    big[2, 2] = 2**32
    ev.update_confusion(big)
    ev.update(_t([[0, 2]]), _t([[0, 2]]))
    conf = ev.confusion
    assert conf.dtype == torch.int64
    assert int(conf[0, 0]) == 3 * 2**31 + 1 and int(conf[2, 2]) == 2**32 + 1
    r = ev.compute()
    assert r["per_class"][0]["IoU"] == pytest.approx((3 * 2**31 + 1) / (4 * 2**31 + 1) * 100)
    assert r["num_pixels"] == 3 * 2**31 + 2**31 + 2**32 + 2
    with pytest.raises(ValueError, match="integer"):
        ev.update_confusion(np.zeros((4, 4), dtype=np.float64))
    with pytest.raises(ValueError, match="shape"):
        ev.update_confusion(np.zeros((3, 3), dtype=np.int64))


def test_errors_name_the_value():
    ev = _ev()
    with pytest.raises(ValueError, match="prediction value 7"):
        ev.update(_t([[0, 7]]), _t([[0, 1]]))
    with pytest.raises(ValueError, match="prediction value -1"):
        ev.update(_t([[0, -1]]), _t([[0, 1]]))
    with pytest.raises(ValueError, match="target value 9"):
        ev.update(_t([[0, 1]]), _t([[0, 9]]))
    with pytest.raises(ValueError, match="shape"):
        ev.update(_t([[0, 1]]), _t([[0, 1, 2]]))
    with pytest.raises(ValueError, match="integer"):
        ev.update(torch.zeros(1, 2), _t([[0, 1]]))
    with pytest.raises(ValueError, match="label_space"):
        _ev(label_space="seen")
    with pytest.raises(ValueError, match="outside"):
        _ev(unseen=(4,))
    with pytest.raises(ValueError, match="class_names"):
        SegEvaluator(3, ["a"], [1])
    assert int(ev.confusion.sum()) == 0  # failed updates left nothing behind


def test_all_reduce_noop_without_dist():
    assert not torch.distributed.is_initialized()
    ev = _ev()
    ev.update(_t([[0, 1]]), _t([[0, 1]]))
    before = ev.confusion.clone()
    ev.all_reduce()
    assert torch.equal(ev.confusion, before)


def test_all_reduce_single_rank_gloo(tmp_path):
    import torch.distributed as dist

    if not dist.is_available():
        pytest.skip("torch.distributed not available")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        ev = _ev()
        ev.update(_t([[0, 1, 2]]), _t([[0, 1, 3]]))
        before = ev.confusion.clone()
        ev.all_reduce()
        ev.all_reduce()  # idempotent: re-sums the local matrix, never double-counts
        assert torch.equal(ev.confusion, before)
        ev.update(_t([[3]]), _t([[3]]))
        assert int(ev.confusion.sum()) == 4
    finally:
        dist.destroy_process_group()


def test_format_table_summary_and_json():
    ev = _ev()
    ev.update(_t([[0, 0, 2]]), _t([[0, 0, 2]]))
    r = ev.compute()
    table = format_table(r)
    lines = table.splitlines()
    assert lines[0].startswith("| class | split | IoU | Acc |")
    assert "| a | seen | 100.00 | 100.00 |" in lines
    assert "| b | seen | n/a | n/a |" in lines  # absent class shown as n/a
    assert "| c | unseen | 100.00 | 100.00 |" in lines
    assert "hIoU" in table and "all (GZSS)" in table
    line = summary_line(r)
    assert "\n" not in line and "hIoU 100.00" in line and line.startswith("[all]")
    js = json.dumps(to_json(r), allow_nan=False)  # raises if a NaN survived
    assert "NaN" not in js
    back = json.loads(js)
    assert back["per_class"][1]["IoU"] is None and back["hIoU"] == 100.0
    assert back["per_class"][0]["seen"] is True


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_update_matches_cpu():
    g = torch.Generator().manual_seed(1)
    preds = torch.randint(0, 4, (2, 33, 47), generator=g)
    targets = torch.randint(0, 5, (2, 33, 47), generator=g)
    targets[targets == 4] = 255
    cpu, gpu = _ev(), _ev()
    cpu.update(preds, targets)
    gpu.update(preds.cuda(), targets.cuda())
    assert gpu.confusion.is_cuda
    assert torch.equal(gpu.confusion.cpu(), cpu.confusion)
    assert json.dumps(to_json(gpu.compute())) == json.dumps(to_json(cpu.compute()))


# ------------------------------------------------------------------------ constant-prediction 5-way
def test_constant_five_way_on_a_hand_made_label_set():
    from zss.engine.metrics import constant_five_way, label_histogram

    # 4 classes, unseen = {2, 3}; two label maps: unseen pixels 2: 3, 3: 6 (class 3 holds 2/3 of them)
    labels = [_t([[0, 2, 3, 3], [255, 3, 1, 1]]), _t([[3, 3, 2, 2], [3, 255, 0, 255]])]
    counts = label_histogram(labels, 4)
    assert counts.tolist() == [2, 2, 3, 6]
    c = constant_five_way(counts, unseen=[2, 3])
    assert c["class_id"] == 3 and c["unseen_pixels"] == 9 and c["present"] == 2
    assert c["pAcc"] == pytest.approx(6 / 9 * 100) and c["mAcc"] == pytest.approx(50.0)
    # it IS the ZSS score of predicting class 3 everywhere (SegEvaluator, label_space=unseen)
    ev = _ev(label_space="unseen")
    for lab in labels:
        ev.update(torch.full_like(lab, 3)[None], lab[None])
    r = ev.compute()
    assert r["pAcc"] == pytest.approx(c["pAcc"]) and r["mAcc"] == pytest.approx(c["mAcc"])
    # and the other constant does worse
    ev = _ev(label_space="unseen")
    for lab in labels:
        ev.update(torch.full_like(lab, 2)[None], lab[None])
    assert ev.compute()["pAcc"] < c["pAcc"]
    # a confusion matrix (rows = ground truth, some pixels mispredicted) gives the answer of its row sums
    conf = torch.diag(counts)
    conf[3, 3] -= 2
    conf[3, 0] += 2
    assert constant_five_way(conf, [2, 3]) == c


def test_constant_five_way_edge_cases_and_errors():
    from zss.engine.metrics import constant_five_way, label_histogram

    none = constant_five_way([5, 5, 0, 0], [2, 3])  # no unseen pixel
    assert math.isnan(none["pAcc"]) and none["class_id"] == -1
    assert constant_five_way([0, 0, 4, 4], [3, 2])["class_id"] == 2  # tie: the lowest id
    with pytest.raises(ValueError, match="outside"):
        constant_five_way([1, 2, 3], [3])
    with pytest.raises(ValueError, match="shape"):
        constant_five_way(np.zeros((2, 3)), [1])
    with pytest.raises(ValueError, match="label value 7"):
        label_histogram([_t([[0, 7]])], 4)
