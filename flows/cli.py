"""The `thresher` command line."""

from __future__ import annotations

import logging
import os
import sys
import traceback

import click

# No network here or on many clusters: Prefect's telemetry only logs failures.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
# The ephemeral API server starts in ~3 s on an idle machine but far slower on a loaded one.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")

from thresher.flows import __version__  # noqa: E402
from thresher.schemas.errors import ThresherError  # noqa: E402


def _setup_logging(debug: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    if not debug:
        os.environ.setdefault("THRESHER_SPARK_LOG_LEVEL", "OFF")
    for noisy in ("py4j", "httpx", "httpcore", "numba", "urllib3", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if not debug:
        for name in ("prefect.flow_runs", "prefect.task_runs"):
            logging.getLogger(name).addFilter(_NoUserTracebacks())


class _NoUserTracebacks(logging.Filter):
    """Prefect logs every failed run with its traceback; for errors the user caused, and after
    Ctrl-C, the CLI's one line says it all (--debug brings the traceback back)."""

    def filter(self, record: logging.LogRecord) -> bool:
        from thresher.flows.spark import interrupted

        if interrupted() and record.levelno >= logging.WARNING:
            return False
        if record.exc_info and isinstance(record.exc_info[1], ThresherError):
            record.exc_info = None
            record.exc_text = None
            return False
        return True


class Cli(click.Group):
    """Turns user-caused errors into one line and a non-zero exit (the traceback under --debug)."""

    def invoke(self, ctx):
        from thresher.flows.spark import interrupted, watch_interrupts

        watch_interrupts()
        try:
            return super().invoke(ctx)
        except ThresherError as exc:
            if interrupted():
                _interrupted(ctx)
            if ctx.meta.get("thresher.debug"):
                traceback.print_exc()
            click.echo(f"thresher: error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except (KeyboardInterrupt, click.Abort):
            _interrupted(ctx)
        except Exception:
            # After Ctrl-C, Spark and py4j fail in many ways (a cancelled job, a closed socket):
            # all of them are the interruption.
            if interrupted():
                _interrupted(ctx)
            raise


def _interrupted(ctx) -> None:
    if ctx.meta.get("thresher.debug"):
        traceback.print_exc()
    # Spark's and py4j's own messages about the cancelled jobs are not the user's business.
    logging.disable(logging.CRITICAL)
    click.echo("thresher: interrupted; rerun the same command to resume", err=True)
    sys.stderr.flush()
    sys.exit(130)


@click.group(cls=Cli, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="thresher")
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logs.")
@click.pass_context
def main(ctx, debug: bool):
    """thresher: turn document collections into a smaller, better training set.

    Dedup, embeddings, hierarchical balanced clustering, sampling to a budget and
    dataset-containment pruning, as Prefect flows over Spark jobs.
    """
    ctx.meta["thresher.debug"] = debug or os.environ.get("THRESHER_DEBUG") == "1"
    _setup_logging(ctx.meta["thresher.debug"])


def _run_options(f):
    for opt in reversed([
        click.option("--input", "-i", "inputs", multiple=True,
                     help="Input file, folder or glob (repeatable); replaces the config's input."),
        click.option("--output", "-o", help="Run folder; replaces the config's output."),
        click.option("--set", "sets", multiple=True, metavar="SECTION.KEY=VALUE", help="Override a config value (repeatable)."),
        click.option("--spark-master", help="Spark master URL, e.g. spark://HOST:7077 (default local[*])."),
        click.option("--overwrite", is_flag=True, help="Replace a previous run in the output folder (only what thresher wrote)."),
        click.option("--resume", is_flag=True, help="Reuse the finished stages of a previous run whose inputs and config match."),
        click.option("--force", multiple=True, metavar="STAGE", help="Recompute STAGE even when resuming (repeatable)."),
        click.option("--no-prefect", is_flag=True, help="Run the stages without a Prefect flow (no API server)."),
    ]):
        f = opt(f)
    return f


def _set_master(over: dict, spark_master: str | None) -> None:
    """--spark-master into the overrides; a non-local master lets Spark pick the driver's address."""
    if spark_master:
        over.setdefault("spark", {})["master"] = spark_master
        if not spark_master.startswith("local"):
            over["spark"].setdefault("driver_host", None)


def _run(config, inputs, output, sets, spark_master, overwrite, resume, force, no_prefect):
    from thresher.flows.config import load_config, parse_overrides
    from thresher.flows.curate import run_config

    over = parse_overrides(list(sets))
    if inputs:
        over["input"] = list(inputs)
    if output:
        over["output"] = output
    _set_master(over, spark_master)
    cfg = load_config(config, over)
    manifest = run_config(cfg, overwrite=overwrite, resume=resume, force=tuple(force), use_prefect=not no_prefect)
    _summary(cfg, manifest)


def _summary(cfg, manifest: dict) -> None:
    out = click.echo
    out("")
    out(f"{'stage':<15}{'rows in':>10}{'kept':>10}  removed / rejected")
    for name, st in manifest["stages"].items():
        gone = {**st["removed"], **{f"rejected:{k}": v for k, v in st["rejected"].items()}}
        detail = ", ".join(f"{k}={v}" for k, v in gone.items()) or "-"
        tag = " (reused)" if st.get("reused") else ""
        out(f"{name:<15}{st['rows_in']:>10}{st['kept']:>10}  {detail}{tag}")
    acc = manifest["accounting"]
    out(f"\nrows in {acc['rows_in']} = kept {acc['kept']} + removed {sum(acc['removed'].values())} "
        f"+ rejected {sum(acc['rejected'].values())}: {'closes' if acc['closes'] else 'DOES NOT CLOSE'}")
    from thresher.flows.curate import publish_url, run_folder_path

    root = run_folder_path(cfg)
    out(f"run folder: {root}")
    if "export" in manifest["stages"]:
        url = publish_url(cfg)
        out(f"dataset:    {url + '/dataset' if url else root / 'dataset'}")


@main.command()
@click.argument("config")
@_run_options
def run(config, **kw):
    """Run the curate flow described by CONFIG (a YAML file, or the name of a shipped config)."""
    _run(config, **kw)


@main.command()
@_run_options
def demo(**kw):
    """Run configs/demo.yaml on the shipped demo data (output: ./thresher-demo)."""
    if not kw.get("output"):
        kw["output"] = "thresher-demo"
    if not kw.get("resume") and not kw.get("inputs") and _is_demo_run(kw["output"]):
        kw["overwrite"] = True  # the demo replaces its own previous result, and only that
    _run("demo.yaml", **kw)


@main.command()
def warm():
    """Compile the CPU kernels for this machine into numba's cache (setup runs it): a first run
    then loads them instead of compiling in each of its processes."""
    from thresher.flows.warm import warm as compile_all

    compile_all(say=click.echo)


def _is_demo_run(output: str) -> bool:
    """True when OUTPUT holds a run of the shipped demo data (any other run is refused as by
    `thresher run`, unless --overwrite)."""
    import json
    from pathlib import Path

    from thresher.flows.config import load_config

    try:
        m = json.loads((Path(output) / "manifest.json").read_text())
        demo_input = load_config("demo.yaml", {"output": output}).input
        return [os.path.realpath(p) for p in m["config"]["input"]] == [os.path.realpath(p) for p in demo_input]
    except (OSError, ValueError, KeyError, TypeError):
        return False


@main.command()
@click.argument("catalog")
@click.option("--output", "-o", required=True, help="Folder for the containment table, the plan and the manifest.")
@click.option("--config", "config", help="Config file (default: the shipped configs/containment.yaml).")
@click.option("--set", "sets", multiple=True, metavar="SECTION.KEY=VALUE",
              help="Override a config value, e.g. containment.tau=0.95 (repeatable).")
@click.option("--spark-master", help="Spark master URL, e.g. spark://HOST:7077 (default local[*]).")
@click.option("--overwrite", is_flag=True, help="Replace a previous containment result in the output folder.")
@click.option("--no-prefect", is_flag=True, help="Run the steps without a Prefect flow (no API server).")
def containment(catalog, output, config, sets, spark_master, overwrite, no_prefect):
    """Find datasets of CATALOG contained in others and plan what to drop (R2D2). Deletes nothing.

    CATALOG is a YAML list of {name, path} entries or a folder whose sub-folders are datasets."""
    from thresher.flows.config import parse_overrides
    from thresher.flows.containment import load_config as load_containment, run_config as run_containment

    over = parse_overrides(list(sets))
    over["input"], over["output"] = [catalog], output
    _set_master(over, spark_master)
    cfg = load_containment(config, over)
    m = run_containment(cfg, overwrite=overwrite, use_prefect=not no_prefect)
    c = m["stages"]["containment"]["stats"]["counts"]
    click.echo(f"\ndatasets {c['datasets']} (compared {c['compared']}, empty {c['empty']}, skipped {c['skipped']})")
    click.echo(f"pairs: ordered {c['ordered_pairs']} -> schema {c['after_schema']} -> min-max {c['after_minmax']} "
               f"-> sketch {c['after_sketch']} -> content {c['after_content']} contained")
    click.echo(f"plan: drop {c['dropped']} datasets, {c['bytes_saved'] / 1e6:.1f} MB saved (nothing deleted)")
    click.echo(f"output: {os.path.abspath(output)}  (containment/containment/, plan.parquet, plan.json, manifest.json)")


@main.command()
@click.argument("config", required=False)
def show_config(config):
    """Print the fully resolved config (defaults included) as YAML."""
    import yaml

    from thresher.flows.config import config_json, load_config

    cfg = load_config(config, {"output": "-"} if config is None else None)
    click.echo(yaml.safe_dump(config_json(cfg), sort_keys=False))


@main.command()
@click.argument("config")
@click.option("--name", default="thresher", show_default=True, help="Deployment name (runs: `prefect deployment run curate/NAME`).")
@click.option("--input", "-i", "inputs", multiple=True, help="Input file, folder or glob (repeatable); replaces the config's input.")
@click.option("--output", "-o", help="Run folder; replaces the config's output.")
@click.option("--set", "sets", multiple=True, metavar="SECTION.KEY=VALUE", help="Override a config value (repeatable).")
@click.option("--spark-master", help="Spark master URL for the served runs.")
@click.option("--overwrite", is_flag=True, help="Default for runs: replace a previous run in the output folder.")
@click.option("--resume", is_flag=True, help="Default for runs: reuse finished stages.")
@click.option("--cron", help="Schedule runs with a cron expression (UTC).")
@click.option("--interval", "interval_s", type=float, help="Schedule a run every N seconds.")
@click.option("--limit", type=int, help="At most this many flow runs at once.")
@click.option("--allow-spark-conf", "allow_spark_conf", multiple=True, metavar="KEY",
              help="Let runs set this spark.conf key (or prefix ending in *); all other Spark settings are frozen (repeatable).")
def serve(config, name, inputs, output, sets, spark_master, overwrite, resume, cron, interval_s, limit, allow_spark_conf):
    """Serve the curate flow over CONFIG as a Prefect deployment (needs PREFECT_API_URL)."""
    from thresher.flows.config import config_json, load_config, parse_overrides
    from thresher.flows.serve import serve as serve_flow

    over = parse_overrides(list(sets))
    if inputs:
        over["input"] = list(inputs)
    if output:
        over["output"] = output if "://" in output else os.path.abspath(output)
    _set_master(over, spark_master)
    cfg = load_config(config, over)
    if not cfg.output:
        raise click.UsageError("no output folder: set `output:` in the config or pass --output")
    cfg_json = config_json(cfg)
    # Served runs execute in another working directory: pin the run folder to an absolute path.
    if "://" not in cfg_json["output"]:
        cfg_json["output"] = os.path.abspath(cfg_json["output"])
    serve_flow(cfg_json, name, overwrite=overwrite, resume=resume, cron=cron, interval_s=interval_s, limit=limit,
               allow_spark_conf=tuple(allow_spark_conf))


@main.command()
@click.argument("ref")
@click.option("--config", "config", help="The config of the runs that will dedup against REF (default: the shipped demo config).")
@click.option("--output", "-o", help="Index folder (default: REF/index for a run folder, REF.index beside a dataset).")
@click.option("--set", "sets", multiple=True, metavar="SECTION.KEY=VALUE", help="Override a config value (repeatable).")
@click.option("--spark-master", help="Spark master URL, e.g. spark://HOST:7077 (default local[*]).")
def index(ref, config, output, sets, spark_master):
    """Store REF's hashes, signatures and LSH bucket keys once, for exact_dedup/fuzzy_dedup `against: REF`.

    REF is a run folder, a Parquet dataset (folder, glob or URL). The index holds what the
    config's exact_dedup and fuzzy_dedup sections decide (normalise, shingle, num_perm, seed,
    bands, rows); a run with other settings signs the reference itself."""
    import time

    from thresher.flows.config import load_config, parse_overrides, stage_section
    from thresher.flows.spark import get_spark
    from thresher.stages import storage
    from thresher.stages.against import build_index, resolve

    over = parse_overrides(list(sets))
    over.setdefault("output", "-")
    _set_master(over, spark_master)
    cfg = load_config(config, over)
    storage.configure(getattr(cfg, "storage", None))

    t0 = time.time()
    resolve(ref)  # a missing reference or an unknown scheme: one line, before Spark starts
    spark = get_spark(cfg.spark)
    dest, meta = build_index(spark, ref, stage_section(cfg, "exact_dedup"), stage_section(cfg, "fuzzy_dedup"), output,
                             __version__)
    f = meta["fuzzy"]
    click.echo(f"index: {dest}  ({meta['rows']['documents']} documents, {len(meta['reference']['files'])} files; "
               f"{f['shingle']['kind']} {f['shingle']['n']}-grams, {f['bands']} x {f['rows']}, num_perm {f['num_perm']}, "
               f"seed {f['seed']}; {time.time() - t0:.1f}s)")


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
def report(run_dir):
    """Write RUN_DIR/report.html: plots of rows per stage, duplicates, clusters, quality, containment, time and memory."""
    from thresher.flows.report import write_report

    click.echo(write_report(run_dir))


@main.command("export-hub")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.argument("repo_id")
@click.option("--private", is_flag=True, help="Create the repo as private (when it does not exist yet).")
@click.option("--revision", help="Branch to commit to (default: main).")
def export_hub(run_dir, repo_id, private, revision):
    """Push RUN_DIR's dataset/*.parquet and README.md (the dataset card) to the Hub dataset REPO_ID.

    The token comes from HF_TOKEN or a stored `hf auth login`; HF_ENDPOINT selects another Hub."""
    from thresher.flows.hub import push

    click.echo(push(run_dir, repo_id, private=private, revision=revision))


if __name__ == "__main__":
    main()
