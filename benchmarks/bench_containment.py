"""Dataset containment (R2D2) against a brute-force content check, on the generated lake.

thresher: catalog footers -> schema graph -> min-max pruning -> content check of what is left
(pairs of small tables exactly in the driver; larger ones on Spark, bottom-k sketches first) ->
plan. On this lake every table is under `local_max_rows`, so no Spark job runs.

peer (the issue's brute force): the same footers and schema graph, then the exact anti-join on
Spark of every ordered pair with compatible schemas, no pruning: one Spark job fingerprints every
table over every column set a pair needs (each row group read once), and one batched anti-join
counts, for all pairs at once, A's rows missing from B. That is thresher's own Spark content
check (`local_max_rows=0`, no sketches), not a per-pair loop: a brute force written to be fast.

Reported alongside, to separate what pruning buys from what the driver path buys: the local
peer (the brute force with thresher's driver content check on every compatible pair) and
thresher all-Spark (`local_max_rows=0`: the pruning steps, then the Spark check with sketches).

All run in the same process on the same Spark session, alternating, after one warm-up of each
path; the figures are medians. Quality: precision and recall of the containment edges against
the exact truth from benchmarks/lake.py (Python set membership over the values), for exact
containment and for near-containment (tau = 0.99), and the pairs each step removes. The load
average at the start and end is recorded with the figures (the machine is shared).
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

from benchmarks.common import peak_rss_mb, record
from benchmarks.lake import load_or_build


def _pr(found: set, true: set) -> dict:
    tp = len(found & true)
    return {"precision": round(tp / len(found), 4) if found else 1.0,
            "recall": round(tp / len(true), 4) if true else 1.0, "tp": tp,
            "fp": len(found - true), "fn": len(true - found)}


def run(quick: bool = False):
    from thresher.flows.config import SparkConfig
    from thresher.flows.spark import get_spark
    from thresher.stages import containment as C
    from thresher.stages.containment import analyse

    base = Path(os.environ.get("THRESHER_BENCH_DIR", "/tmp"))
    # Full scale: all 216 tables from the whole corpus. THRESHER_BENCH_LAKE_ROWS derives the same
    # 216 tables from a subset of the corpus (a smaller lake, same shape).
    rows = 3000 if quick else (int(os.environ["THRESHER_BENCH_LAKE_ROWS"]) if os.environ.get("THRESHER_BENCH_LAKE_ROWS") else None)
    lake = base / ("thresher-lake-quick" if quick else f"thresher-lake-{rows or 'full'}")
    t0 = time.perf_counter()
    truth = load_or_build(lake, rows=rows, small=quick)
    build_s = time.perf_counter() - t0
    spark = get_spark(SparkConfig(master="local[2]", shuffle_partitions=8, driver_memory="4g"))
    cfg = C.Config()
    names = lambda ds, pairs: {(ds[a].name, ds[b].name) for a, b in pairs}  # noqa: E731

    def thresher(c=cfg):
        ds = C.inspect_all(C.load_catalog(lake))
        r = analyse(spark, ds, c)
        return names(ds, r["contained"]), r

    spark_cfg = C.Config(local_max_rows=0)

    def peer(c=spark_cfg):
        ds = C.inspect_all(C.load_catalog(lake))
        edges, _ = C.schema_graph(ds)
        res, _ = C.content_check(spark, ds, edges, c, use_sketch=False)
        return names(ds, [e for e, x in res.items() if x.contained]), len(edges)

    load_start = os.getloadavg()
    # Warm-up: JVM, Python workers and their imports, the driver path's imports, for all alike.
    ds = C.inspect_all(C.load_catalog(lake))
    e, _ = C.schema_graph(ds)
    C.content_check(spark, ds, e[:20], spark_cfg, use_sketch=False)
    C.content_check(spark, ds, e[:20], cfg, use_sketch=False)

    repeats = 1 if quick else int(os.environ.get("THRESHER_BENCH_REPEATS", "3"))
    t_times, p_times, l_times, s_times = [], [], [], []
    for i in range(repeats):
        t0 = time.perf_counter()
        found, res = thresher()
        t_times.append(time.perf_counter() - t0)
        # The peer is repeated only while it is cheap enough; its first run is the figure otherwise.
        if i == 0 or p_times[-1] < 120:
            t0 = time.perf_counter()
            pfound, ppairs = peer()
            p_times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        lfound, _ = peer(cfg)
        l_times.append(time.perf_counter() - t0)
        # thresher with every pair on Spark: what the pruning alone buys on the peer's engine.
        t0 = time.perf_counter()
        sfound, sres = thresher(spark_cfg)
        s_times.append(time.perf_counter() - t0)
        print(f"containment: run {i + 1}: thresher {t_times[-1]:.2f}s, peer {p_times[-1]:.1f}s, "
              f"local peer {l_times[-1]:.2f}s, thresher all-Spark {s_times[-1]:.2f}s", file=sys.stderr, flush=True)
    true = {k for k, f in truth.items() if f >= 1.0}
    c = res["counts"]
    steps = {"ordered_pairs": c["ordered_pairs"], "after_schema": c["after_schema"], "after_minmax": c["after_minmax"],
             "after_sketch": c["after_sketch"], "after_content": c["after_content"],
             "decided_in_driver": c.get("local_pairs", 0), "decided_on_spark": c["after_minmax"] - c.get("local_pairs", 0),
             "removed_by_schema": c["ordered_pairs"] - c["after_schema"],
             "removed_by_minmax": c["after_schema"] - c["after_minmax"],
             "removed_by_sketch": c["after_minmax"] - c["after_sketch"],
             "removed_by_content": c["after_sketch"] - c["after_content"]}
    # Near-containment at tau = 0.99 (one run; the sketch keeps a 3-sigma margin).
    near_cfg = C.Config(tau=0.99)
    ds = C.inspect_all(C.load_catalog(lake))
    t0 = time.perf_counter()
    near = analyse(spark, ds, near_cfg)
    near_s = time.perf_counter() - t0
    near_found = names(ds, near["contained"])
    near_true = {k for k, f in truth.items() if f >= 0.99}
    yield record(
        "containment", statistics.median(t_times), "spark anti-join on every compatible pair", statistics.median(p_times),
        tables=c["datasets"], lake_rows=rows or "full corpus", compatible_pairs=ppairs, true_containments=len(true),
        exact=_pr(found, true), peer_exact=_pr(pfound, true), local_peer_exact=_pr(lfound, true),
        local_peer_s=round(statistics.median(l_times), 3),
        ratio_vs_local_peer=round(statistics.median(l_times) / statistics.median(t_times), 2),
        thresher_all_spark_s=round(statistics.median(s_times), 3), thresher_all_spark_exact=_pr(sfound, true),
        ratio_all_spark=round(statistics.median(p_times) / statistics.median(s_times), 2),
        thresher_all_spark_steps={k: sres["counts"][k] for k in ("after_minmax", "sketched_pairs", "after_sketch", "after_content")},
        steps=steps, timings=res["timings"],
        plan_dropped=c["dropped"], plan_bytes_saved=c["bytes_saved"],
        near_tau_0_99={**_pr(near_found, near_true), "wall_s": round(near_s, 2)},
        thresher_runs_s=[round(x, 2) for x in t_times], peer_runs_s=[round(x, 2) for x in p_times],
        local_peer_runs_s=[round(x, 2) for x in l_times], thresher_all_spark_runs_s=[round(x, 2) for x in s_times],
        load_avg_start=[round(x, 2) for x in load_start], load_avg_end=[round(x, 2) for x in os.getloadavg()],
        lake_build_s=round(build_s, 1), rss_mb=round(peak_rss_mb(), 0),
    )
