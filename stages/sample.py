"""sample: a diversity- and quality-aware subset of the cluster tree, sized to a budget.

The budget is split top-down over the cluster tree (Vo et al. 2024, "hierarchical balanced
sampling"): at every node the largest integer cap x with sum_i min(x, size_i) <= N is found,
children below the cap give everything, and the remainder goes one each to children drawn at
random from the seed, so the total is exactly N. `temperature` blends this towards proportional
allocation by giving child i the weight size_i ** temperature (0: balanced, 1: proportional).
Inside a leaf cluster the documents are ranked (random, closest to the centroid, or by quality as
in CaR) and the leaf's allocation is taken from the top.

Only the tree's leaf sizes (one row per leaf cluster) come to the driver; the allocation goes
back as a small table and the per-document work is a window over each leaf in the executors.
"""

from __future__ import annotations

import math
import re
from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from thresher.stages.base import StageConfig, StageSpec
from thresher.schemas.errors import ConfigError, InputError


UNCLUSTERED = -1  # cluster id at every level for documents that have no row in `clusters`


class Config(StageConfig):
    # Documents (unit=documents) or tokens (unit=tokens) to select; wins over `fraction`.
    budget: int | None = Field(None, gt=0)
    # Share of the pool (after the quality floor) to select, when `budget` is not set.
    fraction: float | None = Field(None, gt=0)
    unit: Literal["documents", "tokens"] = "documents"
    # unit=tokens: a documents column holding each document's token count (None: the `tokens`
    # column the tokens stage writes). Only when tokens_per_word is set and there is no such
    # column are tokens estimated, as ceil(whitespace words * tokens_per_word).
    tokens_column: str | None = None
    tokens_per_word: float | None = Field(None, gt=0)
    # How often one document may be taken: budgets above the pool repeat documents (the paper's
    # multiplier). 1 means every document at most once.
    max_repeats: int = Field(1, ge=1)
    # 0: balanced over the tree (equal caps); 1: proportional to cluster size; between: sizes ** t.
    temperature: float = Field(0.0, ge=0.0, le=1.0)
    strategy: Literal["random", "closest", "quality"] = "random"
    # A documents column (say `language`, from the language stage) whose values become the top
    # level of the tree: the budget is balanced over its values first, then over the clusters
    # within each. Its level is named after the cluster levels (level_{L+1}); stats["strata"]
    # maps the level's ids to the values (null: -1).
    stratify_by: str | None = None
    # Documents whose quality score is below the floor (or missing) are never sampled.
    quality_floor: float | None = None
    # Record why each document was chosen in `selection.why`.
    why_detail: bool = True

    @model_validator(mode="after")
    def _check(self):
        if self.fraction is not None and self.max_repeats == 1 and self.fraction > 1:
            raise ValueError("fraction above 1 needs max_repeats > 1")
        return self


# ---------------------------------------------------------------------------------- allocator
def _rng(seed: int, depth: int, prefix: tuple) -> np.random.Generator:
    # One generator per tree node, keyed by its path: the draw at a node never depends on the
    # order in which nodes are visited.
    return np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, depth, *[int(p) + 2 for p in prefix]]))


