"""MinHash kernels over whole Arrow batches, each beside its plain numpy reference twin.

Everything works on flat buffers: a batch of documents is `offsets` (int64, n+1) into a flat
array of values (bytes of text, or 64-bit shingle hashes), so a kernel call handles thousands of
documents with no Python per document or per shingle.

Hash family. A shingle is a 64-bit hash `x`; permutation j maps it to the top 32 bits of
`a_j * x + b_j (mod 2**64)` with `a_j` odd (multiply-add-shift, Dietzfelbinger 1996): one
multiply and one add per (shingle, permutation), which LLVM vectorises across permutations.
Signatures are uint32: half the memory of datasketch's uint64 values, and 32 bits keep
accidental ties negligible for documents of any practical length.

The `*_ref` functions are the twins: the same arithmetic written with numpy array operations.
Tests hold each kernel to its twin bit for bit.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

U64 = np.uint64
# Multipliers of MurmurHash3's 64-bit finaliser and FNV-1a's constants: well-studied mixers.
_M1 = U64(0xFF51AFD7ED558CCD)
_M2 = U64(0xC4CEB9FE1A85EC53)
_FNV_OFFSET = U64(0xCBF29CE484222325)
_FNV_PRIME = U64(0x100000001B3)
_K = U64(0x9E3779B97F4A7C15)  # golden-ratio increment: separates seeds and positions
_S33 = U64(33)
_S32 = U64(32)
_S23 = U64(23)
_S41 = U64(41)
EMPTY = np.uint32(0xFFFFFFFF)  # signature value of a document without shingles


def seed64(seed) -> np.uint64:
    """Any integer seed as the uint64 the kernels take (numba cannot take ints >= 2**63)."""
    return U64(int(seed or 0) & 0xFFFFFFFFFFFFFFFF)


# ------------------------------------------------------------------------------------ mixing
@njit(inline="always")
def _fmix(h):
    h ^= h >> _S33
    h *= _M1
    h ^= h >> _S33
    h *= _M2
    h ^= h >> _S33
    return h


def _fmix_ref(h: np.ndarray) -> np.ndarray:
    h = h.astype(U64, copy=True)
    with np.errstate(over="ignore"):
        h ^= h >> _S33
        h *= _M1
        h ^= h >> _S33
        h *= _M2
        h ^= h >> _S33
    return h


@njit(inline="always")
def _rotl23(h):
    return (h << _S23) | (h >> _S41)


def _rotl23_ref(h):
    return (h << _S23) | (h >> _S41)


# ------------------------------------------------------------------------------------ byte spans
@njit(cache=True, nogil=True)
def hash_spans(data, starts, ends, seed):
    """64-bit hash of each byte span data[starts[i]:ends[i]] (FNV-1a, then a full-avalanche mix)."""
    n = starts.shape[0]
    out = np.empty(n, np.uint64)
    s = U64(seed) ^ _FNV_OFFSET
    for i in range(n):
        h = s
        for k in range(starts[i], ends[i]):
            h = (h ^ U64(data[k])) * _FNV_PRIME
        out[i] = _fmix(h ^ U64(ends[i] - starts[i]))
    return out


def hash_spans_ref(data: np.ndarray, starts: np.ndarray, ends: np.ndarray, seed: int) -> np.ndarray:
    starts = np.asarray(starts, np.int64)
    lengths = np.asarray(ends, np.int64) - starts
    h = np.full(len(starts), U64(seed) ^ _FNV_OFFSET, U64)
    with np.errstate(over="ignore"):
        # One step per byte position, across all spans at once.
        for pos in range(int(lengths.max()) if len(lengths) else 0):
            live = lengths > pos
            h[live] = (h[live] ^ data[starts[live] + pos].astype(U64)) * _FNV_PRIME
    return _fmix_ref(h ^ lengths.astype(U64))


@njit(inline="always")
def _space_bytes(data, i, end):
    """Bytes of the whitespace character starting at data[i] (0: not whitespace). The set is
    Arrow's utf8_split_whitespace: ASCII 9-13, 28-32, U+0085, U+00A0, U+1680, U+2000-U+200A,
    U+2028, U+2029, U+202F, U+205F, U+3000 (valid UTF-8 in, so a lead byte never matches a
    continuation byte)."""
    b = data[i]
    if b < 0x80:
        return 1 if (9 <= b <= 13 or 28 <= b <= 32) else 0
    if b == 0xC2 and i + 1 < end:
        return 2 if (data[i + 1] == 0x85 or data[i + 1] == 0xA0) else 0
    if 0xE1 <= b <= 0xE3 and i + 2 < end:
        b1, b2 = data[i + 1], data[i + 2]
        if b == 0xE1:
            return 3 if (b1 == 0x9A and b2 == 0x80) else 0
        if b == 0xE3:
            return 3 if (b1 == 0x80 and b2 == 0x80) else 0
        if b1 == 0x80 and (b2 <= 0x8A or b2 == 0xA8 or b2 == 0xA9 or b2 == 0xAF):
            return 3
        if b1 == 0x81 and b2 == 0x9F:
            return 3
    return 0


@njit(cache=True, nogil=True)
def split_whitespace(data, offsets):
    """Word byte spans of each document data[offsets[d]:offsets[d+1]] split on Unicode
    whitespace (runs count once, no empty words). Returns (starts, ends, doc_offsets).
    Two passes (count, then fill) so the outputs are allocated once at their size."""
    ndoc = offsets.shape[0] - 1
    doc_off = np.empty(ndoc + 1, np.int64)
    doc_off[0] = 0
    starts = np.empty(0, np.int64)
    ends = np.empty(0, np.int64)
    for fill in range(2):
        if fill:
            starts = np.empty(doc_off[ndoc], np.int64)
            ends = np.empty(doc_off[ndoc], np.int64)
        k = 0
        for d in range(ndoc):
            i, end, inword = offsets[d], offsets[d + 1], False
            while i < end:
                b = data[i]
                # Printable ASCII (most bytes) is never a space: skip the full test.
                w = 0 if 32 < b < 0x80 else _space_bytes(data, i, end)
                if w:
                    if inword:
                        if fill:
                            ends[k] = i
                        k += 1
                        inword = False
                    i += w
                else:
                    if not inword:
                        if fill:
                            starts[k] = i
                        inword = True
                    i += 1
            if inword:
                if fill:
                    ends[k] = end
                k += 1
            doc_off[d + 1] = k
    return starts, ends, doc_off


# ------------------------------------------------------------------------------------ word n-grams
@njit(cache=True, nogil=True)
def ngram_hashes(tok_hash, doc_offsets, n, seed):
    """Hashes of the word n-grams of each document, from its token hashes.

    A document with 1..n-1 tokens gets one shingle of all its tokens, so short documents still
    compare; a document without tokens gets none. Returns (offsets, hashes).
    """
    ndoc = doc_offsets.shape[0] - 1
    out_off = np.empty(ndoc + 1, np.int64)
    out_off[0] = 0
    for d in range(ndoc):
        m = doc_offsets[d + 1] - doc_offsets[d]
        c = m - n + 1 if m >= n else (1 if m > 0 else 0)
        out_off[d + 1] = out_off[d] + c
    out = np.empty(out_off[ndoc], np.uint64)
    s0 = U64(seed) * _K + _K
    for d in range(ndoc):
        lo = doc_offsets[d]
        m = doc_offsets[d + 1] - lo
        w = n if m >= n else m
        for k in range(out_off[d + 1] - out_off[d]):
            h = s0
            for j in range(w):
                h = _rotl23(h ^ tok_hash[lo + k + j]) * _M2
            out[out_off[d] + k] = _fmix(h)
    return out_off, out


def ngram_hashes_ref(tok_hash: np.ndarray, doc_offsets: np.ndarray, n: int, seed: int):
    doc_offsets = np.asarray(doc_offsets, np.int64)
    m = np.diff(doc_offsets)
    counts = np.where(m >= n, m - n + 1, np.where(m > 0, 1, 0))
    out_off = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    doc = np.repeat(np.arange(len(m)), counts)
    k = np.arange(out_off[-1]) - out_off[doc]
    first = doc_offsets[doc] + k
    width = np.minimum(m[doc], n)
    with np.errstate(over="ignore"):
        s0 = U64(seed) * _K + _K
        h = np.full(len(first), s0, U64)
        for j in range(n):
            live = width > j
            h[live] = _rotl23_ref(h[live] ^ tok_hash[first[live] + j]) * _M2
    return out_off, _fmix_ref(h)


# ------------------------------------------------------------------------------------ sets
@njit(cache=True, nogil=True)
def sort_unique(offsets, values):
    """Each segment sorted with repeats removed: the shingle *set* of each document."""
    n = offsets.shape[0] - 1
    out = np.empty_like(values)
    out_off = np.empty(n + 1, np.int64)
    out_off[0] = 0
    w = 0
    for d in range(n):
        seg = np.sort(values[offsets[d]:offsets[d + 1]])
        for k in range(seg.shape[0]):
            if k == 0 or seg[k] != seg[k - 1]:
                out[w] = seg[k]
                w += 1
        out_off[d + 1] = w
    return out_off, out[:w].copy()


def sort_unique_ref(offsets: np.ndarray, values: np.ndarray):
    offsets = np.asarray(offsets, np.int64)
    seg = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
    order = np.lexsort((values, seg))
    v, s = values[order], seg[order]
    keep = np.ones(len(v), bool)
    keep[1:] = (v[1:] != v[:-1]) | (s[1:] != s[:-1])
    counts = np.bincount(s[keep], minlength=len(offsets) - 1)
    return np.concatenate([[0], np.cumsum(counts)]).astype(np.int64), v[keep]


# ------------------------------------------------------------------------------------ signatures
def permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The (a, b) of each permutation, from the seed alone."""
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFFFFFFFFFF, 0x4D696E48])
    a = rng.integers(0, 2**64, size=num_perm, dtype=np.uint64, endpoint=False) | U64(1)
    b = rng.integers(0, 2**64, size=num_perm, dtype=np.uint64, endpoint=False)
    return a, b


