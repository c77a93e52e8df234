"""CLIP-RC (CVPR 2024) and, with switches, ZegCLIP: the methods that keep CLIP at test time (docs/clip_rc.md).

Model (``self.student`` = :class:`ClipRCNet`): a frozen CLIP ViT with deep visual prompts and 4×4 region
tokens (:class:`~zss.teachers.prompted.PromptedCLIPEncoder`) feeding a region × class query decoder
(:class:`~zss.models.clip_rc_decoder.RegionTextDecoder`). A training-only recovery decoder
(:class:`~zss.models.clip_rc_decoder.RecoveryDecoder`) reconstructs the decoder inputs (L1 loss).

Training loss [public code ``SegLoss``]: ``focal_weight·focal + dice_weight·dice + recovery_weight·(L1_q +
L1_v)``, focal α 0.25 γ 2 and dice on sigmoid scores of the logits bilinearly upsampled to the label size.
Pixels labelled ``ignore_index`` (unseen classes in the inductive setting, unlabelled pixels, padding)
are NEGATIVES of every class, as the public code does (its targets are all-zero there); focal is the
per-(image, class) pixel mean summed over classes and divided by the number of (image, present class)
pairs, dice is averaged over the present pairs. Inductive training queries the seen classes only.

Inference: sigmoid SCORES in probability space for all classes, the logits of ``predict``, so ``trainer.seen_bias``
(subtracted from the seen classes by the evaluator) is in the same units as the public code's 0.1.

Transductive ("st") variant [public code ``self_training=True``]: queries every class, seen labels keep
their ids, and unlabelled pixels are labelled online from the detached sigmoid scores of the same forward
pass (:func:`st_pseudo_labels`; the public code picks the unseen-GT pixels, which zss never reveals to a
training step), then the same losses. ``method.transductive.gt_unseen_mask=true`` reproduces the public
code's rule instead (:func:`st_pseudo_labels_gt_mask`): it READS THE UNSEEN GROUND TRUTH, for comparison with
the published transductive numbers only.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import ClassVar, Mapping, Sequence

import torch
from torch import Tensor, nn

from zss.methods.base import LABEL_SPACES, MASKED_LOGIT, Method, upsample_logits
from zss.methods.losses import dice_loss, sigmoid_focal_loss
from zss.methods.settings import Settings, coerce_settings
from zss.models.clip_rc_decoder import RecoveryDecoder, RegionTextDecoder, recovery_loss
from zss.teachers.clip import FrozenCLIP
from zss.teachers.prompted import IMAGENET_MEAN, IMAGENET_STD, PromptedCLIPEncoder, visual_fingerprint

__all__ = [
    "CLIP_INPUT_NORMS",
    "ClipRC",
    "ClipRCDecoderSettings",
    "ClipRCEncoderSettings",
    "ClipRCLossSettings",
    "ClipRCNet",
    "focal_dice_ignore_as_negative",
    "st_pseudo_labels",
    "st_pseudo_labels_gt_mask",
]

log = logging.getLogger(__name__)

#: What the CLIP tower receives: ImageNet-normalised pixels (public code) or CLIP's own normalisation.
CLIP_INPUT_NORMS = ("imagenet", "clip")
_FROZEN_PREFIX = "student.encoder.visual."


def focal_dice_ignore_as_negative(
    logits: Tensor, target: Tensor, ignore_index: int = 255, alpha: float = 0.25, gamma: float = 2.0
) -> tuple[Tensor, Tensor]:
    """Focal and dice losses with ``ignore_index`` pixels as negatives of every class (public code).

    Built on :func:`zss.methods.losses.sigmoid_focal_loss` / :func:`~zss.methods.losses.dice_loss` (which
    EXCLUDE ignored pixels): ignored pixels are mapped to an extra, masked-out "void" channel, so every
    pixel is valid and counts as a negative for the C real classes. Focal: ``Σ_{b,c} mean_px FL / N_m``;
    dice: ``Σ_{present (b,c)} [1 - (2Σpt + 1)/(Σp + Σt + 1)] / N_m``, N_m = number of present (image,
    class) pairs (>= 1). Source: public CLIP-RC / ZegCLIP ``criterion.py``.

    Args:
        logits: Tensor[B, C, H, W] (computed in float32). target: Tensor[B, H, W] int64 in [0, C) or
            ``ignore_index``. alpha, gamma: focal parameters (0.25, 2).
    Returns:
        (focal, dice): scalar float32 tensors with a graph.
    Raises:
        ValueError: shapes differ or target ids are out of range.
    """
    B, C, H, W = logits.shape
    void = target == ignore_index
    t = target.masked_fill(void, C)
    x = torch.cat([logits.float(), logits.new_zeros(B, 1, H, W, dtype=torch.float32)], dim=1)  # [B, C+1, H, W]
    cmask = torch.ones(B, C + 1, dtype=torch.bool, device=logits.device)
    cmask[:, C] = False
    focal = sigmoid_focal_loss(x, t, alpha, gamma, ignore_index=-1, class_mask=cmask, reduction="zegclip")
    dice = dice_loss(x, t, ignore_index=-1, class_mask=cmask, present_only=True)
    return focal, dice


@torch.no_grad()
def st_pseudo_labels(
    logits: Tensor,
    label: Tensor,
    unseen: Tensor,
    valid: Tensor | None = None,
    threshold: float = 0.5,
    ignore_index: int = 255,
) -> Tensor:
    """Training targets of the transductive variant: the seen labels plus online unseen pseudo labels.

    A pixel labelled ``ignore_index`` inside the image (``valid``) gets the class of its highest sigmoid
    score over ALL channels when that class is unseen and the score is ``>= threshold``; every other pixel
    keeps its label. The public code instead labels exactly the pixels whose ground truth is an unseen class
    (its training labels mark them -1) with the argmax over the unseen channels, no threshold; zss never
    gives a training step the unseen pixels' mask (the trainer drops ``full_label``), so the candidate
    pixels are all unlabelled ones and the score threshold (ours: 0.5, "the model calls it positive")
    keeps background off the unseen classes. Source: public CLIP-RC ``decode_seg.py forward_train``
    (self_training), adapted as above: ours.

    Args:
        logits: Tensor[B, C_all, H, W] (any float) at the label size (detached by the caller or not).
        label: Tensor[B, H, W] int64 (benchmark ids of seen classes, ``ignore_index`` elsewhere).
        unseen: Tensor[U] int64 unseen ids. valid: Tensor[B, H, W] bool (False on padding) or None.
        threshold: minimum sigmoid score, a probability in [0, 1].
    Returns:
        Tensor[B, H, W] int64: ``label`` with pseudo-labelled pixels set to an unseen id.
    """
    prob = logits.float().sigmoid()
    C = prob.shape[1]
    is_unseen = torch.zeros(C, dtype=torch.bool, device=prob.device)
    is_unseen[unseen] = True
    score, pred = prob.max(dim=1)  # [B, H, W]
    keep = (label == ignore_index) & is_unseen[pred] & (score >= threshold)
    if valid is not None:
        keep &= valid.to(keep.device).bool()
    return torch.where(keep, pred, label)


@torch.no_grad()
def st_pseudo_labels_gt_mask(logits: Tensor, label: Tensor, full_label: Tensor, unseen: Tensor) -> Tensor:
    """Training targets of the public code's self-training, which READS UNSEEN GROUND TRUTH: every pixel whose
    ground truth is an unseen class gets the argmax over the unseen channels (no threshold); every other pixel
    keeps its label. Only for comparing with the published transductive numbers
    (``method.transductive.gt_unseen_mask=true``); not a zero-shot setting. Source: public CLIP-RC / ZegCLIP
    ``decode_seg.py forward_train`` (self_training: labels -1 = unseen ground truth -> argmax over unseen).

    Args:
        logits: Tensor[B, C_all, H, W] at the label size. label: Tensor[B, H, W] int64 (seen ids, 255 elsewhere).
        full_label: Tensor[B, H, W] int64, all classes (benchmark ids, 255 ignored). unseen: Tensor[U] int64.
    Returns:
        Tensor[B, H, W] int64.
    Raises:
        ValueError: ``full_label`` and ``label`` shapes differ.
    """
    if full_label.shape != label.shape:
        raise ValueError(
            f"st_pseudo_labels_gt_mask: full_label {tuple(full_label.shape)} and label {tuple(label.shape)} differ"
        )
    unseen = unseen.to(logits.device)
    pred = unseen[logits.float()[:, unseen].argmax(dim=1)]  # [B, H, W] unseen ids
    return torch.where(torch.isin(full_label.to(logits.device), unseen), pred, label)


class ClipRCNet(nn.Module):
    """The test-time network: prompted frozen CLIP encoder + region-text decoder.

    Args:
        encoder: :class:`~zss.teachers.prompted.PromptedCLIPEncoder`. decoder:
            :class:`~zss.models.clip_rc_decoder.RegionTextDecoder` of the encoder's width.
    """

    def __init__(self, encoder: PromptedCLIPEncoder, decoder: RegionTextDecoder) -> None:
        super().__init__()
        self.encoder, self.decoder = encoder, decoder

    @property
    def normalization(self) -> dict:
        """What the CLIP tower is fed (``PromptedCLIPEncoder.normalization``)."""
        return self.encoder.normalization

    def forward(self, images: Tensor, text: Tensor) -> dict[str, Tensor]:
        """Args: images Tensor[B, 3, H, W] (normalised), text Tensor[C, D] (L2-normalised).

        Returns: the decoder's dict (``logits`` Tensor[B, C, h, w] at the patch grid, ``q0``, ``v0``,
        ``q``, ``v``; see :meth:`RegionTextDecoder.forward`).
        """
        e = self.encoder(images)
        return self.decoder(e["dense"], e["cls"], e["regions"], text.to(e["cls"].dtype))


@dataclass(frozen=True)
class ClipRCEncoderSettings(Settings):
    """The image encoder: frozen CLIP ViT + VPT-deep prompts + region tokens (config section "image encoder",
    unprefixed keys; :class:`~zss.teachers.prompted.PromptedCLIPEncoder`). Tags: [paper], [public code]
    (uyzhang/CLIP-RC, ZiqinZhou66/ZegCLIP), ours.

    Fields:
        num_prompts: prompt tokens per layer [public code: 10 VOC, 100 COCO-Stuff; the config reads it from
            ``recipe``].
        deep_prompts: VPT-deep: fresh prompts before every block, one shared prompt_proj [public code: True].
        region_grid: G (G² region tokens) [CLIP-RC: 4, paper and code; ZegCLIP: 0].
        train_region_tokens: [public code: False (its freezing rule never trains them); paper: trained].
        prompt_dropout: [public code: 0.1].
        drop_path_rate: [public code: 0.1 configured, never applied -> 0.0 reproduces it].
        pos_interp: positional-embedding resize, ``"bilinear"`` [public code] or ``"bicubic"`` (FrozenCLIP's).
        clip_input_norm: ``"imagenet"`` [public code: ImageNet mean/std fed to CLIP weights] or ``"clip"`` (CLIP's
            own statistics). Images arrive in the teacher's ``input_mean``/``input_std`` (= ``dataset.mean/std``)
            and are converted exactly (zss/data/normalize.py algebra) to the chosen statistics.
        cls_input: ``"public"`` [public code: the CLS slot enters as 2·class_embedding + pos[0]] or ``"clip"``
            (open_clip's class_embedding + pos[0]); see :class:`~zss.teachers.prompted.PromptedCLIPEncoder`.
    """

    num_prompts: int = 10
    deep_prompts: bool = True
    region_grid: int = 4
    train_region_tokens: bool = False
    prompt_dropout: float = 0.1
    drop_path_rate: float = 0.0
    pos_interp: str = "bilinear"
    clip_input_norm: str = "imagenet"
    cls_input: str = "public"


@dataclass(frozen=True)
class ClipRCDecoderSettings(Settings):
    """The region × class query decoder (config section "decoder": ``decoder_*`` and the unprefixed keys below;
    :class:`~zss.models.clip_rc_decoder.RegionTextDecoder`); widths scale with the CLIP joint width D.

    Fields:
        layers, heads: decoder layers and attention heads (``decoder_layers``, ``decoder_heads``) [public code: 3, 8].
        ffn_ratio: FFN width = ffn_ratio · D [public code: 4].
        dropout: (``decoder_dropout``) [public code: 0.1, nn.TransformerDecoderLayer's default].
        attn_dropout: [public code: 0.1].
        bidirectional: queries and visual tokens update each other [CLIP-RC: True; ZegCLIP: False].
        lateral_proj: memory = lateral_proj([Up(R); g; F]) [CLIP-RC: True; ZegCLIP: False].
        logits: ``"dot"`` (Q·Vᵀ) [CLIP-RC] / ``"attention"`` (the last layer's head-averaged pre-softmax attention
            logits) [ZegCLIP].
        head_init: ``"pytorch"`` [public code: the head's init_weights is never called] / ``"trunc_normal"`` (that
            init_weights).
    """

    PREFIX: ClassVar[str] = "decoder_"
    UNPREFIXED: ClassVar[tuple[str, ...]] = (
        "ffn_ratio",
        "attn_dropout",
        "bidirectional",
        "lateral_proj",
        "logits",
        "head_init",
    )

    layers: int = 3
    heads: int = 8
    ffn_ratio: int = 4
    dropout: float = 0.1
    attn_dropout: float = 0.1
    bidirectional: bool = True
    lateral_proj: bool = True
    logits: str = "dot"
    head_init: str = "pytorch"


@dataclass(frozen=True)
class ClipRCLossSettings(Settings):
    """The training loss [public code ``SegLoss``] (config section "losses", unprefixed keys).

    Fields:
        focal_weight, dice_weight, recovery_weight: [public code: VOC 100 / 1 / 2, COCO-Stuff 200 / 3 / 50; ZegCLIP
            100 / 1 / 0; the config reads them from ``recipe``]. Each >= 0; ``recovery_weight`` 0 builds no
            recovery decoder.
        recovery_layers: layer pairs of the recovery decoder [public code: 1].
        focal_alpha, focal_gamma: [public code: 0.25, 2].
    """

    focal_weight: float = 100.0
    dice_weight: float = 1.0
    recovery_weight: float = 2.0
    recovery_layers: int = 1
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0


class ClipRC(Method):
    """CLIP-RC training method; ZegCLIP with ``region_grid=0``, no recovery, one-way decoder, attention logits.

    Tags ([paper], [public code] (uyzhang/CLIP-RC, ZiqinZhou66/ZegCLIP), ours) are in the docstrings of the grouped
    settings. Built from the flat keys of configs/method/clip_rc.yaml (or zegclip.yaml) with
    :meth:`~zss.methods.base.Method.from_flat`.

    Args:
        student: must be None: the model is built here from the teacher (``scripts/train.py`` passes None
            because :attr:`uses_student` is False). A given module is ignored with a warning.
        teacher: a :class:`~zss.teachers.clip.FrozenCLIP` (ViT, class-token pooled). It is PART of the model:
            its image tower runs at test time, so a checkpoint needs the same CLIP weights to evaluate
            (:attr:`clip_at_test_time`; the tower's sha256 is stored and checked on load).
        classnames, unseen, templates, text_embeds, ignore_index: see :class:`~zss.methods.base.Method`.
        encoder: :class:`ClipRCEncoderSettings`. decoder: :class:`ClipRCDecoderSettings`. loss:
            :class:`ClipRCLossSettings` (each also a mapping of its fields).
        transductive: ``method.transductive`` mapping: ``enabled``, ``start_step`` (steps of inductive
            training before self-training starts; the public code starts ST from an inductive checkpoint),
            ``threshold`` (sigmoid score, :func:`st_pseudo_labels`; ours 0.5); ``weight`` must stay 1.0 and
            ``topk_fraction`` null (pseudo labels join the targets, there is no separate term);
            ``gt_unseen_mask`` (default False): True reproduces the public code, which self-trains exactly the
            pixels whose GROUND TRUTH is unseen (:func:`st_pseudo_labels_gt_mask`; the trainer then keeps
            ``full_label`` in training batches) — it uses ground truth, so its numbers are not zero-shot.

    Raises:
        ValueError: no FrozenCLIP teacher, bad option values, text width != the CLIP joint width.
        TypeError: a group of the wrong type or with an unknown field.
    """

    #: ``scripts/train.py`` builds no student (the model is built from the teacher).
    uses_student = False
    #: Rebuilding for evaluation needs the real CLIP weights (the image tower runs at test time).
    clip_at_test_time = True
    #: ``method.transductive`` keys: the base ones plus ``gt_unseen_mask`` (the public code's ground-truth mask)
    TRANSDUCTIVE_KEYS = Method.TRANSDUCTIVE_KEYS + ("gt_unseen_mask",)
    #: a checkpoint whose stored config has no ``cls_input`` was trained before the key existed, with open_clip's
    #: CLS input (``clip``), not today's ``public`` default (:mod:`zss.loading` fills it in)
    CHECKPOINT_DEFAULTS = {"cls_input": "clip"}
    #: grouped settings (:meth:`~zss.methods.base.Method.from_flat`)
    SETTINGS = {"encoder": ClipRCEncoderSettings, "decoder": ClipRCDecoderSettings, "loss": ClipRCLossSettings}

    def __init__(
        self,
        student: nn.Module | None,
        teacher: nn.Module | None,
        classnames: Sequence[str],
        unseen: Sequence[int],
        templates: Sequence[str] = ("a photo of a {}.",),
        text_embeds: Tensor | None = None,
        ignore_index: int = 255,
        *,
        encoder: ClipRCEncoderSettings = ClipRCEncoderSettings(),
        decoder: ClipRCDecoderSettings = ClipRCDecoderSettings(),
        loss: ClipRCLossSettings = ClipRCLossSettings(),
        transductive: Mapping | None = None,
    ) -> None:
        enc = coerce_settings(encoder, ClipRCEncoderSettings, "ClipRC(encoder=...)")
        dec = coerce_settings(decoder, ClipRCDecoderSettings, "ClipRC(decoder=...)")
        loss = coerce_settings(loss, ClipRCLossSettings, "ClipRC(loss=...)")
        if not isinstance(teacher, FrozenCLIP):
            raise ValueError(
                "ClipRC needs a FrozenCLIP teacher (teacher=clip_vitb16, or tiny_random for smoke runs): CLIP's image "
                f"tower is part of the model at train and test time; got {type(teacher).__name__}"
            )
        if student is not None:
            log.warning(
                "ClipRC builds its own model from the CLIP teacher; the given student (%s) is ignored",
                type(student).__name__,
            )
        if enc.clip_input_norm not in CLIP_INPUT_NORMS:
            raise ValueError(
                f"ClipRC: clip_input_norm={enc.clip_input_norm!r} (method.clip_input_norm); choose {CLIP_INPUT_NORMS}"
            )
        for name, v in (
            ("focal_weight", loss.focal_weight),
            ("dice_weight", loss.dice_weight),
            ("recovery_weight", loss.recovery_weight),
        ):
            if not float(v) >= 0.0:
                raise ValueError(f"ClipRC: method.{name} must be >= 0, got {v}")
        pix = (IMAGENET_MEAN, IMAGENET_STD) if enc.clip_input_norm == "imagenet" else (None, None)
        image_encoder = PromptedCLIPEncoder(
            teacher,
            num_prompts=enc.num_prompts,
            deep_prompts=enc.deep_prompts,
            region_grid=enc.region_grid,
            train_region_tokens=enc.train_region_tokens,
            prompt_dropout=enc.prompt_dropout,
            drop_path_rate=enc.drop_path_rate,
            pos_interp=enc.pos_interp,
            pixel_mean=pix[0],
            pixel_std=pix[1],
            cls_input=enc.cls_input,
        )
        dim = image_encoder.embed_dim
        query_decoder = RegionTextDecoder(
            dim,
            num_layers=dec.layers,
            num_heads=dec.heads,
            ffn_ratio=dec.ffn_ratio,
            dropout=dec.dropout,
            attn_dropout=dec.attn_dropout,
            with_regions=image_encoder.num_regions > 0,
            lateral_proj=dec.lateral_proj,
            bidirectional=dec.bidirectional,
            logits=dec.logits,
            init=dec.head_init,
        )
        super().__init__(
            ClipRCNet(image_encoder, query_decoder),
            teacher,
            classnames,
            unseen,
            templates,
            text_embeds,
            ignore_index,
            transductive=transductive,
        )
        if int(self.text_embeds.shape[1]) != dim:
            raise ValueError(
                f"ClipRC: text embeds have D={self.text_embeds.shape[1]} but the CLIP joint width is {dim}"
            )
        self.recovery = (  # training-only
            RecoveryDecoder(dim, dec.heads, loss.recovery_layers, dec.ffn_ratio, dec.dropout, dec.attn_dropout)
            if float(loss.recovery_weight) > 0
            else None
        )
        self.focal_weight, self.dice_weight = float(loss.focal_weight), float(loss.dice_weight)
        self.recovery_weight = float(loss.recovery_weight)
        self.focal_alpha, self.focal_gamma = float(loss.focal_alpha), float(loss.focal_gamma)
        self.clip_input_norm = enc.clip_input_norm
        fp = visual_fingerprint(image_encoder.visual)
        self.register_buffer("clip_fingerprint", torch.tensor(list(bytes.fromhex(fp)), dtype=torch.uint8))

    # ------------------------------------------------------------------ settings
    def configure_transductive(
        self,
        enabled: bool = False,
        start_step: int = 0,
        threshold: float = 0.5,
        weight: float = 1.0,
        topk_fraction: float | None = None,
        gt_unseen_mask: bool = False,
    ) -> None:
        """Transductive settings (see the class docstring); ``threshold`` is a sigmoid score in [0, 1]
        (:func:`st_pseudo_labels`; ours: 0.5). ``gt_unseen_mask``: the public code's ground-truth unseen mask
        (:func:`st_pseudo_labels_gt_mask`; ``threshold`` unused then) [default False: leak-free].

        Raises:
            ValueError: bad values, ``weight != 1`` or ``topk_fraction`` set (not meaningful here), or
                ``gt_unseen_mask`` without ``enabled`` (an inductive run must not read unseen ground truth).
        """
        if gt_unseen_mask and not enabled:
            raise ValueError(
                "ClipRC: method.transductive.gt_unseen_mask=true reads the unseen ground truth and is "
                "refused in the inductive setting; set method.transductive.enabled=true (the public "
                "code's transductive comparison) or gt_unseen_mask=false"
            )
        self.transductive_gt_unseen_mask = bool(gt_unseen_mask)
        super().configure_transductive(enabled, start_step, threshold, weight, topk_fraction)
        if float(weight) != 1.0 or topk_fraction is not None:
            raise ValueError(
                "ClipRC: method.transductive.weight must be 1.0 and topk_fraction null: CLIP-RC's "
                "self-training writes its pseudo labels into the focal/dice targets (no separate term)"
            )

    @property
    def reads_full_label(self) -> bool:
        """True when training steps read ``full_label`` (``gt_unseen_mask`` with the transductive term on): the
        trainer then keeps it in training batches (:func:`zss.engine.trainer.needs_full_label`)."""
        return self.transductive_enabled and self.transductive_gt_unseen_mask

    # ------------------------------------------------------------------ checkpoints
    @property
    def clip_sha256(self) -> str:
        """sha256 of the frozen CLIP image tower this model runs (:func:`visual_fingerprint`)."""
        return bytes(self.clip_fingerprint.tolist()).hex()

    def checkpoint_state(self) -> dict[str, Tensor]:
        """Trainable parts, the text embeds and the CLIP fingerprint; NOT the frozen CLIP tower."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith(_FROZEN_PREFIX)}

    def teacher_identity(self) -> dict:
        """The CLIP identity (model name, weights tag/file, sha256) plus ``required_at_test_time`` and the
        image tower's ``visual_sha256``."""
        ident = super().teacher_identity()
        ident.update(required_at_test_time=True, visual_sha256=self.clip_sha256)
        return ident

    def load_state_dict(self, state_dict: Mapping[str, Tensor], strict: bool = True, assign: bool = False):
        """Load a :meth:`checkpoint_state` (the frozen CLIP tower is taken from the teacher built here).

        Raises:
            ValueError: the checkpoint's CLIP tower fingerprint differs from this model's CLIP (different
                weights): evaluating would silently use another CLIP. The message names the fix.
        """
        fp = state_dict.get("clip_fingerprint")
        if fp is not None and not torch.equal(fp.to(self.clip_fingerprint.device), self.clip_fingerprint):
            got = bytes(fp.tolist()).hex()
            ident = self.student.encoder.identity
            raise ValueError(
                f"ClipRC: this checkpoint was trained with a CLIP image tower of sha256 {got[:16]}..., but the CLIP "
                f"built now (teacher.model_name={ident.get('model_name')}, teacher.pretrained="
                f"{ident.get('pretrained')}) has {self.clip_sha256[:16]}.... CLIP-RC runs CLIP at test time: pass "
                f"the weights it was trained with (teacher.pretrained=<file>; the checkpoint's 'teacher' entry "
                f"names the file and its sha256)."
            )
        full = dict(state_dict)
        for k, v in self.state_dict().items():
            if k.startswith(_FROZEN_PREFIX):
                full.setdefault(k, v)
        return super().load_state_dict(full, strict=strict, assign=assign)

    def strip_for_inference(self) -> None:
        """Drop the training-only recovery decoder (called after loading a checkpoint for inference)."""
        self.recovery = None

    # ------------------------------------------------------------------ optimisation
    def param_groups(self, lr: float, head_lr_mult: float = 10.0, weight_decay: float = 0.01) -> list[dict]:
        """One AdamW group: every trainable parameter at ``lr × head_lr_mult`` with ``weight_decay``.

        Public code: lr 2e-5 with lr_mult 10 on ``backbone`` (the prompts) and ``head``, wd 0.01, and its
        norm/ln decay_mult 0 never applies (mmcv matches ``backbone``/``head`` first) — so every trainable
        parameter trains at 2e-4 with decay 0.01 (trainer.lr 2e-5 × trainer.head_lr_mult 10).
        """
        params = [p for p in self.parameters() if p.requires_grad]
        return [dict(params=params, lr=lr * head_lr_mult, weight_decay=weight_decay, name="clip_rc")]

    # ------------------------------------------------------------------ training
    def training_step(self, batch: dict) -> dict[str, Tensor]:
        """One step: focal + dice (+ recovery) on seen labels, or on seen + online pseudo labels (transductive).

        Args:
            batch: ``image`` Tensor[B, 3, H, W] float32 (normalised), ``label`` Tensor[B, H, W] int64 (seen ids,
                255 elsewhere), ``valid`` Tensor[B, H, W] bool (optional, False on padding).
        Returns:
            ``loss`` (graph) = focal_weight·focal + dice_weight·dice + recovery_weight·(rec_q + rec_v); detached
            ``loss_focal``, ``loss_dice``, ``loss_recovery`` (rec_q + rec_v, unweighted), ``loss_st`` (always
            0: no separate term) and ``st_pixels`` (pseudo-labelled pixels in the batch).
        """
        images, label = batch["image"], batch["label"]
        st = self.self_training_active
        text = self.text_embeds if st else self.text_embeds[self.seen]
        out = self.student(images, text)
        logits = upsample_logits(out["logits"].float(), tuple(label.shape[-2:]))  # [B, C, H, W]
        if st and self.transductive_gt_unseen_mask:  # the public code's: reads the unseen ground truth
            if batch.get("full_label") is None:
                raise ValueError(
                    "ClipRC: method.transductive.gt_unseen_mask=true needs full_label in the training "
                    "batch (the trainer keeps it for this method); none was given"
                )
            target = st_pseudo_labels_gt_mask(logits.detach(), label, batch["full_label"], self.unseen)
            n_st = (target != label).sum().float()
        elif st:
            target = st_pseudo_labels(
                logits.detach(), label, self.unseen, batch.get("valid"), self.transductive_threshold, self.ignore_index
            )
            n_st = (target != label).sum().float()
        else:
            target = self.to_seen_ids(label)
            n_st = logits.new_zeros(())
        focal, dice = focal_dice_ignore_as_negative(
            logits, target, self.ignore_index, self.focal_alpha, self.focal_gamma
        )
        loss = self.focal_weight * focal + self.dice_weight * dice
        rec = logits.new_zeros(())
        if self.recovery is not None:
            q_hat, v_hat = self.recovery(out["q"], out["v"])
            rq, rv = recovery_loss(q_hat, v_hat, out["q0"], out["v0"])
            rec = rq + rv
            loss = loss + self.recovery_weight * rec
        zero = logits.new_zeros(())
        return {
            "loss": loss,
            "loss_focal": focal.detach(),
            "loss_dice": dice.detach(),
            "loss_recovery": rec.detach(),
            "loss_st": zero,
            "st_pixels": n_st.detach(),
        }

    # ------------------------------------------------------------------ inference
    def decoder_logits(self, images: Tensor) -> Tensor:
        """The decoder's per-class logits d ``Tensor[B, C, H, W] float32``, upsampled bilinearly to the input size
        (``sigmoid(d)`` is :meth:`predict`'s output). ``images``: Tensor[B, 3, H, W] float32, normalised."""
        logits = self.student(images, self.text_embeds)["logits"].float()
        return upsample_logits(logits, tuple(images.shape[-2:]))

    def predict(self, images: Tensor, label_space: str = "all") -> Tensor:
        """The logits of the zss predict contract (:meth:`Method.predict`): for CLIP-RC / ZegCLIP these are the
        per-class sigmoid SCORES ``sigmoid(d)`` in [0, 1] of the decoder logits d (:meth:`decoder_logits`) at the
        input size (public code ``semantic_inference``).

        The map d -> sigmoid(d) is the same increasing function for every class, so the argmax is the decoder
        logits' argmax; sliding-window crops are averaged in this space, as the public code averages its scores.
        ``seen_bias``, subtracted from the seen classes of ``predict``'s output for every method, is therefore a
        probability margin here: the public code's ``P[:, seen] -= 0.1`` is ``trainer.seen_bias=0.1``
        (0 for its self-trained models).

        Args:
            images: Tensor[B, 3, H, W] float32, normalised. label_space: ``all`` or ``unseen`` (seen classes
                set to the finite :data:`~zss.methods.base.MASKED_LOGIT`; the evaluator calls ``all``).
        Returns:
            Tensor[B, C, H, W] float32 in [0, 1] (seen = MASKED_LOGIT for ``unseen``).
        Raises:
            ValueError: unknown ``label_space``.
        """
        if label_space not in LABEL_SPACES:
            raise ValueError(f"label_space must be 'all' or 'unseen', got {label_space!r}")
        scores = self.decoder_logits(images).sigmoid()
        if label_space == "unseen":
            scores[:, self.seen] = MASKED_LOGIT
        return scores
