"""CLIP-ES pseudo masks for a dataset split: generation, PNG writing, mIoU report, timings.

Called by ``scripts/clip_es_masks.py`` (through ``zss.cli``) with plain values; see docs/clip_es.md for
the command, the keys and what each reported number means.
"""

from __future__ import annotations

import json
import math
import os
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from zss.clip_es.caa import box_mask, caa_transition, refine_cams
from zss.clip_es.cam import clip_es_cams, resize_to_patch_multiple
from zss.clip_es.masks import (
    CRF_INSTALL_HINT,
    CRF_PUBLIC,
    background_score,
    cams_to_labels,
    confidence_ignore,
    crf_color_image,
    dense_crf,
    densecrf_available,
    save_mask_png,
)
from zss.data.classes import IGNORE_INDEX
from zss.engine.metrics import SegEvaluator, to_json
from zss.utils.progress import progress_bar

__all__ = [
    "OutputDirExistsError",
    "LABEL_SOURCES",
    "prepare_out_dir",
    "labels_from_mask",
    "labels_from_xml",
    "foreground_names",
    "generate_pseudo_masks",
    "format_report",
]

#: Where image-level labels come from: ``auto`` (VOC XML when ``<root>/Annotations/<id>.xml`` exists,
#: else the ground-truth mask), ``xml`` or ``mask``.
LABEL_SOURCES = ("auto", "xml", "mask")


class OutputDirExistsError(FileExistsError):
    """The pseudo-mask output directory already exists (it is never overwritten)."""


def prepare_out_dir(out_dir: str | os.PathLike) -> Path:
    """Create a NEW output directory; refuse an existing one.

    Raises:
        OutputDirExistsError: the path exists (file or folder, empty or not); the message names the fix.
    """
    p = Path(out_dir).expanduser()
    if p.exists():
        raise OutputDirExistsError(
            f"CLIP-ES: the output directory {str(p)!r} already exists; pseudo masks are never overwritten. "
            f"Choose a new one (out_dir=<new folder>) or delete the old one yourself."
        )
    p.mkdir(parents=True)
    return p


def labels_from_mask(full_label: np.ndarray, background_id: int = 0, ignore_index: int = IGNORE_INDEX) -> list[int]:
    """Image-level labels from a ground-truth mask: the class ids present, without background and ignore.

    Args:
        full_label: ``np.ndarray[H, W]`` int class ids.
    Returns:
        sorted list of dataset class ids.
    """
    vals = np.unique(np.asarray(full_label))
    return [int(v) for v in vals if int(v) not in (background_id, ignore_index)]


def labels_from_xml(path: str | os.PathLike, classes: Sequence[str]) -> list[int]:
    """Image-level labels from a VOC XML annotation: every ``<object><name>``, difficult ones included.

    Args:
        path: ``Annotations/<id>.xml``.
        classes: the benchmark's class names in label-id order (``voc21``: background first).
    Returns:
        sorted list of dataset class ids.
    Raises:
        ValueError: an object name that is not a class of the benchmark (names the file and the name).

    Source: CLIP-ES public code ``generate_cams_voc12.py`` (labels from the XML, difficult included).
    """
    root = ET.parse(path).getroot()
    lookup = {c: i for i, c in enumerate(classes)}
    out = set()
    for obj in root.iter("object"):
        name = (obj.findtext("name") or "").strip()
        if name not in lookup:
            raise ValueError(f"{path}: object name {name!r} is not a class of the benchmark ({list(classes)})")
        out.add(lookup[name])
    return sorted(out)


