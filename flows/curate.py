"""The curate flow: the configured stages in order, each one a Prefect task run by the runner.

`preflight` and `run_flow` are the one flow driver: the containment flow (flows/containment.py)
runs its stage through them too, with its own finishing step."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from thresher.flows.config import RunConfig, config_json, load_config
from thresher.schemas.errors import ConfigError
from thresher.flows.spark import get_spark
from thresher.flows.runfolder import RunFolder
from thresher.flows.runner import Runner

log = logging.getLogger("thresher.flow")


@task(cache_policy=NO_CACHE, persist_result=False)
def stage_task(runner: Runner, name: str) -> dict:
    rec = runner.run_stage(name)
    what = "reused" if rec.reused else f"{rec.wall_s:.1f}s"
    log.info("stage %-14s in=%d kept=%d removed=%s rejected=%s (%s)", name, rec.rows_in, rec.kept,
             rec.removed or 0, rec.rejected or 0, what)
    return rec.to_json()


def execute(cfg: RunConfig, overwrite: bool = False, resume: bool = False, force: tuple[str, ...] = (),
            spark=None) -> dict:
    """Run the stages of `cfg` into its output folder; returns the manifest.

    Usable without Prefect (tests, notebooks); `curate` wraps it as a flow with task retries.
    """
    return run_flow(cfg, overwrite, resume, force, spark, as_tasks=False)


def preflight(cfg: RunConfig, overwrite: bool = False, resume: bool = False, force=()) -> tuple[RunFolder, list[Path]]:
    """Every check that needs no Spark: inputs (the source stage's `check`), the output folder.
    Nothing is written, so bad input fails fast and leaves nothing behind."""
    from thresher.stages import spec_of

    if not cfg.output:
        raise ConfigError("output: no output folder (set `output:` in the config or pass --output)")
    unknown = set(force) - set(cfg.stages)
    if unknown:
        raise ConfigError(f"--force {sorted(unknown)[0]}: not a stage of this run ({', '.join(cfg.stages)})")
    source = spec_of(cfg.stages[0])
    read = source.check(cfg.input, getattr(cfg, source.name)) if source.check else cfg.input
    inputs = [Path(p).absolute() for p in read]
    folder = RunFolder(Path(cfg.output), overwrite=overwrite, resume=resume)
    folder.check(inputs)
    return folder, inputs


def run_flow(cfg: RunConfig, overwrite, resume, force, spark, as_tasks: bool, finish=None) -> dict:
    """The stages of `cfg` over its run folder; `finish(folder, manifest)` then writes the flow's
    own files beside the tables (curate: the dataset card and the report)."""
    folder, inputs = preflight(cfg, overwrite, resume, force)
    created = not folder.root.exists()
    folder.prepare(cfg.stages, inputs)
    spark = spark or get_spark(cfg.spark)
    runner = Runner(spark, cfg, folder, force=force)
    try:
        for name in cfg.stages:
            if as_tasks:
                stage_task.with_options(
                    name=name, retries=cfg.prefect.retries, retry_delay_seconds=cfg.prefect.retry_delay_s
                )(runner, name)
            else:
                stage_task.fn(runner, name)
        manifest = runner.write_manifest("complete")
        (finish or _finish_curate)(folder, manifest)
        return manifest
    except BaseException as exc:
        shutil.rmtree(folder.root / ".tmp", ignore_errors=True)
        if created and not runner.records:
            shutil.rmtree(folder.root, ignore_errors=True)  # nothing finished: leave no trace
        else:
            # Finished stages stay (complete tables only) so a rerun resumes from them.
            m = runner.write_manifest("failed")
            m["error"] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            folder.write_json(folder.root / "manifest.json", m)
        raise
    finally:
        shutil.rmtree(folder.root / ".tmp", ignore_errors=True)


def _finish_curate(folder: RunFolder, manifest: dict) -> None:
    from thresher.flows.report import report_after_run

    _write_card(folder, manifest)
    report_after_run(folder.root)  # logs a warning on failure; never fails the run


def _write_card(folder: RunFolder, manifest: dict) -> None:
    """The dataset card goes beside dataset/, not in it: readers that open the folder as a
    dataset (pyarrow.dataset, duckdb globs) must find nothing but Parquet there."""
    from thresher.stages.export import dataset_card

    t = folder.root / ".README.md.tmp"
    t.write_text(dataset_card(manifest))
    t.replace(folder.root / "README.md")


@flow(name="curate", log_prints=True, validate_parameters=False)
def curate(config: dict, overwrite: bool = False, resume: bool = False, force: list[str] | None = None) -> dict:
    """Prefect flow over a config mapping (the YAML as a dict, already merged with overrides)."""
    cfg = load_config(raw=config)
    return run_flow(cfg, overwrite, resume, tuple(force or ()), None, as_tasks=True)


def run_config(cfg: RunConfig, overwrite=False, resume=False, force=(), use_prefect=True) -> dict:
    preflight(cfg, overwrite, resume, force)
    if use_prefect:
        return curate(config_json(cfg), overwrite=overwrite, resume=resume, force=list(force))
    return execute(cfg, overwrite=overwrite, resume=resume, force=tuple(force))
