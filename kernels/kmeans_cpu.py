"""numba CPU k-means kernels (references in kmeans_ref.py).

Assignment screens with a fast matrix product and decides with exact arithmetic: the product
(fp32 BLAS here, bf16 in backend.py) gives every centroid a score `||c||^2 - 2 x.c` with a known
error bound; only the centroids whose score is within twice that bound of the row's best can be
the nearest one, and those few are compared by their float64 distance (lowest index on ties).
So a label is a pure function of (x, C): it does not depend on block sizes, thread counts,
BLAS builds, Spark partitions or the screening precision, and it equals the reference's.

Centroid sums are int64 fixed point: each value is rounded once to a multiple of 1/scale, after
which addition is exact and associative, so per-thread and per-partition partial sums reduce
to the same bits in any order.

Every screening pass also leaves, per row, a small candidate set (the centroids whose screened
score is below a threshold, at most a few) and a lower bound on the row's distance to every
centroid outside it (from the smallest score above the threshold, less the error window).
Across Lloyd iterations `bound_check` carries the bound forward by the triangle inequality
(less the largest move, leaving out the few largest movers, which are measured exactly or,
with candidate sets, screened again: `top_bounds`), measures the candidates exactly, and keeps
the nearest of them without a product when its distance is still below the bound: it is then
provably the nearest of all, so skipping changes nothing in the result. With one candidate
this is Hamerly's bound, made exact for screened products; more candidates keep it useful where the runner-up
is almost as near as the nearest (real embeddings, large k), and let a row change label among
its candidates without a product.
"""

from __future__ import annotations

import math
import os

import numba
import numpy as np
from numba import njit, prange, types
from numba.extending import overload

UNIT_FP32 = 2.0 ** -24
# Up to this many dimensions assignment computes every distance directly.
DIRECT_MAX_D = 16


def screen_coef(d: int, unit: float, out_unit: float = 0.0) -> float:
    """Bound on |score error| / (||x|| * max||c||) for a product with inputs rounded to `unit`,
    fp32 accumulation over d terms, and the output rounded to `out_unit`; doubled for safety."""
    gamma = d * UNIT_FP32 / (1 - d * UNIT_FP32)
    per_dot = (2 * unit + unit * unit) + gamma * (1 + unit) ** 2 + out_unit * (1 + unit) ** 2 * (1 + gamma)
    # A score is cn - 2 s, so its error is twice the dot's; 5% on top for the roundings of the
    # bound itself and of ||c||^2.
    return 2.0 * 1.05 * per_dot


def fixed_scale(n_total: int, maxabs: float) -> float:
    """Largest power of two such that n_total values of magnitude <= maxabs sum below 2^62."""
    m = max(float(maxabs), 1e-30) * max(int(n_total), 1)
    return float(2.0 ** math.floor(61 - math.log2(m)))


@njit(cache=True, fastmath=True)
def _d2(x, c):
    s = 0.0
    for t in range(x.shape[0]):
        v = np.float64(x[t]) - np.float64(c[t])
        s += v * v
    return s


@njit(cache=True, fastmath={"nnan", "ninf", "nsz"})
def _bf16_scores(bits, cn32, wide, out):
    """Scores cn - 2 s of one row from its bf16 dot products, into `out`; returns their minimum.
    In fp32 so the loops vectorise: 2 s is exact, so the only rounding is the subtraction's
    (covered by the caller's slack). The minimum is taken over the scores' bits mapped to
    order-preserving int32, because LLVM vectorises integer min reductions and not float ones."""
    k = bits.shape[0]
    for j in range(k):
        wide[j] = np.uint32(np.uint16(bits[j])) << np.uint32(16)
    s = wide.view(np.float32)
    for j in range(k):
        out[j] = cn32[j] - np.float32(2.0) * s[j]
    oi = out.view(np.int32)
    lo = np.int32(0x7FFFFFFF)
    for j in range(k):
        x = oi[j]
        lo = min(lo, x ^ ((x >> np.int32(31)) & np.int32(0x7FFFFFFF)))
    wide[0] = np.uint32(lo ^ ((lo >> np.int32(31)) & np.int32(0x7FFFFFFF)))
    return wide.view(np.float32)[0]


@njit(cache=True, inline="always")
def _okey(x):
    """Order-preserving int32 key of a float32's bits (signed integer order = float order)."""
    return x ^ ((x >> np.int32(31)) & np.int32(0x7FFFFFFF))


