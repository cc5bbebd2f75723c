"""fuzzy_dedup: MinHash/LSH near-duplicate removal, verified, with distributed components.

1. One pass over the texts (mapInArrow, numba kernels of kernels/minhash.py): normalise,
   shingle, sign, band; one row per document with shingles: (id, length, its sorted shingle-hash
   set as bytes, its LSH bucket keys). Cached: buckets, verification and survivors read it.
2. Spark groups the exploded bucket keys. Every member of a bucket is linked to the bucket's
   smallest id (a star), so a bucket of k documents yields k-1 candidate pairs, never k(k-1)/2.
3. Verification (default): each hub's candidates are gathered with their sets, hub first, and
   the exact Jaccard of each with the hub comes from one kernel call per Arrow batch; pairs
   below `threshold` are dropped and counted.
4. Connected components of the verified pairs (stages/components.py): each partition's edges
   contracted in its executor (union-find over that partition), then large-star/small-star
   rounds, one Spark job each, for what spans partitions; up to `cc_task_edges` verified
   edges sit in one partition and need no round.
5. One survivor per component by `survivor` (ties by id): members sorted by the rule, the
   survivor first, each compared with it by the same kernel; the others go to `removed` with
   reason `near_duplicate`, by_id the survivor, score their Jaccard with it.

Inputs of up to `one_task_docs` documents and `one_task_bytes` of text take all five steps in one executor task instead
(one_task_batches, the same kernels, the same result): on a small corpus the shuffles and
Spark jobs of the distributed path cost more than the work they spread.

Per document, the driver receives at most the component labels of up to `broadcast_labels`
nodes (or the ids of as many removed documents), for a broadcast join; otherwise counts and the
LSH parameters only.
"""

from __future__ import annotations

import time
from typing import Literal

import numpy as np
import pyarrow as pa
from pydantic import Field, model_validator

from thresher.stages.base import StageConfig, StageSpec
from thresher.schemas.errors import ConfigError
from thresher.stages.arrow_bytes import binary_from_buffers, binary_values
from thresher.stages.text import NormaliseConfig, ShingleConfig

NAME = "fuzzy_dedup"


class Config(StageConfig):
    normalise: NormaliseConfig = Field(default_factory=NormaliseConfig)
    shingle: ShingleConfig = Field(default_factory=ShingleConfig)
    threshold: float = Field(0.7, gt=0.0, le=1.0)
    num_perm: int = Field(128, ge=2, le=1024)
    # Weights datasketch's optimiser gives to the false positive and false negative
    # probability areas when it picks bands x rows. Verification removes false positives, so
    # missing a pair costs more than checking one: 0.1/0.9 gives 20 x 6 at 0.7 (datasketch's
    # own 0.5/0.5 gives 14 x 9, which finds a pair at exactly 0.7 only 44% of the time).
    false_positive_weight: float = Field(0.1, ge=0.0, le=1.0)
    false_negative_weight: float = Field(0.9, ge=0.0, le=1.0)
    # Set both to override the optimiser.
    bands: int | None = Field(None, ge=1)
    rows: int | None = Field(None, ge=1)
    # Exact Jaccard of every candidate pair; off: MinHash estimates, no pair dropped.
    verify: bool = True
    survivor: Literal["longest", "quality", "smallest_id"] = "longest"
    max_cc_rounds: int = Field(64, ge=1)
    # Verified edges per connected-components contraction task (one Python worker holds that
    # many id pairs: about 340 MB at a million); up to this many edges, components need no
    # distributed round at all.
    cc_task_edges: int = Field(1_000_000, ge=1)
    # Largest node count whose component labels are broadcast to the survivor join. A broadcast
    # passes through the driver (about 60 bytes a node with Debian-like ids), so this caps what
    # the driver holds; above it the join shuffles instead.
    broadcast_labels: int = Field(200_000, ge=0)
    # local: intermediate tables live on the executors (fast); reliable: also written to the
    # checkpoint folder, so a lost executor does not lose them (clusters).
    checkpoint: Literal["local", "reliable"] = "local"
    # Up to this many documents, the whole dedup runs in one executor task (one Python worker
    # holds every document's shingle set and bucket keys: about 0.8 KB a Debian document), with
    # the same result as the distributed path and without its shuffles and jobs. 0: never.
    one_task_docs: int = Field(100_000, ge=0)
    # ... and at most this many bytes of text (UTF-8): the one task's memory grows with the words,
    # not the documents (64k Debian descriptions are 26 MB and peak at about 0.5 GB in the worker).
    one_task_bytes: int = Field(64 << 20, ge=0)

    @model_validator(mode="after")
    def _check(self):
        if (self.bands is None) != (self.rows is None):
            raise ValueError("bands and rows: set both or neither")
        if self.bands is not None and self.bands * self.rows > self.num_perm:
            raise ValueError(f"bands x rows = {self.bands * self.rows} exceeds num_perm = {self.num_perm}")
        if abs(self.false_positive_weight + self.false_negative_weight - 1.0) > 1e-9:
            raise ValueError("false_positive_weight + false_negative_weight must be 1")
        return self


