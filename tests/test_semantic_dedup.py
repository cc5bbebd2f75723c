"""semantic_dedup: the blocked greedy pass against the O(n^2) definition, and the stage on Spark."""

from __future__ import annotations

from thresher.stages.base import run_stage
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from thresher.schemas.errors import ConfigError
from thresher.stages import semantic_dedup as sd


def near_dup_vectors(rng, n_groups=30, per_group=4, d=24, noise=0.02, singles=40):
    """Groups of near-identical directions plus unrelated vectors."""
    base = rng.normal(size=(n_groups, d))
    V = [base[g] + noise * rng.normal(size=(per_group, d)) for g in range(n_groups)]
    V.append(rng.normal(size=(singles, d)))
    return sd.unit_rows(np.concatenate(V))


@pytest.mark.parametrize("eps", [0.001, 0.01, 0.05, 0.3])
def test_blocked_greedy_matches_definition(eps):
    rng = np.random.default_rng(0)
    V = near_dup_vectors(rng)
    V = V[rng.permutation(len(V))]
    I, J, S = sd.similar_pairs(V, 1 - 0.3, block_rows=7)  # pairs once, at the largest eps
    removed, by, sim = sd.greedy_keep(len(V), I, J, S, 1 - eps)
    ref_removed, ref_by = sd.semdedup_ref(V, eps)
    assert (removed == ref_removed).all()
    assert (by == ref_by).all()
    assert np.allclose(sim[removed], np.einsum("ij,ij->i", V[removed], V[by[removed]]), atol=1e-5)


def test_pairs_do_not_depend_on_block_size():
    V = near_dup_vectors(np.random.default_rng(1))
    a = sd.similar_pairs(V, 0.9, block_rows=1000)
    b = sd.similar_pairs(V, 0.9, block_rows=5)
    assert all((x == y).all() for x, y in zip(a[:2], b[:2]))
    assert np.allclose(a[2], b[2], atol=1e-6)


def write(tmp, ids, V, level_1, distance, scores=None, docs_ids=None):
    pq.write_table(pa.table({"id": docs_ids or ids, "text": ["t"] * len(docs_ids or ids)}), tmp / "documents.parquet")
    pq.write_table(pa.table({"id": ids, "vector": pa.array(V.astype(np.float32).tolist(), pa.list_(pa.float32()))}),
                   tmp / "embeddings.parquet")
    pq.write_table(pa.table({"id": ids, "level_1": pa.array(level_1, pa.int32()),
                             "distance": pa.array(distance, pa.float32()),
                             "rank": pa.array(np.zeros(len(ids)), pa.int32())}), tmp / "clusters.parquet")
    names = ["documents", "embeddings", "clusters"]
    if scores is not None:
        pq.write_table(pa.table({"id": ids, "score": pa.array(scores, pa.float64())}), tmp / "quality.parquet")
        names.append("quality")
    return {n: tmp / f"{n}.parquet" for n in names}


def load(spark, files, partitions=None):
    t = {k: spark.read.parquet(str(v)) for k, v in files.items()}
    return {k: v.repartition(partitions) for k, v in t.items()} if partitions else t


@pytest.fixture(scope="module")
def dup_tables(tmp_path_factory):
    """30 near-duplicate groups of 4 and 40 singles, over 3 level-1 clusters; exact copies of
    one vector sit in different clusters and must survive (dedup is within a cluster)."""
    tmp = tmp_path_factory.mktemp("semdedup")
    rng = np.random.default_rng(2)
    V = near_dup_vectors(rng)
    n = len(V)
    group = np.r_[np.repeat(np.arange(30), 4), np.arange(30, 70)]
    level_1 = group % 3
    ids = [f"d{i:03d}" for i in range(n)]
    scores = rng.random(n)
    distance = rng.random(n)
    # Two copies of the last single, in another cluster.
    V = np.vstack([V, V[-1], V[-1]])
    ids += ["copy_a", "copy_b"]
    level_1 = np.r_[level_1, (level_1[-1] + 1) % 3, (level_1[-1] + 1) % 3]
    scores = np.r_[scores, 0.1, 0.9]
    distance = np.r_[distance, 0.5, 0.5]
    return write(tmp, ids, V, level_1, distance, scores), ids, V, level_1, scores, distance


