"""``zss-plot`` / ``scripts/plot.py``: a run's training curves from its metrics.jsonl. Hydra-free."""

from __future__ import annotations

import argparse
import sys

from zss.cli.errors import one_line_errors

PLOT_DOC = """Plot a run's training curves (train losses, lr, val mIoU(S)/mIoU(U)/hIoU) from its metrics.jsonl.

    python scripts/plot.py runs/demo_clip_zss/2025-01-01_12-00-00 [--out curves.png]

Needs matplotlib (pip install 'zss[plot]'). Default output: <run_dir>/curves.png.
(installed package: ``zss-plot`` takes the same arguments.)
"""


@one_line_errors
def plot_main(argv: list[str] | None = None) -> int:
    """``zss-plot`` / ``python scripts/plot.py``: see :data:`PLOT_DOC`. Returns the exit code."""
    from zss.engine.report import plot_metrics

    p = argparse.ArgumentParser(description=PLOT_DOC, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", help="run directory holding metrics.jsonl")
    p.add_argument("--out", default=None, help="output PNG (default: <run_dir>/curves.png)")
    p.add_argument("--dpi", type=int, default=110)
    a = p.parse_args(argv)
    out = plot_metrics(a.run_dir, a.out, dpi=a.dpi)
    print(out)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(plot_main())
