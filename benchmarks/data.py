"""Data for demos, tests and benchmarks, made deterministically from the shared Debian corpus."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parent.parent
CORPUS = Path(os.environ.get("THRESHER_CORPUS", REPO.parent / "shared" / "corpora" / "debian_bookworm_descriptions.parquet"))
DEMO = REPO / "configs" / "data" / "debian_demo.parquet"
DEMO_COLUMNS = ["id", "package", "text", "title", "section", "source_package", "installed_size_kb"]


def corpus() -> pa.Table:
    if not CORPUS.exists():
        raise SystemExit(f"{CORPUS}: shared corpus not found (set THRESHER_CORPUS)")
    return pq.read_table(CORPUS)


def _bucket(key: str, mod: int) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little") % mod


def make_demo(out: Path = DEMO, one_in: int = 16) -> pa.Table:
    """Whole source-package families (foo, foo-dev, foo-doc share paragraphs), one in `one_in`,
    so the demo keeps the corpus's natural near-duplicates and its section imbalance."""
    t = corpus().select(DEMO_COLUMNS)
    keep = pa.array([_bucket(s, one_in) == 0 for s in t.column("source_package").to_pylist()])
    t = t.filter(keep)
    t = t.sort_by("id")
    out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(t, out, compression="zstd", compression_level=19, row_group_size=1000)
    return t


if __name__ == "__main__":
    t = make_demo()
    print(f"{DEMO}: {t.num_rows} rows, {DEMO.stat().st_size / 1e6:.2f} MB, "
          f"{len(pc.unique(t.column('section')))} sections")
