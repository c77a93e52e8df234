"""Batched K-Means (spherical/cosine or Euclidean) in pure torch, for CPU and GPU.

All problems are solved in one tensor program: ``P`` point sets (e.g. images) are stacked in one
batch, and each point set may carry several independent K-Means problems that share its points
(``groups``: e.g. one problem per window scale of CLIP-ZSS's pseudo-label module, docs/methods.md (CLIP-ZSS)).
There is no Python loop over images or problems; the only Python loops are over the fixed
iteration count and over the (few) groups.

Algorithm (Lloyd, the same steps as scikit-learn's ``KMeans(algorithm="lloyd")``):

1. assignment: ``scores = x @ C^T`` (spherical: cosine; Euclidean: ``x.c - |c|^2 / 2``, i.e. the
   nearest centre), padded/invalid centres get ``-inf`` so they never win; argmax per group
   (ties -> lowest centre index, as scikit-learn);
2. empty clusters (a valid centre that received no point) are relocated to the points farthest
   from their current centre, exactly as scikit-learn's ``_relocate_empty_clusters_dense``: the
   ``j``-th empty cluster (in centre-index order) takes the ``j``-th farthest point of its problem,
   which leaves its old cluster. Implemented as a relabelling of those points (tensorised: topk +
   cumsum rank + scatter), so the update below stays a single deterministic reduction. (If the
   stolen point was alone in its cluster, that cluster keeps its previous centre, where
   scikit-learn leaves a zero vector: the only intended difference.) Clusters beyond the number of
   points (K > N) stay empty;
3. update: centre = mean of its points (spherical: L2-normalised sum). On CPU, ``index_add_``
   (sequential, deterministic); after the first iteration only the points whose label changed
   are moved between the per-centre sums, which makes later iterations cheap. On GPU, a one-hot
   matmul recomputed every iteration (deterministic, no atomics, graph-capturable). A centre left
   without points keeps its previous value (never NaN).

Speed notes: the assignment matmul dominates (``2 P N K D`` flops per iteration). ``assign_dtype=
torch.bfloat16`` roughly halves it on CPUs with AVX512-BF16/AMX and on GPUs; the score buffers are
reused across iterations (fresh multi-MB CPU tensors cost page faults every iteration).

Steps 1-3 run ``iters`` times, then a final assignment gives ``labels`` consistent with the returned
``centers`` (scikit-learn does the same final E-step). With ``tol=None`` (default) nothing inside
the loop reads a value back to the host, so the whole call can be captured in a CUDA graph.

Source: Lloyd's algorithm; spherical K-Means (Dhillon & Modha 2001); empty-cluster relocation as in
scikit-learn. Multi-problem layout and all defaults: not in the paper, ours (docs/methods.md (CLIP-ZSS), §8).
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["KMeansResult", "batched_kmeans", "partition_sse"]


class KMeansResult(NamedTuple):
    """Result of :func:`batched_kmeans`.

    Attributes:
        labels: ``Tensor[P, N] int64`` (``Tensor[P, G, N]`` when ``groups`` is given): index of the
            assigned centre along the full ``K`` axis of ``init`` (for groups: a centre of that group).
        centers: ``Tensor[P, K, D] float32`` final centres (unit norm in spherical mode; invalid and
            never-populated centres keep their initial value).
        inertia: ``Tensor[P] float32`` (``Tensor[P, G]`` with groups): Euclidean mode: sum of squared
            distances to the assigned centre (SSE); spherical mode: ``sum(1 - cos(x, centre))``.
    """

    labels: Tensor
    centers: Tensor
    inertia: Tensor


_LOWP = (torch.bfloat16, torch.float16)
_OUT_DTYPE_OK: dict[tuple[str, torch.dtype], bool] = {}


def _segments(groups: Tensor | Sequence[int] | None, K: int) -> list[tuple[int, int]]:
    """Contiguous ``[start, stop)`` centre ranges, one per group (validated)."""
    if groups is None:
        return [(0, K)]
    g = groups.detach().to("cpu", torch.int64).tolist() if isinstance(groups, Tensor) else [int(v) for v in groups]
    if len(g) != K:
        raise ValueError(
            f"batched_kmeans: groups has {len(g)} entries but init has K={K} centres; pass one group id per centre"
        )
    steps_ok = g[0] == 0 and all(b - a in (0, 1) for a, b in zip(g[:-1], g[1:]))
    if not steps_ok:
        raise ValueError(
            "batched_kmeans: groups must be non-decreasing ids 0, 1, ..., G-1 with every id "
            f"present (contiguous segments of centres); got {g[:20]}{'...' if K > 20 else ''}"
        )
    cuts = [0] + [i for i in range(1, K) if g[i] != g[i - 1]] + [K]
    bounds = list(zip(cuts[:-1], cuts[1:]))
    return bounds


def _out_dtype_ok(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether ``torch.bmm(..., out_dtype=torch.float32)`` works for ``dtype`` inputs on ``device``
    (CUDA: yes; CPU kernels only return the input dtype). Probed once per (device type, dtype)."""
    key = (device.type, dtype)
    ok = _OUT_DTYPE_OK.get(key)
    if ok is None:
        a = torch.zeros(1, 1, 1, dtype=dtype, device=device)
        try:
            torch.bmm(a, a, out_dtype=torch.float32)
            ok = True
        except (TypeError, RuntimeError, NotImplementedError):
            ok = False
        _OUT_DTYPE_OK[key] = ok
    return ok


