"""ingest + export throughput against plain pyarrow reading and writing the same Parquet: the
floor a user would compare with (pyarrow does no validation, id checks or accounting)."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

from benchmarks.common import record
from benchmarks.data import CORPUS, DEMO


def run(quick: bool = False):
    from thresher.flows.config import SparkConfig, load_config
    from thresher.flows.curate import execute
    from thresher.flows.spark import get_spark

    src = DEMO if quick or not CORPUS.exists() else CORPUS
    rows = pq.read_metadata(src).num_rows
    work = Path(tempfile.mkdtemp(prefix="thresher-bench-io-"))
    try:
        t0 = time.perf_counter()
        spark = get_spark(SparkConfig(master="local[*]"))
        startup = time.perf_counter() - t0
        times, peer_times = [], []
        for i in range(3):
            cfg = load_config(raw={"input": [str(src)], "output": str(work / f"t{i}"), "stages": ["ingest", "export"],
                                   "export": {"rows_per_file": 50_000}})
            t0 = time.perf_counter()
            execute(cfg, spark=spark)
            times.append(time.perf_counter() - t0)

            t0 = time.perf_counter()
            table = pq.read_table(src)
            out = work / f"p{i}"
            out.mkdir()
            for k, start in enumerate(range(0, table.num_rows, 50_000)):
                pq.write_table(table.slice(start, 50_000), out / f"part-{k:05d}.parquet", compression="zstd",
                               row_group_size=10_000)
            peer_times.append(time.perf_counter() - t0)
        th, pe = sorted(times)[1], sorted(peer_times)[1]
        yield record("ingest_export", th, "pyarrow read+write", pe, rows=rows,
                     thresher_docs_per_s=round(rows / th), peer_docs_per_s=round(rows / pe),
                     spark_startup_s=round(startup, 2))
    finally:
        shutil.rmtree(work, ignore_errors=True)
