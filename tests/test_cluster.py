"""Hierarchical k-means (kernels/hkmeans.py) and the cluster stage on local Spark."""

from __future__ import annotations

from thresher.stages.base import run_stage
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from thresher import schemas
from thresher.kernels.hkmeans import HierarchicalKMeans


# ------------------------------------------------------------------------------ data
def gaussian_mixture_2d(seed=0):
    """The paper's 2-D set: Gaussians of 7000, 1000 and 500 points and 500 uniform points."""
    rng = np.random.default_rng(seed)
    return np.vstack([rng.normal([-1.0, -1.0], 0.5, (7000, 2)), rng.normal([1.5, 1.5], 0.3, (1000, 2)),
                      rng.normal([1.5, -1.5], 0.3, (500, 2)), rng.uniform(-3, 3, (500, 2))]).astype(np.float32)


def kl_to_uniform(P, h=0.5, step=0.02):
    """KL(KDE of P with bandwidth h || uniform) on a grid of `step` over [-3, 3]^2."""
    g = np.arange(-3, 3 + 1e-9, step)
    ex = np.exp(-(g[:, None] - P[None, :, 0]) ** 2 / (2 * h * h))
    ey = np.exp(-(g[:, None] - P[None, :, 1]) ** 2 / (2 * h * h))
    p = ex @ ey.T
    p /= p.sum()
    return float((p * np.log(p * p.size + 1e-300)).sum())


def zipf_mixture(seed=0, d=16, comps=20):
    rng = np.random.default_rng(seed)
    a = np.log(50) / np.log(comps)  # sizes fall from 8000 to 8000/50 = 160
    sizes = np.round(8000 * np.arange(1, comps + 1) ** -a).astype(int)
    means = rng.normal(size=(comps, d)) * 3.0
    X = np.vstack([means[c] + rng.normal(size=(s, d)) for c, s in enumerate(sizes)]).astype(np.float32)
    return X, np.repeat(np.arange(comps), sizes)


def entropy_ratio(labels, comps):
    p = np.bincount(labels, minlength=comps) / len(labels)
    p = p[p > 0]
    return float(-(p * np.log(p)).sum() / np.log(comps))


# ------------------------------------------------------------------------------ faithfulness
def test_paper_2d_experiment_kl_ordering():
    X = gaussian_mixture_2d()
    # The paper's levels are 3000/1000/300; 1000/300/100 keeps the test short and gives the same
    # ordering (at 3000/1000/300 this code gives 0.900, 0.336, 0.107, 0.090, 0.051).
    top = 100
    lv = lambda k, steps=0: {"n_clusters": k, "n_iters": 10, "n_resampling_steps": steps, "sample_size": 2}  # noqa: E731
    kl = {"data": kl_to_uniform(X)}
    for name, levels in [("flat", [lv(top)]), ("2 levels", [lv(300), lv(top)]),
                         ("3 levels", [lv(1000), lv(300), lv(top)]),
                         ("3 levels + resampling", [lv(1000, 3), lv(300, 3), lv(top, 3)])]:
        hk = HierarchicalKMeans(levels=levels, seed=0).fit(X)
        assert hk.centroids_[-1].shape == (top, 2)
        kl[name] = kl_to_uniform(hk.centroids_[-1])
    vals = list(kl.values())
    assert all(a > b for a, b in zip(vals, vals[1:])), kl
    # The paper: 0.942, 0.340, 0.132, 0.081, 0.0418 (uniform random points: 0.040 +- 0.007).
    assert 0.8 < kl["data"] < 1.1 and 0.25 < kl["flat"] < 0.45, kl


def balanced_sample(labels, budget, seed=0):
    """The issue's sampling: the budget split top-down over the cluster tree by the sample
    stage's allocator (balanced), then points drawn at random inside each leaf."""
    from thresher.stages.sample import allocate_tree

    leaves, inv = np.unique(labels[:, ::-1], axis=0, return_inverse=True)
    inv = inv.ravel()
    alloc = allocate_tree(leaves, np.bincount(inv, minlength=len(leaves)), budget, seed=seed)
    rng = np.random.default_rng(seed)
    order = np.argsort(inv, kind="stable")
    bounds = np.r_[0, np.cumsum(np.bincount(inv, minlength=len(leaves)))]
    return np.concatenate([rng.choice(order[bounds[j]:bounds[j + 1]], a, replace=False)
                           for j, a in enumerate(alloc) if a])


