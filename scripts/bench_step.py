#!/usr/bin/env python
"""Training-step time per method at the reference recipe, with a breakdown and host-sync counts.

    python scripts/bench_step.py                                  # auto device; GPU: batch 16 bf16, CPU: batch 2
    python scripts/bench_step.py --device cuda --batch 16 --steps 20 --peak-tflops 989.4
    python scripts/bench_step.py --tiny                           # smoke: tiny models, 64², 2 steps (seconds)

Models are the shipping configs composed by Hydra exactly as ``scripts/train.py experiment=voc20 method=<m>``
(CLIP-RC / ZegCLIP: ``experiment=<dataset>_<m>``, the reported row's model) builds them
(configs/experiment/voc20.yaml: DeepLabV3+ ResNet-101 student, configs/model/deeplabv3plus_r101.yaml, and the
open_clip ``ViT-B-16-quickgelu`` teacher, configs/teacher/clip_vitb16.yaml), with RANDOM weights
(``model.pretrained=false teacher.pretrained=random``: nothing is downloaded; the cost does not depend on the
weights). One step = ``zero_grad`` + ``method.training_step`` under autocast + ``backward`` + AdamW ``step`` on
a synthetic VOC-like batch (blocks of the 20 classes, unseen ones hidden as 255) of ``--size``² crops.

Printed (markdown):

* per method: median step time over ``--steps`` steps after ``--warmup`` (synchronised on CUDA), its ratio to
  the seen-only step of the SAME run, img/s, peak memory (CUDA: ``max_memory_allocated``; CPU: the process's
  peak RSS so far, which only grows across methods), FLOPs of one step (forward + backward, counted with
  :func:`zss.engine.efficiency.flop_counter`; FLOPs = 2 x MACs), achieved TFLOP/s, MFU against
  ``--peak-tflops`` (default: the device's dense bf16 peak when known: H100/H200 SXM 989.4, H100 PCIe 756,
  A100 312), and the host syncs of one step;
* a breakdown of the CLIP-ZSS and Chimera-Seg steps (teacher forward, pseudo labels incl. K-Means,
  synthesizer, losses, student forward, backward, optimizer), timed in a separate pass with a device
  synchronisation at every boundary (so the parts add up to a little more than the plain step).

Host syncs: on CUDA, ``torch.cuda.set_sync_debug_mode("warn")`` warnings during one full step (optimizer
included). On a CPU nothing waits, so :class:`zss.engine.syncs.HostSyncCounter` counts the ops that WOULD sync
on CUDA (``.item()``/``bool()``, ``nonzero``, boolean masks, ``.tolist()``...) during ``training_step`` +
``backward``, with CLIP-ZSS's pseudo labels on their CUDA code path (``sync_free=True``).

CPU: ``--amp auto`` times the seen-only step under fp32 and bf16 autocast and keeps the faster (both printed).
On a shared CPU absolute times are loose; compare the ratios of one run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from zss.engine.efficiency import flop_counter  # noqa: E402
from zss.engine.syncs import HostSyncCounter  # noqa: E402

#: benchmark name -> configs/method/<name>.yaml
METHODS = {
    "seen_only": "baseline",
    "clip_zss": "clip_zss",
    "chimera_seg": "chimera_seg",
    "clip_rc": "clip_rc",
    "zegclip": "zegclip",
}
TITLES = {
    "seen_only": "seen-only",
    "clip_zss": "CLIP-ZSS",
    "chimera_seg": "Chimera-Seg",
    "clip_rc": "CLIP-RC",
    "zegclip": "ZegCLIP",
}
#: reference architectures, random weights (configs/experiment/voc20.yaml)
REFERENCE = ["experiment=voc20", "model.pretrained=false", "teacher.pretrained=random"]
#: --tiny: small random student and teacher (3 CLIP blocks: Chimera's CSH takes the last 2)
TINY = [
    "experiment=voc20",
    "model=demo_resnet18",
    "model.backbone=test_resnet",
    "model.decoder_channels=16",
    "teacher=tiny_random",
    "teacher.embed_dim=32",
    "teacher.patch_size=8",
    "teacher.layers=3",
    "teacher.image_size=64",
]
#: dense bf16 tensor-core peak, TFLOP/s (vendor data sheets, without sparsity), matched in the device name
PEAK_BF16_TFLOPS = (("H200", 989.4), ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.4), ("A100", 312.0))


#: how the host-sync column was counted, per device (printed under the table)
SYNCS_CUDA = "CUDA sync-debug warnings over one whole step"
SYNCS_CPU = (
    "ops that sync on CUDA, counted by zss.engine.syncs.HostSyncCounter over training_step + backward "
    "(pseudo labels on their CUDA path, sync_free=True)"
)


def compose(method: str, tiny: bool, extra: list[str] | None = None):
    """The composed train config of ``scripts/train.py <overrides> method=<method>``."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    overrides = (TINY if tiny else REFERENCE) + [f"method={METHODS[method]}"] + list(extra or [])
    # CLIP-RC / ZegCLIP: the benchmark's row experiment (configs/experiment/<dataset>_<method>.yaml) holds the public
    # code's per-benchmark method values (COCO-Stuff: 100 prompts); VOC's are the method config's own
    dataset = next((o.split("=", 1)[1] for o in overrides if o.startswith("dataset=")), "voc20")
    row = f"{dataset}_{METHODS[method]}"
    if (REPO / "configs" / "experiment" / f"{row}.yaml").is_file():
        overrides = [f"experiment={row}" if o == "experiment=voc20" else o for o in overrides]
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        return hydra_compose("train", overrides=overrides)


