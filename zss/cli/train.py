"""``zss-train`` / ``scripts/train.py``: train a method from the composed config (:func:`train`), then the transfer
view on a held-out split when the experiment asks for it.
"""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from zss.cli.common import (
    build_benchmark,
    build_data,
    build_method,
    build_student,
    build_teacher,
    check_teacher_allowed,
    resolve_dirs,
    run_hydra,
    save_run_info,
    teacher_note,
    templates_for,
    train_config,
    uses_student,
    write_report,
)
from zss.engine.checkpoint import load_checkpoint
from zss.engine.evaluate import evaluate
from zss.engine.trainer import (
    TrainConfig,
    Trainer,
)
from zss.methods.base import Method
from zss.utils import dist as zdist


def check_run_target(run_root, name) -> None:
    """Refuse a run name or ``run_root`` that cannot hold a new run directory, before anything is built.

    Raises:
        ValueError: ``name`` is not a non-empty relative name (e.g. ``name=nan`` or ``name=1e3``, which Hydra
            reads as numbers, or ``name=/abs``); ``run_root`` (or ``run_root/name``) is an existing file; the nearest
            existing folder of ``run_root`` is not writable.
    """
    import os

    if (
        not isinstance(name, str)
        or not name.strip()
        or Path(name).is_absolute()
        or ".." in Path(name).parts
        or name.strip() == "."
    ):
        kind = "text" if isinstance(name, str) else f"read as a {type(name).__name__}"
        raise ValueError(
            f"name={name!r} ({kind}) cannot name a run folder under run_root: give a relative name, "
            f"quoted when it looks like a number (name=\"'nan'\" in a shell)"
        )
    root = Path(str(run_root)).expanduser()
    for p in (root, root / name):
        if p.exists() and not p.is_dir():
            raise ValueError(
                f"run_root={run_root}: {p} is a file, not a folder; pass run_root=<a folder> (created if missing)"
            )
    near = root
    while not near.exists() and near != near.parent:
        near = near.parent
    if near.exists() and not near.is_dir():
        raise ValueError(
            f"run_root={run_root}: {near} is a file, not a folder, so no folder can be made below it; "
            f"pass run_root=<a folder> (created if missing)"
        )
    if not os.access(near, os.W_OK | os.X_OK):
        raise ValueError(
            f"run_root={run_root}: cannot write in {near} (permission denied); pass run_root=<a folder you can write>"
        )


def check_seen_labels(train_set, ds: DictConfig) -> None:
    """Refuse a training split whose labels hold no seen-class pixel (only ignore/background and unseen classes):
    nothing to learn from, and ``zss-check`` reports the same. Checks up to 200 labels spread over the split.

    Raises:
        ValueError: naming the split, the labels read and the checker command.
    """
    count = getattr(train_set, "labels_with_seen_class", None)
    if count is None:
        return
    read, hits = count()
    if read and not hits:
        where = (
            f"dataset.train_label_dir={ds.train_label_dir}" if ds.get("train_label_dir") else f"dataset.root={ds.root}"
        )
        raise ValueError(
            f"dataset.train_split={ds.train_split}: none of the {read} labels read ({where}) holds a seen "
            f"class pixel (only background/ignore and unseen classes), so training has nothing to learn; "
            f"check the split and labels with zss-check dataset={ds.name} dataset.root={ds.root}"
        )


def check_resumable(path) -> dict:
    """The checkpoint ``resume=<path>`` names, loaded memory-mapped, if it can continue a run.

    Raises:
        ValueError: not a usable zss checkpoint (:func:`zss.engine.checkpoint.load_checkpoint`), or it holds no
            training state (optimizer, ...): names what is missing and ``init_from=`` to start from its weights.
    """
    from zss.engine.checkpoint import missing_train_state

    ckpt = load_checkpoint(path, mmap=True)
    missing = missing_train_state(ckpt)
    if missing:
        raise ValueError(
            f"resume={path}: the checkpoint holds weights but no training state ({', '.join(missing)} "
            f"missing), so it cannot continue a run; start a new run from its weights with "
            f"init_from={path} (and no resume=)"
        )
    return ckpt


