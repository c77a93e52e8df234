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
        try:
            train_set = build_dataset(ds.benchmark, ds.root, split=ds.train_split, hide_unseen=ds.hide_unseen,
                                      transform=tf, benchmark_split=ds.get("split"), ann_dir=_train_label_dir(ds))
        except FileNotFoundError as e:
            if not ds.get("train_label_dir"):
                raise
            raise FileNotFoundError(
                f"{e}\nNOTE: dataset.train_label_dir={ds.train_label_dir} must hold one <id>.png per image of "
                f"split {ds.train_split!r}; write masks for the whole split (python scripts/clip_es_masks.py "
                f"split={ds.train_split} out_dir=<new folder>, docs/clip_es.md)."
            ) from e
    return train_set, val_set


#: Top-level key (configs/train.yaml) that lets a label-reading teacher (OracleTeacher) train.
ORACLE_FLAG = "allow_oracle_teacher"


def _teacher_target(teacher_cfg: DictConfig):
    """The class/function named by ``teacher._target_`` (imported, not called)."""
    from hydra.utils import get_object

    return get_object(str(teacher_cfg._target_))


def check_teacher_allowed(cfg: DictConfig) -> None:
    """Refuse to TRAIN with a teacher that reads the ground truth (``needs_full_label``, the OracleTeacher)
    unless the top-level ``allow_oracle_teacher`` is true (the demo experiments set it).

    Raises:
        ValueError: one line naming the teacher, the dataset and the flag.
    """
    target = _teacher_target(cfg.teacher)
    if getattr(target, "needs_full_label", False) and not cfg.get(ORACLE_FLAG, False):
        raise ValueError(
            f"teacher {cfg.teacher._target_} reads the full ground-truth label (unseen classes included), so "
            f"its numbers are NOT zero-shot results; refusing to train it on dataset={cfg.dataset.name}. Pass "
            f"{ORACLE_FLAG}=true to train with it anyway (the demo experiments set it), or choose a CLIP teacher "
            f"(teacher=clip_vitb16)."
        )


def _train_label_dir(ds: DictConfig) -> str | None:
    """``dataset.train_label_dir`` (pseudo masks, e.g. CLIP-ES, docs/clip_es.md) as an absolute path, or None."""
    d = ds.get("train_label_dir")
    if not d:
        return None
    p = Path(str(d)).expanduser().resolve()
    if not p.is_dir():
        raise FileNotFoundError(
            f"dataset.train_label_dir={d} ({p}) does not exist. Write pseudo masks there first, e.g. "
            f"python scripts/clip_es_masks.py out_dir={d} (docs/clip_es.md), or set dataset.train_label_dir=null "
            f"to train on the ground truth."
        )
    return str(p)


def build_teacher(cfg: DictConfig, bench):
    """The frozen teacher of ``cfg.teacher``. Image teachers (FrozenCLIP and its builders) are given the images'
    normalisation ``dataset.mean/std`` as ``input_mean/input_std`` and convert to their own (CLIP's); the
    OracleTeacher reads labels only and gets the class names instead.

    Raises:
        ValueError: ``teacher.input_mean/std`` set to values other than ``dataset.mean/std``, or a teacher
            target that takes no ``input_mean/input_std`` (it could not be told the images' normalisation).
    """
    import inspect

    kwargs = {}
    if str(cfg.teacher._target_).endswith("OracleTeacher"):
        kwargs["classnames"] = list(bench.classes)
        return instantiate(cfg.teacher, **kwargs)
    norm = {"input_mean": [float(v) for v in cfg.dataset.mean], "input_std": [float(v) for v in cfg.dataset.std]}
    for key, want in norm.items():
        have = cfg.teacher.get(key)
        if have is not None and [float(v) for v in have] != want:
            raise ValueError(f"teacher.{key}={list(have)} differs from dataset.{key[6:]}={want}: images are "
                             f"normalised with dataset.mean/std and the teacher converts from them itself; remove "
                             f"teacher.{key}")
    params = inspect.signature(_teacher_target(cfg.teacher)).parameters.values()
    if not any(p.name == "input_mean" or p.kind is p.VAR_KEYWORD for p in params):
        raise ValueError(f"teacher._target_={cfg.teacher._target_} takes no input_mean/input_std, so it cannot be "
                         f"told that images are normalised with dataset.mean/std; give it those arguments")
    kwargs.update(norm)
    return instantiate(cfg.teacher, **kwargs)


