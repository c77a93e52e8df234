"""scripts/predict.py and zss.predict on a checkpoint made the way training makes it (the train command,
experiment=demo, 2 steps, test_resnet), on real VOC images, with a new vocabulary and the default one."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import ENV, TINY, run_script  # noqa: F401  (shared tiny-run helpers)
from zss.cli.predict import quote_classes_arg
from zss.engine.visualize import color_palette
from zss.predict import (
    list_images,
    load_image,
    parse_classes,
    predict_image,
    save_label_png,
    save_prediction,
    write_classes,
)

IMAGES = ("2007_000032", "2007_000061")


def _run(args: list[str], check: bool = True) -> subprocess.CompletedProcess:
    return run_script(args, check=check)


@pytest.fixture(scope="session")
def ckpt(tiny_ckpt) -> Path:
    return tiny_ckpt


@pytest.fixture(scope="session")
def loaded(ckpt):
    from zss.cli.common import load_for_inference

    return load_for_inference(ckpt)  # the checkpoint's own vocabulary


@pytest.fixture()
def image_dir(tmp_path, voc_root) -> Path:
    d = tmp_path / "imgs"
    d.mkdir()
    for i in IMAGES:
        shutil.copy(voc_root / "JPEGImages" / f"{i}.jpg", d / f"{i}.jpg")
    (d / "notes.txt").write_text("not an image")
    return d


def _check_outputs(out: Path, names, classnames, image_dir: Path) -> None:
    assert (out / "classes.txt").read_text().splitlines() == list(classnames)
    for n in names:
        label = Image.open(out / f"{n}_label.png")
        overlay = Image.open(out / f"{n}_overlay.png")
        img = Image.open(image_dir / f"{n}.jpg")
        assert label.mode == "P" and label.size == img.size
        values = np.unique(np.asarray(label))
        assert values.min() >= 0 and values.max() < len(classnames)
        pal = np.array(label.getpalette()[: 3 * len(classnames)]).reshape(-1, 3)
        assert (pal == color_palette(len(classnames)).numpy()).all()
        assert overlay.mode == "RGB" and overlay.size[0] > img.size[0] and overlay.size[1] >= img.size[1]


# ------------------------------------------------------------------------------------------ the script
def test_script_new_vocabulary_on_a_folder(ckpt, image_dir, tmp_path):
    out = tmp_path / "pred"
    res = _run(
        [
            "scripts/predict.py",
            f"ckpt={ckpt}",
            f"image={image_dir}",
            "classes=cat,dog,grass",
            f"out={out}",
            "mode=slide",
            "short_side=96",
            "crop=[64,64]",
            "stride=[48,48]",
        ]
    )
    assert "3 classes (cat, dog, grass)" in res.stdout and "NOT zero-shot" in res.stdout
    _check_outputs(out, IMAGES, ["cat", "dog", "grass"], image_dir)
    assert len(list(out.iterdir())) == 5  # 2 x (overlay, label) + classes.txt; notes.txt skipped
    with pytest.raises(FileExistsError, match=f"out={out}"):  # another vocabulary into the same folder
        write_classes(out, ["person"])


def test_quote_classes_arg():
    assert quote_classes_arg(["classes=cat,dog", "out=x"]) == ["classes='cat,dog'", "out=x"]
    assert quote_classes_arg(["classes=[cat,dog]", "classes=cat"]) == ["classes=[cat,dog]", "classes=cat"]


# ------------------------------------------------------------------------------------------ the library
def test_library_default_classes_and_no_overwrite(loaded, voc_root, tmp_path):
    method, ck = loaded
    mean, std = ck["config"]["dataset"]["mean"], ck["config"]["dataset"]["std"]
    path = voc_root / "JPEGImages" / f"{IMAGES[1]}.jpg"
    W, H = Image.open(path).size
    pred = predict_image(method, path, mean, std, short_side=64, mode="whole")
    assert pred.shape == (H, W) and pred.dtype == torch.int64
    assert 0 <= int(pred.min()) and int(pred.max()) < 20 == method.num_classes
    out = tmp_path / "pred"
    write_classes(out, method.classnames)
    img = load_image(path)
    res = [save_prediction(img, pred, method.classnames, out, IMAGES[1]) for _ in range(2)]
    assert [r["name"] for r in res] == [IMAGES[1], IMAGES[1] + "-1"]  # a clashing name gets -1, never overwrites
    assert torch.equal(torch.from_numpy(np.asarray(Image.open(res[0]["label"])).astype(np.int64)), pred)
    _check_outputs(out, [IMAGES[1]], method.classnames, voc_root / "JPEGImages")
    with pytest.raises(FileExistsError, match=f"out={out}"):
        write_classes(out, ["cat", "dog"])
    write_classes(out, method.classnames)  # same vocabulary: fine
    save_prediction(img, pred, method.classnames, out, IMAGES[1], overwrite=True)
    assert not (out / f"{IMAGES[1]}-2_label.png").exists()


def test_slide_equals_whole_when_one_window_covers_the_image(loaded, voc_root):
    method, ck = loaded
    mean, std = ck["config"]["dataset"]["mean"], ck["config"]["dataset"]["std"]
    img = load_image(voc_root / "JPEGImages" / f"{IMAGES[0]}.jpg")
    whole = predict_image(method, img, mean, std, short_side=64, mode="whole")
    slide = predict_image(method, img, mean, std, short_side=64, mode="slide", crop=(512, 512), stride=(426, 426))
    assert torch.equal(whole, slide)
    tiled = predict_image(method, img, mean, std, short_side=64, mode="slide", crop=(48, 48), stride=(32, 32))
    assert tiled.shape == whole.shape
    with pytest.raises(ValueError, match="mode"):
        predict_image(method, img, mean, std, mode="tiles")


def test_parse_classes(tmp_path):
    assert parse_classes("cat, dog ,grass") == ["cat", "dog", "grass"]
    assert parse_classes(["traffic light", "sky"]) == ["traffic light", "sky"]
    assert parse_classes(None, None) is None
    f = tmp_path / "c.txt"
    f.write_text("# my classes\ncat\n\ntraffic light\n")
    assert parse_classes(classes_file=f) == ["cat", "traffic light"]
    for bad, match in (
        (dict(classes="cat,,dog"), "empty"),
        (dict(classes="cat,cat"), "duplicate"),
        (dict(classes="a", classes_file=f), "not both"),
    ):
        with pytest.raises(ValueError, match=match):
            parse_classes(**bad)
    with pytest.raises(FileNotFoundError, match="classes_file="):
        parse_classes(classes_file=tmp_path / "none.txt")


def test_list_images(image_dir, tmp_path):
    assert [p.stem for p in list_images(image_dir)] == list(IMAGES)
    assert list_images(image_dir / f"{IMAGES[0]}.jpg") == [image_dir / f"{IMAGES[0]}.jpg"]
    (tmp_path / "empty").mkdir()
    for p in (tmp_path / "empty", tmp_path / "missing.jpg"):
        with pytest.raises(FileNotFoundError, match="image="):
            list_images(p)


def test_label_png_roundtrip_and_large_vocabulary(tmp_path):
    pred = torch.tensor([[0, 1], [2, 299]])
    p = save_label_png(pred, tmp_path / "big.png", 300)  # > 256 classes: 16-bit PNG
    assert Image.open(p).mode.startswith("I") and np.asarray(Image.open(p)).tolist() == pred.tolist()
    p = save_label_png(pred.clamp(max=2), tmp_path / "small.png", 3)
    assert Image.open(p).mode == "P" and np.asarray(Image.open(p)).tolist() == [[0, 1], [2, 2]]
    with pytest.raises(ValueError, match="outside"):
        save_label_png(pred, tmp_path / "bad.png", 3)
