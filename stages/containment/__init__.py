"""Dataset containment over a catalog (R2D2: Reducing Redundancy and Duplication in Data Lakes).

Four steps, each shrinking the set of ordered pairs (A, B) that the next one has to look at:

1. schema graph   A -> B when every column of A is in B with a compatible type (footers only)
2. min-max        drop A -> B when some shared column's [min, max] in A is not inside B's, or A
                  has nulls where B has none (Parquet footer statistics; no data read)
3. content        128-bit fingerprints of A's rows over A's columns, |A n B| / |A| exactly: in the
                  driver (sorted fingerprints, numpy) when both tables are small, otherwise on
                  Spark by an anti-join, where tables of `sketch_min_rows` rows or more first go
                  through bottom-k sketches of the fingerprints, which can only disprove containment
4. plan           drop a dataset when a kept dataset contains it and the cost model says the
                  storage saved outweighs rebuilding it from that container

The package holds the steps as plain functions over `Dataset` records: catalog.py (the catalog,
column types), stats.py (footers: steps 1 and 2), content.py (step 3, in the driver and on
Spark; its kernels in kernels/sketch.py), plan.py (step 4 and the output tables).
This module is the stage: `run` reads the catalog named by the run's one input and returns the
`containment` table and the plan; the runner (flows/runner.py) writes them, as for any stage.
Nothing here deletes or writes user data.

Containment is over sets of rows: A is contained in B when every row of A, restricted to A's
columns, is a row of B restricted to the same columns (nulls equal nulls). The fraction counts
A's rows with multiplicity: fraction = rows of A found in B / rows of A.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Literal

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field

from thresher.kernels.sketch import SEEDS, bottom_k, found_in, row_hashes, sketch_verdict
from thresher.schemas.errors import ConfigError
from thresher.stages.base import StageConfig, StageSpec, Strict
from thresher.stages.containment.catalog import (ColumnStats, Dataset, DatasetRef, is_nested, load_catalog, normal_type,
                                                 parquet_files, type_class)
from thresher.stages.containment.content import (STEP_CONTENT, STEP_MINMAX, STEP_SKETCH, PairResult, content_check,
                                                 hash_schema, local_content_check, local_fingerprints, partial_sketches,
                                                 read_fingerprints, spark_content_check)
from thresher.stages.containment.plan import PlanRow, containment_table, plan, plan_table, rebuild_kind
from thresher.stages.containment.stats import inspect, inspect_all, minmax_excludes, minmax_prune, schema_graph

__all__ = [
    "ColumnStats", "Config", "CostModel", "Dataset", "DatasetRef", "PairResult", "PlanRow", "SEEDS", "SPEC",
    "STEP_CONTENT", "STEP_MINMAX", "STEP_SKETCH", "analyse", "bottom_k", "containment_table", "content_check",
    "found_in", "hash_schema", "inspect", "inspect_all", "is_nested", "load_catalog", "local_content_check",
    "local_fingerprints", "minmax_excludes", "minmax_prune", "minmax_step", "normal_type", "parquet_files",
    "partial_sketches", "plan", "plan_document", "plan_table", "read_fingerprints", "rebuild_kind",
    "row_hashes", "run", "schema_graph", "sketch_verdict", "spark_content_check", "type_class",
]


class CostModel(Strict):
    """Drop a contained dataset D rebuilt from container C when
    storage_weight * bytes(D) - (rebuild_weight * bytes of C's columns that D needs + rebuild_fixed_bytes)
    is at least min_saving_bytes. Weights are per byte, so only their ratio matters."""

    storage_weight: float = Field(1.0, ge=0)
    # Rebuilding reads the container's columns that D has (a projection and/or filter of C).
    rebuild_weight: float = Field(0.01, ge=0)
    rebuild_fixed_bytes: int = Field(0, ge=0)
    min_saving_bytes: int = Field(0, ge=0)


class Config(StageConfig):
    # Containment threshold: 1.0 is exact containment; below 1 a pair counts when at least this
    # share of A's rows is in B (near-containment; transitivity no longer holds).
    tau: float = Field(1.0, gt=0, le=1)
    minmax: bool = True
    # Bottom-k sketches as a first cut for contained-side tables of at least sketch_min_rows rows.
    sketch: bool = True
    sketch_min_rows: int = Field(1_000, ge=1)
    sketch_size: int = Field(256, ge=8)
    # Pairs whose two tables both have at most local_max_rows rows are fingerprinted and compared
    # in the driver (pyarrow + numpy), without a Spark job: for small tables a Spark job's fixed
    # cost is most of the work. Larger tables always go to Spark; 0 sends every pair there.
    local_max_rows: int = Field(250_000, ge=0)
    # A dataset that cannot be read (no Parquet, damaged footer, files that disagree on a column's
    # type): stop with one line, or leave it out of the comparison and say so in the plan.
    on_bad_dataset: Literal["fail", "skip"] = "fail"
    cost: CostModel = Field(default_factory=CostModel)



# ------------------------------------------------------------------------------- the stage
def minmax_step(datasets: list[Dataset], edges: list[tuple[int, int]], cfg: Config):
    """Step 2 as configured. Min-max bounds prove that a row of A is missing from B: that rules out
    exact containment only. Near-containment (tau < 1) tolerates missing rows, so the step is
    skipped there."""
    if not cfg.minmax or cfg.tau < 1.0:
        return list(edges), {}
    return minmax_prune(datasets, edges)


def analyse(spark, datasets: list[Dataset], cfg: Config) -> dict:
    """Steps 1-4 over inspected datasets; returns tables, counts and timings (writes nothing)."""
    times = {}
    t0 = time.perf_counter()
    edges, conflicts = schema_graph(datasets)
    times["schema_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    kept2, pruned = minmax_step(datasets, edges, cfg)
    times["minmax_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    results, ccounts = content_check(spark, datasets, kept2, cfg)
    times["content_s"] = time.perf_counter() - t0
    contained = {e: r.fraction for e, r in results.items() if r.contained}
    t0 = time.perf_counter()
    plan_rows = plan(datasets, contained, cfg)
    times["plan_s"] = time.perf_counter() - t0
    n = len(datasets)
    live = sum(d.comparable for d in datasets)
    counts = {
        "datasets": n,
        "compared": live,
        "empty": sum(d.problem is None and d.num_rows == 0 for d in datasets),
        "skipped": sum(d.problem is not None for d in datasets),
        "ordered_pairs": live * (live - 1),
        "after_schema": len(edges),
        "type_conflicts": conflicts,
        "after_minmax": len(kept2),
        "sketched_pairs": ccounts.get("sketched_pairs", 0),
        "after_sketch": ccounts.get("after_sketch", len(kept2)),
        "exact_pairs": ccounts.get("exact_pairs", 0),
        "local_pairs": ccounts.get("local_pairs", 0),
        "after_content": len(contained),
        "dropped": sum(r.action == "drop" for r in plan_rows),
        "bytes_saved": sum(r.bytes_saved for r in plan_rows),
    }
    return {
        "edges": edges, "pruned": pruned, "results": results, "contained": contained,
        "plan": plan_rows, "counts": counts, "timings": {k: round(v, 3) for k, v in times.items()},
        "table": containment_table(datasets, edges, pruned, results),
    }


def catalog_of(paths) -> str:
    """The run's one input: the catalog (a YAML list of datasets, or a folder of them)."""
    if not paths:
        raise ConfigError("input: no catalog given (pass CATALOG or set `input:`)")
    if len(paths) != 1:
        raise ConfigError(f"input: the containment flow reads one catalog, found {len(paths)} inputs")
    return str(paths[0])


def check_inputs(paths, cfg: Config) -> list[str]:
    """Preflight (no Spark): the catalog and every dataset's footers; returns the paths the run
    reads, which the output folder must not be inside."""
    datasets = inspect_all(load_catalog(catalog_of(paths)), cfg.on_bad_dataset)
    return [d.path for d in datasets]


def input_fingerprint(paths, cfg: Config) -> dict:
    """What of the catalog decides the result: every dataset's files, sizes and times."""
    catalog = catalog_of(paths)
    return {"catalog": catalog, "datasets": [
        {"name": r.name, "path": r.path,
         "files": [[f, st.st_size, st.st_mtime_ns] for f in parquet_files(r.path) for st in [os.stat(f)]]}
        for r in load_catalog(catalog)]}


def write_file(table: pa.Table, dest: Path, cfg) -> None:
    """A top-level table as a single Parquet file at `dest` (plan.parquet: a user opens it by name)."""
    pq.write_table(table, dest, compression="zstd")


def run(spark, tables, cfg: Config, ctx):
    """R2D2 over the catalog named by the run's input: the `containment` table (every candidate
    pair and the step that decided it) and the `plan` (plan.parquet at the run's top)."""
    datasets = inspect_all(load_catalog(catalog_of(ctx.input_paths)), cfg.on_bad_dataset)
    result = analyse(spark, datasets, cfg)
    # Both tables are small and built in the driver: no round trip through Spark. The pair table
    # is written here as one file (the runner validates it and links it in); the plan goes to the
    # run's top as plan.parquet through the writer below.
    pairs = ctx.scratch / "containment"
    pairs.mkdir()
    pq.write_table(result["table"], pairs / "part-00000.parquet", compression="zstd")
    return {"containment": pairs, "plan": plan_table(result["plan"]),
            "stats": {"counts": result["counts"], "timings": result["timings"]}}


def plan_document(plan: pa.Table, stats: dict, cfg: Config) -> dict:
    """plan.json: the plan and the step counts, for a person to read before deleting anything."""
    return {
        "tau": cfg.tau,
        "counts": stats["counts"],
        "plan": plan.to_pylist(),
        "note": "thresher deletes nothing: drop the datasets marked 'drop' yourself once you have checked them.",
    }


SPEC = StageSpec(name="containment", outputs=("containment", "plan"), source=True,
                 fingerprint=input_fingerprint, check=check_inputs,
                 writers={"plan": write_file}, top_level={"plan": "plan.parquet"})
