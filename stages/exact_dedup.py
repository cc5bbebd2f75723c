"""exact_dedup: documents whose normalised text is identical, one kept per group.

Executors normalise each Arrow batch (stages/text.py) and hash it twice with independent seeds
(128 bits: a chance match between two different texts is negligible even among billions);
Spark groups on the two hashes. The survivor of each group follows `survivor` (ties by id); the
others go to `removed` with reason `exact_duplicate`, by_id the survivor, score 1.0.
With `against` a reference corpus, a group whose hash a reference document has goes whole
(`exact_duplicate_of_reference`, by_id the smallest such reference id): stages/against.py.
"""

from __future__ import annotations

from typing import Literal

import pyarrow as pa
from pydantic import Field

from thresher.stages.base import StageConfig, StageSpec
from thresher.stages.against import spec_fingerprint as against_fingerprint
from thresher.schemas.errors import ConfigError
from thresher.stages.text import NormaliseConfig



class Config(StageConfig):
    normalise: NormaliseConfig = Field(default_factory=NormaliseConfig)
    # Which copy survives: longest text, highest quality score (needs a quality table), or the
    # smallest id. Ties always go to the smallest id.
    survivor: Literal["longest", "quality", "smallest_id"] = "longest"
    # An already-curated corpus (run folder, Parquet dataset folder/glob/URL, or an index from
    # `thresher index`): this run's documents with the same normalised text as one of its
    # documents are removed (reason exact_duplicate_of_reference, by_id the smallest such id).
    against: str | None = None
    # With `against`: up to this many new documents are hashed straight to the driver and ranked
    # there in Arrow, and one scan of the reference sends back only its rows with one of their
    # hashes (no shuffle, no cached table); above it Spark groups both sides.
    driver_docs: int = Field(1_000_000, ge=0)


_OUT = pa.schema([("id", pa.string()), ("_h1", pa.int64()), ("_h2", pa.int64()), ("_length", pa.int64())])
HASHED = "id string, _h1 bigint, _h2 bigint, _length bigint"


def hash_batches(cfg: Config, quality: bool = False):
    """mapInArrow function: (id, text) -> HASHED; with `quality`, (id, text, _quality) ->
    HASHED and `_quality` passed through."""
    norm = cfg.normalise
    seed = int(cfg.seed or 0)
    schema = pa.schema([*_OUT, ("_quality", pa.float64())]) if quality else _OUT

    def fn(batches):
        import pyarrow.compute as pc

        from thresher.kernels.threads import limit_task_threads
        from thresher.stages.text import text_hash128

        limit_task_threads()
        for b in batches:
            h1, h2 = text_hash128(b.column(1), norm, seed)
            length = pc.utf8_length(b.column(1)).cast(pa.int64())
            q = [b.column(2).cast(pa.float64())] if quality else []
            yield pa.RecordBatch.from_arrays([b.column(0), pa.array(h1), pa.array(h2), length, *q], schema=schema)

    return fn


def run(spark, tables, cfg: Config, ctx):
    from pyspark.sql import functions as F

    from thresher.stages.components import materialise, rank_within, with_quality

    docs = tables["documents"]
    if cfg.survivor == "quality" and tables.get("quality") is None and "quality" not in docs.columns:
        raise ConfigError("exact_dedup.survivor: 'quality' needs a quality table from an earlier stage (or a `quality` column)")
    if cfg.against:
        from thresher.stages.fuzzy_dedup import footer_rows

        n_docs = footer_rows(docs)
        n_docs = docs.count() if n_docs is None else n_docs
        if n_docs <= cfg.driver_docs:
            return _against_on_driver(spark, docs, tables, cfg)
    hashed = docs.select("id", "text").mapInArrow(hash_batches(cfg), HASHED)
    hashed, has_quality = with_quality(hashed, docs, tables, cfg.survivor)
    # One shuffle on the hash: each group ranked by the survivor rule, all but the first removed.
    ranked = rank_within(hashed, ["_h1", "_h2"], cfg.survivor, has_quality)
    if cfg.against:
        # Computed once: both the broadcast of its hashes and the join below read it.
        return _against(spark, materialise(ranked), n_docs, cfg, ctx)
    removed = ctx.removed(ranked.where(F.col("_n") > 1), "exact_duplicate", by_id="representative_id", score=1.0)
    removed = materialise(removed)
    agg = removed.agg(F.count(F.lit(1)).alias("n"), F.countDistinct("by_id").alias("g")).collect()[0]
    stats = {"groups": int(agg["g"]), "docs_removed": int(agg["n"])}
    return {"removed": removed, "stats": stats}


