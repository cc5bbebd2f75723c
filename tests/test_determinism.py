"""Same input, config and seed: a byte-identical export from two runs that share nothing but the
input's rows -- one file on 2 cores in this process, and eight files of shuffled rows on 1 core in
a separate process (its own JVM, Python hash seed and temporary names). Two runs of one setup in
a row are a weaker form of the same check, so the test does not spend a third flow on it."""

from __future__ import annotations

import pytest

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq

from conftest import DEMO, REPO

# The CLI or a whole flow, end to end (a Spark session, often Prefect or a subprocess).
pytestmark = pytest.mark.integration

THRESHER = str(Path(sys.executable).parent / "thresher")
N_DOCS = 800


def whole_flow() -> dict:
    """The demo config's stage list and settings, on a slice of the demo data."""
    import yaml

    cfg = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    cfg.pop("output", None)
    if "sample" in cfg.get("stages", []):
        cfg.setdefault("sample", {})["budget"] = N_DOCS // 2
    return cfg


def rows_in_order(out: Path) -> list[tuple]:
    files = sorted((out / "dataset").glob("*.parquet"))
    rows = []
    for f in files:
        t = pq.read_table(f)
        rows += list(zip(*[t.column(c).to_pylist() for c in sorted(t.column_names)]))
    return rows


def dataset_bytes(out: Path) -> list[bytes]:
    return [f.read_bytes() for f in sorted((out / "dataset").glob("*.parquet"))]


def test_whole_flow_deterministic_across_runs_cores_and_partitions(run_curate, tmp_path):
    src = pq.read_table(DEMO).slice(0, N_DOCS)
    one = tmp_path / "one.parquet"
    pq.write_table(src, one)
    split = tmp_path / "split"
    split.mkdir()
    step = N_DOCS // 8
    # Eight files in a shuffled order of rows: eight input partitions, arrival order changed.
    perm = sorted(range(N_DOCS), key=lambda i: (i * 7919) % N_DOCS)
    shuffled = src.take(perm)
    for k in range(8):
        pq.write_table(shuffled.slice(k * step, step), split / f"part-{k}.parquet")

    cfg = whole_flow()
    m1, a = run_curate({**cfg, "input": [str(one)]}, output=tmp_path / "a")
    assert len(rows_in_order(a)) > 0

    # Spark on one core, input in eight files, in a separate process with its own session.
    c = tmp_path / "c"
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(json.dumps({**cfg, "input": [str(split)], "output": str(c)}))
    p = subprocess.run([THRESHER, "run", str(cfg_file), "--spark-master", "local[1]", "--no-prefect"],
                       capture_output=True, text=True, env={**os.environ, "SPARK_LOCAL_IP": "127.0.0.1"}, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    m3 = json.loads((c / "manifest.json").read_text())
    assert m3["accounting"] == m1["accounting"]
    assert rows_in_order(c) == rows_in_order(a)
    assert dataset_bytes(c) == dataset_bytes(a), "the export depends on cores, partitions or the process"
