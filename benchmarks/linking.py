"""How LSH buckets are linked into candidate pairs, measured without Spark: the stage's own
signing, bucket keys, Jaccard and union-find kernels, one linking rule at a time, each scored
against the exact truth.

`python -m benchmarks.linking [PATH]` (default: the family corpus of benchmarks/families.py).

Rules: `star` (today's: every member with its bucket's smallest id), `ceiling` (every pair
that shares a bucket: what any linking rule can reach with these bands), `iterated R` (the
members that fail the hub check form a new star under the smallest of them, up to R rounds),
`hubs H` (the H smallest ids of a bucket are all hubs), `cap C` (all pairs in buckets of up to
C documents, stars above).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq


def signed(texts, cfg=None, bands=None, rows=None):
    from thresher.kernels.minhash import permutations
    from thresher.stages import fuzzy_dedup as FD
    from thresher.stages.fuzzy_dedup.signing import sign

    cfg = cfg or FD.Config(seed=0)
    if bands is None:
        bands, rows = FD.lsh_params(cfg)
    a, b = permutations(cfg.num_perm, 0)
    has, off, h, sig, bk = sign(texts, cfg, a, b, bands, rows)
    return has, off, h, bk


def score(n, edges, truth, truth_root):
    """The components of `edges` scored as bench_dedup scores every tool."""
    from benchmarks.bench_dedup import quality
    from thresher.kernels.minhash import min_roots

    e = np.array(sorted(edges), np.int64).reshape(-1, 2)
    q = quality(min_roots(e[:, 0], e[:, 1], n), None, truth_root, truth)
    return {k: q[k] for k in ("pair_recall", "same_component_recall", "same_component_precision", "removed")}


def iterated(mem, starts, sizes, verified, rounds):
    """Iterated stars over the buckets (mem, starts, sizes): yields the pairs of each round;
    `verified(a, b)` says which pass."""
    bucket = np.repeat(np.arange(len(sizes)), sizes)
    live_mem, live_b = mem, bucket
    for _ in range(rounds):
        if len(live_mem) == 0:
            return
        first = np.r_[True, live_b[1:] != live_b[:-1]]
        cnt = np.diff(np.append(np.flatnonzero(first), len(live_b)))
        hub = np.repeat(live_mem[first], cnt)
        big = np.repeat(cnt > 1, cnt)
        sel = big & ~first
        a, b = hub[sel], live_mem[sel]
        ok = verified(a, b)
        yield a, b, ok
        fail = np.zeros(len(live_mem), bool)
        fail[np.flatnonzero(sel)[~ok]] = True
        live_mem, live_b = live_mem[fail], live_b[fail]


def measure(path: Path, threshold: float = 0.7, rules=None, bands=None, rows=None):
    from benchmarks.families import truth_pairs
    from thresher.kernels.lsh import buckets, capped_pairs, star_pairs, unique_pairs
    from thresher.kernels.minhash import jaccard_pairs, min_roots

    t = pq.read_table(path, columns=["id", "text"])
    order = pc.sort_indices(t.column("id")).to_numpy()
    t = t.take(pa.array(order))
    texts = t.column("text").combine_chunks()
    n = len(texts)
    t0 = time.perf_counter()
    truth = truth_pairs(texts.to_pylist(), threshold)
    t_truth = time.perf_counter() - t0
    tr = np.array(sorted(truth), np.int64).reshape(-1, 2)
    truth_root = min_roots(tr[:, 0], tr[:, 1], n)
    has, off, h, bk = signed(texts, bands=bands, rows=rows)
    node = has  # in id order already
    offs = np.append(off[has], off[-1])
    vals = h

    def sim(a, b):
        # Positions are documents; the sets of documents without shingles are empty.
        pos = np.searchsorted(has, a), np.searchsorted(has, b)
        return jaccard_pairs(offs, vals, pos[0], pos[1])

    def verified(a, b):
        return sim(a, b) >= threshold

    print(f"{path.name}: {n} docs, {len(truth)} true pairs in {len(np.unique(truth_root[tr.reshape(-1)]))} "
          f"true components (truth {t_truth:.1f} s); bucket keys {bk.shape}")
    mem, starts, sizes = buckets(bk, node)
    print(f"buckets of 2+: {len(sizes)}, largest {sizes.max()}, sizes>32: {(sizes > 32).sum()}, "
          f"sum k(k-1)/2 {int((sizes * (sizes - 1) // 2).sum())}")
    out = {}
    rules = rules or ["star", "ceiling", "iterated 2", "iterated 4", "hubs 2", "hubs 4", "cap 16", "cap 32",
                      "cap 32 + iterated 4"]
    for rule in rules:
        t0 = time.perf_counter()
        if rule == "star":
            a, b, _ = star_pairs(bk, node, n)
            ok = verified(a, b)
            pairs = len(a)
        elif rule == "ceiling":
            a, b, _ = capped_pairs(bk, node, n, 10**9)
            ok = verified(a, b)
            pairs = len(a)
        elif rule.startswith("iterated"):
            got = list(iterated(mem, starts, sizes, verified, int(rule.split()[1])))
            a = np.concatenate([g[0] for g in got])
            b = np.concatenate([g[1] for g in got])
            ok = np.concatenate([g[2] for g in got])
            a, b, _ = unique_pairs(a[ok], b[ok], np.zeros(int(ok.sum()), np.int64), n)
            pairs = sum(len(g[0]) for g in got)
            ok = np.ones(len(a), bool)
        elif rule.startswith("hubs"):
            hcount = int(rule.split()[1])
            bucket = np.repeat(np.arange(len(sizes)), sizes)
            rank = np.arange(len(mem)) - np.repeat(starts, sizes)
            aa, bb = [], []
            for r in range(hcount):
                hub_at = starts + r
                valid = sizes > r
                hub = np.full(len(sizes), -1)
                hub[valid] = mem[hub_at[valid]]
                hh = hub[bucket]
                sel = (hh >= 0) & (rank > r)
                aa.append(hh[sel])
                bb.append(mem[sel])
            a, b, _ = unique_pairs(np.concatenate(aa), np.concatenate(bb), np.zeros(sum(map(len, aa)), np.int64), n)
            ok = verified(a, b)
            pairs = len(a)
        elif rule.startswith("cap"):
            parts = rule.split()
            a, b, _ = capped_pairs(bk, node, n, int(parts[1]))
            ok = verified(a, b)
            pairs = len(a)
            if "iterated" in rule:
                bigs = sizes > int(parts[1])
                st = starts[bigs]
                sz = sizes[bigs]
                idx = np.repeat(st - np.cumsum(sz) + sz, sz) + np.arange(int(sz.sum()))
                got = list(iterated(mem[idx], np.concatenate([[0], np.cumsum(sz)[:-1]]), sz, verified,
                                    int(parts[-1])))[1:]
                if got:
                    pairs += sum(len(g[0]) for g in got)
                    a = np.concatenate([a[ok]] + [g[0][g[2]] for g in got])
                    b = np.concatenate([b[ok]] + [g[1][g[2]] for g in got])
                    ok = np.ones(len(a), bool)
        dt = time.perf_counter() - t0
        edges = set(zip(a[ok].tolist(), b[ok].tolist()))
        edges = {(min(x, y), max(x, y)) for x, y in edges}
        q = score(n, edges, truth, truth_root)
        q.update(verified_pairs=pairs, edges=len(edges), edge_recall=round(len(edges & truth) / len(truth), 4),
                 edge_precision=round(len(edges & truth) / max(1, len(edges)), 4), seconds=round(dt, 3))
        out[rule] = q
        print(f"{rule:>22}: {q}")
    return out


if __name__ == "__main__":
    from benchmarks.families import family_corpus

    p = Path(sys.argv[1]) if len(sys.argv) > 1 else family_corpus()
    br = sys.argv[2:4]
    measure(p, bands=int(br[0]) if br else None, rows=int(br[1]) if br else None)
