"""The catalog and its datasets: which datasets there are, their Parquet files, and the type each
column compares as. Nothing here reads data."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import pyarrow as pa

from thresher.schemas.errors import InputError


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

    if "://" in str(catalog):
        raise InputError(f"{catalog}: catalogs are read from local, NFS or HDFS-mounted folders; a URL is not supported yet")
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
        if "://" in str(path):
            raise InputError(f"{catalog}: dataset '{name}': {path}: URLs in catalogs are not supported yet; use a local or mounted path")
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