def build_teacher(tiny: bool, extra: list[str] | None = None):
    """The frozen teacher of the reference recipe (or the tiny one), shared by every method of a run."""
    from zss.cli.common import build_benchmark
    from zss.cli.common import build_teacher as _build_teacher

    cfg = compose("seen_only", tiny, extra)
    return _build_teacher(cfg, build_benchmark(cfg.dataset))


def build_method(name: str, teacher, tiny: bool, extra: list[str] | None = None):
    """``name``'s Method exactly as ``scripts/train.py`` builds it (student from the model config, the given
    teacher)."""
    from zss.cli.common import build_benchmark, build_student, templates_for, uses_student
    from zss.cli.common import build_method as _build_method

    cfg = compose(name, tiny, extra)
    bench = build_benchmark(cfg.dataset)
    torch.manual_seed(0)
    student = (
        build_student(cfg.model, int(teacher.embed_dim), cfg.dataset.mean, cfg.dataset.std)
        if uses_student(cfg.method)
        else None
    )
    return _build_method(
        cfg.method,
        student=student,
        teacher=teacher,
        classnames=list(bench.classes),
        unseen=list(bench.unseen),
        templates=templates_for(cfg.dataset, bench),
    ), cfg


def make_batch(batch: int, size: int, unseen: list[int], num_classes: int, device, seed: int = 0) -> dict:
    """Synthetic VOC-like batch: ``image`` N(0, 1) ``[B, 3, S, S]``; ``label`` of 8x8 blocks of random classes
    and ignore (255), unseen classes hidden as 255 (the training label); ``valid`` all True."""
    g = torch.Generator().manual_seed(seed)
    blocks = torch.randint(0, num_classes + 1, (batch, 8, 8), generator=g)
    blocks[blocks == num_classes] = 255
    label = torch.nn.functional.interpolate(blocks[:, None].float(), size=(size, size), mode="nearest")[:, 0].long()
    label[torch.isin(label, torch.tensor(unseen))] = 255
    return {
        "image": torch.randn(batch, 3, size, size, generator=g).to(device),
        "label": label.to(device),
        "valid": torch.ones(batch, size, size, dtype=torch.bool, device=device),
    }


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Runner:
    """One method's optimizer step on a fixed batch (AdamW, the recipe's param groups)."""

    def __init__(self, method, batch: dict, device, amp, lr: float = 2e-5):
        self.method, self.batch, self.device, self.amp = method.to(device).train(), batch, device, amp
        self.opt = torch.optim.AdamW(
            method.param_groups(lr, head_lr_mult=10.0, weight_decay=0.01), lr=lr, weight_decay=0.01
        )
        self.n = 0

    def forward(self):
        self.method.set_step(self.n)
        self.method.on_step(self.n, 20000)
        with torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None):
            return self.method.training_step(self.batch)

    def step(self, timer: "PhaseTimer | None" = None) -> None:
        t = timer or PhaseTimer(None)
        with t("optimizer"):
            self.opt.zero_grad(set_to_none=True)
        with t("forward (training_step)"):
            out = self.forward()
        with t("backward"):
            out["loss"].backward()
        with t("optimizer"):
            self.opt.step()
        self.n += 1

    def time_steps(self, warmup: int, steps: int) -> list[float]:
        for _ in range(warmup):
            self.step()
        _sync(self.device)
        times = []
        for _ in range(steps):
            t0 = time.perf_counter()
            self.step()
            _sync(self.device)
            times.append(time.perf_counter() - t0)
        return times


