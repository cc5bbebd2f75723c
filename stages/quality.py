"""quality: per-document signals, a quality score, and hard filters.

Signals are computed batch-wise inside mapInArrow by kernels/quality_signals.py (pyarrow.compute
and numpy, no Python loop over documents; `signals_ref` there is its plain-Python twin).

The score comes from one of:
- `rules`: weighted share of rule expressions (`"mean_word_length >= 3": 1.0`) a document passes;
- `column`: an existing numeric documents column;
- `classifier`: a logistic regression on embeddings (stages/quality_classifier.py); the score is
  the predicted probability of "good".
Hard `filters` (`"word_count < 5"`) remove a document with reason `filter:word_count<5`.
"""

from __future__ import annotations

import difflib
import re
from typing import Literal

import numpy as np
import pyarrow as pa
from pydantic import Field, field_validator

from thresher.kernels.quality_signals import (  # noqa: F401  (compute_signals, signals_ref, STOP_WORDS: the stage's API)
    INT_SIGNALS,
    SIGNALS,
    STOP_WORDS,
    compute_signals,
    signals_ref,
)
from thresher.schemas.errors import ConfigError
from thresher.stages.base import StageConfig, StageSpec
from thresher.stages.quality_classifier import ClassifierConfig, _classifier_scores


# Gopher's quality and repetition rules (Rae et al. 2021), as conditions a good document meets.
GOPHER_RULES: dict[str, float] = {
    "word_count >= 50": 1.0, "word_count <= 100000": 1.0,
    "mean_word_length >= 3": 1.0, "mean_word_length <= 10": 1.0,
    "symbol_word_ratio <= 0.1": 1.0, "bullet_line_fraction <= 0.9": 1.0,
    "alpha_word_fraction >= 0.8": 1.0, "stop_word_count >= 2": 1.0,
    "dup_line_fraction <= 0.3": 1.0, "dup_para_fraction <= 0.3": 1.0,
    "dup_line_char_fraction <= 0.2": 1.0, "dup_para_char_fraction <= 0.2": 1.0,
    "top_2gram_char_fraction <= 0.2": 1.0, "top_3gram_char_fraction <= 0.18": 1.0,
    "top_4gram_char_fraction <= 0.16": 1.0,
    "dup_5gram_char_fraction <= 0.15": 1.0, "dup_6gram_char_fraction <= 0.14": 1.0,
    "dup_7gram_char_fraction <= 0.13": 1.0, "dup_8gram_char_fraction <= 0.12": 1.0,
    "dup_9gram_char_fraction <= 0.11": 1.0, "dup_10gram_char_fraction <= 0.1": 1.0,
}

_EXPR = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(<=|>=|==|!=|<|>)\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$")
_OPS = {"<": np.less, "<=": np.less_equal, ">": np.greater, ">=": np.greater_equal, "==": np.equal, "!=": np.not_equal}


def parse_expr(expr: str, where: str) -> tuple[str, str, float]:
    """`signal op number` -> (signal, op, number); a bad one is a ConfigError naming `where`."""
    m = _EXPR.match(expr)
    if not m:
        raise ConfigError(f"{where}: '{expr}' is not 'signal op number' (op one of < <= > >= == !=)")
    sig, op, num = m.group(1), m.group(2), float(m.group(3))
    if sig not in SIGNALS:
        near = difflib.get_close_matches(sig, list(SIGNALS), n=1)
        hint = f"; did you mean {near[0]}?" if near else f" (signals: {', '.join(SIGNALS)})"
        raise ConfigError(f"{where}: unknown signal '{sig}'{hint}")
    return sig, op, num


class Config(StageConfig):
    score: Literal["rules", "column", "classifier"] = "rules"
    rules: dict[str, float] = Field(default_factory=lambda: dict(GOPHER_RULES))
    # score: column -- the documents column that holds a score already.
    column: str | None = None
    classifier: ClassifierConfig = Field(default_factory=ClassifierConfig)
    # A document matching any filter is removed (reason `filter:<expression>`).
    filters: list[str] = Field(default_factory=lambda: ["word_count < 5"])
    stop_words: list[str] | None = None

    @field_validator("rules")
    @classmethod
    def _rules(cls, v):
        for expr, w in v.items():
            parse_expr(expr, f"quality.rules['{expr}']")
            if not np.isfinite(w) or w < 0:
                raise ValueError(f"weight of '{expr}' must be a finite number >= 0")
        if v and sum(v.values()) <= 0:
            raise ValueError("weights add up to 0")
        return v

    @field_validator("filters")
    @classmethod
    def _filters(cls, v):
        for i, expr in enumerate(v):
            parse_expr(expr, f"quality.filters[{i}]")
        return v



