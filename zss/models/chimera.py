"""Chimera-Seg's model: a CLIP-free body + the CLIP Semantic Head (CSH) (docs/methods.md (Chimera-Seg)).

Chimera-Seg [paper, abstract]: a segmentation *body* (here a zss :class:`~zss.models.student.Student`: timm
backbone + decoder) is joined to a *CLIP Semantic Head*: a light trainable adapter followed by the last k
transformer blocks of the frozen CLIP visual encoder and its frozen ``ln_post`` / ``proj``, so that the
dense output lands in CLIP's joint space by construction. Every detail below that the abstract does not
state is ours and a documented argument ("not in the paper: our default").

CSH data flow (shapes for one image batch, W = CLIP visual width, D = joint-space width)::

    body map  Tensor[B, C, h, w]                 (decoder output or last backbone map)
      -> resample to the token grid (gh, gw)     (area when shrinking, bilinear when growing)
      -> adapter: Linear(C, W) (= a 1x1 conv)    (trainable)  [+ LayerNorm(W), trainable]
      -> + CLIP positional embedding             (interpolated to (gh, gw); frozen / learnable / none)
      -> [CLS] prepended (optional)              (trainable, initialised from CLIP's class_embedding)
      -> CLIP blocks L-k .. L-1                  (FROZEN copies; optionally MaskCLIP value path on the last)
      -> ln_post -> proj                         (FROZEN copies)
      -> L2-normalise                            Tensor[B, D, gh, gw] embeds

The 1x1 adapter is a per-position affine map and resampling is a spatial convex combination, so the two
commute exactly; we resample first (cheaper: the adapter then runs on gh*gw tokens, not h*w).
"""

from __future__ import annotations

import copy
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zss.models import clip_ops

__all__ = ["CLIPSemanticHead", "ChimeraStudent", "POS_EMBED_MODES", "RESAMPLE_MODES", "CSH_INPUTS"]

#: How the CSH adds CLIP's positional embedding: frozen copy, trainable copy, or not at all.
POS_EMBED_MODES = ("frozen", "learnable", "none")
#: How the body map is brought to the token grid.
RESAMPLE_MODES = ("auto", "area", "bilinear")
#: Which body output feeds the CSH.
CSH_INPUTS = ("decoder", "backbone")


