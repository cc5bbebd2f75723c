"""Crash safety: SIGKILL a run inside its stages, rerun, and get the uninterrupted result; no
reader ever sees a partial table."""

from __future__ import annotations

import pytest

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq

from conftest import DEMO

# The CLI or a whole flow, end to end (a Spark session, often Prefect or a subprocess).
pytestmark = pytest.mark.integration

THRESHER = str(Path(sys.executable).parent / "thresher")


def stages_for_test() -> list[str]:
    from thresher.stages import STAGES

    wanted = ["ingest", "exact_dedup", "fuzzy_dedup", "export"]
    return [s for s in wanted if s in STAGES]


def check_no_partial_tables(out: Path) -> None:
    """What a reader may see at any moment: finished stage folders and a whole dataset."""
    if not out.exists():
        return
    for d in out.iterdir():
        if d.name.startswith(".") or not d.is_dir():
            continue
        if d.name == "dataset":
            for f in d.glob("*.parquet"):
                pq.read_metadata(f)
        else:
            assert (d / "_stage.json").exists(), f"{d} visible without _stage.json"


def start(cfg: Path, out: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1"}
    return subprocess.Popen([THRESHER, "run", str(cfg), "--output", str(out), "--no-prefect", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def kill_when(proc: subprocess.Popen, out: Path, stage: str, timeout: float = 240) -> bool:
    """SIGKILL the run (and its JVM) once `stage` is in progress; True if it was killed there."""
    t0 = time.time()
    while time.time() - t0 < timeout and proc.poll() is None:
        check_no_partial_tables(out)
        tmp = out / ".tmp"
        if tmp.exists() and any(p.name.startswith(f"{stage}-") for p in tmp.iterdir()):
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.02)
    proc.wait()
    return False


def dataset_bytes(out: Path) -> dict[str, bytes]:
    return {f.name: f.read_bytes() for f in sorted((out / "dataset").glob("*.parquet"))}


def test_sigkill_in_stages_then_rerun_matches_uninterrupted(run_curate, tmp_path):
    stages = stages_for_test()
    cfg = tmp_path / "c.yaml"
    cfg.write_text(json.dumps({"input": [str(DEMO)], "stages": stages, "export": {"rows_per_file": 1000}}))
    ref_manifest, ref = run_curate({"input": [str(DEMO)], "stages": stages, "export": {"rows_per_file": 1000}},
                                   output=tmp_path / "ref")

    out = tmp_path / "crash"
    killed = []
    for stage in ("ingest", stages[-1]):
        killed.append(kill_when(start(cfg, out), out, stage))
        check_no_partial_tables(out)
        assert not (out / "dataset").exists() or dataset_bytes(out) == dataset_bytes(ref)
    assert killed == [True, True], "the run finished before it could be killed"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "running"
    assert "ingest" in manifest["stages"]  # the second run got past ingest before the kill

    # The same command again continues the interrupted run.
    done = start(cfg, out)
    log = done.communicate(timeout=300)[0].decode()
    assert done.returncode == 0, log[-3000:]
    assert "(reused)" in log
    final = json.loads((out / "manifest.json").read_text())
    assert final["status"] == "complete" and final["accounting"] == ref_manifest["accounting"]
    assert final["stages"]["ingest"]["reused"] is True
    assert dataset_bytes(out) == dataset_bytes(ref)
    assert not (out / ".tmp").exists()


def test_resume_reuses_and_force_recomputes(run_curate, tmp_path):
    cfg = {"input": [str(DEMO)], "stages": ["ingest", "export"]}
    out = tmp_path / "r"
    run_curate(cfg, output=out)
    m, _ = run_curate(cfg, output=out, resume=True)
    assert m["stages"]["ingest"]["reused"] and m["stages"]["export"]["reused"]
    m, _ = run_curate(cfg, output=out, resume=True, force=("export",))
    assert m["stages"]["ingest"]["reused"] and not m["stages"]["export"]["reused"]
    # A changed config changes the fingerprint: the stage and everything after it rerun.
    m, _ = run_curate({**cfg, "export": {"rows_per_file": 500}}, output=out, resume=True)
    assert m["stages"]["ingest"]["reused"] and not m["stages"]["export"]["reused"]
    assert len(list((out / "dataset").glob("*.parquet"))) == 9
