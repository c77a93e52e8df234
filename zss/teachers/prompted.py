"""PromptedCLIPEncoder: a frozen open_clip CLIP ViT run with deep visual prompts and region tokens.

This is the CLIP image encoder of CLIP-RC and ZegCLIP (docs/clip_rc.md), the methods that keep CLIP at
test time. It lives beside :class:`~zss.teachers.clip.FrozenCLIP` and is built from its building blocks
(``visual``, ``positional_embedding``, ``project``) and the free functions of :mod:`zss.models.clip_ops`
(class-token input, embedding, blocks under an additive attention mask with stochastic depth), the teacher's
own attention path; what it adds is the longer sequence (CLS | prompts | patches | region tokens) and its mask.

Token sequence (batch first), as the public CLIP-RC code (``models/backbone/img_encoder_rlb.py``):

* ``[CLS | N prompts | h·w patches | R region tokens]``, R = G·G (G = ``region_grid``, 4 in CLIP-RC,
  0 = none as in ZegCLIP).
* CLS and patches get CLIP's positional embedding. The public CLIP-RC and ZegCLIP encoders build the CLS
  slot from ``class_embedding`` and then add ``cls_pos = positional_embedding[0] + class_embedding``, so the
  CLS token enters ``ln_pre`` as ``2·class_embedding + positional_embedding[0]`` (the class embedding counted
  twice; ``cls_input="public"``, the default); ``cls_input="clip"`` feeds open_clip's
  ``class_embedding + positional_embedding[0]``. Region tokens are initialised to ``cls_pos`` =
  ``class_embedding + positional_embedding[0]`` (the public code's value, which is NOT what its CLS token
  receives) and carry no position;
  ``ln_pre`` runs on CLS, patches and region tokens. Prompts are inserted right after CLS *after*
  ``ln_pre``: ``Dropout(prompt_proj(E_0))``; before every later block l >= 1 the prompt slots are
  overwritten by ``Dropout(prompt_proj(E_l))`` (VPT-deep; one shared ``prompt_proj``).
* Every block uses the same additive mask (:func:`region_attention_mask`): region token k sees only its
  patch window and itself; a patch sees CLS, the prompts, all patches and its own region token; CLS and
  the prompts never see region tokens.
* After the last block: ``prompt_norm`` (LayerNorm, eps 1e-6) on every token except the region tokens,
  then ``ln_post`` and ``proj`` on all tokens.

The CLIP weights are frozen (``requires_grad=False``, always in eval mode); only the prompts, their
projection and norm (and the region tokens when ``train_region_tokens``) are trainable. Autograd is not
disabled: gradients flow through the frozen blocks into the prompts.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zss.data.normalize import check_stats, renormalize_affine
from zss.models import clip_ops
from zss.teachers.clip import FrozenCLIP

#: CLS-slot inputs of :class:`PromptedCLIPEncoder`: the public CLIP-RC / ZegCLIP code's (class embedding
#: counted twice) and open_clip's (:func:`zss.models.clip_ops.class_token`).
CLS_INPUTS = ("public", "clip")

__all__ = [
    "CLS_INPUTS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "POS_INTERP_MODES",
    "PromptedCLIPEncoder",
    "region_attention_mask",
    "region_windows",
    "visual_fingerprint",
]

#: ImageNet normalisation mean / std, RGB, [0, 1] units (mmseg's 123.675, 116.28, 103.53 / 58.395, 57.12, 57.375).
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
#: Positional-embedding interpolation modes of :class:`PromptedCLIPEncoder`.
POS_INTERP_MODES = ("bilinear", "bicubic")


def region_windows(grid: tuple[int, int], region_grid: int) -> list[tuple[int, int, int, int]]:
    """Patch windows of the G×G region tokens on an h×w patch grid.

    Region k = (i, j) (row-major, k = i·G + j) owns patch rows ``[floor(i·h/G), floor((i+1)·h/G))`` and
    columns ``[floor(j·w/G), floor((j+1)·w/G))``. When G divides h and w this is the public code's equal
    split (8×8 patches at 512 px, ViT-B/16, G = 4); otherwise the windows differ by one patch (ours).

    Args:
        grid: (h, w) patch grid, patches. region_grid: G >= 1.
    Returns:
        list of G·G tuples ``(r0, r1, c0, c1)`` (patch indices, end exclusive).
    Raises:
        ValueError: G < 1, or a grid smaller than G in either direction (a region would own no patch;
            use larger inputs or a smaller ``region_grid``).
    """
    h, w = int(grid[0]), int(grid[1])
    g = int(region_grid)
    if g < 1:
        raise ValueError(f"region_windows: region_grid must be >= 1, got {region_grid}")
    if h < g or w < g:
        raise ValueError(
            f"region_windows: the patch grid {h}x{w} is smaller than the {g}x{g} region grid; every region token "
            f"needs at least one patch. Use inputs of at least {g} patches per side (e.g. a crop of >= {g * 16} px "
            f"for a patch-16 ViT) or method.region_grid=<smaller>."
        )
    rows = [(i * h // g, (i + 1) * h // g) for i in range(g)]
    cols = [(j * w // g, (j + 1) * w // g) for j in range(g)]
    return [(r0, r1, c0, c1) for (r0, r1) in rows for (c0, c1) in cols]


def region_attention_mask(
    num_prompts: int,
    grid: tuple[int, int],
    region_grid: int,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """The additive attention mask of CLIP-RC's encoder (row = query token, column = key token).

    Sequence layout ``[CLS | num_prompts | h·w patches | G·G region tokens]``, L = 1 + N + h·w + G².
    Entries are 0 (may attend) or -inf (may not): start from 0; block every row and column of the
    region tokens; then open (region k, patch p) and (patch p, region k) for the patches p of k's window
    (:func:`region_windows`) and (region k, region k). Result: region k sees only its window and itself;
    a patch sees CLS, the prompts, every patch and its own region token; CLS and prompts never see a
    region token. Source: public CLIP-RC code, ``img_encoder_rlb.py`` ``gen_attention_mask``.

    Args:
        num_prompts: N >= 0 prompt tokens. grid: (h, w) patch grid, patches. region_grid: G >= 1.
        device, dtype: of the returned mask.
    Returns:
        Tensor[L, L] of ``dtype`` with values in {0, -inf}.
    Raises:
        ValueError: ``num_prompts < 0`` or a bad grid (see :func:`region_windows`).
    """
    if num_prompts < 0:
        raise ValueError(f"region_attention_mask: num_prompts must be >= 0, got {num_prompts}")
    h, w = int(grid[0]), int(grid[1])
    windows = region_windows((h, w), region_grid)
    n_reg = len(windows)
    p0 = 1 + num_prompts  # first patch index
    r0 = p0 + h * w  # first region index
    length = r0 + n_reg
    owner = torch.empty(h, w, dtype=torch.long)  # region id of every patch
    for k, (a, b, c, d) in enumerate(windows):
        owner[a:b, c:d] = k
    owner = owner.flatten()  # [h*w]
    m = torch.zeros(length, length, dtype=torch.float32)
    m[:, r0:] = float("-inf")
    m[r0:, :] = float("-inf")
    patches = torch.arange(h * w) + p0
    regions = owner + r0
    m[regions, patches] = 0.0
    m[patches, regions] = 0.0
    diag = torch.arange(r0, length)
    m[diag, diag] = 0.0
    return m.to(device=device, dtype=dtype)


def visual_fingerprint(visual: nn.Module) -> str:
    """sha256 (hex) of every parameter and buffer of a module, in ``state_dict`` order, as float32 bytes.

    Identifies the frozen CLIP image tower a checkpoint was trained with, whatever file it came from (a
    random tower built from a seed has one too). Reads every parameter once (a full pass over the tower's weights).

    Args:
        visual: e.g. ``FrozenCLIP.visual``.
    Returns:
        64 hex characters.
    """
    h = hashlib.sha256()
    for name, t in visual.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


class PromptedCLIPEncoder(nn.Module):
    """Frozen CLIP ViT image encoder with VPT-deep prompts and G×G region tokens (CLIP-RC / ZegCLIP).

    Args:
        clip: a :class:`~zss.teachers.clip.FrozenCLIP` with a ViT tower pooled by its class token
            (``pool_type == "tok"``). Its ``visual`` tower is registered here (frozen, counted in the
            parameters, moved with this module); the FrozenCLIP object itself is kept unregistered.
        num_prompts: N prompt tokens per layer [public code: 10 VOC, 100 COCO-Stuff; 0 = no prompts,
            no ``prompt_proj``/``prompt_norm``].
        deep_prompts: True = VPT-deep (fresh prompts before every block, ``num_layers - 1`` deep sets)
            [public code: total_d_layer = 11 of 12]; False = VPT-shallow (the first set runs through).
        region_grid: G; G·G region tokens on a G×G grid of patch windows [CLIP-RC: 4; ZegCLIP: 0 = none].
        train_region_tokens: the region tokens get gradients. [public code: False — its freezing rule
            keeps only parameters whose name contains "prompt"; the paper evidently means them trained].
        prompt_dropout: dropout on the projected prompts, training only [public code: 0.1].
        drop_path_rate: stochastic depth on the frozen blocks' residual branches, linearly increasing to
            this value over the blocks, training only [public code: configured 0.1 but never applied, so
            0.0 reproduces it].
        pos_interp: how CLIP's positional embedding is resized to the patch grid: ``"bilinear"``
            (align_corners=False, public code) or ``"bicubic"`` (FrozenCLIP's / open_clip's antialiased
            bicubic). At the native grid both return the native embedding.
        input_mean, input_std: normalisation (RGB, [0, 1] units) of the incoming images (the dataset's);
            None = the FrozenCLIP's ``input_mean``/``input_std`` (what ``scripts/train.py`` gave it).
        cls_input: what the CLS slot enters ``ln_pre`` with: ``"public"`` = ``2·class_embedding + pos[0]``
            (public CLIP-RC / ZegCLIP encoders: the class embedding counted twice) or ``"clip"`` =
            ``class_embedding + pos[0]`` (open_clip / OpenAI CLIP) [public code: "public"].
        pixel_mean, pixel_std: normalisation the CLIP tower receives; None = the weights' own
            (``clip.clip_mean``/``clip_std``). The public code feeds ImageNet-normalised pixels
            (:data:`IMAGENET_MEAN`/:data:`IMAGENET_STD`) to CLIP weights.

    Attributes:
        width (int): W; embed_dim (int): D; patch_size (int), pixels; num_layers (int);
        num_regions (int): G·G. identity (dict): the CLIP's ``FrozenCLIP.identity``.

    Raises:
        ValueError: bad argument values, or a tower without class-token pooling.
    """

    def __init__(
        self,
        clip: FrozenCLIP,
        num_prompts: int = 10,
        deep_prompts: bool = True,
        region_grid: int = 4,
        train_region_tokens: bool = False,
        prompt_dropout: float = 0.1,
        drop_path_rate: float = 0.0,
        pos_interp: str = "bilinear",
        input_mean: Sequence[float] | None = None,
        input_std: Sequence[float] | None = None,
        pixel_mean: Sequence[float] | None = None,
        pixel_std: Sequence[float] | None = None,
        cls_input: str = "public",
    ) -> None:
        super().__init__()
        if cls_input not in CLS_INPUTS:
            raise ValueError(f"PromptedCLIPEncoder: cls_input={cls_input!r} (method.cls_input); choose {CLS_INPUTS}")
        self.cls_input = cls_input
        if not isinstance(clip, FrozenCLIP):
            raise ValueError(
                f"PromptedCLIPEncoder needs a zss FrozenCLIP (teacher=clip_vitb16 / tiny_random), got "
                f"{type(clip).__name__}"
            )
        if clip.visual.pool_type != "tok":
            raise ValueError(
                f"PromptedCLIPEncoder needs a CLIP tower pooled by its class token, got pool_type="
                f"{clip.visual.pool_type!r} ({clip.identity.get('model_name')})"
            )
        if int(num_prompts) < 0 or int(region_grid) < 0:
            raise ValueError(
                f"PromptedCLIPEncoder: num_prompts={num_prompts} and region_grid={region_grid} must be "
                f">= 0 (method.num_prompts / method.region_grid)"
            )
        if pos_interp not in POS_INTERP_MODES:
            raise ValueError(
                f"PromptedCLIPEncoder: pos_interp={pos_interp!r} (method.pos_interp); choose {POS_INTERP_MODES}"
            )
        if not 0.0 <= float(prompt_dropout) < 1.0 or not 0.0 <= float(drop_path_rate) < 1.0:
            raise ValueError(
                f"PromptedCLIPEncoder: prompt_dropout={prompt_dropout} and drop_path_rate="
                f"{drop_path_rate} must be in [0, 1)"
            )
        object.__setattr__(self, "_clip", clip)  # unregistered: its text tower is not part of this module
        self.visual = clip.visual  # registered: frozen CLIP image tower (counted, moved, kept in eval)
        self.width, self.embed_dim = clip.width, clip.embed_dim
        self.patch_size, self.num_layers = clip.patch_size, clip.num_layers
        self.native_grid = clip.native_grid
        self.identity = dict(clip.identity)
        self.num_prompts = int(num_prompts)
        self.deep_prompts = bool(deep_prompts)
        self.region_grid = int(region_grid)
        self.num_regions = self.region_grid**2
        self.pos_interp = pos_interp
        self.drop_path_rate = float(drop_path_rate)
        self._drop_probs = (
            [float(p) for p in torch.linspace(0.0, self.drop_path_rate, self.num_layers)]
            if self.drop_path_rate > 0
            else [0.0] * self.num_layers
        )

        # input normalisation -> the pixels CLIP receives: x_clip = x * scale + shift
        input_mean = clip.input_mean if input_mean is None else input_mean
        input_std = clip.input_std if input_std is None else input_std
        pm = clip.clip_mean if pixel_mean is None else pixel_mean
        ps = clip.clip_std if pixel_std is None else pixel_std
        self.input_mean = check_stats(input_mean, "PromptedCLIPEncoder input_mean")
        self.input_std = check_stats(input_std, "PromptedCLIPEncoder input_std", positive=True)
        self.pixel_mean = check_stats(pm, "PromptedCLIPEncoder pixel_mean")
        self.pixel_std = check_stats(ps, "PromptedCLIPEncoder pixel_std", positive=True)
        scale, shift = renormalize_affine(self.input_mean, self.input_std, self.pixel_mean, self.pixel_std)
        self.register_buffer("_in_scale", scale, persistent=False)
        self.register_buffer("_in_shift", shift, persistent=False)
        #: what the CLIP tower is fed (for the run's log / config.json "normalization")
        self.normalization = {
            "source": "PromptedCLIPEncoder (CLIP-RC / ZegCLIP)",
            "mean": list(self.pixel_mean),
            "std": list(self.pixel_std),
            "input_mean": list(self.input_mean),
            "input_std": list(self.input_std),
        }

        W = self.width
        if self.num_prompts > 0:
            # VPT init: U(±sqrt(6 / (3·p² + W))) [public code _init_prompt], kaiming-normal (fan_out) projection
            bound = math.sqrt(6.0 / float(3 * self.patch_size**2 + W))
            self.prompt_embeddings = nn.Parameter(torch.empty(1, self.num_prompts, W).uniform_(-bound, bound))
            n_deep = self.num_layers - 1 if self.deep_prompts else 0
            self.deep_prompt_embeddings = (
                nn.Parameter(torch.empty(n_deep, self.num_prompts, W).uniform_(-bound, bound)) if n_deep > 0 else None
            )
            self.prompt_proj = nn.Linear(W, W)
            nn.init.kaiming_normal_(self.prompt_proj.weight, a=0, mode="fan_out")
            self.prompt_norm = nn.LayerNorm(W, eps=1e-6)
            self.prompt_dropout = nn.Dropout(float(prompt_dropout))
        else:
            self.prompt_embeddings = self.deep_prompt_embeddings = None
            self.prompt_proj = self.prompt_norm = self.prompt_dropout = None
        if self.num_regions > 0:
            v = clip.visual
            init = (v.class_embedding.detach() + v.positional_embedding.detach()[0]).float()  # public cls_pos
            self.region_tokens = nn.Parameter(
                init.expand(self.num_regions, W).clone().to(v.class_embedding.dtype),
                requires_grad=bool(train_region_tokens),
            )
        else:
            self.region_tokens = None
        self._mask_cache: dict[tuple, Tensor] = {}
        self._pos_cache: dict[tuple, Tensor] = {}
        self.train(self.training)

    # ------------------------------------------------------------------ plumbing
    @property
    def clip(self) -> FrozenCLIP:
        """The FrozenCLIP this encoder was built on (text tower included; not a registered submodule)."""
        return self._clip

    def _apply(self, fn, recurse=True):  # keep the unregistered FrozenCLIP (text tower, buffers) with us
        out = super()._apply(fn, recurse)
        self._clip._apply(fn, recurse)
        return out

    def train(self, mode: bool = True) -> "PromptedCLIPEncoder":
        """Set train mode on the prompt parts; the frozen CLIP tower always stays in eval mode."""
        super().train(mode)
        self.visual.eval()
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The parameters with ``requires_grad`` (prompts, projection, norm, trained region tokens)."""
        return [p for p in self.parameters() if p.requires_grad]

    def extra_repr(self) -> str:
        return (
            f"clip={self.identity.get('model_name')!r}, num_prompts={self.num_prompts}, deep={self.deep_prompts}, "
            f"region_grid={self.region_grid}, pos_interp={self.pos_interp!r}, cls_input={self.cls_input!r}"
        )

    # ------------------------------------------------------------------ building blocks
    def prepare(self, images: Tensor) -> Tensor:
        """Images in the dataset normalisation -> the pixels CLIP receives (``pixel_mean``/``pixel_std``).

        Args:
            images: Tensor[B, 3, H, W] float, normalised with ``input_mean``/``input_std``.
        Returns:
            Tensor[B, 3, H, W] in the weights' dtype.
        Raises:
            ValueError: not [B, 3, H, W], or smaller than one patch.
        """
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"PromptedCLIPEncoder: images must be Tensor[B, 3, H, W], got {tuple(images.shape)}")
        if min(images.shape[-2:]) < self.patch_size:
            raise ValueError(
                f"PromptedCLIPEncoder: input {tuple(images.shape[-2:])} is smaller than one patch "
                f"({self.patch_size} px)"
            )
        x = images.float() * self._in_scale + self._in_shift
        return x.to(self.visual.conv1.weight.dtype)

    def positional_embedding(self, grid: tuple[int, int]) -> Tensor:
        """CLIP's positional embedding for a patch grid, class token first: Tensor[1 + h·w, W].

        ``pos_interp="bicubic"``: :meth:`FrozenCLIP.positional_embedding`. ``"bilinear"``: the patch part
        resized bilinearly (align_corners=False, no antialias) as the public code does. Cached, no graph.
        """
        grid = (int(grid[0]), int(grid[1]))
        if self.pos_interp == "bicubic" or grid == tuple(self.native_grid):
            return self._clip.positional_embedding(grid)
        pos = self.visual.positional_embedding
        key = (grid, pos.device, pos.dtype)
        cached = self._pos_cache.get(key)
        if cached is not None:
            return cached
        with torch.no_grad():
            out = clip_ops.resample_pos_embed(pos, grid, self.native_grid, mode="bilinear")
        self._pos_cache[key] = out
        return out

    def attention_mask(self, grid: tuple[int, int], device: torch.device, dtype: torch.dtype) -> Tensor | None:
        """:func:`region_attention_mask` for this encoder (cached), or None without region tokens."""
        if self.num_regions == 0:
            return None
        key = (int(grid[0]), int(grid[1]), device, dtype)
        m = self._mask_cache.get(key)
        if m is None:
            m = region_attention_mask(self.num_prompts, grid, self.region_grid, device=device, dtype=dtype)
            self._mask_cache[key] = m
        return m

    def _projected_prompts(self) -> Tensor:
        """``prompt_proj`` of every prompt set at once: Tensor[S, N, W], set 0 = shallow, s >= 1 = deep set s-1.

        The parameters are projected whole (not per-layer views: a view of a parameter made under no_grad
        still claims ``requires_grad`` without a graph, which breaks torch's module-tracking hooks).
        """
        e = self.prompt_embeddings  # [1, N, W]
        if self.deep_prompt_embeddings is not None:
            e = torch.cat([e, self.deep_prompt_embeddings], dim=0)  # [S, N, W]
        return self.prompt_proj(e)

    def _prompts(self, projected: Tensor, layer: int, batch: int) -> Tensor:
        """Prompts of a layer: Tensor[B, N, W] = Dropout(projected[layer]) with per-sample dropout masks."""
        return self.prompt_dropout(projected[layer].unsqueeze(0).expand(batch, -1, -1))

    def _block(self, i: int, x: Tensor, mask: Tensor | None) -> Tensor:
        """Run vision block i on batch-first tokens [B, L, W] under ``mask`` (:func:`clip_ops.run_block`, with
        stochastic depth in training when ``drop_path_rate > 0``)."""
        p = self._drop_probs[i] if self.training else 0.0
        return clip_ops.run_block(
            self.visual.transformer.resblocks[i],
            x,
            mask,
            drop_prob=p,
            batch_first=getattr(self.visual.transformer, "batch_first", True),
        )

    # ------------------------------------------------------------------ forward
    def forward(self, images: Tensor) -> dict[str, Tensor | int]:
        """Encode images with prompts and region tokens.

        Args:
            images: Tensor[B, 3, H, W] float, normalised with ``input_mean``/``input_std`` (pixels).
        Returns:
            dict with ``cls`` Tensor[B, D] (the CLS token after ``prompt_norm``/``ln_post``/``proj``),
            ``dense`` Tensor[B, D, h, w] (patch tokens, same path), ``regions`` Tensor[B, D, G, G] (region
            tokens: ``ln_post``/``proj`` without ``prompt_norm``) or None when G = 0 — all float32 and
            L2-normalised over D; ``h``, ``w``: the patch grid (H // patch, W // patch). Source: public
            CLIP-RC code (``img_encoder_rlb.py``); ZegCLIP's ``VPTCLIPVisionTransformer`` when G = 0.
        """
        x = self.prepare(images)
        B = x.shape[0]
        grid = (x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size)
        # [B, 1 + hw (+ R), W] after ln_pre: CLS, patches and region tokens (public code: class_embedding + (pos[0]
        # + class_embedding) in the CLS slot with cls_input="public")
        x, (h, w) = clip_ops.embed(
            self.visual, x, self.positional_embedding(grid), cls_input=self.cls_input, extra_tokens=self.region_tokens
        )
        N = self.num_prompts
        if N > 0:
            projected = self._projected_prompts()  # [S, N, W]
            x = torch.cat([x[:, :1], self._prompts(projected, 0, B).to(x.dtype), x[:, 1:]], dim=1)
        mask = self.attention_mask((h, w), x.device, x.dtype)
        projected_sets = projected.shape[0] if N > 0 else 0
        for i in range(self.num_layers):
            if 0 < i < projected_sets:  # deep prompts replace the prompt slots before block i
                x = torch.cat([x[:, :1], self._prompts(projected, i, B).to(x.dtype), x[:, 1 + N :]], dim=1)
            x = self._block(i, x, mask)
        R = self.num_regions
        body, regions = (x[:, : x.shape[1] - R], x[:, x.shape[1] - R :]) if R > 0 else (x, None)
        if self.prompt_norm is not None:
            body = self.prompt_norm(body)
        body = self._clip.project(body)  # ln_post + proj: [B, 1 + N + hw, D]
        cls_e = F.normalize(body[:, 0].float(), dim=-1)
        dense = F.normalize(body[:, 1 + N :].float(), dim=-1)  # [B, hw, D]
        dense = dense.transpose(1, 2).reshape(B, -1, h, w)
        reg = None
        if regions is not None:
            G = self.region_grid
            reg = F.normalize(self._clip.project(regions).float(), dim=-1)  # [B, R, D]
            reg = reg.transpose(1, 2).reshape(B, -1, G, G)
        return {"cls": cls_e, "dense": dense, "regions": reg, "h": h, "w": w}
