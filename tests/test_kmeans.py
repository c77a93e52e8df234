"""Tests for zss.ops.kmeans.batched_kmeans (batched spherical / Euclidean Lloyd K-Means)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from zss.ops.kmeans import batched_kmeans, partition_sse


def _blobs(P=4, N=300, D=8, C=6, spread=4.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(P, C, D, generator=g) * spread
    which = torch.randint(0, C, (P, N), generator=g)
    x = means.gather(1, which.unsqueeze(-1).expand(-1, -1, D)) + torch.randn(P, N, D, generator=g)
    return x, g


def _seeds(x, K, g):
    P, N, D = x.shape
    idx = torch.stack([torch.randperm(N, generator=g)[:K] for _ in range(P)])
    return x.gather(1, idx.unsqueeze(-1).expand(-1, -1, D)).clone()


def test_matches_sklearn_lloyd_same_seeds_several_problems():
    sk = pytest.importorskip("sklearn.cluster")
    x, g = _blobs(P=5, N=400, D=8, C=6)
    K, iters = 9, 12
    init = _seeds(x, K, g)
    init[1, 0] += 200.0  # one problem starts with a seed far from the data: an empty cluster to relocate
    res = batched_kmeans(x, init, iters=iters, spherical=False)
    assert res.labels.shape == (5, 400) and res.labels.dtype == torch.int64
    assert res.centers.shape == (5, K, 8) and res.inertia.shape == (5,)
    for p in range(x.shape[0]):
        km = sk.KMeans(K, init=init[p].numpy(), n_init=1, algorithm="lloyd", max_iter=iters, tol=0.0).fit(x[p].numpy())
        agree = (torch.from_numpy(km.labels_).long() == res.labels[p]).double().mean().item()
        assert agree >= 0.999, (p, agree)
        assert abs(res.inertia[p].item() - km.inertia_) <= 1e-4 * km.inertia_, (p, res.inertia[p].item(), km.inertia_)
        # partition SSE (around each cluster's own mean) is a direct SSE, and never above the inertia
        lab = res.labels[p]
        direct = sum(((x[p, lab == k] - x[p, lab == k].mean(0)) ** 2).sum().item() for k in lab.unique())
        sse = partition_sse(x[p : p + 1], res.labels[p : p + 1], K).item()
        assert sse == pytest.approx(direct, rel=1e-5) and sse <= res.inertia[p].item() * (1 + 1e-5)


def test_matches_sklearn_with_groups():
    sk = pytest.importorskip("sklearn.cluster")
    x, g = _blobs(P=3, N=250, D=6, C=5, seed=3)
    sizes = (7, 3)
    init = torch.cat([_seeds(x, k, g) for k in sizes], 1)
    groups = [0] * 7 + [1] * 3
    res = batched_kmeans(x, init, iters=8, spherical=False, groups=torch.tensor(groups))
    assert res.labels.shape == (3, 2, 250) and res.inertia.shape == (3, 2)
    assert (res.labels[:, 0] < 7).all() and (res.labels[:, 1] >= 7).all()
    for p in range(3):
        for gi, (a, b) in enumerate([(0, 7), (7, 10)]):
            km = sk.KMeans(b - a, init=init[p, a:b].numpy(), n_init=1, algorithm="lloyd", max_iter=8, tol=0.0).fit(
                x[p].numpy()
            )
            agree = (torch.from_numpy(km.labels_).long() + a == res.labels[p, gi]).double().mean().item()
            assert agree >= 0.999
            assert res.inertia[p, gi].item() == pytest.approx(km.inertia_, rel=1e-4)


def test_spherical_objective_decreases_monotonically():
    x, g = _blobs(P=3, N=500, D=16, C=8, spread=1.0, seed=1)
    init = _seeds(x, 10, g)
    inert = [batched_kmeans(x, init, iters=t).inertia for t in range(0, 9)]
    for a, b in zip(inert[:-1], inert[1:]):
        assert (b <= a + 1e-4).all(), (a, b)
    assert (inert[-1] < inert[0]).all()
    xn = F.normalize(x, dim=-1)
    res = batched_kmeans(x, init, iters=8)
    assert torch.allclose(res.centers.norm(dim=-1), torch.ones(3, 10), atol=1e-5)
    # reported inertia is sum(1 - cos) of the labels against the centres
    cg = res.centers.gather(1, res.labels.unsqueeze(-1).expand(-1, -1, 16))
    assert torch.allclose(res.inertia, (1 - (xn * cg).sum(-1)).sum(-1), rtol=1e-4, atol=1e-3)
    # labels are the argmax cosine of the returned centres
    assert torch.equal(res.labels, torch.einsum("pnd,pkd->pnk", xn, res.centers).argmax(-1))


@pytest.mark.parametrize("spherical", [True, False])
def test_empty_clusters_are_relocated(spherical):
    x, g = _blobs(P=2, N=200, D=8, C=4, seed=2)
    if spherical:
        x = F.normalize(x, dim=-1)
    init = _seeds(x, 6, g)
    init[:, :3] = -init[:, 3:4] * 50 if spherical else init[:, :3] + 500.0  # three seeds far from the data
    res = batched_kmeans(x, init, iters=10, spherical=spherical)
    assert torch.isfinite(res.centers).all() and torch.isfinite(res.inertia).all()
    counts = torch.stack([torch.bincount(res.labels[p], minlength=6) for p in range(2)])
    assert (counts > 0).all(), counts  # every cluster got points back
    dead = batched_kmeans(x, init, iters=10, spherical=spherical, relocate_empty=False)
    assert (dead.inertia >= res.inertia - 1e-4).all()


def test_k_larger_than_n_and_all_equal_points():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 4, generator=g)
    init = torch.randn(2, 8, 4, generator=g)
    for spherical in (True, False):
        r = batched_kmeans(x, init, iters=5, spherical=spherical)
        assert torch.isfinite(r.centers).all() and torch.isfinite(r.inertia).all()
        assert ((r.labels >= 0) & (r.labels < 8)).all()
        assert (r.inertia.abs() < 1e-4).all()  # every point ends in its own cluster
    same = torch.ones(3, 50, 6)
    init = torch.randn(3, 4, 6, generator=g)
    for spherical in (True, False):
        r = batched_kmeans(same, init, iters=5, spherical=spherical)
        assert torch.isfinite(r.centers).all() and torch.isfinite(r.inertia).all()
        assert (r.inertia.abs() < 1e-3).all()


def test_invalid_centres_never_assigned_and_kept():
    x, g = _blobs(P=3, N=120, D=5, C=3, seed=4)
    K = 6
    init = _seeds(x, K, g)
    valid = torch.ones(3, K, dtype=torch.bool)
    valid[0, 3:] = False
    valid[2, [1, 4]] = False
    init[0, 3:] = x[0, :3]  # padded centres placed exactly on data points: would win if not masked
    for spherical in (True, False):
        r = batched_kmeans(x, init, valid, iters=6, spherical=spherical)
        assert valid.gather(1, r.labels).all()
        c0 = F.normalize(init, dim=-1) if spherical else init
        assert torch.equal(r.centers[~valid], c0[~valid])
    with pytest.raises(ValueError, match="no valid centre"):
        batched_kmeans(x, init, torch.zeros(3, K, dtype=torch.bool))


def test_deterministic_and_batched_equals_loop():
    x, g = _blobs(P=4, N=256, D=12, C=5, spread=2.0, seed=5)
    init = torch.cat([_seeds(x, 6, g), _seeds(x, 3, g)], 1)
    groups = [0] * 6 + [1] * 3
    for spherical in (True, False):
        a = batched_kmeans(x, init, iters=7, spherical=spherical, groups=groups)
        b = batched_kmeans(x, init, iters=7, spherical=spherical, groups=groups)
        assert torch.equal(a.labels, b.labels) and torch.equal(a.centers, b.centers)
        assert torch.equal(a.inertia, b.inertia)
        for p in range(4):
            for gi, (lo, hi) in enumerate([(0, 6), (6, 9)]):
                one = batched_kmeans(x[p : p + 1], init[p : p + 1, lo:hi], iters=7, spherical=spherical)
                assert torch.equal(one.labels[0] + lo, a.labels[p, gi])
                assert torch.allclose(one.centers[0], a.centers[p, lo:hi], atol=1e-5)
                assert one.inertia[0].item() == pytest.approx(a.inertia[p, gi].item(), rel=1e-5, abs=1e-4)


def test_matmul_update_and_bf16_assignment():
    x, g = _blobs(P=3, N=300, D=16, C=6, seed=6)
    init = _seeds(x, 8, g)
    ref = batched_kmeans(x, init, iters=8, update="scatter")
    mm = batched_kmeans(x, init, iters=8, update="matmul")  # the GPU path, run on CPU
    assert torch.equal(ref.labels, mm.labels)
    assert torch.allclose(ref.centers, mm.centers, atol=1e-5)
    bf = batched_kmeans(x, init, iters=8, assign_dtype=torch.bfloat16)
    assert torch.isfinite(bf.inertia).all()
    assert (bf.inertia <= ref.inertia * 1.02 + 1e-3).all()


def test_tol_stops_at_the_fixed_point():
    x, g = _blobs(P=2, N=200, D=6, C=4, seed=7)
    init = _seeds(x, 5, g)
    long = batched_kmeans(x, init, iters=100, spherical=False)
    early = batched_kmeans(x, init, iters=100, tol=0.0, spherical=False)
    assert torch.equal(long.labels, early.labels)
    assert torch.allclose(long.centers, early.centers, atol=1e-6)


def test_bad_arguments_raise():
    x = torch.randn(2, 10, 3)
    init = torch.randn(2, 4, 3)
    with pytest.raises(ValueError, match=r"x \[P, N, D\]"):
        batched_kmeans(x[0], init)
    with pytest.raises(ValueError, match="does not match"):
        batched_kmeans(x, torch.randn(3, 4, 3))
    with pytest.raises(ValueError, match="groups"):
        batched_kmeans(x, init, groups=[0, 1, 0, 1])
    with pytest.raises(ValueError, match="groups has 3 entries"):
        batched_kmeans(x, init, groups=[0, 0, 1])
    with pytest.raises(ValueError, match="update"):
        batched_kmeans(x, init, update="atomic")
