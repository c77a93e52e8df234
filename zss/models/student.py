"""The student: timm backbone (``features_only``) + dense decoder + 1x1 projection into CLIP space (docs/architecture.md
"Student").

Only the student runs at test time (CLIP-ZSS [paper]); its L2-normalised dense embeds are compared with the
teacher's text embeds of all classes: ``logits = logit_scale * <embeds, text>``.
"""

from __future__ import annotations

import difflib
import os
import warnings
from pathlib import Path
from typing import Any, Sequence

import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zss.data.normalize import CLIP_MEAN, CLIP_STD, Renormalize, check_stats
from zss.models.decoders import build_decoder

__all__ = ["Student"]


def _unknown_backbone_error(name: str) -> ValueError:
    close = difflib.get_close_matches(name, timm.list_models(), n=8, cutoff=0.6)
    hint = f"close matches: {close}" if close else f"no close matches; try timm.list_models('*{name[:6]}*')"
    return ValueError(
        f"Unknown timm model {name!r} for the student backbone ({hint}). "
        f"Fix the config key model.backbone=<timm model name>."
    )


def _check_loaded(backbone: nn.Module, path: str, name: str) -> None:
    """Check that a local weights file really initialised the backbone.

    timm loads ``features_only`` models with ``strict=False`` (it drops the classifier), so a file for another
    model, or with unexpected key prefixes, would silently leave random weights. We compare fingerprints
    (shape, sum) of the backbone parameters with the tensors in the file: none found -> RuntimeError; some
    not found (e.g. resampled position embeddings, partial checkpoints) -> a warning naming how many.
    """
    state = timm.models.load_state_dict(path)
    prints = {
        (tuple(t.shape), round(float(t.double().sum()), 6))
        for t in state.values()
        if torch.is_tensor(t) and t.is_floating_point()
    }
    params = dict(backbone.named_parameters())
    missing = [
        n for n, p in params.items() if (tuple(p.shape), round(float(p.detach().double().sum()), 6)) not in prints
    ]
    if params and len(missing) == len(params):
        raise RuntimeError(
            f"Weights file {path!r} (model.pretrained) initialised none of the {len(params)} parameters of the "
            f"student backbone {name!r}: it is not a state_dict of timm.create_model({name!r}) "
            f"(keys in file start with {sorted(state)[:3]}). Fix: set model.pretrained=<local file> to a matching "
            "state_dict, or model.pretrained=false."
        )
    if missing:
        warnings.warn(
            f"Weights file {path!r} did not initialise {len(missing)}/{len(params)} backbone parameters "
            f"of {name!r} (e.g. {missing[:3]}); they keep their random init or were adapted by timm.",
            stacklevel=3,
        )