@njit(cache=True)
def _second_min(sc, lo):
    """Second-smallest value of sc, whose smallest is lo (lo itself when it occurs twice). On
    the integer keys, as in _bf16_scores, so the loop vectorises."""
    oi = sc.view(np.int32)
    box = np.empty(1, np.float32)
    box[0] = lo
    lk = _okey(box.view(np.int32)[0])
    n_lo = np.int32(0)
    m = np.int32(0x7F800000)  # +inf's key: +inf when no score lies above
    for j in range(sc.shape[0]):
        x = _okey(oi[j])
        n_lo += np.int32(x == lk)
        m = min(m, x if x > lk else np.int32(0x7F800000))
    if n_lo > 1:
        return lo
    box.view(np.int32)[0] = _okey(m)  # the key map is its own inverse
    return box[0]


GAP_WINDOWS = 16.0
# Thresholds tried for a row's candidate set, in units of its screening window above its best
# score: 2^(q/2), q = 0..12 (the window itself up to 64 windows).
LADDER = 2.0 ** (np.arange(13) / 2.0)
BF16_UNIT = 2.0 ** -8


def set_ladder(d: int, coef: float) -> tuple[np.ndarray, float]:
    """The candidate-set ladder and gap (in windows of a product with error bound `coef`) that
    span the same distances as the bf16 path's, where they were tuned: the sets are about which
    centroids are near, not about the product's precision. An fp32 window is ~500 times
    narrower, and rungs in its own units would leave every set at the label alone. Rung 0 stays
    the window itself (the bisection starts from a rung that holds at most the set's size)."""
    w = max(1.0, screen_coef(d, BF16_UNIT, BF16_UNIT) / coef)
    if w == 1.0:
        return LADDER, 1.0 + GAP_WINDOWS
    return np.concatenate([[1.0], LADDER * w]), (1.0 + GAP_WINDOWS) * w


@njit(cache=True)
def _count_le(sc, t):
    c = 0
    for j in range(sc.shape[0]):
        c += sc[j] <= t
    return c


@njit(cache=True)
def _min_above(sc, t):
    """Smallest value of sc above t (+inf if none), on the integer keys so the loop vectorises."""
    oi = sc.view(np.int32)
    box = np.empty(1, np.float32)
    box[0] = t
    tk = _okey(box.view(np.int32)[0])
    m = np.int32(0x7F800000)
    for j in range(sc.shape[0]):
        x = _okey(oi[j])
        m = min(m, x if x > tk else np.int32(0x7F800000))
    box.view(np.int32)[0] = _okey(m)
    return box[0]


@njit(cache=True)
def _up32(v):
    """Smallest float32 >= v."""
    r = np.float32(v)
    if np.float64(r) < v:
        r = np.nextafter(r, np.float32(np.inf))
    return r


