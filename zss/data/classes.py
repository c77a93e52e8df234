"""Benchmark class lists, seen/unseen splits, prompt templates and dataset layouts.

Everything here is plain data (no tensors). Source for every list: docs/protocol.md "Benchmarks" [protocol], i.e. the
public configs of the ZegCLIP / CLIP-RC / Cascade-CLIP / OTSeg lineage.

Presets (never a bare "context": PASCAL Context has no canonical zero-shot split):

================  ======  ==============================  ===================================
name              C       unseen split(s)                 labels
================  ======  ==============================  ===================================
``voc20``         20      ids 15..19 (default)            background 0 -> 255 (reduce_zero_label)
``voc21``         21      none (weakly supervised, CLIP-ES) background is class 0, no reduction
``cocostuff171``  171     15 ids (default)                ``*_labelTrainIds.png`` 0..170
``context59``     59      ``zs3`` or ``cascade``          background 0 -> 255 (reduce_zero_label)
``context60``     60      ``zs3`` or ``cascade`` (ids+1)  background is class 0, no reduction
``world``         20      ``default``/``texture``/``shared`` synthetic (zss.data.synthetic), as voc20
================  ======  ==============================  ===================================
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Sequence

from .synthetic import WORLD_CLASSES, WORLD_UNSEEN_SPLITS

__all__ = [
    "IGNORE_INDEX",
    "Benchmark",
    "BENCHMARKS",
    "VOC_TEMPLATES",
    "COCO_TEMPLATES",
    "VOC_CLASSES",
    "COCO_STUFF_CLASSES",
    "CONTEXT59_CLASSES",
    "CONTEXT60_CLASSES",
    "get_benchmark",
    "class_index",
    "DatasetLayout",
    "DATASET_LAYOUTS",
    "layout",
]

IGNORE_INDEX = 255
"""Label value of unlabelled / ignored pixels in every benchmark, label file and pseudo mask of zss
(``ignore_index=255``, as in mmseg; docs/protocol.md "Benchmarks")."""

# --------------------------------------------------------------------------------------------
# Prompt templates (docs/protocol.md "Prompts")
# --------------------------------------------------------------------------------------------
VOC_TEMPLATES: tuple[str, ...] = ("a photo of a {}.",)
"""Single prompt template used for PASCAL VOC (docs/protocol.md "Prompts", ZegCLIP's VOC config)."""

COCO_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a photo of a small {}.",
    "a photo of a medium {}.",
    "a photo of a large {}.",
    "This is a photo of a {}.",
    "This is a photo of a small {}.",
    "This is a photo of a medium {}.",
    "This is a photo of a large {}.",
    "a {} in the scene.",
    "a photo of a {} in the scene.",
    "There is a {} in the scene.",
    "There is the {} in the scene.",
    "This is a {} in the scene.",
    "This is the {} in the scene.",
    "This is one {} in the scene.",
)
"""15-template ensemble used for COCO-Stuff and PASCAL Context (docs/protocol.md "Prompts")."""

# --------------------------------------------------------------------------------------------
# Class lists (label-id order, docs/protocol.md "Benchmarks")
# --------------------------------------------------------------------------------------------
VOC_CLASSES: tuple[str, ...] = (
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)

