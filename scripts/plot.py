#!/usr/bin/env python
"""Plot a run's training curves: ``python scripts/plot.py runs/<name>/<stamp> [--out curves.png]``.

Installed package: ``zss-plot``. Every flag: ``--help`` (zss.cli.plot.PLOT_DOC).
"""

import sys

from zss.cli.plot import plot_main as main

if __name__ == "__main__":
    sys.exit(main())
