"""Helpers the Hydra commands share (train, eval, clip-es-masks): the composition root.

Only the command layer (:mod:`zss.cli`) imports Hydra / OmegaConf. Every object is built here from the composed
config with plain values and passed on; nothing below this layer sees a config object. Importing this module
registers the trainer schema in Hydra's ConfigStore (:func:`register_configs`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import hydra
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from zss.cli.errors import check_override_syntax, debug_enabled, report_user_errors
from zss.data.classes import get_benchmark
from zss.data.dataset import build_dataset
from zss.data.transforms import build_test_transform, build_train_transform
from zss.engine.metrics import format_table, to_json
from zss.engine.trainer import (
    TrainConfig,
    checkpoint_config,
    config_changes,
    find_resume,
    format_changes,
    new_run_dir,
)
from zss.loading import METHOD_BOOKKEEPING
from zss.methods.base import Method
from zss.resources import config_dir
from zss.utils import dist as zdist
from zss.utils.progress import console_logging

#: The shipped configs: installed package data (zss/configs) or the checkout's configs/ (zss.resources).
CONFIG_DIR = config_dir()


def build_benchmark(ds: DictConfig):
    """The :class:`zss.data.classes.Benchmark` (class names, unseen ids, templates) of a ``dataset`` node."""
    return get_benchmark(ds.benchmark, ds.get("split"))


def build_data(ds: DictConfig, bench, train: bool = True, val_split: str | None = None):
    """(train_set, val_set) from the dataset config group."""
    mean, std = tuple(ds.mean), tuple(ds.std)
    val_tf = build_test_transform(scale=tuple(ds.test_scale), mean=mean, std=std)
    ann = train_ann_dirs(ds) if val_split is not None and val_split == ds.get("train_split") else None
    val_set = build_dataset(
        ds.benchmark,
        ds.root,
        split=val_split or ds.val_split,
        hide_unseen=False,
        transform=val_tf,
        benchmark_split=ds.get("split"),
        ann_dir=ann,
    )
    val_set.mean, val_set.std = mean, std
    train_set = None
    if train:
        tf = build_train_transform(
            crop_size=tuple(ds.crop_size),
            scale=tuple(ds.scale),
            ratio_range=tuple(ds.ratio_range),
            cat_max_ratio=ds.cat_max_ratio,
            flip_prob=ds.flip_prob,
            photometric=ds.photometric,
            mean=mean,
            std=std,
        )
        try:
            train_set = build_dataset(
                ds.benchmark,
                ds.root,
                split=ds.train_split,
                hide_unseen=ds.hide_unseen,
                transform=tf,
                benchmark_split=ds.get("split"),
                ann_dir=train_label_dir(ds) or train_ann_dirs(ds),
            )
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


def teacher_target(teacher_cfg: DictConfig):
    """The class/function named by ``teacher._target_`` (imported, not called)."""
    from hydra.utils import get_object

    return get_object(str(teacher_cfg._target_))


def check_teacher_allowed(cfg: DictConfig) -> None:
    """Refuse to TRAIN with a teacher that reads the ground truth (``needs_full_label``, the OracleTeacher)
    unless the top-level ``allow_oracle_teacher`` is true (the demo experiments set it).

    Raises:
        ValueError: one line naming the teacher, the dataset and the flag.
    """
    target = teacher_target(cfg.teacher)
    if getattr(target, "needs_full_label", False) and not cfg.get(ORACLE_FLAG, False):
        raise ValueError(
            f"teacher {cfg.teacher._target_} reads the full ground-truth label (unseen classes included), so "
            f"its numbers are NOT zero-shot results; refusing to train it on dataset={cfg.dataset.name}. Pass "
            f"{ORACLE_FLAG}=true to train with it anyway (the demo experiments set it), or choose a CLIP teacher "
            f"(teacher=clip_vitb16)."
        )


def train_ann_dirs(ds: DictConfig) -> list | None:
    """``dataset.train_ann_dirs``: one label folder per ``+``-joined part of ``dataset.train_split``, relative to
    ``dataset.root`` (null entries: the layout's), e.g. VOC-Aug ``[SegmentationClass, SegmentationClassAug]``;
    None when unset."""
    dirs = ds.get("train_ann_dirs")
    return None if dirs is None else [None if d is None else str(d) for d in dirs]


def train_label_dir(ds: DictConfig) -> str | None:
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
            raise ValueError(
                f"teacher.{key}={list(have)} differs from dataset.{key[6:]}={want}: images are "
                f"normalised with dataset.mean/std and the teacher converts from them itself; remove "
                f"teacher.{key}"
            )
    params = inspect.signature(teacher_target(cfg.teacher)).parameters.values()
    if not any(p.name == "input_mean" or p.kind is p.VAR_KEYWORD for p in params):
        raise ValueError(
            f"teacher._target_={cfg.teacher._target_} takes no input_mean/input_std, so it cannot be "
            f"told that images are normalised with dataset.mean/std; give it those arguments"
        )
    kwargs.update(norm)
    return instantiate(cfg.teacher, **kwargs)


def build_student(model_cfg: DictConfig, embed_dim: int, mean=None, std=None):
    """The Student of ``model_cfg``; ``mean``/``std`` (``dataset.mean/std``) are the images' normalisation it
    converts from (``Student(input_mean, input_std)``; None keeps the Student's default, CLIP's)."""
    kwargs = {"embed_dim": embed_dim}
    if mean is not None:
        kwargs.update(input_mean=[float(v) for v in mean], input_std=[float(v) for v in std])
    return instantiate(model_cfg, **kwargs)


def method_class(method_cfg: DictConfig):
    """The class named by ``method._target_`` (imported, not called)."""
    from hydra.utils import get_object

    return get_object(str(method_cfg._target_))


def uses_student(method_cfg: DictConfig) -> bool:
    """False for methods that build their model from the teacher (``uses_student = False``: CLIP-RC, ZegCLIP)."""
    return bool(getattr(method_class(method_cfg), "uses_student", True))


def build_method(method_cfg: DictConfig, **kwargs):
    """The method of a ``method`` config node: its class (``_target_``, from the allow-list) built with ``from_flat``
    from the node's flat keys (bookkeeping keys dropped, interpolations resolved) plus ``kwargs`` (student, teacher,
    classes...). See :meth:`zss.methods.base.Method.from_flat`; a class without it is called directly."""
    cls = method_class(method_cfg)
    drop = ("_target_", "_convert_", "_recursive_", *METHOD_BOOKKEEPING)
    settings = {k: v for k, v in OmegaConf.to_container(method_cfg, resolve=True).items() if k not in drop}
    return getattr(cls, "from_flat", cls)(**settings, **kwargs)


def templates_for(ds: DictConfig, bench) -> list[str]:
    """The prompt templates: the ``dataset.templates`` override where set, else the benchmark's."""
    return list(ds.templates) if ds.get("templates") else list(bench.templates)