@njit(cache=True, inline="always")
def _select_row(sc, lo, gi, oi, xn, X, C, cmax, coef, ladder, gap, bj, bv, labels, d2, ncand, lb, cand):
    """One row's selection from its fp32 scores `sc` (lo: their minimum), from a product whose
    error bound is `coef`: see select_from_bf16. `gi`: the row in X, `oi`: in the outputs.
    `ladder` (rung 0 the window itself) and `gap` are in windows above the best score."""
    mc = cand.shape[1]
    nbuf = bv.shape[0]
    k = sc.shape[0]
    cmax2 = cmax * cmax
    span = 64
    R = ladder.shape[0]
    # The product's bound for the best and for a candidate, plus the fp32 roundings of
    # ||c||^2 and of each score (relative 2^-24 of |cn| + |2 s| each, counted 4 times).
    win = 2.0 * coef * xn * cmax + 4.0 * UNIT_FP32 * (cmax2 + 2.0 * xn * cmax)
    lim32 = _up32(np.float64(lo) + win)
    # tg: the threshold of the pass below. Rung a holds at most mc scores, rung b more
    # (unless a == b, the top); when rung b holds few, they are gathered and sorted.
    tg = lim32
    c1 = _count_le(sc, lim32)
    ok = mc > 1 and c1 <= mc
    exact = False
    # A set clear of the rest by `gap` is enough: well separated rows keep their window's few
    # centroids (each candidate costs an exact distance every iteration).
    if ok and _count_le(sc, _up32(np.float64(lo) + win * gap)) == c1:
        pass
    elif ok:
        a = 0
        b = R - 1
        cb = _count_le(sc, _up32(np.float64(lo) + win * ladder[b]))
        if cb <= mc:
            a = b
        while b - a > 1:
            h = (a + b) // 2
            ch = _count_le(sc, _up32(np.float64(lo) + win * ladder[h]))
            if ch <= mc:
                a = h
            else:
                b = h
                cb = ch
        exact = a < b and cb <= nbuf
        tg = _up32(np.float64(lo) + win * ladder[b if exact else a])
    best = -1
    bd = np.inf
    cnt = 0
    nb = 0
    # Few scores pass: a vectorised count per span, and a scan only of spans with one.
    for j0 in range(0, k, span):
        j1 = min(k, j0 + span)
        hit = 0
        for j in range(j0, j1):
            hit += sc[j] <= tg
        if hit == 0:
            continue
        for j in range(j0, j1):
            if sc[j] <= tg:
                if ok:
                    bj[nb] = j
                    bv[nb] = sc[j]
                    nb += 1
                if sc[j] <= lim32:
                    dd = _d2(X[gi], C[j])
                    cnt += 1
                    if dd < bd:
                        bd = dd
                        best = j
    labels[oi] = best
    d2[oi] = bd
    ncand[oi] = cnt
    if exact:
        # Insertion sort by score; gathered in index order, so ties stay by index.
        for p in range(1, nb):
            v = bv[p]
            jj = bj[p]
            q = p - 1
            while q >= 0 and bv[q] > v:
                bv[q + 1] = bv[q]
                bj[q + 1] = bj[q]
                q -= 1
            bv[q + 1] = v
            bj[q + 1] = jj
        # The longest prefix of at most mc that the next score strictly exceeds (the
        # window's scores alone are one, as rung 0 holds at most mc).
        nm = mc
        while bv[nm - 1] == bv[nm]:
            nm -= 1
        nxt = bv[nm]
        # Sets are kept in index order (bound_check walks them beside the tops).
        for p in range(1, nm):
            jj = bj[p]
            q = p - 1
            while q >= 0 and bj[q] > jj:
                bj[q + 1] = bj[q]
                q -= 1
            bj[q + 1] = jj
    elif ok:
        nm = nb
        nxt = _min_above(sc, tg)
    else:
        bj[0] = best
        nm = 1
        nxt = _second_min(sc, lo)
    for q in range(nm):
        cand[oi, q] = bj[q]
    for q in range(nm, mc):
        cand[oi, q] = -1
    # Every centroid outside the set screens at >= nxt; the whole window (twice the
    # one-sided error, plus the roundings) comes off it.
    lb[oi] = xn * xn + np.float64(nxt) - win


