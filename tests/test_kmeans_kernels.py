"""Every k-means kernel held to its numpy reference (kernels/kmeans_ref.py)."""

from __future__ import annotations


import numpy as np
import pytest

from thresher.kernels import backend as B
from thresher.kernels import kmeans_cpu as K
from thresher.kernels import kmeans_ref as R


# The screening products every test runs on: fp32, bf16 made by numpy, and bf16 by torch (the
# production path: oneDNN on the CPU's bf16 units where it has them; elsewhere torch's own bf16
# kernels, about 1 GFLOP/s on an AVX2 CPU and enough for these sizes). All three run on every
# CPU: the selection, bounds and candidate-set code behind the bf16 product is checked on any
# CPU CI lands on (measured on an AVX2-only AMD EPYC, where the torch path was once skipped).
SCREENS = ["fp32", "bf16-emulated", "bf16"]


def backend(kind, **kw):
    """A CPUBackend for a SCREENS entry."""
    if kind == "bf16-emulated":
        return B.CPUBackend("bf16", emulate=True, **kw)
    return B.CPUBackend(kind, emulate=False, **kw) if kind == "bf16" else B.CPUBackend(kind, **kw)


def blobs(n, d, k, seed=0, spread=0.3):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d)) * 2
    lab = rng.integers(0, k, n)
    return (centres[lab] + spread * rng.normal(size=(n, d))).astype(np.float32)


@pytest.mark.parametrize("d", [2, 48])
def test_assign_matches_reference_with_ties(d):
    X = blobs(1500, d, 12, seed=d)
    C = X[np.random.default_rng(1).choice(len(X), 40, replace=False)].copy()
    # Exact ties: duplicated centroids (the lower index must win) and points equal to centroids.
    C = np.vstack([C, C[:5]])
    X = np.vstack([X, C[:7]])
    lab, d2 = K.assign(X, C)
    lr, dr = R.assign_ref(X, C)
    np.testing.assert_array_equal(lab, lr)
    np.testing.assert_allclose(d2, dr, rtol=1e-6, atol=1e-6)
    assert lab.dtype == np.int32 and d2.dtype == np.float32


def test_assign_windows_hold_for_uncentred_data():
    # Far from the origin, the screening products lose digits: the exact decision must catch it.
    X = blobs(800, 40, 6, seed=3) + 500.0
    C = X[:30].copy() + 1e-3
    lr, _ = R.assign_ref(X, C)
    np.testing.assert_array_equal(K.assign(X, C)[0], lr)
    np.testing.assert_array_equal(B.CPUBackend("fp32").assign(B.Points(X), C)[0], lr)


@pytest.mark.parametrize("kind", SCREENS[1:])
def test_bf16_screening_gives_fp32_assignments(kind):
    be = backend(kind)
    X = blobs(4000, 64, 50, seed=5, spread=1.0)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    C = X[:300].copy()
    lab, d2 = B.assign_bf16(B.Points(X), C, emulate=be.emulate)
    lr, dr = R.assign_ref(X, C)
    np.testing.assert_array_equal(lab, lr)
    np.testing.assert_allclose(d2, dr, rtol=1e-6, atol=1e-6)


def test_update_fixed_point_matches_reference_and_is_split_independent():
    X = blobs(3000, 16, 9, seed=2)
    lab, _ = R.assign_ref(X, X[:9])
    scale = K.fixed_scale(len(X), np.abs(X).max())
    sums, counts = K.update(X, lab, 9, scale)
    sr, cr = R.update_ref(X, lab, 9)
    np.testing.assert_array_equal(counts, cr)
    np.testing.assert_allclose(sums / scale, sr, rtol=1e-9, atol=1e-6)
    # Partial sums over any split add up to the same bits (what Spark partitions rely on).
    a = K.update(X[:1234], lab[:1234], 9, scale)
    b = K.update(X[1234:], lab[1234:], 9, scale)
    np.testing.assert_array_equal(a[0] + b[0], sums)
    # The sorted (no per-thread buffers) variant gives the same bits as well.
    np.testing.assert_array_equal(K.update(X, lab, 9, scale, max_partial_bytes=0)[0], sums)
    # Empty clusters keep their old centroid.
    old = np.full((10, 16), 7.0, np.float32)
    s10, c10 = K.update(X, lab, 10, scale)
    C = K.centroids_from(s10, c10, scale, old)
    np.testing.assert_allclose(C, R.centroids_ref(*R.update_ref(X, lab, 10), old), rtol=1e-6, atol=1e-6)
    assert (C[9] == 7.0).all()