def lsh_params(cfg: Config) -> tuple[int, int]:
    """(bands, rows): the config's, or datasketch's optimum for the threshold and weights."""
    if cfg.bands is not None:
        return cfg.bands, cfg.rows
    from datasketch.lsh import _optimal_param

    b, r = _optimal_param(cfg.threshold, cfg.num_perm, cfg.false_positive_weight, cfg.false_negative_weight)
    return int(b), int(r)


# ------------------------------------------------------------------------------------ executors
# Per-document table made in one pass over the texts: `s` is the sorted shingle-hash set as
# uint64 bytes (verify) or the uint32 signature (no verify), `bk` the LSH bucket keys.
SIGNED = "id string, _length int, s binary, bk array<bigint>"
_MAX_BINARY = 2**31 - 1  # bytes of one Arrow binary column (int32 offsets)


def _row_chunks(byte_off: np.ndarray):
    """Row ranges whose bytes fit one binary column (a batch of huge documents is split)."""
    lo, n = 0, len(byte_off) - 1
    while lo < n:
        hi = int(np.searchsorted(byte_off, byte_off[lo] + _MAX_BINARY, side="right")) - 1
        if hi <= lo:
            from thresher.schemas.errors import StageError

            raise StageError("fuzzy_dedup: one document has more than 2 GiB of shingle hashes")
        hi = min(hi, n)
        yield lo, hi
        lo = hi


def _sign(text, cfg: Config, a, b, bands: int, rows: int):
    """One Arrow batch of texts -> (has: rows with shingles, off, h: the shingle sets (verify)
    or hashes of every row, sig, bk: signatures and bucket keys of the rows in `has`)."""
    from thresher.kernels.minhash import band_hashes, minhash_signatures, seed64
    from thresher.stages.text import shingle_hashes, shingle_sets

    # A multiset has the signature of its set, so signatures come from the sets when the sets
    # are kept anyway.
    off, h = (shingle_sets if cfg.verify else shingle_hashes)(text, cfg.shingle, cfg.normalise)
    has = np.flatnonzero(np.diff(off) > 0)
    if len(has) == 0:
        return has, off, h, None, None
    sig = minhash_signatures(off, h, a, b)[has]
    return has, off, h, sig, band_hashes(sig, bands, rows, seed64(int(cfg.seed or 0)))


