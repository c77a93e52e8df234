"""Composition root: the only module in zss that imports Hydra / OmegaConf.

``scripts/train.py`` and ``scripts/eval.py`` call :func:`train_main` / :func:`eval_main`. Every
object is built here from the composed config with plain values and passed on; nothing below
this layer sees a config object.
"""
from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import hydra
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from zss.data.classes import get_benchmark
from zss.data.dataset import build_dataset
from zss.data.transforms import build_test_transform, build_train_transform
from zss.engine.checkpoint import load_checkpoint
from zss.engine.evaluate import evaluate
from zss.engine.metrics import format_table, to_json
from zss.engine.trainer import (
    TrainConfig,
    Trainer,
    checkpoint_config,
    config_changes,
    find_resume,
    format_changes,
    new_run_dir,
)
from zss.methods.base import Method
from zss.resources import config_dir
from zss.utils import dist as zdist
from zss.utils.progress import console_logging

#: The shipped configs: installed package data (zss/configs) or the checkout's configs/ (zss.resources).
CONFIG_DIR = config_dir()


# ---------------------------------------------------------------------- builders
def build_benchmark(ds: DictConfig):
    return get_benchmark(ds.benchmark, ds.get("split"))


def build_data(ds: DictConfig, bench, train: bool = True, val_split: str | None = None):
    """(train_set, val_set) from the dataset config group."""
    mean, std = tuple(ds.mean), tuple(ds.std)
    val_tf = build_test_transform(scale=tuple(ds.test_scale), mean=mean, std=std)
    ann = _train_ann_dirs(ds) if val_split is not None and val_split == ds.get("train_split") else None
    val_set = build_dataset(ds.benchmark, ds.root, split=val_split or ds.val_split, hide_unseen=False,
                            transform=val_tf, benchmark_split=ds.get("split"), ann_dir=ann)
    val_set.mean, val_set.std = mean, std
    train_set = None
    if train:
        tf = build_train_transform(
            crop_size=tuple(ds.crop_size), scale=tuple(ds.scale), ratio_range=tuple(ds.ratio_range),
            cat_max_ratio=ds.cat_max_ratio, flip_prob=ds.flip_prob, photometric=ds.photometric, mean=mean, std=std,
        )
        try:
            train_set = build_dataset(ds.benchmark, ds.root, split=ds.train_split, hide_unseen=ds.hide_unseen,
                                      transform=tf, benchmark_split=ds.get("split"),
                                      ann_dir=_train_label_dir(ds) or _train_ann_dirs(ds))
        except FileNotFoundError as e:
            if not ds.get("train_label_dir"):
                raise
            raise FileNotFoundError(
                f"{e}\nNOTE: dataset.train_label_dir={ds.train_label_dir} must hold one <id>.png per image of "
                f"split {ds.train_split!r}: for pseudo masks write the whole split (python scripts/clip_es_masks.py "
                f"split={ds.train_split} out_dir=<new folder>, docs/clip_es.md)."
            ) from e
    return train_set, val_set


#: Top-level key (configs/train.yaml) that lets a label-reading teacher (OracleTeacher) train.
ORACLE_FLAG = "allow_oracle_teacher"


def _teacher_target(teacher_cfg: DictConfig):
    """The class/function named by ``teacher._target_`` (imported, not called)."""
    from hydra.utils import get_object

    return get_object(str(teacher_cfg._target_))


def check_teacher_allowed(cfg: DictConfig) -> None:
    """Refuse to TRAIN with a teacher that reads the ground truth (``needs_full_label``, the OracleTeacher)
    unless the top-level ``allow_oracle_teacher`` is true (the demo experiments set it).

    Raises:
        ValueError: one line naming the teacher, the dataset and the flag.
    """
    target = _teacher_target(cfg.teacher)
    if getattr(target, "needs_full_label", False) and not cfg.get(ORACLE_FLAG, False):
        raise ValueError(
            f"teacher {cfg.teacher._target_} reads the full ground-truth label (unseen classes included), so "
            f"its numbers are NOT zero-shot results; refusing to train it on dataset={cfg.dataset.name}. Pass "
            f"{ORACLE_FLAG}=true to train with it anyway (the demo experiments set it), or choose a CLIP teacher "
            f"(teacher=clip_vitb16)."
        )


def _train_ann_dirs(ds: DictConfig) -> list | None:
    """``dataset.train_ann_dirs``: one label folder per ``+``-joined part of ``dataset.train_split``, relative to
    ``dataset.root`` (null entries: the layout's), e.g. VOC-Aug ``[SegmentationClass, SegmentationClassAug]``;
    None when unset."""
    dirs = ds.get("train_ann_dirs")
    return None if dirs is None else [None if d is None else str(d) for d in dirs]


def _train_label_dir(ds: DictConfig) -> str | None:
    """``dataset.train_label_dir`` (pseudo masks for every part of the training split, e.g. CLIP-ES,
    docs/clip_es.md) as an absolute path, or None."""
    d = ds.get("train_label_dir")
    if not d:
        return None
    p = Path(str(d)).expanduser().resolve()
    if not p.is_dir():
        raise FileNotFoundError(
            f"dataset.train_label_dir={d} ({p}) does not exist. Write pseudo masks there first, e.g. "
            f"python scripts/clip_es_masks.py out_dir={d} (docs/clip_es.md); or set dataset.train_label_dir=null "
            f"to train on the ground truth."
        )
    return str(p)


