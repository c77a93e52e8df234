"""Training methods (docs/methods.md): each wraps a student, a frozen teacher and its losses.

Import them directly (``from zss.methods import ClipZSS``) to build a method in Python without Hydra, or rebuild
a trained one with ``zss.from_checkpoint(path)``.
"""
from zss.methods.base import Method
from zss.methods.baseline import SeenOnlyBaseline
from zss.methods.chimera_seg import ChimeraSeg
from zss.methods.clip_rc import ClipRC
from zss.methods.clip_zss import ClipZSS
from zss.methods.losses import CLSBank, GlobalDistillLoss

__all__ = ["Method", "SeenOnlyBaseline", "ClipZSS", "ChimeraSeg", "ClipRC", "CLSBank", "GlobalDistillLoss"]
