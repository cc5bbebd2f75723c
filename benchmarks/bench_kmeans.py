"""k-means: thresher's Lloyd iterations against faiss-cpu Kmeans from the same initial centroids,
the machine's own fp32/bf16 matrix-product peaks measured in the same run, and (without
--quick) hierarchical k-means of 1,000,000 x 384 through the Spark stage.

Data: a mixture of 2,000 Gaussians on the unit sphere in 384 dimensions (embedding-like), made
from a fixed seed; Lloyd also runs on two less separated mixtures (spread 0.7 and 1.2), where
the bounds skip fewer rows. Inertia of both results is measured by the same exact evaluator.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from thresher.stages.base import run_stage

from benchmarks.common import PeakRSS, record


def sphere_mixture_chunks(n: int, d: int, comps: int = 2000, seed: int = 0, spread: float = 0.35,
                          step: int = 100_000):
    """A mixture of `comps` Gaussians on the unit sphere, in chunks of `step` rows, so a caller
    can write n rows without ever holding them all."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(comps, d)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    # Zipf-like component sizes, as topics are in real corpora.
    p = 1.0 / np.arange(1, comps + 1) ** 0.8
    lab = rng.choice(comps, n, p=p / p.sum())
    for s in range(0, n, step):
        e = min(n, s + step)
        X = (centres[lab[s:e]] + spread / np.sqrt(d) * rng.normal(size=(e - s, d)).astype(np.float32)).astype(np.float32)
        X /= np.linalg.norm(X, axis=1, keepdims=True)
        yield X


def sphere_mixture(n: int, d: int, comps: int = 2000, seed: int = 0, spread: float = 0.35) -> np.ndarray:
    return np.concatenate(list(sphere_mixture_chunks(n, d, comps, seed, spread)))


def matmul_peaks(repeat: int = 5) -> dict:
    """Median GFLOP/s of torch fp32 and bf16 products shaped like an assignment block."""
    import torch

    out = {}
    m, k, n = 4096, 384, 1024
    for name, dt in [("fp32", torch.float32), ("bf16", torch.bfloat16)]:
        a = torch.randn(m, k).to(dt)
        b = torch.randn(k, n).to(dt)
        torch.mm(a, b)
        ts = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            for _ in range(5):
                torch.mm(a, b)
            ts.append((time.perf_counter() - t0) / 5)
        out[f"{name}_matmul_gflops"] = round(2 * m * k * n / statistics.median(ts) / 1e9, 1)
    return out


def exact_inertia(X, C) -> float:
    from thresher.kernels import kmeans_cpu as cpu

    return float(cpu.assign(X, C)[1].astype(np.float64).sum())


def _compile_stats() -> dict:
    """numba's cache hits and misses (compilations) over the k-means kernels so far."""
    from numba.core.registry import CPUDispatcher

    from thresher.kernels import kmeans_cpu as cpu

    hits = misses = 0
    for f in vars(cpu).values():
        if isinstance(f, CPUDispatcher):
            hits += sum(f.stats.cache_hits.values())
            misses += sum(f.stats.cache_misses.values())
    return {"numba_cache_hits": hits, "numba_compiled": misses}