def build_teacher(cfg: DictConfig, bench):
    """The frozen teacher of ``cfg.teacher``. Image teachers (FrozenCLIP and its builders) are given the images'
    normalisation ``dataset.mean/std`` as ``input_mean/input_std`` and convert to their own (CLIP's); the
    OracleTeacher reads labels only and gets the class names instead.

    Raises:
        ValueError: ``teacher.input_mean/std`` set to values other than ``dataset.mean/std``, or a teacher
            target that takes no ``input_mean/input_std`` (it could not be told the images' normalisation).
    """
    import inspect

    kwargs = {}
    if str(cfg.teacher._target_).endswith("OracleTeacher"):
        kwargs["classnames"] = list(bench.classes)
        return instantiate(cfg.teacher, **kwargs)
    norm = {"input_mean": [float(v) for v in cfg.dataset.mean], "input_std": [float(v) for v in cfg.dataset.std]}
    for key, want in norm.items():
        have = cfg.teacher.get(key)
        if have is not None and [float(v) for v in have] != want:
            raise ValueError(f"teacher.{key}={list(have)} differs from dataset.{key[6:]}={want}: images are "
                             f"normalised with dataset.mean/std and the teacher converts from them itself; remove "
                             f"teacher.{key}")
    params = inspect.signature(_teacher_target(cfg.teacher)).parameters.values()
    if not any(p.name == "input_mean" or p.kind is p.VAR_KEYWORD for p in params):
        raise ValueError(f"teacher._target_={cfg.teacher._target_} takes no input_mean/input_std, so it cannot be "
                         f"told that images are normalised with dataset.mean/std; give it those arguments")
    kwargs.update(norm)
    return instantiate(cfg.teacher, **kwargs)


def build_student(model_cfg: DictConfig, embed_dim: int, mean=None, std=None):
    """The Student of ``model_cfg``; ``mean``/``std`` (``dataset.mean/std``) are the images' normalisation it
    converts from (``Student(input_mean, input_std)``; None keeps the Student's default, CLIP's)."""
    kwargs = {"embed_dim": embed_dim}
    if mean is not None:
        kwargs.update(input_mean=[float(v) for v in mean], input_std=[float(v) for v in std])
    return instantiate(model_cfg, **kwargs)


#: method-config keys that are not constructor arguments (``recipe``: trainer values the experiment presets read)
METHOD_BOOKKEEPING = ("name", "recipe")


def _method_class(method_cfg: DictConfig):
    """The class named by ``method._target_`` (imported, not called)."""
    from hydra.utils import get_object

    return get_object(str(method_cfg._target_))


def _uses_student(method_cfg: DictConfig) -> bool:
    """False for methods that build their model from the teacher (``uses_student = False``: CLIP-RC, ZegCLIP)."""
    return bool(getattr(_method_class(method_cfg), "uses_student", True))


def build_method(method_cfg: DictConfig, **kwargs):
    """The method of a ``method`` config node: its class (``_target_``) built with ``from_flat`` from the node's
    flat keys (bookkeeping keys dropped, interpolations resolved) plus ``kwargs`` (student, teacher, classes...).
    See :meth:`zss.methods.base.Method.from_flat`; a class without it is called directly."""
    cls = _method_class(method_cfg)
    drop = ("_target_", "_convert_", "_recursive_", *METHOD_BOOKKEEPING)
    settings = {k: v for k, v in OmegaConf.to_container(method_cfg, resolve=True).items() if k not in drop}
    return getattr(cls, "from_flat", cls)(**settings, **kwargs)


def templates_for(ds: DictConfig, bench) -> list[str]:
    return list(ds.templates) if ds.get("templates") else list(bench.templates)


def _without(node: DictConfig, *keys: str) -> DictConfig:
    """Copy of a config node without bookkeeping keys that are not constructor arguments."""
    out = OmegaConf.to_container(node, resolve=True)
    for k in keys:
        out.pop(k, None)
    return OmegaConf.create(out)


def _non_null(node) -> dict:
    """The keys of an override node that were actually set (not null)."""
    if node is None:
        return {}
    return {k: v for k, v in OmegaConf.to_container(node, resolve=True).items() if v is not None}


def _resolve_dirs(cfg: DictConfig, config: dict | None = None) -> tuple[Path, Path | None]:
    """(run_dir, resume checkpoint). ``resume``: null (new run), ``auto`` (newest last.pt of this experiment name
    whose stored config matches ``config`` in every number-shaping key, seed included; else a new run), or a
    path to a last.pt, refused when its config differs unless ``resume_allow_changes=true``
    (``zss.engine.trainer.RESUME_HARMLESS_KEYS`` may always differ).

    Raises:
        FileNotFoundError: ``resume=<path>`` does not exist. ValueError: its config differs (keys named).
    """
    resume = cfg.get("resume")
    ckpt = None
    if resume == "auto":
        warn = (lambda msg: print(msg, flush=True)) if zdist.is_main() else None
        ckpt = find_resume(cfg.run_root, cfg.name, config=config, warn=warn)
        others = find_resume(cfg.run_root, cfg.name) if ckpt is None and config is not None else None
        if others is not None and zdist.is_main():
            print(f"zss: resume=auto: no run of {cfg.name} under {cfg.run_root} has this config (newest differs in "
                  f"{format_changes(config_changes(checkpoint_config(others), config), limit=3)}); starting a new "
                  f"run", flush=True)
    elif resume:
        ckpt = Path(resume)
        if not ckpt.is_file():
            raise FileNotFoundError(f"resume={resume}: no such checkpoint (use resume=auto or a path to last.pt)")
        changes = config_changes(checkpoint_config(ckpt), config) if config is not None else {}
        if changes and not cfg.get("resume_allow_changes", False):
            raise ValueError(
                f"resume={resume}: this command's config differs from the checkpoint's in {len(changes)} "
                f"number-shaping key(s): {format_changes(changes)}. Repeat the run's own overrides (its "
                f"config.json), drop resume= to start a new run, or pass resume_allow_changes=true to continue it "
                f"with the new values.")
        if changes and zdist.is_main():
            print(f"zss: NOTE resume_allow_changes=true: continuing {ckpt} with {format_changes(changes)}",
                  flush=True)
    if ckpt is not None:
        return ckpt.parent, ckpt
    run_dir = new_run_dir(cfg.run_root, cfg.name) if zdist.is_main() else None
    if zdist.is_dist():
        obj = [str(run_dir) if run_dir else None]
        torch.distributed.broadcast_object_list(obj, src=0)
        run_dir = Path(obj[0])
    return Path(run_dir), None


