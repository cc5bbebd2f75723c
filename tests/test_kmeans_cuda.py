"""The numba-cuda k-means kernels, held to the numpy references.

CI has no GPU: these run under numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1), which must be
switched on before numba.cuda is first imported, so each check runs in a fresh process. On a
machine with a GPU, benchmarks/gpu_check.py runs the same checks on the device at real sizes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

CUDA_SIM = textwrap.dedent("""
    import numpy as np
    from thresher.kernels import kmeans_cuda as G, kmeans_cpu as K, kmeans_ref as R
    from thresher.kernels.backend import Points
    rng = np.random.default_rng(0)
    X = rng.normal(size=(70, 9)).astype(np.float32)
    C = np.vstack([X[:6], X[:2]])          # duplicated centroids: ties go to the lower index
    X[60:66] = X[:6]
    lab, d2 = G.assign(Points(X), C)
    lr, dr = R.assign_ref(X, C)
    assert (lab == lr).all(), (lab, lr)
    assert np.allclose(d2, dr, rtol=1e-5, atol=1e-5)
    s = K.fixed_scale(len(X), np.abs(X).max())
    sums, counts = G.update(X, lr, 8, s)
    cs, cc = K.update(X, lr, 8, s)
    assert (sums == cs).all() and (counts == cc).all()
    sr, cr = R.update_ref(X, lr, 8)
    assert np.allclose(sums / s, sr, atol=1e-6)
    print("ok")
""")


def test_cuda_kernels_under_simulator():
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1"}
    r = subprocess.run([sys.executable, "-c", CUDA_SIM], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-3000:]
