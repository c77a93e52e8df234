"""Argparse user commands shipped as console entry points (pyproject ``[project.scripts]``).

``zss-teach-clip``, ``zss-aggregate``, ``zss-plot``, ``zss-prepare-cocostuff`` and ``zss-prepare-context`` call
the functions below; ``scripts/<name>.py`` are thin wrappers around the same functions, so a checkout and an
installed package behave alike. Each returns the exit code (0 = success). The Hydra commands (train, eval,
predict, clip-es-masks) are in :mod:`zss.cli` / :mod:`zss.cli_predict`, the dataset checker in
:mod:`zss.data.check`. This module imports no Hydra; heavy imports happen inside the functions.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
import typing
from pathlib import Path

__all__ = ["teach_clip_main", "aggregate_main", "plot_main", "prepare_cocostuff_main", "prepare_context_main"]


def _one_line_errors(fn):
    """Wrap a command: a user error (:func:`zss.cli.user_error_message`) ends in ONE ``zss: error:`` line on
    stderr and exit code 1, as for the Hydra commands (``ZSS_DEBUG=1`` shows the traceback); Hydra is imported
    only when an error is being sorted."""
    import functools

    @functools.wraps(fn)
    def run(argv: list[str] | None = None) -> int:
        try:
            return fn(argv)
        except Exception as e:  # noqa: BLE001 - sorted by user_error_message
            from zss.cli import debug_enabled, user_error_message

            msg = user_error_message(e)
            if msg is None or debug_enabled():
                raise
            print(f"zss: error: {msg}\n(set ZSS_DEBUG=1 to see the traceback)", file=sys.stderr, flush=True)
            return 1
    return run

# ------------------------------------------------------------------------------------------ teach-clip
TEACH_CLIP_DOC = """Build (or reuse) the label-taught CLIP and print its cache path and quality (docs/taught_clip.md).

The label-taught CLIP is a small open_clip CLIP taught on the bundled images' labels (all classes, the
unseen ones included). It is a MECHANISM TOOL, NOT A ZERO-SHOT RESULT: it memorises these images.

    zss-teach-clip                      # default recipe, seed 0 -> runs/teachers/taught_clip_s0_<key>
    zss-teach-clip --seed 1 --steps 800 # other settings -> another cache dir
    zss-teach-clip --rebuild            # teach again even if cached
    zss-teach-clip --preset world       # the synthetic world's teacher: taught on its teach split only,
                                        # scored on its held-out test split (docs/world.md)