#: TrainConfig keys that must be integers >= 1 / numbers >= 0 (configs/trainer/default.yaml).
def register_configs() -> None:
    """Register zss's structured configs in Hydra's ConfigStore (done when this module is imported).

    ``trainer/schema``: :class:`TrainConfig` itself, its Python defaults as a trainer option (``trainer=schema``
    composes the same values as the shipped ``trainer=default``, tested). Its range checks run where the CLI builds
    the class (:func:`train_config`), not in Hydra's merge, so a bad ``trainer.<key>=`` gets the message Python's
    ``TrainConfig(<key>=...)`` gives.
    """
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(group="trainer", name="schema", node=TrainConfig)


register_configs()


def train_config(trainer: DictConfig | dict) -> TrainConfig:
    """The :class:`TrainConfig` of the ``trainer`` config group, checked before anything is built.

    Raises:
        ValueError: a key TrainConfig does not have (``+trainer.<typo>``: names it and lists the valid keys); a
            value out of range or of the wrong type: ``TrainConfig.__post_init__``'s message, the same one
            ``TrainConfig(...)`` gives in Python.
    """
    import dataclasses

    values = OmegaConf.to_container(trainer, resolve=True) if OmegaConf.is_config(trainer) else dict(trainer)
    known = sorted(f.name for f in dataclasses.fields(TrainConfig))
    unknown = sorted(k for k in values if k not in known)
    if unknown:
        raise ValueError(f"trainer.{unknown[0]} is not a trainer key (valid: {', '.join(known)}; "
                         f"configs/trainer/default.yaml): fix its spelling or drop the override")
    return TrainConfig(**values)


def check_run_target(run_root, name) -> None:
    """Refuse a run name or ``run_root`` that cannot hold a new run directory, before anything is built.

    Raises:
        ValueError: ``name`` is not a non-empty relative name (e.g. ``name=nan`` or ``name=1e3``, which Hydra
            reads as numbers, or ``name=/abs``); ``run_root`` (or ``run_root/name``) is an existing file; the nearest
            existing folder of ``run_root`` is not writable.
    """
    import os

    if not isinstance(name, str) or not name.strip() or Path(name).is_absolute() or ".." in Path(name).parts \
            or name.strip() == ".":
        kind = "text" if isinstance(name, str) else f"read as a {type(name).__name__}"
        raise ValueError(f"name={name!r} ({kind}) cannot name a run folder under run_root: give a relative name, "
                         f"quoted when it looks like a number (name=\"'nan'\" in a shell)")
    root = Path(str(run_root)).expanduser()
    for p in (root, root / name):
        if p.exists() and not p.is_dir():
            raise ValueError(f"run_root={run_root}: {p} is a file, not a folder; pass run_root=<a folder> "
                             f"(created if missing)")
    near = root
    while not near.exists() and near != near.parent:
        near = near.parent
    if near.exists() and not near.is_dir():
        raise ValueError(f"run_root={run_root}: {near} is a file, not a folder, so no folder can be made below it; "
                         f"pass run_root=<a folder> (created if missing)")
    if not os.access(near, os.W_OK | os.X_OK):
        raise ValueError(f"run_root={run_root}: cannot write in {near} (permission denied); pass "
                         f"run_root=<a folder you can write>")


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
        where = f"dataset.train_label_dir={ds.train_label_dir}" if ds.get("train_label_dir") else \
            f"dataset.root={ds.root}"
        raise ValueError(f"dataset.train_split={ds.train_split}: none of the {read} labels read ({where}) holds a seen "
                         f"class pixel (only background/ignore and unseen classes), so training has nothing to learn; "
                         f"check the split and labels with zss-check dataset={ds.name} dataset.root={ds.root}")


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
        raise ValueError(f"resume={path}: the checkpoint holds weights but no training state ({', '.join(missing)} "
                         f"missing), so it cannot continue a run; start a new run from its weights with "
                         f"init_from={path} (and no resume=)")
    return ckpt


def _resume_mismatch(path, err: RuntimeError) -> str:
    """One message for ``load_state_dict``'s strict-mode dump when resuming another architecture."""
    import re

    text = str(err)
    shape = r"torch\.Size\(\[([^\]]*)\]\)"
    size = re.findall(rf"size mismatch for ([^:]+): copying a param with shape {shape} from checkpoint, "
                      rf"the shape in current model is {shape}", text)
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
    return (f"resume={path}: the checkpoint holds another architecture than this command builds "
            f"({'; '.join(parts) or 'state dict mismatch'}). Resume with the method/model/teacher overrides the run "
            f"was started with (recorded in {run_dir / 'config.json'}), or drop resume= to start a new run.")


