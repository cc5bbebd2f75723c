"""Text normalisation and shingling shared by the dedup and decontamination stages.

Normalisation is pyarrow.compute over whole arrays (no Python per document); shingles are
64-bit hashes produced by the numba kernels in kernels/minhash.py from Arrow's flat buffers.

    normalise(arr, NormaliseConfig()) -> pa.StringArray
    shingle_sets(arr, ShingleConfig(), NormaliseConfig()) -> (offsets int64[n+1], hashes uint64)
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from thresher.stages.base import Strict

# RE2 classes: `\s` is ASCII-only, so Unicode separators (\p{Z}) and VT/NEL are named too.
_WS = r"[\s\x{0b}\x{85}\p{Z}]+"
_PUNCT = r"\p{P}+"


class NormaliseConfig(Strict):
    nfkc: bool = True                 # Unicode compatibility forms: full-width, ligatures, NBSP
    lowercase: bool = True
    collapse_whitespace: bool = True  # runs of any Unicode whitespace -> one space, ends trimmed
    strip_punctuation: bool = False   # Unicode punctuation (\p{P}) -> a space


class ShingleConfig(Strict):
    kind: Literal["word", "char"] = "word"
    n: int = Field(5, ge=1, le=64)


def _as_array(arr) -> pa.Array:
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks() if arr.num_chunks != 1 else arr.chunk(0)
    if pa.types.is_large_string(arr.type) or pa.types.is_string_view(arr.type):
        arr = arr.cast(pa.string())
    return arr


def normalise(arr, cfg: NormaliseConfig | None = None) -> pa.Array:
    """The normalised form of every string in `arr` (nulls stay null)."""
    cfg = cfg or NormaliseConfig()
    arr = _as_array(arr)
    if cfg.nfkc:
        arr = pc.utf8_normalize(arr, form="NFKC")
    if cfg.lowercase:
        arr = pc.utf8_lower(arr)
    if cfg.strip_punctuation:
        arr = pc.replace_substring_regex(arr, pattern=_PUNCT, replacement=" ")
    if cfg.collapse_whitespace:
        arr = pc.utf8_trim_whitespace(pc.replace_substring_regex(arr, pattern=_WS, replacement=" "))
    return arr


def string_buffers(arr) -> tuple[np.ndarray, np.ndarray]:
    """(offsets int64[n+1] starting at 0, UTF-8 bytes uint8) of a string array, zero-copy where
    Arrow allows. Nulls read as empty strings."""
    arr = _as_array(arr)
    if arr.null_count:
        arr = pc.fill_null(arr, "")
    if pa.types.is_large_string(arr.type):
        odt = np.int64
    else:
        odt = np.int32
    bufs = arr.buffers()
    n = len(arr)
    offsets = np.frombuffer(bufs[1], dtype=odt, count=n + 1, offset=arr.offset * np.dtype(odt).itemsize)
    data = np.frombuffer(bufs[2], dtype=np.uint8) if bufs[2] is not None else np.zeros(0, np.uint8)
    offsets = offsets.astype(np.int64)
    base = offsets[0] if n else 0
    return offsets - base, data[base:offsets[-1] if n else base]


def text_hash128(arr, cfg: NormaliseConfig | None = None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two independent 64-bit hashes (as int64, for Spark) of each normalised text."""
    from thresher.kernels.minhash import hash_spans, seed64

    off, data = string_buffers(normalise(arr, cfg))
    h1 = hash_spans(data, off[:-1], off[1:], seed64(seed))
    h2 = hash_spans(data, off[:-1], off[1:], seed64(seed) ^ np.uint64(0x5DEECE66D))
    return h1.view(np.int64), h2.view(np.int64)


def _tokens(norm: pa.Array) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray], np.ndarray]:
    """(UTF-8 bytes, token byte spans (starts, ends), each document's token offsets): one
    kernel pass over Arrow's buffers, no list array (the Arrow path below is its reference)."""
    from thresher.kernels.minhash import split_whitespace

    off, data = string_buffers(norm)
    starts, ends, doc_off = split_whitespace(data, off)
    return data, (starts, ends), doc_off


