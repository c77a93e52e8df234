#!/usr/bin/env python
"""Check a dataset before training: ``python scripts/check_data.py dataset=voc20 [dataset.root=<dir>]``.

Same command as ``zss-check`` and ``python -m zss.cli.check``: Hydra-style ``key=value`` overrides of
configs/check.yaml, the dataset preset names of training (exit code 0 = OK, 1 = problems, 2 = bad command line).
"""

import sys

from zss.cli.check import check_main

if __name__ == "__main__":
    sys.exit(check_main())