def sign_batches(cfg: Config, bands: int, rows: int):
    """mapInArrow function: (id, text) -> one row per document that has shingles: (id, its
    length in characters, `s`, its `bands` bucket keys). Normalising, shingling, signatures and
    band hashes all happen here, once per document."""
    num_perm, seed, verify = cfg.num_perm, int(cfg.seed or 0), cfg.verify

    def fn(batches):
        import pyarrow.compute as pc

        from thresher.kernels.threads import limit_task_threads
        from thresher.kernels.minhash import permutations

        limit_task_threads()
        a, b = permutations(num_perm, seed)
        for batch in batches:
            text = batch.column(1)
            has, off, h, sig, bk = _sign(text, cfg, a, b, bands, rows)
            if len(has) == 0:
                continue
            if verify:
                # Documents without shingles hold no values, so the kept sets stay contiguous.
                byte_off = np.append(off[has], off[-1]) * 8
                data = h.view(np.uint8)
            else:
                byte_off = np.arange(len(has) + 1, dtype=np.int64) * (num_perm * 4)
                data = sig.reshape(-1).view(np.uint8)
            ids = batch.column(0).take(pa.array(has))
            length = pc.fill_null(pc.utf8_length(text), 0).take(pa.array(has)).cast(pa.int32())
            for lo, hi in _row_chunks(byte_off):
                s = binary_from_buffers(byte_off[lo:hi + 1] - byte_off[lo], data[byte_off[lo]:byte_off[hi]])
                keys = pa.ListArray.from_arrays(pa.array(np.arange(hi - lo + 1, dtype=np.int32) * bands),
                                                pa.array(bk[lo:hi].reshape(-1)))
                yield pa.RecordBatch.from_arrays([ids.slice(lo, hi - lo), length.slice(lo, hi - lo), s, keys],
                                                 names=["id", "_length", "s", "bk"])

    return fn


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

        from thresher.schemas.errors import StageError
        from thresher.kernels.threads import limit_task_threads
        from thresher.kernels.minhash import jaccard_pairs, signature_agreement

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


# ------------------------------------------------------------------------------------ one task
# Rows of the one-task path, three tables in one: t=0 a member of a component (a: id, b: its
# component id, c: its representative, n: the component's size, j: similarity to the
# representative), t=1 a candidate pair (a: hub, b: member, n: bucket size, j: similarity),
# t=2 a count for the stats (a: name, n: value).
ONE_TASK = pa.schema([("t", pa.int8()), ("a", pa.string()), ("b", pa.string()), ("c", pa.string()),
                      ("n", pa.int64()), ("j", pa.float64())])


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


def bin_label(e: int) -> str:
    """The power-of-two bin of component sizes 2^(e-1)+1 .. 2^e: "2", "3-4", "5-8", ..."""
    lo, hi = 2 ** (e - 1) + 1, 2 ** e
    return str(hi) if lo >= hi else f"{lo}-{hi}"


def size_bins(sizes) -> dict:
    """Component sizes (>= 2) in power-of-two bins, {"2": n, "3-4": n, "5-8": n, ...}."""
    # ceil(log2) as component_stats computes it in Spark (exact at the powers of two).
    e = np.ceil(np.log2(np.asarray(sizes, dtype=np.float64))).astype(np.int64)
    return {bin_label(int(k)): int(c) for k, c in zip(*np.unique(e, return_counts=True))}


