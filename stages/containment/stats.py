"""Steps 1 and 2 from the Parquet footers alone: each dataset's schema, sizes and per-column
statistics, the schema graph of candidate pairs, and min-max pruning."""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.parquet as pq

from thresher.schemas.errors import InputError
from thresher.stages.containment.catalog import (ColumnStats, Dataset, DatasetRef, is_nested, normal_type,
                                                 parquet_files, type_class)


# ------------------------------------------------------------------------------- footers
def _merge_stats(acc: dict[str, ColumnStats], name: str, st, rg_rows: int) -> None:
    cur = acc[name]
    if not cur.known:
        return
    if st is None or not st.has_null_count and not st.has_min_max:
        acc[name] = ColumnStats(known=False)
        return
    nulls = st.null_count if st.has_null_count else None
    if st.has_min_max:
        lo, hi = st.min, st.max
        try:
            cur.min = lo if cur.min is None or lo < cur.min else cur.min
            cur.max = hi if cur.max is None or hi > cur.max else cur.max
        except TypeError:
            acc[name] = ColumnStats(known=False)
            return
    elif nulls is None or nulls < rg_rows:
        # Values present but no bounds for them: this column cannot prune anything.
        acc[name] = ColumnStats(known=False)
        return
    cur.null_count = None if nulls is None or cur.null_count is None else cur.null_count + nulls


def inspect(ref: DatasetRef) -> Dataset:
    """Schema, row count, sizes and per-column statistics from the Parquet footers alone."""
    files = parquet_files(ref.path)
    if not files:
        raise InputError(f"dataset '{ref.name}': {ref.path} holds no .parquet files")
    schema: pa.Schema | None = None
    first = files[0]
    rows = 0
    size = 0
    col_bytes: dict[str, int] = {}
    stats: dict[str, ColumnStats] = {}
    for f in files:
        try:
            pf = pq.ParquetFile(f)
            md = pf.metadata
            fs = pf.schema_arrow
        except Exception as exc:  # pyarrow raises several types for a damaged footer
            raise InputError(f"dataset '{ref.name}': {f}: not a readable Parquet file ({str(exc).splitlines()[0][:120]})") from None
        if schema is None:
            schema = fs
            stats = {n: ColumnStats(known=True, null_count=0) for n in fs.names}
            col_bytes = {n: 0 for n in fs.names}
        else:
            if sorted(fs.names) != sorted(schema.names):
                diff = sorted(set(fs.names) ^ set(schema.names))
                raise InputError(f"dataset '{ref.name}': {f} and {first} have different columns ('{diff[0]}')")
            for n in fs.names:
                ta, tb = fs.field(n).type, schema.field(n).type
                if normal_type(ta) != normal_type(tb):
                    raise InputError(f"dataset '{ref.name}': column '{n}' is {ta} in {f} but {tb} in {first}")
        if len(set(fs.names)) != len(fs.names):
            raise InputError(f"dataset '{ref.name}': {f} has a repeated column name")
        rows += md.num_rows
        size += os.stat(f).st_size
        top = {n: fs.field(n).type for n in fs.names}
        for rg_i in range(md.num_row_groups):
            rg = md.row_group(rg_i)
            for ci in range(rg.num_columns):
                cc = rg.column(ci)
                path = cc.path_in_schema
                head = path.split(".", 1)[0]
                if head in col_bytes:
                    col_bytes[head] += cc.total_compressed_size
                if path != head or head not in top or is_nested(top[head]):
                    continue  # nested leaves: their bounds are not the column's values
                _merge_stats(stats, head, cc.statistics, rg.num_rows)
    assert schema is not None
    for n in schema.names:
        if is_nested(schema.field(n).type):
            stats[n] = ColumnStats(known=False)
    ds = Dataset(ref.name, ref.path, files, schema, rows, size, col_bytes, stats)
    ds.classes = {n: type_class(schema.field(n).type) for n in schema.names}
    return ds


def inspect_all(refs: list[DatasetRef], on_bad: str = "fail") -> list[Dataset]:
    out = []
    for r in refs:
        try:
            out.append(inspect(r))
        except InputError as exc:
            if on_bad == "fail":
                raise
            out.append(Dataset(r.name, r.path, [], pa.schema([]), 0, 0, {}, {}, problem=str(exc)))
    return out


# ------------------------------------------------------------------------------- step 1
def schema_graph(datasets: list[Dataset]) -> tuple[list[tuple[int, int]], int]:
    """Ordered pairs (a, b) with every column of a in b under the same type class, and the number
    of pairs whose column names fit but some type does not (reported, never compared).

    An inverted index from (column, class) to datasets keeps this near-linear in the output."""
    by_key: dict[tuple[str, str], set[int]] = {}
    by_name: dict[str, set[int]] = {}
    live = [i for i, d in enumerate(datasets) if d.comparable]
    for i in live:
        for n, c in datasets[i].classes.items():
            by_key.setdefault((n, c), set()).add(i)
            by_name.setdefault(n, set()).add(i)
    edges: list[tuple[int, int]] = []
    conflicts = 0
    for a in live:
        keys = sorted(datasets[a].classes.items(), key=lambda kv: len(by_key[kv]))
        cand = set(by_key[keys[0]])
        for k in keys[1:]:
            cand &= by_key[k]
            if not cand:
                break
        cand.discard(a)
        names = set.intersection(*(by_name[n] for n in datasets[a].classes))
        names.discard(a)
        conflicts += len(names) - len(cand)
        edges.extend((a, b) for b in sorted(cand))
    return edges, conflicts


# ------------------------------------------------------------------------------- step 2
def minmax_excludes(a: Dataset, b: Dataset) -> str | None:
    """The first shared column whose footer statistics prove a is not inside b, or None."""
    for n in a.columns:
        sa, sb = a.stats.get(n), b.stats.get(n)
        if sa is None or sb is None or not sa.known or not sb.known:
            continue
        if sa.null_count and sb.null_count == 0:
            return n
        if sa.min is None:
            continue  # a has no non-null value here: nothing to bound
        if sb.min is None:
            return n
        try:
            if sa.min < sb.min or sa.max > sb.max:
                return n
        except TypeError:
            continue
    return None


def minmax_prune(datasets: list[Dataset], edges: list[tuple[int, int]]) -> tuple[list[tuple[int, int]], dict[tuple[int, int], str]]:
    kept, pruned = [], {}
    for a, b in edges:
        col = minmax_excludes(datasets[a], datasets[b])
        if col is None:
            kept.append((a, b))
        else:
            pruned[(a, b)] = col
    return kept, pruned
