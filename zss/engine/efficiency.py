"""Model efficiency: parameter counts, FLOPs of one forward pass, and measured throughput.

The claim of distillation-based ZSS (docs/architecture.md "Measuring speed") is that the test-time model (the student
alone) is cheaper than CLIP-based segmenters; :func:`efficiency_report` gives the numbers to back that claim
for any ``nn.Module`` or :class:`~zss.methods.base.Method` and :func:`format_efficiency` prints them.

FLOPs convention: ``torch.utils.flop_counter.FlopCounterMode`` counts **FLOPs = 2 x multiply-accumulates**
(a ``Linear(in, out)`` on N rows is ``2 * N * in * out``; a ``Conv2d`` is
``2 * H_out * W_out * C_out * C_in / groups * k_h * k_w`` per image). Many segmentation papers (and
mmcv's / fvcore's counters) report **MACs under the name "FLOPs"**: divide our ``gflops`` by 2 to
compare with them. Only the ops torch's counter knows are counted (matmul / linear, convolutions,
attention kernels, batched matmul); element-wise ops, normalisation, pooling, interpolation and
softmax are not, as in fvcore's default. Fused attention paths that torch's counter does not know are
counted explicitly (:data:`EXTRA_FLOP_FORMULAS`): the CPU flash kernel of ``scaled_dot_product_attention``
(forward and backward), ``nn.MultiheadAttention``'s fused fast path (``_native_multi_head_attention``: its
input/output projections and both attention matmuls) and ``nn.TransformerEncoderLayer``'s
(``_transformer_encoder_layer_fwd``), so a ViT counts the same on every device and kernel.

Throughput is measured, not modelled: on CPU it depends on the thread count and on the machine's load
(docs/architecture.md "Measuring speed": these machines are noisy; compare ratios within one run, report absolute times
only on a GPU).
"""

from __future__ import annotations

import time
from typing import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = [
    "count_parameters",
    "count_flops",
    "flop_counter",
    "measure_throughput",
    "efficiency_report",
    "format_efficiency",
    "EXTRA_FLOP_FORMULAS",
]

_aten = torch.ops.aten


def _batch_len(shape) -> tuple[int, int]:
    """(batch, length) of a ``[B, L, E]`` (batch-first) or ``[L, E]`` sequence shape."""
    return (1, int(shape[0])) if len(shape) == 2 else (int(shape[0]), int(shape[1]))


def _mha_flops(query, key, value, embed_dim, num_head, *args, out_shape=None, **kwargs) -> int:
    """``_native_multi_head_attention`` (batch first): q/k/v projections, Q·Kᵀ, A·V, output projection."""
    b, lq = _batch_len(query)
    _, lk = _batch_len(key)
    e = int(embed_dim)
    return 2 * b * e * e * (2 * lq + 2 * lk) + 4 * b * lq * lk * e


def _encoder_layer_flops(
    src,
    embed_dim,
    num_heads,
    qkv_weight,
    qkv_bias,
    proj_weight,
    proj_bias,
    use_gelu,
    norm_first,
    eps,
    norm_weight_1,
    norm_bias_1,
    norm_weight_2,
    norm_bias_2,
    ffn_weight_1,
    *args,
    out_shape=None,
    **kwargs,
) -> int:
    """``_transformer_encoder_layer_fwd``: self-attention as :func:`_mha_flops` plus the two FFN linears."""
    b, length = _batch_len(src)
    ffn = int(ffn_weight_1[0])
    return _mha_flops(src, src, src, embed_dim, num_heads) + 4 * b * length * int(embed_dim) * ffn


def _sdpa_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query, key, value)


