"""The stage contract's building blocks: config bases every stage section derives from.

Stages import these (and the errors in thresher.schemas.errors), never the orchestration package: the
layers go flows > stages > kernels > schemas, and a Spark Python worker running a stage's
executor code imports nothing of the orchestration.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class StageConfig(Strict):
    """Base of every stage's config section."""

    # Filled from the run's seed unless set per stage: all randomness comes from here.
    seed: int | None = None


# ------------------------------------------------------------------------------ the contract
@dataclass(frozen=True)
class StageSpec:
    """What a stage declares about itself, read by the runner and by preflight (no probing).

    - inputs: tables it always reads (from the latest earlier stage that wrote each);
      `needs(cfg)` adds the tables a given config requires (say, `quality` for a quality rule),
      so a missing table is a config error found before Spark starts.
    - optional_inputs: tables it uses when an earlier stage wrote them.
    - outputs: tables it may return. A stage with `removes=True` returns a `removed` table
      (build it with `ctx.removed`) and NOT the kept documents: the runner derives them as the
      input documents minus the removed ids, so the row accounting closes by construction.
      A removing stage that also rewrites documents (C4's line filter, a new `language`
      column) declares `documents` among its outputs and returns all of them, rewritten, one
      row per input document; the kept ones are derived from those instead.
    - source: reads the run's input paths (`ctx.input_paths`) instead of tables (ingest,
      containment); `fingerprint(paths, cfg)` then says what of the inputs decides its result, and
      `check(paths, cfg)` is its preflight: every input check that needs no Spark, returning the
      paths the run reads (the output folder must not lie inside them). A stage that is not a
      source may declare `fingerprint((), cfg)` too: what of the data outside the run decides its
      result (dedup's `against` reference); it returns {} when there is none.
    - writers: tables the stage writes itself, `write(df, dest: Path, cfg)` (say, export's
      sharded files); `top_level` maps tables that live at the run folder's top (`dataset`).
      A small table built in the driver may be returned as a pyarrow Table with a writer
      (containment's plan.parquet); it must not be one of schemas/' interchange tables.
    """

    name: str
    outputs: tuple[str, ...]
    inputs: tuple[str, ...] = ()
    optional_inputs: tuple[str, ...] = ()
    needs: Callable[[Any], tuple[str, ...]] | None = None
    removes: bool = False
    source: bool = False
    fingerprint: Callable[[list[str], Any], dict] | None = None
    check: Callable[[list[str], Any], list[str]] | None = None
    writers: Mapping[str, Callable[..., None]] = field(default_factory=dict)
    top_level: Mapping[str, str] = field(default_factory=dict)

    def required(self, cfg) -> tuple[str, ...]:
        extra = tuple(t for t in (self.needs(cfg) if self.needs else ()) if t not in self.inputs)
        return self.inputs + extra

    def all_outputs(self) -> tuple[str, ...]:
        return self.outputs + (("documents",) if self.removes and "documents" not in self.outputs else ())


@dataclass
class StageContext:
    """What the runner hands a stage besides its tables and config."""

    name: str
    input_paths: tuple[str, ...] = ()
    scratch_root: Path | None = None
    _scratch: Path | None = field(default=None, repr=False)

    @property
    def scratch(self) -> Path:
        """A private folder (0700, random name) inside the run's .tmp/, made on first use and
        removed by the runner when the stage ends."""
        if self._scratch is None:
            from thresher.stages.scratch import private_dir

            self._scratch = private_dir(f"{self.name}-", self.scratch_root)
        return self._scratch

    def cleanup(self) -> None:
        if self._scratch is not None:
            from thresher.stages.scratch import remove_tree

            remove_tree(self._scratch)
            self._scratch = None

    def removed(self, df, reason, by_id=None, score=None):
        """The `removed` table of this stage from `df` (which has `id`): `reason` a string or a
        Column; `by_id` and `score` a column name, a Column, a value or None."""
        from pyspark.sql import Column
        from pyspark.sql import functions as F

        def col(v, typ):  # a name is a column; anything else not a Column (None too) a literal
            if isinstance(v, str):
                v = F.col(v)
            elif not isinstance(v, Column):
                v = F.lit(v)
            return v.cast(typ)

        why = reason if isinstance(reason, Column) else F.lit(reason)
        return df.select(F.col("id"), F.lit(self.name).alias("stage"), why.cast("string").alias("reason"),
                         col(by_id, "string").alias("by_id"), col(score, "double").alias("score"))


def kept_documents(result: dict, inputs: dict, removed):
    """The documents a removing stage keeps: the documents it returned (rewritten, one row per
    input document) or else its input documents, minus the ids in `removed`."""
    return result.get("documents", inputs["documents"]).join(removed.select("id"), "id", "left_anti")


def run_stage(spark, mod, tables: dict, cfg, ctx: StageContext | None = None, input_paths=()) -> dict:
    """Runs a stage module outside a run folder (tests, notebooks) and, for a removing stage,
    adds the kept `documents` as the runner would. A table the stage returns as a folder (a Path
    in its scratch) is left for the caller to read and remove: the scratch is then not removed."""
    spec = mod.SPEC
    own = ctx is None
    ctx = ctx or StageContext(spec.name, input_paths=tuple(input_paths))
    try:
        out = mod.run(spark, tables, cfg, ctx)
    except BaseException:
        if own:
            ctx.cleanup()
        raise
    if own and not any(isinstance(v, Path) for v in out.values()):
        ctx.cleanup()
    if spec.removes:
        out["documents"] = kept_documents(out, tables, out["removed"])
    return out
