#!/usr/bin/env python
"""Benchmark: one training sample through zss's data pipeline (read, keep-ratio rescale, cat_max_ratio crop, flip,
normalise), per dataset preset, with the crop's acceptance rule counted two ways.

``RandomCropCatMax`` re-samples a crop until no class covers ``cat_max_ratio`` of its labelled pixels (mmseg's rule,
up to 10 tries). The rows: ``bincount`` (the shipping count) and ``torch.unique`` (the sorting count zss used before
2026-12-07, the reference); both make the same decisions, so the same seed yields the same samples (checked here:
the column "same samples"). One thread, same seed per row, median of the repeats (docs/architecture.md "Measuring
speed": ratios against a reference measured in the same run).

Usage: python scripts/bench_data.py [--presets voc20 world] [--samples 40] [--repeats 3]
(voc20 reads the bundled VOC sample at the voc20 preset's 512² crops; world needs ``zss-make-world``.)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from zss.data.transforms import RandomCropCatMax

REPO = Path(__file__).resolve().parents[1]
#: preset -> its data root here (the configs' `root` of voc20 points at a full VOC; the bundled sample stands in).
PRESETS = {"voc20": REPO / "data/VOCdevkit/VOC2012", "world": REPO / "data/world"}


def _train_set(name: str):
    """The training set of ``configs/dataset/<name>.yaml`` as ``scripts/train.py`` builds it, and its crop size."""
    from omegaconf import OmegaConf

    from zss.cli.common import build_benchmark, build_data

    ds = OmegaConf.load(REPO / "configs" / "dataset" / f"{name}.yaml")
    ds.root = str(PRESETS[name])
    return build_data(ds, build_benchmark(ds))[0], f"{ds.crop_size[0]}x{ds.crop_size[1]}"


def _accept_unique(self: RandomCropCatMax, crop: torch.Tensor) -> bool:
    """The reference: the acceptance rule with torch.unique's sorted counts."""
    labels, counts = torch.unique(crop, return_counts=True)
    counts = counts[labels != self.ignore_index]
    return counts.numel() > 1 and (counts.max().item() / counts.sum().item()) < self.cat_max_ratio


def _time(ds, n: int, repeats: int) -> tuple[float, list[torch.Tensor]]:
    times, labels = [], []
    for _ in range(repeats):
        torch.manual_seed(0)
        t = time.perf_counter()
        labels = [ds[i % len(ds)]["label"] for i in range(n)]
        times.append((time.perf_counter() - t) / n * 1e3)
    return statistics.median(times), labels


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=["voc20", "world"], choices=sorted(PRESETS))
    ap.add_argument("--samples", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    torch.set_num_threads(1)
    shipping = RandomCropCatMax._accept
    print("| preset | crop | count | ms / sample | × torch.unique | same samples |")
    print("|---|---|---|---:|---:|---|")
    for name in a.presets:
        if not PRESETS[name].exists():
            sys.exit(f"bench_data: {PRESETS[name]} is missing (world: run `zss-make-world` first).")
        ds, size = _train_set(name)
        try:
            RandomCropCatMax._accept = _accept_unique
            ref, ref_labels = _time(ds, a.samples, a.repeats)
        finally:
            RandomCropCatMax._accept = shipping
        ms, labels = _time(ds, a.samples, a.repeats)
        same = all(torch.equal(x, y) for x, y in zip(labels, ref_labels))
        print(f"| {name} | {size} | torch.unique (reference) | {ref:.1f} | 1.00 | — |")
        print(f"| {name} | {size} | bincount (shipping) | {ms:.1f} | {ms / ref:.2f} | {'yes' if same else 'NO'} |")


if __name__ == "__main__":
    main()
