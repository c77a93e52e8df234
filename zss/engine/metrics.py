"""Dataset-level segmentation metrics for (generalised) zero-shot semantic segmentation.

One ``int64`` confusion matrix ``[C, C]`` (rows = ground truth, columns = prediction) is accumulated
over the whole evaluation set — never per-image averages — and summed across ranks with
:meth:`SegEvaluator.all_reduce`. All reported scores are **percent** floats (x100).

Definitions (docs/protocol.md "Metrics", the ZegCLIP / CLIP-RC / Cascade-CLIP / OTSeg protocol):

- ``IoU_c = TP / (TP + FP + FN)``; NaN when class ``c`` is absent from both GT and prediction
  (denominator 0). NaN classes are excluded from every mean (never poison it).
- ``Acc_c = TP / (TP + FN)``; NaN when class ``c`` is absent from the GT.
- ``mIoU_seen`` / ``mIoU_unseen``: NaN-mean of IoU over seen / unseen classes.
- ``hIoU = 2 S U / (S + U)`` on those two means; 0 if either is 0; NaN if either is NaN (e.g. no
  unseen class occurs in the GT or the prediction at all, or ``label_space="unseen"``).
- ``pAcc = trace / labelled pixels``; ``mIoU`` / ``mAcc``: NaN-means over all evaluated classes.

Label spaces (a config key, reported with every result):

- ``"all"`` (GZSS): every class is evaluated from one all-class prediction.
- ``"unseen"`` (ZSS): only unseen classes are evaluated. GT pixels of seen classes are treated as
  ``ignore_index``; seen classes get NaN IoU/Acc; ``mIoU_seen`` and ``hIoU`` are NaN; ``mIoU``,
  ``mAcc`` and ``pAcc`` are over the unseen classes / unseen-GT pixels only. Restricting the
  *prediction* to unseen classes is the method's job (logit masking in ``Method.predict``); a
  seen-class prediction on an unseen-GT pixel simply counts as a miss here.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Iterable, Sequence

import numpy as np
import torch
import torch.distributed as dist

__all__ = [
    "SegEvaluator",
    "constant_five_way",
    "format_table",
    "label_histogram",
    "summary_line",
    "to_json",
    "to_serializable",
    "LABEL_SPACES",
]

LABEL_SPACES = ("all", "unseen")


def _nanmean(x: np.ndarray) -> float:
    """NaN-mean of a float64 array without numpy's "mean of empty slice" warning; NaN if all NaN."""
    finite = x[~np.isnan(x)]
    return float(finite.mean()) if finite.size else float("nan")


def harmonic_iou(seen: float, unseen: float) -> float:
    """Harmonic mean of two percent scores: ``2 S U / (S + U)``.

    Args:
        seen: mIoU over seen classes (percent, may be NaN).
        unseen: mIoU over unseen classes (percent, may be NaN).

    Returns:
        float percent; NaN if either input is NaN (the score is undefined), 0.0 if either is 0.

    Source: docs/protocol.md "Metrics" (the GZSS protocol of ZS3Net/ZegCLIP); the NaN rule is ours.
    """
    if math.isnan(seen) or math.isnan(unseen):
        return float("nan")
    if seen == 0.0 or unseen == 0.0:
        return 0.0
    return 2.0 * seen * unseen / (seen + unseen)