def test_kmeanspp_picks_the_reference_points():
    X = blobs(600, 5, 8, seed=4)
    for seed in (0, 1):
        np.testing.assert_array_equal(K.kmeanspp(X, 25, seed), R.kmeanspp_ref(X, 25, seed))
    # The parallel build (chunked sums) chooses the same points as the serial one.
    rng = np.random.default_rng(0)
    draws = rng.random(24 * 4)
    np.testing.assert_array_equal(K._kpp_serial(X, 3, draws, 4, 64), K._kpp_parallel(X, 3, draws, 4, 64))
    with pytest.raises(ValueError):
        K.kmeanspp(X[:3], 4, 0)


def test_topr_and_farthest_match_reference():
    rng = np.random.default_rng(7)
    key = rng.integers(0, 6, 2000).astype(np.float64)  # many ties: the index must break them
    lab = rng.integers(0, 30, 2000)
    lab[lab == 29] = 28  # cluster 29 empty
    np.testing.assert_array_equal(K.topr(key, lab, 30, 9), R.topr_ref(key, lab, 30, 9))
    np.testing.assert_array_equal(K.topr(key, lab, 30, 500), R.topr_ref(key, lab, 30, 500))
    np.testing.assert_array_equal(K.farthest(key, 37), R.farthest_ref(key, 37))


def test_lloyd_iterations_match_reference():
    from thresher.kernels.hkmeans import ArraySource, lloyd

    X = blobs(1200, 8, 6, seed=9)
    C0 = X[:10].copy()
    C = lloyd(ArraySource(X, B.CPUBackend("fp32")), C0, 6)
    Cr, _, _ = R.lloyd_ref(X, C0, 6)
    np.testing.assert_allclose(C, Cr, rtol=1e-5, atol=1e-6)


def test_bf16_emulation_rounds_as_torch():
    """numpy's bf16 rounding (ties to even) gives torch's bits, ties and signs included; torch
    converts without bf16 hardware."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    A = (rng.normal(size=5000) * 10.0 ** rng.integers(-20, 20, 5000)).astype(np.float32)
    # Exact ties (low 16 bits 0x8000) on both parities of bit 16, and the values next to them.
    u = rng.integers(0, 2 ** 31, 3000, dtype=np.uint32) & np.uint32(0xFFFF0000)
    ties = np.concatenate([u | np.uint32(0x8000), u | np.uint32(0x18000), u | np.uint32(0x7FFF),
                           u | np.uint32(0x8001)]).view(np.float32)
    A = np.concatenate([A, ties[np.isfinite(ties)], -A, [0.0, -0.0, 1.0]]).astype(np.float32)
    ref = torch.from_numpy(A).to(torch.bfloat16).view(torch.int16).numpy()
    np.testing.assert_array_equal(B.bf16_bits(A), ref)


def test_bf16_emulated_product_is_within_torchs_bound():
    """numpy's emulated product and torch's (the CPU's bf16 units, or torch's software path)
    differ by at most the product's error bound (both are within it of the exact product)."""
    import torch

    X = blobs(2000, 96, 30, seed=6)
    C = X[:200].copy()
    Xb, Cb = B.bf16_round(X), B.bf16_round(C)
    em = B.bf16_matmul_bits(Xb, np.ascontiguousarray(Cb.T))
    hw = torch.mm(torch.from_numpy(X).to(torch.bfloat16), torch.from_numpy(C).to(torch.bfloat16).T).view(torch.int16).numpy()
    f = lambda b: (b.astype(np.int32).view(np.uint32) << np.uint32(16)).view(np.float32).astype(np.float64)  # noqa: E731
    bound = B._bf16_coef(96) * np.linalg.norm(X, axis=1)[:, None] * np.linalg.norm(C, axis=1)[None, :]
    assert (np.abs(f(em) - f(hw)) <= bound).all() and (em == hw).mean() > 0.9


@pytest.mark.parametrize("kind,d,m", [("fp32", 2, 8), ("fp32", 48, 1), ("fp32", 64, 8), ("bf16-emulated", 64, 1),
                                      ("bf16-emulated", 64, 8), ("bf16", 64, 8)])
