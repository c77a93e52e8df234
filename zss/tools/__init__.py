"""Tools that build things the methods are run with, not parts of a method.

- :mod:`zss.tools.taught_clip`: the label-taught CLIP (``zss-teach-clip``): a small open_clip CLIP taught on
  labelled images, a mechanism tool standing in for real CLIP weights offline (docs/taught_clip.md).

The dataset builders live with the data: :mod:`zss.data.synthetic` (``zss-make-world``) and
:mod:`zss.data.convert` (``zss-prepare-cocostuff``, ``zss-prepare-context``).
"""