def _resume_mismatch(path, err: RuntimeError) -> str:
    """One message for ``load_state_dict``'s strict-mode dump when resuming another architecture."""
    import re

    text = str(err)
    shape = r"torch\.Size\(\[([^\]]*)\]\)"
    size = re.findall(
        rf"size mismatch for ([^:]+): copying a param with shape {shape} from checkpoint, "
        rf"the shape in current model is {shape}",
        text,
    )
    missing = re.findall(r'"([^"]+)"', (re.search(r"Missing key\(s\) in state_dict: (.*)", text) or [""])[0])
    unexpected = re.findall(r'"([^"]+)"', (re.search(r"Unexpected key\(s\) in state_dict: (.*)", text) or [""])[0])
    parts = []
    if size:
        k, a, b = size[0]
        parts.append(f"{len(size)} tensor(s) of another shape, e.g. {k}: [{a}] in the checkpoint, [{b}] here")
    if missing:
        parts.append(f"{len(missing)} missing, e.g. {missing[0]}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected, e.g. {unexpected[0]}")
    run_dir = Path(path).parent
    return (
        f"resume={path}: the checkpoint holds another architecture than this command builds "
        f"({'; '.join(parts) or 'state dict mismatch'}). Resume with the method/model/teacher overrides the run "
        f"was started with (recorded in {run_dir / 'config.json'}), or drop resume= to start a new run."
    )


def train(cfg: DictConfig) -> dict | None:
    """Build everything from ``cfg`` and train; returns the final evaluation results."""
    train_config(cfg.trainer)  # bad trainer values, run name or run_root fail here, before anything is built
    check_run_target(cfg.run_root, cfg.name)
    if cfg.get("resume") not in (None, "auto") and Path(str(cfg.resume)).is_file():
        check_resumable(cfg.resume)  # not a zss checkpoint, or no training state: one message now
    if cfg.get("init_from") and cfg.get("resume"):
        raise ValueError(
            f"init_from={cfg.init_from} starts a NEW run from a checkpoint's weights, resume={cfg.resume} "
            f"continues an old one: pass only one of them"
        )
    init = load_checkpoint(cfg.init_from) if cfg.get("init_from") else None  # checked before anything is built
    check_teacher_allowed(cfg)
    device = zdist.init_distributed(cfg.device)
    torch.manual_seed(cfg.trainer.seed)
    bench = build_benchmark(cfg.dataset)
    train_set, val_set = build_data(cfg.dataset, bench)
    check_seen_labels(train_set, cfg.dataset)
    teacher = build_teacher(cfg, bench)
    embed_dim = int(teacher.embed_dim)
    student = (
        build_student(cfg.model, embed_dim, cfg.dataset.mean, cfg.dataset.std) if uses_student(cfg.method) else None
    )  # CLIP-RC / ZegCLIP build their model from the teacher
    method = build_method(
        cfg.method,
        student=student,
        teacher=teacher,
        classnames=list(bench.classes),
        unseen=list(bench.unseen),
        templates=templates_for(cfg.dataset, bench),
    )
    if init is not None:
        try:
            method.load_state_dict(init["state"])
        except RuntimeError as e:
            raise ValueError(_resume_mismatch(cfg.init_from, e).replace("resume=", "init_from=", 1)) from e
    resolved = OmegaConf.to_container(cfg, resolve=True)
    resolved["model"]["embed_dim"] = embed_dim
    norm = _normalizations(cfg.dataset, student if student is not None else method.student, teacher)
    resolved["normalization"] = norm  # record only: rebuilt from dataset/model/teacher keys
    if "backbone_mean" in norm["student"]:  # the resolved values, so a reload (pretrained=false) is exact
        resolved["model"]["backbone_mean"] = norm["student"]["backbone_mean"]
        resolved["model"]["backbone_std"] = norm["student"]["backbone_std"]
    run_dir, resume_ckpt = resolve_dirs(cfg, resolved)  # resume only a run of the same config
    tcfg = TrainConfig(**OmegaConf.to_container(cfg.trainer, resolve=True))
    try:  # loads a resumed checkpoint before anything is written into its folder
        trainer = Trainer(
            method, train_set, val_set, tcfg, run_dir, config=resolved, resume_from=resume_ckpt, device=device
        )
    except RuntimeError as e:  # strict load_state_dict of a checkpoint of another architecture
        if resume_ckpt is None or "Error(s) in loading state_dict" not in str(e):
            raise
        raise ValueError(_resume_mismatch(resume_ckpt, e)) from e
    if zdist.is_main():
        print(f"zss: run dir {run_dir}")
        save_run_info(run_dir)
        ident = method.teacher_identity()
        note = teacher_note(ident)
        print(
            f"zss: teacher {ident.get('model_name')} (weights: {ident.get('pretrained')})"
            + (f"\nzss: NOTE {note}" if note else ""),
            flush=True,
        )
        print("zss: normalisation " + json.dumps(norm), flush=True)
    try:
        results = trainer.fit()
    except ValueError as e:  # torch's BatchNorm on a [1, C, 1, 1] input: name the keys that fix it
        if "Expected more than 1 value per channel" not in str(e):
            raise
        raise ValueError(
            f"a BatchNorm layer got one value per channel ({e}): the micro-batch holds "
            f"{trainer.micro} image(s) and dataset.crop_size={list(cfg.dataset.crop_size)} shrinks to 1x1 "
            f"in the backbone; raise trainer.batch_size (or trainer.micro_batch_size) to >= 2 or "
            f"dataset.crop_size"
        ) from None
    if trainer.stopped_by:  # SIGTERM/SIGINT/SIGUSR1: last.pt is written; exit as the signal would have
        zdist.cleanup()
        raise SystemExit(128 + int(signal.Signals[trainer.stopped_by]))
    if zdist.is_main() and results is not None:
        write_report(
            results,
            run_dir,
            "final",
            note=teacher_note(method.teacher_identity()),
            config=resolved,
            split=cfg.dataset.val_split,
        )
    if cfg.get("transfer_view") and cfg.transfer_view.get("enabled"):
        _transfer_view(cfg, method, bench, tcfg, run_dir, trainer.device)  # collective: every rank evaluates
    zdist.cleanup()
    return results


