"""Shared pytest fixtures: the bundled real VOC sample, one torch thread per test process."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

torch.set_num_threads(1)  # one thread: two torch threads on a loaded 2-core machine run 10-50x slower


def _find_voc() -> Path:
    for cand in (REPO / "data" / "VOCdevkit" / "VOC2012", REPO.parent / "shared" / "data" / "VOCdevkit" / "VOC2012"):
        if (cand / "JPEGImages").is_dir():
            return cand
    pytest.skip("bundled VOC sample not found under data/ or ../shared/data")


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def voc_root() -> Path:
    """Path to the bundled real PASCAL VOC 2012 sample (mmseg layout, 40 train / 20 val)."""
    return _find_voc()


# Overrides that turn experiment=demo into a seconds-long run: configs/debug/tiny.yaml (test_resnet student, 64 px
# crops, 2 steps) plus a 16-dim oracle teacher (tests that swap the teacher drop the teacher.* entry).
TINY = ["experiment=demo", "debug=tiny", "teacher.embed_dim=16"]
ENV = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")


def run_script(args: list[str], check: bool = True, prefix: list[str] | None = None) -> subprocess.CompletedProcess:
    """Run ``python <args>`` from the repo root (the user's path), asserting success when ``check``."""
    out = subprocess.run(
        [sys.executable, *(prefix or []), *args], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600
    )
    if check:
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    return out


def compose_config(name: str, overrides: list[str]):
    """The config ``python scripts/<name>.py <overrides>`` would run with, composed by Hydra's compose API (no run
    dir, no change of cwd; GlobalHydra is cleared on exit)."""
    from hydra import compose, initialize_config_dir

    import zss.cli.common  # noqa: F401  (registers the structured configs, as the commands do)
    from zss.resources import config_dir

    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose(config_name=name, overrides=list(overrides))


def train_in_process(overrides: list[str]) -> dict | None:
    """``python scripts/train.py <overrides>`` without a new process: :func:`zss.cli.train.train` on the composed
    config; returns the final results."""
    from zss.cli.train import train

    return train(compose_config("train", overrides))


def run_main(main, args: list[str], monkeypatch, capsys) -> tuple[int, str, str]:
    """Run a console entry point (``train_main``, ``eval_main``...) in-process as ``<cmd> args...``: (exit code,
    stdout, stderr). The root logger's handlers (which ``hydra.main`` replaces) are put back."""
    import logging

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    monkeypatch.setattr(sys, "argv", ["zss", *map(str, args)])
    try:
        code = main()
    except SystemExit as e:
        code = e.code
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    out = capsys.readouterr()
    return (0 if code is None else code), out.out, out.err


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory, voc_root) -> Path:
    """last.pt of a 2-step CLIP-ZSS demo run (oracle teacher, test_resnet student), trained in-process by the
    train command (:func:`zss.cli.train.train`, what scripts/train.py runs)."""
    root = tmp_path_factory.mktemp("runs")
    train_in_process([*TINY, "transfer_view.enabled=true", f"run_root={root}", f"dataset.root={voc_root}"])
    found = sorted(root.glob("*/*/last.pt"))
    assert len(found) == 1, found
    return found[0]


class FakeTerminal(io.StringIO):
    """A stderr that says it is a terminal: tqdm draws its bars (``disable=None``) only on terminals."""

    def isatty(self) -> bool:
        return True


def fake_terminal(monkeypatch) -> FakeTerminal:
    """Make ``sys.stderr`` a fake terminal and return it; call it inside the test body (pytest's output capture
    sets ``sys.stderr`` again between fixture setup and the test call)."""
    term = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", term)
    return term
