"""Open-vocabulary / cross-dataset evaluation: a VOC-trained demo checkpoint evaluated on a
context59-layout tree (built here from constructed labels) over Context's 59 classes."""

from __future__ import annotations

import json
import shutil

import numpy as np
from PIL import Image

from conftest import compose_config

IDS = ("2007_000032", "2007_000061", "2007_000241")


def _context_tree(root, voc_root):
    for d in ("JPEGImages", "SegmentationClassContext", "ImageSets/SegmentationContext"):
        (root / d).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in IDS:
        shutil.copy(voc_root / "JPEGImages" / f"{i}.jpg", root / "JPEGImages" / f"{i}.jpg")
        w, h = Image.open(root / "JPEGImages" / f"{i}.jpg").size
        lab = np.zeros((h, w), np.uint8)  # 0 = background -> ignored by context59 (reduce_zero_label)
        lab[: h // 2] = rng.integers(1, 60)
        lab[h // 2 :, : w // 2] = 20  # cow (context59 id 19: unseen in zs3)
        Image.fromarray(lab, mode="L").save(root / "SegmentationClassContext" / f"{i}.png")
    (root / "ImageSets/SegmentationContext/val.txt").write_text("\n".join(IDS) + "\n")


def test_voc_checkpoint_on_context59(tmp_path, tiny_ckpt, voc_root, capsys):
    from zss.cli.eval import evaluate_checkpoint

    root = tmp_path / "VOC2010"
    _context_tree(root, voc_root)
    out = tmp_path / "ev"
    evaluate_checkpoint(
        compose_config(
            "eval",
            [
                f"ckpt={tiny_ckpt}",
                "dataset=context59_zs3",
                f"dataset.root={root}",
                "dataset.test_scale=[256,64]",
                f"out_dir={out}",
                "efficiency=false",
            ],
        )
    )
    assert "hIoU" in capsys.readouterr().out
    (f,) = out.glob("eval_context59_all_whole_sb0_*_val_results.json")  # named by settings
    rep = json.loads(f.read_text())
    assert len(rep["per_class"]) == 59
    assert {c["name"] for c in rep["per_class"] if not c["seen"]} >= {"cow", "sofa", "aeroplane"}
    assert rep["mIoU"] is not None and rep["num_images"] == len(IDS)