def _transfer_view(cfg: DictConfig, method: Method, bench, tcfg: TrainConfig, run_dir: Path, device) -> dict:
    """The demo's transfer view: the images of ``transfer_view.split`` (default the TRAINING split) on their FULL
    labels, GZSS and ZSS (unseen 5-way), plus PLM pseudo-label quality when the method has one, next to the
    seen-only reference quoted in ``transfer_view.reference`` and, with ``transfer_view.teacher_ceiling``, the
    teacher's own dense zero-shot score on the same images. ``transfer_view.picture: N`` also writes
    ``transfer_view.png`` (N images: image | ground truth | prediction). Written to ``transfer_view.{md,json}``
    in the run directory. On the training split the unseen pixels were never labelled for the student; on the
    synthetic world's ``test`` split (docs/world.md) neither the images nor the labels were ever seen."""
    split = cfg.transfer_view.get("split") or cfg.dataset.train_split
    _, train_eval = build_data(cfg.dataset, bench, train=False, val_split=split)
    kw = dict(
        mode=tcfg.eval_mode,
        crop=tcfg.eval_crop,
        stride=tcfg.eval_stride,
        crop_batch=tcfg.eval_crop_batch,
        device=device,
        progress=zdist.is_main(),
    )
    gz = evaluate(method, train_eval, label_space="all", **kw)  # sharded over ranks, all-reduced
    zs = evaluate(method, train_eval, label_space="unseen", **kw)
    if not zdist.is_main():
        return {}
    row = {
        "mIoU_seen": gz["mIoU_seen"],
        "mIoU_unseen": gz["mIoU_unseen"],
        "hIoU": gz["hIoU"],
        "five_way_pixel": zs["pAcc"],
        "five_way_class_mean": zs["mAcc"],
    }
    teacher = None
    if cfg.transfer_view.get("teacher_ceiling") and hasattr(method.teacher, "text"):
        from zss.tools.taught_clip import evaluate_dense_quality

        q = evaluate_dense_quality(
            method.teacher, train_eval, bench.classes, templates_for(cfg.dataset, bench), bench.unseen
        )
        teacher = {
            "mIoU_seen": q["mIoU_seen"],
            "mIoU_unseen": q["mIoU_unseen"],
            "hIoU": q["hIoU"],
            "five_way_pixel": q["five_way_pAcc"],
            "five_way_class_mean": q["five_way_mAcc"],
        }
    if int(cfg.transfer_view.get("picture") or 0) > 0:
        _transfer_picture(
            method,
            train_eval,
            int(cfg.transfer_view.picture),
            run_dir / "transfer_view.png",
            device,
            cfg.dataset.mean,
            cfg.dataset.std,
        )
    if (
        hasattr(method, "pseudo_label_report")
        and getattr(method, "use_plm", False)
        and split == cfg.dataset.train_split
    ):
        qs = []
        with torch.no_grad():
            for sample in train_eval:
                img = sample["image"][None].to(device)
                full = (
                    torch.nn.functional.interpolate(
                        sample["full_label"][None, None].float(), size=img.shape[-2:], mode="nearest"
                    )[0]
                    .long()
                    .to(device)
                )
                seen_only = full.clone()
                seen_only[torch.isin(full, method.unseen.to(device))] = method.ignore_index
                qs.append(method.pseudo_label_report(img, seen_only, full))
        for k in ("regions", "purity", "unseen_isolated"):
            v = torch.cat([q[k] for q in qs]).float()
            row[f"pl_{k}"] = float(v.nanmean()) * (1 if k == "regions" else 100)
    ref = cfg.transfer_view.get("reference")
    ref = OmegaConf.to_container(ref, resolve=True) if ref is not None else {}
    f = lambda v: "n/a" if v is None or v != v else f"{v:.2f}"  # noqa: E731
    what = (
        "TRAINING images on their FULL labels (unseen pixels never labelled for the student)"
        if split == cfg.dataset.train_split
        else f"{split!r} images, never trained on by the student (nor, for the synthetic world, by its teacher)"
    )
    lines = [
        f"Transfer view: the {len(train_eval)} {what}",
        "",
        "| run | mIoU(S) | mIoU(U) | hIoU | unseen 5-way pixel % | 5-way class-mean % |",
        "|---|---:|---:|---:|---:|---:|",
        f"| this run ({cfg.method.name}) | {f(row['mIoU_seen'])} | {f(row['mIoU_unseen'])} | {f(row['hIoU'])} | "
        f"{f(row['five_way_pixel'])} | {f(row['five_way_class_mean'])} |",
    ]
    if ref:
        lines.append(
            f"| {ref.get('name', 'reference')} | {f(ref.get('mIoU_seen'))} | {f(ref.get('mIoU_unseen'))} | "
            f"{f(ref.get('hIoU'))} | {f(ref.get('five_way_pixel'))} | {f(ref.get('five_way_class_mean'))} |"
        )
    if teacher:
        lines.append(
            f"| teacher's own dense zero-shot (its ceiling) | {f(teacher['mIoU_seen'])} | "
            f"{f(teacher['mIoU_unseen'])} | {f(teacher['hIoU'])} | {f(teacher['five_way_pixel'])} | "
            f"{f(teacher['five_way_class_mean'])} |"
        )
        if teacher["mIoU_unseen"] > 0:
            lines += [
                "",
                f"student mIoU(U) / teacher mIoU(U): {row['mIoU_unseen'] / teacher['mIoU_unseen'] * 100:.0f}%",
            ]
    if "pl_regions" in row:
        lines += [
            "",
            f"PLM pseudo labels on these images: {row['pl_regions']:.1f} regions per image, purity "
            f"{row['pl_purity']:.1f}%, unseen pixels in an unseen-dominated region "
            f"{row['pl_unseen_isolated']:.1f}%",
        ]
    if cfg.transfer_view.get("note"):
        lines += ["", f"NOTE: {cfg.transfer_view.note}"]
    text = "\n".join(lines)
    print("\n" + text, flush=True)
    (run_dir / "transfer_view.md").write_text(text + "\n")
    (run_dir / "transfer_view.json").write_text(
        json.dumps({"split": split, "run": row, "reference": ref, "teacher": teacher}, indent=2)
    )
    return row


