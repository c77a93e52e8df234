#!/usr/bin/env python
"""Build (or reuse) the label-taught CLIP (docs/taught_clip.md): ``python scripts/teach_clip.py [--seed 1 ...]``.

Installed package: ``zss-teach-clip``. Every flag: ``--help`` (zss.cli.teach_clip.TEACH_CLIP_DOC).
"""

import sys

from zss.cli.teach_clip import teach_clip_main as main

if __name__ == "__main__":
    sys.exit(main())
