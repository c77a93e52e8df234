"""FrozenCLIP: the frozen open_clip teacher (CLS embedding, dense tokens, text embeddings).

It walks the open_clip ``VisionTransformer`` with the free functions of :mod:`zss.models.clip_ops` (the one
module of zss that reaches into open_clip's vision tower, docs/architecture.md "CLIP surgery"): ``conv1`` ->
class token -> positional embedding -> ``ln_pre`` -> ``transformer.resblocks`` -> ``ln_post`` -> ``proj``, so
that a single pass yields both the CLS embedding and the dense patch embeddings, at any input size (bicubic
positional-embedding interpolation), with the MaskCLIP value-path trick on the last block as an option.

The teacher is frozen: ``train()`` never leaves eval mode, parameters have ``requires_grad=False``,
and :meth:`FrozenCLIP.forward` / :meth:`FrozenCLIP.text` run under ``torch.no_grad()``.
:meth:`FrozenCLIP.run_blocks` and :meth:`FrozenCLIP.project` deliberately do *not* disable autograd:
Chimera-Seg's CLIP Semantic Head backpropagates through the frozen last blocks into its adapter.
"""

from __future__ import annotations

import difflib
import hashlib
import logging
import os
from collections.abc import Sequence
from typing import Any

import open_clip
import torch
import torch.nn.functional as F
from open_clip.transformer import VisionTransformer
from torch import Tensor, nn

from zss.data.normalize import CLIP_MEAN, CLIP_STD, renormalize_affine
from zss.data.transforms import as_pair
from zss.models import clip_ops
from zss.models.clip_ops import resample_pos_embed  # re-exported: zss.teachers.clip.resample_pos_embed

__all__ = [
    "DENSE_MODES",
    "FrozenCLIP",
    "TeacherWeightsError",
    "TeacherWeightsNotFoundError",
    "build_tiny_clip",
    "resample_pos_embed",
    "tiny_clip_cfg",
]

log = logging.getLogger(__name__)

#: Dense-token modes of :class:`FrozenCLIP` (docs/architecture.md "Teacher").
DENSE_MODES = ("tokens", "maskclip")

_RANDOM = ("", "none", "random")
_WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt", ".npz")
_SCHEMAS = ("hf-hub:", "local-dir:")
_TEXT_CHUNK = 512  # texts per encode_text call (memory bound for large prompt ensembles); our default


class TeacherWeightsError(RuntimeError):
    """The teacher's pretrained weights could not be fetched or loaded (offline machine, bad path)."""


class TeacherWeightsNotFoundError(TeacherWeightsError, FileNotFoundError):
    """``teacher.pretrained`` names a local weights file that does not exist."""


