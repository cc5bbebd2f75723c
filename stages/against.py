"""Dedup against a reference corpus (`exact_dedup.against`, `fuzzy_dedup.against`).

The reference is a corpus already curated: a run folder (its `dataset/`), a Parquet dataset (a
folder, glob or URL that stages/storage.py reads), or an index folder written by `thresher
index`. Its documents are never removed and never output; this run's documents that duplicate
one of them are removed with `by_id` naming it.

Definition. Take the graph over reference and new documents whose edges are the stage's
duplicate pairs, and let every reference document outrank every new one in the survivor rule.
A new document is kept iff it is the survivor of its component.

The stages compute it without the reference-reference edges and without re-deduplicating the
reference:
  (a) the new documents are deduplicated among themselves as without `against`;
  (b) each new document is matched against the reference (exact: the same 128-bit normalised
      hash; fuzzy: a shared LSH bucket key, at most `against_bucket_cap` reference documents per
      bucket, then the exact Jaccard >= threshold as the stage verifies its own pairs);
  (c) every new document whose new-only component (from (a)) holds a matched document is
      removed, by_id a reference document: a matched one's best match (highest similarity, ties
      smallest id), the others the best match of their whole component.
Why (c) is the definition: a component of the union graph that holds a reference document has
a reference survivor, so all its new documents go. A path from a new document to a reference
document leaves the new documents by one new-reference edge, whose new end is in the same
new-only component: so a new document reaches the reference iff its new-only component holds a
matched document. A union component without a reference document is a new-only component with
no match, whose survivor (a) already chose by the same rule. Reference-reference edges only
join reference documents, which are never output, so they change nothing for the new ones.

The index (`thresher index`, `build_index`) holds what (b) needs from the reference, computed
once by the stages' own code (exact_dedup.hash_batches, fuzzy_dedup.signing.sign_batches):
    index.json          the config that decides the rows, thresher's version, the reference's
                        file fingerprint (names, sizes, mtimes)
    exact/              (id, _h1, _h2)
    fuzzy/signed/       (id, n, _length, s): s the shingle set (verify) or the signature, n the
                        rank of id among the reference's ids (0, 1, ...)
    fuzzy/buckets/      (bk, n, size): bucket_rows, a row per bucket key and each of its
                        `against_bucket_cap` documents of smallest id; size, the key's document
                        count, on its first row (0 on the others)
A run matches and groups the reference's documents by n, numbers in numpy, and reads the ids
only of the few it pairs.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from thresher.schemas.errors import ConfigError, InputError
from thresher.stages import storage

log = logging.getLogger("thresher.against")

INDEX_FILE = "index.json"
INDEX_FORMAT = 3
RUN_MANIFEST = "manifest.json"


@dataclass(frozen=True)
class Reference:
    """What `against` names, resolved: the reference's Parquet files and where its index is."""

    spec: str                     # as the user wrote it
    kind: str                     # "run", "dataset" or "index"
    files: tuple                  # storage.Entry of each Parquet file of the reference (empty for "index")
    index: str | None             # an index folder to use when it matches (given, or the default place)
    index_meta: dict | None       # its index.json, when one is there

    @property
    def fingerprint(self) -> dict:
        if self.kind == "index":
            return self.index_meta["reference"]
        return files_fingerprint(self.spec, self.files)


def files_fingerprint(spec: str, files) -> dict:
    return {"location": storage.canonical(spec) if not storage.has_magic(spec) else spec,
            "files": [{"path": e.loc, "bytes": e.size, "mtime_ns": e.mtime_ns} for e in files]}


def _is_dir(loc: str) -> bool:
    if not storage.is_remote(loc):
        return os.path.isdir(storage.local_path(loc))
    from pyarrow.fs import FileType

    return storage.info(loc).type == FileType.Directory


def _exists(loc: str) -> bool:
    if not storage.is_remote(loc):
        return os.path.exists(storage.local_path(loc))
    from pyarrow.fs import FileType

    return storage.info(loc).type != FileType.NotFound


