"""Iteration-based trainer: one code path for a laptop CPU and ``torchrun`` on many GPUs.

AdamW + poly schedule with linear warm-up (``torch.optim.lr_scheduler.LambdaLR``), bf16/fp16/fp32 autocast,
gradient accumulation to a configured global batch, DDP from the environment (SyncBN only when world > 1 on CUDA),
periodic evaluation, atomic ``last.pt`` (never with non-finite weights; also written on SIGTERM/SIGINT/SIGUSR1),
opt-in ``best_on_val_split.pt``, exact resume (RNG and training state outside ``state_dict`` included),
TensorBoard + ``metrics.jsonl`` on rank 0.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import signal
import threading
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from zss.data.dataset import UnseenLabelGuard, WithoutKeys
from zss.engine.checkpoint import git_sha, load_checkpoint, save_atomic, versions
from zss.engine.evaluate import evaluate
from zss.engine.metrics import format_table, summary_line
from zss.engine.sampling import SeededDataset, StepSampler
from zss.utils import dist as zdist
from zss.utils.progress import console_logging, progress_bar, write

log = logging.getLogger(__name__)

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


@dataclass
class TrainConfig:
    """Every number that shapes a run. Values not stated by the papers are ours (docs/protocol.md "Reference recipe"
    gives
    the reference recipe this mirrors: AdamW lr 2e-5, head ×10, wd 0.01, poly 0.9, warm-up 1,500).

    Attributes:
        max_steps: optimizer steps. batch_size: GLOBAL batch (images per optimizer step, all ranks).
        micro_batch_size: images per forward on one rank (None = batch_size / world); the trainer
            accumulates ``batch_size / (world × micro_batch_size)`` micro-batches.
        lr, head_lr_mult, weight_decay, betas: AdamW. warmup_steps, warmup_ratio: linear warm-up
            from ``lr × warmup_ratio`` (mmseg's rule). poly_power: poly decay to ``min_lr``, an absolute
            floor shared by every param group (the head's too, as mmcv/mmengine PolyLR; :func:`lr_factor`).
        grad_clip: max global grad norm (None = off; our default). amp: ``bf16`` | ``fp16`` | ``fp32``.
        eval_interval / log_interval / ckpt_interval: in optimizer steps (0 = only at the end).
        eval_mode, eval_crop, eval_stride, eval_crop_batch: inference (pixels).
        label_space: ``all`` (GZSS) or ``unseen``. seen_bias: subtracted from seen logits at test.
        num_workers: DataLoader workers per rank. seed: base seed (rank r uses seed + r for models'
            own randomness; data order is derived from seed and step, see StepSampler).
        overlay_count: fixed val images drawn to TensorBoard at each evaluation.
        deterministic: ``torch.use_deterministic_algorithms(True)`` (slower).
        select_best_on_val: keep ``best_on_val_split.pt``, the checkpoint with the best val hIoU (mIoU when no
            unseen class is present). The val split is the benchmark's TEST split, so this selects on test data:
            off by default (ours); report the last iteration (``last.pt``, ``final_results``).
        compile: ``torch.compile`` the student's forward in place (``nn.Module.compile``: checkpoints keep their
            keys); the first steps pay the compilation. Off by default (ours).
        channels_last: convert the student's 4-D (convolution) weights and the training images to
            ``torch.channels_last`` (faster convolutions with cuDNN / oneDNN; no effect on ViT parts). Off by
            default (ours). Both change float rounding only, not the computation.
    """

    max_steps: int = 20000
    batch_size: int = 16
    micro_batch_size: int | None = None
    lr: float = 2e-5
    head_lr_mult: float = 10.0
    weight_decay: float = 0.01
    betas: tuple[float, ...] = (0.9, 0.999)
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
    eval_crop: tuple[int, ...] = (512, 512)
    eval_stride: tuple[int, ...] = (426, 426)
    eval_crop_batch: int = 8
    label_space: str = "all"
    seen_bias: float = 0.0
    num_workers: int = 2
    seed: int = 0
    overlay_count: int = 4
    deterministic: bool = False
    find_unused_parameters: bool = False
    select_best_on_val: bool = False
    compile: bool = False
    channels_last: bool = False
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Range and type checks, the same for ``TrainConfig(...)`` in Python and ``trainer.<key>=`` on the command
        line (``zss.cli.common.train_config`` builds this class from the composed ``trainer`` group).

        Raises:
            ValueError: one line naming the key and value: a count that is not an integer >= 1 (``max_steps``,
                ``batch_size``, ``eval_crop_batch``; ``micro_batch_size`` unless None); a negative lr, multiplier,
                interval or count; a non-number, a bool, a float where an integer is needed; a NaN; an infinite
                ``seen_bias``.
        """

        def bad(key: str, want: str) -> ValueError:
            return ValueError(f"trainer.{key}={getattr(self, key)!r}: must be {want} (configs/trainer/default.yaml)")

        for key in _POSITIVE_INT + _NON_NEGATIVE + _INT_KEYS + ("seen_bias",):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or (key in _INT_KEYS and not isinstance(v, int)):
                raise bad(key, "an integer" if key in _INT_KEYS else "a number")
            if v != v or (key == "seen_bias" and v in (float("inf"), float("-inf"))):  # nan; an infinite bias
                raise bad(key, "a finite number")
            if key in _POSITIVE_INT and v < 1:
                raise bad(key, "an integer >= 1" + (" (optimizer steps)" if key == "max_steps" else " (images)"))
            if key in _NON_NEGATIVE and v < 0:
                raise bad(key, ">= 0" + (" (a learning rate)" if key == "lr" else ""))
        mb = self.micro_batch_size
        if mb is not None and (isinstance(mb, bool) or not isinstance(mb, int) or mb < 1):
            raise bad("micro_batch_size", "null (= batch_size / world size) or an integer >= 1 (images)")


#: TrainConfig keys checked by ``TrainConfig.__post_init__``: integers >= 1, values >= 0, integer-valued keys
_POSITIVE_INT = ("max_steps", "batch_size", "eval_crop_batch")
_NON_NEGATIVE = (
    "lr",
    "head_lr_mult",
    "weight_decay",
    "warmup_steps",
    "warmup_ratio",
    "poly_power",
    "min_lr",
    "eval_interval",
    "log_interval",
    "ckpt_interval",
    "num_workers",
    "overlay_count",
)
_INT_KEYS = (
    "max_steps",
    "batch_size",
    "eval_crop_batch",
    "warmup_steps",
    "eval_interval",
    "log_interval",
    "ckpt_interval",
    "num_workers",
    "overlay_count",
    "seed",
)


def lr_factor(step: int, cfg: TrainConfig, base_lr: float | None = None) -> float:
    """Multiplier on a param group's base lr at optimizer step ``step`` (0-based): poly decay with linear
    warm-up, mmcv's ``PolyLrUpdaterHook`` + ``warmup='linear'`` rule (mmseg's PolyLR), the trainer's
    ``torch.optim.lr_scheduler.LambdaLR`` lambda.

    ``base_lr``: the group's base lr (default ``cfg.lr``; the head group has ``cfg.lr × head_lr_mult``). As in
    mmcv/mmengine the floor ``cfg.min_lr`` is the same absolute lr for every group: the group's lr is
    ``((base_lr - min_lr) · (1 - step/max_steps)^poly_power + min_lr) × warm-up factor``. A group with base lr
    0 stays at 0.
    """
    poly = (1.0 - min(step, cfg.max_steps) / max(cfg.max_steps, 1)) ** cfg.poly_power
    if base_lr is not None and base_lr <= 0:
        return 0.0
    floor = cfg.min_lr if base_lr is None else cfg.min_lr * cfg.lr / base_lr  # -> absolute floor min_lr
    base = cfg.lr * poly + floor * (1 - poly) if cfg.lr > 0 else 0.0
    factor = base / cfg.lr if cfg.lr > 0 else 0.0
    if step < cfg.warmup_steps:
        k = (1 - step / cfg.warmup_steps) * (1 - cfg.warmup_ratio)
        factor *= 1 - k
    return factor


def needs_full_label(method: nn.Module) -> bool:
    """True when the method's teacher declares ``needs_full_label = True`` (the label-derived OracleTeacher) or
    the method itself ``reads_full_label`` (CLIP-RC's ``method.transductive.gt_unseen_mask``, the public code's
    ground-truth self-training).

    Only then do training batches carry ``full_label`` (every class, unseen included); otherwise the trainer
    drops it, so no training step can read unseen ground truth.
    """
    return bool(
        getattr(getattr(method, "teacher", None), "needs_full_label", False)
        or getattr(method, "reads_full_label", False)
    )


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


#: Name of the checkpoint kept by ``trainer.select_best_on_val`` (chosen on the val split = the benchmark's test split).
BEST_ON_VAL_NAME = "best_on_val_split.pt"

#: Config keys (dotted; a key covers everything below it) that may differ between a run and its resume: they
#: do not change the numbers (where the data lies, logging/checkpoint/eval cadence, loader workers, the
#: post-training transfer view, bookkeeping; ``init_from`` only sets the weights a run STARTS from). Everything
#: else, ``trainer.max_steps`` included (the poly schedule depends on it), must match unless
#: ``resume_allow_changes=true``. Ours (docs/usage.md "A real run (CLIP ViT-B/16 teacher)").
RESUME_HARMLESS_KEYS = (
    "resume",
    "resume_allow_changes",
    "init_from",
    "run_root",
    "paths",
    "name",
    "device",
    "allow_oracle_teacher",
    "dataset.root",
    "transfer_view",
    "trainer.log_interval",
    "trainer.ckpt_interval",
    "trainer.eval_interval",
    "trainer.num_workers",
    "trainer.overlay_count",
    "method.recipe",  # CLIP-RC / ZegCLIP values moved to per-row experiment files; the values themselves still compare
)


def _flatten(d, prefix: str = "") -> dict:
    out = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}.") if isinstance(v, dict) and v else {f"{prefix}{k}": v})
    else:
        out[prefix.rstrip(".")] = d
    return out