def test_screening_lower_bounds_hold(kind, d, m):
    rng = np.random.default_rng(11)
    centres = rng.normal(size=(60, d))
    # Embedding-like rows (unit norm) around 60 centres, and a centroid near each centre.
    X = centres[rng.integers(0, 60, 3000)] + 0.1 * rng.normal(size=(3000, d))
    X = (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32)
    C = (centres / np.linalg.norm(centres, axis=1, keepdims=True) + 0.01 * rng.normal(size=(60, d))).astype(np.float32)
    C = np.vstack([C, C[:3]])  # duplicates: the second-best distance equals the best
    lab, d2, lb, cand = backend(kind, prune=False, candidates=m, screen_tops=8)._screen(B.Points(X), C)
    lb2 = lb ** 2
    lr, dr = R.assign_ref(X, C)
    np.testing.assert_array_equal(lab, lr)
    # The bound holds for every centroid outside the row's candidate set, which holds the label.
    assert cand.shape == (3000, m) and ((cand == lab[:, None]).sum(1) == 1).all()
    assert (lb2 <= R.outside_ref(X, C, cand) * (1 + 1e-9)).all()
    single = lr >= 3
    if m == 1 or d <= K.DIRECT_MAX_D:
        # One candidate (Hamerly's bound): rows whose own centroid has no twin get a bound
        # above their own distance, the others cannot.
        assert (cand[:, 1:] == -1).all()
        assert single.sum() > 2000 and (lb2[single] > dr[single]).all()
        assert (lb2[~single] <= dr[~single] * (1 + 1e-6)).all()
    else:
        # Several: the twins are candidates together, so their rows get a useful bound too;
        # the rest are far (well separated data), so the sets stay at the window's few.
        assert (cand[~single] == lr[~single, None] + 60).any(1).all()
        assert (lb2 > dr).all() and (cand >= 0).sum(1).max() <= 3


def test_bound_check_matches_reference():
    rng = np.random.default_rng(4)
    X = blobs(2000, 24, 10, seed=4)
    C = X[:30].copy()
    C[29] = C[5]  # an exact tie between two candidates: the lower index wins
    lb = rng.uniform(0, 8, 2000)
    for m in (1, 5):
        cand = np.stack([rng.permutation(30)[:m] for _ in range(2000)]).astype(np.int32)
        cand[rng.random((2000, m)) < 0.3] = -1  # -1 pads the sets that are not full ...
        cand[:, 0] = np.where(cand[:, 0] < 0, rng.integers(0, 30, 2000), cand[:, 0])
        cand = np.sort(np.where(cand < 0, 99, cand), axis=1)  # ... after the members
        cand[cand == 99] = -1
        if m > 1:
            cand[:40] = -1
            cand[:40, :2] = [5, 29]
        for tops, tmax in [(np.array([], np.int64), 0.5), (np.array([2, 7], np.int64), 0.5),
                           (np.array([], np.int64), 1.5)]:
            lb_k = lb.copy()
            lab = np.empty(2000, np.int32)
            u2 = np.empty(2000)
            state = np.empty(2000, np.int8)
            K.bound_check(X, C, cand, lab, lb_k, tops, 0.5, tmax, u2, state)
            lr, l, ur, sr = R.bound_check_ref(X, C, cand, lb, tops, 0.5, tmax, K.BOUND_MARGIN)
            np.testing.assert_array_equal(lab, lr)
            np.testing.assert_allclose(lb_k, l, rtol=1e-12)
            np.testing.assert_allclose(u2, ur, rtol=1e-12)
            np.testing.assert_array_equal(state, sr)
            assert (state == 1).any() and (state == 0).any() and (state == 2).any() == (tmax > 0.5)
    assert (lab[:40] == 5).all()
    # Two centroids move far more than the others: they are the ones measured exactly.
    step = np.full((30, 1), 0.01, np.float32)
    step[[4, 9]] = 1.0
    mv, tops, rest = K.moves(C, C + step)
    assert sorted(tops) == [4, 9] and np.isclose(rest, 0.01 * np.sqrt(24), rtol=1e-5)
    mv, tops, rest = K.moves(C, C + 0.01)  # even moves: no outliers, a plain bound
    assert len(tops) == 0 and np.isclose(rest, mv.max())
    tops, rest, tmax = K.largest_moves(np.array([0.1, 0.5, 0.2, 0.6, 0.0]), 3)
    assert list(tops) == [1, 2, 3] and rest == 0.1 and tmax == 0.6


