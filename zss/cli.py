"""Composition root: the only module in zss that imports Hydra / OmegaConf.

``scripts/train.py`` and ``scripts/eval.py`` call :func:`train_main` / :func:`eval_main`. Every
object is built here from the composed config with plain values and passed on; nothing below
this layer sees a config object.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import hydra
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from zss.data.classes import get_benchmark
from zss.data.dataset import build_dataset
from zss.data.transforms import build_test_transform, build_train_transform
from zss.engine import dist as zdist
from zss.engine.checkpoint import load_checkpoint
from zss.engine.evaluate import evaluate
from zss.engine.metrics import format_table, to_json
from zss.engine.trainer import Trainer, TrainConfig, find_resume, new_run_dir
from zss.methods.base import Method

CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "configs")


# ---------------------------------------------------------------------- builders
def build_benchmark(ds: DictConfig):
    return get_benchmark(ds.benchmark, ds.get("split"))


def build_data(ds: DictConfig, bench, train: bool = True, val_split: str | None = None):
    """(train_set, val_set) from the dataset config group."""
    mean, std = tuple(ds.mean), tuple(ds.std)
    val_tf = build_test_transform(scale=tuple(ds.test_scale), mean=mean, std=std)
    val_set = build_dataset(ds.benchmark, ds.root, split=val_split or ds.val_split, hide_unseen=False,
                            transform=val_tf, benchmark_split=ds.get("split"))
    val_set.mean, val_set.std = mean, std
    train_set = None
    if train:
        tf = build_train_transform(
            crop_size=tuple(ds.crop_size), scale=tuple(ds.scale), ratio_range=tuple(ds.ratio_range),
            cat_max_ratio=ds.cat_max_ratio, flip_prob=ds.flip_prob, photometric=ds.photometric, mean=mean, std=std,
        )
        train_set = build_dataset(ds.benchmark, ds.root, split=ds.train_split, hide_unseen=ds.hide_unseen,
                                  transform=tf, benchmark_split=ds.get("split"))
    return train_set, val_set


def build_teacher(cfg: DictConfig, bench):
    kwargs = {}
    if str(cfg.teacher._target_).endswith("OracleTeacher"):
        kwargs["classnames"] = list(bench.classes)
    return instantiate(cfg.teacher, **kwargs)


def build_student(model_cfg: DictConfig, embed_dim: int):
    return instantiate(model_cfg, embed_dim=embed_dim)


def templates_for(ds: DictConfig, bench) -> list[str]:
    return list(ds.templates) if ds.get("templates") else list(bench.templates)


def _without(node: DictConfig, *keys: str) -> DictConfig:
    """Copy of a config node without bookkeeping keys that are not constructor arguments."""
    out = OmegaConf.to_container(node, resolve=True)
    for k in keys:
        out.pop(k, None)
    return OmegaConf.create(out)


def _non_null(node) -> dict:
    """The keys of an override node that were actually set (not null)."""
    if node is None:
        return {}
    return {k: v for k, v in OmegaConf.to_container(node, resolve=True).items() if v is not None}


def _resolve_dirs(cfg: DictConfig) -> tuple[Path, Path | None]:
    """(run_dir, resume checkpoint). ``resume``: null (new run), ``auto`` (newest last.pt of this
    experiment name, or a new run), or a path to a last.pt."""
    resume = cfg.get("resume")
    ckpt = None
    if resume == "auto":
        ckpt = find_resume(cfg.run_root, cfg.name)
    elif resume:
        ckpt = Path(resume)
        if not ckpt.is_file():
            raise FileNotFoundError(f"resume={resume}: no such checkpoint (use resume=auto or a path to last.pt)")
    if ckpt is not None:
        return ckpt.parent, ckpt
    run_dir = new_run_dir(cfg.run_root, cfg.name) if zdist.is_main() else None
    if zdist.is_dist():
        obj = [str(run_dir) if run_dir else None]
        torch.distributed.broadcast_object_list(obj, src=0)
        run_dir = Path(obj[0])
    return Path(run_dir), None


def train(cfg: DictConfig) -> dict | None:
    """Build everything from ``cfg`` and train; returns the final evaluation results."""
    device = zdist.init_distributed(cfg.device)
    torch.manual_seed(cfg.trainer.seed)
    bench = build_benchmark(cfg.dataset)
    train_set, val_set = build_data(cfg.dataset, bench)
    teacher = build_teacher(cfg, bench)
    embed_dim = int(teacher.embed_dim)
    student = build_student(cfg.model, embed_dim)
    method = instantiate(_without(cfg.method, "name"), student=student, teacher=teacher, classnames=list(bench.classes),
                         unseen=list(bench.unseen), templates=templates_for(cfg.dataset, bench))
    run_dir, resume_ckpt = _resolve_dirs(cfg)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    resolved["model"]["embed_dim"] = embed_dim
    tcfg = TrainConfig(**OmegaConf.to_container(cfg.trainer, resolve=True))
    if zdist.is_main():
        print(f"zss: run dir {run_dir}")
        ident = method.teacher_identity()
        note = _teacher_note(ident)
        print(f"zss: teacher {ident.get('model_name')} (weights: {ident.get('pretrained')})"
              + (f"\nzss: NOTE {note}" if note else ""), flush=True)
    trainer = Trainer(method, train_set, val_set, tcfg, run_dir, config=resolved, resume_from=resume_ckpt,
                      device=device)
    results = trainer.fit()
    if zdist.is_main() and results is not None:
        _report(results, run_dir, "final", note=_teacher_note(method.teacher_identity()))
    zdist.cleanup()
    return results


def _report(results: dict, out_dir: Path, tag: str, note: str | None = None) -> None:
    table = format_table(results)
    print("\n" + table)
    if note:
        print(f"\nNOTE: {note}")
    (out_dir / f"{tag}_results.md").write_text(table + (f"\n\nNOTE: {note}\n" if note else "\n"))
    (out_dir / f"{tag}_results.json").write_text(json.dumps(to_json(results), indent=2))


def load_for_inference(
    ckpt_path: str | Path,
    classnames: list[str] | None = None,
    unseen: list[int] | None = None,
    templates: list[str] | None = None,
    teacher_overrides: dict | None = None,
    device: torch.device | str = "cpu",
) -> tuple[Method, dict]:
    """Rebuild a trained method from a checkpoint for inference; returns ``(method, ckpt)``.

    The method is instantiated exactly as in training (same class and arguments) around a teacher
    of the same architecture, the checkpoint state is loaded strictly, and the teacher is then
    dropped: inference runs the student (plus whatever frozen parts the method registered, e.g.
    Chimera-Seg's CSH). For the training vocabulary the teacher's weights are not needed (random
    init, architecture only; text embeds come from the checkpoint). For another vocabulary
    (``classnames``), the teacher is loaded with its real weights (``teacher_overrides`` may point
    ``pretrained`` at a local file) and only its text encoder is used.

    Raises:
        FileNotFoundError / ValueError: from :func:`load_checkpoint`.
    """
    ckpt = load_checkpoint(ckpt_path, map_location="cpu")
    tcfg = OmegaConf.create(ckpt["config"])
    bench = build_benchmark(tcfg.dataset)
    new_vocab = classnames is not None and list(classnames) != list(ckpt["classnames"])
    tcfg.teacher = OmegaConf.merge(tcfg.teacher, teacher_overrides or {})
    if not new_vocab and str(tcfg.teacher._target_).endswith("FrozenCLIP"):
        tcfg.teacher.pretrained = None  # architecture only: every trained/frozen tensor is in the checkpoint
    teacher = build_teacher(tcfg, bench)
    model_cfg = OmegaConf.merge(tcfg.model, {"pretrained": False})  # weights come from the checkpoint
    student = build_student(_without(model_cfg, "embed_dim"), int(tcfg.model.embed_dim))
    method = instantiate(_without(tcfg.method, "name"), student=student, teacher=teacher,
                         classnames=list(ckpt["classnames"]), unseen=list(ckpt["unseen"]),
                         templates=templates_for(tcfg.dataset, bench), text_embeds=ckpt["state"]["text_embeds"])
    method.load_state_dict(ckpt["state"])
    if new_vocab:
        tmpl = templates or templates_for(tcfg.dataset, bench)
        method.set_vocabulary(list(classnames), list(unseen or []), teacher.text(list(classnames), tmpl))
    method.teacher_info = dict(ckpt.get("teacher") or {})
    object.__setattr__(method, "teacher", None)
    return method.to(device).eval(), ckpt


def evaluate_checkpoint(cfg: DictConfig) -> dict:
    """Evaluate ``cfg.ckpt`` with the dataset / inference settings it was trained with (each
    overridable from the command line: ``dataset.root=...``, ``split=train``, ``eval.*``). A dataset
    preset other than the training one (``dataset=context59``...) is evaluated over its own full
    class list (open-vocabulary / cross-dataset), with text embeds from the teacher's text encoder."""
    device = zdist.init_distributed(cfg.device)
    ckpt = load_checkpoint(cfg.ckpt, map_location="cpu")
    tcfg = OmegaConf.create(ckpt["config"])
    ds = OmegaConf.merge(tcfg.dataset, _non_null(cfg.get("dataset")))
    bench = build_benchmark(ds)
    method, ckpt = load_for_inference(
        cfg.ckpt, classnames=list(bench.classes), unseen=list(bench.unseen), templates=templates_for(ds, bench),
        teacher_overrides=_non_null(cfg.get("teacher")), device=device,
    )
    _, val_set = build_data(ds, bench, train=False, val_split=cfg.split or ds.val_split)
    ev = OmegaConf.merge(
        {k: tcfg.trainer[k] for k in ("eval_mode", "eval_crop", "eval_stride", "eval_crop_batch", "label_space",
                                       "seen_bias", "amp")},
        _non_null(cfg.get("eval")),
    )
    amp = torch.bfloat16 if ev.amp == "bf16" else None
    results = evaluate(method, val_set, mode=ev.eval_mode, crop=tuple(ev.eval_crop), stride=tuple(ev.eval_stride),
                       crop_batch=ev.eval_crop_batch, label_space=ev.label_space, seen_bias=ev.seen_bias,
                       amp_dtype=amp, device=device, progress=zdist.is_main())
    if zdist.is_main():
        out = Path(cfg.out_dir) if cfg.get("out_dir") else Path(cfg.ckpt).parent
        out.mkdir(parents=True, exist_ok=True)
        tag = f"eval_{ds.benchmark}_{cfg.split or ds.val_split}"
        _report(results, out, tag, note=_teacher_note(ckpt.get("teacher") or {}))
        eff_mode = cfg.get("efficiency", "auto")
        if eff_mode:
            from zss.engine.efficiency import efficiency_report, format_efficiency

            eff = efficiency_report(method, image_size=(512, 512), device=device, amp_dtype=amp,
                                    batch_size=int(ev.eval_crop_batch),
                                    measure=eff_mode is True or device.type == "cuda")
            text = format_efficiency(eff, title=f"Efficiency (test-time model, {ds.benchmark})")
            print("\n" + text)
            (out / f"{tag}_efficiency.md").write_text(text + "\n")
            (out / f"{tag}_efficiency.json").write_text(json.dumps(eff, indent=2, default=str))
    zdist.cleanup()
    return results


def _teacher_note(ident: dict) -> str | None:
    """What the teacher means for the numbers: None for real pretrained CLIP weights."""
    if ident.get("warning"):
        return ident["warning"]
    if ident and not ident.get("pretrained"):
        return (f"teacher {ident.get('model_name')} has RANDOM weights: the numbers test the machinery only and "
                "are NOT zero-shot results (use teacher.pretrained=<weights file> for a real run)")
    return None


def _run(config_name: str, fn) -> None:
    """Hydra entry: ``python scripts/<x>.py key=value ...``."""

    @hydra.main(config_path=CONFIG_DIR, config_name=config_name, version_base="1.3")
    def _main(cfg: DictConfig) -> None:
        fn(cfg)

    _main()


def train_main() -> None:
    _run("train", train)


def eval_main() -> None:
    _run("eval", evaluate_checkpoint)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(train_main())
