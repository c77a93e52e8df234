"""Where the shipped Hydra configs live, for a source checkout and for an installed package alike.

The repository keeps them in ``configs/`` next to ``zss/``; ``pip install .`` ships the same files as the
package data ``zss/configs/`` (pyproject.toml maps the package ``zss.configs`` to ``configs/``). Every
Hydra entry point (``zss.cli``, ``zss.cli.predict``) and the dataset checker find them through
:func:`config_dir`. This module imports neither Hydra nor torch.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["config_dir", "dataset_presets"]

_ENTRY = "train.yaml"  # a file every config dir holds


def config_dir() -> str:
    """The folder of the shipped configs (``train.yaml``, ``dataset/``, ``experiment/`` ...).

    Returns:
        absolute path (``str``): the installed package data ``<site-packages>/zss/configs`` when it exists
        (``pip install .``), else the source tree's ``configs/`` (a checkout, ``pip install -e .``).

    Raises:
        FileNotFoundError: neither exists (a broken install); names both places and the fix.

    Source: not in the papers: our packaging (docs: README "Commands").
    """
    pkg = Path(__file__).resolve().parent
    for cand in (pkg / "configs", pkg.parent / "configs"):
        if (cand / _ENTRY).is_file():
            return str(cand)
    raise FileNotFoundError(
        f"zss cannot find its configs: neither {pkg / 'configs'} (installed package data) nor "
        f"{pkg.parent / 'configs'} (source checkout) holds {_ENTRY}. Reinstall zss (pip install . or pip install -e .)."
    )


def dataset_presets() -> list[str]:
    """Names of the dataset presets (``configs/dataset/<name>.yaml``: ``voc20``, ``context59_zs3`` ...), sorted.

    Raises:
        FileNotFoundError: from :func:`config_dir`.
    """
    return sorted(p.stem for p in (Path(config_dir()) / "dataset").glob("*.yaml"))
