"""``zss-clip-es-masks`` / ``scripts/clip_es_masks.py``: CLIP-ES pseudo masks for a split
(:mod:`zss.engine.clip_es_masks` does the work with plain values).
"""

from __future__ import annotations

import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from zss.cli.common import build_benchmark, build_teacher, run_hydra, teacher_note, train_ann_dirs
from zss.data.dataset import build_dataset
from zss.utils import dist as zdist


def clip_es_masks(cfg: DictConfig) -> dict:
    """CLIP-ES pseudo masks for ``cfg.split`` of ``cfg.dataset`` (docs/clip_es.md): PNGs + report."""
    from zss.engine.clip_es_masks import format_report, generate_pseudo_masks
    from zss.teachers.clip import FrozenCLIP

    device = zdist.init_distributed(cfg.device)
    bench = build_benchmark(cfg.dataset)
    teacher = build_teacher(cfg, bench)
    if not isinstance(teacher, FrozenCLIP):
        raise ValueError(
            f"CLIP-ES needs a CLIP teacher (FrozenCLIP), got {type(teacher).__name__} "
            f"(teacher._target_={cfg.teacher._target_}); use teacher=clip_vitb16 or teacher=tiny_random."
        )
    ann = train_ann_dirs(cfg.dataset) if cfg.split == cfg.dataset.get("train_split") else None
    ds = build_dataset(
        cfg.dataset.benchmark,
        cfg.dataset.root,
        split=cfg.split,
        transform=None,
        benchmark_split=cfg.dataset.get("split"),
        ann_dir=ann,
    )
    out_dir = cfg.out_dir or str(Path(cfg.run_root) / "clip_es" / f"{cfg.dataset.name}_{cfg.split}")
    v, c, k = cfg.clip_es, cfg.crf, cfg.cam
    crf_enabled = c.enabled if isinstance(c.enabled, bool) else str(c.enabled)
    report = generate_pseudo_masks(
        teacher,
        ds,
        out_dir,
        background_class=v.background_class,
        synonyms=OmegaConf.to_container(v.synonyms) if v.synonyms else None,
        background_words=list(v.background_words),
        template=v.template,
        box_threshold=float(v.box_threshold),
        labels_from=cfg.labels_from,
        attn_layers=int(k.attn_layers),
        logit_scale=k.logit_scale,
        pos_interp=k.pos_interp,
        pair_chunk=int(k.pair_chunk),
        sinkhorn_rounds=int(cfg.caa.sinkhorn_rounds),
        power_steps=int(cfg.caa.power_steps),
        eval_alphas=[float(a) for a in cfg.masks.eval_alphas],
        crf=crf_enabled,
        crf_alpha=float(c.alpha),
        crf_params={n: c[n] for n in ("iters", "pos_xy_std", "pos_w", "bi_xy_std", "bi_rgb_std", "bi_w")},
        crf_color=c.color,
        confidence=float(c.confidence),
        mask_alpha=float(cfg.masks.mask_alpha),
        limit=cfg.limit,
        compare_kmeans=bool(cfg.compare_kmeans),
        device=device,
        progress=bool(cfg.progress),
    )
    print("\n" + format_report(report))
    note = teacher_note(report.get("teacher") or {})
    if note:
        print(f"\nNOTE: {note}")
    return report


def clip_es_main() -> None:
    """Console entry ``zss-clip-es-masks`` (and ``scripts/clip_es_masks.py``): overrides of configs/clip_es.yaml."""
    run_hydra("clip_es", clip_es_masks)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(clip_es_main())
