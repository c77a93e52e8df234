"""Prediction on the user's own images with any vocabulary: the library half of ``scripts/predict.py``.

    method = zss.from_checkpoint(ckpt_path, classnames=["cat", "dog", "grass"])
    pred = predict_image(method, "photo.jpg")        # [H, W] int64; the checkpoint's mean/std and test resize
    save_prediction(load_image("photo.jpg"), pred, method.classnames, "predictions", "photo")

Preprocessing is the evaluation pipeline of docs/protocol.md "Pipeline" (keep-ratio resize with the short side to
``short_side`` pixels, normalise with the checkpoint's mean/std), inference is whole-image or mmseg
sliding window (:mod:`zss.engine.inference`), and the argmax is taken at the ORIGINAL image size.
Outputs per image: ``<name>_overlay.png`` (colour overlay plus a legend of the classes present) and
``<name>_label.png`` (palette PNG, pixel value = class id in the given vocabulary), plus one
``classes.txt`` (one class a line, line k = id k) per output folder. Nothing is overwritten unless
asked: a clashing name gets a ``-1``, ``-2``... suffix, and a folder that holds predictions for
another vocabulary is refused.

This module imports no Hydra (the composition half is ``zss.cli.predict``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor
from torchvision import tv_tensors

from zss.data.transforms import build_test_transform
from zss.engine.evaluate import make_logits_fn
from zss.engine.inference import INFERENCE_MODES, predict_segmentation
from zss.engine.visualize import color_palette, overlay_with_legend

__all__ = [
    "IMAGE_SUFFIXES",
    "parse_classes",
    "list_images",
    "load_image",
    "preprocess",
    "predict_image",
    "label_palette",
    "save_label_png",
    "write_classes",
    "save_prediction",
    "predict_paths",
]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
"""File suffixes (case-insensitive) taken from an input folder."""

MAX_PIXELS = 50_000_000
"""Default bound on an input image's pixels, original or resized (``max_pixels=``): a 48 MP photo passes; a
20000x50 strip at short side 512 (205 Mpx, a multi-GB allocation) is refused with a message. Our default."""

_NO_LONG_BOUND = 10**9  # a long-side bound that never binds: the short side alone sets the scale


# ------------------------------------------------------------------------------------------ inputs
def parse_classes(
    classes: str | Sequence[str] | None = None, classes_file: str | os.PathLike | None = None
) -> list[str] | None:
    """The vocabulary from a comma-separated string / a list, or from a text file (one class a line).

    Args:
        classes: ``"cat, dog, grass"`` (split on commas, stripped) or ``["cat", "dog"]``; None = not given.
        classes_file: text file, one class name per line; blank lines and lines starting with ``#`` are
            skipped. None = not given.

    Returns:
        list of class names in label-id order, or None when neither is given (= the checkpoint's classes).

    Raises:
        ValueError: both given, an empty vocabulary, an empty name, or a duplicate name (named).
        FileNotFoundError: ``classes_file`` does not exist (names the ``classes_file=`` key).
    """
    if classes is not None and classes_file is not None:
        raise ValueError("give either classes=... or classes_file=..., not both")
    if classes_file is not None:
        path = Path(classes_file).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"classes_file={classes_file}: no such file (a text file, one class a line)")
        from zss.data.dataset import read_lines

        names = read_lines(path, "classes_file")
        names = [n for n in names if n and not n.startswith("#")]
        source = f"classes_file={classes_file}"
    elif classes is not None:
        if isinstance(classes, str):
            names = [n.strip() for n in classes.split(",")]
        else:
            names = [str(n).strip() for n in classes]
        source = f"classes={classes!r}"
        if any(not n for n in names):
            raise ValueError(f"{source} has an empty class name (a stray comma?)")
    else:
        return None
    if not names:
        raise ValueError(f"{source} gives no class name")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"{source}: duplicate class names {dup}")
    return names


def list_images(path: str | os.PathLike) -> list[Path]:
    """An image file, or the image files of a folder (not recursive, sorted by name).

    Args:
        path: an image file (any suffix Pillow reads) or a folder; a folder contributes the files whose
            suffix is in :data:`IMAGE_SUFFIXES` (case-insensitive).

    Returns:
        list of ``Path``. A folder that holds predict's own outputs (a ``classes.txt``) contributes no
        ``<name>_overlay.png`` / ``<name>_label.png``: predict never segments its own outputs.

    Raises:
        FileNotFoundError: ``path`` does not exist, or the folder holds no image (names the ``image=`` key).
    """
    p = Path(path).expanduser()
    if p.is_file():
        return [p]
    if p.is_dir():
        ours = (p / "classes.txt").is_file()
        files = sorted(
            f
            for f in p.iterdir()
            if f.is_file()
            and f.suffix.lower() in IMAGE_SUFFIXES
            and not (ours and f.name.endswith(("_overlay.png", "_label.png")))
        )
        if not files:
            raise FileNotFoundError(f"image={path}: the folder holds no image file ({', '.join(IMAGE_SUFFIXES)})")
        return files
    raise FileNotFoundError(f"image={path}: no such file or folder")


def load_image(path: str | os.PathLike) -> Tensor:
    """Read an image as RGB, applying its EXIF orientation (phone photos), as ``Tensor[3, H, W] uint8``.

    16-bit greyscale (PNG/TIFF) is scaled to 8 bits, not clipped to white (:func:`zss.data.dataset.pil_to_rgb`).

    Raises:
        ValueError: Pillow cannot read the file (empty, truncated, not an image) or its pixels are floats (names it).
    """
    from PIL import UnidentifiedImageError

    from zss.data.dataset import pil_to_rgb

    try:
        with Image.open(path) as im:
            arr = pil_to_rgb(ImageOps.exif_transpose(im), path)  # [H, W, 3] uint8
    except Image.DecompressionBombError as e:
        raise ValueError(
            f"cannot read image {str(path)!r}: {e.args[0].split('could be')[0].strip()} (Pillow's "
            f"decompression-bomb limit); downscale it first"
        ) from e
    except (OSError, SyntaxError) as e:
        why = (
            "empty file (0 bytes)"
            if Path(path).is_file() and Path(path).stat().st_size == 0
            else "not an image format Pillow recognises"
            if isinstance(e, UnidentifiedImageError)
            else str(e)
        )
        raise ValueError(
            f"cannot read image {str(path)!r}: {why}. Pass image= a readable image file or folder "
            f"(.jpg .png ...); re-save or re-download this one"
        ) from e
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def preprocess(
    image: Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    short_side: int = 512,
    long_side: int | None = None,
) -> Tensor:
    """The test transform of docs/protocol.md "Pipeline": keep-ratio resize + normalise.

    Args:
        image: ``Tensor[3, H, W] uint8`` RGB.
        mean, std: per-channel RGB values in [0, 1] units (the checkpoint's ``dataset.mean/std``).
        short_side: target short side in pixels (protocol: 512).
        long_side: optional bound on the long side in pixels (protocol: 2048, mmcv's keep-ratio rule
            ``min(long/max(h, w), short/min(h, w))``); None = no bound.

    Returns:
        ``Tensor[1, 3, H', W'] float32`` normalised.

    Raises:
        ValueError: ``short_side``/``long_side`` not positive.
    """
    if int(short_side) < 1 or (long_side is not None and int(long_side) < 1):
        raise ValueError(f"short_side={short_side} / long_side={long_side} must be positive pixel counts")
    tf = build_test_transform(scale=(int(long_side or _NO_LONG_BOUND), int(short_side)), mean=mean, std=std)
    return tf(tv_tensors.Image(image)).as_subclass(Tensor)[None]


@torch.no_grad()
def predict_image(
    method: torch.nn.Module,
    image: str | os.PathLike | Tensor,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    short_side: int | None = None,
    mode: str = "slide",
    *,
    long_side: int | None = None,
    crop: Sequence[int] = (512, 512),
    stride: Sequence[int] = (426, 426),
    crop_batch: int = 8,
    label_space: str = "all",
    seen_bias: float = 0.0,
    amp_dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    max_pixels: int | None = MAX_PIXELS,
) -> Tensor:
    """Segment one image with ``method`` over its current vocabulary (``method.classnames``).

    Args:
        method: a :class:`~zss.methods.base.Method` in eval mode (e.g. from ``zss.cli.common.load_for_inference``).
        image: a path, or ``Tensor[3, H, W] uint8`` RGB.
        mean, std: RGB normalisation in [0, 1] units; None = ``method.preprocessing`` (a method from
            ``zss.from_checkpoint`` carries its checkpoint's ``dataset.mean/std``).
        short_side, long_side: keep-ratio resize, see :func:`preprocess` (pixels). ``short_side`` None = the
            method's test resize (``method.preprocessing``: short side and its long-side bound, protocol 512 /
            2048), or 512 with no long-side bound for a method without one; ``long_side`` None = no bound then.
        mode: ``"slide"`` (mmseg sliding window) or ``"whole"``.
        crop, stride, crop_batch: sliding-window crop / stride (pixels) and crops per forward
            (protocol 512 / 426; crop_batch our default 8).
        label_space: ``"all"`` (every class of the vocabulary) or ``"unseen"`` (only ``method.unseen``).
        seen_bias: subtracted from the seen-class logits (the units of ``Method.predict``'s output: logits; CLIP-RC /
            ZegCLIP's are sigmoid probabilities; 0 = off).
        amp_dtype: autocast dtype for the forward (``torch.bfloat16``) or None (fp32).
        device: where to run; None = the method's device.
        max_pixels: refuse an image whose original or resized size has more pixels (None = no bound;
            :data:`MAX_PIXELS`).

    Returns:
        ``Tensor[H, W] int64`` on CPU: class ids ``0..C-1`` of ``method.classnames`` at the ORIGINAL size
        (logits resized bilinearly to ``(H, W)`` before the argmax).

    Raises:
        ValueError: unknown ``mode`` or ``label_space``; unreadable image; bad sizes; no ``mean``/``std`` given
            and none carried by ``method``; more pixels than ``max_pixels`` (names the key and ``long_side``).
    """
    prep = getattr(method, "preprocessing", None) or {}
    if mean is None or std is None:
        if "mean" not in prep:
            raise ValueError(
                "predict_image: pass mean= and std= (the RGB normalisation in [0, 1] units the method "
                "was trained with), or use a method from zss.from_checkpoint, which carries them"
            )
        mean = prep["mean"] if mean is None else mean
        std = prep["std"] if std is None else std
    if short_side is None:
        short_side = prep.get("short_side", 512)
        long_side = prep.get("long_side") if long_side is None else long_side
    if mode not in INFERENCE_MODES:
        raise ValueError(f"mode={mode!r}: choose mode=slide or mode=whole")
    classes = method.label_space_ids(label_space)  # None (all) or the unseen ids: argmax after resizing
    img = load_image(image) if not isinstance(image, Tensor) else image
    if img.dim() != 3 or img.shape[0] != 3 or img.dtype != torch.uint8:
        raise ValueError(
            f"predict_image: image must be a path or a Tensor[3, H, W] uint8, got {tuple(img.shape)} {img.dtype}"
        )
    if device is None:
        first = next(iter(method.parameters()), None)
        device = first.device if first is not None else torch.device("cpu")
    device = torch.device(device)
    h, w = img.shape[-2:]
    scale = min(int(long_side or _NO_LONG_BOUND) / max(h, w), int(short_side) / min(h, w))
    rh, rw = int(h * scale + 0.5), int(w * scale + 0.5)
    if max_pixels is not None and max(h * w, rh * rw) > max_pixels:
        raise ValueError(
            f"image {w}x{h} px resizes to {rw}x{rh} px at short_side={short_side}, "
            f"long_side={long_side}: more than max_pixels={max_pixels}; pass long_side=2048 (bounds the "
            f"long side), a smaller short_side=, or raise max_pixels="
        )
    x = preprocess(img, mean, std, short_side, long_side).to(device)
    H, W = img.shape[-2:]
    fn = make_logits_fn(method, seen_bias=seen_bias)
    with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        pred = predict_segmentation(
            fn,
            x,
            mode=mode,
            num_classes=method.num_classes,
            crop=tuple(crop),
            stride=tuple(stride),
            batch_size=crop_batch,
            out_size=(H, W),
            classes=classes,
        )
    return pred[0].cpu()


# ------------------------------------------------------------------------------------------ outputs
def label_palette(num_classes: int) -> list[int]:
    """768-int PNG palette: entry k = the overlay colour of class id k (``color_palette``), rest black.

    Raises:
        ValueError: ``num_classes`` not in 1..256 (a palette PNG has 256 entries).
    """
    if not 1 <= num_classes <= 256:
        raise ValueError(f"a palette PNG holds at most 256 classes, got {num_classes}")
    pal = color_palette(num_classes).reshape(-1).tolist()
    return pal + [0] * (768 - len(pal))


def save_label_png(pred: Tensor, path: str | os.PathLike, num_classes: int) -> Path:
    """Write a label map as an index PNG.

    Args:
        pred: ``Tensor[H, W]`` int64 class ids in ``[0, num_classes)``.
        path: output file.
        num_classes: C of the vocabulary. C <= 256: palette PNG (mode ``P``, :func:`label_palette`, pixel
            value = class id, viewable in colour, read back with ``np.asarray(Image.open(p))``);
            C > 256: 16-bit greyscale PNG (mode ``I;16``).

    Returns:
        ``Path`` written.

    Raises:
        ValueError: ids outside ``[0, num_classes)``, or ``pred`` not 2-D.
    """
    if pred.dim() != 2:
        raise ValueError(f"save_label_png: pred must be Tensor[H, W], got {tuple(pred.shape)}")
    if pred.numel() and (int(pred.min()) < 0 or int(pred.max()) >= num_classes):
        raise ValueError(f"save_label_png: ids {int(pred.min())}..{int(pred.max())} outside [0, {num_classes})")
    arr = pred.cpu().numpy()
    if num_classes <= 256:
        im = Image.fromarray(arr.astype(np.uint8))  # mode L
        im.putpalette(label_palette(num_classes))  # L -> P, values kept
    else:
        im = Image.fromarray(arr.astype(np.uint16))  # mode I;16
    path = Path(path)
    im.save(path)
    return path


def write_classes(out_dir: str | os.PathLike, classnames: Sequence[str], overwrite: bool = False) -> Path:
    """Write ``classes.txt`` (line k = name of class id k) into ``out_dir`` (created if needed).

    An existing ``classes.txt`` with the same classes is kept as is.

    Raises:
        FileExistsError: ``out_dir`` holds a ``classes.txt`` for another vocabulary and ``overwrite`` is
            False (the message names ``out=`` and ``overwrite=true``): its label PNGs would become ambiguous.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "classes.txt"
    text = "".join(f"{c}\n" for c in classnames)
    if path.is_file() and path.read_text() != text and not overwrite:
        old = [ln for ln in path.read_text().splitlines() if ln]
        raise FileExistsError(
            f"out={out} already holds predictions for another vocabulary ({path} lists {len(old)} classes: "
            f"{', '.join(old[:5])}{', ...' if len(old) > 5 else ''}); choose another out=<dir>, or overwrite=true"
        )
    path.write_text(text)
    return path


def _free_stem(out: Path, name: str, overwrite: bool) -> str:
    if overwrite:
        return name
    stem, k = name, 0
    while (out / f"{stem}_overlay.png").exists() or (out / f"{stem}_label.png").exists():
        k += 1
        stem = f"{name}-{k}"
    return stem


def save_prediction(
    image: Tensor,
    pred: Tensor,
    classnames: Sequence[str],
    out_dir: str | os.PathLike,
    name: str,
    overwrite: bool = False,
    alpha: float = 0.5,
) -> dict[str, Path]:
    """Save ``<name>_overlay.png`` and ``<name>_label.png`` side by side in ``out_dir``.

    Args:
        image: ``Tensor[3, H, W] uint8`` RGB, the original image.
        pred: ``Tensor[H, W]`` int64 class ids of ``classnames`` (same ``H, W``).
        classnames: the C class names (label-id order).
        out_dir: output folder (created if needed).
        name: output stem (usually the image's file stem).
        overwrite: False (default): when either file exists, the stem becomes ``<name>-1``, ``<name>-2``...
            (never overwrites); True: replace them.
        alpha: overlay opacity in [0, 1] (our default 0.5).

    Returns:
        dict ``overlay`` / ``label`` -> ``Path`` written; ``name`` -> the stem used (``str``).

    Raises:
        ValueError: size mismatch or ids outside the vocabulary.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if tuple(pred.shape) != tuple(image.shape[-2:]):
        raise ValueError(
            f"save_prediction: prediction {tuple(pred.shape)} and image {tuple(image.shape[-2:])} "
            "sizes differ (predict at the original size)"
        )
    stem = _free_stem(out, name, overwrite)
    label_path = save_label_png(pred, out / f"{stem}_label.png", len(classnames))
    pal = color_palette(len(classnames))
    vis = overlay_with_legend(image, pred, list(classnames), alpha=alpha, palette=pal)
    overlay_path = out / f"{stem}_overlay.png"
    vis.save(overlay_path)
    return {"overlay": overlay_path, "label": label_path, "name": stem}


def predict_paths(
    method: torch.nn.Module,
    images: Iterable[str | os.PathLike],
    out_dir: str | os.PathLike,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    *,
    overwrite: bool = False,
    alpha: float = 0.5,
    log: Callable[[str], None] | None = print,
    **predict_kwargs,
) -> list[dict]:
    """Predict and save every image; writes ``classes.txt`` first (refusing a vocabulary clash).

    Args:
        method: the method (vocabulary = ``method.classnames``).
        images: image paths (e.g. from :func:`list_images`).
        out_dir: output folder. overwrite, alpha: see :func:`save_prediction` / :func:`write_classes`.
        mean, std: normalisation ([0, 1] units); None = the method's (see :func:`predict_image`).
        log: called with one line per image (None = silent).
        **predict_kwargs: forwarded to :func:`predict_image` (``short_side``, ``mode``, ``crop``...).

    Returns:
        one dict per image: ``image`` (Path), ``overlay``, ``label`` (Paths), ``name`` (stem used),
        ``present`` (list of class names predicted), ``size`` ((H, W) pixels).

    Raises:
        FileExistsError: see :func:`write_classes`. ValueError: unreadable image (names it).
    """
    classnames = list(method.classnames)
    write_classes(out_dir, classnames, overwrite=overwrite)
    results = []
    for path in images:
        img = load_image(path)
        try:
            pred = predict_image(method, img, mean, std, **predict_kwargs)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from e
        except (torch.OutOfMemoryError, RuntimeError) as e:
            if not isinstance(e, torch.OutOfMemoryError) and "can't allocate memory" not in str(e):
                raise
            raise ValueError(
                f"{path}: out of memory on {predict_kwargs.get('device') or 'the device'}; lower "
                f"crop_batch= (now {predict_kwargs.get('crop_batch', 8)}) or short_side=/long_side=, or "
                f"use mode=slide"
            ) from None
        saved = save_prediction(img, pred, classnames, out_dir, Path(path).stem, overwrite=overwrite, alpha=alpha)
        present = [classnames[c] for c in torch.unique(pred).tolist()]
        res = dict(image=Path(path), size=tuple(pred.shape), present=present, **saved)
        results.append(res)
        if log is not None:
            log(f"{path} -> {saved['overlay']}, {saved['label']}  [{', '.join(present)}]")
    return results
