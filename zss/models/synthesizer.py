"""CLIP-ZSS weight synthesizer (PLM, docs/methods.md (CLIP-ZSS) [summary]).

Region prototypes — masked average pools of the student's dense embeds over each region of the fused
label map F (seen classes present in the image, and per-image pseudo regions) — are the queries of a
small transformer decoder whose keys/values are the CLIP CLS token (optionally plus the teacher's dense
tokens). The decoder outputs one classifier weight per region, L2-normalised: ``P_seen`` for regions
that are seen classes, ``P_pseudo`` for pseudo regions.

Everything is batched (no Python loop over images), in one of two slot layouts with a validity mask: each
image's regions packed into ``Q = max regions per image`` slots (``layout="packed"``, sized from the data), or
one slot per possible id (``layout="by_id"``, ``Q = num_ids``: fixed shapes, no host sync; the training step's). The
synthesizer is a training-only part of CLIP-ZSS: it is trained and checkpointed but never used at test time.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["SynthOutput", "WeightSynthesizer", "region_prototypes", "MEMORIES", "QUERIES", "LAYOUTS"]

#: Memory (keys/values) choices of :class:`WeightSynthesizer`.
MEMORIES = ("cls", "cls+dense", "cls+regions")
#: Query choices of :class:`WeightSynthesizer`.
QUERIES = ("prototype", "prototype+clip", "clip")
#: Slot layouts of :func:`region_prototypes`: ``"packed"`` (present regions only, ``Q`` = the most regions in
#: any image: data-dependent, host syncs) and ``"by_id"`` (slot k = id k, ``Q = num_ids``: fixed, sync-free).
LAYOUTS = ("packed", "by_id")


@dataclass
class SynthOutput:
    """Result of :class:`WeightSynthesizer` for a batch (``Q`` slots, see ``layout``).

    Attributes:
        weights: P ``Tensor[B, Q, D] float32``, L2-normalised synthesized classifier weights.
        prototypes: ``Tensor[B, Q, D] float32``, L2-normalised region prototypes (decoder queries).
        region_ids: ``Tensor[B, Q] int64``: the F id of each slot (seen position in ``[0, num_seen)``
            or pseudo id ``>= num_seen``), ``-1`` for padding slots.
        valid: ``Tensor[B, Q] bool``, False on padding slots.
        area: ``Tensor[B, Q] float32``, region size in label pixels (0 on padding).
        layout: ``"packed"`` (``Q`` = max regions in any image, >= 1; present regions first in id order) or
            ``"by_id"`` (``Q = num_ids``; slot k holds id k when that region is present).
    """

    weights: Tensor
    prototypes: Tensor
    region_ids: Tensor
    valid: Tensor
    area: Tensor
    layout: str = "packed"

    def seen_mask(self, num_seen: int) -> Tensor:
        """``Tensor[B, Q] bool``: valid slots whose region is a seen class."""
        return self.valid & (self.region_ids < num_seen)

    def pseudo_mask(self, num_seen: int) -> Tensor:
        """``Tensor[B, Q] bool``: valid slots whose region is a pseudo region."""
        return self.valid & (self.region_ids >= num_seen)

    def by_id(self, start: int, count: int) -> tuple[Tensor, Tensor]:
        """Scatter the weights of ids ``start .. start+count-1`` into an id-indexed layout.

        Returns:
            ``(Tensor[B, count, D], Tensor[B, count] bool)``: the weight of id ``start + k`` at position
            k (zeros where that id is not present in the image) and the presence mask. Differentiable.
            Sync-free for the ``"by_id"`` layout (a slice); the ``"packed"`` one reads the slot ids back.
        """
        b, q, d = self.weights.shape
        if self.layout == "by_id" and start >= 0 and start + count <= q:
            present = self.valid[:, start : start + count]
            w = self.weights[:, start : start + count]
            return torch.where(present[..., None], w, w.new_zeros(())), present
        sel = self.valid & (self.region_ids >= start) & (self.region_ids < start + count)
        bi, qi = sel.nonzero(as_tuple=True)
        ki = self.region_ids[bi, qi] - start
        out = self.weights.new_zeros(b, count, d).index_put((bi, ki), self.weights[bi, qi])
        present = torch.zeros(b, count, dtype=torch.bool, device=self.weights.device)
        present[bi, ki] = True
        return out, present


def region_prototypes(
    embeds: Tensor,
    fused: Tensor,
    num_ids: int | None = None,
    ignore_index: int = 255,
    layout: str = "packed",
    validate: bool = True,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Masked average pooling of dense embeds over the regions of a label map, packed per image.

    Each label pixel is assigned to the embed cell it falls in (cell = ``floor(y·h/H), floor(x·w/W)``),
    so a region's prototype is the area-weighted mean of the embeds it covers: exact area pooling when
    H, W are multiples of h, w, and no region of F is lost however small (not in the paper: our choice,
    vs. nearest-downsampling F, which drops regions smaller than a cell).

    Args:
        embeds: R ``Tensor[B, D, h, w]`` (any float dtype; pooled in float32).
        fused: F ``Tensor[B, H, W] int64`` with ids in ``[0, num_ids)`` or ``ignore_index``.
        num_ids: number of possible ids (default ``max id + 1``; required for ``layout="by_id"``).
        ignore_index: id of pixels that belong to no region (255).
        layout: ``"packed"`` (default): ``Q = max(1, max regions per image)`` slots, each image's present
            regions first in increasing id order (sizing and packing read values back: host syncs).
            ``"by_id"``: ``Q = num_ids`` slots, slot k = id k (``region_ids`` -1 and ``valid`` False where id
            k is absent): fixed shapes and no host sync, for the training step (ours). Present regions get
            the same prototypes in both layouts.
        validate: check that the ids lie in ``[0, num_ids)`` (host syncs). With ``layout="by_id"`` and
            ``validate=False``, pixels with other ids are ignored.

    Returns:
        ``(prototypes Tensor[B, Q, D] float32 L2-normalised, region_ids Tensor[B, Q] int64 (-1 = pad),
        valid Tensor[B, Q] bool, area Tensor[B, Q] float32 pixels)``; slots are in increasing id order.

    Raises:
        ValueError: on mismatched batch sizes, an unknown ``layout``, ``"by_id"`` without ``num_ids``, or
            (``validate``) ids outside ``[0, num_ids)``.
    """
    if embeds.dim() != 4 or fused.dim() != 3 or embeds.shape[0] != fused.shape[0]:
        raise ValueError(
            f"region_prototypes: embeds must be [B, D, h, w] and fused [B, H, W]; got "
            f"{tuple(embeds.shape)} and {tuple(fused.shape)}"
        )
    if layout not in LAYOUTS:
        raise ValueError(f"region_prototypes: layout must be one of {LAYOUTS}, got {layout!r}")
    if layout == "by_id" and num_ids is None:
        raise ValueError("region_prototypes: layout='by_id' needs num_ids (the fixed number of slots)")
    if num_ids is None:  # packed: sized from the data (host sync)
        labelled = fused != ignore_index
        num_ids = int(fused[labelled].max()) + 1 if bool(labelled.any()) else 1
    protos, region_ids, valid, area = _prototypes_by_id(embeds, fused, int(num_ids), ignore_index, validate)
    if layout == "by_id":
        return protos, region_ids, valid, area
    # packed: the present slots of each image moved to the front, in id order
    b = protos.shape[0]
    q = max(1, int(valid.sum(1).max()))
    pb, pid = valid.nonzero(as_tuple=True)
    slot = (valid.long().cumsum(1) - 1)[pb, pid]
    out_p = protos.new_zeros(b, q, protos.shape[-1])
    out_p[pb, slot] = protos[pb, pid]
    out_ids = torch.full((b, q), -1, dtype=torch.long, device=protos.device)
    out_ids[pb, slot] = pid
    out_area = area.new_zeros(b, q)
    out_area[pb, slot] = area[pb, pid]
    return out_p, out_ids, out_ids >= 0, out_area


