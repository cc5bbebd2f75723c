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


_OUT = pa.schema([("id", pa.string()), ("_h1", pa.int64()), ("_h2", pa.int64()), ("_length", pa.int64())])


def hash_batches(cfg: Config):
    norm = cfg.normalise
    seed = int(cfg.seed or 0)

    def fn(batches):
        import pyarrow.compute as pc

        from thresher.kernels.threads import limit_task_threads
        from thresher.stages.text import text_hash128

        limit_task_threads()
        for b in batches:
            h1, h2 = text_hash128(b.column(1), norm, seed)
            length = pc.utf8_length(b.column(1)).cast(pa.int64())
            yield pa.RecordBatch.from_arrays([b.column(0), pa.array(h1), pa.array(h2), length], schema=_OUT)

    return fn


def run(spark, tables, cfg: Config, ctx):
    from pyspark.sql import functions as F

    from thresher.stages.components import materialise, rank_within, with_quality

    docs = tables["documents"]
    hashed = docs.select("id", "text").mapInArrow(hash_batches(cfg), "id string, _h1 bigint, _h2 bigint, _length bigint")
    hashed, has_quality = with_quality(hashed, docs, tables, cfg.survivor)
    if cfg.survivor == "quality" and not has_quality:
        raise ConfigError("exact_dedup.survivor: 'quality' needs a quality table from an earlier stage (or a `quality` column)")
    # One shuffle on the hash: each group ranked by the survivor rule, all but the first removed.
    ranked = rank_within(hashed, ["_h1", "_h2"], cfg.survivor, has_quality)
    if cfg.against:
        # Computed once: both the broadcast of its hashes and the join below read it.
        ranked = materialise(ranked)
        return _against(spark, ranked, ranked.count(), cfg, ctx)
    removed = ctx.removed(ranked.where(F.col("_n") > 1), "exact_duplicate", by_id="representative_id", score=1.0)
    removed = materialise(removed)
    agg = removed.agg(F.count(F.lit(1)).alias("n"), F.countDistinct("by_id").alias("g")).collect()[0]
    stats = {"groups": int(agg["g"]), "docs_removed": int(agg["n"])}
    return {"removed": removed, "stats": stats}


def _against(spark, ranked, n_docs: int, cfg: Config, ctx):
    """stages/against.py's rule for exact copies: a new document's component is its hash group,
    whose members all share the hash, so a group with the hash of a reference document is
    removed whole (by_id the smallest such reference id); the other groups as without `against`."""
    from pyspark.sql import functions as F

    from thresher.stages import against
    from thresher.stages.components import materialise

    ref = against.resolve(cfg.against)
    ref_h, source = against.exact_reference(spark, ref, cfg)
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
