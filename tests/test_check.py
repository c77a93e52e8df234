"""zss.data.check: tiny trees in each real layout (VOC, COCO-Stuff, Context59/60) built from constructed
label arrays, each problem reported with the offending file, and the bundled real VOC sample."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import fake_terminal
from zss.cli.check import check_main as main
from zss.data.check import check_dataset, format_report
from zss.engine.visualize import voc_palette

H, W = 12, 16


def _voc_palette() -> list[int]:
    return voc_palette(256).flatten().tolist()


def _img(path: Path, h: int = H, w: int = W) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(str(path)))
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)


def _label(path: Path, arr: np.ndarray, mode: str = "L") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(arr.astype(np.uint8))  # mode L, values = indices
    if mode == "P":
        im.putpalette(_voc_palette())  # L -> P, indices kept (like VOC's SegmentationClass PNGs)
    elif mode == "RGB":
        im = Image.fromarray(np.repeat(arr.astype(np.uint8)[..., None], 3, axis=2))
    im.save(path)


def _arr(values: list[int], seed: int = 0) -> np.ndarray:
    """[H, W] label with every value of ``values`` present (uint8)."""
    rng = np.random.default_rng(seed)
    flat = np.array((values * (H * W // len(values) + 1))[: H * W], dtype=np.uint8)
    rng.shuffle(flat)
    return flat.reshape(H, W)


def make_voc(root: Path, n_train: int = 3, n_val: int = 2) -> Path:
    ids = [f"2007_{i:06d}" for i in range(n_train + n_val)]
    for k, i in enumerate(ids):
        _img(root / "JPEGImages" / f"{i}.jpg")
        _label(root / "SegmentationClass" / f"{i}.png", _arr([0, 255] + list(range(1 + k, 21, 3)), k), "P")
    sets = root / "ImageSets" / "Segmentation"
    sets.mkdir(parents=True)
    (sets / "train.txt").write_text("\n".join(ids[:n_train]) + "\n")
    (sets / "val.txt").write_text("\n".join(ids[n_train:]) + "\n")
    return root


def make_coco(root: Path) -> Path:
    for split, n in (("train", 3), ("val", 2)):
        for k in range(n):
            i = f"{k:012d}"
            _img(root / "images" / f"{split}2017" / f"{i}.jpg")
            _label(
                root / "annotations" / f"{split}2017" / f"{i}_labelTrainIds.png",
                _arr([255] + list(range(k, 171, 7)), k),
            )
    return root


def make_context(root: Path) -> Path:
    ids = [f"2008_{i:06d}" for i in range(4)]
    for k, i in enumerate(ids):
        _img(root / "JPEGImages" / f"{i}.jpg")
        _label(root / "SegmentationClassContext" / f"{i}.png", _arr([0] + list(range(1 + k, 60, 2)), k))
    sets = root / "ImageSets" / "SegmentationContext"
    sets.mkdir(parents=True)
    (sets / "train.txt").write_text("\n".join(ids[:3]) + "\n")
    (sets / "val.txt").write_text(ids[3] + "\n")
    return root


def _only(rep, kind):
    found = [p for p in rep.problems if p.kind == kind]
    assert len(found) == 1, (kind, [str(p) for p in rep.problems])
    return found[0]


# ------------------------------------------------------------------------------------------ OK trees
def test_voc_tree_ok(tmp_path):
    rep = check_dataset("voc20", make_voc(tmp_path / "VOC2012"))
    assert rep.ok and rep.problems == [], format_report(rep)
    assert rep.counts == {"train": 3, "val": 2}
    assert rep.labels_read == rep.labels_total == 5
    assert set(rep.histogram) == set(range(20)) | {255}  # after reduce_zero_label: raw 0 and 255 -> 255
    assert rep.raw_histogram[0] > 0 and 0 in rep.histogram  # raw 1 -> class 0
    assert sum(rep.histogram.values()) == 5 * H * W


def test_reading_labels_draws_a_bar_on_a_terminal(tmp_path, monkeypatch):
    term = fake_terminal(monkeypatch)
    rep = check_dataset("voc20", make_voc(tmp_path / "VOC2012"))
    assert rep.ok
    assert re.search(r"check voc20: 100%.*5/5", term.getvalue()), term.getvalue()


def test_coco_tree_ok(tmp_path):
    rep = check_dataset("cocostuff171", make_coco(tmp_path / "coco"))
    assert rep.ok, format_report(rep)
    assert rep.counts == {"train": 3, "val": 2}
    assert max(k for k in rep.histogram if k != 255) == 170 and 0 in rep.histogram  # no reduction


@pytest.mark.parametrize("name", ["context59", "context60"])
def test_context_tree_ok(tmp_path, name):
    rep = check_dataset(name, make_context(tmp_path / "VOC2010"), benchmark_split="zs3")
    assert rep.ok and rep.problems == [], format_report(rep)
    assert rep.counts == {"train": 3, "val": 1}
    ids = {k for k in rep.histogram if k != 255}
    assert ids == (set(range(59)) if name == "context59" else set(range(60)))


def test_split_and_sample_selection(tmp_path):
    root = make_voc(tmp_path / "VOC2012", n_train=4, n_val=2)
    rep = check_dataset("voc20", root, splits="val")
    assert rep.counts == {"val": 2} and rep.labels_read == 2
    rep = check_dataset("voc20", root, max_labels=3)
    assert rep.labels_total == 6 and rep.labels_read == 3 and rep.ok
    assert "sample of 6" in format_report(rep)
    rep = check_dataset("voc20", root, splits=["nope"])
    assert not rep.ok and "train" in _only(rep, "no_split").fix


# ------------------------------------------------------------------------------------------ problems
def test_out_of_range_values_name_file_and_preset(tmp_path):
    root = make_voc(tmp_path / "VOC2012")
    bad = root / "SegmentationClass" / "2007_000001.png"
    _label(bad, _arr(list(range(21, 151))), "P")  # ADE/COCO-like values in a VOC tree
    rep = check_dataset("voc20", root)
    assert not rep.ok
    p = _only(rep, "out_of_range")
    assert p.path == str(bad) and str(bad) in p.message and p.count == 1
    assert "21..150" in p.message and "0..20" in p.message
    assert "wrong preset" in p.fix and "cocostuff171" in p.fix and "reduce_zero_label" in p.fix
    out = format_report(rep)
    assert "FAILED" in out and str(bad) in out


def test_context_raw_459_labels_point_to_converter(tmp_path):
    root = make_context(tmp_path / "VOC2010")
    bad = root / "SegmentationClassContext" / "2008_000002.png"
    _label(bad, _arr([0, 60, 200, 300 % 256]))
    rep = check_dataset("context60", root, benchmark_split="cascade")
    p = _only(rep, "out_of_range")
    assert p.path == str(bad) and "prepare_context.py" in p.fix


def test_size_mismatch_reported(tmp_path):
    root = make_voc(tmp_path / "VOC2012")
    bad = root / "SegmentationClass" / "2007_000003.png"
    _label(bad, np.zeros((H + 2, W), np.uint8), "P")
    rep = check_dataset("voc20", root)
    p = _only(rep, "size_mismatch")
    assert p.path == str(bad) and f"{W}x{H + 2}" in p.message and f"{W}x{H}" in p.message
    assert "2007_000003.jpg" in p.message and "pixel-aligned" in p.fix


def test_missing_image_reported(tmp_path):
    root = make_voc(tmp_path / "VOC2012")
    (root / "JPEGImages" / "2007_000004.jpg").unlink()
    rep = check_dataset("voc20", root)
    p = _only(rep, "missing_image")
    assert p.split == "val" and p.path.endswith("JPEGImages/2007_000004.jpg") and "1 of 2" in p.message
    assert rep.splits["val"].images == 1 and rep.counts["val"] == 2


def test_rgb_label_reported(tmp_path):
    root = make_voc(tmp_path / "VOC2012")
    bad = root / "SegmentationClass" / "2007_000000.png"
    _label(bad, _arr([0, 1, 2]), "RGB")
    rep = check_dataset("voc20", root)
    p = _only(rep, "label_mode")
    assert p.path == str(bad) and "'RGB'" in p.message and "indices" in p.fix


def test_missing_annotation_and_raw_coco_maps(tmp_path):
    root = make_coco(tmp_path / "coco")
    ann = root / "annotations" / "val2017" / f"{1:012d}_labelTrainIds.png"
    ann.rename(ann.with_name(f"{1:012d}.png"))  # a raw stuffthingmap name
    rep = check_dataset("cocostuff171", root)
    p = _only(rep, "missing_annotation")
    assert not rep.ok and "prepare_cocostuff.py" in p.fix and p.split == "val"
    assert rep.splits["val"].annotations == 1


def test_reduced_labels_warning(tmp_path):
    root = make_context(tmp_path / "VOC2010")
    for k, f in enumerate(sorted((root / "SegmentationClassContext").glob("*.png"))):
        _label(f, _arr([255] + list(range(1, 59)), k))  # no raw 0: looks pre-reduced
    rep = check_dataset("context59", root, benchmark_split="zs3")
    p = _only(rep, "reduced_labels")
    assert rep.ok and p.severity == "warning" and "aeroplane" in p.fix


def test_wrong_root_suggests_the_right_one(tmp_path):
    voc = make_voc(tmp_path / "VOCdevkit" / "VOC2012")
    rep = check_dataset("voc20", tmp_path / "VOCdevkit")
    assert not rep.ok and f"root={voc}" in rep.problems[0].fix
    rep = check_dataset("voc20", tmp_path / "nowhere")
    assert not rep.ok and rep.problems[0].kind == "layout" and "nowhere" in rep.problems[0].message


def test_cli_exit_codes(tmp_path, capsys):
    root = make_voc(tmp_path / "VOC2012")
    assert main(["dataset=voc20", f"root={root}", "split=train"]) == 0
    out = capsys.readouterr().out
    assert "| train | 3 | 3 | 3 |" in out and out.rstrip().endswith("OK")
    (root / "JPEGImages" / "2007_000001.jpg").unlink()
    assert main(["dataset=voc20", f"root={root}", "--sample", "2"]) == 1
    assert "2007_000001.jpg" in capsys.readouterr().out
    assert main(["dataset=voc22", f"root={root}"]) == 2
    assert "voc20" in capsys.readouterr().err
    assert main(["dataset=context59", f"root={root}", "benchmark_split=nope"]) == 2
    assert main([f"root={root}"]) == 2


# ------------------------------------------------------------------------------------------ real data
def test_real_voc_sample(voc_root):
    rep = check_dataset("voc20", voc_root)
    assert rep.ok, format_report(rep)
    assert rep.counts == {"train": 40, "trainval": 60, "val": 20}
    assert rep.labels_read == 60
    assert set(rep.raw_histogram) <= set(range(21)) | {255}