@njit(cache=True, nogil=True, parallel=True)
def minhash_signatures(offsets, hashes, a, b):
    """uint32 signature (n, num_perm) of each document's shingle hashes; EMPTY where it has none."""
    n = offsets.shape[0] - 1
    p = a.shape[0]
    out = np.empty((n, p), np.uint32)
    for d in prange(n):
        acc = np.full(p, U64(0xFFFFFFFF), np.uint64)
        k, e = offsets[d], offsets[d + 1]
        # Four shingles per pass over the permutations: a[j], b[j] and acc[j] are loaded and
        # stored once for four products, which halved the time on one Zen 4 core (the loop was
        # bound by those loads and stores, not by the multiplies).
        while k + 4 <= e:
            x0, x1, x2, x3 = hashes[k], hashes[k + 1], hashes[k + 2], hashes[k + 3]
            for j in range(p):
                aj, bj = a[j], b[j]
                m = min(min((aj * x0 + bj) >> _S32, (aj * x1 + bj) >> _S32),
                        min((aj * x2 + bj) >> _S32, (aj * x3 + bj) >> _S32))
                if m < acc[j]:
                    acc[j] = m
            k += 4
        while k < e:
            x = hashes[k]
            for j in range(p):
                v = (a[j] * x + b[j]) >> _S32
                if v < acc[j]:
                    acc[j] = v
            k += 1
        for j in range(p):
            out[d, j] = np.uint32(acc[j])
    return out


