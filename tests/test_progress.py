"""Progress bars users watch: drawn on a terminal, silent in captured output, and never broken by a log line."""

from __future__ import annotations

import io
import logging
import re
import sys
from contextlib import nullcontext

import pytest
import torch
from torch.utils.data import Subset

from conftest import fake_terminal
from zss.data.classes import get_benchmark
from zss.data.dataset import build_dataset
from zss.data.transforms import build_test_transform, build_train_transform
from zss.engine.trainer import TrainConfig, Trainer, new_run_dir
from zss.methods.baseline import SeenOnlyBaseline
from zss.models.student import Student
from zss.teachers.oracle import OracleTeacher
from zss.utils.progress import console_logging, progress_bar


@pytest.fixture
def console_handler(monkeypatch):
    """A console log handler on the root logger, as Hydra's job_logging or logging.basicConfig install; it writes
    to the fake terminal of :func:`fake_terminal` (``sys.stderr`` looked up when it writes)."""

    class ToStderr(logging.StreamHandler):
        @property
        def stream(self):
            return sys.stderr

        @stream.setter
        def stream(self, value):
            pass

    root = logging.getLogger()
    handler = ToStderr()
    handler.setFormatter(logging.Formatter("%(message)s"))
    old_level, old_handlers = root.level, list(root.handlers)
    root.handlers[:] = [handler]  # alone: a handler another test left on a closed stream must not write here
    root.setLevel(logging.INFO)
    yield handler
    root.handlers[:] = old_handlers
    root.setLevel(old_level)


def starts_a_line(text: str, line: str) -> bool:
    """``line`` is printed at the start of a line (after a newline or the bar's clearing carriage return)."""
    return re.search(r"(^|[\r\n])" + re.escape(line) + r"\n", text) is not None


def test_bar_draws_on_a_terminal_only(monkeypatch):
    terminal = fake_terminal(monkeypatch)
    for _ in progress_bar(range(3), desc="work"):
        pass
    assert "work: 100%" in terminal.getvalue() and "3/3" in terminal.getvalue()

    piped = io.StringIO()  # a log file / captured output: no carriage-return frames
    monkeypatch.setattr(sys, "stderr", piped)
    for _ in progress_bar(range(3), desc="work"):
        pass
    assert piped.getvalue() == ""
    for _ in progress_bar(range(3), desc="train", tty_only=False):  # the training bar: drawn in log files too
        pass
    assert "train: 100%" in piped.getvalue()
    for _ in progress_bar(range(3), desc="rank1", enabled=False, tty_only=False):
        pass
    assert "rank1" not in piped.getvalue()


@pytest.mark.parametrize("redirect", [True, False])
def test_log_lines_go_above_the_bar(monkeypatch, console_handler, redirect):
    terminal = fake_terminal(monkeypatch)
    log = logging.getLogger("zss.test_progress")
    with console_logging() if redirect else nullcontext():
        for i in progress_bar(range(3), desc="work"):
            log.info("line %d", i)
    out = terminal.getvalue()
    assert "work: 100%" in out
    # with the redirect every line starts a line; without it the first one is glued to the bar (the test can fail)
    assert all(starts_a_line(out, f"line {i}") for i in range(3)) is redirect, out
    assert all(f"line {i}\n" in out for i in range(3))
    assert console_handler in logging.getLogger().handlers  # restored after the block


def test_training_bar_survives_periodic_evaluation(voc_root, tmp_path, monkeypatch, console_handler):
    torch.manual_seed(0)
    bench = get_benchmark("voc20")
    teacher = OracleTeacher(list(bench.classes), embed_dim=16, patch_size=16, noise=0.1, seed=0)
    student = Student("test_resnet", embed_dim=16, decoder="mlp", decoder_channels=16)
    method = SeenOnlyBaseline(student, teacher, list(bench.classes), list(bench.unseen), list(bench.templates))
    tf = build_train_transform(crop_size=(64, 64), scale=(256, 64), ratio_range=(0.75, 1.5))
    train = build_dataset("voc20", voc_root, split="train", hide_unseen=True, transform=tf)
    val = build_dataset(
        "voc20", voc_root, split="val", hide_unseen=False, transform=build_test_transform(scale=(256, 64))
    )
    cfg = TrainConfig(
        max_steps=2,
        batch_size=2,
        micro_batch_size=2,
        lr=1e-3,
        warmup_steps=1,
        amp="fp32",
        eval_interval=1,
        log_interval=1,
        ckpt_interval=0,
        num_workers=0,
        eval_mode="whole",
        overlay_count=0,
    )
    terminal = fake_terminal(monkeypatch)
    Trainer(method, train, Subset(val, range(2)), cfg, new_run_dir(tmp_path, "bar")).fit()
    out = terminal.getvalue()
    assert "train: 100%" in out and "2/2" in out
    assert re.search(r"eval: +\d+%", out), "periodic evaluation draws its own bar"
    for step in (1, 2):
        line = next(ln for ln in re.split(r"[\r\n]", out) if ln.startswith(f"[step {step}]"))
        assert "hIoU" in line and "train:" not in line
        assert starts_a_line(out, line), f"[step {step}] is glued to a bar: {out!r}"
