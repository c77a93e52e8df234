"""CLIP-ES (docs/clip_es.md): softmax-GradCAM, CAA, pseudo masks, the voc21 WSSS preset, the mask command."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import fake_terminal
from zss.clip_es import (
    background_score,
    box_mask,
    caa_transition,
    cams_to_labels,
    clip_es_cams,
    clip_es_regions,
    confidence_ignore,
    crf_color_image,
    densecrf_available,
    minmax_normalize,
    refine_cams,
    resize_to_patch_multiple,
    sinkhorn,
)
from zss.engine.clip_es_masks import (
    OutputDirExistsError,
    foreground_names,
    generate_pseudo_masks,
    labels_from_mask,
    labels_from_xml,
)
from zss.teachers.clip import build_tiny_clip

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TEMPLATE = ["a clean origami {}."]


@pytest.fixture(scope="module")
def teacher():
    return build_tiny_clip(embed_dim=32, image_size=32, patch_size=8, width=64, layers=2, heads=2, seed=0)


@pytest.fixture(scope="module")
def embeds(teacher):
    fg = teacher.text(["cat", "dog", "person with clothes,people,human"], TEMPLATE)
    bg = teacher.text(["ground", "sky", "wall"], TEMPLATE)
    return fg, bg


def _compose(name, overrides):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose(config_name=name, overrides=overrides)


# ---------------------------------------------------------------------------------------------- CAM
def test_cam_shapes_non_square(teacher, embeds):
    fg, bg = embeds
    g = torch.Generator().manual_seed(0)
    raw = torch.randn(2, 3, 41, 75, generator=g)
    x = resize_to_patch_multiple(raw, teacher.patch_size)
    assert tuple(x.shape[-2:]) == (48, 80)  # ceil to multiples of 8
    res = clip_es_cams(teacher, x, [[0, 2], [1]], fg, bg)
    assert res.grid == (6, 10)
    assert res.cams.shape == (2, 3, 6, 10) and res.cams.dtype == torch.float32
    assert res.attn.shape == (2, 60, 60)
    assert torch.equal(res.present, torch.tensor([[True, False, True], [False, True, False]]))
    # absent classes: zero maps and zero probability; present ones: normalised to [0, 1] with max ~1
    assert res.cams[0, 1].abs().sum() == 0 and res.cams[1, 0].abs().sum() == 0 and res.probs[0, 1] == 0
    peaks = res.cams.amax(dim=(2, 3))[res.present]
    assert torch.all(peaks > 0.99) and res.cams.min() >= 0
    # head-averaged attention rows are probability rows (CLS removed: sum < 1)
    assert torch.all(res.attn.sum(-1) <= 1 + 1e-5) and res.attn.min() >= 0
    with pytest.raises(ValueError, match="multiple of the patch size"):
        clip_es_cams(teacher, raw, [[0], [1]], fg, bg)


def _score_reference(t64, A, resid, text, keep, target):
    """Independent re-implementation of the CLIP-ES score: softmax prob of `target` among `keep` rows."""
    blk = t64.visual.transformer.resblocks[-1]
    x = resid + blk.attn(A, A, A, need_weights=False)[0]
    x = x + blk.mlp(blk.ln_2(x))
    v = t64.visual
    f = (v.ln_post(x[:, 1:]) @ v.proj).mean(dim=1)
    f = f / f.norm(dim=-1, keepdim=True)
    logits = t64.model.logit_scale.exp() * f @ text[keep].t()
    return logits.softmax(dim=-1)[:, keep.index(target)]


def test_softmax_gradcam_matches_finite_differences(teacher, embeds):
    fg, bg = embeds
    x = resize_to_patch_multiple(torch.randn(1, 3, 24, 40, generator=torch.Generator().manual_seed(1)), 8)
    present = [[0, 2]]  # class 1 is absent: it must not enter the softmax
    res = clip_es_cams(teacher, x, present, fg, bg, pos_interp="teacher")

    t64 = copy.deepcopy(teacher).double()
    text = torch.cat([fg, bg]).double()
    keep = [0, 2, 3, 4, 5]  # present classes + background words (rows of `text`)
    with torch.no_grad():
        tok, _ = t64.embed(t64.prepare(x.double()))
        for blk in t64.visual.transformer.resblocks[:-1]:
            tok = blk(tok)
        A = t64.visual.transformer.resblocks[-1].ln_1(tok)  # [1, 1+N, W] GradCAM activations
        N, W = A.shape[1] - 1, A.shape[2]
        for target in (0, 2):
            p = _score_reference(t64, A, tok, text, keep, target)
            assert float(res.probs[0, target]) == pytest.approx(float(p), rel=1e-4)
            # alpha_k = mean over patches of dp/dA_k = directional derivative along "+1 on channel k of every
            # patch token" / N, by central differences for all k at once
            eps = 1e-5
            E = torch.zeros(W, 1 + N, W, dtype=torch.float64)
            E[torch.arange(W), 1:, torch.arange(W)] = 1.0
            plus = _score_reference(t64, A + eps * E, tok.expand(W, -1, -1), text, keep, target)
            minus = _score_reference(t64, A - eps * E, tok.expand(W, -1, -1), text, keep, target)
            alpha = (plus - minus) / (2 * eps) / N  # [W]
            cam = minmax_normalize(torch.relu(A[0, 1:] @ alpha)[None])[0]
            assert cam.max() > 0.99 and cam.std() > 0.05  # a non-trivial map
            torch.testing.assert_close(res.cams[0, target].flatten().double(), cam, atol=2e-3, rtol=0)


# ---------------------------------------------------------------------------------------------- CAA
def test_sinkhorn_rows_and_columns_sum_to_one(teacher, embeds):
    g = torch.Generator().manual_seed(0)
    skewed = (torch.rand(2, 40, 40, generator=g) ** 3).softmax(-1)
    assert (skewed.sum(-2) - 1).abs().max() > 0.1  # columns start far from 1
    fg, bg = embeds
    real = clip_es_cams(teacher, torch.randn(1, 3, 32, 48, generator=g), [[0]], fg, bg).attn
    for a in (skewed, real):
        t = sinkhorn(a, rounds=3)
        torch.testing.assert_close(t.sum(-1), torch.ones(t.shape[:-1]), atol=1e-5, rtol=0)
        torch.testing.assert_close(t.sum(-2), torch.ones(t.shape[:-1]), atol=1e-3, rtol=0)
    one = sinkhorn(skewed, rounds=1)
    assert (one.sum(-2) - 1).abs().max() > (sinkhorn(skewed, 3).sum(-2) - 1).abs().max()
    trans = caa_transition(skewed, rounds=3, power_steps=1)
    torch.testing.assert_close(trans, trans.transpose(-1, -2))
    torch.testing.assert_close(trans.sum(-1), torch.ones(2, 40), atol=1e-3, rtol=0)


@pytest.mark.parametrize("backend", ["scipy", "torch"])
def test_box_mask_from_synthetic_cam(backend):
    cam = torch.full((8, 10), 0.3)  # below 0.4 * max everywhere: never foreground
    cam[1:3, 1:4] = 1.0  # blob A -> box rows 1..2, cols 1..3
    cam[0, 6] = cam[1, 7] = 0.9  # two diagonal neighbours: ONE 8-connected blob -> 2x2 box
    cam[5:8, 9] = 0.8  # L-shape touching the last row and column
    cam[7, 6:10] = 0.8
    expect = torch.zeros(8, 10, dtype=torch.bool)
    expect[1:3, 1:4] = True
    expect[0:2, 6:8] = True
    expect[5:7, 6:9] = True  # x1 = min(10, 9), y1 = min(8, 7): the public clamp stops one patch short
    got = box_mask(cam[None, None], threshold=0.4, backend=backend)[0, 0]
    assert torch.equal(got, expect), got.int()
    # batched: an all-zero map gives an empty mask; a higher threshold drops the weaker blobs
    both = box_mask(torch.stack([cam, torch.zeros(8, 10)])[None], threshold=0.95, backend=backend)[0]
    assert both[1].sum() == 0
    only_a = torch.zeros(8, 10, dtype=torch.bool)
    only_a[1:3, 1:4] = True
    assert torch.equal(both[0], only_a)


def test_box_mask_backends_agree_with_per_map_components():
    from scipy import ndimage

    g = torch.Generator().manual_seed(0)
    cams = torch.rand(4, 10, 9, 13, generator=g) ** 2  # [B, C, h, w]: many blobs, some touching the border
    cams[1, 3] = 0  # an all-zero map: no blob, empty mask
    cpu = box_mask(cams, 0.4)  # CPU: scipy.ndimage.label over all maps at once
    assert torch.equal(cpu, box_mask(cams, 0.4, backend="scipy"))
    assert torch.equal(cpu, box_mask(cams, 0.4, backend="torch"))  # the path GPU tensors take
    assert cpu.shape == cams.shape and cpu.dtype == torch.bool and not cpu[1, 3].any()
    for cam, m in zip(cams.flatten(0, 1), cpu.flatten(0, 1)):  # reference: one map at a time
        q = (cam * 255).to(torch.uint8).numpy()
        lab, _ = ndimage.label(q > int(0.4 * q.max()), structure=np.ones((3, 3)))  # 8-connectivity
        ref = np.zeros(m.shape, dtype=bool)
        for sl in ndimage.find_objects(lab):
            ref[sl[0].start : min(sl[0].stop, 8), sl[1].start : min(sl[1].stop, 12)] = True
        assert np.array_equal(m.numpy(), ref)
    with pytest.raises(ValueError, match="backend"):
        box_mask(cams, 0.4, backend="opencv")


def test_refine_propagates_only_from_boxes():
    N = 12
    trans = torch.rand(1, N, N, generator=torch.Generator().manual_seed(0))
    cams = torch.rand(1, 2, 3, 4, generator=torch.Generator().manual_seed(1))
    mask = torch.zeros(1, 2, 3, 4, dtype=torch.bool)
    mask[0, 0, 0, :2] = True  # class 0: sources 0 and 1 only; class 1: no box -> all zeros
    out = refine_cams(trans, cams, mask)
    src = cams[0, 0].flatten() * mask[0, 0].flatten().float()
    ref = trans[0] @ src
    ref = (ref - ref.min()) / (1e-7 + (ref - ref.min()).max())
    torch.testing.assert_close(out[0, 0].flatten(), ref)
    assert out[0, 1].abs().sum() == 0


# ---------------------------------------------------------------------------------------------- masks
def test_background_labels_and_confidence_ignore():
    cams = torch.zeros(1, 3, 2, 3)
    cams[0, 0] = torch.tensor([[0.9, 0.2, 0.0], [0.1, 0.6, 0.0]])
    cams[0, 2] = torch.tensor([[0.1, 0.7, 0.0], [0.95, 0.5, 0.0]])
    cams[0, 1] = 1.0  # absent class: must never win
    present = torch.tensor([[True, False, True]])
    bg = background_score(cams, present, alpha=1)
    torch.testing.assert_close(bg[0, 0], 1 - torch.tensor([[0.9, 0.7, 0.0], [0.95, 0.6, 0.0]]))
    lab = cams_to_labels(cams, present, [5, 6, 7], alpha=1, background_id=0)
    assert lab.tolist() == [[[5, 7, 0], [7, 5, 0]]]
    # pixel (1, 1): bg = 1 - 0.5 ties class 7 at alpha 1 (background wins the tie); alpha 2: 0.25 < 0.5
    cams[0, 0, 1, 1] = 0.45
    cams[0, 2, 1, 1] = 0.5
    assert cams_to_labels(cams, present, [5, 6, 7], alpha=1)[0, 1, 1] == 0
    assert cams_to_labels(cams, present, [5, 6, 7], alpha=2)[0, 1, 1] == 7
    # confidence: max probability < 0.95 -> 255 (torch and numpy), labels untouched elsewhere
    prob = torch.tensor([[[0.96, 0.5], [0.2, 0.97]], [[0.04, 0.5], [0.8, 0.03]]])  # [K=2, 2, 2]
    labels = torch.tensor([[1, 2], [3, 4]])
    out = confidence_ignore(labels, prob, 0.95)
    assert out.tolist() == [[1, 255], [255, 4]] and labels.tolist() == [[1, 2], [3, 4]]
    assert confidence_ignore(labels.numpy(), prob.numpy(), 0.95).tolist() == [[1, 255], [255, 4]]


def test_crf_color_quirk_and_crf():
    img = np.array([[[0, 120, 255]]], dtype=np.uint8)  # RGB
    q = crf_color_image(img, "public")  # BGR - (104.008, 116.669, 122.675), truncated, wrapped
    assert q[0, 0].tolist() == [int(255 - 104.008), int(120 - 116.669), (int(np.trunc(0 - 122.675)) % 256)]
    if not densecrf_available():
        pytest.skip("pydensecrf2 not installed (optional extra [crf])")
    from zss.clip_es import dense_crf

    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)
    prob = rng.random((3, 12, 16)).astype(np.float32)
    qq = dense_crf(image, prob)
    assert qq.shape == (3, 12, 16)
    np.testing.assert_allclose(qq.sum(0), 1.0, atol=1e-4)


def test_image_labels_and_names(tmp_path):
    gt = np.array([[0, 3, 3], [255, 15, 0]])
    assert labels_from_mask(gt) == [3, 15]
    classes = ["background", "aeroplane", "bicycle", "bird"]
    xml = tmp_path / "a.xml"
    xml.write_text(
        "<annotation><object><name>bird</name><difficult>1</difficult></object>"
        "<object><name>aeroplane</name></object><object><name>bird</name></object></annotation>"
    )
    assert labels_from_xml(xml, classes) == [1, 3]
    xml.write_text("<annotation><object><name>zebra</name></object></annotation>")
    with pytest.raises(ValueError, match="zebra"):
        labels_from_xml(xml, classes)
    ids, names = foreground_names(classes, "background", {"bird": "bird avian"})
    assert ids == [1, 2, 3] and names == ["aeroplane", "bicycle", "bird avian"]
    with pytest.raises(ValueError, match="voc21"):
        foreground_names(classes[1:], "background", None)


def test_clip_es_regions(teacher, embeds):
    fg, bg = embeds
    x = torch.randn(2, 3, 30, 45, generator=torch.Generator().manual_seed(3))
    reg = clip_es_regions(teacher, x, [[1], [0, 2]], fg, bg)
    assert reg.shape == (2, 30, 45) and reg.dtype == torch.int64
    assert set(reg[0].unique().tolist()) <= {-1, 1} and set(reg[1].unique().tolist()) <= {-1, 0, 2}
    assert (reg[1] >= 0).any()


# ---------------------------------------------------------------------------------------------- presets
def test_voc21_benchmark_and_wsss_preset_compose():
    from omegaconf import OmegaConf

    from zss.data.classes import get_benchmark

    b = get_benchmark("voc21")
    assert b.num_classes == 21 and b.classes[0] == "background" and b.unseen == () and len(b.seen) == 21
    cfg = OmegaConf.to_container(_compose("train", ["experiment=voc21_wsss"]), resolve=True)
    assert cfg["dataset"]["benchmark"] == "voc21" and cfg["dataset"]["hide_unseen"] is False
    assert cfg["dataset"]["train_label_dir"] == "runs/clip_es/voc21_train+aug"  # VOC-Aug, as CLIP-ES's student
    assert cfg["dataset"]["train_split"] == "train+aug"
    assert cfg["method"]["_target_"] == "zss.methods.baseline.SeenOnlyBaseline"
    es = _compose("clip_es", [])
    assert es.dataset.benchmark == "voc21" and len(es.clip_es.background_words) == 25
    assert es.clip_es.template == "a clean origami {}." and es.clip_es.box_threshold == 0.4
    coco = _compose("clip_es", ["clip_es=coco"])
    assert len(coco.clip_es.background_words) == 23 and coco.clip_es.box_threshold == 0.7


def test_empty_unseen_list_reports_not_applicable():
    from zss.engine.metrics import SegEvaluator, format_table

    ev = SegEvaluator(21, [str(i) for i in range(21)], [])
    ev.update(torch.tensor([[0, 1], [2, 2]]), torch.tensor([[0, 1], [2, 255]]))
    r = ev.compute()
    assert r["mIoU"] == pytest.approx(100.0) and np.isnan(r["mIoU_unseen"]) and np.isnan(r["hIoU"])
    assert "n/a" in format_table(r).splitlines()[-1]


def test_train_label_dir_is_used_and_checked(voc_root, tmp_path):
    from zss.cli.common import build_benchmark, build_data

    cfg = _compose(
        "train",
        [
            "experiment=voc21_wsss",
            f"dataset.root={voc_root}",
            "dataset.train_split=train",
            f"dataset.train_label_dir={tmp_path / 'missing'}",
        ],
    )
    with pytest.raises(FileNotFoundError, match="clip_es_masks.py"):
        build_data(cfg.dataset, build_benchmark(cfg.dataset))
    masks = tmp_path / "masks"
    masks.mkdir()
    names = (voc_root / "ImageSets/Segmentation/train.txt").read_text().split()
    for n in names:
        w, h = Image.open(voc_root / "JPEGImages" / f"{n}.jpg").size
        Image.fromarray(np.full((h, w), 7, np.uint8), mode="L").save(masks / f"{n}.png")
    cfg = _compose(
        "train",
        [
            "experiment=voc21_wsss",
            f"dataset.root={voc_root}",
            "dataset.train_split=train",
            f"dataset.train_label_dir={masks}",
        ],
    )
    train_set, val_set = build_data(cfg.dataset, build_benchmark(cfg.dataset))
    item = train_set[0]
    assert set(item["label"][item["valid"]].unique().tolist()) == {7}  # the pseudo masks, not the GT
    assert val_set.ann_dir == voc_root / "SegmentationClass"


# ---------------------------------------------------------------------------------------------- command
def test_pseudo_mask_run_writes_pngs_and_never_overwrites(voc_root, tmp_path):
    from zss.data.dataset import build_dataset

    # 32-px patches keep the patch grid of the 500x375 VOC images small (CAA is O(N^3) in patches)
    teacher = build_tiny_clip(embed_dim=32, image_size=64, patch_size=32, width=64, layers=2, heads=2, seed=0)

    ds = build_dataset("voc21", voc_root, split="train", transform=None)
    out = tmp_path / "masks"
    rep = generate_pseudo_masks(
        teacher,
        ds,
        out,
        background_words=["ground", "sky", "wall"],
        synonyms={"person": "person with clothes,people,human"},
        limit=3,
        crf=False,
        progress=False,
        compare_kmeans=True,
    )
    pngs = sorted(out.glob("*.png"))
    assert [p.stem for p in pngs] == ds.names[:3] and rep["written"] == 3
    for p, i in zip(pngs, range(3)):
        im = Image.open(p)
        gt = ds.load_full_label(i)
        arr = np.asarray(im)
        assert im.mode == "P" and arr.shape == gt.shape
        allowed = set(labels_from_mask(gt)) | {0, 255}
        assert set(np.unique(arr).tolist()) <= allowed  # only the image's own classes + background
    rows = rep["rows"]
    assert 0 <= rows["CAM"]["mIoU"] <= 100 and 0 <= rows["+CAA"]["mIoU"] <= 100 and rows["CAM"]["img_s"] > 0
    assert "skipped" in rows["+CRF"] and rep["timing"]["kmeans_img_s"] > 0
    assert (out / "clip_es_results.md").read_text().count("| +CRF | skipped") == 1
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    with pytest.raises(OutputDirExistsError, match="already exists"):
        generate_pseudo_masks(teacher, ds, out, background_words=["ground"], limit=1, crf=False, progress=False)
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(OutputDirExistsError):
        generate_pseudo_masks(teacher, ds, empty, background_words=["ground"], limit=1, crf=False, progress=False)
    assert not any(empty.iterdir())


def test_pseudo_mask_run_draws_a_bar_not_a_log_line_per_image(voc_root, tmp_path, monkeypatch, caplog):
    import logging

    from zss.data.dataset import build_dataset

    teacher = build_tiny_clip(embed_dim=32, image_size=64, patch_size=32, width=64, layers=2, heads=2, seed=0)
    ds = build_dataset("voc21", voc_root, split="train", transform=None)
    term = fake_terminal(monkeypatch)
    with caplog.at_level(logging.INFO):
        generate_pseudo_masks(teacher, ds, tmp_path / "m", background_words=["ground"], limit=2, crf=False)
    assert re.search(r"clip_es: 100%.*2/2", term.getvalue()), term.getvalue()
    assert not [r for r in caplog.records if any(n in r.getMessage() for n in ds.names[:2])]


def test_missing_crf_is_skipped_with_install_hint(voc_root, tmp_path, monkeypatch):
    import zss.engine.clip_es_masks as pipe
    from zss.data.dataset import build_dataset

    monkeypatch.setattr(pipe, "densecrf_available", lambda: False)
    teacher = build_tiny_clip(embed_dim=32, image_size=64, patch_size=32, width=64, layers=2, heads=2, seed=0)
    ds = build_dataset("voc21", voc_root, split="val", transform=None)
    with pytest.raises(ImportError, match=r"pip install -e '\.\[crf\]'"):
        generate_pseudo_masks(teacher, ds, tmp_path / "req", background_words=["sky"], crf=True, progress=False)
    assert not (tmp_path / "req").exists()  # refused before any work
    rep = generate_pseudo_masks(
        teacher, ds, tmp_path / "auto", background_words=["sky"], crf="auto", limit=1, progress=False
    )
    assert "pip install" in rep["rows"]["+CRF"]["skipped"] and rep["ignored_pct"] is None
    assert len(list((tmp_path / "auto").glob("*.png"))) == 1


def test_mask_command_end_to_end(voc_root, tmp_path):
    from conftest import run_script

    out = tmp_path / "cmd"
    args = [
        "scripts/clip_es_masks.py",
        "teacher=tiny_random",
        "teacher.patch_size=32",
        "limit=2",
        f"dataset.root={voc_root}",
        f"out_dir={out}",
        "progress=false",
    ]
    res = run_script(args + (["crf.enabled=false"] if not densecrf_available() else []))
    assert (
        sorted(p.stem for p in out.glob("*.png"))
        == (voc_root / "ImageSets/Segmentation/train.txt").read_text().split()[:2]
    )
    assert "| CAM |" in res.stdout and "| +CAA |" in res.stdout and "| +CRF |" in res.stdout
    assert (out / "clip_es_results.json").is_file()
