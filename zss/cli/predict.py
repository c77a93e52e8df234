"""Composition root of ``scripts/predict.py`` (configs/predict.yaml): checkpoint + vocabulary -> overlays.

    python scripts/predict.py ckpt=runs/<name>/<stamp>/last.pt image=photo.jpg classes="cat,dog,grass"

Besides ``zss.cli`` this is the only module under ``zss/`` that uses Hydra / OmegaConf, and it imports
them (and ``zss.cli``) lazily inside its functions, so ``import zss.cli.predict`` stays Hydra-free.
The work itself is :mod:`zss.predict` (plain values only).
"""

from __future__ import annotations

import sys
from pathlib import Path

__all__ = ["predict", "predict_main", "quote_classes_arg"]


def quote_classes_arg(args: list[str]) -> list[str]:
    """Quote a bare comma list in ``classes=a,b,c`` so Hydra reads one string, not a sweep.

    ``classes="cat,dog"`` in a shell reaches Python as ``classes=cat,dog``, which Hydra's override
    grammar rejects outside ``--multirun``; this rewrites it to ``classes='cat,dog'``. Lists
    (``classes=[a,b]``) and already quoted values pass unchanged.
    """
    out = []
    for a in args:
        key, sep, val = a.partition("=")
        if sep and key.lstrip("+~") == "classes" and "," in val and val[:1] not in "[\"'" and "'" not in val:
            a = f"{key}='{val}'"
        out.append(a)
    return out


def _plain(v):
    from omegaconf import OmegaConf

    return OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v


def check_out_dir(out, image) -> Path:
    """``out=`` checked before the model loads: writable (created if missing) and not the input folder, whose
    images the next run would read back (predict never reads its own outputs).

    Raises:
        ValueError: ``out`` is the ``image=`` folder (or the folder of the ``image=`` file). OSError: not writable.
    """
    from zss.cli.common import writable_dir

    src = Path(image).expanduser().resolve()
    src = src if src.is_dir() else src.parent
    if Path(out).expanduser().resolve() == src:
        raise ValueError(
            f"out={out} is the folder of image={image}: the overlays would be read as input by the next "
            f"run on that folder; pass out=<another folder>"
        )
    return writable_dir(Path(out).expanduser(), "out")


def predict(cfg) -> list[dict]:
    """Build the method from ``cfg.ckpt`` for the requested vocabulary and segment ``cfg.image``.

    Args:
        cfg: the composed ``configs/predict.yaml`` (``DictConfig``); null keys fall back to the
            checkpoint's config (dataset mean/std/test_scale, trainer eval_mode/crop/stride).

    Returns:
        the list returned by :func:`zss.predict.predict_paths` (one dict per image).

    Raises:
        FileNotFoundError: checkpoint / image / classes_file missing. FileExistsError: ``out`` holds
        another vocabulary. ValueError: bad classes, mode, label_space. RuntimeError: the teacher's text
        encoder could not be built for a new vocabulary (names ``teacher.pretrained=``).
    """
    import torch
    from omegaconf import OmegaConf

    from zss.cli.common import check_eval_settings, load_for_inference, non_null, teacher_note
    from zss.predict import list_images, parse_classes, predict_paths

    classes = cfg.get("classes")
    if classes is not None and not isinstance(classes, str):
        classes = list(OmegaConf.to_container(classes, resolve=True))
    classnames = parse_classes(classes, cfg.get("classes_file"))
    images = list_images(cfg.image)  # fail before loading anything
    check_eval_settings(
        {
            k: _plain(cfg.get(k))
            for k in (
                "mode",
                "crop",
                "stride",
                "crop_batch",
                "short_side",
                "long_side",
                "label_space",
                "seen_bias",
                "alpha",
                "amp",
                "max_pixels",
            )
        }
    )
    check_out_dir(cfg.out, cfg.image)
    device = cfg.get("device", "auto")
    device = torch.device(
        "cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device)
    )
    templates = list(cfg.templates) if cfg.get("templates") else None
    try:
        method, ckpt = load_for_inference(
            cfg.ckpt,
            classnames=classnames,
            unseen=[],
            templates=templates,
            teacher_overrides=non_null(cfg.get("teacher")),
            device=device,
        )
    except (FileNotFoundError, ValueError, KeyError):
        raise
    except Exception as e:  # teacher weights (download / file) for the text encoder
        if classnames is None:
            raise
        raise RuntimeError(
            f"could not build the teacher's text encoder for classes={classnames}: {type(e).__name__}: {e}. "
            "A new vocabulary needs the teacher's real weights: pass teacher.pretrained=<local weights file>."
        ) from e
    label_space = cfg.get("label_space", "all")
    if label_space == "unseen" and method.unseen.numel() == 0:
        raise ValueError(
            "label_space=unseen needs unseen classes: it only works with the checkpoint's own "
            "vocabulary (leave classes= unset) or use label_space=all"
        )
    tc, dc = ckpt["config"]["trainer"], ckpt["config"]["dataset"]

    def pick(key: str, default):
        v = cfg.get(key)
        return default if v is None else v

    test_scale = [int(s) for s in dc.get("test_scale", (2048, 512))]
    if cfg.get("short_side") is None:  # the checkpoint's test resize (protocol: short 512, long <= 2048)
        short, long = min(test_scale), pick("long_side", max(test_scale))
    else:  # the user's short side; no long-side bound unless long_side= is given
        short, long = int(cfg.short_side), cfg.get("long_side")
    mode = pick("mode", tc.get("eval_mode", "slide"))
    amp = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}.get(str(cfg.get("amp", "fp32")), "bad")
    if amp == "bad":
        raise ValueError(f"amp={cfg.amp!r}: choose amp=fp32 or amp=bf16")
    note = teacher_note(ckpt.get("teacher") or {})
    print(
        f"zss: {len(images)} image(s), {len(method.classnames)} classes "
        f"({', '.join(method.classnames[:8])}{', ...' if len(method.classnames) > 8 else ''}), mode={mode}, "
        f"short side {short}px, out={cfg.out}" + (f"\nzss: NOTE {note}" if note else ""),
        flush=True,
    )
    results = predict_paths(
        method,
        images,
        cfg.out,
        tuple(dc["mean"]),
        tuple(dc["std"]),
        overwrite=bool(cfg.get("overwrite", False)),
        alpha=float(cfg.get("alpha", 0.5)),
        short_side=short,
        long_side=None if long is None else int(long),
        mode=mode,
        crop=tuple(pick("crop", tc.get("eval_crop", (512, 512)))),
        stride=tuple(pick("stride", tc.get("eval_stride", (426, 426)))),
        crop_batch=int(pick("crop_batch", tc.get("eval_crop_batch", 8))),
        label_space=label_space,
        seen_bias=float(cfg.get("seen_bias") or 0.0),
        amp_dtype=amp,
        device=device,
        max_pixels=None if cfg.get("max_pixels") is None else int(cfg.max_pixels),
    )
    print(f"zss: wrote {2 * len(results)} files and classes.txt to {Path(cfg.out)}")
    return results


def predict_main() -> None:
    """Hydra entry of ``scripts/predict.py`` (``key=value`` overrides of configs/predict.yaml)."""
    from zss.cli.common import run_hydra

    sys.argv = sys.argv[:1] + quote_classes_arg(sys.argv[1:])
    run_hydra("predict", predict)  # user errors: one message, exit code 1 (zss.cli.errors.report_user_errors)


if __name__ == "__main__":  # pragma: no cover
    predict_main()
