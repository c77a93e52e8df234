"""OracleTeacher: a label-derived stand-in for FrozenCLIP, for testing distillation mechanisms offline.

Not in the papers: our test/debug tool (SPEC "zss/teachers/oracle.py"). Each class gets a fixed random
unit vector; the "dense tokens" of a patch are the area-weighted mix of the vectors of the classes present
in it according to the FULL label (unseen classes included), plus Gaussian noise, renormalised. The CLS
token is the same mix over the whole image. A student distilled from it can learn unseen classes only
through the distillation path, which is exactly what the mechanism tests need, but the numbers it yields
say nothing about zero-shot segmentation: see :data:`ORACLE_WARNING`.
"""

from __future__ import annotations

import logging
import math
import zlib
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ORACLE_WARNING", "OracleTeacher"]

log = logging.getLogger(__name__)

ORACLE_WARNING = (
    "OracleTeacher: label-derived stand-in for CLIP; its numbers test distillation mechanisms and are NOT "
    "zero-shot results."
)

_NOISE_SEED_OFFSET = 2**31  # noise stream seed = seed + offset, distinct from the class-vector stream


class OracleTeacher(nn.Module):
    """Label-derived teacher with :class:`zss.teachers.clip.FrozenCLIP`'s interface.

    Args:
        classnames: the benchmark's class names in label-id order (C names); ``text`` looks names up here.
        embed_dim: D, size of the class vectors (our default 64; set the teacher's D to match a student).
        patch_size: p, pixels per patch side; dense output is [B, D, H // p, W // p] (floor, like a ViT).
        noise: expected norm of the Gaussian noise added to the unit-normalised mix before renormalising
            (per-dimension std ``noise / sqrt(D)``), so it is relative to the signal whatever D and the class
            areas; 0 gives exact mixes. [ours: 0.1]
        seed: seed of the class vectors (``torch.Generator``) and, offset by 2**31, of the noise stream.
        ignore_index: label value of ignored pixels (255).
        background: if True, ignored pixels use one extra "background/ignore" vector; if False they
            contribute nothing (a fully ignored patch is then pure noise, or the zero vector at noise 0).

    Attributes:
        needs_full_label (bool, class attribute): True. It reads ``batch["full_label"]`` (all classes, unseen
            included), so the trainer keeps that key in training batches only for a teacher that declares
            this (absent/False elsewhere), and training with it needs ``allow_oracle_teacher=true``.
        embed_dim (int), patch_size (int), classnames (tuple[str, ...]), num_classes (int), noise (float),
        class_embeds: Tensor[C (+1 if background), D] float32 unit rows (buffer; row C = background),
        identity (dict): says it is an oracle (``kind="oracle"``, the warning, its settings).

    Image normalisation: none needed (the images are only shape-checked), so it takes no ``input_mean/std``.

    Noise reproducibility: noise comes from a private CPU ``torch.Generator`` seeded at construction, drawn
    per call in a fixed order (dense [B, h*w, D] first, then cls [B, D]), then moved to the label's device.
    The n-th call after construction (or after :meth:`reset_noise`) therefore gives the same result for the
    same seed and inputs, on any device. No draws happen when ``noise == 0``. The trainer saves the stream's
    position in checkpoints (:meth:`train_state`), so a resumed run draws what the uninterrupted one would.

    Raises:
        ValueError: empty or duplicate classnames, embed_dim/patch_size < 1, noise < 0.
    """

    #: Reads the ground truth of every class: training batches keep ``full_label`` only for such teachers.
    needs_full_label: bool = True

    def __init__(
        self,
        classnames: Sequence[str],
        embed_dim: int = 64,
        patch_size: int = 16,
        noise: float = 0.1,
        seed: int = 0,
        ignore_index: int = 255,
        background: bool = True,
    ) -> None:
        super().__init__()
        names = tuple(str(c) for c in classnames)
        if not names:
            raise ValueError("OracleTeacher: classnames must be non-empty (the benchmark's class list)")
        dup = sorted({c for c in names if names.count(c) > 1})
        if dup:
            raise ValueError(f"OracleTeacher: duplicate class names {dup}")
        if embed_dim < 1 or patch_size < 1:
            raise ValueError(f"OracleTeacher: embed_dim={embed_dim} and patch_size={patch_size} must be >= 1")
        if noise < 0:
            raise ValueError(f"OracleTeacher: noise={noise} must be >= 0")
        self.classnames = names
        self.num_classes = len(names)
        self.embed_dim = int(embed_dim)
        self.patch_size = int(patch_size)
        self.noise = float(noise)
        self.seed = int(seed)
        self.ignore_index = int(ignore_index)
        self.background = bool(background)
        self._index = {c: i for i, c in enumerate(names)}

        rows = list(names) + (["__background__"] if self.background else [])
        vecs = self.name_vectors(rows)
        self.register_buffer("class_embeds", vecs, persistent=False)  # [K, D]
        self._noise_gen = torch.Generator()
        self.reset_noise()

        self.identity: dict[str, Any] = {
            "kind": "oracle",
            "model_name": "oracle",
            "pretrained": None,
            "warning": ORACLE_WARNING,
            "num_classes": self.num_classes,
            "embed_dim": self.embed_dim,
            "patch_size": self.patch_size,
            "noise": self.noise,
            "seed": self.seed,
            "background": self.background,
        }
        log.warning(ORACLE_WARNING)
        self.eval()

    def reset_noise(self, seed: int | None = None) -> None:
        """Restart the noise stream (seed: new base seed; None keeps the constructor's)."""
        base = self.seed if seed is None else int(seed)
        self._noise_gen.manual_seed(base + _NOISE_SEED_OFFSET)

    def train_state(self) -> dict[str, Tensor]:
        """The noise stream's position for a training checkpoint: ``{"noise_gen": Tensor[N] uint8}``."""
        return {"noise_gen": self._noise_gen.get_state()}

    def load_train_state(self, state: dict[str, Tensor]) -> None:
        """Restore :meth:`train_state`: the next noise draws continue the saved stream (exact resume)."""
        self._noise_gen.set_state(state["noise_gen"].cpu())

    def train(self, mode: bool = True) -> "OracleTeacher":
        """No-op: the teacher always stays in eval mode. Returns self."""
        return super().train(False)

    def _noise(self, shape: tuple[int, ...], like: Tensor) -> Tensor:
        n = torch.randn(shape, generator=self._noise_gen)
        return (self.noise / math.sqrt(self.embed_dim) * n).to(device=like.device, dtype=like.dtype)

    @torch.no_grad()
    def forward(self, images: Tensor | None, full_label: Tensor | None = None) -> dict[str, Any]:
        """Oracle CLS and dense embeddings from the full label.

        Args:
            images: Tensor[B, 3, H, W] (only its shape is checked; may be None).
            full_label: Tensor[B, H, W] int64, ALL classes (unseen included), ``ignore_index`` for ignored
                pixels. Required.
        Returns:
            dict with ``cls`` Tensor[B, D] float32 and ``dense`` Tensor[B, D, h, w] float32 (both
            L2-normalised over D), ``h = H // p``, ``w = W // p`` (patches). Dense token of a patch =
            normalise(normalise(sum_k area_fraction_k * class_embeds[k]) + noise/sqrt(D) * N(0, I)), area fractions over
            the p x p pixels of the patch (rows/columns beyond h*p, w*p are dropped, as a ViT's patchify does);
            cls = the same over the whole H x W image.
        Raises:
            ValueError: missing label, wrong shapes, or label values outside [0, C) other than ignore_index.
        """
        if full_label is None:
            raise ValueError("OracleTeacher.forward needs full_label (batch['full_label'], Tensor[B, H, W] int64)")
        if full_label.ndim != 3:
            raise ValueError(f"OracleTeacher: full_label must be Tensor[B, H, W], got {tuple(full_label.shape)}")
        B, H, W = full_label.shape
        if images is not None and (images.shape[0] != B or tuple(images.shape[-2:]) != (H, W)):
            raise ValueError(
                f"OracleTeacher: images {tuple(images.shape)} and full_label {tuple(full_label.shape)} disagree"
            )
        p = self.patch_size
        h, w = H // p, W // p
        if h < 1 or w < 1:
            raise ValueError(f"OracleTeacher: label size {(H, W)} is smaller than one patch ({p} px)")
        C = self.num_classes
        K = self.class_embeds.shape[0]  # C or C+1
        dev = full_label.device

        lab = full_label.long()
        ign = lab == self.ignore_index
        bad = ~ign & ((lab < 0) | (lab >= C))
        if bool(bad.any()):
            vals = torch.unique(lab[bad])[:10].tolist()
            raise ValueError(
                f"OracleTeacher: label values {vals} are outside [0, {C}) and not ignore_index={self.ignore_index}"
            )
        # bin C = background vector (if any), bin K = "contributes nothing" (dropped)
        lab = torch.where(ign, torch.full_like(lab, C if self.background else K), lab)
        nb = K + 1

        # Per-patch class histogram: equivalent to avg_pool2d(one_hot(label), p) but without the
        # [B, K, H, W] float intermediate (bincount over (image, patch, class) bins).
        lc = lab[:, : h * p, : w * p]
        rows = torch.arange(h * p, device=dev) // p
        cols = torch.arange(w * p, device=dev) // p
        pidx = rows[:, None] * w + cols[None, :]  # [h*p, w*p]
        bidx = torch.arange(B, device=dev).view(B, 1, 1)
        flat = ((bidx * (h * w) + pidx) * nb + lc).reshape(-1)
        counts = torch.bincount(flat, minlength=B * h * w * nb).view(B, h * w, nb)[..., :K]
        frac = counts.float() / float(p * p)  # [B, h*w, K] area fractions
        emb = self.class_embeds.float()
        dense = frac @ emb  # [B, h*w, D]

        gcounts = torch.bincount((bidx.view(B, 1) * nb + lab.view(B, -1)).reshape(-1), minlength=B * nb)
        gfrac = gcounts.view(B, nb)[:, :K].float() / float(H * W)  # [B, K]
        cls = gfrac @ emb  # [B, D]

        if self.noise > 0:  # relative to the unit-norm mix: ||noise|| ~ self.noise whatever D or the areas
            dense = F.normalize(dense, dim=-1) + self._noise(tuple(dense.shape), dense)
            cls = F.normalize(cls, dim=-1) + self._noise(tuple(cls.shape), cls)
        dense = F.normalize(dense, dim=-1).transpose(1, 2).reshape(B, self.embed_dim, h, w).contiguous()
        cls = F.normalize(cls, dim=-1)
        return {"cls": cls, "dense": dense, "h": h, "w": w}

    def name_vectors(self, names: Sequence[str]) -> Tensor:
        """One fixed random unit vector per class NAME: ``Tensor[len(names), D] float32`` (CPU).

        Each vector is drawn from a ``torch.Generator`` seeded with ``seed`` and the CRC-32 of the
        name, so "person" gets the same vector in every vocabulary (VOC, Context, a user's list):
        that is what lets an oracle-trained checkpoint be evaluated across datasets.
        """
        out = []
        for n in names:
            g = torch.Generator().manual_seed((self.seed * 1_000_003 + zlib.crc32(str(n).encode())) % 2**63)
            out.append(torch.randn(self.embed_dim, generator=g))
        return F.normalize(torch.stack(out), dim=-1)

    def text(self, classnames: Sequence[str], templates: Sequence[str] = ()) -> Tensor:
        """The class vectors for ``classnames`` (templates are ignored): any name works, names of
        the constructor's list return exactly the vectors its dense tokens are built from.

        Args:
            classnames: class names. templates: ignored (interface parity with FrozenCLIP).
        Returns:
            Tensor[len(classnames), D] float32, unit rows, on the module's device.
        """
        return self.name_vectors([str(c) for c in classnames]).to(self.class_embeds.device)

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, embed_dim={self.embed_dim}, patch_size={self.patch_size}, "
            f"noise={self.noise}, seed={self.seed}, background={self.background}"
        )
