"""Incremental dedup: adding 10% new documents to a corpus, against a full run on the union.

The 640k replica (benchmarks/replicate.py: the Debian corpus x10 with seeded word edits; --quick:
a 6.4k-document sample of the corpus x10 = 64k) is split at random (seeded) into 90% reference
and 10% new documents. Timed, each in the same Spark session:
  (i)   a full run (ingest, exact_dedup, fuzzy_dedup, export) on the union;
  (ii)  `thresher index` of the reference (build_index, what the CLI calls), reported, not in the ratio;
  (iii) the same run on the new documents with exact_dedup/fuzzy_dedup `against` the index.
The ratio is (iii)/(i) (the goal: <= 0.25). Both runs rank reference documents above new ones
(survivor `quality`, a column that puts the reference first and orders new documents by length,
as `longest` does), which is the definition `against` implements; the agreement is whether each
new document is kept or removed alike in both runs, with the mismatches counted.
"""

from __future__ import annotations

import os
import random
import shutil
import statistics
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

WORK = Path(os.environ.get("THRESHER_BENCH_DIR", "/tmp/thresher-bench")) / "incremental"


def _corpus(quick: bool) -> Path:
    from benchmarks.data import corpus
    from benchmarks.replicate import made_once, replicate, replicated_corpus

    if not quick:
        return replicated_corpus(10)
    out = WORK.parent / "debian_s6400_x10.parquet"

    def make():
        t = corpus().select(["id", "text"])
        idx = sorted(random.Random(0).sample(range(t.num_rows), 6400))
        return replicate(t.take(pa.array(idx)), 10, 0)

    return made_once(out, "n6400c10s0", make)


def _split(src: Path, where: Path, seed: int = 0, new_share: float = 0.10) -> tuple[Path, Path, set]:
    t = pq.read_table(src)
    rng = random.Random(seed)
    is_new = pa.array([rng.random() < new_share for _ in range(t.num_rows)])
    # Reference documents outrank every new one; new ones rank by length (the `longest` rule).
    length = pc.utf8_length(t.column("text")).cast(pa.float64())
    quality = pc.if_else(is_new, length, pc.add(length, 1e9))
    t = t.append_column("quality", quality)
    where.mkdir(parents=True, exist_ok=True)
    ref, new = where / "ref.parquet", where / "new.parquet"
    pq.write_table(t.filter(pc.invert(is_new)), ref, row_group_size=20_000)
    pq.write_table(t.filter(is_new), new, row_group_size=20_000)
    return ref, new, set(t.filter(is_new).column("id").to_pylist())


def _removed_ids(run: Path) -> set:
    out = set()
    for stage in ("exact_dedup", "fuzzy_dedup"):
        p = run / stage / "removed"
        if p.exists():
            out |= set(pq.read_table(p, columns=["id"]).column("id").to_pylist())
    return out


def run(quick: bool = False):
    from thresher.flows import __version__
    from thresher.flows.config import SparkConfig, load_config
    from thresher.flows.curate import execute
    from thresher.flows.spark import get_spark
    from thresher.stages.against import build_index

    repeat = int(os.environ.get("THRESHER_BENCH_REPEAT", "3"))
    src = _corpus(quick)
    where = WORK / ("64k" if quick else "640k")
    shutil.rmtree(where, ignore_errors=True)
    ref, new, new_ids = _split(src, where)
    spark = get_spark(SparkConfig(master="local[*]", driver_memory="6g", shuffle_partitions=8))
    stages = ["ingest", "exact_dedup", "fuzzy_dedup", "export"]
    dedup = {"survivor": "quality"}

    def go(inputs, out: Path, against: str | None = None):
        ex = {**dedup, **({"against": against} if against else {})}
        cfg = load_config(raw={"input": [str(p) for p in inputs], "output": str(out), "seed": 0, "stages": stages,
                               "exact_dedup": ex, "fuzzy_dedup": ex})
        shutil.rmtree(out, ignore_errors=True)
        t0 = time.perf_counter()
        m = execute(cfg, spark=spark)
        return time.perf_counter() - t0, m

    def index():
        t0 = time.perf_counter()
        s = load_config(raw={"output": "-", "seed": 0, "stages": stages})
        dest, _ = build_index(spark, str(ref), s.exact_dedup.model_copy(update={"seed": 0}),
                              s.fuzzy_dedup.model_copy(update={"seed": 0}), str(where / "ref.index"), __version__)
        return time.perf_counter() - t0, dest

    full_t, inc_t, idx_t = [], [], []
    dest = None
    for _ in range(repeat):
        t, m_full = go([ref, new], where / "full")
        full_t.append(t)
        t, dest = index()
        idx_t.append(t)
        t, m_inc = go([new], where / "incremental", dest)
        inc_t.append(t)
    removed_full = _removed_ids(where / "full") & new_ids
    removed_inc = _removed_ids(where / "incremental")
    mismatches = len(removed_full ^ removed_inc)
    fz = m_inc["stages"]["fuzzy_dedup"]
    full_s, inc_s = statistics.median(full_t), statistics.median(inc_t)
    yield {"bench": f"incremental_{'64k' if quick else '640k'}",
           "docs": {"union": len(new_ids) + pq.ParquetFile(ref).metadata.num_rows, "new": len(new_ids)},
           "full_run_s": round(full_s, 2), "index_s": round(statistics.median(idx_t), 2),
           "incremental_run_s": round(inc_s, 2), "ratio_incremental_to_full": round(inc_s / full_s, 3),
           "runs_s": {"full": [round(x, 1) for x in full_t], "index": [round(x, 1) for x in idx_t],
                      "incremental": [round(x, 1) for x in inc_t]},
           "stage_s": {"full": {k: v["wall_s"] for k, v in m_full["stages"].items()},
                       "incremental": {k: v["wall_s"] for k, v in m_inc["stages"].items()}},
           "new_removed": {"full": len(removed_full), "incremental": len(removed_inc)},
           "new_mismatches": mismatches, "against": fz["stats"].get("against"),
           "exact_against": m_inc["stages"]["exact_dedup"]["stats"].get("against"),
           "load_after": os.getloadavg()}
    spark.stop()
