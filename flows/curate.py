"""The curate flow: the configured stages in order, each one a Prefect task run by the runner.

`preflight` and `run_flow` are the one flow driver: the containment flow (flows/containment.py)
runs its stage through them too, with its own finishing step."""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from pathlib import Path

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from thresher.flows.config import RunConfig, config_json, load_config
from thresher.schemas.errors import ConfigError
from thresher.flows.spark import get_spark
from thresher.flows.runfolder import MANIFEST, RunFolder
from thresher.stages.scratch import remove_tree
from thresher.flows.runner import Runner
from thresher.stages import storage

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


def run_folder_path(cfg: RunConfig) -> Path:
    """The run folder: `output` itself, or `work_dir` (default under the cache) when the output
    is a URL. Intermediate tables need a filesystem Spark commits to by renames."""
    if not storage.is_remote(cfg.output):
        return Path(storage.local_path(cfg.output))
    if cfg.work_dir:
        if storage.is_remote(cfg.work_dir):
            raise ConfigError(f"work_dir: {cfg.work_dir}: the run folder must be a local, NFS or HDFS-mounted folder, not a URL")
        return Path(storage.local_path(cfg.work_dir))
    from thresher.flows.spark import cds_dir

    key = hashlib.sha256(storage.canonical(cfg.output).encode()).hexdigest()[:16]
    return cds_dir() / "runs" / key


def publish_url(cfg: RunConfig) -> str | None:
    return storage.canonical(cfg.output) if cfg.output and storage.is_remote(cfg.output) else None


def against_paths(cfg: RunConfig) -> list[str]:
    """The dedup stages' `against` references, resolved before Spark starts (a missing one or an
    unknown scheme is one line here, not after ingest), as local paths for the overlap check: a
    run must not write into the corpus it dedups against, nor that corpus lie in its run folder."""
    from thresher.stages.against import resolve

    paths = []
    for name in cfg.stages:
        spec = getattr(getattr(cfg, name, None), "against", None)
        if not spec:
            continue
        ref = resolve(spec)
        local = [spec, *(e.loc for e in ref.files)] if not storage.is_remote(spec) else []
        paths += [storage.local_path(p) for p in local if not storage.has_magic(p)]
    return paths


def preflight(cfg: RunConfig, overwrite: bool = False, resume: bool = False, force=()) -> tuple[RunFolder, list[Path]]:
    """Every check that needs no Spark: inputs (the source stage's `check`), the output folder.
    Nothing is written, so bad input fails fast and leaves nothing behind."""
    from thresher.stages import spec_of

    storage.configure(getattr(cfg, "storage", None))
    if not cfg.output:
        raise ConfigError("output: no output folder (set `output:` in the config or pass --output)")
    unknown = set(force) - set(cfg.stages)
    if unknown:
        raise ConfigError(f"--force {sorted(unknown)[0]}: not a stage of this run ({', '.join(cfg.stages)})")
    url = publish_url(cfg)
    if url:
        storage.filesystem(url)  # an unknown scheme fails here, before any listing
        if "export" not in cfg.stages:
            raise ConfigError(f"output: {url} is a URL, which receives the exported dataset; add export to the stages")
        # URL-aware overlap (globs, prefixes); local folders are the run folder's check
        storage.check_output_overlap(url, cfg.input)
    source = spec_of(cfg.stages[0])
    read = source.check(cfg.input, getattr(cfg, source.name)) if source.check else cfg.input
    # Local inputs as given (globs included) and every local file they name, each resolved by
    # RunFolder, which refuses any overlap with the run folder.
    inputs = [*(storage.local_path(i) for i in cfg.input if not storage.is_remote(i)),
              *(storage.local_path(p) for p in read if not storage.is_remote(p)),
              *against_paths(cfg)]
    folder = RunFolder(run_folder_path(cfg), overwrite=overwrite, resume=resume)
    if url:
        storage.check_output_url(url, overwrite=overwrite, resume=resume or folder.root.exists())
        if not overwrite and folder.previous_status() == "complete" and not _published(folder, url):
            folder.resume = True  # finished here but killed while publishing: reuse the stages, publish again
    folder.check(inputs, list(cfg.stages))
    return folder, inputs


