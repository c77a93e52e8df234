"""Semantic-segmentation datasets in mmseg directory layouts (VOC, COCO-Stuff, PASCAL Context).

Labels are read with Pillow as indices (``np.asarray(Image.open(p))``, never ``.convert("RGB")``),
optionally reduced (``reduce_zero_label``: 0 -> 255, v -> v-1), validated, and returned twice:
``full_label`` (all classes; evaluation and the oracle teacher) and ``label`` (the training label,
unseen ids -> ``ignore_index`` iff ``hide_unseen``: the inductive setting of docs/protocol.md "Settings").
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torchvision import tv_tensors

from .classes import get_benchmark, layout

__all__ = [
    "ConcatSegDataset",
    "SegDataset",
    "UnseenLabelGuard",
    "split_parts",
    "WithoutKeys",
    "build_dataset",
    "check_no_unseen",
    "read_label",
    "read_image",
    "pil_to_rgb",
    "read_lines",
]

_ROOT_HINT = (
    "Set dataset.root=/path/to/the/dataset (the folder holding the layout above) or see docs/usage.md "
    '"Benchmarks and data" (data preparation).'
)
_CHECK_HINT = "Run `zss-check dataset={name} root={root}` to list every problem with its fix."


def read_lines(path: str | os.PathLike, what: str = "file") -> list[str]:
    """The stripped, non-empty lines of a UTF-8 text file (a split list, a class list); a UTF-8 BOM is allowed.

    Raises:
        ValueError: the file is not UTF-8 text (e.g. UTF-16, as Windows editors save "Unicode"); one line naming
            ``what`` and the file and how to re-save it.
    """
    data = Path(path).read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        enc = "UTF-16" if data[:2] in (b"\xff\xfe", b"\xfe\xff") else "not UTF-8"
        raise ValueError(
            f"{what} {str(path)!r} is {enc} text (byte {e.start}: {data[e.start : e.start + 1]!r}); "
            f"re-save it as UTF-8, e.g. iconv -f UTF-16 -t UTF-8 old.txt > new.txt"
        ) from None
    return [ln.strip() for ln in text.splitlines() if ln.strip()]


def read_label(path: str | os.PathLike) -> np.ndarray:
    """Read an index-valued label PNG as stored (no colour conversion).

    Args:
        path: annotation file (palette ``P`` or greyscale ``L`` PNG).

    Returns:
        ``np.ndarray[H, W] uint8`` of raw label ids.

    Raises:
        ValueError: the image is not single-channel index data (mode other than ``P``/``L``), e.g. an
            RGB colour-coded label, which must be converted to indices first.
    """
    with Image.open(path) as im:
        if im.mode not in ("P", "L"):
            raise ValueError(
                f"Annotation {path} has PIL mode {im.mode!r}; labels must be single-channel index images "
                f"(palette 'P' or greyscale 'L'). Convert colour-coded labels to class indices first "
                f"(e.g. with scripts/prepare_*.py)."
            )
        return np.asarray(im).copy()


def pil_to_rgb(im: Image.Image, path: str | os.PathLike = "<image>") -> np.ndarray:
    """A Pillow image as 8-bit RGB, converting high-bit-depth greyscale by its range.

    Pillow's own ``convert("RGB")`` clips 16-bit greyscale (PNG/TIFF modes ``I;16*`` and ``I``, values
    0..65535) to 0..255, which turns almost every pixel white; here those values are scaled by 255/65535
    (rounded) instead. Every other mode (``RGB``, ``RGBA``, ``L``, ``P``, ``CMYK``, 16-bit RGB that Pillow
    already reads as ``RGB`` ...) goes through ``convert("RGB")``; alpha is dropped.

    Args:
        im: an opened Pillow image. path: its file, for the error message.

    Returns:
        ``np.ndarray[H, W, 3] uint8`` (a writable copy).

    Raises:
        ValueError: floating-point pixels (mode ``F``) or 32-bit integer pixels outside 0..65535 (names the
            file and what to save it as).

    Source: not in the papers: ours (a 16-bit PNG must not saturate).
    """
    mode = im.mode
    if mode == "I" or mode.startswith("I;16"):
        arr = np.asarray(im).astype(np.int64)  # [H, W]
        if arr.size and (arr.min() < 0 or arr.max() > 65535):
            raise ValueError(
                f"image {str(path)!r} has 32-bit pixel values {arr.min()}..{arr.max()} (PIL mode {mode!r}); "
                f"save it as an 8-bit or 16-bit RGB/greyscale image"
            )
        grey = np.rint(arr * (255.0 / 65535.0)).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if mode == "F":
        raise ValueError(
            f"image {str(path)!r} stores floating-point pixels (PIL mode 'F'); save it as an 8-bit or "
            f"16-bit RGB/greyscale image"
        )
    return np.array(im.convert("RGB"))


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file fully (a truncated file fails here, not later) as 8-bit RGB (:func:`pil_to_rgb`).

    Returns:
        ``np.ndarray[H, W, 3] uint8``.

    Raises:
        ValueError: the file is empty, truncated or not an image, or has unsupported pixels; names the file
            and the fix.
    """
    try:
        with Image.open(path) as im:
            return pil_to_rgb(im, path)
    except (OSError, SyntaxError) as e:
        size = Path(path).stat().st_size if Path(path).is_file() else None
        why = (
            "empty file (0 bytes)"
            if size == 0
            else "not an image format Pillow recognises"
            if isinstance(e, UnidentifiedImageError)
            else (str(e) or type(e).__name__)
        )
        raise ValueError(
            f"image {str(path)!r} cannot be read: {why}. The file is empty, truncated or not an "
            f"image: re-extract or re-download it (or remove its id from the split)."
        ) from e


