"""Convert official benchmark annotations into the label PNGs zss reads (mmseg layouts, docs/protocol.md "Layouts").

Two converters, each a library function with a thin script in ``scripts/``:

* **COCO-Stuff 164K** (:func:`convert_cocostuff`, ``scripts/prepare_cocostuff.py``): the official
  ``stuffthingmaps_trainval2017/{train2017,val2017}/*.png`` hold pixel value ``category_id - 1``
  (0..181, with 11 unused ids) and 255 = unlabelled. They become ``*_labelTrainIds.png`` with values
  0..170 (the 171-class order of ``zss.data.classes.COCO_STUFF_CLASSES``) and 255, in
  ``<out>/annotations/{train2017,val2017}/``. This is the mapping mmseg's ``coco_stuff164k.py``
  converter applies; our lookup table is built by *name* from the official category table below and
  checked against the class-list order.
* **PASCAL Context** (:func:`convert_context`, ``scripts/prepare_context.py``): the official
  ``trainval/*.mat`` files hold a 459-class ``LabelMap`` (uint16, 1-based ids of ``labels.txt``,
  0 = unlabelled). They become ``SegmentationClassContext/<id>.png`` with values 0..59 (context60:
  0 = background = every pixel not in one of the 59 classes; 1..59 = ``CONTEXT59_CLASSES``). The same
  PNG serves context59 through ``reduce_zero_label`` (0 -> 255, k -> k-1). Optionally a separate folder
  with context59 values (0..58, 255) is written too. The 59 classes are chosen by NAME from
  ``labels.txt`` (with the documented alias table :data:`CONTEXT59_ALIASES`).

Conventions: all label PNGs are 8-bit single-channel (``'L'``) PNGs; ignore index 255. Outputs are
written atomically (temp file + rename), existing outputs are skipped unless ``overwrite=True``, and
every call returns counts (new / overwritten / skipped) so nothing is replaced silently.

This module does not import torch-heavy code paths itself (numpy, Pillow, scipy, tqdm only). Each split's
conversion draws a progress bar on stderr when it is a terminal.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
from PIL import Image
from tqdm import tqdm

from zss.data.classes import COCO_STUFF_CLASSES, CONTEXT59_CLASSES, IGNORE_INDEX

__all__ = [
    "IGNORE_INDEX",
    "COCO_STUFF_CATEGORIES",
    "COCO_STUFF_UNUSED_IDS",
    "cocostuff_lut",
    "convert_cocostuff_label",
    "convert_cocostuff",
    "CONTEXT59_ALIASES",
    "CONTEXT59_OFFICIAL_IDS",
    "read_context_labels",
    "resolve_context59_ids",
    "context_lut",
    "load_context_mat",
    "convert_context_label",
    "convert_context",
    "ConvertStats",
]


# =============================================================================================
# COCO-Stuff
# =============================================================================================
# Official COCO-Stuff category table: 1-based category id -> name. Things 1..91 (COCO 2014/2017
# detection ids; the 11 ids marked "unused" were defined in the COCO paper but never annotated),
# stuff 92..182 (COCO-Stuff labels.txt). Source: cocodataset.org category list and
# github.com/nightrome/cocostuff labels.txt. The stuffthingmaps pixel value is ``id - 1``.
COCO_STUFF_CATEGORIES: dict[int, str] = {
    1: "person",
    2: "bicycle",
    3: "car",
    4: "motorcycle",
    5: "airplane",
    6: "bus",
    7: "train",
    8: "truck",
    9: "boat",
    10: "traffic light",
    11: "fire hydrant",
    12: "street sign (unused)",
    13: "stop sign",
    14: "parking meter",
    15: "bench",
    16: "bird",
    17: "cat",
    18: "dog",
    19: "horse",
    20: "sheep",
    21: "cow",
    22: "elephant",
    23: "bear",
    24: "zebra",
    25: "giraffe",
    26: "hat (unused)",
    27: "backpack",
    28: "umbrella",
    29: "shoe (unused)",
    30: "eye glasses (unused)",
    31: "handbag",
    32: "tie",
    33: "suitcase",
    34: "frisbee",
    35: "skis",
    36: "snowboard",
    37: "sports ball",
    38: "kite",
    39: "baseball bat",
    40: "baseball glove",
    41: "skateboard",
    42: "surfboard",
    43: "tennis racket",
    44: "bottle",
    45: "plate (unused)",
    46: "wine glass",
    47: "cup",
    48: "fork",
    49: "knife",
    50: "spoon",
    51: "bowl",
    52: "banana",
    53: "apple",
    54: "sandwich",
    55: "orange",
    56: "broccoli",
    57: "carrot",
    58: "hot dog",
    59: "pizza",
    60: "donut",
    61: "cake",
    62: "chair",
    63: "couch",
    64: "potted plant",
    65: "bed",
    66: "mirror (unused)",
    67: "dining table",
    68: "window (unused)",
    69: "desk (unused)",
    70: "toilet",
    71: "door (unused)",
    72: "tv",
    73: "laptop",
    74: "mouse",
    75: "remote",
    76: "keyboard",
    77: "cell phone",
    78: "microwave",
    79: "oven",
    80: "toaster",
    81: "sink",
    82: "refrigerator",
    83: "blender (unused)",
    84: "book",
    85: "clock",
    86: "vase",
    87: "scissors",
    88: "teddy bear",
    89: "hair drier",
    90: "toothbrush",
    91: "hair brush (unused)",
    92: "banner",
    93: "blanket",
    94: "branch",
    95: "bridge",
    96: "building-other",
    97: "bush",
    98: "cabinet",
    99: "cage",
    100: "cardboard",
    101: "carpet",
    102: "ceiling-other",
    103: "ceiling-tile",
    104: "cloth",
    105: "clothes",
    106: "clouds",
    107: "counter",
    108: "cupboard",
    109: "curtain",
    110: "desk-stuff",
    111: "dirt",
    112: "door-stuff",
    113: "fence",
    114: "floor-marble",
    115: "floor-other",
    116: "floor-stone",
    117: "floor-tile",
    118: "floor-wood",
    119: "flower",
    120: "fog",
    121: "food-other",
    122: "fruit",
    123: "furniture-other",
    124: "grass",
    125: "gravel",
    126: "ground-other",
    127: "hill",
    128: "house",
    129: "leaves",
    130: "light",
    131: "mat",
    132: "metal",
    133: "mirror-stuff",
    134: "moss",
    135: "mountain",
    136: "mud",
    137: "napkin",
    138: "net",
    139: "paper",
    140: "pavement",
    141: "pillow",
    142: "plant-other",
    143: "plastic",
    144: "platform",
    145: "playingfield",
    146: "railing",
    147: "railroad",
    148: "river",
    149: "road",
    150: "rock",
    151: "roof",
    152: "rug",
    153: "salad",
    154: "sand",
    155: "sea",
    156: "shelf",
    157: "sky-other",
    158: "skyscraper",
    159: "snow",
    160: "solid-other",
    161: "stairs",
    162: "stone",
    163: "straw",
    164: "structural-other",
    165: "table",
    166: "tent",
    167: "textile-other",
    168: "towel",
    169: "tree",
    170: "vegetable",
    171: "wall-brick",
    172: "wall-concrete",
    173: "wall-other",
    174: "wall-panel",
    175: "wall-stone",
    176: "wall-tile",
    177: "wall-wood",
    178: "water-other",
    179: "waterdrops",
    180: "window-blind",
    181: "window-other",
    182: "wood",
}

COCO_STUFF_UNUSED_IDS: tuple[int, ...] = (12, 26, 29, 30, 45, 66, 68, 69, 71, 83, 91)
"""1-based COCO category ids with no annotations (stuffthingmaps pixel values 11, 25, 28, 29, 44,
65, 67, 68, 70, 82, 90). They map to 255."""


def cocostuff_lut() -> np.ndarray:
    """Lookup table from raw stuffthingmaps pixel values to the 171-class train ids.

    Built by name: raw value ``v`` is COCO category ``v + 1`` (:data:`COCO_STUFF_CATEGORIES`); its name
    is looked up in ``zss.data.classes.COCO_STUFF_CLASSES``. The 11 unused ids, 255 and every value
    >= 182 map to 255. Verified on construction: the 171 used ids map bijectively onto 0..170 in
    increasing category-id order (things in COCO id order, then stuff), as mmseg's converter does.

    Returns:
        np.ndarray[256] uint8: ``lut[raw] -> train id`` (0..170 or 255).

    Raises:
        ValueError: ``COCO_STUFF_CLASSES`` disagrees with the official table (a name missing, or the
            class-list order is not category-id order) — names the offending class.

    Source: docs/protocol.md "Benchmarks" (COCO-Stuff 164K); mmseg ``tools/dataset_converters/coco_stuff164k.py``.
    """
    index = {name: i for i, name in enumerate(COCO_STUFF_CLASSES)}
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    prev = -1
    for cat_id, name in sorted(COCO_STUFF_CATEGORIES.items()):
        if cat_id in COCO_STUFF_UNUSED_IDS:
            continue
        if name not in index:
            raise ValueError(
                f"COCO-Stuff category {cat_id} {name!r} is not in zss.data.classes.COCO_STUFF_CLASSES; "
                f"the class list and the official category table disagree."
            )
        tid = index[name]
        if tid != prev + 1:
            raise ValueError(
                f"COCO_STUFF_CLASSES order differs from the official category-id order at {name!r} "
                f"(category {cat_id}): expected train id {prev + 1}, the class list has {tid}."
            )
        lut[cat_id - 1] = tid
        prev = tid
    if prev + 1 != len(COCO_STUFF_CLASSES):
        raise ValueError(f"Only {prev + 1} of {len(COCO_STUFF_CLASSES)} COCO-Stuff classes were mapped.")
    return lut


_COCO_LUT: np.ndarray | None = None
_COCO_VALID = np.zeros(256, dtype=bool)
_COCO_VALID[:182] = True
_COCO_VALID[IGNORE_INDEX] = True


def convert_cocostuff_label(raw: np.ndarray, source: str = "<array>") -> np.ndarray:
    """Map one raw stuffthingmaps label array to 171-class train ids.

    Args:
        raw: np.ndarray[H, W] integer, values in 0..181 or 255 (pixel = COCO category id - 1).
        source: name used in error messages (the file path).

    Returns:
        np.ndarray[H, W] uint8, values 0..170 or 255.

    Raises:
        ValueError: not 2-D, or values outside {0..181, 255} (names ``source`` and the values).
    """
    global _COCO_LUT
    if _COCO_LUT is None:
        _COCO_LUT = cocostuff_lut()
    raw = np.asarray(raw)
    if raw.ndim != 2:
        raise ValueError(f"{source}: expected a single-channel label map [H, W], got shape {raw.shape}.")
    vals = np.unique(raw)
    bad = vals[(vals < 0) | (vals > 255)]
    if bad.size == 0:
        bad = vals[~_COCO_VALID[vals.astype(np.int64)]]
    if bad.size:
        raise ValueError(
            f"{source}: unexpected raw COCO-Stuff values {bad[:10].tolist()} (valid: 0..181 and 255). "
            f"Is this a stuffthingmaps_trainval2017 PNG (not an already converted *_labelTrainIds.png)?"
        )
    return _COCO_LUT[raw.astype(np.int64)]


# =============================================================================================
# Shared file plumbing
# =============================================================================================
@dataclass
class ConvertStats:
    """Counts returned by the converters (per split).

    Attributes:
        new: outputs written that did not exist before.
        overwritten: outputs that existed and were replaced (only with ``overwrite=True``).
        skipped: outputs that already existed and were left untouched.
        missing: ids listed in a split file without a source annotation (Context, ``allow_missing``).
        extra: free-form notes (e.g. split files written) for printing.
    """

    new: int = 0
    overwritten: int = 0
    skipped: int = 0
    missing: int = 0
    extra: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        """Number of annotations considered (new + overwritten + skipped)."""
        return self.new + self.overwritten + self.skipped

    def __str__(self) -> str:
        s = f"{self.total} files: {self.new} new, {self.overwritten} overwritten, {self.skipped} skipped (exist)"
        if self.missing:
            s += f", {self.missing} listed ids without annotation (dropped)"
        return s


def _save_png(arr: np.ndarray, dst: Path) -> None:
    """Write ``arr`` (uint8 [H, W]) as an 8-bit 'L' PNG atomically (temp file in the same folder + rename)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp{os.getpid()}")
    try:
        Image.fromarray(np.ascontiguousarray(arr, dtype=np.uint8), mode="L").save(tmp, format="PNG")
        os.replace(tmp, dst)
    finally:
        if tmp.exists():
            tmp.unlink()


