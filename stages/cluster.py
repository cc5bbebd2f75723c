"""cluster: hierarchical k-means with resampling (Vo et al., 2024) over the embeddings.

Level 1 runs on Spark: the valid, normalised vectors are packed once into binary blocks (one
block per up to `block_rows` rows, ids in order) and cached; each Lloyd iteration broadcasts the
centroids and every partition returns fixed-point partial sums and counts from the numba kernels
inside mapInArrow, which the driver adds up. Resampling steps pull only the `sample_size`
closest (or random) points per cluster to the driver. Levels above cluster centroids in memory.
Below `in_memory_max_rows` rows, level 1 runs in memory on the driver with the same kernels and
the same reductions, so both paths give the same clusters.

Ties are broken by id, randomness comes from `seed` and hashed ids, and sums are exact, so the
result does not depend on the number of partitions or threads.

Rows whose vector cannot be clustered (null, wrong dimension, NaN/inf, zero when normalising)
are left out of `clusters` and counted by reason in the stage's stats.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
from pydantic import Field, field_validator

from thresher.stages.base import StageConfig, StageSpec, Strict
from thresher.schemas.errors import StageError
from thresher.stages.arrow_bytes import binary_rows, binary_values


log = logging.getLogger("thresher.cluster")


class LevelConfig(Strict):
    n_clusters: int = Field(ge=1)
    n_iters: int = Field(20, ge=0)
    n_resampling_steps: int = Field(0, ge=0)
    sample_size: int = Field(10, ge=1)
    sampling: Literal["closest", "random"] = "closest"


def _default_levels() -> list[LevelConfig]:
    return [LevelConfig(n_clusters=100, n_resampling_steps=2, sample_size=10),
            LevelConfig(n_clusters=10, n_resampling_steps=2, sample_size=5)]


class Config(StageConfig):
    # Bottom level first; n_clusters must not grow going up.
    levels: list[LevelConfig] = Field(default_factory=_default_levels)
    # l2_normalized: squared L2 on unit vectors (cosine geometry); l2: raw vectors.
    distance: Literal["l2_normalized", "l2"] = "l2_normalized"
    # Precision of the screening product; the labels are the fp32 labels whatever it is.
    dtype: Literal["auto", "float32", "bf16"] = "auto"
    backend: Literal["auto", "cpu", "cuda"] = "auto"
    # An empty cluster keeps its centroid, or moves to one of the points farthest from theirs.
    empty_clusters: Literal["keep", "farthest"] = "keep"
    # Up to this many vectors, level 1 runs in memory on the driver (same result).
    in_memory_max_rows: int = Field(200_000, ge=0)
    # k-means++ seeding runs on at most this many vectors per level (at least n_clusters).
    init_sample: int = Field(50_000, ge=1)
    # Vectors per cached binary block (the unit a Spark row carries).
    block_rows: int = Field(4096, ge=1)

    @field_validator("levels")
    @classmethod
    def _levels_ok(cls, v):
        if not v:
            raise ValueError("at least one level is needed")
        for i in range(1, len(v)):
            if v[i].n_clusters > v[i - 1].n_clusters:
                raise ValueError(f"levels[{i}].n_clusters={v[i].n_clusters} exceeds levels[{i - 1}].n_clusters={v[i - 1].n_clusters}")
        return v


def id_keys(ids) -> np.ndarray:
    """A uint64 per id, the seed of every random choice about that document."""
    return np.fromiter((int.from_bytes(hashlib.blake2b(s.encode(), digest_size=8).digest(), "little") for s in ids),
                       dtype=np.uint64, count=len(ids))


# ---------------------------------------------------------------------------------- packing
PACK_SCHEMA = ("kind string, ids array<string>, keys binary, vecs binary, n long, maxabs double, "
               "reason string")


def _pack_fn(d: int, normalize: bool, block_rows: int):
    def pack(batches):
        from thresher.kernels.threads import limit_task_threads

        limit_task_threads()
        bad: dict[str, int] = {}
        buf_ids: list = []
        buf_vecs: list = []
        buffered = 0

        def flush():
            nonlocal buf_ids, buf_vecs, buffered
            if not buffered:
                return None
            ids = pa.concat_arrays(buf_ids)
            X = np.concatenate(buf_vecs)
            buf_ids, buf_vecs, buffered = [], [], 0
            return pa.RecordBatch.from_pydict({
                "kind": ["block"], "ids": pa.array([ids.to_pylist()], pa.list_(pa.string())),
                "keys": [id_keys(ids.to_pylist()).tobytes()], "vecs": [X.tobytes()],
                "n": [len(X)], "maxabs": [float(np.abs(X).max())], "reason": [None]},
                schema=_PACK_ARROW)

        for b in batches:
            ids = b.column(0)
            vec = b.column(1)
            m = b.num_rows
            if m == 0:
                continue
            valid = np.asarray(vec.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
            lens = np.zeros(m, np.int64)
            if valid.any():
                lens[valid] = vec.filter(pa.array(valid)).value_lengths().to_numpy(zero_copy_only=False)
            ok = valid & (lens == d)
            bad["null_vector"] = bad.get("null_vector", 0) + int((~valid).sum())
            bad["wrong_dimension"] = bad.get("wrong_dimension", 0) + int((valid & (lens != d)).sum())
            if not ok.any():
                continue
            sel = pa.array(ok)
            good = vec.filter(sel)
            X = np.asarray(good.flatten().to_numpy(zero_copy_only=False), dtype=np.float32).reshape(-1, d)
            keep = np.isfinite(X).all(1)
            bad["non_finite"] = bad.get("non_finite", 0) + int((~keep).sum())
            if normalize:
                nrm = np.linalg.norm(X, axis=1)
                zero = keep & (nrm == 0)
                bad["zero_vector"] = bad.get("zero_vector", 0) + int(zero.sum())
                keep &= ~zero
                X = X / np.where(nrm > 0, nrm, 1)[:, None]
            gid = ids.filter(sel)
            if not keep.all():
                gid = gid.filter(pa.array(keep))
                X = X[keep]
            X = np.ascontiguousarray(X, dtype=np.float32)
            pos = 0
            while pos < len(X):
                take = min(block_rows - buffered, len(X) - pos)
                buf_ids.append(gid.slice(pos, take))
                buf_vecs.append(X[pos:pos + take])
                buffered += take
                pos += take
                if buffered >= block_rows:
                    yield flush()
        out = flush()
        if out is not None:
            yield out
        for reason, count in bad.items():
            if count:
                yield pa.RecordBatch.from_pydict({"kind": ["bad"], "ids": pa.array([[]], pa.list_(pa.string())),
                                                  "keys": [b""], "vecs": [b""], "n": [count], "maxabs": [0.0],
                                                  "reason": [reason]}, schema=_PACK_ARROW)

    return pack


_PACK_ARROW = pa.schema([("kind", pa.string()), ("ids", pa.list_(pa.string())), ("keys", pa.binary()),
                         ("vecs", pa.binary()), ("n", pa.int64()), ("maxabs", pa.float64()), ("reason", pa.string())])


def _partition_arrays(batches, d: int):
    """All blocks of one partition: ids (list, in id order), keys (uint64), X (n, d)."""
    ids: list = []
    keys: list = []
    vecs: list = []
    for b in batches:
        if b.num_rows == 0:
            continue
        ids_col = b.column(b.schema.get_field_index("ids"))
        keys_col = b.column(b.schema.get_field_index("keys"))
        vecs_col = b.column(b.schema.get_field_index("vecs"))
        for i in range(b.num_rows):
            ids.extend(ids_col[i].as_py())
            keys.append(np.frombuffer(keys_col[i].as_py(), dtype=np.uint64))
            vecs.append(np.frombuffer(vecs_col[i].as_py(), dtype=np.float32).reshape(-1, d))
    if not ids:
        return [], np.empty(0, np.uint64), np.empty((0, d), np.float32)
    return ids, np.concatenate(keys), np.ascontiguousarray(np.concatenate(vecs))


# The bounds each partition's last assignment left (kmeans_cpu.bound_check) are kept between
# Spark passes in a file (label, bound and candidate set: 12 + 2 m bytes a row for k < 32768;
# m = CPUBackend.CANDIDATES = 16 at k >= 512 (fp32 or bf16 screening), so 44 bytes, else 1), so
# whichever Python worker runs the partition next reads them back. The files live in the stage's
# ctx.scratch (private, removed by the runner when the stage ends); a task without them (another
# host, a lost file) screens every row: where a task runs changes speed, never labels.
def _partition_points(scratch: str, keys: np.ndarray, X: np.ndarray):
    """Points of this partition with the bounds of its previous pass on this executor, if any,
    and where to keep the new ones (None outside a Spark task)."""
    from pyspark import TaskContext

    from thresher.kernels.backend import Points

    P = Points(X)
    ctx = TaskContext.get()
    if ctx is None or len(keys) == 0:
        return P, None
    # The rows must be the very same, in the same order: keys are hashed ids.
    with np.errstate(over="ignore"):
        fp = np.array([len(keys), keys[0], keys[-1], np.bitwise_xor.reduce(keys),
                       np.add.reduce(keys * np.arange(1, len(keys) + 1, dtype=np.uint64))], np.uint64)
    path = Path(scratch) / f"{ctx.partitionId()}.npz"
    b = read_bounds(path, fp, len(keys))
    if b is not None:
        P.cache["bounds"] = b
    return P, (path, fp)


def read_bounds(path: Path, fp: np.ndarray, n: int) -> dict | None:
    """The bounds state kept by write_bounds, if it is there and belongs to these n rows."""
    try:
        with np.load(path) as z:
            if np.array_equal(z["fp"], fp) and z["labels"].shape == (n,):
                return {"C": z["C"], "labels": z["labels"].copy(), "lb": z["lb"].copy(),
                        "cand": z["cand"].astype(np.int32)}
    except (OSError, KeyError, ValueError):
        pass
    return None


def write_bounds(path: Path, fp: np.ndarray, b: dict) -> None:
    """Atomically replaces the file: a reader sees the old state or the new, never a part."""
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")
    cand = b["cand"]
    # Candidate sets as int16 while centroid indices fit (-1 pads them): 2 bytes a slot.
    np.savez(tmp, fp=fp, C=b["C"], labels=b["labels"], lb=b["lb"],
             cand=cand.astype(np.int16) if len(b["C"]) <= np.iinfo(np.int16).max else cand)
    os.replace(tmp, path)


def _keep_bounds(P, slot) -> int:
    """Keep P's bounds for the partition's next pass; returns the rows this pass screened."""
    from thresher.stages.scratch import owned_dir

    if slot is not None and "bounds" in P.cache:
        path, fp = slot
        try:
            if owned_dir(path.parent):  # never a symlink or another user's folder
                write_bounds(path, fp, P.cache["bounds"])
        except OSError:
            pass  # no bounds next time: the pass screens every row
    return int(round(P.cache.get("screened_share", 1.0) * len(P)))


def _merge_sorted(rows: list[tuple], m: int) -> list[tuple]:
    rows.sort(key=lambda t: t[:-1])
    return rows[:m]


def _executor_backend(pref):
    """The kernels' backend inside a Python worker, with numba and torch capped to the task's
    threads (torch is imported first when the bf16 path will use it, so the cap reaches it)."""
    from thresher.kernels.threads import limit_task_threads
    from thresher.kernels.backend import pick_backend

    be = pick_backend(*pref)
    if getattr(be, "matmul", "") == "bf16":
        import torch  # noqa: F401
    limit_task_threads()
    return be


# ---------------------------------------------------------------------------------- Spark source
class SparkSource:
    """Level 1 on Spark: the kernels run in executors over the cached blocks."""

    def __init__(self, spark, blocks, n: int, d: int, maxabs: float, backend: str, dtype: str, scratch: Path):
        from thresher.kernels import kmeans_cpu as cpu

        self.spark = spark
        self.blocks = blocks
        self.n, self.d = n, d
        self.scale = cpu.fixed_scale(n, maxabs)
        self.pref = (backend, dtype)
        self.passes = 0
        # This run's private folder for the bounds files (see _keep_bounds).
        self.scratch = str(scratch)
        self.screened: list[float] = []  # share of rows screened, per Lloyd pass

    def _run(self, fn, schema: str):
        self.passes += 1
        return self.blocks.mapInArrow(fn, schema).collect()

    def lloyd_pass(self, C, n_far):
        from thresher.kernels.hkmeans import PassResult

        d, scale, pref, scratch = self.d, self.scale, self.pref, self.scratch
        bc = self.spark.sparkContext.broadcast(np.asarray(C, dtype=np.float32))

        def fn(batches):
            from thresher.kernels import kmeans_cpu as cpu

            be = _executor_backend(pref)
            ids, keys, X = _partition_arrays(batches, d)
            if not ids:
                return
            Cb = bc.value
            P, slot = _partition_points(scratch, keys, X)
            lab, d2 = be.assign(P, Cb)
            screened = _keep_bounds(P, slot)
            sums, counts = be.update(P, lab, len(Cb), scale)
            far = cpu.farthest(d2, n_far)
            yield pa.RecordBatch.from_pydict({
                "sums": [sums.tobytes()], "counts": [counts.tobytes()],
                "inertia": [float(d2.astype(np.float64).sum())], "screened": [screened],
                "far_d2": [d2[far].astype(np.float64).tobytes()],
                "far_ids": pa.array([[ids[i] for i in far]], pa.list_(pa.string())),
                "far_vecs": [X[far].tobytes()]})

        k = len(C)

        def unpack(r):
            fd = np.frombuffer(r["far_d2"], np.float64)
            fv = np.frombuffer(r["far_vecs"], np.float32).reshape(-1, d)
            return (np.frombuffer(r["sums"], np.int64).reshape(k, d), np.frombuffer(r["counts"], np.int64),
                    r["inertia"], [(-fd[i], r["far_ids"][i], fv[i]) for i in range(len(fd))], r["screened"])

        def merge(a, b):
            # Integer sums: exact in any order, so the tree's shape cannot change the result.
            return a[0] + b[0], a[1] + b[1], a[2] + b[2], _merge_sorted(a[3] + b[3], n_far), a[4] + b[4]

        self.passes += 1
        # Partials are added up in the executors (a tree), so the driver holds one k x d sum,
        # not one per partition.
        sums, counts, inertia, far, screened = (
            self.blocks.mapInArrow(fn, "sums binary, counts binary, inertia double, screened long, far_d2 binary, "
                                       "far_ids array<string>, far_vecs binary")
            .rdd.map(unpack).treeReduce(merge, depth=2))
        bc.unpersist()
        self.screened.append(round(screened / self.n, 4))
        fv = np.array([t[-1] for t in far], np.float32).reshape(-1, d)
        return PassResult(sums, counts, inertia, fv)

    def select(self, C, r, mode, salt_):
        from thresher.kernels.hkmeans import mix64

        d, pref, scratch = self.d, self.pref, self.scratch
        bc = self.spark.sparkContext.broadcast(np.asarray(C, dtype=np.float32))

        def fn(batches):
            from thresher.kernels import kmeans_cpu as cpu

            be = _executor_backend(pref)
            ids, keys, X = _partition_arrays(batches, d)
            if not ids:
                return
            Cb = bc.value
            P, slot = _partition_points(scratch, keys, X)
            lab, d2 = be.assign(P, Cb)
            _keep_bounds(P, slot)
            key = d2.astype(np.float64) if mode == "closest" else mix64(keys, salt_).astype(np.float64)
            idx = cpu.topr(key, lab.astype(np.int64), len(Cb), r)
            cl = np.repeat(np.arange(len(Cb), dtype=np.int32), r)[idx.ravel() >= 0]
            sel = idx[idx >= 0]
            yield pa.RecordBatch.from_pydict({
                "cl": pa.array(cl), "key": pa.array(key[sel]), "id": pa.array([ids[i] for i in sel], pa.string()),
                "vec": binary_rows(X[sel])})

        from pyspark.sql import Window
        from pyspark.sql import functions as F

        self.passes += 1
        # Each partition offers its own r best per cluster; the window keeps the r best of
        # those per cluster in the executors, so the driver receives at most k * r rows however
        # many rows and partitions there are.
        w = Window.partitionBy("cl").orderBy("key", "id")
        rows = (self.blocks.mapInArrow(fn, "cl int, key double, id string, vec binary")
                .withColumn("_r", F.row_number().over(w)).where(F.col("_r") <= r).drop("_r")
                .toArrow())
        bc.unpersist()
        # Same order as ArraySource.select: by cluster, then key, then id.
        rows = rows.sort_by([("cl", "ascending"), ("key", "ascending"), ("id", "ascending")])
        return binary_values(rows.column("vec"), np.float32)[1].reshape(-1, d).copy()

    def init_sample(self, m, salt_):
        from thresher.kernels.hkmeans import mix64

        d = self.d
        if m >= self.n:
            frac = 2.0
        else:
            frac = min(2.0, 1.3 * m / self.n + 1e-6)
        while True:
            thr = np.uint64(min(2 ** 64 - 1, int(frac * 2 ** 64)))

            def fn(batches, thr=thr):
                ids, keys, X = _partition_arrays(batches, d)
                if not ids:
                    return
                mk = mix64(keys, salt_)
                sel = np.flatnonzero(mk <= thr)
                yield pa.RecordBatch.from_pydict({
                    "key": [mk[sel].tobytes()], "ids": pa.array([[ids[i] for i in sel]], pa.list_(pa.string())),
                    "vecs": [X[sel].tobytes()]})

            rows = self._run(fn, "key binary, ids array<string>, vecs binary")
            cand: list[tuple] = []
            for row in rows:
                key = np.frombuffer(row["key"], np.uint64)
                vecs = np.frombuffer(row["vecs"], np.float32).reshape(-1, d)
                cand += [(int(key[i]), row["ids"][i], vecs[i]) for i in range(len(key))]
            if len(cand) >= min(m, self.n) or frac >= 1.0:
                picked = _merge_sorted(cand, m)
                return np.array([t[-1] for t in picked], np.float32).reshape(-1, d)
            frac = min(1.0, frac * 2)


# ---------------------------------------------------------------------------------- stage
def _levels(cfg: Config):
    from thresher.kernels.hkmeans import Level

    return [Level(**lv.model_dump()) for lv in cfg.levels]


def run(spark, tables, cfg: Config, ctx):
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    from thresher.kernels.backend import pick_backend
    from thresher.kernels.hkmeans import HierarchicalKMeans, fit_level, fit_upper

    seed = cfg.seed or 0
    emb = tables["embeddings"].select("id", "vector")
    if "documents" in tables:
        # Only documents still in the pipeline get clustered.
        emb = emb.join(tables["documents"].select("id"), "id", "left_semi")
    dims = emb.where(F.col("vector").isNotNull()).groupBy(F.size("vector").alias("d")).count().collect()
    if not dims:
        raise StageError("cluster: table 'embeddings' has no vectors to cluster")
    # The model's dimension is the one most rows have; other rows are set aside.
    d = int(max(dims, key=lambda r: (r["count"], r["d"]))["d"])
    if d < 1:
        raise StageError("cluster: column 'vector' of table 'embeddings' holds empty vectors")
    normalize = cfg.distance == "l2_normalized"
    packed = (emb.sortWithinPartitions("id")
              .mapInArrow(_pack_fn(d, normalize, cfg.block_rows), PACK_SCHEMA)
              .persist(StorageLevel.MEMORY_AND_DISK))
    try:
        meta = packed.select("kind", "n", "maxabs", "reason").collect()
        n = sum(r["n"] for r in meta if r["kind"] == "block")
        bad: dict[str, int] = {}
        for r in meta:
            if r["kind"] == "bad":
                bad[r["reason"]] = bad.get(r["reason"], 0) + r["n"]
        if n == 0:
            raise StageError(f"cluster: no valid vectors in table 'embeddings' (set aside: {bad})")
        maxabs = max(r["maxabs"] for r in meta if r["kind"] == "block")
        levels = _levels(cfg)
        be = pick_backend(cfg.backend, cfg.dtype)
        blocks = packed.where(F.col("kind") == "block").select("ids", "keys", "vecs")
        in_memory = n <= cfg.in_memory_max_rows
        log.info("cluster: %d vectors of dimension %d, level 1 %s", n, d, "in memory" if in_memory else "on Spark")
        stats: dict = {"vectors": n, "dimension": d, "set_aside": bad, "level1": "memory" if in_memory else "spark",
                       "backend": be.name}
        if in_memory:
            ids, keys, X = _collect(blocks, d)
            hk = HierarchicalKMeans(levels=levels, seed=seed, empty=cfg.empty_clusters, init_sample=cfg.init_sample,
                                    backend=cfg.backend, dtype=cfg.dtype).fit(X, keys=keys)
            labels, dist, cents, parents = hk.labels_, hk.distances_, hk.centroids_, hk.parents_[:-1]
            clusters = _clusters_df(spark, ids, labels, dist)
            stats["level_seconds"] = hk.level_seconds_
        else:
            src = SparkSource(spark, blocks, n, d, maxabs, cfg.backend, cfg.dtype, ctx.scratch)
            t0 = time.perf_counter()
            C1 = fit_level(src, levels[0], seed, 1, cfg.init_sample, cfg.empty_clusters)
            counts1 = src.lloyd_pass(C1, 0).counts
            times = [round(time.perf_counter() - t0, 3)]
            cents, parents = fit_upper(C1, levels[1:], seed, be, cfg.empty_clusters, cfg.init_sample, times)
            stats["level_seconds"] = times
            clusters = _clusters_spark(spark, blocks, d, C1, parents, (cfg.backend, cfg.dtype))
            stats["spark_passes"] = src.passes + 1
            # Share of level-1 rows each Lloyd pass screened (the others kept their label by
            # their bounds); the final counting pass included.
            stats["level1_screened_share"] = src.screened
            labels = None
        sizes = [_level1_sizes(labels, counts1 if labels is None else None, len(cents[0]))]
        for p, c in zip(parents, cents[1:]):
            sizes.append(np.bincount(p, weights=sizes[-1], minlength=len(c)).astype(np.int64))
        centroids = _centroids_df(spark, cents, parents, sizes)
        stats["clusters_per_level"] = [int(len(c)) for c in cents]
        stats["empty_clusters_per_level"] = [int((s == 0).sum()) for s in sizes]
        return {"clusters": clusters, "centroids": centroids, "stats": stats}
    finally:
        # On Spark, `clusters` still derives from the packed blocks: writing it packs them once
        # more instead of holding the whole cache through the stages that follow.
        packed.unpersist()


def _level1_sizes(labels, counts, k):
    if labels is not None:
        return np.bincount(labels[:, 0], minlength=k).astype(np.int64)
    return np.asarray(counts, dtype=np.int64)


def _collect(blocks, d):
    rows = blocks.collect()
    ids: list = []
    keys, vecs = [], []
    for r in rows:
        ids.extend(r["ids"])
        keys.append(np.frombuffer(r["keys"], np.uint64))
        vecs.append(np.frombuffer(r["vecs"], np.float32).reshape(-1, d))
    order = np.argsort(np.array(ids, dtype=object), kind="stable")
    X = np.concatenate(vecs)[order]
    return [ids[i] for i in order], np.concatenate(keys)[order], np.ascontiguousarray(X)


def _rank(level1: np.ndarray, dist: np.ndarray) -> np.ndarray:
    """Rank by distance within each level-1 cluster, 0 = closest; rows are in id order, so the
    stable sort breaks ties by id."""
    order = np.lexsort((np.arange(len(dist)), dist, level1))
    rank = np.empty(len(dist), np.int32)
    lab = level1[order]
    start = np.r_[0, np.flatnonzero(np.diff(lab)) + 1]
    runs = np.diff(np.r_[start, len(lab)])
    rank[order] = np.arange(len(lab)) - np.repeat(start, runs)
    return rank


def _clusters_df(spark, ids, labels, dist):
    cols = {"id": pa.array(ids, pa.string())}
    for l in range(labels.shape[1]):
        cols[f"level_{l + 1}"] = pa.array(labels[:, l], pa.int32())
    cols["distance"] = pa.array(dist, pa.float32())
    cols["rank"] = pa.array(_rank(labels[:, 0], dist), pa.int32())
    return spark.createDataFrame(pa.table(cols))


def _clusters_spark(spark, blocks, d, C1, parents, pref):
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    L = 1 + len(parents)
    bc = spark.sparkContext.broadcast((np.asarray(C1, np.float32), [np.asarray(p, np.int32) for p in parents]))
    schema = pa.schema([("id", pa.string())] + [(f"level_{l + 1}", pa.int32()) for l in range(L)] + [("distance", pa.float32())])

    def fn(batches):
        from thresher.kernels.backend import Points
        from thresher.kernels.hkmeans import chain_labels

        be = _executor_backend(pref)
        ids, _, X = _partition_arrays(batches, d)
        if not ids:
            return
        C, par = bc.value
        lab, d2 = be.assign(Points(X), C)
        labels = chain_labels(lab, par)
        cols = [pa.array(ids, pa.string())] + [pa.array(labels[:, l]) for l in range(L)]
        cols.append(pa.array(np.sqrt(np.maximum(d2, 0)).astype(np.float32)))
        yield pa.RecordBatch.from_arrays(cols, schema=schema)

    ddl = ", ".join(["id string"] + [f"level_{l + 1} int" for l in range(L)] + ["distance float"])
    df = blocks.mapInArrow(fn, ddl)
    w = Window.partitionBy("level_1").orderBy("distance", "id")
    return df.withColumn("rank", (F.row_number().over(w) - 1).cast("int"))


def _centroids_df(spark, cents, parents, sizes):
    tables = []
    for l, C in enumerate(cents):
        k = len(C)
        par = pa.array(parents[l], pa.int32()) if l < len(parents) else pa.nulls(k, pa.int32())
        tables.append(pa.table({
            "level": pa.array(np.full(k, l + 1, np.int32)), "cluster_id": pa.array(np.arange(k, dtype=np.int32)),
            "parent_id": par, "size": pa.array(np.asarray(sizes[l], np.int64)),
            "vector": pa.ListArray.from_arrays(pa.array(np.arange(k + 1, dtype=np.int32) * C.shape[1]),
                                               pa.array(np.asarray(C, np.float32).ravel()))}))
    return spark.createDataFrame(pa.concat_tables(tables))


SPEC = StageSpec(name="cluster", inputs=("embeddings",), optional_inputs=("documents",),
                 outputs=("clusters", "centroids"))
