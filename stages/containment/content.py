"""Step 3: decide candidate pairs on content. Rows are fingerprinted (two 64-bit hashes,
kernels/sketch.py) over the contained side's columns; small pairs are compared in the driver,
the rest on Spark (one fingerprinting job for the catalog, bottom-k sketches as a first cut for
large contained sides, one anti-join)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from thresher.kernels.sketch import bottom_k, distinct_counts, found_in, row_hashes, sketch_verdict
from thresher.stages.containment.catalog import Dataset, normal_type

if TYPE_CHECKING:
    from thresher.stages.containment import Config

STEP_MINMAX = "minmax"
STEP_SKETCH = "sketch"
STEP_CONTENT = "content"


def hash_schema(d: Dataset) -> pa.Schema:
    """The types a row is hashed in: equal values of the same type class get equal hashes
    (integers widened to int64, encodings and offset widths dropped)."""
    out = []
    for f in d.schema:
        t = pa.int64() if d.classes[f.name] == "int64" else normal_type(f.type)
        out.append(pa.field(f.name, t))
    return pa.schema(out)



def read_fingerprints(spark, datasets: list[Dataset], needs: dict[int, list[int]], colsets: list[tuple[str, ...]]):
    """One DataFrame (ds int, s int, h1 long, h2 long): every row of dataset ds fingerprinted over
    column set s, for each (ds, s) in `needs`.

    One Spark job for the whole catalog: the units are (dataset, file, row group); executors read
    each row group's columns once with pyarrow and hash it for every column set it is needed for.
    Only the small spec (files, schemas, column sets) travels from the driver."""
    specs: dict[int, tuple[pa.Schema, list[tuple[int, tuple[str, ...]]]]] = {}
    units = []
    for ds_i in sorted(needs):
        d = datasets[ds_i]
        sets = [(s, colsets[s]) for s in sorted(needs[ds_i])]
        hs = hash_schema(d)
        want = sorted({c for _, cols in sets for c in cols})
        specs[ds_i] = (pa.schema([hs.field(c) for c in want]), sets)
        for f in d.files:
            for rg in range(pq.ParquetFile(f).metadata.num_row_groups):
                units.append((ds_i, f, rg))
    out_schema = pa.schema([("ds", pa.int32()), ("s", pa.int32()), ("h1", pa.int64()), ("h2", pa.int64())])

    def fingerprint_units(batches):
        from thresher.kernels.threads import limit_task_threads

        # polars sizes its pool at import: one worker per task slot, like numba and torch.
        os.environ.setdefault("POLARS_MAX_THREADS", str(limit_task_threads()))
        for b in batches:
            for ds_i, f, rg in zip(*(b.column(i).to_pylist() for i in range(3))):
                schema, sets = specs[ds_i]
                t = pq.ParquetFile(f).read_row_group(rg, columns=schema.names).cast(schema)
                if t.num_rows == 0:
                    continue
                for s, cols in sets:
                    h1, h2 = row_hashes(t, cols)
                    n = len(h1)
                    yield pa.RecordBatch.from_arrays(
                        [pa.array(np.full(n, ds_i, np.int32)), pa.array(np.full(n, s, np.int32)),
                         pa.array(h1), pa.array(h2)], schema=out_schema)

    udf = spark.createDataFrame(units, "ds int, f string, rg int")
    parallel = spark.sparkContext.defaultParallelism
    udf = udf.repartition(max(1, min(len(units), 4 * parallel)))
    return udf.mapInArrow(fingerprint_units, "ds int, s int, h1 long, h2 long")


@dataclass
class PairResult:
    step: str
    fraction: float | None
    contained: bool
    detail: str = ""



def partial_sketches(k: int):
    """mapInArrow function: one partition's bottom-k distinct h1 per (ds, s)."""

    def run(batches):
        acc: dict[tuple[int, int], np.ndarray] = {}
        for b in batches:
            if b.num_rows == 0:
                continue
            cols = [b.column(i).to_numpy(zero_copy_only=False) for i in range(3)]
            for key, h in bottom_k(*cols, k).items():
                acc[key] = np.union1d(acc[key], h)[:k] if key in acc else h
        if acc:
            keys = sorted(acc)
            n = [len(acc[x]) for x in keys]
            yield pa.RecordBatch.from_arrays(
                [pa.array(np.repeat([x[0] for x in keys], n).astype(np.int32)),
                 pa.array(np.repeat([x[1] for x in keys], n).astype(np.int32)),
                 pa.array(np.concatenate([acc[x] for x in keys]))], names=["ds", "s", "h1"])

    return run



