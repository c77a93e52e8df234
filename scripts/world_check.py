#!/usr/bin/env python
"""World check: does a student trained under the world's teacher label unseen classes on images it never saw?

On the synthetic zero-shot world (docs/world.md; ``zss-make-world`` writes it, this script makes it if
missing) with its label-taught CLIP (taught on the ``teach`` split only; built here if missing), trains for
each seed the seen-only reference, CLIP-ZSS, Chimera-Seg, CLIP-RC and ZegCLIP at one CPU recipe
(``experiment=world*``: same student and schedule for the distilled methods) on the ``train`` split, and
scores each once on the held-out split (``--split test``, default; ``--split val`` to choose anything):
mIoU(S), mIoU(U), hIoU, the 5-way class-mean accuracy (pixels whose ground truth is unseen, argmax over the
unseen classes, mean over the unseen classes; chance 1/#unseen) and per-class IoU, beside the teacher's own
dense zero-shot score on the same split and the ratio student mIoU(U) / teacher mIoU(U). Mean +- std over seeds,
then PASS/FAIL lines for the targets:

* seen-only: mIoU(S) >= 60 and mIoU(U) <= 5 (the world is learnable, the reference honest);
* CLIP-ZSS and Chimera-Seg: mIoU(U) >= seen-only + 20 and >= 50% of the teacher's; mIoU(S) >= seen-only - 3;
  5-way class-mean >= 60%;
* CLIP-RC and ZegCLIP: reported with their test-time cost (they keep CLIP at test time).

    python scripts/world_check.py [--seeds 0 1 2] [--jobs 2] [--split test] [--rows ...] [overrides ...]
    python scripts/world_check.py --split val --rows "clip_zss" "nel:experiment=world method.nel_weight=1"

A (row, seed) already scored on the split under ``--out`` is reused, so an interrupted check resumes where it was.

The teacher is a MECHANISM TOOL taught on labels (unseen classes included, as real CLIP saw them on the web):
these are not real-CLIP results, but every scored image is one neither the teacher nor the student trained on.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from transfer_check import REPO, _parse_rows, _run, train_and_score  # noqa: E402

#: name -> Hydra overrides (configs/experiment/world*.yaml).
ROWS: dict[str, list[str]] = {
    "seen-only": ["experiment=world_baseline"],
    "CLIP-ZSS": ["experiment=world"],
    "Chimera-Seg": ["experiment=world_chimera"],
    "CLIP-RC": ["experiment=world_clip_rc"],
    "ZegCLIP": ["experiment=world_clip_rc", "method=zegclip"],
}
#: rows held to the distillation targets; the others are reported beside them.
DISTILLED = ("CLIP-ZSS", "Chimera-Seg")


def teacher_ceiling(split: str, out: Path, threads: int | None = None) -> dict:
    """The world's taught CLIP scored on ``split`` (built first if missing): its dense zero-shot numbers."""
    import torch

    from zss.data.classes import get_benchmark
    from zss.tools.taught_clip import (
        WORLD_PRESET,
        TaughtClipSettings,
        ensure_taught_clip,
        evaluate_dense_quality,
        load_taught_clip,
        quality_dataset,
    )

    torch.set_num_threads(threads or os.cpu_count() or 1)
    settings = TaughtClipSettings(**WORLD_PRESET)
    d, _ = ensure_taught_clip(settings, log=lambda m: print(m, flush=True), log_every=100)
    bench = get_benchmark("world")
    teacher = load_taught_clip(d, dense_mode="maskclip")
    q = evaluate_dense_quality(
        teacher, quality_dataset(settings, (split,)), bench.classes, bench.templates, bench.unseen
    )
    (out / f"teacher_{split}.json").write_text(json.dumps(q, indent=2, default=float))
    return q


def _ms(vals: list[float]) -> str:
    vals = [v for v in vals if v is not None and not math.isnan(v)]
    if not vals:
        return "nan"
    sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return f"{statistics.mean(vals):.2f} ± {sd:.2f}"


#: where the seen-only reference's unseen score above the bound is measured and explained
WHY_ABOVE_5 = 'docs/world.md "Why the seen-only reference scores above 5"'


def _mean(rows: list[dict], key: str) -> float:
    return statistics.mean(r[key] for r in rows)


