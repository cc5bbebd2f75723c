"""Per-document text signals for the quality stage, vectorised over an Arrow batch.

`compute_signals` works on whole batches with pyarrow.compute and numpy (no Python loop over
documents): length and word statistics, symbol and alphabetic shares, stop words, lines ending
in punctuation, and Gopher-style repetition (duplicate lines and paragraphs, the share of the
most frequent 2-4-gram, the share of characters in repeated 5-10-grams). `signals_ref` is the
plain-Python twin the tests hold it to. The helpers (`_per_doc`, `_div`, `_codes`, `_repeats`,
`_trimmed_parts`) are shared with kernels/text_rules.py.
"""

from __future__ import annotations

import re

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

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

