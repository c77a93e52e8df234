"""The `Method` seam: a method owns the student, the frozen teacher and its losses.

A method is an ``nn.Module`` whose trainable state is the student (plus any light trainable parts
the method adds); the teacher is frozen, kept out of the optimizer and out of checkpoints
(see :meth:`Method.checkpoint_state`). Text embeddings of every class of the benchmark are
computed once from the teacher at construction and stored as a buffer, so evaluation of a
checkpoint needs no teacher weights for the training vocabulary.

The base class also carries the optional TRANSDUCTIVE setting shared by every method
(:meth:`Method.configure_transductive`, :meth:`Method.self_training_loss`): unseen class names are
known during training (``text_embeds`` holds every class anyway) and unlabelled pixels are
self-trained with the model's own confident unseen-class predictions. Off by default (inductive).
"""

from __future__ import annotations

import difflib
import inspect
import math
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zss.methods.settings import Settings

#: Label spaces of :meth:`Method.predict` / :meth:`Method.label_space_ids`: GZSS (all) and ZSS (unseen).
LABEL_SPACES = ("all", "unseen")
#: Finite logit given to excluded classes by ``Method.predict(label_space="unseen")`` (logits are
#: ``logit_scale * cosine``, |logit| <= ~14 with our 1/0.07). Finite so resizing can never make NaN.
#: Not in the papers: ours.
MASKED_LOGIT = -1.0e4


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
        transductive: optional mapping of transductive self-training settings (config block
            ``method.transductive``), keys ``enabled``, ``start_step``, ``threshold``, ``weight``,
            ``topk_fraction`` — see :meth:`configure_transductive`. None or a missing key = that
            setting's default (None: off, the inductive setting).

    Subclasses take their own settings grouped in frozen dataclasses (:attr:`SETTINGS`, one per section of the
    method's config); :meth:`from_flat` builds a method from the config's flat keys.

    Raises:
        ValueError: when neither a teacher nor ``text_embeds`` is given, ``unseen`` holds an id
            outside ``[0, C_all)``, or ``transductive`` has an unknown key or a bad value.
    """

    #: keys of the ``transductive`` constructor mapping (= :meth:`configure_transductive` arguments)
    TRANSDUCTIVE_KEYS = ("enabled", "start_step", "threshold", "weight", "topk_fraction")
    #: run input checks that read values back to the host (GPU syncs) inside ``training_step``; methods that
    #: take a ``debug`` argument set it (ClipZSS, ChimeraSeg), off by default (ours)
    debug: bool = False
    #: values of flat config keys (``glm_attn_scale``, as :meth:`from_flat` takes them) a checkpoint's stored
    #: ``method`` config lacks (older checkpoints were trained with the constructor defaults of their time);
    #: :func:`zss.loading.load_for_inference` fills them in before today's defaults apply. Subclasses list every
    #: default that changed after checkpoints were written.
    CHECKPOINT_DEFAULTS: Mapping = {}
    #: how images are prepared for :meth:`predict` (set by :func:`zss.loading.load_for_inference`, None for a method
    #: built in Python): ``mean`` / ``std`` (RGB, [0, 1] units, the normalisation ``predict`` expects) and the test
    #: resize ``short_side`` / ``long_side`` (pixels); :func:`zss.predict.predict_image` reads it
    preprocessing: dict | None = None
    #: the grouped settings of the constructor, ``{argument: Settings class}`` (:mod:`zss.methods.settings`), in
    #: config order; :meth:`from_flat` groups the flat config keys of each into one instance. None here.
    SETTINGS: Mapping[str, type[Settings]] = {}

    @classmethod
    def flat_keys(cls) -> dict[str, tuple[str, str]]:
        """``{flat config key: (constructor argument, field)}`` of every grouped setting (``glm_tau`` ->
        ``("glm", "tau")``)."""
        return {key: (arg, name) for arg, group in cls.SETTINGS.items() for name, key in group.flat_keys().items()}

    @classmethod
    def flat_defaults(cls) -> dict[str, Any]:
        """The keyword-only constructor defaults as flat config keys, grouped settings expanded (``glm_tau``:
        0.07, ``use_glm``: True, ...): what ``configs/method/<name>.yaml`` states (tests/test_method_defaults.py)."""
        out: dict[str, Any] = {}
        for name, p in inspect.signature(cls).parameters.items():
            if p.kind is p.KEYWORD_ONLY:
                out.update(p.default.to_flat() if name in cls.SETTINGS else {name: p.default})
        return out

    @classmethod
    def group_flat(cls, kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """Constructor arguments from flat keys: each grouped setting's flat keys (``glm_tau``) become one
        instance of its :class:`~zss.methods.settings.Settings` class (fields not given keep their defaults);
        the other keys are passed through. A group may also be given whole (``glm=GLMSettings(...)``) when
        none of its flat keys is.

        Raises:
            TypeError: a key that is neither a constructor argument nor a flat key of a grouped setting (names
                the key, the method and the closest valid keys), or a group given both whole and as flat keys.
        """
        params = inspect.signature(cls).parameters
        flat = cls.flat_keys()
        grouped: dict[str, dict[str, Any]] = {}
        out: dict[str, Any] = {}
        for key, value in kwargs.items():
            if key in flat:
                arg, name = flat[key]
                grouped.setdefault(arg, {})[name] = value
            elif key in params and params[key].kind not in (
                inspect.Parameter.VAR_POSITIONAL,
                inspect.Parameter.VAR_KEYWORD,
            ):
                out[key] = value
            else:
                valid = sorted(set(flat) | set(params) - set(cls.SETTINGS))
                close = difflib.get_close_matches(str(key), valid, n=3)
                hint = f"did you mean {close}?" if close else f"valid keys: {valid}"
                raise TypeError(f"{cls.__name__}.from_flat() got an unexpected setting {key!r} (method.{key}); {hint}")
        for arg, fields in grouped.items():
            if arg in out:
                raise TypeError(
                    f"{cls.__name__}.from_flat(): {arg}= is given whole and as flat keys "
                    f"{sorted(cls.SETTINGS[arg].flat_keys()[f] for f in fields)}; give one of the two"
                )
            out[arg] = cls.SETTINGS[arg](**fields)
        return out

    @classmethod
    def from_flat(cls, *args: Any, **kwargs: Any) -> "Method":
        """The method built from FLAT settings: the keys of its config (``configs/method/<name>.yaml``:
        ``glm_tau=0.1``, ``nel_weight=1.0``) plus the constructor's own arguments (``student``, ``teacher``,
        ``classnames``, ..., positional as in the constructor or by name). What every config loader calls
        (``scripts/train.py``, :func:`zss.create_method`, :func:`zss.from_checkpoint`); equal to the constructor
        with the grouped settings (:meth:`group_flat`)::

            ClipZSS.from_flat(student, teacher, classnames, unseen, glm_tau=0.1, nel_weight=1.0)
            # == ClipZSS(student, teacher, classnames, unseen, glm=GLMSettings(tau=0.1),
            #            loss=ClipZSSLossSettings(nel_weight=1.0))

        Raises:
            TypeError: see :meth:`group_flat`; ValueError: whatever the constructor rejects.
        """
        return cls(*args, **cls.group_flat(kwargs))

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module | None,
        classnames: Sequence[str],
        unseen: Sequence[int],
        templates: Sequence[str] = ("a photo of a {}.",),
        text_embeds: Tensor | None = None,
        ignore_index: int = 255,
        transductive: Mapping | None = None,
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
        # ---- transductive self-training (off by default = inductive); the step comes from set_step()
        self._step = 0
        transductive = dict(transductive or {})
        unknown = sorted(set(transductive) - set(self.TRANSDUCTIVE_KEYS))
        if unknown:
            raise ValueError(
                f"method.transductive: unknown key(s) {unknown}; valid keys are {list(self.TRANSDUCTIVE_KEYS)}"
            )
        self.configure_transductive(**transductive)

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

    def full_label_for_teacher(self, batch: Mapping) -> Tensor | None:
        """``batch["full_label"]`` (all classes, unseen included) when the teacher declares
        ``needs_full_label`` (the label-derived OracleTeacher), else None: the only way a method passes the
        full label to its teacher, so a CLIP teacher never receives unseen ground truth even when a batch
        carries it. Source: not in the papers: our guard (docs/protocol.md "Settings").

        Args:
            batch: a training batch (dict); ``full_label`` Tensor[B, H, W] int64 may be absent.
        Returns:
            ``Tensor[B, H, W] int64`` or None.
        """
        if getattr(self.teacher, "needs_full_label", False):
            return batch.get("full_label")
        return None

    def set_vocabulary(self, classnames: Sequence[str], unseen: Sequence[int], text_embeds: Tensor) -> None:
        """Switch the label space for inference (open-vocabulary / cross-dataset evaluation).

        Args:
            classnames: the new C classes in label-id order. unseen: ids among them to report as
                unseen (may be empty). text_embeds: Tensor[C, D] float32 for ``classnames``.

        Raises:
            ValueError: ``text_embeds`` does not have one row per class or the teacher's D.
        """
        if text_embeds.shape[0] != len(classnames) or text_embeds.shape[1] != self.text_embeds.shape[1]:
            raise ValueError(
                f"text_embeds {tuple(text_embeds.shape)} do not match {len(classnames)} classes x "
                f"D={self.text_embeds.shape[1]}"
            )
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
        """Logits over all classes for ``images`` at the input size (seen ones :data:`MASKED_LOGIT` for ``unseen``).

        The contract of every zss method: ``Tensor[B, C, H, W] float32`` per-class scores at the size of
        ``images``, whose argmax over classes is the prediction; ``seen_bias`` (evaluation, ``predict_image``) is
        subtracted from the seen classes of exactly this output, so it is in the units of ``predict`` (logit
        units). The students' logits are ``logit_scale · cos(embed, text)`` at stride 4, upsampled bilinearly
        (``align_corners=False``) to the input size, as the evaluator resized them before. CLIP-RC / ZegCLIP
        return their per-class sigmoid scores as their logits (:meth:`zss.methods.clip_rc.ClipRC.predict`).

        The evaluation engine always calls ``label_space="all"`` and restricts the argmax to the label
        space after resizing (:meth:`label_space_ids`, :func:`zss.engine.inference.argmax_classes`).
        ``label_space="unseen"`` is for direct callers: the seen logits are set to the FINITE
        :data:`MASKED_LOGIT` (never ``-inf``: bilinear resizing of ``-inf`` makes ``0 * -inf = NaN`` where an
        interpolation weight is 0, and an argmax then picks the NaN, a seen class).

        Args:
            images: Tensor[B, 3, H, W] float32, normalised.
            label_space: ``all`` (GZSS: every class) or ``unseen`` (ZSS: seen logits = ``MASKED_LOGIT``).

        Returns:
            Tensor[B, C_all, H, W] float32 logits at the input size.

        Raises:
            ValueError: unknown ``label_space``.
        """
        if label_space not in LABEL_SPACES:
            raise ValueError(f"label_space must be 'all' or 'unseen', got {label_space!r}")
        embeds = self.student(images)
        logits = self.student.logits(embeds, self.text_embeds.to(embeds.dtype)).float()  # [B, C, h, w] stride 4
        logits = upsample_logits(logits, tuple(images.shape[-2:]))  # [B, C, H, W]
        if label_space == "unseen":
            logits[:, self.seen] = MASKED_LOGIT
        return logits

    def label_space_ids(self, label_space: str = "all") -> Tensor | None:
        """The class ids a prediction in ``label_space`` may take: None for ``all`` (every class, GZSS),
        ``unseen`` (``Tensor[K] int64``) for ``unseen`` (ZSS).

        Raises:
            ValueError: unknown ``label_space``, or ``unseen`` with no unseen class (e.g. after
                :meth:`set_vocabulary` with ``unseen=[]``).
        """
        if label_space not in LABEL_SPACES:
            raise ValueError(f"label_space must be 'all' or 'unseen', got {label_space!r}")
        if label_space == "all":
            return None
        if self.unseen.numel() == 0:
            raise ValueError(
                "label_space=unseen needs unseen classes, but this vocabulary has none; use label_space=all"
            )
        return self.unseen

    def param_groups(self, lr: float, head_lr_mult: float = 10.0, weight_decay: float = 0.01) -> list[dict]:
        """Optimizer parameter groups: the student's (backbone lr, head lr × head_lr_mult)."""
        return self.student.param_groups(lr, head_lr_mult=head_lr_mult, weight_decay=weight_decay)

    def on_step(self, step: int, max_steps: int) -> None:
        """Hook called by the trainer before every optimizer step (for schedules); no-op here."""

    def set_step(self, step: int) -> None:
        """Record the current optimizer step (0-based); the trainer calls it before every step, next to
        :meth:`on_step` (which subclasses override freely). Read by the transductive ``start_step``
        gate. A method driven outside the trainer stays at step 0 unless this is called."""
        self._step = int(step)

    # ------------------------------------------------------------------ transductive setting
    def configure_transductive(
        self,
        enabled: bool = False,
        start_step: int = 0,
        threshold: float = 0.7,
        weight: float = 1.0,
        topk_fraction: float | None = None,
    ) -> None:
        """Settings of the transductive self-training term (:meth:`self_training_loss`).

        Transductive setting (ZegCLIP and CLIP-RC offer one): the unseen class NAMES are known during
        training and unlabelled training pixels are self-trained with the model's own confident
        unseen-class predictions. The warm start (``start_step``) is inspired by ZegCLIP's transductive
        recipe, which self-trains only after an inductive phase; everything else here — the selection
        rule, threshold, weight and top-k — is ours (not in the papers: our defaults), not a copy of it.

        Args:
            enabled: turn the term on (default False = the inductive setting).
            start_step: optimizer steps (0-based, as :meth:`set_step`) before which the term is 0
                [ours: 0; ZegCLIP warms up inductively first].
            threshold: minimum softmax probability (a fraction in [0, 1], over ALL classes) of an
                unseen-class prediction for a pixel to be a pseudo target [ours: 0.7].
            weight: weight of the term in the total loss, >= 0 [ours: 1.0].
            topk_fraction: None (keep every pixel that passes the threshold) or a fraction in (0, 1]:
                of the passing pixels of the batch keep only the ``ceil(fraction · n)`` most confident
                [ours: None].

        Raises:
            ValueError: a value out of range (the message names the ``method.transductive`` key).
        """
        if int(start_step) < 0:
            raise ValueError(f"method.transductive.start_step must be >= 0, got {start_step}")
        if not 0.0 <= float(threshold) <= 1.0:
            raise ValueError(f"method.transductive.threshold is a probability in [0, 1], got {threshold}")
        if not float(weight) >= 0.0:
            raise ValueError(f"method.transductive.weight must be >= 0, got {weight}")
        if topk_fraction is not None and not 0.0 < float(topk_fraction) <= 1.0:
            raise ValueError(f"method.transductive.topk_fraction must be null or in (0, 1], got {topk_fraction}")
        self.transductive_enabled = bool(enabled)
        self.transductive_start_step = int(start_step)
        self.transductive_threshold = float(threshold)
        self.transductive_weight = float(weight)
        self.transductive_topk_fraction = None if topk_fraction is None else float(topk_fraction)

    @property
    def self_training_active(self) -> bool:
        """True when the transductive term is enabled and the current step has reached ``start_step``."""
        return self.transductive_enabled and self._step >= self.transductive_start_step

    @torch.no_grad()
    def self_training_targets(self, logits: Tensor, label: Tensor, valid: Tensor | None = None) -> Tensor:
        """Pseudo targets of the transductive term from all-class logits (no graph).

        A pixel gets a target iff it is unlabelled (``label == ignore_index``) and inside the image
        (``valid``; padding never), the argmax over ALL classes of its softmax is an UNSEEN class, and
        that probability is ``>= threshold``; with ``topk_fraction`` only the ``ceil(fraction · n)`` most
        confident of those n pixels of the batch are kept (ties broken by position order). Seen-class
        argmaxes are never used (the seen classes are supervised by the labels). Source: ours (see
        :meth:`configure_transductive`).

        Args:
            logits: ``Tensor[B, C_all, H, W]`` float logits at the label size (pixels).
            label: ``Tensor[B, H, W] int64`` training label (benchmark ids, ``ignore_index`` unlabelled).
            valid: ``Tensor[B, H, W] bool`` (False on padding) or None (all valid).

        Returns:
            ``Tensor[B, H, W] int64``: an unseen class id where the pixel is kept, ``ignore_index`` elsewhere.

        Raises:
            ValueError: ``logits`` does not have C_all channels or the label's spatial size.
        """
        B, C, H, W = logits.shape
        if C != self.num_classes or tuple(label.shape) != (B, H, W):
            raise ValueError(
                f"self_training_targets: logits {tuple(logits.shape)} need {self.num_classes} classes "
                f"and the label size {tuple(label.shape)}"
            )
        prob, pred = logits.float().softmax(dim=1).max(dim=1)  # [B, H, W] each
        is_unseen = torch.zeros(C, dtype=torch.bool, device=logits.device)
        is_unseen[self.unseen] = True
        keep = (label == self.ignore_index) & is_unseen[pred] & (prob >= self.transductive_threshold)
        if valid is not None:
            keep &= valid.to(keep.device).bool()
        frac = self.transductive_topk_fraction
        n = int(keep.sum())
        if frac is not None and n > 0:
            n_keep = min(n, max(1, math.ceil(frac * n)))
            if n_keep < n:
                conf = prob.flatten().masked_fill(~keep.flatten(), -1.0)  # [B*H*W]
                order = torch.sort(conf, descending=True, stable=True).indices[:n_keep]
                top = torch.zeros_like(keep.flatten())
                top[order] = True
                keep = top.view_as(keep)
        return torch.where(keep, pred, torch.full_like(pred, self.ignore_index))

    def _self_training(self, embeds: Tensor, label: Tensor, valid: Tensor | None) -> tuple[Tensor, Tensor]:
        """(unweighted loss with graph, number of pseudo-labelled pixels as float32 tensor)."""
        # +0.0 (not -0.0) attached to the graph, so DDP sees every parameter used and logs read 0
        zero = embeds.new_zeros((), dtype=torch.float32) + embeds.float().sum() * 0.0
        if not self.self_training_active:
            return zero, zero.detach()
        logits = self.student.logits(embeds, self.text_embeds.to(embeds.dtype)).float()  # [B, C_all, h, w]
        logits = upsample_logits(logits, tuple(label.shape[-2:]))  # [B, C_all, H, W]
        target = self.self_training_targets(logits.detach(), label, valid)  # [B, H, W]
        keep = target != self.ignore_index
        n = keep.sum()
        if int(n) == 0:
            return zero, n.float()
        picked = logits.permute(0, 2, 3, 1)[keep]  # [N, C_all]
        return F.cross_entropy(picked, target[keep]), n.float()

    def self_training_loss(self, embeds: Tensor, label: Tensor, valid: Tensor | None = None) -> Tensor:
        """Transductive self-training loss (unweighted): CE over ALL classes on confident unseen predictions.

        Logits = ``student.logits(embeds, text_embeds)`` (the test-time logits), bilinearly upsampled to the
        label size; pseudo targets from :meth:`self_training_targets` (computed without a graph, i.e.
        detached); mean cross-entropy over the kept pixels. Source: ours, ZegCLIP's warm-started
        transductive self-training as the inspiration (see :meth:`configure_transductive`).

        Args:
            embeds: student dense embeds ``Tensor[B, D, h, w]`` (L2-normalised; the ones the seen CE uses).
            label: ``Tensor[B, H, W] int64`` training label (``ignore_index`` = unlabelled).
            valid: ``Tensor[B, H, W] bool`` (False on padding) or None (all valid).

        Returns:
            scalar float32 tensor; exactly 0 (still attached to the graph) when the term is disabled,
            before ``start_step`` or when no pixel qualifies.
        """
        return self._self_training(embeds, label, valid)[0]

    def add_self_training(
        self, out: dict[str, Tensor], embeds: Tensor, label: Tensor, valid: Tensor | None = None
    ) -> dict[str, Tensor]:
        """Add the weighted transductive term to ``out["loss"]`` and report it; returns ``out``.

        Sets ``out["loss_st"]`` (unweighted, detached; 0 when off) and ``out["st_pixels"]`` (pseudo-labelled
        pixels in the batch, 0 when off). When the term is disabled ``out["loss"]`` is left untouched (the
        inductive setting is bit-for-bit the same); when enabled it becomes ``loss + weight · loss_st``.
        Called at the end of every method's ``training_step``; arguments as :meth:`self_training_loss`.
        """
        if not self.transductive_enabled:
            z = out["loss"].new_zeros((), dtype=torch.float32).detach()
            out["loss_st"], out["st_pixels"] = z, z
            return out
        loss_st, n = self._self_training(embeds, label, valid)
        out["loss"] = out["loss"] + self.transductive_weight * loss_st
        out["loss_st"], out["st_pixels"] = loss_st.detach(), n
        return out

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
    would poison the step; this returns 0 instead (selected on the device with ``torch.where``: no host
    sync; the NaN branch gets a zero gradient, and with every pixel ignored its gradient is 0 anyway).

    Args:
        logits: Tensor[B, C, H, W] float32. target: Tensor[B, H, W] int64 in [0, C) or ignore_index.
    """
    ce = F.cross_entropy(logits.float(), target, ignore_index=ignore_index)
    return torch.where((target != ignore_index).any(), ce, 0.0)


def upsample_logits(logits: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear (align_corners=False) resize of logits ``Tensor[B, C, h, w]`` to ``size`` (pixels)."""
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
