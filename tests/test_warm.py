"""`thresher warm` compiles every numba kernel the stages call, so a first run compiles nothing."""

from __future__ import annotations

import os
import subprocess
import sys

# In a fresh process: every kernel called from Python has a compiled signature after warm()
# (loaded from numba's cache or compiled). Kernels only called by other kernels are compiled
# inside their callers (as are the ones inlined always), so they are left out.
CHECK = """
import inspect, re
import numba.core.registry
from thresher.kernels import kmeans_cpu, minhash
from thresher.flows.warm import warm
warm(say=lambda s: None)
kernels = {f"{m.__name__}.{n}": f for m in (kmeans_cpu, minhash) for n, f in vars(m).items()
           if isinstance(f, numba.core.registry.CPUDispatcher) and f.__module__ == m.__name__}
bodies = {k: inspect.getsource(f.py_func) for k, f in kernels.items()}
def callee(k):
    name = k.rsplit(".", 1)[1]
    return any(re.search(rf"\\b{name}\\(", b.split(":", 1)[1]) for o, b in bodies.items() if o != k)
print(sorted(kernels), flush=True)
inlined = {k for k, f in kernels.items() if f.targetoptions.get("inline") == "always"}
print([k for k, f in kernels.items() if not f.signatures and not callee(k) and k not in inlined])
"""


def test_warm_compiles_every_kernel():
    p = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=600,
                       env={**os.environ, "PYTHONSAFEPATH": "1"})
    assert p.returncode == 0, p.stderr[-2000:]
    listed, missing = p.stdout.strip().splitlines()[-2:]
    assert "kmeans_cpu.screen_fp32" in listed and "minhash.jaccard_pairs" in listed  # the scan finds kernels
    assert missing == "[]", f"kernels warm does not compile: {missing}"
