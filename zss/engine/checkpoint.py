"""Checkpoints as plain dicts: loadable with ``torch.load(weights_only=True)``, written atomically."""
from __future__ import annotations

import os
import platform
import subprocess
import tempfile
import warnings
from pathlib import Path

import torch


def versions() -> dict[str, str]:
    """Versions of the libraries that shape the numbers (python, torch, torchvision, timm, open_clip, zss)."""
    import timm
    import torchvision

    import zss

    try:
        import open_clip

        oc = open_clip.__version__
    except Exception:  # pragma: no cover - open_clip is a hard dependency
        oc = "missing"
    return {
        "python": platform.python_version(), "torch": str(torch.__version__), "torchvision": str(torchvision.__version__),
        "timm": str(timm.__version__), "open_clip": str(oc), "zss": str(zss.__version__),
    }


def git_sha() -> str:
    """The zss source tree's git commit (``+dirty`` when it has uncommitted changes), or ``unknown``."""
    root = Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        if sha.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return sha.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def save_atomic(obj: dict, path: str | os.PathLike) -> None:
    """``torch.save`` to a temp file in the same folder, fsync, then ``os.replace``: a crash never
    leaves a half-written checkpoint in place of a good one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _load_reason(err: BaseException, path: Path) -> str:
    """Why ``torch.load(weights_only=True)`` failed, in a few words, without torch's advice to load the file
    with ``weights_only=False`` (zss checkpoints never need it; an untrusted pickle can run code)."""
    text = str(err)
    if isinstance(err, EOFError) or path.stat().st_size == 0:
        return "the file is empty or cut short"
    if "Unsupported global" in text or "weights_only" in text and "GLOBAL" in text:
        return "it holds pickled Python objects, e.g. a whole model or another tool's file, not a zss state dict"
    if "zip archive" in text or "central directory" in text:
        return "the archive is truncated or corrupt, e.g. an interrupted copy"
    return "not a PyTorch checkpoint file"


def load_checkpoint(path: str | os.PathLike, map_location="cpu", mmap: bool = False) -> dict:
    """Load a zss checkpoint with ``weights_only=True`` (``mmap=True``: memory-mapped, tensors read lazily;
    a cheap validity check of a large file).

    Raises:
        FileNotFoundError: the file does not exist (message names it and the ``ckpt=`` key).
        ValueError: the file is not a zss checkpoint: torch cannot read it (garbage, truncated, another tool's
            pickle) or it has no ``state`` / ``config`` entries; names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist: pass ckpt=<run dir>/last.pt")
    with warnings.catch_warnings(record=True) as caught:  # torch's unpickler warnings only if the load works
        warnings.simplefilter("always")
        try:
            ckpt = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
        except Exception as e:  # noqa: BLE001 - torch's reasons (pickle, zip, EOF) all mean "not our file"
            raise ValueError(f"{path} is not a zss checkpoint: torch cannot read it: {_load_reason(e, path)}. Pass "
                             f"ckpt=/resume= a last.pt written by zss training") from e
    for w in caught:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if not isinstance(ckpt, dict) or "state" not in ckpt or "config" not in ckpt:
        raise ValueError(f"{path} is not a zss checkpoint (expected a dict with 'state' and 'config')")
    return ckpt
