"""The curate flow on a real Spark standalone cluster (master + one worker from pyspark's own
distribution), everything bound to 127.0.0.1, gives the rows of a local-mode run."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest

from conftest import DEMO, free_port, stop_group

# The CLI or a whole flow, end to end (a Spark session, often Prefect or a subprocess).
pytestmark = pytest.mark.integration

LOOPBACK = {"127.0.0.1", "::ffff:127.0.0.1", "::1"}


def spark_home() -> Path:
    import pyspark

    return Path(pyspark.__file__).parent


def sockets(procs: list[psutil.Process]) -> set[tuple[str, int]]:
    """(address, port) of every listening socket and every peer of a connected one held by these
    processes and their children."""
    out = set()
    for p in procs:
        try:
            tree = [p, *p.children(recursive=True)]
        except psutil.Error:
            continue
        for q in tree:
            try:
                for c in q.net_connections(kind="inet"):
                    if c.status == psutil.CONN_LISTEN:
                        out.add((c.laddr.ip, c.laddr.port))
                    elif c.raddr:
                        out.add((c.raddr.ip, c.raddr.port))
            except psutil.Error:
                pass
    return out


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A standalone master and one worker (2 cores, 2 GiB) on loopback; stopped afterwards."""
    tmp = tmp_path_factory.mktemp("standalone")
    home = spark_home()
    port, ui, wui = free_port(), free_port(), free_port()
    env = {**os.environ, "SPARK_HOME": str(home), "SPARK_LOCAL_IP": "127.0.0.1",
           "SPARK_LOG_DIR": str(tmp / "logs"), "SPARK_WORKER_DIR": str(tmp / "work"),
           # The REST submission server would take the fixed port 6066: not needed here.
           "SPARK_MASTER_OPTS": "-Dspark.master.rest.enabled=false",
           "SPARK_WORKER_OPTS": "-Dspark.worker.cleanup.enabled=false"}
    cls = str(home / "bin" / "spark-class")
    started: list[subprocess.Popen] = []
    try:
        with open(tmp / "master.log", "wb") as mlog:
            started.append(subprocess.Popen(
                [cls, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(port),
                 "--webui-port", str(ui)], env=env, stdout=mlog, stderr=subprocess.STDOUT, start_new_session=True))
        deadline = time.time() + 120

        def alive_or_fail(what: str):
            for p in started:
                if p.poll() is not None:
                    pytest.fail(f"spark daemon exited early:\n{(tmp / 'master.log').read_text()[-2000:]}"
                                f"\n{(tmp / 'worker.log').read_text()[-2000:] if (tmp / 'worker.log').exists() else ''}")
            if time.time() > deadline:
                pytest.fail(f"{what} in 120 s:\n{(tmp / 'master.log').read_text()[-2000:]}")
            time.sleep(0.5)

        # A port found free may be taken by another process (the other test worker's servers) before
        # the master binds it, and Spark then moves to the next one: read the ports it bound.
        bound: dict[str, int] = {}
        while len(bound) < 2:
            found = re.findall(r"started service '(sparkMaster|MasterUI)' on port (\d+)", (tmp / "master.log").read_text())
            bound = {k: int(v) for k, v in found}
            if len(bound) < 2:
                alive_or_fail("the master did not bind its ports")
        url = f"spark://127.0.0.1:{bound['sparkMaster']}"
        with open(tmp / "worker.log", "wb") as wlog:
            started.append(subprocess.Popen(
                [cls, "org.apache.spark.deploy.worker.Worker", url, "--host", "127.0.0.1", "--webui-port", str(wui),
                 "--cores", "2", "--memory", "2g", "--work-dir", str(tmp / "work")],
                env=env, stdout=wlog, stderr=subprocess.STDOUT, start_new_session=True))
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{bound['MasterUI']}/json/", timeout=5) as r:
                    state = json.load(r)
                if state.get("aliveworkers", 0) >= 1:
                    break
            except OSError:
                pass
            alive_or_fail("the worker did not register")
        yield {"url": url, "procs": started, "tmp": tmp}
    finally:
        for p in reversed(started):
            stop_group(p)


def _rows(dataset: Path):
    return pq.read_table(sorted(dataset.glob("part-*.parquet")))


def test_curate_on_standalone_cluster_equals_local(cluster, run_curate, tmp_path):
    config = {"input": [str(DEMO)], "stages": ["ingest", "export"], "seed": 3,
              "export": {"rows_per_file": 2000, "row_group_size": 500}}
    cfg_file = tmp_path / "cluster.yaml"
    cfg_file.write_text(json.dumps(config))  # JSON is YAML
    out = tmp_path / "on-cluster"
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "THRESHER_DEBUG": "1"}
    cmd = [sys.executable, "-m", "thresher.flows.cli", "run", str(cfg_file), "--output", str(out),
           "--spark-master", cluster["url"], "--no-prefect", "--set", "spark.driver_memory=1g"]
    # The test session already holds a local SparkSession: the cluster's driver is another process.
    with open(tmp_path / "driver.log", "wb") as log:
        driver = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    seen: set[tuple[str, int]] = set()
    stop = threading.Event()

    def watch():
        procs = [psutil.Process(p.pid) for p in cluster["procs"]]
        try:
            procs.append(psutil.Process(driver.pid))
        except psutil.Error:
            pass
        while not stop.is_set():
            seen.update(sockets(procs))
            stop.wait(1.0)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        rc = driver.wait(timeout=400)
    finally:
        stop.set()
        watcher.join(10)
        stop_group(driver)
    log_text = (tmp_path / "driver.log").read_text(errors="replace")
    assert rc == 0, log_text[-3000:]

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["spark"]["master"] == cluster["url"]
    assert manifest["accounting"]["closes"]
    # The executors ran on the worker: their folder for this application exists.
    assert any((cluster["tmp"] / "work").glob("app-*/0")), "no executor ran on the worker"
    # Master, worker, executors and the driver listened on, and talked to, loopback only.
    assert seen, "no listening sockets observed"
    assert {ip for ip, _ in seen} <= LOOPBACK, sorted(seen)

    local_manifest, local_out = run_curate(config, output=tmp_path / "local")
    assert local_manifest["spark"]["master"].startswith("local")
    a, b = _rows(out / "dataset"), _rows(local_out / "dataset")
    assert a.num_rows == b.num_rows == pq.read_metadata(DEMO).num_rows
    assert a.equals(b)
    # Export's layout depends only on the rows: the same files, and the same bytes in each.
    names = sorted(p.name for p in (out / "dataset").glob("part-*.parquet"))
    assert names == sorted(p.name for p in (local_out / "dataset").glob("part-*.parquet"))
    for n in names:
        assert (out / "dataset" / n).read_bytes() == (local_out / "dataset" / n).read_bytes(), n
