"""`fuzzy_dedup.against`: steps (b) and (c) of stages/against.py for near-duplicates.

(b) The new documents are signed (signing.sign_batches, as the stage signs them) and their
bucket keys semi-joined with the reference's (bk, id): only reference rows under a key some new
document has are read, at most `against_bucket_cap` of them per key (the smallest ids), so one
giant reference bucket costs at most that many candidates for each new document in it. Each
candidate pair (new, reference) is scored by the stage's kernel (exact Jaccard of the shingle
sets, or the share of agreeing signature values without `verify`) and kept at >= threshold.
(c) Every new document whose new-only component holds a matched one is removed.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

if TYPE_CHECKING:
    from thresher.stages.fuzzy_dedup import Config

REASON = "near_duplicate_of_reference"
# Up to this many bytes of new documents' sets (or signatures) are broadcast to the tasks that
# read the reference's candidate sets, which are then scored where they lie; above it both
# sides shuffle to the new document's group.
BROADCAST_SET_BYTES = 256 << 20


def _scored_shuffled(new, ref_signed, pairs, cfg: Config):
    """(a, b, j) of every candidate pair: each new document leads its group, its candidates
    follow, and the stage's kernel scores every member against the group's first row."""
    from pyspark.sql import functions as F

    from thresher.stages.fuzzy_dedup.distributed import with_reference

    cand_sets = ref_signed.join(pairs.select(F.col("b").alias("id")).distinct(), "id", "left_semi").select("id", "s")
    members = pairs.join(cand_sets.withColumnRenamed("id", "b"), "b").select(
        F.col("a").alias("g"), F.col("b").alias("id"), "s", F.lit(1).alias("_o"))
    heads = new.join(pairs.select(F.col("a").alias("id")).distinct(), "id", "left_semi").select(
        F.col("id").alias("g"), "id", "s", F.lit(0).alias("_o"))
    grouped = (heads.unionByName(members).repartition("g").sortWithinPartitions("g", "_o", "id")
               .select("g", "id", "s"))
    return with_reference(grouped, cfg, drop_reference=True).select(F.col("g").alias("a"), F.col("id").alias("b"), "j")


def _scored_broadcast(spark, new, ref_signed, pairs, cfg: Config):
    """(a, b, j) of every candidate pair, no set shuffled: the new documents' sets go to every
    task (one broadcast), the candidate list of each reference document too (a broadcast join),
    and each task scores the reference rows it reads against them."""
    from pyspark.sql import functions as F

    from thresher.stages.arrow_bytes import binary_values

    t = new.select("id", "s").toArrow()
    dtype = np.uint64 if cfg.verify else np.uint32
    off, val = binary_values(t.column("s"), dtype)
    sets = spark.sparkContext.broadcast((t.column("id").combine_chunks(), off, val))
    lists = pairs.groupBy("b").agg(F.collect_list("a").alias("as"))
    rows = ref_signed.join(F.broadcast(lists), ref_signed["id"] == lists["b"]).select("b", "s", "as")
    return rows.mapInArrow(_score_batches(cfg, sets), "a string, b string, j double")


def _score_batches(cfg: Config, sets):
    """mapInArrow over (b, s, as: the new documents paired with b) -> (a, b, j), j by the
    stage's kernel: exact Jaccard of the sets, or the signatures' agreement without verify."""
    verify, num_perm = cfg.verify, cfg.num_perm
    dtype = np.uint64 if verify else np.uint32

    def fn(batches):
        import pyarrow.compute as pc

        from thresher.kernels.minhash import jaccard_pairs, signature_agreement
        from thresher.kernels.threads import limit_task_threads
        from thresher.stages.arrow_bytes import binary_values

        limit_task_threads()
        ids, noff, nval = sets.value
        for batch in batches:
            if batch.num_rows == 0:
                continue
            roff, rval = binary_values(batch.column(1), dtype)
            lists = batch.column(2)
            a = pc.list_flatten(lists)
            row = pc.list_parent_indices(lists).to_numpy().astype(np.int64)
            k = pc.index_in(a, value_set=ids).to_numpy().astype(np.int64)
            if verify:
                # One pool: this batch's reference sets, then the new sets it needs.
                need, y = np.unique(k, return_inverse=True)
                ln = noff[need + 1] - noff[need]
                start = np.repeat(noff[need] - np.concatenate(([0], np.cumsum(ln)[:-1])), ln)
                take = start + np.arange(int(ln.sum()))
                pool_off = np.concatenate((roff, roff[-1] + np.cumsum(ln)))
                pool_val = np.concatenate((rval, nval[take]))
                j = jaccard_pairs(pool_off, pool_val, row, len(roff) - 1 + y)
            else:
                j = signature_agreement(rval.reshape(-1, num_perm)[row], nval.reshape(-1, num_perm)[k])
            yield pa.RecordBatch.from_arrays([a, batch.column(0).take(pa.array(row)), pa.array(j, pa.float64())],
                                             names=["a", "b", "j"])

    return fn


def against_reference(spark, docs, out: dict, cfg: Config, bands: int, rows: int) -> dict:
    """The stage's result `out` (new-only dedup) with the reference matches applied."""
    from pyspark.sql import functions as F

    from thresher.stages import against
    from thresher.stages.components import materialise
    from thresher.stages.fuzzy_dedup.signing import SIGNED, sign_batches

    t0 = time.perf_counter()
    reliable = cfg.checkpoint == "reliable"
    cap = cfg.against_bucket_cap
    ref = against.resolve(cfg.against)
    ref_signed, ref_keys, source, ref_cached = against.fuzzy_reference(spark, ref, cfg, bands, rows)

    new = docs.select("id", "text").mapInArrow(sign_batches(cfg, bands, rows), SIGNED).persist()
    new_keys = new.select(F.col("id").alias("a"), F.explode("bk").alias("bk"))
    keys = new_keys.select("bk").distinct()
    # The new documents' keys go to every task reading the reference's keys while they are few
    # (8 bytes each); else both sides shuffle on the key.
    size = new.agg(F.count(F.lit(1)).alias("n"), F.sum(F.octet_length("s")).alias("bytes")).first()
    size = {"n": int(size["n"]), "bytes": int(size["bytes"] or 0)}
    if size["n"] * bands <= 4_000_000:
        keys = F.broadcast(keys)
    hits = ref_keys.join(keys, "bk", "left_semi")
    if "ids" not in ref_keys.columns:  # signed in this run: only the shared keys are listed
        hits = against.bucket_lists(hits, cap)
    hits = materialise(hits.select("bk", F.slice("ids", 1, cap).alias("ids"), "size"), reliable)
    pairs = materialise(new_keys.join(hits, "bk").select("a", F.explode("ids").alias("b")).distinct(), reliable)
    t1 = time.perf_counter()

    if size["bytes"] <= BROADCAST_SET_BYTES:
        scored = _scored_broadcast(spark, new, ref_signed, pairs, cfg)
    else:
        scored = _scored_shuffled(new, ref_signed, pairs, cfg)
    scored = materialise(scored, reliable)
    t2 = time.perf_counter()
    matched = scored.where(F.col("j") >= F.lit(cfg.threshold))
    # Best reference of each matched new document: highest similarity, ties smallest id.
    best = matched.groupBy("a").agg(F.min(F.struct((-F.col("j")).alias("nj"), F.col("b").alias("b"))).alias("m")).select(
        F.col("a").alias("id"), F.col("m.b").alias("ref"), (-F.col("m.nj")).alias("j"))

    # (c) Components of the new-only dedup; a document in none is its own.
    dups = out["duplicates"]
    comp_of = best.join(dups.select("id", "component_id"), "id", "left").select(
        "id", "ref", "j", F.coalesce("component_id", "id").alias("c"))
    comp_best = comp_of.groupBy("c").agg(F.min(F.struct((-F.col("j")).alias("nj"), F.col("ref").alias("ref"))).alias("m")).select(
        "c", F.col("m.ref").alias("cref"))
    in_comp = dups.select("id", F.col("component_id").alias("c"), "is_representative").join(comp_best, "c")
    # Direct matches name their own best reference and score; the rest of a matched
    # component its best reference, with no similarity measured between them.
    gone = (in_comp.join(best, "id", "full_outer")
            .select("id", F.coalesce("ref", "cref").alias("by_id"), F.col("j").alias("score"),
                    F.coalesce(~F.col("is_representative"), F.lit(False)).alias("_was_removed")))
    gone = materialise(gone, reliable)
    removed_ref = gone.select("id", F.lit("fuzzy_dedup").alias("stage"), F.lit(REASON).alias("reason"),
                              F.col("by_id").cast("string"), F.col("score").cast("double"))
    removed = out["removed"].join(gone.select("id"), "id", "left_anti").unionByName(removed_ref)

    # duplicates: a matched component's members all point at its reference now; a matched
    # document in no component is listed as one of its own.
    is_ref = gone.select("id", "by_id", "score")
    dups2 = (dups.join(is_ref, "id", "left")
             .select("id", "component_id",
                     F.coalesce("by_id", "representative_id").alias("representative_id"),
                     (F.col("is_representative") & F.col("by_id").isNull()).alias("is_representative"),
                     F.when(F.col("by_id").isNull(), F.col("similarity")).otherwise(F.col("score")).alias("similarity")))
    lone = gone.join(dups.select("id"), "id", "left_anti").select(
        "id", F.col("id").alias("component_id"), F.col("by_id").alias("representative_id"),
        F.lit(False).alias("is_representative"), F.col("score").alias("similarity"))
    dups2 = materialise(dups2.unionByName(lone), reliable)
    t3 = time.perf_counter()

    agg = scored.agg(F.count(F.lit(1)).alias("n"), F.sum((F.col("j") >= cfg.threshold).cast("long")).alias("ok"),
                     F.countDistinct("b").alias("refs")).first()
    g = gone.agg(F.count(F.lit(1)).alias("n"), F.countDistinct("by_id").alias("refs"),
                 F.count("score").alias("direct"), F.sum(F.col("_was_removed").cast("long")).alias("again")).first()
    capped = hits.where(F.col("size") > cap).count()
    stats = dict(out["stats"])
    stats["against"] = {
        "reference": ref.spec, "source": source, "bucket_cap": cap, "capped_buckets": capped,
        "candidate_pairs": int(agg["n"]), "verified_pairs": int(agg["ok"] or 0),
        "reference_candidates": int(agg["refs"]), "matched_directly": int(g["direct"]),
        "removed": int(g["n"]), "reference_docs_named": int(g["refs"]),
        "step_s": {"reference_buckets": round(t1 - t0, 3), "verify": round(t2 - t1, 3),
                   "components": round(t3 - t2, 3), "stats": round(time.perf_counter() - t3, 3)},
    }
    # A new document the new-only dedup removed and a reference match removes again counts once.
    stats["docs_removed"] = stats["docs_removed"] + int(g["n"]) - int(g["again"] or 0)
    new.unpersist()
    if ref_cached is not None:
        ref_cached.unpersist()
    return {**out, "removed": removed, "duplicates": dups2, "stats": stats}
