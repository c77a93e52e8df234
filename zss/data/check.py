"""Dataset checker: verify a benchmark's files before training and name the first bad file and the fix.

    zss-check dataset=voc20                                   # any configs/dataset preset; root: the preset's
    zss-check dataset=context59_zs3 dataset.root=data/VOCdevkit/VOC2010 split=val
    zss-check dataset=cocostuff171 root=data/coco_stuff164k sample=500

What it checks, for the preset's layout (:func:`zss.data.classes.layout`, docs/protocol.md "Layouts"):

1. layout: the dataset root, image and annotation folders and the split files (VOC / Context) or the
   ``images/<split>2017`` folders (COCO-Stuff) exist;
2. counts: image ids per split (every split file found, or a directory scan for COCO-Stuff), ids
   without an image or without an annotation;
3. labels: every annotation (or an evenly spaced sample of ``max_labels`` of them) is read as stored
   (Pillow, no colour conversion) and checked for its PIL mode (index PNG ``P``/``L``, not RGB), its
   size (equal to the image's) and its values (raw values allowed by the preset; after
   ``reduce_zero_label`` the class ids ``0..C-1`` plus ``255`` = ignore).

Each problem names the first offending file, how many files share it, and the fix (e.g. "wrong
preset?"). Exit code 0 when no error was found, 1 otherwise (2 for a bad command line). Reading the
labels draws a progress bar on stderr when it is a terminal.

The dataset code (:mod:`zss.data.dataset`) raises on the first bad file it meets; this tool is what
its error messages point to, to see every problem of a dataset at once. The command line (Hydra-style
``key=value`` overrides of configs/check.yaml, the dataset preset names of training) is
:mod:`zss.cli.check`; this module imports no Hydra and no torch. Images are decoded fully (a truncated
or empty image file is an error here, as it would be in training).

Source: not in the papers: our tool. Layouts and value ranges: docs/protocol.md "Layouts" [protocol].
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from .classes import BENCHMARKS, DATASET_LAYOUTS, IGNORE_INDEX, DatasetLayout, get_benchmark, layout
from .dataset import read_lines

__all__ = ["Problem", "SplitCount", "CheckReport", "check_dataset", "format_report", "CHECK_COMMAND"]

CHECK_COMMAND = "zss-check dataset={name} root={root}"
"""The command line the dataset's error messages point to (``.format(name=..., root=...)``)."""

_LABEL_MODES = ("P", "L")
# Raw value range of each preset's annotation files (without 255): for "wrong preset?" hints.
_RAW_MAX = {"voc20": 20, "voc21": 20, "cocostuff171": 170, "context59": 59, "context60": 59, "world": 20}


# ------------------------------------------------------------------------------------------------ results
@dataclass
class Problem:
    """One kind of problem found in one split (or in the dataset as a whole).

    Attributes:
        kind: ``"layout"``, ``"no_split"``, ``"empty_split"``, ``"missing_image"``, ``"missing_annotation"``,
            ``"unreadable"``, ``"label_mode"``, ``"size_mismatch"``, ``"out_of_range"``, ``"no_annotation"``
            (COCO images skipped by the dataset), ``"orphan_annotation"``, ``"reduced_labels"``.
        message: what is wrong, naming the first offending file (absolute or root-relative path).
        fix: what to do about it.
        path: the first offending file or folder (``str``) or None.
        split: the split it was found in, or None (layout / label problems shared by several splits).
        count: number of files with this problem (1 for layout problems).
        severity: ``"error"`` (makes the check fail) or ``"warning"`` (reported, check still ok).
    """

    kind: str
    message: str
    fix: str
    path: str | None = None
    split: str | None = None
    count: int = 1
    severity: str = "error"

    def __str__(self) -> str:
        tag = "ERROR" if self.severity == "error" else "warning"
        where = f"[{self.split}] " if self.split else ""
        return f"{tag}: {where}{self.message}\n  fix: {self.fix}"


@dataclass
class SplitCount:
    """File counts of one split.

    Attributes:
        split: split name (``"train"``, ``"val"``, ...).
        source: the split file read, or the image folder scanned (COCO-Stuff), as a path string.
        ids: image ids listed (split file) or image files found (scan).
        images: ids whose image file exists.
        annotations: ids whose annotation file exists (and whose image exists).
    """

    split: str
    source: str
    ids: int = 0
    images: int = 0
    annotations: int = 0