def read_index_meta(loc: str) -> dict | None:
    p = storage.join(loc, INDEX_FILE)
    if not _exists(p):
        return None
    try:
        meta = json.loads(storage.read_text(p))
    except ValueError:
        raise InputError(f"{p}: not a thresher index (unreadable JSON)") from None
    if meta.get("format") != INDEX_FORMAT:
        raise InputError(f"{p}: index format {meta.get('format')!r}, this thresher reads {INDEX_FORMAT}; "
                         f"rebuild it with `thresher index`")
    return meta


def parquet_files(spec: str) -> tuple:
    """Every Parquet file of a folder, glob or file (hidden files and markers skipped)."""
    found = storage.matches(spec)
    if not found:
        raise InputError(f"{spec}: reference corpus not found")
    out = []
    for loc, root, is_dir in found:
        if is_dir:
            for e in storage.walk_files(loc):
                if e.loc.endswith(".parquet") and not storage.hidden(storage.relpath(e.loc, loc)):
                    out.append(e)
        elif loc.endswith(".parquet") or not storage.has_magic(spec):
            out.append(storage.stat(loc))
    if not out:
        raise InputError(f"{spec}: reference corpus holds no Parquet files")
    return tuple(sorted(out))


def default_index(spec: str, kind: str) -> str | None:
    """RUN/index for a run folder, `<dataset path>.index` beside a dataset folder or file; none
    for a glob."""
    if kind == "run":
        return storage.join(spec, "index")
    if storage.has_magic(spec):
        return None
    c = storage.canonical(spec)
    return (c.rstrip("/") if storage.is_remote(c) else c.rstrip(os.sep)) + ".index"


def resolve(spec: str) -> Reference:
    """The reference named by `against`; one InputError line when it is missing or unreadable."""
    storage.filesystem(spec)  # an unknown scheme fails here, in one line naming it
    if not storage.has_magic(spec) and _is_dir(spec):
        meta = read_index_meta(spec)
        if meta is not None:
            return Reference(spec, "index", (), spec, meta)
        if _exists(storage.join(spec, RUN_MANIFEST)):
            data = storage.join(spec, "dataset")
            if not _exists(data):
                raise InputError(f"{spec}: a run folder without a dataset/ (did its export run?)")
            files = parquet_files(data)
            index = default_index(spec, "run")
            return Reference(spec, "run", files, index, _meta_or_none(index))
    files = parquet_files(spec)
    index = default_index(spec, "dataset")
    return Reference(spec, "dataset", files, index, _meta_or_none(index))


def _meta_or_none(index: str | None) -> dict | None:
    if index is None:
        return None
    try:
        return read_index_meta(index) if _is_dir(index) else None
    except InputError as exc:
        log.warning("%s; not using it", exc)
        return None


def stage_fingerprint(against: str | None) -> dict:
    """What of the reference decides a stage's result (its resume/cache fingerprint): nothing
    without `against`, else its files (names, sizes, mtimes) or the indexed reference's."""
    if not against:
        return {}
    ref = resolve(against)
    return {"against": ref.fingerprint}


def spec_fingerprint(paths, cfg) -> dict:
    """StageSpec.fingerprint of exact_dedup and fuzzy_dedup: their `against` reference."""
    return stage_fingerprint(cfg.against)


# -------------------------------------------------------------------------- index config
def exact_settings(cfg) -> dict:
    """What decides exact_dedup's hashes (an index built otherwise cannot serve the stage)."""
    return {"normalise": cfg.normalise.model_dump(mode="json"), "seed": int(cfg.seed or 0)}


def fuzzy_settings(cfg, bands: int, rows: int) -> dict:
    """What decides fuzzy_dedup's signed rows and bucket keys (and how many ids a bucket lists)."""
    return {"normalise": cfg.normalise.model_dump(mode="json"), "shingle": cfg.shingle.model_dump(mode="json"),
            "num_perm": cfg.num_perm, "seed": int(cfg.seed or 0), "bands": bands, "rows": rows,
            "verify": cfg.verify, "against_bucket_cap": cfg.against_bucket_cap}