def _prototypes_by_id(
    embeds: Tensor, fused: Tensor, num_ids: int, ignore_index: int, validate: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """:func:`region_prototypes` with ``layout="by_id"``: the same pooling into ``num_ids`` fixed slots, with
    scatter-adds only (no ``bincount`` / boolean indexing / ``.item()``: nothing reads a value back)."""
    b, d, h, w = embeds.shape
    H, W = fused.shape[-2:]
    dev = embeds.device
    fused = fused.to(dev).long()
    valid_px = (fused != ignore_index) & (fused >= 0) & (fused < num_ids)
    if validate:
        bad = (fused != ignore_index) & ~valid_px
        if bool(bad.any()):
            raise ValueError(
                f"region_prototypes: fused ids must lie in [0, {num_ids}) or be {ignore_index}; got "
                f"{torch.unique(fused[bad])[:10].tolist()}"
            )
    ids = torch.where(valid_px, fused, torch.zeros_like(fused))
    one = valid_px.float().flatten()  # weight 1 on region pixels, 0 elsewhere
    bidx = torch.arange(b, device=dev)[:, None, None]
    area = torch.zeros(b * num_ids, device=dev).scatter_add_(0, (bidx * num_ids + ids).flatten(), one)
    area = area.view(b, num_ids)  # [B, num_ids] pixels (exact integers in float32)
    valid = area > 0
    region_ids = torch.where(valid, torch.arange(num_ids, device=dev).expand(b, num_ids), -1)
    ys = torch.div(torch.arange(H, device=dev) * h, H, rounding_mode="floor")
    xs = torch.div(torch.arange(W, device=dev) * w, W, rounding_mode="floor")
    cell = ys[:, None] * w + xs[None, :]  # [H, W] embed cell of each label pixel
    key = ((bidx * num_ids + ids) * (h * w) + cell).flatten()
    counts = torch.zeros(b * num_ids * h * w, device=dev).scatter_add_(0, key, one).view(b, num_ids, h * w)
    weights = counts / counts.sum(-1, keepdim=True).clamp(min=1.0)
    protos = torch.bmm(weights, embeds.float().flatten(2).transpose(1, 2))  # [B, num_ids, D]
    return F.normalize(protos, dim=-1), region_ids, valid, area


def _pick_heads(dim: int, heads: int) -> int:
    """Largest head count <= ``heads`` that divides ``dim``."""
    for n in range(max(1, heads), 0, -1):
        if dim % n == 0:
            return n
    return 1


class WeightSynthesizer(nn.Module):
    """Synthesize per-region classifier weights from student prototypes and the CLIP CLS token.

    docs/methods.md (CLIP-ZSS) [summary]: queries = region prototypes of the student's dense embeds, keys/values = the
    CLIP CLS token; outputs P_seen / P_pseudo. Depth, width, heads and the memory choice are not in the
    paper: our defaults.

    Architecture: ``nn.TransformerDecoder`` of ``depth`` pre-norm layers (self-attention among one
    image's regions with padding masked, cross-attention to the memory, FFN), ``batch_first``. With
    ``zero_init_residual`` the last linear of every residual branch starts at zero, so at
    initialisation P = normalize(prototype) (our choice: a usable pseudo classifier from step 0).

    Args:
        dim: D, joint embedding width (student embeds, CLS and output weights).
        depth: decoder layers [ours: 2].
        heads: attention heads [ours: 4]; reduced to the largest divisor of D not above it.
        ffn_dim: FFN hidden width; ``None`` -> ``4·D`` [ours].
        dropout: decoder dropout [ours: 0.0].
        memory: ``"cls"`` (keys/values = the CLS token only, the summary's reading), ``"cls+dense"`` (CLS
            plus every teacher dense token; ours) or ``"cls+regions"`` (ours): CLS plus the teacher's dense
            tokens average-pooled over each region of F (one CLIP token per region). With ``"cls"`` the
            cross-attention has one key, so its softmax is 1 and every region of an image receives the same
            CLS-derived vector: the output cannot depend on CLIP's view of the region.
        query: what each region's decoder query is: ``"prototype"`` (the student's region prototype, the
            summary's reading), ``"prototype+clip"`` (plus the region's CLIP token; ours) or ``"clip"`` (the
            region's CLIP token only; ours). With zero-init residuals the output starts as the normalised
            query, so ``"clip"`` starts from CLIP's view of each region and the decoder learns a correction
            (BCE pulls P_seen to the text embeds). docs/methods.md ("Synthesizer memory and query") has the
            measurements behind the defaults.
        zero_init_residual: see above [ours: True].
        detach_prototypes: stop gradients from the weights into the student through the prototypes
            [ours: False — the pseudo-region logits then also shape the student's embeds via P].
        ignore_index: label id of pixels outside every region (255).

    Raises:
        ValueError: on an unknown ``memory`` or non-positive sizes.
    """

    def __init__(
        self,
        dim: int,
        depth: int = 2,
        heads: int = 4,
        ffn_dim: int | None = None,
        dropout: float = 0.0,
        memory: str = "cls",
        query: str = "prototype",
        zero_init_residual: bool = True,
        detach_prototypes: bool = False,
        ignore_index: int = 255,
    ) -> None:
        super().__init__()
        if memory not in MEMORIES:
            raise ValueError(f"WeightSynthesizer: memory must be one of {MEMORIES}, got {memory!r}")
        if query not in QUERIES:
            raise ValueError(f"WeightSynthesizer: query must be one of {QUERIES}, got {query!r}")
        self.query = query
        if dim < 1 or depth < 1 or heads < 1:
            raise ValueError(f"WeightSynthesizer: dim, depth, heads must be >= 1, got {dim}, {depth}, {heads}")
        self.dim, self.memory, self.ignore_index = int(dim), memory, int(ignore_index)
        self.detach_prototypes = bool(detach_prototypes)
        self.heads = _pick_heads(self.dim, heads)
        layer = nn.TransformerDecoderLayer(
            d_model=self.dim,
            nhead=self.heads,
            dim_feedforward=ffn_dim or 4 * self.dim,
            dropout=dropout,
            batch_first=True,
            norm_first=True,
        )
        self.decoder = nn.TransformerDecoder(layer, num_layers=depth)
        if zero_init_residual:
            for lyr in self.decoder.layers:
                for lin in (lyr.self_attn.out_proj, lyr.multihead_attn.out_proj, lyr.linear2):
                    nn.init.zeros_(lin.weight)
                    nn.init.zeros_(lin.bias)

    def forward(
        self,
        embeds: Tensor,
        fused: Tensor,
        cls: Tensor,
        dense: Tensor | None = None,
        num_ids: int | None = None,
        layout: str = "packed",
        validate: bool = True,
    ) -> SynthOutput:
        """Synthesize one weight per region of ``fused``.

        Args:
            embeds: student dense embeds R ``Tensor[B, D, h, w]``.
            fused: fused label map F ``Tensor[B, H, W] int64`` (seen positions, pseudo ids, ignore_index).
            cls: CLIP CLS tokens ``Tensor[B, D]`` (no grad needed).
            dense: teacher dense tokens ``Tensor[B, D, h_t, w_t]``; required unless ``memory="cls"``.
            num_ids: number of possible F ids (default: max id + 1; required for ``layout="by_id"``).
            layout: slot layout, see :func:`region_prototypes`: ``"packed"`` (default) or ``"by_id"`` (fixed
                ``Q = num_ids`` slots, no host sync: the training step's). Present regions get the same
                weights in both (padding slots are masked out of every attention).
            validate: check the ids of ``fused`` (host syncs), see :func:`region_prototypes`.

        Returns:
            :class:`SynthOutput` (float32).

        Raises:
            ValueError: ``dense`` missing for a memory that needs it, or a D mismatch.
        """
        if embeds.shape[1] != self.dim or cls.shape[-1] != self.dim:
            raise ValueError(
                f"WeightSynthesizer(dim={self.dim}): got embeds D={embeds.shape[1]}, cls D={cls.shape[-1]}"
            )
        if (self.memory != "cls" or self.query != "prototype") and dense is None:
            raise ValueError(f"WeightSynthesizer(memory={self.memory!r}) needs the teacher's dense tokens")
        src = embeds.detach() if self.detach_prototypes else embeds
        # float32 throughout (small tensors), also under autocast
        with torch.autocast(device_type=embeds.device.type, enabled=False):
            protos, region_ids, valid, area = region_prototypes(
                src.float(), fused, num_ids, self.ignore_index, layout, validate
            )
            mem = cls.detach().float()[:, None, :]  # [B, 1, D]
            mem_pad = None
            if self.memory == "cls+regions" or self.query != "prototype":
                # CLIP's token per region: the same slots as the prototypes (slot order depends on F only)
                clip_regions = region_prototypes(
                    dense.detach().float(), fused, num_ids, self.ignore_index, layout, validate=False
                )[0]
            if self.memory == "cls+dense":
                mem = torch.cat([mem, dense.detach().float().flatten(2).transpose(1, 2)], dim=1)  # [B, 1+N, D]
            elif self.memory == "cls+regions":
                mem = torch.cat([mem, clip_regions], dim=1)  # [B, 1+Q, D]
                mem_pad = torch.cat([valid.new_zeros(len(valid), 1), ~valid], dim=1)
            query = {
                "prototype": lambda: protos,
                "prototype+clip": lambda: protos + clip_regions,
                "clip": lambda: clip_regions,
            }[self.query]()
            # a row whose keys are all masked would give NaN attention: unmask slot 0 of region-less images
            pad = ~valid
            pad[:, 0] &= valid.any(dim=1)
            out = self.decoder(query, mem, tgt_key_padding_mask=pad, memory_key_padding_mask=mem_pad)  # [B, Q, D]
            out = F.normalize(out.float(), dim=-1)
        return SynthOutput(weights=out, prototypes=protos, region_ids=region_ids, valid=valid, area=area, layout=layout)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, heads={self.heads}, memory={self.memory!r}, query={self.query!r}"