@pytest.mark.parametrize("kind", SCREENS)
def test_top_screen_bounds_hold(kind):
    X = blobs(3000, 64, 40, seed=8, spread=1.0)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    C = X[K.kmeanspp(X, 200, 2)]
    P = B.Points(X)
    be = backend(kind, candidates=8, screen_tops=32)
    _, _, _, cand = be._screen(P, C)
    # Sets ascending, padding after (what the walk beside the tops relies on).
    assert (np.diff(np.where(cand < 0, 10 ** 6 + np.arange(8), cand), axis=1) > 0).all()
    tops = np.sort(np.random.default_rng(0).choice(200, 50, replace=False))
    cand[:5] = tops[:8]  # tops that are candidates are skipped
    rows = np.arange(7, 3000, 3)
    lt = be._screen_tops(P, C, tops, cand, np.arange(3000))
    sub = be._screen_tops(P, C, tops, cand, rows)
    # A subset screens the same rows. Not the same bits on every CPU: BLAS's fp32 product of a
    # row can depend on the call's shape (OpenBLAS's Haswell/Zen kernels did, on an AVX2-only
    # EPYC: 6e-8 relative); each is a bound by itself (below).
    np.testing.assert_allclose(sub, lt[rows], rtol=1e-6, atol=0)
    D = R.distances_ref(X, C)
    out = np.full(D.shape, np.inf)
    out[:, tops] = D[:, tops]
    for q in range(cand.shape[1]):
        r = np.flatnonzero(cand[:, q] >= 0)
        out[r, cand[r, q]] = np.inf
    ref = np.sqrt(out.min(1))
    assert (lt <= ref * (1 + 1e-9)).all() and (lt > 0.9 * ref).mean() > 0.9
    assert (sub <= ref[rows] * (1 + 1e-9)).all()


@pytest.mark.parametrize("kind,d", [("fp32", 2), ("fp32", 48), ("bf16-emulated", 64),
                                    ("bf16", 64)])
def test_pruned_lloyd_assignments_equal_reference(kind, d):
    X = blobs(3000, d, 20, seed=d, spread=1.0)
    P = B.Points(X)
    be = backend(kind)
    C = X[:40].copy()
    scale = K.fixed_scale(len(X), np.abs(X).max())
    shares = []
    for it in range(8):
        if it == 5:
            # One centroid jumps onto a far point: its new neighbours must move to it.
            C[3] = X[np.argmax(R.assign_ref(X, C)[1])]
        lab, d2 = be.assign(P, C)
        lr, dr = R.assign_ref(X, C)
        np.testing.assert_array_equal(lab, lr)
        np.testing.assert_allclose(d2, dr, rtol=1e-6, atol=1e-6)
        shares.append(P.cache["screened_share"])
        s, c = K.update(X, lab, len(C), scale)
        C = K.centroids_from(s, c, scale, C)
    assert shares[0] == 1.0 and min(shares) < 0.6, shares


@pytest.mark.parametrize("kind", SCREENS)
def test_candidate_bounds_give_dense_labels_on_poorly_separated_data(kind):
    """Unit vectors around 120 centres with noise larger than the centres' spacing (like real
    embeddings at large k): every pruned Lloyd assignment equals the dense one bit for bit,
    and candidate sets with the movers' screen (8 tops at this small k) screen fewer rows than
    the single (Hamerly) bound."""
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(120, 64))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    X = centres[rng.integers(0, 120, 6000)] + 1.2 / 8 * rng.normal(size=(6000, 64))
    X = (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32)
    C0 = X[K.kmeanspp(X, 60, 1)]
    scale = K.fixed_scale(len(X), np.abs(X).max())
    dense, Pd = backend(kind, prune=False), B.Points(X)
    screened = {}
    for m, tops in [(1, 0), (1, 8), (16, 8)]:
        be, P, C = backend(kind, candidates=m, screen_tops=tops), B.Points(X), C0.copy()
        screened[m, tops] = []
        for it in range(12):
            if it in (6, 9):
                # Centroids jump onto far points: rows there must move to them (the
                # largest movers' bounds at work).
                far = np.argsort(-R.assign_ref(X, C)[1], kind="stable")[:3]
                C[[3, 17, 40]] = X[far]
            lab, d2 = be.assign(P, C)
            ld, dd = dense.assign(Pd, C)
            np.testing.assert_array_equal(lab, ld)
            np.testing.assert_array_equal(d2, dd)
            np.testing.assert_array_equal(lab, R.assign_ref(X, C)[0])
            # Carried or fresh, each row's bound holds for every centroid outside its set.
            st = P.cache["bounds"]
            assert (st["lb"] <= np.sqrt(R.outside_ref(X, C, st["cand"])) * (1 + 1e-9)).all()
            assert m == 1 or (st["cand"] >= 0).sum(1).mean() > 4  # near runners-up: sets fill
            screened[m, tops].append(P.cache["screened_share"])
            s, c = K.update(X, lab, len(C), scale)
            C = K.centroids_from(s, c, scale, C)
    assert sum(screened[16, 8]) < 0.85 * sum(screened[1, 0]), screened


def test_backend_pick_is_logged(caplog):
    B._PICKED.clear()
    with caplog.at_level("INFO", logger="thresher.kernels"):
        b = B.pick_backend("cpu", "float32")
    assert b.name == "numba-cpu"
    assert any("k-means backend: numba-cpu" in r.getMessage() for r in caplog.records)
    with pytest.raises(ValueError):
        B.pick_backend("tpu")
