"""``zss-eval`` / ``scripts/eval.py``: score a checkpoint on a split (:func:`evaluate_checkpoint`); result files are
named by the inference settings, so evaluations with other settings never overwrite each other.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from zss.cli.common import (
    build_benchmark,
    build_data,
    check_eval_settings,
    load_for_inference,
    non_null,
    run_hydra,
    teacher_note,
    templates_for,
    writable_dir,
    write_report,
)
from zss.engine.checkpoint import load_checkpoint
from zss.engine.evaluate import evaluate
from zss.utils import dist as zdist


def eval_tag(settings: dict) -> str:
    """File stem of an evaluation's results:
    ``eval_<benchmark>_<label_space>_<mode>_sb<seen_bias>[_bf16]_<digest>_<split>`` (e.g.
    ``eval_voc20_all_slide_sb0_1a2b3c4d_val``), where ``digest`` is the first 8 hex digits of the SHA-1 of every
    setting (the keys above and the data root, test scale, crop/stride, checkpoint file and step): evaluations
    that can differ in their numbers never share a file; the same evaluation again writes the same file."""
    import hashlib

    amp = "" if settings.get("amp", "fp32") in (None, "fp32") else f"_{settings['amp']}"
    digest = hashlib.sha1(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:8]
    return (
        f"eval_{settings['benchmark']}_{settings['label_space']}_{settings['eval_mode']}_"
        f"sb{float(settings['seen_bias']):g}{amp}_{digest}_{settings['split']}"
    )


def evaluate_checkpoint(cfg: DictConfig) -> dict:
    """Evaluate ``cfg.ckpt`` with the dataset / inference settings it was trained with (each
    overridable from the command line: ``dataset.root=...``, ``split=train``, ``eval.*``). A dataset
    preset other than the training one (``dataset=context59``...) is evaluated over its own full
    class list (open-vocabulary / cross-dataset), with text embeds from the teacher's text encoder."""
    device = zdist.init_distributed(cfg.device)
    ckpt = load_checkpoint(cfg.ckpt, map_location="cpu")
    out = writable_dir(Path(cfg.out_dir) if cfg.get("out_dir") else Path(cfg.ckpt).parent, "out_dir")  # before work
    tcfg = OmegaConf.create(ckpt["config"])
    ds = OmegaConf.merge(tcfg.dataset, non_null(cfg.get("dataset")))
    bench = build_benchmark(ds)
    ev = OmegaConf.merge(
        {
            k: tcfg.trainer[k]
            for k in ("eval_mode", "eval_crop", "eval_stride", "eval_crop_batch", "label_space", "seen_bias", "amp")
        },
        non_null(cfg.get("eval")),
    )
    check_eval_settings(ev, "eval.")  # before the model is built
    method, ckpt = load_for_inference(
        cfg.ckpt,
        classnames=list(bench.classes),
        unseen=list(bench.unseen),
        templates=templates_for(ds, bench),
        teacher_overrides=non_null(cfg.get("teacher")),
        device=device,
        input_norm=(ds.mean, ds.std),
    )
    _, val_set = build_data(ds, bench, train=False, val_split=cfg.split or ds.val_split)
    amp = torch.bfloat16 if ev.amp == "bf16" else None
    results = evaluate(
        method,
        val_set,
        mode=ev.eval_mode,
        crop=tuple(ev.eval_crop),
        stride=tuple(ev.eval_stride),
        crop_batch=ev.eval_crop_batch,
        label_space=ev.label_space,
        seen_bias=ev.seen_bias,
        amp_dtype=amp,
        device=device,
        progress=zdist.is_main(),
    )
    if zdist.is_main():
        split = cfg.split or ds.val_split
        settings = {
            "benchmark": ds.benchmark,
            "split": split,
            "label_space": ev.label_space,
            "eval_mode": ev.eval_mode,
            "seen_bias": float(ev.seen_bias),
            "amp": ev.amp or "fp32",
            "data_root": str(Path(str(ds.root)).expanduser().resolve()),
            "test_scale": [int(v) for v in ds.test_scale],
            "eval_crop": [int(v) for v in ev.eval_crop],
            "eval_stride": [int(v) for v in ev.eval_stride],
            "checkpoint": str(Path(str(cfg.ckpt)).expanduser().resolve()),
            "step": ckpt.get("step"),
        }
        results["settings"] = settings
        tag = eval_tag(settings)  # one file set per setting: runs with other settings never overwrite it
        write_report(
            results, out, tag, note=teacher_note(ckpt.get("teacher") or {}), config=ckpt.get("config"), split=split
        )
        eff_mode = cfg.get("efficiency", "auto")
        if eff_mode:
            from zss.engine.efficiency import efficiency_report, format_efficiency

            eff = efficiency_report(
                method,
                image_size=(512, 512),
                device=device,
                amp_dtype=amp,
                batch_size=int(ev.eval_crop_batch),
                measure=eff_mode is True or device.type == "cuda",
            )
            text = format_efficiency(eff, title=f"Efficiency (test-time model, {ds.benchmark})")
            print("\n" + text)
            (out / f"{tag}_efficiency.md").write_text(text + "\n")
            (out / f"{tag}_efficiency.json").write_text(json.dumps(eff, indent=2, default=str))
    zdist.cleanup()
    return results


def eval_main() -> None:
    """Console entry ``zss-eval`` (and ``scripts/eval.py``): Hydra overrides of configs/eval.yaml."""
    run_hydra("eval", evaluate_checkpoint)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(eval_main())
