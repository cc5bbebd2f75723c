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

BF16_UNIT = cpu.BF16_UNIT


# THRESHER_CPU_ISA=avx2 hides the CPU's AVX-512 and AMX flags from every pick (with the ISA
# pins of numba, OpenBLAS, torch and faiss that `python -m benchmarks --isa avx2` sets), so the
# AVX2 code path can be measured on a newer CPU.
_ABOVE_AVX2 = ("avx512", "amx")


# The flags of hardware bf16 dot products (torch/oneDNN use them for bf16 matmul), best first.
BF16_FLAGS = ("amx_bf16", "avx512_bf16")


@lru_cache(maxsize=1)
def cpu_info() -> tuple[str, frozenset[str]]:
    """(model name, flags) as /proc/cpuinfo reports them, with no ISA pin applied: the one reader
    of that file (benchmarks record it as is; the picks go through cpu_flags)."""
    model, flags = "unknown", frozenset()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and model == "unknown":
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = frozenset(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    return model, flags


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    flags = cpu_info()[1]
    if os.environ.get("THRESHER_CPU_ISA", "").lower() == "avx2":
        flags = frozenset(f for f in flags if not f.startswith(_ABOVE_AVX2))
    return flags


def cpu_bf16() -> str | None:
    """The CPU feature that makes torch's bf16 matmul fast here (amx_bf16, avx512_bf16), or None.
    The one probe for every stage and kernel that picks a precision."""
    for f in BF16_FLAGS:
        if f in cpu_flags():
            return f
    if os.environ.get("THRESHER_CPU_ISA", "").lower() == "avx2":
        return None
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
    if not (set(BF16_FLAGS) & cpu_flags()):
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
    """numba kernels; the screening product in fp32 (BLAS, inside numba's threads) or bf16
    (torch and oneDNN on CPUs with bf16 dot products; `emulate=True`, or a CPU without them:
    the same product bits made by numpy, slow, for tests and checks on any CPU).

    Repeated assignments of the same points (Lloyd iterations) screen only the rows whose
    label the bounds of the previous assignment cannot vouch for (kmeans_cpu.bound_check);
    `prune=False` screens every row every time. Labels and distances are the same either way.
    """

    # Above this share of rows left to screen, screening them all beats gathering them.
    GATHER_MAX = 0.6
    # Candidates kept per row for the bounds (at k >= 4 x screen_tops; otherwise the label alone).
    CANDIDATES = 16

    def __init__(self, matmul: str = "fp32", prune: bool | None = None, candidates: int | None = None,
                 screen_tops: int | None = None, emulate: bool | None = None, sets: bool | None = None):
        if matmul not in ("fp32", "bf16"):
            raise ValueError(f"matmul: expected fp32 or bf16, got {matmul!r}")
        self.matmul = matmul
        # THRESHER_KMEANS_PRUNE=0 turns the bounds off everywhere (executors too, through
        # spark.executorEnv): for measuring what they save, or ruling them out.
        self.prune = os.environ.get("THRESHER_KMEANS_PRUNE", "1") != "0" if prune is None else prune
        self.candidates = max(1, int(candidates or self.CANDIDATES))
        # Largest movers screened again (0: measure the few outliers exactly).
        self.screen_tops = cpu.SCREEN_TOPS if screen_tops is None else int(screen_tops)
        # bf16 without the hardware: numpy makes the product's bits (the kernels after it are
        # the same), so the bf16 selection and bounds are exercised on every CPU.
        self.emulate = (matmul == "bf16" and not has_bf16_matmul()) if emulate is None else bool(emulate)
        self.sets = sets
        self._logged: set[int] = set()
        self.name = "numba-cpu" + ("+bf16" + ("(emulated)" if self.emulate else "") if matmul == "bf16" else "")

    def _bf16(self, P: Points, C: np.ndarray, m: int) -> bool:
        # bf16 pays off only for real products; tiny d or k would overflow its wider windows.
        return self.matmul == "bf16" and m >= 256 and P.X.shape[1] >= 32 and len(C) >= 32

    def _sets(self, C: np.ndarray) -> bool:
        """Candidate sets and the movers' screen go together, at k >= 4 x screen_tops (512 by
        default): below that a candidate's exact distance (float64, every iteration) costs about
        what screening ten centroids does, and the sets measured slower than the single bound
        (README, clustering: bf16 on an AMX CPU; fp32 on Zen 4, AVX2 code path and native)."""
        if self.sets is not None:
            return self.sets and bool(self.screen_tops) and len(C) > self.screen_tops
        return bool(self.screen_tops) and len(C) >= 4 * self.screen_tops

    def describe(self, k: int) -> str:
        """The path this backend takes at k centroids, and why (for logs and benchmarks)."""
        if self._sets(np.empty((k, 0))):
            b = f"{self.candidates} candidates a row and the {self.screen_tops} largest movers screened again"
            why = f"k >= {4 * self.screen_tops}" if self.sets is None else "asked for"
        else:
            b = "the single (Hamerly) bound"
            why = f"k < {4 * self.screen_tops}" if self.sets is None else "asked for"
        return f"{self.name}, {self.matmul} screen, bounds: {b if self.prune else 'off'} ({why})"

    def _screen(self, P: Points, C: np.ndarray, rows: np.ndarray | None = None):
        """(labels, float64 d2, lower bound on the distance to any centroid outside the row's
        candidate set, candidate sets (int32, -1 padded)) of all rows, or of `rows` only."""
        m = len(P) if rows is None else len(rows)
        width = self.candidates if self._sets(C) else 1
        if self._bf16(P, C, m):
            lab, d2, lb2, cand = assign_bf16(P, C, rows=rows, with_bounds=True, candidates=width,
                                             emulate=self.emulate)
        else:
            lab, d2, lb2, cand, _ = cpu.screen(P.X, C, P.norms, P.shift, P.Xs, rows, width)
        return lab, d2, np.sqrt(np.maximum(lb2, 0.0)), cand

    def _screen_tops(self, P: Points, C, tops, cand, rows):
        if self._bf16(P, C, len(rows)):
            return screen_tops_bf16(P, C, tops, cand, rows=rows, emulate=self.emulate)
        return screen_tops_fp32(P, C, tops, cand, rows=rows)

    def assign(self, P: Points, C: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        C = np.ascontiguousarray(C, dtype=np.float32)
        n = len(P)
        st = P.cache.get("bounds") if self.prune else None
        if len(C) not in self._logged:
            # Once per k: which path the assignments take here, and why.
            self._logged.add(len(C))
            log.info("k-means assignment at k=%d: %s", len(C), self.describe(len(C)))
        if (st is None or st["C"].shape != C.shape or n == 0
                or st.get("cand") is None or st["cand"].shape != (n, self.candidates if self._sets(C) else 1)):
            lab, d2, lb, cand = self._screen(P, C)
            screened = n
        else:
            lab, lb, cand = st["labels"], st["lb"], st["cand"]
            mv, tops, rest = cpu.moves(st["C"], C)
            tmax = rest
            screen_tops = self._sets(C)
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
                    l = np.minimum(lb[r2], self._screen_tops(P, C, tops, cand, r2))
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
        if dtype != "auto":
            why = f"dtype={dtype}" + (" (emulated: no bf16 dot products here)" if b.emulate else "")
        elif bf16:
            why = "the CPU has " + "/".join(sorted(set(BF16_FLAGS) & cpu_flags())) + " and torch"
        else:
            why = "no bf16 dot products (avx512_bf16/amx_bf16) or no torch: fp32 BLAS screening" + (
                ", ISA capped by THRESHER_CPU_ISA" if os.environ.get("THRESHER_CPU_ISA") else "")
    log.info("k-means backend: %s (%s)", b.name, why)
    _PICKED[key] = b
    return b


def _bf16_coef(d: int) -> float:
    return cpu.screen_coef(d, BF16_UNIT, BF16_UNIT)


def bf16_round(A: np.ndarray) -> np.ndarray:
    """float32 values rounded to the nearest bf16 (ties to even), as float32: what torch's
    `.to(torch.bfloat16)` gives (finite inputs)."""
    u = np.ascontiguousarray(A, dtype=np.float32).view(np.uint32)
    r = (u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) & np.uint32(0xFFFF0000)
    return r.view(np.float32)


def bf16_bits(A: np.ndarray) -> np.ndarray:
    """The int16 bits of float32 values rounded to bf16 (ties to even)."""
    return (bf16_round(A).view(np.uint32) >> np.uint32(16)).astype(np.uint16).view(np.int16)


def bf16_matmul_bits(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """The bf16 product the hardware path screens with, made in numpy: A and B already bf16
    values (float32 arrays), the products exact in fp32 (8-bit significands), fp32
    accumulation, the output rounded to bf16: int16 bits, (m, k). Within the same error bound
    as torch's bf16 matmul (screen_coef with BF16_UNIT for inputs and output), though not
    always the same bits (accumulation order)."""
    return bf16_bits(np.dot(A, B))


def _bf16_rows(P: Points, rows: np.ndarray | None = None, emulate: bool = False):
    """P's centred rows in bf16 (made once per point set: a torch tensor, or with `emulate` a
    float32 array of bf16 values), or `rows` of them."""
    key = "bf16_emulated" if emulate else "bf16"
    Xb = P.cache.get(key)
    if Xb is None:
        if emulate:
            Xb = bf16_round(P.Xs)
        else:
            import torch

            Xb = torch.from_numpy(P.Xs).to(torch.bfloat16)
        P.cache[key] = Xb
    if rows is None:
        return Xb
    if emulate:
        return Xb[np.asarray(rows, dtype=np.int64)]
    import torch

    return Xb.index_select(0, torch.from_numpy(np.asarray(rows, dtype=np.int64)))


def _bf16_products(Xb, Cs: np.ndarray, block: int, emulate: bool):
    """Yields (start, int16 bits of the bf16 product of rows start.. of Xb with Cs.T), block by
    block: torch on the hardware, numpy emulating it otherwise."""
    n = Xb.shape[0]
    if emulate:
        CbT = np.ascontiguousarray(bf16_round(Cs).T)
        for s in range(0, n, block):
            yield s, bf16_matmul_bits(Xb[s:s + block], CbT)
        return
    import torch

    Cb = torch.from_numpy(np.ascontiguousarray(Cs)).to(torch.bfloat16).T.contiguous()
    # One tile for all blocks: a fresh one each time costs page faults on every block.
    tile = torch.empty((min(block, n), len(Cs)), dtype=torch.bfloat16)
    for s in range(0, n, block):
        e = min(n, s + block)
        out = tile[: e - s]
        torch.mm(Xb[s:e], Cb, out=out)
        yield s, out.view(torch.int16).numpy()


def assign_bf16(P: Points, C: np.ndarray, block: int = 4096, max_tile_bytes: int = 8 << 20,
                rows: np.ndarray | None = None, with_bounds: bool = False, candidates: int = 1,
                emulate: bool = False):
    """Screen with a bf16 product (bf16 inputs and output, fp32 accumulation), then decide the
    rows whose best and runners-up are within the bf16 error bound in exact arithmetic.
    (labels, float32 d2) of every row, or of `rows`; with_bounds: (labels, float64 d2, lower
    bound on the squared distance to every centroid outside the row's candidate set, the sets:
    (rows, `candidates`) int32, -1 padded; see kmeans_cpu.select_from_bf16). `emulate`: the
    product from numpy (bf16_matmul_bits) instead of torch."""
    C = np.ascontiguousarray(C, dtype=np.float32)
    Xb = _bf16_rows(P, rows, emulate)
    if rows is None:
        X, xnorm = P.X, P.norms
    else:
        X, xnorm = P.X[rows], P.norms[rows]
    n, d = X.shape
    Cs = C - P.shift
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
    for s, bits in _bf16_products(Xb, Cs, block, emulate):
        cpu.select_from_bf16(bits, s, X, C, cn64, xnorm, cmax, coef, cpu.LADDER, 1.0 + cpu.GAP_WINDOWS, labels, d2,
                             ncand, lb, cand)
    P.cache["bf16_exact_checks"] = float(ncand.mean()) if n else 0.0
    if with_bounds:
        return labels, d2, lb, cand
    return labels, d2.astype(np.float32)


def screen_tops_bf16(P: Points, C: np.ndarray, tops: np.ndarray, cand: np.ndarray,
                     block: int = 8192, rows: np.ndarray | None = None, emulate: bool = False) -> np.ndarray:
    """A lower bound on each row's (or each of `rows`') distance to every centroid of `tops`
    (ascending) outside its candidate set (`cand`, all rows, ascending), from a bf16 product of
    the rows with those centroids only (kmeans_cpu.top_bounds)."""
    Xb = _bf16_rows(P, rows, emulate)
    norms = P.norms
    if rows is not None:
        norms, cand = norms[rows], cand[rows]
    Cs = np.ascontiguousarray(C[tops], dtype=np.float32) - P.shift
    cn64 = np.einsum("ij,ij->i", Cs, Cs, dtype=np.float64)
    cmax = float(np.sqrt(cn64.max())) if len(tops) else 0.0
    out = np.empty(len(norms), np.float64)
    for s, bits in _bf16_products(Xb, Cs, block, emulate):
        cpu.top_bounds(bits, s, tops, cn64, norms, cmax, _bf16_coef(P.X.shape[1]), cand, out)
    return out


def screen_tops_fp32(P: Points, C: np.ndarray, tops: np.ndarray, cand: np.ndarray,
                     block: int = 8192, rows: np.ndarray | None = None) -> np.ndarray:
    """screen_tops_bf16 with an fp32 product (numpy's BLAS, all its threads)."""
    norms, Xs = P.norms, P.Xs
    if rows is not None:
        norms, cand = norms[rows], cand[rows]
    Cs = np.ascontiguousarray(C[tops], dtype=np.float32) - P.shift
    CsT = np.ascontiguousarray(Cs.T)
    cn64 = np.einsum("ij,ij->i", Cs, Cs, dtype=np.float64)
    cmax = float(np.sqrt(cn64.max())) if len(tops) else 0.0
    coef = cpu.screen_coef(P.X.shape[1], cpu.UNIT_FP32)
    out = np.empty(len(norms), np.float64)
    for s in range(0, len(norms), block):
        e = min(len(norms), s + block)
        Xb = Xs[s:e] if rows is None else Xs[rows[s:e]]
        cpu.top_bounds(np.dot(Xb, CsT), s, tops, cn64, norms, cmax, coef, cand, out)
    return out
