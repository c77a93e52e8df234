"""The synthetic zero-shot world (zss.data.synthetic): generator contract and read-back through every data path."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from PIL import Image

from zss.cli.make_world import make_world_main
from zss.data.check import check_dataset
from zss.data.classes import get_benchmark
from zss.data.dataset import build_dataset
from zss.data.synthetic import (
    COLOURS,
    TEXTURES,
    WORLD_CLASSES,
    WORLD_FORMAT,
    WORLD_SPLITS,
    WORLD_UNSEEN_SPLITS,
    WorldSettings,
    _texture,
    class_attributes,
    make_world,
    read_world_info,
)

SMALL = WorldSettings(counts=(12, 10, 6, 6), size=64)


def _digest(root) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name != "world.json":
            h.update(p.relative_to(root).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def small_world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world") / "w"
    make_world(root, SMALL, log=None)
    return root


def test_same_seed_same_bytes_whatever_the_workers_and_another_seed_differs(small_world, tmp_path):
    make_world(tmp_path / "a", SMALL, workers=2, log=None)
    assert _digest(tmp_path / "a") == _digest(small_world)
    make_world(tmp_path / "b", WorldSettings(seed=1, counts=SMALL.counts, size=64), log=None)
    assert _digest(tmp_path / "b") != _digest(small_world)


def test_four_disjoint_splits_in_the_voc_layout(small_world):
    ids = {s: (small_world / "ImageSets/Segmentation" / f"{s}.txt").read_text().split() for s in WORLD_SPLITS}
    assert [len(ids[s]) for s in WORLD_SPLITS] == list(SMALL.counts)
    allids = [i for s in WORLD_SPLITS for i in ids[s]]
    assert len(set(allids)) == len(allids)
    for i in allids:
        img = Image.open(small_world / "JPEGImages" / f"{i}.jpg")
        lab = Image.open(small_world / "SegmentationClass" / f"{i}.png")
        assert img.mode == "RGB" and img.size == (64, 64)
        assert lab.mode == "P" and lab.size == (64, 64)
        assert np.asarray(lab).max() <= len(WORLD_CLASSES)
    info = read_world_info(small_world)
    assert info["classes"] == list(WORLD_CLASSES) and info["counts"] == dict(zip(WORLD_SPLITS, SMALL.counts))


def test_unseen_classes_share_one_attribute_with_seen_classes_and_the_shared_split_both():
    assert len(WORLD_CLASSES) == len(TEXTURES) * len(COLOURS) == 20
    assert len(set(WORLD_CLASSES)) == 20
    assert {"default", "texture", "shared"} <= set(WORLD_UNSEEN_SPLITS)
    for name, unseen in WORLD_UNSEEN_SPLITS.items():
        bench = get_benchmark("world", None if name == "default" else name)
        assert bench.unseen == unseen
        seen_tex = {class_attributes(c)[0] for c in bench.seen}
        seen_col = {class_attributes(c)[1] for c in bench.seen}
        for u in unseen:
            tex, col = class_attributes(u)
            assert tex in WORLD_CLASSES[u] and col in WORLD_CLASSES[u]  # named in words by its attributes
            shared = (tex in seen_tex) + (col in seen_col)
            assert shared == (2 if name == "shared" else 1), (name, WORLD_CLASSES[u])


def test_checker_reads_the_world_and_training_labels_hide_unseen(small_world):
    report = check_dataset("world", small_world)
    assert report.ok, report.problems
    assert set(report.counts) == set(WORLD_SPLITS)
    ds = build_dataset("world", small_world, "train", hide_unseen=True)
    unseen = set(get_benchmark("world").unseen)
    hidden = 0
    for i in range(len(ds)):
        smp = ds[i]
        assert not unseen & set(smp["label"].unique().tolist())
        hidden += int(sum((smp["full_label"] == u).sum() for u in unseen))
    assert hidden > 0  # the student's images do hold unseen objects, unlabelled for it


def test_an_existing_world_is_kept_or_refused_never_silently_replaced(small_world, capsys):
    before = _digest(small_world)
    make_world(small_world, SMALL, log=None)  # same settings: kept
    assert _digest(small_world) == before
    with pytest.raises(FileExistsError, match="--overwrite"):
        make_world(small_world, WorldSettings(seed=5, counts=SMALL.counts, size=64), log=None)
    assert make_world_main(["--out", str(small_world), "--seed", "5", "--size", "64"]) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert _digest(small_world) == before
    with pytest.raises(ValueError, match="unseen"):
        WorldSettings(unseen="nope")


def test_textures_differ_in_how_much_of_them_is_dark_or_light_not_only_in_their_geometry():
    # A teacher sees textures through small patches: two textures with the same tones in the same proportion
    # (checkered and the first wavy, both half dark) collapsed into one text embed (docs/world.md "Why thin waves").
    rgb = np.asarray(COLOURS[1][1], dtype=np.float32)
    cover = {}
    for t in TEXTURES:
        tex = _texture(t, rgb, 96, np.random.default_rng(0))
        cover[t] = (
            round(float((tex.mean(-1) < rgb.mean() * 0.5).mean()), 1),
            round(float((tex.mean(-1) > rgb.mean() * 1.2).mean()), 1),
        )
    assert len(set(cover.values())) == len(TEXTURES), cover  # (dark fraction, light fraction) per texture


def test_an_older_worlds_files_are_refused_and_its_teacher_is_never_reused(small_world, tmp_path, monkeypatch):
    import json
    import shutil

    from zss.tools import taught_clip
    from zss.tools.taught_clip import WORLD_PRESET, TaughtClipSettings

    old = tmp_path / "old"
    shutil.copytree(small_world, old)
    info = json.loads((old / "world.json").read_text())
    (old / "world.json").write_text(json.dumps({**info, "format": WORLD_FORMAT - 1}))
    with pytest.raises(ValueError, match="--overwrite"):
        read_world_info(old)
    with pytest.raises(FileExistsError, match="--overwrite"):
        make_world(old, SMALL, log=None)
    world, voc = TaughtClipSettings(**WORLD_PRESET), TaughtClipSettings()
    keys = world.key(), voc.key()
    monkeypatch.setattr(taught_clip, "WORLD_FORMAT", WORLD_FORMAT + 1)
    assert world.key() != keys[0]  # a new generator: the world's teacher is taught again
    assert voc.key() == keys[1]  # VOC's teacher is not the world's business


def _compose(overrides):
    from hydra import compose, initialize_config_dir

    from conftest import REPO

    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def test_clip_zss_labels_unseen_classes_on_test_images_it_never_saw(tmp_path):
    """A short CLIP-ZSS run beats the seen-only student on the held-out test split's unseen classes.

    The teacher here is the label-derived oracle (it reads the TRAINING images' full labels, as a perfect
    CLIP would see them): a mechanism check that what the student learns from it carries to new images.
    """
    from zss.cli.train import train

    root = tmp_path / "world"
    make_world(root, WorldSettings(counts=(1, 160, 1, 40), size=64, radius=(0.2, 0.4), objects=(1, 3)), log=None)
    common = [
        "experiment=world",
        "teacher=oracle",
        "teacher.patch_size=8",
        "allow_oracle_teacher=true",
        f"dataset.root={root}",
        "dataset.val_split=test",
        "dataset.crop_size=[64,64]",
        "dataset.scale=[256,64]",
        "dataset.test_scale=[256,64]",
        "model.decoder_channels=32",
        "trainer.max_steps=120",
        "trainer.batch_size=8",
        "trainer.warmup_steps=10",
        "trainer.num_workers=0",
        "trainer.amp=fp32",
        "trainer.overlay_count=0",
        "trainer.ckpt_interval=0",
        "trainer.log_interval=1000",
        "trainer.eval_crop=[64,64]",
    ]
    res = {m: train(_compose([*common, f"method={m}", f"run_root={tmp_path / m}"])) for m in ("baseline", "clip_zss")}
    base, zss = res["baseline"], res["clip_zss"]
    assert base["mIoU_seen"] > 20  # the world is learnable from its seen labels
    assert zss["mIoU_unseen"] >= base["mIoU_unseen"] + 5, (base["mIoU_unseen"], zss["mIoU_unseen"])
