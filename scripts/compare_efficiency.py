#!/usr/bin/env python
"""Side-by-side test-time efficiency of CLIP-RC, ZegCLIP and the CLIP-free students (docs/clip_rc.md).

    python scripts/compare_efficiency.py                      # 512x512, VOC's 20 classes, auto device
    python scripts/compare_efficiency.py --device cuda --amp bf16 --batch-size 8 --reference clip_rc
    python scripts/compare_efficiency.py --no-measure         # params and GFLOPs only (fast on a CPU)

Every model is built at its published size with RANDOM weights (nothing is downloaded): CLIP ViT-B/16
(open_clip ``ViT-B-16-quickgelu`` architecture) for CLIP-RC / ZegCLIP / Chimera-Seg's CLIP Semantic Head,
DeepLabV3+ ResNet-101 (configs/model/deeplabv3plus_r101.yaml) for the students. Measured on the same
machine in one run, with ratios against ``--reference``:

* params: trainable (what training updates) / total of the TEST-TIME model (CLIP-RC and ZegCLIP: the frozen
  CLIP image tower + prompts + decoder, no text tower (text embeds are precomputed) and no training-only
  recovery decoder; CLIP-ZSS: the student; Chimera-Seg: the student body + its CLIP Semantic Head).
* GFLOPs of one 512² forward, FLOPs = 2 x MACs (zss.engine.efficiency), counted with torch's MHA fast path
  and fused attention kernels disabled so that attention matmuls are counted on every device (torch's
  counter misses them otherwise).
* img/s: measured with :func:`zss.engine.efficiency.measure_throughput` at batch 1 and ``--batch-size``.
  On a CPU the absolute numbers depend on the machine's load; compare ratios within one run.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from zss.data.classes import get_benchmark  # noqa: E402
from zss.engine.efficiency import efficiency_report  # noqa: E402
from zss.methods.baseline import SeenOnlyBaseline  # noqa: E402
from zss.methods.chimera_seg import ChimeraSeg  # noqa: E402
from zss.methods.clip_rc import ClipRC  # noqa: E402
from zss.models.student import Student  # noqa: E402
from zss.teachers.clip import FrozenCLIP  # noqa: E402

MODELS = ("clip_rc", "zegclip", "clip_zss", "chimera_seg")
TITLES = {
    "clip_rc": "CLIP-RC (CLIP ViT-B/16 + prompts + RC decoder)",
    "zegclip": "ZegCLIP (CLIP ViT-B/16 + prompts + decoder)",
    "clip_zss": "CLIP-ZSS student (DeepLabV3+ R-101)",
    "chimera_seg": "Chimera-Seg student (DLV3+ R-101 + CSH)",
}
# ZegCLIP on CLIP-RC's machinery: configs/method/zegclip.yaml
ZEGCLIP = dict(region_grid=0, bidirectional=False, lateral_proj=False, logits="attention", recovery_weight=0.0)


@contextlib.contextmanager
def exact_attention_flops():
    """MHA without its fused fast path and SDPA on its math kernel, so FlopCounterMode sees every matmul."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    old = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with sdpa_kernel(SDPBackend.MATH):
            yield
    finally:
        torch.backends.mha.set_fastpath_enabled(old)


def _student(embed_dim: int) -> Student:
    """DeepLabV3+ R-101 of configs/model/deeplabv3plus_r101.yaml, random init."""
    return Student(backbone="resnet101.tv_in1k", embed_dim=embed_dim, decoder="aspp", decoder_channels=256,
                   pretrained=False)


def build(name: str, clip: FrozenCLIP, classnames: list[str], unseen: list[int], text: torch.Tensor) -> torch.nn.Module:
    """The test-time model of ``name`` (a Method whose ``predict`` is the test path)."""
    torch.manual_seed(0)
    if name in ("clip_rc", "zegclip"):
        m = ClipRC(None, clip, classnames, unseen, text_embeds=text, num_prompts=10,
                   **(ZEGCLIP if name == "zegclip" else {}))
        m.strip_for_inference()  # the recovery decoder is training-only
        return m
    if name == "clip_zss":  # CLIP-ZSS runs its student alone (Method.predict): student + text embeds
        return SeenOnlyBaseline(_student(clip.embed_dim), None, classnames, unseen, text_embeds=text)
    if name == "chimera_seg":  # configs/method/chimera_seg.yaml defaults: body + CSH (last 2 CLIP blocks)
        chim = ChimeraSeg(_student(clip.embed_dim), clip, classnames, unseen, text_embeds=text)
        return SeenOnlyBaseline(chim.student, None, classnames, unseen, text_embeds=text)
    raise ValueError(f"unknown model {name!r}; choose from {MODELS}")


