"""Fuzzy dedup: thresher beside real peers, each scored against the same exact truth.

1. Signatures: the numba kernel against datasketch's `MinHash.update_batch` and against rensa's
   bulk Rust kernel (`digest_matrix_from_flat_token_hashes`, RAYON_NUM_THREADS=1) on the same
   shingle sets (thresher's 64-bit shingle hashes), one thread each.
2. Whole fuzzy dedup on the family corpus (benchmarks/families.py, 21k documents, drifting
   families in four scripts), the Debian corpus (64k) and its 640k replica (`--quick` runs the
   first two only):
   - thresher: a fresh local Spark session (start-up included), fuzzy_dedup, outputs written;
   - DataTrove: its four MinHash steps (signatures, buckets, clusters, filter) with
     LocalPipelineExecutor, 16 buckets x 8 hashes, word 5-grams, as many workers as thresher
     has cores, in its own virtualenv (benchmarks/peers.py), unverified;
   - rensa: RMinHash + RMinHashLSH (16 x 8) + union-find on thresher's shingle hashes, unverified;
   - datasketch: one process, MinHash + MinHashLSH insert and query + union-find;
   - text-dedup: needs Python >= 3.12; skipped with one line where none can be had;
   - exact: SetSimilaritySearch's all_pairs (prefix-filtered exact join) + union-find, which is
     also the ground truth under thresher's shingle definition.
   Scores: pair recall (true pairs ending in one component), same-component precision and
   recall (pairs put in one component that truly are, and the reverse), documents removed, and
   removed documents that have no true partner at all.
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks.common import PeakRSS, median_time, record
from benchmarks.data import CORPUS

THRESHOLD = 0.7
PEER_TIMEOUT = float(os.environ.get("THRESHER_PEER_TIMEOUT", 1800))  # seconds a peer may take on one corpus
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
    removed = np.zeros(len(ids), bool)
    removed[[pos[x] for x in pq.read_table(workdir / "removed", columns=["id"]).column("id").to_pylist()]] = True
    return labels, removed, {(min(a, b), max(a, b)) for a, b in edges}, out["stats"], rss, seconds


def _same_pairs(labels: np.ndarray) -> int:
    c = np.unique(labels, return_counts=True)[1].astype(np.int64)
    return int((c * (c - 1) // 2).sum())


def quality(labels: np.ndarray, removed: np.ndarray | None, truth_labels: np.ndarray, truth_pairs: set,
            pairs: set | None = None) -> dict:
    """Scores against the exact truth. `labels`: a component label per document; `removed`: the
    documents the tool drops (None: all but one per component)."""
    if removed is None:
        first = np.zeros(len(labels), bool)
        first[np.unique(labels, return_index=True)[1]] = True
        removed = ~first
    t = np.array(sorted(truth_pairs), np.int64).reshape(-1, 2)
    partner = np.zeros(len(labels), bool)
    partner[t.reshape(-1)] = True
    both = _same_pairs(labels.astype(np.int64) * (len(labels) + 1) + truth_labels)
    out = {
        "pair_recall": round(float(np.mean(labels[t[:, 0]] == labels[t[:, 1]])) if len(t) else 1.0, 4),
        "same_component_precision": round(both / max(1, _same_pairs(labels)), 4),
        "same_component_recall": round(both / max(1, _same_pairs(truth_labels)), 4),
        "removed": int(removed.sum()),
        "removed_without_true_partner": int((removed & ~partner).sum()),
    }
    if pairs is not None:
        found = len(pairs & truth_pairs)
        out.update(pairs=len(pairs), pair_precision=round(found / max(1, len(pairs)), 4))
    return out


def _shingle_file(texts, out: Path) -> Path:
    from thresher.stages.text import shingle_sets

    off, h = shingle_sets(pa.array(texts, pa.string()))
    np.savez(out, off=off, h=h)
    return out


def rensa_pipeline(texts: list[str], work: Path):
    """rensa in its own virtualenv: (labels, candidate pairs, seconds)."""
    from benchmarks.peers import run_peer

    src = _shingle_file(texts, work / "shingles.npz")
    res = json.loads(run_peer("rensa", "peer_rensa.py", "lsh", src, work / "rensa_out.npz").strip().splitlines()[-1])
    z = np.load(work / "rensa_out.npz")
    return z["roots"], {(int(a), int(b)) for a, b in z["pairs"]}, res["seconds"]


def textdedup_pipeline(path: Path, work: Path, workers: int):
    """text-dedup's MinHash (verified) in its own Python >= 3.12 virtualenv: (labels, removed, seconds)."""
    from benchmarks.peers import run_peer

    res = json.loads(run_peer("text-dedup", "peer_textdedup.py", path, work / "textdedup", workers,
                              timeout=PEER_TIMEOUT).strip().splitlines()[-1])
    c = np.load(work / "textdedup" / "labels.npy")
    idx = np.arange(len(c))
    return np.where(c >= 0, c, idx), (c >= 0) & (c != idx), res["seconds"]


