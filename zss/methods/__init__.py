"""Training methods (docs/methods.md): each wraps a student, a frozen teacher and its losses.

Import them directly (``from zss.methods import ClipZSS, GLMSettings``) to build a method in Python without Hydra,
or rebuild a trained one with ``zss.from_checkpoint(path)``. Each method takes its settings grouped as the sections
of its config (frozen dataclasses, :mod:`zss.methods.settings`: ``ClipZSS(..., glm=GLMSettings(tau=0.1))``);
``Method.from_flat(**config keys)`` builds it from the flat keys of ``configs/method/<name>.yaml``.
"""

from zss.methods.base import Method
from zss.methods.baseline import SeenOnlyBaseline
from zss.methods.chimera_seg import ChimeraSeg, CSHSettings, SAMSettings, SGDSettings
from zss.methods.clip_rc import ClipRC, ClipRCDecoderSettings, ClipRCEncoderSettings, ClipRCLossSettings
from zss.methods.clip_zss import (
    ClipZSS,
    ClipZSSLossSettings,
    GLMSettings,
    PseudoLabelSettings,
    PseudoNegativeSettings,
    SynthSettings,
)
from zss.methods.losses import CLSBank, GlobalDistillLoss
from zss.methods.settings import Settings

__all__ = [
    "Method",
    "SeenOnlyBaseline",
    "ClipZSS",
    "ChimeraSeg",
    "ClipRC",
    "CLSBank",
    "GlobalDistillLoss",
    "Settings",
    "GLMSettings",
    "PseudoLabelSettings",
    "PseudoNegativeSettings",
    "ClipZSSLossSettings",
    "SynthSettings",
    "CSHSettings",
    "SGDSettings",
    "SAMSettings",
    "ClipRCEncoderSettings",
    "ClipRCDecoderSettings",
    "ClipRCLossSettings",
]
