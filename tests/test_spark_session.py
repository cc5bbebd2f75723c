"""The Spark session's class-data-sharing archive: recorded once, promoted once settled, mapped after."""

from __future__ import annotations

import os

import pytest

from thresher.flows import spark as S

# The CLI or a whole flow, end to end (a Spark session, often Prefect or a subprocess).
pytestmark = pytest.mark.integration


def test_cds_archive_recorded_then_promoted_then_mapped(tmp_path, monkeypatch):
    monkeypatch.setenv("THRESHER_CACHE_DIR", str(tmp_path / "cache"))
    first = S.cds_options()
    assert first.startswith("-XX:ArchiveClassesAtExit=") and first.endswith(" -Xlog:cds*=off")
    part = first.split("=", 1)[1].split()[0]
    assert part.startswith(str(tmp_path / "cache")) and part.endswith(".part")
    # The JVM writes it at exit; while it is fresh, other starts neither record nor map one.
    with open(part, "wb") as f:
        f.write(b"x" * 10)
    t = os.stat(part).st_mtime
    assert S.cds_options(now=t + 1) is None
    # A second, older finished recording: the newest settled one becomes the shared archive.
    older = part.replace(".part", "0.part")
    with open(older, "wb") as f:
        f.write(b"y")
    os.utime(older, (t - 100, t - 100))
    mapped = S.cds_options(now=t + S._CDS_SETTLE_S + 1)
    final = mapped.split("=", 1)[1].split()[0]
    assert mapped.startswith("-XX:SharedArchiveFile=") and final.endswith(".jsa")
    assert open(final, "rb").read() == b"x" * 10
    assert not os.path.exists(part) and not os.path.exists(older)
    assert S.cds_options() == mapped


def test_damaged_archive_is_never_promoted(tmp_path, monkeypatch):
    import shutil
    import subprocess

    java = shutil.which("java")
    monkeypatch.setenv("THRESHER_CACHE_DIR", str(tmp_path))
    part = S.cds_options().split("=", 1)[1].split()[0]
    # A real (small) archive from a JVM's exit, then cut short as a crash mid-write would.
    subprocess.run([java, f"-XX:ArchiveClassesAtExit={part}", "-Xlog:cds*=off", "-version"], check=True,
                   capture_output=True)
    whole = open(part, "rb").read()
    assert S._archive_maps(java, __import__("pathlib").Path(part))
    os.chmod(part, 0o644)
    with open(part, "wb") as f:
        f.write(whole[: len(whole) // 2])
    t = os.stat(part).st_mtime
    # Settled but damaged: deleted, and this start records a new one instead.
    assert S.cds_options(now=t + S._CDS_SETTLE_S + 1).startswith("-XX:ArchiveClassesAtExit=")
    assert not os.path.exists(part) and not list(tmp_path.glob("*.jsa"))


def test_cds_off_and_unwritable_cache(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("THRESHER_CACHE_DIR", str(blocker / "sub"))  # cannot be created
    assert S.cds_options() is None


def test_session_passes_the_archive_option(spark):
    if os.environ.get("THRESHER_CDS") == "0":
        pytest.skip("class data sharing switched off")
    opts = spark.sparkContext.getConf().get("spark.driver.extraJavaOptions") or ""
    if "-XX:SharedArchiveFile=" not in opts:
        # Recording; or neither, only when another start had just recorded one.
        assert "-XX:ArchiveClassesAtExit=" in opts or any(S.cds_dir().glob("*.part")), opts
    # Spark's own module options survive the merge.
    assert "--add-opens=java.base/java.lang=ALL-UNNAMED" in opts


def test_python_daemon_leaves_out_only_the_installed_pyspark_zips(tmp_path):
    """Workers import pyspark from the installed package: the zips inside it are left out of
    their path, a zip elsewhere stays (flows/pyspark_daemon.py)."""
    from pathlib import Path

    import pyspark

    from thresher.flows.pyspark_daemon import bundled_zips

    lib = Path(pyspark.__file__).parent / "python" / "lib"
    zips = sorted(str(p) for p in lib.glob("*.zip"))
    assert any(z.endswith("pyspark.zip") for z in zips)
    other = str(tmp_path / "mine.zip")
    import sys

    assert bundled_zips(zips + [other] + sys.path) == zips
    assert bundled_zips([other] + sys.path) == []


def test_local_session_runs_the_collector_picked_for_it(spark, monkeypatch):
    """SparkConfig.local_java_options reaches a local driver JVM, unless the environment already
    picked a collector (the suite's SPARK_SUBMIT_OPTS pick the serial one): never two."""
    from thresher.flows.config import SparkConfig

    started_with = os.environ.get("SPARK_SUBMIT_OPTS", "") + " " + os.environ.get("JAVA_TOOL_OPTIONS", "")
    monkeypatch.delenv("JAVA_TOOL_OPTIONS", raising=False)
    monkeypatch.setenv("SPARK_SUBMIT_OPTS", "-XX:TieredStopAtLevel=1")
    local, cluster = SparkConfig(master="local[2]"), SparkConfig(master="spark://127.0.0.1:7077")
    assert S.driver_java_options(local, "-Dx=1", "-XX:SharedArchiveFile=a") == "-XX:+UseParallelGC -Dx=1 -XX:SharedArchiveFile=a"
    assert S.driver_java_options(cluster, "-Dx=1", None) == "-Dx=1"
    assert S.driver_java_options(local, "-XX:+UseG1GC", None) == "-XX:+UseG1GC"
    assert S.driver_java_options(SparkConfig(master="local[2]", local_java_options=""), None, None) == ""
    monkeypatch.setenv("SPARK_SUBMIT_OPTS", "-XX:+UseSerialGC")
    assert S.driver_java_options(local, None, None) == ""
    # The running session: started under the suite's options, with their collector alone.
    beans = spark.sparkContext._jvm.java.lang.management.ManagementFactory.getGarbageCollectorMXBeans()
    names = [b.getName() for b in beans]
    want = "Copy" if "UseSerialGC" in started_with else "PS Scavenge"
    assert want in names, names