def _differing(have: dict, want: dict) -> str | None:
    for k in want:
        # An index listing more ids per bucket than the stage reads serves it (the stage slices).
        if k == "against_bucket_cap" and isinstance(have.get(k), int) and have[k] >= want[k]:
            continue
        if have.get(k) != want[k]:
            return k
    return None


def bucket_rows(keys, cap: int, col: str = "id"):
    """(bk, col) rows -> at most `cap` rows per bucket key, its smallest values of col:
    (bk, col, size), size the key's row count on its first row and 0 on the others (so a reader
    counts each capped key once). A window numbers each bucket's rows, so a giant bucket is never
    held whole."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    w = Window.partitionBy("bk").orderBy(col)
    return (keys.withColumn("_n", F.row_number().over(w)).withColumn("_size", F.count(F.lit(1)).over(Window.partitionBy("bk")))
            .where(F.col("_n") <= cap)
            .select("bk", col, F.when(F.col("_n") == 1, F.col("_size")).otherwise(F.lit(0)).cast("long").alias("size")))


def placed(sorted_frame):
    """`sorted_frame` (range-partitioned and sorted within partitions) with each row's place:
    _p its partition, _m Spark's monotonically increasing id there."""
    from pyspark.sql import functions as F

    return sorted_frame.select("*", F.spark_partition_id().alias("_p"), F.monotonically_increasing_id().alias("_m"))


def rank_column(frame):
    """For a computed (cached or checkpointed) `placed` frame: (the column n, each row's rank in
    the sort order; the first rank of each non-empty partition, ascending). The partitions'
    counts give their offsets, so no single task sees every row."""
    from pyspark.sql import functions as F

    counts = sorted(frame.groupBy("_p").count().collect())
    starts = np.cumsum([0] + [c for _, c in counts[:-1]]).astype(np.int64) if counts else np.zeros(0, np.int64)
    # monotonically_increasing_id is the partition's index << 33 plus the row's place in it.
    n = F.col("_m") - F.shiftleft(F.col("_p").cast("long"), 33)
    if counts:
        n = n + F.create_map(*[F.lit(int(x)) for (p, _), at in zip(counts, starts) for x in (p, at)])[F.col("_p")]
    return n.alias("n"), starts


def rank_ids(ids, reliable: bool = False):
    """(id) rows -> (id, n): n the rank of id in sorted order (0, 1, ...; ties in any order)."""
    from thresher.stages.components import materialise

    ranked = materialise(placed(ids.select("id").orderBy("id")), reliable)
    return ranked.select("id", rank_column(ranked)[0])


def usable_index(ref: Reference, stage: str, want: dict) -> str | None:
    """The index folder the stage reads, or None (then it hashes/signs the reference itself).

    An index given directly must have been built with the stage's settings (else a ConfigError
    naming the key); one at the default place is used when its settings and the reference's file
    fingerprint both match."""
    meta = ref.index_meta
    if meta is None:
        return None
    have = meta.get(stage, {})
    key = _differing(have, want)
    if ref.kind == "index":
        if key is not None:
            raise ConfigError(
                f"{stage}.against: {ref.spec} was indexed with {key}={json.dumps(have.get(key))}, the stage uses "
                f"{key}={json.dumps(want[key])}; rebuild it with `thresher index {meta['reference']['location']} "
                f"--config <this run's config> --output {ref.spec}`")
        return ref.index
    if key is not None:
        log.info("%s.against: the index at %s was built with another %s; not using it", stage, ref.index, key)
        return None
    if meta.get("reference", {}).get("files") != ref.fingerprint["files"]:
        log.info("%s.against: the index at %s is older than the reference's files; not using it", stage, ref.index)
        return None
    return ref.index


