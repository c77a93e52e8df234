"""``zss-prepare-cocostuff`` and ``zss-prepare-context``: convert the official annotations to the layouts zss reads
(:mod:`zss.data.convert` does the work). Hydra-free.
"""

from __future__ import annotations

import argparse
import os
import sys

from zss.cli.errors import one_line_errors

PREPARE_COCOSTUFF_DOC = """Convert COCO-Stuff 164K stuffthingmaps (182 raw ids) to 171-class ``*_labelTrainIds.png``
(docs/protocol.md "Benchmarks").

    python scripts/prepare_cocostuff.py --raw data/stuffthingmaps_trainval2017 --out data/coco_stuff164k --workers 8

Writes ``<out>/annotations/{train2017,val2017}/<id>_labelTrainIds.png`` (8-bit, 0..170, 255 = ignore).
Put the COCO 2017 images in ``<out>/images/{train2017,val2017}/`` yourself (unzip train2017.zip/val2017.zip).
Existing outputs are skipped unless ``--overwrite``; counts are printed either way.
(installed package: ``zss-prepare-cocostuff`` takes the same arguments.)
"""


@one_line_errors
def prepare_cocostuff_main(argv: list[str] | None = None) -> int:
    """``zss-prepare-cocostuff`` / ``python scripts/prepare_cocostuff.py``: see :data:`PREPARE_COCOSTUFF_DOC`. Returns
    the exit code."""
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


PREPARE_CONTEXT_DOC = """Convert official PASCAL Context annotations (459-class .mat) to context60 PNGs + split files
(docs/protocol.md "Benchmarks").

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


@one_line_errors
def prepare_context_main(argv: list[str] | None = None) -> int:
    """``zss-prepare-context`` / ``python scripts/prepare_context.py``: see :data:`PREPARE_CONTEXT_DOC`. Returns the
    exit code."""
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
        a.mat_dir,
        a.labels,
        a.voc2010,
        split_lists={"train": a.train_list, "val": a.val_list},
        ann_dir=a.ann_dir,
        also_59=a.also_59,
        ann_dir_59=a.ann_dir_59,
        workers=a.workers,
        overwrite=a.overwrite,
        allow_missing=a.allow_missing,
    )
    for split, s in stats.items():
        print(f"{split}: {s}")
        for note in s.extra:
            print(f"  {note}")
    return 0
