#!/usr/bin/env python
"""Transfer check: does knowledge of classes the student never saw labelled reach it?

A real-image SMOKE CHECK of the pipeline on the 40 bundled VOC training images (the transfer that generalises is
measured on the synthetic world: scripts/world_check.py, docs/world.md). Trains, for each seed: the seen-only
baseline with each teacher's text embeds (``seen-only (oracle)``: ``experiment=demo_baseline``; ``seen-only
(taught CLIP)``: the same with ``teacher=taught_clip``), CLIP-ZSS with the label-derived ORACLE teacher, and
CLIP-ZSS, Chimera-Seg and CLIP-RC with the LABEL-TAUGHT CLIP (``python scripts/teach_clip.py`` builds it; this
script builds it first if it is missing). Every run uses the shipping method config (``method=clip_zss`` /
``chimera_seg`` / ``clip_rc``) at the CPU scale of ``experiment=demo`` (crop, steps, lr, batch). Each run is
then scored on the TRAINING images with their FULL labels — their unseen pixels were never labelled for the
student — with ``scripts/eval.py split=train``: mIoU(S), mIoU(U), hIoU (label_space=all) and the unseen-only
"5-way" view (label_space=unseen: pixels whose ground truth is unseen, argmax over the 5 unseen classes), as
its CLASS-MEAN accuracy (mAcc: mean over the unseen classes, chance 20%; the target metric) and its pixel
accuracy (pAcc, printed only: one class dominates these pixels).

Printed beside the table: the constant-prediction pixel 5-way (one unseen class on every unseen pixel: the
largest unseen class's share, :func:`zss.engine.metrics.constant_five_way`) and, for each teacher used, its own
dense zero-shot score on the same pixels (:func:`zss.cli.train.teacher_dense_score`), with each row's mIoU(U) as a
share of its teacher's. Both teachers are MECHANISM TOOLS: the oracle reads the full label map and the taught
CLIP memorised these images. These are NOT zero-shot results. Targets (every seed; the 5-way thresholds are on
the class-mean accuracy; each row is compared with the seen-only row of ITS teacher):

* CLIP-ZSS (oracle): mIoU(U) >= seen-only (oracle) + 12, 5-way class-mean >= 60%, mIoU(S) >= seen-only - 5.
* CLIP-ZSS and Chimera-Seg (taught CLIP): mIoU(U) >= seen-only (taught CLIP) + 5, 5-way class-mean >= 45%.
* CLIP-RC (taught CLIP): mIoU(U) >= seen-only (taught CLIP) + 5.

    python scripts/transfer_check.py [--seeds 0 1] [--jobs 2] [--out runs/transfer_check] [--rows ...]
    python scripts/transfer_check.py --rows "seen-only (oracle)" "nel:experiment=demo method.nel_weight=1"  # ad-hoc

Runs ``--jobs`` trainings side by side with ``cores // jobs`` torch threads each (two processes with two
threads each on two cores ran ~10x slower than one). Prints a markdown table and PASS/FAIL lines and writes
them to ``<out>/transfer_check.md`` (rows and teacher scores: ``transfer_check.json``); each run directory keeps
its checkpoint and results.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

#: name -> Hydra overrides. The shipping method configs at demo (CPU) scale; one seen-only row per teacher.
ROWS: dict[str, list[str]] = {
    "seen-only (oracle)": ["experiment=demo_baseline"],
    "seen-only (taught CLIP)": ["experiment=demo_baseline", "teacher=taught_clip"],
    "CLIP-ZSS (oracle)": ["experiment=demo"],
    "CLIP-ZSS (taught CLIP)": ["experiment=demo", "teacher=taught_clip"],
    "Chimera-Seg (taught CLIP)": ["experiment=chimera_demo", "teacher=taught_clip"],
    "CLIP-RC (taught CLIP)": ["experiment=demo_clip_rc", "teacher=taught_clip"],
}
#: (row, its seen-only row (same teacher), mIoU(U) gain over it, 5-way CLASS-MEAN % or None, largest mIoU(S) drop
#: or None); the 5-way thresholds are on the class-mean accuracy.
TARGETS = [
    ("CLIP-ZSS (oracle)", "seen-only (oracle)", 12.0, 60.0, 5.0),
    ("CLIP-ZSS (taught CLIP)", "seen-only (taught CLIP)", 5.0, 45.0, None),
    ("Chimera-Seg (taught CLIP)", "seen-only (taught CLIP)", 5.0, 45.0, None),
    ("CLIP-RC (taught CLIP)", "seen-only (taught CLIP)", 5.0, None, None),
]


def _run(args: list[str], threads: int, log: Path) -> None:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    with log.open("a") as f:
        out = subprocess.run([sys.executable, *args], cwd=REPO, stdout=f, stderr=subprocess.STDOUT, env=env)
    if out.returncode != 0:
        sys.stderr.write(log.read_text()[-4000:])
        raise SystemExit(f"failed ({out.returncode}): {' '.join(args)}; log: {log}")


def _parse_rows(specs: list[str] | None, known: dict[str, list[str]] | None = None) -> dict[str, list[str]]:
    """``--rows`` values: names of ``known`` (default ROWS) or ad-hoc ``'name:override override ...'``."""
    table = ROWS if known is None else known
    if not specs:
        return dict(table)
    rows = {}
    for spec in specs:
        if spec in table:
            rows[spec] = table[spec]
        elif ":" in spec:
            name, ov = spec.split(":", 1)
            rows[name.strip()] = ov.split()
        else:
            raise SystemExit(f"--rows: {spec!r} is neither a known row {list(table)} nor 'name:overrides'")
    return rows


def _row(name: str, seed: int, run: Path, split: str, wall: float) -> dict | None:
    """The scores of a finished run dir (both label spaces evaluated on ``split``), else None."""
    scores, eff = {}, None
    for space in ("all", "unseen"):
        found = sorted((run / f"transfer_{split}_{space}").glob("*_results.json"))
        if not found:
            return None
        scores[space] = json.loads(found[0].read_text())
        cost = sorted((run / f"transfer_{split}_{space}").glob("*_efficiency.json"))
        if cost:
            eff = json.loads(cost[0].read_text())
    a, u = scores["all"], scores["unseen"]
    return dict(
        name=name,
        seed=seed,
        mIoU_S=a["mIoU_seen"],
        mIoU_U=a["mIoU_unseen"],
        hIoU=a["hIoU"],
        five_way=u["pAcc"],
        five_way_macc=u["mAcc"],
        per_class_IoU=[c["IoU"] for c in a["per_class"]],
        efficiency=eff,
        wall=wall,
        run=str(run),
    )


def train_and_score(
    name: str,
    overrides: list[str],
    seed: int,
    steps: int | None,
    out: Path,
    threads: int,
    extra: list[str],
    split: str = "train",
    reuse: bool = False,
    train: bool = True,
) -> dict | None:
    """Train one row for one seed and score it on ``split`` with FULL labels (label spaces all and unseen).

    ``reuse``: a run of this row and seed already scored on ``split`` under ``out`` is returned as it is (an
    interrupted check resumes; its wall time is the one recorded then, NaN when none was). ``train=False``: never
    train; a row with no trained run returns None (a report of what is there).

    Returns: dict name, seed, mIoU_S, mIoU_U, hIoU, five_way (pixel), five_way_macc (class-mean), per_class_IoU
    (list, label space all), efficiency (test-time model report of scripts/eval.py, seed 0 only), wall, run.
    """
    slug = "".join(c if c.isalnum() else "_" for c in name).strip("_").lower()
    root = out / f"seed{seed}" / slug
    root.mkdir(parents=True, exist_ok=True)
    log = root / "log.txt"
    t0 = time.perf_counter()
    trained = None
    if reuse:
        for run in sorted((p.parent for p in root.glob("*/*/last.pt")), key=lambda p: p.stat().st_mtime, reverse=True):
            wall = (
                json.loads((run / "row_wall.json").read_text())["wall"]
                if (run / "row_wall.json").is_file()
                else math.nan
            )
            row = _row(name, seed, run, split, wall)
            if row is not None:
                print(f"{name} seed {seed} ({split}): reused {run}", flush=True)
                return row
            if trained is None and (run / "final_results.json").is_file():  # trained to the end, not yet scored
                trained = run / "last.pt"
    args = [
        "scripts/train.py",
        *overrides,
        f"trainer.seed={seed}",
        "trainer.eval_interval=0",
        "trainer.overlay_count=0",
        "trainer.num_workers=1",
        "++transfer_view.enabled=false",
        f"run_root={root}",
        *extra,
    ]
    if steps:
        args.append(f"trainer.max_steps={steps}")
    if trained is None:
        if not train:
            return None
        _run(args, threads, log)
    ckpt = trained or max(root.glob("*/*/last.pt"), key=lambda p: p.stat().st_mtime)
    for space in ("all", "unseen"):
        measure_cost = space == "all" and seed == 0 and split != "train"
        _run(
            [
                "scripts/eval.py",
                f"ckpt={ckpt}",
                f"split={split}",
                f"eval.label_space={space}",
                f"out_dir={ckpt.parent / f'transfer_{split}_{space}'}",
                f"efficiency={'auto' if measure_cost else 'false'}",
            ],
            threads,
            log,
        )
    wall = time.perf_counter() - t0 if trained is None else math.nan  # a reused training: its time is unknown
    (ckpt.parent / "row_wall.json").write_text(json.dumps({"wall": wall}))
    row = _row(name, seed, ckpt.parent, split, wall)
    print(
        f"{name} seed {seed} ({split}): mIoU(S) {row['mIoU_S']:.2f} mIoU(U) {row['mIoU_U']:.2f} 5-way class-mean "
        f"{row['five_way_macc']:.1f}% ({wall:.0f} s, {ckpt.parent})",
        flush=True,
    )
    return row


def verdicts(rows: list[dict], seeds: list[int]) -> list[str]:
    """PASS/FAIL lines for the targets whose row and seen-only row (same teacher) were both run for a seed.

    Args:
        rows: :func:`train_and_score` dicts (``name``, ``seed``, ``mIoU_S``, ``mIoU_U``, ``five_way``,
            ``five_way_macc``). seeds: the seeds to judge.
    Returns:
        one line per (target, seed): ``PASS``/``FAIL seed <s> <row>: ...``, judged on mIoU(U) gain over the
        seen-only row of the same teacher, the 5-way class-mean accuracy and the mIoU(S) drop (pixel 5-way shown).
    """
    by = {(r["name"], r["seed"]): r for r in rows}
    lines = []
    for name, ref, gain, five, drop in TARGETS:
        for s in seeds:
            if (name, s) not in by or (ref, s) not in by:
                continue
            r, b = by[(name, s)], by[(ref, s)]
            g = r["mIoU_U"] - b["mIoU_U"]
            ok = g >= gain and (five is None or r["five_way_macc"] >= five)
            msg = f"mIoU(U) {g:+.2f} vs {ref} (>= +{gain:g}), 5-way class-mean {r['five_way_macc']:.1f}%"
            msg += f" (>= {five:g}%)" if five is not None else ""
            msg += f", 5-way pixel {r['five_way']:.1f}%"
            if drop is not None:
                d = r["mIoU_S"] - b["mIoU_S"]
                ok &= d >= -drop
                msg += f", mIoU(S) {d:+.2f} (>= -{drop:g})"
            lines.append(f"{'PASS' if ok else 'FAIL'} seed {s} {name}: {msg}")
    return lines


def compose_row(overrides: list[str], extra: list[str] = ()):
    """The composed train config of a row (``configs/train.yaml`` + the row's and the extra Hydra overrides)."""
    from hydra import compose, initialize_config_dir

    from zss.cli.common import CONFIG_DIR

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=[*overrides, *extra])


