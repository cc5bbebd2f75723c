"""Run-time choice of the k-means kernels: CUDA when a GPU is present, numba CPU otherwise, and
on CPUs with bf16 matrix units (AVX512-BF16 / AMX) a bf16 screening product. The pick is logged.

Every backend returns the same labels: the fast product only screens centroids, and the
nearest one is decided among the survivors in exact arithmetic (see kmeans_cpu's docstring).
"""

from __future__ import annotations

import logging
import os
from functools import lru_cache

import numpy as np

from thresher.kernels import kmeans_cpu as cpu

log = logging.getLogger("thresher.kernels")

BF16_UNIT = 2.0 ** -8


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_bf16() -> str | None:
    """The CPU feature that makes torch's bf16 matmul fast here (amx_bf16, avx512_bf16), or None.
    The one probe for every stage and kernel that picks a precision."""
    for f in ("amx_bf16", "avx512_bf16"):
        if f in cpu_flags():
            return f
    try:
        import torch

        cap = torch.backends.cpu.get_cpu_capability()
        if "AMX" in cap or "BF16" in cap:
            return cap.lower()
    except Exception:  # no torch, or an old one without the query: stay on fp32
        pass
    return None


def has_bf16_matmul() -> bool:
    """bf16 products are only worth it with hardware bf16 dot products and a torch to use them."""
    if not ({"avx512_bf16", "amx_bf16"} & cpu_flags()):
        return False
    import importlib.util

    # find_spec, not import: importing torch costs seconds in every Spark Python worker.
    return importlib.util.find_spec("torch") is not None


def cuda_available() -> bool:
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        return False  # the simulator is for tests, never a production pick
    try:
        from numba import cuda

        return bool(cuda.is_available())
    except Exception:
        return False


class Points:
    """A point set prepared once for repeated assignments (norms, a bf16 or device copy)."""

    def __init__(self, X: np.ndarray):
        self.X = np.ascontiguousarray(X, dtype=np.float32)
        # Screening runs on centred coordinates (see kmeans_cpu.assign's `shift`).
        self.shift = self.X.mean(0, dtype=np.float64).astype(np.float32) if len(self.X) else None
        self.Xs = (self.X - self.shift) if len(self.X) else self.X
        self.norms = cpu.norms(self.Xs)
        self.cache: dict = {}

    def __len__(self) -> int:
        return len(self.X)


