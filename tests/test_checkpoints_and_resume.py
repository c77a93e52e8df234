"""Checkpoints and resume: a checkpoint never calls arbitrary code when loaded, resume picks only the same run and is
exact, no NaN checkpoint is written, stop signals (SIGTERM/SIGINT/SIGUSR1) save the work, run dirs stay clean,
eval result files are named by their settings and never clash, selection on the test split is opt-in, and
from_checkpoint rebuilds a method without Hydra."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch.utils.data import Subset

from conftest import ENV, REPO, TINY, run_script, train_in_process
from zss.data.classes import get_benchmark
from zss.data.dataset import build_dataset
from zss.data.transforms import build_test_transform, build_train_transform
from zss.engine.trainer import TrainConfig, Trainer, find_resume, new_run_dir
from zss.methods.baseline import SeenOnlyBaseline
from zss.methods.clip_zss import ClipZSS
from zss.models.student import Student
from zss.teachers.oracle import OracleTeacher

TESTS = Path(__file__).resolve().parent


# ------------------------------------------------------------------------------------------------ helpers
def _sets(voc_root, crop=64):
    tf = build_train_transform(crop_size=(crop, crop), scale=(4 * crop, crop), ratio_range=(0.75, 1.5))
    train = build_dataset("voc20", voc_root, split="train", hide_unseen=True, transform=tf)
    val = build_dataset(
        "voc20", voc_root, split="val", hide_unseen=False, transform=build_test_transform(scale=(4 * crop, crop))
    )
    return train, Subset(val, range(3))


def _method(seed=0, kind="baseline", noise=0.1):
    torch.manual_seed(seed)
    bench = get_benchmark("voc20")
    teacher = OracleTeacher(list(bench.classes), embed_dim=16, patch_size=16, noise=noise, seed=0)
    student = Student("test_resnet", embed_dim=16, decoder="mlp", decoder_channels=16)
    if kind == "clip_zss":  # GLM with a CLS bank (filled within the run) and PLM pseudo labels
        return ClipZSS.from_flat(
            student,
            teacher,
            list(bench.classes),
            list(bench.unseen),
            list(bench.templates),
            bank_size=16,
            pl_scales=(2,),
            pl_min_area=1,
            synth_depth=1,
            synth_heads=2,
        )
    return SeenOnlyBaseline(student, teacher, list(bench.classes), list(bench.unseen), list(bench.templates))


def _cfg(**kw):
    base = dict(
        max_steps=4,
        batch_size=4,
        micro_batch_size=2,
        lr=1e-3,
        warmup_steps=1,
        amp="fp32",
        eval_interval=0,
        log_interval=1,
        ckpt_interval=0,
        num_workers=0,
        eval_mode="whole",
        overlay_count=1,
    )
    base.update(kw)
    return TrainConfig(**base)


def _edited_ckpt(src: Path, dst: Path, edit) -> Path:
    ckpt = torch.load(src, weights_only=True)
    edit(ckpt["config"])
    torch.save(ckpt, dst)
    torch.load(dst, weights_only=True)  # still a weights_only-loadable file, as a downloaded one would be
    return dst


# ------------------------------------------------------------------- 1. checkpoints never call arbitrary code
def test_checkpoint_config_cannot_call_arbitrary_functions(tiny_ckpt, tmp_path):
    from zss.cli.common import load_for_inference

    marker = tmp_path / "written_by_checkpoint.txt"
    path = {"_target_": "pathlib.Path", "_args_": [str(marker)]}
    nested_teacher = lambda c: c["teacher"].update(  # noqa: E731  (Hydra instantiates nested nodes first)
        noise={"_target_": "pathlib.Path.write_text", "self": path, "data": "pwned"}
    )
    nested_method = lambda c: c["method"].update(  # noqa: E731
        transductive={"_target_": "pathlib.Path.touch", "self": path}
    )
    other_class = lambda c: c["teacher"].update(_target_="pathlib.Path.touch")  # noqa: E731
    for i, edit in enumerate((nested_teacher, nested_method, other_class)):
        bad = _edited_ckpt(tiny_ckpt, tmp_path / f"bad{i}.pt", edit)
        try:
            load_for_inference(bad)
            err = None
        except Exception as e:  # noqa: BLE001 - checked below, after the marker
            err = e
        assert not marker.exists(), f"checkpoint {i} ran code: {marker} was written"
        assert type(err).__name__ == "UntrustedTargetError" and isinstance(err, ValueError), repr(err)
        assert "_target_" in str(err) and str(bad) in str(err)  # names the key and the file
    import zss

    with pytest.raises(ValueError, match="_target_"):
        zss.from_checkpoint(tmp_path / "bad0.pt")
    assert not marker.exists()


# ------------------------------------------------------------------- 2. resume picks only the same run
def _fake_run(root: Path, name: str, config: dict, stamp: str) -> Path:
    run = root / name / stamp
    run.mkdir(parents=True)
    torch.save({"state": {}, "config": config, "step": 1, "optimizer": {}, "scaler": {}, "best": {}}, run / "last.pt")
    return run / "last.pt"


def test_resume_auto_picks_only_a_run_of_the_same_config(tmp_path):
    base = {
        "name": "x",
        "run_root": str(tmp_path),
        "resume": None,
        "dataset": {"root": "/a"},
        "trainer": {"seed": 0, "lr": 1e-3, "log_interval": 50, "max_steps": 10},
    }
    seed0 = _fake_run(tmp_path, "x", base, "s0")
    time.sleep(0.01)
    seed1_cfg = json.loads(json.dumps(base))
    seed1_cfg["trainer"]["seed"] = 1
    seed1 = _fake_run(tmp_path, "x", seed1_cfg, "s1")  # the newest run
    ask = json.loads(json.dumps(base))
    ask.update(resume="auto", run_root="/elsewhere/on/another/node")
    ask["trainer"]["log_interval"] = 5  # harmless keys may differ
    ask["dataset"]["root"] = "/b"
    assert find_resume(tmp_path, "x", config=ask) == seed0
    assert find_resume(tmp_path, "x", config=seed1_cfg) == seed1
    seed2 = json.loads(json.dumps(base))
    seed2["trainer"]["seed"] = 2
    assert find_resume(tmp_path, "x", config=seed2) is None  # a seed sweep gets one run per seed
    longer = json.loads(json.dumps(base))
    longer["trainer"]["max_steps"] = 20  # the poly schedule depends on it: another run
    assert find_resume(tmp_path, "x", config=longer) is None


def test_resume_path_with_changed_config_is_refused_unless_allowed(tmp_path):
    from omegaconf import OmegaConf

    from zss.cli.common import resolve_dirs

    stored = {"name": "x", "trainer": {"seed": 0, "lr": 1e-3, "num_workers": 2}}
    ckpt = _fake_run(tmp_path, "x", stored, "s0")
    now = {"name": "x", "trainer": {"seed": 0, "lr": 1e-2, "num_workers": 0}}
    cfg = OmegaConf.create({"resume": str(ckpt), "run_root": str(tmp_path), "name": "x"})
    with pytest.raises(ValueError, match=r"trainer\.lr: 0\.001 -> 0\.01.*resume_allow_changes=true") as e:
        resolve_dirs(cfg, now)
    assert "num_workers" not in str(e.value)  # harmless keys are not reported
    cfg.resume_allow_changes = True
    assert resolve_dirs(cfg, now) == (ckpt.parent, ckpt)
    same = {"name": "x", "trainer": {"seed": 0, "lr": 1e-3, "num_workers": 8}}
    cfg.resume_allow_changes = False
    assert resolve_dirs(cfg, same) == (ckpt.parent, ckpt)


@pytest.mark.slow  # one Hydra multirun of two 2-step trainings (~30 s on 2 shared cores)
def test_seed_sweep_with_resume_auto_gives_one_run_per_seed(tmp_path, voc_root):
    root = tmp_path / "runs"
    args = [
        "scripts/train.py",
        "-m",
        *TINY,
        "trainer.seed=0,1",
        "resume=auto",
        f"run_root={root}",
        f"dataset.root={voc_root}",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
    ]
    run_script(args)
    runs = sorted(p for p in root.glob("*/*") if p.is_dir())
    assert len(runs) == 2, runs
    seeds = sorted(json.loads((r / "config.json").read_text())["trainer"]["seed"] for r in runs)
    assert seeds == [0, 1]
    for r in runs:
        assert torch.load(r / "last.pt", weights_only=True)["step"] == 2


# ------------------------------------------------------------------- 3. no checkpoint with non-finite weights
def test_non_finite_buffer_stops_the_run_and_keeps_the_last_good_checkpoint(voc_root, tmp_path):
    train, _ = _sets(voc_root)
    m = _method()
    bn = next(mod for mod in m.student.modules() if isinstance(mod, torch.nn.BatchNorm2d))
    original = m.on_step

    def poison(step, max_steps):  # what lr 1e2 did: a BN running_var goes NaN while the loss stays finite
        if step == 2:
            bn.running_var.fill_(float("nan"))
        return original(step, max_steps)

    m.on_step = poison
    run = new_run_dir(tmp_path, "nan")
    t = Trainer(m, train, None, _cfg(max_steps=4, ckpt_interval=1), run)
    with pytest.raises(FloatingPointError, match=r"after step 3.*running_var.*step 2 is kept"):
        t.fit()
    ckpt = torch.load(run / "last.pt", weights_only=True)
    assert ckpt["step"] == 2
    assert all(torch.isfinite(v).all() for v in ckpt["state"].values() if v.is_floating_point())


# ------------------------------------------------------------------- 4. signals save the work
def _signal_child(run_dir: str, signame: str) -> None:
    """Run in a child process: a tiny training that sends itself ``signame`` at the start of step 3."""
    from conftest import _find_voc

    train, _ = _sets(_find_voc())
    m = _method()
    original = m.on_step

    def send(step, max_steps):
        if step == 2:
            os.kill(os.getpid(), getattr(signal, signame))
        return original(step, max_steps)

    m.on_step = send
    if signame == "SIGUSR1":  # a handler installed before (submitit's requeue) must run after last.pt exists

        def requeue(signum, frame):
            ck = Path(run_dir) / "last.pt"
            step = torch.load(ck, weights_only=True)["step"] if ck.is_file() else None
            (Path(run_dir) / "requeued.json").write_text(json.dumps({"step": step}))

        signal.signal(signal.SIGUSR1, requeue)
    t = Trainer(m, train, None, _cfg(max_steps=8), Path(run_dir))
    t.fit()
    print(json.dumps({"stopped_by": t.stopped_by, "step": t.step}))


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGINT", "SIGUSR1"])
def test_stop_signal_finishes_the_step_and_writes_last_pt(signame, tmp_path, voc_root):
    run = new_run_dir(tmp_path, "sig")
    code = (
        f"import sys; sys.path.insert(0, {str(TESTS)!r}); import test_checkpoints_and_resume as t; "
        f"t._signal_child({str(run)!r}, {signame!r})"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res == {"stopped_by": signame, "step": 3}
    assert torch.load(run / "last.pt", weights_only=True)["step"] == 3
    if signame == "SIGUSR1":
        assert json.loads((run / "requeued.json").read_text()) == {"step": 3}
    assert not list(run.glob(".*.tmp"))


def _train_until_logged(root: Path, *extra: str, group: bool = False) -> subprocess.Popen:
    """``scripts/train.py`` (TINY, 5000 steps) started in its own process group when ``group``; returns once
    it has logged a step."""
    args = [sys.executable, "scripts/train.py", *TINY, "trainer.max_steps=5000", f"run_root={root}", *extra]
    proc = subprocess.Popen(
        args, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=group
    )
    deadline = time.time() + 240
    while time.time() < deadline and not list(root.glob("*/*/metrics.jsonl")):
        if proc.poll() is not None:
            pytest.fail(proc.stdout.read()[-3000:])
        time.sleep(0.2)
    return proc


def _stopped_run(proc: subprocess.Popen, root: Path, signame: str) -> tuple[Path, int, str]:
    """(run dir, step of its last.pt, log) after ``proc`` exited as the signal asks (128 + its number)."""
    try:
        log, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.Signals[signame], log[-3000:]
    run = next(root.glob("*/*"))
    step = torch.load(run / "last.pt", weights_only=True)["step"]
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert 1 <= step < 5000 and max(r["step"] for r in rows) == step
    assert signame in log and "resume=" in log and "Traceback" not in log, log[-3000:]
    return run, step, log


def test_sigterm_to_scripts_train_writes_last_pt_and_exits_143(tmp_path, voc_root):
    root = tmp_path / "runs"
    proc = _train_until_logged(root, f"dataset.root={voc_root}")
    proc.send_signal(signal.SIGTERM)
    _stopped_run(proc, root, "SIGTERM")


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGUSR1"])
def test_signal_to_the_process_group_with_workers_writes_a_resumable_last_pt(signame, tmp_path, voc_root):
    """SLURM, scancel, ``timeout`` and submitit signal the whole process group: the DataLoader workers ignore it
    and the main process saves last.pt and exits 128 + the signal (it ended in a worker RuntimeError, exit 1)."""
    root = tmp_path / "runs"
    proc = _train_until_logged(root, f"dataset.root={voc_root}", "trainer.num_workers=2", group=True)
    os.killpg(proc.pid, getattr(signal, signame))
    run, step, log = _stopped_run(proc, root, signame)
    assert "DataLoader worker" not in log
    train_in_process(
        [
            *TINY,
            f"trainer.max_steps={step + 1}",
            "trainer.num_workers=2",
            f"run_root={root}",
            f"dataset.root={voc_root}",
            f"resume={run / 'last.pt'}",
            "resume_allow_changes=true",
        ]
    )
    assert torch.load(run / "last.pt", weights_only=True)["step"] == step + 1


# ------------------------------------------------------------------- 5. exact resume
def test_resume_is_bitwise_exact_with_cls_bank_and_oracle_noise(voc_root, tmp_path):
    train, _ = _sets(voc_root)
    a = _method(kind="clip_zss")
    Trainer(a, train, None, _cfg(max_steps=4), new_run_dir(tmp_path, "a")).fit()

    b = _method(kind="clip_zss")
    run_b = new_run_dir(tmp_path, "b")
    Trainer(b, train, None, _cfg(max_steps=4), run_b).fit(stop_at=2)  # "killed" after step 2
    c = _method(seed=123, kind="clip_zss")  # different init: everything must come from the checkpoint
    Trainer(c, train, None, _cfg(max_steps=4), run_b, resume_from=run_b / "last.pt").fit()
    for (k, va), vc in zip(a.state_dict().items(), c.state_dict().values()):
        assert torch.equal(va, vc), f"{k} differs after resume"
    assert len(a.glm.bank) > 0 and torch.equal(a.glm.bank.get(), c.glm.bank.get())
    assert {"@teacher", "glm.bank"} <= set(torch.load(run_b / "last.pt", weights_only=True)["train_state"])


# ------------------------------------------------------------------- 6. run dir hygiene, eval files
def test_resume_cleans_stale_temp_files_and_metrics_rows_after_the_checkpoint(voc_root, tmp_path):
    train, _ = _sets(voc_root)
    m = _method()
    original = m.on_step

    def crash(step, max_steps):  # killed in step 4: rows 1-3 logged, last.pt of step 2
        if step == 3:
            raise RuntimeError("killed")
        return original(step, max_steps)

    m.on_step = crash
    run = new_run_dir(tmp_path, "r")
    with pytest.raises(RuntimeError, match="killed"):
        Trainer(m, train, None, _cfg(max_steps=4, ckpt_interval=2), run).fit()
    stale = [run / ".last.pt.k1ll3d.tmp", run / ".best_on_val_split.pt.x.tmp"]
    for f in stale:
        f.write_bytes(b"half a checkpoint")
    (run / "notes.txt").write_text("mine")
    Trainer(_method(), train, None, _cfg(max_steps=4, ckpt_interval=2), run, resume_from=run / "last.pt").fit()
    assert not any(f.exists() for f in stale) and (run / "notes.txt").is_file()
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]


def _compose(name, overrides):
    from hydra import compose, initialize_config_dir

    from zss.cli.common import CONFIG_DIR

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(name, overrides=overrides)


def test_eval_files_are_named_by_settings_and_out_dir_is_checked_first(tiny_ckpt, voc_root, tmp_path, monkeypatch):
    import zss.cli.eval as cli

    out = tmp_path / "ev"
    base = [f"ckpt={tiny_ckpt}", f"dataset.root={voc_root}", f"out_dir={out}", "efficiency=false"]
    gz = cli.evaluate_checkpoint(_compose("eval", base))
    zs = cli.evaluate_checkpoint(_compose("eval", [*base, "eval.label_space=unseen", "eval.seen_bias=0.5"]))
    (fa,) = out.glob("eval_voc20_all_whole_sb0_*_val_results.json")
    (fb,) = out.glob("eval_voc20_unseen_whole_sb0.5_*_val_results.json")
    a, b = json.loads(fa.read_text()), json.loads(fb.read_text())
    assert a["settings"]["label_space"] == "all" and b["settings"] == {
        "benchmark": "voc20",
        "split": "val",
        "label_space": "unseen",
        "eval_mode": "whole",
        "seen_bias": 0.5,
        "amp": "fp32",
        "data_root": str(voc_root.resolve()),
        "test_scale": [256, 64],
        "eval_crop": [224, 224],
        "eval_stride": [160, 160],
        "checkpoint": str(tiny_ckpt.resolve()),
        "step": 2,
    }
    assert a["pAcc"] == pytest.approx(gz["pAcc"]) and b["pAcc"] == pytest.approx(zs["pAcc"])
    # another data root or test scale (which once replaced the run's results file) gets its own file
    other = tmp_path / "voc_copy"
    shutil.copytree(voc_root, other)
    cli.evaluate_checkpoint(_compose("eval", [*base[:1], f"dataset.root={other}", *base[2:]]))
    cli.evaluate_checkpoint(_compose("eval", [*base, "dataset.test_scale=[128,32]"]))
    assert len(list(out.glob("eval_voc20_all_whole_sb0_*_val_results.json"))) == 3
    assert json.loads(fa.read_text()) == a  # the first result is untouched

    def never(*a, **k):
        raise AssertionError("evaluated before checking that out_dir is writable")

    monkeypatch.setattr(cli, "evaluate", never)
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(OSError, match="out_dir="):
        cli.evaluate_checkpoint(_compose("eval", [*base[:2], f"out_dir={blocker / 'sub'}", "efficiency=false"]))


# ------------------------------------------------------------------- 7. selection on the test split is opt-in
def test_best_checkpoint_is_opt_in_and_named_for_the_split_it_was_chosen_on(voc_root, tmp_path):
    train, val = _sets(voc_root)
    run = new_run_dir(tmp_path, "off")
    res = Trainer(_method(), train, val, _cfg(max_steps=2, eval_interval=1), run).fit()
    assert res["step"] == 2 and "best_on_val_split" not in res
    assert not list(run.glob("best*.pt"))
    run = new_run_dir(tmp_path, "on")
    res = Trainer(_method(), train, val, _cfg(max_steps=2, eval_interval=1, select_best_on_val=True), run).fit()
    assert res["step"] == 2  # the results are the last iteration's
    best = res["best_on_val_split"]
    assert best["file"] == "best_on_val_split.pt" and "test split" in best["selected_on"]
    assert torch.load(run / "best_on_val_split.pt", weights_only=True)["step"] == best["step"]
    assert not (run / "best.pt").exists()
    assert math.isfinite(best["hIoU"])


# ------------------------------------------------------------------- 11. Python API without Hydra
def test_from_checkpoint_without_hydra_matches_the_cli_loader(tiny_ckpt):
    import zss
    from zss.cli.common import load_for_inference
    from zss.methods import ClipZSS as Exported

    m = zss.from_checkpoint(tiny_ckpt)
    ref, _ = load_for_inference(tiny_ckpt)
    assert isinstance(m, Exported) and m.teacher is None and not m.training
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(m.predict(x), ref.predict(x))
    code = (
        "import sys, torch, zss; from zss.models import Student; m = zss.from_checkpoint(sys.argv[1]); "
        "p = m.predict(torch.zeros(1, 3, 64, 64)); assert isinstance(m.student, Student); "
        "print(sorted(k for k in sys.modules if k.split('.')[0] in ('hydra', 'omegaconf')), tuple(p.shape))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tiny_ckpt)], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().startswith("[] (1, 20,"), out.stdout  # voc20: 20 classes