class CLIPSemanticHead(nn.Module):
    """CLIP Semantic Head: adapter -> last k frozen CLIP ViT blocks -> frozen ln_post/proj (docs/methods.md
    (Chimera-Seg)).

    The frozen parts (``blocks``, ``ln_post``, ``proj`` and, with ``pos_embed="frozen"``, the positional
    embedding buffer ``pos_embed``) are deep copies of the teacher's loaded weights taken at construction, so
    the head is self-contained: no FrozenCLIP is referenced after ``__init__``. They have
    ``requires_grad=False``, stay in eval mode whatever :meth:`train` is asked (``train()`` is overridden) and
    are never returned by :meth:`param_groups`. Gradients still flow *through* them into the adapter.

    Checkpoints (decision of the lead): the frozen copies ARE part of ``state_dict()``, so evaluating a
    checkpoint needs no CLIP weights file and stays reproducible if the teacher weights move. Cost: ~7.1M
    parameters (~28 MB in float32) per ViT-B/16 block (width 768), plus 0.39M for ``proj`` (768x512) and
    0.15M for the positional embedding; ~14.6M (~58 MB) for our default k=2.

    Args:
        teacher: a :class:`~zss.teachers.clip.FrozenCLIP` (open_clip ``VisionTransformer`` tower) with its
            weights loaded; only read at construction.
        in_channels: C, channels of the body map fed to :meth:`forward`.
        num_blocks: k, how many of the teacher's last transformer blocks to copy (0..num_layers). Not in the
            paper (it names k as a knob): our default 2 (of ViT-B/16's 12). k=0 leaves adapter -> ln_post -> proj.
        maskclip_last: run the last copied block in MaskCLIP form (attention replaced by its value path,
            docs/architecture.md "Teacher"). Not in the paper: our default False (the CSH is trained end to end, so
            plain attention is kept). Needs k >= 1.
        prepend_cls: prepend a class token to the sequence the blocks see (dropped from the output). It is a
            trainable ``Parameter[W]`` initialised from CLIP's ``class_embedding``. Not in the paper: our
            default True (CLIP's blocks were trained with a class token present).
        pos_embed: ``"frozen"`` (add CLIP's positional embedding, bicubically interpolated to the token grid,
            as a frozen buffer), ``"learnable"`` (same, but a trainable parameter initialised from CLIP's) or
            ``"none"``. Not in the paper: our default ``"frozen"``.
        adapter_norm: LayerNorm(W) (trainable affine) after the linear adapter. docs/methods.md (Chimera-Seg) (adapter +
            LN); turn off only for tests/ablations.
        adapter_hidden: None = a single Linear(C, W) (equal to a 1x1 conv; our default); an int H = a
            Linear(C, H) -> GELU -> Linear(H, W) MLP (not in the paper).
        resample: ``"auto"`` (area/adaptive-average pooling when the grid shrinks in both directions,
            bilinear otherwise), ``"area"`` or ``"bilinear"`` (align_corners=False). Not in the paper: ours.

    Attributes:
        width (int): W. embed_dim (int): D. num_blocks (int): k. patch_size (int): the teacher's patch, pixels.
        native_grid (tuple[int, int]): grid of the copied positional embedding, patches.

    Raises:
        ValueError: a teacher without a ViT ``visual`` tower, k out of range, maskclip_last with k=0, unknown
            ``pos_embed`` / ``resample``, ``in_channels < 1``.
    """

    def __init__(
        self,
        teacher: nn.Module,
        in_channels: int,
        num_blocks: int = 2,
        maskclip_last: bool = False,
        prepend_cls: bool = True,
        pos_embed: str = "frozen",
        adapter_norm: bool = True,
        adapter_hidden: int | None = None,
        resample: str = "auto",
    ) -> None:
        super().__init__()
        visual = getattr(teacher, "visual", None)
        if visual is None or not hasattr(visual, "transformer") or not hasattr(teacher, "num_layers"):
            raise ValueError(
                f"CLIPSemanticHead needs a FrozenCLIP teacher with a ViT visual tower, got {type(teacher).__name__}; "
                "Chimera-Seg cannot use the oracle teacher (set teacher=clip_vitb16 or teacher=tiny_random)"
            )
        L = int(teacher.num_layers)
        if not 0 <= int(num_blocks) <= L:
            raise ValueError(
                f"CLIPSemanticHead: num_blocks (method.csh_blocks)={num_blocks} must be in [0, {L}] "
                f"for a teacher with {L} blocks"
            )
        if maskclip_last and int(num_blocks) == 0:
            raise ValueError("CLIPSemanticHead: maskclip_last=True needs csh_blocks >= 1")
        if pos_embed not in POS_EMBED_MODES:
            raise ValueError(f"CLIPSemanticHead: pos_embed={pos_embed!r} (method.pos_embed); choose {POS_EMBED_MODES}")
        if resample not in RESAMPLE_MODES:
            raise ValueError(f"CLIPSemanticHead: resample={resample!r} (method.resample); choose {RESAMPLE_MODES}")
        if int(in_channels) < 1:
            raise ValueError(f"CLIPSemanticHead: in_channels must be >= 1, got {in_channels}")

        self.width = int(teacher.width)
        self.embed_dim = int(teacher.embed_dim)
        self.patch_size = int(teacher.patch_size)
        self.num_blocks = int(num_blocks)
        self.in_channels = int(in_channels)
        self.maskclip_last = bool(maskclip_last)
        self.pos_mode = pos_embed
        self.resample = resample
        self.native_grid = tuple(int(g) for g in teacher.native_grid)
        self.batch_first = bool(getattr(visual.transformer, "batch_first", True))

        # ---- trainable adapter
        if adapter_hidden is None:
            self.adapter = nn.Linear(self.in_channels, self.width)
        else:
            self.adapter = nn.Sequential(
                nn.Linear(self.in_channels, int(adapter_hidden)), nn.GELU(), nn.Linear(int(adapter_hidden), self.width)
            )
        self.adapter_norm = nn.LayerNorm(self.width) if adapter_norm else nn.Identity()
        if prepend_cls:
            self.cls_token = nn.Parameter(visual.class_embedding.detach().float().clone())  # [W]
        else:
            self.cls_token = None

        # ---- frozen copies of the teacher's tail (state_dict keeps them; see class docstring)
        pos = visual.positional_embedding.detach().float().clone()  # [1 + N0, W]
        if pos_embed == "learnable":
            self.pos_embed = nn.Parameter(pos)
        elif pos_embed == "frozen":
            self.register_buffer("pos_embed", pos)
        else:
            self.pos_embed = None
        self.blocks = copy.deepcopy(visual.transformer.resblocks[L - self.num_blocks :])  # nn.ModuleList
        self.ln_post = copy.deepcopy(visual.ln_post)
        proj = visual.proj.detach().clone() if visual.proj is not None else None
        self.proj = None if proj is None else nn.Parameter(proj, requires_grad=False)  # [W, D]
        for p in self.frozen_parameters():
            p.requires_grad_(False)
        self.blocks.eval()
        self.ln_post.eval()

    # ------------------------------------------------------------------ frozen part
    def frozen_parameters(self) -> list[nn.Parameter]:
        """The frozen CLIP parameters (copied blocks, ln_post, proj): never trained, never in the optimizer."""
        ps = list(self.blocks.parameters()) + list(self.ln_post.parameters())
        return ps + ([self.proj] if self.proj is not None else [])

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Adapter (+ LayerNorm), class token and a learnable positional embedding: the CSH's trainable part."""
        frozen = {id(p) for p in self.frozen_parameters()}
        return [p for p in self.parameters() if id(p) not in frozen]

    def train(self, mode: bool = True) -> "CLIPSemanticHead":
        """Set train/eval mode on the adapter; the frozen CLIP blocks and ln_post always stay in eval mode."""
        super().train(mode)
        self.blocks.eval()
        self.ln_post.eval()
        return self

    # ------------------------------------------------------------------ forward pieces
    def positional_embedding(self, grid: tuple[int, int]) -> Tensor | None:
        """CLIP's positional embedding for a token grid, class-token row first.

        Args:
            grid: (gh, gw), tokens. Returns: ``Tensor[1 + gh*gw, W]`` (bicubic, antialiased, align_corners=False
            interpolation of the patch part, as FrozenCLIP / open_clip do, via
            :func:`zss.models.clip_ops.resample_pos_embed`), or None with ``pos_embed="none"``.
        """
        if self.pos_embed is None:
            return None
        grid = (int(grid[0]), int(grid[1]))
        if grid == self.native_grid:
            return self.pos_embed
        return clip_ops.resample_pos_embed(self.pos_embed, grid, self.native_grid, mode="bicubic")

    def _resample(self, x: Tensor, grid: tuple[int, int]) -> Tensor:
        h, w = x.shape[-2:]
        if (h, w) == tuple(grid):
            return x
        mode = self.resample
        if mode == "auto":
            mode = "area" if grid[0] <= h and grid[1] <= w else "bilinear"
        if mode == "area":
            return F.adaptive_avg_pool2d(x, grid)
        return F.interpolate(x, size=grid, mode="bilinear", align_corners=False)

    def tokens(self, feats: Tensor, grid: tuple[int, int] | None = None) -> tuple[Tensor, tuple[int, int]]:
        """Body map -> the token sequence the frozen blocks see.

        Args:
            feats: ``Tensor[B, C, h, w]`` body map. grid: (gh, gw) token grid, tokens; None = (h, w).
        Returns:
            (``Tensor[B, (1 +) gh*gw, W]`` batch first, class token first when ``prepend_cls``; (gh, gw)).
        Raises:
            ValueError: ``feats`` is not ``[B, in_channels, h, w]``.
        """
        if feats.ndim != 4 or feats.shape[1] != self.in_channels:
            raise ValueError(
                f"CLIPSemanticHead: expected a body map Tensor[B, {self.in_channels}, h, w], got {tuple(feats.shape)}"
            )
        grid = tuple(int(g) for g in (feats.shape[-2:] if grid is None else grid))
        x = self._resample(feats, grid)  # [B, C, gh, gw]
        x = x.flatten(2).transpose(1, 2)  # [B, N, C]
        x = self.adapter_norm(self.adapter(x))  # [B, N, W]
        pos = self.positional_embedding(grid)
        if pos is not None:
            x = x + pos[1:].to(x.dtype)
        if self.cls_token is not None:
            cls = self.cls_token.to(x.dtype)
            if pos is not None:
                cls = cls + pos[0].to(x.dtype)
            x = torch.cat([cls.view(1, 1, -1).expand(x.shape[0], -1, -1), x], dim=1)  # [B, 1 + N, W]
        return x, grid

    def run_blocks(self, x: Tensor) -> Tensor:
        """The copied frozen blocks on ``Tensor[B, L, W]`` (batch first; the last one in MaskCLIP form when
        ``maskclip_last``), with zss's attention (:func:`zss.models.clip_ops.run_blocks`, the teacher's path).
        Same computation as :meth:`FrozenCLIP.run_blocks` with ``start_block=-k``; autograd on. Returns
        ``Tensor[B, L, W]``."""
        n = len(self.blocks)
        std = self.blocks[: n - 1] if self.maskclip_last else self.blocks
        x = clip_ops.run_blocks(std, x, batch_first=self.batch_first)
        if self.maskclip_last:
            x = clip_ops.maskclip_block(self.blocks[n - 1], x)
        return x

    def project(self, tokens: Tensor) -> Tensor:
        """Frozen ``ln_post`` then ``proj``: ``Tensor[B, N, W] -> Tensor[B, N, D]`` (not normalised;
        :func:`zss.models.clip_ops.project`)."""
        return clip_ops.project(tokens, self.ln_post, self.proj)

    def forward_tokens(self, x: Tensor, grid: tuple[int, int]) -> Tensor:
        """Frozen tail on a ready token sequence.

        Args:
            x: ``Tensor[B, gh*gw, W]`` or ``Tensor[B, 1 + gh*gw, W]`` (class token first). grid: (gh, gw).
        Returns:
            ``Tensor[B, D, gh, gw]`` embeds, L2-normalised over D (class token dropped).
        """
        gh, gw = grid
        n = gh * gw
        if x.ndim != 3 or x.shape[1] not in (n, n + 1) or x.shape[2] != self.width:
            raise ValueError(
                f"CLIPSemanticHead.forward_tokens: expected Tensor[B, (1+){n}, {self.width}], got {tuple(x.shape)}"
            )
        x = self.run_blocks(x)
        x = self.project(x[:, -n:])  # [B, N, D]
        x = F.normalize(x, dim=-1)
        return x.transpose(1, 2).reshape(x.shape[0], -1, gh, gw)

    def forward(self, feats: Tensor, grid: tuple[int, int] | None = None) -> Tensor:
        """CSH embeds of a body map.

        Args:
            feats: ``Tensor[B, in_channels, h, w]`` float. grid: (gh, gw) output token grid; None = (h, w).
        Returns:
            ``Tensor[B, D, gh, gw]`` L2-normalised over D (CLIP joint space).
        """
        x, grid = self.tokens(feats, grid)
        return self.forward_tokens(x, grid)

    # ------------------------------------------------------------------ optimisation
    def param_groups(self, lr: float, weight_decay: float = 0.01) -> list[dict]:
        """Trainable CSH parameters at ``lr``: weight decay on >=2-D adapter weights, none on norms, biases,
        the class token and the positional embedding (timm's convention; not in the paper: our default).
        Frozen CLIP parameters are never included. Returns groups named ``csh`` / ``csh_no_decay``."""
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            if not p.requires_grad or name.startswith(("blocks.", "ln_post.")) or name == "proj":
                continue
            (decay if p.ndim >= 2 and name != "pos_embed" else no_decay).append(p)
        groups = []
        if decay:
            groups.append(dict(params=decay, lr=lr, weight_decay=weight_decay, name="csh"))
        if no_decay:
            groups.append(dict(params=no_decay, lr=lr, weight_decay=0.0, name="csh_no_decay"))
        return groups

    def extra_repr(self) -> str:
        return (
            f"in_channels={self.in_channels}, width={self.width}, embed_dim={self.embed_dim}, "
            f"num_blocks={self.num_blocks}, maskclip_last={self.maskclip_last}, pos_embed={self.pos_mode!r}, "
            f"prepend_cls={self.cls_token is not None}"
        )


