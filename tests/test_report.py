"""Run aggregation (mean ± sample std over runs) and training-curve plots."""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from zss.engine.report import aggregate, find_run_dirs, load_run, plot_metrics

REPO = Path(__file__).resolve().parents[1]

# run -> (mIoU_seen, mIoU_unseen, hIoU, pAcc, mIoU); None = null in the file
RUNS = {
    "seed0": (80.0, 40.0, 53.3, 90.0, 70.0),
    "seed1": (82.0, 44.0, 57.3, 91.0, 72.5),
    "seed2": (81.0, 39.0, None, 92.5, 71.0),
}
KEYS = ("mIoU_seen", "mIoU_unseen", "hIoU", "pAcc", "mIoU")


def _train_recs(n=6):
    return [
        {
            "step": 10 * s,
            "split": "train",
            "loss": 3.0 / s,
            "loss_ce": 2.0 / s,
            "loss_glm": 1.0 / s,
            "lr": 1e-4 * (1 - s / (n + 1)),
            "img_per_s": 12.0,
        }
        for s in range(1, n + 1)
    ]


def _make_runs(root: Path) -> dict[str, Path]:
    """seed0/seed1 have final_results.json (seed1 JSON-encoded twice, as zss.cli writes it today);
    seed2 only metrics.jsonl (its LAST val record must be used)."""
    dirs = {}
    for name, vals in RUNS.items():
        d = root / "runs" / "demo" / name
        d.mkdir(parents=True)
        rec = dict(zip(KEYS, vals))
        lines = [json.dumps(r) for r in _train_recs()]
        lines.insert(3, json.dumps({"step": 30, "split": "val", **{k: 1.0 for k in KEYS}}))  # older val record
        lines.append(json.dumps({"step": 60, "split": "val", **rec, "mAcc": 50.0}))
        (d / "metrics.jsonl").write_text("\n".join(lines) + "\n")
        if name == "seed0":
            (d / "final_results.json").write_text(json.dumps({**rec, "step": 60, "per_class": []}, indent=2))
        elif name == "seed1":
            (d / "final_results.json").write_text(json.dumps(json.dumps({**rec, "step": 60})))
        dirs[name] = d
    return dirs


def test_aggregate_mean_std_exact(tmp_path):
    _make_runs(tmp_path)
    t = aggregate(str(tmp_path / "runs" / "demo" / "*"))
    assert [r.name for r in t.runs] == ["seed0", "seed1", "seed2"]
    assert [r.source for r in t.runs] == ["final_results.json", "final_results.json", "metrics.jsonl"]
    assert all(r.step == 60 for r in t.runs)
    for j, k in enumerate(KEYS):
        vals = [v[j] for v in RUNS.values() if v[j] is not None]
        assert t.n[k] == len(vals)
        assert t.mean[k] == pytest.approx(statistics.fmean(vals), abs=1e-12)
        assert t.std[k] == pytest.approx(statistics.stdev(vals), abs=1e-12)  # sample std, ddof=1
    # hand-computed: seen 80/82/81 -> mean 81, std 1; hIoU null excluded -> n=2
    assert t.mean["mIoU_seen"] == pytest.approx(81.0) and t.std["mIoU_seen"] == pytest.approx(1.0)
    assert t.n["hIoU"] == 2 and t.mean["hIoU"] == pytest.approx(55.3)
    assert t.std["hIoU"] == pytest.approx(math.sqrt(8.0))
    assert math.isnan(t.runs[2].metrics["hIoU"])
    md = t.to_markdown()
    assert "| mean ± std (3 runs) |" in md and "81.00 ± 1.00 (n=3)" in md and "55.30 ± 2.83 (n=2)" in md
    assert md.count("\n") == 5 and "n/a" in md  # header, rule, 3 runs, mean row; null shown n/a
    d = t.to_dict()
    assert d["summary"]["hIoU"]["n"] == 2 and d["runs"][2]["hIoU"] is None
    json.dumps(d, allow_nan=False)


def test_aggregate_recursive_multirun_and_errors(tmp_path):
    # Hydra multirun layout: multirun/<date>/<time>/<n>/...
    for n, v in enumerate((10.0, 20.0)):
        d = tmp_path / "multirun" / "2025-01-01" / "12-00-00" / str(n)
        (d / ".hydra").mkdir(parents=True)
        (d / "final_results.json").write_text(
            json.dumps({"mIoU_seen": v, "mIoU_unseen": v, "hIoU": None, "pAcc": v, "mIoU": v})
        )
    with pytest.raises(FileNotFoundError, match="recursive"):
        aggregate(tmp_path / "multirun")
    t = aggregate(tmp_path / "multirun", recursive=True)
    assert [r.name for r in t.runs] == ["0", "1"]
    assert t.mean["pAcc"] == 15.0 and t.std["pAcc"] == pytest.approx(math.sqrt(50))
    assert t.n["hIoU"] == 0 and "n/a (n=0)" in t.to_markdown()
    # a single run: std undefined -> NaN, shown n/a
    one = aggregate(tmp_path / "multirun" / "2025-01-01" / "12-00-00" / "0")
    assert one.n["mIoU"] == 1 and math.isnan(one.std["mIoU"])
    with pytest.raises(FileNotFoundError, match="matches no path"):
        aggregate(tmp_path / "nope*")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "metrics.jsonl").write_text('{"step": 1, "split": "train", "loss": 1}\n')
    with pytest.raises(FileNotFoundError, match="never evaluated"):
        aggregate(bad)
    (bad / "metrics.jsonl").write_text('{"step": 1, "split": "val", "hIoU": 5}\nnot json\n{"step": 2')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2"):
        load_run(bad)
    dirs, skipped = find_run_dirs([str(tmp_path / "multirun" / "*" / "*" / "*")])
    assert len(dirs) == 2 and skipped == []


def test_aggregate_script(tmp_path):
    _make_runs(tmp_path)
    runs = sorted(str(p) for p in (tmp_path / "runs" / "demo").iterdir())
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    r = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "aggregate.py"),
            *runs,
            "--md",
            str(tmp_path / "t.md"),
            "--json",
            str(tmp_path / "t.json"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert "| seed2 | metrics.jsonl | 60 |" in r.stdout and "(n=2)" in r.stdout
    assert (tmp_path / "t.md").read_text().strip() == r.stdout.strip()
    assert json.loads((tmp_path / "t.json").read_text())["summary"]["mIoU_seen"]["mean"] == pytest.approx(81.0)


def test_plot_metrics_png(tmp_path):
    pytest.importorskip("matplotlib")
    d = _make_runs(tmp_path)["seed2"]
    out = plot_metrics(d, tmp_path / "plots" / "curves.png")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1024
    # default output path; a run with only train records still plots
    d2 = tmp_path / "trainonly"
    d2.mkdir()
    (d2 / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in _train_recs(3)) + "\n")
    assert plot_metrics(d2) == d2 / "curves.png" and (d2 / "curves.png").stat().st_size > 1024
    with pytest.raises(FileNotFoundError, match="metrics.jsonl"):
        plot_metrics(tmp_path)


def test_plot_without_matplotlib(tmp_path, monkeypatch):
    d = _make_runs(tmp_path)["seed0"]
    for m in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, m)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    with pytest.raises(ImportError, match=r"pip install 'zss\[plot\]'"):
        plot_metrics(d)