def teacher_dense_score(cfg: DictConfig, split: str | None = None) -> dict:
    """The teacher of ``cfg`` scored on its own: dense zero-shot segmentation of ``split``'s images on their FULL
    labels, the pixels ``scripts/eval.py split=<split>`` scores a student on (same test transform, labels at the
    original size). Logits = the teacher's dense embeds · its text embeds of the benchmark's classes
    (:func:`zss.tools.taught_clip.evaluate_dense_quality`); the OracleTeacher is handed each full label, as in
    training. For an oracle or label-taught teacher this is a mechanism tool's ceiling, NOT a zero-shot result.

    Args:
        cfg: a composed train config (``dataset``, ``teacher`` groups are used).
        split: split list to score; None: ``dataset.train_split``.
    Returns:
        dict of :func:`~zss.tools.taught_clip.evaluate_dense_quality` (percent floats ``mIoU_seen``, ``mIoU_unseen``,
        ``hIoU``, ``five_way_mAcc``, ``five_way_pAcc``, ``per_class_IoU``, ``gt_pixels``, ...) plus ``teacher``
        (str: "oracle" or ``teacher.model_name``) and ``split`` (str).
    Raises:
        FileNotFoundError: missing data or teacher weights (names the file and the fix).
    """
    from zss.tools.taught_clip import evaluate_dense_quality

    bench = build_benchmark(cfg.dataset)
    split = split or str(cfg.dataset.train_split)
    _, data = build_data(cfg.dataset, bench, train=False, val_split=split)
    teacher = build_teacher(cfg, bench)
    q = evaluate_dense_quality(teacher, data, bench.classes, templates_for(cfg.dataset, bench), bench.unseen)
    oracle = str(cfg.teacher._target_).endswith("OracleTeacher")
    q["teacher"] = "oracle" if oracle else str(cfg.teacher.get("model_name") or cfg.teacher._target_)
    q["split"] = split
    return q


