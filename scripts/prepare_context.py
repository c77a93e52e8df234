#!/usr/bin/env python
"""Convert PASCAL Context .mat annotations: ``python scripts/prepare_context.py --mat-dir ... --voc2010 ...``.

Installed package: ``zss-prepare-context``. Every flag: ``--help`` (zss.cli.prepare.PREPARE_CONTEXT_DOC).
"""

import sys

from zss.cli.prepare import prepare_context_main as main

if __name__ == "__main__":
    sys.exit(main())
