"""numba-cuda k-means kernels: assignment and centroid update (references in kmeans_ref.py).

Assignment is a register-tiled fp32 product fused with the argmin: a block owns BM points and
streams the centroids through shared memory in (BK x BN) tiles, double-buffered; each thread
accumulates an RM x RN patch of dot products in registers and folds it into its points' best and
second-best score `||c||^2 - 2 x.c` when a centroid tile is complete, so no (n, k) matrix is ever
written. The threads sharing a point merge their (best, index, second) triples at the end.

Labels equal the CPU backends' labels, as in kmeans_cpu: a row whose best and second-best scores
are further apart than the fp32 error bound has a unique nearest centroid and only its float64
distance is computed; the other rows (near-ties) are decided by a second kernel that compares
float64 distances to every centroid, lowest index on exact ties. Both run on the device; the
host receives labels and distances.

Update: points grouped by cluster (a stable counting order), then one block per cluster sums
its rows in int64 fixed point: no atomics, and the same bits as the CPU kernels.

Runs on a GPU, or on the CPU with NUMBA_ENABLE_CUDASIM=1 (tests; slow, so keep sizes tiny).
benchmarks/gpu_check.py checks the kernels on a real device and times them against torch;
benchmarks/GPU_NOTES.md has what each version measured.
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda, float32, float64, int32, uint64

from thresher.kernels import kmeans_cpu as cpu

BK = 16      # dimensions per shared tile
THREADS = 256
TX = 16      # threads across the centroids of a tile; THREADS // TX across the points
AMB_THREADS = 128


def _make_assign(RM: int, RN: int):
    """The fused assignment kernel for RM x RN register patches (BM = 16 RM points a block,
    BN = 16 RN centroids a tile). Sizes are compile-time constants so the patch stays in
    registers; gpu_check.py compares patch sizes on the device."""
    TY = THREADS // TX
    BM = TY * RM
    BN = TX * RN
    # Rows padded by 4 words: the transposing stores would otherwise all hit one shared-memory
    # bank, and 4 keeps each row 16-byte aligned.
    LDX = BM + 4
    LDC = BN + 4
    SX = BK * LDX
    SC = BK * LDC
    XL = BM * BK // THREADS   # tile words each thread fetches
    CL = BN * BK // THREADS
    NACC = RM * RN            # array sizes must be plain constants for numba
    SX2 = 2 * SX
    SC2 = 2 * SC
    # The final merge reuses the tile buffers: best and second scores in sX, indices in sC.
    assert 2 * BM * TX <= 2 * SX and BM * TX <= 2 * SC and XL * THREADS == BM * BK and CL * THREADS == BN * BK

    @cuda.jit
    def kernel(X, shift, Cs, cn, out_j, out_v1, out_v2):
        # Two buffers of each tile: the next step's tile is fetched from global memory into
        # registers while this step's is multiplied, so one barrier a step and the loads'
        # latency hides behind the arithmetic.
        sX = cuda.shared.array(SX2, float32)
        sC = cuda.shared.array(SC2, float32)
        acc = cuda.local.array(NACC, float32)
        xr = cuda.local.array(RM, float32)
        cr = cuda.local.array(RN, float32)
        xr2 = cuda.local.array(RM, float32)
        cr2 = cuda.local.array(RN, float32)
        px = cuda.local.array(XL, float32)
        pc = cuda.local.array(CL, float32)
        v1 = cuda.local.array(RM, float32)
        v2 = cuda.local.array(RM, float32)
        bj = cuda.local.array(RM, int32)
        tid = cuda.threadIdx.x
        tx = tid % TX
        ty = tid // TX
        n = X.shape[0]
        d = X.shape[1]
        k = Cs.shape[0]
        p0 = cuda.blockIdx.x * BM
        nd = (d + BK - 1) // BK
        nsteps = ((k + BN - 1) // BN) * nd
        for a in range(RM):
            v1[a] = math.inf
            v2[a] = math.inf
            bj[a] = -1
        for q in range(NACC):
            acc[q] = 0.0
        # Consecutive threads fetch consecutive dimensions of one row: coalesced.
        for q in range(XL):
            e = tid + THREADS * q
            p = p0 + e // BK
            dd = e % BK
            # Centred in fp32, exactly as the host's Points.Xs: the error bound is stated for
            # the centred coordinates.
            px[q] = X[p, dd] - shift[dd] if p < n and dd < d else float32(0.0)
        for q in range(CL):
            e = tid + THREADS * q
            j = e // BK
            dd = e % BK
            pc[q] = Cs[j, dd] if j < k and dd < d else float32(0.0)
        for q in range(XL):
            e = tid + THREADS * q
            sX[(e % BK) * LDX + e // BK] = px[q]
        for q in range(CL):
            e = tid + THREADS * q
            sC[(e % BK) * LDC + e // BK] = pc[q]
        cuda.syncthreads()
        for s in range(nsteps):
            cur = s % 2
            t = s + 1
            if t < nsteps:
                j0n = (t // nd) * BN
                d0n = (t % nd) * BK
                for q in range(XL):
                    e = tid + THREADS * q
                    p = p0 + e // BK
                    dd = d0n + e % BK
                    px[q] = X[p, dd] - shift[dd] if p < n and dd < d else float32(0.0)
                for q in range(CL):
                    e = tid + THREADS * q
                    j = j0n + e // BK
                    dd = d0n + e % BK
                    pc[q] = Cs[j, dd] if j < k and dd < d else float32(0.0)
            # Unsigned offsets: numba wraps negative signed indices, and those selects (in
            # 64-bit arithmetic, per load) cost more than the FMAs and hide the patches'
            # contiguity from the compiler, which then cannot use 128-bit loads.
            bx = uint64(cur * SX + ty * RM)
            bc = uint64(cur * SC + tx * RN)
            # Two register sets, ping-pong: row kk+1's patches load while row kk's FMAs
            # run, so shared-memory latency hides inside one warp.
            for a in range(RM):
                xr[a] = sX[bx + uint64(a)]
            for b in range(RN):
                cr[b] = sC[bc + uint64(b)]
            for kk in range(0, BK, 2):
                ox = bx + uint64((kk + 1) * LDX)
                oc = bc + uint64((kk + 1) * LDC)
                for a in range(RM):
                    xr2[a] = sX[ox + uint64(a)]
                for b in range(RN):
                    cr2[b] = sC[oc + uint64(b)]
                for a in range(RM):
                    for b in range(RN):
                        acc[a * RN + b] += xr[a] * cr[b]
                if kk + 2 < BK:
                    ox = bx + uint64((kk + 2) * LDX)
                    oc = bc + uint64((kk + 2) * LDC)
                    for a in range(RM):
                        xr[a] = sX[ox + uint64(a)]
                    for b in range(RN):
                        cr[b] = sC[oc + uint64(b)]
                for a in range(RM):
                    for b in range(RN):
                        acc[a * RN + b] += xr2[a] * cr2[b]
            if t < nsteps:
                for q in range(XL):
                    e = tid + THREADS * q
                    sX[(1 - cur) * SX + (e % BK) * LDX + e // BK] = px[q]
                for q in range(CL):
                    e = tid + THREADS * q
                    sC[(1 - cur) * SC + (e % BK) * LDC + e // BK] = pc[q]
            cuda.syncthreads()
            if s % nd == nd - 1:
                # A tile's dot products are complete: fold them into the row's best two. A
                # thread meets its centroids in increasing index order, so `<` keeps the lowest
                # index on equal scores, and an equal score lands in v2 (gap 0: decided exactly).
                j0 = (s // nd) * BN
                for a in range(RM):
                    for b in range(RN):
                        j = j0 + tx * RN + b
                        if j < k:
                            v = cn[j] - float32(2.0) * acc[a * RN + b]
                            if v < v1[a]:
                                v2[a] = v1[a]
                                v1[a] = v
                                bj[a] = j
                            elif v < v2[a]:
                                v2[a] = v
                        acc[a * RN + b] = 0.0
        # The TX threads sharing a row merge their triples (indices < 2^24 are exact in fp32).
        for a in range(RM):
            r = ty * RM + a
            sX[r * TX + tx] = v1[a]
            sX[BM * TX + r * TX + tx] = v2[a]
            sC[r * TX + tx] = float32(bj[a])
        cuda.syncthreads()
        if tid < BM:
            p = p0 + tid
            B1 = sX[tid * TX]
            B2 = sX[BM * TX + tid * TX]
            BJ = int32(sC[tid * TX])
            for u in range(1, TX):
                a1 = sX[tid * TX + u]
                aj = int32(sC[tid * TX + u])
                if a1 < B1 or (a1 == B1 and aj < BJ and aj >= 0):
                    B2 = min(B1, sX[BM * TX + tid * TX + u])
                    B1 = a1
                    BJ = aj
                else:
                    B2 = min(B2, a1)
            if p < n:
                out_j[p] = BJ
                out_v1[p] = B1
                out_v2[p] = B2

    kernel.BM = BM
    return kernel


ASSIGN_KERNELS: dict[tuple[int, int], object] = {}


def assign_kernel(rm: int = 8, rn: int = 8):
    key = (rm, rn)
    if key not in ASSIGN_KERNELS:
        ASSIGN_KERNELS[key] = _make_assign(rm, rn)
    return ASSIGN_KERNELS[key]


@cuda.jit(device=True)
def _exact_d2(X, C, i, j):
    s = 0.0
    for t in range(X.shape[1]):
        v = float64(X[i, t]) - float64(C[j, t])
        s += v * v
    return s


@cuda.jit
def _finish_kernel(X, C, norms, lab, v1, v2, coef, cmax, tail, d2, amb):
    """Rows whose screened gap clears the error window: float64 distance to their centroid.
    The others are flagged for _decide_kernel."""
    i = cuda.grid(1)
    if i < X.shape[0]:
        W = 2.0 * (coef * float64(norms[i]) * cmax + tail)
        if float64(v2[i]) - float64(v1[i]) > W:
            d2[i] = _exact_d2(X, C, i, lab[i])
            amb[i] = 0
        else:
            amb[i] = 1


@cuda.jit
def _decide_kernel(X, C, rows, lab, d2):
    """One block per flagged row: float64 distances to every centroid, lowest index on ties."""
    sd = cuda.shared.array(AMB_THREADS, float64)
    sj = cuda.shared.array(AMB_THREADS, int32)
    i = rows[cuda.blockIdx.x]
    t = cuda.threadIdx.x
    bd = math.inf
    bjj = -1
    j = t
    while j < C.shape[0]:
        dd = _exact_d2(X, C, i, j)
        if dd < bd:  # j rises within a thread: `<` keeps the lowest index
            bd = dd
            bjj = j
        j += AMB_THREADS
    sd[t] = bd
    sj[t] = bjj
    cuda.syncthreads()
    s = AMB_THREADS // 2
    while s > 0:
        if t < s:
            od = sd[t + s]
            oj = sj[t + s]
            if od < sd[t] or (od == sd[t] and oj >= 0 and (sj[t] < 0 or oj < sj[t])):
                sd[t] = od
                sj[t] = oj
        cuda.syncthreads()
        s //= 2
    if t == 0:
        lab[i] = sj[0]
        d2[i] = sd[0]


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


def _device(P):
    """Device copies of a backend.Points set: the rows, their centring shift and norms."""
    dev = P.cache.get("cuda")
    if dev is None:
        shift = P.shift if P.shift is not None else np.zeros(P.X.shape[1], np.float32)
        dev = {"X": cuda.to_device(P.X), "shift": cuda.to_device(np.ascontiguousarray(shift, np.float32)),
               "norms": cuda.to_device(np.ascontiguousarray(P.norms, np.float64))}
        P.cache["cuda"] = dev
    return dev


def window_terms(d: int, cn64: np.ndarray) -> tuple[float, float, float]:
    """(coef, cmax, tail) of the per-row window W = 2 (coef ||x|| cmax + tail): the fp32
    product's bound (kmeans_cpu.screen_coef), plus the roundings of ||c||^2 to fp32 and of
    the score's subtraction."""
    cmax = float(np.sqrt(cn64.max())) if len(cn64) else 0.0
    coef = cpu.screen_coef(d, cpu.UNIT_FP32)
    # ||c||^2 rounded to fp32, and `cn - 2 acc` rounded once more (|cn| + 2|acc| <= 3 cmax^2
    # when ||x|| <= cmax; the coef term covers the rest since it scales with ||x||).
    tail = 4 * cpu.UNIT_FP32 * cmax * cmax
    return coef + 2 * cpu.UNIT_FP32, cmax, tail


