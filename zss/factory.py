"""Build a method in Python from its shipped config, as ``timm.create_model`` builds a model (no Hydra).

    import zss
    zss.list_methods()                     # ['baseline', 'chimera_seg', 'chimera_seg_paper', 'clip_rc', ...]
    teacher = zss.teachers.clip.FrozenCLIP(pretrained="ViT-B-16.pt")
    student = zss.models.Student("resnet101.tv_in1k", embed_dim=teacher.embed_dim, pretrained=True)
    method = zss.create_method("clip_zss", benchmark="voc20", student=student, teacher=teacher, nel_weight=1.0)

A method's settings are those of ``configs/method/<name>.yaml`` (its ``defaults`` list merged first, then the
file itself, as Hydra composes it), then the ``method:`` delta of the benchmark's row experiment where one ships
(``configs/experiment/<benchmark>[_<split>]_<name>.yaml``, e.g. ``cocostuff171_clip_rc``: CLIP-RC's COCO-Stuff
values); keyword overrides win. The class comes from the allow-list of :mod:`zss.registry`.
The configs are read with OmegaConf (no Hydra import). Source: ours.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from torch import nn

from zss.resources import config_dir

__all__ = ["list_methods", "method_settings", "row_experiment", "create_method"]

#: method-config keys that are no constructor argument (as zss.loading.METHOD_BOOKKEEPING; ``recipe`` only in
#: configs older than the per-row experiment files)
_BOOKKEEPING = ("_target_", "name", "recipe")


def list_methods() -> list[str]:
    """Names ``create_method`` takes: the shipped method configs (``configs/method/<name>.yaml``), sorted.

    ``baseline``, ``clip_zss``, ``chimera_seg`` and ``clip_rc`` are the methods with their defaults (equal to the
    classes' constructor defaults); ``zegclip`` (ZegCLIP on CLIP-RC's machinery) and ``*_paper`` (paper presets) are
    named deltas over them.

    Raises:
        FileNotFoundError: from :func:`zss.resources.config_dir` (a broken install).
    """
    return sorted(p.stem for p in (Path(config_dir()) / "method").glob("*.yaml"))


def _load(group: str, name: str):
    """The config ``configs/<group>/<name>.yaml`` with its ``defaults`` list merged (Hydra's order: the entries
    in order, ``_self_`` where listed, else last): same-group bases (``- clip_zss``), sub-groups
    (``- transductive: default`` -> ``configs/method/transductive/default.yaml`` at key ``transductive``) and
    absolute groups with a package (``- /clip_es@pl_clip_es: voc``)."""
    from omegaconf import OmegaConf

    path = Path(config_dir()) / group / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in path.parent.glob("*.yaml"))
        what = "method" if group == "method" else f"{group} preset"
        raise ValueError(f"unknown {what} {name!r} ({path} does not exist); choose one of {known}")
    raw = OmegaConf.load(path)
    defaults = list(raw.pop("defaults", None) or [])
    parts, self_listed = [], False
    for entry in defaults:
        if entry == "_self_":
            parts.append(raw)
            self_listed = True
        elif isinstance(entry, str):  # another option of the same group (a preset's base)
            parts.append(_load(group, entry))
        else:  # {"/other_group@key": option} (absolute) | {"sub_group": option} (configs/<group>/<sub_group>/)
            for key, option in entry.items():
                other, _, package = str(key).partition("@")
                if not other.startswith("/"):  # relative: a sub-group, placed under its own name (Hydra's _group_)
                    other, package = f"{group}/{other}", package or other.split("/")[-1]
                node = _load(other.lstrip("/"), str(option))
                parts.append(OmegaConf.create({package: node}) if package else node)
    if not self_listed:
        parts.append(raw)
    return OmegaConf.merge(*parts)


def row_experiment(name: str, benchmark: str, split: str | None = None) -> str | None:
    """The shipped experiment file of the reported row ``(benchmark, method)``, if there is one.

    ``configs/experiment/<benchmark>_<split>_<name>.yaml`` (``context59_zs3_clip_rc``), else
    ``<benchmark>_<name>.yaml`` (``voc20_clip_rc``); ``None`` when neither ships (the method runs with its own config's
    values, as ``experiment=<benchmark> method=<name>`` does).
    """
    root = Path(config_dir()) / "experiment"
    for stem in ([f"{benchmark}_{split}_{name}"] if split else []) + [f"{benchmark}_{name}"]:
        if (root / f"{stem}.yaml").is_file():
            return stem
    return None


def method_settings(name: str, benchmark: str = "voc20", split: str | None = None) -> tuple[str, dict[str, Any]]:
    """``(target, settings)`` of a shipped method config: the dotted class path and its constructor arguments.

    Args:
        name: one of :func:`list_methods`.
        benchmark: benchmark name (``dataset.benchmark``: ``voc20``, ``cocostuff171``, ``context59`` ...); where a
            row experiment ships for it (:func:`row_experiment`), its ``method:`` values replace the config's.
        split: the benchmark's unseen split (``zs3`` / ``cascade`` for Context), for the row experiment's name.

    Returns:
        the ``_target_`` string and a plain dict of constructor keyword arguments (no ``name`` / ``recipe``).

    Raises:
        ValueError: unknown ``name`` (lists the shipped ones).
    """
    from omegaconf import OmegaConf

    method = _load("method", name)
    row = row_experiment(name, benchmark, split)
    if row is not None:
        delta = OmegaConf.load(Path(config_dir()) / "experiment" / f"{row}.yaml").get("method")
        if delta is not None:
            method = OmegaConf.merge(method, delta)
    root = OmegaConf.create({"method": method, "dataset": {"benchmark": str(benchmark)}})
    node = OmegaConf.to_container(root.method, resolve=True)
    target = node.get("_target_")
    return target, {k: v for k, v in node.items() if k not in _BOOKKEEPING}


def _merge(base: Mapping, over: Mapping) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) else v
    return out


def create_method(
    name: str,
    *,
    benchmark: str = "voc20",
    split: str | None = None,
    student: nn.Module | None = None,
    teacher: nn.Module | None = None,
    **overrides: Any,
) -> nn.Module:
    """A training method built with the settings of its shipped config (``configs/method/<name>.yaml``).

    Equal to what ``scripts/train.py method=<name> dataset=<benchmark's preset>`` builds around the same student
    and teacher. Classes, unseen ids and prompt templates are the benchmark's
    (:func:`zss.data.classes.get_benchmark`); text embeddings come from ``teacher.text``.

    Args:
        name: one of :func:`list_methods` (``baseline``, ``clip_zss``, ``chimera_seg``, ``clip_rc``, ``zegclip``,
            paper presets).
        benchmark: benchmark name (``voc20``, ``cocostuff171``, ``context59``, ``context60``, ``voc21``); also
            picks the method values of the benchmark's row experiment where one ships (:func:`row_experiment`,
            e.g. CLIP-RC's 100 prompts on COCO-Stuff).
        split: the benchmark's unseen split where it has several (``zs3`` / ``cascade`` for Context).
        student: the built student (e.g. :class:`zss.models.Student` with ``embed_dim=teacher.embed_dim``);
            required except for CLIP-RC / ZegCLIP, which build their model from the CLIP teacher (ignored there).
        teacher: the built frozen teacher (:class:`zss.teachers.clip.FrozenCLIP`, or
            :class:`zss.teachers.oracle.OracleTeacher` for CLIP-ZSS / baseline mechanism runs).
        **overrides: flat config keys that replace the config's (``nel_weight=1.0``), or a whole settings group
            (``glm=GLMSettings(tau=0.1)``: every field of it replaces the config's); a mapping merges into a
            mapping-valued setting (``transductive=dict(enabled=True)`` keeps the block's other keys). May also
            replace ``classnames`` / ``unseen`` / ``templates`` / ``text_embeds``. Built with the class's
            ``from_flat`` (:meth:`zss.methods.base.Method.from_flat`).

    Returns:
        the method (an ``nn.Module``, :class:`zss.methods.Method`) in training mode.

    Raises:
        ValueError: unknown ``name`` or ``benchmark``/``split``, no ``teacher``, no ``student`` for a method that
            trains one, or whatever the method's constructor rejects (an unknown override is a TypeError).
    """
    from zss import registry
    from zss.data.classes import get_benchmark
    from zss.methods.settings import Settings

    target, settings = method_settings(name, benchmark, split)
    cls = registry.resolve(target, "method", f"configs/method/{name}.yaml")
    if teacher is None:
        raise ValueError(
            f"create_method({name!r}): pass teacher= (a built zss.teachers.clip.FrozenCLIP, or an "
            f"OracleTeacher for mechanism runs); every method needs one for its text embeddings"
        )
    uses_student = bool(getattr(cls, "uses_student", True))
    if uses_student and student is None:
        raise ValueError(
            f"create_method({name!r}): pass student= (e.g. zss.models.Student('resnet101.tv_in1k', "
            f"embed_dim=teacher.embed_dim)); {cls.__name__} trains a student"
        )
    bench = get_benchmark(benchmark, split)
    kwargs = dict(
        classnames=list(bench.classes), unseen=list(bench.unseen), templates=list(bench.templates), **settings
    )
    flat = {}
    for key, value in overrides.items():  # a whole settings group (glm=GLMSettings(...)) as its flat keys
        flat.update(value.to_flat() if isinstance(value, Settings) and key in cls.SETTINGS else {key: value})
    kwargs = _merge(kwargs, flat)
    return cls.from_flat(student=student if uses_student else None, teacher=teacher, **kwargs)