def datatrove_pipeline(path: Path, work: Path, workers: int):
    """DataTrove's four MinHash steps in its own virtualenv: (labels, removed, seconds)."""
    from benchmarks.peers import run_peer

    res = json.loads(run_peer("datatrove", "peer_datatrove.py", path, work / "datatrove", workers, timeout=PEER_TIMEOUT)
                     .strip().splitlines()[-1])
    ids = pq.read_table(path, columns=["id"]).column("id").to_pylist()
    pos = {d: i for i, d in enumerate(ids)}
    labels = np.arange(len(ids))
    clusters = pq.read_table(work / "datatrove" / "clusters.parquet").to_pylist()
    first: dict = {}
    for r in clusters:
        if r["cluster"] is not None and r["cluster"] >= 0:
            labels[pos[r["id"]]] = first.setdefault(r["cluster"], pos[r["id"]])
    removed = np.zeros(len(ids), bool)
    removed[[pos[r["id"]] for r in clusters if r["removed"]]] = True
    return labels, removed, res["seconds"]


# ------------------------------------------------------------------------------------ benches
def _one_thread(fn, *args):
    import numba

    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        return fn(*args)
    finally:
        numba.set_num_threads(threads)


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
    try:
        from benchmarks.peers import PeerUnavailable, run_peer

        work = Path(tempfile.mkdtemp(prefix="thresher-bench-sig-"))
        np.savez(work / "sh.npz", off=off, h=h)
        t_th = median_time(lambda: _one_thread(minhash_signatures, off, h, a, b), repeat=3)
        t_rensa = json.loads(run_peer("rensa", "peer_rensa.py", "signatures", work / "sh.npz", work / "x",
                                      env={"RAYON_NUM_THREADS": "1"}).strip().splitlines()[-1])["seconds"]
        shutil.rmtree(work, ignore_errors=True)
        yield record("dedup_signatures_1thread", t_th, "rensa digest_matrix_from_flat_token_hashes (Rust)", t_rensa,
                     docs=n, shingles=int(len(h)), thresher_docs_per_s=round(n / t_th),
                     rensa_docs_per_s=round(n / t_rensa))
    except PeerUnavailable as e:
        print(f"# skipped: {e}", flush=True)
    yield record("dedup_signatures_1thread", t1, "datasketch MinHash.update_batch", t_ds,
                 docs=n, shingles=int(len(h)), thresher_docs_per_s=round(n / t1),
                 datasketch_docs_per_s=round(n / t_ds), datasketch_timed_docs=m_docs)
    yield record(f"dedup_signatures_{threads}threads", tn, "datasketch MinHash.update_batch", t_ds,
                 docs=n, thresher_docs_per_s=round(n / tn), datasketch_docs_per_s=round(n / t_ds),
                 thresher_shingling_s=round(t_shingle, 3),
                 thresher_shingle_plus_signature_docs_per_s=round(n / (t_shingle + tn)))