def run_flow(cfg: RunConfig, overwrite, resume, force, spark, as_tasks: bool, finish=None) -> dict:
    """The stages of `cfg` over its run folder; `finish(folder, manifest)` then writes the flow's
    own files beside the tables (curate: the dataset card and the report)."""
    from thresher.flows.spark import interrupted

    folder, inputs = preflight(cfg, overwrite, resume, force)
    url = publish_url(cfg)
    folder.prepare(list(cfg.stages), inputs, check_stages=True)
    runner = None
    try:
        spark = spark or get_spark(cfg.spark)
        runner = Runner(spark, cfg, folder, force=force)
        for name in cfg.stages:
            if as_tasks:
                stage_task.with_options(
                    name=name, retries=cfg.prefect.retries, retry_delay_seconds=cfg.prefect.retry_delay_s
                )(runner, name)
            else:
                stage_task.fn(runner, name)
        manifest = runner.write_manifest("complete")
        (finish or _finish_curate)(folder, manifest)
        if url:
            _publish(spark, folder, url, manifest)
        return manifest
    except BaseException as exc:
        remove_tree(folder.root / ".tmp")
        if runner is None or (not runner.records and MANIFEST in folder.created):
            folder.discard()  # nothing finished: take away what this run created, nothing else
        else:
            # Finished stages stay (complete tables only) so a rerun resumes from them.
            try:
                m = runner.manifest("interrupted" if interrupted() else "failed")
                m["error"] = "interrupted" if interrupted() else (str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
                folder.write_json(folder.root / MANIFEST, m)
            except Exception as why:  # a full disk: the run's own error is the one to report
                log.debug("could not record the failure in the manifest: %s", why)
        raise
    finally:
        remove_tree(folder.root / ".tmp")
        folder.unlock()


def _finish_curate(folder: RunFolder, manifest: dict) -> None:
    from thresher.flows.report import report_after_run

    _write_card(folder, manifest)
    report_after_run(folder.root)  # logs a warning on failure; never fails the run


def _published(folder: RunFolder, url: str) -> bool:
    """Whether the marker at `url` names the export of the run in `folder`."""
    try:
        local = json.loads((folder.root / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    marker = storage.read_marker(url)
    fp = local.get("stages", {}).get("export", {}).get("fingerprint")
    return bool(marker and fp and marker.get("export_fingerprint") == fp)


def _publish(spark, folder: RunFolder, url: str, manifest: dict) -> None:
    """The dataset, its card and the manifest to `url`, with the marker written last. Skipped when
    the marker there already names this export (a resumed run with nothing new to publish)."""
    export = manifest["stages"].get("export", {})
    run_id = f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:8]}"
    old = storage.read_marker(url)
    if old and old.get("export_fingerprint") == export.get("fingerprint"):
        log.info("publish: %s already holds this dataset (export %s)", url, str(export.get("fingerprint"))[:12])
        return
    storage.clear_staging(url)
    storage.publish(str(folder.root), url, ["dataset", "README.md", "manifest.json"], run_id,
                    extra={"export_fingerprint": export.get("fingerprint"), "rows": export.get("kept"),
                           "run_folder": str(folder.root)},
                    upload=storage.upload_in_executors(spark))
    log.info("publish: dataset committed to %s (%s)", url, storage.MARKER)


def _write_card(folder: RunFolder, manifest: dict) -> None:
    """The dataset card goes beside dataset/, not in it: readers that open the folder as a
    dataset (pyarrow.dataset, duckdb globs) must find nothing but Parquet there."""
    import pyarrow.parquet as pq

    from thresher.flows.runner import parquet_files
    from thresher.stages.export import dataset_card

    data = folder.root / "dataset"
    files = parquet_files(data) if data.is_dir() else []
    schema = pq.read_schema(files[0]) if files else None
    t = folder.root / ".README.md.tmp"
    t.write_text(dataset_card(manifest, schema, sum(f.stat().st_size for f in files) if files else None))
    t.replace(folder.root / "README.md")


@flow(name="curate", log_prints=True, validate_parameters=False)
def curate(config: dict, overwrite: bool = False, resume: bool = False, force: list[str] | None = None) -> dict:
    """Prefect flow over a config mapping (the YAML as a dict, already merged with overrides)."""
    from thresher.flows.trust import served_config

    cfg = load_config(raw=served_config(config))  # a served run may not choose its own Spark settings
    return run_flow(cfg, overwrite, resume, tuple(force or ()), None, as_tasks=True)


def run_config(cfg: RunConfig, overwrite=False, resume=False, force=(), use_prefect=True) -> dict:
    preflight(cfg, overwrite, resume, force)
    if use_prefect:
        return curate(config_json(cfg), overwrite=overwrite, resume=resume, force=list(force))
    return execute(cfg, overwrite=overwrite, resume=resume, force=tuple(force))