class CPUBackend:
    """numba kernels; the screening product in fp32 (BLAS) or bf16 (torch, oneDNN).

    Repeated assignments of the same points (Lloyd iterations) screen only the rows whose
    label the bounds of the previous assignment cannot vouch for (kmeans_cpu.bound_check);
    `prune=False` screens every row every time. Labels and distances are the same either way.
    """

    # Above this share of rows left to screen, screening them all beats gathering them.
    GATHER_MAX = 0.6
    # Candidates kept per row for the bounds (bf16 screening at k >= 4 x screen_tops; otherwise
    # the label alone). Measured on 200,000 x 384, k=1000 (README, clustering).
    CANDIDATES = 16

    def __init__(self, matmul: str = "fp32", prune: bool | None = None, candidates: int | None = None,
                 screen_tops: int | None = None):
        self.matmul = matmul
        # THRESHER_KMEANS_PRUNE=0 turns the bounds off everywhere (executors too, through
        # spark.executorEnv): for measuring what they save, or ruling them out.
        self.prune = os.environ.get("THRESHER_KMEANS_PRUNE", "1") != "0" if prune is None else prune
        self.candidates = max(1, int(candidates or self.CANDIDATES))
        # Largest movers screened again on the bf16 path (0: measure the few outliers exactly).
        self.screen_tops = cpu.SCREEN_TOPS if screen_tops is None else int(screen_tops)
        self.name = "numba-cpu" + ("+bf16" if matmul == "bf16" else "")

    def _bf16(self, P: Points, C: np.ndarray, m: int) -> bool:
        # bf16 pays off only for real products; tiny d or k would overflow its wider windows.
        return self.matmul == "bf16" and m >= 256 and P.X.shape[1] >= 32 and len(C) >= 32

    def _sets(self, C: np.ndarray) -> bool:
        """Candidate sets and the movers' screen go together, on the bf16 path at k >= 4 x
        screen_tops: below that a candidate's exact distance costs about what screening ten
        centroids does, and the sets were measured slower than the single bound (README)."""
        return self.matmul == "bf16" and bool(self.screen_tops) and len(C) >= 4 * self.screen_tops

    def _screen(self, P: Points, C: np.ndarray, rows: np.ndarray | None = None):
        """(labels, float64 d2, lower bound on the distance to any centroid outside the row's
        candidate set, candidate sets (int32, -1 padded)) of all rows, or of `rows` only."""
        m = len(P) if rows is None else len(rows)
        width = self.candidates if self._sets(C) else 1
        if self._bf16(P, C, m):
            lab, d2, lb2, cand = assign_bf16(P, C, rows=rows, with_bounds=True, candidates=width)
        else:
            if rows is None:
                lab, d2, lb2 = cpu.assign_lb(P.X, C, P.norms, shift=P.shift, xs=P.Xs)
            else:
                lab, d2, lb2 = cpu.assign_lb(P.X[rows], C, P.norms[rows], shift=P.shift, xs=P.Xs[rows])
            cand = np.full((m, width), -1, np.int32)
            cand[:, 0] = lab
        return lab, d2, np.sqrt(np.maximum(lb2, 0.0)), cand

    def assign(self, P: Points, C: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        C = np.ascontiguousarray(C, dtype=np.float32)
        n = len(P)
        st = P.cache.get("bounds") if self.prune else None
        if (st is None or st["C"].shape != C.shape or n == 0
                or st.get("cand") is None or st["cand"].shape != (n, self.candidates if self._sets(C) else 1)):
            lab, d2, lb, cand = self._screen(P, C)
            screened = n
        else:
            lab, lb, cand = st["labels"], st["lb"], st["cand"]
            mv, tops, rest = cpu.moves(st["C"], C)
            tmax = rest
            screen_tops = self._sets(C) and self._bf16(P, C, n)
            if screen_tops:
                # The largest movers are left out of the bulk's bound; the rows that only they
                # stand in the way of screen them again (a product with few columns).
                tops, rest, tmax = cpu.largest_moves(mv, self.screen_tops)
            d2 = np.empty(n, np.float64)
            state = np.empty(n, np.int8)
            cpu.bound_check(P.X, C, cand, lab, lb, tops[:0] if screen_tops else tops, rest, tmax, d2, state)
            if screen_tops:
                r2 = np.flatnonzero(state == 2)
                if len(r2):
                    l = np.minimum(lb[r2], screen_tops_bf16(P, C, tops, cand, rows=r2))
                    lim = l * (1.0 - cpu.BOUND_MARGIN)
                    lb[r2] = l
                    state[r2] = (lim > 0) & (d2[r2] < lim * lim)
            keep = state == 1
            rows = np.flatnonzero(~keep)
            screened = len(rows)
            if screened > self.GATHER_MAX * n:
                lab, d2, lb, cand = self._screen(P, C)
            elif screened:
                lab[rows], d2[rows], lb[rows], cand[rows] = self._screen(P, C, rows)
        if self.prune:
            P.cache["bounds"] = {"C": C.copy(), "labels": lab, "lb": lb, "cand": cand}
        P.cache["screened_share"] = screened / n if n else 0.0
        # A copy: the bounds' labels must not change under the caller.
        return lab.copy(), d2.astype(np.float32)

    def update(self, P: Points, labels, k, scale):
        """Fixed-point sums and counts of P's rows by label (the same bits on every backend)."""
        return cpu.update(P.X, labels, k, scale)


class CUDABackend(CPUBackend):
    """numba-cuda assignment and update; k-means++ and selections stay on the CPU (they run on
    samples and centroids, not on the whole level)."""

    name = "cuda"

    def __init__(self):
        super().__init__("fp32")
        self.name = "cuda"

    def assign(self, P: Points, C):
        from thresher.kernels import kmeans_cuda

        return kmeans_cuda.assign(P, C)

    def update(self, P: Points, labels, k, scale):
        from thresher.kernels import kmeans_cuda

        return kmeans_cuda.update(P, labels, k, scale)


_PICKED: dict[tuple[str, str], CPUBackend] = {}


def pick_backend(prefer: str = "auto", dtype: str = "auto") -> CPUBackend:
    """`prefer`: auto | cpu | cuda; `dtype` of the screening product: auto | float32 | bf16."""
    key = (prefer, dtype)
    if key in _PICKED:
        return _PICKED[key]
    if prefer not in ("auto", "cpu", "cuda"):
        raise ValueError(f"backend: expected auto, cpu or cuda, got {prefer!r}")
    if dtype not in ("auto", "float32", "bf16"):
        raise ValueError(f"dtype: expected auto, float32 or bf16, got {dtype!r}")
    if prefer == "cuda" or (prefer == "auto" and cuda_available()):
        if not cuda_available():
            raise RuntimeError("backend: cuda requested but no GPU is available")
        b: CPUBackend = CUDABackend()
        why = "a GPU is present"
    else:
        bf16 = dtype == "bf16" or (dtype == "auto" and has_bf16_matmul())
        b = CPUBackend("bf16" if bf16 else "fp32")
        why = ("the CPU has " + "/".join(sorted({"avx512_bf16", "amx_bf16"} & cpu_flags()))) if bf16 else "no bf16 matrix units" if dtype == "auto" else f"dtype={dtype}"
    log.info("k-means backend: %s (%s)", b.name, why)
    _PICKED[key] = b
    return b


def _bf16_coef(d: int) -> float:
    return cpu.screen_coef(d, BF16_UNIT, BF16_UNIT)


def _bf16_rows(P: Points, rows: np.ndarray | None = None):
    """P's centred rows in bf16 (a torch tensor, made once per point set), or `rows` of them."""
    import torch

    Xb = P.cache.get("bf16")
    if Xb is None:
        Xb = torch.from_numpy(P.Xs).to(torch.bfloat16)
        P.cache["bf16"] = Xb
    if rows is None:
        return Xb
    return Xb.index_select(0, torch.from_numpy(np.asarray(rows, dtype=np.int64)))


def assign_bf16(P: Points, C: np.ndarray, block: int = 4096, max_tile_bytes: int = 8 << 20,
                rows: np.ndarray | None = None, with_bounds: bool = False, candidates: int = 1):
    """Screen with a bf16 product (bf16 inputs and output, fp32 accumulation), then decide the
    rows whose best and runners-up are within the bf16 error bound in exact arithmetic.
    (labels, float32 d2) of every row, or of `rows`; with_bounds: (labels, float64 d2, lower
    bound on the squared distance to every centroid outside the row's candidate set, the sets:
    (rows, `candidates`) int32, -1 padded; see kmeans_cpu.select_from_bf16)."""
    import torch

    C = np.ascontiguousarray(C, dtype=np.float32)
    Xb = _bf16_rows(P, rows)
    if rows is None:
        X, xnorm = P.X, P.norms
    else:
        X, xnorm = P.X[rows], P.norms[rows]
    n, d = X.shape
    Cs = C - P.shift
    Cb = torch.from_numpy(Cs).to(torch.bfloat16).T.contiguous()
    cn64 = np.einsum("ij,ij->i", Cs, Cs, dtype=np.float64)
    cmax = float(np.sqrt(cn64.max())) if len(C) else 0.0
    coef = _bf16_coef(d)
    labels = np.empty(n, np.int32)
    d2 = np.empty(n, np.float64)
    ncand = np.empty(n, np.int32)
    lb = np.empty(n, np.float64)
    cand = np.empty((n, max(1, candidates)), np.int32)
    # Keep a block's score tile near max_tile_bytes whatever k is.
    block = max(64, min(block, (max_tile_bytes // 2) // max(1, len(C))))
    # One tile for all blocks: a fresh one each time costs page faults on every block.
    tile = torch.empty((min(block, n), len(C)), dtype=torch.bfloat16)
    for s in range(0, n, block):
        e = min(n, s + block)
        out = tile[: e - s]
        torch.mm(Xb[s:e], Cb, out=out)
        cpu.select_from_bf16(out.view(torch.int16).numpy(), s, X, C, cn64, xnorm, cmax, coef, cpu.LADDER, labels,
                             d2, ncand, lb, cand)
    P.cache["bf16_exact_checks"] = float(ncand.mean()) if n else 0.0
    if with_bounds:
        return labels, d2, lb, cand
    return labels, d2.astype(np.float32)


def screen_tops_bf16(P: Points, C: np.ndarray, tops: np.ndarray, cand: np.ndarray,
                     block: int = 8192, rows: np.ndarray | None = None) -> np.ndarray:
    """A lower bound on each row's (or each of `rows`') distance to every centroid of `tops`
    (ascending) outside its candidate set (`cand`, all rows, ascending), from a bf16 product of
    the rows with those centroids only (kmeans_cpu.top_bounds_bf16)."""
    import torch

    Xb = _bf16_rows(P, rows)
    norms = P.norms
    if rows is not None:
        norms, cand = norms[rows], cand[rows]
    Cs = np.ascontiguousarray(C[tops], dtype=np.float32) - P.shift
    Cb = torch.from_numpy(Cs).to(torch.bfloat16).T.contiguous()
    cn64 = np.einsum("ij,ij->i", Cs, Cs, dtype=np.float64)
    cmax = float(np.sqrt(cn64.max())) if len(tops) else 0.0
    n = len(norms)
    out = np.empty(n, np.float64)
    tile = torch.empty((min(block, n), len(tops)), dtype=torch.bfloat16)
    for s in range(0, n, block):
        e = min(n, s + block)
        t = tile[: e - s]
        torch.mm(Xb[s:e], Cb, out=t)
        cpu.top_bounds_bf16(t.view(torch.int16).numpy(), s, tops, cn64, norms, cmax, _bf16_coef(P.X.shape[1]), cand, out)
    return out
