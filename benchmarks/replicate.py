"""The corpus replicated `copies` times with seeded random word edits: a bigger corpus with many
more near-duplicates, for the dedup scale benchmark.

`python -m benchmarks.replicate [--copies 10] [--out PATH]`. Copy 0 of each document is the
original; copy k > 0 gets between 0 and 10% of its words replaced, deleted or duplicated
(at least one edit), so most copies stay above a Jaccard of 0.7 to the original and some fall
below it. Ids become `<id>~<k>`.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks.data import corpus

DEFAULT_OUT = Path("/tmp/thresher-bench/debian_x10.parquet")


def _edit(rng: random.Random, words: list[str], vocab: list[str]) -> str:
    w = list(words)
    if not w:
        return "edited"
    for _ in range(max(1, int(len(w) * rng.random() * 0.10))):
        op = rng.random()
        i = rng.randrange(len(w))
        if op < 0.5:
            w[i] = rng.choice(vocab)
        elif op < 0.75 and len(w) > 1:
            del w[i]
        else:
            w.insert(i, w[i])
    return " ".join(w)


def replicate(table: pa.Table, copies: int = 10, seed: int = 0) -> pa.Table:
    rng = random.Random(seed)
    ids = table.column("id").to_pylist()
    texts = table.column("text").to_pylist()
    vocab = sorted({w for t in texts[:5000] for w in t.split()})
    out_ids, out_texts = [], []
    for k in range(copies):
        for i, t in zip(ids, texts):
            out_ids.append(f"{i}~{k}")
            out_texts.append(t if k == 0 else _edit(rng, t.split(), vocab))
    return pa.table({"id": pa.array(out_ids, pa.string()), "text": pa.array(out_texts, pa.string())})


def made_once(out: Path, params: str, make) -> Path:
    """The Parquet file `out`, written from `make()` once and reused while a marker beside it
    says it was made with the same `params` (benchmark corpora: replicas, families)."""
    out = Path(out)
    marker = out.with_suffix(f".{params}.done")
    if out.exists() and marker.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    t = make()
    pq.write_table(t, out, compression="zstd", row_group_size=20_000)
    marker.write_text(str(t.num_rows))
    return out


def replicated_corpus(copies: int = 10, out: Path = DEFAULT_OUT, seed: int = 0) -> Path:
    """The replicated file, made once and reused while the corpus and parameters are unchanged."""
    return made_once(out, f"c{copies}s{seed}", lambda: replicate(corpus().select(["id", "text"]), copies, seed))


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--copies", type=int, default=10)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    p = replicated_corpus(a.copies, a.out, a.seed)
    print(f"{p}: {pq.ParquetFile(p).metadata.num_rows} rows")