@dataclass
class CheckReport:
    """Result of :func:`check_dataset`.

    Attributes:
        name: benchmark preset (``"voc20"``, ...).
        root: dataset root (``Path``).
        layout: the :class:`~zss.data.classes.DatasetLayout` checked (after overrides).
        num_classes: C of the preset.
        classes: class names, label-id order.
        splits: split name -> :class:`SplitCount` (dict order = the order checked).
        labels_total: distinct annotation files found over all splits checked.
        labels_read: how many of them were read (all, or the ``max_labels`` sample).
        histogram: class id after ``reduce_zero_label`` -> pixel count over the labels read; key 255 = ignore.
            Raw values outside the preset's range are not included (see ``raw_histogram``).
        raw_histogram: raw file value (0..255) -> pixel count over the labels read (all values).
        problems: every :class:`Problem` found, errors and warnings, in the order found.

    Properties:
        ok: True when no problem has severity ``"error"``.
        counts: split -> number of ids (listed or scanned), the "images per split".
    """

    name: str
    root: Path
    layout: DatasetLayout
    num_classes: int
    classes: tuple[str, ...]
    splits: dict[str, SplitCount] = field(default_factory=dict)
    labels_total: int = 0
    labels_read: int = 0
    histogram: dict[int, int] = field(default_factory=dict)
    raw_histogram: dict[int, int] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no error was found (warnings allowed)."""
        return not any(p.severity == "error" for p in self.problems)

    @property
    def counts(self) -> dict[str, int]:
        """Split name -> number of image ids (listed in the split file, or found by the scan)."""
        return {s: c.ids for s, c in self.splits.items()}

    @property
    def errors(self) -> list[Problem]:
        """The problems of severity ``"error"``, in the order found."""
        return [p for p in self.problems if p.severity == "error"]

    @property
    def expected_raw(self) -> str:
        """Human-readable raw value range the preset expects, e.g. ``"0..20 (+255 ignore)"``."""
        lo, hi = _raw_range(self.layout, self.num_classes)
        return f"{lo}..{hi} (+255 ignore)"

    def summary(self) -> str:
        """Same as :func:`format_report`."""
        return format_report(self)


# ------------------------------------------------------------------------------------------------ helpers
def _raw_range(lay: DatasetLayout, num_classes: int) -> tuple[int, int]:
    return (0, num_classes) if lay.reduce_zero_label else (0, num_classes - 1)


def _valid_raw(lay: DatasetLayout, num_classes: int) -> np.ndarray:
    """Bool[256]: raw values allowed in an annotation file (same rule as SegDataset)."""
    valid = np.zeros(256, dtype=bool)
    lo, hi = _raw_range(lay, num_classes)
    valid[lo : hi + 1] = True
    valid[IGNORE_INDEX] = True
    return valid


def _reduce_lut(lay: DatasetLayout) -> np.ndarray:
    """int64[256]: raw value -> class id (255 = ignore), mmseg's reduce_zero_label."""
    raw = np.arange(256, dtype=np.int64)
    lut = raw - 1 if lay.reduce_zero_label else raw.copy()
    if lay.reduce_zero_label:
        lut[0] = IGNORE_INDEX
    lut[IGNORE_INDEX] = IGNORE_INDEX
    return lut


def _fmt_values(values: Sequence[int], limit: int = 6) -> str:
    """[1, 2, 3, 7, 9, 10] -> '1..3, 7, 9..10' (at most ``limit`` runs, then '... (N values)')."""
    vals = sorted(int(v) for v in values)
    runs: list[tuple[int, int]] = []
    for v in vals:
        if runs and v == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], v)
        else:
            runs.append((v, v))
    parts = [f"{a}" if a == b else f"{a}..{b}" for a, b in runs[:limit]]
    text = ", ".join(parts)
    if len(runs) > limit:
        text += f", ... ({len(vals)} values)"
    return text