def evaluate(exprs, sig: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Boolean array per expression (NaN compares False)."""
    res = []
    for e in exprs:
        name, op, num = parse_expr(e, "quality")
        with np.errstate(invalid="ignore"):
            res.append(_OPS[op](np.asarray(sig[name], dtype=np.float64), num))
    return res


def rule_score(rules: dict[str, float], sig: dict[str, np.ndarray]) -> np.ndarray:
    """Weighted share of rules passed, in [0, 1]."""
    if not rules:
        return np.full(len(next(iter(sig.values()))), np.nan)
    weights = np.array(list(rules.values()), dtype=np.float64)
    passed = np.stack(evaluate(list(rules), sig), axis=0).astype(np.float64)
    return (weights[:, None] * passed).sum(0) / weights.sum()


def filter_reason(filters: list[str], sig: dict[str, np.ndarray], n: int) -> tuple[list, np.ndarray]:
    """The first filter each document matches (as `filter:<expr>`), or None; and that signal's value."""
    from thresher.stages.batchfilter import first_reason

    checks = [("filter:" + re.sub(r"\s+", "", expr), hit, sig[parse_expr(expr, "quality")[0]])
              for expr, hit in zip(filters, evaluate(filters, sig))]
    reason, value = first_reason(n, checks)
    return reason.tolist(), value


# ---------------------------------------------------------------------------------- stage
def _out_schema() -> pa.Schema:
    fields = [pa.field("id", pa.string()), pa.field("score", pa.float64())]
    for name in SIGNALS:
        fields.append(pa.field(name, pa.int64() if name in INT_SIGNALS else pa.float64()))
    fields += [pa.field("_reason", pa.string()), pa.field("_value", pa.float64())]
    return pa.schema(fields)


def run(spark, tables, cfg: Config, ctx):
    from pyspark import StorageLevel
    from pyspark.sql import functions as F
    from pyspark.sql.pandas.types import from_arrow_schema

    docs = tables["documents"]
    seed = int(cfg.seed or 0)
    stop_words = cfg.stop_words if cfg.stop_words is not None else STOP_WORDS
    if cfg.score == "column":
        if not cfg.column:
            raise ConfigError("quality.column: score: column needs the name of a documents column")
        if cfg.column not in docs.columns:
            raise ConfigError(f"quality.column: column '{cfg.column}' is not in documents (have: {', '.join(docs.columns)})")
        dtype = dict(docs.dtypes)[cfg.column]
        if dtype not in ("double", "float", "int", "bigint", "smallint", "tinyint") and not dtype.startswith("decimal"):
            raise ConfigError(f"quality.column: column '{cfg.column}' has type {dtype}, expected a number")
    rules = dict(cfg.rules)
    filters = list(cfg.filters)
    out_schema = _out_schema()
    use_rules = cfg.score == "rules"

    def signals(batches):
        for b in batches:
            texts = b.column(b.schema.get_field_index("text"))
            sig = compute_signals(texts, stop_words)
            n = b.num_rows
            score = rule_score(rules, sig) if use_rules else np.full(n, np.nan)
            reason, value = filter_reason(filters, sig, n)
            cols = [b.column(b.schema.get_field_index("id")), pa.array(score, pa.float64(), from_pandas=True)]
            for name in SIGNALS:
                t = pa.int64() if name in INT_SIGNALS else pa.float64()
                cols.append(pa.array(sig[name], t, from_pandas=True))
            cols += [pa.array(reason, pa.string()), pa.array(value, pa.float64(), from_pandas=True)]
            yield pa.RecordBatch.from_arrays(cols, schema=out_schema)

    q = docs.select("id", "text").mapInArrow(signals, from_arrow_schema(out_schema))
    stats: dict = {"score": cfg.score}
    if cfg.score == "column":
        q = q.drop("score").join(docs.select("id", F.col(cfg.column).cast("double").alias("score")), "id", "left")
    elif cfg.score == "classifier":
        cls, cstats = _classifier_scores(spark, tables, cfg, seed)
        stats["classifier"] = cstats
        q = q.drop("score").join(cls, "id", "left").withColumnRenamed("_cls", "score")
    # NaN is no score: downstream treats missing scores alike.
    q = q.withColumn("score", F.when(F.isnan("score"), None).otherwise(F.col("score")))
    q = q.persist(StorageLevel.MEMORY_AND_DISK)

    quality = q.select("id", "score", *SIGNALS)
    bad = q.where(F.col("_reason").isNotNull())
    removed = ctx.removed(bad, F.col("_reason"), score="_value")
    s = q.agg(F.count("score").alias("scored"), F.avg("score").alias("mean"),
              F.percentile_approx("score", [0.1, 0.5, 0.9], 10000).alias("p")).collect()[0]
    stats["scored"] = int(s["scored"])
    if s["scored"]:
        stats["score_mean"] = round(float(s["mean"]), 6)
        stats.update({f"score_p{k}": round(float(v), 6) for k, v in zip((10, 50, 90), s["p"])})
    return {"removed": removed, "quality": quality, "stats": stats}


SPEC = StageSpec(name="quality", inputs=("documents",), optional_inputs=("embeddings",), outputs=("removed", "quality"),
                 removes=True)
