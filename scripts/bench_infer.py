#!/usr/bin/env python
"""Test-time cost side by side: the CLIP-free students, a dense CLIP segmenter, CLIP-RC and ZegCLIP.

    python scripts/bench_infer.py                              # 512² crops, slide on 512x683 images, auto device
    python scripts/bench_infer.py --device cuda --amp bf16 --images 16
    python scripts/bench_infer.py --no-measure                 # params and GFLOPs only (fast on a CPU)
    python scripts/bench_infer.py --tiny                       # smoke: tiny models (seconds)

Models, built as ``scripts/train.py experiment=voc20 method=<m>`` builds them (CLIP-RC / ZegCLIP:
``experiment=<benchmark>_<m>``, the reported row's model; Hydra-composed shipping configs; RANDOM weights,
nothing downloaded: ``model.pretrained=false teacher.pretrained=random``), each in its test-time form:

* ``maskclip`` — a MaskCLIP-style dense CLIP ViT-B/16 segmenter: zss's FrozenCLIP (open_clip
  ``ViT-B-16-quickgelu``) with the MaskCLIP value path in its last block, dense tokens · text embeds
  (:class:`DenseCLIPSegmenter`; the reference of every ratio by default);
* ``clip_zss`` — the CLIP-ZSS student alone (DeepLabV3+ R-101) with the text classifier;
* ``chimera_seg`` — the Chimera-Seg student: body + CLIP Semantic Head (last 2 CLIP blocks);
* ``clip_rc`` / ``zegclip`` — the frozen CLIP image tower + prompts + decoder (training-only recovery decoder
  stripped).

Per model: trainable / test-time parameters (text embeds precomputed, so no text tower), GFLOPs of one
``--image-size``² crop and of one slide-inference image (FLOPs = 2 x MACs, :func:`zss.engine.efficiency.
flop_counter`, which counts the fused attention kernels too), and img/s of sliding-window inference
(crop ``--image-size``, stride 426/512 of it, mmseg's grid: 2 windows on a 512x683 image) on ``--images``
images with the crops batched ``--crop-batch`` at a time (:func:`zss.engine.inference.slide_inference`), and
the peak CUDA memory. Ratios are value / ``--reference``'s value in the same run. On a CPU the absolute
numbers depend on the machine's load; compare ratios within one run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_step import build_method, build_teacher  # noqa: E402

from zss.engine.efficiency import efficiency_report, flop_counter  # noqa: E402
from zss.engine.inference import slide_inference  # noqa: E402
from zss.methods.baseline import SeenOnlyBaseline  # noqa: E402

MODELS = ("maskclip", "clip_zss", "chimera_seg", "clip_rc", "zegclip")
TITLES = {
    "maskclip": "dense CLIP ViT-B/16 (MaskCLIP-style)",
    "clip_zss": "CLIP-ZSS student (DeepLabV3+ R-101)",
    "chimera_seg": "Chimera-Seg student (DLV3+ R-101 + CSH)",
    "clip_rc": "CLIP-RC (CLIP ViT-B/16 + prompts + RC decoder)",
    "zegclip": "ZegCLIP (CLIP ViT-B/16 + prompts + decoder)",
}


class DenseCLIPSegmenter(nn.Module):
    """MaskCLIP-style segmenter: the frozen CLIP image tower with the MaskCLIP value path in its last block
    (:meth:`zss.teachers.clip.FrozenCLIP.run_blocks` with ``maskclip_last``), ``ln_post`` + ``proj``, then
    ``logit_scale · cos(dense token, text embed)`` (test-time cost reference; source: MaskCLIP, Zhou et al. 2022).

    Args:
        clip: a :class:`~zss.teachers.clip.FrozenCLIP` (its image tower is registered here, so parameter counts
            are the tower's; the text tower is not needed at test time).
        text_embeds: ``Tensor[C, D] float32`` class embeddings (L2-normalised).
        logit_scale: multiplier of the cosines [ours: 1/0.07, the students' scale].
    """

    def __init__(self, clip: nn.Module, text_embeds: Tensor, logit_scale: float = 1 / 0.07) -> None:
        super().__init__()
        object.__setattr__(self, "clip", clip)  # unregistered: only the image tower counts
        self.visual = clip.model.visual
        self.register_buffer("text_embeds", F.normalize(text_embeds.float(), dim=-1))
        self.logit_scale = float(logit_scale)

    def _apply(self, fn, recurse=True):  # keep the (unregistered) CLIP wrapper's buffers with the tower
        out = super()._apply(fn, recurse)
        self.clip._apply(fn, recurse)
        return out

    def predict(self, images: Tensor) -> Tensor:
        """``Tensor[B, 3, H, W]`` (dataset-normalised) -> logits ``Tensor[B, C, H/16, W/16] float32``."""
        c = self.clip
        tok, (h, w) = c.embed(c.prepare(images))
        tok = c.run_blocks(tok, 0, maskclip_last=True)
        dense = F.normalize(c.project(tok[:, 1:]).float(), dim=-1)  # [B, N, D]
        logits = self.logit_scale * dense @ self.text_embeds.t()  # [B, N, C]
        return logits.transpose(1, 2).reshape(images.shape[0], -1, h, w)

    def forward(self, images: Tensor) -> Tensor:
        return self.predict(images)


def build(name: str, teacher, tiny: bool, overrides: list[str]) -> nn.Module:
    """The test-time model of ``name`` (an object with ``predict(images) -> logits``)."""
    if name == "maskclip":
        method, _ = build_method("seen_only", teacher, tiny, overrides)  # for the class names' text embeds
        return DenseCLIPSegmenter(teacher, method.text_embeds)
    method, _ = build_method(name, teacher, tiny, overrides)
    if name in ("clip_rc", "zegclip"):
        method.strip_for_inference()  # the recovery decoder is training-only
        return method
    # CLIP-ZSS / Chimera-Seg run their student alone at test time (Method.predict: student + text embeds)
    return SeenOnlyBaseline(
        method.student, None, method.classnames, method.unseen.tolist(), text_embeds=method.text_embeds
    )


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def slide_geometry(crop: int) -> tuple[int, int, int]:
    """(stride, image H, image W) for a crop side: the protocol's 426/512 stride on a 512x683 image, scaled."""
    return max(1, round(426 * crop / 512)), crop, round(683 * crop / 512)


@torch.no_grad()
def measure(model: nn.Module, args, device) -> dict:
    """Params, GFLOPs (crop and slide image) and, unless ``--no-measure``, slide img/s and peak memory."""
    rep = efficiency_report(model, image_size=(args.image_size, args.image_size), device=device, measure=False)
    stride, H, W = slide_geometry(args.image_size)
    model.to(device).eval()
    fn = model.predict
    one = torch.randn(1, 3, H, W, device=device)
    with flop_counter(depth=1) as fc:
        slide_inference(fn, one, None, args.image_size, stride, args.crop_batch)
    rep.update(
        slide_gflops=fc.get_total_flops() / 1e9,
        slide_image=[H, W],
        slide_stride=stride,
        img_per_s=None,
        peak_mem_mib=None,
    )
    if not args.no_measure:
        amp = torch.bfloat16 if args.amp == "bf16" else None
        x = torch.randn(args.images, 3, H, W, device=device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            for _ in range(args.warmup):
                slide_inference(fn, x, None, args.image_size, stride, args.crop_batch)
            _sync(device)
            t0 = time.perf_counter()
            for _ in range(args.iters):
                slide_inference(fn, x, None, args.image_size, stride, args.crop_batch)
            _sync(device)
        rep["img_per_s"] = args.images * args.iters / max(time.perf_counter() - t0, 1e-9)
        if device.type == "cuda":
            rep["peak_mem_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    model.cpu()
    return rep


def table(reports: dict[str, dict], ref: str, args) -> str:
    """Markdown table with ratios against ``ref`` (value / reference value)."""
    r = reports[ref]
    stride, H, W = slide_geometry(args.image_size)
    head = [
        "model",
        "trainable params (M)",
        "test-time params (M)",
        f"GFLOPs @{args.image_size}²",
        f"GFLOPs / {H}x{W} image (slide)",
        "img/s (slide)",
        "peak mem MiB",
        f"params x {ref}",
        f"GFLOPs x {ref}",
        f"img/s x {ref}",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def ratio(a, b):
        return "-" if a is None or b in (None, 0) else f"{a / b:.2f}"

    for name, rep in reports.items():
        ips, mem = rep.get("img_per_s"), rep.get("peak_mem_mib")
        row = [
            TITLES[name],
            f"{rep['trainable_params'] / 1e6:.2f}",
            f"{rep['total_params'] / 1e6:.2f}",
            f"{rep['gflops']:.2f}",
            f"{rep['slide_gflops']:.2f}",
            "-" if ips is None else f"{ips:.2f}",
            "-" if mem is None else f"{mem:.0f}",
            ratio(rep["total_params"], r["total_params"]),
            ratio(rep["gflops"], r["gflops"]),
            ratio(ips, r.get("img_per_s")),
        ]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    p.add_argument("--reference", default="maskclip", choices=MODELS, help="ratios are value / this model's value")
    p.add_argument("--image-size", type=int, default=None, help="crop side, pixels (default 512; --tiny 64)")
    p.add_argument("--benchmark", default="voc20", help="dataset config whose classes are scored (voc20 | ...)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--amp", default=None, choices=("fp32", "bf16"), help="autocast (default: bf16 on CUDA, else fp32)")
    p.add_argument("--images", type=int, default=None, help="images per timed call (default: 16 on CUDA, 2 on CPU)")
    p.add_argument("--crop-batch", type=int, default=8, help="crops per forward in the slide (trainer default 8)")
    p.add_argument("--warmup", type=int, default=None, help="untimed calls (default: 2 on CUDA, 1 on CPU)")
    p.add_argument("--iters", type=int, default=None, help="timed calls (default: 5 on CUDA, 2 on CPU)")
    p.add_argument("--no-measure", action="store_true", help="params and GFLOPs only")
    p.add_argument("--tiny", action="store_true", help="smoke config: tiny student/teacher, 64² crops")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--override", nargs="*", default=[], help="extra Hydra overrides for every model")
    p.add_argument("--json", default=None, help="also write the reports to this file")
    p.add_argument("--batch-size", type=int, default=None, help=argparse.SUPPRESS)  # compare_efficiency's name
    args = p.parse_args(argv)
    if args.reference not in args.models:
        p.error(f"--reference {args.reference} is not among --models {args.models}")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else ("cpu" if args.device == "auto" else args.device)
    )
    cuda = device.type == "cuda"
    args.image_size = args.image_size or (64 if args.tiny else 512)
    args.amp = args.amp or ("bf16" if cuda else "fp32")
    args.images = args.images or args.batch_size or (16 if cuda else 2)
    args.warmup = args.warmup if args.warmup is not None else (2 if cuda else 1)
    args.iters = args.iters or (5 if cuda else 2)
    overrides = list(args.override) + ([f"dataset={args.benchmark}"] if args.benchmark != "voc20" else [])

    teacher = build_teacher(args.tiny, overrides)
    reports = {}
    for name in args.models:
        print(f"[bench_infer] {name} ...", file=sys.stderr, flush=True)
        model = build(name, teacher, args.tiny, overrides)
        reports[name] = measure(model, args, device)
        del model
        if cuda:
            torch.cuda.empty_cache()
    any_rep = next(iter(reports.values()))
    stride, H, W = slide_geometry(args.image_size)
    print(
        f"### Test-time cost, {args.image_size}² crops, slide stride {stride} on {H}x{W} images "
        f"({args.benchmark}), random weights{' (--tiny smoke models)' if args.tiny else ''}"
    )
    print()
    print(table(reports, args.reference, args))
    print()
    timed = (
        "not measured (--no-measure)"
        if args.no_measure
        else (
            f"{args.images} images per call, crops batched {args.crop_batch}, {args.amp}, {args.iters} calls after "
            f"{args.warmup} warm-up"
        )
    )
    print(
        f"device: {any_rep.get('device')}, {any_rep.get('threads')} CPU threads; img/s: {timed}. FLOPs = 2 x MACs "
        f"(halve for papers that report MACs), fused attention kernels counted. Ratios: value / "
        f"{args.reference}'s value, same run."
    )
    if args.json:
        Path(args.json).write_text(json.dumps(reports, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
