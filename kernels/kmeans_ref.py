"""Plain numpy references of the k-means kernels: slow, obvious, and the yardstick for tests.

Conventions shared with kmeans_cpu and kmeans_cuda:
- Distances are squared L2. Ties go to the lower index (centroid index for assignment, point
  index for selections), so results never depend on the order work was split.
- Centroid updates sum in float64 (the kernels sum in int64 fixed point, which is exact and so
  independent of how points are split over threads, blocks or Spark partitions).
"""

from __future__ import annotations

import numpy as np


def sq_norms(X: np.ndarray) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    return np.einsum("ij,ij->i", X, X)


def distances_ref(X: np.ndarray, C: np.ndarray) -> np.ndarray:
    """Full (n, k) matrix of squared distances, in float64 from the direct difference."""
    X = np.asarray(X, dtype=np.float64)
    C = np.asarray(C, dtype=np.float64)
    D = np.empty((len(X), len(C)))
    for j in range(len(C)):  # one column at a time: no (n, k, d) temporary
        D[:, j] = ((X - C[j]) ** 2).sum(1)
    return D


def assign_ref(X: np.ndarray, C: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centroid (lowest index on ties) and its squared distance."""
    D = distances_ref(X, C)
    lab = D.argmin(1)
    return lab.astype(np.int32), D[np.arange(len(X)), lab].astype(np.float32)


def update_ref(X: np.ndarray, labels: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-cluster float64 sums and counts."""
    X = np.asarray(X, dtype=np.float64)
    sums = np.zeros((k, X.shape[1]))
    np.add.at(sums, labels, X)
    return sums, np.bincount(labels, minlength=k).astype(np.int64)


def centroids_ref(sums: np.ndarray, counts: np.ndarray, old: np.ndarray) -> np.ndarray:
    """Means; an empty cluster keeps its old centroid."""
    out = np.asarray(old, dtype=np.float64).copy()
    nz = counts > 0
    out[nz] = sums[nz] / counts[nz, None]
    return out.astype(np.float32)


def lloyd_ref(X: np.ndarray, C0: np.ndarray, n_iters: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    C = np.asarray(C0, dtype=np.float32).copy()
    for _ in range(n_iters):
        lab, _ = assign_ref(X, C)
        s, c = update_ref(X, lab, len(C))
        C = centroids_ref(s, c, C)
    lab, d2 = assign_ref(X, C)
    return C, lab, d2


def kmeanspp_ref(X: np.ndarray, k: int, seed: int, n_local_trials: int | None = None) -> np.ndarray:
    """Greedy k-means++: indices of the chosen points.

    The first centre is uniform; each next one is the best (lowest resulting potential, lowest
    index on ties) of `n_local_trials` candidates drawn with probability proportional to the
    squared distance to the closest centre so far. The random stream (numpy PCG64 from `seed`:
    one integer, then `n_local_trials` uniforms per centre) is part of the contract: kernels
    draw the same numbers and so pick the same points.
    """
    X = np.asarray(X, dtype=np.float64)
    n = len(X)
    L = n_local_trials or (2 + int(np.log(k)))
    rng = np.random.default_rng(seed)
    chosen = np.empty(k, dtype=np.int64)
    chosen[0] = rng.integers(n)
    closest = ((X - X[chosen[0]]) ** 2).sum(1)
    for c in range(1, k):
        cum = np.cumsum(closest)
        r = rng.random(L) * cum[-1]
        cand = np.minimum(np.searchsorted(cum, r), n - 1)
        d = distances_ref(X, X[cand])  # (n, L)
        newd = np.minimum(closest[:, None], d)
        pots = newd.sum(0)
        best = int(np.argmin(pots))
        chosen[c] = cand[best]
        closest = newd[:, best]
    return chosen


def topr_ref(key: np.ndarray, labels: np.ndarray, k: int, r: int) -> np.ndarray:
    """(k, r) indices of the r points of each cluster with the smallest key (index breaks ties);
    -1 pads clusters with fewer than r points."""
    out = np.full((k, r), -1, dtype=np.int64)
    order = np.lexsort((np.arange(len(key)), key, labels))
    lab = labels[order]
    for j in range(k):
        members = order[lab == j][:r]
        out[j, : len(members)] = members
    return out


def farthest_ref(d2: np.ndarray, m: int) -> np.ndarray:
    """Indices of the m points with the largest distance (lower index first on ties)."""
    order = np.lexsort((np.arange(len(d2)), -np.asarray(d2, dtype=np.float64)))
    return order[:m]


def inertia_ref(X: np.ndarray, C: np.ndarray) -> float:
    return float(assign_ref(X, C)[1].astype(np.float64).sum())


def outside_ref(X: np.ndarray, C: np.ndarray, S: np.ndarray) -> np.ndarray:
    """Each row's smallest squared distance to a centroid outside its candidate set (row of S,
    -1 padded): what the screening lower bounds bound. +inf when S holds every centroid."""
    D = distances_ref(X, C)
    S = np.asarray(S)
    for q in range(S.shape[1]):
        r = np.flatnonzero(S[:, q] >= 0)
        D[r, S[r, q]] = np.inf
    return D.min(1) if D.shape[1] else np.full(len(X), np.inf)


def bound_check_ref(X, C, S, lb, tops, rest, tmax, margin):
    """kmeans_cpu.bound_check: the nearest member of each row's set S (-1 padded; exact float64
    distance, lowest index on ties), its squared distance, the carried bound on the distance to
    every centroid outside S (the old one less `rest`, and the exact distances to the `tops`
    outside S), and the state: 1 when the member is provably the nearest of all, counting the
    movers left out of `tops` (they moved up to `tmax`: the old bound less tmax, which then
    goes into the carried bound), 2 when only those stand in the way, 0 otherwise."""
    X64, C64 = np.asarray(X, np.float64), np.asarray(C, np.float64)
    S = np.asarray(S)
    n = len(X64)
    labels = np.full(n, -1, np.int32)
    u2 = np.full(n, np.inf)
    for q in range(S.shape[1]):
        j = S[:, q]
        ok = j >= 0
        dq = np.full(n, np.inf)
        dq[ok] = ((X64[ok] - C64[j[ok]]) ** 2).sum(1)
        better = ok & ((dq < u2) | ((dq == u2) & (j < labels)))
        labels[better], u2[better] = j[better], dq[better]
    lb = np.asarray(lb, dtype=np.float64)
    l = lb - rest
    for j in tops:
        dj = np.sqrt(((X64 - C64[j]) ** 2).sum(1))
        l = np.where((S == j).any(1), l, np.minimum(l, dj))

    def clear(b):
        lim = b * (1.0 - margin)
        return (lim > 0) & (u2 < lim * lim)

    l2 = np.minimum(l, lb - tmax)
    ok1, ok2 = clear(l), clear(l2)
    state = np.where(ok1 & ok2, 1, np.where(ok1, 2, 0)).astype(np.int8)
    return labels, np.where(state == 1, l2, l), u2, state