def split_node(sizes, budget: int, temperature: float = 0.0, max_repeats: int = 1,
               rng: np.random.Generator | None = None) -> np.ndarray:
    """Split `budget` over children of the given sizes; returns integer allocations.

    Each child gets at most size * max_repeats; the allocations add up to `budget` exactly.
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    if sizes.ndim != 1:
        raise ValueError("sizes must be one-dimensional")
    if (sizes < 0).any():
        raise ValueError("sizes must be >= 0")
    budget = int(budget)
    if budget < 0:
        raise ValueError("budget must be >= 0")
    caps = sizes * int(max_repeats)
    total = int(caps.sum())
    if budget > total:
        raise ValueError(f"budget {budget} exceeds capacity {total} (sizes {int(sizes.sum())} x max_repeats {max_repeats})")
    rng = rng if rng is not None else np.random.default_rng(0)
    if budget == total:
        return caps.copy()
    if budget == 0:
        return np.zeros_like(caps)
    if temperature == 0.0:
        # Largest integer x with sum(min(x, cap_i)) <= budget, by bisection on integers.
        lo, hi = 0, int(caps.max())
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if int(np.minimum(caps, mid).sum()) <= budget:
                lo = mid
            else:
                hi = mid - 1
        alloc = np.minimum(caps, lo)
        rest = budget - int(alloc.sum())
        if rest:
            # Children above the cap all have room for one more; draw `rest` of them.
            open_ = np.flatnonzero(caps > lo)
            alloc[rng.choice(open_, size=rest, replace=False)] += 1
        return alloc
    # Temperature > 0: water-filling with weights size ** t (continuous level, then integers).
    w = np.where(sizes > 0, sizes.astype(np.float64) ** float(temperature), 0.0)
    open_w = w > 0
    lo, hi = 0.0, float(np.max(caps[open_w] / w[open_w]))
    for _ in range(200):
        mid = (lo + hi) / 2
        if np.minimum(mid * w, caps).sum() <= budget:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-12 * hi:
            break
    ideal = np.minimum(lo * w, caps)
    alloc = np.minimum(np.floor(ideal).astype(np.int64), caps)
    rest = budget - int(alloc.sum())
    while rest > 0:
        room = np.flatnonzero(alloc < caps)
        frac = ideal[room] - alloc[room]
        p = np.clip(frac, 0, None) + 1e-12
        k = min(rest, room.size)
        pick = rng.choice(room, size=k, replace=False, p=p / p.sum())
        alloc[pick] += 1
        rest -= k
    return alloc


def allocate_tree(paths, sizes, budget: int, temperature: float = 0.0, max_repeats: int = 1,
                  seed: int = 0) -> np.ndarray:
    """Allocate `budget` to the leaves of a cluster tree, top-down.

    paths: (n_leaves, L) integer cluster ids from the top level down to the leaf (level 1); one
    row per leaf, rows distinct. sizes: (n_leaves,) documents (or tokens) in each leaf.
    Returns the allocation per leaf (int64, sums to budget, each <= size * max_repeats).
    """
    paths = np.asarray(paths, dtype=np.int64)
    if paths.ndim == 1:
        paths = paths[:, None]
    sizes = np.asarray(sizes, dtype=np.int64)
    n, depth_total = paths.shape
    if sizes.shape != (n,):
        raise ValueError(f"sizes has shape {sizes.shape}, expected ({n},)")
    out = np.zeros(n, dtype=np.int64)
    if n == 0:
        if budget:
            raise ValueError(f"budget {budget} exceeds capacity 0 (no clusters)")
        return out

    def rec(idx: np.ndarray, depth: int, amount: int, prefix: tuple) -> None:
        if depth == depth_total:
            if idx.size != 1:
                raise ValueError(f"leaf path {prefix} appears {idx.size} times")
            out[idx[0]] = amount
            return
        keys = paths[idx, depth]
        uniq, inv = np.unique(keys, return_inverse=True)
        child_sizes = np.zeros(uniq.size, dtype=np.int64)
        np.add.at(child_sizes, inv, sizes[idx])
        alloc = split_node(child_sizes, amount, temperature, max_repeats, _rng(seed, depth, prefix))
        order = np.argsort(inv, kind="stable")
        bounds = np.concatenate([[0], np.cumsum(np.bincount(inv, minlength=uniq.size))])
        for j in range(uniq.size):
            if alloc[j]:
                rec(idx[order[bounds[j]:bounds[j + 1]]], depth + 1, int(alloc[j]), prefix + (int(uniq[j]),))

    rec(np.arange(n), 0, int(budget), ())
    return out


# ---------------------------------------------------------------------------------- report
def entropy(counts) -> float:
    """Shannon entropy (nats) of a count vector; zeros ignored."""
    c = np.asarray(counts, dtype=np.float64)
    c = c[c > 0]
    if c.size == 0:
        return 0.0
    p = c / c.sum()
    return float(-(p * np.log(p)).sum())


def gini(counts) -> float:
    """Gini coefficient of a count vector (0: all equal, near 1: all in one)."""
    c = np.sort(np.asarray(counts, dtype=np.float64))
    n = c.size
    if n == 0 or c.sum() == 0:
        return 0.0
    cum = np.cumsum(c)
    return float((n + 1 - 2 * (cum / cum[-1]).sum()) / n)


def _dist(counts) -> dict:
    c = np.asarray(counts, dtype=np.float64)
    if c.size == 0:
        return {"clusters": 0}
    q = np.quantile(c, [0.0, 0.1, 0.5, 0.9, 1.0])
    return {"clusters": int(c.size), "min": float(q[0]), "p10": float(q[1]), "p50": float(q[2]),
            "p90": float(q[3]), "max": float(q[4]), "mean": float(c.mean())}


def balance_report(counts, n_clusters: int | None = None) -> dict:
    """Entropy (and its share of the maximum), Gini and coverage of documents over clusters."""
    c = np.asarray(counts, dtype=np.float64)
    k = int(n_clusters if n_clusters is not None else c.size)
    k = max(k, int(c.size))
    full = np.concatenate([c, np.zeros(k - c.size)])
    h = entropy(full)
    return {"entropy": round(h, 6), "entropy_of_max": round(h / math.log(k), 6) if k > 1 else 1.0,
            "gini": round(gini(full), 6), "coverage": round(float((full > 0).sum()) / k, 6) if k else 0.0,
            "sizes": {kk: (round(v, 3) if isinstance(v, float) else v) for kk, v in _dist(full).items()}}


# ---------------------------------------------------------------------------------- stage
def level_columns(columns) -> list[str]:
    """level_1 .. level_L of a clusters table, ordered by level."""
    lv = sorted((int(m.group(1)), c) for c in columns if (m := re.fullmatch(r"level_(\d+)", c)))
    if not lv or lv[0][0] != 1 or [n for n, _ in lv] != list(range(1, len(lv) + 1)):
        raise InputError(f"clusters: expected columns level_1..level_L, found {[c for _, c in lv] or 'none'}")
    return [c for _, c in lv]


def run(spark, tables, cfg: Config, ctx):
    from pyspark import StorageLevel
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    seed = int(cfg.seed or 0)
    docs = tables["documents"]
    clusters = tables["clusters"]
    quality = tables.get("quality")
    levels = level_columns(clusters.columns)
    top_down = list(reversed(levels))
    if (cfg.strategy == "quality" or cfg.quality_floor is not None) and quality is None:
        what = "sample.strategy: quality" if cfg.strategy == "quality" else "sample.quality_floor"
        raise ConfigError(f"{what} needs the quality table: put the quality stage before sample")
    if cfg.budget is None and cfg.fraction is None:
        raise ConfigError("sample: set sample.budget (in sample.unit) or sample.fraction")

    if cfg.unit == "tokens" and cfg.tokens_column and cfg.tokens_column not in docs.columns:
        raise ConfigError(f"sample.tokens_column: column '{cfg.tokens_column}' is not in documents")
    if cfg.unit == "tokens" and not cfg.tokens_column and "tokens" in docs.columns:
        cfg = cfg.model_copy(update={"tokens_column": "tokens"})
    if cfg.unit == "tokens" and not cfg.tokens_column and cfg.tokens_per_word is None:
        raise ConfigError("sample.unit: tokens needs token counts: put the tokens stage before sample, set "
                          "sample.tokens_column, or set sample.tokens_per_word to estimate from words")
    if cfg.stratify_by and cfg.stratify_by not in docs.columns:
        raise ConfigError(f"sample.stratify_by: column '{cfg.stratify_by}' is not in documents (have: {', '.join(docs.columns)})")
    # The pool: documents still present, with their cluster path (UNCLUSTERED where missing).
    pool = docs.select("id", *([cfg.tokens_column] if cfg.unit == "tokens" and cfg.tokens_column else []),
                       *(["text"] if cfg.unit == "tokens" and not cfg.tokens_column else []),
                       *([F.col(cfg.stratify_by).cast("string").alias("_stratum_value")] if cfg.stratify_by else []))
    pool = pool.join(clusters.select("id", *levels, "distance"), "id", "left")
    pool = pool.withColumn("_clustered", F.col(levels[0]).isNotNull())
    for c in levels:
        pool = pool.withColumn(c, F.coalesce(F.col(c).cast("long"), F.lit(UNCLUSTERED).cast("long")))
    strata: dict[int, str | None] = {}
    if cfg.stratify_by:
        values = sorted(r[0] for r in pool.select("_stratum_value").distinct().collect() if r[0] is not None)
        strata = {i: v for i, v in enumerate(values)}
        strata[-1] = None
        top = f"level_{len(levels) + 1}"
        ids = spark.createDataFrame([(v, i) for i, v in enumerate(values)], "_stratum_value string, _sid long")
        pool = (pool.join(F.broadcast(ids), "_stratum_value", "left")
                .withColumn(top, F.coalesce(F.col("_sid"), F.lit(-1).cast("long"))).drop("_sid", "_stratum_value"))
        levels = levels + [top]
        top_down = [top] + top_down
    if quality is not None:
        q = quality.select("id", F.col("score").cast("double").alias("_q"))
        pool = pool.join(q, "id", "left").withColumn("_q", F.when(F.isnan("_q"), None).otherwise(F.col("_q")))
    else:
        pool = pool.withColumn("_q", F.lit(None).cast("double"))
    if cfg.unit == "tokens":
        if cfg.tokens_column:
            tok = F.col(cfg.tokens_column).cast("long")
        else:
            words = F.size(F.split(F.trim(F.col("text")), r"\s+"))
            tok = F.ceil(words * F.lit(cfg.tokens_per_word)).cast("long")
        pool = pool.withColumn("_tok", F.greatest(F.coalesce(tok, F.lit(1)), F.lit(1)))
    else:
        pool = pool.withColumn("_tok", F.lit(1).cast("long"))
    if cfg.quality_floor is not None:
        pool = pool.withColumn("_eligible", F.coalesce(F.col("_q") >= F.lit(cfg.quality_floor), F.lit(False)))
    else:
        pool = pool.withColumn("_eligible", F.lit(True))
    pool = pool.select("id", *levels, "distance", "_q", "_tok", "_eligible", "_clustered").persist(StorageLevel.MEMORY_AND_DISK)

    # Leaf sizes at the driver: one row per (leaf path, eligibility).
    leaf_rows = (pool.groupBy(*top_down, "_eligible")
                 .agg(F.count(F.lit(1)).alias("n"), F.sum("_tok").alias("tok"),
                      F.sum(F.when(F.col("_clustered"), 0).otherwise(1)).alias("unclustered"))
                 .collect())
    paths_all: dict[tuple, list[int]] = {}
    unclustered = 0
    for r in leaf_rows:
        key = tuple(int(r[c]) for c in top_down)
        slot = paths_all.setdefault(key, [0, 0, 0])  # all docs, eligible docs, eligible tokens
        slot[0] += int(r["n"])
        if r["_eligible"]:
            slot[1] += int(r["n"])
            slot[2] += int(r["tok"])
        unclustered += int(r["unclustered"])
    keys = sorted(paths_all)
    paths = np.array(keys, dtype=np.int64).reshape(len(keys), len(levels))
    n_all = np.array([paths_all[k][0] for k in keys], dtype=np.int64)
    n_elig = np.array([paths_all[k][1] for k in keys], dtype=np.int64)
    tok_elig = np.array([paths_all[k][2] for k in keys], dtype=np.int64)
    sizes = tok_elig if cfg.unit == "tokens" else n_elig
    pool_size = int(sizes.sum())

    budget = cfg.budget if cfg.budget is not None else int(round(cfg.fraction * pool_size))
    capacity = pool_size * cfg.max_repeats
    if budget > capacity:
        what = "sample.budget" if cfg.budget is not None else "sample.fraction"
        floor = f" at or above quality_floor {cfg.quality_floor}" if cfg.quality_floor is not None else ""
        raise ConfigError(f"{what}: {budget} {cfg.unit} exceed the pool of {pool_size} {cfg.unit}{floor} "
                          f"x max_repeats {cfg.max_repeats} = {capacity}; lower the budget or raise sample.max_repeats")
    alloc = allocate_tree(paths, sizes, budget, cfg.temperature, cfg.max_repeats, seed) if len(keys) else np.zeros(0, np.int64)

    # The allocation goes back as a small table keyed by the leaf path.
    from pyspark.sql.types import LongType, StructField, StructType

    alloc_schema = StructType([StructField(c, LongType(), False) for c in top_down]
                              + [StructField("_alloc", LongType(), False), StructField("_size", LongType(), False),
                                 StructField("_leaf_n", LongType(), False)])
    alloc_rows = [tuple(int(v) for v in paths[i]) + (int(alloc[i]), int(sizes[i]), int(n_elig[i])) for i in range(len(keys))]
    alloc_df = spark.createDataFrame(alloc_rows, alloc_schema)

    if cfg.strategy == "quality":
        order = [F.col("_q").desc_nulls_last(), F.col("id")]
    elif cfg.strategy == "closest":
        order = [F.col("distance").asc_nulls_last(), F.col("id")]
    else:
        order = [F.xxhash64(F.lit(seed), F.col("id")), F.col("id")]
    elig = pool.where("_eligible").join(F.broadcast(alloc_df), top_down, "inner")
    w = Window.partitionBy(*top_down).orderBy(*order)
    ranked = elig.withColumn("_rank", F.row_number().over(w))
    if cfg.unit == "tokens":
        cum = F.sum("_tok").over(w.rowsBetween(Window.unboundedPreceding, Window.currentRow))
        ranked = ranked.withColumn("_cum", cum)
    # Whole passes over the leaf (max_repeats > 1), then the top of the order for the rest.
    passes = F.coalesce(F.expr("_alloc div nullif(_size, 0)"), F.lit(0))
    rest = F.col("_alloc") - passes * F.col("_size")
    if cfg.unit == "tokens":
        mult = passes + F.when(F.col("_cum") <= rest, 1).otherwise(0)
    else:
        mult = passes + F.when(F.col("_rank") <= rest, 1).otherwise(0)
    ranked = ranked.withColumn("_m", F.when(F.col("_size") > 0, mult).otherwise(0).cast("int"))
    ranked = ranked.persist(StorageLevel.MEMORY_AND_DISK)
    chosen = ranked.where(F.col("_m") > 0)

    path_str = F.concat_ws("/", *[F.col(c).cast("string") for c in top_down])
    label = {"random": "random", "closest": "closest", "quality": "quality"}[cfg.strategy]
    if cfg.why_detail:
        why = F.concat(F.lit(f"t={cfg.temperature:g} {label} rank "), F.col("_rank").cast("string"),
                       F.lit("/"), F.col("_leaf_n").cast("string"), F.lit(" alloc "), F.col("_alloc").cast("string"))
    else:
        why = F.lit(label)
    selection = chosen.select("id", F.col("_m").cast("int").alias("multiplicity"), path_str.alias("cluster_path"),
                              F.col("_q").alias("quality"), why.alias("why"))
    not_sampled = ctx.removed(ranked.where(F.col("_m") == 0), "not_sampled", score="_q")
    below = ctx.removed(pool.where(~F.col("_eligible")), "below_quality_floor", score="_q")
    removed = not_sampled.unionByName(below)

    stats = _report(spark, pool, ranked, levels, top_down, paths, n_all, tables.get("centroids"), cfg)
    stats.update({"budget": int(budget), "unit": cfg.unit, "pool": pool_size, "leaves": len(keys),
                  "unclustered": unclustered, "temperature": cfg.temperature, "strategy": cfg.strategy,
                  "max_repeats": cfg.max_repeats})
    if cfg.stratify_by:
        stats["stratify_by"] = cfg.stratify_by
        stats["strata"] = {str(k): v for k, v in sorted(strata.items())}
    if cfg.unit == "tokens":
        stats["tokens_selected"] = stats.pop("selected_tokens")
        stats["tokens_from"] = (f"column {cfg.tokens_column}" if cfg.tokens_column
                                else f"estimate: words x {cfg.tokens_per_word}")
    else:
        stats.pop("selected_tokens")
    return {"removed": removed, "selection": selection, "stats": stats}


def _report(spark, pool, ranked, levels, top_down, paths, n_all, centroids, cfg: Config) -> dict:
    """Cluster-size distribution, entropy, Gini, coverage and quality, before and after.

    Three small jobs: selected counts per leaf, quality percentiles, centroid counts per level.
    """
    from pyspark.sql import functions as F

    after_rows = (ranked.where(F.col("_m") > 0).groupBy(*top_down)
                  .agg(F.sum("_m").alias("m"), F.count(F.lit(1)).alias("docs"),
                       F.sum(F.col("_tok") * F.col("_m")).alias("tok")).collect())
    after = {tuple(int(r[c]) for c in top_down): int(r["m"]) for r in after_rows}
    n_after = np.array([after.get(tuple(int(v) for v in p), 0) for p in paths], dtype=np.int64)
    # Cluster counts per level from the centroids, so empty clusters count against coverage.
    known: dict[int, int] = {}
    if centroids is not None:
        for r in centroids.groupBy("level").count().collect():
            known[int(r["level"])] = int(r["count"])
    report: dict = {"levels": {}}
    for li, col in enumerate(top_down):
        lvl = len(levels) - li
        keys = paths[:, : li + 1]
        if len(keys):
            uniq, inv = np.unique(keys, axis=0, return_inverse=True)
            inv = inv.reshape(-1)
            before = np.bincount(inv, weights=n_all, minlength=len(uniq))
            aft = np.bincount(inv, weights=n_after, minlength=len(uniq))
        else:
            before = aft = np.zeros(0)
        k = max(known.get(lvl, 0), len(before))
        report["levels"][f"level_{lvl}"] = {"before": balance_report(before, k), "after": balance_report(aft, k)}

    # Before: every document of the pool; after: the selected documents (each once). Approximate
    # percentiles: exact ones would hold every distinct score in one task.
    every = ranked.select("_q", "_m").unionByName(pool.where(~F.col("_eligible")).select("_q", F.lit(0).alias("_m")))
    pcts = [0.1, 0.5, 0.9]
    q_after = F.when(F.col("_m") > 0, F.col("_q"))
    r = every.agg(
        F.count("_q").alias("n0"), F.avg("_q").alias("mean0"), F.percentile_approx("_q", pcts, 10000).alias("p0"),
        F.count(q_after).alias("n1"), F.avg(q_after).alias("mean1"), F.percentile_approx(q_after, pcts, 10000).alias("p1"),
    ).collect()[0]

    def qd(n, mean, p):
        if not n:
            return {"scored": 0}
        return {"scored": int(n), "mean": round(float(mean), 6),
                **{f"p{int(x * 100)}": round(float(v), 6) for x, v in zip(pcts, p)}}

    report["quality"] = {"before": qd(r["n0"], r["mean0"], r["p0"]), "after": qd(r["n1"], r["mean1"], r["p1"])}
    report["selected_documents"] = int(sum(int(x["docs"]) for x in after_rows))
    report["selected_rows"] = int(n_after.sum())
    report["selected_tokens"] = int(sum(int(x["tok"] or 0) for x in after_rows))
    return report


def _needs(cfg: Config) -> tuple[str, ...]:
    return ("quality",) if cfg.strategy == "quality" or cfg.quality_floor is not None else ()


SPEC = StageSpec(name="sample", inputs=("documents", "clusters"), optional_inputs=("centroids", "quality"),
                 needs=_needs, outputs=("removed", "selection"), removes=True)
