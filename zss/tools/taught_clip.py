"""Label-taught CLIP: a small open_clip ``CLIP`` taught on the bundled images' labels (docs/taught_clip.md).

No CLIP weights can be downloaded on the offline machines, so this module builds the closest honest
stand-in: a small model of open_clip's own ``CLIP`` class (ViT image tower, text transformer, open_clip
BPE tokenizer) that is *taught* on the labelled images (all classes, the unseen ones included, as real
CLIP saw them on the web; background ignored) so that

- the text embeds of the class prompts separate the classes,
- the dense tokens (``FrozenCLIP`` ``maskclip`` and ``tokens`` modes) classify patches,
- the CLS token matches the image's classes.

It is saved as an ordinary open_clip checkpoint (a ``state_dict`` file plus open_clip's
``open_clip_config.json`` with ``model_cfg`` and CLIP's ``preprocess_cfg``) and read back by
:class:`zss.teachers.clip.FrozenCLIP` through exactly the path a user takes for real weights
(``model_cfg`` + ``pretrained=<local file>``). What is taught is computed with FrozenCLIP's own
building blocks (:func:`taught_forward`), so it is what FrozenCLIP reads.

It memorises these images: a MECHANISM TOOL, NOT A ZERO-SHOT RESULT. Its quality numbers
(:func:`evaluate_dense_quality`) are measured on the very images it was taught and say nothing about
generalisation. Recipe: not in any paper; our default (every number a :class:`TaughtClipSettings` key).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import ConcatDataset, Dataset

from zss.data.classes import IGNORE_INDEX, get_benchmark
from zss.data.dataset import build_dataset
from zss.data.normalize import CLIP_MEAN, CLIP_STD
from zss.data.synthetic import WORLD_FORMAT
from zss.data.transforms import build_test_transform, build_train_transform
from zss.engine.metrics import SegEvaluator
from zss.models import clip_ops
from zss.teachers.clip import DENSE_MODES, FrozenCLIP, tiny_clip_cfg

__all__ = [
    "CONFIG_FILE",
    "DEFAULT_ROOT",
    "INFO_FILE",
    "TAUGHT_HINT",
    "TAUGHT_MODEL_NAME",
    "TAUGHT_WARNING",
    "WORLD_PRESET",
    "WEIGHTS_FILE",
    "TaughtClipSettings",
    "ensure_taught_clip",
    "evaluate_crop_patch_acc",
    "evaluate_dense_quality",
    "format_quality",
    "is_complete",
    "load_taught_clip",
    "patch_targets",
    "quality_dataset",
    "save_taught_clip",
    "taught_clip_cfg",
    "taught_clip_dir",
    "taught_forward",
    "teach_clip",
]

#: Default cache root of taught models (``runs/`` is gitignored). Our default.
DEFAULT_ROOT = "runs/teachers"
#: Weights file name inside a cache dir: a plain open_clip ``state_dict`` (open_clip's hub file name).
WEIGHTS_FILE = "open_clip_pytorch_model.bin"
#: open_clip's hub config file name: ``{"model_cfg": ..., "preprocess_cfg": ...}``.
CONFIG_FILE = "open_clip_config.json"
#: Settings, training history and quality numbers; written last, so its presence marks a complete build.
INFO_FILE = "taught_clip.json"
#: Label recorded as FrozenCLIP's ``model_name`` (with ``model_cfg`` it is only a label).
TAUGHT_MODEL_NAME = "taught-clip"
#: Printed with every number a taught CLIP produces (FrozenCLIP ``warning``).
TAUGHT_WARNING = (
    "label-taught CLIP (zss.tools.taught_clip, docs/taught_clip.md): a small open_clip CLIP taught on labelled "
    "images, unseen classes included; a mechanism tool, NOT a zero-shot result."
)
#: Appended to FrozenCLIP's missing-weights error for a taught CLIP (FrozenCLIP ``missing_weights_hint``).
TAUGHT_HINT = (
    "This is the label-taught CLIP: build it first with `python scripts/teach_clip.py` (default settings; "
    'wall time: docs/taught_clip.md "Longer teaching"), which prints the cache path to use as teacher.pretrained.'
)

#: The synthetic world's teacher (docs/world.md): taught on the ``teach`` split only, at the world's 128 px
#: images with 8 px patches (a 16 x 16 grid, as real CLIP's 14 x 14 at 224 px), a smaller ViT. Ours.
#: ``zss-teach-clip --preset world``; every other key keeps the TaughtClipSettings default.
WORLD_PRESET: dict[str, Any] = dict(
    benchmark="world",
    data_root="data/world",
    splits=("teach",),
    image_size=128,
    patch_size=8,
    width=128,
    layers=4,
    heads=4,
    scale=(512, 128),
    eval_scale=(512, 128),
    steps=1000,
)

_FORMAT = 1  # bump when the files or the recipe's meaning change (invalidates every cache key)


# ---------------------------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class TaughtClipSettings:
    """Every value that defines a taught CLIP; its hash names the cache dir (:func:`taught_clip_dir`).

    Not in any paper: every default is ours (the recipe of docs/taught_clip.md).

    Model (open_clip ``CLIP``, via :func:`zss.teachers.clip.tiny_clip_cfg`):
        embed_dim: joint space D (64). image_size: native input and training crop side, pixels (224).
        patch_size: ViT patch side, pixels (16). width, layers, heads: vision ViT (192, 6, 3).
        text_width, text_layers, text_heads: text transformer (64, 2, 2). context_length: tokens (77).
    Data (``zss.data`` transforms and datasets; ``hide_unseen=False``: all classes are taught):
        benchmark: class list / layout preset ("voc20"). data_root: dataset root, as given (normalised with
        ``os.path.normpath``; part of the cache key). splits: split lists used together (("train", "val")).
        max_images: use only the first N images (None: all; tests). scale, ratio_range, cat_max_ratio,
        flip_prob, photometric: ``build_train_transform`` arguments ((896, 224), (0.5, 2.0), 0.75, 0.5, False).
        eval_scale: keep-ratio (long, short) bound of the quality evaluation, pixels ((896, 224)).
    Optimisation:
        seed (0). steps (500, the sketch's; longer builds: docs/taught_clip.md "Longer teaching"). batch_size
        (16). lr: AdamW peak (5e-4; other values: docs/taught_clip.md "Longer teaching"). warmup_steps: linear
        warm-up (50). poly_power: poly decay after warm-up (0.9). weight_decay: AdamW, on >= 2-D weights only
        (0.05). grad_clip: global grad-norm clip, None = off (1.0).
    Losses:
        tau: temperature of every cosine logit (0.07). min_labelled: a patch is taught when more than this
        fraction of its pixels is labelled (0.5; fraction). dense_modes: FrozenCLIP dense modes taught
        (("maskclip", "tokens")); their CEs are averaged. dense_weight, cls_weight: loss weights (1.0, 1.0).

    Raises:
        ValueError: a value out of range (names the key and the fix).
    """

    embed_dim: int = 64
    image_size: int = 224
    patch_size: int = 16
    width: int = 192
    layers: int = 6
    heads: int = 3
    text_width: int = 64
    text_layers: int = 2
    text_heads: int = 2
    context_length: int = 77
    benchmark: str = "voc20"
    data_root: str = "data/VOCdevkit/VOC2012"
    splits: tuple[str, ...] = ("train", "val")
    max_images: int | None = None
    scale: tuple[int, int] = (896, 224)
    ratio_range: tuple[float, float] = (0.5, 2.0)
    cat_max_ratio: float = 0.75
    flip_prob: float = 0.5
    photometric: bool = False
    eval_scale: tuple[int, int] = (896, 224)
    seed: int = 0
    steps: int = 500
    batch_size: int = 16
    lr: float = 5e-4
    warmup_steps: int = 50
    poly_power: float = 0.9
    weight_decay: float = 0.05
    grad_clip: float | None = 1.0
    tau: float = 0.07
    min_labelled: float = 0.5
    dense_modes: tuple[str, ...] = ("maskclip", "tokens")
    dense_weight: float = 1.0
    cls_weight: float = 1.0

    def __post_init__(self) -> None:
        def put(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        put("data_root", os.path.normpath(str(self.data_root)))
        put("splits", tuple(str(s) for s in self.splits))
        put("dense_modes", tuple(str(m) for m in self.dense_modes))
        put("scale", tuple(int(v) for v in self.scale))
        put("eval_scale", tuple(int(v) for v in self.eval_scale))
        put("ratio_range", tuple(float(v) for v in self.ratio_range))
        for k in (
            "lr",
            "poly_power",
            "weight_decay",
            "tau",
            "min_labelled",
            "dense_weight",
            "cls_weight",
            "cat_max_ratio",
            "flip_prob",
        ):
            put(k, float(getattr(self, k)))
        if self.grad_clip is not None:
            put("grad_clip", float(self.grad_clip))
        bad = [m for m in self.dense_modes if m not in DENSE_MODES]
        if bad or not self.dense_modes:
            raise ValueError(
                f"TaughtClipSettings: dense_modes={self.dense_modes} must be a non-empty subset of {DENSE_MODES}"
            )
        if not self.splits:
            raise ValueError("TaughtClipSettings: splits must name at least one split list (e.g. train val)")
        for k in ("steps", "batch_size", "embed_dim", "image_size", "patch_size", "width", "layers", "heads"):
            if int(getattr(self, k)) < 1:
                raise ValueError(f"TaughtClipSettings: {k}={getattr(self, k)} must be >= 1")
        if self.image_size % self.patch_size:
            raise ValueError(
                f"TaughtClipSettings: image_size={self.image_size} must be a multiple of patch_size={self.patch_size}"
            )
        if not 0 <= self.warmup_steps < self.steps:
            raise ValueError(f"TaughtClipSettings: warmup_steps={self.warmup_steps} must be in [0, steps={self.steps})")
        if not 0.0 <= self.min_labelled < 1.0:
            raise ValueError(f"TaughtClipSettings: min_labelled={self.min_labelled} must be a fraction in [0, 1)")
        if self.tau <= 0:
            raise ValueError(f"TaughtClipSettings: tau={self.tau} must be > 0")
        if self.max_images is not None and int(self.max_images) < 1:
            raise ValueError(f"TaughtClipSettings: max_images={self.max_images} must be >= 1 or None (all)")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict of every field (tuples as lists)."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TaughtClipSettings":
        """Inverse of :meth:`to_dict`. Raises: ValueError naming unknown keys."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"TaughtClipSettings: unknown keys {unknown}; known: {sorted(names)}")
        return cls(**d)

    def key(self) -> str:
        """sha256 (hex) of the canonical JSON of the settings and the file format version (with the world's
        generator version when ``benchmark == "world"``, so a teacher of an older world is never reused)."""
        extra = {"world_format": WORLD_FORMAT} if self.benchmark == "world" else {}
        blob = json.dumps({"format": _FORMAT, **extra, **self.to_dict()}, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()


def taught_clip_cfg(settings: TaughtClipSettings) -> dict:
    """open_clip model config of a taught CLIP (``open_clip.CLIP(**cfg)`` / ``FrozenCLIP(model_cfg=cfg)``).

    Args:
        settings: the model keys of :class:`TaughtClipSettings` are used.
    Returns:
        dict with ``embed_dim``, ``vision_cfg``, ``text_cfg`` (see :func:`zss.teachers.clip.tiny_clip_cfg`).
    Raises:
        ValueError: width not divisible by heads.
    """
    s = settings
    return tiny_clip_cfg(
        embed_dim=s.embed_dim,
        image_size=s.image_size,
        patch_size=s.patch_size,
        width=s.width,
        layers=s.layers,
        heads=s.heads,
        text_width=s.text_width,
        text_layers=s.text_layers,
        text_heads=s.text_heads,
        context_length=s.context_length,
    )


def taught_clip_dir(root: str | os.PathLike, settings: TaughtClipSettings) -> Path:
    """Cache dir of a taught CLIP: ``<root>/taught_clip_s<seed>_<first 10 hex of settings.key()>``.

    Same settings -> same dir (reused); any other value of any key -> another dir.
    """
    return Path(root) / f"taught_clip_s{settings.seed}_{settings.key()[:10]}"


# ---------------------------------------------------------------------------------------------- data
def _splits_dataset(settings: TaughtClipSettings, transform: Callable) -> Dataset:
    sets = [
        build_dataset(settings.benchmark, settings.data_root, split=sp, hide_unseen=False, transform=transform)
        for sp in settings.splits
    ]
    ds: Dataset = sets[0] if len(sets) == 1 else ConcatDataset(sets)
    if settings.max_images is not None and settings.max_images < len(ds):
        ds = torch.utils.data.Subset(ds, list(range(int(settings.max_images))))
    return ds


def quality_dataset(settings: TaughtClipSettings, splits: Sequence[str] | None = None) -> Dataset:
    """Images for :func:`evaluate_dense_quality`: keep-ratio resize to ``eval_scale``, CLIP norm.

    Args:
        settings: the recipe (benchmark, data root, eval scale). splits: split lists to score; None: the taught
            ``settings.splits`` (the images it memorised); e.g. ``("test",)`` for the synthetic world's
            held-out images (its zero-shot ceiling, docs/world.md).
    Returns:
        Dataset of dicts ``image`` Tensor[3, H', W'] float32 (CLIP mean/std), ``full_label`` Tensor[H, W]
        int64 at the original size (all classes; 255 = ignore), ``name`` str.
    Raises:
        FileNotFoundError: missing data root / split list (from ``build_dataset``; names the fix).
    """
    tf = build_test_transform(scale=settings.eval_scale, mean=CLIP_MEAN, std=CLIP_STD)
    if splits is not None:
        settings = dataclasses.replace(settings, splits=tuple(splits), max_images=None)
    return _splits_dataset(settings, tf)


def patch_targets(
    label: Tensor, num_classes: int, patch_size: int, min_labelled: float = 0.5, ignore_index: int = IGNORE_INDEX
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-patch majority class and per-image class-area fractions from a label map.

    Args:
        label: Tensor[B, H, W] int64 class ids in [0, C) or ``ignore_index``. Rows/columns beyond the last
            full patch are dropped (as a ViT's patchify does).
        num_classes: C. patch_size: p, pixels. min_labelled: a patch counts when MORE than this fraction
            of its pixels is labelled (fraction).
    Returns:
        (target Tensor[B, h*w] int64: most frequent labelled class of each patch (row-major, h = H // p);
         valid Tensor[B, h*w] bool: labelled fraction > ``min_labelled``;
         area Tensor[B, C] float32: each class's share of the labelled pixels of the image (rows sum to 1,
         all-zero rows for images with no labelled pixel)).
    Raises:
        ValueError: not [B, H, W], smaller than one patch, or values outside [0, C) other than ignore_index.
    """
    if label.ndim != 3:
        raise ValueError(f"patch_targets: label must be Tensor[B, H, W], got {tuple(label.shape)}")
    B, H, W = label.shape
    p, C = int(patch_size), int(num_classes)
    h, w = H // p, W // p
    if h < 1 or w < 1:
        raise ValueError(f"patch_targets: label {H}x{W} is smaller than one patch ({p} px)")
    lab = label.long()
    ign = lab == ignore_index
    if bool((~ign & ((lab < 0) | (lab >= C))).any()):
        raise ValueError(f"patch_targets: label values outside [0, {C}) other than ignore_index={ignore_index}")
    lab = torch.where(ign, torch.full_like(lab, C), lab)
    onehot = F.one_hot(lab[:, : h * p, : w * p], C + 1).permute(0, 3, 1, 2).float()  # [B, C+1, h*p, w*p]
    frac = F.avg_pool2d(onehot, p).flatten(2)  # [B, C+1, h*w]
    labelled = 1.0 - frac[:, C]
    target = frac[:, :C].argmax(dim=1)
    valid = labelled > min_labelled
    counts = F.one_hot(lab.view(B, -1), C + 1)[..., :C].sum(dim=1).float()  # [B, C]
    area = counts / counts.sum(dim=1, keepdim=True).clamp_min(1.0)
    return target, valid, area


# ---------------------------------------------------------------------------------------------- model
def taught_forward(clip: FrozenCLIP, images: Tensor, dense_modes: Sequence[str] = DENSE_MODES) -> dict[str, Any]:
    """:meth:`FrozenCLIP.forward` with autograd, both dense modes from one pass (what teaching optimises).

    Built from FrozenCLIP's ``prepare``/``embed``/``project`` and the free functions of
    :mod:`zss.models.clip_ops` that FrozenCLIP runs, so after saving and loading the outputs are those FrozenCLIP
    reads.

    Args:
        clip: a FrozenCLIP whose parameters may have ``requires_grad=True`` (teaching) or not.
        images: Tensor[B, 3, H, W] float32 in the teacher's input normalisation; (H, W) must be the native
            size (the positional embedding is used as is, so it receives gradients).
        dense_modes: which of ``"maskclip"`` / ``"tokens"`` to compute.
    Returns:
        dict ``cls`` Tensor[B, D] float32 (L2-normalised CLS embed), ``dense`` dict mode -> Tensor[B, N, D]
        float32 (L2-normalised dense embeds, N = h*w row-major), ``h``, ``w`` (patches).
    Raises:
        ValueError: (H, W) is not the native size.
    """
    if tuple(images.shape[-2:]) != tuple(clip.native_image_size):
        raise ValueError(
            f"taught_forward: images must be {clip.native_image_size} (the native size), got {tuple(images.shape[-2:])}"
        )
    v = clip.visual
    tok, (h, w) = clip.embed(clip.prepare(images))  # [B, 1+N, W]
    blocks = v.transformer.resblocks
    tok = clip_ops.run_blocks(blocks[:-1], tok)
    full = clip_ops.run_block(blocks[-1], tok)
    pooled = clip_ops.pool(v, full)
    cls = pooled @ v.proj if v.proj is not None else pooled
    dense: dict[str, Tensor] = {}
    if "tokens" in dense_modes:
        dense["tokens"] = F.normalize(clip.project(full[:, 1:]).float(), dim=-1)
    if "maskclip" in dense_modes:
        dense["maskclip"] = F.normalize(clip.project(clip_ops.maskclip_block(blocks[-1], tok[:, 1:])).float(), dim=-1)
    return {"cls": F.normalize(cls.float(), dim=-1), "dense": dense, "h": h, "w": w}


def _text_embeds(clip: FrozenCLIP, tokens: Tensor, C: int, T: int) -> Tensor:
    """:meth:`FrozenCLIP.text` with autograd: Tensor[C, D] float32 unit rows from class-major tokens [C*T, ctx]."""
    e = F.normalize(clip.model.encode_text(tokens).float(), dim=-1).view(C, T, -1)
    return F.normalize(e.mean(dim=1), dim=-1)


def _lr_at(step: int, s: TaughtClipSettings) -> float:
    if step < s.warmup_steps:
        return s.lr * (step + 1) / s.warmup_steps
    frac = (step - s.warmup_steps) / max(1, s.steps - s.warmup_steps)
    return s.lr * (1.0 - frac) ** s.poly_power


def _batches(n: int, batch_size: int, gen: torch.Generator) -> Iterable[list[int]]:
    """Endless batches of indices: consecutive chunks of per-epoch permutations (crossing epochs)."""
    buf: list[int] = []
    while True:
        while len(buf) < batch_size:
            buf += torch.randperm(n, generator=gen).tolist()
        yield buf[:batch_size]
        buf = buf[batch_size:]


def teach_clip(
    settings: TaughtClipSettings,
    device: str | torch.device = "cpu",
    log: Callable[[str], None] | None = print,
    log_every: int = 25,
) -> tuple[FrozenCLIP, list[dict]]:
    """Teach an open_clip CLIP on the labelled images (recipe: :class:`TaughtClipSettings`, docs/taught_clip.md).

    Per step: a batch of random-scale ``image_size``² crops with flips (``build_train_transform``, CLIP
    mean/std, all classes); text embeds of the class prompts (the benchmark's templates) with autograd;
    dense loss = mean over ``dense_modes`` of CE(cos(dense embed, text) / tau) against each patch's majority
    class (patches more than ``min_labelled`` labelled); CLS loss = soft CE(cos(CLS, text) / tau) against the
    crop's class-area fractions. Both towers are trained with AdamW (warm-up + poly). Deterministic for a
    seed on one device (runs inside ``torch.random.fork_rng``: the global RNG is untouched).

    Args:
        settings: every value of the recipe. device: where to train. log: progress printer (None: silent).
        log_every: steps between progress lines.
    Returns:
        (clip, history): the taught model wrapped in a FrozenCLIP (parameters frozen again, eval mode, CPU)
        and one dict per step: ``step``, ``lr``, ``loss``, ``loss_dense``, ``loss_cls``, ``patch_acc_<mode>``
        (percent of taught patches of the step's crops classified right, measured before the update).
    Raises:
        FileNotFoundError: missing data (``build_dataset``). ValueError: bad settings.
    """
    s = settings
    device = torch.device(device)
    bench = get_benchmark(s.benchmark)
    classes, templates = list(bench.classes), list(bench.templates)
    C, T = len(classes), len(templates)
    cfg = taught_clip_cfg(s)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(s.seed)
        clip = FrozenCLIP(model_name=TAUGHT_MODEL_NAME, pretrained=None, model_cfg=cfg, dense_mode=s.dense_modes[0])
        clip.to(device)
        for p in clip.model.parameters():
            p.requires_grad_(True)
        tf = build_train_transform(
            crop_size=(s.image_size, s.image_size),
            scale=s.scale,
            ratio_range=s.ratio_range,
            cat_max_ratio=s.cat_max_ratio,
            flip_prob=s.flip_prob,
            photometric=s.photometric,
            mean=CLIP_MEAN,
            std=CLIP_STD,
        )
        ds = _splits_dataset(s, tf)
        tokens = clip._get_tokenizer()([t.format(c) for c in classes for t in templates]).to(device)
        params = [p for p in clip.model.parameters() if p.requires_grad]
        decay = [p for p in params if p.ndim >= 2]
        no_decay = [p for p in params if p.ndim < 2]
        opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": s.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=s.lr
        )
        gen = torch.Generator().manual_seed(s.seed)
        history: list[dict] = []
        t0 = time.time()
        for step, idx in zip(range(s.steps), _batches(len(ds), s.batch_size, gen)):
            samples = [ds[i] for i in idx]
            images = torch.stack([b["image"] for b in samples]).to(device)
            labels = torch.stack([b["full_label"] for b in samples]).to(device)
            target, valid, area = patch_targets(labels, C, s.patch_size, s.min_labelled)
            lr = _lr_at(step, s)
            for g in opt.param_groups:
                g["lr"] = lr
            out = taught_forward(clip, images, s.dense_modes)
            text = _text_embeds(clip, tokens, C, T)  # [C, D]
            rec: dict[str, Any] = {"step": step + 1, "lr": lr}
            dense_losses = []
            for mode, emb in out["dense"].items():
                logits = emb @ text.t() / s.tau  # [B, N, C]
                if bool(valid.any()):
                    dense_losses.append(F.cross_entropy(logits[valid], target[valid]))
                    acc = (logits[valid].argmax(-1) == target[valid]).float().mean().item() * 100.0
                else:
                    acc = float("nan")
                rec[f"patch_acc_{mode}"] = acc
            loss_dense = torch.stack(dense_losses).mean() if dense_losses else text.sum() * 0.0
            has = area.sum(dim=1) > 0
            if bool(has.any()):
                logp = F.log_softmax(out["cls"] @ text.t() / s.tau, dim=-1)
                loss_cls = -(area[has] * logp[has]).sum(dim=1).mean()
            else:
                loss_cls = text.sum() * 0.0
            loss = s.dense_weight * loss_dense + s.cls_weight * loss_cls
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if s.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(params, s.grad_clip)
            opt.step()
            rec.update(loss=loss.item(), loss_dense=loss_dense.item(), loss_cls=loss_cls.item())
            history.append(rec)
            if log is not None and (step + 1 == s.steps or (step + 1) % max(1, log_every) == 0):
                accs = " ".join(f"{m} {rec[f'patch_acc_{m}']:.1f}%" for m in out["dense"])
                log(
                    f"teach_clip: step {step + 1}/{s.steps} loss {rec['loss']:.3f} (dense {rec['loss_dense']:.3f}, "
                    f"cls {rec['loss_cls']:.3f}) patch acc {accs} lr {lr:.2e} {time.time() - t0:.0f}s"
                )
    for p in clip.model.parameters():
        p.requires_grad_(False)
    clip._text_cache.clear()
    return clip.cpu().eval(), history


# ---------------------------------------------------------------------------------------------- files
def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, default=float) + "\n")


def save_taught_clip(
    clip: FrozenCLIP, settings: TaughtClipSettings, out_dir: str | os.PathLike, info: dict | None = None
) -> Path:
    """Write a taught CLIP as an ordinary open_clip checkpoint into ``out_dir`` (created).

    Files: :data:`WEIGHTS_FILE` (``torch.save`` of the open_clip model's ``state_dict``), :data:`CONFIG_FILE`
    (open_clip's hub layout: ``model_cfg`` + ``preprocess_cfg`` with CLIP's mean/std, so
    ``open_clip.create_model("local-dir:<out_dir>")`` works too) and, last, :data:`INFO_FILE` (settings,
    cache key, the warning, ``info``).

    Args:
        clip: the taught model (FrozenCLIP). settings: its settings. out_dir: target dir.
        info: extra JSON-able entries for :data:`INFO_FILE` (history, wall time, quality).
    Returns:
        ``out_dir`` as a Path.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in clip.model.state_dict().items()}
    torch.save(state, out / WEIGHTS_FILE)
    _write_json(
        out / CONFIG_FILE,
        {
            "model_cfg": taught_clip_cfg(settings),
            "preprocess_cfg": {
                "size": settings.image_size,
                "mode": "RGB",
                "mean": list(CLIP_MEAN),
                "std": list(CLIP_STD),
                "interpolation": "bicubic",
                "resize_mode": "shortest",
                "fill_color": 0,
            },
        },
    )
    _write_json(
        out / INFO_FILE,
        {
            "format": _FORMAT,
            "key": settings.key(),
            "settings": settings.to_dict(),
            "warning": TAUGHT_WARNING,
            "torch_version": torch.__version__,
            "open_clip_version": open_clip.__version__,
            **(info or {}),
        },
    )
    return out


def is_complete(out_dir: str | os.PathLike, settings: TaughtClipSettings) -> bool:
    """True when ``out_dir`` holds all three files and its :data:`INFO_FILE` records exactly ``settings``."""
    d = Path(out_dir)
    if not all((d / f).is_file() for f in (WEIGHTS_FILE, CONFIG_FILE, INFO_FILE)):
        return False
    try:
        rec = json.loads((d / INFO_FILE).read_text())
    except (OSError, ValueError):
        return False
    return rec.get("format") == _FORMAT and rec.get("settings") == settings.to_dict()


def load_taught_clip(out_dir: str | os.PathLike, dense_mode: str = "maskclip", **kw: Any) -> FrozenCLIP:
    """Load a taught CLIP through the user path: ``FrozenCLIP(model_cfg=<json>, pretrained=<weights file>)``.

    Args:
        out_dir: a cache dir written by :func:`save_taught_clip`. dense_mode: ``"maskclip"`` | ``"tokens"``.
        **kw: other FrozenCLIP arguments (``image_size``, ``input_mean``, ``input_std``, ...).
    Returns:
        FrozenCLIP with CLIP normalisation (from ``preprocess_cfg``) and ``identity["warning"]`` set.
    Raises:
        TeacherWeightsNotFoundError: the weights file is missing (the message says how to build it).
        FileNotFoundError: the config file is missing.
    """
    d = Path(out_dir)
    cfg_path = d / CONFIG_FILE
    if not cfg_path.is_file():
        raise FileNotFoundError(f"load_taught_clip: no {CONFIG_FILE} in {str(d)!r}. {TAUGHT_HINT}")
    rec = json.loads(cfg_path.read_text())
    pp = rec.get("preprocess_cfg", {})
    kw.setdefault("clip_mean", pp.get("mean", CLIP_MEAN))
    kw.setdefault("clip_std", pp.get("std", CLIP_STD))
    return FrozenCLIP(
        model_name=TAUGHT_MODEL_NAME,
        pretrained=str(d / WEIGHTS_FILE),
        model_cfg=rec["model_cfg"],
        dense_mode=dense_mode,
        warning=TAUGHT_WARNING,
        missing_weights_hint=TAUGHT_HINT,
        **kw,
    )


def _train_patch_acc(history: list[dict], modes: Sequence[str], last: int = 50) -> dict[str, float]:
    tail = history[-last:]
    out = {}
    for m in modes:
        vals = [r[f"patch_acc_{m}"] for r in tail if not math.isnan(r.get(f"patch_acc_{m}", float("nan")))]
        out[m] = float(np.mean(vals)) if vals else float("nan")
    return out


def ensure_taught_clip(
    settings: TaughtClipSettings,
    root: str | os.PathLike = DEFAULT_ROOT,
    device: str | torch.device = "cpu",
    rebuild: bool = False,
    log: Callable[[str], None] | None = print,
    log_every: int = 25,
) -> tuple[Path, bool]:
    """Return the cache dir of ``settings`` under ``root``, teaching and saving the model first if missing.

    A build writes into a temporary sibling dir and renames it into place, so an interrupted build never
    looks complete. An existing dir whose files are incomplete or record other settings is rebuilt.

    Args:
        settings: the recipe. root: cache root (``runs/teachers``). device: training device.
        rebuild: teach again even when a complete cache exists. log, log_every: progress (see teach_clip).
    Returns:
        (dir, built): the cache dir and whether it was built now (False: reused).
    Raises:
        FileNotFoundError / ValueError: from :func:`teach_clip`.
    """
    d = taught_clip_dir(root, settings)
    if not rebuild and is_complete(d, settings):
        return d, False
    t0 = time.time()
    clip, history = teach_clip(settings, device=device, log=log, log_every=log_every)
    wall = time.time() - t0
    tmp = d.with_name(f"{d.name}.tmp{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    save_taught_clip(
        clip,
        settings,
        tmp,
        info={
            "wall_s": wall,
            "device": str(device),
            "torch_threads": torch.get_num_threads(),
            "train_patch_acc_last50": _train_patch_acc(history, settings.dense_modes),
            "history": history,
        },
    )
    if d.exists():
        shutil.rmtree(d)
    os.replace(tmp, d)
    return d, True


# ---------------------------------------------------------------------------------------------- quality
def _average_precision(scores: np.ndarray, positive: np.ndarray) -> float:
    """AP of one ranking (mean precision at each positive), percent; NaN without positives."""
    if not positive.any():
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    pos = positive[order].astype(np.float64)
    prec = np.cumsum(pos) / np.arange(1, len(pos) + 1)
    return float((prec * pos).sum() / pos.sum() * 100.0)


@torch.no_grad()
def evaluate_dense_quality(
    teacher: torch.nn.Module,
    dataset: Dataset,
    classnames: Sequence[str],
    templates: Sequence[str],
    unseen: Sequence[int] = (),
    min_labelled: float = 0.5,
    ignore_index: int = IGNORE_INDEX,
) -> dict[str, Any]:
    """Dense zero-shot segmentation, patch accuracy and CLS multi-label quality of a teacher on images.

    For a taught CLIP these are the images it was taught: a mechanism tool, NOT a zero-shot result.
    Each image is run whole (one pass, the teacher's ``dense_mode``); logits = dense embeds · text embeds.

    Args:
        teacher: FrozenCLIP-like: ``forward(images, full_label)`` -> ``cls`` Tensor[1, D], ``dense``
            Tensor[1, D, h, w] (unit), and ``text(classnames, templates)`` -> Tensor[C, D] (unit);
            ``patch_size`` attribute (pixels).
        dataset: dicts with ``image`` Tensor[3, H', W'] (the teacher's input normalisation) and
            ``full_label`` Tensor[H, W] int64 at the original size (see :func:`quality_dataset`).
        classnames, templates: the C classes and prompt templates. unseen: ids reported as mIoU_unseen.
        min_labelled: patch-accuracy rule, see :func:`patch_targets` (fraction). ignore_index: 255.
    Returns:
        dict (percent floats unless stated): ``mIoU`` over the C classes, ``mIoU_seen``, ``mIoU_unseen``,
        ``pAcc`` (pixels; logits upsampled bilinearly to the label), ``patch_acc`` (patch grid of the resized
        image against the majority of the nearest-resized label), ``cls_top1`` (top-scoring class is in the
        image), ``cls_mAP`` (mean over classes of the AP of ranking images by CLS·text),
        ``text_max_cos`` / ``text_mean_cos`` (largest / mean off-diagonal cosine between class text embeds,
        fractions), ``num_images`` (int), ``per_class_IoU`` (list of C floats), ``hIoU``, and the unseen-only
        view: ``five_way_mAcc`` / ``five_way_pAcc`` (pixels whose ground truth is unseen, argmax over the
        unseen classes; class-mean / pixel accuracy; NaN without ``unseen``), ``gt_pixels`` (list of C ints: the
        scored ground-truth pixels of each class, e.g. for :func:`zss.engine.metrics.constant_five_way`).
    Raises:
        ValueError: an empty dataset.
    """
    C = len(classnames)
    text = teacher.text(list(classnames), list(templates)).float()  # [C, D]
    ev = SegEvaluator(C, list(classnames), list(unseen), ignore_index=ignore_index)
    ev_u = SegEvaluator(C, list(classnames), list(unseen), ignore_index=ignore_index, label_space="unseen")
    unseen_ids = torch.as_tensor(list(unseen), dtype=torch.long)
    p = int(teacher.patch_size)
    dev = text.device
    hit = tot = 0
    cls_scores, cls_pos, top1 = [], [], []
    for i in range(len(dataset)):
        smp = dataset[i]
        img = smp["image"].unsqueeze(0).to(dev)
        full = smp["full_label"].long()  # [H0, W0]
        Hi, Wi = img.shape[-2:]
        lab_r = F.interpolate(full[None, None].float(), size=(Hi, Wi), mode="nearest").long()[0]  # [1, Hi, Wi]
        out = teacher(img, full_label=lab_r.to(dev))
        dense, h, w = out["dense"].float(), int(out["h"]), int(out["w"])
        logits = torch.einsum("bdhw,cd->bchw", dense, text)  # [1, C, h, w]
        # patches -> resized-image pixels (floor grid + replicate remainder) -> label size
        up = F.interpolate(logits, size=(h * p, w * p), mode="bilinear", align_corners=False)
        up = F.pad(up, (0, Wi - w * p, 0, Hi - h * p), mode="replicate")
        up = F.interpolate(up, size=tuple(full.shape), mode="bilinear", align_corners=False)
        ev.update(up.argmax(1).cpu(), full[None])
        if len(unseen_ids):  # ZSS view: argmax over the unseen classes only, scored on unseen-GT pixels
            ev_u.update(unseen_ids[up[:, unseen_ids.to(up.device)].argmax(1).cpu()], full[None])
        tgt, val, area = patch_targets(lab_r.cpu(), C, p, min_labelled, ignore_index)
        pred = logits.flatten(2).argmax(1).cpu()  # [1, h*w]
        hit += int((pred[val] == tgt[val]).sum())
        tot += int(val.sum())
        s = (out["cls"].float() @ text.t())[0].cpu().numpy()  # [C]
        present = np.zeros(C, dtype=bool)
        ids = torch.unique(full[full != ignore_index]).tolist()
        present[ids] = True
        if present.any():
            cls_scores.append(s)
            cls_pos.append(present)
            top1.append(bool(present[int(np.argmax(s))]))
    if len(dataset) == 0:
        raise ValueError("evaluate_dense_quality: the dataset is empty")
    r = ev.compute()
    ru = ev_u.compute() if len(unseen_ids) else {"mAcc": float("nan"), "pAcc": float("nan")}
    sc, po = (np.stack(cls_scores), np.stack(cls_pos)) if cls_scores else (np.zeros((0, C)), np.zeros((0, C), bool))
    aps = [_average_precision(sc[:, c], po[:, c]) for c in range(C)] if len(sc) else []
    cos = (text @ text.t()).cpu().numpy()
    off = cos[~np.eye(C, dtype=bool)]
    return {
        "mIoU": r["mIoU"],
        "mIoU_seen": r["mIoU_seen"],
        "mIoU_unseen": r["mIoU_unseen"],
        "pAcc": r["pAcc"],
        "hIoU": r["hIoU"],
        "five_way_mAcc": ru["mAcc"],
        "five_way_pAcc": ru["pAcc"],
        "patch_acc": hit / tot * 100.0 if tot else float("nan"),
        "cls_top1": float(np.mean(top1) * 100.0) if top1 else float("nan"),
        "cls_mAP": float(np.nanmean(aps)) if aps and not all(math.isnan(a) for a in aps) else float("nan"),
        "text_max_cos": float(off.max()) if off.size else float("nan"),
        "text_mean_cos": float(off.mean()) if off.size else float("nan"),
        "num_images": len(dataset),
        "per_class_IoU": [pc["IoU"] for pc in r["per_class"]],
        "gt_pixels": [int(v) for v in ev.confusion.sum(dim=1).tolist()],
    }


@torch.no_grad()
def evaluate_crop_patch_acc(
    teacher: torch.nn.Module,
    settings: TaughtClipSettings,
    num_batches: int = 20,
    seed: int = 12345,
) -> dict[str, float]:
    """Patch accuracy of the FINAL model on fresh training-style crops of the taught images.

    Crops are drawn exactly as in teaching (``build_train_transform`` with the settings' scale, ratio, flips,
    photometric; ``image_size``² crops; batches of ``batch_size``) from a fixed seed, inside
    ``torch.random.fork_rng`` (the global RNG is untouched). A mechanism tool, not a zero-shot result.

    Args:
        teacher: FrozenCLIP-like (``forward(images, full_label)`` -> ``dense`` Tensor[B, D, h, w];
            ``text``; ``patch_size``). settings: the teaching settings. num_batches: crops = num_batches *
            batch_size (ours: 20). seed: crop-sampling seed (ours: 12345, distinct from teaching seeds).
    Returns:
        dict ``patch_acc`` (percent of patches more than ``min_labelled`` labelled whose argmax class is their
        majority class), ``num_patches`` (int), ``num_crops`` (int).
    """
    bench = get_benchmark(settings.benchmark)
    C = len(bench.classes)
    text = teacher.text(list(bench.classes), list(bench.templates)).float()
    dev = text.device
    hit = tot = n = 0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tf = build_train_transform(
            crop_size=(settings.image_size, settings.image_size),
            scale=settings.scale,
            ratio_range=settings.ratio_range,
            cat_max_ratio=settings.cat_max_ratio,
            flip_prob=settings.flip_prob,
            photometric=settings.photometric,
            mean=CLIP_MEAN,
            std=CLIP_STD,
        )
        ds = _splits_dataset(settings, tf)
        gen = torch.Generator().manual_seed(seed)
        for _, idx in zip(range(num_batches), _batches(len(ds), settings.batch_size, gen)):
            samples = [ds[i] for i in idx]
            images = torch.stack([b["image"] for b in samples]).to(dev)
            labels = torch.stack([b["full_label"] for b in samples])
            target, valid, _ = patch_targets(labels, C, int(teacher.patch_size), settings.min_labelled)
            dense = teacher(images, full_label=labels.to(dev))["dense"].float()  # [B, D, h, w]
            pred = torch.einsum("bdn,cd->bcn", dense.flatten(2), text).argmax(1).cpu()  # [B, h*w]
            hit += int((pred[valid] == target[valid]).sum())
            tot += int(valid.sum())
            n += len(idx)
    return {"patch_acc": hit / tot * 100.0 if tot else float("nan"), "num_patches": tot, "num_crops": n}


def format_quality(
    quality: dict[str, dict],
    train_patch_acc: dict[str, float] | None = None,
    held_out: bool = False,
    short_side: int = 224,
) -> str:
    """Markdown table of :func:`evaluate_dense_quality` results per dense mode, labelled as what it is.

    Args:
        quality: dense mode -> result dict, optionally with ``crop_patch_acc`` (percent, from
            :func:`evaluate_crop_patch_acc`). train_patch_acc: mode -> running patch accuracy of the last 50
            teaching steps (percent), if known. held_out: the scored images were never taught (the synthetic
            world's val/test splits): the title says so. short_side: evaluation short side, pixels (for the note).
    Returns:
        str (several lines).
    """

    def f(v: Any) -> str:
        return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{float(v):.1f}"

    any_q = next(iter(quality.values()))
    title = (
        "Label-taught CLIP quality on HELD-OUT images it was never taught: its dense zero-shot ceiling "
        "(a mechanism tool taught on labels, not a real CLIP)."
        if held_out
        else "Label-taught CLIP quality on the images it was TAUGHT: a mechanism tool, not a zero-shot result "
        "(it memorises these images; nothing here measures generalisation)."
    )
    lines = [
        title,
        "",
        "| dense mode | mIoU (all classes) | mIoU(S) | mIoU(U) | 5-way class-mean | pAcc | patch acc, whole images | "
        "patch acc, taught crops | running, last 50 steps |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for mode, q in quality.items():
        tpa = (train_patch_acc or {}).get(mode)
        lines.append(
            f"| {mode} | {f(q['mIoU'])} | {f(q['mIoU_seen'])} | {f(q['mIoU_unseen'])} | "
            f"{f(q.get('five_way_mAcc'))} | {f(q['pAcc'])} | "
            f"{f(q['patch_acc'])} | {f(q.get('crop_patch_acc'))} | {f(tpa)} |"
        )
    lines += [
        "",
        f"CLS multi-label: top-1 class present {f(any_q['cls_top1'])}%, mAP {f(any_q['cls_mAP'])}% "
        f"({any_q['num_images']} images). Class text embeds: max off-diagonal cosine "
        f"{any_q['text_max_cos']:.2f}, mean {any_q['text_mean_cos']:.2f}.",
        f"(All percent. mIoU/pAcc: whole images at short side {short_side}, logits upsampled to the label. 5-way "
        "class-mean: unseen-class pixels, argmax over the unseen classes, mean over them. Patch acc: patches "
        "more than half labelled vs their majority class; taught crops = fresh training-style crops, final model; "
        "running = measured during teaching before each update.)",
    ]
    return "\n".join(lines)
