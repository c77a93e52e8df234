"""The `Method` seam: a method owns the student, the frozen teacher and its losses.

A method is an ``nn.Module`` whose trainable state is the student (plus any light trainable parts
the method adds); the teacher is frozen, kept out of the optimizer and out of checkpoints
(see :meth:`Method.checkpoint_state`). Text embeddings of every class of the benchmark are
computed once from the teacher at construction and stored as a buffer, so evaluation of a
checkpoint needs no teacher weights for the training vocabulary.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Method(nn.Module):
    """Base class for training methods.

    Args:
        student: the segmenter; must provide ``forward(images) -> embeds Tensor[B, D, h, w]``
            (L2-normalised), ``logits(embeds, text) -> Tensor[B, C, h, w]`` and
            ``param_groups(lr, head_lr_mult, weight_decay)``.
        teacher: frozen teacher (``FrozenCLIP`` or ``OracleTeacher``) or None. It is stored outside
            the module tree's state dict (``checkpoint_state`` drops it) and never trained.
        classnames: names of all classes of the benchmark, in label-id order (C_all of them).
        unseen: label ids of the unseen classes (never labelled during training).
        templates: prompt templates with ``{}`` for the class name.
        text_embeds: optional precomputed ``Tensor[C_all, D] float32`` (L2-normalised); computed
            from ``teacher.text(classnames, templates)`` when omitted.
        ignore_index: label value to ignore (255).

    Raises:
        ValueError: when neither a teacher nor ``text_embeds`` is given, or ``unseen`` holds an id
            outside ``[0, C_all)``.
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module | None,
        classnames: Sequence[str],
        unseen: Sequence[int],
        templates: Sequence[str] = ("a photo of a {}.",),
        text_embeds: Tensor | None = None,
        ignore_index: int = 255,
    ) -> None:
        super().__init__()
        self.student = student
        # Kept out of ``_modules`` so it never lands in state_dict(), DDP or the optimizer.
        object.__setattr__(self, "teacher", teacher)
        self.classnames = list(classnames)
        self.templates = list(templates)
        self.ignore_index = ignore_index
        num_classes = len(self.classnames)
        bad = [u for u in unseen if not 0 <= int(u) < num_classes]
        if bad:
            raise ValueError(f"unseen class ids {bad} are outside [0, {num_classes}) for {num_classes} classes")
        unseen_t = torch.tensor(sorted(int(u) for u in unseen), dtype=torch.long)
        seen_t = torch.tensor([c for c in range(num_classes) if c not in set(unseen_t.tolist())], dtype=torch.long)
        self.register_buffer("unseen", unseen_t, persistent=False)
        self.register_buffer("seen", seen_t, persistent=False)
        if text_embeds is None:
            if teacher is None:
                raise ValueError("Method needs a teacher or precomputed text_embeds for the class names")
            text_embeds = teacher.text(self.classnames, self.templates)
        self.register_buffer("text_embeds", F.normalize(text_embeds.detach().float(), dim=-1))
        # seen-class id -> position among seen classes; unseen/ignore -> ignore_index
        lut = torch.full((256,), ignore_index, dtype=torch.long)
        lut[seen_t] = torch.arange(len(seen_t))
        self.register_buffer("seen_lut", lut, persistent=False)

    # ------------------------------------------------------------------ utilities
    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    @property
    def num_seen(self) -> int:
        return int(self.seen.numel())

    def to_seen_ids(self, label: Tensor) -> Tensor:
        """Map a training label ``Tensor[B, H, W] int64`` (benchmark ids) to seen-class positions.

        Seen id ``seen[k]`` becomes ``k``; unseen ids and ``ignore_index`` become ``ignore_index``.
        """
        return self.seen_lut[label.clamp(0, 255)]

    def set_vocabulary(self, classnames: Sequence[str], unseen: Sequence[int], text_embeds: Tensor) -> None:
        """Switch the label space for inference (open-vocabulary / cross-dataset evaluation).

        Args:
            classnames: the new C classes in label-id order. unseen: ids among them to report as
                unseen (may be empty). text_embeds: Tensor[C, D] float32 for ``classnames``.

        Raises:
            ValueError: ``text_embeds`` does not have one row per class or the teacher's D.
        """
        if text_embeds.shape[0] != len(classnames) or text_embeds.shape[1] != self.text_embeds.shape[1]:
            raise ValueError(f"text_embeds {tuple(text_embeds.shape)} do not match {len(classnames)} classes x "
                             f"D={self.text_embeds.shape[1]}")
        dev = self.text_embeds.device
        self.classnames = list(classnames)
        unseen_t = torch.tensor(sorted(int(u) for u in unseen), dtype=torch.long, device=dev)
        keep = set(unseen_t.tolist())
        self.unseen = unseen_t
        self.seen = torch.tensor([c for c in range(len(classnames)) if c not in keep], dtype=torch.long, device=dev)
        self.text_embeds = F.normalize(text_embeds.detach().float(), dim=-1).to(dev)
        lut = torch.full((256,), self.ignore_index, dtype=torch.long, device=dev)
        lut[self.seen[self.seen < 256]] = torch.arange(int((self.seen < 256).sum()), device=dev)
        self.seen_lut = lut

    def _apply(self, fn, recurse=True):  # keep the (unregistered) teacher on the same device
        out = super()._apply(fn, recurse)
        if self.teacher is not None:
            self.teacher._apply(fn, recurse)
        return out

    # ------------------------------------------------------------------ API
    def forward(self, batch: dict) -> dict[str, Tensor]:
        """Same as :meth:`training_step` (so DDP's hooks see the call)."""
        return self.training_step(batch)

    def training_step(self, batch: dict) -> dict[str, Tensor]:
        """Compute the losses for one batch.

        Args:
            batch: ``image`` Tensor[B, 3, H, W] float32 (normalised), ``label`` Tensor[B, H, W]
                int64 (seen-only: unseen and unlabelled pixels are 255), ``full_label``
                Tensor[B, H, W] int64 (all classes; only label-derived teachers may read it).

        Returns:
            dict of scalar tensors; ``loss`` is the total that is back-propagated.
        """
        raise NotImplementedError

    def predict(self, images: Tensor, label_space: str = "all") -> Tensor:
        """Logits over all classes (or only the unseen ones) for ``images``.

        Args:
            images: Tensor[B, 3, H, W] float32, normalised.
            label_space: ``all`` (GZSS: every class) or ``unseen`` (ZSS: seen logits set to -inf).

        Returns:
            Tensor[B, C_all, h, w] float32 logits at the student's output stride.
        """
        embeds = self.student(images)
        logits = self.student.logits(embeds, self.text_embeds.to(embeds.dtype)).float()
        if label_space == "unseen":
            logits[:, self.seen] = float("-inf")
        elif label_space != "all":
            raise ValueError(f"label_space must be 'all' or 'unseen', got {label_space!r}")
        return logits

    def param_groups(self, lr: float, head_lr_mult: float = 10.0, weight_decay: float = 0.01) -> list[dict]:
        """Optimizer parameter groups: the student's (backbone lr, head lr × head_lr_mult)."""
        return self.student.param_groups(lr, head_lr_mult=head_lr_mult, weight_decay=weight_decay)

    def on_step(self, step: int, max_steps: int) -> None:
        """Hook called by the trainer before every optimizer step (for schedules); no-op here."""

    def checkpoint_state(self) -> dict[str, Tensor]:
        """Trainable state for checkpoints: ``state_dict()`` without the teacher (which is never
        registered) — the student, any trainable method parts and the ``text_embeds`` buffer."""
        return self.state_dict()

    def teacher_identity(self) -> dict:
        """What the teacher was (model name, weights, sha256) for the checkpoint; ``{}`` if none."""
        return dict(getattr(self.teacher, "identity", {}) or {})


def seen_text_logits(method: Method, embeds: Tensor) -> Tensor:
    """Logits over the seen classes only: ``Tensor[B, C_seen, h, w]`` from embeds ``Tensor[B, D, h, w]``."""
    text = method.text_embeds[method.seen].to(embeds.dtype)
    return method.student.logits(embeds, text)


def safe_cross_entropy(logits: Tensor, target: Tensor, ignore_index: int = 255) -> Tensor:
    """Mean cross-entropy over non-ignored pixels; 0 (with a graph) when every pixel is ignored.

    ``F.cross_entropy`` returns NaN for an all-ignored batch (a crop with no seen pixel), which
    would poison the step; this returns ``0 * logits.sum()`` instead.

    Args:
        logits: Tensor[B, C, H, W] float32. target: Tensor[B, H, W] int64 in [0, C) or ignore_index.
    """
    if not bool((target != ignore_index).any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits.float(), target, ignore_index=ignore_index)


def upsample_logits(logits: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear (align_corners=False) resize of logits ``Tensor[B, C, h, w]`` to ``size`` (pixels)."""
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
