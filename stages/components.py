"""Connected components and survivor choice on Spark DataFrames (no driver-side graph).

Connected components use the large-star / small-star rounds of Kiveris et al., "Connected
Components in MapReduce and Beyond" (SoCC 2014): O(log^2 n) rounds whatever the diameter, each
round two group-bys and two joins, run as one Spark job. The edge list is checkpointed every
round, so lineage stays short and each round reads the previous one from storage; only two
numbers per round (observed during that job: was its input a forest of stars yet?) reach the
driver.

Node keys can be any orderable type (string ids here): every choice is a minimum, so the result
does not depend on partitioning or arrival order.
"""

from __future__ import annotations

import logging

from thresher.flows.errors import StageError

log = logging.getLogger("thresher.components")


def materialise(df, reliable: bool = False):
    """Compute `df` once and cut its lineage.

    Local checkpoints keep the blocks on the executors (memory, spilling to disk): fast, and
    freed when the DataFrame is dropped. Reliable ones write to the session's checkpoint
    folder (the runner sets one under the run's .tmp) and survive a lost executor; the data is
    persisted while it is written, or Spark would compute it twice.
    """
    sc = df.sparkSession.sparkContext
    if not reliable or not sc.getCheckpointDir():
        return df.localCheckpoint(eager=True)
    held = df.persist()
    out = held.checkpoint(eager=True)
    held.unpersist()
    return out


def connected_components(edges, src: str = "src", dst: str = "dst", max_rounds: int = 64, reliable: bool = False):
    """Label every node that has an edge with the smallest node of its component.

    Returns (DataFrame(node, label), rounds). Nodes without edges are not listed (they are
    their own component).

    One Spark job per round. The round's own large-star step observes whether its input was
    already a forest of stars rooted at their minima (every node has at most one parent and no
    parent has a parent); such an input comes out of the round unchanged, so the loop stops
    there without a separate check job.
    """
    from pyspark.sql import Observation
    from pyspark.sql import functions as F

    # Canonical orientation a > b (b is a's parent); self loops carry no information.
    e = (edges.where(F.col(src) != F.col(dst))
         .select(F.greatest(src, dst).alias("a"), F.least(src, dst).alias("b"))
         .distinct())
    e = materialise(e, reliable)
    rounds = 0
    # Observed metrics of a job that processed no rows cannot be read back (Spark asserts).
    stars = e.isEmpty()
    while not stars:
        rounds += 1
        if rounds > max_rounds:
            raise StageError(f"connected components did not converge in {max_rounds} rounds (fuzzy_dedup.max_cc_rounds)")
        parents, grandparents = Observation(f"cc_parents_{rounds}"), Observation(f"cc_grandparents_{rounds}")
        # Large star: m(u) = min(N(u) u {u}); each larger neighbour v of u links to m(u).
        # With a > b on every edge, u's smaller neighbours are the b's of its edges as `a`, so
        # m(u) is one group-by away, and each edge (a, b) is seen from its smaller end b.
        mins = (e.groupBy("a").agg(F.min("b").alias("m"), F.count(F.lit(1)).alias("np"))
                .observe(parents, F.coalesce(F.max("np"), F.lit(0)).alias("most")))
        # Repeated edges are left for the small star's distinct: one shuffle fewer per round.
        lj = (e.join(mins.select(F.col("a").alias("b"), "m"), "b", "left")
              .observe(grandparents, F.count(F.col("m")).alias("n")))
        ls = lj.select("a", F.coalesce("m", "b").alias("b"))
        # Small star: each node u and its smaller neighbours all link to the smallest of them.
        mins2 = ls.groupBy("a").agg(F.min("b").alias("m"))
        j = ls.join(mins2, "a")
        ss = (j.where(F.col("b") != F.col("m")).select(F.col("b").alias("a"), F.col("m").alias("b"))
              .unionByName(mins2.select("a", F.col("m").alias("b")))
              .distinct())
        nxt = materialise(ss, reliable)
        stars = parents.get["most"] <= 1 and grandparents.get["n"] == 0
        e = nxt
        log.debug("components round %d done (input was a star forest: %s)", rounds, stars)
    # A forest of stars: every node points at its component's smallest node.
    roots = e.select(F.col("b").alias("node")).distinct().withColumn("label", F.col("node"))
    labels = e.select(F.col("a").alias("node"), F.col("b").alias("label")).unionByName(roots)
    return labels, rounds


def rank_key(survivor: str, has_quality: bool):
    """Sort key (ascending; first wins) of the survivor rule, ties broken by id."""
    from pyspark.sql import functions as F

    if survivor == "quality":
        if not has_quality:
            raise StageError("survivor 'quality' needs a quality table (or a `quality` column in documents)")
        # Highest score first; a document without a score ranks after every scored one.
        return F.struct(F.coalesce(-F.col("_quality"), F.lit(float("inf"))).alias("k"), F.col("id").alias("id"))
    if survivor == "longest":
        return F.struct((-F.col("_length")).alias("k"), F.col("id").alias("id"))
    if survivor == "smallest_id":
        return F.struct(F.lit(0).alias("k"), F.col("id").alias("id"))
    raise StageError(f"unknown survivor rule '{survivor}'")


def with_quality(df, docs, tables: dict, survivor: str):
    """df (id, ...) plus `_quality` when the survivor rule asks for it: from an earlier quality
    table, else from a `quality` column of documents. Returns (df, has_quality)."""
    from pyspark.sql import functions as F

    if survivor != "quality":
        return df, False
    q = tables.get("quality")
    if q is not None:
        return df.join(q.select("id", F.col("score").cast("double").alias("_quality")), "id", "left"), True
    if "quality" in docs.columns:
        return df.join(docs.select("id", F.col("quality").cast("double").alias("_quality")), "id", "left"), True
    return df, False


def rank_within(df, group_cols: list[str], survivor: str, has_quality: bool):
    """Rank each group's rows by the survivor rule (needs `id`, `_length`, `_quality` as the rule
    asks): adds `_n` (1 for the survivor) and `representative_id`. One shuffle, a window over the group that Spark spills to
    disk when a group is large; nothing is collected per group."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    w = Window.partitionBy(*group_cols).orderBy(F.col("_rk"))
    return (df.withColumn("_rk", rank_key(survivor, has_quality))
            .withColumn("_n", F.row_number().over(w))
            .withColumn("representative_id", F.first("id").over(w))
            .drop("_rk"))
