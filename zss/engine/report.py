"""Aggregate results over runs (mean ± sample std) and plot training curves of one run.

Reads what the trainer and CLI write into a run dir (docs/architecture.md "Run directories and checkpoints"):

* ``final_results.json``: a JSON object with ``mIoU_seen``, ``mIoU_unseen``, ``hIoU``, ``pAcc``, ``mIoU``
  (percent floats, NaN stored as ``null``) and usually ``step``. A file holding the same object
  JSON-encoded a second time (a JSON string) is accepted too.
* ``metrics.jsonl``: one JSON object per line with ``step`` and ``split`` (``"train"`` or ``"val"``);
  train records carry ``loss*``, ``lr``, ``img_per_s``; val records the metrics above.

Used by ``scripts/aggregate.py`` and ``scripts/plot.py``. matplotlib is optional (``pip install
'zss[plot]'``) and imported only inside :func:`plot_metrics`.
"""

from __future__ import annotations

import glob as _glob
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

__all__ = [
    "METRICS",
    "METRIC_LABELS",
    "RunResult",
    "AggregateTable",
    "find_run_dirs",
    "load_run",
    "read_metrics_jsonl",
    "aggregate",
    "plot_metrics",
]

METRICS: tuple[str, ...] = ("mIoU_seen", "mIoU_unseen", "hIoU", "pAcc", "mIoU")
"""Default metrics aggregated (percent floats), in table-column order."""

METRIC_LABELS: dict[str, str] = {
    "mIoU_seen": "mIoU(S)",
    "mIoU_unseen": "mIoU(U)",
    "hIoU": "hIoU",
    "pAcc": "pAcc",
    "mIoU": "mIoU",
    "mAcc": "mAcc",
}
"""Column headers used in the markdown table."""

RESULTS_FILE = "final_results.json"
METRICS_FILE = "metrics.jsonl"


@dataclass
class RunResult:
    """The final metrics of one run.

    Attributes:
        path: the run directory.
        name: display name (path relative to the common parent of the aggregated runs).
        source: ``"final_results.json"`` or ``"metrics.jsonl"`` (last ``split == "val"`` record).
        step: training step of the result, or None when the file does not say.
        metrics: metric name -> percent float, NaN where the file has ``null`` or lacks the key.
    """

    path: Path
    name: str
    source: str
    step: int | None
    metrics: dict[str, float]


@dataclass
class AggregateTable:
    """Per-run rows plus mean ± sample std (ddof=1) per metric over the runs where it is finite.

    Attributes:
        runs: one :class:`RunResult` per run, sorted by name.
        metrics: metric names (columns).
        mean / std: metric -> value (NaN when n == 0; std NaN when n < 2).
        n: metric -> number of runs with a finite value (null / NaN values are excluded).
        skipped: ``(dir, reason)`` for directories that held no result.
    """

    runs: list[RunResult]
    metrics: tuple[str, ...]
    mean: dict[str, float]
    std: dict[str, float]
    n: dict[str, int]
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def to_markdown(self, digits: int = 2) -> str:
        """Markdown table: one row per run, then a ``mean ± std (n=k)`` row; NaN shown as ``n/a``."""
        head = ["run", "source", "step"] + [METRIC_LABELS.get(m, m) for m in self.metrics]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * 3 + "---:|" * len(self.metrics)]
        for r in self.runs:
            cells = [r.name, r.source, "" if r.step is None else str(r.step)]
            cells += [_fmt(r.metrics[m], digits) for m in self.metrics]
            lines.append("| " + " | ".join(cells) + " |")
        cells = [f"mean ± std ({len(self.runs)} runs)", "", ""]
        for m in self.metrics:
            if self.n[m] == 0:
                cells.append("n/a (n=0)")
            else:
                sd = _fmt(self.std[m], digits)
                cells.append(f"{_fmt(self.mean[m], digits)} ± {sd} (n={self.n[m]})")
        lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """JSON-ready dict (NaN -> None): ``runs`` (list of rows) and ``summary`` (metric -> mean/std/n)."""
        return {
            "runs": [
                {
                    "run": r.name,
                    "path": str(r.path),
                    "source": r.source,
                    "step": r.step,
                    **{m: _nan_none(r.metrics[m]) for m in self.metrics},
                }
                for r in self.runs
            ],
            "summary": {
                m: {"mean": _nan_none(self.mean[m]), "std": _nan_none(self.std[m]), "n": self.n[m]}
                for m in self.metrics
            },
            "skipped": [{"dir": d, "reason": why} for d, why in self.skipped],
        }


