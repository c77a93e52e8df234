"""Grouped method settings: small frozen dataclasses that mirror the prefixed keys of the method configs.

A method config is flat (``method.glm_tau``, ``method.pl_max_regions``, ``method.nel_weight``: the keys of the
docs, the scripts, Hydra overrides and stored checkpoints). In Python a method takes one dataclass per config
section instead of 30-50 flat arguments::

    from zss.methods import ClipZSS, GLMSettings
    method = ClipZSS(student, teacher, classnames, unseen, glm=GLMSettings(tau=0.1))

Each :class:`Settings` subclass names the flat config key of every field (:meth:`Settings.flat_keys`: the
class's ``PREFIX`` plus the field name, unless the field is listed in ``UNPREFIXED`` or ``RENAMED``), so the two
spellings convert both ways: :meth:`Settings.to_flat` and :meth:`~zss.methods.base.Method.from_flat`, the
classmethod every method has that builds it from flat keys (what the config loaders call). Source: ours.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Mapping, TypeVar

__all__ = ["Settings", "coerce_settings"]

S = TypeVar("S", bound="Settings")


@dataclasses.dataclass(frozen=True)
class Settings:
    """Base of the grouped settings (a frozen dataclass; subclasses add the fields).

    Class attributes (not fields):
        PREFIX: prefix of the flat config keys of this group (``"glm_"``: field ``tau`` is ``glm_tau``).
        UNPREFIXED: fields whose flat key is the field name itself (``bank_size``).
        RENAMED: ``{field: flat key}`` for the remaining exceptions (``lam`` -> ``pl_lambda``).
    """

    PREFIX: ClassVar[str] = ""
    UNPREFIXED: ClassVar[tuple[str, ...]] = ()
    RENAMED: ClassVar[Mapping[str, str]] = {}

    @classmethod
    def flat_keys(cls) -> dict[str, str]:
        """``{field name: flat config key}`` in field order."""
        return {
            f.name: cls.RENAMED.get(f.name, f.name if f.name in cls.UNPREFIXED else cls.PREFIX + f.name)
            for f in dataclasses.fields(cls)
        }

    def to_flat(self) -> dict[str, Any]:
        """``{flat config key: value}`` of every field (the inverse of the grouping in ``from_flat``)."""
        return {key: getattr(self, name) for name, key in self.flat_keys().items()}

    def replace(self: S, **changes: Any) -> S:
        """A copy with ``changes`` (field names) applied (:func:`dataclasses.replace`)."""
        return dataclasses.replace(self, **changes)


def coerce_settings(value: Any, cls: type[S], where: str) -> S:
    """``value`` as a ``cls`` instance: the instance itself, or a mapping of its FIELD names.

    Raises:
        TypeError: any other type, or a mapping with a key that is no field (names ``where``, e.g.
            ``"ClipZSS(glm=...)"``, and the valid fields).
    """
    if isinstance(value, cls):
        return value
    if isinstance(value, Mapping):
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(map(str, value)) - set(names))
        if unknown:
            raise TypeError(f"{where}: {cls.__name__} has no field {unknown}; fields: {names}")
        return cls(**{str(k): v for k, v in value.items()})
    raise TypeError(f"{where}: expected a {cls.__name__} (or a mapping of its fields), got {type(value).__name__}")