# -------------------------------------------------------------------------- reading
def read_documents(spark, ref: Reference):
    """The reference's (id, text) as a DataFrame: Spark's reader for local files, executors
    reading through stages/storage.py (row groups spread over the tasks) for URLs."""
    from pyspark.sql import functions as F

    if ref.kind == "index":
        raise ConfigError(f"{ref.spec}: an index holds no documents")  # never reached: an index is used as is
    first = ref.files[0].loc
    names = storage.parquet_file(first).schema_arrow.names
    for col in ("id", "text"):
        if col not in names:
            raise InputError(f"{first}: reference corpus has no '{col}' column")
    if not any(storage.is_remote(e.loc) for e in ref.files):
        return spark.read.parquet(*[e.loc for e in ref.files]).select(F.col("id").cast("string"),
                                                                     F.col("text").cast("string"))
    opts = storage.current().model_dump()

    def read_units(batches):
        import pyarrow as pa

        for t in read_row_groups(batches, ["id", "text"], opts):
            for rb in t.to_batches():
                yield pa.RecordBatch.from_arrays([rb.column(0).cast(pa.string()), rb.column(1).cast(pa.string())],
                                                 names=["id", "text"])

    return row_group_units(spark, ref.files).mapInArrow(read_units, "id string, text string")


def read_row_groups(units, columns: list, opts: dict):
    """In an executor: each (path, rg) unit of `units` (Arrow batches of row_group_units) read
    by pyarrow as a table of `columns`."""
    storage.configure(opts)  # executors do not share the driver's module state
    for u in units:
        for path, rg in zip(u.column(0).to_pylist(), u.column(1).to_pylist()):
            yield storage.parquet_file(path).read_row_group(rg, columns=columns)


def row_group_units(spark, files):
    """A DataFrame (path, rg) with one row per row group of `files` (storage entries), in
    contiguous slices over the tasks: for executors that read Parquet with pyarrow (URLs, or tables whose rows
    Spark's row format would make slow to hand to Python)."""
    units = [(e.loc, g) for e in files for g in range(storage.parquet_file(e.loc).metadata.num_row_groups)]
    # A local relation is cut into min(rows, defaultParallelism) contiguous slices: one task per
    # core. Repartitioning it into four tasks a core, for balance that row groups of similar
    # size hardly need, cost a shuffle and a Python task each: 0.45 s more per job, 8 tasks
    # against 2 (AMD EPYC Zen 4, 2 cores).
    return spark.createDataFrame(units, "path string, rg int")


def exact_reference(spark, ref: Reference, cfg):
    """(id, _h1, _h2) of every reference document, from the index or hashed now; its source; and
    the index's exact folder when there is one (for readers that skip Spark's row format)."""
    from thresher.stages.exact_dedup import hash_batches

    index = usable_index(ref, "exact", exact_settings(cfg))
    if index is not None:
        log.info("exact_dedup.against: reading the index at %s", index)
        folder = storage.join(index, "exact")
        return spark.read.parquet(folder), f"index {index}", folder
    log.info("exact_dedup.against: no matching index for %s; hashing the reference in this run "
             "(`thresher index` stores it once)", ref.spec)
    docs = read_documents(spark, ref)
    hashed = docs.mapInArrow(hash_batches(cfg), "id string, _h1 bigint, _h2 bigint, _length bigint")
    return hashed.select("id", "_h1", "_h2"), "hashed in this run", None


@dataclass(frozen=True)
class FuzzyReference:
    signed: object            # DataFrame (id, _length, s)
    keys: object              # DataFrame: (bk, n, size) bucket_rows from an index, else (bk, id)
    source: str               # "index <folder>" or "signed in this run"
    cached: object = None     # the persisted signed table the caller unpersists when done
    buckets: str | None = None  # an index's bucket and signed folders, for readers that skip
    sets: str | None = None     # Spark's row format


def fuzzy_reference(spark, ref: Reference, cfg, bands: int, rows: int) -> FuzzyReference:
    """The reference's shingle sets (or signatures) and bucket keys, from the index or signed now."""
    from pyspark.sql import functions as F

    from thresher.stages.fuzzy_dedup.signing import SIGNED, sign_batches

    index = usable_index(ref, "fuzzy", fuzzy_settings(cfg, bands, rows))
    if index is not None:
        log.info("fuzzy_dedup.against: reading the index at %s", index)
        buckets, sets = storage.join(index, "fuzzy", "buckets"), storage.join(index, "fuzzy", "signed")
        return FuzzyReference(spark.read.parquet(sets), spark.read.parquet(buckets), f"index {index}", None, buckets, sets)
    log.info("fuzzy_dedup.against: no matching index for %s; signing the reference in this run "
             "(`thresher index` stores it once)", ref.spec)
    signed = read_documents(spark, ref).mapInArrow(sign_batches(cfg, bands, rows), SIGNED).persist()
    return FuzzyReference(signed.select("id", "_length", "s"), signed.select(F.explode("bk").alias("bk"), "id"),
                          "signed in this run", signed)


