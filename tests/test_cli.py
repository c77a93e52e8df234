"""The user's path: scripts/train.py with Hydra overrides, then scripts/eval.py on its checkpoint
(numbers reproduced exactly), and the same entry point under torchrun with 2 CPU processes (gloo)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
TINY = [
    "experiment=demo", "model.backbone=test_resnet", "model.decoder_channels=16", "teacher.embed_dim=16",
    "dataset.crop_size=[64,64]", "dataset.scale=[256,64]", "dataset.test_scale=[256,64]",
    "trainer.max_steps=2", "trainer.batch_size=4", "trainer.eval_interval=0", "trainer.ckpt_interval=0",
    "trainer.num_workers=0", "trainer.log_interval=1", "trainer.amp=fp32",
]


def _run(args, tmp_path, torchrun=False):
    env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    if torchrun:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29531"]
    else:
        cmd = [sys.executable]
    out = subprocess.run(cmd + args, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    return out.stdout + out.stderr


def _only_run_dir(root: Path) -> Path:
    runs = [p for p in root.glob("*/*") if p.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]


def test_train_then_eval_reproduces_numbers(tmp_path, voc_root):
    root = tmp_path / "runs"
    log = _run(["scripts/train.py", *TINY, f"run_root={root}", f"dataset.root={voc_root}"], tmp_path)
    assert "hIoU" in log and "NOT zero-shot" in log
    run = _only_run_dir(root)
    for f in ("last.pt", "best.pt", "metrics.jsonl", "final_results.json"):
        assert (run / f).is_file(), f
    assert list((run / "tb").glob("events.*"))
    final = json.loads((run / "final_results.json").read_text())
    _run(["scripts/eval.py", f"ckpt={run / 'last.pt'}", f"dataset.root={voc_root}", f"out_dir={tmp_path / 'ev'}"],
         tmp_path)
    again = json.loads(next((tmp_path / "ev").glob("eval_*_val_results.json")).read_text())
    for k in ("mIoU_seen", "mIoU_unseen", "hIoU", "pAcc", "mIoU"):
        assert again[k] == final[k], k
    # a second run never touches the first one's directory
    _run(["scripts/train.py", *TINY, f"run_root={root}", f"dataset.root={voc_root}", "trainer.max_steps=1"], tmp_path)
    assert len([p for p in root.glob("*/*") if p.is_dir()]) == 2


def test_torchrun_two_cpu_processes(tmp_path, voc_root):
    root = tmp_path / "runs"
    log = _run(["scripts/train.py", *TINY, f"run_root={root}", f"dataset.root={voc_root}", "device=cpu"],
               tmp_path, torchrun=True)
    run = _only_run_dir(root)  # rank 0 alone creates the run dir
    ckpt = torch.load(run / "last.pt", weights_only=True)
    assert ckpt["step"] == 2
    assert "hIoU" in log


def test_missing_dataset_root_is_one_clear_error(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    out = subprocess.run([sys.executable, "scripts/train.py", "experiment=demo", "dataset.root=/nonexistent/voc",
                          f"run_root={tmp_path}"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode != 0
    assert "/nonexistent/voc" in out.stderr