def non_null(node) -> dict:
    """The keys of an override node that were actually set (not null)."""
    if node is None:
        return {}
    return {k: v for k, v in OmegaConf.to_container(node, resolve=True).items() if v is not None}


def resolve_dirs(cfg: DictConfig, config: dict | None = None) -> tuple[Path, Path | None]:
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
            print(
                f"zss: resume=auto: no run of {cfg.name} under {cfg.run_root} has this config (newest differs in "
                f"{format_changes(config_changes(checkpoint_config(others), config), limit=3)}); starting a new "
                f"run",
                flush=True,
            )
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
                f"with the new values."
            )
        if changes and zdist.is_main():
            print(f"zss: NOTE resume_allow_changes=true: continuing {ckpt} with {format_changes(changes)}", flush=True)
    if ckpt is not None:
        return ckpt.parent, ckpt
    run_dir = new_run_dir(cfg.run_root, cfg.name) if zdist.is_main() else None
    if zdist.is_dist():
        obj = [str(run_dir) if run_dir else None]
        torch.distributed.broadcast_object_list(obj, src=0)
        run_dir = Path(obj[0])
    return Path(run_dir), None


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
        raise ValueError(
            f"trainer.{unknown[0]} is not a trainer key (valid: {', '.join(known)}; "
            f"configs/trainer/default.yaml): fix its spelling or drop the override"
        )
    return TrainConfig(**values)


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


def write_report(
    results: dict,
    out_dir: Path,
    tag: str,
    note: str | None = None,
    config: dict | None = None,
    split: str | None = None,
) -> None:
    """Print and write ``<tag>_results.{md,json}``; with the run's ``config``, both name the preset that produced
    them and the .md carries the matching published rows with deltas (zss/published.py)."""
    table = format_table(results)
    if config is not None:
        from zss.published import format_comparison, run_settings

        settings = run_settings(config)
        results["preset"], results["run_settings"] = settings["preset"], settings
        table = (
            f"preset: method={settings['preset']} dataset={settings['dataset']} ({settings['setting']})\n\n"
            + table
            + "\n\n"
            + format_comparison(results, settings, split)
        )
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

    over = (
        OmegaConf.to_container(teacher_overrides, resolve=True)
        if isinstance(teacher_overrides, DictConfig)
        else teacher_overrides
    )
    norm = (
        None
        if input_norm is None
        else tuple(OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v for v in input_norm)
    )
    return _load(
        ckpt_path,
        classnames=classnames,
        unseen=unseen,
        templates=templates,
        teacher_overrides=over,
        device=device,
        input_norm=norm,
    )


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
        raise OSError(
            f"{key}={path}: cannot write there ({type(e).__name__}: {e}); choose a writable folder with {key}=<folder>"
        ) from e
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
        if v is not None and (
            isinstance(v, (str, int))
            or len(v) != 2
            or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 1 for x in v)
        ):
            raise bad(key, "[h, w], two integers >= 1 (pixels)")
    for key in set(ev) & {"eval_mode", "mode"}:
        if ev[key] is not None and ev[key] not in INFERENCE_MODES:
            raise bad(key, " or ".join(INFERENCE_MODES))
    if ev.get("label_space") is not None and ev["label_space"] not in ("all", "unseen"):
        raise bad("label_space", "all (GZSS) or unseen (ZSS)")
    if ev.get("amp") is not None and ev["amp"] not in ("fp32", "bf16", "fp16"):
        raise bad("amp", "fp32 or bf16")


def teacher_note(ident: dict) -> str | None:
    """What the teacher means for the numbers: None for real pretrained CLIP weights."""
    if ident.get("warning"):
        return ident["warning"]
    if ident and not ident.get("pretrained"):
        return (
            f"teacher {ident.get('model_name')} has RANDOM weights: the numbers test the machinery only and "
            "are NOT zero-shot results (use teacher.pretrained=<weights file> for a real run)"
        )
    return None


def run_hydra(config_name: str, fn) -> None:
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