def one_task_batches(cfg: Config, bands: int, rows: int):
    """mapInArrow function for the whole corpus in one task: (id, text[, _quality]) -> rows of
    ONE_TASK. Signs every document as sign_batches does, then buckets (star_pairs), verifies
    each pair with the same Jaccard kernel, labels components by the same union-find kernel
    (nodes numbered in id order, so each root is its component's smallest id) and ranks each
    component by the survivor rule, ties by id: what the distributed path computes, row for row."""
    num_perm, seed, verify, survivor, threshold = cfg.num_perm, int(cfg.seed or 0), cfg.verify, cfg.survivor, cfg.threshold

    def stat_rows(stats: dict):
        k = len(stats)
        return pa.RecordBatch.from_arrays(
            [pa.array(np.full(k, 2, np.int8)), pa.array(list(stats), pa.string()), pa.nulls(k, pa.string()),
             pa.nulls(k, pa.string()), pa.array(list(stats.values()), pa.int64()), pa.nulls(k, pa.float64())],
            schema=ONE_TASK)

    def fn(batches):
        import pyarrow.compute as pc

        from thresher.kernels.threads import limit_task_threads
        from thresher.kernels.minhash import jaccard_pairs, min_roots, permutations, signature_agreement

        limit_task_threads()
        a, b = permutations(num_perm, seed)
        ids, lengths, quality, starts, values, keys = [], [], [], [], [], []
        base = 0
        for batch in batches:
            text = batch.column(1)
            has, off, h, sig, bk = _sign(text, cfg, a, b, bands, rows)
            if len(has) == 0:
                continue
            take = pa.array(has)
            ids.append(batch.column(0).take(take))
            lengths.append(pc.fill_null(pc.utf8_length(text), 0).take(take).to_numpy(zero_copy_only=False))
            if survivor == "quality":
                quality.append(batch.column(2).take(take).cast(pa.float64()))
            keys.append(bk)
            if verify:  # documents without shingles hold no values: the kept sets stay contiguous
                starts.append(off[has] + base)
                base += len(h)
                values.append(h)
            else:
                values.append(sig)
        if not ids:
            yield stat_rows({"documents": 0})
            return
        ids = pa.concat_arrays(ids)
        n = len(ids)
        if verify:
            off, val = np.append(np.concatenate(starts), base), np.concatenate(values)
        else:
            sig = np.concatenate(values)

        def sim(x, y):
            return jaccard_pairs(off, val, x, y) if verify else signature_agreement(sig[x], sig[y])

        doc = pc.sort_indices(ids).to_numpy()  # node number -> document; Arrow and Spark order strings alike
        node = np.empty(n, np.int64)
        node[doc] = np.arange(n)
        hub, mem, size = star_pairs(np.concatenate(keys), node, n)
        j = sim(doc[hub], doc[mem])
        edge = j >= threshold if verify else np.ones(len(j), bool)
        stats = {"documents": n, "candidate_pairs": len(j), "verified_pairs": int(edge.sum()),
                 "largest_bucket": int(size.max(initial=0))}
        yield pa.RecordBatch.from_arrays([pa.array(np.ones(len(j), np.int8)), ids.take(pa.array(doc[hub])),
                                          ids.take(pa.array(doc[mem])), pa.nulls(len(j), pa.string()),
                                          pa.array(size), pa.array(j)], schema=ONE_TASK)
        root = min_roots(hub[edge], mem[edge], n)
        member = np.flatnonzero(np.bincount(root, minlength=n)[root] >= 2)
        if len(member):
            d = doc[member]
            if survivor == "longest":
                key = -np.concatenate(lengths)[d].astype(np.float64)
            elif survivor == "quality":
                q = pa.concat_arrays(quality).take(pa.array(d))
                # Highest first, unscored after every score (as rank_key orders them).
                key = np.where(q.is_null().to_numpy(zero_copy_only=False), np.inf,
                               -pc.fill_null(q, 0.0).to_numpy(zero_copy_only=False))
            else:
                key = np.zeros(len(d))
            o = np.lexsort((member, key, root[member]))
            member, r = member[o], root[member][o]
            first = np.flatnonzero(np.r_[True, r[1:] != r[:-1]])
            sizes = np.diff(np.append(first, len(member)))
            rep = np.repeat(member[first], sizes)
            s = sim(doc[rep], doc[member])
            s[first] = 1.0
            yield pa.RecordBatch.from_arrays(
                [pa.array(np.zeros(len(member), np.int8)), ids.take(pa.array(doc[member])), ids.take(pa.array(doc[r])),
                 ids.take(pa.array(doc[rep])), pa.array(np.repeat(sizes, sizes)), pa.array(s)], schema=ONE_TASK)
            stats.update(components=len(sizes), docs_in_components=len(member),
                         **{f"size {k}": v for k, v in size_bins(sizes).items()})
        yield stat_rows(stats)

    return fn


def _with_reference(frame, cfg: Config, drop_reference: bool):
    """(g, id, s, *extra), each group contiguous and led by its reference -> (g, ref, id, *extra, j)."""
    from pyspark.sql import functions as F
    from pyspark.sql.pandas.types import from_arrow_schema, to_arrow_schema

    extra = frame.columns[3:]
    out = to_arrow_schema(frame.select("g", F.col("id").alias("ref"), "id", *extra, F.lit(0.0).alias("j")).schema)
    return frame.mapInArrow(reference_batches(cfg, out, drop_reference), from_arrow_schema(out))


