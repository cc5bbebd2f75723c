"""`thresher warm`: compile the numba kernels for this CPU into numba's on-disk cache.

numba compiles a kernel on its first call in a process and caches it beside the code (keyed by
the argument types and this CPU). A fresh install compiles in every process that calls a
kernel before some process has written the cache: the driver, each Spark Python worker, each
run. Calling every kernel once here, through the same functions and Arrow data types the stages
use (Arrow-backed arrays are read-only, a type of their own to numba), leaves nothing to compile
for a run on this machine. Setup (`make setup`) runs it; it changes no result.
"""

from __future__ import annotations

import time


def _texts(n: int = 400, seed: int = 0):
    """Documents with edited copies, so every dedup step has pairs, groups and components."""
    import numpy as np
    import pyarrow as pa

    rng = np.random.default_rng(seed)
    vocab = np.array([f"w{i}" for i in range(3000)] + ["é", "日本語", "ß"])
    texts = []
    for i in range(n):
        if i % 4 and texts:
            words = texts[-1].split()
            words[rng.integers(len(words))] = "edit"
            texts.append(" ".join(words))
        else:
            texts.append(" ".join(rng.choice(vocab, 60)))
    ids = [f"d{i:05d}" for i in range(n)]
    return pa.record_batch([pa.array(ids), pa.array(texts), pa.array(np.arange(n, dtype=np.float64))],
                           names=["id", "text", "_quality"])


def _dedup(batch) -> None:
    import pyarrow as pa

    from thresher.stages import exact_dedup as ED
    from thresher.stages import fuzzy_dedup as FD
    from thresher.stages.components import contract_batches
    from thresher.stages.fuzzy_dedup.distributed import reference_batches
    from thresher.stages.fuzzy_dedup.one_task import one_task_batches
    from thresher.stages.fuzzy_dedup.signing import sign_batches

    text = batch.select(["id", "text"])
    for norm in ({}, {"lowercase": False, "strip_punctuation": False}):
        list(ED.hash_batches(ED.Config(seed=0, normalise=norm))(iter([text])))
    for kind, n in (("word", 5), ("char", 5)):
        for verify in (True, False):
            cfg = FD.Config(seed=0, verify=verify, survivor="quality", shingle={"kind": kind, "n": n})
            bands, rows = FD.lsh_params(cfg)
            signed = pa.Table.from_batches(list(sign_batches(cfg, bands, rows)(iter([text]))))
            list(one_task_batches(cfg, bands, rows)(iter([batch])))
            # The distributed path's verification: groups (g, id, s) led by their hub.
            g = pa.array([signed.column("id")[i - i % 8].as_py() for i in range(signed.num_rows)])
            grouped = pa.record_batch([g, signed.column("id").combine_chunks(), signed.column("s").combine_chunks()],
                                      names=["g", "id", "s"])
            out = pa.schema([("g", pa.string()), ("ref", pa.string()), ("id", pa.string()), ("j", pa.float64())])
            list(reference_batches(cfg, out, drop_reference=False)(iter([grouped])))
    edges = pa.record_batch([batch.column(0).slice(1), batch.column(0).slice(0, batch.num_rows - 1)], names=["a", "b"])
    for labels in (False, True):
        list(contract_batches(labels)(iter([edges])))


def _kmeans() -> None:
    import numpy as np

    from thresher.kernels import kmeans_cpu as cpu
    from thresher.kernels.hkmeans import HierarchicalKMeans

    X = np.random.default_rng(0).standard_normal((3000, 64)).astype(np.float32)
    # bf16 too where the CPU has no bf16 products: the kernels after the product are the same
    # numba code, fed by numpy's emulation (tests and checks use that path on every CPU).
    for dtype in ("float32", "bf16"):
        # k = 40: one bound per row; k = 600: candidate sets (kmeans_cpu's bounds switch at 512).
        for k, sampling, empty in ((40, "closest", "keep"), (40, "random", "farthest"), (600, "closest", "keep")):
            levels = [{"n_clusters": k, "n_iters": 4, "n_resampling_steps": 1, "sampling": sampling}, 5]
            hk = HierarchicalKMeans(levels=levels, seed=0, backend="cpu", dtype=dtype, empty=empty).fit(X)
            hk.predict(X[:100])
    # Low dimensions take the direct assignment.
    HierarchicalKMeans(levels=[8, 2], seed=0, backend="cpu").fit(X[:, :2].copy())
    # kmeans_cpu.update picks by numba's thread count (one in a Spark task or a capped process):
    # both of its kernels, with the argument types it passes.
    labels = np.arange(len(X), dtype=np.int64) % 40
    cpu._update_partials(X, labels, 40, 1024.0, 2)
    cpu._update_sorted(X, labels, 40, 1024.0)


def warm(say=print) -> dict[str, float]:
    """Compile every CPU kernel; returns the seconds each group took."""
    took = {}
    t0 = time.perf_counter()
    _dedup(_texts())
    took["dedup"] = round(time.perf_counter() - t0, 1)
    say(f"thresher warm: dedup kernels ready ({took['dedup']} s)")
    t0 = time.perf_counter()
    _kmeans()
    took["kmeans"] = round(time.perf_counter() - t0, 1)
    say(f"thresher warm: k-means kernels ready ({took['kmeans']} s)")
    return took
