"""One Spark session per test run; helpers to run configs into temporary folders."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Every Spark driver JVM the tests start (this session's and each `thresher` subprocess's, which
# inherit the environment) compiles with C1 only. Test JVMs live seconds to minutes, and on 2
# cores C2's compiler threads took CPU from the work itself: an 800-document demo flow ran in
# 56 s instead of 78 s (AMD EPYC Zen 4, load 4-5). The JIT tier changes speed, never results.
# Serial GC: a test driver's heap is small and short-lived, and G1's concurrent threads compete
# with the other worker for the two cores.
os.environ.setdefault("SPARK_SUBMIT_OPTS", "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # Several pytest workers share the cores: OpenMP/BLAS pools sized to every core spin against
    # each other (a 150-text driver-side embed took 157 s instead of 8 s with three workers).
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")

REPO = Path(__file__).resolve().parent.parent
# The tests import `benchmarks` from the checkout; importing it takes the checkout off sys.path
# (its kernels/ would shadow the PyPI `kernels` that transformers imports), and subprocesses
# started with `python -m` keep their working folder off it too.
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
import benchmarks  # noqa: E402

os.environ.setdefault("PYTHONSAFEPATH", "1")
DEMO = REPO / "configs" / "data" / "debian_demo.parquet"
# Rows cut from the shared Debian corpus by tests/data/cut_fixtures.py: the tests read only these.
CUT = REPO / "tests" / "data" / "corpus"


def pytest_terminal_summary(terminalreporter):
    """Say how many tests did not run for lack of hardware (marker `hardware`), so a CI log shows
    which kernel paths this machine left unchecked."""
    skipped = [r for r in terminalreporter.stats.get("skipped", []) if "hardware" in getattr(r, "keywords", {})]
    ran = [r for key in ("passed", "failed") for r in terminalreporter.stats.get(key, [])
           if r.when == "call" and "hardware" in getattr(r, "keywords", {})]
    if skipped or ran:
        terminalreporter.write_line(f"hardware-marked tests: {len(ran)} ran, {len(skipped)} skipped for lack of hardware")
        for r in skipped:
            terminalreporter.write_line(f"  skipped (hardware): {r.nodeid}")


@pytest.fixture(scope="session")
def spark():
    from thresher.flows.config import SparkConfig
    from thresher.flows.spark import get_spark

    s = get_spark(SparkConfig(master="local[2]", driver_memory="2g", shuffle_partitions=4))
    yield s
    s.stop()


@pytest.fixture
def run_curate(spark, tmp_path):
    """Run a config (a dict, merged over defaults) without Prefect; returns (manifest, output dir)."""
    from thresher.flows.config import load_config
    from thresher.flows.curate import execute

    def go(config: dict, output: Path | None = None, **kw):
        out = output or tmp_path / "run"
        raw = {"output": str(out), **config}
        cfg = load_config(raw=raw)
        return execute(cfg, spark=spark, **kw), out

    return go


# Servers the tests start themselves (Prefect, Spark standalone): loopback ports, process groups.
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_group(proc: subprocess.Popen, timeout: float = 20) -> None:
    """SIGTERM the process group started for `proc` (its flow-run subprocesses too), then SIGKILL."""
    if proc.poll() is not None:
        try:  # the leader is gone, its children may not be
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    except ProcessLookupError:
        pass


LAYERS = ("unit", "spark", "integration")
# Fixtures that start a server: a test using one is an integration test whatever else it uses.
SERVER_FIXTURES = {"s3"}


def pytest_collection_modifyitems(config, items):
    # Whatever a test module put back on sys.path while it was collected, the checkout leaves it
    # again before any test imports transformers (see `import benchmarks` above).
    benchmarks.leave_sys_path()
    for item in items:
        if any(item.get_closest_marker(m) for m in LAYERS):
            continue
        used = set(getattr(item, "fixturenames", ()))
        if used & SERVER_FIXTURES:
            item.add_marker(pytest.mark.integration)
        else:
            item.add_marker(pytest.mark.spark if used & {"spark", "run_curate"} else pytest.mark.unit)
    # Modules with whole flows first, then those with Spark stages, then unit-only ones, each
    # module kept together (its module fixtures are set up once): the two xdist workers then end
    # on short tests together instead of one waiting on a whole flow that started last.
    rank = {m: i for i, m in enumerate(reversed(LAYERS))}
    module_rank: dict = {}
    for it in items:
        r = next(rank[m] for m in reversed(LAYERS) if it.get_closest_marker(m))
        module_rank[it.module] = min(r, module_rank.get(it.module, r))
    items.sort(key=lambda it: module_rank[it.module])