(``python scripts/teach_clip.py ...`` is the same command in a checkout.)
Every recipe key of zss.tools.taught_clip.TaughtClipSettings is a flag (--width, --lr, --dense-modes, ...).
Same settings reuse the cached files; the run then only re-measures the quality (seconds).
Run from the folder that holds data/ (relative paths: data/..., runs/teachers), like zss-train.
"""


def _bool(v: str) -> bool:
    if v.lower() in ("1", "true", "yes"):
        return True
    if v.lower() in ("0", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {v!r}")


def _teach_clip_parser() -> argparse.ArgumentParser:
    from zss.tools.taught_clip import DEFAULT_ROOT, TaughtClipSettings

    ap = argparse.ArgumentParser(description=TEACH_CLIP_DOC, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default=DEFAULT_ROOT, help=f"cache root (default {DEFAULT_ROOT})")
    ap.add_argument("--device", default="cpu", help="training device: cpu | cuda | auto (default cpu)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    ap.add_argument("--rebuild", action="store_true", help="teach again even when a complete cache exists")
    ap.add_argument("--log-every", type=int, default=25, help="steps between progress lines")
    ap.add_argument("--no-eval", action="store_true", help="skip the quality measurement")
    ap.add_argument("--preset", choices=["voc", "world"], default="voc",
                    help="voc: the bundled VOC images (default); world: the synthetic world (zss-make-world), "
                         "zss.tools.taught_clip.WORLD_PRESET; explicit flags override the preset")
    ap.add_argument("--eval-splits", nargs="+", default=None,
                    help="splits scored for the quality table (default: the taught splits; --preset world: test)")
    ap.add_argument("--crop-batches", type=int, default=20,
                    help="batches of fresh taught crops for the final crop patch accuracy (default 20)")
    hints = typing.get_type_hints(TaughtClipSettings)
    for f in dataclasses.fields(TaughtClipSettings):  # one flag per recipe key; unset flags keep the default
        flag = "--" + f.name.replace("_", "-")
        default, hint = f.default, str(hints[f.name])
        kw: dict = {"default": argparse.SUPPRESS}
        if isinstance(default, tuple):
            kw.update(type=type(default[0]) if default else str, nargs="+",
                      help=f"default {' '.join(map(str, default))}")
        elif isinstance(default, bool):
            kw.update(type=_bool, help=f"true|false, default {default}")
        elif default is None or "None" in hint:
            base = float if "float" in hint else int
            kw.update(type=lambda v, b=base: None if v.lower() in ("none", "null") else b(v),
                      help=f"default {default} (none: off / all)")
        else:
            kw.update(type=type(default), help=f"default {default}")
        ap.add_argument(flag, **kw)
    return ap


@_one_line_errors
def teach_clip_main(argv: list[str] | None = None) -> int:
    """``zss-teach-clip`` / ``python scripts/teach_clip.py``: see :data:`TEACH_CLIP_DOC`. Returns the exit code."""
    ap = _teach_clip_parser()
    args = ap.parse_args(argv)
    import torch

    from zss.data.classes import get_benchmark
    from zss.tools.taught_clip import (
        INFO_FILE,
        WEIGHTS_FILE,
        WORLD_PRESET,
        TaughtClipSettings,
        ensure_taught_clip,
        evaluate_crop_patch_acc,
        evaluate_dense_quality,
        format_quality,
        load_taught_clip,
        quality_dataset,
        taught_clip_dir,
    )

    torch.set_num_threads(max(1, args.threads))
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(TaughtClipSettings) if hasattr(args, f.name)}
    if args.preset == "world":
        given = {**WORLD_PRESET, **given}
    eval_splits = args.eval_splits or (["test"] if args.preset == "world" else None)
    try:
        settings = TaughtClipSettings(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in given.items()})
    except ValueError as e:  # a recipe value out of range: argparse's usage error (exit 2) naming the key
        ap.error(str(e))
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"

    t0 = time.time()
    cached = (taught_clip_dir(args.root, settings) / WEIGHTS_FILE).is_file() and not args.rebuild
    try:  # the data first (when it is needed): one message naming --data-root, before any teaching
        if not (cached and args.no_eval):
            quality_dataset(settings)
        if not args.no_eval and eval_splits:
            quality_dataset(settings, eval_splits)
    except FileNotFoundError as e:  # build_dataset's message names the Hydra key; this command's flag is --data-root
        raise FileNotFoundError(str(e).replace("dataset.root=", "--data-root ")) from e
    out_dir, built = ensure_taught_clip(settings, root=args.root, device=device, rebuild=args.rebuild,
                                        log_every=args.log_every, log=lambda m: print(m, flush=True))
    print(f"teach_clip: {'built' if built else 'reused'} {out_dir} ({time.time() - t0:.0f} s)")
    info_path = out_dir / INFO_FILE
    info = json.loads(info_path.read_text())
    if not args.no_eval:
        bench = get_benchmark(settings.benchmark)
        ds = quality_dataset(settings, eval_splits)
        scored = " + ".join(eval_splits or settings.splits)
        held_out = eval_splits is not None and not set(eval_splits) & set(settings.splits)
        quality = {}
        for mode in settings.dense_modes + tuple(m for m in ("maskclip", "tokens") if m not in settings.dense_modes):
            teacher = load_taught_clip(out_dir, dense_mode=mode)
            q = evaluate_dense_quality(teacher, ds, bench.classes, bench.templates, bench.unseen,
                                       min_labelled=settings.min_labelled)
            q["crop_patch_acc"] = evaluate_crop_patch_acc(teacher, settings, num_batches=args.crop_batches)["patch_acc"]
            quality[mode] = q
        info["quality" if not held_out else f"quality_{'+'.join(eval_splits)}"] = quality
        info_path.write_text(json.dumps(info, indent=2, default=float) + "\n")
        print(f"\nquality on split {scored!r} ({len(ds)} images, "
              f"{'HELD OUT: never taught' if held_out else 'the TAUGHT images'}):")
        print(format_quality(quality, info.get("train_patch_acc_last50"), held_out=held_out,
                             short_side=min(settings.eval_scale)))
    if "wall_s" in info:
        print(f"\nteaching wall time: {info['wall_s']:.0f} s on {info.get('device')} "
              f"({info.get('torch_threads')} thread(s))")
    print(f"\nweights: {out_dir / WEIGHTS_FILE}")
    experiment, teacher = ("world", "world_clip") if args.preset == "world" else ("demo", "taught_clip")
    print(f"use it:  python scripts/train.py experiment={experiment} teacher={teacher} "
          f"teacher.pretrained={out_dir / WEIGHTS_FILE}")
    print(f"(configs/teacher/{teacher}.yaml already points at the default build; the override above is needed "
          "only for non-default settings, together with their teacher.model_cfg.)")
    return 0


# ------------------------------------------------------------------------------------------ aggregate
AGGREGATE_DOC = """Aggregate final metrics over runs: one markdown row per run plus mean ± sample std (n shown).

    python scripts/aggregate.py runs/demo_clip_zss/* [--md out.md] [--json out.json]
    python scripts/aggregate.py multirun/2025-01-01 --recursive

A run dir is any directory holding final_results.json (preferred) or metrics.jsonl (last "val" record).
Glob patterns may be quoted (expanded here). null / NaN values are excluded from a metric's mean and n.
(installed package: ``zss-aggregate`` takes the same arguments.)
"""


@_one_line_errors
def aggregate_main(argv: list[str] | None = None) -> int:
    """``zss-aggregate`` / ``python scripts/aggregate.py``: see :data:`AGGREGATE_DOC`. Returns the exit code."""
    from zss.engine.report import METRICS, RESULTS_FILE, aggregate

    p = argparse.ArgumentParser(description=AGGREGATE_DOC, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="run directories or glob patterns")
    p.add_argument("--recursive", "-r", action="store_true", help="search subdirectories for run dirs")
    p.add_argument("--metrics", nargs="+", default=list(METRICS), help="metric keys (default: %(default)s)")
    p.add_argument("--results-file", default=RESULTS_FILE, help="final results file name (default: %(default)s)")
    p.add_argument("--digits", type=int, default=2, help="decimals in the table")
    p.add_argument("--md", help="also write the markdown table to this file")
    p.add_argument("--json", help="also write rows + summary as JSON to this file")
    a = p.parse_args(argv)
    table = aggregate(a.runs, metrics=a.metrics, recursive=a.recursive, results_file=a.results_file)
    unknown = [m for m in a.metrics if m not in METRICS and table.n[m] == 0]
    if unknown:
        raise ValueError(f"--metrics {unknown[0]}: no run has this metric (the usual ones: {', '.join(METRICS)}); "
                         f"check its spelling")
    md = table.to_markdown(a.digits)
    print(md)
    for d, why in table.skipped:
        print(f"skipped {d}: {why}", file=sys.stderr)
    if a.md:
        Path(a.md).parent.mkdir(parents=True, exist_ok=True)
        Path(a.md).write_text(md + "\n")
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(table.to_dict(), indent=2, allow_nan=False) + "\n")
    return 0


# ------------------------------------------------------------------------------------------ plot
PLOT_DOC = """Plot a run's training curves (train losses, lr, val mIoU(S)/mIoU(U)/hIoU) from its metrics.jsonl.

    python scripts/plot.py runs/demo_clip_zss/2025-01-01_12-00-00 [--out curves.png]

Needs matplotlib (pip install 'zss[plot]'). Default output: <run_dir>/curves.png.
(installed package: ``zss-plot`` takes the same arguments.)
"""


@_one_line_errors
def plot_main(argv: list[str] | None = None) -> int:
    """``zss-plot`` / ``python scripts/plot.py``: see :data:`PLOT_DOC`. Returns the exit code."""
    from zss.engine.report import plot_metrics

    p = argparse.ArgumentParser(description=PLOT_DOC, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", help="run directory holding metrics.jsonl")
    p.add_argument("--out", default=None, help="output PNG (default: <run_dir>/curves.png)")
    p.add_argument("--dpi", type=int, default=110)
    a = p.parse_args(argv)
    out = plot_metrics(a.run_dir, a.out, dpi=a.dpi)
    print(out)
    return 0


# ------------------------------------------------------------------------------------------ prepare-cocostuff
PREPARE_COCOSTUFF_DOC = """Convert COCO-Stuff 164K stuffthingmaps (182 raw ids) to 171-class ``*_labelTrainIds.png`` (docs/protocol.md "Benchmarks").

    python scripts/prepare_cocostuff.py --raw data/stuffthingmaps_trainval2017 --out data/coco_stuff164k --workers 8

Writes ``<out>/annotations/{train2017,val2017}/<id>_labelTrainIds.png`` (8-bit, 0..170, 255 = ignore).
Put the COCO 2017 images in ``<out>/images/{train2017,val2017}/`` yourself (unzip train2017.zip/val2017.zip).
Existing outputs are skipped unless ``--overwrite``; counts are printed either way.
(installed package: ``zss-prepare-cocostuff`` takes the same arguments.)
"""


@_one_line_errors
def prepare_cocostuff_main(argv: list[str] | None = None) -> int:
    """``zss-prepare-cocostuff`` / ``python scripts/prepare_cocostuff.py``: see :data:`PREPARE_COCOSTUFF_DOC`. Returns the exit code."""
    from zss.data.convert import convert_cocostuff

    p = argparse.ArgumentParser(description=PREPARE_COCOSTUFF_DOC, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--raw", required=True, help="stuffthingmaps_trainval2017 folder (with train2017/ val2017/)")
    p.add_argument("--out", required=True, help="coco_stuff164k dataset root (annotations/ is written there)")
    p.add_argument("--splits", nargs="+", default=["train2017", "val2017"], help="split folders to convert")
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="worker processes")
    p.add_argument("--overwrite", action="store_true", help="replace existing *_labelTrainIds.png files")
    a = p.parse_args(argv)
    stats = convert_cocostuff(a.raw, a.out, splits=a.splits, workers=a.workers, overwrite=a.overwrite)
    for split, s in stats.items():
        print(f"{split}: {s}")
    missing = [s for s in a.splits if s not in stats]
    if missing:
        print(f"note: split folders not found under {a.raw}: {missing}", file=sys.stderr)
    return 0


# ------------------------------------------------------------------------------------------ prepare-context
PREPARE_CONTEXT_DOC = """Convert official PASCAL Context annotations (459-class .mat) to context60 PNGs + split files (docs/protocol.md "Benchmarks").

    python scripts/prepare_context.py --mat-dir data/trainval --labels data/labels.txt \\
        --voc2010 data/VOCdevkit/VOC2010 \\
        --train-list data/VOCdevkit/VOC2010/ImageSets/Main/train.txt \\
        --val-list data/VOCdevkit/VOC2010/ImageSets/Main/val.txt [--also-59] [--workers 8]

Writes ``<voc2010>/SegmentationClassContext/<id>.png`` (0 = background, 1..59 = context59 classes; the
``context60`` preset reads it as is, ``context59`` with reduce_zero_label) and
``<voc2010>/ImageSets/SegmentationContext/{train,val}.txt``. ``--also-59`` also writes
``SegmentationClassContext59/`` with 0..58 and 255. The 59 classes are picked by name from labels.txt
(see ``zss.data.convert.CONTEXT59_ALIASES``). Existing PNGs are skipped unless ``--overwrite``.
(installed package: ``zss-prepare-context`` takes the same arguments.)
"""


@_one_line_errors
def prepare_context_main(argv: list[str] | None = None) -> int:
    """``zss-prepare-context`` / ``python scripts/prepare_context.py``: see :data:`PREPARE_CONTEXT_DOC`. Returns the exit code."""
    from zss.data.convert import convert_context

    p = argparse.ArgumentParser(description=PREPARE_CONTEXT_DOC, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mat-dir", required=True, help="official 'trainval' folder of <id>.mat files")
    p.add_argument("--labels", required=True, help="official labels.txt ('<id>: <name>', 459 lines)")
    p.add_argument("--voc2010", required=True, help="VOCdevkit/VOC2010 root; outputs are written under it")
    p.add_argument("--train-list", required=True, help="train image ids, one per line")
    p.add_argument("--val-list", required=True, help="val image ids, one per line")
    p.add_argument("--also-59", action="store_true", help="also write SegmentationClassContext59 (0..58, 255)")
    p.add_argument("--ann-dir", default="SegmentationClassContext", help="context60 output folder under --voc2010")
    p.add_argument("--ann-dir-59", default="SegmentationClassContext59", help="--also-59 output folder")
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="worker processes")
    p.add_argument("--overwrite", action="store_true", help="replace existing PNGs and differing split files")
    p.add_argument("--allow-missing", action="store_true", help="drop listed ids that have no .mat (else error)")
    a = p.parse_args(argv)
    stats = convert_context(
        a.mat_dir, a.labels, a.voc2010, split_lists={"train": a.train_list, "val": a.val_list},
        ann_dir=a.ann_dir, also_59=a.also_59, ann_dir_59=a.ann_dir_59, workers=a.workers,
        overwrite=a.overwrite, allow_missing=a.allow_missing,
    )
    for split, s in stats.items():
        print(f"{split}: {s}")
        for note in s.extra:
            print(f"  {note}")
    return 0
