"""``zss-aggregate`` / ``scripts/aggregate.py``: one markdown row per run plus mean ± std. Hydra-free."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from zss.cli.errors import one_line_errors

AGGREGATE_DOC = """Aggregate final metrics over runs: one markdown row per run plus mean ± sample std (n shown).

    python scripts/aggregate.py runs/demo_clip_zss/* [--md out.md] [--json out.json]
    python scripts/aggregate.py multirun/2025-01-01 --recursive

A run dir is any directory holding final_results.json (preferred) or metrics.jsonl (last "val" record).
Glob patterns may be quoted (expanded here). null / NaN values are excluded from a metric's mean and n.
(installed package: ``zss-aggregate`` takes the same arguments.)
"""


@one_line_errors
def aggregate_main(argv: list[str] | None = None) -> int:
    """``zss-aggregate`` / ``python scripts/aggregate.py``: see :data:`AGGREGATE_DOC`. Returns the exit code."""
    from zss.engine.report import METRICS, RESULTS_FILE, aggregate

    p = argparse.ArgumentParser(description=AGGREGATE_DOC, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="run directories or glob patterns")
    p.add_argument("--recursive", "-r", action="store_true", help="search subdirectories for run dirs")
    p.add_argument("--metrics", nargs="+", default=list(METRICS), help="metric keys (default: %(default)s)")
    p.add_argument("--results-file", default=RESULTS_FILE, help="final results file name (default: %(default)s)")
    p.add_argument("--digits", type=int, default=2, help="decimals in the table")
    p.add_argument("--md", help="also write the markdown table to this file")
    p.add_argument("--json", help="also write rows + summary as JSON to this file")
    a = p.parse_args(argv)
    table = aggregate(a.runs, metrics=a.metrics, recursive=a.recursive, results_file=a.results_file)
    unknown = [m for m in a.metrics if m not in METRICS and table.n[m] == 0]
    if unknown:
        raise ValueError(
            f"--metrics {unknown[0]}: no run has this metric (the usual ones: {', '.join(METRICS)}); check its spelling"
        )
    md = table.to_markdown(a.digits)
    print(md)
    for d, why in table.skipped:
        print(f"skipped {d}: {why}", file=sys.stderr)
    if a.md:
        Path(a.md).parent.mkdir(parents=True, exist_ok=True)
        Path(a.md).write_text(md + "\n")
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(table.to_dict(), indent=2, allow_nan=False) + "\n")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(aggregate_main())
