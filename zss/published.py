"""The published numbers bundled with zss (``zss/published.yaml``) and their comparison with a zss result.

Every row names its source, setting, student, training set and steps (docs/reproduce.md gives the command
per row). :func:`run_settings` reads what a zss run was from its resolved config; :func:`matching_rows`
finds the published rows of the same method, benchmark and setting; :func:`format_comparison` prints them
beside the zss numbers with the deltas and a warning for every setting that differs (training set size,
steps, transductive unseen-pixel rule, student, precision). Source of every number: the file's ``source``.
"""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

import yaml

__all__ = ["PUBLISHED_FILE", "REQUIRED_KEYS", "format_comparison", "load_published", "matching_rows", "run_settings"]

#: The bundled data file.
PUBLISHED_FILE = Path(__file__).with_name("published.yaml")
#: Keys every row must carry (None allowed for the numbers a source does not state, never for source/setting).
REQUIRED_KEYS = (
    "id",
    "method",
    "benchmark",
    "setting",
    "kind",
    "source",
    "student",
    "train_set",
    "train_images",
    "steps",
    "precision",
    "transductive_mask",
    "metrics",
)
#: Nominal training-set sizes of the zss dataset presets (full datasets), images.
TRAIN_IMAGES = {"voc20": 1464, "voc20_aug": 10582, "voc21": 1464, "cocostuff171": 118287}
#: Student of the methods whose model is fixed by the method (CLIP at test time).
_METHOD_STUDENTS = {
    "clip_rc": "CLIP ViT-B/16 + VPT-deep + region decoder",
    "zegclip": "CLIP ViT-B/16 + VPT-deep + query decoder",
}
#: zss result key -> column title.
_METRICS = (("pAcc", "pAcc"), ("mIoU_seen", "mIoU(S)"), ("mIoU_unseen", "mIoU(U)"), ("hIoU", "hIoU"), ("mIoU", "mIoU"))


@lru_cache(maxsize=4)
def _load(path: str) -> tuple[dict, ...]:
    p = Path(path)
    try:
        rows = (yaml.safe_load(p.read_text()) or {}).get("rows")
    except (OSError, yaml.YAMLError) as e:
        raise ValueError(f"published table {str(p)!r} cannot be read: {e}") from None
    if not isinstance(rows, list) or not rows:
        raise ValueError(f"published table {str(p)!r} has no 'rows' list")
    for i, r in enumerate(rows):
        missing = [k for k in REQUIRED_KEYS if k not in r]
        if missing or not r.get("source") or not r.get("setting"):
            raise ValueError(f"published table {str(p)!r}: row {i} ({r.get('id')}) lacks {missing or 'source/setting'}")
    return tuple(rows)


def load_published(path: str | Path | None = None) -> list[dict]:
    """The bundled published rows (dicts with :data:`REQUIRED_KEYS`; percent metrics).

    Raises:
        ValueError: the file cannot be read or a row lacks a required key, its source or its setting.
    """
    return [dict(r) for r in _load(str(path or PUBLISHED_FILE))]


def run_settings(config: Mapping[str, Any]) -> dict:
    """What a zss run was, from its resolved config (``config.json`` / the checkpoint's ``config``).

    Returns:
        dict: ``method`` (paper name: ``*_paper`` presets map to their method; the seen-only baseline on
        ``voc21`` pseudo masks to ``clip_es``), ``preset`` (``method.name``), ``benchmark``, ``dataset``,
        ``setting`` (inductive / transductive / wsss_student), ``train_images`` (nominal, None if unknown),
        ``steps``, ``precision``, ``transductive_mask`` (None, ``threshold`` or ``gt_unseen``), ``student``.
    """
    m, ds, tr = (dict(config.get(k) or {}) for k in ("method", "dataset", "trainer"))
    preset = str(m.get("name", "?"))
    method = preset[: -len("_paper")] if preset.endswith("_paper") else preset
    trans = dict(m.get("transductive") or {})
    setting = "transductive" if trans.get("enabled") else "inductive"
    bench = ds.get("benchmark")
    if bench == "voc21" and method == "baseline" and ds.get("train_label_dir"):
        method, setting = "clip_es", "wsss_student"
    name = ds.get("name")
    if name == "voc21" and "aug" in str(ds.get("train_split", "")):
        name = "voc20_aug"  # same images
    model = dict(config.get("model") or {})
    student = _METHOD_STUDENTS.get(method) or f"{model.get('backbone', '?')} + {model.get('decoder', '?')}"
    return {
        "method": method,
        "preset": preset,
        "benchmark": bench,
        "dataset": ds.get("name"),
        "setting": setting,
        "train_images": TRAIN_IMAGES.get(name),
        "steps": tr.get("max_steps"),
        "precision": tr.get("amp"),
        "transductive_mask": (
            ("gt_unseen" if trans.get("gt_unseen_mask") else "threshold") if trans.get("enabled") else None
        ),
        "student": student,
    }


