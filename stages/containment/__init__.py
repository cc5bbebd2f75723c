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
flows/containment.py strings them together, writes the outputs and owns the output folder.
Nothing here deletes or writes user data.

Containment is over sets of rows: A is contained in B when every row of A, restricted to A's
columns, is a row of B restricted to the same columns (nulls equal nulls). The fraction counts
A's rows with multiplicity: fraction = rows of A found in B / rows of A.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from thresher.kernels.sketch import SEEDS, bottom_k, found_in, row_hashes, sketch_verdict
from thresher.stages.base import StageConfig, Strict
from thresher.stages.containment.catalog import (ColumnStats, Dataset, DatasetRef, is_nested, load_catalog, normal_type,
                                                 parquet_files, type_class)
from thresher.stages.containment.content import (STEP_CONTENT, STEP_MINMAX, STEP_SKETCH, PairResult, content_check,
                                                 hash_schema, local_content_check, local_fingerprints, partial_sketches,
                                                 read_fingerprints, spark_content_check)
from thresher.stages.containment.plan import PlanRow, containment_table, plan, plan_table, rebuild_kind
from thresher.stages.containment.stats import inspect, inspect_all, minmax_excludes, minmax_prune, schema_graph

__all__ = [
    "SEEDS", "STEP_CONTENT", "STEP_MINMAX", "STEP_SKETCH", "ColumnStats", "Config", "CostModel", "Dataset", "DatasetRef",
    "PairResult", "PlanRow", "bottom_k", "containment_table", "content_check", "found_in", "hash_schema", "inspect",
    "inspect_all", "is_nested", "load_catalog", "local_content_check", "local_fingerprints", "minmax_excludes",
    "minmax_prune", "normal_type", "parquet_files", "partial_sketches", "plan", "plan_table", "read_fingerprints",
    "rebuild_kind", "row_hashes", "schema_graph", "sketch_verdict", "spark_content_check", "type_class",
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

