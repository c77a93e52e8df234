#!/usr/bin/env python
"""Benchmark: zss batched K-Means vs scikit-learn and faiss on CLIP-ZSS multi-scale window seeds.

Same inputs, same iteration count, single CPU thread for every method (docs/architecture.md "Measuring speed": ratios
against references measured in the same run; absolute times only mean something on a GPU).

Inputs: B images of synthetic clustered unit vectors shaped like CLIP dense tokens (D=512): a
shared "CLIP" direction + one of a few dozen class directions per Voronoi region + a smooth field +
noise, fixed seed. Seeds: :func:`zss.ops.window_seeds` with scales (4, 8, 16) on 32x32 grids and
(8, 16, 32) on 64x64 grids (same windows as fractions of the image, so the same K=283 per image).
Each (image, scale) is one K-Means problem.

Methods:
  ours-sph-bf16  batched spherical K-Means, bf16 assignment matmul (all images x scales, one call)
  ours-sph-fp32  same, float32 assignment
  ours-euc-fp32  Euclidean mode (the objective scikit-learn minimises), float32
  sklearn-seeds  KMeans(init=seeds, n_init=1, algorithm="lloyd", max_iter=iters, tol=0), loop
  sklearn-k++    KMeans(init="k-means++", n_init=1, algorithm="lloyd", max_iter=iters, tol=0), loop
  faiss-seeds    faiss.Kmeans(spherical=True, niter=iters).train(x, init_centroids=seeds) + search, loop

Columns: time (median of repeats, ms, all problems of the batch), ratios vs faiss and vs sklearn
k-means++, inertia ratio vs sklearn-seeds on the same objective (SSE of each method's partition
around its cluster means, summed over all problems; lower is better), and the percentage of labels
identical to sklearn-seeds (same centre ids, no matching).

Usage: python scripts/bench_kmeans.py [--device cuda] [--repeats 5] [--iters 10] [--batch 8]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from zss.ops import batched_kmeans, partition_sse, window_seeds

TARGETS = {
    "inertia": 0.005,  # relative, vs sklearn-seeds
    "agree": 99.9,  # percent, ours-euc vs sklearn-seeds
    "vs_faiss": 1.2,  # time ratio
    "vs_kpp": 0.6,  # time ratio
    "gpu_step_ms": 1.0,
}


def make_tokens(B: int, h: int, w: int, D: int = 512, n_dirs: int = 40, seed: int = 0) -> torch.Tensor:
    """Synthetic CLIP-like dense tokens ``Tensor[B, D, h, w] float32`` (unit norm over D)."""
    g = torch.Generator().manual_seed(seed)
    common = F.normalize(torch.randn(D, generator=g), dim=0)
    dirs = F.normalize(torch.randn(n_dirs, D, generator=g), dim=1)
    out = []
    for _ in range(B):
        R = int(torch.randint(6, 16, (1,), generator=g))
        cy = torch.rand(R, generator=g) * h
        cx = torch.rand(R, generator=g) * w
        yy, xx = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
        d2 = (yy[None] - cy[:, None, None]) ** 2 + (xx[None] - cx[:, None, None]) ** 2
        region = d2.argmin(0)  # Voronoi layout [h, w]
        cls = torch.randint(0, n_dirs, (R,), generator=g)
        field = F.interpolate(torch.randn(1, D, 4, 4, generator=g), size=(h, w), mode="bilinear", align_corners=False)[
            0
        ]
        field = F.normalize(field, dim=0)
        noise = torch.randn(D, h, w, generator=g) / D**0.5
        tok = 1.2 * common[:, None, None] + dirs[cls[region]].permute(2, 0, 1) + 0.5 * field + 0.6 * noise
        out.append(F.normalize(tok, dim=0))
    return torch.stack(out)


def timeit(fn, repeats: int, warmup: bool = True):
    if warmup:  # first-call costs (allocator, kernel selection); scikit-learn's slow runs skip it
        fn()
    ts, res = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        res = fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts) * 1e3, res


def run_grid(B, grid, scales, iters, repeats, device, have_sk, have_faiss):
    dense = make_tokens(B, grid, grid, seed=grid)
    seeds, valid, sidx = window_seeds(dense, scales)
    x = dense.flatten(2).transpose(1, 2).contiguous()  # [B, N, D]
    groups = sidx.tolist()
    bounds = []
    for g in range(len(scales)):
        idx = [i for i, v in enumerate(groups) if v == g]
        bounds.append((idx[0], idx[-1] + 1))
    S, N = len(scales), x.shape[1]
    xs = x.unsqueeze(1).expand(B, S, N, x.shape[2])
    rows = {}

    def ours(spherical, assign_dtype):
        xd, sd = x.to(device), seeds.to(device)

        def fn():
            r = batched_kmeans(
                xd, sd, valid.to(device), iters=iters, spherical=spherical, assign_dtype=assign_dtype, groups=groups
            )
            if device.type == "cuda":
                torch.cuda.synchronize()
            return r.labels.cpu()

        ms, lab = timeit(fn, repeats)
        off = torch.tensor([a for a, _ in bounds]).view(1, S, 1)
        return ms, lab - off  # local ids per group [B, S, N]

    rows["ours-sph-bf16"] = ours(True, torch.bfloat16)
    rows["ours-sph-fp32"] = ours(True, None)
    rows["ours-euc-fp32"] = ours(False, None)

    xn = x.numpy()
    sn = seeds.numpy()
    if have_sk:
        from sklearn.cluster import KMeans
        from threadpoolctl import threadpool_limits

        def sk(init_mode):
            def fn():
                lab = np.zeros((B, S, N), dtype=np.int64)
                with threadpool_limits(limits=1):
                    for b in range(B):
                        for g, (a, e) in enumerate(bounds):
                            init = sn[b, a:e] if init_mode == "seeds" else "k-means++"
                            km = KMeans(
                                e - a, init=init, n_init=1, algorithm="lloyd", max_iter=iters, tol=0.0, random_state=0
                            ).fit(xn[b])
                            lab[b, g] = km.labels_
                return torch.from_numpy(lab)

            return timeit(fn, repeats, warmup=False)

        rows["sklearn-seeds"] = sk("seeds")
        rows["sklearn-k++"] = sk("k-means++")
    if have_faiss:
        import faiss

        def fn():
            lab = np.zeros((B, S, N), dtype=np.int64)
            for b in range(B):
                for g, (a, e) in enumerate(bounds):
                    km = faiss.Kmeans(
                        xn.shape[2],
                        e - a,
                        niter=iters,
                        spherical=True,
                        verbose=False,
                        seed=0,
                        min_points_per_centroid=1,
                        max_points_per_centroid=1 << 20,
                    )
                    km.train(xn[b], init_centroids=np.ascontiguousarray(sn[b, a:e]))
                    _, nearest = km.index.search(xn[b], 1)
                    lab[b, g] = nearest[:, 0]
            return torch.from_numpy(lab)

        rows["faiss-seeds"] = timeit(fn, repeats)

    # same objective for every method: SSE of its partition around cluster means, over all problems
    Kmax = max(e - a for a, e in bounds)
    flat_x = xs.reshape(B * S, N, -1)
    out = {}
    for name, (ms, lab) in rows.items():
        sse = partition_sse(flat_x, lab.reshape(B * S, N), Kmax).sum().item()
        out[name] = dict(ms=ms, sse=sse, lab=lab)
    return out, seeds.shape[1]


def gpu_step(B=16, grid=32, scales=(4, 8, 16), iters=10, repeats=50):
    """Per-step time of window seeds + batched K-Means on CUDA (events; eager and CUDA graph)."""
    dev = torch.device("cuda")
    dense = make_tokens(B, grid, grid, seed=1).to(dev)
    _, _, sidx = window_seeds(dense, scales)
    groups = sidx.tolist()
    res = {}

    def step():
        seeds, valid, _ = window_seeds(dense, scales)
        x = dense.flatten(2).transpose(1, 2)
        return batched_kmeans(x, seeds, valid, iters=iters, assign_dtype=torch.bfloat16, groups=groups, validate=False)

    def measure(fn):
        for _ in range(5):
            fn()
        torch.cuda.synchronize()
        ts = []
        for _ in range(repeats):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            ts.append(a.elapsed_time(b))
        return statistics.median(ts)

    res["eager"] = measure(step)
    try:
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(3):
                step()
        torch.cuda.current_stream().wait_stream(s)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            step()
        res["graph"] = measure(graph.replay)
    except Exception as e:  # noqa: BLE001 — report and go on
        print(f"[bench_kmeans] CUDA graph capture failed: {type(e).__name__}: {e}", file=sys.stderr)
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", help="device for zss K-Means (cpu or cuda); references run on CPU")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3, help="timed repeats per method (median)")
    ap.add_argument("--grids", type=int, nargs="+", default=[32, 64])
    args = ap.parse_args(argv)

    torch.set_num_threads(1)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("bench_kmeans: --device cuda given but CUDA is not available; use --device cpu", file=sys.stderr)
        return 2
    try:
        import sklearn  # noqa: F401
        import threadpoolctl  # noqa: F401

        have_sk = True
    except ImportError:
        have_sk = False
        print("[bench_kmeans] scikit-learn not installed: its rows and ratios are skipped (pip install scikit-learn)")
    try:
        import faiss

        faiss.omp_set_num_threads(1)
        have_faiss = True
    except ImportError:
        have_faiss = False
        print("[bench_kmeans] faiss not installed: its rows and ratios are skipped (pip install faiss-cpu)")

    print(
        f"# batched K-Means benchmark: B={args.batch}, D=512, iters={args.iters}, repeats={args.repeats}, "
        f"ours on {device}, references on CPU, 1 thread each (torch {torch.__version__})\n"
    )
    lines = [
        "| method | grid | K/img | time ms | x faiss | x sklearn k++ | inertia ratio vs sklearn | "
        "labels = sklearn-seeds % |",
        "|---|---|---|---|---|---|---|---|",
    ]
    checks = []
    for grid in args.grids:
        scales = tuple(s * grid // 32 for s in (4, 8, 16))
        res, K = run_grid(args.batch, grid, scales, args.iters, args.repeats, device, have_sk, have_faiss)
        ref = res.get("sklearn-seeds")
        for name, r in res.items():
            fa = f"{r['ms'] / res['faiss-seeds']['ms']:.2f}" if "faiss-seeds" in res else "-"
            kp = f"{r['ms'] / res['sklearn-k++']['ms']:.2f}" if "sklearn-k++" in res else "-"
            inr = f"{r['sse'] / ref['sse']:.5f}" if ref else "-"
            agree = "-"
            if ref and name != "sklearn-k++":
                agree = f"{100.0 * (r['lab'] == ref['lab']).double().mean().item():.3f}"
            lines.append(f"| {name} | {grid}x{grid} s={scales} | {K} | {r['ms']:.1f} | {fa} | {kp} | {inr} | {agree} |")
        if ref:
            for name in ("ours-sph-bf16", "ours-sph-fp32", "ours-euc-fp32"):
                rel = res[name]["sse"] / ref["sse"] - 1
                checks.append(
                    (
                        f"{grid}x{grid} {name} inertia <= sklearn +{TARGETS['inertia']:.1%}",
                        f"{rel:+.4%}",
                        rel <= TARGETS["inertia"],
                    )
                )
            ag = 100.0 * (res["ours-euc-fp32"]["lab"] == ref["lab"]).double().mean().item()
            checks.append(
                (
                    f"{grid}x{grid} ours-euc-fp32 labels identical to sklearn-seeds >= {TARGETS['agree']}%",
                    f"{ag:.3f}%",
                    ag >= TARGETS["agree"],
                )
            )
            kr = res["ours-sph-bf16"]["ms"] / res["sklearn-k++"]["ms"]
            checks.append(
                (
                    f"{grid}x{grid} ours-sph-bf16 time <= {TARGETS['vs_kpp']} x sklearn k-means++",
                    f"{kr:.2f}x",
                    kr <= TARGETS["vs_kpp"],
                )
            )
        if "faiss-seeds" in res:
            fr = res["ours-sph-bf16"]["ms"] / res["faiss-seeds"]["ms"]
            checks.append(
                (
                    f"{grid}x{grid} ours-sph-bf16 time <= {TARGETS['vs_faiss']} x faiss",
                    f"{fr:.2f}x",
                    fr <= TARGETS["vs_faiss"],
                )
            )
        print(f"[bench_kmeans] {grid}x{grid} done", file=sys.stderr, flush=True)

    print("\n".join(lines))
    if torch.cuda.is_available():
        g = gpu_step()
        print(
            f"\n| GPU per-step (window seeds + K-Means, B=16, 32x32, K=283/img, bf16) | eager ms | graph ms |\n"
            f"|---|---|---|\n| {torch.cuda.get_device_name()} | {g['eager']:.3f} | "
            f"{g.get('graph', float('nan')):.3f} |"
        )
        best = min(g.values())
        checks.append((f"GPU step <= {TARGETS['gpu_step_ms']} ms", f"{best:.3f} ms", best <= TARGETS["gpu_step_ms"]))
    else:
        print("\n(no CUDA device: GPU per-step row skipped)")
    print("\n| target | measured | result |\n|---|---|---|")
    for name, val, ok in checks:
        print(f"| {name} | {val} | {'PASS' if ok else 'FAIL'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
