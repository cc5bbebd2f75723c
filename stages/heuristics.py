"""heuristics: the published rule sets Gopher, C4 and FineWeb, selectable by name.

    heuristics:
      rule_sets: [gopher]            # any of gopher, c4, fineweb, applied in this order
      gopher: {thresholds: {stop_words: 2, dup_lines: null}}   # override a threshold; null: rule off

Every rule is a named signal with a threshold; a document failing one is removed with reason
`<set>:<rule>` (`gopher:stop_words`) and the signal's value as its score, the first failing
rule naming it. Defaults are the papers' numbers (RULES below). C4 also rewrites the text: it
keeps only lines ending in terminal punctuation with at least 3 words and without "javascript";
later rule sets see the rewritten text, and the lines it drops are counted in the stats.
The signals are computed a batch at a time in executors (kernels/text_rules.py).
"""

from __future__ import annotations

import difflib
import os

import numpy as np
import pyarrow as pa
from pydantic import Field, field_validator, model_validator

from thresher.kernels import text_rules as tr
from thresher.schemas.errors import ConfigError
from thresher.stages.base import StageConfig, StageSpec, Strict

# rule -> (signal, comparison that removes the document, published threshold)
RULES: dict[str, dict[str, tuple[str, str, float]]] = {
    # Rae et al. 2021 (Gopher), appendix A.1.1 and table A1.
    "gopher": {
        "min_words": ("word_count", "<", 50),
        "max_words": ("word_count", ">", 100_000),
        "min_mean_word_length": ("mean_word_length", "<", 3),
        "max_mean_word_length": ("mean_word_length", ">", 10),
        "hash_ratio": ("hash_word_ratio", ">", 0.1),
        "ellipsis_ratio": ("ellipsis_word_ratio", ">", 0.1),
        "bullet_lines": ("bullet_line_fraction", ">", 0.9),
        "ellipsis_lines": ("ellipsis_line_fraction", ">", 0.3),
        "alpha_words": ("alpha_word_fraction", "<", 0.8),
        "stop_words": ("stop_word_count", "<", 2),
        "dup_lines": ("dup_line_fraction", ">", 0.3),
        "dup_paragraphs": ("dup_para_fraction", ">", 0.3),
        "dup_line_chars": ("dup_line_char_fraction", ">", 0.2),
        "dup_paragraph_chars": ("dup_para_char_fraction", ">", 0.2),
        "top_2gram": ("top_2gram_char_fraction", ">", 0.20),
        "top_3gram": ("top_3gram_char_fraction", ">", 0.18),
        "top_4gram": ("top_4gram_char_fraction", ">", 0.16),
        "dup_5gram": ("dup_5gram_char_fraction", ">", 0.15),
        "dup_6gram": ("dup_6gram_char_fraction", ">", 0.14),
        "dup_7gram": ("dup_7gram_char_fraction", ">", 0.13),
        "dup_8gram": ("dup_8gram_char_fraction", ">", 0.12),
        "dup_9gram": ("dup_9gram_char_fraction", ">", 0.11),
        "dup_10gram": ("dup_10gram_char_fraction", ">", 0.10),
    },
    # Raffel et al. 2020 (T5), section 2.2. The line rules (terminal punctuation, words per line,
    # javascript) rewrite the text instead; `bad_words` applies only with a user-supplied list.
    "c4": {
        "min_sentences": ("sentences", "<", 5),
        "lorem_ipsum": ("lorem_ipsum", ">", 0),
        "curly_bracket": ("curly_bracket", ">", 0),
        "bad_words": ("bad_words", ">", 0),
    },
    # Penedo et al. 2024 (FineWeb), section 3.3: remove when <= 0.12 of lines end in punctuation,
    # >= 0.1 of characters sit in duplicated lines, >= 0.67 of lines are under 30 characters.
    "fineweb": {
        "line_punct_ratio": ("line_punct_ratio", "<=", 0.12),
        "dup_line_chars": ("dup_line_char_fraction", ">=", 0.1),
        "short_lines": ("short_line_fraction", ">=", 0.67),
    },
}
_OPS = {"<": np.less, ">": np.greater, "<=": np.less_equal, ">=": np.greater_equal}


class RuleSetConfig(Strict):
    # Overrides of the published thresholds by rule name; null turns a rule off.
    thresholds: dict[str, float | None] = Field(default_factory=dict)

    def resolved(self, name: str) -> dict[str, float | None]:
        out = {r: t for r, (_, _, t) in RULES[name].items()}
        out.update(self.thresholds)
        return out


def _check_thresholds(name: str, v: dict) -> dict:
    for k, t in v.items():
        if k not in RULES[name]:
            near = difflib.get_close_matches(k, list(RULES[name]), n=1)
            hint = f"; did you mean {near[0]}?" if near else f" (rules: {', '.join(RULES[name])})"
            raise ValueError(f"unknown {name} rule '{k}'{hint}")
        if t is not None and not np.isfinite(t):
            raise ValueError(f"{name} rule '{k}': threshold must be a finite number or null")
    return v


class GopherConfig(RuleSetConfig):
    # Gopher's rule counts occurrences of these 8 words ("at least two of ... the, be, to, of,
    # and, that, have, with"), case-insensitively, punctuation stripped from the word's ends.
    stop_words: list[str] = Field(default_factory=lambda: list(tr.GOPHER_STOP_WORDS))

    @field_validator("thresholds")
    @classmethod
    def _t(cls, v):
        return _check_thresholds("gopher", v)