def _fmt(v: float, digits: int) -> str:
    return "n/a" if v is None or not math.isfinite(v) else f"{v:.{digits}f}"


def _nan_none(v: float) -> float | None:
    return None if v is None or not math.isfinite(v) else float(v)


def _to_float(v) -> float:
    if v is None:
        return math.nan
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def _has_result(d: Path, results_file: str) -> bool:
    return (d / results_file).is_file() or (d / METRICS_FILE).is_file()


def find_run_dirs(
    paths: str | os.PathLike | Iterable[str | os.PathLike],
    recursive: bool = False,
    results_file: str = RESULTS_FILE,
) -> tuple[list[Path], list[tuple[str, str]]]:
    """Expand paths / glob patterns into run directories.

    A run directory is any directory holding ``results_file`` or ``metrics.jsonl`` (Hydra multirun
    job dirs ``multirun/<date>/<time>/<n>`` included).

    Args:
        paths: a directory, a glob pattern (``"runs/x/*"``, ``"multirun/**"``) or several of them.
            Patterns are expanded here too, so quoting them on the shell works.
        recursive: also search every subdirectory of each given directory.
        results_file: name of the final results file.

    Returns:
        (run dirs sorted and de-duplicated, skipped ``(path, reason)`` for directories without results
        and for matched paths that are not directories).

    Raises:
        FileNotFoundError: a path that is neither an existing path nor a pattern matching anything.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    found: list[Path] = []
    skipped: list[tuple[str, str]] = []
    for p in paths:
        p = str(p)
        matches = [p] if os.path.exists(p) else sorted(_glob.glob(p, recursive=True))
        if not matches:
            raise FileNotFoundError(f"{p!r} does not exist and matches no path (pass run directories or a glob).")
        for m in matches:
            d = Path(m)
            if not d.is_dir():
                if d.name not in (results_file, METRICS_FILE):
                    skipped.append((str(d), "not a directory"))
                elif d.parent not in found:
                    found.append(d.parent)
                continue
            if _has_result(d, results_file):
                found.append(d)
            elif not recursive:
                skipped.append((str(d), f"no {results_file} or {METRICS_FILE} (use --recursive to search below)"))
            if recursive:
                sub = sorted({q.parent for name in (results_file, METRICS_FILE) for q in d.rglob(name)})
                found.extend(s for s in sub if s != d)
    uniq = sorted({f.resolve(): f for f in found}.values(), key=lambda f: str(f))
    return uniq, skipped


def read_metrics_jsonl(path: str | os.PathLike) -> list[dict]:
    """Read ``metrics.jsonl`` (one JSON object per line).

    A malformed LAST line (a run killed while writing) is dropped; a malformed line elsewhere raises.

    Returns:
        list of dict records in file order.

    Raises:
        FileNotFoundError: missing file. ValueError: malformed line (names file and line number).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{str(path)!r} does not exist (written by the trainer into the run dir).")
    lines = path.read_text().splitlines()
    out = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            if i == len(lines):
                break  # truncated last line of an interrupted run
            raise ValueError(f"{path}:{i}: not valid JSON ({e.msg}).") from None
        if not isinstance(rec, dict):
            raise ValueError(f"{path}:{i}: expected a JSON object, got {type(rec).__name__}.")
        out.append(rec)
    return out


