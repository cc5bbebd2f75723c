"""End to end (`python -m benchmarks pipeline [--quick]`): thresher's demo flow, ingest to export
with every stage, against the single-process script a user would write with the same libraries
(benchmarks/peer_pipeline.py: datasketch MinHashLSH, `SentenceTransformer.encode`, faiss `Kmeans`
at two levels, numpy sampling), on the same input in the same run.

Input: the shared Debian corpus (63,956 documents; `--quick`: the shipped demo data, 4,053).
thresher runs as a user runs it, `thresher run demo.yaml -i INPUT -o RUN` (a fresh process: Spark
and Prefect's ephemeral server start inside the timing); its per-stage seconds and peak memory
come from the run's manifest. Both sides run as child processes whose whole process tree's RSS is
sampled (`thresher_peak_tree_mb`, `peer_peak_tree_mb`). BENCH_PIPELINE_REPEAT (default 1; each side takes minutes at 64k)
alternates the two sides that many times; the ratio is of the medians.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import THRESHER_CLI, PeakRSS, record
from benchmarks.data import CORPUS, DEMO

HERE = Path(__file__).resolve().parent


def _timed(cmd: list[str]) -> tuple[float, float, str]:
    """Seconds and the peak summed RSS of the command's whole process tree (PeakRSS's children)."""
    t0 = time.perf_counter()
    with PeakRSS() as mem:
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    dt = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(f"{cmd[:3]} failed ({p.returncode}):\n{p.stdout[-4000:]}")
    return dt, mem.peak["children_mb"], p.stdout


def run(quick: bool = False):
    src = DEMO if quick else CORPUS
    if not src.exists():
        raise FileNotFoundError(f"{src}: the shared corpus is not here (THRESHER_CORPUS names another copy)")
    repeat = int(os.environ.get("BENCH_PIPELINE_REPEAT", 1))
    from thresher.flows.config import load_config

    cfg = load_config("demo.yaml", {"input": [str(src)], "output": "unused"})
    k1, k2 = cfg.cluster.levels[0].n_clusters, cfg.cluster.levels[-1].n_clusters
    budget, seed = int(cfg.sample.budget), int(cfg.seed)
    work = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    try:
        t_thr, t_peer, mem_thr, mem_peer = [], [], [], []
        manifest, peer = None, None
        load0 = os.getloadavg()
        for r in range(repeat):
            dt, mb, out = _timed([sys.executable, str(HERE / "peer_pipeline.py"), str(src), str(work / f"peer{r}"),
                                  str(budget), str(seed), str(k1), str(k2)])
            t_peer.append(dt)
            mem_peer.append(mb)
            peer = json.loads(out.strip().splitlines()[-1])
            run_dir = work / f"run{r}"
            dt, mb, _ = _timed([THRESHER_CLI, "run", "demo.yaml", "-i", str(src), "-o", str(run_dir)])
            t_thr.append(dt)
            mem_thr.append(mb)
            manifest = json.loads((run_dir / "manifest.json").read_text())
            shutil.rmtree(run_dir, ignore_errors=True)
        load1 = os.getloadavg()
        stages = manifest["stages"]
        yield record(
            "pipeline[demo flow]", statistics.median(t_thr), "single-process script (datasketch, encode, faiss, numpy)",
            statistics.median(t_peer),
            input=str(src.name), docs=manifest["accounting"]["rows_in"], repeats=repeat,
            thresher_runs_s=[round(x, 1) for x in t_thr], peer_runs_s=[round(x, 1) for x in t_peer],
            thresher_flow_wall_s=manifest["wall_s"],
            thresher_stage_s={n: s["wall_s"] for n, s in stages.items()},
            thresher_stage_peak_rss_mb={n: s.get("peak_rss_mb") for n, s in stages.items()},
            thresher_kept={n: s["kept"] for n, s in stages.items()},
            embed_backend=stages.get("embed", {}).get("stats", {}).get("backend"),
            embed_precision=stages.get("embed", {}).get("stats", {}).get("precision"),
            thresher_peak_tree_mb=max(mem_thr), peer_peak_tree_mb=max(mem_peer),
            peer_step_s=peer["steps_s"], peer_counts={k: peer[k] for k in ("docs_in", "after_exact", "after_fuzzy", "sampled")},
            k=[k1, k2], budget=budget, load_before=[round(x, 2) for x in load0], load_after=[round(x, 2) for x in load1],
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