def _tokens_arrow(norm: pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reference twin of _tokens: Arrow's utf8_split_whitespace. Token byte spans (starts,
    ends) or their offsets, and each document's token offsets."""
    toks = pc.utf8_split_whitespace(norm)
    if toks.null_count:
        toks = pc.fill_null(toks, pa.scalar([], toks.type))
    list_off = np.asarray(toks.offsets, dtype=np.int64)
    flat = toks.flatten()
    t_off, data = string_buffers(flat)
    nonempty = np.diff(t_off) > 0
    if nonempty.all():
        return data, t_off, list_off - list_off[0]
    # Splitting "" (or text with leading/trailing space) yields empty tokens: they are no words.
    parent = np.repeat(np.arange(len(list_off) - 1), np.diff(list_off))
    counts = np.bincount(parent[nonempty], minlength=len(list_off) - 1)
    doc_off = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    starts, ends = t_off[:-1][nonempty], t_off[1:][nonempty]
    return data, (starts, ends), doc_off


def _char_spans(off: np.ndarray, data: np.ndarray, n: int):
    """Byte spans of every window of n code points inside each document (numpy, no loops):
    code points start at bytes that are not UTF-8 continuation bytes (10xxxxxx)."""
    cp = np.flatnonzero((data & 0xC0) != 0x80).astype(np.int64)
    ndoc = len(off) - 1
    first = np.searchsorted(cp, off[:-1], side="left")
    last = np.searchsorted(cp, off[1:], side="left")
    m = last - first  # code points per document
    counts = np.where(m >= n, m - n + 1, np.where(m > 0, 1, 0))
    out_off = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    doc = np.repeat(np.arange(ndoc), counts)
    k = np.arange(out_off[-1]) - out_off[doc]
    starts = cp[first[doc] + k] if len(doc) else np.zeros(0, np.int64)
    end_idx = first[doc] + k + n
    cp_ext = np.concatenate([cp, [len(data)]])
    ends = np.where(end_idx < last[doc], cp_ext[np.minimum(end_idx, len(cp))], off[1:][doc]) if len(doc) else np.zeros(0, np.int64)
    return starts, ends, out_off


def shingle_hashes(arr, shingle: ShingleConfig | None = None, norm: NormaliseConfig | None = None,
                   seed: int = 0, normalised: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """64-bit hashes of each document's shingles, in document order (repeats kept).
    Returns (offsets int64[n+1], hashes uint64)."""
    from thresher.kernels.minhash import hash_spans, ngram_hashes, seed64

    seed = seed64(seed)
    shingle = shingle or ShingleConfig()
    norm = norm or NormaliseConfig()
    if shingle.kind == "word" and norm.collapse_whitespace:
        # Words are split on every character the collapse would replace (and on U+001C-U+001F
        # besides, either way), and empty tokens are dropped, so collapsing first cannot
        # change a word shingle: the regex pass is skipped (half of the shingling time).
        norm = norm.model_copy(update={"collapse_whitespace": False})
    text = _as_array(arr) if normalised else normalise(arr, norm)
    if shingle.kind == "word":
        data, spans, doc_off = _tokens(text)
        starts, ends = spans if isinstance(spans, tuple) else (spans[:-1], spans[1:])
        tok = hash_spans(data, starts, ends, seed)
        return ngram_hashes(tok, doc_off, shingle.n, seed)
    off, data = string_buffers(text)
    starts, ends, out_off = _char_spans(off, data, shingle.n)
    return out_off, hash_spans(data, starts, ends, seed)


def shingle_sets(arr, shingle: ShingleConfig | None = None, norm: NormaliseConfig | None = None,
                 seed: int = 0, normalised: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Each document's shingle set: sorted, unique 64-bit hashes. (offsets, hashes)."""
    from thresher.kernels.minhash import sort_unique

    off, h = shingle_hashes(arr, shingle, norm, seed, normalised)
    return sort_unique(off, h)


def shingle_strings(text: str, shingle: ShingleConfig | None = None, norm: NormaliseConfig | None = None) -> set[str]:
    """The shingles of one text as strings: the readable definition the hashes stand for, used
    by tests and by the exact ground truth in benchmarks."""
    shingle = shingle or ShingleConfig()
    t = normalise(pa.array([text], pa.string()), norm)[0].as_py()
    if shingle.kind == "word":
        w = t.split()
        if not w:
            return set()
        if len(w) < shingle.n:
            return {" ".join(w)}
        return {" ".join(w[i:i + shingle.n]) for i in range(len(w) - shingle.n + 1)}
    if not t:
        return set()
    if len(t) < shingle.n:
        return {t}
    return {t[i:i + shingle.n] for i in range(len(t) - shingle.n + 1)}
