"""numba-cuda k-means kernels: assignment and centroid update (references in kmeans_ref.py).

Assignment: one thread per point, centroids streamed through shared memory in (TK x TD) tiles,
scores `||c||^2 - 2 x.c` accumulated in fp32. The kernel keeps the best and second-best score;
rows whose two are closer than the fp32 error bound are decided again on the host in exact
arithmetic (kmeans_cpu), so labels equal the CPU backends' labels.

Update: points grouped by cluster on the host (a stable counting order), then one thread per
(cluster, dimension) sums its column in int64 fixed point: no atomics, and the same bits as
the CPU kernels.

Runs on a GPU, or on the CPU with NUMBA_ENABLE_CUDASIM=1 (tests; slow, so keep sizes tiny).
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda, float32, float64

from thresher.kernels import kmeans_cpu as cpu

TPB = 128   # threads (points) per block
TK = 16     # centroids per shared tile
TD = 32     # dimensions per shared tile


@cuda.jit
def _assign_kernel(XT, C, cn, out_j, out_v1, out_v2):
    """XT is (d, n) so that neighbouring threads read neighbouring addresses."""
    sC = cuda.shared.array((TK, TD), float32)
    acc = cuda.local.array(TK, float32)
    i = cuda.grid(1)
    tx = cuda.threadIdx.x
    d = XT.shape[0]
    n = XT.shape[1]
    k = C.shape[0]
    v1 = math.inf
    v2 = math.inf
    bj = -1
    for k0 in range(0, k, TK):
        for l in range(TK):
            acc[l] = 0.0
        for d0 in range(0, d, TD):
            q = tx
            while q < TK * TD:
                r = q // TD
                c = q % TD
                if k0 + r < k and d0 + c < d:
                    sC[r, c] = C[k0 + r, d0 + c]
                else:
                    sC[r, c] = 0.0
                q += cuda.blockDim.x
            cuda.syncthreads()
            if i < n:
                for c in range(TD):
                    if d0 + c < d:
                        xv = XT[d0 + c, i]
                        for l in range(TK):
                            acc[l] += xv * sC[l, c]
            cuda.syncthreads()
        if i < n:
            for l in range(TK):
                j = k0 + l
                if j < k:
                    v = cn[j] - 2.0 * acc[l]
                    if v < v1:
                        v2 = v1
                        v1 = v
                        bj = j
                    elif v < v2:
                        v2 = v
    if i < n:
        out_j[i] = bj
        out_v1[i] = v1
        out_v2[i] = v2


@cuda.jit
def _update_kernel(X, order, off, scale, sums):
    """Block j sums cluster j; its threads stride over the dimensions."""
    j = cuda.blockIdx.x
    d = X.shape[1]
    t = cuda.threadIdx.x
    while t < d:
        s = 0
        for q in range(off[j], off[j + 1]):
            s += int(round(float64(X[order[q], t]) * scale))
        sums[j, t] = s
        t += cuda.blockDim.x


def _points_device(P):
    """The point set on the device, transposed once and cached on the Points object."""
    dev = P.cache.get("cuda")
    if dev is None:
        dev = cuda.to_device(np.ascontiguousarray(P.Xs.T))
        P.cache["cuda"] = dev
    return dev


def assign(P, C: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Labels (int32) and squared distances (float32) for a backend.Points set."""
    X = P.X
    n, d = X.shape
    C = np.ascontiguousarray(C, dtype=np.float32)
    Cs = np.ascontiguousarray(C - P.shift, dtype=np.float32)
    cn64 = np.einsum("ij,ij->i", Cs, Cs, dtype=np.float64)
    XT = _points_device(P)
    j = cuda.device_array(n, dtype=np.int32)
    v1 = cuda.device_array(n, dtype=np.float32)
    v2 = cuda.device_array(n, dtype=np.float32)
    blocks = (n + TPB - 1) // TPB
    _assign_kernel[blocks, TPB](XT, cuda.to_device(Cs), cuda.to_device(cn64.astype(np.float32)), j, v1, v2)
    lab = j.copy_to_host()
    a = v1.copy_to_host().astype(np.float64)
    b = v2.copy_to_host().astype(np.float64)
    # fp32 accumulation bound, plus the rounding of ||c||^2 to fp32.
    cmax = float(np.sqrt(cn64.max())) if len(C) else 0.0
    W = 2.0 * (cpu.screen_coef(d, cpu.UNIT_FP32) * P.norms * cmax + 4 * cpu.UNIT_FP32 * cmax * cmax)
    amb = np.flatnonzero(~(b - a > W))
    d2 = np.empty(n, np.float32)
    sure = np.ones(n, bool)
    sure[amb] = False
    if sure.any():
        diff = X[sure] - C[lab[sure]]
        d2[sure] = np.einsum("ij,ij->i", diff, diff, dtype=np.float64).astype(np.float32)
    if len(amb):
        la, da = cpu.assign(X[amb], C)
        lab[amb] = la
        d2[amb] = da
    return lab.astype(np.int32), d2


def update(X: np.ndarray, labels: np.ndarray, k: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Fixed-point sums (int64) and counts, as kmeans_cpu.update."""
    X = np.ascontiguousarray(X, dtype=np.float32)
    labels = np.asarray(labels, dtype=np.int64)
    valid = labels >= 0
    counts = np.bincount(labels[valid], minlength=k).astype(np.int64)
    order = np.argsort(np.where(valid, labels, k), kind="stable")[: int(valid.sum())]
    off = np.zeros(k + 1, np.int64)
    np.cumsum(counts, out=off[1:])
    sums = cuda.device_array((k, X.shape[1]), dtype=np.int64)
    _update_kernel[k, min(128, max(32, X.shape[1]))](cuda.to_device(X), cuda.to_device(order), cuda.to_device(off),
                                                      float(scale), sums)
    return sums.copy_to_host(), counts

