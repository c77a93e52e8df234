"""Chimera-Seg: a CLIP-free body grafted onto CLIP's last blocks (CLIP Semantic Head) (docs/methods.md (Chimera-Seg)).

Training (per batch) [paper for the parts, ours for every detail]:

* **SGD** (selective global distillation): per image, the cosine of every CSH embed with the frozen CLIP
  CLS token; the top r(t) fraction of (valid) positions is kept, pooled (mean, or CLS-query attention over
  the kept set) and distilled to the CLS token with CLIP-ZSS's GLM objective (InfoNCE against the batch's
  and a FIFO bank's CLS tokens; :class:`~zss.methods.losses.GlobalDistillLoss`). r(t) decays from r0 to
  r_min over training (:func:`keep_ratio`, updated by :meth:`ChimeraSeg.on_step`).
* **SAM** (semantic alignment): the CSH's dense embeds are aligned with the frozen text embeds of the seen
  classes: CE and/or ZegCLIP's NEL on the seen labels (unseen / unlabelled pixels ignored).

Inference: body + CSH + text embeds of all classes (:meth:`Method.predict` unchanged); the full CLIP image
encoder is not needed, only the CSH's frozen copies of its last k blocks, which are in the checkpoint.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zss.methods.base import Method, safe_cross_entropy, seen_text_logits, upsample_logits
from zss.methods.losses import GlobalDistillLoss, nearest_down, nel_loss
from zss.methods.settings import Settings, coerce_settings
from zss.models.chimera import ChimeraStudent, CLIPSemanticHead

__all__ = [
    "ChimeraSeg",
    "CSHSettings",
    "SGDSettings",
    "SAMSettings",
    "keep_ratio",
    "select_top_ratio",
    "R_SCHEDULES",
    "SAM_LOSSES",
]

#: Shapes of the keep-ratio decay r(t).
R_SCHEDULES = ("linear", "cosine")
#: Dense alignment losses of SAM.
SAM_LOSSES = ("ce", "nel", "ce+nel")


def keep_ratio(
    step: int,
    max_steps: int,
    r0: float = 1.0,
    r_min: float = 0.25,
    schedule: str = "linear",
    decay_fraction: float = 1.0,
) -> float:
    """SGD keep ratio r(t): decays from ``r0`` (step 0) to ``r_min`` (step ``decay_fraction·max_steps`` and after).

    With progress ``p = min(1, step / (decay_fraction · max_steps))``:
    ``linear``: ``r0 + (r_min - r0)·p``; ``cosine``: ``r_min + (r0 - r_min)·(1 + cos(π p))/2``. Both are
    non-increasing in ``step``. Source: docs/methods.md (Chimera-Seg) ("r(t) decays from r0 to r_min") [paper]; the
    schedule shapes and ``decay_fraction`` are not in the paper: our choices.

    Args:
        step: optimizer step (0-based; negative is treated as 0). max_steps: training length in steps (>= 1).
        r0, r_min: fractions of positions, ``0 < r_min <= r0 <= 1``.
        schedule: ``"linear"`` or ``"cosine"``. decay_fraction: in (0, 1], fraction of training spent decaying.
    Returns:
        r as a float fraction in ``[r_min, r0]``.
    Raises:
        ValueError: bad fractions, ``max_steps < 1`` or an unknown schedule.
    """
    if not 0.0 < r_min <= r0 <= 1.0:
        raise ValueError(
            f"keep_ratio: need 0 < r_min <= r0 <= 1 (method.r_min / method.r0), got r0={r0}, r_min={r_min}"
        )
    if schedule not in R_SCHEDULES:
        raise ValueError(f"keep_ratio: unknown schedule {schedule!r} (method.r_schedule); choose {R_SCHEDULES}")
    if max_steps < 1 or not 0.0 < decay_fraction <= 1.0:
        raise ValueError(
            f"keep_ratio: need max_steps >= 1 and 0 < decay_fraction <= 1, got {max_steps}, {decay_fraction}"
        )
    p = min(1.0, max(0, step) / (decay_fraction * max_steps))
    if schedule == "linear":
        return float(r0 + (r_min - r0) * p)
    return float(r_min + (r0 - r_min) * 0.5 * (1.0 + math.cos(math.pi * p)))


@torch.no_grad()
def select_top_ratio(embeds: Tensor, cls: Tensor, ratio: float, valid: Tensor | None = None) -> Tensor:
    """Per image, the ``ratio`` fraction of positions whose embed is most cosine-similar to the CLS token.

    Each image keeps ``n_i = clamp(ceil(ratio · V_i), 1, V_i)`` positions, V_i = its number of valid positions
    (all positions when ``valid`` is None; an image with no valid position is treated as all-valid). Ties are
    broken by position order (``torch.sort(stable=True)``). Source: SGD, docs/methods.md (Chimera-Seg) [paper]; the
    rounding rule is
    not in the paper: our default.

    Args:
        embeds: ``Tensor[B, D, h, w]`` or ``Tensor[B, D, L]`` dense embeds (need not be normalised: cosine).
        cls: ``Tensor[B, D]`` CLS tokens. ratio: fraction in (0, 1].
        valid: optional ``Tensor[B, h, w]`` / ``Tensor[B, L]`` bool, True = position may be selected.
    Returns:
        ``Tensor[B, h, w]`` (or ``[B, L]``) bool mask of the kept positions (no graph).
    Raises:
        ValueError: ``ratio`` outside (0, 1] or mismatched shapes.
    """
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"select_top_ratio: ratio must be in (0, 1], got {ratio}")
    spatial = embeds.shape[2:]
    flat = embeds.flatten(2).float()  # [B, D, L]
    if cls.shape != flat.shape[:2]:
        raise ValueError(f"select_top_ratio: cls {tuple(cls.shape)} does not match embeds {tuple(embeds.shape)}")
    sim = torch.einsum("bdl,bd->bl", F.normalize(flat, dim=1), F.normalize(cls.float(), dim=-1))  # [B, L]
    B, L = sim.shape
    if valid is None:
        v = torch.ones_like(sim, dtype=torch.bool)
    else:
        v = valid.reshape(B, -1).bool()
        if v.shape != sim.shape:
            raise ValueError(f"select_top_ratio: valid {tuple(valid.shape)} does not match positions {tuple(spatial)}")
        v = v | ~v.any(dim=1, keepdim=True)
    n_valid = v.sum(dim=1)  # [B]
    n_keep = torch.clamp(torch.ceil(ratio * n_valid.float()).long(), min=1)
    n_keep = torch.minimum(n_keep, n_valid)
    order = torch.sort(sim.masked_fill(~v, float("-inf")), dim=1, descending=True, stable=True).indices  # [B, L]
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(L, device=sim.device).expand(B, L))
    keep = (rank < n_keep[:, None]) & v
    return keep.reshape(B, *spatial)


@dataclass(frozen=True)
class CSHSettings(Settings):
    """The CLIP Semantic Head (config section "CLIP Semantic Head": ``csh_blocks``, ``csh_input`` and the unprefixed
    keys below; :class:`~zss.models.chimera.CLIPSemanticHead`). Tags: [paper] = the Chimera-Seg abstract,
    [design] = docs/methods.md (Chimera-Seg), ours = not in the paper: our default.

    Fields:
        blocks: k, last CLIP blocks in the CSH (``csh_blocks``) [paper: a knob; value ours: 2 of ViT-B/16's 12].
        input: ``"decoder"`` (body decoder output) or ``"backbone"`` (last backbone map) (``csh_input``) [ours:
            decoder].
        prepend_cls: class token (init from CLIP's class_embedding, trainable) in the CSH sequence [ours: True].
        maskclip_last: MaskCLIP value path in the last CSH block [ours: False].
        pos_embed: ``"frozen"`` / ``"learnable"`` / ``"none"``: add CLIP's interpolated positional embedding
            [ours: frozen].
        adapter_norm: LayerNorm after the adapter [design: "linear/1x1 conv to CLIP width + LN": True].
        adapter_hidden: None = one Linear (= 1x1 conv) adapter [design]; an int = 2-layer MLP width [ours].
        resample: body map -> token grid, ``"auto"`` / ``"area"`` / ``"bilinear"`` [ours: auto].
        token_stride: CSH token grid stride in pixels; None = the teacher's patch size [ours].
    """

    PREFIX: ClassVar[str] = "csh_"
    UNPREFIXED: ClassVar[tuple[str, ...]] = (
        "prepend_cls",
        "maskclip_last",
        "pos_embed",
        "adapter_norm",
        "adapter_hidden",
        "resample",
        "token_stride",
    )

    blocks: int = 2
    input: str = "decoder"
    prepend_cls: bool = True
    maskclip_last: bool = False
    pos_embed: str = "frozen"
    adapter_norm: bool = True
    adapter_hidden: int | None = None
    resample: str = "auto"
    token_stride: int | None = None


@dataclass(frozen=True)
class SGDSettings(Settings):
    """Selective global distillation (config section "SGD": ``r*`` and ``sgd_*`` keys, ``bank_size``).

    Fields:
        r0, r_min: keep ratio at the start / the end [paper: r(t) decays from r0 to r_min; values ours: 1.0, 0.25].
        r_schedule: ``"linear"`` / ``"cosine"`` (:func:`keep_ratio`) [ours: linear].
        r_decay_fraction: fraction of training over which r decays, then constant r_min [ours: 1.0].
        weight: weight of L_SGD (``sgd_weight``) [ours: 1.0].
        tau: InfoNCE temperature (``sgd_tau``) [ours: 0.07, as our CLIP-ZSS GLM].
        bank_size: CLS FIFO bank (negatives), tokens [ours: 1024, as our CLIP-ZSS GLM].
        pool: ``"mean"`` over the kept positions or ``"attention"`` (CLS-query softmax pooling as CLIP-ZSS's GLM,
            restricted to the kept set) (``sgd_pool``) [ours: mean].
        attn_scale: attention scale for ``pool="attention"`` (``sgd_attn_scale``); None = 1/√D [CLIP-ZSS GLM
            summary].
        mask_padding: never select token cells that are mostly (> half) crop padding (``sgd_mask_padding``)
            [ours: True].
    """

    PREFIX: ClassVar[str] = "sgd_"
    UNPREFIXED: ClassVar[tuple[str, ...]] = ("r0", "r_min", "r_schedule", "r_decay_fraction", "bank_size")

    r0: float = 1.0
    r_min: float = 0.25
    r_schedule: str = "linear"
    r_decay_fraction: float = 1.0
    weight: float = 1.0
    tau: float = 0.07
    bank_size: int = 1024
    pool: str = "mean"
    attn_scale: float | None = None
    mask_padding: bool = True


@dataclass(frozen=True)
class SAMSettings(Settings):
    """Semantic alignment with the frozen seen-class text embeds (config section "SAM": ``sam_loss`` and the
    unprefixed loss keys).

    Fields:
        loss: ``"ce"``, ``"nel"`` or ``"ce+nel"`` (``sam_loss``) [paper: "CE/NEL"; choice ours: ce, why:
            docs/methods.md "NEL"].
        ce_weight, nel_weight: [ours: 1.0, 1.0].
        focal_weight, dice_weight: NEL's inner weights [ZegCLIP: 100, 1].
        focal_reduction: see :func:`zss.methods.losses.sigmoid_focal_loss` [ours: zegclip, ZegCLIP's
            normalisation].
        nel_bias: logit offset before NEL's sigmoid, see :func:`zss.methods.losses.nel_loss` [ours: 0].
        loss_resolution: ``"label"`` (logits bilinearly upsampled to the label size) or ``"logits"`` (labels
            nearest-downsampled to the CSH grid) [ours: label].
    """

    PREFIX: ClassVar[str] = "sam_"
    UNPREFIXED: ClassVar[tuple[str, ...]] = (
        "ce_weight",
        "nel_weight",
        "focal_weight",
        "dice_weight",
        "focal_reduction",
        "nel_bias",
        "loss_resolution",
    )

    loss: str = "ce"
    ce_weight: float = 1.0
    nel_weight: float = 1.0
    focal_weight: float = 100.0
    dice_weight: float = 1.0
    focal_reduction: str = "zegclip"
    nel_bias: float = 0.0
    loss_resolution: str = "label"


class ChimeraSeg(Method):
    """Chimera-Seg training method (docs/methods.md (Chimera-Seg)). Every number not in the abstract is ours and
    marked so in the docstrings of its grouped settings.

    The given ``student`` (a zss :class:`~zss.models.student.Student`) becomes the *body*; a
    :class:`~zss.models.chimera.CLIPSemanticHead` is built from the teacher's last ``csh.blocks`` blocks and the
    two are wrapped into a :class:`~zss.models.chimera.ChimeraStudent`, stored as ``self.student`` (so the
    trainer, checkpoints and :meth:`Method.predict` see one student). The CSH's frozen CLIP copies are in
    ``state_dict``; the teacher itself is not (it is only read for the CLS token during training and for the
    copy at construction). Built from the flat keys of configs/method/chimera_seg.yaml with
    :meth:`~zss.methods.base.Method.from_flat`.

    Args:
        student: the body, a zss Student (its projection is removed; see ChimeraStudent).
        teacher: a :class:`~zss.teachers.clip.FrozenCLIP` (ViT tower; required even for inference rebuilds,
            where its weights may be random because the CSH state comes from the checkpoint).
        classnames, unseen, templates, text_embeds, ignore_index: see :class:`~zss.methods.base.Method`.
        csh: :class:`CSHSettings`. sgd: :class:`SGDSettings`. sam: :class:`SAMSettings` (each also a mapping of
            its fields).
        transductive: optional transductive self-training settings (off by default), see
            :meth:`~zss.methods.base.Method.configure_transductive`; applied to the CSH dense embeds (the
            embeds SAM aligns, i.e. the test-time logits).
        debug: run the NEL target check (a host sync) inside :meth:`training_step` [ours: False; the step's
            targets are valid by construction, and without it the step makes no host sync].

    Raises:
        ValueError: no/unsupported teacher, bad option values, text dim != the teacher's joint dim.
        TypeError: a group of the wrong type or with an unknown field.
    """

    #: Values of keys a checkpoint's stored method config may lack (:mod:`zss.loading`): the constructor defaults
    #: of the time before the key was in configs/method/chimera_seg.yaml.
    CHECKPOINT_DEFAULTS: dict = dict(sam_loss="ce+nel")
    #: grouped settings (:meth:`~zss.methods.base.Method.from_flat`)
    SETTINGS = {"csh": CSHSettings, "sgd": SGDSettings, "sam": SAMSettings}

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module | None,
        classnames: Sequence[str],
        unseen: Sequence[int],
        templates: Sequence[str] = ("a photo of a {}.",),
        text_embeds: Tensor | None = None,
        ignore_index: int = 255,
        *,
        csh: CSHSettings = CSHSettings(),
        sgd: SGDSettings = SGDSettings(),
        sam: SAMSettings = SAMSettings(),
        transductive: Mapping | None = None,
        debug: bool = False,
    ) -> None:
        csh = coerce_settings(csh, CSHSettings, "ChimeraSeg(csh=...)")
        sgd = coerce_settings(sgd, SGDSettings, "ChimeraSeg(sgd=...)")
        sam = coerce_settings(sam, SAMSettings, "ChimeraSeg(sam=...)")
        if teacher is None:
            raise ValueError(
                "ChimeraSeg needs a FrozenCLIP teacher to build its CLIP Semantic Head (even for "
                "inference rebuilds: random weights of the same architecture suffice)"
            )
        if sam.loss not in SAM_LOSSES:
            raise ValueError(f"ChimeraSeg: sam_loss={sam.loss!r} (method.sam_loss); choose {SAM_LOSSES}")
        if sgd.pool not in ("mean", "attention"):
            raise ValueError(f"ChimeraSeg: sgd_pool={sgd.pool!r} (method.sgd_pool); choose 'mean' or 'attention'")
        if sam.loss_resolution not in ("label", "logits"):
            raise ValueError(f"ChimeraSeg: loss_resolution={sam.loss_resolution!r}; choose 'label' or 'logits'")
        keep_ratio(0, 1, sgd.r0, sgd.r_min, sgd.r_schedule, sgd.r_decay_fraction)  # validates the schedule
        head = CLIPSemanticHead(
            teacher,
            ChimeraStudent.body_channels(student, csh.input),
            num_blocks=csh.blocks,
            maskclip_last=csh.maskclip_last,
            prepend_cls=csh.prepend_cls,
            pos_embed=csh.pos_embed,
            adapter_norm=csh.adapter_norm,
            adapter_hidden=csh.adapter_hidden,
            resample=csh.resample,
        )
        chimera = ChimeraStudent(student, head, csh_input=csh.input, token_stride=csh.token_stride)
        super().__init__(
            chimera, teacher, classnames, unseen, templates, text_embeds, ignore_index, transductive=transductive
        )
        dim = int(self.text_embeds.shape[1])
        if dim != chimera.embed_dim:
            raise ValueError(f"ChimeraSeg: text embeds have D={dim} but the CSH projects to D={chimera.embed_dim}")
        self.r0, self.r_min, self.r_schedule, self.r_decay_fraction = (
            float(sgd.r0),
            float(sgd.r_min),
            sgd.r_schedule,
            float(sgd.r_decay_fraction),
        )
        self.current_keep_ratio = float(sgd.r0)
        self.sgd_weight, self.sgd_mask_padding = float(sgd.weight), bool(sgd.mask_padding)
        self.sgd_pool = sgd.pool
        # mean pooling == CLS-query attention pooling with scale 0 (uniform softmax over the kept set)
        self.sgd = GlobalDistillLoss(
            dim, tau=sgd.tau, bank_size=sgd.bank_size, attn_scale=0.0 if sgd.pool == "mean" else sgd.attn_scale
        )
        self.sam_loss = sam.loss
        self.ce_weight, self.nel_weight = float(sam.ce_weight), float(sam.nel_weight)
        self.focal_weight, self.dice_weight, self.focal_reduction = (
            float(sam.focal_weight),
            float(sam.dice_weight),
            sam.focal_reduction,
        )
        self.nel_bias = float(sam.nel_bias)
        self.loss_resolution = sam.loss_resolution
        self.debug = bool(debug)

    # ------------------------------------------------------------------ schedule
    def on_step(self, step: int, max_steps: int) -> None:
        """Set the SGD keep ratio r(t) for this optimizer step (called by the trainer before each step)."""
        self.current_keep_ratio = keep_ratio(
            step, max_steps, self.r0, self.r_min, self.r_schedule, self.r_decay_fraction
        )

    # ------------------------------------------------------------------ training
    def _valid_cells(self, valid: Tensor, grid: tuple[int, int]) -> Tensor | None:
        """``Tensor[B, gh, gw]`` bool: token cells more than half inside the image (None with
        ``sgd_mask_padding`` off). Always built: an all-True mask selects exactly what None does, and asking
        whether every pixel is valid would read a value back to the host."""
        if not self.sgd_mask_padding:
            return None
        return F.adaptive_avg_pool2d(valid[:, None].float(), grid)[:, 0] > 0.5

    def training_step(self, batch: dict) -> dict[str, Tensor]:
        """One Chimera-Seg step: SGD (selected CSH embeds -> CLIP CLS) + SAM (CSH embeds vs seen text).

        Args:
            batch: ``image`` Tensor[B, 3, H, W] float32 (normalised), ``label`` Tensor[B, H, W] int64 (seen-only
                benchmark ids, 255 elsewhere), optional ``valid`` Tensor[B, H, W] bool (False on padding).

        Returns:
            dict of scalar tensors: ``loss`` = sgd_weight·L_SGD + L_SAM (graph), with
            L_SAM = ce_weight·CE + nel_weight·NEL (terms per ``sam_loss``); detached ``loss_sgd``, ``loss_sam``,
            ``loss_ce``, ``loss_nel``, ``loss_focal``, ``loss_dice`` (0 when disabled), ``sgd_acc`` (fraction of
            images whose pooled embed is closest to their own CLS in the batch), ``keep_ratio`` (r(t)) and
            ``kept_tokens`` (mean kept positions per image), plus ``loss_st`` / ``st_pixels`` of the
            transductive term (``loss`` += its weight · ``loss_st`` when enabled; see
            :meth:`~zss.methods.base.Method.add_self_training`).
        """
        images, label = batch["image"], batch["label"]  # [B, 3, H, W], [B, H, W]
        valid = batch.get("valid")
        valid = torch.ones_like(label, dtype=torch.bool) if valid is None else valid.to(label.device).bool()
        embeds = self.student(images)  # [B, D, gh, gw] CSH embeds, L2-normalised
        grid = tuple(embeds.shape[-2:])
        zero = embeds.new_zeros((), dtype=torch.float32)
        out = {k: zero for k in ("loss_ce", "loss_nel", "loss_focal", "loss_dice")}

        # ---- SGD
        with torch.no_grad():
            cls = self.teacher(images, full_label=self.full_label_for_teacher(batch))["cls"].detach().float()  # [B, D]
        r = self.current_keep_ratio
        keep = select_top_ratio(embeds.detach(), cls, r, self._valid_cells(valid, grid))  # [B, gh, gw]
        sgd = self.sgd(embeds, cls, keep)
        loss_sgd = sgd["loss_glm"]

        # ---- SAM
        logits = seen_text_logits(self, embeds).float()  # [B, N_seen, gh, gw]
        target = self.to_seen_ids(label)
        target = target.masked_fill(~valid, self.ignore_index)
        if self.loss_resolution == "label":
            logits = upsample_logits(logits, tuple(target.shape[-2:]))
        else:
            target = nearest_down(target, grid)
        loss_sam = zero
        if "ce" in self.sam_loss.split("+"):
            loss_ce = safe_cross_entropy(logits, target, self.ignore_index)
            loss_sam = loss_sam + self.ce_weight * loss_ce
            out["loss_ce"] = loss_ce.detach()
        if "nel" in self.sam_loss.split("+"):
            nel = nel_loss(
                logits,
                target,
                self.ignore_index,
                None,
                self.focal_weight,
                self.dice_weight,
                focal_reduction=self.focal_reduction,
                bias=self.nel_bias,
                validate=self.debug,
            )
            loss_sam = loss_sam + self.nel_weight * nel["loss_nel"]
            out.update(loss_nel=nel["loss_nel"].detach(), loss_focal=nel["loss_focal"], loss_dice=nel["loss_dice"])

        out.update(
            loss=self.sgd_weight * loss_sgd + loss_sam,
            loss_sgd=loss_sgd.detach(),
            loss_sam=loss_sam.detach(),
            sgd_acc=sgd["glm_acc"],
            keep_ratio=embeds.new_full((), r, dtype=torch.float32),  # a fill, not a host-to-device copy
            kept_tokens=keep.flatten(1).sum(1).float().mean(),
        )
        return self.add_self_training(out, embeds, label, valid)
