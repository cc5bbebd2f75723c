"""`python -m benchmarks [NAME ...] [--quick]`: every benchmarks/bench_*.py, one JSON line per comparison.

Each bench module defines `run(quick: bool) -> Iterable[dict]`, timing thresher and a peer on
the same data in the same process run, and yielding
{"bench", "thresher_s", "peer", "peer_s", "ratio", "quality": {...}} (ratio = peer_s / thresher_s,
so > 1 means thresher is faster).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import pkgutil
import sys
import time
import traceback

os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def discover() -> list[str]:
    import benchmarks

    return sorted(m.name[len("bench_"):] for m in pkgutil.iter_modules(benchmarks.__path__) if m.name.startswith("bench_"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", help=f"benchmarks to run (default all: {', '.join(discover())})")
    ap.add_argument("--quick", action="store_true", help="smaller data, for a smoke run")
    ap.add_argument("--isa", choices=["native", "avx2"], default="native",
                    help="avx2: run thresher and its peers on their AVX2 code paths (numba, OpenBLAS, torch, "
                         "MKL, oneDNN, faiss pinned; thresher's picks see no AVX-512/AMX), to measure an AVX2 CPU's "
                         "path on a newer one. Every record says which path ran (hardware.code_path).")
    args = ap.parse_args(argv)
    if args.isa != "native":
        from benchmarks.common import ISA_PINS

        pins = ISA_PINS[args.isa]
        if any(os.environ.get(k) != v for k, v in pins.items()):
            # The pins must be in place before numpy, numba, torch or faiss load: start again.
            os.execve(sys.executable, [sys.executable, "-m", "benchmarks", *(argv if argv is not None else sys.argv[1:])],
                      {**os.environ, **pins})
    from benchmarks.common import hardware

    names = args.names or discover()
    failed = 0
    for name in names:
        mod = importlib.import_module(f"benchmarks.bench_{name}")
        t0 = time.time()
        try:
            for rec in mod.run(quick=args.quick):
                rec = {"bench": rec.pop("bench", name), **rec, "hardware": hardware()}
                print(json.dumps(rec, default=float), flush=True)
        except Exception:
            failed += 1
            traceback.print_exc()
            print(json.dumps({"bench": name, "error": "failed", "wall_s": round(time.time() - t0, 1),
                              "hardware": hardware()}), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