def _lowp_bmm(a: Tensor, b: Tensor) -> Tensor:
    """``a @ b`` for low-precision inputs, float32 result (fp32 accumulation and output where
    supported, else the low-precision product upcast)."""
    if _out_dtype_ok(a.device, a.dtype):
        return torch.bmm(a, b, out_dtype=torch.float32)
    return torch.bmm(a, b).float()


_PAD = 32  # centres are padded to a multiple of this in the score matmul (GEMM kernels prefer it)


class _Assigner:
    """Assignment step with reusable buffers: the centres are copied into a zero-padded
    ``[P, Kp, D]`` operand (``Kp`` = K rounded up to a multiple of 32, markedly faster GEMMs than
    odd K) and the ``[P, N, Kp]`` scores are written into a buffer reused across iterations (fresh
    multi-MB CPU tensors cost page faults every iteration). Padded columns are never read: the
    argmax runs on each group's own column range."""

    def __init__(
        self,
        xa: Tensor,
        K: int,
        bias: Tensor | None,
        spherical: bool,
        assign_dtype: torch.dtype | None,
        bounds: list[tuple[int, int]],
    ):
        P, N, D = xa.shape
        self.xa, self.spherical, self.bounds, self.K = xa, spherical, bounds, K
        self.assign_dtype = assign_dtype
        dev = xa.device
        Kp = -(-K // _PAD) * _PAD if K > _PAD else K
        self.bias0 = None if bias is None else F.pad(bias, (0, Kp - K))
        need_bias = bias is not None or not spherical
        self.out_ok = assign_dtype is not None and _out_dtype_ok(dev, assign_dtype)
        self.Cp = torch.zeros(P, Kp, D, dtype=assign_dtype or xa.dtype, device=dev)
        self.raw = None
        if assign_dtype is not None and not self.out_ok:
            self.raw = torch.empty(P, N, Kp, dtype=assign_dtype, device=dev)  # CPU: lowp product
        self.buf = None
        if assign_dtype is None or (self.raw is not None and need_bias):
            self.buf = torch.empty(P, N, Kp, dtype=xa.dtype if assign_dtype is None else torch.float32, device=dev)

    def scores(self, C: Tensor) -> Tensor:
        """``Tensor[P, N, Kp]`` (higher = closer): float32, or the low-precision product itself when
        it comes back in that dtype and no bias is needed (argmax works on it directly)."""
        K, Kp = self.K, self.Cp.shape[1]
        bias = self.bias0
        if not self.spherical:
            half = F.pad(-0.5 * torch.linalg.vector_norm(C, dim=-1) ** 2, (0, Kp - K)).unsqueeze(1)  # [P, 1, Kp]
            bias = half if bias is None else bias + half  # nearest centre = max x.c - |c|^2 / 2
        xa = self.xa
        self.Cp[:, :K].copy_(C)
        Ct = self.Cp.transpose(1, 2)
        if self.assign_dtype is None:
            if bias is None:
                return torch.bmm(xa, Ct, out=self.buf)
            return torch.baddbmm(bias.expand(-1, xa.shape[1], -1), xa, Ct, out=self.buf)
        if self.out_ok:
            s = torch.bmm(xa, Ct, out_dtype=torch.float32)
            return s if bias is None else s.add_(bias)
        raw = torch.bmm(xa, Ct, out=self.raw)
        return raw if bias is None else torch.add(raw, bias, out=self.buf)

    def __call__(self, C: Tensor) -> tuple[Tensor, Tensor]:
        """Labels ``[P, G, N]`` (global centre index; ties -> lowest) and best scores ``[P, G, N]`` fp32."""
        s = self.scores(C)
        bests, labs = [], []
        for a, b in self.bounds:
            v, i = s[..., a:b].max(-1)
            bests.append(v)
            labs.append(i + a if a else i)
        return torch.stack(labs, 1), torch.stack(bests, 1).float()


def _relocate(x, labels, best, xsq, valid, spherical, bounds, K):
    """Relabel the farthest points into empty valid clusters (scikit-learn's rule), tensorised.

    labels/best: ``[P, G, N]``; returns new labels ``[P, G, N]``.
    """
    P, G, N = labels.shape
    counts = torch.zeros(P, K, dtype=torch.float32, device=x.device)
    counts.scatter_add_(1, labels.reshape(P, G * N), torch.ones(P, G * N, device=x.device))
    empty = valid & (counts == 0)  # [P, K]
    # distance of each point to its (old) centre
    dist = (1.0 - best) if spherical else (xsq.unsqueeze(1) - 2.0 * best)  # [P, G, N]
    out = []
    for g, (a, b) in enumerate(bounds):
        kf = min(b - a, N)
        far = dist[:, g].topk(kf, dim=-1, largest=True, sorted=True).indices  # [P, kf]
        emp = empty[:, a:b]  # [P, Kg]
        rank = emp.long().cumsum(-1) - 1
        ok = emp & (rank < kf)
        far_idx = far.gather(1, rank.clamp(0, kf - 1))  # [P, Kg]
        lab = labels[:, g]
        ext = torch.cat([lab, lab.new_zeros(P, 1)], 1)  # column N is a dump slot for no-ops
        idx = torch.where(ok, far_idx, torch.full_like(far_idx, N))
        new = torch.arange(a, b, device=x.device).expand(P, -1)
        val = torch.where(ok, new, torch.zeros_like(new))
        ext = ext.scatter(1, idx, val)
        out.append(ext[:, :N])
    return torch.stack(out, 1)


class _ClusterSums:
    """Per-centre sums ``[P, K, D]`` and counts ``[P, K]`` for labels ``[P, G, N]``.

    Groups own disjoint centre ranges, so one reduction serves all groups.
    * matmul (GPU): one-hot matmul, recomputed every call (deterministic, no atomics); split into
      hi + lo low-precision halves when ``x_hi``/``x_lo`` are given (near-fp32 sums).
    * scatter (CPU): ``index_add_`` (sequential, deterministic). After the first call only the
      points whose label changed are moved (subtracted from the old centre, added to the new),
      which makes later Lloyd iterations much cheaper; sums of emptied centres are reset to 0.
    """

    def __init__(self, x: Tensor, x_hi: Tensor | None, x_lo: Tensor | None, K: int, use_matmul: bool):
        self.x, self.x_hi, self.x_lo, self.K, self.use_matmul = x, x_hi, x_lo, K, use_matmul
        P, N, D = x.shape
        self.xf = x.reshape(P * N, D)
        self.base = (torch.arange(P, device=x.device) * K).view(P, 1, 1)
        self.idx: Tensor | None = None
        self.sums = self.counts = self.xr_buf = None

    def __call__(self, labels: Tensor) -> tuple[Tensor, Tensor]:
        x, K = self.x, self.K
        P, G, N = labels.shape
        D = x.shape[-1]
        if self.use_matmul:
            onehot = torch.zeros(P, N, K, dtype=x.dtype, device=x.device)
            onehot.scatter_(2, labels.transpose(1, 2), 1.0)
            counts = onehot.sum(1)
            if self.x_hi is not None:
                oh = onehot.to(self.x_hi.dtype).transpose(1, 2)
                sums = _lowp_bmm(oh, self.x_hi) + _lowp_bmm(oh, self.x_lo)
            else:
                sums = torch.bmm(onehot.transpose(1, 2), x)
            return sums, counts
        idx = labels + self.base  # [P, G, N] rows of the flat [P*K] table
        if self.idx is None:
            self.sums = torch.zeros(P * K, D, dtype=x.dtype, device=x.device)
            self.counts = torch.zeros(P * K, dtype=x.dtype, device=x.device)
            for g in range(G):
                self.sums.index_add_(0, idx[:, g].reshape(-1), self.xf)
            self.counts.index_add_(0, idx.reshape(-1), torch.ones(P * G * N, dtype=x.dtype, device=x.device))
        else:
            pos = (idx != self.idx).view(-1).nonzero().squeeze(1)  # changed (point, group) pairs
            if pos.numel():
                rows = torch.div(pos, G * N, rounding_mode="floor") * N + pos % N
                if self.xr_buf is None:  # lazily touched pages only; reused across iterations
                    self.xr_buf = torch.empty(P * G * N, D, dtype=x.dtype, device=x.device)
                xr = torch.index_select(self.xf, 0, rows, out=self.xr_buf[: pos.numel()])
                new_i, old_i = idx.view(-1)[pos], self.idx.view(-1)[pos]
                one = torch.ones(pos.numel(), dtype=x.dtype, device=x.device)
                self.sums.index_add_(0, new_i, xr)
                self.sums.index_add_(0, old_i, xr, alpha=-1)
                self.counts.index_add_(0, new_i, one)
                self.counts.index_add_(0, old_i, one, alpha=-1)
                emptied = (self.counts == 0).nonzero().squeeze(1)
                if emptied.numel():  # drop float residue of centres that lost all points
                    self.sums.index_fill_(0, emptied, 0.0)
        self.idx = idx
        return self.sums.view(P, K, D), self.counts.view(P, K)


def _update(acc: "_ClusterSums", labels, C, valid, spherical, out: Tensor) -> Tensor:
    """New centres ``[P, K, D]`` (written into ``out``, which must not alias ``C``) from labels
    ``[P, G, N]``: means (spherical: normalised sums); centres without points keep ``C``."""
    sums, counts = acc(labels)
    has = ((counts > 0) & valid).unsqueeze(-1)
    if spherical:
        sq = torch.linalg.vector_norm(sums, dim=-1, keepdim=True) ** 2  # [P, K, 1], no [P, K, D] temporary
        has = has & (sq > 0)
        torch.mul(sums, torch.rsqrt(sq.clamp_min(1e-30)), out=out)
    else:
        torch.div(sums, counts.clamp_min(1).unsqueeze(-1), out=out)
    return torch.where(has, out, C, out=out)


def _inertia(acc: _ClusterSums, xsq, labels, C, spherical, bounds) -> Tensor:
    """Objective per problem ``[P, G]`` from per-cluster sums (no [P, N, D] gather).

    Spherical: ``sum_n (1 - x_n.c_l(n)) = N - sum_k c_k.S_k``; Euclidean: ``sum_k Q_k - 2 c_k.S_k +
    n_k |c_k|^2`` with ``Q_k`` the per-cluster sum of ``|x|^2``; per-centre terms combined in float64."""
    P, G, N = labels.shape
    K = C.shape[1]
    sums, counts = acc(labels)
    dots = torch.linalg.vecdot(C, sums).double()  # [P, K]
    if spherical:
        per = -dots
        const = float(N)
    else:
        q = torch.zeros(P, K, dtype=xsq.dtype, device=xsq.device)
        q.scatter_add_(1, labels.reshape(P, G * N), xsq.repeat(1, G))
        per = q.double() - 2.0 * dots + counts.double() * torch.linalg.vecdot(C, C).double()
        const = 0.0
    out = torch.stack([per[:, a:b].sum(-1) for a, b in bounds], 1) + const
    return out.clamp_min(0).to(C.dtype)


@torch.no_grad()
def batched_kmeans(
    x: Tensor,
    init: Tensor,
    valid: Tensor | None = None,
    iters: int = 10,
    tol: float | None = None,
    spherical: bool = True,
    relocate_empty: bool = True,
    assign_dtype: torch.dtype | None = None,
    groups: Tensor | Sequence[int] | None = None,
    update: str = "auto",
    validate: bool = True,
) -> KMeansResult:
    """Batched Lloyd K-Means over many problems at once (spherical/cosine or Euclidean).

    Args:
        x: ``Tensor[P, N, D]`` points (any float dtype; computed in float32, float64 kept). In
            spherical mode the points are L2-normalised first.
        init: ``Tensor[P, K, D]`` starting centres (e.g. window seeds); spherical: normalised.
        valid: ``BoolTensor[P, K]`` or None (all valid). Invalid (padded) centres are never
            assigned, never relocated into, and returned unchanged. Lets problems with different
            ``K`` share one padded tensor.
        iters: number of Lloyd updates (assignment + update); a final assignment follows. Same
            meaning as scikit-learn's ``max_iter`` with ``tol=0``. Default 10: not in the paper, ours.
        tol: None (default): exactly ``iters`` iterations, no host synchronisation in the loop
            (CUDA-graph capturable). A float: stop early once every problem's squared centre shift
            ``sum_k |c_k' - c_k|^2 <= tol`` (absolute, unlike scikit-learn's variance-scaled tol;
            costs one host sync per iteration).
        spherical: True: cosine K-Means (assign by max cosine, centres = normalised sums, inertia
            ``sum(1 - cos)``). False: Euclidean Lloyd (same as scikit-learn), inertia = SSE.
        relocate_empty: move empty clusters to the farthest points (scikit-learn's rule); False
            keeps dead centres where they are.
        assign_dtype: None (float32 scores) or ``torch.bfloat16``/``torch.float16`` for the
            assignment matmul. On CUDA the product is accumulated and returned in float32; CPU
            kernels return the low-precision product, so near-ties may flip (small objective
            change; labels no longer bit-comparable with scikit-learn).
        groups: None, or ``Tensor[K] int64`` / sequence of ``K`` ints: non-decreasing group ids
            ``0..G-1``. Each group is a contiguous block of centres forming an independent K-Means
            problem over the *same* ``N`` points of its point set (e.g. one problem per window
            scale). One matmul serves all groups, with no padding waste.
        update: ``"auto"`` (one-hot matmul on CUDA, ``index_add_`` elsewhere), ``"matmul"`` or
            ``"scatter"``.
        validate: check shapes/values (one host sync). Pass False inside CUDA-graph capture.

    Returns:
        :class:`KMeansResult` ``(labels, centers, inertia)``; with ``groups``: labels
        ``Tensor[P, G, N] int64`` and inertia ``Tensor[P, G]``.

    Raises:
        ValueError: wrong ranks/shapes, ``iters < 0``, bad ``groups``/``update``/``assign_dtype``,
            or a problem (point set x group) without any valid centre.

    Deterministic for a given input on a given device (no atomics in float reductions); CPU and
    GPU agree up to float error. K larger than N, identical points and seeds far from the data
    are handled (no NaN).
    """
    if x.dim() != 3 or init.dim() != 3:
        raise ValueError(
            f"batched_kmeans: expected x [P, N, D] and init [P, K, D], got {tuple(x.shape)} and {tuple(init.shape)}"
        )
    P, N, D = x.shape
    if init.shape[0] != P or init.shape[2] != D:
        raise ValueError(
            f"batched_kmeans: init {tuple(init.shape)} does not match x {tuple(x.shape)} (need the same P and D)"
        )
    K = init.shape[1]
    if N == 0 or K == 0:
        raise ValueError(f"batched_kmeans: need N >= 1 points and K >= 1 centres, got N={N}, K={K}")
    if iters < 0:
        raise ValueError(f"batched_kmeans: iters must be >= 0, got {iters}")
    if update not in ("auto", "matmul", "scatter"):
        raise ValueError(f"batched_kmeans: update must be 'auto', 'matmul' or 'scatter', got {update!r}")
    if assign_dtype is not None and assign_dtype not in _LOWP + (torch.float32, torch.float64):
        raise ValueError(f"batched_kmeans: assign_dtype must be None, bfloat16 or float16, got {assign_dtype}")
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    if assign_dtype in (torch.float32, torch.float64):
        assign_dtype = None
    bounds = _segments(groups, K)
    dev = x.device
    all_valid = valid is None
    if valid is None:
        valid = torch.ones(P, K, dtype=torch.bool, device=dev)
    else:
        if valid.shape != (P, K):
            raise ValueError(f"batched_kmeans: valid must be [P, K] = {(P, K)}, got {tuple(valid.shape)}")
        valid = valid.to(device=dev, dtype=torch.bool)
        if validate:
            per = torch.stack([valid[:, a:b].any(-1) for a, b in bounds], 1)
            if not bool(per.all()):
                bad = (~per).nonzero()[0].tolist()
                raise ValueError(
                    f"batched_kmeans: problem (point set {bad[0]}, group {bad[1]}) has no valid "
                    "centre; every problem needs at least one valid centre"
                )
            all_valid = bool(valid.all())

    x = x.to(dtype)
    C = init.to(device=dev, dtype=dtype)
    if spherical:
        x = F.normalize(x, dim=-1)
        C = F.normalize(C, dim=-1)
    else:
        C = C.clone()
    bias = None  # -inf on invalid centres so they never win; skipped when all are valid
    if not all_valid:
        bias = torch.zeros(P, 1, K, dtype=dtype, device=dev).masked_fill(~valid.unsqueeze(1), float("-inf"))
    xa = x if assign_dtype is None else x.to(assign_dtype)
    xsq = None if spherical else (x * x).sum(-1)  # [P, N]
    use_matmul = update == "matmul" or (update == "auto" and dev.type == "cuda")
    x_hi = x_lo = None
    if use_matmul and assign_dtype is not None and dev.type == "cuda":
        x_hi = x.to(assign_dtype)
        x_lo = (x - x_hi.to(dtype)).to(assign_dtype)

    acc = _ClusterSums(x, x_hi, x_lo, K, use_matmul)
    assign = _Assigner(xa, K, bias, spherical, assign_dtype, bounds)
    spare = torch.empty_like(C)  # double buffer for the centres
    for _ in range(iters):
        labels, best = assign(C)
        if relocate_empty:
            labels = _relocate(x, labels, best, xsq, valid, spherical, bounds, K)
        C_new = _update(acc, labels, C, valid, spherical, out=spare)
        spare = C
        if tol is not None:
            shift = ((C_new - C) ** 2).sum((-1, -2))
            C = C_new
            if bool((shift <= tol).all()):
                break
        else:
            C = C_new

    labels, _ = assign(C)
    inertia = _inertia(acc, xsq, labels, C, spherical, bounds)
    if groups is None:
        return KMeansResult(labels[:, 0], C, inertia[:, 0])
    return KMeansResult(labels, C, inertia)


@torch.no_grad()
def partition_sse(x: Tensor, labels: Tensor, K: int) -> Tensor:
    """Within-cluster sum of squared distances to the cluster *means* for a given partition.

    The K-Means (Euclidean) objective evaluated on any labelling, so that methods with different
    centre conventions (spherical, faiss, scikit-learn) can be compared on the same objective.

    Args:
        x: ``Tensor[P, N, D]`` points (as clustered; normalise first for spherical inputs).
        labels: ``Tensor[P, N] int64`` in ``[0, K)``.
        K: number of cluster ids.

    Returns:
        ``Tensor[P] float64`` SSE per problem. Source: standard definition; not in the paper.
    """
    x = x.double()
    P, N, D = x.shape
    sums = torch.zeros(P, K, D, dtype=torch.float64, device=x.device)
    sums.scatter_add_(1, labels.unsqueeze(-1).expand(-1, -1, D), x)
    counts = torch.zeros(P, K, dtype=torch.float64, device=x.device)
    counts.scatter_add_(1, labels, torch.ones_like(labels, dtype=torch.float64))
    # SSE = sum |x|^2 - sum_k |S_k|^2 / n_k
    return (x * x).sum((-1, -2)) - ((sums * sums).sum(-1) / counts.clamp_min(1)).sum(-1)