def _list_files(folder: Path) -> set[str] | None:
    try:
        return set(os.listdir(folder))
    except OSError:
        return None


class SegDataset(torch.utils.data.Dataset):
    """Image + index-label dataset in an mmseg layout.

    Args:
        root: dataset root; ``img_dir``, ``ann_dir``, ``split_file`` are relative to it (or absolute).
        img_dir: image folder, files ``<id><img_suffix>`` (RGB; read with Pillow).
        ann_dir: annotation folder, files ``<id><seg_suffix>`` (index PNG, mode P or L).
        split_file: text file with one image id per line; ``None`` = every ``*<img_suffix>`` file under
            ``img_dir`` (recursively, sorted) that has an annotation.
        img_suffix: image suffix, default ``".jpg"``.
        seg_suffix: annotation suffix, default ``".png"`` (COCO-Stuff: ``"_labelTrainIds.png"``).
        reduce_zero_label: map raw 0 -> ignore_index and v -> v-1 (raw 255 stays ignore). mmseg semantics.
        num_classes: C; valid label ids after reduction are ``0..C-1`` plus raw 255 (ignore).
        unseen: unseen label ids (after reduction).
        hide_unseen: if True the training ``label`` has unseen ids set to ``ignore_index`` (inductive
            ZSS training, docs/protocol.md "Settings"); ``full_label`` always keeps them.
        transform: called as ``transform(tv_tensors.Image uint8 [3,H,W], tv_tensors.Mask int64 [H,W] label,
            tv_tensors.Mask int64 [H,W] full_label, tv_tensors.Mask uint8 [H,W] valid)`` and must return the
            same four (see ``zss.data.transforms``); all masks must get identical geometric ops. ``valid``
            starts as ones, so padding (filled with 255) is told apart from unlabelled image pixels.
        ignore_index: ignore label, default 255.

    ``__getitem__(i)`` returns a dict:
        image: ``Tensor[3, H, W] float32`` normalised by the transform, or ``uint8`` if ``transform`` is None.
        label: ``Tensor[H, W] int64`` training label (unseen -> ignore_index iff ``hide_unseen``).
        full_label: ``Tensor[H, W] int64`` all classes.
        valid: ``Tensor[H, W] bool`` True inside the image, False in padding added by the transform.
        name: ``str`` image id.

    Attributes:
        names: list of image ids (``str``), dataset order.
        benchmark: the ``Benchmark`` when built by ``build_dataset``, else None.

    Raises (construction, eager file checks):
        FileNotFoundError: ``root``, ``img_dir``, ``ann_dir`` or ``split_file`` missing (names the path and
            says to set ``dataset.root=...``); split-file ids without image/annotation (names the split
            file, the first missing id and the count); a directory scan that finds nothing.
        ValueError: empty split file; ``unseen`` ids outside ``[0, num_classes)``.
    Raises (``__getitem__``, lazy label checks, cheap ``np.unique``):
        ValueError: annotation not mode P/L; label size != image size (names both files and sizes); label
            values outside the class range (names the file and values, suggests checking
            ``reduce_zero_label`` / the dataset preset); an image file that is empty, truncated or not an
            image (names it, :func:`read_image`). 16-bit greyscale images are scaled to 8 bits, not clipped.

    Source: docs/protocol.md "Layouts" and "Settings" (layouts, reduce_zero_label, unseen -> 255 in training only);
    mmseg's ``CustomDataset`` semantics.
    """

    benchmark = None  # set by build_dataset

    def __init__(
        self,
        root: str | os.PathLike,
        img_dir: str,
        ann_dir: str,
        split_file: str | None,
        img_suffix: str = ".jpg",
        seg_suffix: str = ".png",
        reduce_zero_label: bool = False,
        *,
        num_classes: int,
        unseen: Sequence[int] = (),
        hide_unseen: bool = False,
        transform: Callable | None = None,
        ignore_index: int = 255,
    ) -> None:
        super().__init__()
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise FileNotFoundError(f"Dataset root {str(self.root)!r} does not exist or is not a folder. {_ROOT_HINT}")
        self.img_dir = self.root / img_dir
        self.ann_dir = self.root / ann_dir
        for what, d in (("image folder", self.img_dir), ("annotation folder", self.ann_dir)):
            if not d.is_dir():
                raise FileNotFoundError(
                    f"The {what} {str(d)!r} does not exist under dataset root {str(self.root)!r}. "
                    f"Check the layout or {_ROOT_HINT}"
                )
        self.split_file = None if split_file is None else self.root / split_file
        self.img_suffix = img_suffix
        self.seg_suffix = seg_suffix
        self.reduce_zero_label = bool(reduce_zero_label)
        self.num_classes = int(num_classes)
        if not 0 < self.num_classes <= 255:
            raise ValueError(f"num_classes={num_classes} must be in 1..255 (labels are 8-bit PNGs).")
        self.unseen = tuple(int(u) for u in unseen)
        bad = [u for u in self.unseen if not 0 <= u < self.num_classes]
        if bad:
            raise ValueError(f"unseen ids {bad} are outside [0, num_classes={self.num_classes}).")
        self.hide_unseen = bool(hide_unseen)
        self.transform = transform
        self.ignore_index = int(ignore_index)

        # Look-up tables on raw uint8 values: raw -> full label, full -> training label.
        raw = np.arange(256, dtype=np.int64)
        full_lut = raw - 1 if self.reduce_zero_label else raw.copy()
        if self.reduce_zero_label:
            full_lut[0] = self.ignore_index
        full_lut[255] = self.ignore_index
        self._full_lut = full_lut
        hidden = full_lut.copy()
        if self.hide_unseen and self.unseen:
            hidden[np.isin(full_lut, self.unseen)] = self.ignore_index
        self._train_lut = hidden
        # Raw values that are allowed in an annotation file.
        valid = np.zeros(256, dtype=bool)
        lo = 1 if self.reduce_zero_label else 0
        valid[lo : lo + self.num_classes] = True
        if self.reduce_zero_label:
            valid[0] = True
        valid[255] = True
        self._valid_raw = valid

        self.names: list[str] = self._scan() if self.split_file is None else self._read_split()

    # ---------------------------------------------------------------- file discovery
    def _read_split(self) -> list[str]:
        sf = self.split_file
        assert sf is not None
        if not sf.is_file():
            raise FileNotFoundError(f"Split file {str(sf)!r} does not exist. Check the split name or {_ROOT_HINT}")
        names = read_lines(sf, "split file")
        if not names:
            raise ValueError(f"Split file {str(sf)!r} lists no image ids.")
        if len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})
            raise ValueError(
                f"Split file {str(sf)!r} lists {len(names) - len(set(names))} id(s) twice, e.g. "
                f"{dup[0]!r}: remove the repeats (zss-check reports them all)"
            )
        imgs, anns = _list_files(self.img_dir), _list_files(self.ann_dir)

        def exists(listing: set[str] | None, folder: Path, fname: str) -> bool:
            if listing is not None and "/" not in fname:
                return fname in listing
            return (folder / fname).is_file()

        missing: list[tuple[str, Path]] = []
        for n in names:
            if not exists(imgs, self.img_dir, n + self.img_suffix):
                missing.append((n, self.img_dir / (n + self.img_suffix)))
            elif not exists(anns, self.ann_dir, n + self.seg_suffix):
                missing.append((n, self.ann_dir / (n + self.seg_suffix)))
        if missing:
            first, path = missing[0]
            raise FileNotFoundError(
                f"Split file {str(sf)!r}: {len(missing)} of {len(names)} ids have no image or annotation; "
                f"first missing id {first!r} (expected {str(path)!r}). The dataset is incomplete or the split "
                f"file belongs to another layout. {_ROOT_HINT} {self._check_hint()}"
            )
        return names

    def _scan(self) -> list[str]:
        anns = _list_files(self.ann_dir)
        names: list[str] = []
        for p in sorted(self.img_dir.rglob("*" + self.img_suffix)):
            rel = p.relative_to(self.img_dir).as_posix()
            name = rel[: -len(self.img_suffix)]
            fname = name + self.seg_suffix
            ok = (fname in anns) if (anns is not None and "/" not in fname) else (self.ann_dir / fname).is_file()
            if ok:
                names.append(name)
        if not names:
            raise FileNotFoundError(
                f"No '*{self.img_suffix}' image in {str(self.img_dir)!r} has a matching '*{self.seg_suffix}' "
                f"annotation in {str(self.ann_dir)!r}. {_ROOT_HINT} {self._check_hint()}"
            )
        return names

    # ---------------------------------------------------------------- access
    def __len__(self) -> int:
        return len(self.names)

    def img_path(self, i: int) -> Path:
        """Path of the image of sample ``i``."""
        return self.img_dir / (self.names[i] + self.img_suffix)

    def ann_path(self, i: int) -> Path:
        """Path of the annotation of sample ``i``."""
        return self.ann_dir / (self.names[i] + self.seg_suffix)

    def load_full_label(self, i: int) -> np.ndarray:
        """Read, validate and reduce the annotation of sample ``i`` (no transform).

        Returns:
            ``np.ndarray[H, W] int64`` full label (all classes, ignore = ``ignore_index``).

        Raises:
            ValueError: bad PIL mode, or values outside the class range.
        """
        return self._full_lut[self._load_raw(i)]

    def _load_raw(self, i: int) -> np.ndarray:
        path = self.ann_path(i)
        try:
            raw = read_label(path)
        except ValueError as e:
            raise ValueError(f"{e} {self._check_hint()}") from None
        values = np.unique(raw)
        bad = values[~self._valid_raw[values]]
        if bad.size:
            hi = self.num_classes if self.reduce_zero_label else self.num_classes - 1
            raise ValueError(
                f"Annotation {str(path)!r} has values {bad.tolist()} outside the class range: expected "
                f"0..{hi} (+255 ignore) for num_classes={self.num_classes} with "
                f"reduce_zero_label={self.reduce_zero_label}. Check reduce_zero_label and the dataset preset "
                f"(e.g. context59 vs context60, raw COCO stuffthingmaps vs *_labelTrainIds.png). "
                f"{self._check_hint()}"
            )
        return raw

    def labels_with_seen_class(self, sample: int = 200) -> tuple[int, int]:
        """``(labels read, labels holding a seen-class pixel)`` over up to ``sample`` labels spread evenly over the
        split (a cheap check that training has something to learn; seen = not unseen, not ignore).

        Raises:
            ValueError: a label that cannot be read or holds out-of-range values (as ``__getitem__``).
        """
        seen = np.zeros(self.num_classes + 1, dtype=bool)
        seen[[c for c in range(self.num_classes) if c not in self.unseen]] = True
        idx = np.unique(np.linspace(0, len(self) - 1, min(int(sample), len(self))).round().astype(int))
        hits = 0
        for i in idx:
            full = self._full_lut[self._load_raw(int(i))]
            hits += bool(seen[np.where(full == self.ignore_index, self.num_classes, full)].any())
        return len(idx), hits

    def _check_hint(self) -> str:
        name = getattr(getattr(self, "benchmark", None), "name", None) or "<preset>"
        return _CHECK_HINT.format(name=name, root=self.root)

    def __getitem__(self, i: int) -> dict:
        img_path = self.img_path(i)
        try:
            img = read_image(img_path)  # [H, W, 3] uint8, writable copy; 16-bit greyscale scaled, not clipped
        except ValueError as e:
            raise ValueError(f"{e} {self._check_hint()}") from None
        raw = self._load_raw(i)
        full = self._full_lut[raw]  # [H, W] int64
        if full.shape != img.shape[:2]:
            raise ValueError(
                f"Label size {full.shape[1]}x{full.shape[0]} (WxH) of {str(self.ann_path(i))!r} differs from "
                f"image size {img.shape[1]}x{img.shape[0]} of {str(img_path)!r}. Images and labels must be "
                f"pixel-aligned; regenerate the annotation. {self._check_hint()}"
            )
        label = self._train_lut[raw]  # [H, W] int64, unseen -> ignore iff hide_unseen
        image_t = tv_tensors.Image(torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).contiguous())
        label_t = tv_tensors.Mask(torch.from_numpy(label))
        full_t = tv_tensors.Mask(torch.from_numpy(full))
        # 1 inside the image; geometric transforms move it with the labels and padding fills 255
        valid_t = tv_tensors.Mask(torch.ones(full.shape, dtype=torch.uint8))
        if self.transform is not None:
            image_t, label_t, full_t, valid_t = self.transform(image_t, label_t, full_t, valid_t)
        return dict(
            image=image_t.as_subclass(torch.Tensor),
            label=label_t.as_subclass(torch.Tensor),
            full_label=full_t.as_subclass(torch.Tensor),
            valid=valid_t.as_subclass(torch.Tensor) == 1,
            name=self.names[i],
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(root={str(self.root)!r}, n={len(self)}, num_classes={self.num_classes}, "
            f"reduce_zero_label={self.reduce_zero_label}, hide_unseen={self.hide_unseen}, unseen={self.unseen})"
        )


def split_parts(split: str | Sequence[str]) -> list[str]:
    """The split lists of a (possibly composite) split name: ``"train+aug"`` or ``["train", "aug"]`` ->
    ``["train", "aug"]``; ``"train"`` -> ``["train"]``.

    Raises:
        ValueError: an empty part (e.g. ``"train+"``).
    """
    parts = [str(p).strip() for p in (split.split("+") if isinstance(split, str) else split)]
    if not parts or any(not p for p in parts):
        raise ValueError(f"split {split!r}: every '+'-joined part must name a split list (e.g. train+aug)")
    return parts


class ConcatSegDataset(torch.utils.data.ConcatDataset):
    """Several :class:`SegDataset` parts read as one (mmseg's list-valued ``split`` / ``ann_dir``), e.g. VOC-Aug =
    ``train.txt`` with ``SegmentationClass`` + ``aug.txt`` with ``SegmentationClassAug`` (1,464 + 9,118 = 10,582
    images). Samples are the parts' samples in order; an image id may appear in one part only.

    Args:
        parts: the :class:`SegDataset` parts (same benchmark, root and label settings).

    Attributes:
        names: every image id, in order. parts: the parts. root, benchmark, unseen, hide_unseen, num_classes,
        reduce_zero_label, ignore_index: the first part's (equal in all).

    Raises:
        ValueError: no part, or an id listed in two parts (names both split files: e.g. ``trainaug.txt``, which
            already holds the train ids, given instead of ``aug.txt``).
    """

    def __init__(self, parts: Sequence[SegDataset]) -> None:
        parts = list(parts)
        if not parts:
            raise ValueError("ConcatSegDataset needs at least one part")
        first: dict[str, SegDataset] = {}
        for p in parts:
            for n in p.names:
                if n in first:
                    raise ValueError(
                        f"image id {n!r} is listed in both {str(first[n].split_file)!r} and {str(p.split_file)!r}: "
                        f"each image may be in one part only (for VOC-Aug use mmseg's aug.txt, which excludes the "
                        f"train and val ids, not trainaug.txt)"
                    )
                first[n] = p
        super().__init__(parts)
        self.parts = parts
        self.names = [n for p in parts for n in p.names]
        for k in ("root", "benchmark", "unseen", "hide_unseen", "num_classes", "reduce_zero_label", "ignore_index"):
            setattr(self, k, getattr(parts[0], k))

    @property
    def transform(self):
        """The parts' joint transform (set on every part)."""
        return self.parts[0].transform

    @transform.setter
    def transform(self, value) -> None:
        for p in self.parts:
            p.transform = value

    def _locate(self, i: int) -> tuple[SegDataset, int]:
        for p in self.parts:
            if i < len(p):
                return p, i
            i -= len(p)
        raise IndexError(i)

    def img_path(self, i: int) -> Path:
        p, j = self._locate(i)
        return p.img_path(j)

    def ann_path(self, i: int) -> Path:
        p, j = self._locate(i)
        return p.ann_path(j)

    def load_full_label(self, i: int) -> np.ndarray:
        p, j = self._locate(i)
        return p.load_full_label(j)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n={len(self)}, parts={[repr(p) for p in self.parts]})"


