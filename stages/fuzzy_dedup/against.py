"""`fuzzy_dedup.against`: steps (b) and (c) of stages/against.py for near-duplicates.

(b) The new documents are signed (signing.sign_batches, as the stage signs them) and matched
with the reference's bucket rows (stages/against.bucket_rows): at most `against_bucket_cap` reference
documents per key (the smallest ids), so one giant reference bucket costs at most that many candidates for each new
document in it. Each candidate pair (new, reference) is scored by the stage's kernel (exact
Jaccard of the shingle sets, or the share of agreeing signature values without `verify`) and
kept at >= threshold. While the new documents are few enough to go to every task (their keys
and sets), one scan of the reference's buckets finds the pairs (`_probe_batch`, a sorted-key
search in numpy), the tasks ship them as a few Arrow IPC values, the driver groups them by
reference document (`group_pairs`; an index names its documents by number, so this is a sort
of integers), and one scan of its sets scores them where they lie; above that, both sides
shuffle on the key, then on the new document.
(c) Every new document whose new-only component holds a matched one is removed.
While they are few, the new documents are signed once, straight to the driver: their own dedup
(step (a), one_task.dedup_on_driver), the probe, the scoring and step (c) read that one table,
and the stage's tables are built in Arrow (`applied`), with no Spark job after the scoring.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from thresher.stages.arrow_bytes import ipc_buffer, ipc_table

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


def _probe_batch(batch, uk, start, docs, cap: int):
    """Reference bucket rows (bk, reference id or number, size: against.bucket_rows) -> (b: the
    reference, a: the number of a new document sharing that key) of each pair, and the hit keys
    above `cap`. `uk`: the new documents' sorted distinct keys; the documents under uk[i] are
    docs[start[i]:start[i + 1]]."""
    bk = batch.column(0).to_numpy(zero_copy_only=False)
    pos = np.minimum(np.searchsorted(uk, bk), len(uk) - 1)
    rows = np.flatnonzero(uk[pos] == bk)
    capped = int((batch.column(2).to_numpy(zero_copy_only=False)[rows] > cap).sum())
    p = pos[rows]
    # Each reference row pairs with every new document under its key.
    n_new = start[p + 1] - start[p]
    new_at = np.repeat(start[p] - (np.cumsum(n_new) - n_new), n_new) + np.arange(int(n_new.sum()))
    return batch.column(1).take(pa.array(np.repeat(rows, n_new))), docs[new_at].astype(np.int32), capped


def group_pairs(b, a) -> pa.Table:
    """(b: reference ids, or an index's numbers below 2**31; a: int32 numbers) pairs -> (b, as):
    each distinct b, in sorted order, with its distinct a's, sorted; the same table whatever
    order the pairs came in."""
    import pyarrow.compute as pc

    b = b.combine_chunks() if isinstance(b, pa.ChunkedArray) else b
    if pa.types.is_integer(b.type):
        values, code = None, b.to_numpy(zero_copy_only=False).astype(np.int64)
    else:
        enc = b.dictionary_encode()  # one hash pass; the dictionary is then ranked, not the pairs
        order = pc.array_sort_indices(enc.dictionary)
        rank = np.empty(len(order), np.int64)
        rank[order.to_numpy(zero_copy_only=False)] = np.arange(len(order))
        values, code = enc.dictionary.take(order), rank[enc.indices.to_numpy(zero_copy_only=False)]
    # Sort and mask: numpy 2.4's np.unique without return_* hashes first, 15x slower here.
    key = np.sort((code << 32) | np.asarray(a, np.int64))
    key = key[np.r_[True, key[1:] != key[:-1]]] if len(key) else key
    c = key >> 32
    first = np.flatnonzero(np.r_[True, c[1:] != c[:-1]]) if len(c) else np.zeros(0, np.int64)
    out_b = pa.array(c[first]) if values is None else values.take(pa.array(c[first]))
    return pa.table({"b": out_b, "as": pa.ListArray.from_arrays(pa.array(np.append(first, len(key)).astype(np.int32)),
                                                                pa.array((key & 0xFFFFFFFF).astype(np.int32)))})


def _pairs_of(tables) -> tuple:
    """(b, a) of shipped pair tables, concatenated (a task with no pairs ships an empty table)."""
    tables = [t for t in tables if t.num_rows]
    if not tables:
        return pa.array([], pa.string()), np.zeros(0, np.int32)
    t = pa.concat_tables(tables)
    return t.column("b").combine_chunks(), t.column("a").to_numpy()


# A task ships its (b, a) pairs as Arrow IPC values of up to about this many pairs each: Spark
# then moves a few large values instead of a row per pair (about 1.5 s per 3M pairs for the
# conversions to its row format and back, and the shuffle after).
TASK_PAIRS = 1 << 20
PROBED = "blob binary, pairs long, capped long"
# Up to this many pairs (12 bytes each from an index, about 30 with ids) are grouped on the driver, where the
# scoring wants the lists anyway; above it the blobs are unpacked into rows and Spark groups them.
DRIVER_PAIRS = 8_000_000


def _ship(refs: list, news: list, capped: int) -> pa.RecordBatch:
    """One PROBED row: the pairs (refs[i], news[i]) as an Arrow IPC value."""
    t = pa.table({"b": pa.chunked_array(refs).combine_chunks() if refs else pa.array([], pa.string()),
                  "a": np.concatenate(news) if news else np.zeros(0, np.int32)})
    return pa.RecordBatch.from_pydict({"blob": [ipc_buffer(t).to_pybytes()], "pairs": [t.num_rows], "capped": [capped]},
                                      schema=pa.schema([("blob", pa.binary()), ("pairs", pa.int64()), ("capped", pa.int64())]))


def _probe_task(tables, keys, cap: int, chunk: int):
    """In an executor: _probe_batch over every batch of `tables`, the pairs grouped and shipped
    (PROBED rows: at least one, so the capped count always arrives)."""
    uk, start, docs = keys.value
    refs, news, n, capped = [], [], 0, 0
    for t in tables:
        for batch in t.to_batches() if isinstance(t, pa.Table) else [t]:
            if not (len(uk) and batch.num_rows):
                continue
            r, a, c = _probe_batch(batch, uk, start, docs, cap)
            capped += c
            if len(a):
                refs.append(r)
                news.append(a)
                n += len(a)
            if n >= chunk:
                yield _ship(refs, news, capped)
                refs, news, n, capped = [], [], 0, 0
    yield _ship(refs, news, capped)


def _probe_frame(keys, cap: int, chunk: int):
    """mapInArrow over a DataFrame of reference bucket rows (bk, id, size): _probe_task."""

    def fn(batches):
        yield from _probe_task(batches, keys, cap, chunk)

    return fn


def _probe_files(keys, cap: int, chunk: int, opts: dict):
    """mapInArrow over (path, rg) units of an index's flat bucket files: each row group read by
    pyarrow (Spark's reader would hand every bucket row to Python through its row format, 4-6 s
    for 11M buckets against under 1 s), then _probe_task."""

    def fn(units):
        from thresher.stages.against import read_row_groups

        yield from _probe_task(read_row_groups(units, ["bk", "n", "size"], opts), keys, cap, chunk)

    return fn


def _unpack(batches):
    """mapInArrow over PROBED blobs -> (b, a) rows."""
    for batch in batches:
        for blob in batch.column(0).to_pylist():
            t = ipc_table(blob)
            if t.num_rows:
                yield from t.to_batches()


def key_index(t: pa.Table) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The new documents' (id, s, bk) -> (uk, start, docs): their sorted distinct bucket keys, and
    the numbers (rows of `t`) of the documents under uk[i], docs[start[i]:start[i + 1]]."""
    import pyarrow.compute as pc

    bk = t.column("bk").combine_chunks()
    flat = pc.list_flatten(bk).to_numpy(zero_copy_only=False)
    doc = pc.list_parent_indices(bk).to_numpy(zero_copy_only=False).astype(np.int32)
    order = np.lexsort((doc, flat))
    flat, doc = flat[order], doc[order]
    uk, first = np.unique(flat, return_index=True)
    return uk, np.append(first, len(flat)).astype(np.int64), doc


def _probe(spark, t, index, ref_keys, cap: int, reliable: bool):
    """(b, as): each candidate reference document (its id, or an index's number n) and the new
    documents paired with it (numbers into `t`, the new documents' (id, s, bk) on the driver,
    `index` their key_index), from one scan of the reference's bucket rows (a DataFrame, or an
    index's bucket folder), as an Arrow table (grouped on the driver) or a DataFrame (above
    DRIVER_PAIRS); `t`'s (id, s); and the hit keys above the cap."""
    from pyspark.sql import Observation
    from pyspark.sql import functions as F

    from thresher.stages import against, storage
    from thresher.stages.components import materialise

    keys = spark.sparkContext.broadcast(index)
    if isinstance(ref_keys, str):
        frame = against.row_group_units(spark, against.parquet_files(ref_keys))
        blobs = frame.mapInArrow(_probe_files(keys, cap, TASK_PAIRS, storage.current().model_dump()), PROBED)
    else:
        blobs = ref_keys.select("bk", "id", "size").mapInArrow(_probe_frame(keys, cap, TASK_PAIRS), PROBED)
    # The totals are observed while the blobs are computed, not counted by a job of their own.
    obs = Observation("against_probe")
    blobs = materialise(blobs.observe(obs, F.sum("pairs").alias("pairs"), F.sum("capped").alias("capped")), reliable)
    keys.unpersist()
    size = obs.get
    if (size["pairs"] or 0) <= DRIVER_PAIRS:
        lists = group_pairs(*_pairs_of([ipc_table(b) for b in blobs.select("blob").toArrow().column(0).to_pylist()]))
    else:
        b_type = "long" if isinstance(ref_keys, str) else "string"
        lists = materialise(blobs.select("blob").mapInArrow(_unpack, f"b {b_type}, a int").groupBy("b").agg(
            F.array_sort(F.collect_set("a")).alias("as")), reliable)
    return lists, t.select(["id", "s"]), int(size["capped"] or 0)


SCORED = pa.schema([("a", pa.string()), ("b", pa.string()), ("j", pa.float64())])
# What a task ships when only the matches go to the driver: the pairs at >= threshold as one
# Arrow IPC value, and how many pairs it scored and kept.
MATCHED = "blob binary, candidates long, matched long"


def _matches_only(score, threshold: float):
    """A scoring mapInArrow function -> one MATCHED row per task."""

    def fn(it):
        import pyarrow.compute as pc

        kept, n = [], 0
        for batch in score(it):
            n += batch.num_rows
            m = batch.filter(pc.greater_equal(batch.column(2), threshold))
            if m.num_rows:
                kept.append(m)
        t = pa.Table.from_batches(kept, schema=SCORED)
        yield pa.RecordBatch.from_pydict({"blob": [ipc_buffer(t).to_pybytes()], "candidates": [n], "matched": [t.num_rows]},
                                         schema=pa.schema([("blob", pa.binary()), ("candidates", pa.int64()),
                                                           ("matched", pa.int64())]))

    return fn


def _scored_broadcast(spark, t, ref_signed, lists, cfg: Config, signed_folder: str | None = None,
                      matches_only: bool = False):
    """(a, b, j) of every candidate pair, no set shuffled: the new documents' sets go to every
    task (one broadcast), the candidate list of each reference document too, and each task
    scores the reference rows it reads against them. An index's sets are read by pyarrow, one
    task per row group; otherwise through a broadcast join. `matches_only`: MATCHED rows instead."""
    from pyspark.sql import functions as F

    from thresher.stages import against, storage
    from thresher.stages.arrow_bytes import binary_values

    dtype = np.uint64 if cfg.verify else np.uint32
    off, val = binary_values(t.column("s"), dtype)
    sets = spark.sparkContext.broadcast((t.column("id").combine_chunks(), off, val))
    schema = MATCHED if matches_only else "a string, b string, j double"

    def shaped(fn):
        return _matches_only(fn, cfg.threshold) if matches_only else fn

    if signed_folder is None:
        if isinstance(lists, pa.Table):
            lists = spark.createDataFrame(lists)
        rows = ref_signed.join(F.broadcast(lists), ref_signed["id"] == lists["b"]).select("b", "s", "as")
        return rows.mapInArrow(shaped(_score_batches(cfg, sets)), schema)
    lt = (lists if isinstance(lists, pa.Table) else lists.toArrow()).sort_by("b")
    wanted = spark.sparkContext.broadcast((lt.column("b").to_numpy(), lt.column("as").combine_chunks()))
    frame = against.row_group_units(spark, against.parquet_files(signed_folder))
    return frame.mapInArrow(shaped(_score_files(cfg, sets, wanted, storage.current().model_dump())), schema)


def _score_files(cfg: Config, sets, wanted, opts: dict):
    """mapInArrow over (path, rg) units of an index's signed files: the rows whose number n is a
    candidate's, with the numbers of their new documents, scored as _score_batches does (Spark's
    reader would hand every reference set to Python through its row format)."""
    score = _score_batches(cfg, sets)

    def fn(units):
        from thresher.stages.against import read_row_groups

        b, lists = wanted.value  # b: the candidates' n, sorted

        def candidates():
            if not len(b):
                return
            for part in read_row_groups(units, ["id", "n", "s"], opts):
                n = part.column("n").to_numpy()
                pos = np.minimum(np.searchsorted(b, n), len(b) - 1)
                rows = np.flatnonzero(b[pos] == n)
                part, k = part.take(pa.array(rows)).combine_chunks(), pos[rows]
                for batch in part.to_batches():
                    kk, k = k[:batch.num_rows], k[batch.num_rows:]
                    yield pa.RecordBatch.from_arrays([batch.column(0), batch.column(2), lists.take(pa.array(kk))],
                                                     names=["b", "s", "as"])

        yield from score(candidates())

    return fn


def _score_batches(cfg: Config, sets):
    """mapInArrow over (b, s, as: the numbers of the new documents paired with b) -> (a, b, j),
    j by the stage's kernel: exact Jaccard of the sets, or the signatures' agreement without
    verify."""
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
            k = pc.list_flatten(lists).to_numpy().astype(np.int64)
            row = pc.list_parent_indices(lists).to_numpy().astype(np.int64)
            a = ids.take(pa.array(k))
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


# Up to this many of the new documents' bucket keys (documents x bands, 8 bytes each) are
# signed straight to the driver and go to every task with their sets; above it both sides
# shuffle.
BROADCAST_KEYS = 4_000_000
GONE = pa.schema([("id", pa.string()), ("by_id", pa.string()), ("score", pa.float64()), ("_was_removed", pa.bool_())])


def _first_of_each(t: pa.Table, key: str, order: list) -> pa.Table:
    """The first row of each `key` group of `t`, rows ordered by `order` within a group."""
    import pyarrow.compute as pc

    t = t.sort_by([(key, "ascending"), *order])
    k = t.column(key).combine_chunks()
    if len(k) < 2:
        return t
    return t.filter(pa.array(np.r_[True, pc.not_equal(k[1:], k[:-1]).to_numpy(zero_copy_only=False)]))


def gone_table(matched: pa.Table, dups: pa.Table) -> pa.Table:
    """Step (c) on the driver, what `_gone_frame` computes with Spark: from the matches (a, b, j)
    and the new-only `duplicates`, every new document to remove (GONE). A matched document
    names its best reference (highest j, ties smallest id) and scores it; the rest of its
    component the component's best reference, with no score."""
    import pyarrow.compute as pc

    s = pa.string()
    best = _first_of_each(matched, "a", [("j", "descending"), ("b", "ascending")])
    best = pa.table({"id": best["a"].cast(s), "ref": best["b"].cast(s), "j": best["j"]})
    comp = pa.table({"id": dups["id"].cast(s), "component_id": dups["component_id"].cast(s),
                     "is_representative": dups["is_representative"]})
    of = best.join(comp, "id", join_type="left outer")
    comp_best = _first_of_each(pa.table({"component_id": pc.coalesce(of["component_id"], of["id"]), "j": of["j"],
                                         "cref": of["ref"]}), "component_id", [("j", "descending"), ("cref", "ascending")])
    in_comp = comp.join(comp_best.select(["component_id", "cref"]), "component_id", join_type="inner")
    g = in_comp.select(["id", "is_representative", "cref"]).join(best, "id", join_type="full outer")
    return pa.table([g["id"], pc.coalesce(g["ref"], g["cref"]), g["j"],
                     pc.fill_null(pc.invert(g["is_representative"]), False)], schema=GONE)


def _gone_frame(scored, dups, threshold: float, reliable: bool):
    """Step (c) with Spark, for many new documents: gone_table's result as a DataFrame."""
    from pyspark.sql import functions as F

    from thresher.stages.components import materialise

    matched = scored.where(F.col("j") >= F.lit(threshold))
    # Best reference of each matched new document: highest similarity, ties smallest id.
    best = matched.groupBy("a").agg(F.min(F.struct((-F.col("j")).alias("nj"), F.col("b").alias("b"))).alias("m")).select(
        F.col("a").alias("id"), F.col("m.b").alias("ref"), (-F.col("m.nj")).alias("j"))
    # Components of the new-only dedup; a document in none is its own.
    comp_of = best.join(dups.select("id", "component_id"), "id", "left").select(
        "id", "ref", "j", F.coalesce("component_id", "id").alias("c"))
    comp_best = comp_of.groupBy("c").agg(F.min(F.struct((-F.col("j")).alias("nj"), F.col("ref").alias("ref"))).alias("m")).select(
        "c", F.col("m.ref").alias("cref"))
    in_comp = dups.select("id", F.col("component_id").alias("c"), "is_representative").join(comp_best, "c")
    gone = (in_comp.join(best, "id", "full_outer")
            .select("id", F.coalesce("ref", "cref").alias("by_id"), F.col("j").alias("score"),
                    F.coalesce(~F.col("is_representative"), F.lit(False)).alias("_was_removed")))
    return materialise(gone, reliable)


def _applied_frame(removed, dups, gone, reliable: bool):
    """applied() with Spark, for many new documents: (removed, duplicates) DataFrames from the
    new-only ones and _gone_frame's."""
    from pyspark.sql import functions as F

    from thresher.stages.components import materialise

    removed_ref = gone.select("id", F.lit("fuzzy_dedup").alias("stage"), F.lit(REASON).alias("reason"),
                              F.col("by_id").cast("string"), F.col("score").cast("double"))
    removed = removed.join(gone.select("id"), "id", "left_anti").unionByName(removed_ref)
    is_ref = gone.select("id", "by_id", "score")
    dups2 = (dups.join(is_ref, "id", "left")
             .select("id", "component_id",
                     F.coalesce("by_id", "representative_id").alias("representative_id"),
                     (F.col("is_representative") & F.col("by_id").isNull()).alias("is_representative"),
                     F.when(F.col("by_id").isNull(), F.col("similarity")).otherwise(F.col("score")).alias("similarity")))
    lone = gone.join(dups.select("id"), "id", "left_anti").select(
        "id", F.col("id").alias("component_id"), F.col("by_id").alias("representative_id"),
        F.lit(False).alias("is_representative"), F.col("score").alias("similarity"))
    return removed, materialise(dups2.unionByName(lone), reliable)


def _signed_on_driver(docs, tables, cfg: Config, bands: int, rows: int, n_docs: int | None,
                      quality: bool = False) -> pa.Table | None:
    """The new documents' (id, _length, s, bk[, _quality]), signed by one Spark job straight to the
    driver, while they are few enough to go to every task (BROADCAST_KEYS, BROADCAST_SET_BYTES);
    else None. `quality`: with the survivor rule's score (the new-only dedup then runs here too)."""
    import pyarrow.compute as pc

    from thresher.stages.components import select_with_quality
    from thresher.stages.fuzzy_dedup.signing import SIGNED, SIGNED_Q, sign_batches

    if n_docs is None or n_docs * bands > BROADCAST_KEYS:
        return None
    src = select_with_quality(docs, tables, cfg.survivor, ["id", "text"]) if quality else docs.select("id", "text")
    t = src.mapInArrow(sign_batches(cfg, bands, rows, quality), SIGNED_Q if quality else SIGNED).toArrow()
    return t if (pc.sum(pc.binary_length(t.column("s"))).as_py() or 0) <= BROADCAST_SET_BYTES else None


def applied(dups: pa.Table, gone: pa.Table) -> tuple[pa.Table, pa.Table]:
    """The stage's `removed` and `duplicates` in Arrow, from the new-only `duplicates` and
    gone_table's result, as against_reference builds them with Spark for many documents: a
    removed document's reference match replaces its new-only removal; a matched component's
    members point at its reference; a matched document in no component is listed as its own."""
    import pyarrow.compute as pc

    s, f = pa.string(), pa.float64()
    gone_ids = gone.column("id")
    own = dups.filter(pc.and_(pc.invert(dups.column("is_representative")),
                              pc.invert(pc.is_in(dups.column("id"), value_set=gone_ids.combine_chunks()))))

    def rows(ids, reason, by_id, score):
        n = len(ids)
        return pa.table({"id": ids.cast(s), "stage": pa.array(["fuzzy_dedup"] * n, s), "reason": pa.array([reason] * n, s),
                         "by_id": by_id.cast(s), "score": score.cast(f)})

    removed = pa.concat_tables([rows(own["id"], "near_duplicate", own["representative_id"], own["similarity"]),
                                rows(gone["id"], REASON, gone["by_id"], gone["score"])])
    g = gone.select(["id", "by_id", "score"])
    j = dups.join(g, "id", join_type="left outer")
    unmatched = pc.is_null(j["by_id"])
    listed = pa.table({"id": j["id"], "component_id": j["component_id"],
                       "representative_id": pc.coalesce(j["by_id"], j["representative_id"]),
                       "is_representative": pc.and_(j["is_representative"], unmatched),
                       "similarity": pc.if_else(unmatched, j["similarity"], j["score"])})
    lone = g.filter(pc.invert(pc.is_in(g["id"], value_set=dups.column("id").combine_chunks())))
    lone = pa.table({"id": lone["id"], "component_id": lone["id"], "representative_id": lone["by_id"],
                     "is_representative": pa.array([False] * lone.num_rows, pa.bool_()), "similarity": lone["score"]})
    return removed, pa.concat_tables([listed.cast(lone.schema), lone])


def against_reference(spark, tables, cfg: Config, bands: int, rows: int, size: dict) -> dict:
    """The stage's result with the reference matches applied: the new-only dedup (step (a)),
    then (b) and (c). `size`: corpus_size's count of the new documents."""
    import pyarrow.compute as pc
    from pyspark.sql import functions as F

    from thresher.stages import against
    from thresher.stages.components import materialise
    from thresher.stages.fuzzy_dedup import fits_one_task, run_with_pairs
    from thresher.stages.fuzzy_dedup.one_task import dedup_on_driver
    from thresher.stages.fuzzy_dedup.results import outputs
    from thresher.stages.fuzzy_dedup.signing import SIGNED, sign_batches

    t0 = time.perf_counter()
    docs = tables["documents"]
    reliable = cfg.checkpoint == "reliable"
    cap = cfg.against_bucket_cap
    ref = against.resolve(cfg.against)
    fr = against.fuzzy_reference(spark, ref, cfg, bands, rows)
    ref_signed, ref_keys = fr.signed, fr.keys

    # Few new documents are signed once, to the driver: the new-only dedup of the one-task path
    # then runs there on the same sets the probe and the scoring use.
    one_task = fits_one_task(cfg, size)
    t = _signed_on_driver(docs, tables, cfg, bands, rows, size["n"], quality=one_task and cfg.survivor == "quality")
    if t is not None and one_task:
        d0 = time.perf_counter()
        dups, own_stats = dedup_on_driver(t, cfg, bands, rows)
        own_stats["step_s"] = {"one_task_on_driver": round(time.perf_counter() - d0, 3)}
        out = {"duplicates": dups, "stats": own_stats}
    else:
        out = run_with_pairs(spark, tables, cfg, None if size["b"] is None else size)[0]
        out.pop("documents")
    dups = out["duplicates"]

    new = None
    if t is None:
        new = docs.select("id", "text").mapInArrow(sign_batches(cfg, bands, rows), SIGNED).persist()
        new_keys = new.select(F.col("id").alias("a"), F.explode("bk").alias("bk"))
        keys = new_keys.select("bk").distinct()
    few = t is not None
    indexed = fr.buckets is not None
    index = key_index(t) if few else None
    if not indexed:  # signed in this run: only the shared keys are listed
        if few:
            keys = F.broadcast(spark.createDataFrame(pa.table({"bk": index[0]})))
        ref_keys = against.bucket_rows(ref_keys.join(keys, "bk", "left_semi"), cap)
    on_driver = False
    if few:
        lists, t, capped = _probe(spark, t, index, fr.buckets or ref_keys, cap, reliable)
        t1 = time.perf_counter()
        # Few pairs: only the matches come to the driver, where step (c) needs no Spark job.
        on_driver = isinstance(lists, pa.Table)
        scored = _scored_broadcast(spark, t, ref_signed, lists, cfg, fr.sets, matches_only=on_driver)
    else:
        hits = materialise(ref_keys.join(keys, "bk", "left_semi"), reliable)
        capped = hits.where(F.col("size") > cap).count()
        pairs = new_keys.join(hits, "bk").select("a", F.col("n" if indexed else "id").alias("b")).distinct()
        if indexed:  # an index names its documents by number
            pairs = pairs.join(ref_signed.select(F.col("n").alias("b"), F.col("id").alias("_id")), "b").select(
                "a", F.col("_id").alias("b"))
        pairs = materialise(pairs, reliable)
        t1 = time.perf_counter()
        scored = _scored_shuffled(new, ref_signed, pairs, cfg)

    if on_driver:
        shipped = scored.toArrow()
        matched = pa.concat_tables([SCORED.empty_table(), *(ipc_table(b) for b in shipped.column("blob").to_pylist())])
        t2 = time.perf_counter()
        dups_t = dups if isinstance(dups, pa.Table) else dups.toArrow()
        gone_t = gone_table(matched, dups_t)
        n_cand, n_ok = (int(pc.sum(shipped.column(c)).as_py() or 0) for c in ("candidates", "matched"))
        # Each listed reference document is read, and scored, once.
        counts = {"candidate_pairs": n_cand, "verified_pairs": n_ok, "reference_candidates": lists.num_rows,
                  "matched_directly": gone_t.num_rows - gone_t.column("score").null_count, "removed": gone_t.num_rows,
                  "reference_docs_named": len(pc.unique(gone_t.column("by_id"))),
                  "again": int(pc.sum(gone_t.column("_was_removed").cast(pa.int64())).as_py() or 0)}
        removed_t, dups2_t = applied(dups_t, gone_t)
        removed, dups2 = spark.createDataFrame(removed_t), spark.createDataFrame(dups2_t)
        t3 = time.perf_counter()
    else:
        if isinstance(dups, pa.Table):
            dups = spark.createDataFrame(dups)
            out["removed"] = outputs(docs, dups, out["stats"], cfg)["removed"]
        scored = materialise(scored, reliable)
        t2 = time.perf_counter()
        gone = _gone_frame(scored, dups, cfg.threshold, reliable)
        removed, dups2 = _applied_frame(out["removed"], dups, gone, reliable)
        t3 = time.perf_counter()

    if not on_driver:
        agg = scored.agg(F.count(F.lit(1)).alias("n"), F.sum((F.col("j") >= cfg.threshold).cast("long")).alias("ok"),
                         F.countDistinct("b").alias("refs")).first()
        g = gone.agg(F.count(F.lit(1)).alias("n"), F.countDistinct("by_id").alias("refs"),
                     F.count("score").alias("direct"), F.sum(F.col("_was_removed").cast("long")).alias("again")).first()
        counts = {"candidate_pairs": int(agg["n"]), "verified_pairs": int(agg["ok"] or 0),
                  "reference_candidates": int(agg["refs"]), "matched_directly": int(g["direct"]),
                  "removed": int(g["n"]), "reference_docs_named": int(g["refs"]), "again": int(g["again"] or 0)}
    again = counts.pop("again")
    stats = dict(out["stats"])
    stats["against"] = {
        "reference": ref.spec, "source": fr.source, "bucket_cap": cap, "capped_buckets": capped, **counts,
        "step_s": {"reference_buckets": round(t1 - t0, 3), "verify": round(t2 - t1, 3),
                   "components": round(t3 - t2, 3), "stats": round(time.perf_counter() - t3, 3)},
    }
    # A new document the new-only dedup removed and a reference match removes again counts once.
    stats["docs_removed"] = stats["docs_removed"] + counts["removed"] - again
    if new is not None:
        new.unpersist()
    if fr.cached is not None:
        fr.cached.unpersist()
    return {**out, "removed": removed, "duplicates": dups2, "stats": stats}
