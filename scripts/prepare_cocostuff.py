#!/usr/bin/env python
"""Convert COCO-Stuff 164K stuffthingmaps (182 raw ids) to 171-class ``*_labelTrainIds.png`` (DESIGN §2).

    python scripts/prepare_cocostuff.py --raw data/stuffthingmaps_trainval2017 --out data/coco_stuff164k --workers 8

Writes ``<out>/annotations/{train2017,val2017}/<id>_labelTrainIds.png`` (8-bit, 0..170, 255 = ignore).
Put the COCO 2017 images in ``<out>/images/{train2017,val2017}/`` yourself (unzip train2017.zip/val2017.zip).
Existing outputs are skipped unless ``--overwrite``; counts are printed either way.
"""
from __future__ import annotations

import argparse
import os
import sys

from zss.data.convert import convert_cocostuff


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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


if __name__ == "__main__":
    sys.exit(main())
