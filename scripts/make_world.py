#!/usr/bin/env python
"""Write the synthetic zero-shot world (docs/world.md): ``python scripts/make_world.py [--out data/world ...]``.

Installed package: ``zss-make-world``. Every flag: ``--help`` (zss.cli.make_world.MAKE_WORLD_DOC).
"""

import sys

from zss.cli.make_world import make_world_main as main

if __name__ == "__main__":
    sys.exit(main())
