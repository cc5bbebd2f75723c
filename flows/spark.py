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
    # Executors must run the same interpreter (and so the same installed thresher) as the driver.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    if cfg.driver_host:
        os.environ.setdefault("SPARK_LOCAL_IP", cfg.driver_host)
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
    if cfg.driver_host:
        b = b.config("spark.driver.host", cfg.driver_host).config("spark.driver.bindAddress", cfg.driver_host)
    for k, v in cfg.conf.items():
        b = b.config(k, v)
    spark = b.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    log.info("spark %s master=%s", spark.version, spark.sparkContext.master)
    return spark


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
