"""CLIP-ZSS: distil a frozen CLIP into a CLIP-free student (docs/methods.md (CLIP-ZSS)).

Training (per batch):

* **GLM** (global learning module) [summary]: the CLIP CLS token S attends over the student's dense
  embeds R (pooled to the teacher's patch grid by default) to give Ŝ; InfoNCE pulls Ŝ_i to S_i
  against the other CLS tokens of the (global) batch and a FIFO bank of past CLS tokens.
* **PLM** (pixel learning module) [summary]: K-Means on the teacher's dense tokens gives per-image
  pseudo regions, written where the training label is ignore (255) and inside the image → fused
  labels F (seen positions ``0..N_seen-1``, pseudo ids ``N_seen + k``). A weight synthesizer turns
  region prototypes of R into classifier weights P_seen / P_pseudo (attending to the CLS token).
  Logits ``cat(α·<R, T_seen>, β·cos(R, P_pseudo))`` are trained on F with CE + ZegCLIP's NEL, and
  P_seen is pulled to the text embeddings of its class with BCE.

Inference: the student alone — dense embeds · text embeds of all classes (:meth:`Method.predict`)
[paper]. The synthesizer is a training-only part: trainable, in ``checkpoint_state``, unused at test
time; the teacher is never trained, saved or needed at test time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zss.methods.base import Method, safe_cross_entropy, upsample_logits
from zss.methods.losses import GlobalDistillLoss, nearest_down, nel_loss
from zss.methods.settings import Settings, coerce_settings
from zss.models.synthesizer import SynthOutput, WeightSynthesizer
from zss.ops.pseudo_labels import (
    DEFAULT_SCALES,
    FUSION_MODES,
    clear_near_seen,
    num_seeds,
    pseudo_label_quality,
    pseudo_labels,
)
from zss.utils.bank import FifoBank

__all__ = [
    "ClipZSS",
    "GLMSettings",
    "PseudoLabelSettings",
    "PseudoNegativeSettings",
    "ClipZSSLossSettings",
    "SynthSettings",
]

#: ``pl_clip_es`` defaults (ours) for the keys a CLIP-ES preset (configs/clip_es/*.yaml: ``template``, ``synonyms``,
#: ``background_words``, ``box_threshold``; ``background_class`` is accepted and unused) may leave out.
CLIP_ES_DEFAULTS: dict[str, Any] = dict(
    template=None,
    synonyms=None,
    background_words=None,
    background_class=None,
    box_threshold=0.4,
    refine=True,
    alpha=1.0,
    attn_layers=8,
    tag_threshold=0.1,
)

_NEG = -1e4  # logit of a pseudo channel that does not exist in an image (finite: no NaN in BCE/CE grads)


def _zero(ref: Tensor) -> Tensor:
    return ref.new_zeros((), dtype=torch.float32)


class PseudoBank(FifoBank):
    """FIFO bank of past pseudo-region weights: extra negatives for seen pixels (``pseudo_negatives="bank"``; ours).

    A :class:`~zss.utils.bank.FifoBank` (non-persistent buffers, saved with the training state by the trainer, as
    the GLM's CLS bank; one bank per DDP rank) pushed with the presence mask of the step's regions (no host sync),
    read as all slots plus their validity (:meth:`get`), its training state naming the rows ``weights``.

    Args:
        size: capacity N (weights, ``method.pseudo_bank_size``); dim: D.

    Raises:
        ValueError: ``size < 1``.
    """

    def __init__(self, size: int, dim: int) -> None:
        if int(size) < 1:
            raise ValueError(f"ClipZSS: pseudo_bank_size must be >= 1 with pseudo_negatives='bank', got {size}")
        super().__init__(size, dim, name="PseudoBank", size_key="pseudo_bank_size", state_key="weights")

    @property
    def weights(self) -> Tensor:
        """``Tensor[N + 1, D] float32``: every slot, the sink included (the ``rows`` buffer)."""
        return self.rows

    def get(self) -> tuple[Tensor, Tensor]:
        """``(Tensor[N, D] float32, Tensor[N] bool)``: the stored weights and which slots hold one
        (:meth:`~zss.utils.bank.FifoBank.slots`)."""
        return self.slots()


@dataclass(frozen=True)
class GLMSettings(Settings):
    """Global Learning Module (config keys ``glm_*`` and ``bank_size``; docs/methods.md (CLIP-ZSS)).

    Fields:
        weight: weight of L_GLM (``glm_weight``) [ours: 1.0; the summary's L is an unweighted sum].
        tau: InfoNCE temperature (``glm_tau``) [ours: 0.07].
        bank_size: FIFO bank of past CLS tokens, in tokens (``bank_size``) [ours: 1024].
        attn_scale: attention scale of the CLS-query pooling (``glm_attn_scale``); None = 1/√D [summary, the
            default]; 0 = explicit mean pooling (ours; on unit embeds the same in effect: docs/methods.md "GLM
            pooling").
        pool: where GLM pools the student's embeds (``glm_pool``): ``"teacher"`` (adaptive average pool to the
            teacher's h×w patch grid, then re-normalised) [ours, default], ``"none"`` (student resolution) or an
            int k (``avg_pool2d`` with kernel = stride = k student cells).
        mask_padding: exclude cells that are entirely padding (``batch["valid"]`` False) from the GLM attention
            (``glm_mask_padding``) [ours: True].
    """

    PREFIX: ClassVar[str] = "glm_"
    UNPREFIXED: ClassVar[tuple[str, ...]] = ("bank_size",)

    weight: float = 1.0
    tau: float = 0.07
    bank_size: int = 1024
    attn_scale: float | None = None
    pool: str | int = "teacher"
    mask_padding: bool = True


@dataclass(frozen=True)
class PseudoLabelSettings(Settings):
    """PLM's pseudo labels (config keys ``pl_*``; docs/methods.md (CLIP-ZSS) "PLM").

    Fields:
        scales: window sides in teacher patches of the K-Means seeds (``pl_scales``; stride ⌊s/2⌋ [summary]);
            None = the ops default ``(4, 8, 16)`` (ours, for a 32×32 grid).
        lam: cosine threshold λ for fusing K-Means masks (``pl_lambda``); None = ops default 0.9 (ours).
        iters: K-Means iterations (``pl_iters``); None = ops default 10 (ours).
        min_area: smallest pseudo region kept, in teacher patches (``pl_min_area``); None = ops default 4 (ours).
        max_regions: cap on pseudo regions per image (``pl_max_regions``); the largest are kept, smaller ones
            become ignore [ours: 32; regions per image at demo scale: docs/methods.md "PLM fusion"]. It also fixes
            the number of pseudo-logit channels K of the training step (padded, with a mask for absent regions),
            so the step never sizes a tensor from data (no host sync). None = no cap: K = the number of K-Means
            seeds (283 on a 32×32 grid), correct but costly.
        seen_margin: width, in teacher patches (converted to label pixels with the label-to-teacher-grid ratio,
            rounded), of the band around seen-labelled pixels where pseudo labels are left unlabelled
            (``pl_seen_margin``; :func:`zss.ops.pseudo_labels.clear_near_seen`): pseudo regions are only as fine
            as the teacher's patches [0 = off, the default, as the summary has none; ours: 1.0 for a band one patch
            wide; docs/methods.md "Seen margin"].
        source: where the pseudo regions come from (``pl_source``): ``"kmeans"`` (K-Means on the teacher's dense
            tokens [summary], the default) or ``"clip_es"`` (CLIP-ES masks, :func:`zss.clip_es.clip_es_regions`:
            one region per image-level class, background words as a region of their own; ours, docs/clip_es.md
            "CLIP-ES as PLM's region source"). ``"clip_es"`` is for the **transductive** setting only
            (``transductive.enabled``): it needs image-level labels of unseen classes. Seen tags come from the
            seen labels, unseen tags from the teacher's zero-shot CLS scores; the ground truth of unseen classes
            is never read. Needs a :class:`~zss.teachers.clip.FrozenCLIP` ViT run at the crop size
            (``image_size`` None).
        clip_es: settings of ``source="clip_es"`` (``pl_clip_es``; keys of :data:`CLIP_ES_DEFAULTS`): ``template``,
            ``synonyms`` (class name -> prompt name), ``background_words`` (required: the CLIP-ES preset's),
            ``box_threshold``, ``refine`` (CAA), ``alpha`` (background exponent), ``attn_layers`` (public-code
            values by default) and ``tag_threshold`` (ours: an unseen class is tagged when its softmax
            probability over all classes from the CLS token reaches it, a fraction). None = those defaults.
        fusion: how the per-scale K-Means masks are fused (``pl_fusion``; the ``mode`` of
            :func:`zss.ops.pseudo_labels.pseudo_labels`): ``"components"`` (connected components over the
            centres whose cosine is above λ: the summary's "fuse masks whose centres' cosine is above λ", the
            default), ``"merge"`` (one K-Means seeded by every scale's windows, agglomerative merging with
            recomputed centres; ours) or ``"matching"`` (docs/methods.md "PLM fusion").
        kwargs: extra keyword arguments for :func:`zss.ops.pseudo_labels.pseudo_labels` (``pl_kwargs``; Python
            only, no shipped config writes it; a ``mode`` there overrides ``fusion``).
    """

    PREFIX: ClassVar[str] = "pl_"
    RENAMED: ClassVar[Mapping[str, str]] = {"lam": "pl_lambda"}

    scales: Sequence[int] | None = None
    lam: float | None = None
    iters: int | None = None
    min_area: int | None = None
    max_regions: int | None = 32
    seen_margin: float = 0.0
    fusion: str = "components"
    source: str = "kmeans"
    clip_es: Mapping | None = None
    kwargs: Mapping | None = None


@dataclass(frozen=True)
class PseudoNegativeSettings(Settings):
    """Other images' pseudo regions as negatives of seen pixels (config keys ``pseudo_negatives*``,
    ``pseudo_bank_size``; ours, docs/methods.md "Cross-image pseudo negatives").

    Fields:
        mode: which pseudo channels a SEEN pixel's CE scores against (``pseudo_negatives``): ``"image"`` —
            its own image's only (the summary's per-image F, the default) —, ``"batch"`` — also every pseudo
            region of the other images of the local batch (ours) — or ``"bank"`` — also those of the last steps, a
            FIFO bank of ``bank_size`` detached pseudo weights (ours). With ``"image"`` a seen pixel is never told
            it is not an unseen concept its image lacks; on the 40 bundled VOC images seen classes drifted to the
            unseen directions PLM pulls other images' regions towards, while the synthetic world's val split did
            not separate the modes (docs/methods.md "Cross-image pseudo negatives"). Pseudo regions
            lie on unlabelled pixels only, so none of them is a seen class. Pseudo pixels keep their own image's
            channels: another image's region of the same concept (its background, the same unseen class) would
            be a false negative. The extra channels enter the CE as one logsumexp channel (exact for a target
            outside them), computed at the logits' resolution; NEL never sees them.
        bank_size: entries of the ``"bank"`` FIFO (``pseudo_bank_size``; :class:`PseudoBank`: pseudo weights of
            present regions, pushed after each step's loss; saved with the training state, not the model's)
            [ours: 256; must be >= 1 with ``mode="bank"``].
        same: cosine above which two pseudo weights are one concept for ``"batch"`` / ``"bank"``
            (``pseudo_negatives_same``): a candidate that close to one of the pixel's own image's regions is
            dropped and each other counts once however many copies the batch/bank holds (see
            :meth:`ClipZSS._cross_image_negatives`) [ours: 0.9, the fusion threshold's default]; None = every
            candidate once, no de-duplication.
    """

    PREFIX: ClassVar[str] = "pseudo_"
    RENAMED: ClassVar[Mapping[str, str]] = {"mode": "pseudo_negatives", "same": "pseudo_negatives_same"}

    mode: str = "image"
    bank_size: int = 256
    same: float | None = 0.9


@dataclass(frozen=True)
class ClipZSSLossSettings(Settings):
    """Logits and losses of CLIP-ZSS (config keys of the "logits and losses" section, unprefixed;
    [summary: L = L_GLM + L_NEL + CE + L_BCE]).

    Fields:
        alpha: logit scale α of the seen part; None = the student's ``logit_scale`` (the same scale as test-time
            logits; ours).
        beta: logit scale β of the pseudo part, applied to cosines [ours: 14.285714 = 1/0.07 to 6 decimals].
        ce_weight: weight of CE on F [ours: 1.0].
        ce_reduction: ``"split"`` — the seen pixels and the pseudo pixels each averaged over their own count,
            ``CE_seen + pseudo_ce_weight · CE_pseudo``, so the pseudo regions (background, unseen and unlabelled
            stuff: often most of an image) do not dilute the seen supervision [ours: the default, docs/methods.md
            "GLM only / PLM only / both"] — or ``"joint"`` — one CE averaged over every labelled pixel of F (seen
            and pseudo together: the summary's "CE on F", ``method=clip_zss_paper``).
        pseudo_ce_weight: weight of CE_pseudo with ``ce_reduction="split"`` [ours: 1.0]; unused with ``"joint"``.
        detach_pseudo_weights: if True, the CE sees P_pseudo detached: the synthesizer then learns from L_BCE only
            and CE trains only the student towards the synthesized weights [ours: False; docs/methods.md "GLM
            only / PLM only / both"].
        nel_weight: weight of the whole NEL term [ours: 0.0 = off, docs/methods.md "NEL"; to use it:
            ``nel_weight=1``, ``nel_bias=-4.6``].
        focal_weight, dice_weight: NEL's inner weights [ZegCLIP: 100, 1].
        focal_reduction: normalisation of the focal term, ``"zegclip"`` [ZegCLIP's code] or ``"mean"`` (see
            :func:`zss.methods.losses.sigmoid_focal_loss`).
        nel_bias: logit offset before NEL's sigmoid (see :func:`zss.methods.losses.nel_loss`) [ours: 0].
        bce_weight: weight of L_BCE [ours: 1.0].
        bce_scale, bce_bias: BCE logits = ``bce_scale · <P_seen, T_seen> + bce_bias`` [ours: 14.285714, 0].
        loss_resolution: ``"label"`` (default, as the baseline: logits bilinearly upsampled to the label size) or
            ``"logits"`` (F nearest-downsampled to the logit grid: ~16× cheaper) [ours].
    """

    alpha: float | None = None
    beta: float = 14.285714
    ce_weight: float = 1.0
    ce_reduction: str = "split"
    pseudo_ce_weight: float = 1.0
    detach_pseudo_weights: bool = False
    nel_weight: float = 0.0
    focal_weight: float = 100.0
    dice_weight: float = 1.0
    focal_reduction: str = "zegclip"
    nel_bias: float = 0.0
    bce_weight: float = 1.0
    bce_scale: float = 14.285714
    bce_bias: float = 0.0
    loss_resolution: str = "label"


@dataclass(frozen=True)
class SynthSettings(Settings):
    """The weight synthesizer (config keys ``synth_*``; :class:`~zss.models.synthesizer.WeightSynthesizer`: a
    transformer decoder, queries = region prototypes, memory = CLIP CLS).

    Fields:
        depth, heads: decoder layers and attention heads [ours: 2, 4].
        ffn_dim: feed-forward width; None = 4·D [ours].
        memory: ``"cls"`` [summary] | ``"cls+dense"`` | ``"cls+regions"`` (ours).
        query: ``"prototype"`` [the summary's reading; default] | ``"prototype+clip"`` | ``"clip"``: each region's
            query = CLIP's region-pooled dense token [ours; docs/methods.md "Synthesizer memory and query"].
        detach_prototypes: stop the gradient into the region prototypes [ours: False].
        lr_mult: learning-rate multiplier of the synthesizer on top of the head lr [ours: 1.0]; 0 freezes it at
            its initialisation. With the zero-initialised residual branches every pseudo weight then stays its
            query: CLIP's region-pooled token with ``query="clip"``, the region's own student prototype with the
            default ``"prototype"`` (nothing ties it to the teacher; docs/methods.md "GLM only / PLM only / both").
    """

    PREFIX: ClassVar[str] = "synth_"

    depth: int = 2
    heads: int = 4
    ffn_dim: int | None = None
    memory: str = "cls"
    query: str = "prototype"
    detach_prototypes: bool = False
    lr_mult: float = 1.0


class ClipZSS(Method):
    """CLIP-ZSS training method (docs/methods.md (CLIP-ZSS)). Every number is tagged [paper], [summary], or "ours"
    (not in the paper: our default) in the docstrings of its grouped settings.

    Built from the flat keys of configs/method/clip_zss.yaml with :meth:`~zss.methods.base.Method.from_flat`
    (``ClipZSS.from_flat(..., glm_tau=0.1)``); in Python pass the groups
    (``ClipZSS(student, teacher, classnames, unseen, glm=GLMSettings(tau=0.1))``).

    Args:
        student, teacher, classnames, unseen, templates, text_embeds, ignore_index: see
            :class:`~zss.methods.base.Method`. The teacher must return ``cls`` ``Tensor[B, D]`` and
            ``dense`` ``Tensor[B, D, h, w]`` (FrozenCLIP or OracleTeacher; the oracle reads
            ``batch["full_label"]``).
        use_glm: enable the GLM term (ablation switch).
        use_plm: enable pseudo labels + synthesizer + BCE. With ``use_plm=False`` the dense supervision
            is CE + NEL on the seen GT only (fused labels = seen labels; no synthesizer is built).
        glm: :class:`GLMSettings` (``glm_*``, ``bank_size``).
        pl: :class:`PseudoLabelSettings` (``pl_*``).
        pseudo: :class:`PseudoNegativeSettings` (``pseudo_negatives*``, ``pseudo_bank_size``).
        loss: :class:`ClipZSSLossSettings` (α, β, CE, NEL, BCE, ``loss_resolution``).
        synth: :class:`SynthSettings` (``synth_*``).
        transductive: optional transductive self-training settings (off by default), see
            :meth:`~zss.methods.base.Method.configure_transductive`. The term is applied to the student's
            embeds R on the same unlabelled pixels PLM writes pseudo regions into: PLM's CE/NEL trains them
            towards their synthesized region weights, the transductive CE towards the unseen-class text
            embeds (the test-time classifier).
        debug: run the input checks of the hot path (label values in the pseudo labels and the NEL targets),
            each a host sync, inside :meth:`training_step` [ours: False; the step's labels are valid by
            construction, and without the checks the step makes no host sync].

    Each group may also be given as a mapping of its fields (``glm={"tau": 0.1}``).

    Raises:
        ValueError: bad option values, or a teacher/text dimension that does not match the student.
        TypeError: a group of the wrong type or with an unknown field.
    """

    #: Values of keys a checkpoint's stored method config may lack (:mod:`zss.loading`): a checkpoint written before
    #: a key was in configs/method/clip_zss.yaml was trained with the constructor default of that time, not today's.
    CHECKPOINT_DEFAULTS: dict[str, Any] = dict(nel_weight=1.0, pl_fusion="merge", ce_reduction="joint")
    #: grouped settings (:meth:`~zss.methods.base.Method.from_flat`)
    SETTINGS = {
        "glm": GLMSettings,
        "pl": PseudoLabelSettings,
        "pseudo": PseudoNegativeSettings,
        "loss": ClipZSSLossSettings,
        "synth": SynthSettings,
    }

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
        use_glm: bool = True,
        use_plm: bool = True,
        glm: GLMSettings = GLMSettings(),
        pl: PseudoLabelSettings = PseudoLabelSettings(),
        pseudo: PseudoNegativeSettings = PseudoNegativeSettings(),
        loss: ClipZSSLossSettings = ClipZSSLossSettings(),
        synth: SynthSettings = SynthSettings(),
        transductive: Mapping | None = None,
        debug: bool = False,
    ) -> None:
        glm = coerce_settings(glm, GLMSettings, "ClipZSS(glm=...)")
        pl = coerce_settings(pl, PseudoLabelSettings, "ClipZSS(pl=...)")
        pseudo = coerce_settings(pseudo, PseudoNegativeSettings, "ClipZSS(pseudo=...)")
        loss = coerce_settings(loss, ClipZSSLossSettings, "ClipZSS(loss=...)")
        synth = coerce_settings(synth, SynthSettings, "ClipZSS(synth=...)")
        super().__init__(
            student, teacher, classnames, unseen, templates, text_embeds, ignore_index, transductive=transductive
        )
        self.debug = bool(debug)
        if teacher is None and (use_glm or use_plm):
            raise ValueError("ClipZSS needs a teacher for GLM/PLM (use_glm/use_plm); pass one or disable both")
        if loss.loss_resolution not in ("label", "logits"):
            raise ValueError(f"ClipZSS: loss_resolution must be 'label' or 'logits', got {loss.loss_resolution!r}")
        if loss.ce_reduction not in ("joint", "split"):
            raise ValueError(f"ClipZSS: ce_reduction must be 'joint' or 'split', got {loss.ce_reduction!r}")
        if pseudo.mode not in ("image", "batch", "bank"):
            raise ValueError(f"ClipZSS: pseudo_negatives must be 'image', 'batch' or 'bank', got {pseudo.mode!r}")
        if not (glm.pool in ("teacher", "none") or (isinstance(glm.pool, int) and glm.pool >= 1)):
            raise ValueError(f"ClipZSS: glm_pool must be 'teacher', 'none' or an int >= 1, got {glm.pool!r}")
        if self.num_seen + 1 > ignore_index and use_plm:
            raise ValueError(
                f"ClipZSS: {self.num_seen} seen classes leave no room for pseudo ids below ignore_index={ignore_index}"
            )
        dim = int(self.text_embeds.shape[1])
        sdim = getattr(student, "embed_dim", dim)
        if int(sdim) != dim:
            raise ValueError(
                f"ClipZSS: student embed_dim={sdim} != text embedding dim {dim}; set the student's "
                "embed_dim to the teacher's joint-space width"
            )
        self.use_glm, self.use_plm = bool(use_glm), bool(use_plm)
        self.glm_weight, self.ce_weight, self.nel_weight, self.bce_weight = (
            float(glm.weight),
            float(loss.ce_weight),
            float(loss.nel_weight),
            float(loss.bce_weight),
        )
        self.glm_pool, self.glm_mask_padding = glm.pool, bool(glm.mask_padding)
        self.alpha, self.beta = (None if loss.alpha is None else float(loss.alpha)), float(loss.beta)
        self.focal_weight, self.dice_weight = float(loss.focal_weight), float(loss.dice_weight)
        self.focal_reduction, self.nel_bias = loss.focal_reduction, float(loss.nel_bias)
        self.bce_scale, self.bce_bias = float(loss.bce_scale), float(loss.bce_bias)
        self.loss_resolution = loss.loss_resolution
        self.ce_reduction, self.pseudo_ce_weight = loss.ce_reduction, float(loss.pseudo_ce_weight)
        self.detach_pseudo_weights = bool(loss.detach_pseudo_weights)
        self.pseudo_negatives = pseudo.mode
        if not float(pl.seen_margin) >= 0:
            raise ValueError(f"ClipZSS: pl_seen_margin must be >= 0 teacher patches, got {pl.seen_margin}")
        self.pl_seen_margin = float(pl.seen_margin)
        if pl.fusion not in FUSION_MODES:
            raise ValueError(f"ClipZSS: pl_fusion must be one of {FUSION_MODES}, got {pl.fusion!r}")
        self.pseudo_same = None if pseudo.same is None else float(pseudo.same)
        self.pseudo_bank = (
            PseudoBank(pseudo.bank_size, int(self.text_embeds.shape[1])) if pseudo.mode == "bank" and use_plm else None
        )
        if not float(synth.lr_mult) >= 0:
            raise ValueError(f"ClipZSS: synth_lr_mult must be >= 0, got {synth.lr_mult}")
        self.synth_lr_mult = float(synth.lr_mult)
        self.glm = (
            GlobalDistillLoss(dim, tau=glm.tau, bank_size=glm.bank_size, attn_scale=glm.attn_scale) if use_glm else None
        )
        self.synthesizer = (
            WeightSynthesizer(
                dim,
                depth=synth.depth,
                heads=synth.heads,
                ffn_dim=synth.ffn_dim,
                memory=synth.memory,
                query=synth.query,
                detach_prototypes=synth.detach_prototypes,
                ignore_index=ignore_index,
            )
            if use_plm
            else None
        )
        self.pl_kwargs = {
            k: v
            for k, v in dict(
                scales=pl.scales,
                lam=pl.lam,
                iters=pl.iters,
                min_area=pl.min_area,
                max_regions=pl.max_regions,
                mode=pl.fusion,
            ).items()
            if v is not None
        }
        self.pl_kwargs.update(pl.kwargs or {})
        self.pl_source = pl.source
        self._configure_clip_es(pl.source, pl.clip_es)

    # ------------------------------------------------------------------ pieces
    def _configure_clip_es(self, source: str, settings: Mapping | None) -> None:
        """Validate ``pl_source`` / ``pl_clip_es`` and, for CLIP-ES, embed its prompts once (frozen teacher)."""
        if source not in ("kmeans", "clip_es"):
            raise ValueError(f"ClipZSS: pl_source must be 'kmeans' or 'clip_es', got {source!r}")
        if source != "clip_es":
            return
        unknown = sorted(set(settings or {}) - set(CLIP_ES_DEFAULTS))
        if unknown:
            raise ValueError(f"method.pl_clip_es: unknown keys {unknown}; valid: {sorted(CLIP_ES_DEFAULTS)}")
        if not (self.use_plm and self.transductive_enabled):
            raise ValueError(
                "method.pl_source=clip_es is for the transductive setting only: CLIP-ES needs image-level labels of "
                "unseen classes, which an inductive run must not know. Set method.transductive.enabled=true (and "
                "method.use_plm=true), or keep method.pl_source=kmeans."
            )
        t = self.teacher
        if not hasattr(t, "text") or not hasattr(getattr(t, "visual", None), "transformer"):
            raise ValueError(f"method.pl_source=clip_es needs a FrozenCLIP ViT teacher, got {type(t).__name__}")
        if getattr(t, "image_size", None) is not None:
            raise ValueError(
                f"method.pl_source=clip_es runs CLIP at the crop size, but teacher.image_size="
                f"{t.image_size}; set teacher.image_size=null."
            )
        cfg = {**CLIP_ES_DEFAULTS, **dict(settings or {})}
        if not cfg["template"] or not cfg["background_words"]:
            raise ValueError(
                "method.pl_clip_es needs 'template' and 'background_words' (the method config takes them "
                "from configs/clip_es/voc.yaml; for COCO-Stuff use clip_es@method.pl_clip_es=coco)"
            )
        synonyms = dict(cfg["synonyms"] or {})
        bad = sorted(set(synonyms) - set(self.classnames))
        if bad:
            raise ValueError(f"method.pl_clip_es.synonyms: {bad} are not classes of the benchmark")
        names = [str(synonyms.get(c, c)) for c in self.classnames]
        with torch.no_grad():
            self.register_buffer("_es_class_embeds", t.text(names, [cfg["template"]]).float().cpu(), persistent=False)
            self.register_buffer(
                "_es_bg_embeds",
                t.text(list(cfg["background_words"]), [cfg["template"]]).float().cpu(),
                persistent=False,
            )
        self.clip_es_cfg = cfg
        self._es_scale = float(t.model.logit_scale.exp())  # frozen teacher: read once, not per step

    @torch.no_grad()
    def clip_es_tags(self, cls: Tensor, seen_label: Tensor) -> Tensor:
        """Image-level class tags for CLIP-ES in the transductive setting (``pl_source="clip_es"``; ours).

        Seen classes: present in the seen label (exact). Unseen classes: softmax probability over all classes of
        ``exp(teacher logit_scale) · cos(CLS, prompt embed)`` at least ``pl_clip_es.tag_threshold`` (a fraction).
        The ground truth of unseen classes is never read.

        Args:
            cls: ``Tensor[B, D] float32`` teacher CLS embeds. seen_label: ``Tensor[B, H, W] int64`` seen positions
                or ``ignore_index``.
        Returns:
            ``Tensor[B, C] bool`` over the benchmark's classes (rows of ``classnames``).
        """
        B, dev = seen_label.shape[0], seen_label.device
        present = torch.zeros(B, self.num_classes, dtype=torch.bool, device=dev)
        hits = F.one_hot(seen_label.clamp(max=self.num_seen).flatten(1), self.num_seen + 1)[..., :-1].any(1)  # [B, S]
        present[:, torch.as_tensor(self.seen, device=dev)] = hits
        prob = (self._es_scale * F.normalize(cls.float(), dim=-1) @ self._es_class_embeds.to(cls.device).t()).softmax(
            -1
        )
        unseen = torch.as_tensor(self.unseen, device=dev, dtype=torch.long)
        present[:, unseen] = prob[:, unseen].to(dev) >= float(self.clip_es_cfg["tag_threshold"])
        return present

    @torch.no_grad()
    def clip_es_label_map(self, images: Tensor, cls: Tensor, seen_label: Tensor, valid: Tensor) -> Tensor:
        """Fused labels F with CLIP-ES regions as PLM's pseudo regions (``pl_source="clip_es"``, transductive).

        Image-level tags: the seen classes present in ``seen_label`` plus the unseen classes whose softmax
        probability from the CLS token (``exp(logit_scale)·cos`` over all classes) is at least
        ``pl_clip_es.tag_threshold`` (ours). CLIP-ES (:func:`zss.clip_es.clip_es_regions`) labels every pixel with
        one tagged class or background; each (image, class-or-background) becomes one pseudo region id
        ``N_seen + k`` (k counted per image), written only where the seen label is ignore and the pixel valid.

        Args:
            images: ``Tensor[B, 3, H, W] float32`` training images (dataset normalisation; the teacher converts).
            cls: teacher CLS embeds ``Tensor[B, D] float32`` (L2-normalised).
            seen_label: ``Tensor[B, H, W] int64`` seen positions or ``ignore_index``. valid: ``Tensor[B, H, W] bool``.

        Returns:
            ``Tensor[B, H, W] int64`` fused labels (same convention as :meth:`pseudo_label_map`).
        """
        from zss.clip_es import clip_es_regions

        cfg, B, C = self.clip_es_cfg, seen_label.shape[0], self.num_classes
        dev = seen_label.device
        present = self.clip_es_tags(cls, seen_label)
        with torch.autocast(images.device.type, enabled=False):  # GradCAM in full precision, as CLIP-ES
            lab = clip_es_regions(
                self.teacher,
                images.float(),
                present,
                self._es_class_embeds,
                self._es_bg_embeds,
                refine=bool(cfg["refine"]),
                alpha=float(cfg["alpha"]),
                box_threshold=float(cfg["box_threshold"]),
                attn_layers=int(cfg["attn_layers"]),
                out_size=tuple(seen_label.shape[-2:]),
            ).to(dev)  # [B, H, W] class index or -1
        write = (seen_label == self.ignore_index) & valid
        idx = lab + 1  # 0 = background words, 1 + c = class c
        used = torch.zeros(B, C + 1, dtype=torch.bool, device=dev)
        used[torch.arange(B, device=dev)[:, None, None].expand_as(idx)[write], idx[write]] = True
        rank = used.long().cumsum(1) - 1  # [B, C + 1] compact region index per image
        k = rank.gather(1, idx.flatten(1)).view_as(idx)
        write &= k < self.num_pseudo_channels((0, 0))  # never beyond the step's pseudo channels (ignore_index)
        return torch.where(write, self.num_seen + k, seen_label)

    def _fused_labels(self, images: Tensor, cls: Tensor, dense: Tensor, seen_label: Tensor, valid: Tensor) -> Tensor:
        """F from the configured ``pl_source``, less the ``pl_seen_margin`` band: ``Tensor[B, H, W] int64``."""
        if self.pl_source == "clip_es":
            fused = self.clip_es_label_map(images, cls, seen_label, valid)
        else:
            fused = self.pseudo_label_map(dense, seen_label, valid)
        margin = round(self.pl_seen_margin * seen_label.shape[-2] / dense.shape[-2])  # teacher patches -> pixels
        return clear_near_seen(fused, self.num_seen, margin, self.ignore_index)

    def pseudo_label_map(self, dense: Tensor, seen_label: Tensor, valid: Tensor) -> Tensor:
        """Fused labels F from the teacher's dense tokens (PLM, docs/methods.md (CLIP-ZSS) [summary]).

        Calls :func:`zss.ops.pseudo_labels.pseudo_labels` (multi-scale window seeds -> batched cosine
        K-Means -> mask fusion) with this method's ``pl_*`` settings.

        Args:
            dense: teacher dense tokens ``Tensor[B, D, h, w] float32`` (L2-normalised).
            seen_label: ``Tensor[B, H, W] int64`` seen positions ``[0, N_seen)`` or ``ignore_index``.
            valid: ``Tensor[B, H, W] bool``, False on padding.

        Returns:
            fused labels ``Tensor[B, H, W] int64``: the seen GT unchanged, pseudo ids ``N_seen + k``
            only where ``seen_label == ignore_index`` and ``valid``, ``ignore_index`` elsewhere.
        """
        kw = {"validate": self.debug, **self.pl_kwargs}
        out = pseudo_labels(dense, seen_label, valid, self.num_seen, ignore_index=self.ignore_index, **kw)
        return out.labels

    def num_pseudo_channels(self, grid: tuple[int, int]) -> int:
        """K, the fixed number of pseudo-region channels of :meth:`training_step` for a teacher grid ``(h, w)``.

        ``pl_max_regions`` (or, uncapped, the number of K-Means seeds on ``grid``; ``num_classes + 1`` for
        ``pl_source="clip_es"``), at most ``ignore_index - num_seen`` (pseudo ids stay below the ignore label).
        A host int from the configuration and shapes only (ours): the step never reads a count back.
        """
        if self.pl_source == "clip_es":
            k = self.num_classes + 1
        elif self.pl_kwargs.get("max_regions") is not None:
            k = int(self.pl_kwargs["max_regions"])
        else:
            k = num_seeds(grid, self.pl_kwargs.get("scales", DEFAULT_SCALES))
        if self.ignore_index >= self.num_seen:
            k = min(k, self.ignore_index - self.num_seen)
        return max(0, k)

    def _glm_inputs(self, embeds: Tensor, grid: tuple[int, int], valid: Tensor) -> tuple[Tensor, Tensor | None]:
        """Student embeds pooled for GLM (``Tensor[B, D, h', w']``, re-normalised) and their cell mask."""
        if self.glm_pool == "teacher":
            pooled = F.adaptive_avg_pool2d(embeds, grid)
        elif self.glm_pool == "none":
            pooled = embeds
        else:
            k = int(self.glm_pool)
            pooled = F.avg_pool2d(embeds, k, k, ceil_mode=True) if k > 1 else embeds
        pooled = F.normalize(pooled, dim=1)
        mask = None
        if self.glm_mask_padding:  # always built (an all-True mask changes nothing): no host check of `valid`
            mask = F.adaptive_avg_pool2d(valid[:, None].float(), pooled.shape[-2:])[:, 0] > 0  # [B, h', w']
        return pooled, mask

    def _seen_logits(self, embeds: Tensor) -> Tensor:
        """α·<R, T_seen>: ``Tensor[B, N_seen, h, w] float32``."""
        text = self.text_embeds[self.seen]
        if self.alpha is None:
            return self.student.logits(embeds, text.to(embeds.dtype)).float()
        return self.alpha * torch.einsum("bdhw,cd->bchw", F.normalize(embeds.float(), dim=1), text.float())

    def _bce(self, syn: SynthOutput) -> Tensor:
        """BCE pulling P_seen to its class's text embed (target 1) and away from the other seen classes (0)."""
        # mean over the seen slots' (slot, class) pairs, as a masked sum over every slot: no boolean indexing, no
        # host sync; 0 (with a graph) when no slot is a seen region
        sel = syn.seen_mask(self.num_seen)  # [B, Q]
        text = self.text_embeds[self.seen].float()  # [N_seen, D]
        logits = self.bce_scale * syn.weights @ text.t() + self.bce_bias  # [B, Q, N_seen]
        target = (syn.region_ids[..., None] == torch.arange(self.num_seen, device=sel.device)).float()
        per = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        n = sel.sum() * self.num_seen
        return torch.where(sel[..., None], per, 0.0).sum() / n.clamp(min=1)

    def _ce(self, logits: Tensor, target: Tensor, out: dict[str, Tensor]) -> Tensor:
        """CE on the fused labels with this method's ``ce_reduction``; logs ``loss_ce_seen`` / ``loss_ce_pseudo``
        for ``"split"``."""
        if self.ce_reduction == "joint":
            return safe_cross_entropy(logits, target, self.ignore_index)
        pix = F.cross_entropy(logits.float(), target, ignore_index=self.ignore_index, reduction="none")  # [B, H, W]
        seen_px = target < self.num_seen
        pseudo_px = (target >= self.num_seen) & (target != self.ignore_index)
        ce_seen = (pix * seen_px).sum() / seen_px.sum().clamp(min=1)
        ce_pseudo = (pix * pseudo_px).sum() / pseudo_px.sum().clamp(min=1)
        out["loss_ce_seen"], out["loss_ce_pseudo"] = ce_seen.detach(), ce_pseudo.detach()
        return ce_seen + self.pseudo_ce_weight * ce_pseudo

    @staticmethod
    def _cross_image_negatives(
        embeds: Tensor,
        p_pseudo: Tensor,
        present: Tensor,
        scale: float,
        same: float | None = None,
        bank: Tensor | None = None,
        bank_valid: Tensor | None = None,
        unit: Tensor | None = None,
    ) -> Tensor:
        """One logit channel per pixel: logsumexp of ``scale · cos(R_b, P)`` over the pseudo weights P of the other
        images of the batch and, if given, of the bank (``pseudo_negatives``), one CONCEPT counted once.

        With ``same`` (a cosine), candidates closer than ``same`` to one of image b's own present regions are
        dropped for image b (that concept already is one of its channels, e.g. the background), and each
        remaining candidate enters with weight 1/m, m = the number of valid candidates within ``same`` of it:
        twenty copies of the background weight would otherwise act as one negative with a +log 20 logit bias.
        ``same=None``: every candidate of another image once, no de-duplication.

        Args:
            embeds: R ``Tensor[B, D, h, w]``; p_pseudo: ``Tensor[B, K, D]``; present: ``Tensor[B, K] bool``;
            scale: logit scale (β); same: concept cosine threshold or None;
            bank: ``Tensor[N, D]`` past pseudo weights (detached) with ``bank_valid: Tensor[N] bool``.
            unit: ``F.normalize(embeds, dim=1)`` when the caller has it already (the same values; saves a
                normalisation and its backward); None computes it.

        Returns:
            ``Tensor[B, 1, h, w] float32``; about ``_NEG`` where there is no such candidate (finite).
        """
        B, K = present.shape
        cand = p_pseudo.reshape(B * K, -1)  # the batch's regions, then the bank's
        valid = present.reshape(-1)
        owner = torch.arange(B, device=present.device).repeat_interleave(K)  # image of each batch candidate
        if bank is not None:
            cand = torch.cat([cand, bank.to(cand.dtype)])
            valid = torch.cat([valid, bank_valid])
            owner = torch.cat([owner, owner.new_full((len(bank),), -1)])
        allowed = valid[None] & (owner[None] != torch.arange(B, device=owner.device)[:, None])  # [B, M]
        log_w = torch.zeros_like(allowed, dtype=torch.float32)
        if same is not None:
            cn = F.normalize(cand.detach().float(), dim=-1)
            close = (cn @ cn.t()) > same  # [M, M]
            mult = (close & valid[None]).sum(1).clamp(min=1)  # [M]
            own = close[: B * K].reshape(B, K, -1) & present[..., None]  # [B, K, M]: near one of image b's regions
            allowed = allowed & ~own.any(1)
            log_w = log_w - mult.float().log()[None]
        rn = F.normalize(embeds, dim=1) if unit is None else unit
        cos = torch.einsum("bdhw,md->bmhw", rn, F.normalize(cand, dim=-1).to(embeds.dtype)).float()
        z = (scale * cos + log_w[..., None, None]).masked_fill(~allowed[..., None, None], _NEG)
        return torch.logsumexp(z, dim=1, keepdim=True)

    @torch.no_grad()
    def pseudo_label_report(
        self, images: Tensor, label: Tensor, full_label: Tensor, valid: Tensor | None = None
    ) -> dict[str, Tensor]:
        """Pseudo-label quality on images with FULL labels (diagnostics; ours, never part of training).

        Runs the teacher and PLM exactly as :meth:`training_step` does, then scores the fused labels with
        :func:`zss.ops.pseudo_labels.pseudo_label_quality`.

        Args:
            images: ``Tensor[B, 3, H, W] float32`` (normalised like training images).
            label: ``Tensor[B, H, W] int64`` seen-only training label (benchmark ids, unseen/ignore = 255).
            full_label: ``Tensor[B, H, W] int64`` all-class ground truth (the oracle teacher reads it; other
                teachers never see it).
            valid: optional ``Tensor[B, H, W] bool`` (False on padding).

        Returns:
            dict of ``Tensor[B] float32``: ``regions``, ``purity``, ``unseen_isolated`` (NaN where undefined).

        Raises:
            ValueError: the method has no PLM (``use_plm=False``) or no teacher.
        """
        if not self.use_plm or self.teacher is None:
            raise ValueError("pseudo_label_report needs PLM (method.use_plm=true) and a teacher")
        needs = getattr(self.teacher, "needs_full_label", False)
        teach = self.teacher(images, full_label=full_label if needs else None)
        valid = torch.ones_like(label, dtype=torch.bool) if valid is None else valid.bool()
        fused = (
            self._fused_labels(images, teach["cls"].float(), teach["dense"].float(), self.to_seen_ids(label), valid)
            .to(label.device)
            .long()
        )
        return pseudo_label_quality(fused, full_label, self.num_seen, self.unseen, self.num_classes, self.ignore_index)

    # ------------------------------------------------------------------ training
    def training_step(self, batch: dict) -> dict[str, Tensor]:
        """One CLIP-ZSS training step.

        Args:
            batch: ``image`` Tensor[B, 3, H, W] float32 (normalised), ``label`` Tensor[B, H, W] int64
                (seen-only benchmark ids, 255 elsewhere), optional ``full_label`` Tensor[B, H, W]
                (read only by the OracleTeacher), optional ``valid`` Tensor[B, H, W] bool (False on
                padding; all True when missing).

        Returns:
            dict of scalars: ``loss`` = glm_weight·L_GLM + nel_weight·L_NEL + ce_weight·L_CE +
            bce_weight·L_BCE (with graph); unweighted, detached ``loss_glm``, ``loss_ce``,
            ``loss_nel`` (= focal_weight·focal + dice_weight·dice), ``loss_focal``, ``loss_dice``,
            ``loss_bce``, ``glm_acc`` (fraction of anchors whose own CLS scores highest) and
            ``pl_regions`` (mean pseudo regions per image), plus ``loss_st`` / ``st_pixels`` of the
            transductive term (``loss`` += its weight · ``loss_st`` when enabled; see
            :meth:`~zss.methods.base.Method.add_self_training`). Disabled terms are reported as 0.
        """
        images, label = batch["image"], batch["label"]  # [B,3,H,W], [B,H,W]
        valid = batch.get("valid")
        valid = torch.ones_like(label, dtype=torch.bool) if valid is None else valid.to(label.device).bool()
        seen_label = self.to_seen_ids(label)  # [B, H, W] seen positions / 255

        embeds = self.student(images)  # R [B, D, h_s, w_s]
        zero = _zero(embeds)
        out: dict[str, Tensor] = {
            k: zero
            for k in ("loss_glm", "loss_ce", "loss_nel", "loss_focal", "loss_dice", "loss_bce", "glm_acc", "pl_regions")
        }
        if self.use_plm and batch.get("full_label") is not None:
            out.update(pl_purity=zero, pl_unseen_isolated=zero)
        teach = None
        if self.use_glm or self.use_plm:
            with torch.no_grad():
                # only a label-derived teacher (OracleTeacher.needs_full_label) may read the full label map
                teach = self.teacher(images, full_label=self.full_label_for_teacher(batch))
            cls = teach["cls"].detach().float()  # [B, D]
            dense = teach["dense"].detach().float()  # [B, D, h, w]
        total = zero
        cross = None  # other images' pseudo regions as one negative channel for seen pixels (pseudo_negatives)

        # ---- GLM
        if self.use_glm:
            pooled, mask = self._glm_inputs(embeds, tuple(dense.shape[-2:]), valid)
            glm = self.glm(pooled, cls, mask)
            total = total + self.glm_weight * glm["loss_glm"]
            out["loss_glm"], out["glm_acc"] = glm["loss_glm"].detach(), glm["glm_acc"]

        # ---- PLM: fused labels, synthesized weights, logits over seen + pseudo channels
        logits = self._seen_logits(embeds)  # [B, N_seen, h_s, w_s]
        target = seen_label
        class_mask = None
        if self.use_plm:
            with torch.no_grad():
                fused = self._fused_labels(images, cls, dense, seen_label, valid).to(label.device).long()  # F [B,H,W]
            # K pseudo channels, fixed by the config (pl_max_regions) and the teacher grid, never read from the data
            # (no host sync); ids of absent regions are masked (present False)
            max_pseudo = self.num_pseudo_channels(tuple(dense.shape[-2:]))
            syn = self.synthesizer(
                embeds, fused, cls, dense=dense, num_ids=self.num_seen + max_pseudo, layout="by_id", validate=self.debug
            )
            p_pseudo, present = syn.by_id(self.num_seen, max_pseudo)  # [B, K, D], [B, K]
            if max_pseudo > 0:
                if self.detach_pseudo_weights:  # the synthesizer learns from BCE only; CE trains the student
                    p_pseudo = p_pseudo.detach()
                unit = F.normalize(embeds, dim=1)  # [B, D, h_s, w_s], shared by the pseudo and negative channels
                cos = torch.einsum("bdhw,bkd->bkhw", unit, p_pseudo.to(embeds.dtype)).float()
                pl = (self.beta * cos).masked_fill(~present[:, :, None, None], _NEG)
                logits = torch.cat([logits, pl], dim=1)  # [B, N_seen + K, h_s, w_s]
                if self.pseudo_bank is not None:
                    cross = self._cross_image_negatives(
                        embeds, p_pseudo, present, self.beta, self.pseudo_same, *self.pseudo_bank.get(), unit=unit
                    )
                    self.pseudo_bank.push(p_pseudo, present)
                elif self.pseudo_negatives == "batch" and len(present) > 1:
                    cross = self._cross_image_negatives(
                        embeds,
                        p_pseudo,
                        present,
                        self.beta,  # [B, 1, h_s, w_s]
                        self.pseudo_same,
                        unit=unit,
                    )
            class_mask = torch.cat([present.new_ones(len(present), self.num_seen), present], dim=1)
            target = fused
            loss_bce = self._bce(syn)
            # keeps every synthesizer parameter in the graph even when a batch has no region (DDP)
            total = total + self.bce_weight * loss_bce + syn.weights.sum() * 0.0
            out["loss_bce"] = loss_bce.detach()
            out["pl_regions"] = syn.pseudo_mask(self.num_seen).sum(1).float().mean().detach()
            if batch.get("full_label") is not None:  # diagnostics only: never part of the loss
                q = pseudo_label_quality(
                    fused,
                    batch["full_label"].to(fused.device),
                    self.num_seen,
                    self.unseen,
                    self.num_classes,
                    self.ignore_index,
                    num_regions=max_pseudo,
                )
                out["pl_purity"] = q["purity"].nanmean().nan_to_num(0.0)
                out["pl_unseen_isolated"] = q["unseen_isolated"].nanmean().nan_to_num(0.0)

        if self.loss_resolution == "label":
            logits = upsample_logits(logits, tuple(target.shape[-2:]))
            cross = None if cross is None else upsample_logits(cross, tuple(target.shape[-2:]))
        else:
            target = nearest_down(target, tuple(logits.shape[-2:]))
        if cross is None:
            loss_ce = self._ce(logits, target, out)
        else:  # the extra channel is a negative for seen pixels only (never a target: its index is past every id)
            cross = cross.masked_fill((target >= self.num_seen)[:, None], _NEG)
            loss_ce = self._ce(torch.cat([logits, cross.to(logits.dtype)], dim=1), target, out)
        total = total + self.ce_weight * loss_ce
        out["loss_ce"] = loss_ce.detach()
        if self.nel_weight:  # NEL is off by default (docs/methods.md "NEL"): not computed then
            nel = nel_loss(
                logits,
                target,
                self.ignore_index,
                class_mask,
                self.focal_weight,
                self.dice_weight,
                focal_reduction=self.focal_reduction,
                bias=self.nel_bias,
                validate=self.debug,
            )
            total = total + self.nel_weight * nel["loss_nel"]
            out.update(loss_nel=nel["loss_nel"].detach(), loss_focal=nel["loss_focal"], loss_dice=nel["loss_dice"])
        out["loss"] = total
        return self.add_self_training(out, embeds, label, valid)

    # ------------------------------------------------------------------ optimisation
    def param_groups(self, lr: float, head_lr_mult: float = 10.0, weight_decay: float = 0.01) -> list[dict]:
        """Student groups (backbone lr, head lr × head_lr_mult) plus the synthesizer at the head lr
        (weight decay on ≥2-D weights only, as the student's rule). The teacher is never included."""
        groups = list(self.student.param_groups(lr, head_lr_mult=head_lr_mult, weight_decay=weight_decay))
        if self.synthesizer is not None:
            decay = [p for p in self.synthesizer.parameters() if p.requires_grad and p.ndim > 1]
            no_decay = [p for p in self.synthesizer.parameters() if p.requires_grad and p.ndim <= 1]
            if decay:
                groups.append(
                    dict(
                        params=decay,
                        lr=lr * head_lr_mult * self.synth_lr_mult,
                        weight_decay=weight_decay,
                        name="synthesizer",
                    )
                )
            if no_decay:
                groups.append(
                    dict(
                        params=no_decay,
                        lr=lr * head_lr_mult * self.synth_lr_mult,
                        weight_decay=0.0,
                        name="synthesizer_no_decay",
                    )
                )
        return groups
