"""``zss-teach-clip`` / ``scripts/teach_clip.py``: build (or reuse) the label-taught CLIP
(:mod:`zss.tools.taught_clip`) and print its cache path and quality. Hydra-free.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
import typing

from zss.cli.errors import one_line_errors

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
    ap.add_argument(
        "--preset",
        choices=["voc", "world"],
        default="voc",
        help="voc: the bundled VOC images (default); world: the synthetic world (zss-make-world), "
        "zss.tools.taught_clip.WORLD_PRESET; explicit flags override the preset",
    )
    ap.add_argument(
        "--eval-splits",
        nargs="+",
        default=None,
        help="splits scored for the quality table (default: the taught splits; --preset world: test)",
    )
    ap.add_argument(
        "--crop-batches",
        type=int,
        default=20,
        help="batches of fresh taught crops for the final crop patch accuracy (default 20)",
    )
    hints = typing.get_type_hints(TaughtClipSettings)
    for f in dataclasses.fields(TaughtClipSettings):  # one flag per recipe key; unset flags keep the default
        flag = "--" + f.name.replace("_", "-")
        default, hint = f.default, str(hints[f.name])
        kw: dict = {"default": argparse.SUPPRESS}
        if isinstance(default, tuple):
            kw.update(
                type=type(default[0]) if default else str, nargs="+", help=f"default {' '.join(map(str, default))}"
            )
        elif isinstance(default, bool):
            kw.update(type=_bool, help=f"true|false, default {default}")
        elif default is None or "None" in hint:
            base = float if "float" in hint else int
            kw.update(
                type=lambda v, b=base: None if v.lower() in ("none", "null") else b(v),
                help=f"default {default} (none: off / all)",
            )
        else:
            kw.update(type=type(default), help=f"default {default}")
        ap.add_argument(flag, **kw)
    return ap


@one_line_errors
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
    out_dir, built = ensure_taught_clip(
        settings,
        root=args.root,
        device=device,
        rebuild=args.rebuild,
        log_every=args.log_every,
        log=lambda m: print(m, flush=True),
    )
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
            q = evaluate_dense_quality(
                teacher, ds, bench.classes, bench.templates, bench.unseen, min_labelled=settings.min_labelled
            )
            q["crop_patch_acc"] = evaluate_crop_patch_acc(teacher, settings, num_batches=args.crop_batches)["patch_acc"]
            quality[mode] = q
        info["quality" if not held_out else f"quality_{'+'.join(eval_splits)}"] = quality
        info_path.write_text(json.dumps(info, indent=2, default=float) + "\n")
        print(
            f"\nquality on split {scored!r} ({len(ds)} images, "
            f"{'HELD OUT: never taught' if held_out else 'the TAUGHT images'}):"
        )
        print(
            format_quality(
                quality, info.get("train_patch_acc_last50"), held_out=held_out, short_side=min(settings.eval_scale)
            )
        )
    if "wall_s" in info:
        print(
            f"\nteaching wall time: {info['wall_s']:.0f} s on {info.get('device')} "
            f"({info.get('torch_threads')} thread(s))"
        )
    print(f"\nweights: {out_dir / WEIGHTS_FILE}")
    experiment, teacher = ("world", "world_clip") if args.preset == "world" else ("demo", "taught_clip")
    print(
        f"use it:  python scripts/train.py experiment={experiment} teacher={teacher} "
        f"teacher.pretrained={out_dir / WEIGHTS_FILE}"
    )
    print(
        f"(configs/teacher/{teacher}.yaml already points at the default build; the override above is needed "
        "only for non-default settings, together with their teacher.model_cfg.)"
    )
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(teach_clip_main())
