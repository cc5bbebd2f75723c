"""export: the curated set as Parquet shards sized for training readers, and a dataset card.

Shards are written by executors with pyarrow, one file per shard, rows sorted by id within a
shard and shards assigned by a hash of the id: the bytes of every file depend only on the set of
rows, never on Spark's partitioning or the number of cores.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Literal

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field

from thresher.stages.base import StageConfig, StageSpec



class Config(StageConfig):
    rows_per_file: int = Field(100_000, ge=1)
    row_group_size: int = Field(10_000, ge=1)
    compression: Literal["zstd", "snappy", "gzip", "none"] = "zstd"
    # Columns to export besides id and text; None exports every pass-through column.
    columns: list[str] | None = None
    # Repeat a document `multiplicity` times when the sample stage chose it more than once.
    expand_multiplicity: bool = True


def run(spark, tables, cfg: Config, ctx):
    from pyspark.sql import functions as F

    docs = tables["documents"]
    if cfg.columns is not None:
        missing = [c for c in cfg.columns if c not in docs.columns]
        if missing:
            from thresher.schemas.errors import ConfigError

            raise ConfigError(f"export.columns: column '{missing[0]}' is not in documents (have: {', '.join(docs.columns)})")
        docs = docs.select("id", "text", *[c for c in cfg.columns if c not in ("id", "text")])
    sel = tables.get("selection")
    if sel is not None and cfg.expand_multiplicity:
        docs = docs.join(sel.select("id", "multiplicity"), "id", "left")
        docs = docs.withColumn("_copy", F.explode(F.sequence(F.lit(1), F.coalesce(F.col("multiplicity"), F.lit(1)))))
        docs = docs.drop("multiplicity")
    else:
        docs = docs.withColumn("_copy", F.lit(1))
    return {"dataset": docs}


def write_dataset(df, dest: Path, cfg: Config) -> None:
    from pyspark.sql import functions as F

    n = df.count()
    n_files = max(1, math.ceil(n / cfg.rows_per_file))
    data_cols = [c for c in df.columns if c != "_copy"]
    keyed = df.withColumn("_shard", F.pmod(F.xxhash64("id"), F.lit(n_files)).cast("int"))
    keyed = keyed.repartition(n_files, "_shard").sortWithinPartitions("_shard", "id", "_copy")
    from pyspark.sql.pandas.types import to_arrow_schema

    schema = to_arrow_schema(df.select(*data_cols).schema)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    out_dir = str(dest)
    rg = cfg.row_group_size
    compression = None if cfg.compression == "none" else cfg.compression

    def write(batches):
        writer = None
        shard = None
        written = 0

        def close():
            nonlocal writer
            if writer is not None:
                writer.close()
                writer = None

        results = []
        for b in batches:
            shards = b.column(b.schema.get_field_index("_shard")).to_pylist()
            tbl = pa.Table.from_batches([b]).select(data_cols).cast(schema)
            start = 0
            while start < len(shards):
                s = shards[start]
                end = start
                while end < len(shards) and shards[end] == s:
                    end += 1
                if s != shard:
                    if writer is not None:
                        results.append((shard, written))
                    close()
                    shard, written = s, 0
                    path = os.path.join(out_dir, f"part-{s:05d}.parquet")
                    writer = pq.ParquetWriter(path, schema, compression=compression)
                piece = tbl.slice(start, end - start)
                writer.write_table(piece, row_group_size=rg)
                written += piece.num_rows
                start = end
        if writer is not None:
            results.append((shard, written))
        close()
        yield pa.RecordBatch.from_pylist([{"shard": s, "rows": r} for s, r in results],
                                         schema=pa.schema([("shard", pa.int32()), ("rows", pa.int64())]))

    keyed.mapInArrow(write, "shard int, rows long").collect()
    if n == 0:
        # Readers still need the schema of an empty result.
        pq.write_table(schema.empty_table(), str(dest / "part-00000.parquet"), compression=compression)


SIZE_CATEGORIES = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                   (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B"),
                   (10_000_000_000, "1B<n<10B"), (100_000_000_000, "10B<n<100B"), (10 ** 12, "100B<n<1T")]


def size_category(n: int) -> str:
    return next((label for bound, label in SIZE_CATEGORIES if n < bound), "n>1T")


def hf_feature(name: str | None, t: pa.DataType) -> dict:
    """One feature in the Hub's dataset_info YAML (the `datasets` Features spelling)."""
    out: dict = {} if name is None else {"name": name}
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        inner = hf_feature(None, t.value_type)
        out["sequence"] = inner.get("dtype", inner)
        if pa.types.is_fixed_size_list(t):
            out["length"] = t.list_size
    elif pa.types.is_struct(t):
        out["struct"] = [hf_feature(t.field(i).name, t.field(i).type) for i in range(t.num_fields)]
    elif pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        out["dtype"] = "string"
    elif pa.types.is_boolean(t):
        out["dtype"] = "bool"
    elif pa.types.is_timestamp(t):
        out["dtype"] = f"timestamp[{t.unit}" + (f", tz={t.tz}]" if t.tz else "]")
    elif pa.types.is_binary(t) or pa.types.is_large_binary(t):
        out["dtype"] = "binary"
    else:
        out["dtype"] = str(t)  # int64, float32, date32[day], ... are spelled as in Arrow
    return out


