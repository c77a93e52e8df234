"""Rebuild a trained method from a checkpoint for inference, without Hydra or OmegaConf.

    import zss
    method = zss.from_checkpoint("runs/<name>/<stamp>/last.pt")            # the checkpoint's own classes
    method = zss.from_checkpoint(path, classnames=["cat", "dog", "grass"], teacher_pretrained="ViT-B-16.pt")
    pred = method.predict(images)                                          # Tensor[B, C, H, W] logits
    seg = predict_image(method, "photo.jpg")    # from zss.predict import predict_image: Tensor[H, W] class ids

Every class is taken from the allow-list of :mod:`zss.registry`, never from an arbitrary dotted path stored
in the checkpoint. ``scripts/eval.py`` and ``scripts/predict.py`` use the same code
(``zss.cli.common.load_for_inference`` delegates here). Source: ours.
"""

from __future__ import annotations

import copy
import inspect
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from zss import registry
from zss.data.classes import get_benchmark
from zss.engine.checkpoint import load_checkpoint

__all__ = ["load_for_inference", "from_checkpoint"]

#: method-config keys that are not constructor arguments (``recipe``: only in checkpoints older than the per-row
#: experiment files, which still load)
METHOD_BOOKKEEPING = ("name", "recipe")


def _merge(base: Mapping, over: Mapping) -> dict:
    """Deep merge of plain mappings (``over`` wins); neither input is modified."""
    out = copy.deepcopy(dict(base))
    for k, v in (over or {}).items():
        out[k] = _merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) else copy.deepcopy(v)
    return out


def _templates(ds: Mapping, bench) -> list[str]:
    return list(ds["templates"]) if ds.get("templates") else list(bench.templates)


def _build_teacher(node: Mapping, classnames: Sequence[str], mean, std, source: str):
    """The teacher of a checkpoint's ``teacher`` node: the OracleTeacher gets the class names, image teachers
    the images' normalisation as ``input_mean/input_std`` (as ``zss.cli.common.build_teacher`` in training).

    Raises:
        UntrustedTargetError: see :mod:`zss.registry`. ValueError: ``teacher.input_mean/std`` differ from the
            images' normalisation, or the target takes no ``input_mean/input_std``.
    """
    from zss.teachers.oracle import OracleTeacher

    cls, kwargs = registry.split_node(node, "teacher", source)
    if cls is OracleTeacher:
        return cls(classnames=list(classnames), **kwargs)
    norm = {"input_mean": [float(v) for v in mean], "input_std": [float(v) for v in std]}
    for key, want in norm.items():
        have = kwargs.get(key)
        if have is not None and [float(v) for v in have] != want:
            raise ValueError(
                f"teacher.{key}={list(have)} differs from dataset.{key[6:]}={want}: images are "
                f"normalised with dataset.mean/std and the teacher converts from them itself; remove "
                f"teacher.{key}"
            )
    params = inspect.signature(cls).parameters.values()
    if not any(p.name == "input_mean" or p.kind is p.VAR_KEYWORD for p in params):
        raise ValueError(f"teacher._target_={node['_target_']} takes no input_mean/input_std")
    kwargs.update(norm)
    return cls(**kwargs)


def _build_test_time_clip(node: Mapping, classnames, mean, std, ckpt: dict, source: str):
    """The CLIP teacher WITH its weights, for a method that runs CLIP at test time (``clip_at_test_time``).

    Raises:
        TeacherWeightsError (its subclass for a missing file): the weights cannot be loaded; the message
            names the CLIP the checkpoint was trained with (model, weights, file, sha256) and the fix.
    """
    from zss.teachers.clip import TeacherWeightsError

    try:
        return _build_teacher(node, classnames, mean, std, source)
    except Exception as e:  # noqa: BLE001 - re-raised unless it is the teacher's own weights error
        err = e if isinstance(e, TeacherWeightsError) else e.__cause__
        if not isinstance(err, TeacherWeightsError):
            raise
        ident = ckpt.get("teacher") or {}
        raise type(err)(
            f"{err}\nThis checkpoint ({ckpt['config']['method'].get('_target_')}) runs CLIP at test time, so it "
            f"needs the CLIP weights it was trained with: model {ident.get('model_name')}, weights "
            f"{ident.get('pretrained')} (file {ident.get('file')}, sha256 {ident.get('sha256')}). "
            f"Pass teacher.pretrained=<that file> to scripts/eval.py / scripts/predict.py "
            f"(zss.from_checkpoint: teacher_pretrained=)."
        ) from err