class PhaseTimer:
    """Accumulates wall time per named phase of one step, synchronising the device at every boundary
    (``device=None``: a no-op). Nested phases are timed on their own (and also inside their parent)."""

    def __init__(self, device):
        self.device, self.times = device, {}

    @contextlib.contextmanager
    def __call__(self, name: str):
        if self.device is None:
            yield
            return
        _sync(self.device)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            _sync(self.device)
            self.times[name] = self.times.get(name, 0.0) + time.perf_counter() - t0

    def wrap_module(self, module, name: str) -> list:
        """Time every call of ``module`` (forward pre/post hooks) as ``name``; returns the hook handles."""
        state = {}

        def pre(*_):
            _sync(self.device)
            state["t0"] = time.perf_counter()

        def post(*_):
            _sync(self.device)
            self.times[name] = self.times.get(name, 0.0) + time.perf_counter() - state["t0"]

        return [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]


def breakdown(runner: Runner, name: str, steps: int) -> dict[str, float]:
    """Median ms per phase over ``steps`` instrumented steps (CLIP-ZSS / Chimera-Seg parts; see module doc)."""
    m, dev = runner.method, runner.device
    rows: list[dict[str, float]] = []
    for _ in range(steps):
        t = PhaseTimer(dev)
        handles = t.wrap_module(m.student, "student forward") + t.wrap_module(m.teacher, "teacher forward")
        restore = []
        if name == "clip_zss":
            if m.synthesizer is not None:
                handles += t.wrap_module(m.synthesizer, "synthesizer")
            orig = m._fused_labels

            def fused(*a, _orig=orig, _t=t, **k):
                with _t("pseudo labels (incl. K-Means)"):
                    return _orig(*a, **k)

            m._fused_labels = fused
            restore.append(lambda: m.__dict__.pop("_fused_labels", None))
        elif name == "chimera_seg":
            handles += t.wrap_module(m.student.csh, "  of which CSH")
        try:
            runner.step(t)
        finally:
            for h in handles:
                h.remove()
            for r in restore:
                r()
        parts = dict(t.times)
        fwd = parts.pop("forward (training_step)")
        inner = sum(
            v
            for k, v in parts.items()
            if k in ("student forward", "teacher forward", "synthesizer", "pseudo labels (incl. K-Means)")
        )
        parts["losses (rest of training_step)"] = max(fwd - inner, 0.0)
        rows.append(parts)
    keys = [k for k in PHASES if any(k in r for r in rows)]
    return {k: 1e3 * statistics.median(r.get(k, 0.0) for r in rows) for k in keys}


#: breakdown rows in step order (indented: nested in the row above, not added to the sum)
PHASES = (
    "teacher forward",
    "pseudo labels (incl. K-Means)",
    "synthesizer",
    "losses (rest of training_step)",
    "student forward",
    "  of which CSH",
    "backward",
    "optimizer",
)


def count_syncs(runner: Runner) -> tuple[int, str]:
    """Host syncs of one step: CUDA sync-debug warnings (full step), or HostSyncCounter on CPU (see doc)."""
    if runner.device.type == "cuda":
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                runner.step()
                torch.cuda.synchronize()
            finally:
                torch.cuda.set_sync_debug_mode("default")
        n = sum("synchroniz" in str(w.message) for w in caught)
        return n, "cuda sync-debug warnings, whole step"
    m = runner.method
    pl = getattr(m, "pl_kwargs", None)
    saved = None if pl is None else dict(pl)
    if pl is not None:
        pl["sync_free"] = True  # the CUDA code path of the pseudo labels
    try:
        with HostSyncCounter() as c:
            out = runner.forward()
            out["loss"].backward()
    finally:
        if pl is not None:
            pl.clear()
            pl.update(saved)
    runner.opt.zero_grad(set_to_none=True)
    return c.total, c.report(5)


