#!/usr/bin/env python
"""Check a dataset before training: ``python scripts/check_data.py dataset=voc20 root=data/VOCdevkit/VOC2012``.

Alias of ``python -m zss.data.check`` (exit code 0 = OK, 1 = problems, 2 = bad command line).
"""
import sys

from zss.data.check import main

if __name__ == "__main__":
    sys.exit(main())
