"""Arrow schemas of every interchange table, with versions, and their validation.

Every table a stage reads or writes is one of these. A table may carry extra columns (documents
pass user columns through), but the listed columns must be present with the listed types.
Vector columns are declared with a placeholder list type and checked by kind (a fixed- or
variable-size list of float32), since their dimension is a property of the model, not the schema.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa

from thresher.schemas.errors import ThresherError


class SchemaError(ThresherError):
    """A table does not match its declared schema."""


@dataclass(frozen=True)
class TableSchema:
    name: str
    version: int
    schema: pa.Schema
    # Columns whose exact type is a list of float32 of any (fixed) size.
    vector_columns: tuple[str, ...] = ()
    # Tables that carry more columns than declared (user columns, one column per cluster level).
    allow_extra: bool = False
    doc: str = ""
    key: tuple[str, ...] = field(default=("id",))

    @property
    def tag(self) -> str:
        return f"{self.name}/v{self.version}"

    def metadata(self) -> dict[bytes, bytes]:
        return {b"thresher.schema": self.tag.encode()}


VECTOR = pa.list_(pa.float32())


def _s(*fields: tuple[str, pa.DataType, bool]) -> pa.Schema:
    return pa.schema([pa.field(n, t, nullable=nl) for n, t, nl in fields])


TABLES: dict[str, TableSchema] = {
    t.name: t
    for t in [
        TableSchema(
            "documents", 1,
            _s(("id", pa.string(), False), ("text", pa.string(), False)),
            allow_extra=True,
            doc="One row per kept document; user columns pass through.",
        ),
        TableSchema(
            "rejected", 1,
            _s(("id", pa.string(), True), ("source", pa.string(), False),
               ("row", pa.int64(), False), ("reason", pa.string(), False),
               ("detail", pa.string(), True)),
            doc="Input rows that never became documents, with the file, row/line and reason.",
        ),
        TableSchema(
            "removed", 1,
            _s(("id", pa.string(), False), ("stage", pa.string(), False),
               ("reason", pa.string(), False), ("by_id", pa.string(), True),
               ("score", pa.float64(), True)),
            doc="Documents a stage removed: reason, the id that caused it, and a similarity or score.",
        ),
        TableSchema(
            "duplicates", 1,
            _s(("id", pa.string(), False), ("component_id", pa.string(), False),
               ("representative_id", pa.string(), False), ("is_representative", pa.bool_(), False),
               ("similarity", pa.float64(), True)),
            doc="Members of duplicate components (components of size >= 2).",
        ),
        TableSchema(
            "embeddings", 1,
            _s(("id", pa.string(), False), ("vector", VECTOR, False)),
            vector_columns=("vector",),
            doc="One vector per document; model, dimension, precision in the Parquet metadata.",
        ),
        TableSchema(
            "quality", 1,
            _s(("id", pa.string(), False), ("score", pa.float64(), True)),
            allow_extra=True,
            doc="Quality score and the signals it came from (one column each).",
        ),
        TableSchema(
            "clusters", 1,
            _s(("id", pa.string(), False), ("level_1", pa.int32(), False),
               ("distance", pa.float32(), False), ("rank", pa.int32(), False)),
            allow_extra=True,
            doc="Cluster id at every level (level_1, level_2, ...), distance and rank at level 1.",
        ),
        TableSchema(
            "centroids", 1,
            _s(("level", pa.int32(), False), ("cluster_id", pa.int32(), False),
               ("parent_id", pa.int32(), True), ("size", pa.int64(), False),
               ("vector", VECTOR, False)),
            vector_columns=("vector",),
            key=("level", "cluster_id"),
            doc="Centroids of every level with their parent in the level above.",
        ),
        TableSchema(
            "selection", 1,
            _s(("id", pa.string(), False), ("multiplicity", pa.int32(), False),
               ("cluster_path", pa.string(), False), ("quality", pa.float64(), True),
               ("why", pa.string(), False)),
            doc="The sampled documents and how often each is taken.",
        ),
        TableSchema(
            "containment", 1,
            _s(("contained", pa.string(), False), ("container", pa.string(), False),
               ("step", pa.string(), False), ("fraction", pa.float64(), True),
               ("shared_columns", pa.list_(pa.string()), False),
               ("is_contained", pa.bool_(), False)),
            key=("contained", "container"),
            allow_extra=True,
            doc="Every schema-compatible pair of datasets, the step that decided it (minmax, sketch, "
                "content), the containment fraction, and whether the containment holds.",
        ),
    ]
}


def get(name: str) -> TableSchema:
    try:
        return TABLES[name]
    except KeyError:
        raise SchemaError(f"unknown table schema '{name}' (known: {', '.join(sorted(TABLES))})") from None


def _type_ok(expected: pa.DataType, found: pa.DataType, vector: bool) -> bool:
    if vector:
        return (pa.types.is_fixed_size_list(found) or pa.types.is_list(found)
                or pa.types.is_large_list(found)) and found.value_type == pa.float32()
    if expected == found:
        return True
    # Spark writes every string as `string`, but Arrow readers may hand back large/view variants.
    if pa.types.is_string(expected):
        return pa.types.is_string(found) or pa.types.is_large_string(found) or pa.types.is_string_view(found)
    if pa.types.is_list(expected) and (pa.types.is_list(found) or pa.types.is_large_list(found)):
        return _type_ok(expected.value_type, found.value_type, False)
    return False


def validate(name: str, found: pa.Schema, where: str) -> None:
    """Raise one SchemaError line naming `where` (a file or table), the column and both types."""
    ts = get(name)
    for f in ts.schema:
        idx = found.get_field_index(f.name)
        if idx < 0:
            raise SchemaError(f"{where}: column '{f.name}' missing (expected {f.type} for table {ts.tag})")
        ft = found.field(idx).type
        if not _type_ok(f.type, ft, f.name in ts.vector_columns):
            exp = "list<float32> (any fixed size)" if f.name in ts.vector_columns else str(f.type)
            raise SchemaError(f"{where}: column '{f.name}' has type {ft}, expected {exp} (table {ts.tag})")


def spark_ddl(name: str) -> str:
    """The table's declared columns as a Spark DDL string (for mapInArrow output schemas)."""
    return ", ".join(f"`{f.name}` {_spark_type(f.type)}" for f in get(name).schema)


def _spark_type(t: pa.DataType) -> str:
    if pa.types.is_string(t):
        return "string"
    if t == pa.int64():
        return "bigint"
    if t == pa.int32():
        return "int"
    if t == pa.float64():
        return "double"
    if t == pa.float32():
        return "float"
    if t == pa.bool_():
        return "boolean"
    if pa.types.is_list(t):
        return f"array<{_spark_type(t.value_type)}>"
    raise TypeError(f"no Spark type for {t}")


def empty(name: str) -> pa.Table:
    return get(name).schema.empty_table()