#: mmseg's converter for VOC-Aug (SBD): named by every error about a missing SegmentationClassAug.
VOC_AUG_HINT = (
    "VOC-Aug needs SegmentationClassAug/ and ImageSets/Segmentation/aug.txt under dataset.root: build "
    "them from SBD with mmseg's tools/dataset_converters/voc_aug.py (docs/reproduce.md), or train on the "
    "1,464 train images alone with dataset=voc20"
)


#: Benchmarks whose ``aug`` split part reads ``SegmentationClassAug`` by default (VOC-Aug).
VOC_AUG_BENCHMARKS = ("voc20", "voc21")


def build_dataset(
    name: str,
    root: str | os.PathLike,
    split: str | Sequence[str] = "train",
    *,
    hide_unseen: bool = False,
    transform: Callable | None = None,
    benchmark_split: str | None = None,
    ignore_index: int = 255,
    img_dir: str | None = None,
    ann_dir: str | Sequence[str | None] | None = None,
    split_file: str | None = None,
) -> SegDataset | ConcatSegDataset:
    """Build a ``SegDataset`` for a benchmark preset from its layout defaults (``zss.data.classes.layout``).

    A composite ``split`` (``"train+aug"`` or a list) builds one part per split list and returns a
    :class:`ConcatSegDataset`; ``ann_dir`` may then be a list with one label folder per part (None: the
    layout's), e.g. VOC-Aug: ``split="train+aug", ann_dir=[None, "SegmentationClassAug"]`` (10,582 images); for
    VOC the ``aug`` part reads ``SegmentationClassAug`` unless told otherwise. A missing ``SegmentationClassAug``
    raises a FileNotFoundError naming mmseg's converter (:data:`VOC_AUG_HINT`); an id in two parts a ValueError.

    Args:
        name: benchmark preset (``"voc20"``, ``"cocostuff171"``, ``"context59"``, ``"context60"``).
        root: dataset root (e.g. ``data/VOCdevkit/VOC2012``, ``data/coco_stuff164k``, ``data/VOCdevkit/VOC2010``).
        split: data split name filled into the layout: VOC/Context read ``ImageSets/.../{split}.txt`` (any
            split with a file works, e.g. evaluate on ``"train"``); COCO-Stuff scans ``images/{split}2017``.
        hide_unseen: set unseen ids to ``ignore_index`` in the training ``label`` (True for inductive
            training; default False = evaluation).
        transform: joint transform, see ``SegDataset``.
        benchmark_split: unseen split for Context (``"zs3"``/``"cascade"``, required there), None otherwise.
        ignore_index: ignore label, default 255.
        img_dir, ann_dir, split_file: optional overrides of the layout (relative to ``root``), e.g.
            ``ann_dir="SegmentationClassAug", split="aug"`` for VOC-Aug.

    Returns:
        ``SegDataset`` with an extra attribute ``benchmark`` (the ``Benchmark`` used for classes/unseen).

    Raises:
        KeyError: unknown ``name``. ValueError: bad ``benchmark_split``.
        FileNotFoundError: missing root, folders or split file (lists the split files that exist).
    """
    parts = split_parts(split)
    if len(parts) > 1 or not isinstance(ann_dir, (str, type(None))):
        dirs = list(ann_dir) if not isinstance(ann_dir, (str, type(None))) else [ann_dir] * len(parts)
        if len(dirs) != len(parts):
            raise ValueError(
                f"split {split!r} has {len(parts)} parts but {len(dirs)} label folders were given "
                f"(dataset.train_ann_dirs): give one per part (null = the layout's)"
            )
        if split_file is not None:
            raise ValueError("split_file cannot be combined with a composite split")
        built = []
        for part, d in zip(parts, dirs):
            if d is None and part == "aug" and name in VOC_AUG_BENCHMARKS:
                d = "SegmentationClassAug"  # mmseg's VOC-Aug layout: aug.txt's labels live there
            if d is not None and "SegmentationClassAug" in str(d):
                aug = Path(root).expanduser() / d
                if not aug.is_dir():
                    raise FileNotFoundError(
                        f"label folder {str(aug)!r} (split part {part!r}) does not exist. {VOC_AUG_HINT}."
                    )
            try:
                built.append(
                    build_dataset(
                        name,
                        root,
                        part,
                        hide_unseen=hide_unseen,
                        transform=transform,
                        benchmark_split=benchmark_split,
                        ignore_index=ignore_index,
                        img_dir=img_dir,
                        ann_dir=d,
                    )
                )
            except FileNotFoundError as e:
                if part == "aug":
                    raise FileNotFoundError(f"{e} {VOC_AUG_HINT}.") from None
                raise
        return built[0] if len(built) == 1 else ConcatSegDataset(built)
    split = parts[0]
    bench = get_benchmark(name, benchmark_split)
    kw = layout(name).resolve(split)
    if img_dir is not None:
        kw["img_dir"] = img_dir
    if ann_dir is not None:
        kw["ann_dir"] = ann_dir
    if split_file is not None:
        kw["split_file"] = split_file
    rootp = Path(root).expanduser()
    if not rootp.is_dir():
        raise FileNotFoundError(
            f"Dataset root {str(rootp)!r} for {name!r} does not exist (expected layout: "
            f"{layout(name).default_root}/{kw['img_dir']}, {kw['ann_dir']}). {_ROOT_HINT}"
        )
    if kw["split_file"] is not None and not (rootp / kw["split_file"]).is_file():
        sdir = (rootp / kw["split_file"]).parent
        have = sorted(p.stem for p in sdir.glob("*.txt")) if sdir.is_dir() else []
        raise FileNotFoundError(
            f"No split file for split {split!r} of {name!r}: {str(rootp / kw['split_file'])!r} does not exist. "
            f"Splits available in {str(sdir)!r}: {have or 'none (folder missing)'}. {_ROOT_HINT}"
        )
    if kw["split_file"] is None and not (rootp / kw["img_dir"]).is_dir():
        sdir = (rootp / kw["img_dir"]).parent
        have = sorted(p.name for p in sdir.iterdir() if p.is_dir()) if sdir.is_dir() else []
        raise FileNotFoundError(
            f"No image folder for split {split!r} of {name!r}: {str(rootp / kw['img_dir'])!r} does not exist. "
            f"Folders in {str(sdir)!r}: {have or 'none (folder missing)'}. {_ROOT_HINT}"
        )
    ds = SegDataset(
        rootp,
        num_classes=bench.num_classes,
        unseen=bench.unseen,
        hide_unseen=hide_unseen,
        transform=transform,
        ignore_index=ignore_index,
        **kw,
    )
    ds.benchmark = bench
    return ds