def load_for_inference(
    ckpt_path: str | Path,
    classnames: list[str] | None = None,
    unseen: list[int] | None = None,
    templates: list[str] | None = None,
    teacher_overrides: Mapping | None = None,
    device: torch.device | str = "cpu",
    input_norm: tuple | None = None,
) -> tuple[Any, dict]:
    """Rebuild a trained method from a checkpoint for inference; returns ``(method, ckpt)``.

    The method is built exactly as in training (same allow-listed class and flat config keys, through its
    ``from_flat``) around a teacher of the same architecture, the checkpoint state is loaded strictly, and the
    teacher is then dropped: inference runs the student (plus whatever frozen parts the method registered, e.g.
    Chimera-Seg's CSH). For the training
    vocabulary the teacher's weights are not needed (random init, architecture only; text embeds come from the
    checkpoint). For another vocabulary (``classnames``), the teacher is loaded with its real weights
    (``teacher_overrides`` may point ``pretrained`` at a local file) and only its text encoder is used. Methods
    that run CLIP at test time (``clip_at_test_time``: CLIP-RC, ZegCLIP) always get the teacher WITH its weights
    (checkpoint config or ``teacher_overrides``), build no student (``uses_student = False``) and drop
    training-only parts (``strip_for_inference``); a missing weights file raises TeacherWeightsNotFoundError
    naming it, other weights a ValueError (docs/clip_rc.md).

    Args:
        ckpt_path: a zss ``last.pt`` (or ``best_on_val_split.pt``).
        classnames: another vocabulary (class names, label-id order); None = the checkpoint's.
        unseen: unseen class ids of that vocabulary (None = none).
        templates: prompt templates for that vocabulary (None = the checkpoint dataset's).
        teacher_overrides: plain mapping merged over the checkpoint's ``teacher`` node (e.g. ``pretrained``).
        device: where the method goes.
        input_norm: ``(mean, std)`` (RGB, [0, 1] units) the images will be normalised with (default: the
            checkpoint's ``dataset.mean/std``); the student converts them to its backbone's statistics.

    Returns:
        ``(method, ckpt)``: the method in eval mode on ``device`` (``method.predict(Tensor[B, 3, H, W] float32)``),
        and the checkpoint dict.

    Raises:
        FileNotFoundError / ValueError: from :func:`zss.engine.checkpoint.load_checkpoint`.
        zss.registry.UntrustedTargetError (a ValueError): the checkpoint names a class outside the allow-list.
    """
    source = f"checkpoint {ckpt_path}"
    ckpt = load_checkpoint(ckpt_path, map_location="cpu")
    config = ckpt["config"]
    for group in ("method", "model", "teacher"):  # check everything before building anything
        if group in config:
            registry.split_node(config[group], group, source, drop=METHOD_BOOKKEEPING if group == "method" else ())
    ds = dict(config["dataset"])
    bench = get_benchmark(ds["benchmark"], ds.get("split"))
    new_vocab = classnames is not None and list(classnames) != list(ckpt["classnames"])
    method_cls, method_kwargs = registry.split_node(config["method"], "method", source, drop=METHOD_BOOKKEEPING)
    method_kwargs = {**getattr(method_cls, "CHECKPOINT_DEFAULTS", {}), **method_kwargs}  # keys older configs lack
    teacher_node = _merge(config["teacher"], teacher_overrides or {})
    teacher_cls = registry.resolve(teacher_node.get("_target_"), "teacher", source)
    clip_at_test = bool(getattr(method_cls, "clip_at_test_time", False))
    from zss.teachers.clip import FrozenCLIP

    if not new_vocab and not clip_at_test and teacher_cls is FrozenCLIP:
        teacher_node["pretrained"] = None  # architecture only: every trained/frozen tensor is in the checkpoint
    mean, std = input_norm if input_norm is not None else (ds["mean"], ds["std"])
    if clip_at_test:  # CLIP-RC / ZegCLIP: the real CLIP weights run at test time, fed the images' normalisation
        teacher = _build_test_time_clip(teacher_node, bench.classes, mean, std, ckpt, source)
    else:
        teacher = _build_teacher(teacher_node, bench.classes, ds["mean"], ds["std"], source)
    student = None
    if getattr(method_cls, "uses_student", True):
        model = dict(config["model"])
        embed_dim = int(model.pop("embed_dim"))
        student = registry.build(
            model,
            "model",
            source,
            pretrained=False,
            embed_dim=embed_dim,  # weights: ckpt
            input_mean=[float(v) for v in mean],
            input_std=[float(v) for v in std],
        )
    method = method_cls.from_flat(
        **method_kwargs,
        student=student,
        teacher=teacher,
        classnames=list(ckpt["classnames"]),
        unseen=list(ckpt["unseen"]),
        templates=_templates(ds, bench),
        text_embeds=ckpt["state"]["text_embeds"],
    )
    method.load_state_dict(ckpt["state"])
    if hasattr(method, "strip_for_inference"):  # drop training-only parts (CLIP-RC's recovery decoder)
        method.strip_for_inference()
    if new_vocab:
        tmpl = templates or _templates(ds, bench)
        method.set_vocabulary(list(classnames), list(unseen or []), teacher.text(list(classnames), tmpl))
    method.teacher_info = dict(ckpt.get("teacher") or {})
    scale = [int(v) for v in ds.get("test_scale") or (2048, 512)]  # the checkpoint's test resize (long, short)
    method.preprocessing = {
        "mean": tuple(float(v) for v in mean),
        "std": tuple(float(v) for v in std),
        "short_side": min(scale),
        "long_side": max(scale),
    }
    object.__setattr__(method, "teacher", None)
    return method.to(device).eval(), ckpt


