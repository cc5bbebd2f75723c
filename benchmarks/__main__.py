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
    args = ap.parse_args(argv)
    names = args.names or discover()
    failed = 0
    for name in names:
        mod = importlib.import_module(f"benchmarks.bench_{name}")
        t0 = time.time()
        try:
            for rec in mod.run(quick=args.quick):
                rec = {"bench": rec.pop("bench", name), **rec}
                print(json.dumps(rec, default=float), flush=True)
        except Exception:
            failed += 1
            traceback.print_exc()
            print(json.dumps({"bench": name, "error": "failed", "wall_s": round(time.time() - t0, 1)}), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
