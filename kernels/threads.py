"""How many threads a kernel may use inside a Spark task, and the cap on numba and torch.

It lives with the kernels because it needs no Spark: the session (flows/spark.py) sets
THRESHER_TASK_THREADS for every Python worker, and each executor closure calls
`limit_task_threads()` before its kernels run, or two workers fight over the same cores.
"""

from __future__ import annotations

import os
import sys


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
