"""Trainer behaviour users rely on: exact resume, what goes into optimizer and checkpoints,
atomic checkpoints, never-overwritten run dirs, the lr schedule."""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils.data import Subset

from zss.data.classes import get_benchmark
from zss.data.dataset import build_dataset
from zss.data.transforms import build_test_transform, build_train_transform
from zss.engine.trainer import TrainConfig, Trainer, lr_factor, new_run_dir
from zss.methods.baseline import SeenOnlyBaseline
from zss.models.student import Student
from zss.teachers.oracle import OracleTeacher


def _sets(voc_root, crop=64):
    tf = build_train_transform(crop_size=(crop, crop), scale=(4 * crop, crop), ratio_range=(0.75, 1.5))
    train = build_dataset("voc20", voc_root, split="train", hide_unseen=True, transform=tf)
    val = build_dataset(
        "voc20", voc_root, split="val", hide_unseen=False, transform=build_test_transform(scale=(4 * crop, crop))
    )
    return train, Subset(val, range(3))


def _method(seed=0):
    torch.manual_seed(seed)
    bench = get_benchmark("voc20")
    teacher = OracleTeacher(list(bench.classes), embed_dim=16, patch_size=16, noise=0.1, seed=0)
    student = Student("test_resnet", embed_dim=16, decoder="mlp", decoder_channels=16)
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
        ckpt_interval=2,
        num_workers=0,
        eval_mode="whole",
        overlay_count=1,
    )
    base.update(kw)
    return TrainConfig(**base)


def test_resume_gives_same_parameters_as_uninterrupted(voc_root, tmp_path):
    train, _ = _sets(voc_root)
    a = _method()
    Trainer(a, train, None, _cfg(max_steps=4), new_run_dir(tmp_path, "a")).fit()

    b = _method()
    run_b = new_run_dir(tmp_path, "b")
    Trainer(b, train, None, _cfg(max_steps=4, ckpt_interval=0), run_b).fit(stop_at=2)  # "interrupted"
    c = _method(seed=123)  # different init: everything must come from the checkpoint
    Trainer(c, train, None, _cfg(max_steps=4), run_b, resume_from=run_b / "last.pt").fit()
    for (k, va), vc in zip(a.state_dict().items(), c.state_dict().values()):
        assert torch.equal(va, vc), f"{k} differs after resume"


def test_only_student_in_optimizer_and_checkpoint(voc_root, tmp_path):
    train, val = _sets(voc_root)
    m = _method()
    run = new_run_dir(tmp_path, "x")
    t = Trainer(m, train, val, _cfg(max_steps=2, eval_interval=2, select_best_on_val=True), run, config={"k": 1})
    opt_params = {id(p) for g in t.optimizer.param_groups for p in g["params"]}
    assert opt_params == {id(p) for p in m.student.parameters()}
    t.fit()
    for name in ("last.pt", "best_on_val_split.pt"):
        ckpt = torch.load(run / name, weights_only=True)  # plain dict, no pickled objects
        assert all(k.startswith("student.") or k == "text_embeds" for k in ckpt["state"])
        assert ckpt["config"] == {"k": 1} and ckpt["step"] == 2
        assert {"torch", "timm", "open_clip"} <= set(ckpt["versions"])
        assert ckpt["teacher"]
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert any(r["split"] == "val" and "hIoU" in r for r in lines)
    assert any(r["split"] == "train" and "loss" in r and "lr" in r for r in lines)
    assert list((run / "tb").glob("events.out.tfevents.*"))
    assert not list(run.glob(".*.tmp"))  # atomic writes leave no temp files


def test_teacher_frozen_and_not_registered():
    m = _method()
    assert "teacher" not in dict(m.named_children())
    assert not any(k.startswith("teacher") for k in m.state_dict())


def test_run_dir_never_reused(tmp_path):
    a, b = new_run_dir(tmp_path, "n"), new_run_dir(tmp_path, "n")
    assert a != b and a.is_dir() and b.is_dir()


def test_lr_schedule_warmup_then_poly():
    cfg = TrainConfig(max_steps=100, lr=1.0, warmup_steps=10, warmup_ratio=1e-6, poly_power=0.9)
    f = [lr_factor(s, cfg) for s in range(101)]
    assert f[0] == pytest.approx(1e-6, abs=1e-9)
    assert f[10] == pytest.approx((1 - 10 / 100) ** 0.9)
    assert all(f[i] < f[i + 1] for i in range(9)) and all(f[i] > f[i + 1] for i in range(10, 100))
    assert f[100] == 0.0


