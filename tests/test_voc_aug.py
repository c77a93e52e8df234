"""VOC-Aug as mmseg builds it: train.txt + aug.txt, one label folder each; the 1,464-image setting by
name; a clear error naming the converter when SegmentationClassAug is missing; CLIP-ES masks on train+aug."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from zss.data.dataset import ConcatSegDataset, build_dataset, split_parts

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _png(path: Path, value: int, hw=(6, 8)) -> None:
    im = Image.fromarray(np.full(hw, value, np.uint8), mode="P")
    im.putpalette([i % 256 for i in range(768)])
    im.save(path)


def voc_tree(tmp: Path, n_train=3, n_aug=4, n_val=2, with_aug=True) -> Path:
    """A generated VOC-layout tree: train ids in SegmentationClass, aug ids (SBD) in SegmentationClassAug only."""
    root = tmp / "VOC2012"
    for d in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / d).mkdir(parents=True)
    if with_aug:
        (root / "SegmentationClassAug").mkdir()
    ids = {
        "train": [f"t{i}" for i in range(n_train)],
        "aug": [f"s{i}" for i in range(n_aug)],
        "val": [f"v{i}" for i in range(n_val)],
    }
    for split, names in ids.items():
        for k, n in enumerate(names):
            Image.fromarray(np.full((6, 8, 3), 100 + k, np.uint8)).save(root / "JPEGImages" / f"{n}.jpg")
            folder = "SegmentationClassAug" if split == "aug" else "SegmentationClass"
            if split != "aug" or with_aug:
                _png(root / folder / f"{n}.png", 1 + k)
            if split == "train" and with_aug:  # the converter writes SBD labels of train images too
                _png(root / "SegmentationClassAug" / f"{n}.png", 7)
        if split != "aug" or with_aug:
            (root / "ImageSets/Segmentation" / f"{split}.txt").write_text("\n".join(names) + "\n")
    return root


def _compose(overrides):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def test_split_parts():
    assert split_parts("train+aug") == ["train", "aug"] and split_parts(["train"]) == ["train"]
    with pytest.raises(ValueError, match="train\\+"):
        split_parts("train+")


def test_voc_aug_is_train_plus_aug_with_their_own_label_folders(tmp_path):
    root = voc_tree(tmp_path)
    ds = build_dataset("voc20", root, "train+aug", hide_unseen=True, ann_dir=[None, "SegmentationClassAug"])
    assert isinstance(ds, ConcatSegDataset) and len(ds) == 3 + 4
    assert ds.names == ["t0", "t1", "t2", "s0", "s1", "s2", "s3"]
    assert ds.ann_path(0).parent.name == "SegmentationClass"  # train ids: VOC's own labels, not SBD's
    assert int(ds[0]["full_label"][0, 0]) == 0 and int(ds[3]["full_label"][0, 0]) == 0
    assert ds.ann_path(4).parent.name == "SegmentationClassAug" and int(ds[4]["full_label"][0, 0]) == 1
    # default: the aug part reads SegmentationClassAug
    assert build_dataset("voc20", root, "train+aug").names == ds.names


def test_experiment_voc20_trains_on_voc_aug_and_the_1464_setting_by_name(tmp_path):
    from zss.cli.common import build_benchmark, build_data

    root = voc_tree(tmp_path)
    cfg = _compose(["experiment=voc20", f"dataset.root={root}"])
    train, val = build_data(cfg.dataset, build_benchmark(cfg.dataset))
    assert cfg.dataset.name == "voc20_aug" and len(train) == 7 and len(val) == 2
    small = _compose(["experiment=voc20", "dataset=voc20", f"dataset.root={root}"])
    train, _ = build_data(small.dataset, build_benchmark(small.dataset))
    assert small.dataset.name == "voc20" and len(train) == 3


def test_missing_segmentation_class_aug_names_the_converter(tmp_path):
    from zss.cli.common import build_benchmark, build_data

    root = voc_tree(tmp_path, with_aug=False)
    cfg = _compose(["experiment=voc20", f"dataset.root={root}"])
    with pytest.raises(FileNotFoundError, match="voc_aug.py") as e:
        build_data(cfg.dataset, build_benchmark(cfg.dataset))
    assert "SegmentationClassAug" in str(e.value) and "dataset=voc20" in str(e.value)


def test_trainaug_list_instead_of_aug_is_refused(tmp_path):
    root = voc_tree(tmp_path)
    lists = root / "ImageSets/Segmentation"
    (lists / "trainaug.txt").write_text((lists / "train.txt").read_text() + (lists / "aug.txt").read_text())
    with pytest.raises(ValueError, match="'t0' is listed in both .*train.txt.*trainaug.txt"):
        build_dataset("voc20", root, "train+trainaug", ann_dir=[None, "SegmentationClassAug"])


def test_voc21_wsss_trains_on_train_aug_masks(tmp_path):
    from zss.cli.common import build_benchmark, build_data

    root = voc_tree(tmp_path)
    masks = tmp_path / "masks"
    masks.mkdir()
    for n in ["t0", "t1", "t2", "s0", "s1", "s2", "s3"]:
        _png(masks / f"{n}.png", 3)
    cfg = _compose(["experiment=voc21_wsss", f"dataset.root={root}", f"dataset.train_label_dir={masks}"])
    assert cfg.dataset.train_split == "train+aug"
    train, _ = build_data(cfg.dataset, build_benchmark(cfg.dataset))
    assert len(train) == 7 and all(train.ann_path(i).parent == masks for i in range(7))


def test_voc21_train_aug_for_clip_es_masks(tmp_path):
    """scripts/clip_es_masks.py split=train+aug reads the aug part's SegmentationClassAug labels (voc21 ids)."""
    root = voc_tree(tmp_path)
    ds = build_dataset("voc21", root, "train+aug")
    assert len(ds) == 7 and int(ds[4]["full_label"][0, 0]) == 2  # no zero-label reduction in voc21