def _rel(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def _listdir(folder: Path) -> set[str] | None:
    try:
        return set(os.listdir(folder))
    except OSError:
        return None


def _suggest_root(root: Path, lay: DatasetLayout, split_hint: str = "train") -> Path | None:
    """A folder near ``root`` that does hold the layout (user pointed one level too high/low)."""
    img_dir = lay.img_dir.format(split=split_hint)
    parts = Path(lay.default_root).parts
    cands = [root / lay.default_root] + [root / Path(*parts[i:]) for i in range(1, len(parts))] + [root.parent]
    for c in cands:
        if (c / img_dir).is_dir() or (c / Path(lay.img_dir).parts[0]).is_dir():
            if c.resolve() != root.resolve():
                return c
    return None


def _diagnose_values(name: str, lay: DatasetLayout, num_classes: int, values: set[int]) -> str:
    """The fix for raw values outside the preset's range: which preset / converter they point to."""
    lo, hi = _raw_range(lay, num_classes)
    vals = values - {IGNORE_INDEX}
    vmax = max(vals) if vals else 0
    expect = f"the {name} preset expects raw {lo}..{hi} (+255 ignore)"
    if lay.reduce_zero_label:
        expect += f" with reduce_zero_label (raw 0 = background -> 255, v -> v-1: class ids 0..{num_classes - 1})"
    else:
        expect += f" without label reduction (class ids 0..{num_classes - 1})"
    fits = [p for p, m in _RAW_MAX.items() if p != name and vmax <= m and _RAW_MAX[p] != _RAW_MAX[name]]
    hints = []
    if fits:
        hints.append(f"wrong preset? the values fit dataset={'/'.join(fits)} (raw 0..{_RAW_MAX[fits[0]]})")
    if name == "cocostuff171" and 170 < vmax <= 181:
        hints.append(
            "raw COCO-Stuff stuffthingmaps (0..181 with gaps)? convert them with "
            "scripts/prepare_cocostuff.py into *_labelTrainIds.png (0..170)"
        )
    if name.startswith("context") and vmax > 59:
        hints.append(
            "full 459-class PASCAL Context labels? convert them with scripts/prepare_context.py "
            "(writes SegmentationClassContext with 0..59)"
        )
    if not hints:
        hints.append("wrong preset or unconverted labels?")
    return f"{'; '.join(hints)}; {expect}."


# ------------------------------------------------------------------------------------------------ checker
def _discover_splits(root: Path, lay: DatasetLayout) -> tuple[list[str], Path]:
    """Split names available under ``root`` and the folder they were found in."""
    if lay.split_file is not None:
        sdir = (root / lay.split_file.format(split="x")).parent
        pattern = Path(lay.split_file).name  # "{split}.txt"
        pre, post = pattern.split("{split}")
        names = (
            sorted(p.name[len(pre) : len(p.name) - len(post)] for p in sdir.glob(pre + "*" + post))
            if sdir.is_dir()
            else []
        )
        return names, sdir
    # directory scan (COCO-Stuff): images/{split}2017
    tmpl = Path(lay.img_dir)
    sdir = root / tmpl.parent
    pre, post = tmpl.name.split("{split}")
    names = (
        sorted(p.name[len(pre) : len(p.name) - len(post)] for p in sdir.glob(pre + "*" + post) if p.is_dir())
        if sdir.is_dir()
        else []
    )
    return names, sdir


def check_dataset(
    name: str,
    root: str | os.PathLike,
    splits: Sequence[str] | str | None = None,
    benchmark_split: str | None = None,
    max_labels: int | None = None,
    *,
    img_dir: str | None = None,
    ann_dir: str | None = None,
    split_file: str | None = None,
) -> CheckReport:
    """Check a dataset on disk against a benchmark preset; never raises for data problems.

    Args:
        name: benchmark preset, one of ``zss.data.classes.BENCHMARKS`` (``"voc20"``, ``"cocostuff171"``,
            ``"context59"``, ``"context60"``).
        root: dataset root (e.g. ``data/VOCdevkit/VOC2012``, ``data/coco_stuff164k``,
            ``data/VOCdevkit/VOC2010``).
        splits: split names to check (a list, or a comma-separated string); None = every split found
            (every ``{split}.txt`` in the split-file folder, or every ``images/{split}2017`` folder).
        benchmark_split: unseen split of the Context presets (``"zs3"``/``"cascade"``); only validated
            (the class ids do not depend on it); defaults to the first valid one.
        max_labels: read at most this many annotation files (evenly spaced over the sorted distinct
            files of all splits, deterministic); None = all. Counts and layout checks always cover all.
        img_dir, ann_dir, split_file: layout overrides (relative to root, may contain ``{split}``), as in
            :func:`zss.data.dataset.build_dataset` (e.g. ``ann_dir="SegmentationClassAug"``).

    Returns:
        :class:`CheckReport` (``ok``, ``counts``, ``histogram``, ``problems``...).

    Raises:
        KeyError: unknown preset ``name`` (lists the valid names).
        ValueError: invalid ``benchmark_split`` for ``name``; ``max_labels < 1``.

    Source: not in the papers: our tool; layouts and ranges from docs/protocol.md "Layouts".
    """
    if name not in DATASET_LAYOUTS:
        raise KeyError(f"Unknown dataset preset {name!r}; valid: dataset={'|'.join(sorted(DATASET_LAYOUTS))}.")
    if benchmark_split is None and None not in BENCHMARKS[name]:
        benchmark_split = BENCHMARKS[name][0]
    bench = get_benchmark(name, benchmark_split)
    if max_labels is not None and int(max_labels) < 1:
        raise ValueError(f"max_labels (--sample) must be >= 1, got {max_labels}.")
    base = layout(name)
    lay = DatasetLayout(
        img_dir=img_dir or base.img_dir,
        ann_dir=ann_dir or base.ann_dir,
        split_file=split_file if split_file is not None else base.split_file,
        img_suffix=base.img_suffix,
        seg_suffix=base.seg_suffix,
        reduce_zero_label=base.reduce_zero_label,
        default_root=base.default_root,
    )
    rootp = Path(root).expanduser()
    rep = CheckReport(name=name, root=rootp, layout=lay, num_classes=bench.num_classes, classes=bench.classes)
    if isinstance(splits, str):
        splits = [s.strip() for s in splits.split(",") if s.strip()]

    # ---- 1. root and split discovery
    if not rootp.is_dir():
        sugg = _suggest_root(rootp.parent if rootp.parent != rootp else rootp, lay)
        rep.problems.append(
            Problem(
                "layout",
                f"dataset root {str(rootp)!r} does not exist or is not a folder",
                path=str(rootp),
                fix=(
                    f"pass root=<folder holding {lay.img_dir}/ and {lay.ann_dir}/> (conventionally "
                    f"data/{lay.default_root})" + (f"; did you mean root={sugg}?" if sugg else "")
                ),
            )
        )
        return rep
    found, sdir = _discover_splits(rootp, lay)
    if splits is None:
        splits = found
        if not found:
            what = (
                f"no split file {lay.split_file!r} in {str(sdir)!r}"
                if lay.split_file is not None
                else f"no image folder {lay.img_dir!r} under {str(rootp)!r}"
            )
            sugg = _suggest_root(rootp, lay)
            rep.problems.append(
                Problem(
                    "no_split",
                    f"{what}: the root does not hold the {name} layout",
                    path=str(sdir),
                    fix=(
                        f"did you mean root={sugg}?"
                        if sugg
                        else f"pass the {lay.default_root} folder as root= (layout: {lay.img_dir}/, {lay.ann_dir}/"
                        + (f", {lay.split_file}" if lay.split_file else "")
                        + ")"
                    ),
                )
            )
            return rep

    # ---- 2. per split: ids, images, annotations
    to_read: dict[str, tuple[str, Path, Path]] = {}  # annotation path -> (split, annotation, image)
    for split in splits:
        kw = lay.resolve(split)
        idir, adir = rootp / kw["img_dir"], rootp / kw["ann_dir"]
        if kw["split_file"] is not None:
            sf = rootp / kw["split_file"]
            if not sf.is_file():
                rep.problems.append(
                    Problem(
                        "no_split",
                        f"split {split!r}: split file {_rel(sf, rootp)!r} does not exist",
                        path=str(sf),
                        split=split,
                        fix=f"choose split= one of {found or 'none found'} (files in {str(sdir)!r})",
                    )
                )
                continue
            try:
                ids = read_lines(sf, "split file")
            except ValueError as e:
                rep.problems.append(
                    Problem(
                        "encoding",
                        str(e).split("; ")[0],
                        path=str(sf),
                        split=split,
                        fix="re-save it as UTF-8, e.g. iconv -f UTF-16 -t UTF-8 old.txt > new.txt",
                    )
                )
                continue
            sc = SplitCount(split, str(sf), ids=len(ids))
            rep.splits[split] = sc
            if not ids:
                rep.problems.append(
                    Problem(
                        "empty_split",
                        f"split file {_rel(sf, rootp)!r} lists no image id",
                        path=str(sf),
                        split=split,
                        fix="regenerate the split file (one id a line)",
                    )
                )
                continue
            dups = sorted({i for i, n in Counter(ids).items() if n > 1})
            if dups:
                rep.problems.append(
                    Problem(
                        "duplicate_ids",
                        f"split file {_rel(sf, rootp)!r} lists {len(ids) - len(set(ids))} id(s) more than "
                        f"once; first: {dups[0]!r}",
                        path=str(sf),
                        split=split,
                        count=len(dups),
                        fix="remove the repeats (a repeated id is trained on and counted in metrics more than once)",
                    )
                )
                ids = list(dict.fromkeys(ids))
        else:
            if not idir.is_dir():
                rep.problems.append(
                    Problem(
                        "no_split",
                        f"split {split!r}: image folder {_rel(idir, rootp)!r} does not exist",
                        path=str(idir),
                        split=split,
                        fix=f"choose split= one of {found or 'none found'} (folders in {str(sdir)!r})",
                    )
                )
                continue
            ids = sorted(
                p.relative_to(idir).as_posix()[: -len(lay.img_suffix)] for p in idir.rglob("*" + lay.img_suffix)
            )
            sc = SplitCount(split, str(idir), ids=len(ids))
            rep.splits[split] = sc
        missing_dirs = [d for d in (idir, adir) if not d.is_dir()]
        if missing_dirs:
            d = missing_dirs[0]
            what = "image" if d == idir else "annotation"
            extra = ""
            if what == "annotation" and name == "cocostuff171":
                extra = " (convert the stuffthingmaps with scripts/prepare_cocostuff.py --out <root>)"
            elif what == "annotation" and name.startswith("context"):
                extra = " (convert the official .mat labels with scripts/prepare_context.py)"
            rep.problems.append(
                Problem(
                    "layout",
                    f"{what} folder {_rel(d, rootp)!r} does not exist under root {str(rootp)!r}",
                    path=str(d),
                    split=split,
                    fix=f"the {name} layout needs {kw['img_dir']}/ and {kw['ann_dir']}/ under root{extra}",
                )
            )
            continue
        imgs, anns = _listdir(idir), _listdir(adir)

        def has(listing: set[str] | None, folder: Path, fname: str) -> bool:
            if listing is not None and "/" not in fname:
                return fname in listing
            return (folder / fname).is_file()

        no_img = [i for i in ids if not has(imgs, idir, i + lay.img_suffix)]
        no_img_set = set(no_img)
        no_ann = [i for i in ids if i not in no_img_set and not has(anns, adir, i + lay.seg_suffix)]
        sc.images = len(ids) - len(no_img)
        sc.annotations = sc.images - len(no_ann)
        src = _rel(Path(sc.source), rootp)
        if no_img:
            first = idir / (no_img[0] + lay.img_suffix)
            rep.problems.append(
                Problem(
                    "missing_image",
                    f"{len(no_img)} of {len(ids)} ids in {src!r} have no image; first: {str(first)!r}",
                    path=str(first),
                    split=split,
                    count=len(no_img),
                    fix=(
                        "the image folder is incomplete or the split file belongs to another dataset/year "
                        "(e.g. VOC2010 vs VOC2012 ids): re-extract the images or use the matching split file"
                    ),
                )
            )
        if no_ann:
            first = adir / (no_ann[0] + lay.seg_suffix)
            if kw["split_file"] is None:  # directory scan: the dataset skips them
                alt = adir / (no_ann[0] + ".png")
                if name == "cocostuff171" and alt.is_file():
                    rep.problems.append(
                        Problem(
                            "missing_annotation",
                            f"{len(no_ann)} of {len(ids)} images in {src!r} have no '*{lay.seg_suffix}' label but "
                            f"{str(alt)!r} exists: raw stuffthingmaps, not converted",
                            path=str(first),
                            split=split,
                            count=len(no_ann),
                            fix="convert them with scripts/prepare_cocostuff.py (writes *_labelTrainIds.png, 0..170)",
                        )
                    )
                else:
                    sev = "error" if len(no_ann) == len(ids) else "warning"
                    rep.problems.append(
                        Problem(
                            "no_annotation",
                            f"{len(no_ann)} of {len(ids)} images in {src!r} have no annotation "
                            f"(the dataset skips them); "
                            f"first: {str(first)!r}",
                            path=str(first),
                            split=split,
                            count=len(no_ann),
                            severity=sev,
                            fix=f"add the missing '*{lay.seg_suffix}' files to {_rel(adir, rootp)!r} "
                            f"if they should count",
                        )
                    )
            else:
                aug = adir.parent / (adir.name + "Aug")
                hint = ""
                if aug.is_dir() and (aug / (no_ann[0] + lay.seg_suffix)).is_file():
                    hint = f"; these ids have labels in {aug.name}/: check that split with ann_dir={aug.name}"
                rep.problems.append(
                    Problem(
                        "missing_annotation",
                        f"{len(no_ann)} of {len(ids)} ids in {src!r} have no annotation; first: {str(first)!r}",
                        path=str(first),
                        split=split,
                        count=len(no_ann),
                        fix=f"the annotation folder {_rel(adir, rootp)!r} is incomplete or belongs to "
                        f"another split{hint}",
                    )
                )
        if kw["split_file"] is None and anns is not None:
            id_set = set(ids)
            orphans = sorted(a for a in anns if a.endswith(lay.seg_suffix) and a[: -len(lay.seg_suffix)] not in id_set)
            if orphans:
                rep.problems.append(
                    Problem(
                        "orphan_annotation",
                        f"{len(orphans)} annotations in {_rel(adir, rootp)!r} have no image; first: "
                        f"{str(adir / orphans[0])!r}",
                        path=str(adir / orphans[0]),
                        split=split,
                        count=len(orphans),
                        severity="warning",
                        fix=f"add the images to {_rel(idir, rootp)!r} (or ignore: they are not used)",
                    )
                )
        for i in ids:
            if i in no_img_set:
                continue
            a = adir / (i + lay.seg_suffix)
            if str(a) not in to_read and (not no_ann or has(anns, adir, i + lay.seg_suffix)):
                to_read[str(a)] = (split, a, idir / (i + lay.img_suffix))

    # ---- 3. labels
    rep.labels_total = len(to_read)
    keys = sorted(to_read)
    if max_labels is not None and len(keys) > int(max_labels):
        pick = np.unique(np.linspace(0, len(keys) - 1, int(max_labels)).round().astype(int))
        keys = [keys[i] for i in pick]
    valid = _valid_raw(lay, bench.num_classes)
    raw_hist = np.zeros(256, dtype=np.int64)
    # kind -> [count, first Problem kwargs]
    agg: dict[str, list] = {}

    def note(kind: str, split: str, path: Path, msg: str, fix: str) -> None:
        if kind in agg:
            agg[kind][0] += 1
        else:
            agg[kind] = [1, dict(kind=kind, message=msg, fix=fix, path=str(path), split=split)]

    bad_values: set[int] = set()
    lut = _reduce_lut(lay)
    read_in: dict[str, int] = {}  # split -> labels read / labels holding a seen-class pixel
    seen_in: dict[str, int] = {}
    for k in tqdm(keys, desc=f"check {name}", unit="label", disable=None, dynamic_ncols=True):  # terminals only
        split, apath, ipath = to_read[k]
        try:
            with Image.open(apath) as im:
                mode, size = im.mode, im.size
                arr = np.asarray(im) if mode in _LABEL_MODES else None
        except (OSError, UnidentifiedImageError, ValueError) as e:
            note(
                "unreadable",
                split,
                apath,
                f"annotation {str(apath)!r} cannot be read ({e})",
                "the file is truncated or not an image: re-extract / regenerate it",
            )
            continue
        rep.labels_read += 1
        if arr is None:
            if mode in ("RGB", "RGBA"):
                fix = (
                    "labels must store class indices (palette 'P' or greyscale 'L' PNG), not colours: re-extract "
                    "the original label PNGs, or map the colours back to indices with the dataset palette "
                    "(never save labels with .convert('RGB'))"
                )
            else:
                fix = "save labels as 8-bit single-channel PNGs (mode 'P' or 'L', values 0..255)"
            note(
                "label_mode",
                split,
                apath,
                f"annotation {str(apath)!r} has PIL mode {mode!r} "
                f"({'a colour-coded RGB label' if mode.startswith('RGB') else 'not an 8-bit index image'})",
                fix,
            )
            continue
        try:
            with Image.open(ipath) as im:
                isize = im.size
                im.load()  # decode it all: a truncated file opens fine and fails only here
        except (OSError, UnidentifiedImageError, SyntaxError) as e:
            why = (
                "empty file (0 bytes)"
                if ipath.is_file() and ipath.stat().st_size == 0
                else "not an image format Pillow recognises"
                if isinstance(e, UnidentifiedImageError)
                else str(e)
            )
            note(
                "unreadable",
                split,
                ipath,
                f"image {str(ipath)!r} cannot be read ({why})",
                "the file is empty, truncated or not an image: re-extract / re-download it",
            )
            isize = size
        if isize != size:
            note(
                "size_mismatch",
                split,
                apath,
                f"label {str(apath)!r} is {size[0]}x{size[1]} (WxH) but its image {str(ipath)!r} is "
                f"{isize[0]}x{isize[1]}",
                "images and labels must be pixel-aligned: use the original images and labels (a resized copy "
                "of either does not match), or regenerate the annotation",
            )
        counts = np.bincount(arr.reshape(-1), minlength=256)[:256]
        raw_hist += counts
        present = np.flatnonzero(counts)
        read_in[split] = read_in.get(split, 0) + 1
        ids_here = {int(lut[v]) for v in present if valid[v] and v != IGNORE_INDEX and int(lut[v]) != IGNORE_INDEX}
        if ids_here - set(bench.unseen):
            seen_in[split] = seen_in.get(split, 0) + 1
        bad = present[~valid[present]]
        if bad.size:
            vals = set(int(v) for v in bad)
            bad_values |= vals
            if "out_of_range" not in agg:
                lo, hi = _raw_range(lay, bench.num_classes)
                agg["out_of_range"] = [
                    0,
                    dict(
                        kind="out_of_range",
                        path=str(apath),
                        split=split,
                        message=f"label {str(apath)!r} has values {_fmt_values(vals)} outside {lo}..{hi} (+255 ignore)",
                        fix="",
                    ),
                ]
            agg["out_of_range"][0] += 1
    if "out_of_range" in agg:
        agg["out_of_range"][1]["fix"] = _diagnose_values(name, lay, bench.num_classes, bad_values)
    for count, kw in agg.values():
        if count > 1:
            kw["message"] = f"{count} of {rep.labels_read} labels read: {kw['message']} (first)"
        rep.problems.append(Problem(count=count, **kw))

    for split, n in read_in.items():
        if not seen_in.get(split):
            rep.problems.append(
                Problem(
                    "no_seen_class",
                    f"none of the {n} labels read of split {split!r} holds a seen-class pixel (only "
                    f"background/ignore and unseen classes)",
                    split=split,
                    path=str(rootp),
                    fix="training on this split learns nothing from its labels (zss-train refuses it): check that the "
                    "split file and annotation folder belong to this dataset and benchmark split",
                )
            )
    rep.raw_histogram = {int(v): int(c) for v, c in enumerate(raw_hist) if c}
    hist: dict[int, int] = {}
    for v, c in rep.raw_histogram.items():
        if valid[v]:
            cid = int(lut[v])
            hist[cid] = hist.get(cid, 0) + c
    rep.histogram = dict(sorted(hist.items()))

    # Labels that look already reduced (no raw 0 anywhere, 255 present) read with reduce_zero_label:
    # class 0 would silently become ignore and every id shift by one.
    if (
        lay.reduce_zero_label
        and rep.labels_read >= 2
        and 0 not in rep.raw_histogram
        and IGNORE_INDEX in rep.raw_histogram
        and not bad_values
    ):
        rep.problems.append(
            Problem(
                "reduced_labels",
                f"none of the {rep.labels_read} labels read has raw value 0 (background) but 255 is "
                f"present: they look already reduced (0..{bench.num_classes - 1} + 255)",
                severity="warning",
                path=str(rootp / lay.ann_dir.format(split=next(iter(rep.splits), "train"))),
                fix=(
                    f"with reduce_zero_label raw 1 -> class 0, so class 0 ({bench.classes[0]}) would be lost: point "
                    f"the annotation folder at unreduced labels (0 = background)"
                    + (
                        ", e.g. SegmentationClassContext from scripts/prepare_context.py"
                        if name.startswith("context")
                        else ""
                    )
                ),
            )
        )
    return rep


# ------------------------------------------------------------------------------------------------ report
def format_report(rep: CheckReport, max_problems: int = 20) -> str:
    """A short plain-text summary: layout line, split table, label values, problems, verdict.

    Args:
        rep: the :class:`CheckReport`.
        max_problems: print at most this many problems (the rest are counted).

    Returns:
        multi-line ``str`` (markdown table for the splits).
    """
    lay = rep.layout
    lines = [f"zss data check: dataset={rep.name} root={rep.root}"]
    sf = f", split files {lay.split_file}" if lay.split_file else ", splits = folders " + lay.img_dir
    lines.append(
        f"layout: images {lay.img_dir}/*{lay.img_suffix}, labels {lay.ann_dir}/*{lay.seg_suffix}{sf}, "
        f"reduce_zero_label={lay.reduce_zero_label}"
    )
    if rep.splits:
        lines += ["", "| split | ids | images | labels | source |", "|---|---:|---:|---:|---|"]
        for s, c in rep.splits.items():
            lines.append(f"| {s} | {c.ids} | {c.images} | {c.annotations} | {_rel(Path(c.source), rep.root)} |")
    lines.append("")
    if rep.labels_total:
        sampled = f" (sample of {rep.labels_total})" if rep.labels_read < rep.labels_total else ""
        lines.append(f"labels read: {rep.labels_read}{sampled}")
    if rep.raw_histogram:
        raw = sorted(rep.raw_histogram)
        lines.append(f"raw values found: {_fmt_values(raw, limit=10)}; expected {rep.expected_raw}")
        ids = [c for c in rep.histogram if c != IGNORE_INDEX]
        red = " after reduce_zero_label" if lay.reduce_zero_label else ""
        total = sum(rep.histogram.values()) or 1
        ign = 100.0 * rep.histogram.get(IGNORE_INDEX, 0) / total
        lines.append(
            f"class ids{red}: {len(ids)}/{rep.num_classes} present ({_fmt_values(ids, limit=10)}), "
            f"expected 0..{rep.num_classes - 1}; ignore (255): {ign:.1f}% of pixels"
        )
        absent = [rep.classes[c] for c in range(rep.num_classes) if c not in rep.histogram]
        if absent:
            shown = ", ".join(absent[:12]) + (f", ... ({len(absent)})" if len(absent) > 12 else "")
            lines.append(f"classes absent from the labels read: {shown}")
    if rep.problems:
        lines.append("")
        for p in rep.problems[:max_problems]:
            lines.append(str(p))
        if len(rep.problems) > max_problems:
            lines.append(f"... and {len(rep.problems) - max_problems} more problems")
    lines.append("")
    n_err, n_warn = len(rep.errors), len(rep.problems) - len(rep.errors)
    if rep.ok:
        lines.append("OK" + (f" ({n_warn} warning{'s' if n_warn != 1 else ''})" if n_warn else ""))
    else:
        head = f"FAILED: {n_err} error{'s' if n_err != 1 else ''}, {n_warn} warning{'s' if n_warn != 1 else ''}"
        lines.append(head + (f"; first: {rep.errors[0].message}" if len(rep.problems) > 1 else ""))
    return "\n".join(lines)
