"""CLIP-RC's region-text decoder and its training-only recovery decoder (docs/clip_rc.md).

Shapes below: B images, C classes, G×G region tokens (L = G², 16 in CLIP-RC; L = 1 without regions),
h×w patch grid, D the CLIP joint width (512 for ViT-B/16; every width below scales with D).

* Queries (:func:`region_text_queries`): ``q0[l·C + c] = [(R_l + g) ⊙ T_c ; T_c]`` ∈ R^{2D}, then
  ``q_proj`` 2D → D (CLIP-RC ``combine_token``). Without region tokens: ``[g ⊙ T_c ; T_c]`` (ZegCLIP).
* Visual tokens: ``v0 = F`` (the dense CLIP tokens, [B, hw, D]); with ``lateral_proj`` the decoder's
  memory is ``lateral_proj([Up(R); g; v0])`` (3D → D; Up = bilinear G → h×w, align_corners=False);
  without it the memory is ``v0`` itself (ZegCLIP).
* ``num_layers`` cross-attention layers WITHOUT self-attention (:class:`CrossAttentionLayer`); with
  ``bidirectional`` queries and visual tokens update each other simultaneously
  (``q, v = Lq_i(q, v), Lv_i(v, q)``, CLIP-RC), else only the queries update (ZegCLIP).
* Logits: ``"dot"`` = ``q · vᵀ`` after the last layer (CLIP-RC) or ``"attention"`` = the last query
  layer's head-averaged, scaled, pre-softmax attention logits (ZegCLIP); then the L region copies of each
  class are averaged (:func:`fuse_regions`).

The public code builds its layers from ``nn.TransformerDecoderLayer`` and deletes only the
cross-attention, so each layer also carries an unused self-attention block (~1.05M parameters per layer
at D = 512); we do not build that dead weight. Sources: public CLIP-RC code
``models/decode_heads/decode_seg.py`` and ``utils.py``; ZegCLIP's ``decode_seg.py``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "CrossAttention",
    "CrossAttentionLayer",
    "HEAD_INITS",
    "LOGIT_MODES",
    "RecoveryDecoder",
    "RegionTextDecoder",
    "fuse_regions",
    "recovery_loss",
    "region_text_queries",
]

#: How the decoder turns queries and visual tokens into logits.
LOGIT_MODES = ("dot", "attention")
#: Head initialisations: the public code never calls its head's init (PyTorch defaults) / the init it defines.
HEAD_INITS = ("pytorch", "trunc_normal")


def region_text_queries(regions: Tensor | None, cls: Tensor, text: Tensor) -> Tensor:
    """Region × class queries ``[(R_l + g) ⊙ T_c ; T_c]`` at flat index ``l·C + c``.

    Args:
        regions: Tensor[B, D, G, G] region embeddings (or None: one "region" R = 0, ZegCLIP's ``[g ⊙ T; T]``).
        cls: Tensor[B, D] global (CLS) embedding g. text: Tensor[C, D] class text embeddings T.
    Returns:
        Tensor[B, L·C, 2D] with L = G² (1 when ``regions`` is None), dtype of ``cls``.
    Source: public CLIP-RC code ``combine_token``; ZegCLIP ``get_qs``.
    """
    B, D = cls.shape
    C = text.shape[0]
    text = text.to(cls.dtype)
    if regions is None:
        r = cls.unsqueeze(1)  # [B, 1, D]
    else:
        r = regions.flatten(2).transpose(1, 2).to(cls.dtype) + cls.unsqueeze(1)  # [B, L, D]
    L = r.shape[1]
    prod = r.unsqueeze(2) * text.view(1, 1, C, D)  # [B, L, C, D]
    t = text.view(1, 1, C, D).expand(B, L, C, D)
    return torch.cat([prod, t], dim=-1).reshape(B, L * C, 2 * D)


def fuse_regions(scores: Tensor, num_classes: int) -> Tensor:
    """Average the region copies of every class: ``[B, L·C, ...] -> [B, C, ...]`` (index ``l·C + c``).

    Args:
        scores: Tensor[B, L·C, *rest]. num_classes: C.
    Returns:
        Tensor[B, C, *rest] = mean over l of ``scores[:, l·C + c]``.
    Raises:
        ValueError: the second dimension is not a multiple of C.
    Source: public CLIP-RC code ``fusion_attn_map``.
    """
    B, n = scores.shape[:2]
    if n % num_classes:
        raise ValueError(f"fuse_regions: {n} queries are not a multiple of {num_classes} classes")
    return scores.reshape(B, n // num_classes, num_classes, *scores.shape[2:]).mean(dim=1)


class CrossAttention(nn.Module):
    """Multi-head cross-attention with biased q/k/v projections (the public code's ``Attention``).

    Args:
        dim: D (divisible by ``num_heads``). num_heads: 8 [public code]. attn_dropout: dropout on the
            attention weights [public code: 0.1].
    """

    def __init__(self, dim: int, num_heads: int = 8, attn_dropout: float = 0.1) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(
                f"CrossAttention: dim={dim} is not divisible by num_heads={num_heads} (method.decoder_heads)"
            )
        self.num_heads, self.scale = num_heads, (dim // num_heads) ** -0.5
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.attn_drop = nn.Dropout(attn_dropout)

    def forward(self, x: Tensor, mem: Tensor, return_logits: bool = False) -> tuple[Tensor, Tensor | None]:
        """Args: x Tensor[B, Nq, D] (queries), mem Tensor[B, Nk, D] (keys = values).

        Returns:
            (Tensor[B, Nq, D], head-averaged scaled pre-softmax logits Tensor[B, Nq, Nk] or None).
        """
        B, Nq, D = x.shape
        Nk, H = mem.shape[1], self.num_heads
        q = self.q(x).reshape(B, Nq, H, D // H).transpose(1, 2)  # [B, H, Nq, d]
        k = self.k(mem).reshape(B, Nk, H, D // H).transpose(1, 2)
        v = self.v(mem).reshape(B, Nk, H, D // H).transpose(1, 2)
        s = (q @ k.transpose(-2, -1)) * self.scale  # [B, H, Nq, Nk]
        logits = s.mean(dim=1) if return_logits else None
        a = self.attn_drop(s.softmax(dim=-1))
        out = (a @ v).transpose(1, 2).reshape(B, Nq, D)
        return self.proj(out), logits


class CrossAttentionLayer(nn.Module):
    """Post-norm decoder layer without self-attention.

    ``x = LN(x + Drop(Attn(x, m, m)))``; ``x = LN(x + Drop(W2 · Drop(ReLU(W1 · x))))``.

    Args:
        dim: D. num_heads: 8. ffn_dim: FFN width [public code: 4·D]. dropout: residual and FFN dropout
            [public code: 0.1, PyTorch's TransformerDecoderLayer default]. attn_dropout: [0.1].
    """

    def __init__(
        self, dim: int, num_heads: int = 8, ffn_dim: int | None = None, dropout: float = 0.1, attn_dropout: float = 0.1
    ) -> None:
        super().__init__()
        ffn_dim = 4 * dim if ffn_dim is None else int(ffn_dim)
        self.attn = CrossAttention(dim, num_heads, attn_dropout)
        self.drop_attn = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.linear1, self.linear2 = nn.Linear(dim, ffn_dim), nn.Linear(ffn_dim, dim)
        self.drop_ffn, self.drop_out = nn.Dropout(dropout), nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, x: Tensor, mem: Tensor, return_logits: bool = False) -> tuple[Tensor, Tensor | None]:
        """Args: x Tensor[B, N, D], mem Tensor[B, M, D]. Returns (Tensor[B, N, D], logits [B, N, M] or None)."""
        a, logits = self.attn(x, mem, return_logits)
        x = self.norm1(x + self.drop_attn(a))
        x = self.norm2(x + self.drop_out(self.linear2(self.drop_ffn(F.relu(self.linear1(x))))))
        return x, logits


def _trunc_normal_init(module: nn.Module) -> None:
    """trunc-normal(0.02) Linear weights with zero bias, LayerNorm (1, 0): the init the public heads define."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02, a=-2.0, b=2.0)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class RegionTextDecoder(nn.Module):
    """CLIP-RC's decode head (``ATMSingleHeadSeg``) and, with switches, ZegCLIP's.

    Args:
        dim: D, the joint width of the CLIP tokens and text embeddings.
        num_layers: decoder layers [public code: 3]. num_heads: [8]. ffn_ratio: FFN width / D [4].
        dropout, attn_dropout: [public code: 0.1, 0.1].
        with_regions: the inputs carry region tokens (sizes ``lateral_proj``: 3D → D with regions,
            2D → D without).
        lateral_proj: memory = ``lateral_proj([Up(R); g; v0])`` [CLIP-RC] or ``v0`` [ZegCLIP: False].
        bidirectional: visual tokens are updated by the queries too [CLIP-RC: True; ZegCLIP: False].
        logits: ``"dot"`` [CLIP-RC] or ``"attention"`` [ZegCLIP], see the module docstring.
        init: ``"pytorch"`` (PyTorch defaults: the public code never calls its head's ``init_weights``) or
            ``"trunc_normal"`` (what that ``init_weights`` does: trunc-normal 0.02 Linear, zero bias, LN
            (1, 0), and zeroed ``linear2`` of the visual-side layers).

    Raises:
        ValueError: bad ``logits``/``init``, or D not divisible by ``num_heads``.
    """

    def __init__(
        self,
        dim: int,
        num_layers: int = 3,
        num_heads: int = 8,
        ffn_ratio: int = 4,
        dropout: float = 0.1,
        attn_dropout: float = 0.1,
        with_regions: bool = True,
        lateral_proj: bool = True,
        bidirectional: bool = True,
        logits: str = "dot",
        init: str = "pytorch",
    ) -> None:
        super().__init__()
        if logits not in LOGIT_MODES:
            raise ValueError(f"RegionTextDecoder: logits={logits!r} (method.logits); choose {LOGIT_MODES}")
        if init not in HEAD_INITS:
            raise ValueError(f"RegionTextDecoder: init={init!r} (method.head_init); choose {HEAD_INITS}")
        if int(num_layers) < 1:
            raise ValueError(f"RegionTextDecoder: num_layers must be >= 1, got {num_layers}")
        self.dim, self.logits_mode = int(dim), logits
        self.with_regions, self.bidirectional = bool(with_regions), bool(bidirectional)
        ffn = int(ffn_ratio) * self.dim
        self.q_proj = nn.Linear(2 * self.dim, self.dim)
        self.lateral_proj = nn.Linear((3 if with_regions else 2) * self.dim, self.dim) if lateral_proj else None
        mk = lambda: CrossAttentionLayer(self.dim, num_heads, ffn, dropout, attn_dropout)  # noqa: E731
        self.layers_q = nn.ModuleList([mk() for _ in range(int(num_layers))])
        self.layers_v = nn.ModuleList([mk() for _ in range(int(num_layers))]) if bidirectional else None
        if init == "trunc_normal":
            _trunc_normal_init(self)
            if self.layers_v is not None:
                for layer in self.layers_v:
                    nn.init.zeros_(layer.linear2.weight)
                    nn.init.zeros_(layer.linear2.bias)

    def forward(self, dense: Tensor, cls: Tensor, regions: Tensor | None, text: Tensor) -> dict[str, Tensor]:
        """Decode.

        Args:
            dense: Tensor[B, D, h, w] dense CLIP tokens F (L2-normalised). cls: Tensor[B, D] (g).
            regions: Tensor[B, D, G, G] region tokens R, or None. text: Tensor[C, D] class embeddings.
        Returns:
            dict with ``logits`` Tensor[B, C, h, w] (region copies averaged; not normalised or scaled),
            ``q0`` Tensor[B, L·C, 2D] and ``v0`` Tensor[B, h·w, D] (the decoder inputs, for the recovery
            loss), ``q`` Tensor[B, L·C, D] and ``v`` Tensor[B, h·w, D] (after the last layer).
        Raises:
            ValueError: regions given / missing against ``with_regions``, or mismatched widths.
        """
        if (regions is not None) != self.with_regions:
            raise ValueError(
                f"RegionTextDecoder: built with_regions={self.with_regions} but got "
                f"regions={'None' if regions is None else tuple(regions.shape)}"
            )
        B, D, h, w = dense.shape
        if D != self.dim or text.shape[-1] != self.dim or cls.shape[-1] != self.dim:
            raise ValueError(
                f"RegionTextDecoder: width {self.dim} vs dense {D}, cls {cls.shape[-1]}, text {text.shape[-1]}"
            )
        C = text.shape[0]
        q0 = region_text_queries(regions, cls, text)  # [B, L*C, 2D]
        v0 = dense.flatten(2).transpose(1, 2)  # [B, hw, D]
        q = self.q_proj(q0)
        if self.lateral_proj is not None:
            parts = [cls.unsqueeze(1).expand(B, h * w, D), v0]
            if regions is not None:
                up = F.interpolate(regions, size=(h, w), mode="bilinear", align_corners=False)
                parts.insert(0, up.flatten(2).transpose(1, 2))
            v = self.lateral_proj(torch.cat([p.to(q.dtype) for p in parts], dim=-1))  # [B, hw, D]
        else:
            v = v0
        attn_logits = None
        n = len(self.layers_q)
        for i in range(n):
            want = self.logits_mode == "attention" and i == n - 1
            q_new, attn_logits_i = self.layers_q[i](q, v, return_logits=want)
            if self.layers_v is not None:
                v, _ = self.layers_v[i](v, q)
            q = q_new
            if want:
                attn_logits = attn_logits_i
        if self.logits_mode == "attention":
            # the last layer's outputs do not reach these logits; + 0·Σ keeps every parameter in the graph (DDP)
            s = attn_logits + (q.sum() + v.sum()) * 0.0
        else:
            s = q @ v.transpose(-2, -1)  # [B, L*C, hw]
        logits = fuse_regions(s, C).reshape(B, C, h, w)
        return {"logits": logits, "q0": q0, "v0": v0, "q": q, "v": v}


class RecoveryDecoder(nn.Module):
    """Training-only recovery decoder: reconstructs the decoder inputs (q0, v0) from its outputs (q, v).

    ``q' = W_qin·q``, ``v' = W_vin·v``; ``num_layers`` bidirectional :class:`CrossAttentionLayer` pairs;
    ``q̂ = W_qout·q'`` (D → 2D), ``v̂ = W_vout·v'`` (D → D). Initialised trunc-normal(0.02) / zero bias / LN
    (1, 0) in its constructor, as the public code's ``RecoveryDecoder`` (the only head part initialised
    there). Source: public CLIP-RC code ``models/decode_heads/utils.py`` (one layer pair).

    Args:
        dim: D. num_heads: 8. num_layers: layer pairs [public code: 1]. ffn_ratio, dropout, attn_dropout:
            as :class:`RegionTextDecoder`.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        num_layers: int = 1,
        ffn_ratio: int = 4,
        dropout: float = 0.1,
        attn_dropout: float = 0.1,
    ) -> None:
        super().__init__()
        ffn = int(ffn_ratio) * int(dim)
        self.layers_q = nn.ModuleList(
            [CrossAttentionLayer(dim, num_heads, ffn, dropout, attn_dropout) for _ in range(int(num_layers))]
        )
        self.layers_v = nn.ModuleList(
            [CrossAttentionLayer(dim, num_heads, ffn, dropout, attn_dropout) for _ in range(int(num_layers))]
        )
        self.q_in, self.v_in = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.q_out, self.v_out = nn.Linear(dim, 2 * dim), nn.Linear(dim, dim)
        _trunc_normal_init(self)

    def forward(self, q: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Args: q Tensor[B, Nq, D], v Tensor[B, Nv, D]. Returns (q̂ Tensor[B, Nq, 2D], v̂ Tensor[B, Nv, D])."""
        q, v = self.q_in(q), self.v_in(v)
        for lq, lv in zip(self.layers_q, self.layers_v):
            q, v = lq(q, v)[0], lv(v, q)[0]
        return self.q_out(q), self.v_out(v)


def recovery_loss(q_hat: Tensor, v_hat: Tensor, q0: Tensor, v0: Tensor) -> tuple[Tensor, Tensor]:
    """L1 reconstruction of the (detached) decoder inputs: ``(mean|q̂ - q0|, mean|v̂ - v0|)``, float32.

    Args: q_hat/q0 Tensor[B, Nq, 2D]; v_hat/v0 Tensor[B, Nv, D]. Source: public CLIP-RC code ``SegLoss``.
    """
    return (F.l1_loss(q_hat.float(), q0.detach().float()), F.l1_loss(v_hat.float(), v0.detach().float()))
