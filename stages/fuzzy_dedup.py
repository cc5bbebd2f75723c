"""fuzzy_dedup: MinHash/LSH near-duplicate removal, verified, with distributed components.

1. Executors shingle each Arrow batch (word or character n-grams of the normalised text) and
   compute MinHash signatures and LSH band hashes with the numba kernels of kernels/minhash.py;
   they emit one row per (document, band): (id, band, band hash).
2. Spark groups rows on (band, band hash). Every member of a bucket is linked to the bucket's
   smallest id (a star), so a bucket of k documents yields k-1 candidate pairs, never k(k-1)/2.
3. Verification (default): the exact Jaccard of each candidate pair on its shingle sets;
   pairs below `threshold` are dropped and counted.
4. Connected components of the verified pairs (stages/components.py, large-star/small-star).
5. One survivor per component by `survivor` (ties by id); the others go to `removed` with
   reason `near_duplicate`, by_id the survivor, score their Jaccard with it.

Nothing per document reaches the driver: it receives counts and the LSH parameters only.
"""

from __future__ import annotations

import time
from typing import Literal

import numpy as np
import pyarrow as pa
from pydantic import Field, model_validator

from thresher.flows.config import StageConfig
from thresher.flows.errors import ConfigError
from thresher.stages.text import NormaliseConfig, ShingleConfig

NAME = "fuzzy_dedup"
INPUTS = ("documents",)
OPTIONAL_INPUTS = ("quality",)
OUTPUTS = ("documents", "removed", "duplicates")


class Config(StageConfig):
    normalise: NormaliseConfig = Field(default_factory=NormaliseConfig)
    shingle: ShingleConfig = Field(default_factory=ShingleConfig)
    threshold: float = Field(0.7, gt=0.0, le=1.0)
    num_perm: int = Field(128, ge=2, le=1024)
    # Weights datasketch's optimiser gives to the false positive and false negative
    # probability areas when it picks bands x rows. Verification removes false positives, so
    # missing a pair costs more than checking one: 0.1/0.9 gives 20 x 6 at 0.7 (datasketch's
    # own 0.5/0.5 gives 14 x 9, which finds a pair at exactly 0.7 only 44% of the time).
    false_positive_weight: float = Field(0.1, ge=0.0, le=1.0)
    false_negative_weight: float = Field(0.9, ge=0.0, le=1.0)
    # Set both to override the optimiser.
    bands: int | None = Field(None, ge=1)
    rows: int | None = Field(None, ge=1)
    # Exact Jaccard of every candidate pair; off: MinHash estimates, no pair dropped.
    verify: bool = True
    survivor: Literal["longest", "quality", "smallest_id"] = "longest"
    max_cc_rounds: int = Field(64, ge=1)
    # local: intermediate tables live on the executors (fast); reliable: also written to the
    # checkpoint folder, so a lost executor does not lose them (clusters).
    checkpoint: Literal["local", "reliable"] = "local"

    @model_validator(mode="after")
    def _check(self):
        if (self.bands is None) != (self.rows is None):
            raise ValueError("bands and rows: set both or neither")
        if self.bands is not None and self.bands * self.rows > self.num_perm:
            raise ValueError(f"bands x rows = {self.bands * self.rows} exceeds num_perm = {self.num_perm}")
        if abs(self.false_positive_weight + self.false_negative_weight - 1.0) > 1e-9:
            raise ValueError("false_positive_weight + false_negative_weight must be 1")
        return self


def lsh_params(cfg: Config) -> tuple[int, int]:
    """(bands, rows): the config's, or datasketch's optimum for the threshold and weights."""
    if cfg.bands is not None:
        return cfg.bands, cfg.rows
    from datasketch.lsh import _optimal_param

    b, r = _optimal_param(cfg.threshold, cfg.num_perm, cfg.false_positive_weight, cfg.false_negative_weight)
    return int(b), int(r)


# ------------------------------------------------------------------------------------ executors
_BANDS_OUT = pa.schema([("id", pa.string()), ("band", pa.int32()), ("bh", pa.int64())])


