"""Timing and memory helpers shared by the benchmarks."""

from __future__ import annotations

import statistics
import threading
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


class PeakRSS:
    """Samples, in a background thread, the RSS of this process (the driver) and of its children
    (the Spark JVM and its Python workers) and keeps the peaks, in MB, in `peak`. In local mode
    one JVM is driver and executor (`jvm_mb`); with separate executor JVMs (local-cluster or
    standalone workers started from here) those count as `executor_jvm_mb`."""

    def __init__(self, every_s: float = 0.2):
        self.every = every_s
        self.peak = {"driver_python_mb": 0.0, "jvm_mb": 0.0, "executor_jvm_mb": 0.0, "python_workers_mb": 0.0,
                     "children_mb": 0.0}
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._loop, daemon=True)

    def _loop(self):
        me = psutil.Process()
        while not self._stop.is_set():
            try:
                cur = {"driver_python_mb": me.memory_info().rss / 1e6, "jvm_mb": 0.0, "executor_jvm_mb": 0.0,
                       "python_workers_mb": 0.0}
                for c in me.children(recursive=True):
                    try:
                        rss = c.memory_info().rss / 1e6
                        cmd = c.cmdline()
                        if "java" not in " ".join(cmd[:3]):
                            kind = "python_workers_mb"
                        elif any("CoarseGrainedExecutorBackend" in a for a in cmd):
                            kind = "executor_jvm_mb"
                        else:
                            kind = "jvm_mb"
                    except psutil.Error:
                        continue
                    cur[kind] += rss
                cur["children_mb"] = cur["jvm_mb"] + cur["executor_jvm_mb"] + cur["python_workers_mb"]
                for k, v in cur.items():
                    self.peak[k] = max(self.peak[k], round(v, 1))
            except psutil.Error:
                pass
            self._stop.wait(self.every)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
