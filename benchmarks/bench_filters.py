"""Document filters: thresher's batch functions (what each executor task runs) against the same
filter in DataTrove, on the shared corpus, one core each, in one invocation.

    python -m benchmarks filters [--quick]
    python -m benchmarks.bench_filters [--docs N] [--repeat 3]

thresher side: the stage's filter function (heuristics / pii / language / tokens) over Arrow
batches of 2048 rows, in this process. DataTrove side: its filter's per-document `filter()` /
`format()` in a subprocess whose path holds DataTrove (installed by this benchmark with
`pip install --target` into ~/.cache/thresher/bench-peers, with spacy for its English word
tokenizer). Spark's own overhead is on neither side. Each side: median of `repeat` passes;
ratio = DataTrove s / thresher s. Also printed: the share of documents both sides keep or both
remove ("agreement"), since the implementations differ in word splitting and details.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

CORPUS = Path(os.environ.get("THRESHER_CORPUS", Path(__file__).resolve().parents[2] / "shared" / "corpora"
                             / "debian_bookworm_descriptions.parquet"))
PEERS = Path(os.environ.get("THRESHER_BENCH_PEERS", Path.home() / ".cache" / "thresher" / "bench-peers"))
PEERS_SPACY = PEERS.with_name(PEERS.name + "-spacy")
BATCH = 2048
FILTERS = ("gopher", "c4", "fineweb", "pii", "language", "tokens")


def ensure_peers() -> None:
    for target, pkgs in ((PEERS, ["datatrove==0.10.1", "lingua-language-detector"]), (PEERS_SPACY, ["spacy"])):
        if not target.exists():
            subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--target", str(target), *pkgs], check=True)


def load_texts(n: int | None) -> tuple[list[str], list[str]]:
    import pyarrow.parquet as pq

    t = pq.read_table(CORPUS, columns=["id", "text"])
    if n:
        t = t.slice(0, n)
    return t.column("id").to_pylist(), t.column("text").to_pylist()


# ---------------------------------------------------------------------------------- thresher
def thresher_fn(name: str):
    """(batch -> keep mask as list of bool), a callable per filter."""
    import numpy as np

    if name in ("gopher", "c4", "fineweb"):
        from thresher.stages import heuristics

        fn, _ = heuristics.make_filter(heuristics.Config(rule_sets=[name]))
        return lambda b: (np.asarray(fn(b).reason, dtype=object) == None).tolist()  # noqa: E711
    if name == "pii":
        from thresher.stages import pii

        fn, _ = pii.make_filter(pii.Config(kinds=["email", "ipv4", "ipv6"]))
        return lambda b: [True] * fn(b).columns["text"].__len__()
    if name == "language":
        from thresher.stages import language

        fn = language.make_filter(language.Config(languages=["en"], min_confidence=0.65))
        return lambda b: (np.asarray(fn(b).reason, dtype=object) == None).tolist()  # noqa: E711
    if name == "tokens":
        from thresher.stages import tokens

        path = str(tokens.resolve_tokenizer("all-MiniLM-L6-v2"))
        return lambda b: [True] * len(tokens.count_tokens(b.column(1), path))
    raise ValueError(name)


def run_thresher(name: str, ids, texts, repeat: int) -> tuple[float, list[bool]]:
    import pyarrow as pa

    os.environ.setdefault("RAYON_NUM_THREADS", "1")
    table = pa.table({"id": ids, "text": texts})
    batches = table.to_batches(max_chunksize=BATCH)
    fn = thresher_fn(name)
    fn(batches[0])  # load models, compile regexes
    times, keep = [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        keep = [k for b in batches for k in fn(b)]
        times.append(time.perf_counter() - t0)
    return statistics.median(times), keep


# ---------------------------------------------------------------------------------- datatrove
PEER_CODE = r'''
import json, sys, time, statistics
import pyarrow.parquet as pq
from datatrove.data import Document
name, path, n, repeat = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
t = pq.read_table(path, columns=["id", "text"])
if n:
    t = t.slice(0, n)
docs = [Document(text=x, id=i) for i, x in zip(t.column("id").to_pylist(), t.column("text").to_pylist())]
if name == "gopher":
    from datatrove.pipeline.filters import GopherQualityFilter, GopherRepetitionFilter
    q, r = GopherQualityFilter(), GopherRepetitionFilter()
    def one(d):
        a = q.filter(d)
        return (a is True or (isinstance(a, tuple) and a[0])) and (lambda b: b is True or (isinstance(b, tuple) and b[0]))(r.filter(d))
elif name in ("c4", "fineweb"):
    from datatrove.pipeline.filters import C4QualityFilter, FineWebQualityFilter
    f = C4QualityFilter() if name == "c4" else FineWebQualityFilter()
    def one(d):
        d = Document(text=d.text, id=d.id)  # C4 rewrites the text in place
        a = f.filter(d)
        return a is True or (isinstance(a, tuple) and a[0])
elif name == "pii":
    from datatrove.pipeline.formatters import PIIFormatter
    f = PIIFormatter()
    def one(d):
        f.format(d.text)
        return True
elif name == "tokens":
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(sys.argv[5])
    tok.no_truncation(); tok.no_padding()
    def one(d):
        # DataTrove's TokensCounter: one encode per document (its batch path needs a hub name).
        return len(tok.encode(d.text, add_special_tokens=False).ids) >= 0
else:
    raise SystemExit("no peer for " + name)
one(docs[0])
times = []
for _ in range(repeat):
    t0 = time.perf_counter()
    keep = [bool(one(d)) for d in docs]
    times.append(time.perf_counter() - t0)
print(json.dumps({"s": statistics.median(times), "keep": keep}))
'''


def run_peer(name: str, n: int | None, repeat: int) -> tuple[float, list[bool]] | None:
    if name == "language":
        return None  # DataTrove's LanguageFilter downloads its fastText model from the Hub: offline here
    extra = []
    if name == "tokens":
        from thresher.stages import tokens

        extra = [str(tokens.resolve_tokenizer("all-MiniLM-L6-v2"))]
    env = dict(os.environ, PYTHONPATH=f"{PEERS}:{PEERS_SPACY}", RAYON_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    out = subprocess.run([sys.executable, "-c", PEER_CODE, name, str(CORPUS), str(n or 0), str(repeat), *extra],
                         env=env, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"datatrove {name}: {out.stderr.strip().splitlines()[-1:]}")
    r = json.loads(out.stdout.strip().splitlines()[-1])
    return r["s"], r["keep"]


def run(quick: bool = False, names=FILTERS, repeat: int = 3, n: int | None = None):
    ensure_peers()
    n = n or (5000 if quick else None)
    ids, texts = load_texts(n)
    for name in names:
        load0 = open("/proc/loadavg").read().split()[0]
        ts, keep = run_thresher(name, ids, texts, repeat)
        peer = run_peer(name, n, repeat)
        row = {"bench": f"filter_{name}", "docs": len(texts), "thresher_s": round(ts, 3),
               "thresher_docs_per_s": round(len(texts) / ts), "thresher_kept": int(sum(keep)),
               "load_before": load0, "load_after": open("/proc/loadavg").read().split()[0]}
        if peer is not None:
            ps, pkeep = peer
            row.update({"peer": "datatrove 0.10.1", "peer_s": round(ps, 3), "peer_docs_per_s": round(len(texts) / ps),
                        "peer_kept": int(sum(pkeep)), "ratio": round(ps / ts, 2),
                        "agreement": round(sum(a == b for a, b in zip(keep, pkeep)) / len(keep), 4)})
        yield row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=None)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--only", default=",".join(FILTERS))
    a = ap.parse_args(argv)
    print("cpu:", next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?"))
    for row in run(names=a.only.split(","), repeat=a.repeat, n=a.docs):
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