def dataset_card(manifest: dict, schema: pa.Schema | None = None, num_bytes: int | None = None,
                 data_files: str = "dataset/*.parquet") -> str:
    """README.md for the run folder and the Hub: YAML front matter (configs, features, size
    category, row counts) that the Hub's viewer and `datasets.load_dataset` read, then the row
    accounting and the config in Markdown."""
    import json

    import yaml

    acc = manifest.get("accounting", {})
    kept_rows = manifest.get("stages", {}).get("export", {}).get("tables", {}).get("dataset", {}).get("rows")
    n = kept_rows if kept_rows is not None else (acc.get("kept") or 0)
    front: dict = {
        "configs": [{"config_name": "default", "data_files": [{"split": "train", "path": data_files}]}],
        "size_categories": [size_category(int(n))],
        "tags": ["thresher", "curated"],
    }
    if schema is not None:
        info: dict = {"features": [hf_feature(f.name, f.type) for f in schema],
                      "splits": [{"name": "train", "num_examples": int(n)}]}
        if num_bytes is not None:
            info["download_size"] = int(num_bytes)
        front["dataset_info"] = info
    front["thresher"] = {
        "rows_in": acc.get("rows_in"), "kept": acc.get("kept"), "exported_rows": int(n),
        "removed": acc.get("removed", {}), "rejected": acc.get("rejected", {}), "accounting_closes": acc.get("closes"),
    }
    lines = [
        "---",
        yaml.safe_dump(front, sort_keys=False).rstrip(),
        "---",
        "",
        "# thresher dataset",
        "",
        f"Made by thresher {manifest.get('thresher')} on {manifest.get('started')}.",
        "",
        "## Rows",
        "",
        f"- input rows: {acc.get('rows_in')}",
        f"- rejected at ingest: {sum(acc.get('rejected', {}).values())}",
        f"- removed by stages: {sum(acc.get('removed', {}).values())}",
        f"- kept: {acc.get('kept')}",
        f"- accounting closes: {acc.get('closes')}",
        "",
        "| stage | rows in | kept | removed | rejected | wall s |",
        "|---|---:|---:|---|---|---:|",
    ]
    tok_lines: list[str] = []
    for name, st in manifest.get("stages", {}).items():
        if st.get("stats", {}).get("tokens_total") is not None and name == "tokens":
            tok_lines.append(f"- counted by the tokens stage ({st['stats'].get('tokenizer')}): "
                             f"{st['stats']['tokens_total']} tokens in {st['stats'].get('documents')} documents")
        if name == "sample" and "tokens_selected" in st.get("stats", {}):
            tok_lines.append(f"- selected by sample: {st['stats']['tokens_selected']} tokens "
                             f"({st['stats'].get('tokens_from')})")
        rem = ", ".join(f"{k}: {v}" for k, v in st.get("removed", {}).items()) or "0"
        rej = ", ".join(f"{k}: {v}" for k, v in st.get("rejected", {}).items()) or "0"
        lines.append(f"| {name} | {st['rows_in']} | {st['kept']} | {rem} | {rej} | {st['wall_s']} |")
    if tok_lines:
        lines += ["", "## Tokens", "", *tok_lines]
    lines += ["", "## Config", "", "```json"]
    lines += [json.dumps(manifest.get("config", {}), indent=2), "```", "", "## Versions", ""]
    lines += [f"- {k}: {v}" for k, v in manifest.get("versions", {}).items()]
    return "\n".join(lines) + "\n"


SPEC = StageSpec(name="export", inputs=("documents",), optional_inputs=("selection",), outputs=("dataset",),
                 writers={"dataset": write_dataset}, top_level={"dataset": "dataset"})