def load_run(
    run_dir: str | os.PathLike,
    metrics: Sequence[str] = METRICS,
    results_file: str = RESULTS_FILE,
    name: str | None = None,
) -> RunResult:
    """Load the final metrics of one run.

    Prefers ``<run_dir>/<results_file>``; without it, uses the last record with ``"split": "val"`` of
    ``<run_dir>/metrics.jsonl``.

    Args:
        run_dir: the run directory.
        metrics: metric keys to read (missing keys and ``null`` become NaN).
        results_file: name of the final results file (e.g. ``eval_voc20_all_slide_sb0_val_results.json``).
        name: display name (default: the directory name).

    Returns:
        :class:`RunResult`.

    Raises:
        FileNotFoundError: neither file exists. ValueError: the results file is not a JSON object, or
            ``metrics.jsonl`` has no val record (names the file).
    """
    d = Path(run_dir)
    rf = d / results_file
    if rf.is_file():
        try:
            obj = json.loads(rf.read_text())
            if isinstance(obj, str):  # JSON encoded twice (a string holding the object)
                obj = json.loads(obj)
        except json.JSONDecodeError as e:
            raise ValueError(f"{rf}: not valid JSON ({e.msg}).") from None
        if not isinstance(obj, dict):
            raise ValueError(f"{rf}: expected a JSON object with keys {list(metrics)}, got {type(obj).__name__}.")
        src = results_file
    elif (d / METRICS_FILE).is_file():
        vals = [r for r in read_metrics_jsonl(d / METRICS_FILE) if r.get("split") == "val"]
        if not vals:
            raise ValueError(f'{d / METRICS_FILE}: no record with "split": "val" (the run never evaluated).')
        obj, src = vals[-1], METRICS_FILE
    else:
        raise FileNotFoundError(f"{str(d)!r} holds neither {results_file} nor {METRICS_FILE}.")
    step = obj.get("step")
    return RunResult(
        path=d,
        name=name or d.name,
        source=src,
        step=int(step) if isinstance(step, (int, float)) else None,
        metrics={m: _to_float(obj.get(m)) for m in metrics},
    )


def _mean_std(xs: list[float]) -> tuple[float, float, int]:
    v = [x for x in xs if math.isfinite(x)]
    n = len(v)
    if n == 0:
        return math.nan, math.nan, 0
    mean = math.fsum(v) / n
    std = math.sqrt(math.fsum((x - mean) ** 2 for x in v) / (n - 1)) if n > 1 else math.nan
    return mean, std, n


def aggregate(
    runs: str | os.PathLike | Iterable[str | os.PathLike],
    metrics: Sequence[str] = METRICS,
    recursive: bool = False,
    results_file: str = RESULTS_FILE,
) -> AggregateTable:
    """Mean ± sample std of the final metrics over several runs (seeds, multirun jobs).

    Args:
        runs: run directories and/or glob patterns (see :func:`find_run_dirs`).
        metrics: metric keys (percent floats) to aggregate; default :data:`METRICS`.
        recursive: search subdirectories for run dirs (e.g. a Hydra ``multirun/`` tree).
        results_file: final results file name; runs without it fall back to ``metrics.jsonl``.

    Returns:
        :class:`AggregateTable`: per-run rows; per metric mean, sample std (ddof=1, NaN for n < 2) and
        n = number of runs with a finite value (``null``/NaN values are excluded, not counted as 0).

    Raises:
        FileNotFoundError: no run directory found (lists what was skipped and why).
        ValueError: an unreadable results file (names it).
    """
    dirs, skipped = find_run_dirs(runs, recursive=recursive, results_file=results_file)
    if not dirs:
        why = "; ".join(f"{d}: {r}" for d, r in skipped[:5]) or "nothing matched"
        raise FileNotFoundError(f"No run directory with {results_file} or {METRICS_FILE} found ({why}).")
    base = Path(os.path.commonpath([str(d.resolve()) for d in dirs]))
    results = []
    for d in dirs:
        rel = os.path.relpath(d.resolve(), base) if len(dirs) > 1 else d.name
        try:
            results.append(load_run(d, metrics, results_file, name=rel))
        except ValueError as e:
            if "no record with" not in str(e):
                raise
            skipped.append((str(d), str(e)))
    if not results:
        raise FileNotFoundError(f"No run with results: {skipped}")
    mean, std, n = {}, {}, {}
    for m in metrics:
        mean[m], std[m], n[m] = _mean_std([r.metrics[m] for r in results])
    return AggregateTable(results, tuple(metrics), mean, std, n, skipped)


