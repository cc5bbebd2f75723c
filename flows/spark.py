"""The Spark session: embedded local mode by default, any master by configuration."""

from __future__ import annotations

import logging
import os
import sys

from thresher.flows.config import SparkConfig

log = logging.getLogger("thresher.spark")


def get_spark(cfg: SparkConfig | None = None):
    """Start (or reuse) the session. Everything binds to `driver_host` (loopback by default)."""
    from pyspark.sql import SparkSession

    cfg = cfg or SparkConfig()
    host = cfg.driver_host or loopback_host(cfg.master)
    # Executors must run the same interpreter (and so the same installed thresher) as the driver.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    if host:
        os.environ.setdefault("SPARK_LOCAL_IP", host)
    # Each Python worker is one task slot: one thread each for numba/torch/BLAS inside tasks.
    os.environ.setdefault("THRESHER_TASK_THREADS", "1")
    b = (
        SparkSession.builder.master(cfg.master)
        .appName("thresher")
        .config("spark.driver.memory", cfg.driver_memory)
        .config("spark.sql.shuffle.partitions", str(cfg.shuffle_partitions))
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.sql.execution.arrow.maxRecordsPerBatch", str(cfg.arrow_batch_rows))
        .config("spark.ui.enabled", str(cfg.ui).lower())
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.parquet.compression.codec", "zstd")
        .config("spark.executorEnv.THRESHER_TASK_THREADS", "1")
        .config("spark.executorEnv.PYSPARK_PYTHON", os.environ["PYSPARK_PYTHON"])
    )
    if host:
        b = b.config("spark.driver.host", host).config("spark.driver.bindAddress", host)
    for k, v in cfg.conf.items():
        b = b.config(k, v)
    spark = b.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    log.info("spark %s master=%s", spark.version, spark.sparkContext.master)
    return spark


def loopback_host(master: str) -> str | None:
    """127.0.0.1 when every master of a spark:// URL is on loopback, else None.

    A cluster on this machine (tests, a one-box standalone install) reaches the driver only on
    loopback, and binding there keeps everything off external interfaces; a remote master
    needs the driver on an address its executors can reach, which Spark picks by default.
    """
    if not master.startswith("spark://"):
        return None
    hosts = [h.strip().rsplit(":", 1)[0].strip("[]") for h in master[len("spark://"):].split(",")]
    if hosts and all(h == "localhost" or h.startswith("127.") or h == "::1" for h in hosts):
        return "127.0.0.1"
    return None


def task_threads() -> int:
    """Threads a kernel may use inside a Spark task (set by get_spark for every Python worker)."""
    try:
        return max(1, int(os.environ.get("THRESHER_TASK_THREADS", "0")) or os.cpu_count() or 1)
    except ValueError:
        return 1


def limit_task_threads() -> int:
    """Cap numba and torch threads inside a Python worker; returns the cap."""
    n = task_threads()
    try:
        import numba

        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    except Exception:  # numba absent or its layer already fixed; the cap is advisory
        pass
    if "torch" in sys.modules:
        import torch

        if torch.get_num_threads() != n:
            torch.set_num_threads(n)
    return n