def ranked_on_driver(t: pa.Table, survivor: str) -> pa.Table:
    """rank_within's result in Arrow for hashed documents held on the driver (id, _h1, _h2,
    _length[, _quality]): (id, _h1, _h2, first: the survivor of its hash group, representative_id),
    sorted by hash, the survivor first."""
    import numpy as np
    import pyarrow.compute as pc

    if survivor == "longest":
        k = pc.negate(t.column("_length").cast(pa.float64()))
    elif survivor == "quality":  # highest first, unscored after every score (as rank_key orders them)
        k = pc.fill_null(pc.negate(t.column("_quality")), float("inf"))
    else:
        k = pa.array(np.zeros(t.num_rows))
    s = pa.table({"id": t.column("id"), "_h1": t.column("_h1"), "_h2": t.column("_h2"), "_k": k}).sort_by(
        [("_h1", "ascending"), ("_h2", "ascending"), ("_k", "ascending"), ("id", "ascending")])
    h1, h2 = s.column("_h1").to_numpy(), s.column("_h2").to_numpy()
    first = np.r_[True, (h1[1:] != h1[:-1]) | (h2[1:] != h2[:-1])] if len(h1) else np.zeros(0, bool)
    starts = np.flatnonzero(first)
    rep = s.column("id").take(pa.array(np.repeat(starts, np.diff(np.append(starts, len(h1))))))
    return pa.table({"id": s.column("id"), "_h1": s.column("_h1"), "_h2": s.column("_h2"), "first": first,
                     "representative_id": rep})


def _reference_hits(h1):
    """mapInArrow over reference (id, _h1, _h2) batches: the rows whose _h1 is one of the sorted
    `h1` (a broadcast); the driver then joins on both halves of the hash."""

    def fn(batches):
        import numpy as np

        k = h1.value
        for b in batches:
            if not (len(k) and b.num_rows):
                continue
            x = b.column(1).to_numpy(zero_copy_only=False)
            m = k[np.minimum(np.searchsorted(k, x), len(k) - 1)] == x
            if m.any():
                yield pa.RecordBatch.from_arrays([b.column(0), b.column(1), b.column(2)], names=["id", "_h1", "_h2"]).filter(
                    pa.array(m))

    return fn