def train(cfg: DictConfig) -> dict | None:
    """Build everything from ``cfg`` and train; returns the final evaluation results."""
    train_config(cfg.trainer)  # bad trainer values, run name or run_root fail here, before anything is built
    check_run_target(cfg.run_root, cfg.name)
    if cfg.get("resume") not in (None, "auto") and Path(str(cfg.resume)).is_file():
        check_resumable(cfg.resume)  # not a zss checkpoint, or no training state: one message now
    if cfg.get("init_from") and cfg.get("resume"):
        raise ValueError(f"init_from={cfg.init_from} starts a NEW run from a checkpoint's weights, resume={cfg.resume} "
                         f"continues an old one: pass only one of them")
    init = load_checkpoint(cfg.init_from) if cfg.get("init_from") else None  # checked before anything is built
    check_teacher_allowed(cfg)
    device = zdist.init_distributed(cfg.device)
    torch.manual_seed(cfg.trainer.seed)
    bench = build_benchmark(cfg.dataset)
    train_set, val_set = build_data(cfg.dataset, bench)
    check_seen_labels(train_set, cfg.dataset)
    teacher = build_teacher(cfg, bench)
    embed_dim = int(teacher.embed_dim)
    student = (build_student(cfg.model, embed_dim, cfg.dataset.mean, cfg.dataset.std)
               if _uses_student(cfg.method) else None)  # CLIP-RC / ZegCLIP build their model from the teacher
    method = build_method(cfg.method, student=student, teacher=teacher, classnames=list(bench.classes),
                          unseen=list(bench.unseen), templates=templates_for(cfg.dataset, bench))
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
    run_dir, resume_ckpt = _resolve_dirs(cfg, resolved)  # resume only a run of the same config
    tcfg = TrainConfig(**OmegaConf.to_container(cfg.trainer, resolve=True))
    try:  # loads a resumed checkpoint before anything is written into its folder
        trainer = Trainer(method, train_set, val_set, tcfg, run_dir, config=resolved, resume_from=resume_ckpt,
                          device=device)
    except RuntimeError as e:  # strict load_state_dict of a checkpoint of another architecture
        if resume_ckpt is None or "Error(s) in loading state_dict" not in str(e):
            raise
        raise ValueError(_resume_mismatch(resume_ckpt, e)) from e
    if zdist.is_main():
        print(f"zss: run dir {run_dir}")
        save_run_info(run_dir)
        ident = method.teacher_identity()
        note = _teacher_note(ident)
        print(f"zss: teacher {ident.get('model_name')} (weights: {ident.get('pretrained')})"
              + (f"\nzss: NOTE {note}" if note else ""), flush=True)
        print("zss: normalisation " + json.dumps(norm), flush=True)
    try:
        results = trainer.fit()
    except ValueError as e:  # torch's BatchNorm on a [1, C, 1, 1] input: name the keys that fix it
        if "Expected more than 1 value per channel" not in str(e):
            raise
        raise ValueError(f"a BatchNorm layer got one value per channel ({e}): the micro-batch holds "
                         f"{trainer.micro} image(s) and dataset.crop_size={list(cfg.dataset.crop_size)} shrinks to 1x1 "
                         f"in the backbone; raise trainer.batch_size (or trainer.micro_batch_size) to >= 2 or "
                         f"dataset.crop_size") from None
    if trainer.stopped_by:  # SIGTERM/SIGINT/SIGUSR1: last.pt is written; exit as the signal would have
        zdist.cleanup()
        raise SystemExit(128 + int(signal.Signals[trainer.stopped_by]))
    if zdist.is_main() and results is not None:
        _report(results, run_dir, "final", note=_teacher_note(method.teacher_identity()), config=resolved,
                split=cfg.dataset.val_split)
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
    kw = dict(mode=tcfg.eval_mode, crop=tcfg.eval_crop, stride=tcfg.eval_stride, crop_batch=tcfg.eval_crop_batch,
              device=device, progress=zdist.is_main())
    gz = evaluate(method, train_eval, label_space="all", **kw)  # sharded over ranks, all-reduced
    zs = evaluate(method, train_eval, label_space="unseen", **kw)
    if not zdist.is_main():
        return {}
    row = {"mIoU_seen": gz["mIoU_seen"], "mIoU_unseen": gz["mIoU_unseen"], "hIoU": gz["hIoU"],
           "five_way_pixel": zs["pAcc"], "five_way_class_mean": zs["mAcc"]}
    teacher = None
    if cfg.transfer_view.get("teacher_ceiling") and hasattr(method.teacher, "text"):
        from zss.teachers.taught import evaluate_dense_quality

        q = evaluate_dense_quality(method.teacher, train_eval, bench.classes, templates_for(cfg.dataset, bench),
                                   bench.unseen)
        teacher = {"mIoU_seen": q["mIoU_seen"], "mIoU_unseen": q["mIoU_unseen"], "hIoU": q["hIoU"],
                   "five_way_pixel": q["five_way_pAcc"], "five_way_class_mean": q["five_way_mAcc"]}
    if int(cfg.transfer_view.get("picture") or 0) > 0:
        _transfer_picture(method, train_eval, int(cfg.transfer_view.picture), run_dir / "transfer_view.png", device,
                          cfg.dataset.mean, cfg.dataset.std)
    if hasattr(method, "pseudo_label_report") and getattr(method, "use_plm", False) and split == cfg.dataset.train_split:
        qs = []
        with torch.no_grad():
            for sample in train_eval:
                img = sample["image"][None].to(device)
                full = torch.nn.functional.interpolate(sample["full_label"][None, None].float(), size=img.shape[-2:],
                                                       mode="nearest")[0].long().to(device)
                seen_only = full.clone()
                seen_only[torch.isin(full, method.unseen.to(device))] = method.ignore_index
                qs.append(method.pseudo_label_report(img, seen_only, full))
        for k in ("regions", "purity", "unseen_isolated"):
            v = torch.cat([q[k] for q in qs]).float()
            row[f"pl_{k}"] = float(v.nanmean()) * (1 if k == "regions" else 100)
    ref = cfg.transfer_view.get("reference")
    ref = OmegaConf.to_container(ref, resolve=True) if ref is not None else {}
    f = lambda v: "n/a" if v is None or v != v else f"{v:.2f}"  # noqa: E731
    what = ("TRAINING images on their FULL labels (unseen pixels never labelled for the student)"
            if split == cfg.dataset.train_split else
            f"{split!r} images, never trained on by the student (nor, for the synthetic world, by its teacher)")
    lines = [f"Transfer view: the {len(train_eval)} {what}", "",
             "| run | mIoU(S) | mIoU(U) | hIoU | unseen 5-way pixel % | 5-way class-mean % |", "|---|---:|---:|---:|---:|---:|",
             f"| this run ({cfg.method.name}) | {f(row['mIoU_seen'])} | {f(row['mIoU_unseen'])} | {f(row['hIoU'])} | "
             f"{f(row['five_way_pixel'])} | {f(row['five_way_class_mean'])} |"]
    if ref:
        lines.append(f"| {ref.get('name', 'reference')} | {f(ref.get('mIoU_seen'))} | {f(ref.get('mIoU_unseen'))} | "
                     f"{f(ref.get('hIoU'))} | {f(ref.get('five_way_pixel'))} | {f(ref.get('five_way_class_mean'))} |")
    if teacher:
        lines.append(f"| teacher's own dense zero-shot (its ceiling) | {f(teacher['mIoU_seen'])} | "
                     f"{f(teacher['mIoU_unseen'])} | {f(teacher['hIoU'])} | {f(teacher['five_way_pixel'])} | "
                     f"{f(teacher['five_way_class_mean'])} |")
        if teacher["mIoU_unseen"] > 0:
            lines += ["", f"student mIoU(U) / teacher mIoU(U): {row['mIoU_unseen'] / teacher['mIoU_unseen'] * 100:.0f}%"]
    if "pl_regions" in row:
        lines += ["", f"PLM pseudo labels on these images: {row['pl_regions']:.1f} regions per image, purity "
                      f"{row['pl_purity']:.1f}%, unseen pixels in an unseen-dominated region "
                      f"{row['pl_unseen_isolated']:.1f}%"]
    if cfg.transfer_view.get("note"):
        lines += ["", f"NOTE: {cfg.transfer_view.note}"]
    text = "\n".join(lines)
    print("\n" + text, flush=True)
    (run_dir / "transfer_view.md").write_text(text + "\n")
    (run_dir / "transfer_view.json").write_text(json.dumps({"split": split, "run": row, "reference": ref,
                                                            "teacher": teacher}, indent=2))
    return row