def _sdpa_backward_flops(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_backward_flop_count

    return sdpa_backward_flop_count(grad_out, query, key, value)


#: FLOP formulas (FLOPs = 2 x MACs, on tensor SHAPES) for fused attention ops that torch's
#: ``FlopCounterMode`` does not count itself (torch 2.x), passed as its ``custom_mapping`` by
#: :func:`flop_counter`. Ops missing from this torch version are skipped.
EXTRA_FLOP_FORMULAS: dict = {
    op: fn
    for name, fn in (
        ("_scaled_dot_product_flash_attention_for_cpu", _sdpa_flops),
        ("_scaled_dot_product_flash_attention_for_cpu_backward", _sdpa_backward_flops),
        ("_scaled_dot_product_fused_attention_overrideable", _sdpa_flops),
        ("_native_multi_head_attention", _mha_flops),
        ("_transformer_encoder_layer_fwd", _encoder_layer_flops),
    )
    if (op := getattr(_aten, name, None)) is not None
}


def flop_counter(depth: int = 2) -> FlopCounterMode:
    """A ``torch.utils.flop_counter.FlopCounterMode`` (no display) that also counts the fused attention paths
    of :data:`EXTRA_FLOP_FORMULAS`. Use as a context manager around forward (and backward) calls; FLOPs =
    2 x MACs. ``depth``: module-tree depth of the per-module breakdown."""
    return FlopCounterMode(display=False, depth=depth, custom_mapping=EXTRA_FLOP_FORMULAS)


def count_parameters(module: nn.Module) -> dict[str, int]:
    """Parameter counts of ``module`` (shared parameters counted once; buffers not counted).

    Args:
        module: any ``nn.Module``. For a :class:`~zss.methods.base.Method` the frozen teacher is not a
            registered submodule, so it is not counted: the numbers are those of the test-time model.

    Returns:
        dict ``trainable_params`` (``requires_grad``), ``frozen_params``, ``total_params`` (ints, elements).
    """
    trainable = frozen = 0
    for p in module.parameters():  # .parameters() already de-duplicates shared tensors
        if p.requires_grad:
            trainable += p.numel()
        else:
            frozen += p.numel()
    return {"trainable_params": trainable, "frozen_params": frozen, "total_params": trainable + frozen}


def _forward_fn(model: nn.Module) -> Callable[[Tensor], Tensor]:
    """``method.predict`` for a Method (the test-time path), else ``model.__call__``."""
    predict = getattr(model, "predict", None)
    return predict if callable(predict) else model


@torch.no_grad()
def count_flops(fn: Callable[[Tensor], object], images: Tensor) -> tuple[int, dict[str, int]]:
    """FLOPs of one call ``fn(images)`` counted by ``torch.utils.flop_counter.FlopCounterMode``.

    Args:
        fn: the forward callable (e.g. ``model`` or ``method.predict``).
        images: the input, e.g. ``Tensor[1, 3, 512, 512] float32``.

    Returns:
        ``(total_flops, per_module)``: total FLOPs (int, 2 x MACs, see the module docstring) and a dict
        module name -> FLOPs for the modules up to two levels deep (e.g. ``"Student"``,
        ``"Student.backbone"``), as named by torch's module tracker.
    """
    with flop_counter(depth=2) as counter:
        fn(images)
    per_module = {
        k: int(sum(v.values())) for k, v in counter.get_flop_counts().items() if k != "Global" and k.count(".") <= 1
    }
    return int(counter.get_total_flops()), per_module


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def measure_throughput(
    fn: Callable[[Tensor], object],
    images: Tensor,
    warmup: int = 2,
    iters: int = 5,
    amp_dtype: torch.dtype | None = None,
) -> float:
    """Images per second of ``fn`` on ``images`` (wall clock, synchronised on CUDA).

    Args:
        fn: the forward callable.
        images: ``Tensor[B, 3, H, W]`` on the device to measure; B images per call.
        warmup: untimed calls first (cudnn autotuning, allocator warm-up); our default 2.
        iters: timed calls; our default 5.
        amp_dtype: autocast dtype (``torch.bfloat16`` / ``torch.float16``) or None for the input dtype.

    Returns:
        ``B * iters / seconds`` (float, images per second).

    Raises:
        ValueError: ``iters < 1`` or ``warmup < 0``.
    """
    if iters < 1 or warmup < 0:
        raise ValueError(f"measure_throughput: need iters >= 1 and warmup >= 0, got iters={iters}, warmup={warmup}")
    device = images.device
    with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        for _ in range(warmup):
            fn(images)
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(iters):
            fn(images)
        _sync(device)
    return images.shape[0] * iters / max(time.perf_counter() - t0, 1e-9)


def efficiency_report(
    model_or_method: nn.Module,
    image_size: Sequence[int] = (512, 512),
    device: torch.device | str | None = None,
    warmup: int = 2,
    iters: int = 5,
    amp_dtype: torch.dtype | None = None,
    batch_size: int = 8,
    measure: bool = True,
) -> dict:
    """Parameters, GFLOPs and measured img/s of a model's test-time forward pass.

    The forward pass is ``method.predict(images)`` for a :class:`~zss.methods.base.Method` (student
    only: the teacher is not used at test time, CLIP-ZSS [paper]) and ``model(images)`` otherwise, on
    random ``N(0, 1)`` inputs (normalised-image statistics), under ``torch.no_grad`` in eval mode (the
    training flag is restored afterwards).

    Args:
        model_or_method: an ``nn.Module`` or a ``Method``.
        image_size: ``(H, W)`` in pixels of one input (default 512 x 512, the protocol's crop, docs/protocol.md
            "Pipeline").
        device: where to measure; None = where the model's first parameter lives (CPU without any).
            The model is moved there for the measurement and moved back afterwards.
        warmup, iters: untimed / timed calls per batch size (our defaults 2 / 5).
        amp_dtype: autocast dtype for the timed calls (``torch.bfloat16``...) or None = fp32.
            FLOPs are counted without autocast (the count does not depend on the dtype).
        batch_size: N of the second throughput measurement (our default 8, = the sliding-window crop
            batch of the evaluator); batch 1 is always measured.
        measure: False skips the timing (``img_per_s`` = {}): parameters and FLOPs only.

    Returns:
        dict with
            ``trainable_params``, ``frozen_params``, ``total_params``: ints (elements);
            ``gflops``: float, FLOPs / 1e9 of ONE forward at ``image_size``, batch 1 (FLOPs = 2 x MACs;
            halve it to compare with papers that report MACs as "FLOPs");
            ``gflops_by_module``: dict name -> GFLOPs (two levels deep);
            ``img_per_s``: dict batch size (int) -> images per second (float; None when the batch did not
            fit in GPU memory);
            ``image_size``: [H, W]; ``device``: str (e.g. ``"cpu"``, ``"cuda:0 (NVIDIA H100)"``);
            ``dtype``: str, the compute dtype (``"bfloat16"`` under autocast, else the parameter dtype);
            ``threads``: CPU threads torch used; ``peak_mem_mib``: peak CUDA memory over the measurement
            (float) or None on CPU.

    Raises:
        ValueError: bad ``image_size`` / ``batch_size`` / ``iters``.

    Source: docs/architecture.md "Measuring speed" (student-only inference vs the CLIP teacher); FLOP counting: torch's
    ``FlopCounterMode``; the report layout is ours.
    """
    size = tuple(int(s) for s in image_size)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"efficiency_report: image_size must be (H, W) positive pixels, got {image_size!r}")
    if int(batch_size) < 1:
        raise ValueError(f"efficiency_report: batch_size must be >= 1, got {batch_size}")
    first = next(iter(model_or_method.parameters()), None)
    home = first.device if first is not None else torch.device("cpu")
    dev = torch.device(device) if device is not None else home
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    param_dtype = first.dtype if first is not None else torch.float32
    report: dict = count_parameters(model_or_method)
    was_training = model_or_method.training
    model_or_method.to(dev).eval()
    fn = _forward_fn(model_or_method)
    try:
        x1 = torch.randn(1, 3, *size, device=dev, dtype=param_dtype)
        flops, per_module = count_flops(fn, x1)
        report["gflops"] = flops / 1e9
        report["gflops_by_module"] = {k: v / 1e9 for k, v in per_module.items()}
        report["img_per_s"] = {}
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        if measure:
            for bs in dict.fromkeys((1, int(batch_size))):
                try:
                    xb = x1 if bs == 1 else torch.randn(bs, 3, *size, device=dev, dtype=param_dtype)
                    report["img_per_s"][bs] = measure_throughput(fn, xb, warmup, iters, amp_dtype)
                except torch.cuda.OutOfMemoryError:
                    report["img_per_s"][bs] = None
                    torch.cuda.empty_cache()
        report["peak_mem_mib"] = torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else None
    finally:
        model_or_method.to(home).train(was_training)
    name = str(dev)
    if dev.type == "cuda":
        name += f" ({torch.cuda.get_device_name(dev)})"
    report.update(
        image_size=list(size),
        device=name,
        dtype=str(amp_dtype if amp_dtype is not None else param_dtype).removeprefix("torch."),
        threads=torch.get_num_threads(),
    )
    return report