@njit(parallel=True, cache=True)
def select_from_bf16(Sbits, s0, X, C, cn, xnorm, cmax, coef, ladder, gap, labels, d2, ncand, lb, cand):
    """Rows s0.. of X given their bf16 dot products (raw bits, (m, k) int16) from a product
    whose error bound is `coef`: the row's best screened score, then the exact distance of
    every centroid within the window of it. `ncand` counts the exact checks.

    Candidate sets for the bounds: `cand` (rows s0.., -1 padded) gets the (at most
    cand.shape[1]) centroids with the smallest screened scores, cut where the scores strictly
    rise so that the set is exactly those at or below a threshold; `lb` a lower bound on the
    row's squared distance to every centroid outside the set (from the smallest score above
    it). The cut is found without a sort: `ladder` (thresholds in windows above the best
    score) is bisected with vectorised counts, and the few scores under the first rung that
    holds too many are sorted. When even the window holds too many, the set is the label alone
    and the bound comes from the second-smallest score (Hamerly's single bound, which is also
    what a one-column `cand` always gets)."""
    m, k = Sbits.shape
    nbuf = 4 * cand.shape[1]
    cn32 = cn.astype(np.float32)
    rows = 32
    for c in prange((m + rows - 1) // rows):
        wide = np.empty(k, np.uint32)
        sc = np.empty(k, np.float32)
        bj = np.empty(nbuf, np.int32)
        bv = np.empty(nbuf, np.float32)
        for i in range(c * rows, min(m, (c + 1) * rows)):
            lo = _bf16_scores(Sbits[i], cn32, wide, sc)
            _select_row(sc, lo, s0 + i, s0 + i, xnorm[s0 + i], X, C, cmax, coef, ladder, gap, bj, bv, labels,
                        d2, ncand, lb, cand)


@njit(cache=True, fastmath={"nnan", "ninf", "nsz"})
def _f32_scores(t, cn32, out):
    """Scores cn - 2 s of one row from its fp32 dot products `t`, into `out`; their minimum
    (as _bf16_scores: 2 s is exact, the subtraction's rounding is in the caller's slack)."""
    k = t.shape[0]
    for j in range(k):
        out[j] = cn32[j] - np.float32(2.0) * t[j]
    oi = out.view(np.int32)
    lo = np.int32(0x7FFFFFFF)
    for j in range(k):
        lo = min(lo, _okey(oi[j]))
    box = np.empty(1, np.int32)
    box[0] = _okey(lo)
    return box.view(np.float32)[0]


@njit(parallel=True, cache=True)
def screen_fp32(Xs, X, CsT, C, cn, xnorm, cmax, coef, ladder, gap, rows, block, labels, d2, ncand, lb, cand):
    """select_from_bf16 with an fp32 screening product, computed here block by block: rows
    `rows` of X (screened in the centred copy Xs; outputs indexed as `rows`). `CsT`: the
    centred centroids transposed, (d, k) C-contiguous.

    One thread pool does everything: each thread multiplies its own row block by all centroids
    with a single-threaded BLAS call (the caller holds BLAS at one thread) and selects from
    the tile while it is in cache. Alternating a multi-threaded BLAS with numba's parallel scan
    left each pool's idle threads spinning against the other's on a 2-core machine; a tile of
    all k columns per block (not a chunk of centroids) lets the selection see every score of
    a row at once, so no running candidate lists are kept."""
    m = rows.shape[0]
    k = C.shape[0]
    d = X.shape[1]
    nbuf = 4 * cand.shape[1]
    cn32 = cn.astype(np.float32)
    nblk = (m + block - 1) // block
    for b in prange(nblk):
        s = b * block
        e = min(m, s + block)
        Xb = np.empty((e - s, d), np.float32)
        for q in range(e - s):
            Xb[q, :] = Xs[rows[s + q]]
        T = np.dot(Xb, CsT)
        sc = np.empty(k, np.float32)
        bj = np.empty(nbuf, np.int32)
        bv = np.empty(nbuf, np.float32)
        for q in range(e - s):
            gi = rows[s + q]
            lo = _f32_scores(T[q], cn32, sc)
            _select_row(sc, lo, gi, s + q, xnorm[gi], X, C, cmax, coef, ladder, gap, bj, bv, labels, d2,
                        ncand, lb, cand)


@njit(parallel=True, cache=True)
def _assign_direct(X, C, labels, d2, lb):
    # Few dimensions: a product would cost more in tile traffic than the distances themselves.
    for i in prange(X.shape[0]):
        best = -1
        bd = np.inf
        sd = np.inf
        for j in range(C.shape[0]):
            dd = _d2(X[i], C[j])
            if dd < bd:
                sd = bd
                bd = dd
                best = j
            elif dd < sd:
                sd = dd
        labels[i] = best
        d2[i] = bd
        lb[i] = sd


def norms(X: np.ndarray) -> np.ndarray:
    """Euclidean norms in float64 (the screening windows scale with them)."""
    return np.sqrt(np.einsum("ij,ij->i", X, X, dtype=np.float64))


class _OneBLASThread:
    """Holds the BLAS that numba's np.dot calls (scipy's) at one thread while screen_fp32 runs
    its own threads over row blocks; restores the old count after. Looked up once, through
    threadpoolctl; when scipy's library cannot be told apart, every BLAS is held."""

    libs = None

    def __enter__(self):
        if _OneBLASThread.libs is None:
            import scipy
            import scipy.linalg.cython_blas  # noqa: F401  (loads the library numba calls)
            from threadpoolctl import ThreadpoolController

            blas = [c for c in ThreadpoolController().lib_controllers if c.user_api == "blas"]
            root = os.path.dirname(os.path.dirname(scipy.__file__))
            own = [c for c in blas if c.filepath.startswith(os.path.join(root, "scipy"))]
            _OneBLASThread.libs = own or blas
        self.old = [(c, c.num_threads) for c in _OneBLASThread.libs]
        for c, n in self.old:
            if n != 1:
                c.set_num_threads(1)
        return self

    def __exit__(self, *exc):
        for c, n in self.old:
            if n != 1:
                c.set_num_threads(n)


def screen_block(k: int, m: int) -> int:
    """Rows per block of screen_fp32: a score tile of about 1 MB (in L2 while it is selected
    from), at least 64 rows for the product's sake, and enough blocks to keep every thread
    busy."""
    b = max(64, min(512, (1 << 18) // max(1, k)))
    per_thread = -(-m // (2 * max(1, numba.get_num_threads())))
    return max(16, min(b, per_thread))


def screen(X: np.ndarray, C: np.ndarray, xnorm: np.ndarray | None = None, shift: np.ndarray | None = None,
           xs: np.ndarray | None = None, rows: np.ndarray | None = None, width: int = 1):
    """Exact assignment of X's rows (or of `rows`) through an fp32 screening product, with each
    row's candidate set (`width` wide, -1 padded; see select_from_bf16) and a lower bound on its
    squared distance to every centroid outside it: (labels int32, d2 float64, lb float64,
    cand int32, exact checks per row int32), indexed as `rows`. `shift`: screen in coordinates
    X - shift (`xs` = X - shift and `xnorm` its norms when the caller has them)."""
    X = np.ascontiguousarray(X, dtype=np.float32)
    C = np.ascontiguousarray(C, dtype=np.float32)
    n, d = X.shape
    if shift is not None:
        # Screening in coordinates centred on the data: distances are unchanged, norms (and
        # so the screening windows) shrink. Exact decisions still use X and C.
        Xs = (X - shift).astype(np.float32) if xs is None else xs
        Cs = (C - shift).astype(np.float32)
        xnorm = norms(Xs) if xnorm is None else xnorm
    else:
        Xs, Cs = X, C
        xnorm = norms(X) if xnorm is None else xnorm
    rows = np.arange(n, dtype=np.int64) if rows is None else np.ascontiguousarray(rows, dtype=np.int64)
    m = len(rows)
    labels = np.empty(m, np.int32)
    d2 = np.empty(m, np.float64)
    lb = np.empty(m, np.float64)
    ncand = np.ones(m, np.int32)
    cand = np.full((m, max(1, width)), -1, np.int32)
    if m == 0:
        return labels, d2, lb, cand, ncand
    if d <= DIRECT_MAX_D:
        _assign_direct(X[rows], C, labels, d2, lb)
        ncand[:] = len(C)
        cand[:, 0] = labels
        return labels, d2, lb, cand, ncand
    cn64 = np.einsum("ij,ij->i", Cs, Cs, dtype=np.float64)
    cmax = float(np.sqrt(cn64.max()))
    CsT = np.ascontiguousarray(Cs.T)
    coef = screen_coef(d, UNIT_FP32)
    ladder, gap = set_ladder(d, coef)
    with _OneBLASThread():
        screen_fp32(Xs, X, CsT, C, cn64, xnorm, cmax, coef, ladder, gap, rows, screen_block(len(C), m),
                    labels, d2, ncand, lb, cand)
    return labels, d2, lb, cand, ncand


def assign(X: np.ndarray, C: np.ndarray, xnorm: np.ndarray | None = None,
           shift: np.ndarray | None = None, xs: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centroid (int32, lowest index on ties) and squared distance (float32) per row."""
    labels, d2, _ = assign_lb(X, C, xnorm, shift, xs)
    return labels, d2.astype(np.float32)


def assign_lb(X: np.ndarray, C: np.ndarray, xnorm: np.ndarray | None = None,
              shift: np.ndarray | None = None, xs: np.ndarray | None = None
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`assign`, with float64 squared distances, plus a lower bound on each row's squared
    distance to every centroid but its own (+inf with a single centroid)."""
    labels, d2, lb, _, _ = screen(X, C, xnorm, shift, xs)
    return labels, d2, lb


# ------------------------------------------------------------------------------ bounds
# A kept row's exact distance must sit this far (relative) below its bound: room for the
# float64 roundings of the distances, moves and square roots on either side.
BOUND_MARGIN = 1e-7


@njit(parallel=True, cache=True)
def bound_check(X, C, cand, labels, lb, tops, rest, tmax, u2, state):
    """One Lloyd step of bounds. `cand`: each row's candidate set (ascending, -1 padded); `lb`
    (distances, updated in place): a lower bound on the row's distance to every centroid
    outside its set, valid before the centroids moved. `labels` and `u2` get the row's
    nearest candidate (exact float64 distances, lowest index on ties) and its squared distance.

    Centroids moved at most `rest`, but for the `tops` (exact distances taken) and, where
    `tmax` > `rest`, for a few more that moved up to `tmax` and were left out of `tops`. `state`:
    1 when the candidate is provably the nearest of all centroids (then it is the label a full
    assignment gives), 0 when it is not even against the bulk, 2 when only the left-out movers
    stand in the way; `lb` then holds the bound without them, for the caller to combine with
    a bound on those (see CPUBackend.assign)."""
    mc = cand.shape[1]
    for i in prange(X.shape[0]):
        l0 = lb[i]
        l = l0 - rest
        for q in range(tops.shape[0]):
            j = tops[q]
            inside = False
            for p in range(mc):
                inside |= cand[i, p] == j
            if not inside:
                l = min(l, np.sqrt(_d2(X[i], C[j])))
        best = -1
        bd = np.inf
        for p in range(mc):
            j = cand[i, p]
            if j < 0:
                break
            dd = _d2(X[i], C[j])
            if dd < bd or (dd == bd and j < best):
                bd = dd
                best = j
        labels[i] = best
        u2[i] = bd
        lim = l * (1.0 - BOUND_MARGIN)
        if not (lim > 0.0 and bd < lim * lim):
            st = 0
        else:
            l2 = min(l, l0 - tmax)
            lim = l2 * (1.0 - BOUND_MARGIN)
            if lim > 0.0 and bd < lim * lim:
                st = 1
                l = l2
            else:
                st = 2
        lb[i] = l
        state[i] = st


@njit(cache=True, inline="always")
def _bits_f32(b):
    box = np.empty(1, np.uint32)
    box[0] = b
    return box.view(np.float32)[0]



def _prod_f32(x):
    """A screening product's value as float32: bf16 bits (int16) widened, or fp32 as is."""
    raise NotImplementedError  # numba only (overloaded below)


@overload(_prod_f32)
def _prod_f32_ov(x):
    if isinstance(x, types.Integer):
        return lambda x: _bits_f32(np.uint32(np.uint16(x)) << np.uint32(16))
    return lambda x: np.float32(x)


@njit(parallel=True, cache=True)
def top_bounds(S, s0, tops, cn, xnorm, cmax, coef, cand, out):
    """Rows s0.. given their products with the moved tops only ((m, t): bf16 bits as int16, as
    select_from_bf16's, or fp32, as screen_fp32's, with that product's error bound `coef` and
    largest centroid norm `cmax`): a lower bound on each row's distance to every top outside
    its candidate set (both in index order), into `out`; +inf when every top is a candidate."""
    m, t = S.shape
    mc = cand.shape[1]
    cmax2 = cmax * cmax
    for i in prange(m):
        xn = xnorm[s0 + i]
        win = 2.0 * coef * xn * cmax + 4.0 * UNIT_FP32 * (cmax2 + 2.0 * xn * cmax)
        lo = np.inf
        p = 0
        for q in range(t):
            j = tops[q]
            while p < mc and cand[s0 + i, p] >= 0 and cand[s0 + i, p] < j:
                p += 1
            if p < mc and cand[s0 + i, p] == j:
                continue
            # fp32 as in _bf16_scores: 2 s is exact, the subtraction's rounding is in `win`.
            v = np.float64(np.float32(cn[q]) - np.float32(2.0) * _prod_f32(S[i, q]))
            lo = min(lo, v)
        out[s0 + i] = np.sqrt(max(xn * xn + lo - win, 0.0)) if lo < np.inf else np.inf


# At most this many of the largest movers are measured exactly in bound_check.
MAX_TOPS = 8
# On the bf16 path, this many of the largest movers are screened again instead (a product of
# every row with them costs ~SCREEN_TOPS / k of a full screen), so the bound of the others
# drops by the bulk's move, not the outliers'.
SCREEN_TOPS = 128


def moves(C_old: np.ndarray, C_new: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Each centroid's move (float64 Euclidean), the centroids that moved far more than the rest
    (at most MAX_TOPS; a few outliers would otherwise loosen every row's bound), and the largest
    move among the rest."""
    mv = np.sqrt(((C_new.astype(np.float64) - C_old.astype(np.float64)) ** 2).sum(1))
    order = np.argsort(-mv, kind="stable")
    if len(mv) <= MAX_TOPS:
        return mv, order.astype(np.int64), 0.0
    ref = mv[order[MAX_TOPS]]
    b = int((mv[order[:MAX_TOPS]] > 2.0 * ref).sum())
    return mv, order[:b].astype(np.int64), float(mv[order[b]])


def largest_moves(mv: np.ndarray, t: int) -> tuple[np.ndarray, float, float]:
    """The t centroids that moved most (in index order), the largest move of the others, and
    the largest of all."""
    order = np.argsort(-mv, kind="stable")
    t = min(t, len(mv))
    return (np.sort(order[:t]).astype(np.int64), float(mv[order[t]]) if t < len(mv) else 0.0,
            float(mv.max()) if len(mv) else 0.0)


# ------------------------------------------------------------------------------ update
@njit(parallel=True, cache=True)
def _update_partials(X, labels, k, scale, P):
    n, d = X.shape
    part = np.zeros((P, k, d), np.int64)
    pc = np.zeros((P, k), np.int64)
    chunk = (n + P - 1) // P
    for p in prange(P):
        for i in range(p * chunk, min(n, (p + 1) * chunk)):
            j = labels[i]
            if j < 0:
                continue
            pc[p, j] += 1
            for t in range(d):
                part[p, j, t] += np.int64(np.rint(np.float64(X[i, t]) * scale))
    sums = np.zeros((k, d), np.int64)
    counts = np.zeros(k, np.int64)
    for j in prange(k):
        for p in range(P):
            counts[j] += pc[p, j]
            for t in range(d):
                sums[j, t] += part[p, j, t]
    return sums, counts


@njit(parallel=True, cache=True)
def _update_sorted(X, labels, k, scale):
    """Same sums without per-thread buffers: points grouped by cluster, one cluster per task.
    For large k*d where P copies of the sums would not fit."""
    n, d = X.shape
    counts = np.zeros(k, np.int64)
    for i in range(n):
        if labels[i] >= 0:
            counts[labels[i]] += 1
    off = np.zeros(k + 1, np.int64)
    for j in range(k):
        off[j + 1] = off[j] + counts[j]
    pos = off[:-1].copy()
    order = np.empty(off[k], np.int64)
    for i in range(n):
        j = labels[i]
        if j >= 0:
            order[pos[j]] = i
            pos[j] += 1
    sums = np.zeros((k, d), np.int64)
    for j in prange(k):
        for q in range(off[j], off[j + 1]):
            i = order[q]
            for t in range(d):
                sums[j, t] += np.int64(np.rint(np.float64(X[i, t]) * scale))
    return sums, counts


def update(X: np.ndarray, labels: np.ndarray, k: int, scale: float,
           max_partial_bytes: int = 256 << 20) -> tuple[np.ndarray, np.ndarray]:
    """Per-cluster fixed-point sums (int64, value * scale) and counts. Labels < 0 are skipped."""
    X = np.ascontiguousarray(X, dtype=np.float32)
    labels = np.ascontiguousarray(labels, dtype=np.int64)
    P = numba.get_num_threads()
    if P > 1 and P * k * X.shape[1] * 8 <= max_partial_bytes:
        return _update_partials(X, labels, k, float(scale), P)
    return _update_sorted(X, labels, k, float(scale))


def centroids_from(sums: np.ndarray, counts: np.ndarray, scale: float, old: np.ndarray) -> np.ndarray:
    """Means from fixed-point sums; an empty cluster keeps `old` (callers may re-seed it)."""
    out = np.asarray(old, dtype=np.float32).copy()
    nz = counts > 0
    out[nz] = (sums[nz].astype(np.float64) / scale / counts[nz, None]).astype(np.float32)
    return out


# ------------------------------------------------------------------------------ k-means++
def _kpp_loop(X, first, draws, L, chunk):
    """The greedy k-means++ loop with its random numbers drawn beforehand. Candidate potentials
    are summed per fixed chunk of points, then over chunks in order, so the choice does not
    depend on the number of threads.

    A point whose nearest centre so far is j cannot get closer to a candidate at distance
    >= 2 * (its distance to j) from j (triangle inequality), so its distance to that candidate
    is not computed: the centre-to-candidate distances (chosen x L per step) replace most of the
    point-to-candidate ones. A margin keeps the skipped values exactly the ones the full
    computation would give (it would have kept the old minimum too)."""
    n = X.shape[0]
    k = draws.shape[0] // L + 1
    chosen = np.empty(k, np.int64)
    chosen[0] = first
    closest = np.empty(n)
    near = np.zeros(n, np.int64)  # which chosen centre gives `closest`
    for i in prange(n):
        closest[i] = _d2(X[i], X[first])
    nch = (n + chunk - 1) // chunk
    newd = np.empty((n, L))
    part = np.empty((nch, L))
    cand = np.empty(L, np.int64)
    cc = np.empty((k, L))
    for c in range(1, k):
        cum = np.cumsum(closest)
        for l in range(L):
            cand[l] = min(np.searchsorted(cum, draws[(c - 1) * L + l] * cum[n - 1]), n - 1)
        for j in prange(c):
            for l in range(L):
                cc[j, l] = np.sqrt(_d2(X[chosen[j]], X[cand[l]]))
        for q in prange(nch):
            for l in range(L):
                part[q, l] = 0.0
            for i in range(q * chunk, min(n, (q + 1) * chunk)):
                ci = closest[i]
                reach = 2.0 * np.sqrt(ci) * (1.0 + 1e-9)
                j = near[i]
                for l in range(L):
                    v = ci
                    if cc[j, l] < reach:
                        v = _d2(X[i], X[cand[l]])
                        if ci < v:
                            v = ci
                    newd[i, l] = v
                    part[q, l] += v
        best = 0
        bp = np.inf
        for l in range(L):
            p = 0.0
            for q in range(nch):
                p += part[q, l]
            if p < bp:
                bp = p
                best = l
        chosen[c] = cand[best]
        for i in range(n):
            if newd[i, best] < closest[i]:
                closest[i] = newd[i, best]
                near[i] = c
    return chosen


# One source, two builds: the parallel one only pays for its per-centre thread wake-ups on
# problems big enough to need it.
_kpp_serial = njit(cache=True)(_kpp_loop)
_kpp_parallel = njit(parallel=True, cache=True)(_kpp_loop)


def kmeanspp(X: np.ndarray, k: int, seed: int, n_local_trials: int | None = None) -> np.ndarray:
    """Greedy k-means++ (kmeanspp_ref's algorithm and random stream): chosen row indices."""
    X = np.ascontiguousarray(X, dtype=np.float32)
    n = len(X)
    if not 1 <= k <= n:
        raise ValueError(f"k-means++: need 1 <= k <= n points, got k={k}, n={n}")
    L = n_local_trials or (2 + int(np.log(k)))
    rng = np.random.default_rng(seed)
    first = int(rng.integers(n))
    draws = rng.random((k - 1) * L)  # the same stream as L draws per centre
    f = _kpp_parallel if n * L * X.shape[1] >= 1 << 20 else _kpp_serial
    return f(X, first, draws, L, 4096)


# ------------------------------------------------------------------------------ selections
@njit(parallel=True, cache=True)
def topr(key, labels, k, r):
    """(k, r) indices of each cluster's r smallest keys (index breaks ties), -1 padded."""
    n = key.shape[0]
    counts = np.zeros(k, np.int64)
    for i in range(n):
        if labels[i] >= 0:
            counts[labels[i]] += 1
    off = np.zeros(k + 1, np.int64)
    for j in range(k):
        off[j + 1] = off[j] + counts[j]
    pos = off[:-1].copy()
    order = np.empty(off[k], np.int64)
    for i in range(n):
        j = labels[i]
        if j >= 0:
            order[pos[j]] = i
            pos[j] += 1
    out = np.full((k, r), -1, np.int64)
    for j in prange(k):
        mem = order[off[j]:off[j + 1]]  # ascending index, so a stable sort breaks ties by index
        o = np.argsort(key[mem], kind="mergesort")
        for q in range(min(r, mem.shape[0])):
            out[j, q] = mem[o[q]]
    return out


def farthest(d2: np.ndarray, m: int) -> np.ndarray:
    """Indices of the m largest distances, lower index first on ties."""
    d2 = np.asarray(d2, dtype=np.float64)
    m = min(m, len(d2))
    if m == 0:
        return np.empty(0, np.int64)
    if m < len(d2):
        thr = np.partition(d2, len(d2) - m)[len(d2) - m]
        pool = np.flatnonzero(d2 >= thr)
    else:
        pool = np.arange(len(d2))
    order = np.lexsort((pool, -d2[pool]))
    return pool[order[:m]]