def test_stage_removes_near_duplicates_within_clusters(spark, dup_tables):
    files, ids, V, level_1, scores, distance = dup_tables
    cfg = sd.Config(eps=0.05, keep="quality")
    out = run_stage(spark, sd, load(spark, files, partitions=4), cfg)
    rem = out["removed"].toPandas().set_index("id")
    kept = {r["id"] for r in out["documents"].select("id").collect()}
    assert set(rem["reason"]) == {"semantic_duplicate"} and set(rem["stage"]) == {"semantic_dedup"}
    assert kept | set(rem.index) == set(ids) and not kept & set(rem.index)
    # Per cluster, the reference on the same order gives the same removals.
    idx = {i: k for k, i in enumerate(ids)}
    expect = set()
    for c in np.unique(level_1):
        members = [k for k in range(len(ids)) if level_1[k] == c]
        order = sorted(members, key=lambda k: (-scores[k], distance[k], ids[k]))
        r, by = sd.semdedup_ref(V[order], 0.05)
        expect |= {ids[order[k]] for k in np.flatnonzero(r)}
        for k in np.flatnonzero(r):
            assert rem.loc[ids[order[k]], "by_id"] == ids[order[by[k]]]
    assert set(rem.index) == expect
    # The kept document of a pair is the better one, and its similarity is reported.
    for i, row in rem.iterrows():
        assert scores[idx[row["by_id"]]] >= scores[idx[i]]
        assert row["score"] >= 0.95
    assert "copy_a" in rem.index and rem.loc["copy_a", "by_id"] == "copy_b"
    assert "d159" in kept  # the original of the copies lives in another cluster
    per_eps = out["stats"]["removed_per_eps"]
    assert per_eps["0.05"] == len(rem)
    counts = [per_eps[k] for k in sorted(per_eps, key=float)]
    assert counts == sorted(counts)  # larger eps never removes fewer


def test_keep_closest_and_partition_independence(spark, dup_tables):
    files = dup_tables[0]
    distance = dup_tables[5]
    ids = dup_tables[1]
    a = run_stage(spark, sd, load(spark, files, partitions=1), sd.Config(eps=0.05, keep="centroid"))
    b = run_stage(spark, sd, load(spark, files, partitions=6), sd.Config(eps=0.05, keep="centroid"))
    ra = a["removed"].toPandas().sort_values("id").reset_index(drop=True)
    rb = b["removed"].toPandas().sort_values("id").reset_index(drop=True)
    assert ra[["id", "by_id"]].equals(rb[["id", "by_id"]])
    d = dict(zip(ids, distance))
    assert all(d[r.by_id] <= d[r.id] for r in ra.itertuples())
    # The in-memory helper (for experiments and benchmarks) removes what the stage removes.
    V, level_1 = dup_tables[2], dup_tables[3]
    mask = sd.removed_mask(V, level_1, np.asarray(distance, np.float32), ids, eps=0.05)
    assert sorted(np.asarray(ids)[mask].tolist()) == ra["id"].tolist()


def test_removed_documents_are_not_considered(spark, dup_tables, tmp_path):
    files, ids, V, level_1, scores, distance = dup_tables
    # Keep only the first document of each group in `documents`: nothing left to remove there.
    docs_ids = [i for k, i in enumerate(ids[:120]) if k % 4 == 0] + ids[120:]
    files2 = write(tmp_path, ids, V, level_1, distance, scores, docs_ids=docs_ids)
    out = run_stage(spark, sd, load(spark, files2), sd.Config(eps=0.05))
    rem = {r["id"] for r in out["removed"].collect()}
    assert rem == {"copy_a"}
    assert out["stats"]["keep"] == "quality"


def test_bad_config(spark, dup_tables):
    files = {k: v for k, v in dup_tables[0].items() if k != "quality"}
    with pytest.raises(ConfigError, match="quality table"):
        run_stage(spark, sd, load(spark, files), sd.Config(keep="quality"))
    with pytest.raises(Exception, match="in \\(0, 1\\)"):
        sd.Config(report_eps=[0.1, 1.5])
    with pytest.raises(Exception, match="less than 1"):
        sd.Config(eps=1.0)
