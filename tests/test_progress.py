"""Stage progress: a live line on a terminal, one summary line in a log otherwise, and the peak
memory of the driver's process tree."""

from __future__ import annotations

import pytest

import io
import logging
import os

import psutil

from thresher.flows.progress import StageMonitor, tree_rss_bytes

# The CLI or a whole flow, end to end (a Spark session, often Prefect or a subprocess).
pytestmark = pytest.mark.integration


def _slow_job(spark, rows: int = 6000, parts: int = 8, pause_s: float = 0.5) -> int:
    def slow(batches):
        import time

        for b in batches:
            time.sleep(pause_s)
            yield b

    return spark.range(0, rows, numPartitions=parts).mapInArrow(slow, "id long").count()


def test_terminal_shows_live_progress(spark, caplog):
    out = io.StringIO()
    with caplog.at_level(logging.INFO, logger="thresher.progress"):
        with StageMonitor(spark, "demo", total_docs=6000, stream=out, interval_s=0.2, tty=True) as mon:
            assert _slow_job(spark) == 6000
            mon.finish(6000)
    text = out.getvalue()
    lines = [seg for seg in text.split("\r") if seg.strip()]
    assert len(lines) >= 2, text  # updated in place, more than once
    assert all("\n" not in seg for seg in lines)
    live = [seg for seg in lines if "tasks" in seg]
    assert live, text
    assert any("/6,000 docs" in seg and "docs/s" in seg and "ETA" in seg for seg in live), live
    assert text.endswith("\r")  # the line is cleared, so the next log line starts clean
    summary = [r.getMessage() for r in caplog.records if r.name == "thresher.progress"]
    assert len(summary) == 1 and summary[0].startswith("stage demo: 6,000 documents in ")
    assert "Spark jobs" in summary[0] and "peak RSS" in summary[0]
    assert mon.tasks_done >= 8  # the job's 8 tasks were counted, even if polls missed some


def test_log_gets_one_line_per_stage(spark, caplog):
    out = io.StringIO()
    with caplog.at_level(logging.INFO, logger="thresher.progress"):
        for stage in ("first", "second"):
            with StageMonitor(spark, stage, total_docs=3000, stream=out, interval_s=0.2, tty=False) as mon:
                _slow_job(spark, rows=3000, parts=4, pause_s=0.3)
                mon.finish(3000)
        with StageMonitor(spark, "skipped", stream=out, tty=False) as mon:
            mon.finish(3000, reused=True)
    assert out.getvalue() == ""  # nothing written while running when there is no terminal
    msgs = [r.getMessage() for r in caplog.records if r.name == "thresher.progress"]
    assert [m.split(":")[0] for m in msgs] == ["stage first", "stage second"], msgs
    assert all(" tasks, peak RSS " in m for m in msgs)


def test_peak_rss_covers_the_jvm(spark):
    me = psutil.Process(os.getpid()).memory_info().rss
    total = tree_rss_bytes()
    # The local-mode JVM is a child of this process: the tree is far bigger than Python alone.
    assert total > me + 100 * 2**20
    with StageMonitor(spark, "mem", stream=io.StringIO(), tty=False, interval_s=0.1) as mon:
        blob = bytearray(300 * 2**20)  # held while the sampler runs
        blob[::4096] = b"x" * len(blob[::4096])
        import time

        time.sleep(0.5)
        del blob
    assert mon.peak_rss_mb * 2**20 >= total + 200 * 2**20
