"""What both paths end with: the stage's tables and stats from its `duplicates` table."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from thresher.stages.fuzzy_dedup import Config


def bin_label(e: int) -> str:
    """The power-of-two bin of component sizes 2^(e-1)+1 .. 2^e: "2", "3-4", "5-8", ..."""
    lo, hi = 2 ** (e - 1) + 1, 2 ** e
    return str(hi) if lo >= hi else f"{lo}-{hi}"


def size_bins(sizes) -> dict:
    """Component sizes (>= 2) in power-of-two bins, {"2": n, "3-4": n, "5-8": n, ...}."""
    # ceil(log2) as component_stats computes it in Spark (exact at the powers of two).
    e = np.ceil(np.log2(np.asarray(sizes, dtype=np.float64))).astype(np.int64)
    return {bin_label(int(k)): int(c) for k, c in zip(*np.unique(e, return_counts=True))}


def components_summary(components: int, members: int, hist: dict) -> dict:
    """The components' part of the stats, as both paths report it."""
    return {"components": components, "docs_in_components": members, "docs_removed": members - components,
            "component_sizes": hist}


def component_stats(dups) -> dict:
    """Components, documents in them, and component sizes in power-of-two bins
    ({"2": n, "3-4": n, "5-8": n, ...}), in one small aggregate."""
    from pyspark.sql import functions as F

    sizes = dups.groupBy("component_id").count()
    rows = (sizes.withColumn("e", F.ceil(F.log2(F.col("count").cast("double"))).cast("int"))
            .groupBy("e").agg(F.count(F.lit(1)).alias("components"), F.sum("count").alias("docs")).collect())
    hist, comps, docs = {}, 0, 0
    for r in sorted(rows, key=lambda r: r["e"]):
        hist[bin_label(r["e"])] = int(r["components"])
        comps += int(r["components"])
        docs += int(r["docs"])
    return components_summary(comps, docs, hist)


def stage_stats(cfg: Config, bands, rows, n_cand, n_ok, biggest, rounds, comp: dict) -> dict:
    return {
        "bands": bands, "rows": rows, "num_perm": cfg.num_perm, "threshold": cfg.threshold,
        "shingle": f"{cfg.shingle.kind} {cfg.shingle.n}-grams",
        "largest_bucket": biggest,
        "candidate_pairs": n_cand,
        "verified_pairs": n_ok if cfg.verify else None,
        "dropped_pairs": n_cand - n_ok if cfg.verify else None,
        "cc_rounds": rounds,
        **comp,
    }


def outputs(docs, dups, stats: dict, cfg: Config) -> dict:
    """The stage's tables from `duplicates`: the removed documents and the kept ones (the
    removed ids are broadcast to that anti join while there are at most `broadcast_labels`)."""
    from pyspark.sql import functions as F

    removed = dups.where(~F.col("is_representative")).select(
        "id", F.lit("fuzzy_dedup").alias("stage"), F.lit("near_duplicate").alias("reason"),
        F.col("representative_id").alias("by_id"), F.col("similarity").alias("score"),
    )
    gone = removed.select("id")
    kept = docs.join(F.broadcast(gone) if stats["docs_removed"] <= cfg.broadcast_labels else gone, "id", "left_anti")
    return {"documents": kept, "removed": removed, "duplicates": dups, "stats": stats}
