"""GPU check: the numba-cuda k-means kernels on a real device, held to the CPU kernels at real
sizes, and timed against torch's matrix product + argmin on the same GPU.

    PYTHONPATH=. python -m benchmarks.gpu_check [--out DIR] [--quick]

CI has no GPU (tests/test_kmeans_cuda.py runs the kernels under the simulator); this is the
script to run where one is present. It needs numba-cuda and torch with CUDA, not Spark.
Prints one JSON line per result and a table last; with --out, writes gpu_check.json there.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.bench_kmeans import sphere_mixture

# (rows, centroids) of a thread's register patch; kmeans_cuda uses 8 x 8, the fastest measured.
PATCHES = [(4, 4), (4, 8), (8, 8)]


def _pname(p) -> str:
    return f"{p[0]}x{p[1]}"


def _ev_time(fn, repeat: int, warm: int = 2) -> float:
    """Median seconds of fn() between CUDA events (torch's stream is numba's default too)."""
    import torch

    for _ in range(warm):
        fn()
    ts = []
    for _ in range(repeat):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        ts.append(a.elapsed_time(b) / 1e3)
    return statistics.median(ts)


def _wall(fn, repeat: int, warm: int = 1) -> float:
    from numba import cuda

    for _ in range(warm):
        fn()
    ts = []
    for _ in range(repeat):
        cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        cuda.synchronize()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def sass_counts(kern) -> dict | str:
    """Instruction counts of a compiled kernel's machine code (needs nvdisasm): are the shared
    loads vectorised, how many FMAs per load."""
    try:
        sass = kern.inspect_sass()
        sass = next(iter(sass.values())) if isinstance(sass, dict) else sass
        return {op.strip(): sass.count(op) for op in ("LDS", "LDS.128", "LDS.64", "FFMA ", "LDG", "BAR.SYNC")}
    except Exception as e:
        return repr(e)[:120]


def check_correct(emit, small: bool = False) -> bool:
    """Labels equal the CPU kernels' (which tests hold to the numpy reference), distances to
    rounding, fixed-point sums bit-equal; at sizes that cross every tile edge."""
    from thresher.kernels import kmeans_cpu as K
    from thresher.kernels import kmeans_cuda as G
    from thresher.kernels import kmeans_ref as R
    from thresher.kernels.backend import Points

    rng = np.random.default_rng(7)
    ok = True
    cases = []
    f = 50 if small else 1  # small: a smoke run under the simulator
    X = (rng.normal(size=(1000 // f, 37)) + 2).astype(np.float32)
    cases.append(("blobs_1000x37_k50", X, X[rng.choice(len(X), 50 // f * 2, replace=False)].copy(), True))
    X = sphere_mixture(20_000 // f, 384 // f, seed=3, spread=1.2)
    C = X[rng.choice(len(X), 1000 // f, replace=False)].copy()
    C[len(C) // 2:len(C) // 2 + 10 // f] = C[:10 // f]  # exact ties across tiles: lowest index wins
    cases.append(("mixture_20000x384_k1000_ties", X, C, False))
    X = sphere_mixture(30_011 // f, 256 // f, seed=4, spread=0.35)
    cases.append(("mixture_30011x256_k777", X, X[rng.choice(len(X), 777 // f, replace=False)].copy(), False))
    for name, X, C, with_ref in cases:
        P = Points(X)
        lc, dc = K.assign(X, C)
        if with_ref:
            lr, _ = R.assign_ref(X, C)
            assert (lr == lc).all()
        for pt in PATCHES:
            lab, d2, namb = G.assign_device(P, C, *pt)
            lab, d2 = lab.copy_to_host(), d2.copy_to_host()
            same = bool((lab == lc).all())
            rel = float(np.max(np.abs(d2 - dc) / np.maximum(dc, 1e-12)))
            good = same and rel < 1e-5
            ok &= good
            emit({"check": name, "patch": _pname(pt), "labels_equal": same, "mismatches": int((lab != lc).sum()),
                  "d2_max_rel_diff": rel, "exact_rows": namb, "ok": good})
        s = K.fixed_scale(len(X), float(np.abs(X).max()))
        sc, cc = K.update(X, lc, len(C), s)
        sg, cg = G.update(P, lc, len(C), s)
        good = bool((sg == sc).all() and (cg == cc).all())
        ok &= good
        emit({"check": name, "update_bit_equal": good, "ok": good})
    return ok


def time_assign(n: int, d: int, k: int, spread: float, repeat: int, emit) -> dict:
    import torch
    from numba import cuda

    from thresher.kernels import kmeans_cuda as G
    from thresher.kernels.backend import Points

    X = sphere_mixture(n, d, seed=5, spread=spread)
    C = X[np.random.default_rng(1).choice(n, k, replace=False)].copy()
    P = Points(X)
    flops = 2.0 * n * k * d
    res = {"n": n, "d": d, "k": k, "spread": spread}
    dev = G._device(P)
    Cs = cuda.to_device(np.ascontiguousarray(C - P.shift, np.float32))
    cn = cuda.to_device(np.einsum("ij,ij->i", C - P.shift, C - P.shift).astype(np.float32))
    outs = [cuda.device_array(n, np.int32), cuda.device_array(n, np.float32), cuda.device_array(n, np.float32)]
    for pt in PATCHES:
        kern = G.assign_kernel(*pt)
        nm = _pname(pt)
        grid = (n + kern.BM - 1) // kern.BM

        def launch():
            kern[grid, G.THREADS](dev["X"], dev["shift"], Cs, cn, *outs)

        t = _ev_time(launch, repeat)
        res[f"kernel_{nm}_s"] = t
        res[f"kernel_{nm}_tflops"] = flops / t / 1e12
        try:
            # Without a signature these answer per compiled signature: there is one here.
            regs, local = kern.get_regs_per_thread(), kern.get_local_mem_per_thread()
            res[f"kernel_{nm}_regs"] = next(iter(regs.values())) if isinstance(regs, dict) else regs
            res[f"kernel_{nm}_local_bytes"] = next(iter(local.values())) if isinstance(local, dict) else local
        except Exception as e:  # resource queries differ between numba-cuda versions
            res[f"kernel_{nm}_regs"] = repr(e)[:80]
        if n == 200_000:
            res[f"kernel_{nm}_sass"] = sass_counts(kern)
    # The whole exact assignment (fused kernel, float64 distances, near-tie pass, flags to host).
    t_full = _ev_time(lambda: G.assign_device(P, C), repeat)
    lab, d2, namb = G.assign_device(P, C)
    res.update(full_assign_s=t_full, full_assign_tflops=flops / t_full / 1e12, exact_rows=namb)
    res["full_assign_to_host_s"] = _wall(lambda: G.assign(P, C), repeat)

    Xt, Ct = torch.from_numpy(X).cuda(), torch.from_numpy(C).cuda()
    cnt = (Ct * Ct).sum(1)

    def torch_assign():
        # ||c||^2 - 2 x.c in one GEMM epilogue, then the argmin: the usual GPU assignment.
        return torch.addmm(cnt[None, :], Xt, Ct.T, beta=1.0, alpha=-2.0).argmin(1)

    for mode in ("fp32", "tf32"):
        torch.backends.cuda.matmul.allow_tf32 = mode == "tf32"
        t = _ev_time(torch_assign, repeat)
        res[f"torch_{mode}_s"] = t
        res[f"torch_{mode}_tflops"] = flops / t / 1e12
        res[f"torch_{mode}_label_agreement"] = float((torch_assign().cpu().numpy() == lab.copy_to_host()).mean())
    torch.backends.cuda.matmul.allow_tf32 = False
    Xb, Cb = Xt.bfloat16(), Ct.bfloat16()
    t = _ev_time(lambda: torch.addmm(cnt[None, :].bfloat16(), Xb, Cb.T, beta=1.0, alpha=-2.0).argmin(1), repeat)
    res.update(torch_bf16_s=t, torch_bf16_tflops=flops / t / 1e12)
    t = _ev_time(lambda: Xt @ Ct.T, repeat)
    res.update(torch_fp32_mm_only_s=t, torch_fp32_mm_only_tflops=flops / t / 1e12)
    emit(res)
    return res


def time_lloyd(n: int, d: int, k: int, iters: int, spread: float, emit) -> dict:
    """20 Lloyd iterations through the CUDA backend against a torch Lloyd (fp32 product +
    argmin, index_add_ sums) from the same centroids; inertia of both by the same evaluator."""
    import torch

    from thresher.kernels import hkmeans
    from thresher.kernels.backend import CUDABackend

    X = sphere_mixture(n, d, seed=6, spread=spread)
    C0 = X[np.random.default_rng(2).choice(n, k, replace=False)].copy()
    src = hkmeans.ArraySource(X, CUDABackend())
    hkmeans.lloyd(src, C0, 1)  # compile and upload outside the clock
    t0 = time.perf_counter()
    C = hkmeans.lloyd(src, C0, iters)
    t_ours = time.perf_counter() - t0

    Xt = torch.from_numpy(X).cuda()

    def torch_lloyd():
        Ct = torch.from_numpy(C0).cuda()
        for _ in range(iters):
            lab = torch.addmm((Ct * Ct).sum(1)[None, :], Xt, Ct.T, beta=1.0, alpha=-2.0).argmin(1)
            s = torch.zeros_like(Ct).index_add_(0, lab, Xt)
            c = torch.bincount(lab, minlength=k).to(Xt.dtype)
            Ct = torch.where(c[:, None] > 0, s / c.clamp(min=1)[:, None], Ct)
        torch.cuda.synchronize()
        return Ct.cpu().numpy()

    torch_lloyd()
    t0 = time.perf_counter()
    Cp = torch_lloyd()
    t_peer = time.perf_counter() - t0
    _, d2o = src.assign(C)
    _, d2p = src.assign(Cp)
    io, ip = float(d2o.astype(np.float64).sum()), float(d2p.astype(np.float64).sum())
    res = {"lloyd": f"{n}x{d}_k{k}_{iters}it", "spread": spread, "thresher_cuda_s": t_ours, "torch_s": t_peer,
           "inertia_thresher": io, "inertia_torch": ip, "inertia_rel_diff": (io - ip) / ip}
    emit(res)
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    from numba import cuda

    results = []

    def emit(r):
        results.append(r)
        print(json.dumps(r, default=str), flush=True)

    if not cuda.is_available():
        print("gpu_check: no CUDA device", file=sys.stderr)
        return 2
    import numba
    import torch

    dev = cuda.get_current_device()
    emit({"device": dev.name.decode() if isinstance(dev.name, bytes) else str(dev.name),
          "numba": numba.__version__, "torch": torch.__version__})
    ok = check_correct(emit)
    reps = 5 if args.quick else 10
    sizes = [(200_000, 384, 1000)] if args.quick else [(200_000, 384, 1000), (1_000_000, 384, 1000), (1_000_000, 384, 4096)]
    timings = []
    for n, d, k in sizes:
        timings.append(time_assign(n, d, k, 1.2, reps, emit))
        torch.cuda.empty_cache()
    if not args.quick:
        time_lloyd(200_000, 384, 1000, 20, 1.2, emit)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "gpu_check.json").write_text(json.dumps(results, indent=1, default=str))
    print("\nsize | best patch TFLOP/s | full exact assign s | torch fp32 mm+argmin s (TFLOP/s) | tf32 s | ratio torch_fp32/full")
    for r in timings:
        best = _pname(max(PATCHES, key=lambda p: r[f"kernel_{_pname(p)}_tflops"]))
        print(f"{r['n']}x{r['d']} k={r['k']} | {best} {r[f'kernel_{best}_tflops']:.1f} | "
              f"{r['full_assign_s']*1e3:.2f} ms | {r['torch_fp32_s']*1e3:.2f} ms ({r['torch_fp32_tflops']:.1f}) | "
              f"{r['torch_tf32_s']*1e3:.2f} ms | {r['torch_fp32_s']/r['full_assign_s']:.2f}")
    print("correct:", ok)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
