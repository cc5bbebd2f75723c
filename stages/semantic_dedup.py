"""semantic_dedup: SemDeDup (Abbas et al. 2023) inside each level-1 cluster.

Documents of a cluster are put in keep order (highest quality first, or closest to the centroid
first; ties by id). Going down that order, a document whose cosine similarity to an already kept
document is at least 1 - eps is removed, with the kept document as `by_id` and the similarity as
`score`. Clusters are independent, so each one is a group of `groupBy(level_1).applyInArrow`:
one task holds one cluster's vectors and a block of similarity rows at a time.

The similar pairs are found once, for the largest eps asked for; the greedy pass then runs on
that sparse pair list for every value in `report_eps`, so the count removed per eps is reported
without computing any similarity twice.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, field_validator

from thresher.stages.base import StageConfig, StageSpec
from thresher.schemas.errors import ConfigError



class Config(StageConfig):
    # Remove a document whose cosine similarity to a kept one is >= 1 - eps.
    eps: float = Field(0.05, gt=0, lt=1)
    # Report how many documents each of these eps values would remove (same pass, no recompute).
    report_eps: list[float] = Field(default_factory=lambda: [0.01, 0.02, 0.05, 0.1, 0.15, 0.2])
    # Which document of a near-duplicate group stays: quality (highest score first), centroid
    # (closest to its level-1 centroid first), or auto (quality when a quality table exists).
    keep: Literal["auto", "quality", "centroid"] = "auto"
    # Similarity rows computed at once; bounds a task's memory to block_rows x cluster size floats.
    block_rows: int = Field(1024, ge=1)

    @field_validator("report_eps")
    @classmethod
    def _eps(cls, v):
        for e in v:
            if not 0 < e < 1:
                raise ValueError(f"every eps must be in (0, 1), got {e}")
        return sorted(set(v))


# ---------------------------------------------------------------------------------- kernel
def similar_pairs(V: np.ndarray, threshold: float, block_rows: int = 1024):
    """Pairs (i, j) with j < i and cos(V_i, V_j) >= threshold, rows already unit length.

    Returns (i, j, sim) arrays sorted by i then j."""
    n = len(V)
    I, J, S = [], [], []
    for s in range(0, n, block_rows):
        e = min(n, s + block_rows)
        sims = V[s:e] @ V[:e].T  # only earlier rows matter
        rows = np.arange(s, e)[:, None]
        mask = (sims >= threshold) & (np.arange(e)[None, :] < rows)
        bi, bj = np.nonzero(mask)
        I.append(bi + s)
        J.append(bj)
        S.append(sims[bi, bj])
    if not I:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    return np.concatenate(I).astype(np.int64), np.concatenate(J).astype(np.int64), np.concatenate(S)


def greedy_keep(n: int, I: np.ndarray, J: np.ndarray, S: np.ndarray, threshold: float):
    """Walk rows in order; row i goes when a kept earlier row j has sim >= threshold.

    Returns (removed mask, by row (-1 where kept), similarity to it). By is the most similar
    kept row, the earliest on ties."""
    removed = np.zeros(n, dtype=bool)
    by = np.full(n, -1, dtype=np.int64)
    sim = np.full(n, np.nan)
    sel = S >= threshold
    I, J, S = I[sel], J[sel], S[sel]
    if len(I) == 0:
        return removed, by, sim
    starts = np.flatnonzero(np.r_[True, I[1:] != I[:-1]])
    ends = np.r_[starts[1:], len(I)]
    for a, b in zip(starts, ends):
        i = I[a]
        j = J[a:b]
        alive = ~removed[j]
        if alive.any():
            s = S[a:b][alive]
            k = int(np.argmax(s))  # first maximum: the earliest j among equals
            removed[i] = True
            by[i] = j[alive][k]
            sim[i] = float(s[k])
    return removed, by, sim


def semdedup_ref(V: np.ndarray, eps: float):
    """Plain O(n^2) loop over rows in order (the definition, for tests)."""
    V = np.asarray(V, dtype=np.float64)
    kept: list[int] = []
    removed = np.zeros(len(V), dtype=bool)
    by = np.full(len(V), -1)
    for i in range(len(V)):
        best, best_j = -np.inf, -1
        for j in kept:
            s = float(V[i] @ V[j])
            if s > best:
                best, best_j = s, j
        if best >= 1 - eps:
            removed[i] = True
            by[i] = best_j
        else:
            kept.append(i)
    return removed, by


def keep_order(ids, distance, quality=None) -> np.ndarray:
    """The order in which a cluster's documents are considered (earlier ones are kept): highest
    quality first (missing last) when given, else closest to the centroid; ties by id."""
    keys = [np.asarray(ids, dtype=object), np.nan_to_num(np.asarray(distance, np.float64), nan=np.inf)]
    if quality is not None:
        keys.append(-np.nan_to_num(np.asarray(quality, np.float64), nan=-np.inf))
    return np.lexsort(keys)


def removed_mask(V: np.ndarray, labels: np.ndarray, distance: np.ndarray, ids, eps: float,
                 block_rows: int = 1024) -> np.ndarray:
    """In memory, what the stage removes at `eps` with keep=centroid: a boolean per row of V,
    given each row's level-1 label, distance to its centroid and id. For experiments and
    benchmarks outside Spark; the stage itself works cluster by cluster in executors."""
    ids = np.asarray(ids, dtype=object)
    removed = np.zeros(len(V), bool)
    for c in np.unique(labels):
        m = np.flatnonzero(labels == c)
        m = m[keep_order(ids[m], distance[m])]
        I, J, S = similar_pairs(unit_rows(V[m]), 1.0 - eps, block_rows)
        removed[m] = greedy_keep(len(m), I, J, S, 1.0 - eps)[0]
    return removed


def unit_rows(V: np.ndarray) -> np.ndarray:
    V = np.asarray(V, dtype=np.float32)
    nrm = np.linalg.norm(V, axis=1, keepdims=True)
    return V / np.where(nrm > 0, nrm, 1)


OUT_SCHEMA = pa.schema([("id", pa.string()), ("by_id", pa.string()), ("score", pa.float64()),
                        ("eps", pa.float64()), ("removed_n", pa.int64())])


def dedup_cluster(table: pa.Table, eps: float, report_eps: list[float], use_quality: bool, block_rows: int) -> pa.Table:
    """One cluster: the removed documents at `eps`, plus one count row per eps in report_eps."""
    n = table.num_rows
    ids = np.array(table.column("id").to_pylist(), dtype=object)
    dist = table.column("distance").to_numpy(zero_copy_only=False)
    q = table.column("_q").to_numpy(zero_copy_only=False) if use_quality else None
    order = keep_order(ids, dist, q)
    vec = table.column("vector")
    if isinstance(vec, pa.ChunkedArray):
        vec = vec.combine_chunks()
    V = pc.list_flatten(vec).to_numpy(zero_copy_only=False).astype(np.float32).reshape(n, -1)
    V = unit_rows(V[order])
    ids = ids[order]
    all_eps = sorted(set(report_eps) | {eps})
    I, J, S = similar_pairs(V, 1.0 - max(all_eps), block_rows)
    out_id, out_by, out_s, out_eps, out_n = [], [], [], [], []
    for e in all_eps:
        removed, by, sim = greedy_keep(n, I, J, S, 1.0 - e)
        if e == eps:
            gone = np.flatnonzero(removed)
            out_id += ids[gone].tolist()
            out_by += ids[by[gone]].tolist()
            out_s += sim[gone].tolist()
            out_eps += [None] * len(gone)
            out_n += [None] * len(gone)
        out_id.append(None)
        out_by.append(None)
        out_s.append(None)
        out_eps.append(float(e))
        out_n.append(int(removed.sum()))
    return pa.table([pa.array(out_id, pa.string()), pa.array(out_by, pa.string()), pa.array(out_s, pa.float64()),
                     pa.array(out_eps, pa.float64()), pa.array(out_n, pa.int64())], schema=OUT_SCHEMA)


# ---------------------------------------------------------------------------------- stage
def run(spark, tables, cfg: Config, ctx):
    from pyspark import StorageLevel
    from pyspark.sql import functions as F
    from pyspark.sql.pandas.types import from_arrow_schema

    docs = tables["documents"]
    quality = tables.get("quality")
    keep = cfg.keep
    if keep == "auto":
        keep = "quality" if quality is not None else "centroid"
    if keep == "quality" and quality is None:
        raise ConfigError("semantic_dedup.keep: quality needs the quality table: put the quality stage before semantic_dedup")
    use_quality = keep == "quality"
    pool = (docs.select("id")
            .join(tables["embeddings"].select("id", "vector"), "id", "inner")
            .join(tables["clusters"].select("id", "level_1", F.col("distance").cast("double").alias("distance")), "id", "inner"))
    if use_quality:
        pool = pool.join(quality.select("id", F.col("score").cast("double").alias("_q")), "id", "left")
    eps, report_eps, block = float(cfg.eps), list(cfg.report_eps), int(cfg.block_rows)

    def per_cluster(table: pa.Table) -> pa.Table:
        from thresher.kernels.threads import limit_task_threads

        limit_task_threads()
        return dedup_cluster(table, eps, report_eps, use_quality, block)

    res = (pool.groupBy("level_1").applyInArrow(per_cluster, from_arrow_schema(OUT_SCHEMA))
           .persist(StorageLevel.MEMORY_AND_DISK))
    gone = res.where(F.col("id").isNotNull())
    removed = ctx.removed(gone, "semantic_duplicate", by_id="by_id", score="score")
    rows = (res.where(F.col("id").isNull()).groupBy("eps")
            .agg(F.sum("removed_n").alias("n"), F.count(F.lit(1)).alias("clusters")).collect())
    counts = {float(r["eps"]): int(r["n"]) for r in rows}
    stats = {"eps": eps, "keep": keep, "clusters": max((int(r["clusters"]) for r in rows), default=0),
             "removed_per_eps": {f"{e:g}": counts.get(e, 0) for e in sorted(set(report_eps) | {eps})}}
    return {"removed": removed, "stats": stats}


SPEC = StageSpec(name="semantic_dedup", inputs=("documents", "embeddings", "clusters"), optional_inputs=("quality",),
                 needs=lambda cfg: ("quality",) if cfg.keep == "quality" else (), outputs=("removed",), removes=True)
