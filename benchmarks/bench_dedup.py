"""Fuzzy dedup: thresher against datasketch and against an exact set-similarity join.

1. Signatures: the numba kernel against datasketch's `MinHash.update_batch` on the same shingle
   sets (thresher's 64-bit shingle hashes, given to datasketch as 8-byte strings).
2. Whole fuzzy dedup, shingles to survivors, on the corpus (64k documents) and on the corpus
   replicated 10x with random edits (640k; `--quick` skips it):
   - thresher: a fresh local Spark session (start-up included), fuzzy_dedup, outputs written;
   - datasketch: one process, MinHash + MinHashLSH insert and query + union-find;
   - exact: SetSimilaritySearch's all_pairs (prefix-filtered exact join) + union-find, which is
     also the ground truth for precision, recall and the adjusted Rand index.
"""

from __future__ import annotations

import gc
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks.common import PeakRSS, median_time, record
from benchmarks.data import CORPUS

THRESHOLD = 0.7
NUM_PERM = 128


class UnionFind:
    def __init__(self, n: int):
        self.p = list(range(n))

    def find(self, x: int) -> int:
        p = self.p
        while p[x] != x:
            p[x] = p[p[x]]
            x = p[x]
        return x

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.p[max(ra, rb)] = min(ra, rb)


# ------------------------------------------------------------------------------------ peers
def _python_shingles(texts: list[str], n: int = 5) -> list[set[str]]:
    """Word 5-gram sets of the normalised texts (normalised once, vectorised, by thresher's
    normalise: the peers see exactly the same shingles)."""
    from thresher.stages.text import normalise

    out = []
    for t in normalise(pa.array(texts, pa.string())).to_pylist():
        w = t.split()
        if not w:
            out.append(set())
        elif len(w) < n:
            out.append({" ".join(w)})
        else:
            out.append({" ".join(w[i:i + n]) for i in range(len(w) - n + 1)})
    return out


def datasketch_pipeline(texts: list[str]) -> tuple[np.ndarray, set[tuple[int, int]]]:
    """MinHash, MinHashLSH insert and query, union-find: component root of every document and the
    candidate pairs (datasketch does not verify them)."""
    from datasketch import MinHash, MinHashLSH

    sets = _python_shingles(texts)
    lsh = MinHashLSH(threshold=THRESHOLD, num_perm=NUM_PERM)
    mh = []
    for i, s in enumerate(sets):
        if not s:
            mh.append(None)
            continue
        m = MinHash(num_perm=NUM_PERM)
        m.update_batch([x.encode() for x in s])
        mh.append(m)
        lsh.insert(i, m)
    uf = UnionFind(len(texts))
    pairs = set()
    for i, m in enumerate(mh):
        if m is None:
            continue
        for j in lsh.query(m):
            if j != i:
                uf.union(i, j)
                pairs.add((min(i, j), max(i, j)))
    return np.array([uf.find(i) for i in range(len(texts))]), pairs


def exact_pipeline(texts: list[str]) -> tuple[np.ndarray, set[tuple[int, int]]]:
    """The exact join: every pair with Jaccard >= threshold, and its components."""
    from SetSimilaritySearch import all_pairs

    sets = _python_shingles(texts)
    idx = [i for i, s in enumerate(sets) if s]
    pairs = {(min(idx[x], idx[y]), max(idx[x], idx[y]))
             for x, y, _ in all_pairs([sets[i] for i in idx], similarity_func_name="jaccard",
                                      similarity_threshold=THRESHOLD)}
    uf = UnionFind(len(texts))
    for a, b in pairs:
        uf.union(a, b)
    return np.array([uf.find(i) for i in range(len(texts))]), pairs