def _sha256(path: str, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def _offline_message(model_name: str, what: str, reason: str) -> str:
    return (
        f"FrozenCLIP: the teacher weights {what} for teacher.model_name={model_name} could not be loaded "
        f"({reason}). This machine may be offline (no access to the Hugging Face hub or the download URL), "
        f"or the file is missing. Fix: fetch the weights on a machine with internet access and set "
        f"teacher.pretrained=<path to a local .pt/.bin/.safetensors file> (keeping "
        f"teacher.model_name={model_name}); for offline smoke runs only, teacher.pretrained=random builds "
        f"random weights (all numbers are then meaningless)."
    )


def _looks_like_path(p: str) -> bool:
    return os.sep in p or "/" in p or p.startswith(("~", ".")) or p.lower().endswith(_WEIGHT_SUFFIXES)


def tiny_clip_cfg(
    embed_dim: int = 32,
    image_size: int = 32,
    patch_size: int = 8,
    width: int = 64,
    layers: int = 2,
    heads: int = 2,
    text_width: int = 64,
    text_layers: int = 2,
    text_heads: int = 2,
    context_length: int = 77,
) -> dict:
    """Return an open_clip model config dict for a tiny random CLIP (tests, demo).

    Args:
        embed_dim: joint embedding size D.
        image_size: native input size of the vision tower, pixels.
        patch_size: ViT patch size, pixels.
        width, layers, heads: vision transformer width W, depth and head count (head_width = W // heads).
        text_width, text_layers, text_heads: text transformer shape.
        context_length: text context length (tokens), 77 as in CLIP.

    Returns:
        dict with ``embed_dim``, ``vision_cfg``, ``text_cfg`` usable as ``open_clip.CLIP(**cfg)`` or
        ``FrozenCLIP(model_cfg=cfg)``. Source: not in the papers; our test fixture (SPEC, tests/conftest).
    """
    if width % heads:
        raise ValueError(f"tiny_clip_cfg: width={width} must be divisible by heads={heads}")
    return {
        "embed_dim": embed_dim,
        "vision_cfg": {
            "image_size": image_size,
            "layers": layers,
            "width": width,
            "head_width": width // heads,
            "patch_size": patch_size,
        },
        "text_cfg": {
            "context_length": context_length,
            "vocab_size": 49408,
            "width": text_width,
            "heads": text_heads,
            "layers": text_layers,
        },
    }


class FrozenCLIP(nn.Module):
    """Frozen open_clip CLIP teacher: CLS embedding, dense patch embeddings, text embeddings (docs/architecture.md
    "Teacher").

    Args:
        model_name: open_clip model name (``open_clip.list_models()``, e.g. ``"ViT-B-16-quickgelu"``) or
            ``"hf-hub:org/repo"``. With ``model_cfg`` it is only a label recorded in ``identity``.
        pretrained: where the weights come from, through open_clip's own loading: an open_clip tag for
            ``model_name`` (``"openai"``), a local ``.pt/.bin/.safetensors`` file, ``"hf-hub:org/repo"``,
            or ``None``/``"random"`` for random init (tests, offline smoke runs; numbers meaningless).
        dense_mode: ``"maskclip"`` (last block's attention replaced by its value path) or ``"tokens"``
            (plain last-layer patch tokens). Both then go through ``ln_post`` and ``proj`` (docs/architecture.md
            "Teacher").
        image_size: if set (int or (H, W), pixels), inputs are resized to it (bilinear) before the tower;
            ``None`` keeps the input size. Positional embeddings are interpolated to any grid.
        input_mean, input_std: per-channel normalisation (RGB, [0, 1] units) that the incoming images
            carry; converted to CLIP's own normalisation internally by an affine map.
        model_cfg: explicit open_clip config dict (``embed_dim``, ``vision_cfg``, ``text_cfg``, optional
            ``quick_gelu``/``custom_text``) for tiny random models; ``pretrained`` may then be a local file
            (loaded with ``open_clip.load_checkpoint``) or ``None``/``"random"``.
        cache_dir: open_clip download cache directory (``None``: open_clip's default).
        clip_mean, clip_std: override the normalisation the weights expect (RGB, [0, 1] units). Default:
            what open_clip records for the tag (``visual.preprocess_cfg``), else OpenAI's. A bare weights
            file keeps open_clip's default preprocessing, so set these for non-OpenAI files.
        hash_weights: compute the sha256 of the local weights file for ``identity`` (reads the whole file once).
        warning: what these weights mean for the numbers (e.g. the label-taught CLIP of
            docs/taught_clip.md); recorded as ``identity["warning"]`` and printed with every result.
        missing_weights_hint: appended to the :class:`TeacherWeightsNotFoundError` message of a missing
            local weights file (e.g. the command that builds it).

    Attributes:
        model: the open_clip ``CLIP``/``CustomTextCLIP`` (frozen).
        visual: the open_clip ``VisionTransformer`` (property; for Chimera-Seg's CSH).
        embed_dim (int): joint-space size D. width (int): vision transformer width W.
        patch_size (int): patch side, pixels (square patches only). num_layers (int): vision blocks.
        native_image_size (tuple[int, int]): the tower's training input size, pixels.
        image_size (tuple[int, int] | None): resize target, pixels, or None.
        clip_mean, clip_std, input_mean, input_std (tuple[float, float, float]).
        identity (dict): model_name, pretrained, source, file, sha256, embed_dim, width, patch_size,
            native_image_size, image_size, clip_mean, clip_std, input_mean, input_std, dense_mode,
            open_clip_version (and model_cfg / warning when given). Recorded instead of the weights in checkpoints.

    Raises:
        ValueError: unknown ``model_name`` (lists close names; fix ``teacher.model_name=...``), unknown
            tag for the model, bad ``dense_mode``, a non-ViT visual tower (ModifiedResNet, timm) or an
            attentional-pool tower, an ``image_size`` that is not a positive int or pair.
        TeacherWeightsError (RuntimeError): the weights could not be downloaded/loaded (offline machine);
            :class:`TeacherWeightsNotFoundError` (also a FileNotFoundError) for a missing local file.
            The message names the fix ``teacher.pretrained=<path ...>`` / ``teacher.pretrained=random``.
    """

    def __init__(
        self,
        model_name: str = "ViT-B-16-quickgelu",
        pretrained: str | None = "openai",
        dense_mode: str = "maskclip",
        image_size: int | Sequence[int] | None = None,
        input_mean: Sequence[float] = CLIP_MEAN,
        input_std: Sequence[float] = CLIP_STD,
        model_cfg: dict | None = None,
        cache_dir: str | None = None,
        clip_mean: Sequence[float] | None = None,
        clip_std: Sequence[float] | None = None,
        hash_weights: bool = True,
        warning: str | None = None,
        missing_weights_hint: str | None = None,
    ) -> None:
        super().__init__()
        if dense_mode not in DENSE_MODES:
            raise ValueError(
                f"FrozenCLIP: unknown dense_mode={dense_mode!r}; choose one of {DENSE_MODES} (teacher.dense_mode=...)"
            )
        self.dense_mode = dense_mode
        try:
            model, info = self._build(model_name, pretrained, model_cfg, cache_dir, hash_weights)
        except TeacherWeightsNotFoundError as e:
            if not missing_weights_hint:
                raise
            raise TeacherWeightsNotFoundError(f"{e} {missing_weights_hint}") from e
        self.model = model
        self._model_name = info["model_name"]
        self._model_cfg = model_cfg

        visual = model.visual
        src = "teacher.model_cfg" if model_cfg is not None else f"teacher.model_name={model_name}"
        if not isinstance(visual, VisionTransformer):
            kind = type(visual).__name__
            raise ValueError(
                f"FrozenCLIP supports ViT visual towers only, but {src} has a {kind} visual tower; choose a "
                f"ViT model (e.g. teacher.model_name=ViT-B-16-quickgelu)."
            )
        if getattr(visual, "attn_pool", None) is not None:
            raise ValueError(
                f"FrozenCLIP: {src} uses an attentional pooler (CoCa-style); dense tokens are not in the "
                f"joint space there. Choose a plain CLIP ViT (e.g. teacher.model_name=ViT-B-16-quickgelu)."
            )
        if visual.pool_type not in ("tok", "avg"):
            raise ValueError(f"FrozenCLIP: unsupported visual pool_type={visual.pool_type!r} ({src})")
        ph, pw = as_pair(visual.patch_size, "visual.patch_size")
        if ph != pw:
            raise ValueError(f"FrozenCLIP: non-square patches {visual.patch_size} are not supported")

        # Freeze for good.
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.model.eval()

        self.patch_size: int = ph
        self.width: int = int(visual.conv1.out_channels)
        self.num_layers: int = len(visual.transformer.resblocks)
        self.embed_dim: int = int(visual.proj.shape[1]) if visual.proj is not None else self.width
        self.native_image_size: tuple[int, int] = as_pair(visual.image_size, "visual.image_size")
        self.native_grid: tuple[int, int] = as_pair(visual.grid_size, "visual.grid_size")
        self.image_size: tuple[int, int] | None = (
            None if image_size is None else as_pair(image_size, "teacher.image_size", positive=True)
        )

        pp = getattr(visual, "preprocess_cfg", None) or {}
        self.clip_mean = tuple(float(v) for v in (clip_mean if clip_mean is not None else pp.get("mean", CLIP_MEAN)))
        self.clip_std = tuple(float(v) for v in (clip_std if clip_std is not None else pp.get("std", CLIP_STD)))
        self.input_mean = tuple(float(v) for v in input_mean)
        self.input_std = tuple(float(v) for v in input_std)
        for name, v in (
            ("clip_mean", self.clip_mean),
            ("clip_std", self.clip_std),
            ("input_mean", self.input_mean),
            ("input_std", self.input_std),
        ):
            if len(v) != 3:
                raise ValueError(f"FrozenCLIP: {name} must have 3 values (RGB), got {v}")
        # x_clip = (x * in_std + in_mean - c_mean) / c_std = x * scale + shift (zss/data/normalize.py)
        in_scale, in_shift = renormalize_affine(self.input_mean, self.input_std, self.clip_mean, self.clip_std)
        self.register_buffer("_in_scale", in_scale, persistent=False)
        self.register_buffer("_in_shift", in_shift, persistent=False)

        self._pos_cache: dict[tuple, Tensor] = {}
        self._text_cache: dict[tuple[tuple[str, ...], tuple[str, ...]], Tensor] = {}
        self._tokenizer = None

        self.identity: dict[str, Any] = {
            **info,
            "embed_dim": self.embed_dim,
            "width": self.width,
            "patch_size": self.patch_size,
            "num_layers": self.num_layers,
            "native_image_size": list(self.native_image_size),
            "image_size": None if self.image_size is None else list(self.image_size),
            "clip_mean": list(self.clip_mean),
            "clip_std": list(self.clip_std),
            "input_mean": list(self.input_mean),
            "input_std": list(self.input_std),
            "dense_mode": dense_mode,
            "open_clip_version": open_clip.__version__,
        }
        if model_cfg is not None:
            self.identity["model_cfg"] = model_cfg
        if warning:
            self.identity["warning"] = str(warning)
            log.warning("%s", warning)
        self.eval()

    # ------------------------------------------------------------------ construction
    @staticmethod
    def _build(
        model_name: str, pretrained: str | None, model_cfg: dict | None, cache_dir: str | None, hash_weights: bool
    ) -> tuple[nn.Module, dict]:
        """Build the open_clip model; return (model, partial identity dict)."""
        is_random = pretrained is None or str(pretrained).strip().lower() in _RANDOM
        info: dict[str, Any] = {
            "model_name": model_name,
            "pretrained": None if is_random else str(pretrained),
            "source": None,
            "file": None,
            "sha256": None,
        }

        if model_cfg is not None:
            cfg = dict(model_cfg)
            custom_text = bool(cfg.pop("custom_text", False))
            cls = open_clip.CustomTextCLIP if custom_text else open_clip.CLIP
            if not is_random:
                path = os.path.expanduser(str(pretrained))
                if not os.path.isfile(path):
                    if str(pretrained).startswith(_SCHEMAS) or not _looks_like_path(str(pretrained)):
                        raise ValueError(
                            f"FrozenCLIP: with model_cfg, teacher.pretrained must be a local weights file or "
                            f"random, got {pretrained!r}"
                        )
                    raise TeacherWeightsNotFoundError(_offline_message(model_name, f"file {path!r}", "no such file"))
            try:
                model = cls(**cfg)
            except TypeError as e:
                raise ValueError(f"FrozenCLIP: invalid model_cfg {model_cfg}: {e}") from e
            open_clip.set_model_preprocess_cfg(
                model,
                {
                    "size": model.visual.image_size,
                    "mode": "RGB",
                    "mean": CLIP_MEAN,
                    "std": CLIP_STD,
                    "interpolation": "bicubic",
                    "resize_mode": "shortest",
                    "fill_color": 0,
                },
            )
            info["source"] = "model_cfg"
            if not is_random:
                try:
                    open_clip.load_checkpoint(model, path)
                except Exception as e:  # noqa: BLE001 - re-raised with the fix
                    raise TeacherWeightsError(
                        f"FrozenCLIP: the weights file {path!r} could not be loaded into the model_cfg "
                        f"model ({type(e).__name__}: {e}). Check that teacher.model_cfg matches the file, or "
                        f"set teacher.pretrained=random."
                    ) from e
                info["file"] = os.path.abspath(path)
                info["sha256"] = _sha256(path) if hash_weights else None
            return model, info

        # --- open_clip's own loading
        name = model_name
        if name.startswith(_SCHEMAS):
            schema_name = name
        elif not is_random and str(pretrained).startswith("hf-hub:"):
            schema_name = str(pretrained)
        else:
            schema_name = None

        if schema_name is None:
            cleaned = name.replace("/", "-")
            known = open_clip.list_models()
            if cleaned not in known:
                close = difflib.get_close_matches(cleaned, known, n=5, cutoff=0.5)
                if not close:
                    close = [m for m in known if m.lower().startswith(cleaned.split("-")[0].lower())][:5]
                raise ValueError(
                    f"FrozenCLIP: unknown open_clip model teacher.model_name={model_name!r}. Close names: "
                    f"{close or known[:5]}. Set teacher.model_name=<one of open_clip.list_models()>, "
                    f"e.g. teacher.model_name=ViT-B-16-quickgelu."
                )
            name = cleaned

        if is_random:
            info["source"] = "random"
            log.warning(
                "FrozenCLIP: %s with RANDOM weights (teacher.pretrained=random): teacher outputs and all "
                "numbers derived from them are meaningless (smoke runs only).",
                name,
            )
            model = open_clip.create_model(
                schema_name or name,
                pretrained=None,
                load_weights=False,
                cache_dir=cache_dir,
                pretrained_text=False,
            )
            return model, info

        if schema_name is not None:  # hf-hub:/local-dir: - config and weights from there
            info["source"] = schema_name.split(":", 1)[0]
            info["model_name"] = schema_name
            try:
                model = open_clip.create_model(schema_name, cache_dir=cache_dir, require_pretrained=True)
            except Exception as e:  # noqa: BLE001 - any download failure -> one actionable error
                raise TeacherWeightsError(_offline_message(name, f"{schema_name!r}", f"{type(e).__name__}: {e}")) from e
            if hash_weights and schema_name.startswith("hf-hub:"):
                try:
                    f = open_clip.pretrained.download_pretrained_from_hf(schema_name[7:], cache_dir=cache_dir)
                    info["file"], info["sha256"] = f, _sha256(f)
                except Exception:  # noqa: BLE001 - identity only
                    pass
            return model, info

        tag = str(pretrained)
        tag_cfg = open_clip.get_pretrained_cfg(name, tag)
        if tag_cfg:
            info["source"] = "tag"
            try:
                path = open_clip.pretrained.download_pretrained(tag_cfg, cache_dir=cache_dir)
                if not path:
                    raise FileNotFoundError("open_clip returned no file for this tag")
            except Exception as e:  # noqa: BLE001 - any download failure -> one actionable error
                raise TeacherWeightsError(_offline_message(name, f"tag {tag!r}", f"{type(e).__name__}: {e}")) from e
            try:
                model = open_clip.create_model(name, pretrained=tag, cache_dir=cache_dir, require_pretrained=True)
            except Exception as e:  # noqa: BLE001
                raise TeacherWeightsError(_offline_message(name, f"tag {tag!r}", f"{type(e).__name__}: {e}")) from e
            info["file"] = str(path)
            info["sha256"] = _sha256(path) if hash_weights else None
            return model, info

        path = os.path.expanduser(tag)
        if os.path.isfile(path):
            info["source"] = "file"
            try:
                model = open_clip.create_model(name, pretrained=path, cache_dir=cache_dir, require_pretrained=True)
            except Exception as e:  # noqa: BLE001
                raise TeacherWeightsError(
                    f"FrozenCLIP: the weights file {path!r} could not be loaded into teacher.model_name={name} "
                    f"({type(e).__name__}: {e}). Check that the file matches the model, or set "
                    f"teacher.pretrained=random for a smoke run."
                ) from e
            info["file"] = os.path.abspath(path)
            info["sha256"] = _sha256(path) if hash_weights else None
            return model, info
        if _looks_like_path(tag):
            raise TeacherWeightsNotFoundError(_offline_message(name, f"file {path!r}", "no such file"))
        tags = open_clip.list_pretrained_tags_by_model(name)
        raise ValueError(
            f"FrozenCLIP: teacher.pretrained={tag!r} is neither an open_clip tag for {name} (known tags: {tags}) "
            f"nor an existing file. Set teacher.pretrained=<tag> or teacher.pretrained=<path to a local "
            f".pt/.bin/.safetensors file> (teacher.pretrained=random for offline smoke runs)."
        )

    # ------------------------------------------------------------------ module plumbing
    @property
    def visual(self) -> VisionTransformer:
        """The open_clip ``VisionTransformer`` of the teacher (frozen)."""
        return self.model.visual

    @property
    def device(self) -> torch.device:
        return self.visual.conv1.weight.device

    def train(self, mode: bool = True) -> "FrozenCLIP":
        """No-op: the teacher always stays in eval mode (docs/architecture.md "Teacher"). Returns self."""
        return super().train(False)

    def extra_repr(self) -> str:
        return (
            f"model_name={self._model_name!r}, pretrained={self.identity['pretrained']!r}, "
            f"dense_mode={self.dense_mode!r}, embed_dim={self.embed_dim}"
        )

    # ------------------------------------------------------------------ building blocks
    def prepare(self, images: Tensor) -> Tensor:
        """Convert input images to CLIP's normalisation and size.

        Args:
            images: Tensor[B, 3, H, W] float, normalised with ``input_mean``/``input_std`` ([0, 1] units).
        Returns:
            Tensor[B, 3, H', W'] in CLIP normalisation and the weights' dtype; (H', W') = ``image_size`` if
            set (bilinear resize, align_corners=False), else (H, W).
        Raises:
            ValueError: not a [B, 3, H, W] tensor, or smaller than one patch.
        """
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"FrozenCLIP: images must be Tensor[B, 3, H, W], got shape {tuple(images.shape)}")
        x = images.float() * self._in_scale + self._in_shift
        if self.image_size is not None and tuple(x.shape[-2:]) != self.image_size:
            x = F.interpolate(x, size=self.image_size, mode="bilinear", align_corners=False)
        if min(x.shape[-2:]) < self.patch_size:
            raise ValueError(
                f"FrozenCLIP: input size {tuple(x.shape[-2:])} is smaller than one patch ({self.patch_size} px)"
            )
        return x.to(self.visual.conv1.weight.dtype)

    def positional_embedding(self, grid: tuple[int, int]) -> Tensor:
        """Positional embedding for a patch grid, class token first.

        Args:
            grid: (gh, gw) patch grid, patches.
        Returns:
            Tensor[1 + gh*gw, W]: the native embedding when ``grid`` is the native grid, else its patch part
            resized bicubically on the 2-D grid (align_corners=False, antialias=True, as open_clip's own
            ``resize_pos_embed``; :func:`resample_pos_embed`) with the class-token row untouched. Cached per
            (grid, device, dtype);
            computed without autograd (the parameter is frozen).
        """
        pos = self.visual.positional_embedding
        grid = (int(grid[0]), int(grid[1]))
        if grid == self.native_grid:
            return pos
        key = (grid, pos.device, pos.dtype)
        cached = self._pos_cache.get(key)
        if cached is not None:
            return cached
        with torch.no_grad():
            out = resample_pos_embed(pos, grid, self.native_grid, mode="bicubic")
        self._pos_cache[key] = out
        return out

    def embed(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """Patch embedding + class token + (interpolated) positional embedding + ``ln_pre`` (:func:`clip_ops.embed`).

        Args:
            x: Tensor[B, 3, H, W] already in CLIP normalisation (see :meth:`prepare`).
        Returns:
            (tokens Tensor[B, 1 + h*w, W], (h, w)) with h = H // patch, w = W // patch (patches).
        """
        grid = (x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size)
        return clip_ops.embed(self.visual, x, self.positional_embedding(grid))

    @property
    def _batch_first(self) -> bool:
        return bool(getattr(self.visual.transformer, "batch_first", True))

    def run_blocks(self, x_tokens: Tensor, start_block: int = 0, maskclip_last: bool = False) -> Tensor:
        """Run the vision blocks ``start_block .. num_layers-1`` on given tokens (:func:`clip_ops.run_blocks`).

        Autograd is NOT disabled here (the parameters are frozen, gradients flow to ``x_tokens``).

        Args:
            x_tokens: Tensor[B, 1+N, W] (class token first) or Tensor[B, N, W] (patch tokens only), batch
                first, CLIP width W. Blocks are applied as they are, whatever the sequence.
            start_block: first block index; negative counts from the end (``-k`` = the last k blocks).
                ``num_layers`` runs no block.
            maskclip_last: replace the last block by its MaskCLIP value path (:func:`clip_ops.maskclip_block`).
        Returns:
            Tensor of the same shape as ``x_tokens``.
        Raises:
            ValueError: ``start_block`` out of range, bad shape, or maskclip_last with no block to run.
        """
        L = self.num_layers
        s = start_block + L if start_block < 0 else start_block
        if not 0 <= s <= L:
            raise ValueError(f"FrozenCLIP.run_blocks: start_block={start_block} out of range for {L} blocks")
        if x_tokens.ndim != 3 or x_tokens.shape[-1] != self.width:
            raise ValueError(f"FrozenCLIP.run_blocks: expected Tensor[B, L, {self.width}], got {tuple(x_tokens.shape)}")
        blocks = self.visual.transformer.resblocks
        if maskclip_last:
            if s >= L:
                raise ValueError("FrozenCLIP.run_blocks: maskclip_last=True needs at least one block to run")
            x = clip_ops.run_blocks(blocks[s : L - 1], x_tokens, batch_first=self._batch_first)
            return clip_ops.maskclip_block(blocks[L - 1], x)
        return clip_ops.run_blocks(blocks[s:L], x_tokens, batch_first=self._batch_first)

    def project(self, tokens: Tensor) -> Tensor:
        """``ln_post`` then ``proj`` into the joint space (:func:`clip_ops.project`; not normalised; autograd on).

        Args:
            tokens: Tensor[B, N, W]. Returns: Tensor[B, N, D].
        """
        return clip_ops.project(tokens, self.visual.ln_post, self.visual.proj)

    # ------------------------------------------------------------------ public API
    @torch.no_grad()
    def forward(self, images: Tensor, full_label: Tensor | None = None) -> dict[str, Any]:
        """One pass through the frozen vision tower, yielding the CLS and dense embeddings together.

        Args:
            images: Tensor[B, 3, H, W] float, normalised with ``input_mean``/``input_std`` ([0, 1] units).
            full_label: ignored (interface parity with :class:`zss.teachers.oracle.OracleTeacher`).
        Returns:
            dict with
              ``cls``: Tensor[B, D] float32, L2-normalised final image embedding (= normalised
              ``encode_image`` at the native size);
              ``dense``: Tensor[B, D, h, w] float32, L2-normalised over D, in ``dense_mode``;
              ``h``, ``w``: ints, the patch grid (H'//patch, W'//patch of the possibly resized input).
            Source: docs/architecture.md "Teacher" (MaskCLIP value path for ``maskclip``).
        """
        v = self.visual
        tok, (h, w) = self.embed(self.prepare(images))  # [B, 1+N, W]
        L = self.num_layers
        last = v.transformer.resblocks[L - 1]
        tok = clip_ops.run_blocks(v.transformer.resblocks[: L - 1], tok, batch_first=self._batch_first)
        if self.dense_mode == "tokens":
            tok = clip_ops.run_block(last, tok, batch_first=self._batch_first)
            pooled = clip_ops.pool(v, tok)  # [B, W]
            dense = self.project(tok[:, 1:])  # [B, N, D]
        else:
            if v.pool_type == "tok" and hasattr(last, "attention") and not hasattr(last, "ln_1_kv"):
                pooled = clip_ops.pool(v, clip_ops.cls_query_block(last, tok, batch_first=self._batch_first))
            else:
                pooled = clip_ops.pool(v, clip_ops.run_block(last, tok, batch_first=self._batch_first))
            dense = self.project(clip_ops.maskclip_block(last, tok[:, 1:]))  # [B, N, D]
        cls = pooled @ v.proj if v.proj is not None else pooled  # [B, D]
        cls = F.normalize(cls.float(), dim=-1)
        dense = F.normalize(dense.float(), dim=-1)
        dense = dense.transpose(1, 2).reshape(dense.shape[0], -1, h, w).contiguous()  # [B, D, h, w]
        return {"cls": cls, "dense": dense, "h": h, "w": w}

    def _get_tokenizer(self):
        if self._tokenizer is None:
            if self._model_cfg is not None:
                tcfg = self._model_cfg.get("text_cfg", {}) or {}
                ctx = int(tcfg.get("context_length", 77))
                if tcfg.get("hf_tokenizer_name"):
                    self._tokenizer = open_clip.tokenizer.HFTokenizer(tcfg["hf_tokenizer_name"], context_length=ctx)
                else:
                    self._tokenizer = open_clip.SimpleTokenizer(context_length=ctx)
            else:
                self._tokenizer = open_clip.get_tokenizer(self._model_name)
        return self._tokenizer

    @torch.no_grad()
    def text(self, classnames: Sequence[str], templates: Sequence[str]) -> Tensor:
        """Text embeddings of classes with a prompt-template ensemble (docs/protocol.md "Prompts").

        Each template is filled with each class name, embedded with the CLIP text tower, L2-normalised,
        averaged over templates and renormalised, with autocast disabled (full precision). Cached per
        (classnames, templates); the cached tensor is moved (and re-stored) when the module changed device.

        Args:
            classnames: C class names. templates: T templates, each containing ``"{}"``.
        Returns:
            Tensor[C, D] float32, L2-normalised rows, on the module's device.
        Raises:
            ValueError: empty classnames/templates or a template without ``"{}"``.
        """
        key = (tuple(str(c) for c in classnames), tuple(str(t) for t in templates))
        if not key[0] or not key[1]:
            raise ValueError("FrozenCLIP.text: classnames and templates must be non-empty")
        for t in key[1]:
            if "{}" not in t:
                raise ValueError(f"FrozenCLIP.text: template {t!r} has no '{{}}' placeholder for the class name")
        dev = self.device
        cached = self._text_cache.get(key)
        if cached is not None:
            if cached.device != dev:
                cached = cached.to(dev)
                self._text_cache[key] = cached
            return cached
        with torch.autocast(device_type=dev.type, enabled=False):  # cached once: compute in full precision
            w = open_clip.build_zero_shot_classifier(  # [D, C]: per class, mean of unit embeds, renormalised
                self.model,
                self._get_tokenizer(),
                list(key[0]),
                list(key[1]),
                num_classes_per_batch=max(1, _TEXT_CHUNK // len(key[1])),
                device=dev,
            )
        e = w.t().float().contiguous()  # [C, D]
        self._text_cache[key] = e
        return e


def build_tiny_clip(
    embed_dim: int = 32,
    image_size: int = 32,
    patch_size: int = 8,
    width: int = 64,
    layers: int = 2,
    heads: int = 2,
    seed: int = 0,
    dense_mode: str = "maskclip",
    input_size: int | Sequence[int] | None = None,
    **kw: Any,
) -> FrozenCLIP:
    """A tiny random-weight :class:`FrozenCLIP` for tests and the offline demo.

    Text tower: width 64, 2 layers, 2 heads, context length 77, CLIP BPE vocabulary. Deterministic for a
    seed (built inside ``torch.random.fork_rng`` so the global RNG is left untouched).

    Args:
        embed_dim, image_size (native size, pixels), patch_size (pixels), width, layers, heads: see
            :func:`tiny_clip_cfg`.
        seed: RNG seed of the random weights.
        dense_mode: ``"maskclip"`` or ``"tokens"``.
        input_size: resize target forwarded as FrozenCLIP's ``image_size`` (None: keep input size).
        **kw: other :class:`FrozenCLIP` arguments (``input_mean``, ``input_std``, ...).
    Returns:
        FrozenCLIP with ``identity["source"] == "model_cfg"`` and ``pretrained`` None.
    """
    cfg = tiny_clip_cfg(embed_dim, image_size, patch_size, width, layers, heads)
    kw.setdefault("model_name", "tiny-random-clip")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return FrozenCLIP(pretrained=None, dense_mode=dense_mode, image_size=input_size, model_cfg=cfg, **kw)
