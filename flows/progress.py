"""Progress and peak memory of a running stage.

A stage is a handful of Spark jobs, so its progress is read where Spark keeps it: the status
tracker (tasks completed / tasks in each job the stage started). A daemon thread polls it while
the stage runs and
- on a terminal, rewrites one line on stderr: tasks done, an estimate of documents processed
  (the stage's input rows times the share of the current Spark stage's tasks that finished;
  tasks of a scan are near-equal slices of the input, so this is close for the per-document
  passes that dominate), the rate and the ETA of the current Spark stage;
- with no terminal (CI, Prefect workers, log files), prints nothing while the stage runs and logs
  one summary line when it ends, so logs hold one line per stage rather than thousands.

The same thread samples the resident memory of the driver process and all its children (the
JVM in local mode, and Spark's Python workers under it): `peak_rss_mb` of the stage record. RSS
is summed per process, so pages shared between forked Python workers are counted once per
worker: an upper bound. With a remote master, executors run elsewhere and only the driver side
is measured.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from typing import TextIO

log = logging.getLogger("thresher.progress")


def tree_rss_bytes(proc=None) -> int:
    """Resident bytes of a process and all its descendants (processes that vanish are skipped)."""
    import psutil

    proc = proc or psutil.Process(os.getpid())
    total = 0
    try:
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        procs = [proc]
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def _fmt_s(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


class StageMonitor:
    """Context manager around one stage: progress display and peak RSS sampling."""

    def __init__(self, spark, stage: str, total_docs: int | None = None, stream: TextIO | None = None,
                 interval_s: float | None = None, tty: bool | None = None):
        self.spark = spark
        self.stage = stage
        self.total_docs = total_docs
        self.stream = stream or sys.stderr
        self.tty = self._isatty(self.stream) if tty is None else tty
        # A terminal wants a lively line; a log only needs the sums, so poll less.
        self.interval_s = interval_s or (0.5 if self.tty else 1.0)
        self.peak_rss = 0
        self.jobs: set[int] = set()
        self.tasks_done = 0
        self.tasks_total = 0
        self.documents: int | None = None
        self.reused = False
        self._known_jobs: set[int] = set()
        self._stage_seen: dict[int, float] = {}  # Spark stage id -> when first seen running
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._t0 = 0.0
        self._line_len = 0
        self._st = None

    @staticmethod
    def _isatty(stream) -> bool:
        try:
            return stream.isatty()
        except (AttributeError, ValueError):
            return False

    # ------------------------------------------------------------------------ lifecycle
    def __enter__(self) -> "StageMonitor":
        self._t0 = time.time()
        self._known_jobs = set(self._all_job_ids())
        self.peak_rss = tree_rss_bytes()
        self._thread = threading.Thread(target=self._loop, name=f"thresher-progress-{self.stage}", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._sample()
        self._collect_finished_jobs()
        if self.tty and self._line_len:
            self.stream.write("\r" + " " * self._line_len + "\r")
            self.stream.flush()
        if exc_type is None and not self.reused:
            log.info("%s", self.summary())

    def finish(self, documents: int | None, reused: bool = False) -> None:
        """Tell the monitor what the stage processed (its input rows), for the summary line."""
        self.documents = documents
        self.reused = reused

    @property
    def peak_rss_mb(self) -> float:
        return round(max(self.peak_rss, tree_rss_bytes()) / 2**20, 1)

    # ------------------------------------------------------------------------ polling
    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self._sample()
                line = self._poll()
                if self.tty and line:
                    pad = max(0, self._line_len - len(line))
                    self.stream.write("\r" + line + " " * pad)
                    self.stream.flush()
                    self._line_len = len(line)
            except Exception as exc:  # progress is advisory: never let it disturb the stage
                log.debug("progress poll failed: %s", exc)

    def _sample(self) -> None:
        try:
            self.peak_rss = max(self.peak_rss, tree_rss_bytes())
        except Exception:
            pass

    def _tracker(self):
        if self._st is None:
            self._st = self.spark.sparkContext.statusTracker()
        return self._st

    def _all_job_ids(self) -> list[int]:
        try:
            return list(self._tracker().getJobIdsForGroup(None))
        except Exception:
            return []

    def _poll(self) -> str:
        st = self._tracker()
        self.jobs.update(j for j in st.getActiveJobsIds() if j not in self._known_jobs)
        active = []
        for sid in st.getActiveStageIds():
            info = st.getStageInfo(sid)
            if info is not None and info.numTasks:
                self._stage_seen.setdefault(sid, time.time())
                active.append(info)
        elapsed = time.time() - self._t0
        head = f"[{self.stage}] {_fmt_s(elapsed)}"
        if not active:
            return f"{head} (driver work)"
        done = sum(i.numCompletedTasks for i in active)
        total = sum(i.numTasks for i in active)
        parts = [head, f"spark stage {','.join(str(i.stageId) for i in active)}: {done}/{total} tasks"]
        started = min(self._stage_seen[i.stageId] for i in active)
        frac = done / total
        if self.total_docs:
            docs = int(self.total_docs * frac)
            parts.append(f"~{docs:,}/{self.total_docs:,} docs")
            took = time.time() - started
            if docs and took > 0:
                rate = docs / took
                parts.append(f"{rate:,.0f} docs/s")
                parts.append(f"ETA {_fmt_s((self.total_docs - docs) / rate)}")
        elif done:
            took = time.time() - started
            parts.append(f"ETA {_fmt_s(took * (total - done) / done)}")
        parts.append(f"peak rss {self.peak_rss / 2**20:,.0f} MiB")
        return "  ".join(parts)

    def _collect_finished_jobs(self) -> None:
        """Jobs shorter than a poll are missed by the loop; the tracker still lists them."""
        try:
            st = self._tracker()
            self.jobs.update(j for j in self._all_job_ids() if j not in self._known_jobs)
            done = total = 0
            for j in self.jobs:
                info = st.getJobInfo(j)
                if info is None:
                    continue
                for sid in info.stageIds:
                    s = st.getStageInfo(sid)
                    if s is not None:
                        done += s.numCompletedTasks
                        total += s.numTasks
            self.tasks_done, self.tasks_total = done, total
        except Exception as exc:
            log.debug("progress: job summary failed: %s", exc)

    def summary(self) -> str:
        took = time.time() - self._t0
        docs = self.documents
        rate = f" ({docs / took:,.0f} docs/s)" if docs and took > 0 else ""
        what = f"{docs:,} documents" if docs is not None else "done"
        return (f"stage {self.stage}: {what} in {took:.1f} s{rate}, {len(self.jobs)} Spark jobs, "
                f"{self.tasks_done} tasks, peak RSS {self.peak_rss_mb:,.0f} MiB")