class Student(nn.Module):
    """Dense student: timm backbone + decoder (ASPP or MLP) + 1x1 projection to the teacher's embedding dim.

    ``forward(images) = project(decode(features(images)))``.

    Args:
        backbone: timm model name (``timm.list_models()``), optionally with a pretrained tag
            (``"resnet50.a1_in1k"``) or a timm ``hf-hub:``/``local-dir:`` name. Config key ``model.backbone``.
        embed_dim: D, the teacher's joint embedding width (512 for CLIP ViT-B/16).
        decoder: ``"aspp"`` (DeepLabV3+-style, :class:`~zss.models.decoders.ASPPDecoder`) or ``"mlp"``
            (SegFormer-style, :class:`~zss.models.decoders.MLPDecoder`).
        decoder_channels: decoder width (our default 256, as DeepLabV3+).
        pretrained: ``False`` random init; ``True`` timm's own weights for ``backbone`` (needs the hub or a
            filled timm cache); or a path to a local weights file (``.pth``/``.bin``/``.safetensors`` holding the
            state_dict of the plain, non-``features_only`` timm model), loaded through timm with
            ``pretrained_cfg_overlay=dict(file=path)``. Config key ``model.pretrained``.
        out_indices: backbone levels to return (timm ``out_indices``); ``None`` keeps timm's default.
        logit_scale: fixed multiplier of the cosine logits, a non-trainable, non-persistent buffer. Not in
            the papers: our default 1/0.07 (CLIP's initial temperature).
        drop_path_rate: stochastic depth of the backbone (passed to timm only when > 0).
        decoder_kwargs: extra decoder arguments (e.g. ``dilations``, ``low_channels``, ``dropout``,
            ``min_stride``; see decoders.py).
        backbone_output_stride: stride in pixels of the backbone's deepest feature map, passed to timm as
            ``output_stride`` (timm replaces the striding of the last stages by dilation; ResNets accept 8, 16,
            32). DeepLabV3+ (Chen et al. 2018) trains at 16 with ASPP rates (6, 12, 18) and offers 8 with rates
            (12, 24, 36); ``None`` (default) keeps the model's native stride (32 for ResNets). Config key
            ``model.backbone_output_stride``.
        backbone_kwargs: extra ``timm.create_model`` arguments. ``dynamic_img_size=True`` is added automatically
            when the model accepts it (ViTs), so inputs of any size divisible by the patch size work.
        input_mean, input_std: normalisation (RGB, [0, 1] units) of the images this Student receives, i.e.
            ``dataset.mean/std`` (the CLI passes them). Default: CLIP's (the default ``dataset.mean/std``).
        backbone_mean, backbone_std: normalisation the backbone expects (RGB, [0, 1] units). ``None`` (both):
            a pretrained backbone (``pretrained`` true or a file) gets its timm ``pretrained_cfg`` mean/std
            (ImageNet's for the shipped presets) whatever ``input_mean/std`` are; a random-init backbone
            keeps the input normalisation (no conversion: it learns from whatever it is given). Set them to
            override (e.g. a weights file trained with other statistics). Config keys
            ``model.backbone_mean/std``; the CLI records the resolved values there so checkpoints reload exactly.

    Normalisation: :meth:`features` first maps the input normalisation to the backbone's with the affine
    ``x * scale + shift`` of :mod:`zss.data.normalize` (the same conversion FrozenCLIP applies for CLIP), so
    each network sees the statistics it was trained with.

    Attributes:
        feature_channels / feature_strides: ``list[int]`` from timm ``feature_info`` (strides in pixels).
        backbone_output_stride (int): ``max(feature_strides)``, the stride of the deepest backbone map.
        input_mean, input_std, backbone_mean, backbone_std: ``tuple[float, float, float]`` (resolved).
        normalization (dict): the four values and ``source`` (``"timm pretrained_cfg"``,
            ``"input (random init)"`` or ``"model.backbone_mean/std"``), for the run's config/log.
        renormalize: the :class:`~zss.data.normalize.Renormalize` applied in :meth:`features`.
        output_stride: stride in pixels of ``decode``/``forward`` outputs (4 for ResNets and, via the decoder's
            learned pyramid, for stride-16 ViTs; see decoders.py).
        embed_dim, decoder_channels, backbone_name.

    Input sizes: any H, W divisible by ``max(feature_strides)`` give outputs of exactly
    ``[H/output_stride, W/output_stride]``; other sizes work but the sizes follow the backbone's rounding.

    Raises:
        ValueError: unknown timm ``backbone`` (lists close matches and names ``model.backbone``), unknown
            ``decoder``; a ``backbone_output_stride`` the timm model does not support, or one given twice (also
            in ``backbone_kwargs``); a bad mean/std, or only one of ``backbone_mean``/``backbone_std`` given; a
            pretrained backbone whose timm ``pretrained_cfg`` has no mean/std (set ``model.backbone_mean/std``).
        FileNotFoundError: ``pretrained`` is a path that does not exist (names ``model.pretrained``).
        RuntimeError: pretrained weights could not be fetched or loaded (names ``model.pretrained=<local file>``
            as the fix).
    """

    def __init__(
        self,
        backbone: str,
        embed_dim: int,
        decoder: str = "aspp",
        decoder_channels: int = 256,
        pretrained: bool | str | os.PathLike = False,
        out_indices: Sequence[int] | None = None,
        logit_scale: float = 1 / 0.07,
        drop_path_rate: float = 0.0,
        decoder_kwargs: dict[str, Any] | None = None,
        backbone_kwargs: dict[str, Any] | None = None,
        backbone_output_stride: int | None = None,
        input_mean: Sequence[float] = CLIP_MEAN,
        input_std: Sequence[float] = CLIP_STD,
        backbone_mean: Sequence[float] | None = None,
        backbone_std: Sequence[float] | None = None,
    ):
        super().__init__()
        self.input_mean = check_stats(input_mean, "model input_mean (dataset.mean)")
        self.input_std = check_stats(input_std, "model input_std (dataset.std)", positive=True)
        if (backbone_mean is None) != (backbone_std is None):
            raise ValueError(
                f"Student: set both model.backbone_mean and model.backbone_std or neither (null), got "
                f"backbone_mean={backbone_mean!r}, backbone_std={backbone_std!r}"
            )
        self.backbone_name = backbone
        self.embed_dim = int(embed_dim)
        self.decoder_channels = int(decoder_channels)
        bkw = dict(backbone_kwargs or {})
        if backbone_output_stride is not None:
            if int(backbone_output_stride) not in (8, 16, 32):
                raise ValueError(
                    f"Student: model.backbone_output_stride={backbone_output_stride}; timm backbones "
                    "take 8, 16 or 32 (null keeps the native stride)"
                )
            if "output_stride" in bkw:
                raise ValueError(
                    "Student: output_stride given twice (model.backbone_output_stride and "
                    "model.backbone_kwargs.output_stride); keep model.backbone_output_stride only"
                )
            bkw["output_stride"] = int(backbone_output_stride)
        self.backbone = self._create_backbone(backbone, pretrained, out_indices, drop_path_rate, bkw)
        if backbone_mean is not None:
            source = "model.backbone_mean/std"
            self.backbone_mean = check_stats(backbone_mean, "model.backbone_mean")
            self.backbone_std = check_stats(backbone_std, "model.backbone_std", positive=True)
        elif isinstance(pretrained, (str, os.PathLike)) or bool(pretrained):  # the rule of _create_backbone
            source = "timm pretrained_cfg"
            cfg = dict(getattr(self.backbone, "pretrained_cfg", None) or {})
            if cfg.get("mean") is None or cfg.get("std") is None:
                raise ValueError(
                    f"Student: the timm pretrained_cfg of {backbone!r} has no mean/std; set "
                    "model.backbone_mean=[r,g,b] model.backbone_std=[r,g,b] (the statistics its "
                    "weights were trained with)"
                )
            self.backbone_mean = check_stats(cfg["mean"], f"pretrained_cfg mean of {backbone!r}")
            self.backbone_std = check_stats(cfg["std"], f"pretrained_cfg std of {backbone!r}", positive=True)
        else:  # random init: learns from the input normalisation as it is (ours, documented above)
            source = "input (random init)"
            self.backbone_mean, self.backbone_std = self.input_mean, self.input_std
        self.renormalize = Renormalize(self.input_mean, self.input_std, self.backbone_mean, self.backbone_std)
        self.normalization = {
            "input_mean": list(self.input_mean),
            "input_std": list(self.input_std),
            "backbone_mean": list(self.backbone_mean),
            "backbone_std": list(self.backbone_std),
            "source": source,
        }
        info = self.backbone.feature_info
        self.feature_channels: list[int] = [int(c) for c in info.channels()]
        self.feature_strides: list[int] = [int(s) for s in info.reduction()]
        self.backbone_output_stride = max(self.feature_strides)
        if backbone_output_stride is not None and self.backbone_output_stride != int(backbone_output_stride):
            raise ValueError(
                f"Student: model.backbone_output_stride={backbone_output_stride} but timm built "
                f"{backbone!r} with feature strides {self.feature_strides}; this model does not "
                "support that output stride (ResNets: 8, 16, 32), or set model.backbone_output_stride=null"
            )
        self.decoder = build_decoder(
            decoder, self.feature_channels, self.feature_strides, channels=decoder_channels, **(decoder_kwargs or {})
        )
        self.output_stride = self.decoder.output_stride
        self.proj = nn.Conv2d(decoder_channels, self.embed_dim, 1)
        self.register_buffer("logit_scale", torch.tensor(float(logit_scale)), persistent=False)

    # ------------------------------------------------------------------ construction
    @staticmethod
    def _create_backbone(
        name: str,
        pretrained: bool | str | os.PathLike,
        out_indices: Sequence[int] | None,
        drop_path_rate: float,
        kwargs: dict[str, Any],
    ) -> nn.Module:
        """``timm.create_model(name, features_only=True, ...)`` with clear errors (see class docstring)."""
        if ":" not in name and not timm.is_model(name):  # "hf-hub:"/"local-dir:" names are resolved by timm
            raise _unknown_backbone_error(name)
        kwargs = dict(features_only=True, **kwargs)
        if out_indices is not None:
            kwargs["out_indices"] = tuple(int(i) for i in out_indices)
        if drop_path_rate > 0:
            kwargs["drop_path_rate"] = float(drop_path_rate)
        source = "random init"
        if isinstance(pretrained, (str, os.PathLike)) and not isinstance(pretrained, bool):
            path = Path(pretrained).expanduser()
            if not path.is_file():
                raise FileNotFoundError(
                    f"Student backbone weights file not found: {str(path)!r} (config key model.pretrained). "
                    "Give an existing state_dict file of the plain timm model, or model.pretrained=false."
                )
            kwargs["pretrained"] = True
            kwargs["pretrained_cfg_overlay"] = dict(file=str(path))
            source = f"local file {str(path)!r}"
        elif pretrained:
            kwargs["pretrained"] = True
            source = "timm's pretrained weights (hub)"
        else:
            kwargs["pretrained"] = False

        def create(extra: dict[str, Any]) -> nn.Module:
            try:
                return timm.create_model(name, **kwargs, **extra)
            except TypeError as e:
                if "output_stride" in kwargs and "output_stride" in str(e):
                    raise ValueError(
                        f"timm model {name!r} does not take output_stride (model.backbone_output_stride="
                        f"{kwargs['output_stride']}): {e}. Set model.backbone_output_stride=null"
                    ) from e
                raise
            except Exception as e:  # download / file / state_dict errors from timm, hub, torch.load
                if not kwargs["pretrained"]:
                    raise
                raise RuntimeError(
                    f"Could not load pretrained weights for student backbone {name!r} from {source}: "
                    f"{type(e).__name__}: {e}. Fix: set model.pretrained=<local file> (a state_dict of "
                    f"timm.create_model({name!r})), or model.pretrained=false for random init."
                ) from e

        model = None
        if "dynamic_img_size" not in kwargs:
            try:  # ViT-like models: accept input sizes other than the native one
                model = create(dict(dynamic_img_size=True))
            except TypeError as e:
                if "dynamic_img_size" not in str(e):
                    raise
        if model is None:
            model = create({})
        if "pretrained_cfg_overlay" in kwargs:
            _check_loaded(model, kwargs["pretrained_cfg_overlay"]["file"], name)
        return model

    # ------------------------------------------------------------------ forward pieces
    def features(self, images: Tensor) -> list[Tensor]:
        """Backbone feature maps (after re-normalising to the backbone's statistics, see the class docstring).

        Args:
            images: ``Tensor[B, 3, H, W] float32`` images normalised with ``input_mean``/``input_std``.
        Returns:
            ``list[Tensor[B, feature_channels[i], H/feature_strides[i], W/feature_strides[i]]]``, shallow to deep.
        """
        return list(self.backbone(self.renormalize(images)))

    def decode(self, features: Sequence[Tensor]) -> Tensor:
        """Decoder output before the projection: ``Tensor[B, decoder_channels, H/output_stride, W/output_stride]``."""
        return self.decoder(features)

    def project(self, x: Tensor) -> Tensor:
        """1x1 projection to D, L2-normalised over D: ``Tensor[B, C, h, w] -> Tensor[B, embed_dim, h, w]`` embeds."""
        return F.normalize(self.proj(x), dim=1)

    def forward(self, images: Tensor) -> Tensor:
        """Dense embeds of ``images: Tensor[B, 3, H, W] float32``.

        Returns:
            ``Tensor[B, embed_dim, H/output_stride, W/output_stride]`` L2-normalised over dim 1.
        """
        return self.project(self.decode(self.features(images)))

    def logits(self, embeds: Tensor, text: Tensor) -> Tensor:
        """Cosine logits ``logit_scale * <normalize(embeds), normalize(text)>`` (docs/architecture.md "Student").

        Both inputs are (re-)L2-normalised over D, so this is exactly a scaled cosine similarity.

        Args:
            embeds: ``Tensor[B, D, h, w]`` dense embeds.
            text: ``Tensor[C, D]`` class (text) embeddings.
        Returns:
            ``Tensor[B, C, h, w]`` logits (dtype of the einsum, float32 outside autocast).
        Raises:
            ValueError: D of ``embeds`` and ``text`` differ.
        """
        if embeds.shape[1] != text.shape[-1]:
            raise ValueError(
                f"Student.logits: embeds have D={embeds.shape[1]} but text has D={text.shape[-1]}; "
                "the student's embed_dim must equal the teacher's embedding width"
            )
        embeds = F.normalize(embeds, dim=1)
        text = F.normalize(text, dim=-1).to(embeds.dtype)
        return self.logit_scale * torch.einsum("bdhw,cd->bchw", embeds, text)

    # ------------------------------------------------------------------ optimisation
    def _no_decay_names(self) -> set[str]:
        """Backbone params timm marks as no-weight-decay (``no_weight_decay()``, e.g. ViT pos_embed/cls_token)."""
        names: set[str] = set()
        for prefix, mod in self.named_modules():
            fn = getattr(mod, "no_weight_decay", None)
            if callable(fn):
                for n in fn():
                    names.add(f"{prefix}.{n}" if prefix else n)
        return names

    def param_groups(self, lr: float, head_lr_mult: float = 10.0, weight_decay: float = 0.01) -> list[dict]:
        """Optimizer parameter groups: backbone at ``lr``, decoder + projection at ``lr * head_lr_mult``.

        Weight decay ``weight_decay`` on >=2-D weights; 0 on 1-D params (norm weights, biases) and on params
        timm's ``no_weight_decay()`` lists (ViT pos_embed/cls_token). Source: lr x10 on the head and wd 0.01
        are the ZegCLIP-lineage recipe (docs/protocol.md "Reference recipe"); the no-decay rule is not in the papers:
        our default (timm's ``param_groups_weight_decay`` convention). Only ``requires_grad`` params are included, each
        exactly once; empty groups are omitted.

        Returns:
            list of dicts with keys ``params`` (list[Parameter]), ``lr`` (float), ``weight_decay`` (float),
            ``name`` (str: ``backbone``/``backbone_no_decay``/``head``/``head_no_decay``).
        """
        skip = self._no_decay_names()
        groups: dict[str, dict] = {}
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            part = "backbone" if name.startswith("backbone.") else "head"
            no_decay = p.ndim <= 1 or name in skip
            key = part + ("_no_decay" if no_decay else "")
            if key not in groups:
                groups[key] = dict(
                    params=[],
                    lr=lr * (1.0 if part == "backbone" else head_lr_mult),
                    weight_decay=0.0 if no_decay else weight_decay,
                    name=key,
                )
            groups[key]["params"].append(p)
        order = ["backbone", "backbone_no_decay", "head", "head_no_decay"]
        return [groups[k] for k in order if k in groups]

    def extra_repr(self) -> str:
        return (
            f"backbone={self.backbone_name!r}, embed_dim={self.embed_dim}, strides={self.feature_strides}, "
            f"output_stride={self.output_stride}, logit_scale={float(self.logit_scale):.4g}, "
            f"normalization={self.normalization['source']!r}"
        )