def from_checkpoint(
    path: str | Path,
    classnames: Sequence[str] | None = None,
    unseen: Sequence[int] | None = None,
    templates: Sequence[str] | None = None,
    teacher_pretrained: str | None = None,
    device: torch.device | str = "cpu",
    input_norm: tuple | None = None,
):
    """The trained method of a zss checkpoint, ready for inference (Python API, no Hydra / OmegaConf).

    Args:
        path: a zss checkpoint (``<run dir>/last.pt``).
        classnames / unseen / templates: another vocabulary (see :func:`load_for_inference`); None = the
            checkpoint's classes.
        teacher_pretrained: the teacher's weights file, needed for a new vocabulary with a CLIP teacher and for
            methods that run CLIP at test time (CLIP-RC, ZegCLIP) when the recorded file moved.
        device: where the method goes. input_norm: ``(mean, std)`` the images are normalised with (default:
            the checkpoint's ``dataset.mean/std``).

    Returns:
        a :class:`zss.methods.Method` in eval mode: ``method.predict(images Tensor[B, 3, H, W] float32)`` gives
        ``Tensor[B, C, H, W] float32`` logits at the input size; ``method.classnames`` names the C classes;
        ``method.preprocessing`` holds the images' ``mean`` / ``std`` and the test resize (``short_side`` /
        ``long_side``), so ``zss.predict.predict_image(method, "photo.jpg")`` is one call.

    Raises:
        FileNotFoundError, ValueError (zss.registry.UntrustedTargetError among them): see
            :func:`load_for_inference`.
    """
    over = {"pretrained": teacher_pretrained} if teacher_pretrained is not None else None
    method, _ = load_for_inference(
        path,
        classnames=None if classnames is None else list(classnames),
        unseen=None if unseen is None else list(unseen),
        templates=None if templates is None else list(templates),
        teacher_overrides=over,
        device=device,
        input_norm=input_norm,
    )
    return method
