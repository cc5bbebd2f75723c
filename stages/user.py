"""User-defined stages and filters, loaded by reference without editing thresher.

In a config's `stages` list, besides the built-in names:

    stages: [ingest, my_pkg.filters:ToxicWords, my_pkg.filters:reading_level, export]

or a name registered by an installed package under the entry-point group `thresher.stages`
(`[project.entry-points."thresher.stages"] toxic_words = "my_pkg.filters:ToxicWords"`).

What a reference may name:
- a full stage module (it has `SPEC`, `Config`, `run`), as the built-in ones;
- a filter: a function `f(batch)` or `f(batch, cfg)` over a `pyarrow.RecordBatch` of documents,
  with its config model as `f.Config` (a `StageConfig` subclass); or a class with a nested
  `Config`, built once per task as `Cls(cfg)` and called as `obj(batch)`.
  A filter returns, per document of the batch, either booleans (True keeps the document; the
  others are removed with the stage's name as reason) or values of another type, which become
  a documents column named after the stage.

The stage's name (its config section, its folder in the run, its `removed` reason) is the
object's `NAME` attribute if it has one, else the entry-point name, else the attribute's name
in snake case (`ToxicWords` -> `toxic_words`). A filter runs in executors through
stages/batchfilter.py, so its removals are accounted as any stage's. Its module is shipped to
the executors by value, so it need not be installed on them.
"""

from __future__ import annotations

import importlib
import inspect
import re
from types import ModuleType, SimpleNamespace

import numpy as np
import pyarrow as pa

from thresher.schemas.errors import ConfigError, StageError
from thresher.stages.base import StageConfig, StageSpec

GROUP = "thresher.stages"
_REF = re.compile(r"^[A-Za-z_][\w.]*(:[A-Za-z_]\w*)?$")


def _snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", name).lower()


def _entry_point(name: str):
    from importlib.metadata import entry_points

    for ep in entry_points(group=GROUP):
        if ep.name == name:
            return ep
    return None


def resolve(ref: str, where: str) -> tuple[str, object]:
    """(stage name, stage module) for a reference; one ConfigError line when it cannot be used."""
    ep = _entry_point(ref) if ":" not in ref and "." not in ref else None
    if ep is not None:
        try:
            obj = ep.load()
        except Exception as exc:
            raise ConfigError(f"{where}: entry point '{ref}' ({ep.value}) fails to load: {type(exc).__name__}: {exc}") from None
        return _as_stage(obj, getattr(obj, "NAME", None) or ep.name, where)
    if not _REF.match(ref) or ("." not in ref and ":" not in ref):
        return "", None
    modname, _, attr = ref.partition(":")
    try:
        mod = importlib.import_module(modname)
    except Exception as exc:
        raise ConfigError(f"{where}: cannot import '{modname}' for stage '{ref}': {type(exc).__name__}: {exc}") from None
    if not attr:
        obj = mod
        default = modname.rsplit(".", 1)[-1]
    else:
        if not hasattr(mod, attr):
            raise ConfigError(f"{where}: module '{modname}' has no '{attr}'")
        obj = getattr(mod, attr)
        default = _snake(attr)
    return _as_stage(obj, getattr(obj, "NAME", None) or default, where)


def _as_stage(obj, name: str, where: str):
    if not re.match(r"^[a-z_][a-z0-9_]*$", name or ""):
        raise ConfigError(f"{where}: stage name '{name}' must be lower-case letters, digits and _")
    if isinstance(obj, ModuleType) and hasattr(obj, "SPEC"):
        if not (hasattr(obj, "Config") and hasattr(obj, "run")):
            raise ConfigError(f"{where}: module {obj.__name__} has a SPEC but no Config or run")
        return name, obj
    if not callable(obj):
        raise ConfigError(f"{where}: '{name}' is neither a stage module nor a callable filter")
    cfg_model = getattr(obj, "Config", None)
    if cfg_model is None:
        cfg_model = type(f"{name}_Config", (StageConfig,), {})
    elif not (inspect.isclass(cfg_model) and issubclass(cfg_model, StageConfig)):
        raise ConfigError(f"{where}: {name}.Config must subclass thresher.stages.base.StageConfig")
    return name, filter_stage(obj, name, cfg_model)


def filter_stage(obj, name: str, cfg_model):
    """A stage (SPEC, Config, run) around a filter function or class."""
    is_class = inspect.isclass(obj)
    takes_cfg = not is_class and len(inspect.signature(obj).parameters) >= 2

    def make(cfg):
        from thresher.stages.batchfilter import Verdict

        state = {}

        def fn(batch: pa.RecordBatch) -> Verdict:
            call = state.get("call")
            if call is None:
                try:
                    call = state["call"] = obj(cfg) if is_class else (lambda b: obj(b, cfg)) if takes_cfg else obj
                except Exception as exc:
                    raise StageError(f"{name}: building the filter raised {type(exc).__name__}: {exc}") from None
            try:
                out = call(batch)
            except Exception as exc:
                raise StageError(f"{name}: the filter raised {type(exc).__name__}: {exc}") from None
            return verdict_of(name, out, batch.num_rows)

        return fn

    def run(spark, tables, cfg, ctx):
        from thresher.stages.batchfilter import run_filter

        _ship_by_value(obj)
        docs = tables["documents"]
        # One task's worth of documents tells whether the filter removes or adds a column.
        probe = _probe(docs, make(cfg))
        if probe is None:
            d, removed, stats = run_filter(docs, ctx, make(cfg))
            return {"removed": removed, "stats": stats}
        d, removed, stats = run_filter(docs, ctx, make(cfg), new_columns={name: probe})
        return {"documents": d, "removed": removed, "stats": stats}

    spec = StageSpec(name=name, inputs=("documents",), outputs=("documents", "removed"), removes=True)
    return SimpleNamespace(SPEC=spec, Config=cfg_model, run=run, __name__=f"user stage {name}", USER=True)


def verdict_of(name: str, out, n: int):
    from thresher.stages.batchfilter import Verdict

    if isinstance(out, pa.ChunkedArray):
        out = out.combine_chunks()
    if isinstance(out, (list, tuple)):
        out = pa.array(out)
    if isinstance(out, np.ndarray):
        out = pa.array(out)
    if not isinstance(out, pa.Array):
        raise StageError(f"{name}: the filter returned {type(out).__name__}; expected a boolean array "
                         "(True keeps) or a column, one value per document")
    if len(out) != n:
        raise StageError(f"{name}: the filter returned {len(out)} values for a batch of {n} documents")
    if pa.types.is_boolean(out.type):
        keep = out.fill_null(False).to_numpy(zero_copy_only=False)
        return Verdict(reason=np.where(keep, None, name).astype(object))
    return Verdict(columns={name: out})


def _probe(docs, fn):
    """None for a boolean filter, else the Arrow type of the column it makes (from a small sample)."""
    from pyspark.sql.pandas.types import to_arrow_schema

    schema = to_arrow_schema(docs.schema)
    rows = docs.limit(64).collect()
    if not rows:
        return None
    batch = pa.RecordBatch.from_pylist([r.asDict() for r in rows], schema=schema)
    v = fn(batch)
    if not v.columns:
        return None
    return next(iter(v.columns.values())).type


def _ship_by_value(obj) -> None:
    """Executors get the filter's module pickled by value: it need not be importable there."""
    mod = inspect.getmodule(obj)
    if mod is None or mod.__name__.startswith("thresher."):
        return
    try:
        from pyspark import cloudpickle

        cloudpickle.register_pickle_by_value(mod)
    except (ImportError, ValueError):
        pass
