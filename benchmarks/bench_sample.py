"""Balanced hierarchical sampling against uniform random sampling: a 10% sample of the Debian
corpus, compared by the Debian sections it covers and their entropy (the sections are never shown
to thresher: it sees only the embeddings).

thresher: the sample stage (balanced, temperature 0) over a HierarchicalKMeans tree (1 level, and
2 levels with resampling), with and without the flow's semantic dedup before it (cos >= 0.9 inside
each level-1 cluster, closest to the centroid kept), over 3 seeds.
peer: Spark's DataFrame.sample (uniform, the usual baseline), on the same pool.
Data: every 4th description (16,000). Vectors: all-MiniLM-L6-v2 through the embed stage's
encoder (bf16 where the CPU has it; the whole corpus in fp32 takes about 40 minutes on 2 cores);
with --quick, TF-IDF + SVD.
"""

from __future__ import annotations

from thresher.stages.base import run_stage
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks.common import record
from benchmarks.data import corpus


def _vectors(texts: list[str], quick: bool) -> tuple[np.ndarray, str]:
    if quick:
        from sklearn.decomposition import TruncatedSVD
        from sklearn.feature_extraction.text import TfidfVectorizer

        X = TfidfVectorizer(sublinear_tf=True, min_df=2, max_features=50000).fit_transform(texts)
        return TruncatedSVD(128, random_state=0).fit_transform(X).astype(np.float32), "tfidf-svd128"
    import torch

    from thresher.stages import embed

    torch.set_num_threads(os.cpu_count() or 1)
    cfg = embed.Config()
    path, label = embed.resolve_model(cfg.model)
    precision, _ = embed.resolve_precision("auto", "cpu")
    model, _ = embed.load_model(str(path), "cpu")
    enc = embed.Encoder(model, cfg, "cpu", precision)
    X = np.vstack([enc.encode(texts[s:s + 2048], [str(i) for i in range(s, min(len(texts), s + 2048))])
                   for s in range(0, len(texts), 2048)])
    return X.astype(np.float32), f"{label} ({precision})"


def _entropy(labels) -> float:
    _, c = np.unique(labels, return_counts=True)
    p = c / c.sum()
    return float(-(p * np.log(p)).sum())


def run(quick: bool):
    t = corpus().select(["id", "text", "section"])
    t = t.take(np.arange(0, t.num_rows, 4))
    ids = t.column("id").to_pylist()
    sections = np.array(t.column("section").to_pylist())
    t0 = time.perf_counter()
    X, model_name = _vectors(t.column("text").to_pylist(), quick)
    embed_s = time.perf_counter() - t0
    k1, k2 = 160, 16
    trees = {
        f"1 level ({k1})": [{"n_clusters": k1}],
        f"2 levels ({k1}, {k2}) + resampling": [
            {"n_clusters": k1, "n_resampling_steps": 10, "sample_size": 10},
            {"n_clusters": k2, "n_resampling_steps": 10, "sample_size": 3}],
    }
    for tree, levels in trees.items():
        yield from _compare(tree, levels, ids, sections, X, model_name, embed_s)


def _compare(tree, levels, ids, sections, X, model_name, embed_s, seeds=(0, 1, 2)):
    from thresher.flows.config import SparkConfig
    from thresher.flows.spark import get_spark
    from thresher.kernels.hkmeans import HierarchicalKMeans
    from thresher.stages import sample
    from thresher.stages.semantic_dedup import removed_mask

    ids = np.asarray(ids)
    spark = get_spark(SparkConfig(master="local[2]", driver_memory="4g", shuffle_partitions=8))
    budget = len(ids) // 10
    pos = {i: k for k, i in enumerate(ids.tolist())}
    for semdedup in (False, True):
        rows, times_t, times_p, cluster_s, lv1 = [], [], [], [], None
        for seed in seeds:
            t0 = time.perf_counter()
            hk = HierarchicalKMeans(levels=levels, seed=seed, normalize=True).fit(X)
            cluster_s.append(time.perf_counter() - t0)
            labels = np.asarray(hk.labels_).reshape(len(ids), -1)
            dist = np.asarray(hk.distances_)
            pool = np.flatnonzero(~removed_mask(X, labels[:, 0], dist, ids, 0.1)) if semdedup else np.arange(len(ids))
            with tempfile.TemporaryDirectory() as tmp:
                tmp = Path(tmp)
                pq.write_table(pa.table({"id": ids[pool], "text": pa.array(["-"] * len(pool))}), tmp / "documents.parquet")
                cols = {"id": ids[pool], **{f"level_{i + 1}": pa.array(labels[pool, i], pa.int32()) for i in range(labels.shape[1])},
                        "distance": pa.array(dist[pool], pa.float32()), "rank": pa.array(np.zeros(len(pool)), pa.int32())}
                pq.write_table(pa.table(cols), tmp / "clusters.parquet")
                docs = spark.read.parquet(str(tmp / "documents.parquet"))
                clusters = spark.read.parquet(str(tmp / "clusters.parquet"))
                t0 = time.perf_counter()
                out = run_stage(spark, sample, {"documents": docs, "clusters": clusters}, sample.Config(budget=budget, seed=seed))
                chosen = [r["id"] for r in out["selection"].select("id").collect()]
                times_t.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                uniform = [r["id"] for r in docs.sample(fraction=budget / len(pool), seed=seed).select("id").collect()]
                times_p.append(time.perf_counter() - t0)
                lv1 = lv1 or out["stats"]["levels"]["level_1"]
            bal = sections[[pos[i] for i in chosen]]
            uni = sections[[pos[i] for i in uniform]]
            rows.append((len(set(bal)), len(set(uni)), _entropy(bal), _entropy(uni), len(pool)))
        r = np.array(rows, dtype=float)
        yield record(
            "sample_balanced_vs_uniform_10pct", float(np.median(times_t)), "spark DataFrame.sample", float(np.median(times_p)),
            documents=len(ids), vectors=model_name, tree=tree, semantic_dedup_first=semdedup, seeds=list(seeds),
            pool=r[:, 4].astype(int).tolist(), embed_s=round(embed_s, 1), cluster_s=round(float(np.median(cluster_s)), 1),
            sections_total=int(len(set(sections))),
            sections_balanced=r[:, 0].astype(int).tolist(), sections_uniform=r[:, 1].astype(int).tolist(),
            section_entropy_balanced=np.round(r[:, 2], 4).tolist(), section_entropy_uniform=np.round(r[:, 3], 4).tolist(),
            mean_sections_balanced=round(float(r[:, 0].mean()), 2), mean_sections_uniform=round(float(r[:, 1].mean()), 2),
            cluster_entropy_of_max_before=lv1["before"]["entropy_of_max"], cluster_entropy_of_max_after=lv1["after"]["entropy_of_max"],
            gini_before=lv1["before"]["gini"], gini_after=lv1["after"]["gini"],
        )