def component_stats(dups) -> dict:
    """Components, documents in them, and component sizes in power-of-two bins
    ({"2": n, "3-4": n, "5-8": n, ...}), in one small aggregate."""
    from pyspark.sql import functions as F

    sizes = dups.groupBy("component_id").count()
    rows = (sizes.withColumn("e", F.ceil(F.log2(F.col("count").cast("double"))).cast("int"))
            .groupBy("e").agg(F.count(F.lit(1)).alias("components"), F.sum("count").alias("docs")).collect())
    hist, comps, docs = {}, 0, 0
    for r in sorted(rows, key=lambda r: r["e"]):
        hist[bin_label(r["e"])] = int(r["components"])
        comps += int(r["components"])
        docs += int(r["docs"])
    return {"components": comps, "docs_in_components": docs, "docs_removed": docs - comps, "component_sizes": hist}


# ------------------------------------------------------------------------------------ stage
def run(spark, tables, cfg: Config, ctx):
    out = run_with_pairs(spark, tables, cfg)[0]
    out.pop("documents")  # the runner derives the kept documents from `removed`
    return out


def run_with_pairs(spark, tables, cfg: Config):
    """The stage's result and its scored candidate pairs (a, b, size, j) for inspection: the
    pairs with j >= threshold are the verified edges of the components."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    from thresher.stages.components import connected_components, materialise, rank_key, with_quality

    bands, rows = lsh_params(cfg)
    if bands * rows > cfg.num_perm:
        raise ConfigError(f"fuzzy_dedup: bands x rows = {bands * rows} exceeds num_perm = {cfg.num_perm}")
    docs = tables["documents"]
    has_quality = tables.get("quality") is not None or "quality" in docs.columns
    if cfg.survivor == "quality" and not has_quality:
        raise ConfigError("fuzzy_dedup.survivor: 'quality' needs a quality table from an earlier stage (or a `quality` column)")
    reliable = cfg.checkpoint == "reliable"
    if cfg.one_task_docs and cfg.one_task_bytes:
        size = docs.agg(F.count(F.lit(1)).alias("n"), F.sum(F.octet_length("text")).alias("b")).first()
        if size["n"] <= cfg.one_task_docs and (size["b"] or 0) <= cfg.one_task_bytes:
            return _run_one_task(docs, tables, cfg, bands, rows, reliable)

    # 1. One pass over the texts; the per-document table is read three times (buckets,
    # verification, survivors), so it is cached the first time it is computed.
    signed = docs.select("id", "text").mapInArrow(sign_batches(cfg, bands, rows), SIGNED).persist()

    # 2. Buckets: every member of a bucket with two or more documents is linked to the bucket's
    # smallest id (its hub; the hub's own row (a, a) too, which leads its group below). Keys of
    # different bands are different hashes, so the key alone names the bucket.
    t0 = time.perf_counter()
    w = Window.partitionBy("k")
    linked = (signed.select("id", F.explode("bk").alias("k"))
              .withColumn("hub", F.min("id").over(w)).withColumn("size", F.count(F.lit(1)).over(w))
              .where(F.col("size") > 1)
              .groupBy(F.col("hub").alias("a"), F.col("id").alias("b")).agg(F.max("size").alias("size")))

    # 3. Verification (or estimates): each hub's rows gathered, the hub first, and every member
    # compared with it in one kernel call per Arrow batch; the sets travel once, with the rows.
    with_sets = linked.join(signed.select(F.col("id").alias("b"), "s"), "b")
    grouped = (with_sets.repartition("a").sortWithinPartitions("a", F.col("b") != F.col("a"), "b")
               .select(F.col("a").alias("g"), F.col("b").alias("id"), "s", "size"))
    scored = _with_reference(grouped, cfg, drop_reference=True).select(
        F.col("g").alias("a"), F.col("id").alias("b"), "size", "j")
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
    sims = _with_reference(ranked, cfg, drop_reference=False)
    is_rep = F.col("ref") == F.col("id")
    dups = sims.select(
        "id", F.col("g").alias("component_id"), F.col("ref").alias("representative_id"),
        is_rep.alias("is_representative"), F.when(is_rep, F.lit(1.0)).otherwise(F.col("j")).alias("similarity"),
    )
    dups = materialise(dups, reliable)
    signed.unpersist()
    t4 = time.perf_counter()
    comp = component_stats(dups)
    stats = _stats(cfg, bands, rows, n_cand, n_ok, biggest, rounds, comp)
    stats["step_s"] = {"signatures_buckets_verify": round(t1 - t0, 3), "pair_counts": round(t2 - t1, 3),
                       "components": round(t3 - t2, 3), "survivors": round(t4 - t3, 3),
                       "stats": round(time.perf_counter() - t4, 3)}
    return _outputs(docs, dups, stats, cfg), scored


def _stats(cfg: Config, bands, rows, n_cand, n_ok, biggest, rounds, comp: dict) -> dict:
    return {
        "bands": bands, "rows": rows, "num_perm": cfg.num_perm, "threshold": cfg.threshold,
        "shingle": f"{cfg.shingle.kind} {cfg.shingle.n}-grams",
        "largest_bucket": biggest,
        "candidate_pairs": n_cand,
        "verified_pairs": n_ok if cfg.verify else None,
        "dropped_pairs": n_cand - n_ok if cfg.verify else None,
        "cc_rounds": rounds,
        **comp,
    }


def _outputs(docs, dups, stats: dict, cfg: Config) -> dict:
    """The stage's tables from `duplicates`: the removed documents and the kept ones (the
    removed ids are broadcast to that anti join while there are at most `broadcast_labels`)."""
    from pyspark.sql import functions as F

    removed = dups.where(~F.col("is_representative")).select(
        "id", F.lit(NAME).alias("stage"), F.lit("near_duplicate").alias("reason"),
        F.col("representative_id").alias("by_id"), F.col("similarity").alias("score"),
    )
    gone = removed.select("id")
    kept = docs.join(F.broadcast(gone) if stats["docs_removed"] <= cfg.broadcast_labels else gone, "id", "left_anti")
    return {"documents": kept, "removed": removed, "duplicates": dups, "stats": stats}


def _run_one_task(docs, tables, cfg: Config, bands: int, rows: int, reliable: bool):
    """The whole dedup of a small corpus in one executor task (one_task_batches); its counts
    reach the driver as observed metrics of the same job."""
    from pyspark.sql import Observation
    from pyspark.sql import functions as F
    from pyspark.sql.pandas.types import from_arrow_schema

    from thresher.stages.components import materialise, with_quality

    t0 = time.perf_counter()
    src, _ = with_quality(docs.select("id", "text"), docs, tables, cfg.survivor)
    src = src.select("id", "text", *(["_quality"] if cfg.survivor == "quality" else []))
    t = F.col("t")
    obs = Observation(f"{NAME}_counts")
    out = (src.coalesce(1).mapInArrow(one_task_batches(cfg, bands, rows), from_arrow_schema(ONE_TASK))
           .observe(obs, F.collect_list(F.when(t == 2, F.struct("a", "n"))).alias("counts")))
    out = materialise(out, reliable)
    m = {r["a"]: int(r["n"]) for r in obs.get["counts"]}
    scored = out.where(t == 1).select("a", "b", F.col("n").alias("size"), "j")
    is_rep = F.col("a") == F.col("c")
    dups = out.where(t == 0).select(F.col("a").alias("id"), F.col("b").alias("component_id"),
                                    F.col("c").alias("representative_id"), is_rep.alias("is_representative"),
                                    F.col("j").alias("similarity"))
    comps, members = m.get("components", 0), m.get("docs_in_components", 0)
    comp = {"components": comps, "docs_in_components": members, "docs_removed": members - comps,
            "component_sizes": {k[5:]: v for k, v in m.items() if k.startswith("size ")}}
    stats = _stats(cfg, bands, rows, m.get("candidate_pairs", 0), m.get("verified_pairs", 0),
                   m.get("largest_bucket", 0), 0, comp)
    stats["step_s"] = {"one_task": round(time.perf_counter() - t0, 3)}
    return _outputs(docs, dups, stats, cfg), scored


SPEC = StageSpec(name=NAME, inputs=("documents",), optional_inputs=("quality",), outputs=("removed", "duplicates"),
                 removes=True)
