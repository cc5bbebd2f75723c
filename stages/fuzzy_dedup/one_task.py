"""The one-task path: the whole dedup of a small corpus in one executor task, with the
distributed path's kernels and result."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from thresher.stages.fuzzy_dedup.results import components_summary, outputs, size_bins, stage_stats
from thresher.stages.fuzzy_dedup.signing import sign

if TYPE_CHECKING:
    from thresher.stages.fuzzy_dedup import Config

# One mapInArrow yields three tables, so each row fills exactly one of three struct columns:
# `member` a row of `duplicates`, `pair` a scored candidate pair, `count` a number for the stats.
MEMBER = pa.struct([("id", pa.string()), ("component_id", pa.string()), ("representative_id", pa.string()),
                    ("size", pa.int64()), ("similarity", pa.float64())])
PAIR = pa.struct([("a", pa.string()), ("b", pa.string()), ("size", pa.int64()), ("j", pa.float64())])
COUNT = pa.struct([("name", pa.string()), ("value", pa.int64())])
ONE_TASK = pa.schema([("member", MEMBER), ("pair", PAIR), ("count", COUNT)])


def _rows(kind: str, arrays: list) -> pa.RecordBatch:
    """A batch whose `kind` column holds `arrays` and whose other two columns are null."""
    n = len(arrays[0])
    cols = [pa.StructArray.from_arrays(arrays, fields=list(f.type)) if f.name == kind else pa.nulls(n, f.type)
            for f in ONE_TASK]
    return pa.RecordBatch.from_arrays(cols, schema=ONE_TASK)


def one_task_batches(cfg: Config, bands: int, rows: int):
    """mapInArrow function for the whole corpus in one task: (id, text[, _quality]) -> rows of
    ONE_TASK. Signs every document as sign_batches does, then dedup_signed."""
    num_perm, seed, verify, survivor = cfg.num_perm, int(cfg.seed or 0), cfg.verify, cfg.survivor

    def stat_rows(stats: dict):
        return _rows("count", [pa.array(list(stats), pa.string()), pa.array(list(stats.values()), pa.int64())])

    def fn(batches):
        import pyarrow.compute as pc

        from thresher.kernels.minhash import permutations
        from thresher.kernels.threads import limit_task_threads

        limit_task_threads()
        a, b = permutations(num_perm, seed)
        ids, lengths, quality, starts, values, keys = [], [], [], [], [], []
        base = 0
        for batch in batches:
            text = batch.column(1)
            has, off, h, sig, bk = sign(text, cfg, a, b, bands, rows)
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
        if verify:
            sets = (np.append(np.concatenate(starts), base), np.concatenate(values))
        else:
            sets = np.concatenate(values)
        q = pa.concat_arrays(quality) if survivor == "quality" else None
        pairs, members, stats = dedup_signed(ids, np.concatenate(lengths), q, sets, np.concatenate(keys), cfg)
        yield _rows("pair", pairs)
        if members is not None:
            yield _rows("member", members)
        yield stat_rows(stats)

    return fn


def dedup_signed(ids: pa.Array, lengths: np.ndarray, quality: pa.Array | None, sets, keys: np.ndarray, cfg: Config):
    """Steps 2-5 over signed documents held in one process: `sets` the shingle sets (offsets,
    values) with verify, else the signatures (n, num_perm); `keys` their bucket keys (n, bands).
    Buckets (capped_pairs), verifies each pair with the Jaccard kernel, labels components by the
    union-find kernel (nodes numbered in id order, so each root is its component's smallest id)
    and ranks each component by the survivor rule, ties by id: what the distributed path
    computes, row for row. Returns the PAIR arrays, the MEMBER arrays (None without components)
    and the counts."""
    import pyarrow.compute as pc

    from thresher.kernels.lsh import capped_pairs
    from thresher.kernels.minhash import jaccard_pairs, min_roots, signature_agreement

    verify, survivor, threshold = cfg.verify, cfg.survivor, cfg.threshold
    n = len(ids)

    def sim(x, y):
        return jaccard_pairs(sets[0], sets[1], x, y) if verify else signature_agreement(sets[x], sets[y])

    doc = pc.sort_indices(ids).to_numpy()  # node number -> document; Arrow and Spark order strings alike
    node = np.empty(n, np.int64)
    node[doc] = np.arange(n)
    hub, mem, size = capped_pairs(keys, node, n, cfg.bucket_all_pairs)
    j = sim(doc[hub], doc[mem])
    edge = j >= threshold if verify else np.ones(len(j), bool)
    stats = {"documents": n, "candidate_pairs": len(j), "verified_pairs": int(edge.sum()),
             "largest_bucket": int(size.max(initial=0))}
    pairs = [ids.take(pa.array(doc[hub])), ids.take(pa.array(doc[mem])), pa.array(size), pa.array(j)]
    root = min_roots(hub[edge], mem[edge], n)
    member = np.flatnonzero(np.bincount(root, minlength=n)[root] >= 2)
    if not len(member):
        return pairs, None, stats
    d = doc[member]
    if survivor == "longest":
        key = -np.asarray(lengths)[d].astype(np.float64)
    elif survivor == "quality":
        q = quality.take(pa.array(d))
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
    members = [ids.take(pa.array(doc[member])), ids.take(pa.array(doc[r])), ids.take(pa.array(doc[rep])),
               pa.array(np.repeat(sizes, sizes)), pa.array(s)]
    stats.update(components=len(sizes), docs_in_components=len(member),
                 **{f"size {k}": v for k, v in size_bins(sizes).items()})
    return pairs, members, stats


DUPLICATES = pa.schema([("id", pa.string()), ("component_id", pa.string()), ("representative_id", pa.string()),
                        ("is_representative", pa.bool_()), ("similarity", pa.float64())])


def dedup_on_driver(t: pa.Table, cfg: Config, bands: int, rows: int) -> tuple[pa.Table, dict]:
    """dedup_signed over documents already signed to the driver (sign_batches' (id, _length, s,
    bk), and `_quality` for that survivor rule): the `duplicates` table in Arrow and the stage's
    stats, as run_one_task gives them, with no Spark job (the caller signed them for its own use
    too: `against` matches the same sets with the reference)."""
    import pyarrow.compute as pc

    from thresher.stages.arrow_bytes import binary_values

    m: dict = {"documents": 0}
    dups = DUPLICATES.empty_table()
    if t.num_rows:
        if cfg.verify:
            sets = binary_values(t.column("s"), np.uint64)
        else:
            sets = binary_values(t.column("s"), np.uint32)[1].reshape(-1, cfg.num_perm)
        keys = pc.list_flatten(t.column("bk")).to_numpy().reshape(-1, bands)
        q = t.column("_quality").combine_chunks() if cfg.survivor == "quality" else None
        _, members, m = dedup_signed(t.column("id").combine_chunks(), t.column("_length").to_numpy(), q, sets, keys, cfg)
        if members is not None:
            dups = pa.Table.from_arrays([members[0], members[1], members[2],
                                         pc.equal(members[0], members[2]), members[4]], schema=DUPLICATES)
    comp = components_summary(m.get("components", 0), m.get("docs_in_components", 0),
                              {k[5:]: v for k, v in m.items() if k.startswith("size ")})
    stats = stage_stats(cfg, bands, rows, m.get("candidate_pairs", 0), m.get("verified_pairs", 0),
                        m.get("largest_bucket", 0), 0, comp)
    return dups, stats


def run_one_task(docs, tables, cfg: Config, bands: int, rows: int):
    """The whole dedup of a small corpus in one executor task (one_task_batches); its counts
    reach the driver as observed metrics of the same job."""
    from pyspark.sql import Observation
    from pyspark.sql import functions as F
    from pyspark.sql.pandas.types import from_arrow_schema

    from thresher.stages.components import materialise, with_quality

    t0 = time.perf_counter()
    src, _ = with_quality(docs.select("id", "text"), docs, tables, cfg.survivor)
    src = src.select("id", "text", *(["_quality"] if cfg.survivor == "quality" else []))
    obs = Observation("fuzzy_dedup_counts")
    out = (src.coalesce(1).mapInArrow(one_task_batches(cfg, bands, rows), from_arrow_schema(ONE_TASK))
           .observe(obs, F.collect_list(F.col("count")).alias("counts")))
    out = materialise(out, cfg.checkpoint == "reliable")
    m = {r["name"]: int(r["value"]) for r in obs.get["counts"]}
    scored = out.where(F.col("pair").isNotNull()).select("pair.*")
    dups = out.where(F.col("member").isNotNull()).select(
        "member.id", "member.component_id", "member.representative_id",
        (F.col("member.id") == F.col("member.representative_id")).alias("is_representative"),
        "member.similarity")
    comp = components_summary(m.get("components", 0), m.get("docs_in_components", 0),
                              {k[5:]: v for k, v in m.items() if k.startswith("size ")})
    stats = stage_stats(cfg, bands, rows, m.get("candidate_pairs", 0), m.get("verified_pairs", 0),
                        m.get("largest_bucket", 0), 0, comp)
    stats["step_s"] = {"one_task": round(time.perf_counter() - t0, 3)}
    return outputs(docs, dups, stats, cfg), scored