def config_changes(stored: dict, current: dict, harmless: Sequence[str] = RESUME_HARMLESS_KEYS) -> dict:
    """The number-shaping config keys that differ between a checkpoint's config and the current one.

    Args:
        stored, current: resolved configs as plain nested dicts (``ckpt["config"]``, ``config.json``).
        harmless: dotted keys (and everything below them) that are ignored (:data:`RESUME_HARMLESS_KEYS`).

    Returns:
        ``{dotted key: (stored value, current value)}``, missing keys as ``"<missing>"``; empty = same run.
    """
    a, b = _flatten(stored or {}), _flatten(current or {})
    skip = lambda k: any(k == h or k.startswith(h + ".") for h in harmless)  # noqa: E731
    norm = lambda v: list(v) if isinstance(v, tuple) else v  # noqa: E731
    return {
        k: (a.get(k, "<missing>"), b.get(k, "<missing>"))
        for k in sorted(set(a) | set(b))
        if not skip(k) and norm(a.get(k, "<missing>")) != norm(b.get(k, "<missing>"))
    }


def format_changes(changes: dict, limit: int = 8) -> str:
    """``key: stored -> current`` for the first ``limit`` changed keys, comma-separated."""
    items = [f"{k}: {a!r} -> {b!r}" for k, (a, b) in list(changes.items())[:limit]]
    return ", ".join(items) + (f" (+{len(changes) - limit} more)" if len(changes) > limit else "")