def _cocostuff_job(job: tuple[str, str]) -> None:
    src, dst = job
    with Image.open(src) as im:
        raw = np.asarray(im)
    _save_png(convert_cocostuff_label(raw, src), Path(dst))


def _context_job(job: tuple[str, list[tuple[str, bool]], np.ndarray]) -> None:
    src, outs, lut = job
    lab60 = convert_context_label(load_context_mat(src), lut, source=src)
    for dst, as59 in outs:
        _save_png(_to_context59(lab60) if as59 else lab60, Path(dst))


def _run(jobs: list, fn: Callable, workers: int, progress: Callable[[int, int], None] | None, desc: str) -> None:
    """Run ``fn`` over ``jobs``, in-process for ``workers <= 1`` else in a multiprocessing pool, with a bar
    (stderr, terminals only: tqdm's ``disable=None``) labelled ``desc`` and the optional ``progress`` callback."""
    n = len(jobs)
    if n == 0:
        return
    with tqdm(total=n, desc=desc, unit="file", disable=None, dynamic_ncols=True) as bar:
        if workers <= 1 or n == 1:
            done: Iterable = (fn(j) for j in jobs)
            _follow(done, n, bar, progress)
            return
        with get_context("spawn" if os.name == "nt" else "fork").Pool(min(workers, n)) as pool:
            chunk = max(1, min(64, n // (4 * workers)))
            _follow(pool.imap_unordered(fn, jobs, chunksize=chunk), n, bar, progress)


def _follow(done: Iterable, n: int, bar: tqdm, progress: Callable[[int, int], None] | None) -> None:
    for i, _ in enumerate(done, 1):
        bar.update(1)
        if progress:
            progress(i, n)


def _plan(outputs: Sequence[Path], overwrite: bool, stats: ConvertStats) -> bool:
    """Decide whether a job runs; update ``stats``. Returns True when the outputs must be (re)written."""
    exists = all(p.exists() for p in outputs)
    if exists and not overwrite:
        stats.skipped += 1
        return False
    if any(p.exists() for p in outputs):
        stats.overwritten += 1
    else:
        stats.new += 1
    return True


# =============================================================================================
# COCO-Stuff converter
# =============================================================================================
def convert_cocostuff(
    raw_dir: str | os.PathLike,
    out_root: str | os.PathLike,
    splits: Sequence[str] = ("train2017", "val2017"),
    workers: int = 1,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, ConvertStats]:
    """Convert COCO-Stuff 164K stuffthingmaps to ``*_labelTrainIds.png`` (171 classes + 255).

    Args:
        raw_dir: the ``stuffthingmaps_trainval2017`` folder, holding ``train2017/*.png`` and/or
            ``val2017/*.png`` (raw values 0..181 with gaps, 255 unlabelled).
        out_root: the ``coco_stuff164k`` dataset root; outputs go to
            ``<out_root>/annotations/<split>/<name>_labelTrainIds.png`` (8-bit 'L' PNG, 0..170, 255).
        splits: split folders to convert; a split folder that is absent in ``raw_dir`` is skipped
            (it must not be absent for all of them).
        workers: processes in the multiprocessing pool (1 = in-process).
        overwrite: replace existing outputs (counted as ``overwritten``); default: skip them.
        progress: optional callback ``progress(done, total)`` per split (a bar is drawn on stderr either way
            when it is a terminal).

    Returns:
        dict split -> :class:`ConvertStats` for the splits that were found.

    Raises:
        FileNotFoundError: ``raw_dir`` missing, none of ``splits`` present, or a present split folder
            with no ``*.png`` (names the folder).
        ValueError: a raw PNG holds values outside {0..181, 255} (names the file).

    Source: docs/protocol.md "Benchmarks"; the mapping is mmseg's ``coco_stuff164k.py`` (built here from names).
    """
    raw_dir, out_root = Path(raw_dir), Path(out_root)
    if not raw_dir.is_dir():
        raise FileNotFoundError(
            f"COCO-Stuff raw folder {str(raw_dir)!r} does not exist; pass the unpacked "
            f"stuffthingmaps_trainval2017 folder (holding train2017/ and val2017/)."
        )
    present = [s for s in splits if (raw_dir / s).is_dir()]
    if not present:
        raise FileNotFoundError(
            f"None of the split folders {list(splits)} exists under {str(raw_dir)!r} (found: "
            f"{sorted(p.name for p in raw_dir.iterdir() if p.is_dir())}). Pass the stuffthingmaps_trainval2017 folder."
        )
    cocostuff_lut()  # validate the class list before any work
    result: dict[str, ConvertStats] = {}
    for split in present:
        srcs = sorted(p for p in (raw_dir / split).glob("*.png") if not p.name.endswith("_labelTrainIds.png"))
        if not srcs:
            raise FileNotFoundError(f"No *.png label maps in {str(raw_dir / split)!r}.")
        stats = ConvertStats()
        jobs = []
        for src in srcs:
            dst = out_root / "annotations" / split / f"{src.stem}_labelTrainIds.png"
            if _plan([dst], overwrite, stats):
                jobs.append((str(src), str(dst)))
        _run(jobs, _cocostuff_job, workers, progress, f"cocostuff {split}")
        result[split] = stats
    return result


# =============================================================================================
# PASCAL Context
# =============================================================================================
CONTEXT59_ALIASES: dict[str, tuple[str, ...]] = {
    "aeroplane": ("airplane", "plane"),
    "motorbike": ("motorcycle", "motor bike"),
    "pottedplant": ("potted plant", "potted-plant"),
    "tvmonitor": ("tv monitor", "tv/monitor", "tv-monitor", "tvmonitors"),
    "bedclothes": ("bed clothes",),
    "table": ("diningtable", "dining table"),
}
"""Alternative spellings of context59 names in label files other than the official ``labels.txt``.

Rule: the canonical ``CONTEXT59_CLASSES`` name is used when the label file has it (the official
459-class ``labels.txt`` of the PASCAL Context release has all 59 verbatim: ``aeroplane``,
``motorbike``, ``pottedplant``, ``tvmonitor``, ``table``, ...); only when it is absent are the aliases
tried, and exactly one alias must match. Names are compared lower-cased with runs of whitespace
collapsed. ``diningtable`` is a VOC class name, not a context59 one: Context's ``table`` covers all
tables, so a file that only has ``diningtable`` maps it to ``table``; a file with both keeps ``table``
and ``diningtable`` falls to background. Not in the papers: our table.
"""

CONTEXT59_OFFICIAL_IDS: tuple[int, ...] = (
    2,
    9,
    18,
    19,
    22,
    23,
    25,
    31,
    33,
    34,
    44,
    45,
    46,
    59,
    65,
    68,
    72,
    80,
    85,
    98,
    104,
    105,
    113,
    115,
    144,
    158,
    159,
    162,
    187,
    189,
    207,
    220,
    232,
    258,
    259,
    260,
    284,
    295,
    296,
    308,
    324,
    326,
    347,
    349,
    354,
    355,
    360,
    366,
    368,
    397,
    415,
    416,
    420,
    424,
    427,
    440,
    445,
    454,
    458,
)
"""The 459-label ids of the 59 classes (in ``CONTEXT59_CLASSES`` order) in the official ``labels.txt``,
as used by the Detail-API based converters (PyTorch-Encoding / mmseg ``pascal_context.py``
``_mapping``). For cross-checking only: the converter resolves ids by name."""

_LABEL_LINE = re.compile(r"^\s*(\d+)\s*:\s*(\S.*?)\s*$")


def _norm(name: str) -> str:
    return " ".join(name.lower().split())


def read_context_labels(path: str | os.PathLike) -> dict[int, str]:
    """Read the official PASCAL Context ``labels.txt`` (``"<id>: <name>"`` per line, 1-based, 459 lines).

    Args:
        path: the ``labels.txt`` file. Blank lines are ignored.

    Returns:
        dict id -> name (name stripped, case kept).

    Raises:
        FileNotFoundError: ``path`` missing.
        ValueError: a line that is not ``<id>: <name>``, an id < 1, a duplicate id or a duplicate name
            (names the file and the line number), or an empty file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"PASCAL Context labels file {str(path)!r} does not exist (it is 'labels.txt' "
            f"of the official trainval.tar.gz release)."
        )
    labels: dict[int, str] = {}
    seen_names: dict[str, int] = {}
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        m = _LABEL_LINE.match(line)
        if not m:
            raise ValueError(f"{path}:{lineno}: expected '<id>: <name>', got {line!r}.")
        i, name = int(m.group(1)), m.group(2)
        if i < 1:
            raise ValueError(f"{path}:{lineno}: label id {i} must be >= 1 (0 is 'unlabelled' in LabelMap).")
        if i in labels:
            raise ValueError(f"{path}:{lineno}: duplicate label id {i} ({labels[i]!r} and {name!r}).")
        if _norm(name) in seen_names:
            raise ValueError(f"{path}:{lineno}: duplicate label name {name!r} (also id {seen_names[_norm(name)]}).")
        labels[i] = name
        seen_names[_norm(name)] = i
    if not labels:
        raise ValueError(f"{path}: no '<id>: <name>' lines found.")
    return labels


def resolve_context59_ids(
    labels: Mapping[int, str], aliases: Mapping[str, Sequence[str]] = CONTEXT59_ALIASES
) -> list[int]:
    """Find the 459-label id of each context59 class by name.

    Args:
        labels: id -> name, e.g. from :func:`read_context_labels`.
        aliases: canonical context59 name -> alternative spellings (default :data:`CONTEXT59_ALIASES`).

    Returns:
        list[int] of 59 label ids, in ``CONTEXT59_CLASSES`` order (index k -> context60 id k+1).

    Raises:
        KeyError: a context59 class is found neither by its name nor by an alias (names the class,
            the aliases tried and close names in the file).
        ValueError: several aliases of one class match, or two classes resolve to the same label id.
    """
    by_name = {_norm(n): i for i, n in labels.items()}
    ids: list[int] = []
    for cls in CONTEXT59_CLASSES:
        if _norm(cls) in by_name:
            ids.append(by_name[_norm(cls)])
            continue
        alts = list(aliases.get(cls, ()))
        hits = [(a, by_name[_norm(a)]) for a in alts if _norm(a) in by_name]
        if len(hits) > 1:
            raise ValueError(
                f"context59 class {cls!r}: several aliases match in the labels file: {hits}; "
                f"keep one spelling or pass an explicit alias table."
            )
        if not hits:
            import difflib

            close = difflib.get_close_matches(_norm(cls), list(by_name), n=3, cutoff=0.6)
            raise KeyError(
                f"context59 class {cls!r} not found in the labels file (aliases tried: {alts or 'none'}; "
                f"close names in the file: {close or 'none'}). Use the official PASCAL Context labels.txt "
                f"or add the spelling to CONTEXT59_ALIASES."
            )
        ids.append(hits[0][1])
    dup = {i for i in ids if ids.count(i) > 1}
    if dup:
        raise ValueError(f"Several context59 classes resolve to the same label ids {sorted(dup)}.")
    return ids


def context_lut(labels: Mapping[int, str], aliases: Mapping[str, Sequence[str]] = CONTEXT59_ALIASES) -> np.ndarray:
    """Lookup table from 459-class ``LabelMap`` ids to context60 ids.

    Args:
        labels: id -> name of the official ``labels.txt`` (:func:`read_context_labels`).
        aliases: see :func:`resolve_context59_ids`.

    Returns:
        np.ndarray[max_id + 1] uint8: 0 for LabelMap 0 (unlabelled) and every class outside the 59,
        k + 1 for the k-th context59 class.

    Raises:
        KeyError / ValueError: from :func:`resolve_context59_ids`.
    """
    ids = resolve_context59_ids(labels, aliases)
    lut = np.zeros(max(labels) + 1, dtype=np.uint8)
    for k, i in enumerate(ids):
        lut[i] = k + 1
    return lut


def load_context_mat(path: str | os.PathLike) -> np.ndarray:
    """Read the ``LabelMap`` of one official PASCAL Context ``.mat`` file.

    Args:
        path: ``trainval/<image id>.mat``.

    Returns:
        np.ndarray[H, W] integer (uint16 in the release): 459-class ids, 0 = unlabelled.

    Raises:
        KeyError: no ``LabelMap`` variable (names the file and the variables it has).
        ValueError: ``LabelMap`` is not 2-D.
        ImportError: scipy is not installed (names the ``context`` extra).
    """
    try:
        from scipy.io import loadmat
    except ImportError as e:
        raise ImportError('reading PASCAL Context .mat labels needs scipy: pip install -e ".[context]"') from e

    mat = loadmat(str(path))
    if "LabelMap" not in mat:
        keys = [k for k in mat if not k.startswith("__")]
        raise KeyError(f"{path}: no 'LabelMap' variable (found {keys}); expected a PASCAL Context trainval .mat file.")
    lab = np.asarray(mat["LabelMap"])
    if lab.ndim != 2:
        raise ValueError(f"{path}: LabelMap must be 2-D, got shape {lab.shape}.")
    return lab


def convert_context_label(label459: np.ndarray, lut: np.ndarray, source: str = "<array>") -> np.ndarray:
    """Map a 459-class ``LabelMap`` to context60 ids.

    Args:
        label459: np.ndarray[H, W] integer, values 0..max_id.
        lut: from :func:`context_lut`.
        source: name used in error messages.

    Returns:
        np.ndarray[H, W] uint8, values 0..59 (0 = background).

    Raises:
        ValueError: values < 0 or beyond the labels file's largest id (names ``source`` and the values).
    """
    label459 = np.asarray(label459).astype(np.int64)
    if label459.size and (label459.min() < 0 or label459.max() >= len(lut)):
        vals = np.unique(label459)
        bad = vals[(vals < 0) | (vals >= len(lut))]
        raise ValueError(
            f"{source}: LabelMap values {bad[:10].tolist()} are not ids of the labels file "
            f"(1..{len(lut) - 1}); wrong labels.txt?"
        )
    return lut[label459]


def _to_context59(lab60: np.ndarray) -> np.ndarray:
    """context60 (0 background, 1..59) -> context59 (0..58, background 255): mmseg's reduce_zero_label."""
    out = lab60.astype(np.int16) - 1
    out[lab60 == 0] = IGNORE_INDEX
    return out.astype(np.uint8)


def _read_ids(path: Path) -> list[str]:
    if not path.is_file():
        raise FileNotFoundError(
            f"Split list {str(path)!r} does not exist (one image id per line, e.g. VOC2010's ImageSets/Main/train.txt)."
        )
    ids = [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
    if not ids:
        raise ValueError(f"Split list {str(path)!r} is empty.")
    return ids


def _write_split(path: Path, ids: Iterable[str], overwrite: bool) -> str:
    text = "".join(f"{i}\n" for i in ids)
    if path.exists():
        if path.read_text() == text:
            return f"{path}: unchanged"
        if not overwrite:
            raise FileExistsError(
                f"Split file {str(path)!r} exists with different contents; pass overwrite=True "
                f"(--overwrite) to replace it."
            )
        path.write_text(text)
        return f"{path}: overwritten"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return f"{path}: written"


def convert_context(
    mat_dir: str | os.PathLike,
    labels: str | os.PathLike,
    voc2010: str | os.PathLike,
    split_lists: Mapping[str, str | os.PathLike] | None = None,
    ann_dir: str = "SegmentationClassContext",
    also_59: bool = False,
    ann_dir_59: str = "SegmentationClassContext59",
    split_dir: str = "ImageSets/SegmentationContext",
    workers: int = 1,
    overwrite: bool = False,
    allow_missing: bool = False,
    aliases: Mapping[str, Sequence[str]] = CONTEXT59_ALIASES,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, ConvertStats]:
    """Convert official PASCAL Context ``.mat`` annotations to context60 PNGs and split files.

    Args:
        mat_dir: the official ``trainval`` folder of ``<image id>.mat`` files (459-class ``LabelMap``).
        labels: the official ``labels.txt`` (459 ``"<id>: <name>"`` lines).
        voc2010: the ``VOCdevkit/VOC2010`` root (images in ``JPEGImages``); outputs are written under it.
        split_lists: split name -> id list file (e.g. ``{"train": .../train.txt, "val": .../val.txt}``);
            each listed id is converted and ``<voc2010>/<split_dir>/<split>.txt`` is written. ``None`` or
            empty: convert every ``.mat`` in ``mat_dir`` (split name ``"all"``), write no split file.
        ann_dir: output folder (relative to ``voc2010``) for context60 PNGs: 8-bit 'L', 0 = background,
            1..59 = ``CONTEXT59_CLASSES``. context59 reads the same files with ``reduce_zero_label``.
        also_59: also write ``ann_dir_59`` with context59 values (0..58, background 255).
        ann_dir_59: folder for ``also_59``.
        split_dir: folder (relative to ``voc2010``) for the split files.
        workers: processes in the multiprocessing pool (1 = in-process).
        overwrite: replace existing PNGs / differing split files; default: skip PNGs, refuse split files.
        allow_missing: drop listed ids that have no ``.mat`` (counted in ``missing``) instead of raising.
        aliases: alias table for the 59 names (default :data:`CONTEXT59_ALIASES`).
        progress: optional ``progress(done, total)`` callback per split (a bar is drawn on stderr either way
            when it is a terminal).

    Returns:
        dict split -> :class:`ConvertStats` (``extra`` notes the split file written and missing images).

    Raises:
        FileNotFoundError: ``mat_dir`` / ``labels`` / a split list missing, or listed ids without a
            ``.mat`` (unless ``allow_missing``; names the count and the first ids).
        FileExistsError: a split file exists with other contents and ``overwrite`` is False.
        KeyError: a context59 class not found in ``labels`` (names it).
        ValueError: malformed ``labels``, LabelMap values beyond the labels file.

    Source: docs/protocol.md "Benchmarks" (PASCAL Context layout and context59/context60 presets).
    """
    mat_dir, voc2010 = Path(mat_dir), Path(voc2010)
    if not mat_dir.is_dir():
        raise FileNotFoundError(
            f"PASCAL Context .mat folder {str(mat_dir)!r} does not exist (the 'trainval' "
            f"folder of the official trainval.tar.gz)."
        )
    lut = context_lut(read_context_labels(labels), aliases)
    if split_lists:
        plan = {name: _read_ids(Path(p)) for name, p in split_lists.items()}
    else:
        plan = {"all": sorted(p.stem for p in mat_dir.glob("*.mat"))}
        if not plan["all"]:
            raise FileNotFoundError(f"No .mat files in {str(mat_dir)!r}.")
    result: dict[str, ConvertStats] = {}
    for split, ids in plan.items():
        stats = ConvertStats()
        missing = [i for i in ids if not (mat_dir / f"{i}.mat").is_file()]
        if missing and not allow_missing:
            raise FileNotFoundError(
                f"Split {split!r}: {len(missing)} of {len(ids)} listed ids have no .mat in {str(mat_dir)!r} "
                f"(first: {missing[:5]}). Check --mat-dir and the list, or pass allow_missing=True (--allow-missing)."
            )
        stats.missing = len(missing)
        miss = set(missing)
        kept = [i for i in ids if i not in miss]
        jobs = []
        for i in kept:
            outs = [(voc2010 / ann_dir / f"{i}.png", False)]
            if also_59:
                outs.append((voc2010 / ann_dir_59 / f"{i}.png", True))
            if _plan([p for p, _ in outs], overwrite, stats):
                jobs.append((str(mat_dir / f"{i}.mat"), [(str(p), a) for p, a in outs], lut))
        _run(jobs, _context_job, workers, progress, f"context {split}")
        no_img = [i for i in kept if not (voc2010 / "JPEGImages" / f"{i}.jpg").is_file()]
        if no_img:
            stats.extra.append(
                f"WARNING: {len(no_img)} ids have no {voc2010 / 'JPEGImages'}/<id>.jpg "
                f"(first: {no_img[:3]}); unpack the VOC2010 images there."
            )
        if split_lists:
            stats.extra.append(_write_split(voc2010 / split_dir / f"{split}.txt", kept, overwrite))
        result[split] = stats
    return result
