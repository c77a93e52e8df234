"""``zss-make-world`` / ``scripts/make_world.py``: write the synthetic zero-shot world
(:mod:`zss.data.synthetic` does the work). Hydra-free.
"""

from __future__ import annotations

import argparse
import os
import sys

from zss.data.synthetic import WORLD_UNSEEN_SPLITS, WorldSettings, make_world

MAKE_WORLD_DOC = """Write the synthetic zero-shot world (docs/world.md) in the PASCAL VOC layout.

    zss-make-world                         # data/world, the default world (about 1 minute on 2 cores)
    zss-make-world --out data/world_s1 --seed 1 --unseen texture
    python scripts/train.py experiment=world dataset.root=data/world

The world is deterministic for its arguments; an existing world with the same arguments is kept.
"""


def make_world_main(argv: list[str] | None = None) -> int:
    """Console entry ``zss-make-world``: flags mirror :class:`WorldSettings`. Returns the exit code."""
    d = WorldSettings()
    ap = argparse.ArgumentParser(
        prog="zss-make-world", description=MAKE_WORLD_DOC, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--out", default="data/world", help="dataset root to write (default data/world)")
    ap.add_argument("--seed", type=int, default=d.seed, help=f"generator seed (default {d.seed})")
    ap.add_argument(
        "--unseen",
        default=d.unseen,
        choices=sorted(WORLD_UNSEEN_SPLITS),
        help=f"unseen split recorded in world.json (default {d.unseen}); train/eval pick it with dataset.split",
    )
    ap.add_argument(
        "--counts",
        type=int,
        nargs=4,
        default=list(d.counts),
        metavar=("TEACH", "TRAIN", "VAL", "TEST"),
        help=f"images per split (default {' '.join(map(str, d.counts))})",
    )
    ap.add_argument("--size", type=int, default=d.size, help=f"image side, pixels (default {d.size})")
    ap.add_argument(
        "--objects",
        type=int,
        nargs=2,
        default=list(d.objects),
        metavar=("MIN", "MAX"),
        help=f"objects per image (default {d.objects[0]} {d.objects[1]})",
    )
    ap.add_argument(
        "--radius",
        type=float,
        nargs=2,
        default=list(d.radius),
        metavar=("MIN", "MAX"),
        help=f"object radius, fraction of --size (default {d.radius[0]} {d.radius[1]})",
    )
    ap.add_argument("--clutter", type=int, default=d.clutter, help=f"background strokes (default {d.clutter})")
    ap.add_argument(
        "--colour-jitter", type=float, default=d.colour_jitter, help=f"0..255 units (default {d.colour_jitter})"
    )
    ap.add_argument("--noise", type=float, default=d.noise, help=f"pixel noise std, 0..255 units (default {d.noise})")
    ap.add_argument("--blur", type=float, default=d.blur, help=f"blur radius, pixels (default {d.blur})")
    ap.add_argument("--jpeg-quality", type=int, default=d.jpeg_quality, help=f"(default {d.jpeg_quality})")
    ap.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="processes (default 2)")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing world at --out")
    a = ap.parse_args(argv)
    try:
        settings = WorldSettings(
            seed=a.seed,
            unseen=a.unseen,
            counts=tuple(a.counts),
            size=a.size,
            objects=tuple(a.objects),
            radius=tuple(a.radius),
            clutter=a.clutter,
            colour_jitter=a.colour_jitter,
            noise=a.noise,
            blur=a.blur,
            jpeg_quality=a.jpeg_quality,
        )
        make_world(a.out, settings, workers=max(1, a.workers), overwrite=a.overwrite)
    except (ValueError, FileExistsError, OSError) as e:
        print(f"zss-make-world: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(make_world_main())
