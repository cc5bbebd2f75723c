"""Lloyd iterations only (`python -m benchmarks lloyd [--isa avx2]`): bench_kmeans's
comparisons with faiss-cpu, without the Spark sweep, at the default mixture and spread 1.2
(medians of 3) and, on CPUs where thresher picks bf16 screening, the fp32 path too."""

from __future__ import annotations

from benchmarks.bench_kmeans import bench_lloyd


def run(quick: bool = False):
    from thresher.kernels.backend import pick_backend

    n, reps = (20_000, 3) if quick else (200_000, 3)
    dtypes = ["auto"] + (["float32"] if pick_backend("cpu").matmul == "bf16" else [])
    for dtype in dtypes:
        for spread in (0.35, 1.2):
            yield bench_lloyd(n, 384, 200 if quick else 1000, 10 if quick else 20, repeat=reps, spread=spread,
                              single=False, dtype=dtype, dense_repeat=1)
