"""Signals of the published heuristic rule sets (Gopher, C4, FineWeb), vectorised over an Arrow
batch, each beside its plain-Python twin (`*_ref`) the tests hold it to.

Words are whitespace-separated tokens; lines are the text split on "\\n", stripped, empty ones
left out (paragraphs: split on a blank line). No Python loop runs per document: texts are split
into flat Arrow arrays of lines/words with their parent document's index, tested with
pyarrow.compute, and summed per document with numpy.

- Gopher (Rae et al. 2021, appendix A): the quality kernel's signals (kernels/quality_signals.py,
  with Gopher's 8 stop words) plus the ones the paper states separately: '#' per word, ellipses
  per word, and the share of lines ending in an ellipsis.
- C4 (Raffel et al. 2020, section 2.2): line filters that rewrite the text (keep lines ending in
  terminal punctuation, with >= 3 words, without "javascript") and page signals (sentences in
  the kept text, "lorem ipsum", "{", a user-supplied bad-words list).
- FineWeb (Penedo et al. 2024, section 3.3 "custom filters"): share of lines ending in
  punctuation, share of characters in duplicated lines, share of lines under 30 characters.
"""

from __future__ import annotations

import re

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from thresher.kernels.quality_signals import _codes, _div, _per_doc, _repeats, _trimmed_parts
from thresher.kernels.quality_signals import compute_signals, signals_ref

GOPHER_STOP_WORDS = ("the", "be", "to", "of", "and", "that", "have", "with")
ELLIPSIS_END = r"(\.\.\.|…)$"
# C4: "a period, exclamation mark, question mark, or end quotation mark".
C4_TERMINAL = r"[.!?\"”]$"
# A sentence ends at a run of . ! ? (closing quotes/brackets may follow) before a space or the end.
C4_SENTENCE = r"[.!?]+[\"'”’)\]]*(?:[ \t\r\n]|$)"
# FineWeb: a line "ends with punctuation" when its last character is a sentence terminal of one
# of the common scripts, possibly followed by a closing quote or bracket.
FINEWEB_TERMINAL = r"[.!?…。！？．؟।۔:;][\"'”’»)\]」』]*$"


def _as_texts(texts) -> pa.Array:
    if isinstance(texts, pa.ChunkedArray):
        texts = texts.combine_chunks()
    return pc.fill_null(texts.cast(pa.string()), "")


def _np(a) -> np.ndarray:
    return a.to_numpy(zero_copy_only=False)


# ---------------------------------------------------------------------------------- gopher
def gopher_signals(texts, stop_words=GOPHER_STOP_WORDS) -> dict[str, np.ndarray]:
    texts = _as_texts(texts)
    n = len(texts)
    out = compute_signals(texts, stop_words)
    wc = out["word_count"]
    out["hash_word_ratio"] = _div(_np(pc.count_substring(texts, "#")), wc)
    out["ellipsis_word_ratio"] = _div(_np(pc.count_substring(texts, "...")) + _np(pc.count_substring(texts, "…")), wc)
    lines, lparent, _ = _trimmed_parts(texts, "\n", regex=False)
    ell = _np(pc.match_substring_regex(lines, ELLIPSIS_END)).astype(np.float64)
    out["ellipsis_line_fraction"] = _div(_per_doc(lparent, ell, n), out["line_count"])
    return out


def gopher_ref(text: str, stop_words=GOPHER_STOP_WORDS) -> dict[str, float]:
    out = signals_ref(text, stop_words)
    wc = out["word_count"]
    nan = float("nan")
    out["hash_word_ratio"] = text.count("#") / wc if wc else nan
    out["ellipsis_word_ratio"] = (text.count("...") + text.count("…")) / wc if wc else nan
    lines = [ln.strip() for ln in text.split("\n") if ln.strip()]
    out["ellipsis_line_fraction"] = sum(bool(re.search(ELLIPSIS_END, ln)) for ln in lines) / len(lines) if lines else nan
    return out


# ---------------------------------------------------------------------------------- c4
C4_LINE_REASONS = ("terminal_punct", "words_per_line", "javascript")