def build_student(model_cfg: DictConfig, embed_dim: int, mean=None, std=None):
    """The Student of ``model_cfg``; ``mean``/``std`` (``dataset.mean/std``) are the images' normalisation it
    converts from (``Student(input_mean, input_std)``; None keeps the Student's default, CLIP's)."""
    kwargs = {"embed_dim": embed_dim}
    if mean is not None:
        kwargs.update(input_mean=[float(v) for v in mean], input_std=[float(v) for v in std])
    return instantiate(model_cfg, **kwargs)


#: method-config keys that are not constructor arguments (``recipe``: trainer values the experiment presets read)
METHOD_BOOKKEEPING = ("name", "recipe")


def _method_class(method_cfg: DictConfig):
    """The class named by ``method._target_`` (imported, not called)."""
    from hydra.utils import get_object

    return get_object(str(method_cfg._target_))


def _uses_student(method_cfg: DictConfig) -> bool:
    """False for methods that build their model from the teacher (``uses_student = False``: CLIP-RC, ZegCLIP)."""
    return bool(getattr(_method_class(method_cfg), "uses_student", True))


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
    check_teacher_allowed(cfg)
    device = zdist.init_distributed(cfg.device)
    torch.manual_seed(cfg.trainer.seed)
    bench = build_benchmark(cfg.dataset)
    train_set, val_set = build_data(cfg.dataset, bench)
    teacher = build_teacher(cfg, bench)
    embed_dim = int(teacher.embed_dim)
    student = (build_student(cfg.model, embed_dim, cfg.dataset.mean, cfg.dataset.std)
               if _uses_student(cfg.method) else None)  # CLIP-RC / ZegCLIP build their model from the teacher
    method = instantiate(_without(cfg.method, *METHOD_BOOKKEEPING), student=student, teacher=teacher,
                         classnames=list(bench.classes), unseen=list(bench.unseen),
                         templates=templates_for(cfg.dataset, bench))
    run_dir, resume_ckpt = _resolve_dirs(cfg)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    resolved["model"]["embed_dim"] = embed_dim
    norm = _normalizations(cfg.dataset, student if student is not None else method.student, teacher)
    resolved["normalization"] = norm  # record only: rebuilt from dataset/model/teacher keys
    if "backbone_mean" in norm["student"]:  # the resolved values, so a reload (pretrained=false) is exact
        resolved["model"]["backbone_mean"] = norm["student"]["backbone_mean"]
        resolved["model"]["backbone_std"] = norm["student"]["backbone_std"]
    tcfg = TrainConfig(**OmegaConf.to_container(cfg.trainer, resolve=True))
    if zdist.is_main():
        print(f"zss: run dir {run_dir}")
        ident = method.teacher_identity()
        note = _teacher_note(ident)
        print(f"zss: teacher {ident.get('model_name')} (weights: {ident.get('pretrained')})"
              + (f"\nzss: NOTE {note}" if note else ""), flush=True)
        print("zss: normalisation " + json.dumps(norm), flush=True)
    trainer = Trainer(method, train_set, val_set, tcfg, run_dir, config=resolved, resume_from=resume_ckpt,
                      device=device)
    results = trainer.fit()
    if zdist.is_main() and results is not None:
        _report(results, run_dir, "final", note=_teacher_note(method.teacher_identity()))
    if cfg.get("transfer_view") and cfg.transfer_view.get("enabled"):
        _transfer_view(cfg, method, bench, tcfg, run_dir, trainer.device)  # collective: every rank evaluates
    zdist.cleanup()
    return results


