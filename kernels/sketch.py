"""Row fingerprints and bottom-k sketches for dataset containment (stages/containment), beside
their plain numpy references (the `_ref` twins; tests/test_containment.py holds each kernel to its
reference).

No Spark here: the content check calls these in the driver and inside mapInArrow functions.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

SEEDS = (0x243F6A88, 0x85A308D3)  # two independent row hashes: a 128-bit fingerprint


def row_hashes(t: pa.Table, cols: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Two 64-bit hashes of every row of `t` over `cols` (in that order). polars' row hash keeps
    nulls apart from every value and (null, 'x') apart from ('x', null); -0.0 is folded into 0.0
    first because the values are equal."""
    import polars as pl
    import pyarrow.compute as pc

    sub = t.select(list(cols))
    for i, f in enumerate(sub.schema):
        if pa.types.is_floating(f.type):
            col = sub.column(i)
            sub = sub.set_column(i, f, pc.if_else(pc.equal(col, 0), pa.scalar(0, f.type), col))
    df = pl.from_arrow(sub, rechunk=False)
    if isinstance(df, pl.Series):
        df = df.to_frame()
    h1 = df.hash_rows(SEEDS[0]).to_numpy().view(np.int64)
    h2 = df.hash_rows(SEEDS[1]).to_numpy().view(np.int64)
    return h1, h2


def bottom_k(ds_: np.ndarray, s_: np.ndarray, h: np.ndarray, k: int) -> dict[tuple[int, int], np.ndarray]:
    """The k smallest distinct h per (ds, s) key, sorted."""
    if len(h) == 0:
        return {}
    key = (ds_.astype(np.int64) << 32) | s_.astype(np.int64)
    order = np.lexsort((h, key))
    key, h = key[order], h[order]
    new = np.ones(len(h), bool)
    new[1:] = (key[1:] != key[:-1]) | (h[1:] != h[:-1])
    key, h = key[new], h[new]
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    ends = np.r_[starts[1:], len(key)]
    return {(int(key[a] >> 32), int(key[a] & 0xFFFFFFFF)): h[a:min(b, a + k)] for a, b in zip(starts, ends)}



def bottom_k_ref(ds_: np.ndarray, s_: np.ndarray, h: np.ndarray, k: int) -> dict[tuple[int, int], np.ndarray]:
    """The definition: per (ds, s) key, the k smallest distinct h."""
    out = {}
    for a, b in sorted({(int(x), int(y)) for x, y in zip(ds_, s_)}):
        out[(a, b)] = np.unique(h[(ds_ == a) & (s_ == b)])[:k]
    return out


def sketch_verdict(sa: np.ndarray, sb: np.ndarray, k: int, tau: float) -> tuple[bool, float]:
    """(may be contained, estimated fraction) from bottom-k sketches of distinct fingerprints.

    Every hash of B up to B's k-th smallest is in B's sketch, so a hash of A at or below that
    bound but missing from B's sketch is a row of A that B lacks: for tau = 1 a rejection is a
    proof, never a guess. Below 1 the estimate gets a 3-sigma margin before it rejects."""
    bound = sb[-1] if len(sb) >= k else np.iinfo(np.int64).max
    cand = sa[sa <= bound]
    if len(cand) == 0:
        return True, float("nan")
    hit = np.isin(cand, sb, assume_unique=True)
    est = float(hit.mean())
    if tau >= 1.0:
        return bool(hit.all()), est
    margin = 3.0 * np.sqrt(max(tau * (1 - tau), 1e-9) / len(cand)) + 1.0 / len(cand)
    return est >= tau - margin, est



def distinct_counts(h1: np.ndarray, h2: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The distinct fingerprints (h1, h2), sorted by (h1, h2), and how many times each occurs."""
    order = np.lexsort((h2, h1))
    h1, h2 = h1[order], h2[order]
    new = np.ones(len(h1), bool)
    new[1:] = (h1[1:] != h1[:-1]) | (h2[1:] != h2[:-1])
    starts = np.flatnonzero(new)
    return h1[starts], h2[starts], np.diff(np.append(starts, len(h1)))


def distinct_counts_ref(h1: np.ndarray, h2: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    pairs, counts = np.unique(np.stack([h1, h2], axis=1), axis=0, return_counts=True)
    return pairs[:, 0], pairs[:, 1], counts


def found_in(a1: np.ndarray, a2: np.ndarray, b1: np.ndarray, b2: np.ndarray) -> np.ndarray:
    """Which fingerprints (a1, a2) are among B's sorted distinct (b1, b2)."""
    lo = np.searchsorted(b1, a1, "left")
    hi = np.searchsorted(b1, a1, "right")
    n = hi - lo
    hit = np.zeros(len(a1), bool)
    one = n == 1
    hit[one] = b2[lo[one]] == a2[one]
    # Two distinct rows of B with the same 64-bit h1: vanishingly rare, so a plain loop.
    for i in np.flatnonzero(n > 1):
        hit[i] = bool((b2[lo[i]:hi[i]] == a2[i]).any())
    return hit


def found_in_ref(a1: np.ndarray, a2: np.ndarray, b1: np.ndarray, b2: np.ndarray) -> np.ndarray:
    """The definition: set membership of the pair (a1, a2) among B's pairs."""
    b = set(zip(b1.tolist(), b2.tolist()))
    return np.array([(x, y) in b for x, y in zip(a1.tolist(), a2.tolist())], bool)