def assign_device(P, C: np.ndarray, rm: int = 8, rn: int = 8):
    """Labels (int32) and float64 squared distances, as device arrays, plus the count of rows
    decided by the exact pass."""
    n, d = P.X.shape
    C = np.ascontiguousarray(C, dtype=np.float32)
    Cs = np.ascontiguousarray(C - (P.shift if P.shift is not None else 0), dtype=np.float32)
    cn64 = np.einsum("ij,ij->i", Cs, Cs, dtype=np.float64)
    dev = _device(P)
    lab = cuda.device_array(n, dtype=np.int32)
    d2 = cuda.device_array(n, dtype=np.float64)
    if n == 0:
        return lab, d2, 0
    v1 = cuda.device_array(n, dtype=np.float32)
    v2 = cuda.device_array(n, dtype=np.float32)
    amb = cuda.device_array(n, dtype=np.uint8)
    kern = assign_kernel(rm, rn)
    kern[(n + kern.BM - 1) // kern.BM, THREADS](dev["X"], dev["shift"], cuda.to_device(Cs),
                                                cuda.to_device(cn64.astype(np.float32)), lab, v1, v2)
    coef, cmax, tail = window_terms(d, cn64)
    Cd = cuda.to_device(C)
    _finish_kernel[(n + 255) // 256, 256](dev["X"], Cd, dev["norms"], lab, v1, v2, coef, cmax, tail, d2, amb)
    rows = np.flatnonzero(amb.copy_to_host()).astype(np.int32)
    if len(rows):
        _decide_kernel[len(rows), AMB_THREADS](dev["X"], Cd, cuda.to_device(rows), lab, d2)
    return lab, d2, len(rows)


def assign(P, C: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Labels (int32) and squared distances (float32) for a backend.Points set."""
    lab, d2, namb = assign_device(P, C)
    P.cache["cuda_exact_rows"] = namb
    return lab.copy_to_host(), d2.copy_to_host().astype(np.float32)


def update(P, labels: np.ndarray, k: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Fixed-point sums (int64) and counts of a backend.Points set, as kmeans_cpu.update; the
    rows are read from the set's device copy (sent once, by the first assignment)."""
    labels = np.asarray(labels, dtype=np.int64)
    valid = labels >= 0
    counts = np.bincount(labels[valid], minlength=k).astype(np.int64)
    order = np.argsort(np.where(valid, labels, k), kind="stable")[: int(valid.sum())]
    off = np.zeros(k + 1, np.int64)
    np.cumsum(counts, out=off[1:])
    d = P.X.shape[1]
    sums = cuda.device_array((k, d), dtype=np.int64)
    _update_kernel[k, min(128, max(32, d))](_device(P)["X"], cuda.to_device(order), cuda.to_device(off),
                                             float(scale), sums)
    return sums.copy_to_host(), counts