def _against_on_driver(spark, docs, tables, cfg: Config):
    """_against's result for few new documents: hashed by one Spark job straight to the driver
    and ranked there (ranked_on_driver); one scan of the reference (an index's files read by
    pyarrow) sends back its rows with one of their hashes; the removed table is built in Arrow."""
    import numpy as np
    import pyarrow.compute as pc

    from thresher.stages import against, storage
    from thresher.stages.components import select_with_quality

    ref = against.resolve(cfg.against)
    ref_h, source, folder = against.exact_reference(spark, ref, cfg)
    quality = cfg.survivor == "quality"
    src = select_with_quality(docs, tables, cfg.survivor, ["id", "text"])
    t = src.mapInArrow(hash_batches(cfg, quality), HASHED + (", _quality double" if quality else "")).toArrow()
    ranked = ranked_on_driver(t, cfg.survivor)

    h1 = spark.sparkContext.broadcast(np.unique(ranked.column("_h1").to_numpy()))
    if folder is not None:
        opts = storage.current().model_dump()

        def read(units):
            yield from _reference_hits(h1)(
                b for tb in against.read_row_groups(units, ["id", "_h1", "_h2"], opts) for b in tb.to_batches())

        hits = against.row_group_units(spark, against.parquet_files(folder)).mapInArrow(read, "id string, _h1 bigint, _h2 bigint")
    else:
        hits = ref_h.mapInArrow(_reference_hits(h1), "id string, _h1 bigint, _h2 bigint")
    hits = hits.toArrow()
    h1.unpersist()
    # The smallest reference id of each hash.
    hits = hits.sort_by([("_h1", "ascending"), ("_h2", "ascending"), ("id", "ascending")])
    hh1, hh2 = hits.column("_h1").to_numpy(), hits.column("_h2").to_numpy()
    firsts = np.r_[True, (hh1[1:] != hh1[:-1]) | (hh2[1:] != hh2[:-1])] if len(hh1) else np.zeros(0, bool)
    first_ref = hits.filter(pa.array(firsts)).rename_columns(["_ref", "_h1", "_h2"])

    both = ranked.join(first_ref, ["_h1", "_h2"], join_type="left outer")
    of_ref = pc.is_valid(both.column("_ref"))
    gone = both.filter(pc.or_(of_ref, pc.invert(both.column("first"))))
    of_ref = pc.is_valid(gone.column("_ref"))
    n = gone.num_rows
    removed = pa.table({"id": gone.column("id"), "stage": pa.array(["exact_dedup"] * n, pa.string()),
                        "reason": pc.if_else(of_ref, "exact_duplicate_of_reference", "exact_duplicate"),
                        "by_id": pc.coalesce(gone.column("_ref"), gone.column("representative_id")),
                        "score": pa.array(np.ones(n))})
    own = removed.filter(pc.invert(of_ref))
    by_ref = removed.filter(of_ref)
    stats = {"groups": len(pc.unique(own.column("by_id"))), "docs_removed": n,
             "against": {"reference": ref.spec, "source": source, "removed": by_ref.num_rows,
                         "reference_docs_named": len(pc.unique(by_ref.column("by_id")))}}
    return {"removed": spark.createDataFrame(removed), "stats": stats}


def _against(spark, ranked, n_docs: int, cfg: Config, ctx):
    """stages/against.py's rule for exact copies: a new document's component is its hash group,
    whose members all share the hash, so a group with the hash of a reference document is
    removed whole (by_id the smallest such reference id); the other groups as without `against`."""
    from pyspark.sql import functions as F

    from thresher.stages import against
    from thresher.stages.components import materialise

    ref = against.resolve(cfg.against)
    ref_h, source, _ = against.exact_reference(spark, ref, cfg)
    # Only the reference rows whose hash a new document has are kept past the scan; the new
    # hashes (16 bytes each) go to every task while they are few, else both sides shuffle.
    new_h = ranked.select("_h1", "_h2").distinct()
    hits = ref_h.join(F.broadcast(new_h) if n_docs <= 4_000_000 else new_h, ["_h1", "_h2"], "left_semi")
    first_ref = hits.groupBy("_h1", "_h2").agg(F.min("id").alias("_ref"))
    both = ranked.join(first_ref, ["_h1", "_h2"], "left")
    of_ref = F.col("_ref").isNotNull()
    gone = both.where(of_ref | (F.col("_n") > 1))
    removed = ctx.removed(gone, F.when(of_ref, F.lit("exact_duplicate_of_reference")).otherwise(F.lit("exact_duplicate")),
                          by_id=F.coalesce("_ref", "representative_id"), score=1.0)
    removed = materialise(removed)
    is_ref = F.col("reason") == "exact_duplicate_of_reference"
    agg = removed.agg(F.count(F.lit(1)).alias("n"), F.countDistinct(F.when(~is_ref, F.col("by_id"))).alias("g"),
                      F.sum(is_ref.cast("long")).alias("r"), F.countDistinct(F.when(is_ref, F.col("by_id"))).alias("named")
                      ).collect()[0]
    stats = {"groups": int(agg["g"]), "docs_removed": int(agg["n"]),
             "against": {"reference": ref.spec, "source": source, "removed": int(agg["r"] or 0),
                         "reference_docs_named": int(agg["named"])}}
    return {"removed": removed, "stats": stats}



SPEC = StageSpec(name="exact_dedup", inputs=("documents",), optional_inputs=("quality",), outputs=("removed",),
                 removes=True, fingerprint=against_fingerprint)
