"""Lloyd iterations only (`python -m benchmarks lloyd [--isa avx2]`): bench_kmeans's
comparisons with faiss-cpu, without the Spark sweep, at the default mixture and spread 1.2,
medians of 3, on the path thresher picks here (`--isa avx2`: the AVX2 one)."""

from __future__ import annotations

from benchmarks.bench_kmeans import bench_lloyd


def run(quick: bool = False):
    n, k, iters = (20_000, 200, 10) if quick else (200_000, 1000, 20)
    for spread in (0.35, 1.2):
        yield bench_lloyd(n, 384, k, iters, repeat=3, spread=spread, single=False, dense_repeat=1)
