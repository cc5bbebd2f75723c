"""Cuts the test fixtures under tests/data/corpus/ from the shared Debian corpus.

The tests never read ../shared/: each one reads the few rows it was written against, cut here
exactly as the test used to select them from the whole corpus, so a fresh clone runs every test.
Rerun after the corpus changes:  python tests/data/cut_fixtures.py [CORPUS]
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
OUT = HERE / "corpus"
DEMO = REPO / "configs" / "data" / "debian_demo.parquet"


def _h(s: str, mod: int) -> int:
    return int.from_bytes(hashlib.blake2b(s.encode(), digest_size=8).digest(), "little") % mod


def cut(corpus: Path) -> dict[str, pa.Table]:
    t = pq.read_table(corpus)
    out: dict[str, pa.Table] = {}
    # tests/test_minhash.py, tests/test_text.py: the corpus's first rows in file order.
    out["head1500"] = t.select(["id", "text"]).slice(0, 1500)
    # tests/test_dedup.py: whole source-package families, one package in 24 (hash bucket 3).
    keep = [_h(s, 24) == 3 for s in t.column("source_package").to_pylist()]
    out["families24"] = t.filter(pa.array(keep)).select(["id", "text"])
    # tests/test_embed.py: every ~1600th document by id, plus the two longest (beyond 256 tokens).
    s = t.select(["id", "text", "section"]).sort_by("id")
    n_sample = 40
    step = s.num_rows // n_sample
    idx = list(range(0, s.num_rows, step))[:n_sample]
    lens = pc.utf8_length(s.column("text")).to_numpy()
    idx += [int(i) for i in np.argsort(lens)[-2:] if int(i) not in idx]
    out["embed_sample"] = s.take(idx)
    # tests/test_sample.py: every 16th document in file order (about 4,000).
    out["every16"] = t.select(["id", "text", "section"]).take(np.arange(0, t.num_rows, 16))
    # tests/test_decontaminate.py: 40 evaluation items, 30-119 words, outside the demo data.
    demo_ids = set(pq.read_table(DEMO, columns=["id"]).column("id").to_pylist())
    c = t.select(["id", "text"])
    nwords = pc.list_value_length(pc.utf8_split_whitespace(c.column("text")))
    pool = c.filter(pc.and_(pc.greater_equal(nwords, 30), pc.less(nwords, 120)))
    pool = pool.filter(pa.array([i not in demo_ids for i in pool.column("id").to_pylist()]))
    out["eval_items"] = pool.take(pa.array(list(range(0, 40 * 97, 97))))
    # tests/test_containment.py: the lake's base table at 3,000 rows (benchmarks/lake.py).
    sys.path.insert(0, str(REPO))
    from benchmarks.lake import COLUMNS, hash_subset

    out["lake3000"] = hash_subset(t.select(COLUMNS), 3000)
    return out


def main(argv: list[str]) -> None:
    corpus = Path(argv[1]) if len(argv) > 1 else REPO.parent / "shared" / "corpora" / "debian_bookworm_descriptions.parquet"
    OUT.mkdir(parents=True, exist_ok=True)
    for name, tbl in cut(corpus).items():
        path = OUT / f"{name}.parquet"
        pq.write_table(tbl, path, compression="zstd", compression_level=19)
        print(f"{path.relative_to(REPO)}: {tbl.num_rows} rows, {path.stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main(sys.argv)
