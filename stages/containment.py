"""Dataset containment over a catalog (R2D2: Reducing Redundancy and Duplication in Data Lakes).

Four steps, each shrinking the set of ordered pairs (A, B) that the next one has to look at:

1. schema graph   A -> B when every column of A is in B with a compatible type (footers only)
2. min-max        drop A -> B when some shared column's [min, max] in A is not inside B's, or A
                  has nulls where B has none (Parquet footer statistics; no data read)
3. content        128-bit fingerprints of A's rows over A's columns, |A n B| / |A| exactly: in the
                  driver (sorted fingerprints, numpy) when both tables are small, otherwise on
                  Spark by an anti-join, where tables of `sketch_min_rows` rows or more first go
                  through bottom-k sketches of the fingerprints, which can only disprove containment
4. plan           drop a dataset when a kept dataset contains it and the cost model says the
                  storage saved outweighs rebuilding it from that container

This module holds the steps as plain functions over `Dataset` records; flows/containment.py
strings them together, writes the outputs and owns the output folder. Nothing here deletes or
writes user data.

Containment is over sets of rows: A is contained in B when every row of A, restricted to A's
columns, is a row of B restricted to the same columns (nulls equal nulls). The fraction counts
A's rows with multiplicity: fraction = rows of A found in B / rows of A.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field

from thresher.stages.base import StageConfig, Strict
from thresher.schemas.errors import InputError

STEP_MINMAX = "minmax"
STEP_SKETCH = "sketch"
STEP_CONTENT = "content"


class CostModel(Strict):
    """Drop a contained dataset D rebuilt from container C when
    storage_weight * bytes(D) - (rebuild_weight * bytes of C's columns that D needs + rebuild_fixed_bytes)
    is at least min_saving_bytes. Weights are per byte, so only their ratio matters."""

    storage_weight: float = Field(1.0, ge=0)
    # Rebuilding reads the container's columns that D has (a projection and/or filter of C).
    rebuild_weight: float = Field(0.01, ge=0)
    rebuild_fixed_bytes: int = Field(0, ge=0)
    min_saving_bytes: int = Field(0, ge=0)


class Config(StageConfig):
    # Containment threshold: 1.0 is exact containment; below 1 a pair counts when at least this
    # share of A's rows is in B (near-containment; transitivity no longer holds).
    tau: float = Field(1.0, gt=0, le=1)
    minmax: bool = True
    # Bottom-k sketches as a first cut for contained-side tables of at least sketch_min_rows rows.
    sketch: bool = True
    sketch_min_rows: int = Field(1_000, ge=1)
    sketch_size: int = Field(256, ge=8)
    # Pairs whose two tables both have at most local_max_rows rows are fingerprinted and compared
    # in the driver (pyarrow + numpy), without a Spark job: for small tables a Spark job's fixed
    # cost is most of the work. Larger tables always go to Spark; 0 sends every pair there.
    local_max_rows: int = Field(250_000, ge=0)
    # A dataset that cannot be read (no Parquet, damaged footer, files that disagree on a column's
    # type): stop with one line, or leave it out of the comparison and say so in the plan.
    on_bad_dataset: Literal["fail", "skip"] = "fail"
    cost: CostModel = Field(default_factory=CostModel)


# ------------------------------------------------------------------------------- catalog
@dataclass(frozen=True)
class DatasetRef:
    name: str
    path: str  # absolute file or folder


@dataclass
class ColumnStats:
    known: bool  # every row group carries statistics for this column
    min: Any = None  # None: no non-null value (or unknown)
    max: Any = None
    null_count: int | None = None


@dataclass
class Dataset:
    name: str
    path: str
    files: list[str]
    schema: pa.Schema
    num_rows: int
    bytes: int
    column_bytes: dict[str, int]
    stats: dict[str, ColumnStats]
    classes: dict[str, str] = field(default_factory=dict)
    problem: str | None = None  # set when the dataset was skipped

    @cached_property
    def columns(self) -> tuple[str, ...]:
        return tuple(sorted(self.schema.names))

    @property
    def comparable(self) -> bool:
        return self.problem is None and self.num_rows > 0 and len(self.schema) > 0


def parquet_files(path: str) -> list[str]:
    """Parquet files of a dataset: the file itself, or every *.parquet below the folder, skipping
    Spark/Hadoop markers and hidden files."""
    p = Path(path)
    if p.is_file():
        return [str(p)]
    out = []
    for f in sorted(p.rglob("*.parquet")):
        rel = f.relative_to(p)
        if any(s.startswith((".", "_")) for s in rel.parts):
            continue
        out.append(str(f))
    return out


def load_catalog(catalog: str | os.PathLike) -> list[DatasetRef]:
    """A YAML list of {name, path} (or {datasets: [...]}), or a folder whose sub-folders (and
    top-level .parquet files) are datasets. Paths in a YAML catalog are relative to its folder."""
    import yaml

    src = Path(catalog)
    if not src.exists():
        raise InputError(f"{catalog}: catalog not found (a YAML list of datasets, or a folder of dataset folders)")
    refs: list[DatasetRef] = []
    if src.is_dir():
        for child in sorted(src.iterdir()):
            if child.name.startswith((".", "_")):
                continue
            if child.is_dir():
                refs.append(DatasetRef(child.name, str(child.absolute())))
            elif child.suffix == ".parquet":
                refs.append(DatasetRef(child.stem, str(child.absolute())))
        if not refs:
            raise InputError(f"{catalog}: catalog folder holds no dataset folders or .parquet files")
        where = {r.name: i for i, r in enumerate(refs)}
        if len(where) != len(refs):
            seen: set[str] = set()
            dup = next(r.name for r in refs if r.name in seen or seen.add(r.name))
            raise InputError(f"{catalog}: two datasets named '{dup}' (a folder and a .parquet file)")
        return refs
    try:
        data = yaml.safe_load(src.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise InputError(f"{catalog}:{f' line {mark.line + 1}' if mark else ''} not valid YAML") from None
    if isinstance(data, dict) and set(data) == {"datasets"}:
        data = data["datasets"]
    if not isinstance(data, list) or not data:
        raise InputError(f"{catalog}: a catalog is a non-empty list of {{name, path}} entries")
    base = src.absolute().parent
    first: dict[str, int] = {}
    for i, e in enumerate(data):
        if not isinstance(e, dict) or not {"name", "path"} <= set(e):
            raise InputError(f"{catalog}: entry {i} needs 'name' and 'path' (found {e!r:.80})")
        extra = set(e) - {"name", "path"}
        if extra:
            raise InputError(f"{catalog}: entry {i} ('{e['name']}'): unknown key '{sorted(extra)[0]}' (expected name, path)")
        name, path = str(e["name"]), str(e["path"])
        if not name or "/" in name:
            raise InputError(f"{catalog}: entry {i}: dataset name {name!r} must be non-empty and without '/'")
        if name in first:
            raise InputError(f"{catalog}: two datasets named '{name}' (entries {first[name]} and {i})")
        first[name] = i
        p = Path(os.path.expanduser(path))
        p = p if p.is_absolute() else base / p
        if not p.exists():
            raise InputError(f"{catalog}: dataset '{name}': path {p} does not exist")
        refs.append(DatasetRef(name, str(p.resolve())))
    by_path = sorted(refs, key=lambda r: r.path)
    for a, b in zip(by_path, by_path[1:]):
        if a.path == b.path:
            raise InputError(f"{catalog}: datasets '{a.name}' and '{b.name}' name the same path {a.path}")
        if b.path.startswith(a.path.rstrip("/") + "/"):
            raise InputError(f"{catalog}: dataset '{b.name}' lies inside dataset '{a.name}' ({b.path})")
    return refs


# ------------------------------------------------------------------------------- types
def normal_type(t: pa.DataType) -> pa.DataType:
    """The type as Spark will see it: encodings and offset widths do not change a value."""
    if pa.types.is_dictionary(t):
        return normal_type(t.value_type)
    if pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return pa.string()
    if pa.types.is_large_binary(t) or pa.types.is_binary_view(t):
        return pa.binary()
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t) or pa.types.is_list_view(t):
        return pa.list_(normal_type(t.value_type))
    if pa.types.is_struct(t):
        return pa.struct([pa.field(t.field(i).name, normal_type(t.field(i).type)) for i in range(t.num_fields)])
    if pa.types.is_map(t):
        return pa.map_(normal_type(t.key_type), normal_type(t.item_type))
    return t


def type_class(t: pa.DataType) -> str:
    """Columns compare when their classes are equal. Integers up to 64 bits compare as int64 (a
    widening cast never changes a value); every other type must match after `normal_type`
    (float32 1.1 is not float64 1.1, a string is not a number)."""
    t = normal_type(t)
    if pa.types.is_integer(t) and not (t == pa.uint64()):
        return "int64"
    return str(t)


def is_nested(t: pa.DataType) -> bool:
    return pa.types.is_nested(normal_type(t))


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


# ------------------------------------------------------------------------------- step 3
SEEDS = (0x243F6A88, 0x85A308D3)  # two independent row hashes: a 128-bit fingerprint


def hash_schema(d: Dataset) -> pa.Schema:
    """The types a row is hashed in: equal values of the same type class get equal hashes
    (integers widened to int64, encodings and offset widths dropped)."""
    out = []
    for f in d.schema:
        t = pa.int64() if d.classes[f.name] == "int64" else normal_type(f.type)
        out.append(pa.field(f.name, t))
    return pa.schema(out)


def row_hashes(t: pa.Table, cols: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Two 64-bit hashes of every row of `t` over `cols` (in that order). polars' row hash keeps
    nulls apart from every value and (null, 'x') apart from ('x', null); -0.0 is folded into 0.0
    first because the values are equal."""
    import polars as pl
    import pyarrow.compute as pc

    sub = t.select(list(cols))
    for i, f in enumerate(sub.schema):
        if pa.types.is_floating(f.type):
            col = sub.column(i)
            sub = sub.set_column(i, f, pc.if_else(pc.equal(col, 0), pa.scalar(0, f.type), col))
    df = pl.from_arrow(sub, rechunk=False)
    if isinstance(df, pl.Series):
        df = df.to_frame()
    h1 = df.hash_rows(SEEDS[0]).to_numpy().view(np.int64)
    h2 = df.hash_rows(SEEDS[1]).to_numpy().view(np.int64)
    return h1, h2


def read_fingerprints(spark, datasets: list[Dataset], needs: dict[int, list[int]], colsets: list[tuple[str, ...]]):
    """One DataFrame (ds int, s int, h1 long, h2 long): every row of dataset ds fingerprinted over
    column set s, for each (ds, s) in `needs`.

    One Spark job for the whole catalog: the units are (dataset, file, row group); executors read
    each row group's columns once with pyarrow and hash it for every column set it is needed for.
    Only the small spec (files, schemas, column sets) travels from the driver."""
    specs: dict[int, tuple[pa.Schema, list[tuple[int, tuple[str, ...]]]]] = {}
    units = []
    for ds_i in sorted(needs):
        d = datasets[ds_i]
        sets = [(s, colsets[s]) for s in sorted(needs[ds_i])]
        hs = hash_schema(d)
        want = sorted({c for _, cols in sets for c in cols})
        specs[ds_i] = (pa.schema([hs.field(c) for c in want]), sets)
        for f in d.files:
            for rg in range(pq.ParquetFile(f).metadata.num_row_groups):
                units.append((ds_i, f, rg))
    out_schema = pa.schema([("ds", pa.int32()), ("s", pa.int32()), ("h1", pa.int64()), ("h2", pa.int64())])

    def fingerprint_units(batches):
        from thresher.kernels.threads import limit_task_threads

        # polars sizes its pool at import: one worker per task slot, like numba and torch.
        os.environ.setdefault("POLARS_MAX_THREADS", str(limit_task_threads()))
        for b in batches:
            for ds_i, f, rg in zip(*(b.column(i).to_pylist() for i in range(3))):
                schema, sets = specs[ds_i]
                t = pq.ParquetFile(f).read_row_group(rg, columns=schema.names).cast(schema)
                if t.num_rows == 0:
                    continue
                for s, cols in sets:
                    h1, h2 = row_hashes(t, cols)
                    n = len(h1)
                    yield pa.RecordBatch.from_arrays(
                        [pa.array(np.full(n, ds_i, np.int32)), pa.array(np.full(n, s, np.int32)),
                         pa.array(h1), pa.array(h2)], schema=out_schema)

    udf = spark.createDataFrame(units, "ds int, f string, rg int")
    parallel = spark.sparkContext.defaultParallelism
    udf = udf.repartition(max(1, min(len(units), 4 * parallel)))
    return udf.mapInArrow(fingerprint_units, "ds int, s int, h1 long, h2 long")


@dataclass
class PairResult:
    step: str
    fraction: float | None
    contained: bool
    detail: str = ""


def bottom_k(ds_: np.ndarray, s_: np.ndarray, h: np.ndarray, k: int) -> dict[tuple[int, int], np.ndarray]:
    """The k smallest distinct h per (ds, s) key, sorted."""
    if len(h) == 0:
        return {}
    key = (ds_.astype(np.int64) << 32) | s_.astype(np.int64)
    order = np.lexsort((h, key))
    key, h = key[order], h[order]
    new = np.ones(len(h), bool)
    new[1:] = (key[1:] != key[:-1]) | (h[1:] != h[:-1])
    key, h = key[new], h[new]
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    ends = np.r_[starts[1:], len(key)]
    return {(int(key[a] >> 32), int(key[a] & 0xFFFFFFFF)): h[a:min(b, a + k)] for a, b in zip(starts, ends)}


def partial_sketches(k: int):
    """mapInArrow function: one partition's bottom-k distinct h1 per (ds, s)."""

    def run(batches):
        acc: dict[tuple[int, int], np.ndarray] = {}
        for b in batches:
            if b.num_rows == 0:
                continue
            cols = [b.column(i).to_numpy(zero_copy_only=False) for i in range(3)]
            for key, h in bottom_k(*cols, k).items():
                acc[key] = np.union1d(acc[key], h)[:k] if key in acc else h
        if acc:
            keys = sorted(acc)
            n = [len(acc[x]) for x in keys]
            yield pa.RecordBatch.from_arrays(
                [pa.array(np.repeat([x[0] for x in keys], n).astype(np.int32)),
                 pa.array(np.repeat([x[1] for x in keys], n).astype(np.int32)),
                 pa.array(np.concatenate([acc[x] for x in keys]))], names=["ds", "s", "h1"])

    return run


def sketch_verdict(sa: np.ndarray, sb: np.ndarray, k: int, tau: float) -> tuple[bool, float]:
    """(may be contained, estimated fraction) from bottom-k sketches of distinct fingerprints.

    Every hash of B up to B's k-th smallest is in B's sketch, so a hash of A at or below that
    bound but missing from B's sketch is a row of A that B lacks: for tau = 1 a rejection is a
    proof, never a guess. Below 1 the estimate gets a 3-sigma margin before it rejects."""
    bound = sb[-1] if len(sb) >= k else np.iinfo(np.int64).max
    cand = sa[sa <= bound]
    if len(cand) == 0:
        return True, float("nan")
    hit = np.isin(cand, sb, assume_unique=True)
    est = float(hit.mean())
    if tau >= 1.0:
        return bool(hit.all()), est
    margin = 3.0 * np.sqrt(max(tau * (1 - tau), 1e-9) / len(cand)) + 1.0 / len(cand)
    return est >= tau - margin, est


LOCAL_BATCH_ROWS = 65_536


def local_fingerprints(d: Dataset, colsets: list[tuple[str, ...]]) -> dict[tuple[str, ...], tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """For each column set, the distinct 128-bit row fingerprints of `d` over it, sorted by
    (h1, h2), and how many rows carry each. Read in the driver once, batch by batch and only the
    columns the sets need: for small tables."""
    hs = hash_schema(d)
    want = sorted({c for cols in colsets for c in cols})
    schema = pa.schema([hs.field(c) for c in want])
    parts: dict[tuple[str, ...], list[tuple[np.ndarray, np.ndarray]]] = {cols: [] for cols in colsets}
    for f in d.files:
        # In batches: the driver never holds more than one batch of a file's values.
        for batch in pq.ParquetFile(f).iter_batches(batch_size=LOCAL_BATCH_ROWS, columns=want):
            t = pa.Table.from_batches([batch]).cast(schema)
            if t.num_rows:
                for cols in colsets:
                    parts[cols].append(row_hashes(t, cols))
    out = {}
    for cols, hs_ in parts.items():
        if not hs_:
            e = np.empty(0, np.int64)
            out[cols] = (e, e, e)
            continue
        h1, h2 = np.concatenate([x[0] for x in hs_]), np.concatenate([x[1] for x in hs_])
        order = np.lexsort((h2, h1))
        h1, h2 = h1[order], h2[order]
        new = np.ones(len(h1), bool)
        new[1:] = (h1[1:] != h1[:-1]) | (h2[1:] != h2[:-1])
        starts = np.flatnonzero(new)
        out[cols] = (h1[starts], h2[starts], np.diff(np.append(starts, len(h1))))
    return out


def found_in(a1: np.ndarray, a2: np.ndarray, b1: np.ndarray, b2: np.ndarray) -> np.ndarray:
    """Which fingerprints (a1, a2) are among B's sorted distinct (b1, b2)."""
    lo = np.searchsorted(b1, a1, "left")
    hi = np.searchsorted(b1, a1, "right")
    n = hi - lo
    hit = np.zeros(len(a1), bool)
    one = n == 1
    hit[one] = b2[lo[one]] == a2[one]
    # Two distinct rows of B with the same 64-bit h1: vanishingly rare, so a plain loop.
    for i in np.flatnonzero(n > 1):
        hit[i] = bool((b2[lo[i]:hi[i]] == a2[i]).any())
    return hit


# The driver keeps the fingerprints of the column sets it is working on: at most about this many
# bytes (24 a row), unless a single column set needs more.
LOCAL_FINGERPRINT_BYTES = 1 << 30


def local_content_check(datasets: list[Dataset], edges: list[tuple[int, int]], cfg: Config) -> dict[tuple[int, int], PairResult]:
    """The exact content check in the driver. Column sets are taken in groups whose fingerprints
    fit LOCAL_FINGERPRINT_BYTES; within a group each table is read once. Same fingerprints and the
    same fraction (A's rows with multiplicity) as on Spark."""
    by_set: dict[tuple[str, ...], list[tuple[int, int]]] = {}
    for a, b in edges:
        by_set.setdefault(datasets[a].columns, []).append((a, b))
    groups: list[list[tuple[str, ...]]] = []
    used = LOCAL_FINGERPRINT_BYTES
    for cols in sorted(by_set):
        need = 24 * sum(datasets[i].num_rows for i in {x for e in by_set[cols] for x in e})
        if used + need > LOCAL_FINGERPRINT_BYTES:
            groups.append([])
            used = 0
        groups[-1].append(cols)
        used += need
    results: dict[tuple[int, int], PairResult] = {}
    for group in groups:
        needs: dict[int, list[tuple[str, ...]]] = {}
        for cols in group:
            for i in sorted({x for e in by_set[cols] for x in e}):
                needs.setdefault(i, []).append(cols)
        fps = {i: local_fingerprints(datasets[i], sets) for i, sets in needs.items()}
        for cols in group:
            for a, b in by_set[cols]:
                a1, a2, ac = fps[a][cols]
                b1, b2, _ = fps[b][cols]
                frac = float(ac[found_in(a1, a2, b1, b2)].sum()) / datasets[a].num_rows
                results[(a, b)] = PairResult(STEP_CONTENT, frac, frac >= cfg.tau - 1e-12)
        del fps
    return results


def content_check(spark, datasets: list[Dataset], edges: list[tuple[int, int]], cfg: Config,
                  use_sketch: bool | None = None) -> tuple[dict[tuple[int, int], PairResult], dict]:
    """Decide every edge on content: pairs of small tables in the driver, the rest on Spark.
    Returns per-pair results and step counts."""
    local, remote = [], []
    for a, b in edges:
        small = max(datasets[a].num_rows, datasets[b].num_rows) <= cfg.local_max_rows
        (local if small else remote).append((a, b))
    results = local_content_check(datasets, local, cfg) if local else {}
    sresults, counts = spark_content_check(spark, datasets, remote, cfg, use_sketch)
    results.update(sresults)
    counts["local_pairs"] = len(local)
    counts["after_sketch"] += len(local)
    counts["exact_pairs"] += len(local)
    return results, counts


def spark_content_check(spark, datasets: list[Dataset], edges: list[tuple[int, int]], cfg: Config,
                        use_sketch: bool | None = None) -> tuple[dict[tuple[int, int], PairResult], dict]:
    """The content check on Spark: one job fingerprints every table the edges need, sketches cut
    the pairs whose contained side is large, one anti-join decides the rest."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    if not edges:
        return {}, {"sketched_pairs": 0, "after_sketch": 0, "exact_pairs": 0}
    use_sketch = cfg.sketch if use_sketch is None else use_sketch
    colsets: list[tuple[str, ...]] = []
    s_of: dict[tuple[str, ...], int] = {}
    needs: dict[int, set[int]] = {}
    edge_s: dict[tuple[int, int], int] = {}
    for a, b in edges:
        cols = datasets[a].columns
        s = s_of.setdefault(cols, len(colsets))
        if s == len(colsets):
            colsets.append(cols)
        edge_s[(a, b)] = s
        needs.setdefault(a, set()).add(s)
        needs.setdefault(b, set()).add(s)
    fp = read_fingerprints(spark, datasets, {k: sorted(v) for k, v in needs.items()}, colsets)
    fp = fp.persist(StorageLevel.MEMORY_AND_DISK)
    fp.count()  # materialise once: the sketch and both sides of the anti-join read it
    results: dict[tuple[int, int], PairResult] = {}
    counts = {"sketched_pairs": 0, "after_sketch": 0, "exact_pairs": 0}
    try:
        exact = list(edges)
        if use_sketch:
            big = [e for e in edges if datasets[e[0]].num_rows >= cfg.sketch_min_rows]
            if big:
                exact = [e for e in edges if datasets[e[0]].num_rows < cfg.sketch_min_rows]
                want = sorted({(a, edge_s[(a, b)]) for a, b in big} | {(b, edge_s[(a, b)]) for a, b in big})
                want_df = spark.createDataFrame(want, "ds int, s int")
                k = cfg.sketch_size
                # Each partition keeps its k smallest distinct hashes per (ds, s); the driver merges
                # them. The bottom k of a union is within the union of the parts' bottom k, so this
                # is exact, and needs no shuffle.
                d = fp.join(F.broadcast(want_df), ["ds", "s"]).select("ds", "s", "h1")
                parts = d.mapInArrow(partial_sketches(k), "ds int, s int, h1 long").toArrow()
                sketches = bottom_k(*(parts.column(c).to_numpy() for c in ("ds", "s", "h1")), k)
                counts["sketched_pairs"] = len(big)
                for a, b in big:
                    s = edge_s[(a, b)]
                    ok, est = sketch_verdict(sketches[(a, s)], sketches[(b, s)], k, cfg.tau)
                    if ok:
                        exact.append((a, b))
                    else:
                        results[(a, b)] = PairResult(STEP_SKETCH, None if est != est else est, False,
                                                     "bottom-k sketch")
        counts["after_sketch"] = counts["exact_pairs"] = len(exact)
        if exact:
            ed = spark.createDataFrame([(a, b, edge_s[(a, b)]) for a, b in sorted(exact)], "a int, b int, s int")
            left = fp.join(F.broadcast(ed), (fp.ds == ed.a) & (fp.s == ed.s)).select("a", "b", ed.s, "h1", "h2")
            right = (fp.join(F.broadcast(ed.select("b", "s").distinct()), (fp.ds == F.col("b")) & (fp.s == ed.s))
                     .select(F.col("b"), ed.s, "h1", "h2").distinct())
            missing = {(r["a"], r["b"]): r["n"] for r in
                       left.join(right, ["b", "s", "h1", "h2"], "left_anti").groupBy("a", "b").agg(F.count("*").alias("n")).collect()}
            for a, b in exact:
                n = datasets[a].num_rows
                frac = 1.0 - missing.get((a, b), 0) / n
                results[(a, b)] = PairResult(STEP_CONTENT, frac, frac >= cfg.tau - 1e-12)
    finally:
        fp.unpersist()
    return results, counts


# ------------------------------------------------------------------------------- step 4
@dataclass
class PlanRow:
    dataset: str
    action: str  # keep | drop | skipped
    contained_in: str | None
    bytes_saved: int
    rows: int
    bytes: int
    rebuild: str | None  # copy | projection | filter | projection+filter
    reason: str
    path: str


def _rank_key(d: Dataset) -> tuple:
    # The largest first (rows, then bytes); the name breaks ties, so the choice never depends on
    # the catalog's order.
    return (-d.num_rows, -d.bytes, d.name)


def rebuild_kind(a: Dataset, b: Dataset, fraction_back: float | None) -> str:
    proj = set(a.columns) != set(b.columns)
    filt = not (fraction_back is not None and fraction_back >= 1.0)
    if proj and filt:
        return "projection+filter"
    if proj:
        return "projection"
    return "filter" if filt else "copy"


def plan(datasets: list[Dataset], contained: dict[tuple[int, int], float], cfg: Config) -> list[PlanRow]:
    """Choose what to drop. `contained` maps (a, b) -> fraction for pairs with a in b.

    Equal datasets (exact containment both ways) form one class that keeps exactly one member,
    the largest, then by name. Classes are visited containers first (a topological order of the
    condensed graph, ties by rank), so a dataset can only point at a container already kept: a
    chain A < B < C resolves to C, and every dropped dataset is contained in a kept one."""
    n = len(datasets)
    # Equivalence classes by mutual exact containment (union-find).
    parent = list(range(n))

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for (a, b), f in contained.items():
        if f >= 1.0 and contained.get((b, a), 0.0) >= 1.0:
            ra, rb = find(a), find(b)
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)
    members: dict[int, list[int]] = {}
    for i in range(n):
        members.setdefault(find(i), []).append(i)
    # An equal class keeps the member with the most rows, then the smallest files, then by name.
    rep = {r: min(ms, key=lambda i: (-datasets[i].num_rows, datasets[i].bytes, datasets[i].name))
           for r, ms in members.items()}
    # Condensed graph: class -> classes containing it.
    ups: dict[int, set[int]] = {r: set() for r in members}
    downs: dict[int, set[int]] = {r: set() for r in members}
    for (a, b) in contained:
        ra, rb = find(a), find(b)
        if ra != rb:
            ups[ra].add(rb)
            downs[rb].add(ra)
    # Near-containment can make cycles between classes; break them by rank so the order exists.
    order: list[int] = []
    indeg = {r: len(ups[r]) for r in members}
    import heapq

    heap = [(_rank_key(datasets[rep[r]]), r) for r, d in indeg.items() if d == 0]
    heapq.heapify(heap)
    done: set[int] = set()
    while len(order) < len(members):
        if not heap:  # a cycle: release its highest-ranked class
            r = min((r for r in members if r not in done), key=lambda r: _rank_key(datasets[rep[r]]))
            indeg[r] = 0
            heap = [(_rank_key(datasets[rep[r]]), r)]
        _, r = heapq.heappop(heap)
        if r in done:
            continue
        done.add(r)
        order.append(r)
        for c in sorted(downs[r]):
            indeg[c] -= 1
            if indeg[c] == 0 and c not in done:
                heapq.heappush(heap, (_rank_key(datasets[rep[c]]), c))

    up_of: dict[int, list[int]] = {}
    for (a, b) in contained:
        up_of.setdefault(a, []).append(b)
    rows: dict[int, PlanRow] = {}
    kept: set[int] = set()
    cm = cfg.cost

    def rebuild_cost(a: Dataset, b: Dataset) -> float:
        need = sum(b.column_bytes.get(c, 0) for c in a.columns)
        return cm.rebuild_weight * need + cm.rebuild_fixed_bytes

    def row(i: int, action: str, by: int | None, reason: str) -> PlanRow:
        d = datasets[i]
        kind = None
        if by is not None:
            kind = rebuild_kind(d, datasets[by], contained.get((by, i)))
        return PlanRow(d.name, action, datasets[by].name if by is not None else None,
                       d.bytes if action == "drop" else 0, d.num_rows, d.bytes, kind, reason, d.path)

    for r in order:
        ms = sorted(members[r], key=lambda i: _rank_key(datasets[i]))
        head = rep[r]
        # Containers of the class already kept, best first: cheapest rebuild, then largest.
        cands = sorted({k for m in ms for k in up_of.get(m, ()) if k in kept},
                       key=lambda k: (rebuild_cost(datasets[head], datasets[k]), _rank_key(datasets[k])))
        container = None
        if cands:
            k = cands[0]
            d = datasets[head]
            net = cm.storage_weight * d.bytes - rebuild_cost(d, datasets[k])
            if net >= cm.min_saving_bytes and net > 0:
                container = k
            else:
                rows[head] = row(head, "keep", None,
                                 f"contained in {datasets[k].name}, but rebuilding it costs more than the storage it saves")
        if container is not None:
            for m in ms:
                f = contained.get((m, container), 1.0)
                rows[m] = row(m, "drop", container, "contained" if f >= 1.0 else f"near-contained ({f:.4f})")
        else:
            kept.add(head)
            if head not in rows:
                rows[head] = row(head, "keep", None, "not contained in another dataset" if not ups[r] else
                                 "its containers are dropped")
            for m in ms:
                if m != head:
                    rows[m] = row(m, "drop", head, f"equal to {datasets[head].name}")
    for i, d in enumerate(datasets):
        if d.problem is not None:
            rows[i] = PlanRow(d.name, "skipped", None, 0, 0, 0, None, d.problem, d.path)
        elif not d.comparable:
            rows[i].reason = "empty: not compared" if d.num_rows == 0 else "no columns: not compared"
    return [rows[i] for i in sorted(rows, key=lambda i: datasets[i].name)]


def plan_table(rows: list[PlanRow]) -> pa.Table:
    schema = pa.schema([("dataset", pa.string()), ("action", pa.string()), ("contained_in", pa.string()),
                        ("bytes_saved", pa.int64()), ("rows", pa.int64()), ("bytes", pa.int64()),
                        ("rebuild", pa.string()), ("reason", pa.string()), ("path", pa.string())])
    return pa.Table.from_pylist([r.__dict__ for r in rows], schema=schema)


def containment_table(datasets: list[Dataset], edges: list[tuple[int, int]], pruned: dict[tuple[int, int], str],
                      results: dict[tuple[int, int], PairResult]) -> pa.Table:
    """Every pair that passed step 1, with the step that decided it (schema `containment`).
    Built column by column: a lake has tens of thousands of pairs, and rows of Python dicts cost
    more than the content check that decided them."""
    from thresher import schemas

    names = [d.name for d in datasets]
    order = sorted(edges, key=lambda e: (names[e[0]], names[e[1]]))
    step, frac, ok, why = [], [], [], []
    for e in order:
        col = pruned.get(e)
        if col is not None:
            step.append(STEP_MINMAX)
            frac.append(None)
            ok.append(False)
            why.append(f"column '{col}' out of range")
        else:
            r = results[e]
            step.append(r.step)
            frac.append(r.fraction)
            ok.append(r.contained)
            why.append(r.detail or None)
    # shared_columns: every pair's list is its contained side's columns, so offsets into one
    # flat array of those names.
    cols = [datasets[a].columns for a, _ in order]
    offsets = np.zeros(len(order) + 1, np.int32)
    np.cumsum([len(c) for c in cols], out=offsets[1:])
    shared = pa.ListArray.from_arrays(pa.array(offsets), pa.array([c for cs in cols for c in cs], pa.string()))
    schema = schemas.get("containment").schema
    extra = [pa.field("detail", pa.string())]
    full = pa.schema(list(schema) + [f for f in extra if f.name not in schema.names])
    arrays = {"contained": pa.array([names[a] for a, _ in order], pa.string()),
              "container": pa.array([names[b] for _, b in order], pa.string()),
              "step": pa.array(step, pa.string()), "fraction": pa.array(frac, pa.float64()),
              "shared_columns": shared, "is_contained": pa.array(ok, pa.bool_()), "detail": pa.array(why, pa.string())}
    return pa.Table.from_arrays([arrays[f.name].cast(f.type) for f in full], schema=full)
