"""Same input, config and seed: byte-identical export twice in a row, and identical rows in the
same order on 1 core, on 2 cores and with the input split into 8 files (8 partitions)."""

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
    m2, b = run_curate({**cfg, "input": [str(one)]}, output=tmp_path / "b")
    assert m1["accounting"] == m2["accounting"]
    assert dataset_bytes(a) == dataset_bytes(b), "two runs of the same config differ in bytes"
    assert len(rows_in_order(a)) > 0

    # Spark on one core, input in eight files, in a separate process with its own session.
    c = tmp_path / "c"
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(json.dumps({**cfg, "input": [str(split)], "output": str(c)}))
    p = subprocess.run([THRESHER, "run", str(cfg_file), "--spark-master", "local[1]", "--no-prefect"],
                       capture_output=True, text=True, env={**os.environ, "SPARK_LOCAL_IP": "127.0.0.1"}, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert rows_in_order(c) == rows_in_order(a)
    assert dataset_bytes(c) == dataset_bytes(a)
