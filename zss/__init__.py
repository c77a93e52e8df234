"""zss: distillation-based zero-shot semantic segmentation.

Python API (no Hydra): ``zss.list_methods()`` names the shipped methods, ``zss.create_method(name, benchmark=...,
student=..., teacher=..., **overrides)`` builds one with its config's settings (:mod:`zss.factory`), and
``zss.from_checkpoint(path)`` rebuilds a trained method for inference (:func:`zss.loading.from_checkpoint`); the
classes are in :mod:`zss.methods`, :mod:`zss.models`, :mod:`zss.teachers`.
"""

from zss._version import __version__

__all__ = ["__version__", "create_method", "from_checkpoint", "list_methods"]


def from_checkpoint(path, *args, **kwargs):
    """The trained method of a zss checkpoint for inference: see :func:`zss.loading.from_checkpoint`."""
    from zss.loading import from_checkpoint as _from_checkpoint

    return _from_checkpoint(path, *args, **kwargs)


def create_method(name, **kwargs):
    """A method built with the settings of ``configs/method/<name>.yaml``: see :func:`zss.factory.create_method`."""
    from zss.factory import create_method as _create_method

    return _create_method(name, **kwargs)


def list_methods():
    """The names :func:`create_method` takes: see :func:`zss.factory.list_methods`."""
    from zss.factory import list_methods as _list_methods

    return _list_methods()
