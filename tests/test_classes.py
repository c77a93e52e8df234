"""Benchmark presets, unseen splits, templates, class_index and dataset layouts (docs/protocol.md "Benchmarks")."""

from __future__ import annotations

import pytest

from zss.data.classes import (
    BENCHMARKS,
    COCO_TEMPLATES,
    DATASET_LAYOUTS,
    VOC_TEMPLATES,
    Benchmark,
    class_index,
    get_benchmark,
    layout,
)

EXPECTED = {
    ("voc20", None): (20, ["pottedplant", "sheep", "sofa", "train", "tvmonitor"]),
    ("cocostuff171", None): (
        171,
        [
            "cow",
            "giraffe",
            "suitcase",
            "frisbee",
            "skateboard",
            "carrot",
            "scissors",
            "cardboard",
            "clouds",
            "grass",
            "playingfield",
            "river",
            "road",
            "tree",
            "wall-concrete",
        ],
    ),
    ("context59", "zs3"): (
        59,
        ["cow", "motorbike", "sofa", "cat", "boat", "fence", "bird", "tvmonitor", "keyboard", "aeroplane"],
    ),
    ("context59", "cascade"): (
        59,
        ["aeroplane", "bed", "bedclothes", "boat", "bottle", "car", "cloth", "cow", "keyboard", "plate"],
    ),
}
EXPECTED[("context60", "zs3")] = (60, EXPECTED[("context59", "zs3")][1])
EXPECTED[("context60", "cascade")] = (60, EXPECTED[("context59", "cascade")][1])


@pytest.mark.parametrize("name,split", list(EXPECTED))
def test_preset_counts_and_unseen_names(name, split):
    n, unseen_names = EXPECTED[(name, split)]
    b = get_benchmark(name, split)
    assert isinstance(b, Benchmark)
    assert b.name == name and b.split == split
    assert b.num_classes == n == len(set(b.classes))
    assert list(b.unseen_names) == unseen_names
    assert len(b.seen) == n - len(unseen_names)
    assert set(b.seen).isdisjoint(b.unseen) and set(b.seen) | set(b.unseen) == set(range(n))
    assert list(b.seen) == sorted(b.seen)
    assert b.seen_names == tuple(b.classes[i] for i in b.seen)
    assert b.templates == (VOC_TEMPLATES if name == "voc20" else COCO_TEMPLATES)


def test_voc_ids_and_templates():
    b = get_benchmark("voc20")
    assert b.unseen == (15, 16, 17, 18, 19)
    assert b.classes[0] == "aeroplane" and b.classes[14] == "person"
    assert VOC_TEMPLATES == ("a photo of a {}.",)
    assert len(COCO_TEMPLATES) == 15 and len(set(COCO_TEMPLATES)) == 15
    assert all(t.count("{}") == 1 for t in COCO_TEMPLATES)
    assert get_benchmark("voc20", "default") == b


def test_coco_unseen_ids():
    b = get_benchmark("cocostuff171")
    assert b.unseen == (19, 23, 28, 29, 36, 51, 76, 88, 94, 112, 133, 136, 137, 157, 160)
    assert b.classes[0] == "person" and b.classes[-1] == "wood"


@pytest.mark.parametrize("split", ["zs3", "cascade"])
def test_context60_is_background_plus_context59(split):
    c59, c60 = get_benchmark("context59", split), get_benchmark("context60", split)
    assert c60.classes[0] == "background" and c60.classes[1:] == c59.classes
    assert c60.unseen == tuple(u + 1 for u in c59.unseen)
    assert c60.unseen_names == c59.unseen_names
    assert c60.templates == c59.templates == COCO_TEMPLATES


def test_benchmarks_dict():
    assert set(BENCHMARKS) == {"voc20", "voc21", "cocostuff171", "context59", "context60", "world"}
    assert BENCHMARKS["context59"] == ("zs3", "cascade")
    assert BENCHMARKS["world"] == (None, "texture", "shared", "colours")  # None = the default split


@pytest.mark.parametrize("name", ["context59", "context60"])
def test_context_requires_split(name):
    with pytest.raises(ValueError, match="zs3") as e:
        get_benchmark(name)
    assert "cascade" in str(e.value)
    with pytest.raises(ValueError, match="valid splits"):
        get_benchmark(name, "zs5")


def test_unknown_benchmark_and_bad_split():
    with pytest.raises(KeyError, match="context59"):
        get_benchmark("context")
    with pytest.raises(KeyError, match="voc20") as e:
        get_benchmark("voc")
    assert "cocostuff171" in str(e.value)
    with pytest.raises(ValueError, match="single unseen split"):
        get_benchmark("voc20", "zs3")


def test_class_index():
    b = get_benchmark("voc20")
    assert class_index(b, ["aeroplane", "tvmonitor", "person"]) == [0, 19, 14]
    with pytest.raises(KeyError, match="aeroplan") as e:
        class_index(b, ["aeroplan"])
    msg = str(e.value)
    assert "Did you mean ['aeroplane']" in msg and "tvmonitor" in msg  # close match + valid list
    with pytest.raises(KeyError, match="zebra"):
        class_index(b, ["person", "zebra"])
    with pytest.raises(TypeError):
        class_index(b, "person")


def test_benchmark_validation():
    with pytest.raises(ValueError, match="outside"):
        Benchmark("x", None, ("a", "b"), (2,), ("{}",))
    with pytest.raises(ValueError, match="template"):
        Benchmark("x", None, ("a", "b"), (1,), ("no placeholder",))


def test_layouts():
    assert set(DATASET_LAYOUTS) == set(BENCHMARKS)
    voc = layout("voc20").resolve("val")
    assert voc == dict(
        img_dir="JPEGImages",
        ann_dir="SegmentationClass",
        split_file="ImageSets/Segmentation/val.txt",
        img_suffix=".jpg",
        seg_suffix=".png",
        reduce_zero_label=True,
    )
    coco = layout("cocostuff171").resolve("train")
    assert coco["img_dir"] == "images/train2017" and coco["ann_dir"] == "annotations/train2017"
    assert coco["split_file"] is None and coco["seg_suffix"] == "_labelTrainIds.png"
    assert coco["reduce_zero_label"] is False
    c59, c60 = layout("context59").resolve("train"), layout("context60").resolve("train")
    assert c59["ann_dir"] == "SegmentationClassContext"
    assert c59["split_file"] == "ImageSets/SegmentationContext/train.txt"
    assert c59["reduce_zero_label"] is True and c60["reduce_zero_label"] is False
    with pytest.raises(KeyError, match="voc20"):
        layout("ade150")


def test_one_ignore_index():
    """255 is defined once (zss.data.classes.IGNORE_INDEX); the checker, converter and CLIP-ES use it."""
    import re
    from pathlib import Path

    import zss
    import zss.data.check as check
    import zss.data.convert as convert
    import zss.engine.clip_es_masks as pipeline
    from zss.data.classes import IGNORE_INDEX

    assert IGNORE_INDEX == 255
    assert check.IGNORE_INDEX == convert.IGNORE_INDEX == pipeline.IGNORE_INDEX == IGNORE_INDEX
    root = Path(zss.__file__).parent
    defs = [
        str(p.relative_to(root))
        for p in sorted(root.rglob("*.py"))
        if re.search(r"^_?IGNORE(_INDEX)?\s*(:[^=]+)?=", p.read_text(encoding="utf-8"), re.M)
    ]
    assert defs == ["data/classes.py"], defs