def minhash_signatures_ref(offsets: np.ndarray, hashes: np.ndarray, a: np.ndarray, b: np.ndarray,
                           chunk: int = 1 << 16) -> np.ndarray:
    offsets = np.asarray(offsets, np.int64)
    n = len(offsets) - 1
    out = np.full((n, len(a)), EMPTY, np.uint32)
    seg = np.repeat(np.arange(n), np.diff(offsets))
    with np.errstate(over="ignore"):
        for lo in range(0, len(hashes), chunk):
            x = hashes[lo:lo + chunk]
            v = ((a[None, :] * x[:, None] + b[None, :]) >> _S32).astype(np.uint32)
            np.minimum.at(out, seg[lo:lo + chunk], v)
    return out


# ------------------------------------------------------------------------------------ banding
@njit(cache=True, nogil=True)
def band_hashes(sig, bands, rows, seed):
    """One 64-bit hash per (document, band) of the band's `rows` signature values (as int64)."""
    n = sig.shape[0]
    out = np.empty((n, bands), np.int64)
    s0 = U64(seed) * _K
    for d in range(n):
        for bnd in range(bands):
            h = s0 + U64(bnd + 1) * _K
            for r in range(rows):
                h = _rotl23(h ^ U64(sig[d, bnd * rows + r])) * _M1
            out[d, bnd] = np.int64(_fmix(h))
    return out