def teacher_dense_score(cfg: DictConfig, split: str | None = None) -> dict:
    """The teacher of ``cfg`` scored on its own: dense zero-shot segmentation of ``split``'s images on their FULL
    labels, the pixels ``scripts/eval.py split=<split>`` scores a student on (same test transform, labels at the
    original size). Logits = the teacher's dense embeds · its text embeds of the benchmark's classes
    (:func:`zss.teachers.taught.evaluate_dense_quality`); the OracleTeacher is handed each full label, as in
    training. For an oracle or label-taught teacher this is a mechanism tool's ceiling, NOT a zero-shot result.

    Args:
        cfg: a composed train config (``dataset``, ``teacher`` groups are used).
        split: split list to score; None: ``dataset.train_split``.
    Returns:
        dict of :func:`~zss.teachers.taught.evaluate_dense_quality` (percent floats ``mIoU_seen``, ``mIoU_unseen``,
        ``hIoU``, ``five_way_mAcc``, ``five_way_pAcc``, ``per_class_IoU``, ``gt_pixels``, ...) plus ``teacher``
        (str: "oracle" or ``teacher.model_name``) and ``split`` (str).
    Raises:
        FileNotFoundError: missing data or teacher weights (names the file and the fix).
    """
    from zss.teachers.taught import evaluate_dense_quality

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
        tiles += [img.round().clamp(0, 255).to(torch.uint8), colorize(full, method.num_classes),
                  colorize(pred, method.num_classes)]
    grid = make_grid(tiles, nrow=3, padding=2, pad_value=255)
    Image.fromarray(grid.permute(1, 2, 0).numpy()).save(path)


def _normalizations(ds: DictConfig, student, teacher) -> dict:
    """What each network is fed (RGB, [0, 1] units): the images' ``dataset.mean/std`` and the statistics the
    student backbone and the teacher convert them to (for the run's config.json and log)."""
    out = {"images": {"mean": [float(v) for v in ds.mean], "std": [float(v) for v in ds.std]}}
    sn = getattr(student, "normalization", None) or getattr(getattr(student, "body", None), "normalization", None)
    out["student"] = dict(sn) if sn else {"source": "not recorded by the student"}
    if hasattr(teacher, "clip_mean"):
        out["teacher"] = {"mean": list(teacher.clip_mean), "std": list(teacher.clip_std),
                          "input_mean": list(teacher.input_mean), "input_std": list(teacher.input_std)}
    else:
        out["teacher"] = {"source": "reads labels only (no image normalisation)"}
    return out


def save_run_info(run_dir: Path) -> tuple[Path, Path]:
    """Write how this run was launched into its directory: Hydra's command-line overrides as a YAML list
    (``overrides.yaml``, the content of Hydra's own ``.hydra/overrides.yaml``, empty outside ``@hydra.main``) and
    ``versions.json`` (python, torch, torchvision, timm, open_clip, zss, the git commit, the command line).
    A resumed run keeps the first launch's files and adds ``overrides.resume-<n>.yaml`` /
    ``versions.resume-<n>.json`` (n = 1, 2, ...): nothing is overwritten.

    Returns:
        (overrides file, versions file) written.
    """
    import yaml
    from hydra.core.hydra_config import HydraConfig

    from zss.engine.checkpoint import git_sha, versions

    overrides = [str(o) for o in HydraConfig.get().overrides.task] if HydraConfig.initialized() else []
    suffix, n = "", 0
    while (run_dir / f"overrides{suffix}.yaml").exists() or (run_dir / f"versions{suffix}.json").exists():
        n += 1
        suffix = f".resume-{n}"
    ov, ver = run_dir / f"overrides{suffix}.yaml", run_dir / f"versions{suffix}.json"
    ov.write_text(yaml.safe_dump(overrides, default_flow_style=False, allow_unicode=True))
    ver.write_text(json.dumps({**versions(), "git_sha": git_sha(), "argv": list(sys.argv)}, indent=2) + "\n")
    return ov, ver