def plot_metrics(
    run_dir: str | os.PathLike,
    out_png: str | os.PathLike | None = None,
    val_metrics: Sequence[str] = ("mIoU_seen", "mIoU_unseen", "hIoU"),
    dpi: int = 110,
) -> Path:
    """Plot training curves of one run from its ``metrics.jsonl`` into a PNG.

    Three panels sharing the step axis: every ``loss*`` key of the ``"split": "train"`` records; the
    learning rate ``lr`` (log scale); and ``val_metrics`` (percent) of the ``"split": "val"`` records.
    ``null`` values are left out. Uses matplotlib's object API with the Agg canvas (no pyplot, no
    global backend change).

    Args:
        run_dir: run directory holding ``metrics.jsonl``.
        out_png: output file (default ``<run_dir>/curves.png``); parent folders are created.
        val_metrics: val keys to plot.
        dpi: resolution of the PNG.

    Returns:
        Path of the written PNG.

    Raises:
        ImportError: matplotlib is not installed (says ``pip install 'zss[plot]'``).
        FileNotFoundError: no ``metrics.jsonl`` in ``run_dir``.
        ValueError: the file has neither train nor val records.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:
        raise ImportError(
            "plot_metrics needs matplotlib, an optional extra: pip install 'zss[plot]' (or pip install matplotlib)."
        ) from e
    run_dir = Path(run_dir)
    recs = read_metrics_jsonl(run_dir / METRICS_FILE)
    train = [r for r in recs if r.get("split") == "train"]
    val = [r for r in recs if r.get("split") == "val"]
    if not train and not val:
        raise ValueError(f"{run_dir / METRICS_FILE}: no 'train' or 'val' records to plot.")

    def series(rs: list[dict], key: str) -> tuple[list, list]:
        pts = [
            (r["step"], float(r[key]))
            for r in rs
            if r.get(key) is not None and r.get("step") is not None and math.isfinite(float(r[key]))
        ]
        return [p[0] for p in pts], [p[1] for p in pts]

    fig = Figure(figsize=(8, 9), dpi=dpi)
    FigureCanvasAgg(fig)
    ax_loss, ax_lr, ax_val = fig.subplots(3, 1, sharex=True)
    loss_keys = sorted({k for r in train for k in r if k.startswith("loss")}, key=lambda k: (k != "loss", k))
    for k in loss_keys:
        x, y = series(train, k)
        if x:
            ax_loss.plot(x, y, label=k, lw=1.6 if k == "loss" else 1.0)
    ax_loss.set_ylabel("train loss")
    ax_loss.set_title(f"{run_dir.name}")
    x, y = series(train, "lr")
    if x:
        ax_lr.plot(x, y, color="tab:gray")
        if all(v > 0 for v in y):
            ax_lr.set_yscale("log")
    ax_lr.set_ylabel("lr")
    for k in val_metrics:
        x, y = series(val, k)
        if x:
            ax_val.plot(x, y, marker="o", ms=3, label=METRIC_LABELS.get(k, k))
    ax_val.set_ylabel("val (%)")
    ax_val.set_xlabel("step")
    for ax in (ax_loss, ax_lr, ax_val):
        if ax.lines:
            if ax is not ax_lr:
                ax.legend(loc="best", fontsize=8)
            ax.grid(alpha=0.3)
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="gray")
    fig.tight_layout()
    out = Path(out_png) if out_png is not None else run_dir / "curves.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    return out