def band_hashes_ref(sig: np.ndarray, bands: int, rows: int, seed: int) -> np.ndarray:
    n = sig.shape[0]
    out = np.empty((n, bands), np.int64)
    with np.errstate(over="ignore"):
        s0 = U64(seed) * _K
        for bnd in range(bands):
            h = np.full(n, s0 + U64(bnd + 1) * _K, U64)
            for r in range(rows):
                h = _rotl23_ref(h ^ sig[:, bnd * rows + r].astype(U64)) * _M1
            out[:, bnd] = _fmix_ref(h).view(np.int64)
    return out


# ------------------------------------------------------------------------------------ Jaccard
def signature_agreement(sig_a: np.ndarray, sig_b: np.ndarray) -> np.ndarray:
    """MinHash estimate of Jaccard: the share of permutations whose minima agree."""
    est = (sig_a == sig_b).mean(axis=1)
    empty = (sig_a == EMPTY).all(axis=1) | (sig_b == EMPTY).all(axis=1)
    return np.where(empty, 0.0, est)


@njit(cache=True, nogil=True)
def jaccard_pairs(offsets, values, ia, ib):
    """Exact Jaccard of set ia[k] with set ib[k], all sets in one flat table (sorted unique
    segments, merge walk): pairs index rows of a batch, so no set is copied per pair. Two empty
    sets score 0: with nothing to compare there is no evidence of duplication."""
    n = ia.shape[0]
    out = np.empty(n, np.float64)
    for k in range(n):
        i, ie = offsets[ia[k]], offsets[ia[k] + 1]
        j, je = offsets[ib[k]], offsets[ib[k] + 1]
        na, nb = ie - i, je - j
        inter = 0
        while i < ie and j < je:
            x, y = values[i], values[j]
            if x == y:
                inter += 1
                i += 1
                j += 1
            elif x < y:
                i += 1
            else:
                j += 1
        union = na + nb - inter
        out[k] = inter / union if union > 0 else 0.0
    return out


def jaccard_pairs_ref(offsets, values, ia, ib) -> np.ndarray:
    out = np.empty(len(ia), np.float64)
    for k, (x, y) in enumerate(zip(ia, ib)):
        sa, sb = values[offsets[x]:offsets[x + 1]], values[offsets[y]:offsets[y + 1]]
        union = len(np.union1d(sa, sb))
        out[k] = len(np.intersect1d(sa, sb, assume_unique=True)) / union if union else 0.0
    return out


# ------------------------------------------------------------------------------------ components
# Used by the dedup graph (stages/components.py): one Spark partition's edges contracted in
# place before the distributed rounds, so most components are finished without a shuffle.
@njit(cache=True, nogil=True)
def min_roots(a, b, n):
    """Smallest node of each node's component in the graph of edges (a[k], b[k]) over nodes
    0..n-1: union-find whose union keeps the smaller root, so every root is its set's minimum."""
    parent = np.arange(n)
    for k in range(a.shape[0]):
        x, y = a[k], b[k]
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        while parent[y] != y:
            parent[y] = parent[parent[y]]
            y = parent[y]
        if x < y:
            parent[y] = x
        elif y < x:
            parent[x] = y
    for i in range(n):
        r = i
        while parent[r] != r:
            r = parent[r]
        parent[i] = r
    return parent


def min_roots_ref(a: np.ndarray, b: np.ndarray, n: int) -> np.ndarray:
    """Min-label propagation with pointer jumping: every node takes the smallest label among
    itself and its neighbours until nothing changes."""
    lab = np.arange(n)
    while True:
        new = lab.copy()
        np.minimum.at(new, a, lab[b])
        np.minimum.at(new, b, lab[a])
        new = new[new]
        if np.array_equal(new, lab):
            return lab
        lab = new
