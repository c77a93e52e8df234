"""SegDataset / build_dataset on the real VOC sample, plus every construction and read error."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors

from zss.data.dataset import SegDataset, build_dataset, read_label

VOC_KW = dict(
    img_dir="JPEGImages",
    ann_dir="SegmentationClass",
    reduce_zero_label=True,
    num_classes=20,
    unseen=(15, 16, 17, 18, 19),
)


# ------------------------------------------------------------------ helpers
def _palette_png(path: Path, arr: np.ndarray) -> None:
    im = Image.fromarray(arr.astype(np.uint8), mode="P")
    im.putpalette([i % 256 for i in range(768)])
    im.save(path)


def _mini_voc(tmp: Path, labels: dict[str, np.ndarray], img_hw=(6, 8), split_ids=None) -> Path:
    """A VOC-layout dataset with tiny synthetic images and the given palette labels."""
    root = tmp / "VOC"
    (root / "JPEGImages").mkdir(parents=True)
    (root / "SegmentationClass").mkdir()
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    for name, lab in labels.items():
        Image.fromarray(np.full((*img_hw, 3), 128, np.uint8)).save(root / "JPEGImages" / f"{name}.jpg")
        _palette_png(root / "SegmentationClass" / f"{name}.png", lab)
    ids = list(labels) if split_ids is None else split_ids
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text("\n".join(ids) + "\n")
    return root


# ------------------------------------------------------------------ real VOC sample
def test_split_counts(voc_root):
    tr = build_dataset("voc20", voc_root, "train")
    va = build_dataset("voc20", voc_root, "val")
    assert len(tr) == 40 and len(va) == 20
    assert set(tr.names).isdisjoint(va.names)
    assert tr.names == (voc_root / "ImageSets/Segmentation/train.txt").read_text().split()
    assert tr.benchmark.name == "voc20" and tr.num_classes == 20
    assert len(build_dataset("voc20", voc_root, "trainval")) == 60


def test_reduce_zero_label_on_real_file(voc_root):
    ds = build_dataset("voc20", voc_root, "train")
    i = ds.names.index("2007_000032")
    raw = read_label(ds.ann_path(i))
    assert raw.dtype == np.uint8 and set(np.unique(raw).tolist()) == {0, 1, 15, 255}  # bg, aeroplane, person
    s = ds[i]
    full = s["full_label"]
    assert full.dtype == torch.int64 and full.shape == raw.shape
    assert set(full.unique().tolist()) == {0, 14, 255}  # aeroplane=0, person=14 after reduce
    rawt = torch.from_numpy(raw.astype(np.int64))
    assert (full[rawt == 0] == 255).all() and (full[rawt == 255] == 255).all()
    assert (full[rawt == 1] == 0).all() and (full[rawt == 15] == 14).all()
    assert s["name"] == "2007_000032"


def test_no_reduction_keeps_raw_values(voc_root):
    ds = SegDataset(
        voc_root,
        split_file="ImageSets/Segmentation/train.txt",
        **{**VOC_KW, "reduce_zero_label": False, "num_classes": 21, "unseen": ()},
    )
    i = ds.names.index("2007_000032")
    assert set(ds[i]["full_label"].unique().tolist()) == {0, 1, 15, 255}


def test_hide_unseen_only_in_training_label(voc_root):
    shown = build_dataset("voc20", voc_root, "train", hide_unseen=False)
    hidden = build_dataset("voc20", voc_root, "train", hide_unseen=True)
    i = shown.names.index("2007_006066")  # contains chair(8), sofa(17, unseen), tvmonitor(19, unseen)
    a, b = shown[i], hidden[i]
    assert set(a["label"].unique().tolist()) == {8, 17, 19, 255}
    assert torch.equal(a["label"], a["full_label"])
    assert set(b["label"].unique().tolist()) == {8, 255}
    assert torch.equal(b["full_label"], a["full_label"])  # full label untouched
    unseen = torch.isin(a["full_label"], torch.tensor([15, 16, 17, 18, 19]))
    assert unseen.any() and (b["label"][unseen] == 255).all()
    assert torch.equal(b["label"][~unseen], a["full_label"][~unseen])


def test_sample_types_without_transform(voc_root):
    ds = build_dataset("voc20", voc_root, "val")
    s = ds[0]
    with Image.open(ds.img_path(0)) as im:
        w, h = im.size
    assert s["image"].shape == (3, h, w) and s["image"].dtype == torch.uint8
    assert s["label"].shape == (h, w) and s["label"].dtype == torch.int64
    assert type(s["image"]) is torch.Tensor and type(s["label"]) is torch.Tensor  # plain tensors for collate


def test_transform_receives_tv_tensors(voc_root):
    seen = {}

    def t(img, label, full, valid):
        seen["types"] = (type(img), type(label), type(full), type(valid))
        return img[:, :10, :10], label[:10, :10], full[:10, :10], valid[:10, :10]

    ds = build_dataset("voc20", voc_root, "val", transform=t)
    s = ds[0]
    assert seen["types"] == (tv_tensors.Image, tv_tensors.Mask, tv_tensors.Mask, tv_tensors.Mask)
    assert s["image"].shape == (3, 10, 10) and type(s["full_label"]) is torch.Tensor
    assert s["valid"].dtype == torch.bool and bool(s["valid"].all())


def test_valid_mask_marks_padding_not_unlabelled(voc_root):
    from zss.data.transforms import build_train_transform

    tf = build_train_transform(crop_size=(600, 600), scale=(2048, 300), ratio_range=None, photometric=False)
    s = build_dataset("voc20", voc_root, "train", hide_unseen=True, transform=tf)[0]
    assert s["valid"].shape == s["label"].shape == (600, 600)
    assert not s["valid"][:, -1].any() and bool(s["valid"][0, 0])  # padded right/bottom only
    assert bool((s["label"][~s["valid"]] == 255).all())
    assert bool(((s["label"] == 255) & s["valid"]).any())  # unlabelled pixels inside the image stay valid


def test_directory_scan_coco_layout(tmp_path):
    root = tmp_path / "coco_stuff164k"
    (root / "images/val2017").mkdir(parents=True)
    (root / "annotations/val2017").mkdir(parents=True)
    for n in ["000000000001", "000000000002", "000000000003"]:
        Image.fromarray(np.zeros((4, 5, 3), np.uint8)).save(root / f"images/val2017/{n}.jpg")
    lab = np.array([[0, 170, 255, 3, 3]] * 4, np.uint8)
    for n in ["000000000001", "000000000003"]:  # 2 has no annotation -> skipped
        Image.fromarray(lab, mode="L").save(root / f"annotations/val2017/{n}_labelTrainIds.png")
    ds = build_dataset("cocostuff171", root, "val", hide_unseen=True)
    assert ds.names == ["000000000001", "000000000003"]
    s = ds[1]
    assert set(s["full_label"].unique().tolist()) == {0, 3, 170, 255}  # no reduction
    with pytest.raises(FileNotFoundError, match="val"):  # lists the folders that exist
        build_dataset("cocostuff171", root, "train")


# ------------------------------------------------------------------ errors
def test_missing_root(tmp_path):
    missing = tmp_path / "nowhere" / "VOC2012"
    with pytest.raises(FileNotFoundError, match="dataset.root=") as e:
        build_dataset("voc20", missing, "train")
    assert str(missing) in str(e.value) and "docs/usage.md" in str(e.value)
    with pytest.raises(FileNotFoundError, match="dataset.root=") as e:
        SegDataset(missing, split_file=None, **VOC_KW)
    assert str(missing) in str(e.value)


def test_missing_image_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="JPEGImages"):
        SegDataset(tmp_path, split_file=None, **VOC_KW)


def test_split_file_with_missing_images(tmp_path):
    lab = np.ones((6, 8), np.uint8)
    root = _mini_voc(tmp_path, {"a": lab, "b": lab}, split_ids=["a", "ghost1", "b", "ghost2"])
    split = "ImageSets/Segmentation/train.txt"
    with pytest.raises(FileNotFoundError) as e:
        SegDataset(root, split_file=split, **VOC_KW)
    msg = str(e.value)
    assert str(root / split) in msg and "'ghost1'" in msg and "2 of 4" in msg
    # an annotation missing is caught too
    (root / "SegmentationClass" / "b.png").unlink()
    (root / split).write_text("a\nb\n")
    with pytest.raises(FileNotFoundError, match="'b'.*b.png"):
        SegDataset(root, split_file=split, **VOC_KW)


def test_unknown_split_name_lists_available(voc_root):
    with pytest.raises(FileNotFoundError, match="tain") as e:
        build_dataset("voc20", voc_root, "tain")
    assert "'train'" in str(e.value) and "'val'" in str(e.value)


def test_context_needs_benchmark_split(voc_root):
    with pytest.raises(ValueError, match="zs3"):
        build_dataset("context59", voc_root, "train")


def test_label_size_mismatch(tmp_path):
    root = _mini_voc(tmp_path, {"a": np.ones((5, 8), np.uint8)}, img_hw=(6, 8))
    ds = SegDataset(root, split_file="ImageSets/Segmentation/train.txt", **VOC_KW)
    with pytest.raises(ValueError) as e:
        ds[0]
    msg = str(e.value)
    assert "a.png" in msg and "a.jpg" in msg and "8x5" in msg and "8x6" in msg


def test_label_values_out_of_range(tmp_path):
    lab = np.ones((6, 8), np.uint8)
    lab[0, :3] = [21, 30, 255]
    root = _mini_voc(tmp_path, {"a": lab})
    ds = SegDataset(root, split_file="ImageSets/Segmentation/train.txt", **VOC_KW)
    with pytest.raises(ValueError, match="reduce_zero_label") as e:
        ds[0]
    msg = str(e.value)
    assert "a.png" in msg and "[21, 30]" in msg and "preset" in msg
    # value 20 is valid for VOC with reduction (-> 19) but not without
    lab[0, :3] = 20
    _palette_png(root / "SegmentationClass" / "a.png", lab)
    assert ds[0]["full_label"].max() == 19
    ds_noreduce = SegDataset(
        root, split_file="ImageSets/Segmentation/train.txt", **{**VOC_KW, "reduce_zero_label": False}
    )
    with pytest.raises(ValueError, match=r"\[20\]"):
        ds_noreduce[0]


def test_rgb_annotation_rejected(tmp_path):
    root = _mini_voc(tmp_path, {"a": np.ones((6, 8), np.uint8)})
    Image.fromarray(np.zeros((6, 8, 3), np.uint8)).save(root / "SegmentationClass" / "a.png")
    ds = SegDataset(root, split_file="ImageSets/Segmentation/train.txt", **VOC_KW)
    with pytest.raises(ValueError, match="mode 'RGB'") as e:
        ds[0]
    assert "a.png" in str(e.value)


def test_empty_directory_scan(tmp_path, voc_root):
    root = tmp_path / "d"
    (root / "img").mkdir(parents=True)
    (root / "ann").mkdir()
    shutil.copy(voc_root / "JPEGImages" / "2007_000032.jpg", root / "img")
    with pytest.raises(FileNotFoundError, match="matching"):
        SegDataset(root, "img", "ann", None, num_classes=20)


def test_voc_aug_preset_reads_train_and_aug(tmp_path):
    """dataset=voc20_aug trains on train.txt (SegmentationClass) + aug.txt (SegmentationClassAug), mmseg's VOC-Aug;
    val stays on SegmentationClass (a tiny fake VOC tree: 'a' is in both label folders with different labels)."""
    from hydra import compose, initialize_config_dir

    from zss.cli.common import build_benchmark, build_data

    root = _mini_voc(tmp_path, {"a": np.full((6, 8), 1), "v": np.full((6, 8), 2)}, split_ids=["a"])
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("v\n")
    aug = root / "SegmentationClassAug"
    aug.mkdir()
    _palette_png(aug / "a.png", np.full((6, 8), 3))  # differs from SegmentationClass/a.png (1): unused
    Image.fromarray(np.full((6, 8, 3), 128, np.uint8)).save(root / "JPEGImages" / "sbd_only.jpg")
    _palette_png(aug / "sbd_only.png", np.full((6, 8), 16))  # SBD image: no SegmentationClass label at all
    (root / "ImageSets" / "Segmentation" / "aug.txt").write_text("sbd_only\n")  # mmseg's aug.txt: no train ids

    configs = Path(__file__).resolve().parents[1] / "configs"
    with initialize_config_dir(config_dir=str(configs), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["experiment=voc20", f"dataset.root={root}"])
    assert cfg.dataset.name == "voc20_aug" and cfg.dataset.train_split == "train+aug"
    train_set, val_set = build_data(cfg.dataset, build_benchmark(cfg.dataset))
    train_set.transform = val_set.transform = None
    assert train_set.names == ["a", "sbd_only"] and len(train_set) == 2
    assert train_set.ann_path(0) == root / "SegmentationClass" / "a.png"
    assert train_set.ann_path(1) == aug / "sbd_only.png"
    by_name = {s["name"]: s for s in (train_set[0], train_set[1])}
    assert torch.all(by_name["a"]["full_label"] == 0)  # raw 1 - 1, from SegmentationClass (train.txt part)
    assert torch.all(by_name["sbd_only"]["full_label"] == 15)  # pottedplant: unseen ...
    assert torch.all(by_name["sbd_only"]["label"] == 255)  # ... so hidden in the training label
    assert val_set.ann_dir == root / "SegmentationClass" and val_set.names == ["v"]
    assert torch.all(val_set[0]["full_label"] == 1)