def teacher_scores(rows: dict[str, list[str]], extra: list[str], split: str = "train") -> tuple[dict, dict]:
    """Each distinct teacher of ``rows`` scored on its own on ``split`` (:func:`zss.cli.train.teacher_dense_score`).

    Returns:
        (scores, row_teacher): ``scores`` maps a teacher key to the dict of ``teacher_dense_score`` (``teacher``
        name, ``mIoU_seen``, ``mIoU_unseen``, ``hIoU``, ``five_way_mAcc``, ``five_way_pAcc``, ``gt_pixels``, ...);
        ``row_teacher`` maps each row name to its teacher key (rows with the same teacher and dataset config share
        one key, so each teacher is scored once).
    """
    from omegaconf import OmegaConf

    from zss.cli.train import teacher_dense_score

    scores: dict[str, dict] = {}
    row_teacher: dict[str, str] = {}
    for name, ov in rows.items():
        cfg = compose_row(ov, extra)
        key = json.dumps(OmegaConf.to_container(cfg.teacher, resolve=True), sort_keys=True) + json.dumps(
            OmegaConf.to_container(cfg.dataset, resolve=True), sort_keys=True
        )
        if key not in scores:
            scores[key] = teacher_dense_score(cfg, split)
        row_teacher[name] = key
    return scores, row_teacher


