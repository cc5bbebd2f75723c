"""LSH bucket linking on numpy arrays (the one-task path), each beside its plain reference twin.

A document's bucket keys are `keys[d, band]` (keys of different bands are different hashes, so a
key alone names a bucket); documents are numbered by `node` in id order, so the smallest node of
a bucket is its smallest id.
"""

from __future__ import annotations

import numpy as np


def star_pairs(keys: np.ndarray, node: np.ndarray, nodes: int):
    """LSH buckets linked as stars: keys (docs, bands) bucket keys, node each document's node
    number (in id order). Returns (hub, member, size), node numbers: every member of a bucket of
    two or more documents with the bucket's smallest node, once per distinct pair, sorted, with
    the size of the largest bucket that links them -- the pairs of the distributed path."""
    bands = keys.shape[1]
    k = keys.reshape(-1)
    o = np.argsort(k, kind="stable")
    k, mem = k[o], node[o // bands]
    starts = np.flatnonzero(np.r_[True, k[1:] != k[:-1]])
    size = np.diff(np.append(starts, len(k)))
    hub = np.repeat(np.minimum.reduceat(mem, starts), size)
    size = np.repeat(size, size)
    sel = (size > 1) & (mem != hub)
    return unique_pairs(hub[sel], mem[sel], size[sel], nodes)


def _buckets_ref(keys: np.ndarray, node: np.ndarray) -> dict[int, list[int]]:
    """The twins' buckets: key -> the nodes of its documents, in document order."""
    groups: dict[int, list[int]] = {}
    for d in range(keys.shape[0]):
        for k in keys[d]:
            groups.setdefault(int(k), []).append(int(node[d]))
    return groups


def _pairs_ref(best: dict[tuple[int, int], int]):
    """The twins' result: (lo, hi, size) arrays of the pairs, sorted."""
    pairs = sorted(best)
    return (np.array([p[0] for p in pairs], np.int64), np.array([p[1] for p in pairs], np.int64),
            np.array([best[p] for p in pairs], np.int64))


def star_pairs_ref(keys: np.ndarray, node: np.ndarray, nodes: int):
    """star_pairs spelled out: a dict of buckets, each member with its bucket's minimum."""
    best: dict[tuple[int, int], int] = {}
    for members in _buckets_ref(keys, node).values():
        if len(members) < 2:
            continue
        hub = min(members)
        for m in members:
            if m != hub:
                best[(hub, m)] = max(best.get((hub, m), 0), len(members))
    return _pairs_ref(best)


def buckets(keys: np.ndarray, node: np.ndarray):
    """The buckets of two or more documents: (members, starts, sizes), members in node order
    within each bucket, buckets in key order."""
    return buckets_flat(keys.reshape(-1), np.repeat(node, keys.shape[1]))


def buckets_flat(k: np.ndarray, mem: np.ndarray):
    """buckets() over flat (key, node) rows, one per document and band (the distributed path
    holds the rows of its share of the keys, not whole documents)."""
    o = np.lexsort((mem, k))
    k, mem = k[o], mem[o]
    starts = np.flatnonzero(np.r_[True, k[1:] != k[:-1]]) if len(k) else np.zeros(0, np.int64)
    sizes = np.diff(np.append(starts, len(k)))
    big = sizes > 1
    keep = np.repeat(big, sizes)
    mem = mem[keep]
    sizes = sizes[big]
    return mem, np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64), sizes


def unique_pairs(a: np.ndarray, b: np.ndarray, size: np.ndarray, nodes: int):
    """(lo, hi, size) once per distinct pair, sorted, with the largest size that links them."""
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    code = lo.astype(np.int64) * nodes + hi
    o = np.lexsort((size, code))
    code, size = code[o], size[o]
    last = np.r_[code[1:] != code[:-1], True] if len(code) else np.zeros(0, bool)
    code, size = code[last], size[last]
    return code // nodes, code % nodes, size


def capped_pairs(keys: np.ndarray, node: np.ndarray, nodes: int, cap: int):
    """Buckets of up to `cap` documents linked all to all, larger ones as stars to their
    smallest node: at most max(cap(cap-1)/2, k-1) pairs from a bucket of k. (lo, hi, size)."""
    return capped_pairs_flat(keys.reshape(-1), np.repeat(node, keys.shape[1]), nodes, cap)


def capped_pairs_flat(k: np.ndarray, node: np.ndarray, nodes: int, cap: int):
    """capped_pairs over flat (key, node) rows: every row of a key must be here."""
    mem, starts, sizes = buckets_flat(k, node)
    a, b, s = [], [], []
    star = sizes > cap
    if star.any():
        st, sz = starts[star], sizes[star]
        idx = np.repeat(st, sz - 1) + (np.arange(int((sz - 1).sum())) - np.repeat(np.cumsum(sz - 1) - (sz - 1), sz - 1)) + 1
        a.append(np.repeat(mem[st], sz - 1))
        b.append(mem[idx])
        s.append(np.repeat(sz, sz - 1))
    for m in np.unique(sizes[~star]):
        st = starts[sizes == m]
        block = mem[st[:, None] + np.arange(m)]  # (buckets, m)
        i, j = np.triu_indices(m, 1)
        a.append(block[:, i].reshape(-1))
        b.append(block[:, j].reshape(-1))
        s.append(np.full(len(st) * len(i), m))
    if not a:
        z = np.zeros(0, np.int64)
        return z, z, z
    return unique_pairs(np.concatenate(a), np.concatenate(b), np.concatenate(s), nodes)


def capped_pairs_ref(keys: np.ndarray, node: np.ndarray, nodes: int, cap: int):
    """capped_pairs spelled out over a dict of buckets."""
    best: dict[tuple[int, int], int] = {}
    for members in _buckets_ref(keys, node).values():
        m = sorted(members)
        if len(m) < 2:
            continue
        pairs = ([(m[i], m[j]) for i in range(len(m)) for j in range(i + 1, len(m))] if len(m) <= cap
                 else [(m[0], x) for x in m[1:]])
        for p in pairs:
            best[p] = max(best.get(p, 0), len(m))
    return _pairs_ref(best)
