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
    P = Points(X)
    lab, d2 = G.assign(P, C)
    lr, dr = R.assign_ref(X, C)
    assert (lab == lr).all(), (lab, lr)
    assert np.allclose(d2, dr, rtol=1e-5, atol=1e-5)
    # Rows 0, 1, 60, 61 sit on a duplicated centroid: a zero gap, decided by the exact kernel.
    assert P.cache["cuda_exact_rows"] >= 4, P.cache["cuda_exact_rows"]
    s = K.fixed_scale(len(X), np.abs(X).max())
    sums, counts = G.update(P, lr, 8, s)   # the device copy of the assignment is reused
    cs, cc = K.update(X, lr, 8, s)
    assert (sums == cs).all() and (counts == cc).all()
    sr, cr = R.update_ref(X, lr, 8)
    assert np.allclose(sums / s, sr, atol=1e-6)

    # Several point blocks, centroid tiles and dimension steps, none of them full, on small
    # patches (2 x 2: 32 points a block, 32 centroids a tile) to keep the simulator quick.
    X = (rng.normal(size=(75, 37)) + 3).astype(np.float32)
    C = np.vstack([X[:40] + 0.01 * rng.normal(size=(40, 37)).astype(np.float32), X[:3]])
    C[41] = C[1]                            # an exact tie across two tiles
    P = Points(X)
    labd, d2d, namb = G.assign_device(P, C, rm=2, rn=2)
    lr, dr = R.assign_ref(X, C)
    assert (labd.copy_to_host() == lr).all()
    assert np.allclose(d2d.copy_to_host(), dr, rtol=1e-5, atol=1e-6)
    assert namb >= 1

    # Lloyd through the CUDA backend gives the CPU backend's centroids, to the bit.
    from thresher.kernels import hkmeans
    from thresher.kernels.backend import CPUBackend, CUDABackend
    X = rng.normal(size=(200, 8)).astype(np.float32)
    runs = [hkmeans.lloyd(hkmeans.ArraySource(X, be), X[:12].copy(), 3) for be in (CUDABackend(), CPUBackend("fp32"))]
    assert np.array_equal(runs[0], runs[1])
    print("ok")
""")


def test_cuda_kernels_under_simulator():
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1"}
    r = subprocess.run([sys.executable, "-c", CUDA_SIM], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-3000:]
