"""The containment flow: R2D2 over a catalog of datasets, the `containment` stage run by the same
runner, run folder and manifest as curate (flows/curate.py `run_flow`).

Output folder:
    <output>/containment/containment/   every schema-compatible pair and the step that decided it
    <output>/containment/_stage.json    the stage's fingerprint, counts and timings
    <output>/plan.parquet, plan.json    what to keep and drop, bytes saved, per-step counts
    <output>/manifest.json              config, versions, the catalog's fingerprint, the stage record

Tables are written under <output>/.tmp and renamed into place, the manifest last, so a reader
that finds a complete manifest finds a whole result. User data is only read.
"""

from __future__ import annotations

import logging
from pathlib import Path

from prefect import flow

from thresher.flows.config import CONFIG_DIR, RunConfig, config_json, load_config as _load
from thresher.flows.curate import preflight as _preflight, run_flow
from thresher.flows.runfolder import RunFolder

log = logging.getLogger("thresher.containment")

DEFAULT_CONFIG = CONFIG_DIR / "containment.yaml"
STAGES = ("containment",)


def load_config(path: str | Path | None = None, overrides: dict | None = None, raw: dict | None = None) -> RunConfig:
    """The shipped configs/containment.yaml (or `path`), then `raw`, then overrides: the shared
    loader with this flow's default file and stage list."""
    return _load(path, overrides, raw, default=DEFAULT_CONFIG, stages=STAGES)


def write_plan_json(folder: RunFolder, manifest: dict) -> None:
    """plan.json beside plan.parquet: the plan and the step counts, for a person to read."""
    import pyarrow.parquet as pq

    from thresher.stages.containment import Config, plan_document

    rec = manifest["stages"]["containment"]
    plan = pq.read_table(folder.root / rec["tables"]["plan"]["path"])
    doc = plan_document(plan, rec["stats"], Config.model_validate(manifest["config"]["containment"]))
    folder.write_json(folder.root / "plan.json", doc)
    log.info("containment: %s", rec["stats"]["counts"])


def execute(cfg: RunConfig, overwrite: bool = False, spark=None) -> dict:
    """The flow without Prefect (tests, notebooks, --no-prefect)."""
    return run_flow(cfg, overwrite, False, (), spark, as_tasks=False, finish=write_plan_json)


@flow(name="containment", log_prints=True, validate_parameters=False)
def containment(config: dict, overwrite: bool = False) -> dict:
    """Prefect flow over a config mapping (already merged with overrides)."""
    cfg = load_config(raw=config)
    return run_flow(cfg, overwrite, False, (), None, as_tasks=True, finish=write_plan_json)


def run_config(cfg: RunConfig, overwrite: bool = False, use_prefect: bool = True) -> dict:
    _preflight(cfg, overwrite)
    if use_prefect:
        return containment(config_json(cfg), overwrite=overwrite)
    return execute(cfg, overwrite=overwrite)
