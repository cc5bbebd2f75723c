"""The single-process curation script a user would write with the same libraries, for
`python -m benchmarks pipeline`: `python benchmarks/peer_pipeline.py INPUT OUTPUT BUDGET SEED K1 K2`.

Same steps as thresher's demo flow, in one process and in the libraries' plain forms:
exact dedup on a hash of the whitespace-normalised lowercase text; datasketch MinHash
(128 permutations, word 5-gram shingles) into MinHashLSH (threshold 0.7), every document
queried, union-find over the candidate pairs, the longest text kept per component (no
verification: what datasketch's examples do); `SentenceTransformer.encode` with its defaults;
faiss `Kmeans` at two levels (K1 clusters of the documents, K2 of the K1 centroids); a balanced
random sample of BUDGET documents in numpy (an equal share per top cluster, then per leaf);
the sample written as Parquet. Prints one JSON line: seconds per step and the process's peak RSS.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import resource
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main(src: str, dst: str, budget: int, seed: int, k1: int, k2: int) -> dict:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    steps: dict[str, float] = {}
    t = time.perf_counter()

    def step(name: str) -> None:
        nonlocal t
        now = time.perf_counter()
        steps[name] = round(now - t, 3)
        t = now

    table = pq.read_table(src, columns=["id", "text"])
    ids, texts = table.column("id").to_pylist(), table.column("text").to_pylist()
    step("read")

    seen, keep = {}, []
    for i, x in enumerate(texts):
        h = hashlib.md5(" ".join(x.lower().split()).encode()).digest()
        j = seen.get(h)
        if j is None:
            seen[h] = len(keep)
            keep.append(i)
        elif len(x) > len(texts[keep[j]]):
            keep[j] = i
    step("exact_dedup")

    from datasketch import MinHash, MinHashLSH

    word = re.compile(r"\w+")
    lsh = MinHashLSH(threshold=0.7, num_perm=128)
    sigs = []
    for pos, i in enumerate(keep):
        toks = word.findall(texts[i].lower())
        grams = {" ".join(toks[g:g + 5]).encode() for g in range(max(1, len(toks) - 4))}
        m = MinHash(num_perm=128, seed=seed)
        m.update_batch(list(grams))
        sigs.append(m)
        lsh.insert(pos, m)
    parent = list(range(len(keep)))

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for pos, m in enumerate(sigs):
        for other in lsh.query(m):
            ra, rb = find(pos), find(other)
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)
    best: dict[int, int] = {}
    for pos, i in enumerate(keep):
        r = find(pos)
        if r not in best or len(texts[i]) > len(texts[best[r]]):
            best[r] = i
    keep = sorted(best.values())
    del sigs, lsh
    step("fuzzy_dedup")

    from sentence_transformers import SentenceTransformer

    from thresher.stages import embed as embed_stage

    model = SentenceTransformer(str(embed_stage.resolve_model(embed_stage.DEFAULT_MODEL)[0]), device="cpu")
    vec = np.asarray(model.encode([texts[i] for i in keep]), dtype=np.float32)
    step("embed")

    import faiss

    km1 = faiss.Kmeans(vec.shape[1], k1, niter=20, seed=seed)
    km1.train(vec)
    leaf = km1.index.search(vec, 1)[1][:, 0]
    km2 = faiss.Kmeans(vec.shape[1], k2, niter=20, seed=seed)
    km2.train(km1.centroids)
    top_of_leaf = km2.index.search(km1.centroids, 1)[1][:, 0]
    step("cluster")

    rng = np.random.default_rng(seed)
    top = top_of_leaf[leaf]
    chosen: list[int] = []
    tops = np.unique(top)
    for ti, tc in enumerate(tops):
        share = budget // len(tops) + (1 if ti < budget % len(tops) else 0)
        leaves = np.unique(leaf[top == tc])
        for li, lc in enumerate(leaves):
            want = share // len(leaves) + (1 if li < share % len(leaves) else 0)
            members = np.flatnonzero(leaf == lc)
            chosen.extend(rng.permutation(members)[:want].tolist())
    step("sample")

    rows = [keep[c] for c in sorted(chosen)]
    os.makedirs(dst, exist_ok=True)
    pq.write_table(pa.table({"id": [ids[i] for i in rows], "text": [texts[i] for i in rows]}),
                   os.path.join(dst, "part-0.parquet"))
    step("export")
    return {"steps_s": steps, "docs_in": len(texts), "after_exact": len(seen), "after_fuzzy": len(keep),
            "sampled": len(rows), "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


if __name__ == "__main__":
    a = sys.argv[1:]
    print(json.dumps(main(a[0], a[1], int(a[2]), int(a[3]), int(a[4]), int(a[5]))), flush=True)
