#!/usr/bin/env python
"""Convert COCO-Stuff stuffthingmaps to ``*_labelTrainIds.png``: ``python scripts/prepare_cocostuff.py --raw ... --out
...``.

Installed package: ``zss-prepare-cocostuff``. Every flag: ``--help`` (zss.cli.prepare.PREPARE_COCOSTUFF_DOC).
"""

import sys

from zss.cli.prepare import prepare_cocostuff_main as main

if __name__ == "__main__":
    sys.exit(main())
