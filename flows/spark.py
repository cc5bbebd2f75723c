"""The Spark session: embedded local mode by default, any master by configuration."""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

from thresher.flows.config import SparkConfig
from thresher.kernels.threads import limit_task_threads, task_threads  # noqa: F401  (re-exported for one release)

log = logging.getLogger("thresher.spark")

# Set by Ctrl-C (SIGINT): whatever error then surfaces from Spark (a cancelled job, a closed
# gateway) is reported as the interruption it is, not as a failure of the data.
_INTERRUPTED = threading.Event()


def interrupted() -> bool:
    return _INTERRUPTED.is_set()


def watch_interrupts() -> None:
    """Ctrl-C: note it, cancel Spark's jobs, and stop the driver without breaking py4j.

    pyspark's own handler calls into the JVM from inside the signal handler, on the connection
    the interrupted call is still reading ("reentrant call"), and py4j logs the mess with
    tracebacks. Here the jobs are cancelled from another thread (its own connection), so the
    Spark action in progress ends with a cancelled-job error that surfaces normally; Python code
    outside py4j gets a KeyboardInterrupt at once. A second Ctrl-C always interrupts at once.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    if getattr(signal.getsignal(signal.SIGINT), "_thresher", False):
        return

    def cancel_jobs():
        from pyspark import SparkContext

        while True:  # jobs a stage starts after the first cancel are cancelled too
            sc = SparkContext._active_spark_context
            if sc is None:
                return
            try:
                sc._jsc.sc().cancelAllJobs()
            except Exception:
                return
            time.sleep(0.2)

    def on_sigint(signum, frame):
        again = _INTERRUPTED.is_set()
        _INTERRUPTED.set()
        if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
            logging.disable(logging.CRITICAL)  # what Spark and py4j say about the cancelled jobs
        threading.Thread(target=cancel_jobs, name="thresher-cancel", daemon=True).start()
        in_py4j = False
        f = frame
        while f is not None and not in_py4j:
            in_py4j = "py4j" in f.f_code.co_filename
            f = f.f_back
        if again or not in_py4j:
            raise KeyboardInterrupt

    on_sigint._thresher = True  # type: ignore[attr-defined]
    signal.signal(signal.SIGINT, on_sigint)


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
    # Python workers start with `python -m` in the driver's working folder, which Python puts
    # first on sys.path. Run from a checkout, its kernels/, stages/, schemas/ and flows/ then
    # shadow PyPI packages of those names (transformers >= 5.25 imports `kernels`): safe path.
    os.environ.setdefault("PYTHONSAFEPATH", "1")
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
        .config("spark.executorEnv.PYTHONSAFEPATH", "1")
        .config("spark.executorEnv.PYSPARK_PYTHON", os.environ["PYSPARK_PYTHON"])
        # Python workers import pyspark from the installed package, not from the zip of its
        # sources that Spark puts first on their path (flows/pyspark_daemon.py).
        .config("spark.python.daemon.module", "thresher.flows.pyspark_daemon")
    )
    if host:
        b = b.config("spark.driver.host", host).config("spark.driver.bindAddress", host)
    conf = dict(cfg.conf)
    cds = cds_options() if cfg.class_data_sharing and os.environ.get("THRESHER_CDS", "1") != "0" else None
    opts = driver_java_options(cfg, conf.get("spark.driver.extraJavaOptions"), cds)
    if opts:
        conf["spark.driver.extraJavaOptions"] = opts
    for k, v in conf.items():
        b = b.config(k, v)
    spark = b.getOrCreate()
    # The CLI turns JVM logging off unless --debug: a failed task's stack traces (a bad file, a
    # full disk) would bury the one line that says what went wrong.
    spark.sparkContext.setLogLevel(os.environ.get("THRESHER_SPARK_LOG_LEVEL", "ERROR"))
    watch_interrupts()  # after the context exists: it installs its own SIGINT handler
    log.info("spark %s master=%s", spark.version, spark.sparkContext.master)
    return spark


_PICKS_GC = re.compile(r"-XX:\+Use\w+GC\b")


def driver_java_options(cfg: SparkConfig, given: str | None, cds: str | None) -> str:
    """The driver JVM's extra options: `local_java_options` for a local master, unless the options
    given or the environment (SPARK_SUBMIT_OPTS, JAVA_TOOL_OPTIONS) already pick a collector
    (two collectors stop the JVM), then the ones given, then class data sharing's."""
    local = cfg.local_java_options if cfg.master.startswith("local") else ""
    chosen = " ".join(filter(None, [given, os.environ.get("SPARK_SUBMIT_OPTS"), os.environ.get("JAVA_TOOL_OPTIONS")]))
    if _PICKS_GC.search(local) and _PICKS_GC.search(chosen):
        local = ""
    return " ".join(filter(None, [local, given, cds]))


