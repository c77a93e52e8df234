#!/usr/bin/env python
"""Build (or reuse) the label-taught CLIP and print its cache path and quality (docs/taught_clip.md).

The label-taught CLIP is a small open_clip CLIP taught on the bundled images' labels (all classes, the
unseen ones included). It is a MECHANISM TOOL, NOT A ZERO-SHOT RESULT: it memorises these images.

    python scripts/teach_clip.py                      # default recipe, seed 0 -> runs/teachers/taught_clip_s0_<key>
    python scripts/teach_clip.py --seed 1 --steps 800 # other settings -> another cache dir
    python scripts/teach_clip.py --rebuild            # teach again even if cached

Every recipe key of zss.teachers.taught.TaughtClipSettings is a flag (--width, --lr, --dense-modes, ...).
Same settings reuse the cached files; the run then only re-measures the quality (seconds).
Run from the repository root (relative paths: data/..., runs/teachers), like scripts/train.py.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
import typing


def _bool(v: str) -> bool:
    if v.lower() in ("1", "true", "yes"):
        return True
    if v.lower() in ("0", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {v!r}")


def _parser():
    from zss.teachers.taught import DEFAULT_ROOT, TaughtClipSettings

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default=DEFAULT_ROOT, help=f"cache root (default {DEFAULT_ROOT})")
    ap.add_argument("--device", default="cpu", help="training device: cpu | cuda | auto (default cpu)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    ap.add_argument("--rebuild", action="store_true", help="teach again even when a complete cache exists")
    ap.add_argument("--log-every", type=int, default=25, help="steps between progress lines")
    ap.add_argument("--no-eval", action="store_true", help="skip the quality measurement")
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


def main(argv: list[str] | None = None) -> int:
    ap = _parser()
    args = ap.parse_args(argv)
    import torch

    from zss.data.classes import get_benchmark
    from zss.teachers.taught import (
        TaughtClipSettings,
        ensure_taught_clip,
        evaluate_crop_patch_acc,
        evaluate_dense_quality,
        format_quality,
        load_taught_clip,
        quality_dataset,
        INFO_FILE,
        WEIGHTS_FILE,
    )

    torch.set_num_threads(max(1, args.threads))
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(TaughtClipSettings) if hasattr(args, f.name)}
    try:
        settings = TaughtClipSettings(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in given.items()})
    except ValueError as e:  # a recipe value out of range: argparse's usage error (exit 2) naming the key
        ap.error(str(e))
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"

    t0 = time.time()
    out_dir, built = ensure_taught_clip(settings, root=args.root, device=device, rebuild=args.rebuild,
                                        log_every=args.log_every, log=lambda m: print(m, flush=True))
    print(f"teach_clip: {'built' if built else 'reused'} {out_dir} ({time.time() - t0:.0f} s)")
    info_path = out_dir / INFO_FILE
    info = json.loads(info_path.read_text())
    if not args.no_eval:
        bench = get_benchmark(settings.benchmark)
        ds = quality_dataset(settings)
        quality = {}
        for mode in settings.dense_modes + tuple(m for m in ("maskclip", "tokens") if m not in settings.dense_modes):
            teacher = load_taught_clip(out_dir, dense_mode=mode)
            q = evaluate_dense_quality(teacher, ds, bench.classes, bench.templates, bench.unseen,
                                       min_labelled=settings.min_labelled)
            q["crop_patch_acc"] = evaluate_crop_patch_acc(teacher, settings, num_batches=args.crop_batches)["patch_acc"]
            quality[mode] = q
        info["quality"] = quality
        info_path.write_text(json.dumps(info, indent=2, default=float) + "\n")
        print()
        print(format_quality(quality, info.get("train_patch_acc_last50")))
    if "wall_s" in info:
        print(f"\nteaching wall time: {info['wall_s']:.0f} s on {info.get('device')} "
              f"({info.get('torch_threads')} thread(s))")
    print(f"\nweights: {out_dir / WEIGHTS_FILE}")
    print(f"use it:  python scripts/train.py experiment=demo teacher=taught_clip "
          f"teacher.pretrained={out_dir / WEIGHTS_FILE}")
    print("(configs/teacher/taught_clip.yaml already points at the default build; the override above is needed "
          "only for non-default settings, together with their teacher.model_cfg.)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
