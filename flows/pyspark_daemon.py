"""Spark's Python worker daemon, importing pyspark from the installed package.

Spark puts $SPARK_HOME/python/lib/pyspark.zip and py4j's zip first on its Python workers' path.
With pyspark installed by pip, SPARK_HOME is that package, so the zips are second copies of
installed modules; imported from a zip they are compiled from source in every daemon (about
0.5 s at its start) and every worker, and a worker's path change at its first task makes
importlib re-read the zip's directory once for each package imported from it (0.1-0.7 s).
This daemon leaves out the zips that lie inside an importable pyspark package (so the same
version) before anything imports pyspark, then runs Spark's own daemon. Any other layout (a
Spark distribution without a pip install) keeps its path as it is.
"""

from __future__ import annotations

import importlib.util
import os
import sys


def bundled_zips(path: list[str]) -> list[str]:
    """The zips on `path` inside the pyspark package that `path` without them imports."""
    zips = [p for p in path if p.endswith(".zip")]
    if not zips:
        return []
    saved = sys.path[:]
    try:
        sys.path[:] = [p for p in path if p not in zips]
        spec = importlib.util.find_spec("pyspark")
        py4j = importlib.util.find_spec("py4j")
    finally:
        sys.path[:] = saved
    if spec is None or spec.origin is None or py4j is None:
        return []
    home = os.path.realpath(os.path.dirname(spec.origin)) + os.sep
    return [p for p in zips if os.path.realpath(p).startswith(home)]


if __name__ == "__main__":
    drop = set(bundled_zips(sys.path))
    sys.path[:] = [p for p in sys.path if p not in drop]
    import pyspark.daemon as daemon

    spark_worker = daemon.worker

    def worker(sock, authenticated):
        try:
            return spark_worker(sock, authenticated)
        except (BrokenPipeError, ConnectionResetError):
            # The JVM closed this task's socket (its job failed or was cancelled): the driver
            # reports why; a traceback of the closed pipe on the user's terminal says nothing.
            return 1

    daemon.worker = worker
    daemon.manager()