def checkpoint_config(path: str | Path) -> dict:
    """The resolved config stored in a zss checkpoint (memory-mapped: the tensors are not read)."""
    ckpt = _peek(path)
    return dict(ckpt.get("config") or {}) if isinstance(ckpt, dict) else {}


def find_resume(root: str | Path, name: str, config: dict | None = None, warn=None) -> Path | None:
    """Newest ``root/name/*/last.pt`` (for ``resume=auto``) whose stored config matches ``config`` in every
    number-shaping key (:func:`config_changes`; the seed included, so a seed sweep never merges), or None.
    ``config=None`` takes the newest whatever its config. A candidate that cannot be read (empty, truncated) or
    holds no training state (a weights-only export) is skipped; ``warn`` (e.g. ``print``) is told its path and why."""
    from zss.engine.checkpoint import missing_train_state, read_reason

    cands = sorted(Path(root, name).glob("*/last.pt"), key=lambda p: p.stat().st_mtime)
    for cand in reversed(cands):
        try:
            ckpt = _peek(cand)
            if not isinstance(ckpt, dict):
                raise ValueError("not a dict")
        except Exception as e:  # noqa: BLE001 - any reason torch cannot read it: skip this candidate
            if warn:
                warn(f"zss: WARNING resume=auto skips {cand}: unreadable ({read_reason(e, cand)})")
            continue
        missing = missing_train_state(ckpt)
        if missing:
            if warn:
                warn(f"zss: WARNING resume=auto skips {cand}: it holds no {', '.join(missing)} state")
            continue
        if config is None or not config_changes(dict(ckpt.get("config") or {}), config):
            return cand
    return None