def band_batches(cfg: Config, bands: int, rows: int):
    """mapInArrow function: (id, text) batches -> one (id, band, band hash) row per band of
    every document that has shingles."""
    norm, shingle, num_perm, seed = cfg.normalise, cfg.shingle, cfg.num_perm, int(cfg.seed or 0)

    def fn(batches):
        from thresher.flows.spark import limit_task_threads
        from thresher.kernels.minhash import band_hashes, minhash_signatures, permutations, seed64
        from thresher.stages.text import shingle_hashes

        limit_task_threads()
        a, b = permutations(num_perm, seed)
        for batch in batches:
            off, h = shingle_hashes(batch.column(1), shingle, norm)
            sig = minhash_signatures(off, h, a, b)
            bh = band_hashes(sig, bands, rows, seed64(seed))
            has = np.flatnonzero(np.diff(off) > 0)
            if len(has) == 0:
                continue
            ids = batch.column(0).take(pa.array(np.repeat(has, bands)))
            band = np.tile(np.arange(bands, dtype=np.int32), len(has))
            yield pa.RecordBatch.from_arrays([ids, pa.array(band), pa.array(bh[has].ravel())], schema=_BANDS_OUT)

    return fn


def score_batches(cfg: Config, out_schema: pa.Schema):
    """mapInArrow function: (a, b, text_a, text_b, *extra) -> (a, b, *extra, j): the exact
    Jaccard of the shingle sets when verifying, else the MinHash estimate."""
    norm, shingle, num_perm, seed, verify = cfg.normalise, cfg.shingle, cfg.num_perm, int(cfg.seed or 0), cfg.verify

    def fn(batches):
        from thresher.flows.spark import limit_task_threads
        from thresher.kernels.minhash import jaccard_sorted, minhash_signatures, permutations, signature_agreement
        from thresher.stages.text import shingle_sets

        limit_task_threads()
        pa_, pb_ = permutations(num_perm, seed)
        for batch in batches:
            oa, va = shingle_sets(batch.column(2), shingle, norm)
            ob, vb = shingle_sets(batch.column(3), shingle, norm)
            if verify:
                j = jaccard_sorted(oa, va, ob, vb)
            else:
                j = signature_agreement(minhash_signatures(oa, va, pa_, pb_), minhash_signatures(ob, vb, pa_, pb_))
            cols = [batch.column(0), batch.column(1)] + [batch.column(k) for k in range(4, batch.num_columns)]
            yield pa.RecordBatch.from_arrays(cols + [pa.array(j)], schema=out_schema)

    return fn


def _scored(pairs, texts, cfg: Config):
    """pairs (a, b, *extra) -> (a, b, *extra, j), the texts joined in for the executors."""
    from pyspark.sql import functions as F

    extra = [c for c in pairs.columns if c not in ("a", "b")]
    ta = texts.select(F.col("id").alias("a"), F.col("text").alias("ta"))
    tb = texts.select(F.col("id").alias("b"), F.col("text").alias("tb"))
    return _score_frame(pairs.join(ta, "a").join(tb, "b").select("a", "b", "ta", "tb", *extra), cfg)


def _score_frame(frame, cfg: Config):
    """(a, b, ta, tb, *extra) -> (a, b, *extra, j)."""
    from pyspark.sql import functions as F
    from pyspark.sql.pandas.types import from_arrow_schema, to_arrow_schema

    extra = frame.columns[4:]
    out = to_arrow_schema(frame.select("a", "b", *extra, F.lit(0.0).alias("j")).schema)
    return frame.mapInArrow(score_batches(cfg, out), from_arrow_schema(out))


def component_stats(dups) -> dict:
    """Components, documents in them, and component sizes in power-of-two bins
    ({"2": n, "3-4": n, "5-8": n, ...}), in one small aggregate."""
    from pyspark.sql import functions as F

    sizes = dups.groupBy("component_id").count()
    rows = (sizes.withColumn("e", F.ceil(F.log2(F.col("count").cast("double"))).cast("int"))
            .groupBy("e").agg(F.count(F.lit(1)).alias("components"), F.sum("count").alias("docs")).collect())
    hist, comps, docs = {}, 0, 0
    for r in sorted(rows, key=lambda r: r["e"]):
        e = r["e"]
        lo, hi = 2 ** (e - 1) + 1, 2 ** e
        hist[str(hi) if lo >= hi else f"{lo}-{hi}"] = int(r["components"])
        comps += int(r["components"])
        docs += int(r["docs"])
    return {"components": comps, "docs_in_components": docs, "docs_removed": docs - comps, "component_sizes": hist}


# ------------------------------------------------------------------------------------ stage
def run(spark, tables, cfg: Config):
    return run_with_pairs(spark, tables, cfg)[0]