def _report(results: dict, out_dir: Path, tag: str, note: str | None = None, config: dict | None = None,
            split: str | None = None) -> None:
    """Print and write ``<tag>_results.{md,json}``; with the run's ``config``, both name the preset that produced
    them and the .md carries the matching published rows with deltas (zss/published.py)."""
    table = format_table(results)
    if config is not None:
        from zss.published import format_comparison, run_settings

        settings = run_settings(config)
        results["preset"], results["run_settings"] = settings["preset"], settings
        table = (f"preset: method={settings['preset']} dataset={settings['dataset']} ({settings['setting']})\n\n"
                 + table + "\n\n" + format_comparison(results, settings, split))
    print("\n" + table)
    if note:
        print(f"\nNOTE: {note}")
    (out_dir / f"{tag}_results.md").write_text(table + (f"\n\nNOTE: {note}\n" if note else "\n"))
    (out_dir / f"{tag}_results.json").write_text(json.dumps(to_json(results), indent=2))


def load_for_inference(
    ckpt_path: str | Path,
    classnames: list[str] | None = None,
    unseen: list[int] | None = None,
    templates: list[str] | None = None,
    teacher_overrides: dict | None = None,
    device: torch.device | str = "cpu",
    input_norm: tuple | None = None,
) -> tuple[Method, dict]:
    """Rebuild a trained method from a checkpoint for inference; returns ``(method, ckpt)``.

    :func:`zss.loading.load_for_inference` (no Hydra: the classes come from the allow-list of
    :mod:`zss.registry`, never from a dotted path stored in the checkpoint); see there for the arguments.

    Raises:
        FileNotFoundError / ValueError (UntrustedTargetError among them): from :mod:`zss.loading`.
    """
    from zss.loading import load_for_inference as _load

    over = OmegaConf.to_container(teacher_overrides, resolve=True) if isinstance(teacher_overrides, DictConfig) \
        else teacher_overrides
    norm = None if input_norm is None else tuple(
        OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v for v in input_norm)
    return _load(ckpt_path, classnames=classnames, unseen=unseen, templates=templates, teacher_overrides=over,
                 device=device, input_norm=norm)


def writable_dir(path: Path, key: str) -> Path:
    """Create ``path`` if needed and check that a file can be written there; returns it.

    Raises:
        OSError: one line naming ``key=path`` and the reason (checked before any long work starts).
    """
    import tempfile

    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".zss_write_check."):
            pass
    except OSError as e:
        raise OSError(f"{key}={path}: cannot write there ({type(e).__name__}: {e}); choose a writable folder "
                      f"with {key}=<folder>") from e
    return path


def check_eval_settings(ev, prefix: str = "") -> None:
    """Refuse inference settings that would fail deep inside (or give NaN) before any model is built.

    ``ev``: mapping with any of ``eval_mode``/``mode``, ``eval_crop``/``crop``, ``eval_stride``/``stride``,
    ``eval_crop_batch``/``crop_batch``, ``label_space``, ``seen_bias``, ``amp`` (None = not set).

    Raises:
        ValueError: one line naming ``<prefix><key>=<value>`` and what it must be.
    """
    import math

    from zss.engine.inference import INFERENCE_MODES

    def bad(key, want):
        return ValueError(f"{prefix}{key}={ev[key]!r}: must be {want}")

    for key in set(ev) & {"seen_bias", "alpha"}:
        v = ev[key]
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)):
            raise bad(key, "a finite number" + (" (logit units)" if key == "seen_bias" else ""))
    for key in set(ev) & {"eval_crop_batch", "crop_batch", "short_side", "long_side", "max_pixels"}:
        v = ev[key]
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise bad(key, "an integer >= 1" + (" (crops per forward)" if "batch" in key else " (pixels)"))
    for key in set(ev) & {"eval_crop", "crop", "eval_stride", "stride"}:
        v = ev[key]
        if v is not None and (isinstance(v, (str, int)) or len(v) != 2 or not all(
                isinstance(x, int) and not isinstance(x, bool) and x >= 1 for x in v)):
            raise bad(key, "[h, w], two integers >= 1 (pixels)")
    for key in set(ev) & {"eval_mode", "mode"}:
        if ev[key] is not None and ev[key] not in INFERENCE_MODES:
            raise bad(key, " or ".join(INFERENCE_MODES))
    if ev.get("label_space") is not None and ev["label_space"] not in ("all", "unseen"):
        raise bad("label_space", "all (GZSS) or unseen (ZSS)")
    if ev.get("amp") is not None and ev["amp"] not in ("fp32", "bf16", "fp16"):
        raise bad("amp", "fp32 or bf16")


def eval_tag(settings: dict) -> str:
    """File stem of an evaluation's results:
    ``eval_<benchmark>_<label_space>_<mode>_sb<seen_bias>[_bf16]_<digest>_<split>`` (e.g.
    ``eval_voc20_all_slide_sb0_1a2b3c4d_val``), where ``digest`` is the first 8 hex digits of the SHA-1 of every
    setting (the keys above and the data root, test scale, crop/stride, checkpoint file and step): evaluations
    that can differ in their numbers never share a file; the same evaluation again writes the same file."""
    import hashlib

    amp = "" if settings.get("amp", "fp32") in (None, "fp32") else f"_{settings['amp']}"
    digest = hashlib.sha1(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:8]
    return (f"eval_{settings['benchmark']}_{settings['label_space']}_{settings['eval_mode']}_"
            f"sb{float(settings['seen_bias']):g}{amp}_{digest}_{settings['split']}")


