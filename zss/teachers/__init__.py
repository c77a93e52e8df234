"""Teachers: the frozen CLIP teacher and a label-derived oracle stand-in (docs/architecture.md "Teacher")."""

from zss.teachers.clip import (
    DENSE_MODES,
    FrozenCLIP,
    TeacherWeightsError,
    TeacherWeightsNotFoundError,
    build_tiny_clip,
    tiny_clip_cfg,
)
from zss.teachers.oracle import ORACLE_WARNING, OracleTeacher
from zss.teachers.prompted import PromptedCLIPEncoder

__all__ = [
    "DENSE_MODES",
    "FrozenCLIP",
    "ORACLE_WARNING",
    "OracleTeacher",
    "PromptedCLIPEncoder",
    "TeacherWeightsError",
    "TeacherWeightsNotFoundError",
    "build_tiny_clip",
    "tiny_clip_cfg",
]
