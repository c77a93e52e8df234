"""A synthetic zero-shot world: a dataset generator in the PASCAL VOC layout (``zss-make-world``).

No real CLIP weights or large datasets can be had offline, so transfer to images the student never saw
is tested on a world whose classes are composed from attributes and named in words (docs/world.md):
5 textures x 4 colours = 20 classes, e.g. ``"striped blue shape"``, each object drawn in a random outline
(disc, square, triangle, ring, cross). In the default unseen split every yellow class is unseen: each unseen
class shares its texture with seen classes, but its colour is one no seen class has, so only a teacher that
saw it (as CLIP saw the web) can name it (``WORLD_UNSEEN_SPLITS`` has the other splits).

Four disjoint image splits (ids never repeat across splits):

==========  ===================================================================================
``teach``   all classes labelled: what "CLIP saw on the web" (``zss-teach-clip`` teaches on it only)
``train``   the student's images; their unseen pixels become 255 at load time (``hide_unseen``)
``val``     the only split used to choose anything (defaults, ablations)
``test``    reported once, never used to choose
==========  ===================================================================================

Layout (mmseg's VOC layout, read by ``dataset=world`` with no other change)::

    <out>/JPEGImages/<id>.jpg
    <out>/SegmentationClass/<id>.png           palette PNG: 0 background (ignored), 1..20 classes
    <out>/ImageSets/Segmentation/<split>.txt   one id per line
    <out>/world.json                           every setting, the class list, counts per split

Every image is drawn from its own RNG seeded by ``(seed, split, index)``: the same arguments give the
same bytes whatever the number of worker processes. Not in any paper: the world and every knob are ours.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .palette import voc_palette

__all__ = [
    "TEXTURES",
    "COLOURS",
    "SHAPES",
    "WORLD_CLASSES",
    "WORLD_UNSEEN_SPLITS",
    "WORLD_SPLITS",
    "WorldSettings",
    "class_attributes",
    "render_image",
    "make_world",
    "read_world_info",
]

TEXTURES: tuple[str, ...] = ("solid", "striped", "dotted", "checkered", "wavy")
"""Textures (the first attribute of a class)."""

COLOURS: tuple[tuple[str, tuple[int, int, int]], ...] = (
    ("red", (205, 45, 40)),
    ("blue", (40, 75, 205)),
    ("green", (45, 160, 60)),
    ("yellow", (225, 200, 45)),
)
"""Colours (the second attribute of a class): (name, base RGB uint8)."""

SHAPES: tuple[str, ...] = ("disc", "square", "triangle", "ring", "cross")
"""Object outlines: drawn at random for every object, whatever its class (a nuisance, not a class attribute)."""

WORLD_CLASSES: tuple[str, ...] = tuple(f"{t} {c} shape" for t in TEXTURES for c, _ in COLOURS)
"""The 20 class names in label-id order: id = texture index * 4 + colour index (label value = id + 1)."""

# Unseen splits (ours). `default`: every class of one colour (yellow) is unseen: each unseen class shares its texture
# with three seen classes, and its colour with no seen class, as an unseen VOC class shares parts and context with
# seen ones but is a concept of its own. `texture`: every class of one texture (dotted) is unseen. `shared`: one
# unseen class per texture, every colour used, so BOTH attributes of every unseen class occur in seen classes; there
# the teacher's text embeds alone carry the unseen classes to a seen-only student (docs/world.md "Unseen splits").
# `colours`: every class of two colours (green, yellow) is unseen, so every texture has two unseen classes.
WORLD_UNSEEN_SPLITS: dict[str, tuple[int, ...]] = {
    "default": (3, 7, 11, 15, 19),  # solid / striped / dotted / checkered / wavy yellow
    "texture": (8, 9, 10, 11),  # dotted red / blue / green / yellow
    "shared": (3, 6, 9, 12, 17),  # solid yellow, striped green, dotted blue, checkered red, wavy blue
    "colours": (2, 3, 6, 7, 10, 11, 14, 15, 18, 19),  # every green and yellow class
}
"""Named unseen splits of the world (``dataset.split`` / ``get_benchmark("world", split)``), class ids."""

WORLD_SPLITS: tuple[str, ...] = ("teach", "train", "val", "test")
"""The image splits, in generation order."""

INFO_FILE = "world.json"
#: Version of the generator's output (``world.json`` "format"): bumped whenever the same settings draw other
#: pixels, so an older world is refused and every teacher taught on one gets another cache key.
#: 2 (2026-12-06): wavy lines are thin (30 % dark) instead of half dark like checkered (docs/world.md "Why thin waves").
WORLD_FORMAT = 2


def class_attributes(class_id: int) -> tuple[str, str]:
    """(texture, colour) of a world class id (0..19). Raises: IndexError for an id out of range."""
    if not 0 <= class_id < len(WORLD_CLASSES):
        raise IndexError(f"world class id {class_id} is outside [0, {len(WORLD_CLASSES)})")
    return TEXTURES[class_id // len(COLOURS)], COLOURS[class_id % len(COLOURS)][0]


@dataclass(frozen=True)
class WorldSettings:
    """Every value that defines a world (written to ``world.json``). Not in any paper: all ours.

    Attributes:
        seed: generator seed. unseen: the unseen split recorded in ``world.json`` (``"default"``, ``"texture"``,
            ``"shared"``). The images do not depend on it: every class is drawn, and ``dataset.split`` picks the
            split that training and scoring use.
        counts: images per split, in ``WORLD_SPLITS`` order (teach, train, val, test).
        size: image side, pixels (square images).
        objects: (min, max) objects per image, inclusive.
        radius: (min, max) object radius as a fraction of ``size``.
        clutter: number of background strokes in random colours (ignored pixels; the object colours included).
        colour_jitter: per-object uniform RGB shift (each channel +-, 0..255 units) and brightness factor
            range +- this / 255.
        noise: std of the per-pixel Gaussian noise, 0..255 units.
        blur: Gaussian blur radius, pixels (0: none).
        jpeg_quality: JPEG quality of the images (1..95).

    Raises:
        ValueError: a value out of range (names the key).
    """

    seed: int = 0
    unseen: str = "default"
    counts: tuple[int, int, int, int] = (2000, 1000, 300, 300)
    size: int = 128
    objects: tuple[int, int] = (1, 4)
    radius: tuple[float, float] = (0.12, 0.28)
    clutter: int = 6
    colour_jitter: float = 40.0
    noise: float = 12.0
    blur: float = 0.6
    jpeg_quality: int = 90

    def __post_init__(self) -> None:
        put = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731
        put("counts", tuple(int(c) for c in self.counts))
        put("objects", tuple(int(c) for c in self.objects))
        put("radius", tuple(float(c) for c in self.radius))
        if self.unseen not in WORLD_UNSEEN_SPLITS:
            raise ValueError(
                f"unseen={self.unseen!r} is not a world unseen split; choose one of {sorted(WORLD_UNSEEN_SPLITS)}"
            )
        if len(self.counts) != len(WORLD_SPLITS) or min(self.counts) < 1:
            raise ValueError(f"counts={self.counts} must give >= 1 image for each split {WORLD_SPLITS}")
        if self.size < 32:
            raise ValueError(f"size={self.size} must be >= 32 pixels")
        if len(self.objects) != 2 or not 1 <= self.objects[0] <= self.objects[1]:
            raise ValueError(f"objects={self.objects} must be (min, max) with 1 <= min <= max")
        if len(self.radius) != 2 or not 0.02 <= self.radius[0] <= self.radius[1] <= 0.5:
            raise ValueError(f"radius={self.radius} must be (min, max) fractions with 0.02 <= min <= max <= 0.5")
        for k in ("clutter", "colour_jitter", "noise", "blur"):
            if getattr(self, k) < 0:
                raise ValueError(f"{k}={getattr(self, k)} must be >= 0")
        if not 1 <= self.jpeg_quality <= 95:
            raise ValueError(f"jpeg_quality={self.jpeg_quality} must be in 1..95")

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}


# ------------------------------------------------------------------------------------------------ drawing
def _shape_mask(shape: str, size: int, cx: float, cy: float, r: float, angle: float) -> np.ndarray:
    """Boolean mask [size, size] of one shape centred at (cx, cy) pixels, radius r pixels, rotated by angle (rad)."""
    im = Image.new("L", (size, size), 0)
    d = ImageDraw.Draw(im)

    def poly(points: Sequence[tuple[float, float]]) -> None:
        c, s = np.cos(angle), np.sin(angle)
        d.polygon([(cx + x * c - y * s, cy + x * s + y * c) for x, y in points], fill=255)

    if shape == "disc":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    elif shape == "ring":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        ri = 0.55 * r
        d.ellipse([cx - ri, cy - ri, cx + ri, cy + ri], fill=0)
    elif shape == "square":
        a = r * 0.85
        poly([(-a, -a), (a, -a), (a, a), (-a, a)])
    elif shape == "triangle":
        poly([(r * np.cos(t), r * np.sin(t)) for t in (-np.pi / 2, np.pi / 6, 5 * np.pi / 6)])
    elif shape == "cross":
        w, a = 0.33 * r, r
        poly(
            [(-w, -a), (w, -a), (w, -w), (a, -w), (a, w), (w, w), (w, a), (-w, a), (-w, w), (-a, w), (-a, -w), (-w, -w)]
        )
    else:  # pragma: no cover - SHAPES is closed
        raise ValueError(shape)
    return np.asarray(im) > 127


def _texture(texture: str, rgb: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """Float RGB [size, size, 3] (0..255): the colour ``rgb`` with its texture at a random phase and angle."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    base = np.broadcast_to(rgb, (size, size, 3)).astype(np.float32)
    light = base * 0.35 + 255 * 0.65
    dark = base * 0.35
    if texture == "solid":
        return base.copy()
    theta = rng.uniform(0, np.pi)
    period = rng.uniform(6.0, 10.0)
    u = xx * np.cos(theta) + yy * np.sin(theta) + rng.uniform(0, period)
    v = -xx * np.sin(theta) + yy * np.cos(theta) + rng.uniform(0, period)
    if texture == "striped":
        on = (u % period) < period / 2
        return np.where(on[..., None], base, light)
    if texture == "dotted":
        du = (u % period) - period / 2
        dv = (v % period) - period / 2
        on = du * du + dv * dv < (period * 0.28) ** 2
        return np.where(on[..., None], light, base)
    if texture == "checkered":
        on = ((u // (period * 0.7)).astype(np.int64) + (v // (period * 0.7)).astype(np.int64)) % 2 == 0
        return np.where(on[..., None], base, dark)
    if texture == "wavy":  # thin dark waves, 30 % dark (checkered is half dark)
        on = ((u + 0.3 * period * np.sin(v * 2 * np.pi / (1.5 * period))) % period) < period * 0.3
        return np.where(on[..., None], dark, base)
    raise ValueError(texture)  # pragma: no cover - TEXTURES is closed


def _background(size: int, clutter: int, rng: np.random.Generator) -> np.ndarray:
    """Float RGB [size, size, 3]: a smooth random colour field plus ``clutter`` random strokes."""
    low = rng.uniform(40, 215, size=(4, 4, 3)).astype(np.uint8)
    bg = np.asarray(Image.fromarray(low).resize((size, size), Image.BICUBIC), dtype=np.float32)
    im = Image.fromarray(bg.clip(0, 255).astype(np.uint8))
    d = ImageDraw.Draw(im)
    palette = [rgb for _, rgb in COLOURS]
    for _ in range(clutter):
        col = (
            palette[rng.integers(len(palette))]
            if rng.random() < 0.5
            else tuple(int(c) for c in rng.integers(0, 256, 3))
        )
        pts = [tuple(float(v) for v in rng.uniform(0, size, 2)) for _ in range(2)]
        d.line(pts, fill=tuple(int(c) for c in col), width=int(rng.integers(1, 4)))
    return np.asarray(im, dtype=np.float32)


def render_image(settings: WorldSettings, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Draw one image and its label.

    Args:
        settings: the world's knobs. rng: this image's generator.

    Returns:
        (image ``np.ndarray[S, S, 3] uint8`` RGB, label ``np.ndarray[S, S] uint8``: 0 background, 1..20 =
        class id + 1). Objects are drawn in sequence, later ones occluding earlier ones.
    """
    s = settings
    S = s.size
    img = _background(S, s.clutter, rng)
    label = np.zeros((S, S), dtype=np.uint8)
    n = int(rng.integers(s.objects[0], s.objects[1] + 1))
    for _ in range(n):
        cid = int(rng.integers(len(WORLD_CLASSES)))
        texture, _ = class_attributes(cid)
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        r = rng.uniform(*s.radius) * S
        cx, cy = rng.uniform(r * 0.5, S - r * 0.5, size=2)
        mask = _shape_mask(shape, S, cx, cy, r, rng.uniform(0, 2 * np.pi))
        rgb = np.asarray(COLOURS[cid % len(COLOURS)][1], dtype=np.float32)
        rgb = rgb * (1 + rng.uniform(-s.colour_jitter, s.colour_jitter) / 255) + rng.uniform(
            -s.colour_jitter, s.colour_jitter, 3
        )
        tex = _texture(texture, rgb.clip(0, 255), S, rng)
        img[mask] = tex[mask]
        label[mask] = cid + 1
    if s.noise > 0:
        img = img + rng.normal(0.0, s.noise, size=img.shape)
    out = Image.fromarray(img.clip(0, 255).astype(np.uint8))
    if s.blur > 0:
        out = out.filter(ImageFilter.GaussianBlur(s.blur))
    return np.asarray(out), label


_PALETTE = voc_palette(256).reshape(-1).tolist()


def _write_chunk(args: tuple[dict, str, int, int, int, str]) -> list[str]:
    sdict, split, split_code, start, stop, out = args
    settings = WorldSettings(**sdict)
    root = Path(out)
    ids = []
    for i in range(start, stop):
        rng = np.random.default_rng([settings.seed, split_code, i])
        img, lab = render_image(settings, rng)
        name = f"{split}_{i:05d}"
        Image.fromarray(img).save(root / "JPEGImages" / f"{name}.jpg", quality=settings.jpeg_quality)
        p = Image.fromarray(lab, mode="P")
        p.putpalette(_PALETTE)
        p.save(root / "SegmentationClass" / f"{name}.png")
        ids.append(name)
    return ids


def make_world(
    out: str | os.PathLike,
    settings: WorldSettings = WorldSettings(),
    workers: int = 1,
    overwrite: bool = False,
    log: Any = print,
) -> dict:
    """Write a world to ``out`` (VOC layout, see the module docstring) and return its ``world.json`` dict.

    The world is written into a temporary sibling folder and renamed into place, so an interrupted run
    never leaves a folder that looks complete.

    Args:
        out: dataset root to create. settings: the world. workers: processes (the output does not depend on it).
        overwrite: replace an existing world at ``out`` (otherwise an existing one with the same settings is
            kept and one with other settings is refused). log: progress printer (None: silent).

    Returns:
        dict: ``format``, ``settings``, ``classes``, ``unseen_splits`` (name -> class ids), ``counts``
        (split -> images), ``pixels`` (split -> per-class labelled pixel counts, list of 20 ints), ``wall_s``.

    Raises:
        FileExistsError: ``out`` exists and is not this world (names the folder and ``--overwrite``).
    """
    out = Path(out)
    if out.exists() and not overwrite:
        try:
            info = read_world_info(out)
        except (FileNotFoundError, ValueError):
            info = None
        if info is not None and info.get("settings") == settings.to_dict():
            if log:
                log(f"zss-make-world: {out} already holds this world (same settings); kept")
            return info
        raise FileExistsError(
            f"{str(out)!r} exists and is not a world with these settings; choose another "
            f"--out or pass --overwrite to replace it"
        )
    t0 = time.time()
    tmp = out.with_name(f"{out.name}.tmp{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (tmp / sub).mkdir(parents=True)
    jobs = []
    chunk = 100
    for code, (split, n) in enumerate(zip(WORLD_SPLITS, settings.counts)):
        jobs += [(settings.to_dict(), split, code, a, min(a + chunk, n), str(tmp)) for a in range(0, n, chunk)]
    if workers > 1:
        with ProcessPoolExecutor(workers) as ex:
            results = list(ex.map(_write_chunk, jobs))
    else:
        results = [_write_chunk(j) for j in jobs]
    ids: dict[str, list[str]] = {s: [] for s in WORLD_SPLITS}
    for job, names in zip(jobs, results):
        ids[job[1]] += names
    pixels = {}
    for split, names in ids.items():
        (tmp / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(names) + "\n")
        hist = np.zeros(len(WORLD_CLASSES) + 1, dtype=np.int64)
        for n in names:
            hist += np.bincount(
                np.asarray(Image.open(tmp / "SegmentationClass" / f"{n}.png")).ravel(), minlength=len(WORLD_CLASSES) + 1
            )[: len(WORLD_CLASSES) + 1]
        pixels[split] = hist[1:].tolist()
    info = {
        "format": WORLD_FORMAT,
        "settings": settings.to_dict(),
        "classes": list(WORLD_CLASSES),
        "unseen_splits": {k: list(v) for k, v in WORLD_UNSEEN_SPLITS.items()},
        "counts": {s: len(v) for s, v in ids.items()},
        "pixels": pixels,
        "wall_s": round(time.time() - t0, 2),
    }
    (tmp / INFO_FILE).write_text(json.dumps(info, indent=1) + "\n")
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    if log:
        log(
            f"zss-make-world: wrote {sum(info['counts'].values())} images to {out} in {info['wall_s']:.1f}s "
            f"({', '.join(f'{k} {v}' for k, v in info['counts'].items())}); unseen split {settings.unseen!r}: "
            f"{[WORLD_CLASSES[i] for i in WORLD_UNSEEN_SPLITS[settings.unseen]]}"
        )
    return info


def read_world_info(root: str | os.PathLike) -> dict:
    """``world.json`` of a world root.

    Raises:
        FileNotFoundError: no ``world.json`` (names the file and the command that writes it).
        ValueError: the file is not a world's (unreadable JSON or other format).
    """
    path = Path(root) / INFO_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{str(path)!r} not found: make the world first with `zss-make-world --out {root}`")
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{str(path)!r} is not readable JSON ({e}); make the world again with --overwrite") from None
    if not isinstance(info, dict) or info.get("format") != WORLD_FORMAT:
        raise ValueError(f"{str(path)!r} is not a zss world of format {WORLD_FORMAT}; make it again with --overwrite")
    return info


# ------------------------------------------------------------------------------------------------ command
