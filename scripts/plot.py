#!/usr/bin/env python
"""Plot a run's training curves (train losses, lr, val mIoU(S)/mIoU(U)/hIoU) from its metrics.jsonl.

    python scripts/plot.py runs/demo_clip_zss/2025-01-01_12-00-00 [--out curves.png]

Needs matplotlib (pip install 'zss[plot]'). Default output: <run_dir>/curves.png.
"""
from __future__ import annotations

import argparse
import sys

from zss.engine.report import plot_metrics


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", help="run directory holding metrics.jsonl")
    p.add_argument("--out", default=None, help="output PNG (default: <run_dir>/curves.png)")
    p.add_argument("--dpi", type=int, default=110)
    a = p.parse_args(argv)
    out = plot_metrics(a.run_dir, a.out, dpi=a.dpi)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
