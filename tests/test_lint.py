"""`ruff check zss scripts tests` passes with the rules of pyproject.toml ([tool.ruff]: the 120-column line length
included; ruff is in the dev extra) and the tree is as `ruff format` writes it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_ruff_check_passes():
    pytest.importorskip("ruff", reason='ruff is not installed (pip install -e ".[dev]")')
    cmd = [sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise", "zss", "scripts", "tests"]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]


def test_ruff_format_leaves_the_tree_unchanged():
    pytest.importorskip("ruff", reason='ruff is not installed (pip install -e ".[dev]")')
    cmd = [sys.executable, "-m", "ruff", "format", "--check", "--no-cache", "zss", "scripts", "tests"]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, "run `ruff format zss scripts tests`:\n" + out.stdout[-4000:] + out.stderr[-2000:]
