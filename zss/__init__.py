"""zss: distillation-based zero-shot semantic segmentation.

Python API (no Hydra): ``zss.from_checkpoint(path)`` rebuilds a trained method for inference
(:func:`zss.loading.from_checkpoint`); the classes are in :mod:`zss.methods`, :mod:`zss.models`, :mod:`zss.teachers`.
"""
__version__ = "0.1.0"


def from_checkpoint(path, *args, **kwargs):
    """The trained method of a zss checkpoint for inference: see :func:`zss.loading.from_checkpoint`."""
    from zss.loading import from_checkpoint as _from_checkpoint

    return _from_checkpoint(path, *args, **kwargs)