def _transfer_view(cfg: DictConfig, method: Method, bench, tcfg: TrainConfig, run_dir: Path, device) -> dict:
    """The demo's transfer view: the TRAINING images on their FULL labels (their unseen pixels were never
    labelled for the student), GZSS and ZSS (unseen 5-way), plus PLM pseudo-label quality when the method has
    one, next to the seen-only reference quoted in ``transfer_view.reference`` (measured by
    ``scripts/transfer_check.py``). Written to ``transfer_view.{md,json}`` in the run directory."""
    _, train_eval = build_data(cfg.dataset, bench, train=False, val_split=cfg.dataset.train_split)
    kw = dict(mode=tcfg.eval_mode, crop=tcfg.eval_crop, stride=tcfg.eval_stride, crop_batch=tcfg.eval_crop_batch,
              device=device)
    gz = evaluate(method, train_eval, label_space="all", **kw)  # sharded over ranks, all-reduced
    zs = evaluate(method, train_eval, label_space="unseen", **kw)
    if not zdist.is_main():
        return {}
    row = {"mIoU_seen": gz["mIoU_seen"], "mIoU_unseen": gz["mIoU_unseen"], "hIoU": gz["hIoU"],
           "five_way_pixel": zs["pAcc"], "five_way_class_mean": zs["mAcc"]}
    if hasattr(method, "pseudo_label_report") and getattr(method, "use_plm", False):
        qs = []
        with torch.no_grad():
            for sample in train_eval:
                img = sample["image"][None].to(device)
                full = torch.nn.functional.interpolate(sample["full_label"][None, None].float(), size=img.shape[-2:],
                                                       mode="nearest")[0].long().to(device)
                seen_only = full.clone()
                seen_only[torch.isin(full, method.unseen.to(device))] = method.ignore_index
                qs.append(method.pseudo_label_report(img, seen_only, full))
        for k in ("regions", "purity", "unseen_isolated"):
            v = torch.cat([q[k] for q in qs]).float()
            row[f"pl_{k}"] = float(v.nanmean()) * (1 if k == "regions" else 100)
    ref = cfg.transfer_view.get("reference")
    ref = OmegaConf.to_container(ref, resolve=True) if ref is not None else {}
    f = lambda v: "n/a" if v is None or v != v else f"{v:.2f}"  # noqa: E731
    lines = [f"Transfer view: the {len(train_eval)} TRAINING images on their FULL labels (unseen pixels never "
             "labelled for the student)", "",
             "| run | mIoU(S) | mIoU(U) | hIoU | unseen 5-way pixel % | 5-way class-mean % |", "|---|---:|---:|---:|---:|---:|",
             f"| this run ({cfg.method.name}) | {f(row['mIoU_seen'])} | {f(row['mIoU_unseen'])} | {f(row['hIoU'])} | "
             f"{f(row['five_way_pixel'])} | {f(row['five_way_class_mean'])} |"]
    if ref:
        lines.append(f"| {ref.get('name', 'reference')} | {f(ref.get('mIoU_seen'))} | {f(ref.get('mIoU_unseen'))} | "
                     f"{f(ref.get('hIoU'))} | {f(ref.get('five_way_pixel'))} | {f(ref.get('five_way_class_mean'))} |")
    if "pl_regions" in row:
        lines += ["", f"PLM pseudo labels on these images: {row['pl_regions']:.1f} regions per image, purity "
                      f"{row['pl_purity']:.1f}%, unseen pixels in an unseen-dominated region "
                      f"{row['pl_unseen_isolated']:.1f}%"]
    if cfg.transfer_view.get("note"):
        lines += ["", f"NOTE: {cfg.transfer_view.note}"]
    text = "\n".join(lines)
    print("\n" + text, flush=True)
    (run_dir / "transfer_view.md").write_text(text + "\n")
    (run_dir / "transfer_view.json").write_text(json.dumps({"run": row, "reference": ref}, indent=2))
    return row