COCO_STUFF_CLASSES: tuple[str, ...] = (
    "person",
    "bicycle",
    "car",
    "motorcycle",
    "airplane",
    "bus",
    "train",
    "truck",
    "boat",
    "traffic light",
    "fire hydrant",
    "stop sign",
    "parking meter",
    "bench",
    "bird",
    "cat",
    "dog",
    "horse",
    "sheep",
    "cow",
    "elephant",
    "bear",
    "zebra",
    "giraffe",
    "backpack",
    "umbrella",
    "handbag",
    "tie",
    "suitcase",
    "frisbee",
    "skis",
    "snowboard",
    "sports ball",
    "kite",
    "baseball bat",
    "baseball glove",
    "skateboard",
    "surfboard",
    "tennis racket",
    "bottle",
    "wine glass",
    "cup",
    "fork",
    "knife",
    "spoon",
    "bowl",
    "banana",
    "apple",
    "sandwich",
    "orange",
    "broccoli",
    "carrot",
    "hot dog",
    "pizza",
    "donut",
    "cake",
    "chair",
    "couch",
    "potted plant",
    "bed",
    "dining table",
    "toilet",
    "tv",
    "laptop",
    "mouse",
    "remote",
    "keyboard",
    "cell phone",
    "microwave",
    "oven",
    "toaster",
    "sink",
    "refrigerator",
    "book",
    "clock",
    "vase",
    "scissors",
    "teddy bear",
    "hair drier",
    "toothbrush",
    "banner",
    "blanket",
    "branch",
    "bridge",
    "building-other",
    "bush",
    "cabinet",
    "cage",
    "cardboard",
    "carpet",
    "ceiling-other",
    "ceiling-tile",
    "cloth",
    "clothes",
    "clouds",
    "counter",
    "cupboard",
    "curtain",
    "desk-stuff",
    "dirt",
    "door-stuff",
    "fence",
    "floor-marble",
    "floor-other",
    "floor-stone",
    "floor-tile",
    "floor-wood",
    "flower",
    "fog",
    "food-other",
    "fruit",
    "furniture-other",
    "grass",
    "gravel",
    "ground-other",
    "hill",
    "house",
    "leaves",
    "light",
    "mat",
    "metal",
    "mirror-stuff",
    "moss",
    "mountain",
    "mud",
    "napkin",
    "net",
    "paper",
    "pavement",
    "pillow",
    "plant-other",
    "plastic",
    "platform",
    "playingfield",
    "railing",
    "railroad",
    "river",
    "road",
    "rock",
    "roof",
    "rug",
    "salad",
    "sand",
    "sea",
    "shelf",
    "sky-other",
    "skyscraper",
    "snow",
    "solid-other",
    "stairs",
    "stone",
    "straw",
    "structural-other",
    "table",
    "tent",
    "textile-other",
    "towel",
    "tree",
    "vegetable",
    "wall-brick",
    "wall-concrete",
    "wall-other",
    "wall-panel",
    "wall-stone",
    "wall-tile",
    "wall-wood",
    "water-other",
    "waterdrops",
    "window-blind",
    "window-other",
    "wood",
)

CONTEXT59_CLASSES: tuple[str, ...] = (
    "aeroplane",
    "bag",
    "bed",
    "bedclothes",
    "bench",
    "bicycle",
    "bird",
    "boat",
    "book",
    "bottle",
    "building",
    "bus",
    "cabinet",
    "car",
    "cat",
    "ceiling",
    "chair",
    "cloth",
    "computer",
    "cow",
    "cup",
    "curtain",
    "dog",
    "door",
    "fence",
    "floor",
    "flower",
    "food",
    "grass",
    "ground",
    "horse",
    "keyboard",
    "light",
    "motorbike",
    "mountain",
    "mouse",
    "person",
    "plate",
    "platform",
    "pottedplant",
    "road",
    "rock",
    "sheep",
    "shelves",
    "sidewalk",
    "sign",
    "sky",
    "snow",
    "sofa",
    "table",
    "track",
    "train",
    "tree",
    "truck",
    "tvmonitor",
    "wall",
    "water",
    "window",
    "wood",
)

CONTEXT60_CLASSES: tuple[str, ...] = ("background",) + CONTEXT59_CLASSES

_VOC_UNSEEN: tuple[int, ...] = (15, 16, 17, 18, 19)
_COCO_UNSEEN: tuple[int, ...] = (19, 23, 28, 29, 36, 51, 76, 88, 94, 112, 133, 136, 137, 157, 160)
# Context59 splits, ids in the 59-class space. Order as published (ZS3Net order for zs3).
_CONTEXT59_SPLITS: dict[str, tuple[int, ...]] = {
    "zs3": (19, 33, 48, 14, 7, 24, 6, 54, 31, 0),
    "cascade": (0, 2, 3, 7, 9, 13, 17, 19, 31, 37),
}