def evaluate_checkpoint(cfg: DictConfig) -> dict:
    """Evaluate ``cfg.ckpt`` with the dataset / inference settings it was trained with (each
    overridable from the command line: ``dataset.root=...``, ``split=train``, ``eval.*``). A dataset
    preset other than the training one (``dataset=context59``...) is evaluated over its own full
    class list (open-vocabulary / cross-dataset), with text embeds from the teacher's text encoder."""
    device = zdist.init_distributed(cfg.device)
    ckpt = load_checkpoint(cfg.ckpt, map_location="cpu")
    out = writable_dir(Path(cfg.out_dir) if cfg.get("out_dir") else Path(cfg.ckpt).parent, "out_dir")  # before work
    tcfg = OmegaConf.create(ckpt["config"])
    ds = OmegaConf.merge(tcfg.dataset, _non_null(cfg.get("dataset")))
    bench = build_benchmark(ds)
    ev = OmegaConf.merge(
        {k: tcfg.trainer[k] for k in ("eval_mode", "eval_crop", "eval_stride", "eval_crop_batch", "label_space",
                                       "seen_bias", "amp")},
        _non_null(cfg.get("eval")),
    )
    check_eval_settings(ev, "eval.")  # before the model is built
    method, ckpt = load_for_inference(
        cfg.ckpt, classnames=list(bench.classes), unseen=list(bench.unseen), templates=templates_for(ds, bench),
        teacher_overrides=_non_null(cfg.get("teacher")), device=device, input_norm=(ds.mean, ds.std),
    )
    _, val_set = build_data(ds, bench, train=False, val_split=cfg.split or ds.val_split)
    amp = torch.bfloat16 if ev.amp == "bf16" else None
    results = evaluate(method, val_set, mode=ev.eval_mode, crop=tuple(ev.eval_crop), stride=tuple(ev.eval_stride),
                       crop_batch=ev.eval_crop_batch, label_space=ev.label_space, seen_bias=ev.seen_bias,
                       amp_dtype=amp, device=device, progress=zdist.is_main())
    if zdist.is_main():
        split = cfg.split or ds.val_split
        settings = {"benchmark": ds.benchmark, "split": split, "label_space": ev.label_space,
                    "eval_mode": ev.eval_mode, "seen_bias": float(ev.seen_bias), "amp": ev.amp or "fp32",
                    "data_root": str(Path(str(ds.root)).expanduser().resolve()),
                    "test_scale": [int(v) for v in ds.test_scale], "eval_crop": [int(v) for v in ev.eval_crop],
                    "eval_stride": [int(v) for v in ev.eval_stride],
                    "checkpoint": str(Path(str(cfg.ckpt)).expanduser().resolve()), "step": ckpt.get("step")}
        results["settings"] = settings
        tag = eval_tag(settings)  # one file set per setting: runs with other settings never overwrite it
        _report(results, out, tag, note=_teacher_note(ckpt.get("teacher") or {}), config=ckpt.get("config"),
                split=split)
        eff_mode = cfg.get("efficiency", "auto")
        if eff_mode:
            from zss.engine.efficiency import efficiency_report, format_efficiency

            eff = efficiency_report(method, image_size=(512, 512), device=device, amp_dtype=amp,
                                    batch_size=int(ev.eval_crop_batch),
                                    measure=eff_mode is True or device.type == "cuda")
            text = format_efficiency(eff, title=f"Efficiency (test-time model, {ds.benchmark})")
            print("\n" + text)
            (out / f"{tag}_efficiency.md").write_text(text + "\n")
            (out / f"{tag}_efficiency.json").write_text(json.dumps(eff, indent=2, default=str))
    zdist.cleanup()
    return results


def clip_es_masks(cfg: DictConfig) -> dict:
    """CLIP-ES pseudo masks for ``cfg.split`` of ``cfg.dataset`` (docs/clip_es.md): PNGs + report."""
    from zss.clip_es.pipeline import format_report, generate_pseudo_masks
    from zss.teachers.clip import FrozenCLIP

    device = zdist.init_distributed(cfg.device)
    bench = build_benchmark(cfg.dataset)
    teacher = build_teacher(cfg, bench)
    if not isinstance(teacher, FrozenCLIP):
        raise ValueError(f"CLIP-ES needs a CLIP teacher (FrozenCLIP), got {type(teacher).__name__} "
                         f"(teacher._target_={cfg.teacher._target_}); use teacher=clip_vitb16 or teacher=tiny_random.")
    ann = _train_ann_dirs(cfg.dataset) if cfg.split == cfg.dataset.get("train_split") else None
    ds = build_dataset(cfg.dataset.benchmark, cfg.dataset.root, split=cfg.split, transform=None,
                       benchmark_split=cfg.dataset.get("split"), ann_dir=ann)
    out_dir = cfg.out_dir or str(Path(cfg.run_root) / "clip_es" / f"{cfg.dataset.name}_{cfg.split}")
    v, c, k = cfg.clip_es, cfg.crf, cfg.cam
    crf_enabled = c.enabled if isinstance(c.enabled, bool) else str(c.enabled)
    report = generate_pseudo_masks(
        teacher, ds, out_dir,
        background_class=v.background_class, synonyms=OmegaConf.to_container(v.synonyms) if v.synonyms else None,
        background_words=list(v.background_words), template=v.template, box_threshold=float(v.box_threshold),
        labels_from=cfg.labels_from, attn_layers=int(k.attn_layers), logit_scale=k.logit_scale,
        pos_interp=k.pos_interp, pair_chunk=int(k.pair_chunk), sinkhorn_rounds=int(cfg.caa.sinkhorn_rounds),
        power_steps=int(cfg.caa.power_steps), eval_alphas=[float(a) for a in cfg.masks.eval_alphas],
        crf=crf_enabled, crf_alpha=float(c.alpha),
        crf_params={n: c[n] for n in ("iters", "pos_xy_std", "pos_w", "bi_xy_std", "bi_rgb_std", "bi_w")},
        crf_color=c.color, confidence=float(c.confidence), mask_alpha=float(cfg.masks.mask_alpha),
        limit=cfg.limit, compare_kmeans=bool(cfg.compare_kmeans), device=device, progress=bool(cfg.progress),
    )
    print("\n" + format_report(report))
    note = _teacher_note(report.get("teacher") or {})
    if note:
        print(f"\nNOTE: {note}")
    return report