def _normalizations(ds: DictConfig, student, teacher) -> dict:
    """What each network is fed (RGB, [0, 1] units): the images' ``dataset.mean/std`` and the statistics the
    student backbone and the teacher convert them to (for the run's config.json and log)."""
    out = {"images": {"mean": [float(v) for v in ds.mean], "std": [float(v) for v in ds.std]}}
    sn = getattr(student, "normalization", None) or getattr(getattr(student, "body", None), "normalization", None)
    out["student"] = dict(sn) if sn else {"source": "not recorded by the student"}
    if hasattr(teacher, "clip_mean"):
        out["teacher"] = {"mean": list(teacher.clip_mean), "std": list(teacher.clip_std),
                          "input_mean": list(teacher.input_mean), "input_std": list(teacher.input_std)}
    else:
        out["teacher"] = {"source": "reads labels only (no image normalisation)"}
    return out


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
    input_norm: tuple | None = None,
) -> tuple[Method, dict]:
    """Rebuild a trained method from a checkpoint for inference; returns ``(method, ckpt)``.

    The method is instantiated exactly as in training (same class and arguments) around a teacher
    of the same architecture, the checkpoint state is loaded strictly, and the teacher is then
    dropped: inference runs the student (plus whatever frozen parts the method registered, e.g.
    Chimera-Seg's CSH). For the training vocabulary the teacher's weights are not needed (random
    init, architecture only; text embeds come from the checkpoint). For another vocabulary
    (``classnames``), the teacher is loaded with its real weights (``teacher_overrides`` may point
    ``pretrained`` at a local file) and only its text encoder is used. Methods that run CLIP at test time
    (``clip_at_test_time``: CLIP-RC, ZegCLIP) always get the teacher WITH its weights (checkpoint config or
    ``teacher_overrides``), build no student (``uses_student = False``) and drop training-only parts
    (``strip_for_inference``); a missing weights file raises TeacherWeightsNotFoundError naming it, other
    weights a ValueError (docs/clip_rc.md). ``input_norm``: ``(mean, std)`` the
    images will be normalised with (default: the checkpoint's ``dataset.mean/std``); the student converts
    them to its backbone's statistics (recorded as ``model.backbone_mean/std`` by training).

    Raises:
        FileNotFoundError / ValueError: from :func:`load_checkpoint`.
    """
    ckpt = load_checkpoint(ckpt_path, map_location="cpu")
    tcfg = OmegaConf.create(ckpt["config"])
    bench = build_benchmark(tcfg.dataset)
    new_vocab = classnames is not None and list(classnames) != list(ckpt["classnames"])
    tcfg.teacher = OmegaConf.merge(tcfg.teacher, teacher_overrides or {})
    clip_at_test = bool(getattr(_method_class(tcfg.method), "clip_at_test_time", False))
    if not new_vocab and not clip_at_test and str(tcfg.teacher._target_).endswith("FrozenCLIP"):
        tcfg.teacher.pretrained = None  # architecture only: every trained/frozen tensor is in the checkpoint
    mean, std = input_norm if input_norm is not None else (tcfg.dataset.mean, tcfg.dataset.std)
    if clip_at_test:  # CLIP-RC / ZegCLIP: the real CLIP weights run at test time, fed the images' normalisation
        tcfg.dataset.mean, tcfg.dataset.std = list(mean), list(std)
        teacher = _build_test_time_clip(tcfg, bench, ckpt)
    else:
        teacher = build_teacher(tcfg, bench)
    student = None
    if _uses_student(tcfg.method):
        model_cfg = OmegaConf.merge(tcfg.model, {"pretrained": False})  # weights come from the checkpoint
        student = build_student(_without(model_cfg, "embed_dim"), int(tcfg.model.embed_dim), mean, std)
    method = instantiate(_without(tcfg.method, *METHOD_BOOKKEEPING), student=student, teacher=teacher,
                         classnames=list(ckpt["classnames"]), unseen=list(ckpt["unseen"]),
                         templates=templates_for(tcfg.dataset, bench), text_embeds=ckpt["state"]["text_embeds"])
    method.load_state_dict(ckpt["state"])
    if hasattr(method, "strip_for_inference"):  # drop training-only parts (CLIP-RC's recovery decoder)
        method.strip_for_inference()
    if new_vocab:
        tmpl = templates or templates_for(tcfg.dataset, bench)
        method.set_vocabulary(list(classnames), list(unseen or []), teacher.text(list(classnames), tmpl))
    method.teacher_info = dict(ckpt.get("teacher") or {})
    object.__setattr__(method, "teacher", None)
    return method.to(device).eval(), ckpt