# -------------------------------------------------------------------------- the index
def build_index(spark, spec: str, exact_cfg, fuzzy_cfg, dest: str | None = None, version: str = "") -> tuple[str, dict]:
    """Writes the index of reference `spec` to `dest` (default: RUN/index, `<dataset>.index`):
    into a temporary folder beside it, renamed into place when whole. Returns (dest, index.json)."""
    from pyspark.sql import functions as F

    from thresher.stages.exact_dedup import hash_batches
    from thresher.stages.fuzzy_dedup import lsh_params
    from thresher.stages.fuzzy_dedup.signing import SIGNED, sign_batches

    ref = resolve(spec)
    if ref.kind == "index":
        raise ConfigError(f"{spec}: already an index; name the run folder or dataset it indexes")
    dest = dest or ref.index
    if dest is None:
        raise ConfigError(f"{spec}: a glob has no default index location; give --output DIR")
    if storage.is_remote(dest):
        raise ConfigError(f"{dest}: the index is written by Spark, so it must be a local, NFS or HDFS-mounted "
                          "folder, not a URL; give --output DIR")
    dest_p = Path(storage.local_path(dest))
    if dest_p.exists() and not (dest_p / INDEX_FILE).exists():
        raise ConfigError(f"{dest_p}: exists and is not a thresher index; not replacing it")
    bands, rows = lsh_params(fuzzy_cfg)
    dest_p.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest_p.parent / f".{dest_p.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        docs = read_documents(spark, ref)
        exact = docs.mapInArrow(hash_batches(exact_cfg), "id string, _h1 bigint, _h2 bigint, _length bigint")
        exact.select("id", "_h1", "_h2").write.parquet(str(tmp / "exact"))
        # Signed once, read twice (sets, bucket keys): written first, then exploded from the file.
        signed = docs.mapInArrow(sign_batches(fuzzy_cfg, bands, rows), SIGNED)
        signed.write.parquet(str(tmp / "fuzzy" / "all"))
        both = spark.read.parquet(str(tmp / "fuzzy" / "all"))
        both = both.join(rank_ids(both.select("id").distinct()), "id")
        both.select("id", "n", "_length", "s").write.parquet(str(tmp / "fuzzy" / "signed"))
        # A row per bucket key and each of its first documents: a run reads the keys its new
        # documents share, with no shuffle of the reference's keys. Row groups of 16 MB (about
        # 2M rows at 640k): a run reads one per task, so the pass spreads over the cores.
        bucket_rows(both.select(F.explode("bk").alias("bk"), "n"), fuzzy_cfg.against_bucket_cap, "n").write.option(
            "parquet.block.size", 16 << 20).parquet(str(tmp / "fuzzy" / "buckets"))
        counts = {"documents": spark.read.parquet(str(tmp / "exact")).count(),
                  "signed": spark.read.parquet(str(tmp / "fuzzy" / "signed")).count()}
        _remove(tmp / "fuzzy" / "all")
        meta = {"format": INDEX_FORMAT, "thresher": version, "reference": ref.fingerprint,
                "exact": exact_settings(exact_cfg), "fuzzy": fuzzy_settings(fuzzy_cfg, bands, rows), "rows": counts}
        (tmp / INDEX_FILE).write_text(json.dumps(meta, indent=2))
        if dest_p.exists():
            old = dest_p.parent / f".{dest_p.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(dest_p, old)
            os.replace(tmp, dest_p)
            _remove(old)
        else:
            os.replace(tmp, dest_p)
    finally:
        _remove(tmp)
    return str(dest_p), meta


def _remove(p: Path) -> None:
    if p.exists():
        from thresher.stages.scratch import remove_tree

        remove_tree(p)