@pytest.mark.parametrize("data_seed", [0, 1, 2])
def test_zipf_mixture_balanced_sample_covers_components_evenly(data_seed):
    """The issue's criterion: 2 levels with resampling, a balanced sample of 2000 points, entropy
    over the true components >= 0.94 of the maximum (uniform random sampling: about 0.73).
    Measured for data seeds 0-4 x k-means seeds 0-2: 0.961-0.989; flat k-means 0.87-0.93, the
    same 2 levels without resampling 0.81-0.89."""
    X, comp = zipf_mixture(seed=data_seed)
    lv = lambda k, steps, r: {"n_clusters": k, "n_iters": 10, "n_resampling_steps": steps, "sample_size": r}  # noqa: E731

    def coverage(levels):
        labels = HierarchicalKMeans(levels=levels, seed=0).fit(X).labels_
        return entropy_ratio(comp[balanced_sample(labels, 2000)], 20)

    hier = coverage([lv(200, 3, 10), lv(40, 3, 2)])
    assert hier >= 0.94, hier
    if data_seed == 0:
        # Both the hierarchy and the resampling are needed to get there.
        flat = coverage([lv(40, 0, 1)])
        plain = coverage([lv(200, 0, 1), lv(40, 0, 1)])
        data = entropy_ratio(comp, 20)
        assert hier > max(flat, plain) and min(flat, plain) > data, (hier, flat, plain, data)


# ------------------------------------------------------------------------------ API
def test_hierarchical_kmeans_api_and_determinism():
    X, _ = zipf_mixture(d=8, comps=6)
    X = X[::4]
    kw = dict(levels=[{"n_clusters": 30, "n_iters": 8, "n_resampling_steps": 2, "sample_size": 4}, 5], normalize=True)
    a = HierarchicalKMeans(seed=3, **kw).fit(X)
    b = HierarchicalKMeans(seed=3, **kw).fit(X)
    c = HierarchicalKMeans(seed=4, **kw).fit(X)
    assert a.labels_.shape == (len(X), 2) and a.labels_.dtype == np.int32
    assert [C.shape for C in a.centroids_] == [(30, 8), (5, 8)]
    np.testing.assert_array_equal(a.labels_, b.labels_)
    for ca, cb in zip(a.centroids_, b.centroids_):
        np.testing.assert_array_equal(ca, cb)
    assert not all(np.array_equal(ca, cc) for ca, cc in zip(a.centroids_, c.centroids_))
    # Level 2 labels follow the parents of level 1 clusters; sizes add up.
    np.testing.assert_array_equal(a.labels_[:, 1], a.parents_[0][a.labels_[:, 0]])
    assert a.sizes_[0].sum() == a.sizes_[1].sum() == len(X)
    np.testing.assert_array_equal(a.predict(X), a.labels_)
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    np.testing.assert_allclose(a.distances_, np.linalg.norm(Xn - a.centroids_[0][a.labels_[:, 0]], axis=1), atol=1e-5)
    with pytest.raises(ValueError):
        HierarchicalKMeans(levels=[5, 10]).fit(X)
    with pytest.raises(ValueError):
        HierarchicalKMeans(levels=[5]).fit(np.full((10, 3), np.nan))


# ------------------------------------------------------------------------------ stage
def _write_embeddings(path, X, ids, extra=()):
    vec = pa.array([list(map(float, x)) for x in X] + [e[1] for e in extra], pa.list_(pa.float32()))
    pq.write_table(pa.table({"id": ids + [e[0] for e in extra], "vector": vec}), path)


def _stage_cfg(**kw):
    from thresher.stages.cluster import Config

    base = dict(levels=[{"n_clusters": 16, "n_iters": 2, "n_resampling_steps": 1, "sample_size": 6},
                        {"n_clusters": 4, "n_iters": 5, "n_resampling_steps": 1, "sample_size": 2}],
                seed=7, init_sample=500, block_rows=300)
    return Config(**{**base, **kw})


def _sorted(df, by):
    return df.sort_by([(c, "ascending") for c in by])