class ChimeraStudent(nn.Module):
    """Body (zss Student: backbone + decoder) + CLIP Semantic Head; usable as ``Method.student`` (docs/methods.md
    (Chimera-Seg)).

    ``forward(images) = csh(body_map(images), grid=(H // token_stride, W // token_stride))``.

    The body's own 1x1 projection (``body.proj``) is removed (set to None) because the CSH replaces it (our
    choice: no auxiliary path, so no unused parameters under DDP); with ``csh_input="backbone"`` the body's
    decoder is removed too. ``body.forward`` / ``body.project`` are therefore no longer usable; the body's
    ``features``, ``decode``, ``logits`` and ``logit_scale`` are.

    Args:
        body: a :class:`~zss.models.student.Student` (its ``embed_dim`` is irrelevant here). Modified in place.
        csh: a :class:`CLIPSemanticHead` whose ``in_channels`` match the chosen body map.
        csh_input: ``"decoder"`` (``body.decode`` output, ``decoder_channels`` at stride ``output_stride``) or
            ``"backbone"`` (last backbone feature map). Not in the paper: our default ``"decoder"``.
        token_stride: stride in pixels of the CSH token grid (= of the output embeds); None = the teacher's
            patch size (16 for ViT-B/16, the grid CLIP's blocks were trained on). Not in the paper: ours.

    Attributes:
        embed_dim (int): D. output_stride (int): token stride, pixels.

    Raises:
        ValueError: unknown ``csh_input``, channel mismatch between body map and ``csh.in_channels``.
    """

    def __init__(
        self, body: nn.Module, csh: CLIPSemanticHead, csh_input: str = "decoder", token_stride: int | None = None
    ) -> None:
        super().__init__()
        want = self.body_channels(body, csh_input)
        if csh.in_channels != want:
            raise ValueError(
                f"ChimeraStudent: csh.in_channels={csh.in_channels} but the body's {csh_input} map has {want} channels"
            )
        body.proj = None  # replaced by the CSH (see class docstring)
        if csh_input == "backbone":
            body.decoder = None
        self.body = body
        self.csh = csh
        self.csh_input = csh_input
        self.output_stride = int(token_stride) if token_stride is not None else csh.patch_size
        if self.output_stride < 1:
            raise ValueError(f"ChimeraStudent: token_stride must be >= 1 pixel, got {token_stride}")
        self.embed_dim = csh.embed_dim

    @staticmethod
    def body_channels(body: nn.Module, csh_input: str) -> int:
        """Channels C of the body map the CSH receives (``decoder_channels`` or the last backbone level's)."""
        if csh_input not in CSH_INPUTS:
            raise ValueError(f"ChimeraStudent: csh_input={csh_input!r} (method.csh_input); choose {CSH_INPUTS}")
        return int(body.decoder_channels) if csh_input == "decoder" else int(body.feature_channels[-1])

    def grid(self, size: Sequence[int]) -> tuple[int, int]:
        """Token grid (gh, gw) for an input of ``size`` (H, W) pixels: ``max(1, H // token_stride)`` each."""
        s = self.output_stride
        return max(1, int(size[0]) // s), max(1, int(size[1]) // s)

    def body_map(self, images: Tensor) -> Tensor:
        """``Tensor[B, C, h, w]``: the decoder output or the last backbone map of ``images [B, 3, H, W]``."""
        feats = self.body.features(images)
        return self.body.decode(feats) if self.csh_input == "decoder" else feats[-1]

    def forward(self, images: Tensor) -> Tensor:
        """Dense embeds of ``images: Tensor[B, 3, H, W] float32`` (normalised).

        Returns:
            ``Tensor[B, D, H // token_stride, W // token_stride]`` L2-normalised over D.
        """
        return self.csh(self.body_map(images), self.grid(images.shape[-2:]))

    def logits(self, embeds: Tensor, text: Tensor) -> Tensor:
        """``logit_scale * cos(embeds, text)``: ``Tensor[B, D, h, w]``, ``Tensor[C, D]`` -> ``Tensor[B, C, h, w]``
        (the body Student's ``logits`` and fixed ``logit_scale``)."""
        return self.body.logits(embeds, text)

    def param_groups(self, lr: float, head_lr_mult: float = 10.0, weight_decay: float = 0.01) -> list[dict]:
        """Body backbone at ``lr``, body decoder and CSH adapter (+LN, class token) at ``lr * head_lr_mult``;
        weight decay as :meth:`Student.param_groups`. The frozen CLIP blocks / ln_post / proj are absent."""
        groups = list(self.body.param_groups(lr, head_lr_mult=head_lr_mult, weight_decay=weight_decay))
        return groups + self.csh.param_groups(lr * head_lr_mult, weight_decay=weight_decay)

    def extra_repr(self) -> str:
        return f"csh_input={self.csh_input!r}, token_stride={self.output_stride}"