def bench_lloyd(n: int, d: int, k: int, iters: int, repeat: int, spread: float = 0.35,
                single: bool = True, dtype: str = "auto", dense_repeat: int | None = None) -> dict:
    """Lloyd iterations against faiss. `spread` is the per-point noise around each component
    centre: the larger it is, the less separated the clusters and the fewer rows the bounds
    can skip (faiss's time does not depend on it). `single`: also time the bounds with one
    candidate a row and no movers' screen (Hamerly's bound, as before them). `dtype`: the
    screening product (auto: what pick_backend picks on this CPU). The first call (numba
    compiling, or loading its cache) is timed apart from the warm repeats."""
    import faiss

    from thresher.kernels.backend import CPUBackend, pick_backend
    from thresher.kernels.hkmeans import ArraySource, lloyd

    from thresher.kernels import kmeans_cpu as cpu

    X = sphere_mixture(n, d, spread=spread)
    # k-means++ seeds (on a sample): with random seeds some clusters empty out in the first
    # iterations, and faiss (splits a big cluster) and thresher (keeps the centroid) then part
    # ways for reasons that are not speed.
    rng = np.random.default_rng(1)
    S = X[rng.choice(n, min(n, 20 * k), replace=False)]
    C0 = np.ascontiguousarray(S[cpu.kmeanspp(S, k, 1)])
    be = pick_backend("cpu", dtype)
    flops = 2.0 * n * k * d * iters

    shares, shares1 = [], []

    def ours(backend=be, out=shares):
        src = ArraySource(X, backend)
        C = np.ascontiguousarray(C0)
        out.clear()
        for _ in range(iters):  # hkmeans.lloyd's loop, keeping each pass's screened share
            res = src.lloyd_pass(C, 0)
            C = cpu.centroids_from(res.sums, res.counts, src.scale, C)
            out.append(round(src.P.cache["screened_share"], 3))
        return C

    # The bounds as they were before candidate sets and the movers' screen (one candidate a
    # row, Hamerly's single bound, outlying movers measured exactly): what those add.
    single_be = CPUBackend(be.matmul, candidates=1, screen_tops=0)

    # The same kernels with every row screened every iteration: what the bounds save.
    dense_be = CPUBackend(be.matmul, prune=False)

    def dense():
        return lloyd(ArraySource(X, dense_be), C0, iters)

    def peer():
        km = faiss.Kmeans(d, k, niter=iters, seed=1, max_points_per_centroid=n, min_points_per_centroid=1,
                          verbose=False)
        km.train(X, init_centroids=C0)
        return km.centroids

    # First call: numba compiles (or loads its on-disk cache), kept out of the warm timings.
    t0 = time.perf_counter()
    lloyd(ArraySource(X[: 4 * k], be), C0, 2)
    lloyd(ArraySource(X[: 4 * k], dense_be), C0, 1)
    first_call = time.perf_counter() - t0
    compiled = _compile_stats()
    t_ours, t_peer, t_dense, t_single = [], [], [], []
    C_ours = C_peer = C_dense = C_single = None
    for r in range(repeat):
        t0 = time.perf_counter()
        C_ours = ours()
        t_ours.append(time.perf_counter() - t0)
        if single:
            t0 = time.perf_counter()
            C_single = ours(single_be, shares1)
            t_single.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        C_peer = peer()
        t_peer.append(time.perf_counter() - t0)
        if r < (repeat if dense_repeat is None else dense_repeat):
            t0 = time.perf_counter()
            C_dense = dense()
            t_dense.append(time.perf_counter() - t0)
    if not np.array_equal(C_ours, C_dense) or (single and not np.array_equal(C_single, C_dense)):
        raise AssertionError("lloyd: pruned and dense iterations gave different centroids")
    i_ours, i_peer = exact_inertia(X, C_ours), exact_inertia(X, C_peer)
    empty = int((np.bincount(cpu.assign(X, C_ours)[0], minlength=k) == 0).sum())
    ts, tp = statistics.median(t_ours), statistics.median(t_peer)
    name = (f"lloyd_{n}x{d}_k{k}_{iters}it" + ("" if spread == 0.35 else f"_spread{spread}")
            + ("" if dtype == "auto" else f"_{dtype}"))
    return record(name, ts, "faiss-cpu Kmeans", tp,
                  backend=be.name, precision=be.matmul, path=be.describe(k), repeats=repeat,
                  first_call_s=round(first_call, 2), **compiled, thresher_dense_equivalent_gflops=round(flops / ts / 1e9, 1),
                  faiss_gflops=round(flops / tp / 1e9, 1), inertia_thresher=round(i_ours, 3),
                  inertia_faiss=round(i_peer, 3), empty_clusters_thresher=empty, inertia_rel_diff=round((i_ours - i_peer) / i_peer, 6),
                  all_thresher_s=[round(t, 2) for t in t_ours], all_faiss_s=[round(t, 2) for t in t_peer],
                  thresher_dense_s=round(statistics.median(t_dense), 2),
                  thresher_dense_gflops=round(flops / statistics.median(t_dense) / 1e9, 1),
                  dense_same_centroids=True, screened_share_per_iter=shares, candidates=be.candidates,
                  **({"thresher_single_bound_s": round(statistics.median(t_single), 2),
                      "single_bound_screened_share_per_iter": shares1} if single else {}),
                  load_avg_1m=round(os.getloadavg()[0], 2),
                  **matmul_peaks())


HK_MASTER = "local-cluster[2,1,2048]"