LOCAL_BATCH_ROWS = 65_536


def local_fingerprints(d: Dataset, colsets: list[tuple[str, ...]]) -> dict[tuple[str, ...], tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """For each column set, the distinct 128-bit row fingerprints of `d` over it, sorted by
    (h1, h2), and how many rows carry each. Read in the driver once, batch by batch and only the
    columns the sets need: for small tables."""
    hs = hash_schema(d)
    want = sorted({c for cols in colsets for c in cols})
    schema = pa.schema([hs.field(c) for c in want])
    parts: dict[tuple[str, ...], list[tuple[np.ndarray, np.ndarray]]] = {cols: [] for cols in colsets}
    for f in d.files:
        # In batches: the driver never holds more than one batch of a file's values.
        for batch in pq.ParquetFile(f).iter_batches(batch_size=LOCAL_BATCH_ROWS, columns=want):
            t = pa.Table.from_batches([batch]).cast(schema)
            if t.num_rows:
                for cols in colsets:
                    parts[cols].append(row_hashes(t, cols))
    out = {}
    for cols, hs_ in parts.items():
        if not hs_:
            e = np.empty(0, np.int64)
            out[cols] = (e, e, e)
            continue
        out[cols] = distinct_counts(np.concatenate([x[0] for x in hs_]), np.concatenate([x[1] for x in hs_]))
    return out


# The driver keeps the fingerprints of the column sets it is working on: at most about this many
# bytes (24 a row), unless a single column set needs more.
LOCAL_FINGERPRINT_BYTES = 1 << 30


def local_content_check(datasets: list[Dataset], edges: list[tuple[int, int]], cfg: Config) -> dict[tuple[int, int], PairResult]:
    """The exact content check in the driver. Column sets are taken in groups whose fingerprints
    fit LOCAL_FINGERPRINT_BYTES; within a group each table is read once. Same fingerprints and the
    same fraction (A's rows with multiplicity) as on Spark."""
    by_set: dict[tuple[str, ...], list[tuple[int, int]]] = {}
    for a, b in edges:
        by_set.setdefault(datasets[a].columns, []).append((a, b))
    groups: list[list[tuple[str, ...]]] = []
    used = LOCAL_FINGERPRINT_BYTES
    for cols in sorted(by_set):
        need = 24 * sum(datasets[i].num_rows for i in {x for e in by_set[cols] for x in e})
        if used + need > LOCAL_FINGERPRINT_BYTES:
            groups.append([])
            used = 0
        groups[-1].append(cols)
        used += need
    results: dict[tuple[int, int], PairResult] = {}
    for group in groups:
        needs: dict[int, list[tuple[str, ...]]] = {}
        for cols in group:
            for i in sorted({x for e in by_set[cols] for x in e}):
                needs.setdefault(i, []).append(cols)
        fps = {i: local_fingerprints(datasets[i], sets) for i, sets in needs.items()}
        for cols in group:
            for a, b in by_set[cols]:
                a1, a2, ac = fps[a][cols]
                b1, b2, _ = fps[b][cols]
                frac = float(ac[found_in(a1, a2, b1, b2)].sum()) / datasets[a].num_rows
                results[(a, b)] = PairResult(STEP_CONTENT, frac, frac >= cfg.tau - 1e-12)
        del fps
    return results


def content_check(spark, datasets: list[Dataset], edges: list[tuple[int, int]], cfg: Config,
                  use_sketch: bool | None = None) -> tuple[dict[tuple[int, int], PairResult], dict]:
    """Decide every edge on content: pairs of small tables in the driver, the rest on Spark.
    Returns per-pair results and step counts."""
    local, remote = [], []
    for a, b in edges:
        small = max(datasets[a].num_rows, datasets[b].num_rows) <= cfg.local_max_rows
        (local if small else remote).append((a, b))
    results = local_content_check(datasets, local, cfg) if local else {}
    sresults, counts = spark_content_check(spark, datasets, remote, cfg, use_sketch)
    results.update(sresults)
    counts["local_pairs"] = len(local)
    counts["after_sketch"] += len(local)
    counts["exact_pairs"] += len(local)
    return results, counts


def spark_content_check(spark, datasets: list[Dataset], edges: list[tuple[int, int]], cfg: Config,
                        use_sketch: bool | None = None) -> tuple[dict[tuple[int, int], PairResult], dict]:
    """The content check on Spark: one job fingerprints every table the edges need, sketches cut
    the pairs whose contained side is large, one anti-join decides the rest."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    if not edges:
        return {}, {"sketched_pairs": 0, "after_sketch": 0, "exact_pairs": 0}
    use_sketch = cfg.sketch if use_sketch is None else use_sketch
    colsets: list[tuple[str, ...]] = []
    s_of: dict[tuple[str, ...], int] = {}
    needs: dict[int, set[int]] = {}
    edge_s: dict[tuple[int, int], int] = {}
    for a, b in edges:
        cols = datasets[a].columns
        s = s_of.setdefault(cols, len(colsets))
        if s == len(colsets):
            colsets.append(cols)
        edge_s[(a, b)] = s
        needs.setdefault(a, set()).add(s)
        needs.setdefault(b, set()).add(s)
    fp = read_fingerprints(spark, datasets, {k: sorted(v) for k, v in needs.items()}, colsets)
    fp = fp.persist(StorageLevel.MEMORY_AND_DISK)
    fp.count()  # materialise once: the sketch and both sides of the anti-join read it
    results: dict[tuple[int, int], PairResult] = {}
    counts = {"sketched_pairs": 0, "after_sketch": 0, "exact_pairs": 0}
    try:
        exact = list(edges)
        if use_sketch:
            big = [e for e in edges if datasets[e[0]].num_rows >= cfg.sketch_min_rows]
            if big:
                exact = [e for e in edges if datasets[e[0]].num_rows < cfg.sketch_min_rows]
                want = sorted({(a, edge_s[(a, b)]) for a, b in big} | {(b, edge_s[(a, b)]) for a, b in big})
                want_df = spark.createDataFrame(want, "ds int, s int")
                k = cfg.sketch_size
                # Each partition keeps its k smallest distinct hashes per (ds, s); the driver merges
                # them. The bottom k of a union is within the union of the parts' bottom k, so this
                # is exact, and needs no shuffle.
                d = fp.join(F.broadcast(want_df), ["ds", "s"]).select("ds", "s", "h1")
                parts = d.mapInArrow(partial_sketches(k), "ds int, s int, h1 long").toArrow()
                sketches = bottom_k(*(parts.column(c).to_numpy() for c in ("ds", "s", "h1")), k)
                counts["sketched_pairs"] = len(big)
                for a, b in big:
                    s = edge_s[(a, b)]
                    ok, est = sketch_verdict(sketches[(a, s)], sketches[(b, s)], k, cfg.tau)
                    if ok:
                        exact.append((a, b))
                    else:
                        results[(a, b)] = PairResult(STEP_SKETCH, None if est != est else est, False,
                                                     "bottom-k sketch")
        counts["after_sketch"] = counts["exact_pairs"] = len(exact)
        if exact:
            ed = spark.createDataFrame([(a, b, edge_s[(a, b)]) for a, b in sorted(exact)], "a int, b int, s int")
            left = fp.join(F.broadcast(ed), (fp.ds == ed.a) & (fp.s == ed.s)).select("a", "b", ed.s, "h1", "h2")
            right = (fp.join(F.broadcast(ed.select("b", "s").distinct()), (fp.ds == F.col("b")) & (fp.s == ed.s))
                     .select(F.col("b"), ed.s, "h1", "h2").distinct())
            missing = {(r["a"], r["b"]): r["n"] for r in
                       left.join(right, ["b", "s", "h1", "h2"], "left_anti").groupBy("a", "b").agg(F.count("*").alias("n")).collect()}
            for a, b in exact:
                n = datasets[a].num_rows
                frac = 1.0 - missing.get((a, b), 0) / n
                results[(a, b)] = PairResult(STEP_CONTENT, frac, frac >= cfg.tau - 1e-12)
    finally:
        fp.unpersist()
    return results, counts
