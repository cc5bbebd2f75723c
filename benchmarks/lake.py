"""A data lake with known containment, derived from the shared Debian corpus.

`build_lake(out)` writes one sub-folder per table (a catalog folder for `thresher containment`)
and returns the tables' derivations. `exact_truth(out)` computes every ordered pair's containment
fraction by plain Python set membership over the rows' values (no hashing shared with thresher),
for every pair whose schemas are compatible: that is the ground truth the benchmark and tests
score against.

Tables (full scale, >= 200): copies of the whole corpus; projections (some with a column widened
to int32, or retyped to string/float so that schemas conflict); per-section and per-maintainer
slices; section projections; nested samples (1% < 5% < 10% < 20% < 50%); filters on size, title
and text length; unions of sections and of maintainers; reordered copies (equal datasets); and
near-misses: a slice plus one row that exists nowhere else, a slice with one value changed inside
the column's range (only the content check can tell), one value changed outside it (min-max can),
a slice less one row (still contained); plus tables without statistics, empty tables,
dictionary-encoded strings, nested columns (list, struct) and columns with nulls.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from benchmarks.data import corpus

COLUMNS = ["id", "package", "text", "title", "section", "source_package", "maintainer", "installed_size_kb",
           "description_md5"]
META = ["id", "package", "section", "maintainer", "installed_size_kb"]


def _h(key: str, mod: int) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little") % mod


def _safe(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", s) or "none"


def hash_subset(t: pa.Table, rows: int | None = None) -> pa.Table:
    """`t` sorted by id, or a deterministic subset of about `rows` of its rows (by id hash)."""
    if rows is not None and rows < t.num_rows:
        ids = t.column("id").to_pylist()
        keep = np.array([_h(i, 1_000_003) for i in ids]) < int(1_000_003 * rows / t.num_rows)
        t = t.filter(pa.array(keep))
    return t.sort_by("id")


def base_table(rows: int | None = None) -> pa.Table:
    """The corpus sorted by id, or a deterministic subset of about `rows` rows (by id hash)."""
    return hash_subset(corpus().select(COLUMNS), rows)


def _by_bucket(t: pa.Table, pct: int, salt: str = "s") -> pa.Table:
    keep = [_h(salt + i, 100) < pct for i in t.column("id").to_pylist()]
    return t.filter(pa.array(keep))


def _shuffled(t: pa.Table, seed: int) -> pa.Table:
    return t.take(pa.array(np.random.default_rng(seed).permutation(t.num_rows)))


def _set_value(t: pa.Table, col: str, row: int, value) -> pa.Table:
    vals = t.column(col).to_pylist()
    vals[row] = value
    i = t.schema.get_field_index(col)
    return t.set_column(i, t.schema.field(i), pa.array(vals, t.schema.field(i).type))


def _top(t: pa.Table, col: str, n: int, min_rows: int = 2) -> list[str]:
    vc = pc.value_counts(t.column(col)).to_pylist()
    vc = sorted(vc, key=lambda v: (-v["counts"], v["values"]))
    return [v["values"] for v in vc if v["counts"] >= min_rows][:n]


def _eq(t: pa.Table, col: str, value) -> pa.Table:
    return t.filter(pc.equal(t.column(col), value))


def lake_tables(base: pa.Table, small: bool = False) -> list[tuple[str, pa.Table, dict]]:
    """(name, table, write options) for every table of the lake, in a fixed order."""
    n_sec, n_mnt, n_secmeta, n_union, n_copy, n_nm = (5, 3, 2, 2, 2, 1) if small else (42, 44, 16, 16, 12, 8)
    out: list[tuple[str, pa.Table, dict]] = []

    def add(name, t, **opts):
        out.append((name, t, opts))

    # Copies of the whole table, in other row orders and layouts (equal datasets).
    add("all", base)
    add("all_copy", _shuffled(base, 1), row_group_size=max(1, base.num_rows // 7))
    add("all_copy_snappy", _shuffled(base, 2), compression="snappy")
    # Projections; a widened int column still compares, a retyped one conflicts.
    add("proj_meta", base.select(META))
    add("proj_text", base.select(["id", "text"]))
    add("proj_title", base.select(["package", "title", "section"]))
    add("proj_pkg_section", base.select(["package", "section"]))
    add("proj_section", base.select(["section"]))
    small_sizes = pc.less(base.column("installed_size_kb"), 2**31)
    i32 = base.filter(small_sizes).select(["id", "installed_size_kb"])
    add("proj_size_int32", i32.set_column(1, "installed_size_kb", pc.cast(i32.column(1), pa.int32())))
    add("proj_size_string", base.select(["id"]).append_column("installed_size_kb", pc.cast(base.column("installed_size_kb"), pa.string())))
    add("proj_size_float", base.select(["id"]).append_column("installed_size_kb", pc.cast(base.column("installed_size_kb"), pa.float64())))
    add("proj_size_int64", base.select(["id", "installed_size_kb"]))

    sections = _top(base, "section", n_sec)
    sec_tables = {s: _eq(base, "section", s) for s in sections}
    for s in sections:
        add(f"sec_{_safe(s)}", sec_tables[s])
    for s in sections[:n_secmeta]:
        add(f"secmeta_{_safe(s)}", sec_tables[s].select(META))
    maint = _top(base, "maintainer", n_mnt)
    mnt_tables = {m: _eq(base, "maintainer", m) for m in maint}
    for i, m in enumerate(maint):
        add(f"mnt_{i:02d}_{_safe(m.split('<')[0].strip())[:24]}", mnt_tables[m])

    # Nested samples: each is inside the next (the same hash, growing thresholds): a chain.
    for pct in (1, 5, 10, 20, 50):
        add(f"sample_{pct:02d}", _by_bucket(base, pct))
    for s in sections[:n_copy // 2 or 1]:
        add(f"sec_{_safe(s)}_half", _by_bucket(sec_tables[s], 50, "h"))

    size = base.column("installed_size_kb")
    add("filter_big", base.filter(pc.greater(size, 10_000)))
    add("filter_huge", base.filter(pc.greater(size, 100_000)))
    add("filter_small", base.filter(pc.less(size, 100)))
    add("filter_library", base.filter(pc.match_substring(base.column("title"), "library")))
    add("filter_long_text", base.filter(pc.greater(pc.utf8_length(base.column("text")), 1500)))
    add("filter_dev", base.filter(pc.ends_with(base.column("package"), "-dev")))
    add("filter_dev_meta", base.filter(pc.ends_with(base.column("package"), "-dev")).select(META))

    for i in range(n_union):
        a, b = sections[i], sections[i + 1]
        add(f"union_{_safe(a)}+{_safe(b)}", pa.concat_tables([sec_tables[a], sec_tables[b]]))
    for i in range(max(1, n_union // 3)):
        a, b = maint[2 * i], maint[2 * i + 1]
        add(f"union_mnt_{2 * i:02d}+{2 * i + 1:02d}", pa.concat_tables([mnt_tables[a], mnt_tables[b]]))

    # Equal datasets: reordered copies of slices, one of them three ways.
    for i, s in enumerate(sections[:n_copy]):
        add(f"copy_sec_{_safe(s)}", _shuffled(sec_tables[s], 10 + i))
    add(f"copy2_sec_{_safe(sections[0])}", _shuffled(sec_tables[sections[0]], 99), row_group_size=97)

    # Near-misses.
    for i, s in enumerate(sections[1:1 + n_nm]):
        t = sec_tables[s]
        r = t.slice(0, 1)
        fake = _set_value(r, "text", 0, r.column("text")[0].as_py() + " (forked)")
        add(f"nm_extra_row_{_safe(s)}", pa.concat_tables([t, fake]))
        # One value changed to another value inside the column's range in every table.
        j = t.num_rows // 2
        v = t.column("installed_size_kb")[j].as_py()
        add(f"nm_value_in_{_safe(s)}", _set_value(t, "installed_size_kb", j, v + 1 if v < 5_000_000 else v - 1))
        add(f"nm_drop_row_{_safe(s)}", pa.concat_tables([t.slice(0, j), t.slice(j + 1)]))
    top_size = pc.max(size).as_py()
    for s in sections[1 + n_nm:1 + n_nm + max(1, n_nm // 2)]:
        t = sec_tables[s]
        add(f"nm_value_out_{_safe(s)}", _set_value(t, "installed_size_kb", 0, top_size + 1))
    for i, m in enumerate(maint[:max(1, n_nm // 2)]):
        t = mnt_tables[m]
        add(f"nm_text_mnt_{i:02d}", _set_value(t, "text", t.num_rows - 1, t.column("text")[t.num_rows - 1].as_py() + " "))

    # Layouts that change nothing but how the values are stored.
    for s in sections[:max(1, n_copy // 4)]:
        add(f"nostats_sec_{_safe(s)}", sec_tables[s], write_statistics=False)
    add("nostats_sample_05_meta", _by_bucket(base, 5).select(META), write_statistics=False)
    for s in sections[2:2 + max(1, n_copy // 4)]:
        t = sec_tables[s]
        add(f"dict_sec_{_safe(s)}", t.set_column(t.schema.get_field_index("section"), "section",
                                                 pc.dictionary_encode(t.column("section"))))
    add("empty_all", base.slice(0, 0))
    add("empty_meta", base.select(META).slice(0, 0))

    # Nested columns and nulls.
    nested = base.select(["id", "package"]).append_column(
        "tags", pa.array([[s, m.split("<")[0].strip()] for s, m in zip(base.column("section").to_pylist(),
                                                                       base.column("maintainer").to_pylist())],
                         pa.list_(pa.string()))
    ).append_column("info", pa.StructArray.from_arrays([base.column("section").combine_chunks(), size.combine_chunks()],
                                                       names=["section", "size"]))
    add("nested_all", nested)
    for s in sections[:max(1, n_copy // 4)]:
        add(f"nested_sec_{_safe(s)}", nested.filter(pc.equal(base.column("section"), s)))
    tags = nested.column("tags").to_pylist()
    k = next(i for i, t in enumerate(tags) if t[0] == sections[0])
    tags[k] = [tags[k][1], tags[k][0]]  # the same values in another order: a different list
    nm_nested = nested.set_column(2, "tags", pa.array(tags, pa.list_(pa.string())))
    add("nm_nested_order", nm_nested.filter(pc.equal(base.column("section"), sections[0])))

    nullable = base.select(["id", "package", "maintainer"])
    mvals = nullable.column("maintainer").to_pylist()
    mvals = [None if _h("n" + i, 50) == 0 else m for i, m in zip(nullable.column("id").to_pylist(), mvals)]
    nulls_all = nullable.set_column(2, "maintainer", pa.array(mvals, pa.string()))
    add("nulls_all", nulls_all)
    add("nulls_sample_20", _by_bucket(nulls_all, 20))
    s20 = _by_bucket(nulls_all, 20)
    add("nulls_nonnull_sample_20", s20.filter(pc.is_valid(s20.column("maintainer"))))
    add("proj_pkg_maint", base.select(["id", "package", "maintainer"]))
    return out


def write_table(path: Path, t: pa.Table, opts: dict) -> None:
    path.mkdir(parents=True, exist_ok=True)
    pq.write_table(t, path / "part-00000.parquet", compression=opts.get("compression", "zstd"),
                   row_group_size=opts.get("row_group_size", 1 << 20),
                   write_statistics=opts.get("write_statistics", True))


def build_lake(out: Path, rows: int | None = None, small: bool = False, base: pa.Table | None = None) -> list[str]:
    """Write the lake under `out` (one folder per table; replaces `out`); returns the names.
    `base` (a cut of the corpus, as the tests ship) replaces reading the shared corpus."""
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    base = base_table(rows) if base is None else hash_subset(base.select(COLUMNS), rows)
    names = []
    for name, t, opts in lake_tables(base, small):
        assert name not in names, name
        write_table(out / name, t, opts)
        names.append(name)
    return names


def _py(v):
    if isinstance(v, list):
        return tuple(_py(x) for x in v)
    if isinstance(v, dict):
        return tuple(sorted((k, _py(x)) for k, x in v.items()))
    return v


def exact_truth(lake: Path) -> dict[tuple[str, str], float]:
    """Containment fraction of every ordered pair (A, B), A non-empty, whose columns are all in B
    with the same type class, by exact value comparison: {(A, B): rows of A in B / rows of A}."""
    from thresher.stages.containment import type_class

    lake = Path(lake)
    names = sorted(p.name for p in lake.iterdir() if p.is_dir())
    schemas = {n: pq.read_schema(lake / n / "part-00000.parquet") for n in names}
    classes = {n: {f.name: type_class(f.type) for f in schemas[n]} for n in names}
    rows = {n: pq.read_metadata(lake / n / "part-00000.parquet").num_rows for n in names}
    colsets: dict[tuple[tuple[str, str], ...], list[str]] = {}
    for n in names:
        if rows[n] and len(schemas[n]):
            colsets.setdefault(tuple(sorted(classes[n].items())), []).append(n)
    truth: dict[tuple[str, str], float] = {}
    for key, members in sorted(colsets.items()):
        want = dict(key)
        cols = tuple(want)
        hosts = [n for n in names if rows[n] and all(classes[n].get(c) == k for c, k in want.items())]
        ids: dict[tuple, int] = {}
        enc: dict[str, np.ndarray] = {}
        for n in hosts:
            t = pq.read_table(lake / n / "part-00000.parquet", columns=list(cols))
            colvals = [[_py(v) for v in t.column(c).to_pylist()] for c in cols]
            enc[n] = np.fromiter((ids.setdefault(tup, len(ids)) for tup in zip(*colvals)), dtype=np.int64,
                                 count=t.num_rows)
        uniq = {n: np.unique(v) for n, v in enc.items()}
        for a in members:
            for b in hosts:
                if a != b:
                    truth[(a, b)] = float(np.isin(enc[a], uniq[b]).mean())
    return truth


def load_or_build(out: Path, rows: int | None = None, small: bool = False,
                  base: pa.Table | None = None) -> dict[tuple[str, str], float]:
    """Build the lake and its truth once; later calls reuse them when the recipe is unchanged."""
    out = Path(out)
    key = hashlib.sha256(json.dumps([rows, small, Path(__file__).read_text()]).encode()).hexdigest()[:16]
    tf = out / "_truth.json"
    if tf.exists():
        stored = json.loads(tf.read_text())
        if stored.get("key") == key:
            return {tuple(k.split("\t")): v for k, v in stored["truth"].items()}
    build_lake(out, rows, small, base)
    truth = exact_truth(out)
    tf.write_text(json.dumps({"key": key, "truth": {f"{a}\t{b}": f for (a, b), f in truth.items()}}))
    return truth


if __name__ == "__main__":
    import sys
    import time

    dest = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/thresher-lake")
    t0 = time.time()
    names = build_lake(dest)
    t1 = time.time()
    truth = exact_truth(dest)
    print(f"{len(names)} tables in {t1 - t0:.1f}s; {len(truth)} compatible pairs, "
          f"{sum(f >= 1 for f in truth.values())} contained; truth in {time.time() - t1:.1f}s")