# An archive younger than this may still be being written by its JVM's exit.
_CDS_SETTLE_S = 10.0
_CDS_KEEP = 4


def cds_dir() -> Path:
    return Path(os.environ.get("THRESHER_CACHE_DIR") or Path.home() / ".cache" / "thresher")


def cds_options(now: float | None = None) -> str | None:
    """JVM options for class data sharing (JDK 13+ dynamic archives).

    With an archive for this pyspark and JVM: map it (-XX:SharedArchiveFile). Without: this
    start records one, written when its JVM exits (-XX:ArchiveClassesAtExit) under a name of its
    own, so concurrent first starts never write the same file; a later start promotes a settled
    one to the shared name. A JVM that finds an archive it cannot use starts without it (the
    default -Xshare:auto), so a stale or damaged archive costs the saving, never the run.
    """
    try:
        return _cds_options(now)
    except OSError:  # an unwritable cache, or a file another start moved away meanwhile
        return None


def _cds_options(now):
    import hashlib
    import time
    import uuid

    import pyspark

    base = cds_dir()
    base.mkdir(parents=True, exist_ok=True)
    java = os.path.realpath(os.path.join(os.environ["JAVA_HOME"], "bin", "java")) if os.environ.get("JAVA_HOME") \
        else os.path.realpath(shutil.which("java") or "java")
    # The archive holds the classpath it was made with (the jars inside this pyspark install):
    # another install or JVM gets its own.
    tag = hashlib.sha1(f"{pyspark.__version__}|{os.path.dirname(pyspark.__file__)}|{java}".encode()).hexdigest()[:12]
    final = base / f"spark-{pyspark.__version__}-{tag}.jsa"
    now = time.time() if now is None else now
    if not final.exists():
        parts = sorted((p for p in base.glob(f"{final.stem}.*.part") if now - p.stat().st_mtime > _CDS_SETTLE_S
                        and p.stat().st_size > 0), key=lambda p: p.stat().st_mtime)
        if parts:
            # A damaged archive crashes the JVM that maps it (a truncated one does): only one a
            # JVM has just mapped cleanly becomes the shared archive.
            if _archive_maps(java, parts[-1]):
                os.replace(parts[-1], final)
            else:
                parts[-1].unlink(missing_ok=True)
            for p in parts[:-1]:
                p.unlink(missing_ok=True)
            for p in base.glob("spark-*.part"):  # left by other installs or versions
                if now - p.stat().st_mtime > 3600:
                    p.unlink(missing_ok=True)
            # Keep the archives of the few most recently used installs (about 150 MB each).
            for p in sorted(base.glob("spark-*.jsa"), key=lambda p: p.stat().st_mtime)[:-_CDS_KEEP]:
                if p != final:
                    p.unlink(missing_ok=True)
    # The JVM lists every class it leaves out of the archive (signed jars): noise, not errors.
    quiet = "-Xlog:cds*=off"
    if final.exists():
        os.utime(final)  # last use, for the pruning above
        return f"-XX:SharedArchiveFile={final} {quiet}"
    if any(now - p.stat().st_mtime <= _CDS_SETTLE_S for p in base.glob(f"{final.stem}.*.part")):
        return None  # another start has just written one: the next start promotes it
    return f"-XX:ArchiveClassesAtExit={base / f'{final.stem}.{uuid.uuid4().hex[:12]}.part'} {quiet}"


def _archive_maps(java: str, archive: Path) -> bool:
    import subprocess

    try:
        r = subprocess.run([java, f"-XX:SharedArchiveFile={archive}", "-Xshare:auto", "-Xlog:cds*=off",
                            "-XX:-CreateCoredumpOnCrash", "-XX:ErrorFile=/dev/null", "-version"],
                           capture_output=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0


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
