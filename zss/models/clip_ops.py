"""CLIP surgery: the one module of zss that reaches into open_clip's vision tower (docs/architecture.md "CLIP surgery").

Free functions on open_clip modules (``VisionTransformer``, ``ResidualAttentionBlock`` and its
``nn.MultiheadAttention``). Every CLIP image block zss runs goes through them: the teacher
(:class:`~zss.teachers.clip.FrozenCLIP`), the CLIP-RC / ZegCLIP prompted encoder
(:class:`~zss.teachers.prompted.PromptedCLIPEncoder`), Chimera-Seg's CLIP Semantic Head
(:class:`~zss.models.chimera.CLIPSemanticHead`), the CLIP-ES CAM (:mod:`zss.clip_es.cam`) and the label-taught
CLIP (:mod:`zss.tools.taught_clip`). When open_clip changes its module layout, this file is what to fix.

* tokens in: :func:`class_token`, :func:`resample_pos_embed`, :func:`embed`;
* blocks: :func:`self_attention` (zss's attention from the block's own weights, torch SDPA),
  :func:`attention_with_weights` (same values plus the head-averaged attention map), :func:`run_block`,
  :func:`run_blocks`, :func:`cls_query_block`, and a block in pieces for CLIP-ES's GradCAM
  (:func:`pre_attention_norm`, :func:`attend`, :func:`finish_block`);
* dense modes: :func:`value_path` and :func:`maskclip_block` (MaskCLIP, Zhou et al. 2022);
* tokens out: :func:`pool`, :func:`project`.

All functions take batch-first tokens ``Tensor[B, L, W]`` and do not disable autograd (gradients flow through
frozen blocks into their inputs: Chimera-Seg's adapter, CLIP-RC's prompts, CLIP-ES's GradCAM).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed
from torch import Tensor, nn

__all__ = [
    "CLS_INPUTS",
    "POS_RESAMPLE_MODES",
    "attend",
    "attention_with_weights",
    "class_token",
    "cls_query_block",
    "drop_path",
    "embed",
    "finish_block",
    "is_plain_block",
    "maskclip_block",
    "pool",
    "pre_attention_norm",
    "project",
    "resample_pos_embed",
    "run_block",
    "run_blocks",
    "self_attention",
    "value_path",
]

#: Positional-embedding resampling modes of :func:`resample_pos_embed`.
POS_RESAMPLE_MODES = ("bicubic", "bilinear")
#: Class-token inputs of :func:`class_token`: open_clip's, and the public CLIP-RC / ZegCLIP code's.
CLS_INPUTS = ("clip", "public")


# ---------------------------------------------------------------------------------------------- tokens in
def resample_pos_embed(pos: Tensor, grid: Sequence[int], native_grid: Sequence[int], mode: str = "bicubic") -> Tensor:
    """A ViT's absolute positional embedding resized to another patch grid, class-token row untouched.

    timm's ``resample_abs_pos_embed`` (interpolation in float32, cast back to ``pos.dtype``, align_corners=False).

    Args:
        pos: ``Tensor[1 + gh0*gw0, W]`` (class token first), any float dtype.
        grid: target (gh, gw), patches. native_grid: (gh0, gw0) of ``pos``, patches.
        mode: ``"bicubic"`` (antialiased: open_clip's own ``resize_pos_embed``, our default) or ``"bilinear"``
            (no antialias: the CLIP-ES and ZegCLIP / CLIP-RC public code).
    Returns:
        ``Tensor[1 + gh*gw, W]`` in ``pos.dtype``; ``pos`` itself when ``grid == native_grid``.
    Raises:
        ValueError: unknown ``mode``, or ``pos`` without ``1 + gh0*gw0`` rows.
    """
    if mode not in POS_RESAMPLE_MODES:
        raise ValueError(f"resample_pos_embed: mode={mode!r}; choose one of {POS_RESAMPLE_MODES}")
    grid, native = [int(g) for g in grid], [int(g) for g in native_grid]
    if pos.ndim != 2 or pos.shape[0] != 1 + native[0] * native[1]:
        raise ValueError(f"resample_pos_embed: pos {tuple(pos.shape)} is not [1 + {native[0]}*{native[1]}, W]")
    if grid == native:
        return pos
    return resample_abs_pos_embed(
        pos[None], grid, native, num_prefix_tokens=1, interpolation=mode, antialias=mode == "bicubic"
    )[0]


def class_token(visual: nn.Module, cls_input: str = "clip") -> Tensor:
    """The class-token input of an open_clip ``VisionTransformer`` before its positional embedding: ``Tensor[W]``.

    ``"clip"``: ``class_embedding`` (open_clip / OpenAI CLIP). ``"public"``: ``2 * class_embedding`` (the public
    CLIP-RC / ZegCLIP encoders add ``pos[0] + class_embedding`` to a slot that already holds the class embedding).

    Raises:
        ValueError: unknown ``cls_input``.
    """
    if cls_input not in CLS_INPUTS:
        raise ValueError(f"class_token: cls_input={cls_input!r}; choose one of {CLS_INPUTS}")
    e = visual.class_embedding
    return 2.0 * e if cls_input == "public" else e


def embed(
    visual: nn.Module, x: Tensor, pos: Tensor, cls_input: str = "clip", extra_tokens: Tensor | None = None
) -> tuple[Tensor, tuple[int, int]]:
    """Patch embedding + class token + positional embedding (+ extra tokens) + ``ln_pre``.

    Args:
        visual: open_clip ``VisionTransformer``.
        x: ``Tensor[B, 3, H, W]`` in CLIP normalisation and the weights' dtype.
        pos: ``Tensor[1 + h*w, W]`` positional embedding for the patch grid (h, w) = (H // patch, W // patch),
            class token first (e.g. from :func:`resample_pos_embed`).
        cls_input: see :func:`class_token`.
        extra_tokens: optional ``Tensor[R, W]`` appended after the patches with no positional embedding, before
            ``ln_pre`` (CLIP-RC's region tokens).
    Returns:
        (``Tensor[B, 1 + h*w (+ R), W]`` after ``ln_pre``, (h, w)).
    """
    t = visual.conv1(x)  # [B, W, h, w]
    B, _, h, w = t.shape
    t = t.flatten(2).transpose(1, 2)  # [B, h*w, W]
    cls = class_token(visual, cls_input).to(t.dtype).view(1, 1, -1).expand(B, -1, -1)
    t = torch.cat([cls, t], dim=1) + pos.to(t.dtype)  # [B, 1 + h*w, W]
    if extra_tokens is not None:
        t = torch.cat([t, extra_tokens.to(t.dtype).unsqueeze(0).expand(B, -1, -1)], dim=1)
    return visual.ln_pre(t), (int(h), int(w))


# ---------------------------------------------------------------------------------------------- blocks
def _qkv(attn: nn.MultiheadAttention, x: Tensor, kv: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """Per-head q, k, v ``Tensor[B, h, L, W/h]`` from the packed in-projection, on contiguous batch-first input."""
    B, Lq, W = x.shape
    h = attn.num_heads
    w, b = attn.in_proj_weight, attn.in_proj_bias
    if kv is None:
        q, k, v = F.linear(x, w, b).view(B, Lq, 3, h, W // h).permute(2, 0, 3, 1, 4).unbind(0)
        return q, k, v
    bq, bkv = (None, None) if b is None else (b[:W], b[W:])
    q = F.linear(x, w[:W], bq).view(B, Lq, h, W // h).transpose(1, 2)
    k, v = F.linear(kv, w[W:], bkv).view(B, kv.shape[1], 2, h, W // h).permute(2, 0, 3, 1, 4).unbind(0)
    return q, k, v


def self_attention(
    attn: nn.MultiheadAttention, x: Tensor, kv: Tensor | None = None, attn_mask: Tensor | None = None
) -> Tensor:
    """Attention of an ``nn.MultiheadAttention`` on batch-first tokens, computed from its own weights with SDPA.

    The same values as the module's ``attn(x, kv, kv, need_weights=False, attn_mask=attn_mask)[0]`` on
    batch-first tensors (attention dropout as the module's, in training mode only), whatever the module's
    ``batch_first`` flag. Why (ours; measurements in docs/architecture.md "CLIP surgery"): when torch's fused MHA
    fast path is off (autocast, or gradients through frozen blocks) its fallback transposes to ``[L, B, W]`` and
    runs the strided in-projection of a batch as a batched matmul over an expanded weight copy.

    Args:
        attn: the block's ``nn.MultiheadAttention`` (packed in-projection, as open_clip's blocks).
        x: queries ``Tensor[B, Lq, W]`` (LayerNormed tokens), any float dtype.
        kv: keys/values ``Tensor[B, L, W]``; None = ``x`` (self-attention).
        attn_mask: optional additive float mask ``Tensor[Lq, L]`` (0 = may attend, -inf = may not).
    Returns:
        ``Tensor[B, Lq, W]``, the dtype of the projection (autocast's under autocast).
    """
    B, Lq, W = x.shape
    q, k, v = _qkv(attn, x, kv)
    mask = None if attn_mask is None else attn_mask.to(q.dtype)
    drop = float(attn.dropout) if attn.training else 0.0
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=drop)  # [B, h, Lq, W/h]
    return attn.out_proj(out.transpose(1, 2).reshape(B, Lq, W))


def attention_with_weights(
    attn: nn.MultiheadAttention, x: Tensor, attn_mask: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """:func:`self_attention` that also returns the attention map, averaged over heads (no dropout).

    Same values as ``attn(x, x, x, need_weights=True, average_attn_weights=True)`` in eval mode.

    Args:
        attn: packed-projection ``nn.MultiheadAttention``. x: ``Tensor[B, L, W]``. attn_mask: as :func:`self_attention`.
    Returns:
        (``Tensor[B, L, W]`` output, ``Tensor[B, L, L]`` softmax weights, rows = queries, mean over heads).
    """
    B, L, W = x.shape
    q, k, v = _qkv(attn, x, None)  # [B, h, L, d]
    s = (q * (q.shape[-1] ** -0.5)) @ k.transpose(-2, -1)  # [B, h, L, L]
    if attn_mask is not None:
        s = s + attn_mask.to(s.dtype)
    p = s.softmax(dim=-1)
    out = attn.out_proj((p @ v).transpose(1, 2).reshape(B, L, W))
    return out, p.mean(dim=1)


def is_plain_block(blk: nn.Module) -> bool:
    """True for an open_clip ``ResidualAttentionBlock`` that :func:`self_attention` runs exactly: torch
    ``nn.MultiheadAttention`` with a packed in-projection, no cross-attention norm."""
    attn = getattr(blk, "attn", None)
    return (
        isinstance(attn, nn.MultiheadAttention)
        and attn.in_proj_weight is not None
        and attn._qkv_same_embed_dim
        and not hasattr(blk, "ln_1_kv")
        and all(hasattr(blk, n) for n in ("ln_1", "ls_1", "ln_2", "mlp", "ls_2"))
    )


def drop_path(x: Tensor, p: float) -> Tensor:
    """Stochastic depth per sample: zero a sample's residual branch with probability p, scale by 1/(1-p).

    ``x`` itself when ``p <= 0``. Callers pass ``p = 0`` outside training."""
    if p <= 0.0:
        return x
    keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1.0 - p)
    return x * keep / (1.0 - p)


def pre_attention_norm(blk: nn.Module, x: Tensor) -> Tensor:
    """A block's first LayerNorm ``ln_1`` on ``Tensor[B, L, W]``: the attention's input (CLIP-ES's GradCAM layer)."""
    return blk.ln_1(x)


def attend(
    blk: nn.Module, y: Tensor, attn_mask: Tensor | None = None, need_weights: bool = False
) -> tuple[Tensor, Tensor | None]:
    """A plain block's self-attention on its normed tokens ``y = pre_attention_norm(blk, x)``, ``Tensor[B, L, W]``.

    Returns (``Tensor[B, L, W]``, head-averaged ``Tensor[B, L, L]`` weights when ``need_weights`` else None):
    :func:`attention_with_weights` or :func:`self_attention` on ``blk.attn``.
    """
    if need_weights:
        return attention_with_weights(blk.attn, y, attn_mask)
    return self_attention(blk.attn, y, attn_mask=attn_mask), None


def finish_block(blk: nn.Module, x: Tensor, a: Tensor, drop_prob: float = 0.0) -> Tensor:
    """The rest of a residual block given its attention output ``a``: ``x + ls_1(a)``, then
    ``+ ls_2(mlp(ln_2(.)))``, each branch through :func:`drop_path` (``drop_prob``; 0 outside training).
    ``Tensor[B, L, W] -> Tensor[B, L, W]``."""
    x = x + drop_path(blk.ls_1(a), drop_prob)
    return x + drop_path(blk.ls_2(blk.mlp(blk.ln_2(x))), drop_prob)


def run_block(
    blk: nn.Module, x: Tensor, attn_mask: Tensor | None = None, drop_prob: float = 0.0, batch_first: bool = True
) -> Tensor:
    """One open_clip residual attention block on batch-first tokens ``Tensor[B, L, W]``.

    ``x + ls_1(attn(ln_1(x)))``, then ``+ ls_2(mlp(ln_2(x)))``: the values of ``blk(x, attn_mask=attn_mask)``,
    with :func:`self_attention` for plain blocks (:func:`is_plain_block`) and the block's own forward otherwise.

    Args:
        blk: open_clip (Custom)ResidualAttentionBlock. x: ``Tensor[B, L, W]``.
        attn_mask: optional additive ``Tensor[L, L]``.
        drop_prob: stochastic depth on both residual branches (:func:`drop_path`); pass 0 outside training.
            Ignored for blocks without an ``attention`` method.
        batch_first: the tower's layout, only read for non-plain blocks (open_clip < 2.21 ran ``[L, B, W]``).
    Returns:
        ``Tensor[B, L, W]``.
    """
    if is_plain_block(blk):
        a = self_attention(blk.attn, blk.ln_1(x), attn_mask=attn_mask)
    elif drop_prob > 0.0 and hasattr(blk, "attention") and not hasattr(blk, "ln_1_kv"):
        y = blk.ln_1(x) if batch_first else blk.ln_1(x).transpose(0, 1)
        a = blk.attention(q_x=y, attn_mask=attn_mask)
        a = a if batch_first else a.transpose(0, 1)
    else:
        if not batch_first:
            x = x.transpose(0, 1)
        x = blk(x) if attn_mask is None else blk(x, attn_mask=attn_mask)
        return x if batch_first else x.transpose(0, 1)
    return finish_block(blk, x, a, drop_prob)


def run_blocks(
    blocks: Iterable[nn.Module], x: Tensor, attn_mask: Tensor | None = None, batch_first: bool = True
) -> Tensor:
    """:func:`run_block` over a sequence of blocks: ``Tensor[B, L, W] -> Tensor[B, L, W]`` (no drop path)."""
    for blk in blocks:
        x = run_block(blk, x, attn_mask, batch_first=batch_first)
    return x


def cls_query_block(blk: nn.Module, x: Tensor, batch_first: bool = True) -> Tensor:
    """A block evaluated for the class-token query only: ``Tensor[B, 1+N, W] -> Tensor[B, 1, W]``.

    Equals ``run_block(blk, x)[:, :1]`` (keys and values are all tokens; the MLP is per token), at 1/(1+N) of
    the query cost. Used for the teacher's CLS embedding in ``maskclip`` mode.
    """
    y = blk.ln_1(x)
    q = y[:, :1]
    if is_plain_block(blk):
        a = self_attention(blk.attn, q, y)
    elif not batch_first:
        a = blk.attention(q_x=q.transpose(0, 1), k_x=y.transpose(0, 1), v_x=y.transpose(0, 1)).transpose(0, 1)
    else:
        a = blk.attention(q_x=q, k_x=y, v_x=y)
    return finish_block(blk, x[:, :1], a)


# ---------------------------------------------------------------------------------------------- dense modes
def value_path(blk: nn.Module, y: Tensor) -> Tensor:
    """Attention output of ``blk`` with every query attending only to itself: ``out_proj(v_proj(y))``.

    Args:
        blk: open_clip (Custom)ResidualAttentionBlock (torch MHA or open_clip ``Attention``). y: ``Tensor[B, L, W]``
            (after ``ln_1``).
    Returns:
        ``Tensor[B, L, W]``.
    Raises:
        TypeError: another attention module.
    """
    from open_clip.transformer import Attention as OpenClipAttention

    attn = blk.attn
    if isinstance(attn, nn.MultiheadAttention):
        e = attn.embed_dim
        w_v = attn.in_proj_weight[2 * e :] if attn._qkv_same_embed_dim else attn.v_proj_weight
        b_v = attn.in_proj_bias[2 * e :] if attn.in_proj_bias is not None else None
        return attn.out_proj(F.linear(y, w_v, b_v))
    if isinstance(attn, OpenClipAttention):
        e = attn.in_proj_weight.shape[1]
        b_v = attn.in_proj_bias[2 * e :] if attn.in_proj_bias is not None else None
        v = F.linear(y, attn.in_proj_weight[2 * e :], b_v)
        if attn.head_scale is not None:  # [heads, 1, 1] per-head scale
            shp = v.shape
            v = (v.reshape(*shp[:-1], attn.num_heads, -1) * attn.head_scale.view(attn.num_heads, 1)).reshape(shp)
        v = attn.out_proj(attn.ln_inner(v))
        return getattr(blk, "ln_attn", nn.Identity())(v)
    raise TypeError(f"value_path: unsupported attention module {type(attn).__name__} for the maskclip dense mode")


def maskclip_block(blk: nn.Module, x: Tensor) -> Tensor:
    """MaskCLIP form of a residual block: attention replaced by its value path (docs/architecture.md "Teacher").

    ``x' = x + ls_1(out_proj(v_proj(ln_1(x))))``; ``x' + ls_2(mlp(ln_2(x')))``. Per token, so the class token
    may be present or not. Source: MaskCLIP (Zhou et al., ECCV 2022).

    Args:
        blk: open_clip (Custom)ResidualAttentionBlock. x: ``Tensor[B, L, W]``.
    Returns:
        ``Tensor[B, L, W]``.
    """
    x = x + blk.ls_1(value_path(blk, blk.ln_1(x)))
    return x + blk.ls_2(blk.mlp(blk.ln_2(x)))


# ---------------------------------------------------------------------------------------------- tokens out
def pool(visual: nn.Module, x: Tensor) -> Tensor:
    """open_clip's pooling of final tokens after ``ln_post`` (towers without attentional pooling).

    Args:
        visual: ``VisionTransformer`` with ``pool_type`` ``"tok"`` or ``"avg"``. x: ``Tensor[B, 1+N, W]``
            (``Tensor[B, 1, W]`` suffices for ``"tok"``).
    Returns:
        ``Tensor[B, W]`` (not projected).
    """
    if visual.pool_type == "avg":
        return (
            visual.ln_post(x[:, 1:].mean(dim=1)) if visual.final_ln_after_pool else visual.ln_post(x[:, 1:]).mean(dim=1)
        )
    return visual.ln_post(x[:, 0])  # 'tok': ln_post is per token


def project(tokens: Tensor, ln_post: nn.Module, proj: Tensor | None) -> Tensor:
    """``ln_post`` then ``proj`` into the joint space (not normalised): ``Tensor[B, N, W] -> Tensor[B, N, D]``.

    ``proj`` None (a tower without projection) returns ``ln_post(tokens)``; ``proj`` is cast to the tokens' dtype.
    """
    x = ln_post(tokens)
    return x if proj is None else x @ proj.to(x.dtype)