# ------------------------------------------------------------------------------------ thresher
def thresher_pipeline(path: Path, workdir: Path):
    """Fresh Spark session, fuzzy_dedup on the Parquet file, its three tables written. Runs
    before the benchmark reads the corpus into Python, so the driver's peak RSS is thresher's."""
    from pyspark.sql.pandas.types import from_arrow_schema

    from thresher.flows.config import SparkConfig
    from thresher.flows.spark import get_spark
    from thresher.stages import fuzzy_dedup as FD

    with PeakRSS() as rss:
        t0 = time.perf_counter()
        spark = get_spark(SparkConfig(master="local[*]", driver_memory="6g", shuffle_partitions=8))
        spark.sparkContext.setCheckpointDir(str(workdir / "checkpoints"))
        t_session = time.perf_counter()
        # The schema from the Parquet footer, as ingest reads it (no schema-inference job).
        footer = pq.read_schema(path)
        docs = spark.read.schema(from_arrow_schema(pa.schema([footer.field("id"), footer.field("text")]))).parquet(str(path))
        t_read = time.perf_counter()
        out, scored = FD.run_with_pairs(spark, {"documents": docs}, FD.Config(seed=0))
        t_stage = time.perf_counter()
        for name in ("documents", "removed", "duplicates"):
            out[name].write.parquet(str(workdir / name))
        seconds = time.perf_counter() - t0
        # Where the time went: session start, reading the schema, the stage, the three writes.
        out["stats"]["step_s"] = {"session": round(t_session - t0, 2), "read": round(t_read - t_session, 2),
                                  "stage": round(t_stage - t_read, 2), **out["stats"]["step_s"],
                                  "writes": round(time.perf_counter() - t_stage, 2)}
        # The verified edges too, for the quality figures: outside the clock, as the peers'
        # pairs are (the stage itself does not write them).
        scored.where(f"j >= {THRESHOLD}").select("a", "b").write.parquet(str(workdir / "edges"))
        spark.stop()
    ids = pq.read_table(path, columns=["id"]).column("id").to_pylist()
    pos = {d: i for i, d in enumerate(ids)}
    e = pq.read_table(workdir / "edges").to_pylist()
    edges = [(pos[r["a"]], pos[r["b"]]) for r in e]
    dups = pq.read_table(workdir / "duplicates", columns=["id", "component_id"]).to_pylist()
    labels = np.arange(len(ids))
    for r in dups:
        labels[pos[r["id"]]] = pos[r["component_id"]]
    return labels, {(min(a, b), max(a, b)) for a, b in edges}, out["stats"], rss, seconds


def quality(labels: np.ndarray, pairs: set, truth_labels: np.ndarray, truth_pairs: set) -> dict:
    from sklearn.metrics import adjusted_rand_score

    found = len(pairs & truth_pairs)
    comp_recall = sum(1 for a, b in truth_pairs if labels[a] == labels[b]) / max(1, len(truth_pairs))
    return {
        "pairs": len(pairs),
        "pair_precision": round(found / max(1, len(pairs)), 4),
        "pair_recall": round(found / max(1, len(truth_pairs)), 4),
        "component_recall": round(comp_recall, 4),
        "ari": round(float(adjusted_rand_score(truth_labels, labels)), 4),
        "removed": int(len(labels) - len(np.unique(labels))),
    }


# ------------------------------------------------------------------------------------ benches
def bench_signatures(quick: bool):
    from datasketch import MinHash

    from thresher.kernels.minhash import minhash_signatures, permutations
    from thresher.stages.text import shingle_sets

    texts = pq.read_table(CORPUS, columns=["text"]).column("text")
    off, h = shingle_sets(texts)
    a, b = permutations(NUM_PERM, 0)
    import numba

    minhash_signatures(off[:11], h, a, b)  # compiled (or loaded from cache) before timing
    n = len(off) - 1
    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    t1 = median_time(lambda: minhash_signatures(off, h, a, b), repeat=3)
    numba.set_num_threads(threads)
    tn = median_time(lambda: minhash_signatures(off, h, a, b), repeat=3)
    t_shingle = median_time(lambda: shingle_sets(texts), repeat=3)

    m_docs = 2000 if quick else 8000
    sh = [[x.tobytes() for x in h[off[i]:off[i + 1]]] for i in range(m_docs)]

    def ds():
        for s in sh:
            m = MinHash(num_perm=NUM_PERM)
            m.update_batch(s)

    t_ds = median_time(ds, repeat=3) * n / m_docs  # extrapolated to the whole corpus
    yield record("dedup_signatures_1thread", t1, "datasketch MinHash.update_batch", t_ds,
                 docs=n, shingles=int(len(h)), thresher_docs_per_s=round(n / t1),
                 datasketch_docs_per_s=round(n / t_ds), datasketch_timed_docs=m_docs)
    yield record(f"dedup_signatures_{threads}threads", tn, "datasketch MinHash.update_batch", t_ds,
                 docs=n, thresher_docs_per_s=round(n / tn), datasketch_docs_per_s=round(n / t_ds),
                 thresher_shingling_s=round(t_shingle, 3),
                 thresher_shingle_plus_signature_docs_per_s=round(n / (t_shingle + tn)))