def _build_test_time_clip(tcfg: DictConfig, bench, ckpt: dict):
    """The CLIP teacher WITH its weights, for a method that runs CLIP at test time (``clip_at_test_time``).

    Raises:
        TeacherWeightsError (its subclass for a missing file): the weights cannot be loaded; the message
            names the CLIP the checkpoint was trained with (model, weights, file, sha256) and the fix.
    """
    from zss.teachers.clip import TeacherWeightsError

    try:
        return build_teacher(tcfg, bench)
    except Exception as e:  # noqa: BLE001 - Hydra's instantiate wraps the teacher's own error
        err = e if isinstance(e, TeacherWeightsError) else e.__cause__
        if not isinstance(err, TeacherWeightsError):
            raise
        ident = ckpt.get("teacher") or {}
        raise type(err)(
            f"{err}\nThis checkpoint ({tcfg.method._target_}) runs CLIP at test time, so it needs the CLIP weights it "
            f"was trained with: model {ident.get('model_name')}, weights {ident.get('pretrained')} (file "
            f"{ident.get('file')}, sha256 {ident.get('sha256')}). Pass teacher.pretrained=<that file> to "
            f"scripts/eval.py / scripts/predict.py."
        ) from err


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
        teacher_overrides=_non_null(cfg.get("teacher")), device=device, input_norm=(ds.mean, ds.std),
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


def clip_es_masks(cfg: DictConfig) -> dict:
    """CLIP-ES pseudo masks for ``cfg.split`` of ``cfg.dataset`` (docs/clip_es.md): PNGs + report."""
    from zss.clip_es.pipeline import format_report, generate_pseudo_masks
    from zss.teachers.clip import FrozenCLIP

    device = zdist.init_distributed(cfg.device)
    bench = build_benchmark(cfg.dataset)
    teacher = build_teacher(cfg, bench)
    if not isinstance(teacher, FrozenCLIP):
        raise ValueError(f"CLIP-ES needs a CLIP teacher (FrozenCLIP), got {type(teacher).__name__} "
                         f"(teacher._target_={cfg.teacher._target_}); use teacher=clip_vitb16 or teacher=tiny_random.")
    ds = build_dataset(cfg.dataset.benchmark, cfg.dataset.root, split=cfg.split, transform=None,
                       benchmark_split=cfg.dataset.get("split"))
    out_dir = cfg.out_dir or str(Path(cfg.run_root) / "clip_es" / f"{cfg.dataset.name}_{cfg.split}")
    v, c, k = cfg.clip_es, cfg.crf, cfg.cam
    crf_enabled = c.enabled if isinstance(c.enabled, bool) else str(c.enabled)
    report = generate_pseudo_masks(
        teacher, ds, out_dir,
        background_class=v.background_class, synonyms=OmegaConf.to_container(v.synonyms) if v.synonyms else None,
        background_words=list(v.background_words), template=v.template, box_threshold=float(v.box_threshold),
        labels_from=cfg.labels_from, attn_layers=int(k.attn_layers), logit_scale=k.logit_scale,
        pos_interp=k.pos_interp, pair_chunk=int(k.pair_chunk), sinkhorn_rounds=int(cfg.caa.sinkhorn_rounds),
        power_steps=int(cfg.caa.power_steps), eval_alphas=[float(a) for a in cfg.masks.eval_alphas],
        crf=crf_enabled, crf_alpha=float(c.alpha),
        crf_params={n: c[n] for n in ("iters", "pos_xy_std", "pos_w", "bi_xy_std", "bi_rgb_std", "bi_w")},
        crf_color=c.color, confidence=float(c.confidence), mask_alpha=float(cfg.masks.mask_alpha),
        limit=cfg.limit, compare_kmeans=bool(cfg.compare_kmeans), device=device, progress=bool(cfg.progress),
    )
    print("\n" + format_report(report))
    note = _teacher_note(report.get("teacher") or {})
    if note:
        print(f"\nNOTE: {note}")
    return report


def clip_es_main() -> None:
    _run("clip_es", clip_es_masks)


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