@torch.no_grad()
def _transfer_picture(method: Method, data, n: int, path: Path, device, mean, std) -> None:
    """PNG of the first ``n`` images of ``data``: one row each, image | ground truth | prediction (class colours;
    the prediction is drawn on the scored pixels only: ignored ground truth, e.g. background, stays black as in the
    ground-truth panel). ``mean``/``std``: the images' normalisation, [0, 1] units."""
    from PIL import Image
    from torchvision.utils import make_grid

    from zss.engine.visualize import colorize, denormalize

    tiles = []
    for i in range(min(n, len(data))):
        sample = data[i]
        full = sample["full_label"]
        logits = method.predict(sample["image"][None].to(device), label_space="all")  # [1, C, H', W'] input size
        logits = torch.nn.functional.interpolate(logits.float(), size=tuple(full.shape), mode="bilinear")
        pred = logits.argmax(1)[0].cpu()
        pred[full == method.ignore_index] = method.ignore_index
        img = denormalize(sample["image"], mean, std)
        img = torch.nn.functional.interpolate(img[None].float(), size=tuple(full.shape), mode="bilinear")[0]
        tiles += [
            img.round().clamp(0, 255).to(torch.uint8),
            colorize(full, method.num_classes),
            colorize(pred, method.num_classes),
        ]
    grid = make_grid(tiles, nrow=3, padding=2, pad_value=255)
    Image.fromarray(grid.permute(1, 2, 0).numpy()).save(path)


def _normalizations(ds: DictConfig, student, teacher) -> dict:
    """What each network is fed (RGB, [0, 1] units): the images' ``dataset.mean/std`` and the statistics the
    student backbone and the teacher convert them to (for the run's config.json and log)."""
    out = {"images": {"mean": [float(v) for v in ds.mean], "std": [float(v) for v in ds.std]}}
    sn = getattr(student, "normalization", None) or getattr(getattr(student, "body", None), "normalization", None)
    out["student"] = dict(sn) if sn else {"source": "not recorded by the student"}
    if hasattr(teacher, "clip_mean"):
        out["teacher"] = {
            "mean": list(teacher.clip_mean),
            "std": list(teacher.clip_std),
            "input_mean": list(teacher.input_mean),
            "input_std": list(teacher.input_std),
        }
    else:
        out["teacher"] = {"source": "reads labels only (no image normalisation)"}
    return out


def train_main() -> None:
    """Console entry ``zss-train`` (and ``scripts/train.py``): Hydra overrides of configs/train.yaml."""
    run_hydra("train", train)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(train_main())