def foreground_names(
    classes: Sequence[str], background_class: str, synonyms: dict | None
) -> tuple[list[int], list[str]]:
    """Foreground class ids of a benchmark and the prompt names CLIP-ES uses for them.

    Args:
        classes: benchmark class names in label-id order.
        background_class: the name of the background class (must be one of ``classes``).
        synonyms: optional mapping class name -> prompt name (e.g. ``person`` ->
            ``person with clothes,people,human``); missing classes keep their own name.
    Returns:
        (class ids, prompt names), background excluded.
    Raises:
        ValueError: ``background_class`` is not a class (CLIP-ES needs a background class, e.g. voc21),
            or a synonym key is not a class.
    """
    if background_class not in classes:
        raise ValueError(
            f"CLIP-ES needs a benchmark with a background class named {background_class!r}, got classes "
            f"{list(classes)[:5]}...; use dataset=voc21 (or set clip_es.background_class)."
        )
    synonyms = dict(synonyms or {})
    unknown = sorted(set(synonyms) - set(classes))
    if unknown:
        raise ValueError(f"clip_es.synonyms: keys {unknown} are not classes of the benchmark; valid: {list(classes)}")
    ids = [i for i, c in enumerate(classes) if c != background_class]
    return ids, [str(synonyms.get(classes[i], classes[i])) for i in ids]


class _Timer:
    def __init__(self, device: torch.device) -> None:
        self.device, self.total = device, 0.0

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.total += time.perf_counter() - self.t0


def _present_classes_miou(conf: torch.Tensor) -> float:
    """mIoU over classes present in the GT (the public CLIP-ES evaluation), percent."""
    c = conf.double()
    tp, gt, pr = c.diag(), c.sum(1), c.sum(0)
    iou = tp / (gt + pr - tp).clamp_min(1)
    valid = gt > 0
    return float(iou[valid].mean() * 100) if bool(valid.any()) else float("nan")


