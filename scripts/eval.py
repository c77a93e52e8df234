#!/usr/bin/env python
"""Evaluate a checkpoint: ``python scripts/eval.py ckpt=runs/<name>/<stamp>/last.pt [split=train]``."""

from zss.cli.eval import eval_main

if __name__ == "__main__":
    eval_main()