def bench_pipeline(label: str, path: Path):
    """Yields the two comparisons and returns (docs, thresher_s, datasketch_s, exact_s)."""
    work = Path(tempfile.mkdtemp(prefix="thresher-bench-dedup-"))
    try:
        gc.collect()
        th_labels, th_pairs, stats, rss, t_th = thresher_pipeline(path, work)
        t = pq.read_table(path, columns=["id", "text"])
        ids, texts = t.column("id").to_pylist(), t.column("text").to_pylist()
        del t
        gc.collect()
        t0 = time.perf_counter()
        ds_labels, ds_pairs = datasketch_pipeline(texts)
        t_ds = time.perf_counter() - t0
        gc.collect()
        t0 = time.perf_counter()
        ex_labels, ex_pairs = exact_pipeline(texts)
        t_ex = time.perf_counter() - t0
    finally:
        shutil.rmtree(work, ignore_errors=True)
    q_th = quality(th_labels, th_pairs, ex_labels, ex_pairs)
    q_ds = quality(ds_labels, ds_pairs, ex_labels, ex_pairs)
    # Local mode: the driver JVM runs the executors' tasks; the Python workers are the
    # executors' Python side.
    peak = {"driver_python": round(rss.peak["driver_python_mb"]), "driver_and_executor_jvm": round(rss.peak["jvm_mb"]),
            "executor_python_workers": round(rss.peak["python_workers_mb"])}
    common = {"docs": len(ids), "true_pairs": len(ex_pairs), "thresher": q_th, "datasketch": q_ds,
              "thresher_stats": {k: stats[k] for k in ("bands", "rows", "candidate_pairs", "verified_pairs",
                                                        "dropped_pairs", "components", "cc_rounds", "step_s")},
              "peak_rss_mb": peak, "load_avg_1m": round(os.getloadavg()[0], 2)}
    yield record(f"dedup_fuzzy_{label}", t_th, "datasketch MinHash+MinHashLSH+union-find", t_ds, **common)
    yield record(f"dedup_fuzzy_{label}", t_th, "SetSimilaritySearch all_pairs (exact)+union-find", t_ex,
                 docs=len(ids), thresher=q_th)
    return len(ids), t_th, t_ds, t_ex, peak


def run(quick: bool = False):
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    yield from bench_signatures(quick)
    small = yield from bench_pipeline("64k", CORPUS)
    if quick:
        return
    from benchmarks.replicate import replicated_corpus

    big = yield from bench_pipeline("640k", replicated_corpus(10))
    # Growth: time ratio over size ratio (1 = linear); the peers' for comparison.
    size = big[0] / small[0]
    yield {"bench": "dedup_fuzzy_growth_64k_to_640k", "docs": [small[0], big[0]],
           "thresher_s": [round(small[1], 2), round(big[1], 2)], "thresher_growth_vs_linear": round(big[1] / small[1] / size, 3),
           "datasketch_s": [round(small[2], 2), round(big[2], 2)], "datasketch_growth_vs_linear": round(big[2] / small[2] / size, 3),
           "exact_s": [round(small[3], 2), round(big[3], 2)], "exact_growth_vs_linear": round(big[3] / small[3] / size, 3),
           "ratio_datasketch_over_thresher": [round(small[2] / small[1], 3), round(big[2] / big[1], 3)],
           "peak_rss_mb": {"64k": small[4], "640k": big[4]}}
