"""The curate flow as a Prefect deployment.

`thresher serve CONFIG` registers a deployment of `curate` with the Prefect API in
PREFECT_API_URL (a server or Prefect Cloud) and serves it from this process: flow runs created
from the UI, the CLI (`prefect deployment run curate/NAME --params ...`), the client, or the
deployment's schedule are picked up and executed here, each in a subprocess. The deployment's
default parameters are the resolved config (defaults filled in, overrides applied), so a run
with no parameters repeats that config, and a run may replace any of them:

    prefect deployment run curate/weekly --params '{"config": {...}, "overwrite": true}'

`config` is replaced whole (Prefect merges parameters at the top level only); since every key has
a default, a partial mapping such as {"input": [...], "output": "..."} is a full config.

For a work pool instead of a serving process, `prefect deploy` reads prefect.yaml at the repo root.
"""

from __future__ import annotations

import logging
import os

from thresher.schemas.errors import ConfigError

log = logging.getLogger("thresher.serve")

# Runs started by Prefect (served, or by a worker from prefect.yaml) import the flow from this
# module. Prefect hands the `thresher` logger its API handler (PREFECT_LOGGING_EXTRA_LOGGERS) but
# leaves its level to the root's WARNING: without this, the stage summaries never reach the run's
# logs.
if logging.getLogger("thresher").getEffectiveLevel() > logging.INFO:
    logging.getLogger("thresher").setLevel(logging.INFO)

from thresher.flows.curate import curate  # noqa: E402  (the deployments' entrypoint)

ENTRYPOINT = "thresher.flows.serve.curate"


def _api_url() -> str | None:
    from prefect.settings import PREFECT_API_URL

    return os.environ.get("PREFECT_API_URL") or PREFECT_API_URL.value()


def deployment(cfg_json: dict, name: str, overwrite: bool = False, resume: bool = False,
               force: tuple[str, ...] = (), cron: str | None = None, interval_s: float | None = None,
               tags: tuple[str, ...] = (), paused: bool = False):
    """The curate flow as a RunnerDeployment with `cfg_json` and the flags as default parameters."""
    from prefect.deployments.runner import EntrypointType

    from thresher.flows import __version__

    if cron and interval_s:
        raise ConfigError("serve: give --cron or --interval, not both")
    if resume and overwrite:
        raise ConfigError("serve: --resume and --overwrite exclude each other")
    dep = curate.to_deployment(
        name=name,
        parameters={"config": cfg_json, "overwrite": overwrite, "resume": resume, "force": list(force)},
        cron=cron,
        interval=interval_s,
        paused=paused or None,
        tags=["thresher", *tags],
        version=__version__,
        description=f"thresher curate: {', '.join(cfg_json.get('stages', []))} -> {cfg_json.get('output')}",
        # A module path, not a file path: the flow loads wherever thresher is installed.
        entrypoint_type=EntrypointType.MODULE_PATH,
    )
    dep.entrypoint = ENTRYPOINT
    return dep


def serve(cfg_json: dict, name: str, limit: int | None = None, allow_spark_conf: tuple[str, ...] = (), **kw) -> None:
    """Register the deployment and serve it until interrupted (SIGINT/SIGTERM)."""
    import json

    from thresher.flows.trust import ALLOW_ENV, FROZEN_ENV
    from prefect import serve as prefect_serve

    url = _api_url()
    if not url:
        # Prefect's ephemeral API lives only as long as this process: nothing else could ever
        # create a run for the deployment, so serving there is a mistake worth one line.
        raise ConfigError("serve: PREFECT_API_URL is not set; start a server (`prefect server start`) "
                          "and export PREFECT_API_URL=http://HOST:4200/api")
    # Flow runs execute in subprocesses that inherit this environment: route thresher's own log
    # lines (stage summaries, progress) into the Prefect run logs.
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "thresher")
    # Whoever can create a flow run chooses its parameters: Spark settings stay the ones this
    # server was started with (flows/trust.py), but for the conf keys the operator allows.
    os.environ[FROZEN_ENV] = json.dumps(cfg_json.get("spark") or {})
    os.environ[ALLOW_ENV] = ",".join(allow_spark_conf)
    dep = deployment(cfg_json, name, **kw)
    log.info("serving deployment curate/%s on %s", name, url)
    prefect_serve(dep, limit=limit, print_starting_message=True)
