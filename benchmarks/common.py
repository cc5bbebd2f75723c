"""Timing and memory helpers shared by the benchmarks."""

from __future__ import annotations

import os
import statistics
import sys
import threading
import time
from pathlib import Path

import psutil


# The `thresher` command of this environment, for benchmarks that run it as a user does.
THRESHER_CLI = str(Path(sys.executable).with_name("thresher"))


def median_time(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def peak_rss_mb(pid: int | None = None, children: bool = True) -> float:
    """Current RSS of a process and its children (JVM, Python workers), in MB."""
    p = psutil.Process(pid)
    procs = [p] + (p.children(recursive=True) if children else [])
    total = 0
    for q in procs:
        try:
            total += q.memory_info().rss
        except psutil.Error:
            pass
    return total / 1e6


def record(bench: str, thresher_s: float, peer: str, peer_s: float, **quality) -> dict:
    return {"bench": bench, "thresher_s": round(thresher_s, 4), "peer": peer, "peer_s": round(peer_s, 4),
            "ratio": round(peer_s / thresher_s, 3) if thresher_s > 0 else None, "quality": quality}


class PeakRSS:
    """Samples, in a background thread, the RSS of this process (the driver) and of its children
    (the Spark JVM and its Python workers) and keeps the peaks, in MB, in `peak`. In local mode
    one JVM is driver and executor (`jvm_mb`); with separate executor JVMs (local-cluster or
    standalone workers started from here) those count as `executor_jvm_mb`."""

    def __init__(self, every_s: float = 0.2):
        self.every = every_s
        self.peak = {"driver_python_mb": 0.0, "jvm_mb": 0.0, "executor_jvm_mb": 0.0, "python_workers_mb": 0.0,
                     "children_mb": 0.0}
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._loop, daemon=True)

    def _loop(self):
        me = psutil.Process()
        while not self._stop.is_set():
            try:
                cur = {"driver_python_mb": me.memory_info().rss / 1e6, "jvm_mb": 0.0, "executor_jvm_mb": 0.0,
                       "python_workers_mb": 0.0}
                for c in me.children(recursive=True):
                    try:
                        rss = c.memory_info().rss / 1e6
                        cmd = c.cmdline()
                        if "java" not in " ".join(cmd[:3]):
                            kind = "python_workers_mb"
                        elif any("CoarseGrainedExecutorBackend" in a for a in cmd):
                            kind = "executor_jvm_mb"
                        else:
                            kind = "jvm_mb"
                    except psutil.Error:
                        continue
                    cur[kind] += rss
                cur["children_mb"] = cur["jvm_mb"] + cur["executor_jvm_mb"] + cur["python_workers_mb"]
                for k, v in cur.items():
                    self.peak[k] = max(self.peak[k], round(v, 1))
            except psutil.Error:
                pass
            self._stop.wait(self.every)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()


# What `python -m benchmarks --isa avx2` sets before anything loads, so that thresher and its
# peers run their AVX2 code on a newer CPU: numba's LLVM target, every OpenBLAS (numpy's,
# scipy's, faiss's), torch's ATen kernels, MKL and oneDNN, faiss's dispatch, and thresher's own
# picks (kernels.backend.cpu_flags hides AVX-512 and AMX). hardware() reports what took effect.
ISA_PINS = {
    "avx2": {
        "THRESHER_CPU_ISA": "avx2",
        "NUMBA_CPU_NAME": "haswell",
        "NUMBA_CPU_FEATURES": "",  # haswell's own features, not the host's AVX-512 ones
        "OPENBLAS_CORETYPE": "Haswell",
        "ATEN_CPU_CAPABILITY": "avx2",
        "MKL_ENABLE_INSTRUCTIONS": "AVX2",
        "ONEDNN_MAX_CPU_ISA": "AVX2",
        "FAISS_SIMD_LEVEL": "AVX2",
    },
}

_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16")


def cpu_class(flags) -> str:
    if "amx_tile" in flags:
        return "AMX"
    if "avx512f" in flags:
        return "AVX-512" + ("+BF16" if "avx512_bf16" in flags else "")
    if "avx2" in flags:
        return "AVX2"
    return "pre-AVX2"


def hardware() -> dict:
    """The machine a record was measured on: CPU model and the flags that pick code paths (as
    the CPU reports them), the ISA pin in force and what each library took from it, the
    k-means backend and precision thresher picks here, cores and load."""
    from thresher.kernels.backend import cpu_info

    model, flags = cpu_info()
    pin = os.environ.get("THRESHER_CPU_ISA") or None
    out = {"cpu_model": model, "cpu_class": cpu_class(flags), "cores": os.cpu_count(),
           "flags": {f: f in flags for f in _FLAGS},
           "isa_pinned": pin, "code_path": f"{pin.upper()} code path pinned on {cpu_class(flags)}" if pin else "native",
           "load_avg": [round(x, 2) for x in os.getloadavg()]}
    eff = {}
    if "numba" in sys.modules:
        import llvmlite.binding as ll
        import numba

        eff["numba_cpu"] = numba.config.CPU_NAME or ll.get_host_cpu_name()
        eff["numba_threads"] = numba.get_num_threads()
    try:
        from threadpoolctl import threadpool_info

        eff["blas"] = sorted({f"{os.path.basename(i['filepath']).split('-')[0]}:{i.get('architecture')}:{i['num_threads']}"
                              for i in threadpool_info() if i["user_api"] == "blas"})
    except Exception:
        pass
    if "faiss" in sys.modules:
        try:
            eff["faiss_simd"] = sys.modules["faiss"].SIMDConfig.get_level_name()
        except Exception:
            pass
    if "torch" in sys.modules:
        try:
            eff["torch_cpu_capability"] = sys.modules["torch"].backends.cpu.get_cpu_capability()
        except Exception:
            pass
    out["effective"] = eff
    # OpenBLAS picks its kernels by the CPU's model; on a virtual machine whose model string it
    # does not know (an H200 host's "Intel(R) Xeon(R) Processor") it falls back to its SSE3
    # "Prescott" kernels, and faiss-cpu's bundled copy ran 5x slower (README, clustering).
    slow = [b for b in eff.get("blas", []) if ":Prescott:" in b]
    if slow and "avx2" in flags:
        out["warnings"] = [f"{', '.join(slow)}: OpenBLAS took its Prescott (SSE3) kernels on an AVX2 CPU; "
                           "set OPENBLAS_CORETYPE (HASWELL, SKYLAKEX, SAPPHIRERAPIDS) for a fair peer"]
    try:
        from thresher.kernels.backend import cpu_bf16, pick_backend

        be = pick_backend()
        out["kmeans_backend"] = be.name
        out["kmeans_precision"] = getattr(be, "matmul", None)
        out["bf16_feature"] = cpu_bf16()
    except Exception as e:  # a benchmark without the kernels' dependencies still gets a record
        out["kmeans_backend"] = f"unavailable: {type(e).__name__}"
    return out
