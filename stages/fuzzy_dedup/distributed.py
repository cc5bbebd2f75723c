"""The distributed path: buckets, verification, components and survivors as Spark jobs."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from thresher.stages.arrow_bytes import binary_values
from thresher.stages.fuzzy_dedup.results import component_stats, outputs, stage_stats
from thresher.stages.fuzzy_dedup.signing import SIGNED, sign_batches

if TYPE_CHECKING:
    from thresher.stages.fuzzy_dedup import Config


def reference_batches(cfg: Config, out_schema: pa.Schema, drop_reference: bool):
    """mapInArrow function over rows (g, id, s, *extra) sorted so that each group g is
    contiguous and its first row is the group's reference: yields (g, ref, id, *extra, j), j the
    similarity of the row's `s` to the reference's (exact Jaccard of the sets, or the share of
    agreeing signature values). With `drop_reference` the reference rows themselves are left out
    and each group must start with the row whose id is g (the LSH hub).

    A group may run across Arrow batches: its reference is carried to the next batch."""
    verify, num_perm = cfg.verify, cfg.num_perm

    def fn(batches):
        import pyarrow.compute as pc

        from thresher.kernels.minhash import jaccard_pairs, signature_agreement
        from thresher.kernels.threads import limit_task_threads
        from thresher.schemas.errors import StageError

        limit_task_threads()
        carry = None  # (g, reference id, reference values) of the last group seen
        for batch in batches:
            n = batch.num_rows
            if n == 0:
                continue
            g, ids = batch.column(0), batch.column(1)
            off, val = binary_values(batch.column(2), np.uint64 if verify else np.uint32)
            first = np.ones(n, bool)
            if n > 1:
                first[1:] = pc.not_equal(g.slice(1), g.slice(0, n - 1)).to_numpy(zero_copy_only=False)
            if carry is not None and g[0].as_py() == carry[0]:
                first[0] = False
            if drop_reference and first.any() and not pc.all(pc.equal(g.filter(first), ids.filter(first))).as_py():
                raise StageError("fuzzy_dedup: a candidate group does not start with its hub")
            ref = np.maximum.accumulate(np.where(first, np.arange(n), -1))
            cont = ref < 0
            ref_ids = ids
            if cont.any():  # the rows before the first group start belong to the carried group
                ref[cont] = n
                off = np.append(off, off[-1] + len(carry[2]))
                val = np.concatenate([val, carry[2]])
                ref_ids = pa.concat_arrays([ids, pa.array([carry[1]], ids.type)])
            rows = np.arange(n)
            if verify:
                j = jaccard_pairs(off, val, ref, rows)
            else:
                sig = val.reshape(-1, num_perm)
                j = signature_agreement(sig[ref], sig[rows])
            r = int(ref[-1])
            carry = (g[n - 1].as_py(), ref_ids[r].as_py(), val[off[r]:off[r + 1]].copy())
            cols = [g, ref_ids.take(pa.array(ref)), ids] + [batch.column(k) for k in range(3, batch.num_columns)]
            out = pa.RecordBatch.from_arrays(cols + [pa.array(j)], schema=out_schema)
            yield out.filter(pa.array(~first)) if drop_reference else out

    return fn


def with_reference(frame, cfg: Config, drop_reference: bool):
    """(g, id, s, *extra), each group contiguous and led by its reference -> (g, ref, id, *extra, j)."""
    from pyspark.sql import functions as F
    from pyspark.sql.pandas.types import from_arrow_schema, to_arrow_schema

    extra = frame.columns[3:]
    out = to_arrow_schema(frame.select("g", F.col("id").alias("ref"), "id", *extra, F.lit(0.0).alias("j")).schema)
    return frame.mapInArrow(reference_batches(cfg, out, drop_reference), from_arrow_schema(out))


def run_distributed(docs, tables, cfg: Config, bands: int, rows: int, has_quality: bool):
    """Steps 1-5 as Spark jobs: (the stage's outputs, the scored candidate pairs (a, b, size, j))."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    from thresher.stages.components import connected_components, materialise, rank_key, with_quality

    reliable = cfg.checkpoint == "reliable"
    # 1. One pass over the texts; the per-document table is read three times (buckets,
    # verification, survivors), so it is cached the first time it is computed.
    signed = docs.select("id", "text").mapInArrow(sign_batches(cfg, bands, rows), SIGNED).persist()

    # 2. Buckets: a bucket's size and smallest id (its hub) come from a window over the bucket
    # key, which spills rather than holding a big bucket's member list. Above `bucket_all_pairs`
    # documents every member is linked to the hub; up to it the bucket's ids (at most that many)
    # are collected, sorted, and one SQL expression emits every pair (lo, hi). Each pair's left
    # id also gets its own row (a, a), which leads its group below. Keys of different bands are
    # different hashes, so the key alone names the bucket.
    t0 = time.perf_counter()
    cap = max(1, cfg.bucket_all_pairs)
    w = Window.partitionBy("k")
    sized = (signed.select("id", F.explode("bk").alias("k"))
             .withColumn("hub", F.min("id").over(w)).withColumn("size", F.count(F.lit(1)).over(w))
             .where(F.col("size") > 1))
    stars = sized.where(F.col("size") > cap).select(F.col("hub").alias("a"), F.col("id").alias("b"), "size")
    pair = "named_struct('a', ids[i], 'b', {0}, 'size', {1})"
    all_pairs = (f"flatten(transform(sequence(0, size - 2), i -> concat(array({pair.format('ids[i]', 'CAST(0 AS BIGINT)')}), "
                 f"transform(slice(ids, i + 2, size - i - 1), x -> {pair.format('x', 'size')}))))")
    small = (sized.where(F.col("size") <= cap).groupBy("k")
             .agg(F.array_sort(F.collect_list("id")).alias("ids"), F.first("size").alias("size"))
             .select(F.explode(F.expr(all_pairs)).alias("p")).select("p.*"))
    linked = stars.unionByName(small).groupBy("a", "b").agg(F.max("size").alias("size"))

    # 3. Verification (or estimates): each hub's rows gathered, the hub first, and every member
    # compared with it in one kernel call per Arrow batch; the sets travel once, with the rows.
    with_sets = linked.join(signed.select(F.col("id").alias("b"), "s"), "b")
    grouped = (with_sets.repartition("a").sortWithinPartitions("a", F.col("b") != F.col("a"), "b")
               .select(F.col("a").alias("g"), F.col("b").alias("id"), "s", "size"))
    scored = with_reference(grouped, cfg, drop_reference=True).select(
        F.col("g").alias("a"), F.col("id").alias("b"), "size", "j")
    scored = materialise(scored, reliable)
    t1 = time.perf_counter()
    agg = scored.agg(F.count(F.lit(1)).alias("n"), F.sum((F.col("j") >= cfg.threshold).cast("long")).alias("ok"),
                     F.max("size").alias("biggest")).collect()[0]
    n_cand, n_ok, biggest = int(agg["n"]), int(agg["ok"] or 0), int(agg["biggest"] or 0)
    edges = scored.where(F.col("j") >= F.lit(cfg.threshold)) if cfg.verify else scored
    t2 = time.perf_counter()

    # 4. Components, 5. survivors: each component's members sorted by the survivor rule, the
    # survivor first, and every member compared with it by the same kernel.
    n_edges = n_ok if cfg.verify else n_cand
    labels, rounds = connected_components(edges.select("a", "b"), "a", "b", cfg.max_cc_rounds, reliable,
                                          contract_partitions=max(1, -(-n_edges // cfg.cc_task_edges)))
    t3 = time.perf_counter()
    # Components hold at most 2 x edges nodes: while that is small, the labels go to every
    # task and the per-document table is read where it lies instead of shuffled by id.
    if 2 * n_edges <= cfg.broadcast_labels:
        labels = F.broadcast(labels)
    members = labels.join(signed.select(F.col("id").alias("node"), "_length", "s"), "node").select(
        F.col("node").alias("id"), F.col("label").alias("g"), "_length", "s")
    members, _ = with_quality(members, docs, tables, cfg.survivor)
    ranked = (members.withColumn("_rk", rank_key(cfg.survivor, has_quality))
              .repartition("g").sortWithinPartitions("g", "_rk").select("g", "id", "s"))
    sims = with_reference(ranked, cfg, drop_reference=False)
    is_rep = F.col("ref") == F.col("id")
    dups = sims.select(
        "id", F.col("g").alias("component_id"), F.col("ref").alias("representative_id"),
        is_rep.alias("is_representative"), F.when(is_rep, F.lit(1.0)).otherwise(F.col("j")).alias("similarity"),
    )
    dups = materialise(dups, reliable)
    signed.unpersist()
    t4 = time.perf_counter()
    comp = component_stats(dups)
    stats = stage_stats(cfg, bands, rows, n_cand, n_ok, biggest, rounds, comp)
    stats["step_s"] = {"signatures_buckets_verify": round(t1 - t0, 3), "pair_counts": round(t2 - t1, 3),
                       "components": round(t3 - t2, 3), "survivors": round(t4 - t3, 3),
                       "stats": round(time.perf_counter() - t4, 3)}
    return outputs(docs, dups, stats, cfg), scored