def step_flops(runner: Runner) -> int:
    """FLOPs (2 x MACs) of one forward + backward (teacher and K-Means included; optimizer not)."""
    with flop_counter(depth=1) as fc:
        out = runner.forward()
        out["loss"].backward()
    runner.opt.zero_grad(set_to_none=True)
    return int(fc.get_total_flops())


def peak_tflops(device, given: float | None) -> float | None:
    if given is not None:
        return given
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_TFLOPS if k in name), None)


def peak_memory_mib(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def choose_cpu_amp(teacher, args, device) -> tuple[torch.dtype | None, str]:
    """CPU ``--amp auto``: time the seen-only step in fp32 and under bf16 autocast; keep the faster."""
    method, _ = build_method("seen_only", teacher, args.tiny, args.override)
    batch = make_batch(args.batch, args.size, list(method.unseen.tolist()), method.num_classes, device)
    res = {}
    for label, amp in (("fp32", None), ("bf16", torch.bfloat16)):
        res[label] = statistics.median(Runner(method, batch, device, amp).time_steps(1, max(2, args.steps // 3)))
    best = min(res, key=res.get)
    flags = (
        " ".join(f for f in ("avx512_bf16", "amx_bf16") if f in Path("/proc/cpuinfo").read_text())
        if Path("/proc/cpuinfo").exists()
        else ""
    )
    note = (
        f"CPU amp: seen-only step {res['fp32'] * 1e3:.0f} ms fp32 vs {res['bf16'] * 1e3:.0f} ms bf16 autocast "
        f"-> {best} (CPU bf16 flags: {flags or 'none'})"
    )
    return (torch.bfloat16 if best == "bf16" else None), note


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--batch", type=int, default=None, help="images per step (default: 16 on CUDA, 2 on CPU)")
    p.add_argument("--size", type=int, default=None, help="square crop side, pixels (default 512; --tiny 64)")
    p.add_argument("--steps", type=int, default=None, help="timed steps, median reported (default 10; --tiny 2)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 3; --tiny 1)")
    p.add_argument(
        "--amp",
        default="auto",
        choices=("auto", "bf16", "fp32"),
        help="autocast dtype; auto: bf16 on CUDA, on CPU the faster of fp32 / bf16 (measured)",
    )
    p.add_argument(
        "--peak-tflops",
        type=float,
        default=None,
        help="device peak TFLOP/s for MFU (default: dense bf16 peak of known GPUs, none on CPU)",
    )
    p.add_argument("--no-breakdown", action="store_true", help="skip the CLIP-ZSS / Chimera-Seg breakdown")
    p.add_argument("--tiny", action="store_true", help="smoke config: tiny student/teacher, 64², 2 steps")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--override", nargs="*", default=[], help="extra Hydra overrides for every method")
    p.add_argument("--json", default=None, help="also write the results to this file")
    p.add_argument(
        "--channels-last",
        action="store_true",
        help="student weights and images in channels_last (as trainer.channels_last=true)",
    )
    p.add_argument("--compile", action="store_true", help="torch.compile the student (as trainer.compile=true)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else ("cpu" if args.device == "auto" else args.device)
    )
    cuda = device.type == "cuda"
    args.batch = args.batch or (16 if cuda else 2)
    args.size = args.size or (64 if args.tiny else 512)
    args.steps = args.steps or (2 if args.tiny else 10)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.tiny else 3)
    if "seen_only" not in args.methods:
        args.methods = ["seen_only"] + args.methods  # the reference of every ratio

    teacher = build_teacher(args.tiny, args.override)
    notes = []
    if args.amp == "auto" and not cuda:
        amp, note = choose_cpu_amp(teacher, args, device)
        notes.append(note)
    else:
        amp = None if args.amp == "fp32" else torch.bfloat16
    peak = peak_tflops(device, args.peak_tflops)
    results, breakdowns = {}, {}
    for name in args.methods:
        print(f"[bench_step] {name} ...", file=sys.stderr, flush=True)
        method, _ = build_method(name, teacher, args.tiny, args.override)
        batch = make_batch(args.batch, args.size, list(method.unseen.tolist()), method.num_classes, device)
        student = getattr(method, "student", None)
        if args.channels_last and student is not None:  # as the trainer does (zss/engine/trainer.py)
            student.to(memory_format=torch.channels_last)
            batch["image"] = batch["image"].contiguous(memory_format=torch.channels_last)
        if args.compile and student is not None:
            student.compile()
        runner = Runner(method, batch, device, amp)
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        times = runner.time_steps(args.warmup, args.steps)
        mem = peak_memory_mib(device)
        flops = step_flops(runner)
        syncs, where = count_syncs(runner)
        med = statistics.median(times)
        results[name] = dict(
            step_s=med,
            steps_s=times,
            img_per_s=args.batch / med,
            peak_mem_mib=mem,
            gflop_per_step=flops / 1e9,
            tflops=flops / med / 1e12,
            host_syncs=syncs,
            sync_sites=where,
        )
        if not args.no_breakdown and name in ("clip_zss", "chimera_seg"):
            breakdowns[name] = breakdown(runner, name, max(1, min(args.steps, 5)))
        del runner, method, batch
        if cuda:
            torch.cuda.empty_cache()

    base = results["seen_only"]["step_s"]
    dev_name = torch.cuda.get_device_name(device) if cuda else f"cpu, {torch.get_num_threads()} threads"
    amp_name = "bf16 autocast" if amp is not None else "fp32"
    amp_name += "".join(
        f", {k}" for k, on in (("channels_last", args.channels_last), ("compiled student", args.compile)) if on
    )
    print(
        f"### Training step, batch {args.batch} x {args.size}², {amp_name}, {dev_name}"
        f"{' (--tiny smoke models)' if args.tiny else ', reference architectures, random weights'}"
    )
    print()
    head = [
        "method",
        "step ms (median)",
        "x seen-only",
        "img/s",
        "peak mem MiB",
        "GFLOP/step",
        "TFLOP/s",
        "MFU",
        "host syncs/step",
    ]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for name, r in results.items():
        mfu = f"{100 * r['tflops'] / peak:.1f}%" if peak else "-"
        print(
            f"| {TITLES[name]} | {1e3 * r['step_s']:.1f} | {r['step_s'] / base:.2f} | {r['img_per_s']:.2f} | "
            f"{r['peak_mem_mib']:.0f} | {r['gflop_per_step']:.1f} | {r['tflops']:.3f} | {mfu} | {r['host_syncs']} |"
        )
    print()
    print(
        f"median of {args.steps} steps after {args.warmup} warm-up; ratios: step time / the seen-only step of "
        f"this run. FLOPs = 2 x MACs of forward + backward (teacher, K-Means included). MFU vs "
        f"{'%.1f TFLOP/s' % peak if peak else 'no peak (pass --peak-tflops)'}. Peak memory: "
        f"{'torch.cuda.max_memory_allocated' if cuda else 'process peak RSS so far (grows across rows)'}. "
        f"Host syncs: {SYNCS_CUDA if cuda else SYNCS_CPU}."
    )
    for n in notes:
        print(n)
    for name, r in results.items():
        if r["host_syncs"]:
            print(f"{TITLES[name]} sync sites: {r['sync_sites']}")
    for name, parts in breakdowns.items():
        total = sum(v for k, v in parts.items() if not k.startswith("  "))
        print()
        print(f"#### {TITLES[name]} step breakdown (synchronised at every boundary; sum {total:.1f} ms)")
        print()
        print("| part | ms | % of sum |")
        print("|---|---:|---:|")
        for k, v in parts.items():
            print(f"| {k} | {v:.1f} | {100 * v / max(total, 1e-9):.1f} |")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                dict(
                    results=results,
                    breakdowns=breakdowns,
                    device=dev_name,
                    amp=amp_name,
                    batch=args.batch,
                    size=args.size,
                    notes=notes,
                    peak_tflops=peak,
                ),
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
