"""Checkpoints as plain dicts: loadable with ``torch.load(weights_only=True)``, written atomically."""

from __future__ import annotations

import math
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

    from zss._version import __version__ as zss_version

    try:
        import open_clip

        oc = open_clip.__version__
    except Exception:  # pragma: no cover - open_clip is a hard dependency
        oc = "missing"
    return {
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "torchvision": str(torchvision.__version__),
        "timm": str(timm.__version__),
        "open_clip": str(oc),
        "zss": str(zss_version),
    }


def git_sha() -> str:
    """The zss source tree's git commit (``+dirty`` when it has uncommitted changes), or ``unknown``."""
    root = Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        if sha.returncode != 0:
            return "unknown"
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
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


#: Entries a checkpoint needs to CONTINUE training (``resume=``), besides its weights (``state``).
TRAIN_STATE_KEYS = ("optimizer", "scaler", "step", "best")


def missing_train_state(ckpt: dict) -> list[str]:
    """The :data:`TRAIN_STATE_KEYS` a loaded checkpoint lacks (e.g. a weights-only export): it cannot be resumed."""
    return [k for k in TRAIN_STATE_KEYS if k not in ckpt]


def read_reason(err: BaseException, path: str | os.PathLike) -> str:
    """Why a checkpoint file could not be read, in a few words (torch's own advice left out)."""
    return _load_reason(err, Path(path))


#: Config groups every zss checkpoint stores (``zss.cli.train`` writes the whole resolved config).
CONFIG_GROUPS = ("dataset", "method", "teacher", "trainer")


def _config_problem(node, key: str = "config") -> str | None:
    """The first config value that a checkpoint cannot hold: an interpolation (``${...}``: zss stores resolved
    values, so it was put there by hand and is never resolved) or a non-finite float; None when all are fine."""
    if isinstance(node, dict):
        for k, v in node.items():
            bad = _config_problem(v, f"{key}.{k}")
            if bad:
                return bad
    elif isinstance(node, (list, tuple)):
        for i, v in enumerate(node):
            bad = _config_problem(v, f"{key}[{i}]")
            if bad:
                return bad
    elif isinstance(node, str) and "${" in node:
        return f"{key}={node!r} is an interpolation (zss stores resolved values; it is not resolved)"
    elif isinstance(node, float) and not math.isfinite(node):
        return f"{key}={node} is not a finite number"
    return None


def checkpoint_problem(ckpt: dict, need_config: bool = True) -> str | None:
    """What makes a loaded zss checkpoint unusable, in a few words, or None.

    Checked: the config groups (:data:`CONFIG_GROUPS`) are there, no config value is an interpolation or a
    non-finite float (``trainer.seen_bias=nan``), ``classnames`` are distinct non-empty names, as many as the
    rows of ``state["text_embeds"]`` (the classifier: one logit per row), ``unseen`` are distinct ids in
    ``[0, C)``, and every floating-point tensor of ``state`` / ``train_state`` is finite. ``need_config=False``
    (a resume through the Python ``Trainer``, whose ``config`` may be empty) skips the groups. Source: ours.
    """
    from zss.engine.trainer import non_finite_tensors

    config = ckpt["config"]
    if not isinstance(config, dict) or not isinstance(ckpt["state"], dict):
        return "'state' and 'config' must be dicts"
    missing = [g for g in CONFIG_GROUPS if need_config and not isinstance(config.get(g), dict)]
    if missing:
        return f"its config has no {', '.join(missing)} group(s)"
    bad = _config_problem(config)
    if bad:
        return bad
    names = ckpt.get("classnames")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n.strip() for n in names):
        return "'classnames' must be a non-empty list of class names"
    if len(set(names)) != len(names):
        return f"'classnames' repeats {sorted({n for n in names if names.count(n) > 1})[:3]}"
    emb = ckpt["state"].get("text_embeds")
    if emb is not None and (not torch.is_tensor(emb) or emb.dim() != 2 or emb.shape[0] != len(names)):
        shape = tuple(emb.shape) if torch.is_tensor(emb) else type(emb).__name__
        return f"{len(names)} class names but text_embeds of shape {shape} (one row per class)"
    unseen = ckpt.get("unseen", [])
    if (
        not isinstance(unseen, list)
        or not all(isinstance(u, int) and not isinstance(u, bool) for u in unseen)
        or any(not 0 <= u < len(names) for u in unseen)
        or len(set(unseen)) != len(unseen)
    ):
        return f"'unseen'={unseen!r} must be distinct class ids in [0, {len(names)})"
    tensors = dict(ckpt["state"])
    for owner, state in (ckpt.get("train_state") or {}).items():
        if isinstance(state, dict):
            tensors.update({f"{owner}.{k}": v for k, v in state.items()})
    nonfinite = non_finite_tensors(tensors)
    if nonfinite:
        return f"non-finite weights: {'; '.join(nonfinite[:3])}" + (
            f" (+{len(nonfinite) - 3} more)" if len(nonfinite) > 3 else ""
        )
    return None


def load_checkpoint(path: str | os.PathLike, map_location="cpu", mmap: bool = False, need_config: bool = True) -> dict:
    """Load a zss checkpoint with ``weights_only=True`` (``mmap=True``: memory-mapped, tensors read lazily;
    a cheap validity check of a large file) and check it (:func:`checkpoint_problem`) before anything uses it.

    Raises:
        FileNotFoundError: the file does not exist (message names it and the ``ckpt=`` key).
        ValueError: the file is not a zss checkpoint: torch cannot read it (garbage, truncated, another tool's
            pickle) or it has no ``state`` / ``config`` entries; or it is unusable (non-finite weights, class
            names / text embeds / unseen ids that disagree, an interpolation or NaN in its config); names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist: pass ckpt=<run dir>/last.pt")
    with warnings.catch_warnings(record=True) as caught:  # torch's unpickler warnings only if the load works
        warnings.simplefilter("always")
        try:
            ckpt = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
        except Exception as e:  # noqa: BLE001 - torch's reasons (pickle, zip, EOF) all mean "not our file"
            raise ValueError(
                f"{path} is not a zss checkpoint: torch cannot read it: {_load_reason(e, path)}. Pass "
                f"ckpt=/resume= a last.pt written by zss training"
            ) from e
    for w in caught:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if not isinstance(ckpt, dict) or "state" not in ckpt or "config" not in ckpt:
        raise ValueError(f"{path} is not a zss checkpoint (expected a dict with 'state' and 'config')")
    problem = checkpoint_problem(ckpt, need_config=need_config)
    if problem:
        raise ValueError(
            f"checkpoint {path} cannot be used: {problem}. Use another checkpoint (e.g. an earlier "
            f"last.pt of the run) or retrain"
        )
    return ckpt
