"""ingest: Parquet, JSONL (plain or gzip) and Hugging Face `save_to_disk` folders (Arrow) from
files, folders and globs, local or at any URL stages/storage.py serves, into `documents`.

The driver only lists files and reads Parquet footers and a few JSONL lines to learn the schema;
the rows themselves are read inside executors, one task per Parquet row group or JSONL file.
Rows that cannot become documents go to `rejected` with the file, the row (or line) and a reason.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from typing import Iterator, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import Field

from thresher.stages import storage
from thresher.schemas.errors import InputError
from thresher.stages.base import StageConfig, StageSpec

PARQUET_EXT = (".parquet", ".pq")
JSONL_EXT = (".jsonl", ".ndjson", ".json", ".jsonl.gz", ".ndjson.gz", ".json.gz")
ARROW_EXT = (".arrow",)
# Beside the .arrow files of a `datasets` save_to_disk folder (a Dataset, or a DatasetDict with
# one sub-folder per split): metadata, not rows.
HF_META = ("state.json", "dataset_info.json", "dataset_dict.json")
SCHEMA_SAMPLE_LINES = 1000


class Config(StageConfig):
    format: Literal["auto", "parquet", "jsonl", "arrow"] = "auto"
    # None: use an `id` column when every file has one, else derive ids from path and row.
    # A named column must exist.
    id_column: str | None = None
    text_column: str = "text"
    on_duplicate_id: Literal["reject", "fail"] = "reject"
    duplicate_examples: int = Field(5, ge=0)


# ---------------------------------------------------------------------------------- listing
def _kind(path: str, fmt: str) -> str | None:
    if fmt != "auto":
        return fmt
    low = path.lower()
    if low.endswith(PARQUET_EXT):
        return "parquet"
    if low.endswith(JSONL_EXT):
        return "jsonl"
    if low.endswith(ARROW_EXT):
        return "arrow"
    return None


def _is_hf_meta(c: str, cands: set[str]) -> bool:
    name = c.rsplit("/", 1)[-1] if storage.is_remote(c) else os.path.basename(c)
    if name not in HF_META:
        return False
    folder = c[: len(c) - len(name)]
    return any(x.startswith(folder) and x.endswith(ARROW_EXT) for x in cands) or name == "dataset_dict.json"


def list_files(inputs: list[str], fmt: str = "auto") -> list[tuple[str, str, str]]:
    """(absolute path or canonical URL, id prefix relative to its input root, kind), sorted and
    de-duplicated."""
    if not inputs:
        raise InputError("input: no input given (set `input:` in the config or pass --input)")
    out: dict[str, tuple[str, str, str]] = {}
    for spec in inputs:
        matches = storage.matches(spec)
        if not matches:
            raise InputError(f"{spec}: no such file or folder")
        found = 0
        for m, root, is_dir in matches:
            cands = storage.folder_files(m) if is_dir else [m]
            cset = set(cands)
            for c in cands:
                rel = storage.relpath(c, root)
                if storage.hidden(rel):
                    continue
                if is_dir and fmt == "auto" and _is_hf_meta(c, cset):
                    continue
                k = _kind(c, fmt)
                if k is None:
                    if not is_dir:
                        raise InputError(f"{c}: unknown file type (expected .parquet or .jsonl[.gz], or .arrow; or set ingest.format)")
                    continue
                loc = c if storage.is_remote(c) else os.path.abspath(c)
                out.setdefault(loc, (loc, rel, k))
                found += 1
        if found == 0:
            raise InputError(f"{spec}: holds no .parquet or .jsonl[.gz] files (nor the .arrow files of a datasets save_to_disk folder)")
    return [out[k] for k in sorted(out)]


# Files up to this size are hashed whole; larger ones by sampled blocks (see content_hash).
FULL_HASH_BYTES = 16 << 20
SAMPLE_BLOCKS = 32
SAMPLE_BLOCK_BYTES = 64 << 10


def content_hash(path: str) -> dict:
    """sha256 of the whole file, or for a large one of its size, first and last MiB and evenly
    spaced blocks (about 4 MiB read); the record says which, and a sampled one also keeps the
    mtime so an edit between the blocks still counts as a change unless the mtime is reset."""
    st = os.stat(path)
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        if st.st_size <= FULL_HASH_BYTES:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
            return {"path": path, "bytes": st.st_size, "sha256": h.hexdigest(), "hashed": "whole file"}
        h.update(str(st.st_size).encode())
        step = (st.st_size - (2 << 20)) // SAMPLE_BLOCKS
        offsets = [0, *((1 << 20) + i * step for i in range(SAMPLE_BLOCKS)), st.st_size - (1 << 20)]
        for off in offsets:
            fh.seek(off)
            h.update(fh.read(1 << 20 if off in (0, st.st_size - (1 << 20)) else SAMPLE_BLOCK_BYTES))
    return {"path": path, "bytes": st.st_size, "sha256": h.hexdigest(), "mtime_ns": st.st_mtime_ns,
            "hashed": f"sampled: first and last MiB and {SAMPLE_BLOCKS} blocks of {SAMPLE_BLOCK_BYTES >> 10} KiB"}


def input_fingerprint(inputs: list[str], cfg: Config) -> dict:
    files = list_files(inputs, cfg.format)
    out = []
    for p, _, _ in files:
        if storage.is_remote(p):
            # A remote object: its size and modification time (reading it whole to hash it would
            # cost a download); the record says so.
            e = storage.stat(p)
            out.append({"path": p, "bytes": e.size, "mtime_ns": e.mtime_ns, "hashed": "not hashed (remote: size and mtime)"})
        else:
            out.append(content_hash(p))
    return {"method": f"sha256 of each local file's content (whole up to {FULL_HASH_BYTES >> 20} MiB, sampled above)",
            "files": out}


# ---------------------------------------------------------------------------------- schema
def _parquet_schema(path: str) -> tuple[pa.Schema, pq.FileMetaData]:
    pf = storage.parquet_file(path)
    return pf.schema_arrow, pf.metadata


def _arrow_reader(path: str):
    """A `datasets` save_to_disk file is an Arrow IPC stream; an IPC file (Feather v2) works too."""
    src = storage.open_input_file(path) if storage.is_remote(path) else pa.memory_map(path)
    try:
        return pa.ipc.open_stream(src)
    except pa.ArrowInvalid:
        src.seek(0)
        try:
            return pa.ipc.open_file(src)
        except pa.ArrowInvalid as exc:
            raise InputError(f"{path}: not a readable Arrow file ({str(exc).splitlines()[0]})") from None


def _arrow_batches(reader):
    if isinstance(reader, pa.ipc.RecordBatchFileReader):
        for i in range(reader.num_record_batches):
            yield reader.get_batch(i)
    else:
        yield from reader


def _jsonl_schema(path: str) -> pa.Schema:
    rows = []
    try:
        with storage.open_binary(path) as fh:
            for i, raw in enumerate(fh):
                if i >= SCHEMA_SAMPLE_LINES:
                    break
                try:
                    obj = json.loads(raw.decode("utf-8"))
                except (UnicodeDecodeError, ValueError):
                    continue  # bad lines are rejected row by row later
                if isinstance(obj, dict) and _lone_surrogate(raw, obj) is None:
                    rows.append(obj)
    except (OSError, EOFError) as exc:
        raise InputError(f"{path}: cannot read ({exc})") from None
    if not rows:
        return pa.schema([])
    try:
        return pa.Table.from_pylist(rows).schema
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        # Inconsistent types in the sample: keep columns as JSON strings rather than guess.
        keys = sorted({k for r in rows for k in r})
        return pa.schema([pa.field(k, pa.string()) for k in keys])


def _normal(t: pa.DataType) -> pa.DataType:
    if pa.types.is_large_string(t) or pa.types.is_string_view(t) or pa.types.is_dictionary(t) and pa.types.is_string(t.value_type):
        return pa.string()
    if pa.types.is_null(t):
        return pa.null()
    return t


def id_column(cfg: Config) -> str:
    return cfg.id_column or "id"


def unified_schema(files: list[tuple[str, str, str]], cfg: Config) -> tuple[pa.Schema, bool, list]:
    """Pass-through columns across all files, whether ids come from a column, and read units."""
    idc = id_column(cfg)
    cols: dict[str, tuple[pa.DataType, str]] = {}
    units: list[tuple[int, str, str, str, int, int]] = []  # file_idx, path, rel, kind, row_group, row_offset
    has_id_any = False
    missing_id: list[str] = []
    for idx, (path, rel, kind) in enumerate(files):
        if kind == "parquet":
            schema, meta = _parquet_schema(path)
            off = 0
            for rg in range(meta.num_row_groups):
                units.append((idx, path, rel, kind, rg, off))
                off += meta.row_group(rg).num_rows
            if meta.num_row_groups == 0:
                units.append((idx, path, rel, kind, -1, 0))
            if cfg.text_column not in schema.names:
                raise InputError(f"{path}: text column '{cfg.text_column}' not found (columns: {', '.join(schema.names[:12])})")
            tt = _normal(schema.field(cfg.text_column).type)
            if tt != pa.string():
                raise InputError(f"{path}: column '{cfg.text_column}' has type {schema.field(cfg.text_column).type}, expected string")
        elif kind == "arrow":
            schema = _arrow_reader(path).schema
            units.append((idx, path, rel, kind, -1, 0))
            if cfg.text_column not in schema.names:
                raise InputError(f"{path}: text column '{cfg.text_column}' not found (columns: {', '.join(schema.names[:12])})")
            if _normal(schema.field(cfg.text_column).type) != pa.string():
                raise InputError(f"{path}: column '{cfg.text_column}' has type {schema.field(cfg.text_column).type}, expected string")
        else:
            schema = _jsonl_schema(path)
            units.append((idx, path, rel, kind, -1, 0))
            if len(schema) and cfg.text_column not in schema.names:
                raise InputError(f"{path}: text column '{cfg.text_column}' not found in the first {SCHEMA_SAMPLE_LINES} lines "
                                 f"(keys: {', '.join(schema.names[:12])})")
        if idc in schema.names:
            has_id_any = True
        else:
            missing_id.append(path)
        for f in schema:
            if f.name in (idc, cfg.text_column):
                continue
            t = _normal(f.type)
            prev = cols.get(f.name)
            if prev is None or pa.types.is_null(prev[0]):
                cols[f.name] = (t, path)
            elif not pa.types.is_null(t) and prev[0] != t:
                raise InputError(f"{path}: column '{f.name}' has type {t}, but {prev[1]} has {prev[0]} (mixed schemas across input files)")
    if has_id_any and missing_id:
        raise InputError(f"{missing_id[0]}: id column '{idc}' missing, but other input files have it")
    if not has_id_any and cfg.id_column is not None:
        raise InputError(f"{files[0][0]}: id column '{idc}' not found")
    passthrough = pa.schema([pa.field(n, t if not pa.types.is_null(t) else pa.string()) for n, (t, _) in sorted(cols.items())])
    return passthrough, has_id_any, units


# ---------------------------------------------------------------------------------- reading
def _out_schema(passthrough: pa.Schema) -> pa.Schema:
    return pa.schema(
        [pa.field("id", pa.string()), pa.field("text", pa.string())]
        + list(passthrough)
        + [pa.field("_file", pa.int32()), pa.field("_row", pa.int64()), pa.field("_source", pa.string()),
           pa.field("_reason", pa.string()), pa.field("_detail", pa.string())]
    )


def _finish(id_arr, text_arr, extra: dict, passthrough: pa.Schema, file_idx: int, rows, source: str,
            reason: list | pa.Array, detail: list | pa.Array) -> pa.RecordBatch:
    n = len(rows)
    text_arr = text_arr.cast(pa.string()) if text_arr.type != pa.string() else text_arr
    reason_arr = pa.array(reason, pa.string())
    # Vectorised text checks: null, then empty or whitespace-only.
    null_text = pc.is_null(text_arr)
    empty_text = pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(pc.fill_null(text_arr, ""))), 0)
    reason_arr = pc.if_else(pc.and_(pc.is_null(reason_arr), null_text), "null_text", reason_arr)
    reason_arr = pc.if_else(pc.and_(pc.is_null(reason_arr), empty_text), "empty_text", reason_arr)
    reason_arr = pc.if_else(pc.and_(pc.is_null(reason_arr), pc.is_null(id_arr)), "null_id", reason_arr)
    cols = [id_arr, text_arr]
    for f in passthrough:
        a = extra.get(f.name)
        cols.append(pa.nulls(n, f.type) if a is None else a)
    cols += [pa.array([file_idx] * n, pa.int32()), pa.array(rows, pa.int64()), pa.array([source] * n, pa.string()),
             reason_arr, pa.array(detail, pa.string())]
    return pa.RecordBatch.from_arrays(cols, schema=_out_schema(passthrough))


def _read_parquet_unit(unit, cfg: Config, passthrough: pa.Schema, derive: bool, batch_rows: int) -> Iterator[pa.RecordBatch]:
    file_idx, path, rel, _, rg, offset = unit
    if rg < 0:
        return
    try:
        pf = storage.parquet_file(path)
        names = set(pf.schema_arrow.names)
        want = [c for c in [id_column(cfg), cfg.text_column, *passthrough.names] if c in names]
        table = pf.read_row_group(rg, columns=sorted(set(want), key=want.index))
    except Exception as exc:  # corrupt pages behind a valid footer: pyarrow raises several types
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        reason = "".join(c if c.isprintable() else "?" for c in reason)
        raise InputError(f"{path}: row group {rg} (from row {offset}): not readable ({reason})") from None
    yield from _table_batches(table.to_batches(max_chunksize=batch_rows), file_idx, rel, offset, cfg, passthrough, derive, "#")


def _read_arrow_unit(unit, cfg: Config, passthrough: pa.Schema, derive: bool, batch_rows: int) -> Iterator[pa.RecordBatch]:
    file_idx, path, rel, _, _, _ = unit

    def batches():
        for b in _arrow_batches(_arrow_reader(path)):
            for off in range(0, b.num_rows, batch_rows):
                yield b.slice(off, batch_rows)

    yield from _table_batches(batches(), file_idx, rel, 0, cfg, passthrough, derive, "#")


def _table_batches(batches, file_idx, rel, offset, cfg, passthrough, derive, sep) -> Iterator[pa.RecordBatch]:
    for b in batches:
        n = b.num_rows
        rows = pa.array(np.arange(offset, offset + n, dtype=np.int64))
        offset += n
        if derive:  # one Arrow kernel, not a Python f-string per row
            ids = pc.binary_join_element_wise(f"{rel}{sep}", rows.cast(pa.string()), "")
        else:
            ids = b.column(b.schema.get_field_index(id_column(cfg)))
            ids = ids if ids.type == pa.string() else ids.cast(pa.string())
        text = b.column(b.schema.get_field_index(cfg.text_column))
        extra = {}
        for f in passthrough:
            i = b.schema.get_field_index(f.name)
            if i >= 0:
                a = b.column(i)
                extra[f.name] = a if a.type == f.type else a.cast(f.type)
        yield _finish(ids, text, extra, passthrough, file_idx, rows, rel, pa.nulls(n, pa.string()), pa.nulls(n, pa.string()))


def _read_jsonl_unit(unit, cfg: Config, passthrough: pa.Schema, derive: bool, batch_rows: int) -> Iterator[pa.RecordBatch]:
    file_idx, path, rel, _, _, _ = unit
    buf: list = []

    def flush():
        rows = [b[0] for b in buf]
        reason = [b[1] for b in buf]
        detail = [b[2] for b in buf]
        objs = [b[3] for b in buf]
        if derive:
            ids = pa.array([f"{rel}:{r}" for r in rows], pa.string())
        else:
            ids = pa.array([_as_id(o.get(id_column(cfg))) if o else None for o in objs], pa.string())
        text = pa.array([o.get(cfg.text_column) if o else None for o in objs], pa.string())
        extra = {}
        for f in passthrough:
            vals = [o.get(f.name) if o else None for o in objs]
            extra[f.name] = _column(vals, f, rows, reason, detail)
        return _finish(ids, text, extra, passthrough, file_idx, rows, rel, reason, detail)

    with storage.open_binary(path) as fh:
        for lineno, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue  # a blank line is no record
            try:
                obj = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as exc:
                buf.append((lineno, "not_utf8", f"byte {exc.start}: {exc.reason}", None))
            except ValueError as exc:
                buf.append((lineno, "bad_json", str(exc)[:200], None))
            else:
                bad = _lone_surrogate(raw, obj)
                if bad is not None:
                    buf.append((lineno, "not_utf8", bad, None))
                elif not isinstance(obj, dict):
                    buf.append((lineno, "not_an_object", type(obj).__name__, None))
                elif obj.get(cfg.text_column) is not None and not isinstance(obj.get(cfg.text_column), str):
                    buf.append((lineno, "text_not_string", type(obj[cfg.text_column]).__name__, None))
                else:
                    buf.append((lineno, None, None, obj))
            if len(buf) >= batch_rows:
                yield flush()
                buf = []
    if buf:
        yield flush()


# A surrogate can only come from a `\uD800`-`\uDFFF` escape (strict UTF-8 decoding refuses one
# spelled in bytes). Files written with ensure_ascii spell every non-ASCII character `\uXXXX`,
# so testing for `\u` alone encoded nearly every line of such a file a second time.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _lone_surrogate(raw: bytes, obj) -> str | None:
    """JSON may spell a lone UTF-16 surrogate (`"\\ud800"`), which no UTF-8 text can hold: the
    line is rejected as not_utf8 rather than failing the Arrow conversion (and the run)."""
    if not _SURROGATE_ESCAPE.search(raw):
        return None
    try:
        json.dumps(obj, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"lone surrogate {exc.object[exc.start:exc.end].encode('unicode_escape').decode()}: {exc.reason}"
    return None


def _as_id(v):
    if v is None or isinstance(v, str):
        return v
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return json.dumps(v)
    return str(v)


def _column(vals: list, f: pa.Field, rows, reason: list, detail: list) -> pa.Array:
    try:
        return pa.array(vals, f.type)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError):
        # Value by value, so one bad value rejects its row rather than the file.
        out = []
        for i, v in enumerate(vals):
            try:
                pa.array([v], f.type)
                out.append(v)
            except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError):
                if reason[i] is None:
                    reason[i] = "bad_value"
                    detail[i] = f"column '{f.name}': {type(v).__name__} is not {f.type}"
                out.append(None)
        return pa.array(out, f.type)


# ---------------------------------------------------------------------------------- stage
def run(spark, tables, cfg: Config, ctx):
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    files = list_files(list(ctx.input_paths), cfg.format)
    passthrough, has_id, units = unified_schema(files, cfg)
    derive = not has_id
    batch_rows = int(spark.conf.get("spark.sql.execution.arrow.maxRecordsPerBatch", "2048"))
    out_schema = _out_schema(passthrough)

    storage_opts = storage.current().model_dump()
    readers = {"parquet": _read_parquet_unit, "jsonl": _read_jsonl_unit, "arrow": _read_arrow_unit}

    def read_units(batches):
        storage.configure(storage_opts)  # executors do not share the driver's module state
        for b in batches:
            for u in b.to_pylist():
                unit = (u["file_idx"], u["path"], u["rel"], u["kind"], u["rg"], u["offset"])
                reader = readers[u["kind"]]
                yield from reader(unit, cfg, passthrough, derive, batch_rows)

    unit_rows = [dict(zip(["file_idx", "path", "rel", "kind", "rg", "offset"], u)) for u in units]
    units_df = spark.createDataFrame(unit_rows, "file_idx int, path string, rel string, kind string, rg int, offset long")
    units_df = units_df.repartition(max(1, min(len(unit_rows), 4 * spark.sparkContext.defaultParallelism)))
    from pyspark.sql.pandas.types import from_arrow_schema

    raw = units_df.mapInArrow(read_units, from_arrow_schema(out_schema)).persist()

    good = raw.where(F.col("_reason").isNull())
    stats = {"files": len(files), "read_units": len(units), "derived_ids": derive}
    keep_cols = ["id", "text", *passthrough.names]
    rejected = raw.where(F.col("_reason").isNotNull()).select(
        F.col("id"), F.col("_source").alias("source"), F.col("_row").alias("row"),
        F.col("_reason").alias("reason"), F.col("_detail").alias("detail"),
    )
    # Count repeated ids on the id column alone (a small shuffle); only when there are some does
    # the full table go through the window that decides which occurrence keeps the id.
    n_dup = good.groupBy("id").count().where(F.col("count") > 1).select(F.sum(F.col("count") - 1)).first()[0] or 0
    if not n_dup:
        return {"documents": good.select(*keep_cols), "rejected": rejected, "stats": stats}

    # The first occurrence (by file order, then row) keeps the id; later ones are rejected.
    w = Window.partitionBy("id").orderBy("_file", "_row")
    ranked = good.withColumn("_n", F.row_number().over(w)).withColumn(
        "_first", F.first(F.concat_ws(":", "_source", F.col("_row").cast("string"))).over(w)
    )
    dup = ranked.where(F.col("_n") > 1)
    examples = [r["id"] for r in dup.select("id").distinct().orderBy("id").limit(cfg.duplicate_examples).collect()]
    stats["duplicate_ids"] = {"count": int(n_dup), "examples": examples}
    if cfg.on_duplicate_id == "fail":
        raw.unpersist()
        raise InputError(f"ingest: {n_dup} rows repeat an earlier id (e.g. {', '.join(examples)}); "
                         "set ingest.on_duplicate_id: reject to set them aside")
    documents = ranked.where(F.col("_n") == 1).select(*keep_cols)
    rejected = rejected.unionByName(
        dup.select(F.col("id"), F.col("_source").alias("source"), F.col("_row").alias("row"),
                   F.lit("duplicate_id").alias("reason"), F.concat(F.lit("first seen at "), F.col("_first")).alias("detail"))
    )
    return {"documents": documents, "rejected": rejected, "stats": stats}


def check_inputs(inputs: list[str], cfg: Config) -> list[str]:
    """Preflight (no Spark): the input files and their schemas; returns every file read and each
    input named without a glob, which the output folder must not be inside."""
    files = list_files(inputs, cfg.format)
    unified_schema(files, cfg)
    return [p for p, _, _ in files] + [i for i in inputs if not storage.has_magic(i)]


SPEC = StageSpec(name="ingest", outputs=("documents", "rejected"), source=True,
                 fingerprint=lambda paths, cfg: input_fingerprint(paths, cfg), check=check_inputs)