def c4_lines(texts, min_words_per_line: int = 3):
    """The text with C4's line filters applied, and per-document counts of the lines each line
    rule dropped (a line counts under the first rule it fails, in C4_LINE_REASONS order)."""
    texts = _as_texts(texts)
    n = len(texts)
    flat, parent, _ = _trimmed_parts(texts, "\n", regex=False)  # the non-empty stripped lines
    terminal = _np(pc.match_substring_regex(flat, C4_TERMINAL))
    words = _np(pc.list_value_length(pc.utf8_split_whitespace(flat))).astype(np.int64)
    js = _np(pc.match_substring(flat, "javascript", ignore_case=True))
    fail_t = ~terminal
    fail_w = terminal & (words < min_words_per_line)
    fail_j = terminal & (words >= min_words_per_line) & js
    keep = ~fail_t & ~fail_w & ~fail_j
    kept = flat.filter(pa.array(keep))
    counts = np.bincount(parent[keep], minlength=n)
    offsets = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(counts, out=offsets[1:])
    new = pc.binary_join(pa.ListArray.from_arrays(pa.array(offsets), kept), "\n")
    dropped = {r: np.bincount(parent[f], minlength=n).astype(np.int64)
               for r, f in zip(C4_LINE_REASONS, (fail_t, fail_w, fail_j))}
    return new, dropped


def c4_signals(texts, bad_words=None, min_words_per_line: int = 3):
    """(signals, rewritten texts, dropped-line counts). Page signals read the original text
    (lorem ipsum, '{', bad words), the sentence count reads the kept lines."""
    texts = _as_texts(texts)
    new, dropped = c4_lines(texts, min_words_per_line)
    low = pc.utf8_lower(texts)
    out = {
        "sentences": _np(pc.count_substring_regex(new, C4_SENTENCE)).astype(np.int64),
        "lorem_ipsum": _np(pc.match_substring(low, "lorem ipsum")).astype(np.int64),
        "curly_bracket": _np(pc.match_substring(texts, "{")).astype(np.int64),
    }
    if bad_words:
        # Words are runs of letters/digits/apostrophes, lower-cased.
        toks = pc.split_pattern_regex(low, r"[^\pL\pN']+")
        flat = pc.list_flatten(toks)
        parent = _np(pc.list_parent_indices(toks)).astype(np.int64)
        hit = _np(pc.fill_null(pc.is_in(flat, value_set=pa.array(sorted({w.lower() for w in bad_words}))), False))
        out["bad_words"] = np.bincount(parent[hit], minlength=len(texts)).astype(np.int64)
    return out, new, dropped


def c4_ref(text: str, bad_words=None, min_words_per_line: int = 3):
    kept, dropped = [], dict.fromkeys(C4_LINE_REASONS, 0)
    for ln in text.split("\n"):
        ln = ln.strip()
        if not ln:
            continue
        if not re.search(C4_TERMINAL, ln):
            dropped["terminal_punct"] += 1
        elif len(ln.split()) < min_words_per_line:
            dropped["words_per_line"] += 1
        elif "javascript" in ln.lower():
            dropped["javascript"] += 1
        else:
            kept.append(ln)
    new = "\n".join(kept)
    out = {"sentences": len(re.findall(C4_SENTENCE, new)), "lorem_ipsum": int("lorem ipsum" in text.lower()),
           "curly_bracket": int("{" in text)}
    if bad_words:
        bw = {w.lower() for w in bad_words}
        out["bad_words"] = sum(t in bw for t in re.split(r"[^\w']+|_", text.lower()) if t)
    return out, new, dropped


# ---------------------------------------------------------------------------------- fineweb
def fineweb_signals(texts, short_line_chars: int = 30) -> dict[str, np.ndarray]:
    texts = _as_texts(texts)
    n = len(texts)
    lines, lparent, llen = _trimmed_parts(texts, "\n", regex=False)
    n_lines = _per_doc(lparent, np.ones(len(lparent)), n)
    punct = _np(pc.match_substring_regex(lines, FINEWEB_TERMINAL)).astype(np.float64)
    rep = _repeats(lparent, _codes(lines))
    line_chars = _per_doc(lparent, llen.astype(np.float64), n)
    return {
        "line_punct_ratio": _div(_per_doc(lparent, punct, n), n_lines),
        "dup_line_char_fraction": _div(_per_doc(lparent, np.where(rep, llen, 0).astype(np.float64), n), line_chars),
        "short_line_fraction": _div(_per_doc(lparent, (llen < short_line_chars).astype(np.float64), n), n_lines),
    }


def fineweb_ref(text: str, short_line_chars: int = 30) -> dict[str, float]:
    nan = float("nan")
    lines = [ln.strip() for ln in text.split("\n") if ln.strip()]
    if not lines:
        return {"line_punct_ratio": nan, "dup_line_char_fraction": nan, "short_line_fraction": nan}
    seen, dup = set(), 0
    for ln in lines:
        if ln in seen:
            dup += len(ln)
        seen.add(ln)
    return {
        "line_punct_ratio": sum(bool(re.search(FINEWEB_TERMINAL, ln)) for ln in lines) / len(lines),
        "dup_line_char_fraction": dup / sum(len(ln) for ln in lines),
        "short_line_fraction": sum(len(ln) < short_line_chars for ln in lines) / len(lines),
    }