def matching_rows(settings: Mapping[str, Any], split: str | None = None, rows: list[dict] | None = None) -> list[dict]:
    """Published rows of the run's method, benchmark and setting (a row with a ``split`` must match ``split``).

    Args:
        settings: :func:`run_settings`. split: the evaluated split (``val``...), or None.
        rows: the table (default :func:`load_published`).
    """
    rows = load_published() if rows is None else rows
    out = []
    for r in rows:
        if (r["method"], r["benchmark"], r["setting"]) != (
            settings.get("method"),
            settings.get("benchmark"),
            settings.get("setting"),
        ):
            continue
        if r.get("split") and split and r["split"] != split:
            continue
        out.append(r)
    return out


def _warnings(row: Mapping, s: Mapping) -> list[str]:
    out = []
    if row.get("train_images") and s.get("train_images") and row["train_images"] != s["train_images"]:
        out.append(
            f"training set: published {row['train_set']} ({row['train_images']} images), this run "
            f"{s.get('dataset')} ({s['train_images']})"
        )
    if row.get("steps") and s.get("steps") and int(row["steps"]) != int(s["steps"]):
        out.append(f"steps: published {row['steps']}, this run {s['steps']}")
    if row.get("setting") == "transductive" and row.get("transductive_mask") != s.get("transductive_mask"):
        out.append(
            f"transductive unseen-pixel rule: published {row.get('transductive_mask')} (ground-truth mask), "
            f"this run {s.get('transductive_mask')}"
        )
    if (
        row.get("student")
        and "not stated" not in row["student"]
        and s.get("student")
        and row["student"] != s["student"]
    ):
        out.append(f"student: published {row['student']}, this run {s['student']}")
    if row.get("precision") and s.get("precision") and row["precision"] != s["precision"]:
        out.append(f"precision: published {row['precision']}, this run {s['precision']}")
    return out


def _num(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


def format_comparison(
    results: Mapping[str, Any], settings: Mapping[str, Any], split: str | None = None, rows: list[dict] | None = None
) -> str:
    """Markdown: this run's numbers beside each matching published row, the deltas (run − published, points)
    and a ``WARNING`` line per differing setting; a line saying there is no published row otherwise.

    Args:
        results: zss results (percent values, keys as :func:`zss.engine.metrics.format_table`).
        settings: :func:`run_settings`. split: evaluated split. rows: the table (default: bundled).
    """
    found = matching_rows(settings, split, rows)
    head = (
        f"Published (preset {settings.get('preset')}, {settings.get('method')} / {settings.get('benchmark')} / "
        f"{settings.get('setting')})"
    )
    if not found:
        return f"{head}: no bundled published row (zss/published.yaml)."
    lines = [head + ":", "", "| row | metric | published | this run | delta |", "|---|---|---:|---:|---:|"]
    warns: list[str] = []
    for r in found:
        for key, title in _METRICS + (("hIoU_gain", "hIoU gain"),):
            if key not in r["metrics"]:
                continue
            pub = float(r["metrics"][key])
            ours = _num(results.get(key)) if r["kind"] == "absolute" else None
            delta = "n/a" if ours is None else f"{ours - pub:+.2f}"
            lines.append(f"| {r['id']} | {title} | {pub:.2f} | {'n/a' if ours is None else f'{ours:.2f}'} | {delta} |")
        lines.append(f"| {r['id']} | source | {r['source']} | | |")
        warns += [f"WARNING ({r['id']}): {w}" for w in _warnings(r, settings)]
        if r["kind"] == "gain":
            warns.append(f"NOTE ({r['id']}): a gain over the paper's own baseline, not an absolute number")
    return "\n".join(lines + ([""] + sorted(set(warns), key=warns.index) if warns else []))