def _peek(path: str | Path):
    """``torch.load`` memory-mapped (the tensors are not read), falling back to a full load for old formats."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # not a zip-format file: mmap unsupported
        return torch.load(path, map_location="cpu", weights_only=True)


def remove_stale_temp_files(run_dir: str | Path) -> list[Path]:
    """Delete the ``.<name>.pt.*.tmp`` files :func:`zss.engine.checkpoint.save_atomic` leaves when a process is
    killed mid-write, in ``run_dir`` only (call it when a run starts or resumes there); returns them."""
    gone = []
    for f in Path(run_dir).glob(".*.pt.*.tmp"):
        try:
            f.unlink()
            gone.append(f)
        except FileNotFoundError:
            pass
    return gone


def non_finite_tensors(tensors: dict) -> list[str]:
    """Names of the floating-point tensors of ``tensors`` (``{name: Tensor}``) holding NaN or inf, with counts."""
    bad = []
    for k, t in tensors.items():
        if torch.is_tensor(t) and t.is_floating_point() and t.numel() and not bool(torch.isfinite(t).all()):
            bad.append(f"{k} ({int((~torch.isfinite(t)).sum())} of {t.numel()} values non-finite)")
    return bad


#: Signals after which the trainer finishes the current step, writes ``last.pt`` and stops (SIGUSR1: SLURM's
#: pre-emption / time-limit warning, e.g. ``--signal=USR1@90``).
STOP_SIGNALS = ("SIGTERM", "SIGINT", "SIGUSR1")


def ignore_stop_signals(worker_id: int = 0) -> None:
    """DataLoader ``worker_init_fn``: the worker ignores :data:`STOP_SIGNALS`, so a signal to the whole process
    group (SLURM's time limit, ``scancel``, ``timeout``, Ctrl-C, submitit's SIGUSR1) is left to the main process,
    which finishes its step, writes ``last.pt`` and shuts the workers down itself; a worker still exits when its
    parent dies (torch's watchdog). Source: ours."""
    for name in STOP_SIGNALS:
        sig = getattr(signal, name, None)
        if sig is not None:
            signal.signal(sig, signal.SIG_IGN)


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
        device: from :func:`zss.utils.dist.init_distributed`.

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
        if cfg.channels_last:  # conv weights NHWC; the images follow in _to_device
            self.method.student.to(memory_format=torch.channels_last)
        if cfg.compile:  # in place: the state_dict keys stay the same
            self.method.student.compile()
        self.model: nn.Module = self.method
        if self.world > 1:
            self.model = nn.parallel.DistributedDataParallel(
                self.method,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=cfg.find_unused_parameters,
            )
        groups = self.method.param_groups(cfg.lr, head_lr_mult=cfg.head_lr_mult, weight_decay=cfg.weight_decay)
        self.optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
        #: warm-up + poly (:func:`lr_factor`), one lambda per param group; sets each group's lr for step 0 now
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, [functools.partial(lr_factor, cfg=cfg, base_lr=g["lr"]) for g in groups]
        )
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.amp == "fp16")
        self.train_set, self.val_set = train_set, val_set
        if (
            train_set is not None
            and getattr(train_set, "hide_unseen", True) is False
            and getattr(train_set, "unseen", ())
            and method.unseen.numel() > 0
        ):
            raise ValueError(
                f"the training set was built with hide_unseen=false on a benchmark with unseen classes "
                f"{list(train_set.unseen)}: its labels would hand unseen ground truth to the training steps; set "
                f"dataset.hide_unseen=true (the zero-shot setting)"
            )
        #: keys removed from training samples before collation (full_label unless the teacher needs it)
        self.dropped_keys: tuple[str, ...] = () if needs_full_label(method) else ("full_label",)
        self.step, self.best = 0, {"hIoU": -math.inf, "step": -1}
        #: step of the newest last.pt of this trainer (written or resumed from), None before the first save
        self._last_saved_step: int | None = None
        #: name of the signal (:data:`STOP_SIGNALS`) that made :meth:`fit` write last.pt and stop early, or None
        self.stopped_by: str | None = None
        self._stop_signum: int | None = None
        if resume_from is not None:
            self._load(resume_from)
            self._last_saved_step = self.step
        self.writer = None
        if zdist.is_main():
            from torch.utils.tensorboard import SummaryWriter

            self._prepare_run_dir(resumed=resume_from is not None)
            # a resume drops the TensorBoard events logged after the checkpoint's step (they are re-run)
            self.writer = SummaryWriter(
                str(self.run_dir / "tb"), purge_step=self.step + 1 if resume_from is not None else None
            )
            (self.run_dir / "config.json").write_text(json.dumps(self.config, indent=2, default=str))

    def _prepare_run_dir(self, resumed: bool) -> None:
        """Rank 0, before anything is written: delete temp files of killed checkpoint writes; on a resume, drop
        the ``metrics.jsonl`` rows logged after the checkpoint's step (they are re-run) and keep an earlier
        ``config.json`` that differs (``resume_allow_changes``) as ``config.before_step<N>.json``."""
        for f in remove_stale_temp_files(self.run_dir):
            print(f"zss: removed the stale temp file {f} (a checkpoint write that was killed)", flush=True)
        if not resumed:
            return
        metrics = self.run_dir / "metrics.jsonl"
        if metrics.is_file():
            rows = [ln for ln in metrics.read_text().splitlines() if ln.strip()]
            keep = [ln for ln in rows if _row_step(ln) <= self.step]  # a half-written last row goes too
            if len(keep) != len(rows):
                tmp = metrics.with_name(".metrics.jsonl.tmp")
                tmp.write_text("".join(ln + "\n" for ln in keep))
                tmp.replace(metrics)
        old = self.run_dir / "config.json"
        if old.is_file():
            try:
                changed = config_changes(json.loads(old.read_text()), json.loads(json.dumps(self.config, default=str)))
            except ValueError:  # unreadable: keep it aside as well
                changed = True
            if changed:
                old.replace(self.run_dir / f"config.before_step{self.step}.json")

    def _train_state_owners(self) -> dict:
        """``{name: object}`` of the method's submodules (and its unregistered teacher, ``@teacher``) that keep
        training state outside ``state_dict`` (``train_state()`` / ``load_train_state()``: the CLIP-ZSS CLS bank,
        the oracle teacher's noise generator)."""
        owners = {
            name or "@method": m for name, m in self.method.named_modules() if callable(getattr(m, "train_state", None))
        }
        teacher = getattr(self.method, "teacher", None)
        if teacher is not None and callable(getattr(teacher, "train_state", None)):
            owners["@teacher"] = teacher
        return owners

    def _rng_state(self) -> dict:
        """This rank's torch RNG states: CPU, and every CUDA device's when CUDA is initialised."""
        out = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            out["cuda"] = torch.cuda.get_rng_state_all()
        return out

    def _check_finite(self, action: str) -> None:
        """Raise before ``action`` when a parameter, buffer or training-state tensor holds NaN/inf.

        Raises:
            FloatingPointError: names the step, the tensors and the checkpoint that is kept.
        """
        tensors = dict(self.method.checkpoint_state())
        for owner, state in self._train_state().items():
            tensors.update({f"{owner}.{k}": v for k, v in state.items()})
        bad = non_finite_tensors(tensors)
        if bad:
            kept = (
                f"{self.run_dir / 'last.pt'} of step {self._last_saved_step} is kept as it was"
                if self._last_saved_step is not None
                else "no checkpoint of this run was written"
            )
            raise FloatingPointError(
                f"non-finite weights after step {self.step}: {'; '.join(bad[:6])}"
                f"{f' (+{len(bad) - 6} more)' if len(bad) > 6 else ''}. Not {action}: {kept}. Lower trainer.lr, "
                f"set trainer.grad_clip or use trainer.amp=fp32, then resume from that checkpoint or start anew."
            )

    def _train_state(self) -> dict:
        return {name: dict(owner.train_state()) for name, owner in self._train_state_owners().items()}

    # ------------------------------------------------------------------ state
    def _ckpt(self) -> dict:
        return {
            "state": self.method.checkpoint_state(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "step": self.step,
            "best": dict(self.best),
            "rng": self._rng_state(),
            "train_state": self._train_state(),
            "config": self.config,
            "classnames": list(self.method.classnames),
            "unseen": self.method.unseen.tolist(),
            "teacher": self.method.teacher_identity(),
            "versions": versions(),
            "git_sha": git_sha(),
        }

    def _load(self, path: str | Path) -> None:
        ckpt = load_checkpoint(path, map_location=self.device, need_config=False)
        self.method.load_state_dict(ckpt["state"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.step, self.best = int(ckpt["step"]), dict(ckpt["best"])
        self._load_scheduler(ckpt.get("scheduler"))
        rng = ckpt.get("rng") or {}
        if "ranks" in rng:  # written by a multi-process run: one entry per rank
            rng = rng["ranks"][self.rank] if len(rng["ranks"]) == self.world else {}
        elif self.rank != 0:
            rng = {}
        if "torch" in rng:
            torch.set_rng_state(rng["torch"].cpu())
        if "cuda" in rng and torch.cuda.is_available() and len(rng["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([t.cpu() for t in rng["cuda"]])
        saved = ckpt.get("train_state") or {}
        for name, owner in self._train_state_owners().items():
            if name in saved:
                owner.load_train_state(saved[name])
            elif zdist.is_main():
                warnings.warn(
                    f"resume: {path} has no training state for {name} (written by an older zss): the "
                    f"continuation is not exactly the uninterrupted run",
                    stacklevel=2,
                )

    def save(self, name: str) -> Path:
        """Write ``run_dir/name`` atomically (rank 0; every rank must call it).

        Raises:
            FloatingPointError: a parameter/buffer/training-state tensor is non-finite; nothing is written
                (:meth:`_check_finite`).
        """
        path = self.run_dir / name
        self._check_finite(f"writing {name}")  # every rank: the weights are the same, so all raise together
        rng = self._rng_state()
        if self.world > 1:  # every rank's generators, so each continues its own stream
            ranks = [None] * self.world
            torch.distributed.all_gather_object(ranks, {k: v for k, v in rng.items()})
            rng = {**rng, "ranks": ranks}
        if zdist.is_main():
            ckpt = self._ckpt()
            ckpt["rng"] = rng
            save_atomic(ckpt, path)
        if name == "last.pt":
            self._last_saved_step = self.step
        zdist.barrier()
        return path

    def _load_scheduler(self, state: dict | None) -> None:
        """Restore the LambdaLR state (``None``: a checkpoint from before it was saved) and set every group's lr
        to the schedule's value at ``self.step`` (the optimizer state carries the lr of the step it was saved at)."""
        if state is not None:
            self.scheduler.load_state_dict(state)
        self.scheduler.last_epoch = self.step
        lrs = [g["initial_lr"] * fn(self.step) for g, fn in zip(self.optimizer.param_groups, self.scheduler.lr_lambdas)]
        for g, lr in zip(self.optimizer.param_groups, lrs):
            g["lr"] = lr
        self.scheduler._last_lr = lrs

    # ------------------------------------------------------------------ loop
    def _loader(self) -> DataLoader:
        sampler = StepSampler(
            len(self.train_set),
            seed=self.cfg.seed,
            rank=self.rank,
            world_size=self.world,
            start=self.step * self.accum * self.micro,
        )
        data = SeededDataset(self.train_set)
        if self.dropped_keys:
            data = WithoutKeys(data, self.dropped_keys)
        if self.method.unseen.numel() > 0:  # a training label never names an unseen class (CPU, in the workers)
            data = UnseenLabelGuard(data, self.method.unseen.tolist())
        return DataLoader(
            data,
            batch_size=self.micro,
            sampler=sampler,
            num_workers=self.cfg.num_workers,
            drop_last=True,
            persistent_workers=self.cfg.num_workers > 0,
            pin_memory=self.device.type == "cuda",
            worker_init_fn=ignore_stop_signals if self.cfg.num_workers > 0 else None,
        )

    def _to_device(self, batch: dict) -> dict:
        out = {k: (v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}
        if self.cfg.channels_last and torch.is_tensor(out.get("image")) and out["image"].dim() == 4:
            out["image"] = out["image"].contiguous(memory_format=torch.channels_last)
        return out

    def fit(self, stop_at: int | None = None) -> dict | None:
        """Train to ``max_steps`` (evaluating and checkpointing on the way); return the final
        evaluation results (rank 0 and others alike) or None without a val set.

        ``stop_at``: leave after this many optimizer steps, writing ``last.pt`` as an interrupted
        run would have (the schedule still follows ``max_steps``); for tests and time-boxed jobs.

        SIGTERM / SIGINT / SIGUSR1 (:data:`STOP_SIGNALS`) during ``fit`` finish the current optimizer step, write
        ``last.pt`` and return early with :attr:`stopped_by` set to the signal's name (the CLI then exits with
        128 + the signal number); a Python handler installed before (e.g. submitit's requeue on SIGUSR1) is
        called after that. A second SIGINT stops at once. The previous handlers are restored on return.

        Raises:
            FloatingPointError: non-finite loss (checked at log intervals, evaluations and checkpoints, so that no
                step waits on a read-back), or non-finite weights before a checkpoint is written or an evaluation
                runs (the last good ``last.pt`` is kept).
        """
        cfg = self.cfg
        self._stop_signum, self.stopped_by = None, None
        stop_at = cfg.max_steps if stop_at is None else min(stop_at, cfg.max_steps)
        data = iter(self._loader())
        # the bar on the main rank, drawn in log files too (tty_only=False); log lines go above it
        bar = progress_bar(
            desc="train", total=cfg.max_steps, initial=self.step, enabled=zdist.is_main(), tty_only=False, unit="step"
        )
        self.method.train()
        t_last, imgs = time.perf_counter(), 0
        results = None
        prev_handlers = self._install_stop_handlers()
        try:
            with console_logging():
                results = self._loop(stop_at, data, bar, t_last, imgs)
        finally:
            _restore_handlers(prev_handlers)
            bar.close()
        if self.writer is not None:
            self.writer.flush()
        if self._stop_signum is not None:
            prev = prev_handlers.get(self._stop_signum)
            if callable(prev) and prev is not signal.default_int_handler:
                prev(self._stop_signum, None)  # e.g. submitit's SIGUSR1 handler: requeue the job, now last.pt exists
        return results

    def _install_stop_handlers(self) -> dict:
        """Make :data:`STOP_SIGNALS` set a flag that the loop reads after each optimizer step (main thread only;
        a second SIGINT stops at once). Returns the previous handlers."""
        if threading.current_thread() is not threading.main_thread():
            return {}

        def handler(signum, frame):
            if self._stop_signum is not None and signum == signal.SIGINT:
                raise KeyboardInterrupt  # a second Ctrl-C: stop now, without saving
            self._stop_signum = signum

        prev = {}
        for name in STOP_SIGNALS:
            sig = getattr(signal, name, None)
            if sig is not None:
                prev[sig] = signal.signal(sig, handler)
        return prev

    def _stop_requested(self) -> bool:
        """True once a stop signal reached any rank (all ranks agree: the flag is all-reduced in DDP)."""
        flag = self._stop_signum or 0
        if self.world > 1:
            dev = self.device if torch.distributed.get_backend() == "nccl" else torch.device("cpu")
            t = torch.tensor([flag], device=dev)
            torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
            flag = int(t.item())
        if flag and self._stop_signum is None:
            self._stop_signum = flag
        return bool(flag)

    def _loop(self, stop_at: int, data, bar, t_last: float, imgs: int) -> dict | None:
        """The training loop of :meth:`fit` (to ``stop_at``, or until a stop signal: then last.pt and return)."""
        cfg = self.cfg
        results = None
        # Nothing below reads a device value back between log intervals (no GPU sync per step): the step's logs
        # stay tensors, and the step of the first non-finite loss is kept on the device (-1: none) and checked
        # when logging, evaluating and checkpointing (:meth:`_check_loss`).
        self._bad_loss_step, logs = None, {}
        while self.step < stop_at:
            lr = self.cfg.lr * lr_factor(self.step, cfg)  # logged: the base (backbone) lr of this step
            self.method.set_step(self.step)
            self.method.on_step(self.step, cfg.max_steps)
            self.optimizer.zero_grad(set_to_none=True)
            logs: dict = {}
            for i in range(self.accum):
                batch = self._to_device(next(data))
                sync = i == self.accum - 1 or self.world == 1
                ctx = self.model.no_sync() if (not sync and hasattr(self.model, "no_sync")) else nullcontext()
                with ctx:
                    with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
                        out = self.model(batch)
                    loss = out["loss"] / self.accum
                    self.scaler.scale(loss).backward()
                for k, v in out.items():
                    v = v.detach().float() if torch.is_tensor(v) else torch.tensor(float(v))
                    logs[k] = logs.get(k, 0.0) + v / self.accum
                imgs += batch["image"].shape[0] * self.world
            bad = ~torch.isfinite(logs["loss"])
            first = torch.full_like(logs["loss"], -1.0) if self._bad_loss_step is None else self._bad_loss_step
            self._bad_loss_step = torch.where(bad & (first < 0), float(self.step), first)
            self.scaler.unscale_(self.optimizer)
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(
                    [p for g in self.optimizer.param_groups for p in g["params"]], cfg.grad_clip
                )
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            self.step += 1
            bar.update(1)
            if cfg.log_interval and self.step % cfg.log_interval == 0 or self.step == cfg.max_steps:
                vals = self._check_loss(logs)  # the only read-back of the step's values
                dt = time.perf_counter() - t_last
                vals.update(lr=lr, img_per_s=imgs / max(dt, 1e-9))
                self._log(vals, "train")
                bar.set_postfix(loss=f"{vals['loss']:.3f}", lr=f"{lr:.2e}")
                t_last, imgs = time.perf_counter(), 0
            last = self.step == cfg.max_steps
            if self.val_set is not None and (last or (cfg.eval_interval and self.step % cfg.eval_interval == 0)):
                self._check_loss(logs)
                results = self.run_eval()
            if last or self.step == stop_at or (cfg.ckpt_interval and self.step % cfg.ckpt_interval == 0):
                self._check_loss(logs)
                self.save("last.pt")
            if self._stop_requested():
                if self._last_saved_step != self.step:
                    self._check_loss(logs)
                    self.save("last.pt")
                self.stopped_by = signal.Signals(self._stop_signum).name
                if zdist.is_main():
                    write(
                        f"zss: {self.stopped_by}: stopped after step {self.step}; wrote {self.run_dir / 'last.pt'} "
                        f"(continue with resume={self.run_dir / 'last.pt'} or resume=auto)"
                    )
                break
        return results

    def _check_loss(self, logs: dict) -> dict[str, float]:
        """The step's logs as floats (one host read-back); raises if any step since the start of :meth:`fit` had a
        non-finite loss.

        Raises:
            FloatingPointError: naming the first step with a non-finite loss (the weights have been updated with
                it since; the last ``last.pt`` written before is the last good one).
        """
        vals = {k: float(v) for k, v in logs.items()}
        first = -1 if self._bad_loss_step is None else int(self._bad_loss_step)
        if first >= 0:
            raise FloatingPointError(
                f"non-finite loss at step {first} (checked at step {self.step}: {vals}); lower trainer.lr or use "
                f"trainer.amp=fp32"
            )
        return vals

    def run_eval(self) -> dict:
        """Evaluate on the val set and log scalars/table/overlays. With ``select_best_on_val`` also keep
        ``best_on_val_split.pt`` (best hIoU on the val split, which is the benchmark's TEST split) and report it
        as ``results["best_on_val_split"]``; the results themselves are always this step's.

        Raises:
            FloatingPointError: non-finite weights (:meth:`_check_finite`), before evaluating.
        """
        cfg = self.cfg
        self._check_finite("evaluating")
        overlays: list = []
        names = set(getattr(self.val_set, "names", [])[: cfg.overlay_count])

        def keep(sample, pred):
            if sample.get("name") in names:
                overlays.append((sample, pred.cpu()))

        results = evaluate(
            self.method,
            self.val_set,
            mode=cfg.eval_mode,
            crop=cfg.eval_crop,
            stride=cfg.eval_stride,
            crop_batch=cfg.eval_crop_batch,
            label_space=cfg.label_space,
            seen_bias=cfg.seen_bias,
            amp_dtype=self.amp_dtype if self.amp_dtype is torch.bfloat16 else None,
            device=self.device,
            on_prediction=keep if zdist.is_main() else None,
            progress=zdist.is_main(),
        )
        results["step"] = self.step
        if zdist.is_main():
            self._log({k: results[k] for k in ("mIoU_seen", "mIoU_unseen", "hIoU", "pAcc", "mIoU", "mAcc")}, "val")
            table = format_table(results)
            self.writer.add_text("val/per_class", table.replace("\n", "  \n"), self.step)
            self._overlays(overlays)
            log.info("[step %d] %s", self.step, summary_line(results))
        h = results["hIoU"]
        score = h if h == h else results["mIoU"]  # hIoU is NaN when no unseen class is present
        if cfg.select_best_on_val:  # opt-in: selecting on the val split selects on the benchmark's test split
            if score > self.best["hIoU"]:
                self.best = {
                    "hIoU": float(score),
                    "step": self.step,
                    "file": BEST_ON_VAL_NAME,
                    "selected_on": "val split (the benchmark's test split)",
                }
                self.save(BEST_ON_VAL_NAME)
            results["best_on_val_split"] = dict(self.best)
        return results

    def _overlays(self, overlays: list) -> None:
        from zss.engine.visualize import denormalize, overlay

        mean = getattr(self.val_set, "mean", None) or (0.0, 0.0, 0.0)
        std = getattr(self.val_set, "std", None) or (1.0, 1.0, 1.0)
        for sample, pred in overlays:
            img = denormalize(sample["image"], mean, std)  # [3, H', W'] uint8 (test-resized)
            img = torch.nn.functional.interpolate(img[None].float(), size=tuple(pred.shape), mode="bilinear")
            img = img[0].round().clamp(0, 255).to(torch.uint8)
            both = torch.cat(
                [
                    overlay(img, sample["full_label"], self.method.num_classes),
                    overlay(img, pred, self.method.num_classes),
                ],
                dim=2,
            )  # GT | prediction
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


def _row_step(line: str) -> float:
    """The ``step`` of a ``metrics.jsonl`` row (inf for a row that is not valid JSON)."""
    try:
        return float(json.loads(line).get("step", 0))
    except (ValueError, AttributeError):
        return math.inf


def _restore_handlers(prev: dict) -> None:
    for sig, h in prev.items():
        signal.signal(sig, h if h is not None else signal.SIG_DFL)