class SegEvaluator:
    """Accumulates one dataset-level int64 confusion matrix and turns it into GZSS / ZSS metrics.

    Args:
        num_classes: C, number of classes of the benchmark (seen + unseen).
        class_names: C names in label-id order (used by :func:`format_table`).
        unseen: label ids of the unseen classes (ints in ``[0, C)``).
        ignore_index: GT value that is skipped (default 255, docs/protocol.md "Metrics").
        label_space: ``"all"`` (GZSS, default) or ``"unseen"`` (ZSS: GT pixels of seen classes are
            treated as ignore). See the module docstring.

    Attributes:
        confusion: ``Tensor[C, C] int64`` (rows = GT, cols = prediction), the rank-summed matrix
            after :meth:`all_reduce`, the local one otherwise.

    Raises:
        ValueError: bad ``num_classes``/``class_names`` length, unseen ids out of range or
            duplicated, unknown ``label_space``.

    Source: docs/protocol.md "Metrics" (protocol of the ZegCLIP lineage); NaN conventions are ours.
    """

    def __init__(
        self,
        num_classes: int,
        class_names: Sequence[str],
        unseen: Sequence[int],
        ignore_index: int = 255,
        label_space: str = "all",
    ) -> None:
        if int(num_classes) <= 0:
            raise ValueError(f"SegEvaluator: num_classes must be positive, got {num_classes}")
        self.num_classes = int(num_classes)
        self.class_names = [str(n) for n in class_names]
        if len(self.class_names) != self.num_classes:
            raise ValueError(
                f"SegEvaluator: class_names has {len(self.class_names)} names but num_classes={self.num_classes}; "
                "pass one name per label id (e.g. get_benchmark(...).classes)"
            )
        unseen_ids = [int(u) for u in unseen]
        bad = [u for u in unseen_ids if not 0 <= u < self.num_classes]
        if bad:
            raise ValueError(f"SegEvaluator: unseen ids {bad} are outside [0, {self.num_classes})")
        if len(set(unseen_ids)) != len(unseen_ids):
            raise ValueError(f"SegEvaluator: unseen ids contain duplicates: {unseen_ids}")
        if label_space not in LABEL_SPACES:
            raise ValueError(f"SegEvaluator: label_space={label_space!r} is not one of {LABEL_SPACES}")
        self.unseen = tuple(sorted(unseen_ids))
        self.seen = tuple(c for c in range(self.num_classes) if c not in set(self.unseen))
        self.ignore_index = int(ignore_index)
        self.label_space = label_space
        is_unseen = torch.zeros(self.num_classes, dtype=torch.bool)
        is_unseen[list(self.unseen)] = True
        self._is_unseen = is_unseen  # [C] bool, CPU; moved lazily to the data's device
        self._local: torch.Tensor | None = None  # [C, C] int64 on the device of the first update
        self._reduced: torch.Tensor | None = None  # rank-summed copy, invalidated by update()

    # ------------------------------------------------------------------ accumulation
    def reset(self) -> None:
        """Zero the confusion matrix (start a new evaluation)."""
        self._local = None
        self._reduced = None

    def _matrix(self, device: torch.device) -> torch.Tensor:
        if self._local is None:
            self._local = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64, device=device)
        return self._local

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch of predictions to the confusion matrix.

        Args:
            pred: ``Tensor[B, H, W]`` (or ``[H, W]``) integer class ids in ``[0, C)`` (argmax of logits).
            target: ``Tensor[B, H, W]`` (or ``[H, W]``) integer GT ids in ``[0, C)`` or ``ignore_index``;
                the full (all-class) label at the original label size.

        Pixels whose target is ``ignore_index`` are skipped (and, in ``label_space="unseen"``, so are
        pixels whose target is a seen class). Counting uses ``torch.bincount`` on the inputs' device.

        Raises:
            ValueError: shapes differ, non-integer dtypes, a prediction outside ``[0, C)`` or a
                target outside ``[0, C) ∪ {ignore_index}`` (the offending value is named).
        """
        if pred.shape != target.shape:
            raise ValueError(
                f"SegEvaluator.update: pred shape {tuple(pred.shape)} != target shape {tuple(target.shape)}; "
                "resize the logits to the label size before argmax (out_size=label.shape[-2:])"
            )
        for name, t in (("pred", pred), ("target", target)):
            if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
                raise ValueError(
                    f"SegEvaluator.update: {name} must be an integer tensor of class ids, got {t.dtype}; "
                    "pass logits.argmax(1) rather than logits"
                )
        if pred.numel() == 0:
            return
        C = self.num_classes
        pred = pred.reshape(-1).long()
        target = target.to(pred.device).reshape(-1).long()
        pmin, pmax = int(pred.min()), int(pred.max())
        if pmin < 0 or pmax >= C:
            badv = pmin if pmin < 0 else pmax
            raise ValueError(
                f"SegEvaluator.update: prediction value {badv} is outside [0, {C}); predictions must be "
                "argmax class ids over all num_classes classes"
            )
        valid = target != self.ignore_index
        t_valid = target[valid]
        if t_valid.numel():
            tmin, tmax = int(t_valid.min()), int(t_valid.max())
            if tmin < 0 or tmax >= C:
                badv = tmin if tmin < 0 else tmax
                raise ValueError(
                    f"SegEvaluator.update: target value {badv} is outside [0, {C}) and is not "
                    f"ignore_index={self.ignore_index}; check reduce_zero_label / the label conversion"
                )
        if self.label_space == "unseen":
            is_unseen = self._is_unseen.to(target.device)
            valid &= is_unseen[target.clamp(0, C - 1)]
        idx = target[valid] * C + pred[valid]  # [N] int64 in [0, C*C)
        counts = torch.bincount(idx, minlength=C * C).reshape(C, C)  # int64
        m = self._matrix(pred.device)
        m += counts.to(m.device)
        self._reduced = None

    @torch.no_grad()
    def update_confusion(self, matrix: torch.Tensor | np.ndarray) -> None:
        """Add an already-counted confusion matrix (e.g. from another evaluator or a cached run).

        Args:
            matrix: ``[C, C]`` non-negative integer counts (rows = GT, cols = prediction), torch or numpy.
                In ``label_space="unseen"`` the caller is responsible for seen-GT rows (they are not
                used by :meth:`compute` anyway, see the module docstring).

        Raises:
            ValueError: wrong shape, non-integer dtype, or negative counts.
        """
        m_in = torch.as_tensor(matrix)
        C = self.num_classes
        if tuple(m_in.shape) != (C, C):
            raise ValueError(f"SegEvaluator.update_confusion: expected shape ({C}, {C}), got {tuple(m_in.shape)}")
        if m_in.is_floating_point() or m_in.is_complex() or m_in.dtype == torch.bool:
            raise ValueError(f"SegEvaluator.update_confusion: matrix must hold integer counts, got {m_in.dtype}")
        if bool((m_in < 0).any()):
            raise ValueError("SegEvaluator.update_confusion: matrix has negative counts")
        m = self._matrix(m_in.device if self._local is None else self._local.device)
        m += m_in.to(device=m.device, dtype=torch.int64)
        self._reduced = None

    def all_reduce(self) -> None:
        """Sum the confusion matrices of all ranks (``torch.distributed``); no-op when not initialised.

        Must be called on every rank (it is a collective) after the last :meth:`update`. Idempotent:
        it always re-sums the *local* matrices, so calling it twice does not double-count; a later
        :meth:`update` drops the summed copy until the next call. With the NCCL backend the matrix is
        moved to the current CUDA device for the collective.
        """
        if not (dist.is_available() and dist.is_initialized()):
            return
        local = self._matrix(torch.device("cpu"))
        device = local.device
        if dist.get_backend() == "nccl" and device.type != "cuda":
            device = torch.device("cuda", torch.cuda.current_device())
        buf = local.to(device=device, copy=True)
        dist.all_reduce(buf, op=dist.ReduceOp.SUM)
        self._reduced = buf.to(local.device)

    @property
    def confusion(self) -> torch.Tensor:
        """``Tensor[C, C] int64`` counts (rows = GT, cols = prediction); rank-summed after :meth:`all_reduce`."""
        if self._reduced is not None:
            return self._reduced
        if self._local is None:
            return torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)
        return self._local

    # ------------------------------------------------------------------ metrics
    def compute(self) -> dict[str, Any]:
        """Metrics from the (rank-summed, if :meth:`all_reduce` was called) confusion matrix.

        Returns:
            dict with percent floats ``mIoU_seen``, ``mIoU_unseen``, ``hIoU``, ``pAcc``, ``mIoU``,
            ``mAcc`` (NaN where undefined, see the module docstring), ``label_space`` (str),
            ``num_pixels`` (int, labelled pixels counted), ``num_classes`` (int) and ``per_class``:
            list of ``dict(id, name, seen: bool, IoU, Acc)`` in label-id order (percent, NaN for absent
            or non-evaluated classes).
        """
        conf = self.confusion.detach().cpu().numpy().astype(np.int64)  # [C, C]
        is_unseen = self._is_unseen.numpy()
        evaluated = is_unseen.copy() if self.label_space == "unseen" else np.ones(self.num_classes, dtype=bool)
        if self.label_space == "unseen":
            # Seen-GT pixels were never counted by update(); drop them here too (update_confusion input).
            conf = conf.copy()
            conf[~is_unseen, :] = 0
        tp = np.diag(conf).astype(np.float64)
        gt = conf.sum(axis=1).astype(np.float64)  # TP + FN
        pr = conf.sum(axis=0).astype(np.float64)  # TP + FP
        union = gt + pr - tp
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = np.where(union > 0, tp / np.where(union > 0, union, 1.0), np.nan) * 100.0
            acc = np.where(gt > 0, tp / np.where(gt > 0, gt, 1.0), np.nan) * 100.0
        iou[~evaluated] = np.nan
        acc[~evaluated] = np.nan
        total = int(conf.sum())
        p_acc = float(tp.sum() / total * 100.0) if total > 0 else float("nan")
        seen_mask = ~is_unseen & evaluated
        unseen_mask = is_unseen & evaluated
        m_seen = _nanmean(iou[seen_mask])
        m_unseen = _nanmean(iou[unseen_mask])
        if self.label_space == "unseen":
            h = float("nan")
        else:
            h = harmonic_iou(m_seen, m_unseen)
        if total == 0:
            warnings.warn("SegEvaluator.compute: no labelled pixel was counted; all metrics are NaN", stacklevel=2)
        per_class = [
            {
                "id": c,
                "name": self.class_names[c],
                "seen": not bool(is_unseen[c]),
                "IoU": float(iou[c]),
                "Acc": float(acc[c]),
            }
            for c in range(self.num_classes)
        ]
        return {
            "mIoU_seen": m_seen,
            "mIoU_unseen": m_unseen,
            "hIoU": h,
            "pAcc": p_acc,
            "mIoU": _nanmean(iou[evaluated]),
            "mAcc": _nanmean(acc[evaluated]),
            "label_space": self.label_space,
            "num_pixels": total,
            "num_classes": self.num_classes,
            "per_class": per_class,
        }


# ---------------------------------------------------------------------- label statistics
def label_histogram(labels: Iterable[torch.Tensor], num_classes: int, ignore_index: int = 255) -> torch.Tensor:
    """Ground-truth pixel count of each class over a set of label maps.

    Args:
        labels: label maps, each an integer Tensor of any shape (e.g. ``[H, W]`` ``full_label`` of a dataset's
            samples); ``ignore_index`` pixels are skipped.
        num_classes: C.
        ignore_index: label of ignored pixels (255).
    Returns:
        ``Tensor[C] int64`` (CPU): pixels per class.
    Raises:
        ValueError: a label value outside ``[0, C)`` other than ``ignore_index`` (names the value).
    """
    counts = torch.zeros(int(num_classes), dtype=torch.int64)
    for lab in labels:
        v = torch.as_tensor(lab).reshape(-1).long().cpu()
        v = v[v != ignore_index]
        if v.numel() and (int(v.min()) < 0 or int(v.max()) >= num_classes):
            bad = v[(v < 0) | (v >= num_classes)][0]
            raise ValueError(
                f"label_histogram: label value {int(bad)} is outside [0, {num_classes}) and not "
                f"ignore_index={ignore_index}; check the label files or num_classes"
            )
        counts += torch.bincount(v, minlength=num_classes)
    return counts


def constant_five_way(counts: torch.Tensor | np.ndarray | Sequence[int], unseen: Sequence[int]) -> dict[str, Any]:
    """The best constant predictor of the ZSS (unseen-only, "5-way") view: one unseen class on every unseen pixel.

    The ZSS view scores pixels whose ground truth is unseen with the argmax over the unseen classes only
    (``SegEvaluator(label_space="unseen")``). Predicting the same class ``k`` everywhere scores pixel accuracy
    ``n_k / sum_u n_u`` (best: the largest unseen class's share of the unseen pixels) and class-mean accuracy
    ``100 / K`` (``K`` = unseen classes present: class ``k`` at 100%, the others at 0), whichever ``k``. A
    model's 5-way pixel accuracy means something only above this pixel floor. Not in the papers: our check.

    Args:
        counts: ground-truth pixels per class, ``[C]`` (e.g. :func:`label_histogram`), or a confusion matrix
            ``[C, C]`` (rows = ground truth, e.g. :attr:`SegEvaluator.confusion` in label space ``all``; its row
            sums are used). Integers >= 0.
        unseen: the unseen class ids (ints in ``[0, C)``).
    Returns:
        dict: ``pAcc`` (percent float, the best constant's pixel accuracy), ``mAcc`` (percent float, its
        class-mean accuracy), ``class_id`` (int, the largest unseen class; ties: the lowest id),
        ``unseen_pixels`` (int), ``present`` (int, K). With no unseen pixel: ``pAcc``/``mAcc`` NaN,
        ``class_id`` -1.
    Raises:
        ValueError: counts not 1-D or square 2-D, negative counts, or unseen ids outside ``[0, C)``.
    """
    c = torch.as_tensor(np.asarray(counts)).to(torch.int64)
    if c.ndim == 2 and c.shape[0] == c.shape[1]:
        c = c.sum(dim=1)
    if c.ndim != 1:
        raise ValueError(
            f"constant_five_way: counts must be [C] pixels per class or a [C, C] confusion matrix, "
            f"got shape {tuple(c.shape)}"
        )
    if bool((c < 0).any()):
        raise ValueError("constant_five_way: counts must be >= 0 (pixels per class)")
    ids = sorted({int(u) for u in unseen})
    bad = [u for u in ids if not 0 <= u < c.numel()]
    if bad:
        raise ValueError(f"constant_five_way: unseen ids {bad} are outside [0, {c.numel()})")
    n = c[ids] if ids else c[:0]
    total = int(n.sum())
    if total == 0:
        return {"pAcc": float("nan"), "mAcc": float("nan"), "class_id": -1, "unseen_pixels": 0, "present": 0}
    j = int(torch.argmax(n))  # first maximum: the lowest position among ties
    present = int((n > 0).sum())
    return {
        "pAcc": float(n[j]) / total * 100.0,
        "mAcc": 100.0 / present,
        "class_id": ids[j],
        "unseen_pixels": total,
        "present": present,
    }


# ---------------------------------------------------------------------- formatting
_SUMMARY_KEYS = (
    ("mIoU(S)", "mIoU_seen"),
    ("mIoU(U)", "mIoU_unseen"),
    ("hIoU", "hIoU"),
    ("pAcc", "pAcc"),
    ("mIoU", "mIoU"),
    ("mAcc", "mAcc"),
)


def _fmt(v: Any, digits: int = 2) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{float(v):.{digits}f}"


def format_table(results: dict[str, Any], digits: int = 2) -> str:
    """Markdown table of :meth:`SegEvaluator.compute` results: per-class rows, then a summary block.

    Args:
        results: the dict returned by :meth:`SegEvaluator.compute`.
        digits: decimals of the percent values (default 2).

    Returns:
        str: a per-class table (``| class | split | IoU | Acc |``, NaN shown as ``n/a``) followed by a
        summary table with mIoU(S), mIoU(U), hIoU, pAcc, mIoU, mAcc (percent) and the label space.
    """
    lines = ["| class | split | IoU | Acc |", "|---|---|---:|---:|"]
    for row in results.get("per_class", []):
        split = "seen" if row["seen"] else "unseen"
        lines.append(f"| {row['name']} | {split} | {_fmt(row['IoU'], digits)} | {_fmt(row['Acc'], digits)} |")
    lines.append("")
    lines.append("| " + " | ".join(k for k, _ in _SUMMARY_KEYS) + " | label space |")
    lines.append("|" + "---:|" * len(_SUMMARY_KEYS) + "---|")
    space = results.get("label_space", "?")
    space_txt = {"all": "all (GZSS)", "unseen": "unseen (ZSS)"}.get(space, str(space))
    lines.append("| " + " | ".join(_fmt(results.get(k), digits) for _, k in _SUMMARY_KEYS) + f" | {space_txt} |")
    return "\n".join(lines)


def summary_line(results: dict[str, Any], digits: int = 2) -> str:
    """One-line summary, e.g. ``"[all] mIoU(S) 80.12 | mIoU(U) 70.00 | hIoU 74.72 | pAcc ... | mIoU ... | mAcc ..."``.

    Args:
        results: the dict returned by :meth:`SegEvaluator.compute`.
        digits: decimals (default 2). Values are percent; NaN printed as ``n/a``.
    """
    body = " | ".join(f"{name} {_fmt(results.get(k), digits)}" for name, k in _SUMMARY_KEYS)
    return f"[{results.get('label_space', '?')}] {body}"


def to_serializable(obj: Any) -> Any:
    """Recursively convert results to JSON-safe Python: NaN/inf -> None, numpy/torch scalars -> Python."""
    if isinstance(obj, dict):
        return {str(k): to_serializable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_serializable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return to_serializable(obj.tolist())
    if isinstance(obj, np.ndarray):
        return to_serializable(obj.tolist())
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        return f if math.isfinite(f) else None
    return obj


def to_json(results: dict[str, Any]) -> dict[str, Any]:
    """JSON-safe copy of :meth:`SegEvaluator.compute` results: NaN/inf -> ``None`` (``null`` once dumped).

    Args:
        results: results dict (may contain extra keys such as ``step``, ``img_per_s`` or ``seen_bias``).

    Returns:
        dict of plain Python values; ``json.dumps(to_json(results), allow_nan=False)`` gives strict JSON
        (no ``NaN`` tokens), e.g. one line of ``metrics.jsonl`` or ``final_results.json``.
    """
    return to_serializable(results)
