"""The curate flow as a Prefect deployment on a real Prefect server (127.0.0.1, a free port):
`thresher serve` serves it, a run triggered through Prefect's CLI with parameters completes and
writes its run folder; prefect.yaml registers a deployment on a process work pool."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conftest import DEMO, REPO, free_port, stop_group

# The CLI or a whole flow, end to end (a Spark session, often Prefect or a subprocess).
pytestmark = pytest.mark.integration

PREFECT = str(Path(sys.executable).parent / "prefect")


def api(url: str, path: str, body: dict | None = None):
    req = urllib.request.Request(url + path, method="POST" if body is not None else "GET",
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.load(r)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A Prefect server with its own PREFECT_HOME (database, settings); yields the client env."""
    tmp = tmp_path_factory.mktemp("prefect")
    port = free_port()
    base = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env = {**base, "PREFECT_HOME": str(tmp / "home"), "PREFECT_UI_ENABLED": "false",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1", "SPARK_LOCAL_IP": "127.0.0.1"}
    log = open(tmp / "server.log", "wb")
    proc = subprocess.Popen([PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=tmp)
    url = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.time() + 180
        while True:
            if proc.poll() is not None:
                pytest.fail(f"prefect server exited:\n{(tmp / 'server.log').read_text()[-3000:]}")
            try:
                if api(url, "/health") is True:
                    break
            except (OSError, ValueError):
                pass
            if time.time() > deadline:
                pytest.fail(f"prefect server not healthy in 180 s:\n{(tmp / 'server.log').read_text()[-3000:]}")
            time.sleep(1)
        yield {"url": url, "tmp": tmp, "env": {**env, "PREFECT_API_URL": url}}
    finally:
        stop_group(proc)
        log.close()


def test_serve_and_trigger_with_parameters(server, tmp_path):
    url, env = server["url"], server["env"]
    default_out = tmp_path / "default-out"
    serve_log = open(tmp_path / "serve.log", "wb")
    serve = subprocess.Popen(
        [sys.executable, "-m", "thresher.flows.cli", "serve", "demo", "--name", "t-serve",
         "--output", str(default_out), "--set", "spark.driver_memory=1g", "--set", "stages=[ingest, export]"],
        env=env, stdout=serve_log, stderr=subprocess.STDOUT, start_new_session=True, cwd=tmp_path)
    try:
        deadline = time.time() + 120
        while True:
            if serve.poll() is not None:
                pytest.fail(f"thresher serve exited:\n{(tmp_path / 'serve.log').read_text()[-3000:]}")
            try:
                dep = api(url, "/deployments/name/curate/t-serve")
                break
            except urllib.error.HTTPError as e:
                if e.code != 404:
                    raise
            except OSError:
                pass
            if time.time() > deadline:
                pytest.fail("deployment curate/t-serve never registered")
            time.sleep(1)
        # The served deployment carries the resolved config as its default parameters.
        assert dep["parameters"]["config"]["output"] == str(default_out)
        assert dep["parameters"]["config"]["stages"] == ["ingest", "export"]

        out = tmp_path / "triggered"
        config = {"input": [str(DEMO)], "output": str(out), "stages": ["ingest", "export"],
                  "spark": {"driver_memory": "1g"}, "export": {"rows_per_file": 1000}}
        run = subprocess.run(
            [PREFECT, "deployment", "run", "curate/t-serve", "--params", json.dumps({"config": config}),
             "--param", "overwrite=false", "--watch", "--watch-interval", "2", "--watch-timeout", "420"],
            env=env, capture_output=True, text=True, timeout=450, cwd=tmp_path)
        served = (tmp_path / "serve.log").read_text(errors="replace")
        assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:] + served[-3000:]

        runs = api(url, "/flow_runs/filter", {"deployments": {"id": {"any_": [dep["id"]]}}})
        assert len(runs) == 1
        assert runs[0]["state_type"] == "COMPLETED"
        assert runs[0]["parameters"]["config"]["export"] == {"rows_per_file": 1000}
    finally:
        stop_group(serve)
        serve_log.close()

    # The run wrote where its parameters said, not to the deployment's default output.
    assert not default_out.exists()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["accounting"]["closes"]
    n = pq.read_metadata(DEMO).num_rows
    assert manifest["accounting"]["kept"] == n
    parts = sorted((out / "dataset").glob("part-*.parquet"))
    assert len(parts) == -(-n // 1000)  # rows_per_file came through the parameters
    assert sum(pq.read_metadata(p).num_rows for p in parts) == n
    assert (out / "report.html").exists()
    # thresher's own log lines reached Prefect's run logs.
    logs = api(url, "/logs/filter", {"logs": {"flow_run_id": {"any_": [runs[0]["id"]]}}, "limit": 200})
    assert any("stage export" in rec["message"] for rec in logs), [r["message"] for r in logs][:20]


def test_prefect_yaml_deploys_to_a_process_work_pool(server, tmp_path):
    env = server["env"]
    # Deploy from a copy of prefect.yaml in a scratch folder: `prefect deploy` writes beside it.
    shutil.copy(REPO / "prefect.yaml", tmp_path / "prefect.yaml")
    env = {**env, "PWD": str(tmp_path)}
    pool = subprocess.run([PREFECT, "work-pool", "create", "thresher", "--type", "process"],
                          env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert pool.returncode == 0, pool.stdout + pool.stderr
    dep = subprocess.run([PREFECT, "--no-prompt", "deploy", "--all"],
                         env=env, capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert dep.returncode == 0, dep.stdout[-3000:] + dep.stderr[-3000:]
    got = api(server["url"], "/deployments/name/curate/thresher-demo")
    assert got["work_pool_name"] == "thresher"
    assert got["entrypoint"] == "thresher.flows.serve.curate"
    assert got["parameters"]["config"]["stages"] == ["ingest", "export"]
    assert got["job_variables"]["env"]["SPARK_LOCAL_IP"] == "127.0.0.1"
    steps = got["pull_steps"]
    assert steps[0]["prefect.deployments.steps.set_working_directory"]["directory"] == str(tmp_path)


def test_serve_refuses_without_a_server_in_one_line(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from thresher.flows.cli import main

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    res = CliRunner().invoke(main, ["serve", "demo", "--output", str(tmp_path / "o")])
    assert res.exit_code == 2
    assert res.output.strip().splitlines() == [
        "thresher: error: serve: PREFECT_API_URL is not set; start a server (`prefect server start`) "
        "and export PREFECT_API_URL=http://HOST:4200/api"]
    assert not (tmp_path / "o").exists()
