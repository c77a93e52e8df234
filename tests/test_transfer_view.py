"""The demo's transfer view: training images on their FULL labels, next to the seen-only reference."""

from __future__ import annotations

import json


def test_demo_writes_the_transfer_view_with_pseudo_label_quality(tiny_ckpt):
    run = tiny_ckpt.parent
    view = json.loads((run / "transfer_view.json").read_text())
    row = view["run"]
    for key in ("mIoU_seen", "mIoU_unseen", "hIoU", "five_way_pixel", "five_way_class_mean"):
        assert key in row
    # 5-way: accuracy over unseen-GT pixels with the argmax over the 5 unseen classes only
    assert 0.0 <= row["five_way_pixel"] <= 100.0
    # CLIP-ZSS has PLM: its pseudo-label quality on the training images is reported too
    assert row["pl_regions"] >= 0.0 and 0.0 <= row["pl_purity"] <= 100.0
    text = (run / "transfer_view.md").read_text()
    assert "TRAINING images on their FULL labels" in text and "NOT zero-shot" in text
    # the demo quotes the seen-only reference measured by scripts/transfer_check.py
    assert view["reference"].get("name", "").startswith("seen-only")
