#!/usr/bin/env python
"""Convert official PASCAL Context annotations (459-class .mat) to context60 PNGs + split files (DESIGN §2).

    python scripts/prepare_context.py --mat-dir data/trainval --labels data/labels.txt \\
        --voc2010 data/VOCdevkit/VOC2010 \\
        --train-list data/VOCdevkit/VOC2010/ImageSets/Main/train.txt \\
        --val-list data/VOCdevkit/VOC2010/ImageSets/Main/val.txt [--also-59] [--workers 8]

Writes ``<voc2010>/SegmentationClassContext/<id>.png`` (0 = background, 1..59 = context59 classes; the
``context60`` preset reads it as is, ``context59`` with reduce_zero_label) and
``<voc2010>/ImageSets/SegmentationContext/{train,val}.txt``. ``--also-59`` also writes
``SegmentationClassContext59/`` with 0..58 and 255. The 59 classes are picked by name from labels.txt
(see ``zss.data.convert.CONTEXT59_ALIASES``). Existing PNGs are skipped unless ``--overwrite``.
"""
from __future__ import annotations

import argparse
import os
import sys

from zss.data.convert import convert_context


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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


if __name__ == "__main__":
    sys.exit(main())