def test_bad_global_batch_is_a_clear_error(voc_root, tmp_path):
    train, _ = _sets(voc_root)
    with pytest.raises(ValueError, match="batch_size"):
        Trainer(_method(), train, None, _cfg(batch_size=5, micro_batch_size=2), new_run_dir(tmp_path, "e"))


def test_periodic_eval_does_not_change_training(voc_root, tmp_path):
    train, val = _sets(voc_root)
    a, b = _method(), _method()
    # a worker process loads the data, so the main process's RNG (dropout) is not re-seeded per sample
    Trainer(a, train, val, _cfg(max_steps=3, eval_interval=1, num_workers=1), new_run_dir(tmp_path, "a")).fit()
    Trainer(b, train, val, _cfg(max_steps=3, eval_interval=0, num_workers=1), new_run_dir(tmp_path, "b")).fit()
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), f"{k} depends on eval_interval"


def _mmcv_poly_lr(base, step, cfg):
    """mmcv PolyLrUpdaterHook + linear warm-up for one param group (the rule mmseg configs use)."""
    lr = (base - cfg.min_lr) * (1 - step / cfg.max_steps) ** cfg.poly_power + cfg.min_lr
    if step < cfg.warmup_steps:
        lr *= 1 - (1 - step / cfg.warmup_steps) * (1 - cfg.warmup_ratio)
    return lr


def test_scheduler_matches_mmcv_poly_and_head_floor_is_min_lr(voc_root, tmp_path):
    train, _ = _sets(voc_root)
    cfg = _cfg(max_steps=6, lr=1e-3, head_lr_mult=10.0, warmup_steps=2, min_lr=1e-4)
    t = Trainer(_method(), train, None, cfg, new_run_dir(tmp_path, "s"))
    assert isinstance(t.scheduler, torch.optim.lr_scheduler.LambdaLR)
    bases = [g["initial_lr"] for g in t.optimizer.param_groups]
    assert max(bases) == pytest.approx(1e-2)  # the head group
    for step in range(cfg.max_steps + 1):
        for g, base in zip(t.optimizer.param_groups, bases):
            assert g["lr"] == pytest.approx(_mmcv_poly_lr(base, step, cfg), rel=1e-9), (step, base)
        t.optimizer.step()
        t.scheduler.step()
    # at the end every group (head x10 included) sits on the same absolute floor, not head_lr_mult x min_lr
    assert t.scheduler.get_last_lr() == pytest.approx([cfg.min_lr] * len(bases))


def test_resume_restores_scheduler_state(voc_root, tmp_path):
    train, _ = _sets(voc_root)
    cfg = _cfg(max_steps=4, ckpt_interval=0, min_lr=1e-5)
    run = new_run_dir(tmp_path, "r")
    Trainer(_method(), train, None, cfg, run).fit(stop_at=2)
    ckpt = torch.load(run / "last.pt", weights_only=True)
    assert ckpt["scheduler"]["last_epoch"] == 2
    want = [g["initial_lr"] * lr_factor(2, cfg, g["initial_lr"]) for g in ckpt["optimizer"]["param_groups"]]
    t = Trainer(_method(seed=1), train, None, cfg, run, resume_from=run / "last.pt")
    assert t.scheduler.last_epoch == 2
    assert [g["lr"] for g in t.optimizer.param_groups] == pytest.approx(want)
    t.scheduler.step()  # continues from step 2, not from 0
    assert t.scheduler.get_last_lr() == pytest.approx(
        [g["initial_lr"] * lr_factor(3, cfg, g["initial_lr"]) for g in t.optimizer.param_groups]
    )


def test_eval_summary_goes_through_logging_not_print(voc_root, tmp_path, caplog, capsys):
    import logging

    train, val = _sets(voc_root)
    t = Trainer(_method(), train, val, _cfg(), new_run_dir(tmp_path, "l"))
    with caplog.at_level(logging.INFO, logger="zss.engine.trainer"):
        t.run_eval()
    assert any("[step 0]" in r.getMessage() and "hIoU" in r.getMessage() for r in caplog.records)
    assert "[step 0]" not in capsys.readouterr().out