BENCHMARKS: dict[str, tuple[str | None, ...]] = {
    "voc20": (None,),
    "voc21": (None,),  # weakly-supervised VOC (docs/clip_es.md): background + 20 classes, no unseen class
    "cocostuff171": (None,),
    "context59": tuple(_CONTEXT59_SPLITS),
    "context60": tuple(_CONTEXT59_SPLITS),
    "world": (None, *(k for k in WORLD_UNSEEN_SPLITS if k != "default")),  # synthetic world (docs/world.md)
}
"""Benchmark name -> its valid unseen-split names (``None`` = the single default split)."""


# --------------------------------------------------------------------------------------------
# Benchmark
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Benchmark:
    """A class list with its seen/unseen partition and prompt templates.

    Attributes:
        name: preset name, one of ``BENCHMARKS`` ("voc20", "cocostuff171", "context59", "context60").
        split: unseen-split name ("zs3"/"cascade" for Context presets), ``None`` for the single default
            split of VOC / COCO-Stuff.
        classes: class names in label-id order (label id ``i`` is ``classes[i]``).
        unseen: unseen label ids (ints in ``[0, num_classes)``), in the published order.
        templates: prompt templates, each containing exactly one ``"{}"``.

    Source: docs/protocol.md "Benchmarks" [protocol].
    """

    name: str
    split: str | None
    classes: tuple[str, ...]
    unseen: tuple[int, ...]
    templates: tuple[str, ...]

    def __post_init__(self) -> None:
        n = len(self.classes)
        bad = [u for u in self.unseen if not 0 <= u < n]
        if bad:
            raise ValueError(f"Benchmark {self.name!r}: unseen ids {bad} are outside [0, {n}).")
        if len(set(self.unseen)) != len(self.unseen):
            raise ValueError(f"Benchmark {self.name!r}: duplicate unseen ids in {self.unseen}.")
        for t in self.templates:
            if t.count("{}") != 1:
                raise ValueError(f"Benchmark {self.name!r}: template {t!r} must contain exactly one '{{}}'.")

    @property
    def num_classes(self) -> int:
        """Number of classes C (seen + unseen)."""
        return len(self.classes)

    @property
    def seen(self) -> tuple[int, ...]:
        """Seen label ids, ascending (all ids not in ``unseen``)."""
        u = set(self.unseen)
        return tuple(i for i in range(self.num_classes) if i not in u)

    @property
    def seen_names(self) -> tuple[str, ...]:
        """Names of the seen classes, in the order of ``seen``."""
        return tuple(self.classes[i] for i in self.seen)

    @property
    def unseen_names(self) -> tuple[str, ...]:
        """Names of the unseen classes, in the order of ``unseen``."""
        return tuple(self.classes[i] for i in self.unseen)


def _check_split(name: str, split: str | None) -> str | None:
    valid = BENCHMARKS[name]
    if split == "default":
        split = None
    if split not in valid:
        if valid == (None,):
            raise ValueError(
                f"Benchmark {name!r} has a single unseen split; got split={split!r}. "
                f"Leave split unset (None or 'default')."
            )
        shown = [s for s in valid if s is not None]
        if split is None:
            raise ValueError(
                f"Benchmark {name!r} has no canonical zero-shot split: choose split= one of {shown} "
                f"(e.g. get_benchmark({name!r}, {shown[0]!r}) or dataset.split={shown[0]})."
            )
        raise ValueError(f"Unknown split {split!r} for benchmark {name!r}; valid splits: {shown}.")
    return split