def generate_pseudo_masks(
    teacher,
    dataset,
    out_dir: str | os.PathLike,
    *,
    background_class: str = "background",
    synonyms: dict | None = None,
    background_words: Sequence[str],
    template: str = "a clean origami {}.",
    box_threshold: float = 0.4,
    labels_from: str = "auto",
    attn_layers: int = 8,
    logit_scale: float | None = None,
    pos_interp: str = "bilinear",
    pair_chunk: int = 16,
    sinkhorn_rounds: int = 3,
    power_steps: int = 1,
    eval_alphas: Sequence[float] = (1.0, 2.0),
    crf: str | bool = "auto",
    crf_alpha: float = 1.0,
    crf_params: dict | None = None,
    crf_color: str = "public",
    confidence: float = 0.95,
    mask_alpha: float = 1.0,
    limit: int | None = None,
    compare_kmeans: bool = False,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> dict[str, Any]:
    """Write CLIP-ES pseudo masks for every image of ``dataset`` and report their quality and speed.

    Per image: image-level labels (XML or GT mask) -> patch-multiple resize -> softmax-GradCAM
    (:func:`~zss.clip_es.cam.clip_es_cams`) -> CAA (:mod:`zss.clip_es.caa`) -> optional dense CRF ->
    confidence ignore -> ``<out_dir>/<id>.png`` (palette PNG, class ids, 255 = ignore).

    Args:
        teacher: frozen FrozenCLIP (``image_size`` None).
        dataset: a ``zss.data.SegDataset`` built with ``transform=None`` (uint8 images, full labels) of a
            benchmark with a background class (voc21).
        out_dir: NEW folder for the PNGs and the report (``clip_es_results.md/json``); never overwritten.
        background_class: name of the benchmark's background class (id of the bg label).
        synonyms: class name -> CLIP-ES prompt name (configs/clip_es/voc.yaml).
        background_words: background word set of the softmax (25 for VOC).
        template: the one prompt template (public code: ``"a clean origami {}."``).
        box_threshold: CAA box threshold (fraction of the CAM maximum; 0.4 VOC, 0.7 COCO).
        labels_from: one of :data:`LABEL_SOURCES`.
        attn_layers, logit_scale, pos_interp, pair_chunk: see :func:`~zss.clip_es.cam.clip_es_cams`.
        sinkhorn_rounds, power_steps: see :func:`~zss.clip_es.caa.caa_transition`.
        eval_alphas: background exponents tried for the CAM and +CAA rows; the best mIoU is reported (the
            public evaluation script does the same on the ground truth).
        crf: ``"auto"`` (run when pydensecrf is installed, else skip the +CRF row with a message),
            True (required: raises ImportError when missing) or False.
        crf_alpha: background exponent of the CRF input (1, public code).
        crf_params: overrides of :data:`~zss.clip_es.masks.CRF_PUBLIC`. crf_color: see ``crf_color_image``.
        confidence: CRF probability below which a pixel becomes 255 (0.95, public code).
        mask_alpha: background exponent of the written masks when the CRF does not run (ours).
        limit: only the first ``limit`` images (None = all).
        compare_kmeans: also time the CLIP-ZSS K-Means pseudo-label step (teacher dense tokens +
            ``zss.ops.pseudo_labels``) on the same images at the same input sizes.
        device: where the teacher runs.
        progress: a bar over the images on stderr (:func:`zss.utils.progress.progress_bar`, terminals only).

    Returns:
        dict with ``rows`` (CAM / +CAA / +CRF: ``mIoU``, ``mIoU_gt_classes``, ``pAcc``, ``alpha``, ``img_s``,
        ``results`` = full :meth:`SegEvaluator.compute` output, or ``skipped`` with the reason),
        ``written`` (PNG count), ``masks_from`` (which stage the PNGs are), ``ignored_pct``,
        ``confident_mIoU``, ``timing`` (seconds and img/s per stage), ``num_images``, ``out_dir``.

    Raises:
        OutputDirExistsError: ``out_dir`` exists. ValueError: bad ``labels_from``/``crf``/names.
        ImportError: ``crf=True`` without pydensecrf.
    """
    if labels_from not in LABEL_SOURCES:
        raise ValueError(f"clip_es.labels_from={labels_from!r} is not one of {LABEL_SOURCES}")
    if crf not in ("auto", True, False):
        raise ValueError(f"clip_es.crf.enabled={crf!r} must be auto, true or false")
    device = torch.device(device)
    bench = dataset.benchmark
    classes = list(bench.classes)
    bg_id = classes.index(background_class) if background_class in classes else -1
    fg_ids, fg_names = foreground_names(classes, background_class, synonyms)
    have_crf = densecrf_available()
    run_crf = bool(crf) and have_crf
    if crf is True and not have_crf:  # fail before any work
        raise ImportError(f"clip_es.crf.enabled=true but pydensecrf is not installed: {CRF_INSTALL_HINT}")
    crf_kw = {**CRF_PUBLIC, **(crf_params or {})}
    teacher = teacher.to(device)
    out = prepare_out_dir(out_dir)

    fg_embeds = teacher.text(fg_names, [template])  # [C, D]
    bg_embeds = teacher.text(list(background_words), [template])  # [C_bg, D]
    C = len(fg_ids)
    row_of = {cid: r for r, cid in enumerate(fg_ids)}
    ids_t = torch.tensor(fg_ids, dtype=torch.long)
    n_cls = len(classes)
    ev = {
        "CAM": {a: SegEvaluator(n_cls, classes, []) for a in eval_alphas},
        "+CAA": {a: SegEvaluator(n_cls, classes, []) for a in eval_alphas},
        "+CRF": SegEvaluator(n_cls, classes, []),
        "confident": SegEvaluator(n_cls, classes, []),
    }
    t_cam, t_caa, t_crf, t_km = _Timer(device), _Timer(device), _Timer(device), _Timer(device)
    mean = torch.tensor(teacher.input_mean).view(1, 3, 1, 1)
    std = torch.tensor(teacher.input_std).view(1, 3, 1, 1)
    ann_root = Path(dataset.root) / "Annotations"
    n = len(dataset) if limit is None else min(len(dataset), int(limit))
    ignored = total_px = written = 0
    sources: dict[str, int] = {}
    t_all0 = time.perf_counter()
    bar = progress_bar(range(n), desc="clip_es", enabled=progress, unit="img")
    for i in bar:
        item = dataset[i]
        name = item["name"]
        img_u8 = item["image"]  # [3, H, W] uint8
        gt = item["full_label"]  # [H, W] int64
        H, W = gt.shape
        xml = ann_root / f"{name}.xml"
        if labels_from == "xml" or (labels_from == "auto" and xml.is_file()):
            if not xml.is_file():
                raise FileNotFoundError(
                    f"clip_es.labels_from=xml but {str(xml)!r} does not exist; use labels_from=mask"
                )
            lab_ids, src = labels_from_xml(xml, classes), "xml"
        else:
            lab_ids, src = labels_from_mask(gt.numpy(), bg_id), "mask"
        sources[src] = sources.get(src, 0) + 1
        present = torch.zeros(1, C, dtype=torch.bool)
        for cid in lab_ids:
            if cid in row_of:
                present[0, row_of[cid]] = True
        x = ((img_u8.float().unsqueeze(0) / 255.0) - mean) / std
        x = resize_to_patch_multiple(x, teacher.patch_size)
        with t_cam:
            res = clip_es_cams(
                teacher,
                x,
                present.to(device),
                fg_embeds,
                bg_embeds,
                attn_layers=attn_layers,
                logit_scale=logit_scale,
                pos_interp=pos_interp,
                pair_chunk=pair_chunk,
            )
            cam_hr = torch.nn.functional.interpolate(res.cams, size=(H, W), mode="bilinear", align_corners=False)
        with t_caa:
            trans = caa_transition(res.attn, sinkhorn_rounds, power_steps)
            boxes = box_mask(res.cams, box_threshold) & res.present[:, :, None, None]
            ref = refine_cams(trans, res.cams, boxes)
            ref_hr = torch.nn.functional.interpolate(ref, size=(H, W), mode="bilinear", align_corners=False)
        pres = res.present
        for a in eval_alphas:
            ev["CAM"][a].update(cams_to_labels(cam_hr, pres, ids_t, a, bg_id)[0].cpu(), gt)
            ev["+CAA"][a].update(cams_to_labels(ref_hr, pres, ids_t, a, bg_id)[0].cpu(), gt)
        if run_crf:
            with t_crf:
                keep = pres[0].nonzero().flatten()
                scores = torch.cat([background_score(ref_hr, pres, crf_alpha)[0], ref_hr[0, keep]], dim=0)
                q = dense_crf(
                    crf_color_image(img_u8.permute(1, 2, 0).numpy(), crf_color), scores.cpu().numpy(), **crf_kw
                )
                lut = np.concatenate([[bg_id], ids_t[keep.cpu()].numpy()]).astype(np.int64)
                crf_lab = lut[q.argmax(axis=0)]
                final = confidence_ignore(crf_lab, q, confidence)
            ev["+CRF"].update(torch.from_numpy(crf_lab), gt)
            conf_px = torch.from_numpy(final != IGNORE_INDEX)
            ev["confident"].update(torch.from_numpy(final)[conf_px], gt[conf_px])
            ignored += int((final == IGNORE_INDEX).sum())
        else:
            final = cams_to_labels(ref_hr, pres, ids_t, mask_alpha, bg_id)[0].cpu().numpy()
        total_px += final.size
        if compare_kmeans:
            from zss.ops.pseudo_labels import pseudo_labels

            with t_km:
                with torch.no_grad():
                    dense = teacher(x.to(device))["dense"]
                pseudo_labels(
                    dense,
                    torch.full((1, x.shape[-2], x.shape[-1]), IGNORE_INDEX, dtype=torch.long, device=device),
                    None,
                    num_seen=0,
                )
        save_mask_png(final.astype(np.uint8), out / f"{name}.png")
        written += 1
    bar.close()
    t_total = time.perf_counter() - t_all0

    def rate(sec: float) -> float:
        return n / sec if sec > 0 else float("nan")

    rows: dict[str, dict] = {}
    for stage, secs in (("CAM", t_cam.total), ("+CAA", t_cam.total + t_caa.total)):
        best_a, best = None, None
        for a, e in ev[stage].items():
            r = e.compute()
            if best is None or (r["mIoU"] > best["mIoU"]) or (math.isnan(best["mIoU"]) and not math.isnan(r["mIoU"])):
                best_a, best, conf = a, r, e.confusion
        rows[stage] = dict(
            mIoU=best["mIoU"],
            mIoU_gt_classes=_present_classes_miou(conf),
            pAcc=best["pAcc"],
            alpha=best_a,
            img_s=rate(secs),
            results=best,
            mIoU_by_alpha={str(a): e.compute()["mIoU"] for a, e in ev[stage].items()},
        )
    if run_crf:
        r = ev["+CRF"].compute()
        rows["+CRF"] = dict(
            mIoU=r["mIoU"],
            mIoU_gt_classes=_present_classes_miou(ev["+CRF"].confusion),
            pAcc=r["pAcc"],
            alpha=crf_alpha,
            img_s=rate(t_cam.total + t_caa.total + t_crf.total),
            results=r,
        )
        rc = ev["confident"].compute()
        confident = dict(mIoU=rc["mIoU"], pAcc=rc["pAcc"])
    else:
        reason = (
            "disabled (clip_es.crf.enabled=false)" if not crf else f"pydensecrf is not installed ({CRF_INSTALL_HINT})"
        )
        rows["+CRF"] = dict(skipped=reason)
        confident = None
    report = dict(
        num_images=n,
        out_dir=str(out),
        written=written,
        label_sources=sources,
        masks_from="+CRF, confidence < %.2f -> 255" % confidence if run_crf else "+CAA argmax (no ignore region)",
        ignored_pct=(100.0 * ignored / total_px) if (run_crf and total_px) else None,
        confident=confident,
        rows=rows,
        device=str(device),
        teacher=dict(teacher.identity) if hasattr(teacher, "identity") else {},
        timing=dict(
            cam_s=t_cam.total,
            caa_s=t_caa.total,
            crf_s=t_crf.total if run_crf else None,
            total_s=t_total,
            total_img_s=rate(t_total),
            kmeans_s=t_km.total if compare_kmeans else None,
            kmeans_img_s=rate(t_km.total) if compare_kmeans else None,
        ),
    )
    text = format_report(report)
    (out / "clip_es_results.md").write_text(text + "\n")
    (out / "clip_es_results.json").write_text(json.dumps(to_json(report), indent=2, default=str))
    return report


def _f(v: Any, d: int = 2) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{float(v):.{d}f}"


def format_report(report: dict) -> str:
    """Markdown report of :func:`generate_pseudo_masks`: the CAM / +CAA / +CRF table and timings."""
    lines = [
        f"CLIP-ES pseudo masks: {report['num_images']} images -> {report['out_dir']} ({report['written']} PNGs; "
        f"masks = {report['masks_from']}); labels from {report['label_sources']}; device {report['device']}",
        "",
        "| stage | mIoU | mIoU (GT classes) | pAcc | bg alpha | img/s (cumulative) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for stage in ("CAM", "+CAA", "+CRF"):
        r = report["rows"].get(stage, {})
        if "skipped" in r:
            lines.append(f"| {stage} | skipped: {r['skipped']} | | | | |")
            continue
        lines.append(
            f"| {stage} | {_f(r['mIoU'])} | {_f(r['mIoU_gt_classes'])} | {_f(r['pAcc'])} | "
            f"{_f(r['alpha'], 0)} | {_f(r['img_s'])} |"
        )
    tm = report["timing"]
    lines += [
        "",
        f"Timing (s): CAM {_f(tm['cam_s'])}, CAA {_f(tm['caa_s'])}, CRF {_f(tm['crf_s'])}, "
        f"end to end {_f(tm['total_s'])} ({_f(tm['total_img_s'])} img/s incl. I/O).",
    ]
    if tm.get("kmeans_s") is not None:
        lines.append(
            f"K-Means pseudo-label step (teacher dense tokens + zss.ops.pseudo_labels, same images and "
            f"sizes): {_f(tm['kmeans_s'])} s ({_f(tm['kmeans_img_s'])} img/s)."
        )
    if report.get("ignored_pct") is not None:
        c = report.get("confident") or {}
        lines.append(
            f"Written masks: {_f(report['ignored_pct'])}% pixels ignored (255); on the confident pixels "
            f"mIoU {_f(c.get('mIoU'))}, pAcc {_f(c.get('pAcc'))}."
        )
    lines.append(
        "mIoU: 21-class mean IoU of the zss evaluator (a class predicted but absent from the GT counts "
        "as 0); mIoU (GT classes): mean over classes present in the GT only (the public CLIP-ES script)."
    )
    return "\n".join(lines)
