"""fuzzy_dedup: MinHash/LSH near-duplicate removal, verified, with distributed components.

1. One pass over the texts (signing.py; mapInArrow, numba kernels of kernels/minhash.py):
   normalise, shingle, sign, band; one row per document with shingles: (id, length, its sorted
   shingle-hash set as bytes, its LSH bucket keys). Cached: buckets, verification and survivors
   read it.
2. Buckets. The distributed path numbers the documents in id order (a range sort before
   step 1) and sends each (bucket key, number) row to the task owning its key's share. A bucket
   of up to `bucket_all_pairs` (32) documents is linked all to all; a larger one as a star to
   its smallest id. A bucket of k documents yields at most max(32*31/2 = 496, k-1) candidate
   pairs, never k(k-1)/2 of a big bucket.
   Stars alone lose the members of a drifting family that are similar to each other but not
   to the hub (A~B~C, A and C below the threshold): on the family corpus of
   benchmarks/families.py they kept 0.948 of the true pairs in one component, all pairs in
   the buckets up to 32 keep 0.9985 (with 25 bands of 5 rows; README, dedup).
3. Verification (default), in two hops over shares of the documents: each pair goes to its
   larger id's share, where it is kept once, then to its smaller id's share, with the set of
   its larger id when that share lacks it (once per share); one kernel call scores every pair
   of the share (exact Jaccard);
   pairs below `threshold` are dropped and counted. Keys, pairs and sets move between tasks as
   a few Arrow IPC values per task, not as a Spark row each.
4. Connected components of the verified pairs (stages/components.py): each partition's edges
   contracted in its executor (union-find over that partition), then large-star/small-star
   rounds, one Spark job each, for what spans partitions; up to `cc_task_edges` verified
   edges sit in one partition and need no round.
5. One survivor per component by `survivor` (ties by id): members sorted by the rule, the
   survivor first, each compared with it by the same kernel; the others go to `removed` with
   reason `near_duplicate`, by_id the survivor, score their Jaccard with it.

Steps 2-5 live in distributed.py. Inputs of up to `one_task_docs` documents and
`one_task_bytes` of text take all five steps in one executor task instead (one_task.py, the
same kernels, the same result): on a small corpus the shuffles and Spark jobs of the
distributed path cost more than the work they spread. results.py turns either path's
`duplicates` table into the stage's outputs and stats. With `against` a reference corpus,
against.py matches the new documents with it and removes the components that hold a match
(`near_duplicate_of_reference`; the definition is in stages/against.py); new documents that
would take the one-task path are signed once, to the driver, and deduplicated there
(one_task.dedup_on_driver) from the sets the match uses.

Per document, the driver receives at most the component labels of up to `broadcast_labels`
nodes (or the ids of as many removed documents), for a broadcast join; otherwise counts and the
LSH parameters only.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from thresher.schemas.errors import ConfigError
from thresher.stages.against import spec_fingerprint as against_fingerprint
from thresher.stages.base import StageConfig, StageSpec
from thresher.stages.text import NormaliseConfig, ShingleConfig

NAME = "fuzzy_dedup"


class Config(StageConfig):
    normalise: NormaliseConfig = Field(default_factory=NormaliseConfig)
    shingle: ShingleConfig = Field(default_factory=ShingleConfig)
    threshold: float = Field(0.7, gt=0.0, le=1.0)
    num_perm: int = Field(128, ge=2, le=1024)
    # Weights datasketch's optimiser gives to the false positive and false negative
    # probability areas when it picks bands x rows. Verification removes false positives, so
    # missing a pair costs more than checking one: 0.01/0.99 gives 25 x 5 at 0.7, which finds
    # a pair at exactly 0.7 99.0% of the time (0.1/0.9 gave 20 x 6: 91.8%, and chains of
    # edits near 0.7 broke; datasketch's own 0.5/0.5 gives 14 x 9: 44%).
    false_positive_weight: float = Field(0.01, ge=0.0, le=1.0)
    false_negative_weight: float = Field(0.99, ge=0.0, le=1.0)
    # Set both to override the optimiser.
    bands: int | None = Field(None, ge=1)
    rows: int | None = Field(None, ge=1)
    # Buckets of up to this many documents are linked all to all (at most n(n-1)/2 = 496
    # candidate pairs at 32), larger ones as a star to their smallest id (k-1 pairs). 0 or 1:
    # stars everywhere.
    bucket_all_pairs: int = Field(32, ge=0, le=256)
    # Exact Jaccard of every candidate pair; off: MinHash estimates, no pair dropped.
    verify: bool = True
    survivor: Literal["longest", "quality", "smallest_id"] = "longest"
    max_cc_rounds: int = Field(64, ge=1)
    # Verified edges per connected-components contraction task (one Python worker holds that
    # many id pairs: about 340 MB at a million); up to this many edges, components need no
    # distributed round at all.
    cc_task_edges: int = Field(1_000_000, ge=1)
    # Largest node count whose component labels are broadcast to the survivor join. A broadcast
    # passes through the driver (about 60 bytes a node with Debian-like ids), so this caps what
    # the driver holds; above it the join shuffles instead.
    broadcast_labels: int = Field(200_000, ge=0)
    # local: intermediate tables live on the executors (fast); reliable: also written to the
    # checkpoint folder, so a lost executor does not lose them (clusters).
    checkpoint: Literal["local", "reliable"] = "local"
    # The distributed path cuts the documents into shares of at most this many (and at least
    # spark.sql.shuffle.partitions shares): one task holds a share's bucket keys, or its sets,
    # the sets it imports from other shares and its pairs (640k replica, 8 shares of 80,000:
    # the Python workers peaked at 1.25 GB together, two at a time; README, dedup).
    task_docs: int = Field(100_000, ge=1)
    # Up to this many documents, the whole dedup runs in one executor task (one Python worker
    # holds every document's shingle set and bucket keys: about 0.8 KB a Debian document), with
    # the same result as the distributed path and without its shuffles and jobs. 0: never.
    # With `against`, new documents signed to the driver anyway (their sets within 256 MB) are
    # deduplicated there instead, whatever `one_task_bytes` says.
    one_task_docs: int = Field(100_000, ge=0)
    # ... and at most this many bytes of text (UTF-8): the one task's memory grows with the words,
    # not the documents (64k Debian descriptions are 26 MB and peak at about 0.5 GB in the worker).
    one_task_bytes: int = Field(64 << 20, ge=0)
    # An already-curated corpus (a run folder, a Parquet dataset folder/glob/URL, or an index
    # folder from `thresher index`): this run's documents that are near-duplicates of one of its
    # documents are removed (reason near_duplicate_of_reference, by_id that document); its own
    # documents are never removed or output. None: dedup among this run's documents only.
    against: str | None = None
    # Reference documents read per bucket key shared with a new document (the smallest ids): a
    # giant reference bucket adds at most this many candidates per new document in it.
    against_bucket_cap: int = Field(64, ge=1)

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


def run(spark, tables, cfg: Config, ctx):
    if cfg.against:
        from thresher.stages.fuzzy_dedup.against import against_reference

        # Few new documents are signed to the driver whatever their bytes: the footers suffice.
        n = footer_rows(tables["documents"])
        size = {"n": n, "b": None} if n is not None else corpus_size(tables["documents"], cfg)
        return against_reference(spark, tables, cfg, *checked_params(tables, cfg), size)
    size = corpus_size(tables["documents"], cfg)
    out = run_with_pairs(spark, tables, cfg, size)[0]
    out.pop("documents")  # the runner derives the kept documents from `removed`
    return out


def checked_params(tables, cfg: Config) -> tuple[int, int]:
    """(bands, rows), after the checks every path makes before any work: one config error line."""
    bands, rows = lsh_params(cfg)
    if bands * rows > cfg.num_perm:
        raise ConfigError(f"fuzzy_dedup: bands x rows = {bands * rows} exceeds num_perm = {cfg.num_perm}")
    if cfg.survivor == "quality" and tables.get("quality") is None and "quality" not in tables["documents"].columns:
        raise ConfigError("fuzzy_dedup.survivor: 'quality' needs a quality table from an earlier stage (or a `quality` column)")
    return bands, rows


def fits_one_task(cfg: Config, size: dict) -> bool:
    """Whether corpus_size's documents take the one-task path (`one_task_docs`, `one_task_bytes`;
    b None: not counted, taken as fitting)."""
    return bool(cfg.one_task_docs and cfg.one_task_bytes and size["n"] <= cfg.one_task_docs
                and (size["b"] is None or size["b"] <= cfg.one_task_bytes))


def corpus_size(docs, cfg: Config) -> dict:
    """{"n": documents, "b": bytes of text or None}: what picks the path and sizes its shares.
    A plain scan of Parquet files (as the runner reads a table) is counted from the footers, and
    above `one_task_docs` the bytes are not needed; else one job over the texts (640k replica, AMD
    EPYC Zen 4, 2 cores: 1.7 s as a session's first job, 0.4 s after; the footers 3 ms)."""
    from pyspark.sql import functions as F

    n = footer_rows(docs)
    if n is not None and n > cfg.one_task_docs:
        return {"n": n, "b": None}
    size = docs.agg(F.count(F.lit(1)).alias("n"), F.sum(F.octet_length("text")).alias("b")).first()
    return {"n": int(size["n"]), "b": int(size["b"] or 0)}


def footer_rows(df) -> int | None:
    """The rows of `df` from its files' Parquet footers when it is a plain scan of local Parquet
    files (no filter, no join, no projection); else None."""
    from thresher.stages import storage

    try:
        if df._jdf.queryExecution().analyzed().getClass().getSimpleName() != "LogicalRelation":
            return None
        files = df.inputFiles()
    except Exception:  # noqa: BLE001 - another plan or a session without the JVM classes: count instead
        return None
    if not files or not all(f.startswith("file:") and f.endswith(".parquet") for f in files):
        return None
    return sum(storage.parquet_file(storage.local_path(f)).metadata.num_rows for f in files)


def run_with_pairs(spark, tables, cfg: Config, size: dict | None = None):
    """The stage's result and its scored candidate pairs (a, b, size, j) for inspection: the
    pairs with j >= threshold are the verified edges of the components. `size`: corpus_size's,
    when the caller has it."""
    from thresher.stages.fuzzy_dedup.distributed import run_distributed
    from thresher.stages.fuzzy_dedup.one_task import run_one_task

    bands, rows = checked_params(tables, cfg)
    docs = tables["documents"]
    has_quality = tables.get("quality") is not None or "quality" in docs.columns
    size = size or corpus_size(docs, cfg)
    if fits_one_task(cfg, size):
        return run_one_task(docs, tables, cfg, bands, rows)
    return run_distributed(docs, tables, cfg, bands, rows, has_quality, size["n"])


# The pieces the tests and benchmarks reach through the stage module.
from thresher.kernels.lsh import capped_pairs, star_pairs  # noqa: E402
from thresher.stages.fuzzy_dedup.distributed import reference_batches  # noqa: E402
from thresher.stages.fuzzy_dedup.results import size_bins  # noqa: E402


SPEC = StageSpec(name=NAME, inputs=("documents",), optional_inputs=("quality",), outputs=("removed", "duplicates"),
                 removes=True, fingerprint=against_fingerprint)

__all__ = ["NAME", "SPEC", "Config", "lsh_params", "run", "run_with_pairs",
           "capped_pairs", "star_pairs", "reference_batches", "size_bins"]