class WithoutKeys(torch.utils.data.Dataset):
    """View of a dataset of sample dicts with some keys removed (before collation, in the worker).

    The trainer uses it to drop ``full_label`` (every class, unseen included) from training samples unless
    the teacher declares ``needs_full_label`` (zss/engine/trainer.py): the inductive setting must not hand
    unseen ground truth to a training step that has no business reading it.

    Args:
        dataset: yields dicts (e.g. :class:`SegDataset` samples); any index type it accepts is passed on.
        keys: keys to remove (missing keys are ignored).
    """

    def __init__(self, dataset: torch.utils.data.Dataset, keys: Sequence[str]) -> None:
        super().__init__()
        self.dataset = dataset
        self.keys = tuple(str(k) for k in keys)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item) -> dict:
        sample = self.dataset[item]
        return {k: v for k, v in sample.items() if k not in self.keys}


class UnseenLabelGuard(torch.utils.data.Dataset):
    """View of a training dataset that refuses any sample whose training ``label`` holds an unseen class id.

    In the zero-shot settings (inductive, and zss's transductive one) a training label never names an unseen
    class: ``hide_unseen`` sets those pixels to ``ignore_index``. A label that still holds one (a dataset built
    with ``hide_unseen=False``, or a custom label folder) would train the transductive terms on unseen
    ground truth. The check runs on the CPU, in the loader's workers (no device sync). Source: not in the
    papers: our leak guard (docs/protocol.md "Settings").

    Args:
        dataset: yields dicts with ``label`` ``Tensor[H, W] int64`` (benchmark ids) and optionally ``name``.
        unseen: unseen class ids (benchmark ids); empty = no check.

    Raises (on access):
        ValueError: one line naming the sample, the unseen ids found and the fix (``dataset.hide_unseen=true``).
    """

    def __init__(self, dataset: torch.utils.data.Dataset, unseen: Sequence[int]) -> None:
        super().__init__()
        self.dataset = dataset
        self.unseen = torch.tensor(sorted(int(u) for u in unseen), dtype=torch.long)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item) -> dict:
        sample = self.dataset[item]
        check_no_unseen(sample["label"], self.unseen, sample.get("name", item))
        return sample


def check_no_unseen(label: torch.Tensor, unseen: Sequence[int] | torch.Tensor, name: object = "?") -> None:
    """Raise when a training label holds an unseen class id (see :class:`UnseenLabelGuard`).

    Args:
        label: ``Tensor[..., H, W]`` int64 benchmark ids (``ignore_index`` for ignored pixels).
        unseen: unseen class ids. name: the sample (image id) for the message.

    Raises:
        ValueError: one line naming the sample, the ids and ``dataset.hide_unseen=true``.
    """
    ids = np.asarray(torch.as_tensor(unseen, dtype=torch.long).cpu())
    if ids.size == 0:
        return
    lab = np.asarray(torch.as_tensor(label).cpu())  # numpy: a data-side check, never a torch (device) read-back
    hit = np.isin(lab, ids)
    if hit.any():
        found = sorted(set(lab[hit].tolist()))
        raise ValueError(
            f"training sample {name!r}: its training label holds unseen class id(s) {found}, i.e. unseen ground "
            f"truth would reach a training step; set dataset.hide_unseen=true (the zero-shot setting hides unseen "
            f"pixels as 255), or use a label folder without unseen classes"
        )