def verdicts(by: dict[str, list[dict]], teacher_u: float) -> list[str]:
    """PASS/FAIL lines for issue 18's targets, on the means over seeds.

    Args:
        by: row name -> one dict per seed with ``mIoU_S``, ``mIoU_U`` and ``five_way_macc`` (percent); the rows
            judged are ``"seen-only"`` and :data:`DISTILLED`, each distilled row against the seen-only row of the
            same check (no verdict without it).
        teacher_u: the teacher's own dense zero-shot mIoU(U) on the same split (percent).

    Returns:
        One line per judged row, ``"PASS <row>: ..."`` or ``"FAIL <row>: ..."`` with each target beside its value.
    """
    lines = []
    base = by.get("seen-only")
    if base:
        s, u = _mean(base, "mIoU_S"), _mean(base, "mIoU_U")
        line = f"{'PASS' if s >= 60 and u <= 5 else 'FAIL'} seen-only: mIoU(S) {s:.2f} (>= 60), mIoU(U) {u:.2f} (<= 5)"
        if u > 5:
            line += f"; why a text-embed classifier can exceed 5 on this world: {WHY_ABOVE_5}"
        lines.append(line)
    for name in DISTILLED:
        if name not in by or not base:
            continue
        r = by[name]
        u, s, five = _mean(r, "mIoU_U"), _mean(r, "mIoU_S"), _mean(r, "five_way_macc")
        gain, drop = u - _mean(base, "mIoU_U"), s - _mean(base, "mIoU_S")
        ratio = u / teacher_u * 100 if teacher_u > 0 else float("nan")
        ok = gain >= 20 and ratio >= 50 and drop >= -3 and five >= 60
        lines.append(
            f"{'PASS' if ok else 'FAIL'} {name}: mIoU(U) {gain:+.2f} vs seen-only (>= +20), {ratio:.0f}% of "
            f"the teacher's (>= 50%), mIoU(S) {drop:+.2f} (>= -3), 5-way class-mean {five:.1f}% (>= 60%)"
        )
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=None, help="override trainer.max_steps (default: experiment=world's)")
    ap.add_argument("--jobs", type=int, default=2, help="trainings side by side, one thread each (default 2)")
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads per training (default cores // jobs); 1 when other work shares the cores",
    )
    ap.add_argument("--split", default="test", help="scored split: test (report) or val (choose); default test")
    ap.add_argument("--out", default=None, help="output folder (default runs/world_check_<split>)")
    ap.add_argument(
        "--rows", nargs="+", default=None, help=f"rows to run: names of {list(ROWS)} or 'name:override override ...'"
    )
    ap.add_argument(
        "--no-train",
        action="store_true",
        help="train nothing: report the (row, seed) runs already under --out (e.g. rows run for fewer seeds)",
    )
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run")
    a = ap.parse_args()
    rows = _parse_rows(a.rows, ROWS)
    out = Path(a.out or f"runs/world_check_{a.split}")
    out.mkdir(parents=True, exist_ok=True)
    if not (REPO / "data" / "world" / "world.json").is_file():
        _run(["-m", "zss.cli.make_world", "--out", "data/world"], os.cpu_count() or 1, out / "make_world.log")
    threads = a.threads or max(1, (os.cpu_count() or 1) // max(1, a.jobs))
    teacher = teacher_ceiling(a.split, out, threads)
    jobs = [(name, ov, s) for s in a.seeds for name, ov in rows.items()]
    with ThreadPoolExecutor(max_workers=max(1, a.jobs)) as pool:
        results = list(
            pool.map(
                lambda j: train_and_score(
                    j[0],
                    j[1],
                    j[2],
                    a.steps,
                    out,
                    threads,
                    a.overrides,
                    split=a.split,
                    reuse=True,
                    train=not a.no_train,
                ),
                jobs,
            )
        )
    results = [r for r in results if r is not None]
    by: dict[str, list[dict]] = {}
    for r in results:
        by.setdefault(r["name"], []).append(r)

    from zss.data.classes import get_benchmark

    bench = get_benchmark("world")
    tu = teacher["mIoU_unseen"]
    lines = [
        f"World check on the {a.split!r} split of the synthetic world (images neither the teacher nor the students",
        f"trained on), seeds {a.seeds}, mean ± std. Teacher: the world's label-taught CLIP (a mechanism tool).",
        "",
        "| method | seeds | mIoU(S) | mIoU(U) | hIoU | 5-way class-mean % | mIoU(U) / teacher's % | wall s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        f"| teacher (dense zero-shot) | — | {teacher['mIoU_seen']:.2f} | {tu:.2f} | {teacher['hIoU']:.2f} | "
        f"{teacher.get('five_way_mAcc', float('nan')):.2f} | 100 | — |",
    ]
    for name, rs in by.items():
        lines.append(
            f"| {name} | {len(rs)} | {_ms([r['mIoU_S'] for r in rs])} | {_ms([r['mIoU_U'] for r in rs])} | "
            f"{_ms([r['hIoU'] for r in rs])} | {_ms([r['five_way_macc'] for r in rs])} | "
            f"{_ms([r['mIoU_U'] / tu * 100 if tu > 0 else float('nan') for r in rs])} | "
            f"{_ms([r['wall'] for r in rs])} |"
        )
    lines += [
        "",
        "Per-class IoU (mean over seeds; U = unseen):",
        "",
        "| class | " + " | ".join(["teacher", *by]) + " |",
        "|---|" + "---:|" * (len(by) + 1),
    ]
    for c, cname in enumerate(bench.classes):
        cells = [f"{teacher['per_class_IoU'][c]:.1f}"]
        cells += [f"{statistics.mean(r['per_class_IoU'][c] for r in rs):.1f}" for rs in by.values()]
        lines.append(f"| {cname}{' (U)' if c in bench.unseen else ''} | " + " | ".join(cells) + " |")
    cost = [(name, rs[0]["efficiency"]) for name, rs in by.items() if rs[0].get("efficiency")]
    if cost:
        lines += [
            "",
            "Test-time model (one forward at 512², batch 1; scripts/eval.py efficiency report, FLOPs = 2 x MACs):",
            "",
            "| method | parameters (M) | GFLOPs |",
            "|---|---:|---:|",
        ]
        lines += [
            f"| {n} | {e.get('total_params', float('nan')) / 1e6:.1f} | {e.get('gflops', float('nan')):.1f} |"
            for n, e in cost
        ]
    lines += ["", *verdicts(by, tu)]
    text = "\n".join(lines)
    print("\n" + text)
    (out / "world_check.md").write_text(text + "\n")
    (out / "world_check.json").write_text(json.dumps({"teacher": teacher, "rows": results}, indent=2, default=float))


if __name__ == "__main__":
    main()