def clip_es_main() -> None:
    _run("clip_es", clip_es_masks)


def _teacher_note(ident: dict) -> str | None:
    """What the teacher means for the numbers: None for real pretrained CLIP weights."""
    if ident.get("warning"):
        return ident["warning"]
    if ident and not ident.get("pretrained"):
        return (f"teacher {ident.get('model_name')} has RANDOM weights: the numbers test the machinery only and "
                "are NOT zero-shot results (use teacher.pretrained=<weights file> for a real run)")
    return None


#: Environment variables that show the full traceback of a failed command instead of its one message (README).
DEBUG_ENV = ("ZSS_DEBUG", "HYDRA_FULL_ERROR")


def debug_enabled() -> bool:
    """True when ``ZSS_DEBUG`` or ``HYDRA_FULL_ERROR`` is set to something other than ``""``/``0``."""
    import os

    return any(os.environ.get(k, "") not in ("", "0") for k in DEBUG_ENV)


def user_error_message(err: BaseException) -> str | None:
    """The message to show for an error caused by the user's input, or None for anything else (a bug).

    User errors: ValueError, OSError (missing/unreadable files, permissions), KeyError, FloatingPointError
    (non-finite loss), the teacher-weights errors, a CUDA out-of-memory, and Hydra's InstantiationException
    around one of those or a TypeError (a config key the constructor does not take). A DataLoader worker's
    copy of the error keeps only the original message (not the worker's traceback text).
    """
    from hydra.errors import InstantiationException

    from zss.teachers.clip import TeacherWeightsError

    kinds = (ValueError, OSError, KeyError, FloatingPointError, TeacherWeightsError, torch.OutOfMemoryError)
    if isinstance(err, InstantiationException):
        return str(err) if isinstance(err.__cause__, kinds + (TypeError,)) else None
    if not isinstance(err, kinds):
        return None
    msg = err.args[0] if isinstance(err, KeyError) and err.args and isinstance(err.args[0], str) else str(err)
    if "Original Traceback" in msg:  # re-raised from a DataLoader worker: "...\n<Type>: <message>"
        msg = msg.rsplit(f"\n{type(err).__name__}: ", 1)[-1]
    return msg.strip() or type(err).__name__


def report_user_errors(fn, *args):
    """``fn(*args)``; a user error (:func:`user_error_message`) is printed as ONE message on stderr and the
    process exits with code 1, without a traceback (``ZSS_DEBUG=1`` re-raises it). Other errors propagate.

    Raises:
        SystemExit: code 1 after a user error.
    """
    try:
        return fn(*args)
    except Exception as e:  # noqa: BLE001 - sorted by user_error_message
        msg = user_error_message(e)
        if msg is None or debug_enabled():
            raise
        print(f"zss: error: {msg}\n(set ZSS_DEBUG=1 to see the traceback)", file=sys.stderr, flush=True)
        raise SystemExit(1) from None


def check_override_syntax(args: list[str]) -> None:
    """Parse each ``key=value`` override with Hydra's grammar before Hydra does, so that a value Hydra cannot lex
    (non-ASCII letters ``classes=café``, an apostrophe ``name=it's``) gets one line saying how to quote it.
    Command-line flags (``-m``, ``--cfg`` ...) are left to Hydra.

    Raises:
        ValueError: naming the override and a quoted form Hydra reads.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    parser = OverridesParser.create()
    for a in args:
        if a.startswith("-") or "=" not in a:
            continue
        try:
            parser.parse_overrides([a])
        except OverrideParseException as e:
            key, _, val = a.partition("=")
            quoted = f'{key}=\\"{val}\\"' if "'" in val else f"{key}=\"'{val}'\""
            why = str(e).splitlines()[0].split(":")[0]
            raise ValueError(f"cannot read the override {a!r} ({why}: Hydra's override grammar does not take this "
                             f"value unquoted, e.g. non-ASCII letters or an apostrophe); quote the value, in a shell: "
                             f"{quoted}") from None


def _run(config_name: str, fn) -> None:
    """Hydra entry: ``python scripts/<x>.py key=value ...`` / ``zss-<x> key=value ...``; user errors end in one
    message (:func:`report_user_errors`); ``ZSS_DEBUG=1`` shows Hydra's full traceback instead. Log lines go
    through tqdm (:func:`zss.utils.progress.console_logging`) so that they do not break a progress bar."""
    import os

    if debug_enabled():
        os.environ["HYDRA_FULL_ERROR"] = "1"
    report_user_errors(check_override_syntax, sys.argv[1:])

    @hydra.main(config_path=CONFIG_DIR, config_name=config_name, version_base="1.3")
    def _main(cfg: DictConfig) -> None:
        with console_logging():  # Hydra's console handler prints above the progress bars
            report_user_errors(fn, cfg)

    _main()


def train_main() -> None:
    _run("train", train)


def eval_main() -> None:
    _run("eval", evaluate_checkpoint)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(train_main())