def bench_pipeline(label: str, path: Path, peers=("datatrove", "rensa", "text-dedup", "datasketch")):
    """One table: thresher and each peer on one corpus, scored against the exact join. Yields
    one record per peer; returns {tool: seconds} and the docs."""
    from benchmarks.peers import PeerUnavailable

    work = Path(tempfile.mkdtemp(prefix="thresher-bench-dedup-"))
    workers = os.cpu_count() or 1  # thresher runs local[*]
    seconds, scores, skipped = {}, {}, {}
    try:
        gc.collect()
        th_labels, th_removed, th_pairs, stats, rss, t_th = thresher_pipeline(path, work)
        t = pq.read_table(path, columns=["id", "text"])
        ids, texts = t.column("id").to_pylist(), t.column("text").to_pylist()
        del t
        gc.collect()
        t0 = time.perf_counter()
        ex_labels, ex_pairs = exact_pipeline(texts)
        seconds["exact"] = time.perf_counter() - t0
        seconds["thresher"] = t_th
        scores["thresher"] = quality(th_labels, th_removed, ex_labels, ex_pairs, th_pairs)
        scores["exact"] = quality(ex_labels, None, ex_labels, ex_pairs)
        for peer in peers:
            gc.collect()
            try:
                if peer == "datatrove":
                    lab, rem, seconds[peer] = datatrove_pipeline(path, work, workers)
                    scores[peer] = quality(lab, rem, ex_labels, ex_pairs)
                elif peer == "rensa":
                    lab, pairs, seconds[peer] = rensa_pipeline(texts, work)
                    scores[peer] = quality(lab, None, ex_labels, ex_pairs, pairs)
                elif peer == "datasketch":
                    t0 = time.perf_counter()
                    lab, pairs = datasketch_pipeline(texts)
                    seconds[peer] = time.perf_counter() - t0
                    scores[peer] = quality(lab, None, ex_labels, ex_pairs, pairs)
                elif peer == "text-dedup":
                    lab, rem, seconds[peer] = textdedup_pipeline(path, work, workers)
                    scores[peer] = quality(lab, rem, ex_labels, ex_pairs)
            except PeerUnavailable as e:
                skipped[peer] = str(e)
                print(f"# skipped: {e}", flush=True)
            except subprocess.TimeoutExpired as e:
                skipped[peer] = f"{peer}: did not finish in {e.timeout:.0f} s (THRESHER_PEER_TIMEOUT)"
                print(f"# {skipped[peer]}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    # Local mode: the driver JVM runs the executors' tasks; the Python workers are the
    # executors' Python side.
    peak = {"driver_python": round(rss.peak["driver_python_mb"]), "driver_and_executor_jvm": round(rss.peak["jvm_mb"]),
            "executor_python_workers": round(rss.peak["python_workers_mb"])}
    names = {"datatrove": f"DataTrove 0.10.1 minhash 16x8, {workers} workers (own venv)",
             "rensa": "rensa RMinHash+RMinHashLSH 16x8+union-find (own venv)",
             "datasketch": "datasketch MinHash+MinHashLSH+union-find",
             "text-dedup": f"text-dedup 0.4.1 minhash, verified, {workers} processes (own venv, Python 3.12)",
             "exact": "SetSimilaritySearch all_pairs (exact)+union-find"}
    common = {"docs": len(ids), "true_pairs": len(ex_pairs), "thresher": scores["thresher"],
              "thresher_stats": {k: stats[k] for k in ("bands", "rows", "candidate_pairs", "verified_pairs",
                                                        "dropped_pairs", "components", "cc_rounds", "step_s")},
              "peak_rss_mb": peak, "load_avg_1m": round(os.getloadavg()[0], 2), "cpu_count": workers}
    for peer in [p for p in (*peers, "exact") if p in seconds]:
        yield record(f"dedup_fuzzy_{label}", t_th, names[peer], seconds[peer], peer_quality=scores[peer], **common)
    for peer, why in skipped.items():
        yield {"bench": f"dedup_fuzzy_{label}", "peer": peer, "skipped": why}
    return len(ids), seconds, peak


def run(quick: bool = False):
    from benchmarks.families import family_corpus

    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    yield from bench_signatures(quick)
    yield from bench_pipeline("families_21k", family_corpus())
    small = yield from bench_pipeline("64k", CORPUS)
    if quick:
        return
    from benchmarks.replicate import replicated_corpus

    big = yield from bench_pipeline("640k", replicated_corpus(10))
    # Growth: time ratio over size ratio (1 = linear), each tool's.
    size = big[0] / small[0]
    yield {"bench": "dedup_fuzzy_growth_64k_to_640k", "docs": [small[0], big[0]],
           **{f"{k}_s": [round(small[1][k], 2), round(big[1][k], 2)] for k in big[1] if k in small[1]},
           **{f"{k}_growth_vs_linear": round(big[1][k] / small[1][k] / size, 3) for k in big[1] if k in small[1]},
           "peak_rss_mb": {"64k": small[2], "640k": big[2]}}
