"""Shared pytest fixtures: the bundled real VOC sample and thread limits for a 2-core machine."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


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
