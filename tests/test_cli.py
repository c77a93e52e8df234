"""The user's path: scripts/train.py with Hydra overrides, then scripts/eval.py on its checkpoint
(numbers reproduced exactly), and the same entry point under torchrun with 2 CPU processes (gloo)."""

from __future__ import annotations

import json

import torch
import yaml

from conftest import TINY, run_main, run_script, train_in_process


def _run(args, tmp_path, torchrun=False):
    prefix = ["-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29531"] if torchrun else None
    out = run_script(args, prefix=prefix)
    return out.stdout + out.stderr


def _only_run_dir(root):
    runs = [p for p in root.glob("*/*") if p.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]


def test_train_then_eval_reproduces_numbers(tmp_path, voc_root):
    root = tmp_path / "runs"
    log = _run(["scripts/train.py", *TINY, f"run_root={root}", f"dataset.root={voc_root}"], tmp_path)
    assert "hIoU" in log and "NOT zero-shot" in log
    run = _only_run_dir(root)
    for f in ("last.pt", "metrics.jsonl", "final_results.json"):
        assert (run / f).is_file(), f
    assert not list(run.glob("best*.pt"))  # selection on the val (= test) split is opt-in
    assert list((run / "tb").glob("events.*"))
    # how it was launched: Hydra's overrides and the library versions, in the run dir
    assert yaml.safe_load((run / "overrides.yaml").read_text()) == [
        *TINY,
        f"run_root={root}",
        f"dataset.root={voc_root}",
    ]
    assert {"torch", "timm", "open_clip", "zss", "git_sha"} <= set(json.loads((run / "versions.json").read_text()))
    final = json.loads((run / "final_results.json").read_text())
    _run(
        ["scripts/eval.py", f"ckpt={run / 'last.pt'}", f"dataset.root={voc_root}", f"out_dir={tmp_path / 'ev'}"],
        tmp_path,
    )
    again = json.loads(next((tmp_path / "ev").glob("eval_*_val_results.json")).read_text())
    for k in ("mIoU_seen", "mIoU_unseen", "hIoU", "pAcc", "mIoU"):
        assert again[k] == final[k], k
    # a second run never touches the first one's directory (the train command in-process: same code path)
    train_in_process([*TINY, f"run_root={root}", f"dataset.root={voc_root}", "trainer.max_steps=1"])
    assert len([p for p in root.glob("*/*") if p.is_dir()]) == 2


def test_torchrun_two_cpu_processes(tmp_path, voc_root):
    root = tmp_path / "runs"
    log = _run(
        ["scripts/train.py", *TINY, f"run_root={root}", f"dataset.root={voc_root}", "device=cpu"],
        tmp_path,
        torchrun=True,
    )
    run = _only_run_dir(root)  # rank 0 alone creates the run dir
    ckpt = torch.load(run / "last.pt", weights_only=True)
    assert ckpt["step"] == 2
    assert "hIoU" in log


def test_missing_dataset_root_is_one_clear_error(tmp_path, monkeypatch, capsys):
    from zss.cli.train import train_main

    code, _, err = run_main(
        train_main, ["experiment=demo", "dataset.root=/nonexistent/voc", f"run_root={tmp_path}"], monkeypatch, capsys
    )
    assert code != 0
    assert "/nonexistent/voc" in err


def test_run_info_is_never_overwritten_on_resume(tmp_path):
    from zss.cli.common import save_run_info

    first = save_run_info(tmp_path)
    assert [p.name for p in first] == ["overrides.yaml", "versions.json"]
    (tmp_path / "overrides.yaml").write_text("- marker\n")
    again = save_run_info(tmp_path)  # a resumed run in the same directory
    assert [p.name for p in again] == ["overrides.resume-1.yaml", "versions.resume-1.json"]
    assert (tmp_path / "overrides.yaml").read_text() == "- marker\n"
    assert {"torch", "timm", "open_clip", "zss"} <= set(json.loads(again[1].read_text()))
