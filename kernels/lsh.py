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
    code, size = hub[sel] * nodes + mem[sel], size[sel]
    o = np.lexsort((size, code))
    code, size = code[o], size[o]
    last = np.r_[code[1:] != code[:-1], True] if len(code) else np.zeros(0, bool)
    code, size = code[last], size[last]
    return code // nodes, code % nodes, size


def star_pairs_ref(keys: np.ndarray, node: np.ndarray, nodes: int):
    """star_pairs spelled out: a dict of buckets, each member with its bucket's minimum."""
    buckets: dict[int, list[int]] = {}
    for d in range(keys.shape[0]):
        for k in keys[d]:
            buckets.setdefault(int(k), []).append(int(node[d]))
    best: dict[tuple[int, int], int] = {}
    for members in buckets.values():
        if len(members) < 2:
            continue
        hub = min(members)
        for m in members:
            if m != hub:
                best[(hub, m)] = max(best.get((hub, m), 0), len(members))
    pairs = sorted(best)
    return (np.array([p[0] for p in pairs], np.int64), np.array([p[1] for p in pairs], np.int64),
            np.array([best[p] for p in pairs], np.int64))