def measure(model: torch.nn.Module, args, device: torch.device) -> dict:
    """Params + exact GFLOPs (measure=False under :func:`exact_attention_flops`) + timed img/s (normal kernels)."""
    amp = torch.bfloat16 if args.amp == "bf16" else None
    with exact_attention_flops():
        rep = efficiency_report(model, image_size=(args.image_size, args.image_size), device=device, measure=False)
    if not args.no_measure:
        timed = efficiency_report(model, image_size=(args.image_size, args.image_size), device=device,
                                  warmup=args.warmup, iters=args.iters, amp_dtype=amp, batch_size=args.batch_size)
        rep["img_per_s"], rep["peak_mem_mib"], rep["dtype"] = timed["img_per_s"], timed["peak_mem_mib"], timed["dtype"]
    return rep


def table(reports: dict[str, dict], ref: str, args) -> str:
    """Markdown table with ratios against ``ref`` (value / reference value)."""
    r = reports[ref]
    bs = sorted({b for rep in reports.values() for b in (rep.get("img_per_s") or {})})
    head = ["model", "trainable params (M)", "test-time params (M)", f"GFLOPs @{args.image_size}²"]
    head += [f"img/s @b{b}" for b in bs]
    head += [f"params x{ref}", f"GFLOPs x{ref}"] + [f"img/s @b{b} x{ref}" for b in bs]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def ratio(a, b):
        return "-" if a is None or b in (None, 0) else f"{a / b:.2f}"

    for name, rep in reports.items():
        ips = rep.get("img_per_s") or {}
        row = [TITLES[name], f"{rep['trainable_params'] / 1e6:.2f}", f"{rep['total_params'] / 1e6:.2f}",
               f"{rep['gflops']:.1f}"]
        row += ["-" if ips.get(b) is None else f"{ips[b]:.2f}" for b in bs]
        row += [ratio(rep["total_params"], r["total_params"]), ratio(rep["gflops"], r["gflops"])]
        row += [ratio(ips.get(b), (r.get("img_per_s") or {}).get(b)) for b in bs]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    p.add_argument("--reference", default="clip_rc", choices=MODELS, help="ratios are value / this model's value")
    p.add_argument("--image-size", type=int, default=512, help="square input side, pixels (protocol crop: 512)")
    p.add_argument("--benchmark", default="voc20", help="class list for the text embeds (voc20 | cocostuff171 ...)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--amp", default="fp32", choices=("fp32", "bf16"), help="autocast of the timed calls")
    p.add_argument("--batch-size", type=int, default=None, help="second timed batch (default: 8 on CUDA, 1 on CPU)")
    p.add_argument("--warmup", type=int, default=None, help="untimed calls (default: 2 on CUDA, 1 on CPU)")
    p.add_argument("--iters", type=int, default=None, help="timed calls (default: 5 on CUDA, 2 on CPU)")
    p.add_argument("--no-measure", action="store_true", help="params and GFLOPs only")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--json", default=None, help="also write the reports to this file")
    args = p.parse_args(argv)
    if args.reference not in args.models:
        p.error(f"--reference {args.reference} is not among --models {args.models}")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    cuda = device.type == "cuda"
    args.batch_size = args.batch_size or (8 if cuda else 1)
    args.warmup = args.warmup if args.warmup is not None else (2 if cuda else 1)
    args.iters = args.iters or (5 if cuda else 2)

    bench = get_benchmark(args.benchmark)
    classnames, unseen = list(bench.classes), list(bench.unseen)
    clip = FrozenCLIP("ViT-B-16-quickgelu", pretrained="random", dense_mode="tokens", hash_weights=False)
    text = F.normalize(torch.randn(len(classnames), clip.embed_dim, generator=torch.Generator().manual_seed(0)), dim=-1)
    reports = {}
    for name in args.models:
        model = build(name, clip, classnames, unseen, text)
        print(f"measuring {name} ...", file=sys.stderr, flush=True)
        reports[name] = measure(model, args, device)
        del model
        if cuda:
            torch.cuda.empty_cache()
    any_rep = next(iter(reports.values()))
    print(f"### Test-time efficiency, {args.image_size}x{args.image_size}, {len(classnames)} classes "
          f"({args.benchmark}), random weights")
    print()
    print(table(reports, args.reference, args))
    print()
    print(f"device: {any_rep.get('device')}, {any_rep.get('threads')} CPU threads, timed dtype "
          f"{any_rep.get('dtype')}; img/s over {args.iters} calls after {args.warmup} warm-up. FLOPs = 2 x MACs "
          f"(halve for papers that report MACs). Ratios: value / {args.reference}'s value, same run.")
    if args.json:
        Path(args.json).write_text(json.dumps(reports, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
