"""One executor pass for document filters that work a record batch at a time.

A filter is a function over one Arrow record batch of documents that returns a `Verdict`: the
reason each document is removed (None: kept), the value that decided it (the removed table's
`score`), optionally replaced columns (a rewritten `text`, a new `language` column), and
per-document counters summed into the stage's stats. `run_filter` runs it inside mapInArrow
over every documents column, once (persisted), and returns every document (rewritten) and the
`removed` table built by `ctx.removed`; the runner derives the kept documents from the two
(stages/base.py StageSpec), so removals are accounted as any removing stage's.

Used by the language, heuristics and pii stages, and by user-defined filters.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pyarrow as pa

from thresher.schemas.errors import StageError

_REASON, _VALUE, _STAT = "_tf_reason", "_tf_value", "_tf_stat_"


@dataclass
class Verdict:
    reason: object = None                      # str|None per document (list or object array); None: all kept
    value: np.ndarray | None = None            # float per document (NaN: none)
    columns: dict[str, pa.Array] = field(default_factory=dict)  # replaced or added columns
    counters: dict[str, np.ndarray] = field(default_factory=dict)


def run_filter(docs, ctx, fn: Callable[[pa.RecordBatch], Verdict], *,
               new_columns: dict[str, pa.DataType] | None = None, counters: tuple[str, ...] = ()):
    """(all documents, rewritten; removed; stats) for a batch filter. `new_columns` are columns `fn` adds
    to the documents (name -> Arrow type); `counters` the names of the per-document counters it
    returns, summed into stats."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F
    from pyspark.sql.pandas.types import from_arrow_schema, to_arrow_schema

    stage = ctx.name
    new_columns = dict(new_columns or {})
    base = to_arrow_schema(docs.schema)
    fields = [f for f in base if f.name not in new_columns]
    fields += [pa.field(k, t) for k, t in new_columns.items()]
    fields += [pa.field(_REASON, pa.string()), pa.field(_VALUE, pa.float64())]
    fields += [pa.field(_STAT + c, pa.int64()) for c in counters]
    out_schema = pa.schema(fields)

    def apply(batches):
        from thresher.kernels.threads import limit_task_threads

        limit_task_threads()
        for b in batches:
            n = b.num_rows
            v = fn(b)
            if not isinstance(v, Verdict):
                raise StageError(f"{stage}: the filter returned {type(v).__name__}, expected a Verdict")
            reason = pa.nulls(n, pa.string()) if v.reason is None else pa.array(v.reason, pa.string())
            if len(reason) != n:
                raise StageError(f"{stage}: the filter returned {len(reason)} reasons for a batch of {n} documents")
            value = np.full(n, np.nan) if v.value is None else np.asarray(v.value, dtype=np.float64)
            cols = []
            for f in out_schema:
                if f.name == _REASON:
                    cols.append(reason)
                elif f.name == _VALUE:
                    cols.append(pa.array(value, pa.float64(), from_pandas=True))
                elif f.name.startswith(_STAT):
                    c = v.counters.get(f.name[len(_STAT):])
                    cols.append(pa.array(np.zeros(n, np.int64) if c is None else np.asarray(c, np.int64), pa.int64()))
                elif f.name in v.columns:
                    col = v.columns[f.name]
                    if isinstance(col, pa.ChunkedArray):
                        col = col.combine_chunks()
                    cols.append(col.cast(f.type))
                else:
                    cols.append(b.column(b.schema.get_field_index(f.name)))
            yield pa.RecordBatch.from_arrays(cols, schema=out_schema)

    q = docs.mapInArrow(apply, from_arrow_schema(out_schema)).persist(StorageLevel.MEMORY_AND_DISK)
    doc_cols = [f.name for f in out_schema if not f.name.startswith("_tf_")]
    documents = q.select(*doc_cols)
    removed = ctx.removed(q.where(F.col(_REASON).isNotNull()), F.col(_REASON),
                          score=F.when(F.isnan(_VALUE), None).otherwise(F.col(_VALUE)))
    stats: dict = {}
    if counters:
        row = q.agg(*[F.sum(_STAT + c).alias(c) for c in counters]).collect()[0]
        stats = {c: int(row[c] or 0) for c in counters}
    return documents, removed, stats


def first_reason(n: int, checks) -> tuple[np.ndarray, np.ndarray]:
    """checks: iterable of (reason, removes: bool array, value array). The first check a document
    fails names it; its value goes with it."""
    reason = np.full(n, None, dtype=object)
    value = np.full(n, np.nan)
    for name, hit, val in checks:
        new = np.asarray(hit, dtype=bool) & (reason == None)  # noqa: E711 -- elementwise on an object array
        reason[new] = name
        value[new] = np.asarray(val, dtype=np.float64)[new]
    return reason, value
