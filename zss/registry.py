"""The allow-list of classes zss rebuilds from a checkpoint's stored config (no Hydra, no OmegaConf).

A checkpoint's ``config`` is data a user may have downloaded. Hydra's ``instantiate`` would import and call
any dotted path it names (``_target_``), nested ones included, so a checkpoint could make ``eval.py`` /
``predict.py`` call arbitrary functions. Everything that rebuilds a model from a checkpoint
(:mod:`zss.loading`, ``zss.from_checkpoint``) goes through :func:`build` instead: the ``_target_`` of the
``method`` / ``model`` / ``teacher`` node must be one of :data:`TRUSTED_TARGETS` for that group, the node may
hold no other object description (no nested ``_target_``, no ``_args_`` / ``_partial_``), and its values are
passed as plain Python values. Training (``scripts/train.py``) still instantiates the user's OWN command-line
config with Hydra; only checkpoint data is restricted. To rebuild a class of your own, add its dotted path here.
Source: ours.
"""

from __future__ import annotations

import importlib
from typing import Any, Mapping

__all__ = ["TRUSTED_TARGETS", "UntrustedTargetError", "resolve", "split_node", "build"]

#: group -> the dotted paths (as written by the configs' ``_target_``) a checkpoint may name.
TRUSTED_TARGETS: dict[str, tuple[str, ...]] = {
    "method": (
        "zss.methods.baseline.SeenOnlyBaseline",
        "zss.methods.clip_zss.ClipZSS",
        "zss.methods.chimera_seg.ChimeraSeg",
        "zss.methods.clip_rc.ClipRC",
    ),
    "model": ("zss.models.student.Student",),
    "teacher": (
        "zss.teachers.clip.FrozenCLIP",
        "zss.teachers.clip.build_tiny_clip",
        "zss.teachers.oracle.OracleTeacher",
    ),
}

#: Hydra bookkeeping keys that describe nothing to call; dropped (values are plain Python anyway).
_HARMLESS_KEYS = ("_convert_", "_recursive_")


class UntrustedTargetError(ValueError):
    """A checkpoint config names something outside :data:`TRUSTED_TARGETS` (or nests an object description)."""


def _where(source: str, key: str) -> str:
    return f"{source}: config key {key}" if source else f"config key {key}"


def _check_nested(value: Any, key: str, source: str) -> None:
    """Refuse object descriptions (``_target_``, ``_args_``, ``_partial_``) anywhere below a node."""
    if isinstance(value, Mapping):
        for k, v in value.items():
            if str(k) in ("_target_", "_args_", "_partial_"):
                raise UntrustedTargetError(
                    f"{_where(source, f'{key}.{k}')} = {v!r}: zss never builds objects named inside a checkpoint's "
                    f"values. The checkpoint is not one zss wrote (or was edited); do not load it."
                )
            _check_nested(v, f"{key}.{k}", source)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_nested(v, f"{key}[{i}]", source)


def resolve(target: str, group: str, source: str = "") -> Any:
    """The class/function of an allow-listed dotted path (imported, not called).

    Args:
        target: dotted path, e.g. ``"zss.methods.clip_zss.ClipZSS"``.
        group: ``"method"``, ``"model"`` or ``"teacher"`` (the config group it comes from).
        source: what the value came from (e.g. the checkpoint path), for the error message.

    Raises:
        UntrustedTargetError (a ValueError): ``target`` is not in ``TRUSTED_TARGETS[group]``; names the key,
            the value and the allowed ones.
    """
    allowed = TRUSTED_TARGETS.get(group)
    if allowed is None:
        raise UntrustedTargetError(f"unknown config group {group!r}; known: {sorted(TRUSTED_TARGETS)}")
    if not isinstance(target, str) or target not in allowed:
        raise UntrustedTargetError(
            f"{_where(source, f'{group}._target_')} = {target!r} is not a zss {group} class zss may rebuild from a "
            f"checkpoint (allowed: {', '.join(allowed)}). A checkpoint can only name these; if this is a class of "
            f"your own, add its dotted path to zss.registry.TRUSTED_TARGETS[{group!r}]."
        )
    module, _, name = target.rpartition(".")
    return getattr(importlib.import_module(module), name)


def split_node(node: Mapping, group: str, source: str = "", drop: tuple[str, ...] = ()) -> tuple[Any, dict]:
    """``(class, kwargs)`` of a ``method`` / ``model`` / ``teacher`` config node, checked against the allow-list.

    Args:
        node: the node as a plain mapping (``_target_`` plus constructor arguments).
        group: its config group (see :func:`resolve`).
        source: what the node came from (for messages).
        drop: bookkeeping keys that are not constructor arguments (e.g. ``("name", "recipe")``).

    Raises:
        UntrustedTargetError: see :func:`resolve`, or an object description nested in a value.
    """
    if not isinstance(node, Mapping) or "_target_" not in node:
        raise UntrustedTargetError(f"{_where(source, group)} has no _target_ (not a zss checkpoint config)")
    kwargs = {str(k): v for k, v in node.items() if k != "_target_" and k not in drop and k not in _HARMLESS_KEYS}
    _check_nested(kwargs, group, source)
    return resolve(node["_target_"], group, source), kwargs


def build(node: Mapping, group: str, source: str = "", drop: tuple[str, ...] = (), **extra: Any) -> Any:
    """Call the allow-listed ``_target_`` of ``node`` with its plain values plus ``extra`` (which win).

    A method class is called through its ``from_flat`` classmethod (:meth:`zss.methods.base.Method.from_flat`:
    the node's flat keys grouped into its settings dataclasses); other classes directly.

    Raises:
        UntrustedTargetError: see :func:`split_node`; whatever the constructor raises.
    """
    cls, kwargs = split_node(node, group, source, drop)
    kwargs.update(extra)
    return getattr(cls, "from_flat", cls)(**kwargs)
