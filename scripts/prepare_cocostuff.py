#!/usr/bin/env python
"""Convert COCO-Stuff stuffthingmaps to ``*_labelTrainIds.png``: ``python scripts/prepare_cocostuff.py --raw ... --out ...``.

Installed package: ``zss-prepare-cocostuff``. Every flag: ``--help`` (zss.commands.PREPARE_COCOSTUFF_DOC).
"""
import sys

from zss.commands import prepare_cocostuff_main as main

if __name__ == "__main__":
    sys.exit(main())
