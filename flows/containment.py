"""The containment flow: R2D2 over a catalog of datasets, as Prefect tasks over one Spark session.

Output folder:
    <output>/containment/part-00000.parquet   every schema-compatible pair and the step that decided it
    <output>/plan.parquet, <output>/plan.json  what to keep and drop, bytes saved, per-step counts
    <output>/manifest.json                     config, versions, counts, timings (written last)

Everything is first written under <output>/.tmp and moved into place by renames, the manifest
last, so a reader that finds the manifest finds a whole result. User data is only read.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

import pyarrow.parquet as pq
from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from pydantic import Field, ValidationError

from thresher import schemas
from thresher.flows import __version__
from thresher.flows.config import (CONFIG_DIR, PrefectConfig, SparkConfig, Strict, _merge, _one_line,
                                   config_json, resolve_config_path)
from thresher.schemas.errors import ConfigError
from thresher.stages import containment as C

log = logging.getLogger("thresher.containment")

DEFAULT_CONFIG = CONFIG_DIR / "containment.yaml"
OUTPUTS = ["containment", "plan.parquet", "plan.json"]


class ContainmentRunConfig(Strict):
    catalog: str | None = None
    output: str | None = None
    seed: int = 0
    spark: SparkConfig = Field(default_factory=SparkConfig)
    prefect: PrefectConfig = Field(default_factory=PrefectConfig)
    containment: C.Config = Field(default_factory=C.Config)


def load_config(path: str | Path | None = None, overrides: dict | None = None,
                raw: dict | None = None) -> ContainmentRunConfig:
    """The shipped configs/containment.yaml (or `path`), then `raw`, then overrides."""
    import yaml

    p = resolve_config_path(path) if path is not None else DEFAULT_CONFIG
    data: dict = {}
    if p.exists():
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError:
            raise ConfigError(f"{p}: not valid YAML") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{p}: a config is a mapping of sections, found {type(data).__name__}")
    data = _merge(data, raw or {})
    data = _merge(data, overrides or {})
    try:
        return ContainmentRunConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(f"{p.name if path is None else path}: {_one_line(err, ContainmentRunConfig)}") from None


# ------------------------------------------------------------------------------- tasks
@task(cache_policy=NO_CACHE, persist_result=False)
def inspect_task(catalog: str, cfg: C.Config) -> list[C.Dataset]:
    return C.inspect_all(C.load_catalog(catalog), cfg.on_bad_dataset)


@task(cache_policy=NO_CACHE, persist_result=False)
def schema_task(datasets):
    return C.schema_graph(datasets)


@task(cache_policy=NO_CACHE, persist_result=False)
def minmax_task(datasets, edges, cfg: C.Config):
    # Min-max bounds prove that a row of A is missing from B: that rules out exact containment
    # only. Near-containment (tau < 1) tolerates missing rows, so the step is skipped there.
    if not cfg.minmax or cfg.tau < 1.0:
        return list(edges), {}
    return C.minmax_prune(datasets, edges)


@task(cache_policy=NO_CACHE, persist_result=False)
def content_task(spark, datasets, edges, cfg: C.Config):
    return C.content_check(spark, datasets, edges, cfg)


@task(cache_policy=NO_CACHE, persist_result=False)
def plan_task(datasets, contained, cfg: C.Config):
    return C.plan(datasets, contained, cfg)


def analyse(spark, datasets: list[C.Dataset], cfg: C.Config, as_tasks: bool = False) -> dict:
    """Steps 1-4 over inspected datasets; returns tables, counts and timings (writes nothing)."""
    call = (lambda t, *a: t(*a)) if as_tasks else (lambda t, *a: t.fn(*a))
    times = {}
    t0 = time.perf_counter()
    edges, conflicts = call(schema_task, datasets)
    times["schema_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    kept2, pruned = call(minmax_task, datasets, edges, cfg)
    times["minmax_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    results, ccounts = call(content_task, spark, datasets, kept2, cfg)
    times["content_s"] = time.perf_counter() - t0
    contained = {e: r.fraction for e, r in results.items() if r.contained}
    t0 = time.perf_counter()
    plan_rows = call(plan_task, datasets, contained, cfg)
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
        "table": C.containment_table(datasets, edges, pruned, results),
    }


# ------------------------------------------------------------------------------- output
def _prepare_output(root: Path, datasets: list[C.Dataset], overwrite: bool) -> None:
    from thresher.flows.runfolder import RunFolder

    folder = RunFolder(root, overwrite=overwrite)
    # RunFolder refuses output inside an input and removes only what it owns on --overwrite.
    folder.prepare(OUTPUTS, [Path(d.path) for d in datasets])


def write_outputs(root: Path, result: dict, datasets: list[C.Dataset], cfg: ContainmentRunConfig,
                  started: float) -> dict:
    import os
    import uuid

    from thresher.flows.runner import package_versions

    tmp = root / ".tmp" / f"containment-{uuid.uuid4().hex[:8]}"
    (tmp / "containment").mkdir(parents=True)
    table = result["table"]
    schemas.validate("containment", table.schema, "containment output")
    pq.write_table(table, tmp / "containment" / "part-00000.parquet", compression="zstd")
    plan_tbl = C.plan_table(result["plan"])
    pq.write_table(plan_tbl, tmp / "plan.parquet", compression="zstd")
    plan_doc = {
        "tau": cfg.containment.tau,
        "counts": result["counts"],
        "plan": plan_tbl.to_pylist(),
        "note": "thresher deletes nothing: drop the datasets marked 'drop' yourself once you have checked them.",
    }
    (tmp / "plan.json").write_text(json.dumps(plan_doc, indent=2, default=str))
    manifest = {
        "flow": "containment",
        "thresher": __version__,
        "status": "complete",
        "catalog": cfg.catalog,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "wall_s": round(time.time() - started, 3),
        "config": config_json(cfg),
        "versions": package_versions(),
        "counts": result["counts"],
        "timings": result["timings"],
        "datasets": [{"name": d.name, "path": d.path, "rows": d.num_rows, "bytes": d.bytes,
                      "columns": list(d.columns), "problem": d.problem} for d in datasets],
    }
    for name in OUTPUTS:
        dest = root / name
        if dest.exists():
            shutil.rmtree(dest) if dest.is_dir() else dest.unlink()
        os.replace(tmp / name, dest)
    t = root / f".manifest.json.{uuid.uuid4().hex[:8]}"
    t.write_text(json.dumps(manifest, indent=2, default=str))
    os.replace(t, root / "manifest.json")
    return manifest


def _execute(cfg: ContainmentRunConfig, overwrite: bool, spark, as_tasks: bool) -> dict:
    from thresher.flows.spark import get_spark

    if not cfg.catalog:
        raise ConfigError("catalog: no catalog given (pass CATALOG or set `catalog:`)")
    if not cfg.output:
        raise ConfigError("output: no output folder (pass --output or set `output:`)")
    started = time.time()
    ccfg = cfg.containment
    datasets = inspect_task(cfg.catalog, ccfg) if as_tasks else inspect_task.fn(cfg.catalog, ccfg)
    root = Path(cfg.output).absolute()
    created = not root.exists()
    _prepare_output(root, datasets, overwrite)
    try:
        spark = spark or get_spark(cfg.spark)
        result = analyse(spark, datasets, ccfg, as_tasks=as_tasks)
        manifest = write_outputs(root, result, datasets, cfg, started)
        log.info("containment: %s", json.dumps(result["counts"]))
        return manifest
    except BaseException:
        if created:
            shutil.rmtree(root, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(root / ".tmp", ignore_errors=True)


def execute(cfg: ContainmentRunConfig, overwrite: bool = False, spark=None) -> dict:
    """The flow without Prefect (tests, notebooks, --no-prefect)."""
    return _execute(cfg, overwrite, spark, as_tasks=False)


@flow(name="containment", log_prints=True, validate_parameters=False)
def containment(config: dict, overwrite: bool = False) -> dict:
    """Prefect flow over a config mapping (already merged with overrides)."""
    cfg = ContainmentRunConfig.model_validate(config)
    return _execute(cfg, overwrite, None, as_tasks=True)


def preflight(cfg: ContainmentRunConfig, overwrite: bool) -> None:
    """Every check a user's mistake can fail, before Spark or Prefect start: the catalog, the
    datasets' footers, and an output folder that holds something thresher would not replace."""
    from thresher.schemas.errors import OutputError
    from thresher.flows.runfolder import MANIFEST

    if not cfg.catalog:
        raise ConfigError("catalog: no catalog given (pass CATALOG or set `catalog:`)")
    if not cfg.output:
        raise ConfigError("output: no output folder (pass --output or set `output:`)")
    datasets = C.inspect_all(C.load_catalog(cfg.catalog), cfg.containment.on_bad_dataset)
    root = Path(cfg.output).absolute()
    for d in datasets:
        p = Path(d.path)
        if root == p or p in root.parents:
            raise OutputError(f"{root}: output folder is inside the input {p}; choose another --output")
    if root.is_dir() and any(root.iterdir()):
        if not (root / MANIFEST).exists():
            raise OutputError(f"{root}: output folder is not empty and holds no thresher run; choose an empty folder")
        if not overwrite:
            raise OutputError(f"{root}: output folder holds a previous run; pass --overwrite to replace it")


def run_config(cfg: ContainmentRunConfig, overwrite: bool = False, use_prefect: bool = True) -> dict:
    preflight(cfg, overwrite)
    if use_prefect:
        return containment(config_json(cfg), overwrite=overwrite)
    return execute(cfg, overwrite=overwrite)
