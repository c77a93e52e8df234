"""Iteration-based trainer: one code path for a laptop CPU and ``torchrun`` on many GPUs.

AdamW + poly schedule with linear warm-up, bf16/fp16/fp32 autocast, gradient accumulation to a
configured global batch, DDP from the environment (SyncBN only when world > 1 on CUDA),
periodic evaluation, atomic ``last.pt`` / ``best.pt`` (by hIoU), exact resume, TensorBoard +
``metrics.jsonl`` on rank 0.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from zss.data.dataset import WithoutKeys
from zss.engine import dist as zdist
from zss.engine.checkpoint import git_sha, load_checkpoint, save_atomic, versions
from zss.engine.evaluate import evaluate
from zss.engine.metrics import format_table, summary_line
from zss.engine.sampling import SeededDataset, StepSampler

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


@dataclass
class TrainConfig:
    """Every number that shapes a run. Values not stated by the papers are ours (DESIGN §2 gives
    the reference recipe this mirrors: AdamW lr 2e-5, head ×10, wd 0.01, poly 0.9, warm-up 1,500).

    Attributes:
        max_steps: optimizer steps. batch_size: GLOBAL batch (images per optimizer step, all ranks).
        micro_batch_size: images per forward on one rank (None = batch_size / world); the trainer
            accumulates ``batch_size / (world × micro_batch_size)`` micro-batches.
        lr, head_lr_mult, weight_decay, betas: AdamW. warmup_steps, warmup_ratio: linear warm-up
            from ``lr × warmup_ratio`` (mmseg's rule). poly_power: poly decay to ``min_lr``.
        grad_clip: max global grad norm (None = off; our default). amp: ``bf16`` | ``fp16`` | ``fp32``.
        eval_interval / log_interval / ckpt_interval: in optimizer steps (0 = only at the end).
        eval_mode, eval_crop, eval_stride, eval_crop_batch: inference (pixels).
        label_space: ``all`` (GZSS) or ``unseen``. seen_bias: subtracted from seen logits at test.
        num_workers: DataLoader workers per rank. seed: base seed (rank r uses seed + r for models'
            own randomness; data order is derived from seed and step, see StepSampler).
        overlay_count: fixed val images drawn to TensorBoard at each evaluation.
        deterministic: ``torch.use_deterministic_algorithms(True)`` (slower).
    """

    max_steps: int = 20000
    batch_size: int = 16
    micro_batch_size: int | None = None
    lr: float = 2e-5
    head_lr_mult: float = 10.0
    weight_decay: float = 0.01
    betas: Sequence[float] = (0.9, 0.999)
    warmup_steps: int = 1500
    warmup_ratio: float = 1e-6
    poly_power: float = 0.9
    min_lr: float = 0.0
    grad_clip: float | None = None
    amp: str = "bf16"
    eval_interval: int = 2000
    log_interval: int = 50
    ckpt_interval: int = 1000
    eval_mode: str = "slide"
    eval_crop: Sequence[int] = (512, 512)
    eval_stride: Sequence[int] = (426, 426)
    eval_crop_batch: int = 8
    label_space: str = "all"
    seen_bias: float = 0.0
    num_workers: int = 2
    seed: int = 0
    overlay_count: int = 4
    deterministic: bool = False
    find_unused_parameters: bool = False
    extra: dict = field(default_factory=dict)


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Multiplier on the base lr at optimizer step ``step`` (0-based): poly decay with linear
    warm-up, mmseg's ``PolyLR`` + ``warmup='linear'`` rule."""
    poly = (1.0 - min(step, cfg.max_steps) / max(cfg.max_steps, 1)) ** cfg.poly_power
    base = cfg.lr * poly + cfg.min_lr * (1 - poly) if cfg.lr > 0 else 0.0
    factor = base / cfg.lr if cfg.lr > 0 else 0.0
    if step < cfg.warmup_steps:
        k = (1 - step / cfg.warmup_steps) * (1 - cfg.warmup_ratio)
        factor *= 1 - k
    return factor


def needs_full_label(method: nn.Module) -> bool:
    """True when the method's teacher declares ``needs_full_label = True`` (the label-derived OracleTeacher).

    Only then do training batches carry ``full_label`` (every class, unseen included); for any other teacher
    (FrozenCLIP, none) the trainer drops it, so no training step can read unseen ground truth.
    """
    return bool(getattr(getattr(method, "teacher", None), "needs_full_label", False))


def new_run_dir(root: str | Path, name: str) -> Path:
    """Create ``root/name/<YYYY-mm-dd_HH-MM-SS>`` (``-1``, ``-2``… if taken): never reuses a directory."""
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    base = Path(root) / name
    base.mkdir(parents=True, exist_ok=True)
    for i in range(1000):
        cand = base / (stamp if i == 0 else f"{stamp}-{i}")
        try:
            cand.mkdir(exist_ok=False)
            return cand
        except FileExistsError:
            continue
    raise RuntimeError(f"could not create a new run directory under {base}")


def find_resume(root: str | Path, name: str) -> Path | None:
    """Newest ``root/name/*/last.pt`` (for ``resume=auto``), or None."""
    cands = sorted(Path(root, name).glob("*/last.pt"), key=lambda p: p.stat().st_mtime)
    return cands[-1] if cands else None


class Trainer:
    """Train a :class:`~zss.methods.base.Method` and evaluate it.

    Args:
        method: the method (student + frozen teacher + losses); moved to ``device``.
        train_set: training dataset (train transform applied; yields ``image``, ``label``,
            ``full_label``, ``valid``, ``name``). ``full_label`` is removed from every training batch unless
            the method's teacher declares ``needs_full_label`` (:func:`needs_full_label`); evaluation batches
            keep it (it is the ground truth).
        val_set: evaluation dataset (test transform; ``full_label`` at original size) or None.
        cfg: :class:`TrainConfig`.
        run_dir: directory for this run (created by :func:`new_run_dir`; must exist).
        config: the resolved config as a plain dict (stored in checkpoints and ``config.json``).
        resume_from: a ``last.pt`` to continue from (same run dir), or None.
        device: from :func:`zss.engine.dist.init_distributed`.

    Raises:
        ValueError: the global batch is not divisible by ``world × micro_batch_size``; unknown amp.
    """

    def __init__(
        self,
        method: nn.Module,
        train_set: Dataset,
        val_set: Dataset | None,
        cfg: TrainConfig,
        run_dir: str | Path,
        config: dict | None = None,
        resume_from: str | Path | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        self.cfg, self.run_dir, self.config = cfg, Path(run_dir), dict(config or {})
        self.device = torch.device(device)
        self.rank, self.world = zdist.get_rank(), zdist.get_world_size()
        if cfg.amp not in AMP_DTYPES:
            raise ValueError(f"trainer.amp must be one of {sorted(AMP_DTYPES)}, got {cfg.amp!r}")
        self.amp_dtype = AMP_DTYPES[cfg.amp]
        micro = cfg.micro_batch_size or max(cfg.batch_size // self.world, 1)
        if cfg.batch_size % (self.world * micro) != 0:
            raise ValueError(
                f"trainer.batch_size={cfg.batch_size} (global) is not divisible by world_size={self.world} x "
                f"trainer.micro_batch_size={micro}; pick values whose product divides the global batch"
            )
        self.micro, self.accum = micro, cfg.batch_size // (self.world * micro)
        torch.manual_seed(cfg.seed + self.rank)
        if cfg.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)

        if self.world > 1 and self.device.type == "cuda":
            method.student = nn.SyncBatchNorm.convert_sync_batchnorm(method.student)
        self.method = method.to(self.device)
        self.model: nn.Module = self.method
        if self.world > 1:
            self.model = nn.parallel.DistributedDataParallel(
                self.method, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=cfg.find_unused_parameters,
            )
        groups = self.method.param_groups(cfg.lr, head_lr_mult=cfg.head_lr_mult, weight_decay=cfg.weight_decay)
        for g in groups:
            g["initial_lr"] = g["lr"]
        self.optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.amp == "fp16")
        self.train_set, self.val_set = train_set, val_set
        #: keys removed from training samples before collation (full_label unless the teacher needs it)
        self.dropped_keys: tuple[str, ...] = () if needs_full_label(method) else ("full_label",)
        self.step, self.best = 0, {"hIoU": -math.inf, "step": -1}
        if resume_from is not None:
            self._load(resume_from)
        self.writer = None
        if zdist.is_main():
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.run_dir / "tb"))
            (self.run_dir / "config.json").write_text(json.dumps(self.config, indent=2, default=str))

    # ------------------------------------------------------------------ state
    def _ckpt(self) -> dict:
        return {
            "state": self.method.checkpoint_state(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "step": self.step,
            "best": dict(self.best),
            "rng": {"torch": torch.get_rng_state()},
            "config": self.config,
            "classnames": list(self.method.classnames),
            "unseen": self.method.unseen.tolist(),
            "teacher": self.method.teacher_identity(),
            "versions": versions(),
            "git_sha": git_sha(),
        }

    def _load(self, path: str | Path) -> None:
        ckpt = load_checkpoint(path, map_location=self.device)
        self.method.load_state_dict(ckpt["state"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.step, self.best = int(ckpt["step"]), dict(ckpt["best"])
        if "rng" in ckpt and self.rank == 0:
            torch.set_rng_state(ckpt["rng"]["torch"].cpu())

    def save(self, name: str) -> Path:
        path = self.run_dir / name
        if zdist.is_main():
            save_atomic(self._ckpt(), path)
        zdist.barrier()
        return path

    # ------------------------------------------------------------------ loop
    def _set_lr(self) -> float:
        f = lr_factor(self.step, self.cfg)
        for g in self.optimizer.param_groups:
            g["lr"] = g["initial_lr"] * f
        return self.cfg.lr * f

    def _loader(self) -> DataLoader:
        sampler = StepSampler(len(self.train_set), seed=self.cfg.seed, rank=self.rank, world_size=self.world,
                              start=self.step * self.accum * self.micro)
        data = SeededDataset(self.train_set)
        if self.dropped_keys:
            data = WithoutKeys(data, self.dropped_keys)
        return DataLoader(
            data, batch_size=self.micro, sampler=sampler, num_workers=self.cfg.num_workers,
            drop_last=True, persistent_workers=self.cfg.num_workers > 0, pin_memory=self.device.type == "cuda",
        )

    def _to_device(self, batch: dict) -> dict:
        return {k: (v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}

    def fit(self, stop_at: int | None = None) -> dict | None:
        """Train to ``max_steps`` (evaluating and checkpointing on the way); return the final
        evaluation results (rank 0 and others alike) or None without a val set.

        ``stop_at``: leave after this many optimizer steps, writing ``last.pt`` as an interrupted
        run would have (the schedule still follows ``max_steps``); for tests and time-boxed jobs.
        """
        cfg = self.cfg
        stop_at = cfg.max_steps if stop_at is None else min(stop_at, cfg.max_steps)
        data = iter(self._loader())
        bar = None
        if zdist.is_main():
            from tqdm import tqdm

            bar = tqdm(total=cfg.max_steps, initial=self.step, desc="train", dynamic_ncols=True)
        self.method.train()
        t_last, imgs = time.perf_counter(), 0
        results = None
        while self.step < stop_at:
            lr = self._set_lr()
            self.method.set_step(self.step)
            self.method.on_step(self.step, cfg.max_steps)
            self.optimizer.zero_grad(set_to_none=True)
            logs: dict[str, float] = {}
            for i in range(self.accum):
                batch = self._to_device(next(data))
                sync = i == self.accum - 1 or self.world == 1
                ctx = self.model.no_sync() if (not sync and hasattr(self.model, "no_sync")) else _null()
                with ctx:
                    with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
                        out = self.model(batch)
                    loss = out["loss"] / self.accum
                    self.scaler.scale(loss).backward()
                for k, v in out.items():
                    logs[k] = logs.get(k, 0.0) + float(v.detach()) / self.accum
                imgs += batch["image"].shape[0] * self.world
            if not math.isfinite(logs["loss"]):
                raise FloatingPointError(
                    f"non-finite loss {logs['loss']} at step {self.step} ({logs}); lower trainer.lr or use trainer.amp=fp32"
                )
            self.scaler.unscale_(self.optimizer)
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_([p for g in self.optimizer.param_groups for p in g["params"]],
                                               cfg.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.step += 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{logs['loss']:.3f}", lr=f"{lr:.2e}")
            if cfg.log_interval and self.step % cfg.log_interval == 0 or self.step == cfg.max_steps:
                dt = time.perf_counter() - t_last
                logs.update(lr=lr, img_per_s=imgs / max(dt, 1e-9))
                self._log(logs, "train")
                t_last, imgs = time.perf_counter(), 0
            last = self.step == cfg.max_steps
            if self.val_set is not None and (last or (cfg.eval_interval and self.step % cfg.eval_interval == 0)):
                results = self.run_eval()
            if last or self.step == stop_at or (cfg.ckpt_interval and self.step % cfg.ckpt_interval == 0):
                self.save("last.pt")
        if bar is not None:
            bar.close()
        if self.writer is not None:
            self.writer.flush()
        return results

    def run_eval(self) -> dict:
        """Evaluate on the val set, log scalars/table/overlays, update ``best.pt`` by hIoU."""
        cfg = self.cfg
        overlays: list = []
        names = set(getattr(self.val_set, "names", [])[: cfg.overlay_count])

        def keep(sample, pred):
            if sample.get("name") in names:
                overlays.append((sample, pred.cpu()))

        results = evaluate(
            self.method, self.val_set, mode=cfg.eval_mode, crop=cfg.eval_crop, stride=cfg.eval_stride,
            crop_batch=cfg.eval_crop_batch, label_space=cfg.label_space, seen_bias=cfg.seen_bias,
            amp_dtype=self.amp_dtype if self.amp_dtype is torch.bfloat16 else None, device=self.device,
            on_prediction=keep if zdist.is_main() else None,
        )
        results["step"] = self.step
        if zdist.is_main():
            self._log({k: results[k] for k in ("mIoU_seen", "mIoU_unseen", "hIoU", "pAcc", "mIoU", "mAcc")}, "val")
            table = format_table(results)
            self.writer.add_text("val/per_class", table.replace("\n", "  \n"), self.step)
            self._overlays(overlays)
            print(f"\n[step {self.step}] {summary_line(results)}", flush=True)
        h = results["hIoU"]
        score = h if h == h else results["mIoU"]  # hIoU is NaN when no unseen class is present
        if score > self.best["hIoU"]:
            self.best = {"hIoU": float(score), "step": self.step}
            self.save("best.pt")
        return results

    def _overlays(self, overlays: list) -> None:
        from zss.engine.visualize import denormalize, overlay

        mean = getattr(self.val_set, "mean", None) or (0.0, 0.0, 0.0)
        std = getattr(self.val_set, "std", None) or (1.0, 1.0, 1.0)
        for sample, pred in overlays:
            img = denormalize(sample["image"], mean, std)  # [3, H', W'] uint8 (test-resized)
            img = torch.nn.functional.interpolate(img[None].float(), size=tuple(pred.shape), mode="bilinear")
            img = img[0].round().clamp(0, 255).to(torch.uint8)
            both = torch.cat([overlay(img, sample["full_label"], self.method.num_classes),
                              overlay(img, pred, self.method.num_classes)], dim=2)  # GT | prediction
            self.writer.add_image(f"val/overlay/{sample['name']}", both, self.step)

    def _log(self, values: dict, prefix: str) -> None:
        if not zdist.is_main():
            return
        for k, v in values.items():
            tag = f"{prefix}/{k}" if k.startswith("loss") or prefix != "train" else f"{prefix}/{k}"
            self.writer.add_scalar(tag, v, self.step)
        rec = {"step": self.step, "split": prefix, **{k: (None if v != v else v) for k, v in values.items()}}
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(rec) + "\n")


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False