class C4Config(RuleSetConfig):
    min_words_per_line: int = Field(3, ge=1)
    # A page containing any of these words is removed (C4 used the "List of Dirty, Naughty,
    # Obscene or Otherwise Bad Words"; none ships here): a list, or a file with one word a line.
    bad_words: list[str] | None = None
    bad_words_file: str | None = None

    @field_validator("thresholds")
    @classmethod
    def _t(cls, v):
        return _check_thresholds("c4", v)

    def words(self) -> list[str] | None:
        out = list(self.bad_words or [])
        if self.bad_words_file:
            if not os.path.isfile(self.bad_words_file):
                raise ConfigError(f"heuristics.c4.bad_words_file: {self.bad_words_file} not found")
            with open(self.bad_words_file, encoding="utf-8") as fh:
                out += [w.strip() for w in fh if w.strip()]
        return out or None


class FineWebConfig(RuleSetConfig):
    short_line_chars: int = Field(30, ge=1)

    @field_validator("thresholds")
    @classmethod
    def _t(cls, v):
        return _check_thresholds("fineweb", v)


class Config(StageConfig):
    rule_sets: list[str] = Field(default_factory=lambda: ["gopher"])
    gopher: GopherConfig = Field(default_factory=GopherConfig)
    c4: C4Config = Field(default_factory=C4Config)
    fineweb: FineWebConfig = Field(default_factory=FineWebConfig)

    @field_validator("rule_sets")
    @classmethod
    def _sets(cls, v):
        if not v:
            raise ValueError("empty; name at least one of " + ", ".join(RULES))
        for s in v:
            if s not in RULES:
                near = difflib.get_close_matches(s, list(RULES), n=1)
                hint = f"; did you mean {near[0]}?" if near else ""
                raise ValueError(f"unknown rule set '{s}' (known: {', '.join(RULES)}){hint}")
        if len(set(v)) != len(v):
            raise ValueError("a rule set is listed twice")
        return v

    @model_validator(mode="after")
    def _c4_words(self):
        if self.c4.bad_words_file and not os.path.isfile(self.c4.bad_words_file):
            raise ValueError(f"c4.bad_words_file: {self.c4.bad_words_file} not found")
        return self


def make_filter(cfg: Config):
    """The batch function: (pa.RecordBatch) -> Verdict. Pure, so tests can call it directly."""
    from thresher.stages.batchfilter import Verdict, first_reason

    sets = list(cfg.rule_sets)
    thresholds = {s: getattr(cfg, s).resolved(s) for s in sets}
    bad_words = cfg.c4.words() if "c4" in sets else None
    if not bad_words and "c4" in sets:
        thresholds["c4"]["bad_words"] = None
    gopher_stops = tuple(cfg.gopher.stop_words)
    c4_min_words = cfg.c4.min_words_per_line
    short_chars = cfg.fineweb.short_line_chars

    def fn(batch: pa.RecordBatch) -> Verdict:
        n = batch.num_rows
        texts = tr._as_texts(batch.column(batch.schema.get_field_index("text")))
        checks = []
        counters: dict[str, np.ndarray] = {}
        columns = {}
        for s in sets:
            if s == "gopher":
                sig = tr.gopher_signals(texts, gopher_stops)
            elif s == "fineweb":
                sig = tr.fineweb_signals(texts, short_chars)
            else:
                sig, new, dropped = tr.c4_signals(texts, bad_words, c4_min_words)
                for k, v in dropped.items():
                    counters[f"c4_lines_dropped_{k}"] = v
                texts = new
                columns["text"] = new
            for rule, (signal, op, _) in RULES[s].items():
                t = thresholds[s][rule]
                if t is None or signal not in sig:
                    continue
                vals = np.asarray(sig[signal], dtype=np.float64)
                with np.errstate(invalid="ignore"):
                    hit = _OPS[op](vals, t)
                checks.append((f"{s}:{rule}", hit, vals))
        # Checks run in set order and the first failing one names the document, so a document an
        # earlier set removed is not judged by a later one; only kept documents count dropped lines.
        reason, value = first_reason(n, checks)
        alive = reason == None  # noqa: E711 -- elementwise on an object array
        for k in counters:
            counters[k] = np.where(alive, counters[k], 0)
        return Verdict(reason=reason, value=value, columns=columns, counters=counters)

    counter_names = tuple(f"c4_lines_dropped_{k}" for k in tr.C4_LINE_REASONS) if "c4" in sets else ()
    return fn, counter_names


def run(spark, tables, cfg: Config, ctx):
    from thresher.stages.batchfilter import run_filter

    fn, counters = make_filter(cfg)
    docs, removed, stats = run_filter(tables["documents"], ctx, fn, counters=counters)
    stats["rule_sets"] = list(cfg.rule_sets)
    # Only C4 rewrites the text; otherwise the runner keeps the input documents as they are.
    out = {"removed": removed, "stats": stats}
    if "c4" in cfg.rule_sets:
        out["documents"] = docs
    return out


SPEC = StageSpec(name="heuristics", inputs=("documents",), outputs=("documents", "removed"), removes=True)
