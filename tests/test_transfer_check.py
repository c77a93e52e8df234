"""scripts/transfer_check.py: the teacher's own score on the scored pixels, the constant-prediction
5-way, and verdicts on the 5-way class-mean against the seen-only row of the same teacher. No training here."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import REPO

sys.path.insert(0, str(REPO / "scripts"))
import transfer_check as tc  # noqa: E402

from zss.data.classes import get_benchmark  # noqa: E402
from zss.engine.metrics import constant_five_way  # noqa: E402

#: two bundled VOC training images with unseen classes: chair + sofa + tvmonitor; chair + pottedplant
TWO = ["2007_006066", "2007_006605"]


@pytest.fixture(scope="module")
def two_images(voc_root, tmp_path_factory):
    """A VOC root holding the bundled images with a ``train`` split list of the TWO images only."""
    root = tmp_path_factory.mktemp("voc2")
    for d in ("JPEGImages", "SegmentationClass"):
        (root / d).symlink_to(voc_root / d)
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text("\n".join(TWO) + "\n")
    return root


def test_oracle_teacher_scored_on_the_full_label_pixels(two_images, voc_root):
    extra = [f"dataset.root={two_images}"]
    rows = {k: tc.ROWS[k] for k in ("seen-only (oracle)", "CLIP-ZSS (oracle)")}
    scores, row_teacher = tc.teacher_scores(rows, extra)
    # the seen-only row and the distilled row share their teacher: scored once
    assert len(scores) == 1 and row_teacher["seen-only (oracle)"] == row_teacher["CLIP-ZSS (oracle)"]
    q = next(iter(scores.values()))
    assert q["teacher"] == "oracle" and q["num_images"] == 2 and q["split"] == "train"
    # the pixels eval.py scores: every labelled pixel of the ORIGINAL-size labels (background = 0 -> ignored)
    want = np.zeros(20, dtype=np.int64)
    for n in TWO:
        raw = np.array(Image.open(voc_root / "SegmentationClass" / f"{n}.png")).astype(np.int64)
        ids = raw[(raw != 0) & (raw != 255)] - 1
        want += np.bincount(ids, minlength=20)
    assert q["gt_pixels"] == want.tolist()
    # the oracle reads the full label: its own dense argmax nearly solves the unseen classes
    assert q["five_way_pAcc"] > 90 and q["five_way_mAcc"] > 90 and q["mIoU_unseen"] > 70
    # the constant-prediction 5-way of these pixels: sofa / pottedplant / tvmonitor, the largest one's share
    bench = get_benchmark("voc20")
    c = constant_five_way(q["gt_pixels"], bench.unseen)
    u = want[list(bench.unseen)]
    assert c["present"] == 3 and c["pAcc"] == pytest.approx(u.max() / u.sum() * 100)
    assert c["pAcc"] < q["five_way_pAcc"]


def test_seen_only_rows_use_the_teacher_of_the_row_they_are_compared_with():
    for name, ref, *_ in tc.TARGETS:
        assert ref in tc.ROWS and ref.startswith("seen-only")
        teacher = [o for o in tc.ROWS[name] if o.startswith("teacher=")]
        assert [o for o in tc.ROWS[ref] if o.startswith("teacher=")] == teacher, name
    cfg_o = tc.compose_row(tc.ROWS["seen-only (oracle)"])
    cfg_t = tc.compose_row(tc.ROWS["seen-only (taught CLIP)"])
    assert cfg_o.method.name == cfg_t.method.name == "baseline"
    assert cfg_o.teacher._target_.endswith("OracleTeacher") and cfg_t.teacher.model_name == "taught-clip"


def _row(name, seed, s, u, macc, pacc):
    return dict(
        name=name,
        seed=seed,
        mIoU_S=s,
        mIoU_U=u,
        hIoU=0.0,
        five_way=pacc,
        five_way_macc=macc,
        per_class_IoU=[],
        efficiency=None,
        wall=1.0,
        run="",
    )


def test_verdicts_judge_class_mean_against_the_same_teachers_seen_only():
    rows = [
        _row("seen-only (oracle)", 0, 70.0, 0.0, 20.0, 14.0),
        _row("seen-only (taught CLIP)", 0, 60.0, 10.0, 30.0, 40.0),
        # +12 over the oracle's seen-only; a pixel 5-way of 70% but a class-mean of 50%: FAIL on the class-mean
        _row("CLIP-ZSS (oracle)", 0, 68.0, 12.0, 50.0, 70.0),
        # +8 over seen-only (oracle) but only +4 over seen-only (taught CLIP), its own teacher's: FAIL
        _row("CLIP-ZSS (taught CLIP)", 0, 60.0, 14.0, 50.0, 50.0),
        _row("Chimera-Seg (taught CLIP)", 0, 60.0, 16.0, 46.0, 30.0),  # +6, class-mean 46%: PASS
    ]
    lines = {ln.split(": ")[0]: ln for ln in tc.verdicts(rows, [0])}
    assert lines["FAIL seed 0 CLIP-ZSS (oracle)"].count("class-mean 50.0% (>= 60%)") == 1
    assert "vs seen-only (taught CLIP)" in lines["FAIL seed 0 CLIP-ZSS (taught CLIP)"]
    assert "PASS seed 0 Chimera-Seg (taught CLIP)" in lines
    assert not any("CLIP-RC" in k for k in lines)  # not run: no verdict
    # without its seen-only row a distilled row gets no verdict
    assert tc.verdicts(rows[2:], [0]) == []


def test_report_prints_teacher_rows_and_the_constant_prediction():
    bench = get_benchmark("voc20")
    gt = [0] * 20
    gt[15], gt[19] = 100, 300
    nan = float("nan")
    scores = {
        "k": dict(
            teacher="oracle",
            num_images=40,
            mIoU_seen=95.0,
            mIoU_unseen=99.0,
            hIoU=97.0,
            five_way_mAcc=99.5,
            five_way_pAcc=99.9,
            gt_pixels=gt,
        )
    }
    rows = [_row("seen-only (oracle)", 0, 70.0, 0.0, 20.0, 14.0), _row("CLIP-ZSS (oracle)", 0, 68.0, 49.5, nan, 70.0)]
    text = tc.format_report(rows, scores, {r["name"]: "k" for r in rows}, list(bench.unseen), list(bench.classes), [0])
    assert "| teacher: oracle (its own dense zero-shot) | — | 95.00 | 99.00 |" in text
    assert "| CLIP-ZSS (oracle) | 0 | 68.00 | 49.50 | 0.00 | nan | 70.00 | 50.00 |" in text  # 49.5 / 99 = 50%
    assert "'tvmonitor' on every unseen pixel scores 5-way pixel 75.00%" in text
    assert "class-mean 50.00% (1 / 2 unseen classes present)" in text
    assert not math.isnan(constant_five_way(gt, bench.unseen)["pAcc"])
