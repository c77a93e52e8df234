#!/usr/bin/env python
"""Aggregate final metrics over runs: ``python scripts/aggregate.py runs/demo_clip_zss/* [--md out.md]``.

Installed package: ``zss-aggregate``. Every flag: ``--help`` (zss.cli.aggregate.AGGREGATE_DOC).
"""

import sys

from zss.cli.aggregate import aggregate_main as main

if __name__ == "__main__":
    sys.exit(main())