def run_with_pairs(spark, tables, cfg: Config):
    """The stage's result and its scored candidate pairs (a, b, size, j) for inspection: the
    pairs with j >= threshold are the verified edges of the components."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    from thresher.stages.components import connected_components, materialise, rank_within, with_quality

    bands, rows = lsh_params(cfg)
    if bands * rows > cfg.num_perm:
        raise ConfigError(f"fuzzy_dedup: bands x rows = {bands * rows} exceeds num_perm = {cfg.num_perm}")
    docs = tables["documents"]
    texts = docs.select("id", "text")
    has_quality = tables.get("quality") is not None or "quality" in docs.columns
    if cfg.survivor == "quality" and not has_quality:
        raise ConfigError("fuzzy_dedup.survivor: 'quality' needs a quality table from an earlier stage (or a `quality` column)")

    # 1-2. Band rows, buckets, star edges to each bucket's smallest id.
    band_rows = texts.mapInArrow(band_batches(cfg, bands, rows), "id string, band int, bh bigint")
    w = Window.partitionBy("band", "bh")
    linked = (band_rows.withColumn("hub", F.min("id").over(w)).withColumn("size", F.count(F.lit(1)).over(w))
              .where(F.col("id") != F.col("hub")))
    cand = linked.groupBy(F.col("hub").alias("a"), F.col("id").alias("b")).agg(F.max("size").alias("size"))

    # 3. Verification (or estimates), one pass; the counts come from one aggregate.
    t0 = time.perf_counter()
    scored = materialise(_scored(cand, texts, cfg), cfg.checkpoint == "reliable")
    t1 = time.perf_counter()
    agg = scored.agg(F.count(F.lit(1)).alias("n"), F.sum((F.col("j") >= cfg.threshold).cast("long")).alias("ok"),
                     F.max("size").alias("biggest")).collect()[0]
    n_cand, n_ok, biggest = int(agg["n"]), int(agg["ok"] or 0), int(agg["biggest"] or 0)
    edges = scored.where(F.col("j") >= F.lit(cfg.threshold)) if cfg.verify else scored
    t2 = time.perf_counter()

    # 4. Components, 5. survivors.
    labels, rounds = connected_components(edges.select("a", "b"), "a", "b", cfg.max_cc_rounds,
                                          cfg.checkpoint == "reliable")
    t3 = time.perf_counter()
    # Members with their texts, ranked within their component in one window; the survivor's
    # text rides along so each member's similarity to it needs no further join.
    members = labels.select(F.col("node").alias("id"), F.col("label").alias("group"))
    members = members.join(texts.withColumn("_length", F.length("text")), "id")
    members, _ = with_quality(members, docs, tables, cfg.survivor)
    ranked = rank_within(members, ["group"], cfg.survivor, has_quality, carry=("text",))
    sims = _score_frame(ranked.select(F.col("representative_id").alias("a"), F.col("id").alias("b"),
                                      F.col("_rep_text").alias("ta"), F.col("text").alias("tb"), "group"), cfg)
    is_rep = F.col("a") == F.col("b")
    dups = sims.select(
        F.col("b").alias("id"), F.col("group").alias("component_id"), F.col("a").alias("representative_id"),
        is_rep.alias("is_representative"), F.when(is_rep, F.lit(1.0)).otherwise(F.col("j")).alias("similarity"),
    )
    dups = materialise(dups, cfg.checkpoint == "reliable")
    t4 = time.perf_counter()
    removed = dups.where(~F.col("is_representative")).select(
        "id", F.lit(NAME).alias("stage"), F.lit("near_duplicate").alias("reason"),
        F.col("representative_id").alias("by_id"), F.col("similarity").alias("score"),
    )
    kept = docs.join(removed.select("id"), "id", "left_anti")

    stats = {
        "bands": bands, "rows": rows, "num_perm": cfg.num_perm, "threshold": cfg.threshold,
        "shingle": f"{cfg.shingle.kind} {cfg.shingle.n}-grams",
        "largest_bucket": biggest,
        "candidate_pairs": n_cand,
        "verified_pairs": n_ok if cfg.verify else None,
        "dropped_pairs": n_cand - n_ok if cfg.verify else None,
        "cc_rounds": rounds,
        **component_stats(dups),
    }
    stats["step_s"] = {"signatures_buckets_verify": round(t1 - t0, 3), "pair_counts": round(t2 - t1, 3),
                       "components": round(t3 - t2, 3), "survivors": round(t4 - t3, 3),
                       "stats": round(time.perf_counter() - t4, 3)}
    return {"documents": kept, "removed": removed, "duplicates": dups, "stats": stats}, scored
