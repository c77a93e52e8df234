"""Losses shared by the distillation methods (CLIP-ZSS, Chimera-Seg).

* :func:`cls_attention_pool` — CLIP-ZSS GLM's "CLS as query" pooling of dense embeds (docs/methods.md (CLIP-ZSS)).
* :class:`CLSBank` — FIFO queue of past CLIP CLS tokens used as extra InfoNCE negatives (a
  :class:`~zss.utils.bank.FifoBank`).
* :func:`info_nce` / :class:`GlobalDistillLoss` — the GLM objective (docs/methods.md (CLIP-ZSS); Chimera-Seg's SGD
  reuses it, docs/methods.md (Chimera-Seg)).
* :func:`sigmoid_focal_loss`, :func:`dice_loss`, :func:`nel_loss` — ZegCLIP's non-mutually-exclusive
  loss (NEL), per-class sigmoid focal + dice, with ignore pixels excluded.

Every function works in float32 internally (inputs under autocast are upcast) and returns a scalar
``Tensor[] float32`` that carries a graph to its differentiable inputs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zss.utils.bank import FifoBank
from zss.utils.dist import all_gather_cat

__all__ = [
    "cls_attention_pool",
    "CLSBank",
    "info_nce",
    "GlobalDistillLoss",
    "sigmoid_focal_loss",
    "dice_loss",
    "nel_loss",
]


# ---------------------------------------------------------------------------------------------- GLM
def cls_attention_pool(embeds: Tensor, cls: Tensor, scale: float | None = None, mask: Tensor | None = None) -> Tensor:
    """Pool dense embeds with the CLS token as the attention query (CLIP-ZSS GLM, docs/methods.md (CLIP-ZSS) [summary]).

    ``W = softmax_L(scale · <S, R_l>)``, ``Ŝ = Σ_l W_l · R_l``: a CLS token predicted from the
    student's dense features. The result is *not* normalised; L2-normalise it before a cosine loss.

    Args:
        embeds: R, ``Tensor[B, D, L]`` or ``Tensor[B, D, h, w]`` (any float dtype), usually L2-normalised
            over D.
        cls: S, ``Tensor[B, D]`` CLS token (L2-normalised). No gradient is needed through it.
        scale: attention temperature; ``None`` -> ``1/sqrt(D)`` (the summary's ``S·R/√D``). Note that
            with unit-norm S and R the logits lie in ``[-1/√D, 1/√D]``, so the default attention is
            close to uniform; pass e.g. ``1/0.07`` for a peakier pooling (not in the paper).
        mask: optional ``Tensor[B, L]`` or ``Tensor[B, h, w]`` bool, True = position may be attended
            (e.g. not padding). A row with no True position falls back to attending everywhere.

    Returns:
        Ŝ ``Tensor[B, D]`` in ``embeds.dtype`` promoted with ``cls.dtype``.

    Raises:
        ValueError: on mismatched batch / channel sizes or a mask of the wrong size.
    """
    if embeds.dim() == 4:
        embeds = embeds.flatten(2)  # [B, D, L]
    if embeds.dim() != 3 or cls.dim() != 2 or embeds.shape[:2] != cls.shape:
        raise ValueError(
            f"cls_attention_pool: embeds must be [B, D, L] or [B, D, h, w] and cls [B, D]; got "
            f"{tuple(embeds.shape)} and {tuple(cls.shape)}"
        )
    dim = embeds.shape[1]
    scale = 1.0 / math.sqrt(dim) if scale is None else float(scale)
    cls = cls.to(embeds.dtype)
    attn = torch.einsum("bd,bdl->bl", cls, embeds).float() * scale  # [B, L]
    if mask is not None:
        mask = mask.reshape(mask.shape[0], -1).bool()
        if mask.shape != attn.shape:
            raise ValueError(f"cls_attention_pool: mask {tuple(mask.shape)} does not match [B, L]={tuple(attn.shape)}")
        mask = mask | ~mask.any(dim=1, keepdim=True)  # all-masked rows attend everywhere
        attn = attn.masked_fill(~mask, float("-inf"))
    weights = attn.softmax(dim=-1).to(embeds.dtype)  # [B, L]
    return torch.einsum("bl,bdl->bd", weights, embeds)


class CLSBank(FifoBank):
    """FIFO queue of past CLS tokens, used as extra InfoNCE negatives (docs/methods.md (CLIP-ZSS); size is ours).

    A :class:`~zss.utils.bank.FifoBank` (not trained, non-persistent buffers, saved with the training state by the
    trainer) whose :meth:`get` is the stored tokens oldest first and whose training state names them ``tokens``.
    The teacher is frozen, so stored CLS tokens never go stale and no momentum encoder is needed.

    Args:
        size: capacity M (tokens, ``method.bank_size``). ``size=0`` gives an always-empty bank. Our default
            elsewhere: 1024.
        dim: token dimension D.

    Raises:
        ValueError: if ``size < 0`` or ``dim < 1``.
    """

    def __init__(self, size: int, dim: int) -> None:
        super().__init__(size, dim, name="CLSBank", size_key="bank_size", state_key="tokens")

    def get(self) -> Tensor:
        """Stored tokens, oldest first: ``Tensor[n, D] float32`` with ``n = min(pushed, size)`` (a copy;
        :meth:`~zss.utils.bank.FifoBank.stored`, no host sync)."""
        return self.stored()


def info_nce(anchor: Tensor, positive: Tensor, negatives: Tensor | None = None, tau: float = 0.07) -> Tensor:
    """InfoNCE with in-batch and bank negatives (GLM, docs/methods.md (CLIP-ZSS) [summary]; τ=0.07 is ours).

    For every anchor i: logits ``[<a_i, p_j>/τ for j in batch] ++ [<a_i, n_m>/τ for m in bank]``,
    target j = i; loss = mean over i of the cross-entropy. Inputs are used as given: pass
    L2-normalised vectors for a cosine InfoNCE.

    In DDP (``torch.distributed`` initialised, world > 1) the in-batch negatives include the other
    ranks' positives via all-gather. The gathered rows carry no gradient, which is fine here because
    the positives are CLS tokens of the frozen teacher; the local rows keep their graph.

    Args:
        anchor: ``Tensor[B, D]`` (e.g. Ŝ, the student's pooled CLS prediction, normalised).
        positive: ``Tensor[B, D]`` (e.g. the CLIP CLS tokens S, normalised).
        negatives: optional ``Tensor[M, D]`` extra negatives (the :class:`CLSBank`), no gradient needed.
            Do not include this batch's positives (compute the loss first, then push).
        tau: temperature (> 0).

    Returns:
        scalar ``Tensor[] float32``.

    Raises:
        ValueError: on shape mismatch or ``tau <= 0``.
    """
    if anchor.dim() != 2 or anchor.shape != positive.shape:
        raise ValueError(
            f"info_nce: anchor and positive must both be [B, D], got {tuple(anchor.shape)}, {tuple(positive.shape)}"
        )
    if tau <= 0:
        raise ValueError(f"info_nce: tau must be > 0, got {tau}")
    anchor, positive = anchor.float(), positive.float()
    keys, offset = all_gather_cat(positive)  # [B_global, D]
    logits = anchor @ keys.t()  # [B, B_global]
    if negatives is not None and negatives.numel() > 0:
        if negatives.dim() != 2 or negatives.shape[1] != anchor.shape[1]:
            raise ValueError(f"info_nce: negatives must be [M, {anchor.shape[1]}], got {tuple(negatives.shape)}")
        logits = torch.cat([logits, anchor @ negatives.to(anchor.device).float().t()], dim=1)
    target = torch.arange(anchor.shape[0], device=anchor.device) + offset
    return F.cross_entropy(logits / tau, target)


class GlobalDistillLoss(nn.Module):
    """CLIP-ZSS Global Learning Module loss (docs/methods.md (CLIP-ZSS) [summary]).

    ``Ŝ = normalize(cls_attention_pool(R, S))``; ``L_GLM = info_nce(Ŝ, S, bank, τ)``; then (in training
    mode) the batch's CLS tokens — gathered from every rank in DDP, so the banks stay identical — are
    pushed into the FIFO bank. Computing the loss before pushing keeps a token from being its own
    negative.

    Args:
        dim: embedding dimension D of the joint space.
        tau: InfoNCE temperature. [ours: 0.07]
        bank_size: FIFO bank capacity in tokens; 0 disables the bank. [ours: 1024]
        attn_scale: attention scale of the pooling; ``None`` = ``1/√D`` [summary].
    """

    def __init__(self, dim: int, tau: float = 0.07, bank_size: int = 1024, attn_scale: float | None = None) -> None:
        super().__init__()
        if tau <= 0:
            raise ValueError(f"GlobalDistillLoss: tau must be > 0, got {tau}")
        self.tau = float(tau)
        self.attn_scale = attn_scale
        self.bank = CLSBank(bank_size, dim)

    def forward(self, student_embeds: Tensor, cls: Tensor, mask: Tensor | None = None) -> dict[str, Tensor]:
        """Args:
            student_embeds: R ``Tensor[B, D, h, w]`` or ``[B, D, L]`` (student dense embeds).
            cls: S ``Tensor[B, D]`` (teacher CLS tokens, L2-normalised, no grad).
            mask: optional ``Tensor[B, h, w]``/``[B, L]`` bool of positions the pooling may attend.

        Returns:
            dict(loss_glm=scalar float32 with graph to R, glm_acc=detached fraction of anchors whose
            own CLS scores highest).
        """
        cls = F.normalize(cls.detach().float(), dim=-1)
        pred = F.normalize(cls_attention_pool(student_embeds, cls, self.attn_scale, mask).float(), dim=-1)  # [B, D]
        negatives = self.bank.get() if len(self.bank) else None
        loss = info_nce(pred, cls, negatives, self.tau)
        with torch.no_grad():
            acc = ((pred @ cls.t()).argmax(dim=1) == torch.arange(len(cls), device=cls.device)).float().mean()
        if self.training:
            gathered, _ = all_gather_cat(cls)
            self.bank.push(gathered)
        return {"loss_glm": loss, "glm_acc": acc}


# ---------------------------------------------------------------------------------------------- NEL
def _one_hot_targets(logits: Tensor, target: Tensor, ignore_index: int, validate: bool = True) -> tuple[Tensor, Tensor]:
    """``(one_hot Tensor[B, C, H, W] float32, valid Tensor[B, 1, H, W] float32)``; checks shapes, and with
    ``validate`` the id range (a host sync; without it an id outside ``[0, C)`` gets an all-zero row)."""
    if (
        logits.dim() != 4
        or target.dim() != 3
        or logits.shape[0] != target.shape[0]
        or logits.shape[2:] != target.shape[1:]
    ):
        raise ValueError(
            f"NEL: logits must be [B, C, H, W] and target [B, H, W] of the same B, H, W; got "
            f"{tuple(logits.shape)} and {tuple(target.shape)} (upsample the logits to the label size first)"
        )
    num_classes = logits.shape[1]
    valid = target != ignore_index  # [B, H, W]
    if validate:
        bad = valid & ((target < 0) | (target >= num_classes))
        if bool(bad.any()):
            raise ValueError(
                f"NEL: target holds ids outside [0, {num_classes}) that are not ignore_index={ignore_index}: "
                f"{torch.unique(target[bad]).tolist()[:10]}"
            )
    # one-hot by comparison (F.one_hot checks the id range with host reads on some devices)
    classes = torch.arange(num_classes, device=target.device).view(1, num_classes, 1, 1)
    one_hot = ((target[:, None] == classes) & valid[:, None]).float()
    return one_hot, valid[:, None].float()


def _class_mask(class_mask: Tensor | None, logits: Tensor) -> Tensor:
    """``Tensor[B, C, 1, 1] float32`` of usable channels (all ones when None)."""
    b, c = logits.shape[:2]
    if class_mask is None:
        return logits.new_ones(b, c, 1, 1, dtype=torch.float32)
    if class_mask.shape != (b, c):
        raise ValueError(f"NEL: class_mask must be [B, C]=({b}, {c}), got {tuple(class_mask.shape)}")
    return class_mask.float()[:, :, None, None]


def sigmoid_focal_loss(
    logits: Tensor,
    target: Tensor,
    alpha: float = 0.25,
    gamma: float = 2.0,
    ignore_index: int = 255,
    class_mask: Tensor | None = None,
    reduction: str = "zegclip",
    validate: bool = True,
) -> Tensor:
    """Per-class sigmoid focal loss on one-hot targets (ZegCLIP's NEL focal term; Lin et al. 2017).

    Per element (image b, class c, pixel x) with p = sigmoid(logit), t = one-hot target:
    ``ℓ = α_t · (1 - p_t)^γ · BCE(logit, t)``, ``p_t = p·t + (1-p)(1-t)``, ``α_t = α·t + (1-α)(1-t)``.
    Pixels with ``target == ignore_index`` and channels with ``class_mask == False`` contribute
    nothing (ZegCLIP instead treats ignore pixels as negatives of every class; we exclude them).

    Normalisation (``reduction``):
        * ``"zegclip"`` (default, ZegCLIP's ``loss.mean(1).sum() / num_masks``): mean over the valid
          pixels of each (image, class) pair, summed over all usable pairs, divided by the number of
          (image, class) pairs *present* in the target (clamped to >= 1; not all-reduced across ranks).
          This is the scale the ZegCLIP weight 100 was tuned for.
        * ``"mean"``: mean over all valid pixel × usable class elements.

    Args:
        logits: ``Tensor[B, C, H, W]`` (any float dtype; computed in float32), same H, W as target.
        target: ``Tensor[B, H, W] int64`` in ``[0, C)`` or ``ignore_index``.
        alpha, gamma: focal parameters (ZegCLIP / RetinaNet: 0.25, 2).
        ignore_index: label to ignore (255).
        class_mask: optional ``Tensor[B, C] bool``, False = channel does not exist for that image.
        reduction: ``"zegclip"`` or ``"mean"``.
        validate: raise on target ids outside ``[0, C)`` (one host sync; default True). Training steps whose
            targets are valid by construction pass False (then such ids count as background of every class).

    Returns:
        scalar ``Tensor[] float32`` (0 with a graph when no pixel is valid).

    Raises:
        ValueError: on bad shapes, target ids out of range, or an unknown reduction.
    """
    if reduction not in ("zegclip", "mean"):
        raise ValueError(f"sigmoid_focal_loss: reduction must be 'zegclip' or 'mean', got {reduction!r}")
    one_hot, valid = _one_hot_targets(logits, target, ignore_index, validate)
    cmask = _class_mask(class_mask, logits)
    x = logits.float()
    prob = x.sigmoid()
    ce = F.binary_cross_entropy_with_logits(x, one_hot, reduction="none")
    p_t = prob * one_hot + (1 - prob) * (1 - one_hot)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * one_hot + (1 - alpha) * (1 - one_hot)) * loss
    weight = valid * cmask  # [B, C, H, W] by broadcasting
    loss = loss * weight
    if reduction == "mean":
        denom = (valid.sum(dim=(2, 3)) * cmask.flatten(1)).sum()  # valid pixels × usable classes
        return loss.sum() / denom.clamp(min=1.0)
    npix = valid.sum(dim=(1, 2, 3))  # [B]
    per_pair = loss.sum(dim=(2, 3)) / npix.clamp(min=1.0)[:, None]  # [B, C]
    num_present = ((one_hot.sum(dim=(2, 3)) > 0).float() * cmask.flatten(1)).sum()
    return per_pair.sum() / num_present.clamp(min=1.0)


def dice_loss(
    logits: Tensor,
    target: Tensor,
    ignore_index: int = 255,
    class_mask: Tensor | None = None,
    present_only: bool = True,
    smooth: float = 1.0,
    validate: bool = True,
) -> Tensor:
    """Per-class soft dice loss on sigmoid probabilities (ZegCLIP's NEL dice term).

    For each (image b, class c), over the valid pixels (``target != ignore_index``) only:
    ``1 - (2·Σ p·t + smooth) / (Σ p + Σ t + smooth)`` with p = sigmoid(logit), t = one-hot target.
    Averaged over the (image, class) pairs present in the target when ``present_only`` (ZegCLIP's
    choice: its dice runs on the GT masks of each image), else over every usable pair (absent classes
    are then pushed towards p = 0). Pairs with ``class_mask == False`` are skipped.

    Args:
        logits: ``Tensor[B, C, H, W]`` (computed in float32). target: ``Tensor[B, H, W] int64``.
        ignore_index: ignored label (255). class_mask: optional ``Tensor[B, C] bool``.
        present_only: see above (default True, ZegCLIP). smooth: additive smoothing (ZegCLIP: 1).
        validate: see :func:`sigmoid_focal_loss`.

    Returns:
        scalar ``Tensor[] float32`` (0 with a graph when no pair qualifies).

    Raises:
        ValueError: on bad shapes or target ids out of range.
    """
    one_hot, valid = _one_hot_targets(logits, target, ignore_index, validate)
    cmask = _class_mask(class_mask, logits).flatten(1)  # [B, C]
    prob = logits.float().sigmoid() * valid
    inter = (prob * one_hot).sum(dim=(2, 3))  # [B, C]
    denom = prob.sum(dim=(2, 3)) + one_hot.sum(dim=(2, 3))
    loss = 1 - (2 * inter + smooth) / (denom + smooth)  # [B, C]
    pairs = cmask * ((one_hot.sum(dim=(2, 3)) > 0).float() if present_only else valid.flatten(1).amax(1, keepdim=True))
    return (loss * pairs).sum() / pairs.sum().clamp(min=1.0)


def nel_loss(
    logits: Tensor,
    target: Tensor,
    ignore_index: int = 255,
    class_mask: Tensor | None = None,
    focal_weight: float = 100.0,
    dice_weight: float = 1.0,
    alpha: float = 0.25,
    gamma: float = 2.0,
    focal_reduction: str = "zegclip",
    dice_present_only: bool = True,
    bias: float = 0.0,
    validate: bool = True,
) -> dict[str, Tensor]:
    """ZegCLIP's non-mutually-exclusive loss: ``focal_weight·focal + dice_weight·dice``.

    Weights 100 / 1 and α=0.25, γ=2 are ZegCLIP's values (docs/methods.md). See
    :func:`sigmoid_focal_loss` and :func:`dice_loss` for shapes and normalisation.

    ``bias`` is added to every logit before the sigmoid (not in ZegCLIP: ours). It matters when the
    logits are ``scale·cos`` with no bias of their own, as in zss's students: at bias 0 a negative class
    is only "satisfied" when its cosine is well below 0, so the focal term (×100, summed over every
    absent channel) pushes each embed away from *all* seen text embeds at once, towards the region
    anti-aligned with them — where the unseen text embeds then win at test time (the collapse onto one
    unseen class measured in docs/methods.md, "NEL"). A prior bias ``-log((1-π)/π)`` (RetinaNet's
    prior, π = 0.01 -> -4.6) makes an orthogonal embed already a confident negative, so the loss stops
    pushing there; a positive then needs ``cos > -bias/scale``.

    ``validate`` (default True): check the target ids (a host sync), see :func:`sigmoid_focal_loss`.

    Returns:
        dict(loss_nel=weighted sum (graph), loss_focal, loss_dice (unweighted, detached)).
    """
    if bias:
        logits = logits.float() + float(bias)
    focal = sigmoid_focal_loss(logits, target, alpha, gamma, ignore_index, class_mask, focal_reduction, validate)
    dice = dice_loss(logits, target, ignore_index, class_mask, dice_present_only, validate=validate)
    return {
        "loss_nel": focal_weight * focal + dice_weight * dice,
        "loss_focal": focal.detach(),
        "loss_dice": dice.detach(),
    }


def nearest_down(label: Tensor, size: tuple[int, int]) -> Tensor:
    """Nearest (cell-centre) downsampling of labels: the target of a loss on a coarser logit grid.

    Output cell ``(i, j)`` takes the label at the centre of its cell in the input grid, so a class id is never
    averaged with another or with ``ignore_index``. Not in the papers: our default.

    Args:
        label: ``Tensor[B, H, W] int64`` class ids (255 = ignore).
        size: ``(h, w)`` output size in cells.

    Returns:
        ``Tensor[B, h, w] int64`` (``label`` itself when the size already matches).
    """
    H, W = label.shape[-2:]
    h, w = size
    if (H, W) == (h, w):
        return label
    ys = ((torch.arange(h, device=label.device) + 0.5) * H / h).long().clamp(max=H - 1)
    xs = ((torch.arange(w, device=label.device) + 0.5) * W / w).long().clamp(max=W - 1)
    return label[:, ys][:, :, xs]