def _human(n: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return f"{n:.0f}"


def format_efficiency(report: dict, title: str = "Efficiency") -> str:
    """Markdown table of an :func:`efficiency_report` dict.

    Args:
        report: the dict returned by :func:`efficiency_report` (keys ``img_per_s`` / ``gflops_by_module``
            may be absent or empty).
        title: heading text.

    Returns:
        ``str``: a ``### title`` line, a two-column markdown table (params in M, GFLOPs with the
        FLOPs = 2 x MACs note, img/s per batch size, device, dtype) and a per-module GFLOPs line.
    """
    h, w = report.get("image_size", ["?", "?"])
    rows = [
        ("params (total)", _human(report["total_params"])),
        ("params (trainable)", _human(report["trainable_params"])),
        ("params (frozen)", _human(report["frozen_params"])),
        (
            f"GFLOPs @ {h}x{w}, batch 1",
            f"{report['gflops']:.2f} (FLOPs = 2 x MACs; MACs: {report['gflops'] / 2:.2f} G)",
        ),
    ]
    for bs, v in (report.get("img_per_s") or {}).items():
        rows.append((f"img/s @ batch {bs}", "out of memory" if v is None else f"{v:.2f}"))
    if report.get("peak_mem_mib") is not None:
        rows.append(("peak GPU memory", f"{report['peak_mem_mib']:.0f} MiB"))
    rows.append(("device", f"{report.get('device', '?')}, {report.get('threads', '?')} CPU threads"))
    rows.append(("dtype", str(report.get("dtype", "?"))))
    lines = [f"### {title}", "", "| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]
    mods = report.get("gflops_by_module") or {}
    if mods:
        lines += ["", "GFLOPs by module: " + ", ".join(f"{k} {v:.2f}" for k, v in sorted(mods.items()))]
    return "\n".join(lines)
