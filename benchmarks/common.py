"""Timing and memory helpers shared by the benchmarks."""

from __future__ import annotations

import statistics
import time
from contextlib import contextmanager

import psutil


def median_time(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


@contextmanager
def timer():
    box = {}
    t0 = time.perf_counter()
    yield box
    box["s"] = time.perf_counter() - t0


def peak_rss_mb(pid: int | None = None, children: bool = True) -> float:
    """Current RSS of a process and its children (JVM, Python workers), in MB."""
    p = psutil.Process(pid)
    procs = [p] + (p.children(recursive=True) if children else [])
    total = 0
    for q in procs:
        try:
            total += q.memory_info().rss
        except psutil.Error:
            pass
    return total / 1e6


def record(bench: str, thresher_s: float, peer: str, peer_s: float, **quality) -> dict:
    return {"bench": bench, "thresher_s": round(thresher_s, 4), "peer": peer, "peer_s": round(peer_s, 4),
            "ratio": round(peer_s / thresher_s, 3) if thresher_s > 0 else None, "quality": quality}
