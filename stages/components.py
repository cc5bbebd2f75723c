"""Connected components and survivor choice on Spark DataFrames (no driver-side graph).

Connected components: each partition's edges are first contracted where they lie (a
union-find over that partition alone, in the executor, so small graphs finish without a
shuffle), then the large-star / small-star rounds of Kiveris et al., "Connected Components in
MapReduce and Beyond" (SoCC 2014) join what spans partitions: O(log^2 n) rounds whatever the
diameter, each round two aggregations run as one Spark job. The edge list is checkpointed every
round, so lineage stays short; one number per round (observed during that job: was its input a
forest of stars yet?) reaches the driver.

Node keys can be any orderable type (string ids here): every choice is a minimum, so the result
does not depend on partitioning or arrival order.
"""

from __future__ import annotations

import logging

from thresher.schemas.errors import StageError

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


def contract_batches(labels: bool = False):
    """mapInArrow function over (a, b) edges: the partition's own components, found by the
    union-find kernel, as edges (a: node, b: smallest node of its local component), a > b.
    The output has the input's connectivity (each edge is replaced by links to a common root)
    and is a forest of stars within the partition. With `labels`, every node is listed, roots
    too, as (node, label). Holds one partition's edges in memory."""
    names = ["node", "label"] if labels else ["a", "b"]

    def fn(batches):
        import numpy as np
        import pyarrow as pa
        import pyarrow.compute as pc

        from thresher.kernels.minhash import min_roots

        batches = [b for b in batches if b.num_rows]
        if not batches:
            return
        t = pa.Table.from_batches(batches)
        a, b = t.column(0).combine_chunks(), t.column(1).combine_chunks()
        # Node numbers in id order (Arrow and Spark both order strings by their UTF-8 bytes),
        # so the kernel's smallest number is the smallest id.
        nodes = pc.unique(pa.concat_arrays([a, b]))
        nodes = nodes.take(pc.sort_indices(nodes))
        ia = pc.index_in(a, value_set=nodes).to_numpy().astype(np.int64)
        ib = pc.index_in(b, value_set=nodes).to_numpy().astype(np.int64)
        root = min_roots(ia, ib, len(nodes))
        keep = np.arange(len(nodes)) if labels else np.flatnonzero(root != np.arange(len(nodes)))
        if len(keep):
            yield pa.RecordBatch.from_arrays([nodes.take(pa.array(keep)), nodes.take(pa.array(root[keep]))], names=names)

    return fn


def connected_components(edges, src: str = "src", dst: str = "dst", max_rounds: int = 64, reliable: bool = False,
                         contract_partitions: int | None = None):
    """Label every node that has an edge with the smallest node of its component.

    Returns (DataFrame(node, label), rounds). Nodes without edges are not listed (they are
    their own component).

    First each partition's edges are contracted where they lie (contract_batches: a union-find
    over that partition only, in the executor), which leaves a forest of stars per partition;
    components that span partitions are then joined by large-star / small-star rounds, each
    one Spark job of two aggregations (no joins). A round observes whether its input was
    already a forest of stars rooted at their minima (no node has two parents, no parent has a
    parent); such an input comes out unchanged, so the loop stops there without a separate
    check job. Every choice is a minimum, so the result does not depend on partitioning.

    `contract_partitions`: spread the edges over that many partitions before the contraction
    (merged without a shuffle when there are more). Each contraction task holds its
    partition's edges, so this bounds memory per task; with one partition the contraction
    alone is the answer and no round runs.
    """
    from pyspark.sql import Observation
    from pyspark.sql import functions as F

    # Self loops carry no information; the rest is contracted partition by partition.
    e = edges.select(F.col(src).alias("a"), F.col(dst).alias("b")).where(F.col("a") != F.col("b"))
    if contract_partitions is not None:
        have = e.rdd.getNumPartitions()
        if contract_partitions < have:
            e = e.coalesce(contract_partitions)
        elif contract_partitions > have:  # a task must not hold more edges than asked
            e = e.repartition(contract_partitions)
    if e.rdd.getNumPartitions() == 1:
        # One partition: its contraction sees every edge, so it labels every node itself.
        return e.mapInArrow(contract_batches(labels=True), "node string, label string"), 0
    e = materialise(e.mapInArrow(contract_batches(), "a string, b string"), reliable)
    rounds = 0
    # Observed metrics of a job that processed no rows cannot be read back (Spark asserts).
    stars = e.isEmpty()
    while not stars:
        rounds += 1
        if rounds > max_rounds:
            raise StageError(f"connected components did not converge in {max_rounds} rounds (fuzzy_dedup.max_cc_rounds)")
        bad = Observation(f"cc_stars_{rounds}")
        # Large star: each node u sees all its neighbours; every larger neighbour v links to
        # m(u) = min(N(u) u {u}). Edges have a > b, so listing them both ways gives N(u).
        both = e.select(F.col("a").alias("u"), F.col("b").alias("v")).unionByName(
            e.select(F.col("b").alias("u"), F.col("a").alias("v")))
        nb = (both.groupBy("u").agg(F.min("v").alias("mv"),
                                    F.collect_set(F.when(F.col("v") < F.col("u"), F.col("v"))).alias("lo"),
                                    F.collect_set(F.when(F.col("v") > F.col("u"), F.col("v"))).alias("hi"))
              .observe(bad, F.sum(((F.size("lo") > 1) | ((F.size("lo") > 0) & (F.size("hi") > 0))).cast("long")).alias("n")))
        ls = nb.select(F.explode("hi").alias("a"), F.least("u", "mv").alias("b"))
        # Small star: each node u and its smaller neighbours all link to the smallest of them.
        sm = ls.groupBy("a").agg(F.collect_set("b").alias("lo")).select("a", "lo", F.array_min("lo").alias("m"))
        ss = sm.select(F.explode(F.array_union("lo", F.array("a"))).alias("a"), "m").where(F.col("a") != F.col("m"))
        nxt = materialise(ss.select("a", F.col("m").alias("b")), reliable)
        stars = bad.get["n"] == 0
        e = nxt
        log.debug("components round %d done (input was a star forest: %s)", rounds, stars)
    # A forest of stars (repeated edges possible): every node points at its component's
    # smallest node.
    e = e.distinct()
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



def select_with_quality(docs, tables: dict, survivor: str, cols: list[str]):
    """docs' `cols`, plus `_quality` as with_quality adds it when the survivor rule asks for it;
    a `quality` column of docs itself is selected, not joined back."""
    from pyspark.sql import functions as F

    if survivor == "quality" and tables.get("quality") is None and "quality" in docs.columns:
        return docs.select(*cols, F.col("quality").cast("double").alias("_quality"))
    return with_quality(docs.select(*cols), docs, tables, survivor)[0]

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