def format_report(
    results: list[dict], scores: dict, row_teacher: dict, unseen: list[int], classes: list[str], seeds: list[int]
) -> str:
    """The markdown report: the table (a row per run, a row per teacher), the constant-prediction 5-way and the
    PASS/FAIL lines (:func:`verdicts`).

    Args:
        results: :func:`train_and_score` dicts. scores, row_teacher: from :func:`teacher_scores`.
        unseen: unseen class ids; classes: the class names (label-id order). seeds: seeds to judge.
    """
    from zss.engine.metrics import constant_five_way

    def f(v):
        return "nan" if v is None or v != v else f"{v:.2f}"

    n = next(iter(scores.values()))["num_images"] if scores else 40
    lines = [
        f"Transfer check on the {n} bundled VOC training images, scored on their FULL labels (unseen pixels never",
        "labelled for the student): a real-image smoke check of the pipeline. Teachers are mechanism tools (oracle:",
        "reads the label map; taught CLIP: memorised these images): NOT zero-shot results.",
        "",
        "| method | seed | mIoU(S) | mIoU(U) | hIoU | 5-way class-mean % | 5-way pixel % | mIoU(U) / teacher's % "
        "| wall s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        t = scores.get(row_teacher.get(r["name"], ""), {})
        tu = t.get("mIoU_unseen", float("nan"))
        ratio = r["mIoU_U"] / tu * 100 if tu == tu and tu > 0 else float("nan")
        lines.append(
            f"| {r['name']} | {r['seed']} | {f(r['mIoU_S'])} | {f(r['mIoU_U'])} | {f(r['hIoU'])} | "
            f"{f(r['five_way_macc'])} | {f(r['five_way'])} | {f(ratio)} | {r['wall']:.0f} |"
        )
    for t in scores.values():
        lines.append(
            f"| teacher: {t['teacher']} (its own dense zero-shot) | — | {f(t['mIoU_seen'])} | "
            f"{f(t['mIoU_unseen'])} | {f(t['hIoU'])} | {f(t['five_way_mAcc'])} | {f(t['five_way_pAcc'])} | "
            f"100 | — |"
        )
    lines.append("")
    if scores:
        const = constant_five_way(next(iter(scores.values()))["gt_pixels"], unseen)
        cname = classes[const["class_id"]] if const["class_id"] >= 0 else "none"
        lines += [
            f"Constant prediction: {cname!r} on every unseen pixel scores 5-way pixel {f(const['pAcc'])}% "
            f"(that class's share of the {const['unseen_pixels']} unseen pixels) and class-mean "
            f"{f(const['mAcc'])}% (1 / {const['present']} unseen classes present).",
            "",
        ]
    lines += [
        "5-way: pixels whose ground truth is unseen, argmax over the 5 unseen classes. The class-mean (mean",
        "per-class accuracy, chance 20%) is the targets' metric; the pixel accuracy is shown beside it and",
        "means something only above the constant prediction. Teacher rows: the teacher's dense embeds against",
        "its text embeds on the same pixels (the oracle is handed the full label). Each row is judged against",
        "the seen-only row of its own teacher.",
        "",
        *verdicts(results, seeds),
    ]
    return "\n".join(lines)


def main() -> None:
    import torch

    from zss.data.classes import get_benchmark

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument(
        "--steps",
        type=int,
        default=None,
        help="override trainer.max_steps (default: the demo's, configs/experiment/demo.yaml)",
    )
    ap.add_argument("--jobs", type=int, default=2, help="trainings side by side (default 2)")
    ap.add_argument("--out", default="runs/transfer_check")
    ap.add_argument(
        "--rows", nargs="+", default=None, help=f"rows to run: names of {list(ROWS)} or 'name:override override ...'"
    )
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run")
    a = ap.parse_args()
    rows = _parse_rows(a.rows)
    out = Path(a.out).resolve()  # the runs (trained from the repo root) and the report land in the same folder
    out.mkdir(parents=True, exist_ok=True)
    if any("teacher=taught_clip" in ov for ovs in rows.values() for ov in ovs):
        _run(["scripts/teach_clip.py"], os.cpu_count() or 1, out / "teach_clip.log")  # cached: quick when built
    threads = max(1, (os.cpu_count() or 1) // max(1, a.jobs))
    torch.set_num_threads(os.cpu_count() or 1)
    with contextlib.chdir(REPO):  # the configs' relative paths (data, taught-CLIP weights) as train.py sees them
        scores, row_teacher = teacher_scores(rows, a.overrides)  # before training: a missing teacher fails fast
    for t in scores.values():
        print(
            f"teacher {t['teacher']} (its own dense zero-shot, train split): mIoU(S) {t['mIoU_seen']:.2f} "
            f"mIoU(U) {t['mIoU_unseen']:.2f} 5-way class-mean {t['five_way_mAcc']:.1f}%",
            flush=True,
        )
    cfg = compose_row(next(iter(rows.values())), a.overrides)
    bench = get_benchmark(cfg.dataset.benchmark, cfg.dataset.get("split"))
    jobs = [(name, ov, s) for s in a.seeds for name, ov in rows.items()]
    with ThreadPoolExecutor(max_workers=max(1, a.jobs)) as pool:
        results = list(pool.map(lambda j: train_and_score(j[0], j[1], j[2], a.steps, out, threads, a.overrides), jobs))
    text = format_report(results, scores, row_teacher, list(bench.unseen), list(bench.classes), a.seeds)
    print("\n" + text)
    out.mkdir(parents=True, exist_ok=True)
    (out / "transfer_check.md").write_text(text + "\n")
    named = {k: scores[v]["teacher"] for k, v in row_teacher.items()}
    (out / "transfer_check.json").write_text(
        json.dumps(
            {"rows": results, "teachers": {t["teacher"]: t for t in scores.values()}, "row_teacher": named},
            indent=2,
            default=float,
        )
    )


if __name__ == "__main__":
    main()