def test_cluster_stage_same_result_in_memory_and_on_spark_whatever_the_partitions(spark, tmp_path):
    from thresher.stages import cluster

    X, _ = zipf_mixture(d=12, comps=8)
    rng = np.random.default_rng(0)
    sel = rng.choice(len(X), 1000, replace=False)
    X = X[sel]
    ids = [f"doc-{i:05d}" for i in rng.permutation(len(X))]
    extra = [("bad-nan", [float("nan")] * 12), ("bad-dim", [1.0, 2.0]), ("bad-null", None),
             ("dropped", [0.5] * 12)]
    path = tmp_path / "emb.parquet"
    _write_embeddings(path, X, ids, extra)
    emb = spark.read.parquet(str(path))
    docs = spark.createDataFrame([(i, "t") for i in ids + ["bad-nan", "bad-dim", "bad-null"]], "id string, text string")

    outs = []
    root = Path(tempfile.gettempdir())
    left = set(root.glob("cluster-*"))  # the stage's private scratch folders (other processes')
    for parts, mem in [(1, 0), (4, 0), (3, 10 ** 6)]:
        res = run_stage(spark, cluster, {"embeddings": emb.repartition(parts), "documents": docs},
                          _stage_cfg(in_memory_max_rows=mem))
        assert res["stats"]["level1"] == ("memory" if mem else "spark")
        if not mem:
            # Executors keep each partition's bounds between passes (on local disk, so any worker
            # of the executor finds them), so the second pass already leaves some rows
            # unscreened (a fresh start screens them all); the results below are still
            # identical to the in-memory ones. The stage removes the files when it ends.
            shares = res["stats"]["level1_screened_share"]
            assert shares[0] == 1.0 and shares[1] < 1.0, shares
            assert set(root.glob("cluster-*")) <= left
        assert res["stats"]["set_aside"] == {"non_finite": 1, "wrong_dimension": 1, "null_vector": 1}
        schemas.validate("clusters", res["clusters"].toArrow().schema, "clusters")
        schemas.validate("centroids", res["centroids"].toArrow().schema, "centroids")
        outs.append((_sorted(res["clusters"].toArrow(), ["id"]), _sorted(res["centroids"].toArrow(), ["level", "cluster_id"])))
    cl, ce = outs[0]
    assert cl.num_rows == len(X) and "dropped" not in cl.column("id").to_pylist()
    assert cl.column_names == ["id", "level_1", "level_2", "distance", "rank"]
    for cl2, ce2 in outs[1:]:
        for a, b in [(cl, cl2), (ce, ce2)]:
            for col in a.column_names:
                assert a.column(col).to_pylist() == b.column(col).to_pylist(), f"column {col} differs between runs"

    # Ranks: 0.. within each level-1 cluster, by distance; sizes match the members.
    t = cl.to_pandas()
    for _, g in t.groupby("level_1"):
        assert sorted(g["rank"]) == list(range(len(g)))
        assert (np.diff(g.sort_values("rank")["distance"].to_numpy()) >= 0).all()
    c = ce.to_pandas()
    lvl1 = c[c.level == 1].set_index("cluster_id")
    np.testing.assert_array_equal(lvl1["size"].to_numpy(), np.bincount(t.level_1, minlength=16))
    assert c[c.level == 2]["size"].sum() == len(X) and c[c.level == 2]["parent_id"].isna().all()
    par = lvl1["parent_id"].to_numpy()
    np.testing.assert_array_equal(t.level_2.to_numpy(), par[t.level_1.to_numpy()])
    # Vectors were normalised: centroids of unit vectors have norm <= 1.
    assert max(np.linalg.norm(v) for v in c.vector) <= 1.0 + 1e-5


def test_cluster_config_errors_and_registration():
    from pydantic import ValidationError

    from thresher.stages.cluster import Config

    with pytest.raises(ValidationError, match="exceeds"):
        Config(levels=[{"n_clusters": 4}, {"n_clusters": 8}])
    with pytest.raises(ValidationError):
        Config(levels=[{"n_clusters": 4, "sampling": "sideways"}])
    with pytest.raises(ValidationError):
        Config(levels=[])


def test_bounds_file_round_trip_keeps_full_candidate_sets(tmp_path):
    """What an executor keeps between level-1 passes (stages/cluster.py write_bounds and
    read_bounds): the candidate sets (here the bf16 path's, emulated by numpy on CPUs without
    bf16 dot products), 16 wide with -1 padding, stored as int16 and
    read back unchanged; a pass started from them gives the dense labels; a file of other rows
    (fingerprint or length) is ignored."""
    from thresher.kernels import backend as B
    from thresher.kernels import kmeans_cpu as K
    from thresher.stages import cluster

    rng = np.random.default_rng(3)
    X = rng.normal(size=(3000, 64)).astype(np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    C = X[rng.choice(len(X), 600, replace=False)].copy()
    be = B.CPUBackend("bf16")
    P = B.Points(X)
    be.assign(P, C)
    st = P.cache["bounds"]
    assert st["cand"].shape[1] > 1 and (st["cand"] == -1).any() and (st["cand"] >= 0).sum(1).max() > 1
    fp = np.arange(5, dtype=np.uint64)
    path = tmp_path / "0.npz"
    cluster.write_bounds(path, fp, st)
    back = cluster.read_bounds(path, fp, len(X))
    for key in ("C", "labels", "lb", "cand"):
        np.testing.assert_array_equal(back[key], st[key])
    assert back["cand"].dtype == np.int32
    assert cluster.read_bounds(path, fp + 1, len(X)) is None and cluster.read_bounds(path, fp, len(X) - 1) is None
    # The next pass, from the file, moves the centroids a little: the labels a full assignment gives.
    P2 = B.Points(X)
    P2.cache["bounds"] = back
    C2 = C + 0.002 * rng.normal(size=C.shape).astype(np.float32)
    lab, d2 = be.assign(P2, C2)
    lr, dr = K.assign(X, C2)
    np.testing.assert_array_equal(lab, lr)
    assert P2.cache["screened_share"] < 0.5