def get_benchmark(name: str, split: str | None = None) -> Benchmark:
    """Return the preset benchmark ``name`` with unseen split ``split``.

    Args:
        name: one of ``"voc20"``, ``"voc21"``, ``"cocostuff171"``, ``"context59"``, ``"context60"``, ``"world"``.
        split: ``"zs3"`` or ``"cascade"`` for the Context presets (required there); ``None`` (or
            ``"default"``) for VOC and COCO-Stuff; ``None``/``"default"``, ``"texture"`` or ``"shared"`` for the
            synthetic world (``zss.data.synthetic.WORLD_UNSEEN_SPLITS``, docs/world.md).  ``voc21`` (background + 20
            classes, no unseen class) is the weakly-supervised setting of CLIP-ES (docs/clip_es.md).

    Returns:
        A frozen ``Benchmark``. VOC uses ``VOC_TEMPLATES``; COCO-Stuff and Context use ``COCO_TEMPLATES``.
        ``context60`` = background (id 0) + ``context59``, its unseen ids are the context59 ids + 1.

    Raises:
        KeyError: unknown ``name`` (the message lists the valid names).
        ValueError: ``split`` missing for a Context preset, or not valid for ``name`` (lists the choices).

    Source: docs/protocol.md "Benchmarks" [protocol].
    """
    if name not in BENCHMARKS:
        hint = ""
        if name.lower().startswith("context"):
            hint = " PASCAL Context has two presets: 'context59' (background ignored) or 'context60'."
        close = difflib.get_close_matches(name, list(BENCHMARKS), n=3, cutoff=0.5)
        if close:
            hint += f" Did you mean {close}?"
        raise KeyError(f"Unknown benchmark {name!r}; valid names: {sorted(BENCHMARKS)}.{hint}")
    split = _check_split(name, split)
    if name == "voc20":
        return Benchmark(name, None, VOC_CLASSES, _VOC_UNSEEN, VOC_TEMPLATES)
    if name == "voc21":  # background = id 0, every class seen (docs/clip_es.md)
        return Benchmark(name, None, ("background",) + VOC_CLASSES, (), VOC_TEMPLATES)
    if name == "cocostuff171":
        return Benchmark(name, None, COCO_STUFF_CLASSES, _COCO_UNSEEN, COCO_TEMPLATES)
    if name == "world":
        return Benchmark(name, split, WORLD_CLASSES, WORLD_UNSEEN_SPLITS[split or "default"], VOC_TEMPLATES)
    assert split is not None
    if name == "context59":
        return Benchmark(name, split, CONTEXT59_CLASSES, _CONTEXT59_SPLITS[split], COCO_TEMPLATES)
    # context60: background is id 0, everything else shifts by one.
    return Benchmark(name, split, CONTEXT60_CLASSES, tuple(u + 1 for u in _CONTEXT59_SPLITS[split]), COCO_TEMPLATES)


def class_index(benchmark: Benchmark, names: Sequence[str]) -> list[int]:
    """Map class names to label ids of ``benchmark``.

    Args:
        benchmark: the ``Benchmark`` whose ``classes`` define the ids.
        names: class names (exact spelling of ``benchmark.classes``). A bare string is rejected.

    Returns:
        list[int] of label ids, same order as ``names``.

    Raises:
        KeyError: a name is not a class of the benchmark; the message names it, suggests close
            spellings and lists the valid names.
        TypeError: ``names`` is a single string instead of a sequence of strings.
    """
    if isinstance(names, str):
        raise TypeError(f"class_index expects a sequence of class names, got the string {names!r}; use [{names!r}].")
    lookup = {c: i for i, c in enumerate(benchmark.classes)}
    out: list[int] = []
    for n in names:
        if n not in lookup:
            close = difflib.get_close_matches(n, benchmark.classes, n=3, cutoff=0.6)
            hint = f" Did you mean {close}?" if close else ""
            raise KeyError(
                f"Unknown class {n!r} for benchmark {benchmark.name!r}.{hint} Valid names: {list(benchmark.classes)}."
            )
        out.append(lookup[n])
    return out


