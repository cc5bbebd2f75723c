"""Runs in rensa's own virtualenv (benchmarks/peers.py): `python peer_rensa.py MODE NPZ OUT`.

The input holds the documents' shingle-hash sets as thresher makes them (`off`, `h`: CSR
offsets and uint64 hashes), so rensa and thresher sign exactly the same sets.
- signatures: rensa's bulk kernel `RMinHash.digest_matrix_from_flat_token_hashes`, median of 3
  (RAYON_NUM_THREADS decides its threads);
- lsh: signatures, RMinHashLSH (16 bands of 8 rows) insert and query, union-find: component
  root of every document and the candidate pairs (unverified), written to OUT.
"""

import json
import sys
import time

import numpy as np


def main(mode, npz, out):
    from rensa import RMinHash, RMinHashLSH

    z = np.load(npz)
    off, h = z["off"].astype(np.uint64), z["h"]
    if mode == "signatures":
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            RMinHash.digest_matrix_from_flat_token_hashes(h, off, 128, 0)
            times.append(time.perf_counter() - t0)
        print(json.dumps({"seconds": sorted(times)[1]}))
        return
    t0 = time.perf_counter()
    n = len(off) - 1
    hb = h.view("S8")  # 8-byte tokens (numpy drops trailing zero bytes: the same for every use of a hash)
    sets = [hb[off[i]:off[i + 1]].tolist() for i in range(n)]
    mh = RMinHash.from_token_sets(sets, 128, 0)
    lsh = RMinHashLSH(0.7, 128, 16)
    lsh.insert_pairs([(i, m) for i, m in enumerate(mh) if len(sets[i])])
    found = lsh.query_all(mh)
    # Its own union-find, not thresher's min_roots: this virtualenv has rensa, numpy and pyarrow
    # only (benchmarks/peers.py), and the union-find is part of the peer's timed pipeline.
    parent = list(range(n))

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    pairs = []
    for i, cand in enumerate(found):
        if not sets[i]:
            continue
        for j in cand:
            if j != i:
                a, b = find(i), find(j)
                if a != b:
                    parent[max(a, b)] = min(a, b)
                pairs.append((min(i, j), max(i, j)))
    roots = [find(i) for i in range(n)]
    seconds = time.perf_counter() - t0
    np.savez(out, roots=np.array(roots, np.int64), pairs=np.array(sorted(set(pairs)), np.int64).reshape(-1, 2))
    print(json.dumps({"seconds": seconds}))


if __name__ == "__main__":
    main(*sys.argv[1:4])
