"""The distributed path: buckets, verification, components and survivors as Spark jobs."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from thresher.stages.arrow_bytes import binary_from_buffers, binary_values, ipc_buffer, ipc_table
from thresher.stages.fuzzy_dedup.results import component_stats, outputs, stage_stats
from thresher.stages.fuzzy_dedup.signing import SIGNED, sign_batches

if TYPE_CHECKING:
    from thresher.stages.fuzzy_dedup import Config


def reference_batches(cfg: Config, out_schema: pa.Schema, drop_reference: bool):
    """mapInArrow function over rows (g, id, s, *extra) sorted so that each group g is
    contiguous and its first row is the group's reference: yields (g, ref, id, *extra, j), j the
    similarity of the row's `s` to the reference's (exact Jaccard of the sets, or the share of
    agreeing signature values). With `drop_reference` the reference rows themselves are left out
    and each group must start with the row whose id is g (the LSH hub).

    A group may run across Arrow batches: its reference is carried to the next batch."""
    verify, num_perm = cfg.verify, cfg.num_perm

    def fn(batches):
        import pyarrow.compute as pc

        from thresher.kernels.minhash import jaccard_pairs, signature_agreement
        from thresher.kernels.threads import limit_task_threads
        from thresher.schemas.errors import StageError

        limit_task_threads()
        carry = None  # (g, reference id, reference values) of the last group seen
        for batch in batches:
            n = batch.num_rows
            if n == 0:
                continue
            g, ids = batch.column(0), batch.column(1)
            off, val = binary_values(batch.column(2), np.uint64 if verify else np.uint32)
            first = np.ones(n, bool)
            if n > 1:
                first[1:] = pc.not_equal(g.slice(1), g.slice(0, n - 1)).to_numpy(zero_copy_only=False)
            if carry is not None and g[0].as_py() == carry[0]:
                first[0] = False
            if drop_reference and first.any() and not pc.all(pc.equal(g.filter(first), ids.filter(first))).as_py():
                raise StageError("fuzzy_dedup: a candidate group does not start with its hub")
            ref = np.maximum.accumulate(np.where(first, np.arange(n), -1))
            cont = ref < 0
            ref_ids = ids
            if cont.any():  # the rows before the first group start belong to the carried group
                ref[cont] = n
                off = np.append(off, off[-1] + len(carry[2]))
                val = np.concatenate([val, carry[2]])
                ref_ids = pa.concat_arrays([ids, pa.array([carry[1]], ids.type)])
            rows = np.arange(n)
            if verify:
                j = jaccard_pairs(off, val, ref, rows)
            else:
                sig = val.reshape(-1, num_perm)
                j = signature_agreement(sig[ref], sig[rows])
            r = int(ref[-1])
            carry = (g[n - 1].as_py(), ref_ids[r].as_py(), val[off[r]:off[r + 1]].copy())
            cols = [g, ref_ids.take(pa.array(ref)), ids] + [batch.column(k) for k in range(3, batch.num_columns)]
            out = pa.RecordBatch.from_arrays(cols + [pa.array(j)], schema=out_schema)
            yield out.filter(pa.array(~first)) if drop_reference else out

    return fn


def with_reference(frame, cfg: Config, drop_reference: bool):
    """(g, id, s, *extra), each group contiguous and led by its reference -> (g, ref, id, *extra, j)."""
    from pyspark.sql import functions as F
    from pyspark.sql.pandas.types import from_arrow_schema, to_arrow_schema

    extra = frame.columns[3:]
    out = to_arrow_schema(frame.select("g", F.col("id").alias("ref"), "id", *extra, F.lit(0.0).alias("j")).schema)
    return frame.mapInArrow(reference_batches(cfg, out, drop_reference), from_arrow_schema(out))


# Rows that carry a share of a table between tasks: q the share's partition label, x the rows
# as an Arrow IPC stream. Spark moves a few large values instead of a row per document or pair.
BLOBS = "q int, x binary"
_BLOB_BYTES = 64 << 20  # at most this much a value (a Spark row holds under 2 GB)


def _murmur3_int(v: int, seed: int = 42) -> int:
    """Spark's hash() of an int column (Murmur3_x86_32.hashInt), which its hash partitioning
    takes modulo the partition count."""
    def rotl(x: int, r: int) -> int:
        return ((x << r) | (x >> (32 - r))) & 0xFFFFFFFF

    k1 = rotl((v & 0xFFFFFFFF) * 0xCC9E2D51 & 0xFFFFFFFF, 15) * 0x1B873593 & 0xFFFFFFFF
    h1 = (rotl(seed ^ k1, 13) * 5 + 0xE6546B64) & 0xFFFFFFFF
    h1 ^= 4
    h1 ^= h1 >> 16
    h1 = h1 * 0x85EBCA6B & 0xFFFFFFFF
    h1 ^= h1 >> 13
    h1 = h1 * 0xC2B2AE35 & 0xFFFFFFFF
    h1 ^= h1 >> 16
    return h1 - (1 << 32) if h1 >= 1 << 31 else h1


def partition_labels(parts: int) -> list[int]:
    """label[t]: an int that `repartition(parts, col)` sends to partition t, so `parts` shares
    land in `parts` different tasks (the plain labels 0..parts-1 collide: about a third of the
    partitions would stay empty and others do two shares' work)."""
    label, v = [-1] * parts, 0
    while min(label) < 0:
        t = _murmur3_int(v) % parts
        if label[t] < 0:
            label[t] = v
        v += 1
    return label


def _blob_rows(tables, label):
    """BLOBS batches from (share, table) items: each table as IPC streams of at most
    _BLOB_BYTES under its share's label, batches under 1 GB (a binary column's offsets are
    32-bit)."""
    qs, xs, size = [], [], 0
    for share, t in tables:
        if t.num_rows == 0:
            continue
        step = max(1, int(t.num_rows * _BLOB_BYTES // max(1, t.nbytes)))
        for lo in range(0, t.num_rows, step):
            x = np.frombuffer(ipc_buffer(t.slice(lo, step)), np.uint8)
            if xs and size + len(x) > 1 << 30:
                yield _blob_batch(qs, xs)
                qs, xs, size = [], [], 0
            qs.append(int(label[share]))
            xs.append(x)
            size += len(x)
    if xs:
        yield _blob_batch(qs, xs)


def _blob_batch(qs: list[int], xs: list[np.ndarray]) -> pa.RecordBatch:
    off = np.zeros(len(xs) + 1, np.int64)
    np.cumsum([len(x) for x in xs], out=off[1:])
    return pa.RecordBatch.from_arrays([pa.array(qs, pa.int32()), binary_from_buffers(off, np.concatenate(xs))],
                                      names=["q", "x"])


def _blob_tables(batches):
    """The tables carried by BLOBS rows."""
    for batch in batches:
        for x in batch.column(1):
            yield ipc_table(x.as_buffer())


def _shares(starts: np.ndarray, n: np.ndarray) -> np.ndarray:
    """The share of each document number: shares are ranges of numbers beginning at `starts`."""
    return np.searchsorted(starts, n, side="right") - 1


def _split(table: pa.Table, share: np.ndarray) -> list[tuple[int, pa.Table]]:
    """(share, its rows of `table`) for each share present, in share order."""
    o = np.argsort(share, kind="stable")
    s = share[o]
    cut = np.flatnonzero(np.r_[True, s[1:] != s[:-1]]) if len(s) else np.zeros(0, np.int64)
    t = table.take(pa.array(o))
    ends = np.append(cut[1:], len(s))
    return [(int(s[c]), t.slice(int(c), int(e - c))) for c, e in zip(cut, ends)]


def set_blobs(starts: np.ndarray, label):
    """mapInArrow function: (n, id, s) -> BLOBS of each row's share (its range of numbers)."""

    def fn(batches):
        for batch in batches:
            if batch.num_rows:
                t = pa.Table.from_batches([batch])
                yield from _blob_rows(_split(t, _shares(starts, batch.column(0).to_numpy())), label)

    return fn


def key_batches(label):
    """mapInArrow function: (n, bk) -> BLOBS of (k, n) rows, one per document and band, cut
    into len(label) shares by bucket key: every row of a bucket lands in the same share."""
    parts = len(label)

    def fn(batches):
        import pyarrow.compute as pc

        for batch in batches:
            if batch.num_rows == 0:
                continue
            bk = batch.column(1)
            k = pc.list_flatten(bk).to_numpy()
            n = np.repeat(batch.column(0).to_numpy(), pc.list_value_length(bk).to_numpy())
            share = (k.view(np.uint64) % np.uint64(parts)).astype(np.int64)
            yield from _blob_rows(_split(pa.table({"k": k, "n": n}), share), label)

    return fn


def pair_batches(cap: int, starts: np.ndarray, label):
    """mapInArrow function over the key shares, each share whole in one task: its buckets'
    candidate pairs (a, b, size) (kernels/lsh.capped_pairs_flat, as the one-task path links
    them: a < b by number, so by id), as BLOBS of the share of b."""

    def fn(batches):
        from thresher.kernels.lsh import capped_pairs_flat

        tables = list(_blob_tables(batches))
        if not tables:
            return
        t = pa.concat_tables(tables)
        n = t.column("n").to_numpy()
        a, b, size = capped_pairs_flat(t.column("k").to_numpy(), n, int(n.max(initial=0)) + 1, cap)
        yield from _blob_rows(_split(pa.table({"a": a, "b": b, "size": size}), _shares(starts, b)), label)

    return fn


def _sets_and_rest(batches, kind: str):
    """Split a task's BLOBS into the per-document rows (n, id, s) it holds, sorted by n, and
    the pairs (a, b, size)."""
    sets, rest = [], []
    for t in _blob_tables(batches):
        (sets if t.schema.names[0] == "n" else rest).append(t)
    if not rest:
        return None, None
    if not sets:
        from thresher.schemas.errors import StageError

        raise StageError(f"fuzzy_dedup: {kind} without the documents they name")
    s = pa.concat_tables(sets)
    s = s.take(pa.array(np.argsort(s.column("n").to_numpy(), kind="stable")))
    return s, pa.concat_tables(rest)


def _locate(sets: pa.Table, n: np.ndarray) -> np.ndarray:
    have = sets.column("n").to_numpy()
    i = np.searchsorted(have, n)
    if len(n) and (i.max() >= len(have) or not np.array_equal(have[i], n)):
        from thresher.schemas.errors import StageError

        raise StageError("fuzzy_dedup: a candidate pair names a document its task does not hold")
    return i


def gather_batches(starts: np.ndarray, label):
    """mapInArrow function over a share of documents and the pairs whose b lies in it: each
    distinct pair once (with the largest bucket that links it), as BLOBS of the share of a,
    and with them the rows (n, id, s) of the b's that share does not hold, each once."""

    def fn(batches):
        from thresher.kernels.lsh import unique_pairs

        sets, pairs = _sets_and_rest(batches, "candidate pairs")
        if pairs is None:
            return
        a, b = pairs.column("a").to_numpy(), pairs.column("b").to_numpy()
        a, b, size = unique_pairs(a, b, pairs.column("size").to_numpy(), int(max(a.max(), b.max())) + 1)
        own = int(_shares(starts, sets.column("n").to_numpy()[:1])[0])
        out = []
        for d, t in _split(pa.table({"a": a, "b": b, "size": size}), _shares(starts, a)):
            out.append((d, t))
            if d != own:
                out.append((d, sets.take(pa.array(_locate(sets, np.unique(t.column("b").to_numpy()))))))
        yield from _blob_rows(out, label)

    return fn


def score_batches(cfg: Config):
    """mapInArrow function over a share of documents, the pairs whose a lies in it and the rows
    of their b's from other shares: (a, b, size, j) by id, j the exact Jaccard of the sets (or
    the signatures' agreement)."""
    verify, num_perm = cfg.verify, cfg.num_perm

    def fn(batches):
        from thresher.kernels.minhash import jaccard_pairs, signature_agreement
        from thresher.kernels.threads import limit_task_threads

        limit_task_threads()
        sets, pairs = _sets_and_rest(batches, "gathered pairs")
        if pairs is None:
            return
        ia = _locate(sets, pairs.column("a").to_numpy())
        ib = _locate(sets, pairs.column("b").to_numpy())
        off, val = binary_values(sets.column("s"), np.uint64 if verify else np.uint32)
        if verify:
            j = jaccard_pairs(off, val, ia, ib)
        else:
            sig = val.reshape(-1, num_perm)
            j = signature_agreement(sig[ia], sig[ib])
        ids = sets.column("id")
        out = pa.table({"a": ids.take(pa.array(ia)), "b": ids.take(pa.array(ib)), "size": pairs.column("size"),
                        "j": pa.array(j)})
        yield from out.to_batches(max_chunksize=65536)

    return fn


def run_distributed(docs, tables, cfg: Config, bands: int, rows: int, has_quality: bool, n_docs: int):
    """Steps 1-5 as Spark jobs: (the stage's outputs, the scored candidate pairs (a, b, size, j))."""
    from pyspark.sql import functions as F

    from thresher.stages.against import placed, rank_column
    from thresher.stages.components import connected_components, materialise, rank_key, with_quality

    reliable = cfg.checkpoint == "reliable"
    parts = max(int(docs.sparkSession.conf.get("spark.sql.shuffle.partitions")), -(-n_docs // cfg.task_docs))
    label = partition_labels(parts)
    # 1. One pass over the texts, in id order: the documents are range-partitioned and sorted by
    # id first (moving the texts is cheaper than joining numbers onto the signed rows), so each
    # document's number n -- its rank in id order -- is its partition's offset plus its place
    # there. The per-document table is read four times (shares of sets and of bucket keys,
    # survivors), so it is cached the first time it is computed.
    t0 = time.perf_counter()
    signed = placed(docs.select("id", "text").repartitionByRange(parts, "id").sortWithinPartitions("id")
                    .mapInArrow(sign_batches(cfg, bands, rows), SIGNED)).persist()
    n, starts = rank_column(signed)

    # 2. Buckets: each (bucket key, n) row goes to the task that owns its key's share, which
    # links its buckets as the one-task path does (kernels/lsh.capped_pairs_flat): up to
    # `bucket_all_pairs` documents all to all, larger buckets as stars to their smallest number,
    # that is their smallest id. Keys of different bands are different hashes, so the key alone
    # names the bucket.
    cap = max(1, cfg.bucket_all_pairs)
    shares = materialise(signed.select(n, "id", "s").mapInArrow(set_blobs(starts, label), BLOBS), reliable)
    pairs = (signed.select(n, "bk").mapInArrow(key_batches(label), BLOBS)
             .repartition(parts, "q").mapInArrow(pair_batches(cap, starts, label), BLOBS))

    # 3. Verification (or estimates) in two hops over the shares of documents, each a range of
    # numbers: the pairs go to b's share, where each distinct pair is kept once; then to a's
    # share, with the rows (id, set) of those b's it does not hold, each once per share. There
    # the kernel compares the two sets. No row per pair passes through Spark's row format, and
    # a set travels at most once to each other share that needs it (near-duplicates whose ids
    # sort close together, as URLs of one site do, often need no travel at all).
    gathered = (shares.unionByName(pairs).repartition(parts, "q")
                .mapInArrow(gather_batches(starts, label), BLOBS))
    scored = shares.unionByName(gathered).repartition(parts, "q").mapInArrow(
        score_batches(cfg), "a string, b string, size long, j double")
    scored = materialise(scored, reliable)
    t1 = time.perf_counter()
    agg = scored.agg(F.count(F.lit(1)).alias("n"), F.sum((F.col("j") >= cfg.threshold).cast("long")).alias("ok"),
                     F.max("size").alias("biggest")).collect()[0]
    n_cand, n_ok, biggest = int(agg["n"]), int(agg["ok"] or 0), int(agg["biggest"] or 0)
    edges = scored.where(F.col("j") >= F.lit(cfg.threshold)) if cfg.verify else scored
    t2 = time.perf_counter()

    # 4. Components, 5. survivors: each component's members sorted by the survivor rule, the
    # survivor first, and every member compared with it by the same kernel.
    n_edges = n_ok if cfg.verify else n_cand
    labels, rounds = connected_components(edges.select("a", "b"), "a", "b", cfg.max_cc_rounds, reliable,
                                          contract_partitions=max(1, -(-n_edges // cfg.cc_task_edges)))
    t3 = time.perf_counter()
    # Components hold at most 2 x edges nodes: while that is small, the labels go to every
    # task and the per-document table is read where it lies instead of shuffled by id.
    if 2 * n_edges <= cfg.broadcast_labels:
        labels = F.broadcast(labels)
    members = labels.join(signed.select(F.col("id").alias("node"), "_length", "s"), "node").select(
        F.col("node").alias("id"), F.col("label").alias("g"), "_length", "s")
    members, _ = with_quality(members, docs, tables, cfg.survivor)
    ranked = (members.withColumn("_rk", rank_key(cfg.survivor, has_quality))
              .repartition("g").sortWithinPartitions("g", "_rk").select("g", "id", "s"))
    sims = with_reference(ranked, cfg, drop_reference=False)
    is_rep = F.col("ref") == F.col("id")
    dups = sims.select(
        "id", F.col("g").alias("component_id"), F.col("ref").alias("representative_id"),
        is_rep.alias("is_representative"), F.when(is_rep, F.lit(1.0)).otherwise(F.col("j")).alias("similarity"),
    )
    dups = materialise(dups, reliable)
    signed.unpersist()
    t4 = time.perf_counter()
    comp = component_stats(dups)
    stats = stage_stats(cfg, bands, rows, n_cand, n_ok, biggest, rounds, comp)
    stats["step_s"] = {"signatures_buckets_verify": round(t1 - t0, 3), "pair_counts": round(t2 - t1, 3),
                       "components": round(t3 - t2, 3), "survivors": round(t4 - t3, 3),
                       "stats": round(time.perf_counter() - t4, 3)}
    return outputs(docs, dups, stats, cfg), scored