# --------------------------------------------------------------------------------------------
# Dataset layouts (mmseg directory conventions, docs/protocol.md "Layouts")
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DatasetLayout:
    """On-disk layout of one benchmark, relative to the dataset root (mmseg conventions).

    ``img_dir``, ``ann_dir`` and ``split_file`` may contain ``"{split}"`` (e.g. ``"train"``, ``"val"``),
    filled in by ``resolve``. ``split_file=None`` means "scan ``img_dir`` for ``*img_suffix`` files that
    have an annotation" (COCO-Stuff).

    Attributes:
        img_dir: image folder template.
        ann_dir: annotation folder template.
        split_file: split-list template (one image id per line) or ``None`` (directory scan).
        img_suffix: image file suffix, e.g. ``".jpg"``.
        seg_suffix: annotation file suffix, e.g. ``".png"`` or ``"_labelTrainIds.png"``.
        reduce_zero_label: map label 0 -> 255 and v -> v-1 (background ignored).
        default_root: the conventional root folder name under ``data/`` (documentation only).

    Source: docs/protocol.md "Layouts"; mmseg's dataset configs [protocol].
    """

    img_dir: str
    ann_dir: str
    split_file: str | None
    img_suffix: str
    seg_suffix: str
    reduce_zero_label: bool
    default_root: str

    def resolve(self, split: str) -> dict:
        """Fill ``{split}`` and return the keyword arguments for ``SegDataset`` (paths relative to root).

        Returns:
            dict with keys img_dir, ann_dir, split_file, img_suffix, seg_suffix, reduce_zero_label.
        """
        return dict(
            img_dir=self.img_dir.format(split=split),
            ann_dir=self.ann_dir.format(split=split),
            split_file=None if self.split_file is None else self.split_file.format(split=split),
            img_suffix=self.img_suffix,
            seg_suffix=self.seg_suffix,
            reduce_zero_label=self.reduce_zero_label,
        )


_CONTEXT_LAYOUT = dict(
    img_dir="JPEGImages",
    ann_dir="SegmentationClassContext",
    split_file="ImageSets/SegmentationContext/{split}.txt",
    img_suffix=".jpg",
    seg_suffix=".png",
    default_root="VOCdevkit/VOC2010",
)

_VOC_LAYOUT = dict(
    img_dir="JPEGImages",
    ann_dir="SegmentationClass",
    split_file="ImageSets/Segmentation/{split}.txt",
    img_suffix=".jpg",
    seg_suffix=".png",
)

DATASET_LAYOUTS: dict[str, DatasetLayout] = {
    "voc20": DatasetLayout(reduce_zero_label=True, default_root="VOCdevkit/VOC2012", **_VOC_LAYOUT),
    "voc21": DatasetLayout(reduce_zero_label=False, default_root="VOCdevkit/VOC2012", **_VOC_LAYOUT),
    "cocostuff171": DatasetLayout(
        img_dir="images/{split}2017",
        ann_dir="annotations/{split}2017",
        split_file=None,
        img_suffix=".jpg",
        seg_suffix="_labelTrainIds.png",
        reduce_zero_label=False,
        default_root="coco_stuff164k",
    ),
    "world": DatasetLayout(reduce_zero_label=True, default_root="world", **_VOC_LAYOUT),  # zss.data.synthetic
    "context59": DatasetLayout(reduce_zero_label=True, **_CONTEXT_LAYOUT),
    "context60": DatasetLayout(reduce_zero_label=False, **_CONTEXT_LAYOUT),
}
"""Benchmark name -> ``DatasetLayout`` defaults (mmseg layouts, docs/protocol.md "Layouts")."""


def layout(name: str) -> DatasetLayout:
    """Return the ``DatasetLayout`` defaults of benchmark ``name``.

    Raises:
        KeyError: unknown ``name`` (lists the valid names).
    """
    if name not in DATASET_LAYOUTS:
        raise KeyError(f"No dataset layout for {name!r}; valid names: {sorted(DATASET_LAYOUTS)}.")
    return DATASET_LAYOUTS[name]
