"""Dataset converters: COCO-Stuff 182->171 ids, PASCAL Context 459-class .mat -> context60/59 PNGs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import fake_terminal
from zss.data.classes import COCO_STUFF_CLASSES, CONTEXT59_CLASSES, get_benchmark
from zss.data.convert import (
    COCO_STUFF_CATEGORIES,
    COCO_STUFF_UNUSED_IDS,
    CONTEXT59_OFFICIAL_IDS,
    cocostuff_lut,
    context_lut,
    convert_cocostuff,
    convert_cocostuff_label,
    convert_context,
    read_context_labels,
    resolve_context59_ids,
)

REPO = Path(__file__).resolve().parents[1]
GAPS_0BASED = [11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90]


def _run_script(name: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run(
        [sys.executable, str(REPO / "scripts" / name), *args], capture_output=True, text=True, env=env, timeout=120
    )


def _read(p: Path) -> np.ndarray:
    im = Image.open(p)
    assert im.mode == "L", f"{p} should be an 8-bit 'L' PNG, got {im.mode}"
    return np.asarray(im)


# ------------------------------------------------------------------------------------------------
# COCO-Stuff
# ------------------------------------------------------------------------------------------------
def _expected_coco(v: int) -> int:
    """Independent reference: the mmseg rule, derived from ids alone (no names)."""
    if v == 255 or v in GAPS_0BASED:
        return 255
    return v - sum(g < v for g in GAPS_0BASED)


def test_cocostuff_lut_bijective_and_names():
    lut = cocostuff_lut()
    assert lut.dtype == np.uint8 and lut.shape == (256,)
    used = [v for v in range(182) if lut[v] != 255]
    assert len(used) == 171
    assert sorted(lut[used].tolist()) == list(range(171))  # bijective onto 0..170
    assert [v for v in range(182) if lut[v] == 255] == GAPS_0BASED
    assert sorted(i - 1 for i in COCO_STUFF_UNUSED_IDS) == GAPS_0BASED
    assert lut[255] == 255 and (lut[182:] == 255).all()
    assert all(lut[v] == _expected_coco(v) for v in range(182))
    # names: raw v is COCO category v+1
    assert COCO_STUFF_CLASSES[lut[0]] == "person" and lut[0] == 0
    assert COCO_STUFF_CLASSES[lut[91]] == "banner" and lut[91] == 80
    assert COCO_STUFF_CLASSES[lut[181]] == "wood" and lut[181] == 170
    assert COCO_STUFF_CLASSES[lut[12]] == "stop sign" and lut[12] == 11
    assert COCO_STUFF_CLASSES[lut[89]] == "toothbrush" and lut[89] == 79
    for v in used:
        assert COCO_STUFF_CLASSES[lut[v]] == COCO_STUFF_CATEGORIES[v + 1]
    # the unseen COCO classes of docs/protocol.md "Benchmarks" land where the benchmark says
    bench = get_benchmark("cocostuff171")
    assert [COCO_STUFF_CLASSES[i] for i in bench.unseen][:3] == ["cow", "giraffe", "suitcase"]
    assert lut[21 - 1] == 19  # cow, COCO id 21


def _raw_coco(rng, extra=()) -> np.ndarray:
    vals = np.array(list(range(182)) + [255] + list(extra), dtype=np.uint8)  # every used id, every gap, 255
    vals = np.concatenate([vals, rng.choice(vals, 14 * 14 - len(vals))])
    rng.shuffle(vals)
    return vals.reshape(14, 14)


def test_convert_cocostuff_library_and_script(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    raw_root = tmp_path / "stuffthingmaps_trainval2017"
    arrays = {}
    for split, names in (("train2017", ["000000000009", "000000000025"]), ("val2017", ["000000000139"])):
        (raw_root / split).mkdir(parents=True)
        for n in names:
            a = _raw_coco(rng)
            arrays[(split, n)] = a
            Image.fromarray(a, mode="L").save(raw_root / split / f"{n}.png")
    out = tmp_path / "coco_stuff164k"
    ref = np.vectorize(_expected_coco)

    stats = convert_cocostuff(raw_root, out, workers=1)
    assert {k: (s.new, s.skipped) for k, s in stats.items()} == {"train2017": (2, 0), "val2017": (1, 0)}
    for (split, n), a in arrays.items():
        got = _read(out / "annotations" / split / f"{n}_labelTrainIds.png")
        np.testing.assert_array_equal(got, ref(a))
        assert set(np.unique(got).tolist()) == set(range(171)) | {255}

    # a bar per split on a terminal (the library call above, on captured stderr, drew none)
    term = fake_terminal(monkeypatch)
    convert_cocostuff(raw_root, tmp_path / "coco_bar")
    assert re.search(r"cocostuff train2017: 100%.*2/2", term.getvalue()), term.getvalue()
    assert re.search(r"cocostuff val2017: 100%.*1/1", term.getvalue()), term.getvalue()
    monkeypatch.undo()

    # second run skips, --overwrite rewrites (counted)
    stats = convert_cocostuff(raw_root, out)
    assert stats["train2017"].skipped == 2 and stats["train2017"].new == 0
    assert convert_cocostuff(raw_root, out, overwrite=True)["val2017"].overwritten == 1

    # the script, with a pool, into a fresh root
    out2 = tmp_path / "coco2"
    r = _run_script("prepare_cocostuff.py", "--raw", str(raw_root), "--out", str(out2), "--workers", "2")
    assert r.returncode == 0, r.stderr
    assert "train2017: 2 files: 2 new" in r.stdout and "val2017: 1 files: 1 new" in r.stdout
    for (split, n), a in arrays.items():
        np.testing.assert_array_equal(_read(out2 / "annotations" / split / f"{n}_labelTrainIds.png"), ref(a))
    assert not list(out2.rglob(".*tmp*"))  # atomic writes leave no temp files


def test_cocostuff_bad_values_and_missing_dirs(tmp_path):
    with pytest.raises(ValueError, match=r"200"):
        convert_cocostuff_label(np.array([[0, 200]], dtype=np.uint8), "x.png")
    with pytest.raises(ValueError, match="single-channel"):
        convert_cocostuff_label(np.zeros((2, 2, 3), np.uint8))
    (tmp_path / "raw" / "other").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="train2017"):
        convert_cocostuff(tmp_path / "raw", tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        convert_cocostuff(tmp_path / "nope", tmp_path / "out")


# ------------------------------------------------------------------------------------------------
# PASCAL Context
# ------------------------------------------------------------------------------------------------
def _labels_txt(path: Path, rename: dict[str, str] | None = None, n: int = 459) -> dict[int, str]:
    """459 '<id>: <name>' lines with the 59 classes at their official ids, fillers elsewhere."""
    names = {i: f"other class {i}" for i in range(1, n + 1)}
    for cls, i in zip(CONTEXT59_CLASSES, CONTEXT59_OFFICIAL_IDS):
        names[i] = (rename or {}).get(cls, cls)
    path.write_text("".join(f"{i}: {names[i]}\n" for i in range(1, n + 1)))
    return names


def test_context_names_resolve_to_official_ids(tmp_path):
    _labels_txt(tmp_path / "labels.txt")
    labels = read_context_labels(tmp_path / "labels.txt")
    assert len(labels) == 459
    assert resolve_context59_ids(labels) == list(CONTEXT59_OFFICIAL_IDS)
    lut = context_lut(labels)
    assert lut.shape == (460,) and lut[0] == 0
    assert sorted(lut[list(CONTEXT59_OFFICIAL_IDS)].tolist()) == list(range(1, 60))
    assert lut[2] == 1 and lut[458] == 59 and lut[427] == CONTEXT59_CLASSES.index("tvmonitor") + 1
    assert (np.delete(lut, list(CONTEXT59_OFFICIAL_IDS)) == 0).all()


def test_context_aliases(tmp_path):
    ren = {
        "aeroplane": "airplane",
        "tvmonitor": "TV Monitor",
        "pottedplant": "potted plant",
        "motorbike": "motorcycle",
        "table": "diningtable",
    }
    _labels_txt(tmp_path / "labels.txt", rename=ren)
    assert resolve_context59_ids(read_context_labels(tmp_path / "labels.txt")) == list(CONTEXT59_OFFICIAL_IDS)
    # canonical name wins over an alias when both exist: 'table' kept, 'diningtable' is background
    labels = {1: "table", 2: "diningtable", **{10 + k: c for k, c in enumerate(CONTEXT59_CLASSES) if c != "table"}}
    ids = resolve_context59_ids(labels)
    assert ids[CONTEXT59_CLASSES.index("table")] == 1 and 2 not in ids


def test_context_bad_labels(tmp_path):
    p = tmp_path / "labels.txt"
    _labels_txt(p, rename={"sheep": "ewe"})
    with pytest.raises(KeyError, match="'sheep'"):
        resolve_context59_ids(read_context_labels(p))
    p.write_text("1: accordion\n2 aeroplane\n")
    with pytest.raises(ValueError, match=r"labels.txt:2: expected '<id>: <name>'"):
        read_context_labels(p)
    p.write_text("1: accordion\n1: aeroplane\n")
    with pytest.raises(ValueError, match="duplicate label id 1"):
        read_context_labels(p)
    with pytest.raises(FileNotFoundError, match="labels"):
        read_context_labels(tmp_path / "missing.txt")
    # two aliases of one class present -> ambiguous
    labels = {k + 1: c for k, c in enumerate(CONTEXT59_CLASSES) if c != "tvmonitor"}
    labels.update({100: "tv monitor", 101: "tv/monitor"})
    with pytest.raises(ValueError, match="several aliases"):
        resolve_context59_ids(labels)


def test_convert_context_library_and_script(tmp_path):
    from scipy.io import savemat

    _labels_txt(tmp_path / "labels.txt")
    mat_dir = tmp_path / "trainval"
    mat_dir.mkdir()
    rng = np.random.default_rng(1)
    ids = {"train": ["2008_000002", "2008_000003"], "val": ["2008_000007"]}
    # every 459 id (0 unlabelled .. 459) appears in each map
    maps = {}
    for i in ids["train"] + ids["val"]:
        v = np.concatenate([np.arange(460), rng.integers(0, 460, 24 * 20 - 460)]).astype(np.uint16)
        rng.shuffle(v)
        maps[i] = v.reshape(24, 20)
        savemat(mat_dir / f"{i}.mat", {"LabelMap": maps[i]})
    for s, lst in ids.items():
        (tmp_path / f"{s}.txt").write_text("\n".join(lst) + "\n")
    voc = tmp_path / "VOCdevkit" / "VOC2010"
    (voc / "JPEGImages").mkdir(parents=True)
    for i in maps:
        Image.new("RGB", (20, 24)).save(voc / "JPEGImages" / f"{i}.jpg")

    official = dict(zip(CONTEXT59_OFFICIAL_IDS, range(1, 60)))
    ref60 = {i: np.vectorize(lambda x: official.get(int(x), 0))(m) for i, m in maps.items()}

    lists = {s: tmp_path / f"{s}.txt" for s in ids}
    stats = convert_context(mat_dir, tmp_path / "labels.txt", voc, lists, also_59=True)
    assert (stats["train"].new, stats["val"].new) == (2, 1)
    assert not any("WARNING" in n for s in stats.values() for n in s.extra)
    for i, ref in ref60.items():
        got60 = _read(voc / "SegmentationClassContext" / f"{i}.png")
        np.testing.assert_array_equal(got60, ref)
        assert set(np.unique(got60).tolist()) == set(range(60))
        got59 = _read(voc / "SegmentationClassContext59" / f"{i}.png")
        np.testing.assert_array_equal(got59, np.where(ref == 0, 255, ref.astype(np.int16) - 1))
    for s, lst in ids.items():
        assert (voc / "ImageSets" / "SegmentationContext" / f"{s}.txt").read_text().split() == lst

    # re-run skips; a changed split list is refused without overwrite
    assert convert_context(mat_dir, tmp_path / "labels.txt", voc, lists)["train"].skipped == 2
    (tmp_path / "train.txt").write_text("2008_000002\n")
    with pytest.raises(FileExistsError, match="overwrite"):
        convert_context(mat_dir, tmp_path / "labels.txt", voc, lists)
    (tmp_path / "train.txt").write_text("\n".join(ids["train"]) + "\n")
    # listed id without .mat
    (tmp_path / "bad.txt").write_text("2008_000002\n2099_999999\n")
    with pytest.raises(FileNotFoundError, match="2099_999999"):
        convert_context(mat_dir, tmp_path / "labels.txt", voc, {"x": tmp_path / "bad.txt"})

    # the script, with a pool, into a fresh VOC2010 root
    voc2 = tmp_path / "VOC2010b"
    r = _run_script(
        "prepare_context.py",
        "--mat-dir",
        str(mat_dir),
        "--labels",
        str(tmp_path / "labels.txt"),
        "--voc2010",
        str(voc2),
        "--train-list",
        str(lists["train"]),
        "--val-list",
        str(lists["val"]),
        "--workers",
        "2",
    )
    assert r.returncode == 0, r.stderr
    assert "train: 2 files: 2 new" in r.stdout and "WARNING" in r.stdout  # no JPEGImages in voc2
    for i, ref in ref60.items():
        np.testing.assert_array_equal(_read(voc2 / "SegmentationClassContext" / f"{i}.png"), ref)
    assert not (voc2 / "SegmentationClassContext59").exists()


def test_context_mat_errors(tmp_path):
    from scipy.io import savemat

    _labels_txt(tmp_path / "labels.txt")
    (tmp_path / "trainval").mkdir()
    savemat(tmp_path / "trainval" / "a.mat", {"Other": np.zeros((2, 2), np.uint16)})
    with pytest.raises(KeyError, match="LabelMap"):
        convert_context(tmp_path / "trainval", tmp_path / "labels.txt", tmp_path / "voc")
    savemat(tmp_path / "trainval" / "a.mat", {"LabelMap": np.full((2, 2), 500, np.uint16)})
    with pytest.raises(ValueError, match="500"):
        convert_context(tmp_path / "trainval", tmp_path / "labels.txt", tmp_path / "voc")