def bench_hierarchical_spark(n: int, d: int, master: str = HK_MASTER, prune: bool = True) -> dict:
    """The cluster stage on n x d through the Spark path (levels 1000/100/10 with resampling).
    With the default master (2 executor JVMs of 1 core and 2 GB, beside the driver JVM) the
    driver's memory (its Python and its JVM) is measured apart from the executors'. The data
    are written in chunks and the driver never holds them."""
    import gc
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    from thresher.flows.config import SparkConfig
    from thresher.flows.spark import get_spark
    from thresher.stages import cluster

    tmp = Path(tempfile.mkdtemp(prefix="bench_kmeans_"))
    try:
        path = tmp / "embeddings"
        path.mkdir()
        step = 100_000
        for i, part in enumerate(sphere_mixture_chunks(n, d, seed=2, step=step)):
            s = i * step
            vec = pa.ListArray.from_arrays(pa.array(np.arange(len(part) + 1, dtype=np.int32) * d), pa.array(part.ravel()))
            pq.write_table(pa.table({"id": [f"doc-{i:08d}" for i in range(s, s + len(part))], "vector": vec}),
                           path / f"part-{s // step:04d}.parquet")
            del vec, part
        gc.collect()
        pa.default_memory_pool().release_unused()
        conf = {"spark.executor.memory": "2g"} if master.startswith("local-cluster") else {}
        if not prune:  # the k-means bounds off, in the driver and in every executor
            os.environ["THRESHER_KMEANS_PRUNE"] = "0"
            conf["spark.executorEnv.THRESHER_KMEANS_PRUNE"] = "0"
        spark = get_spark(SparkConfig(master=master, driver_memory="2g", shuffle_partitions=8, conf=conf))
        # Level 1 sized for a 2-core machine: each Lloyd pass is 2 n k d (0.77 TFLOP at 1M).
        cfg = cluster.Config(levels=[{"n_clusters": 1_000, "n_iters": 10, "n_resampling_steps": 2, "sample_size": 10},
                                     {"n_clusters": 100, "n_iters": 20, "n_resampling_steps": 5, "sample_size": 5},
                                     {"n_clusters": 10, "n_iters": 20, "n_resampling_steps": 5, "sample_size": 3}],
                             seed=0, in_memory_max_rows=0, init_sample=50_000)
        import psutil

        before = round(psutil.Process().memory_info().rss / 1e6, 1)
        with PeakRSS(every_s=0.5) as mem:
            t0 = time.perf_counter()
            res = run_stage(spark, cluster, {"embeddings": spark.read.parquet(str(path))}, cfg)
            res["clusters"].write.parquet(str(tmp / "clusters"))
            wall = time.perf_counter() - t0
        stats = res["stats"]
        spark.stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"bench": f"hkmeans_spark_{n}x{d}", "thresher_s": round(wall, 1), "peer": None, "peer_s": None,
            "ratio": None, "quality": {"master": master, "level_seconds": stats.get("level_seconds"),
                                       "spark_passes": stats.get("spark_passes"), "backend": stats.get("backend"),
                                       "bounds": prune, "level1_screened_share": stats.get("level1_screened_share"),
                                       "peak_rss_mb": mem.peak, "driver_python_before_mb": before,
                                       "clusters_per_level": stats.get("clusters_per_level"),
                                       "empty_clusters_per_level": stats.get("empty_clusters_per_level"),
                                       "load_avg_1m": round(os.getloadavg()[0], 2)}}


def hierarchical_sweep(ns, d: int = 384, master: str = HK_MASTER, prune: bool = True) -> dict:
    """bench_hierarchical_spark at each n, each in a fresh Python (so no JVM or allocator carries
    memory from one size to the next), and how the driver's peaks change with n."""
    import json
    import subprocess
    import sys

    runs = []
    for n in ns:
        code = ("import json; from benchmarks.bench_kmeans import bench_hierarchical_spark as b; "
                f"print('RESULT ' + json.dumps(b({int(n)}, {int(d)}, {master!r}, {bool(prune)})))")
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              cwd=Path(__file__).resolve().parent.parent)
        if proc.returncode:
            raise RuntimeError(f"hkmeans at n={n} failed: {proc.stderr[-2000:]}")
        runs.append(json.loads(next(l for l in proc.stdout.splitlines() if l.startswith("RESULT "))[7:]))
    per_n = {r["bench"].split("_")[2].split("x")[0]: {
        "wall_s": r["thresher_s"], "level_seconds": r["quality"]["level_seconds"],
        **{k: v for k, v in r["quality"]["peak_rss_mb"].items() if k != "children_mb"}} for r in runs}
    return {"bench": f"hkmeans_spark_sweep_{'_'.join(str(n) for n in ns)}x{d}", "thresher_s": runs[-1]["thresher_s"],
            "peer": None, "peer_s": None, "ratio": None,
            "quality": {"master": master, "per_n": per_n, "runs": runs}}


def bench_cuda_assign(n: int, d: int, k: int, repeat: int = 5) -> dict | None:
    """On a GPU: the CUDA assignment kernel against torch's product + argmin on the same GPU
    (gpu_check.time_assign, which also times each register patch and tf32/bf16)."""
    from thresher.kernels.backend import cuda_available

    try:
        import torch
    except ImportError:
        return None
    if not (cuda_available() and torch.cuda.is_available()):
        return None
    from benchmarks.gpu_check import time_assign

    r = time_assign(n, d, k, 0.35, repeat, lambda _: None)
    return record(f"cuda_assign_{n}x{d}_k{k}", r["full_assign_s"], "torch fp32 addmm+argmin (same GPU)", r["torch_fp32_s"],
                  thresher_tflops=round(r["full_assign_tflops"], 2), torch_tflops=round(r["torch_fp32_tflops"], 2),
                  label_agreement=r["torch_fp32_label_agreement"])


def run(quick: bool = False):
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    if quick:
        yield bench_lloyd(20_000, 384, 200, 10, repeat=3)
        gpu = bench_cuda_assign(100_000, 384, 1000)
        if gpu is not None:
            yield gpu
        return
    yield bench_lloyd(200_000, 384, 1000, 20, repeat=3)
    for spread in (0.7, 1.2):
        yield bench_lloyd(200_000, 384, 1000, 20, repeat=1, spread=spread)
    gpu = bench_cuda_assign(1_000_000, 384, 1000)
    if gpu is not None:
        yield gpu
    yield hierarchical_sweep([250_000, 500_000, 1_000_000])
    # What the bounds save on the Spark path: the smallest size again with them off.
    yield hierarchical_sweep([250_000], prune=False)
