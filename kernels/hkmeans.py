"""Hierarchical k-means with resampling (Vo et al., 2024), in memory, and the pieces the Spark
stage shares with it.

Level 1 clusters the points; level l clusters the centroids of level l-1 (unweighted, which is
what flattens dense regions). Each level runs k-means (k-means++ seeding on a sample, then a
fixed number of Lloyd iterations), then `n_resampling_steps` times: take `sample_size` points
per cluster (the closest to its centroid, or random ones), run a fresh k-means (k-means++ seeding
on the union, then Lloyd) on their union, and reassign every point of the level to the new
centroids. The union holds the same number of points per cluster, so each step flattens the
density the centroids follow.

A level's data is a *source*: anything that can do one Lloyd pass, pick top-r points per cluster,
and draw an init sample. `ArraySource` holds arrays; the Spark stage's source runs the same
kernels inside executors. Both reduce exactly (fixed-point sums, ties broken by row order, which
the stage makes id order), so the two give identical clusters.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from thresher.kernels import kmeans_cpu as cpu
from thresher.kernels.backend import CPUBackend, Points, pick_backend

log = logging.getLogger("thresher.kernels")

_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def mix64(x: np.ndarray, salt: int) -> np.ndarray:
    """splitmix64 of x ^ salt: a per-row random key that depends only on the row and the salt."""
    with np.errstate(over="ignore"):
        z = np.asarray(x, dtype=np.uint64) ^ np.uint64(salt & 0xFFFFFFFFFFFFFFFF)
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def salt(seed: int, *parts: int) -> int:
    return int(np.random.SeedSequence([seed & 0xFFFFFFFF, *parts]).generate_state(2, np.uint64)[0])


@dataclass
class Level:
    """One level's k-means settings (the `levels` entries of HierarchicalKMeans and the stage)."""

    n_clusters: int
    n_iters: int = 20
    n_resampling_steps: int = 0
    sample_size: int = 10
    sampling: str = "closest"  # closest | random

    def __post_init__(self):
        if self.n_clusters < 1:
            raise ValueError(f"n_clusters must be >= 1, got {self.n_clusters}")
        if self.n_iters < 0 or self.n_resampling_steps < 0 or self.sample_size < 1:
            raise ValueError("n_iters and n_resampling_steps must be >= 0, sample_size >= 1")
        if self.sampling not in ("closest", "random"):
            raise ValueError(f"sampling must be closest or random, got {self.sampling!r}")


@dataclass
class PassResult:
    sums: np.ndarray       # (k, d) int64 fixed point
    counts: np.ndarray     # (k,) int64
    inertia: float
    far: np.ndarray        # (m, d) float32: the farthest points, farthest first


class Source(Protocol):
    n: int
    d: int
    scale: float

    def lloyd_pass(self, C: np.ndarray, n_far: int) -> PassResult: ...

    def select(self, C: np.ndarray, r: int, mode: str, salt_: int) -> np.ndarray: ...

    def init_sample(self, m: int, salt_: int) -> np.ndarray: ...


class ArraySource:
    """A level's points in memory. Row order breaks ties; `keys` (uint64 per row) seed the
    random choices, so the stage can give the same keys (hashed ids) in memory and on Spark."""

    def __init__(self, X: np.ndarray, backend: CPUBackend, keys: np.ndarray | None = None):
        self.P = Points(X)
        self.X = self.P.X
        self.n, self.d = self.X.shape
        self.backend = backend
        self.keys = np.arange(self.n, dtype=np.uint64) if keys is None else np.asarray(keys, dtype=np.uint64)
        self.scale = cpu.fixed_scale(self.n, float(np.abs(self.X).max()) if self.n else 1.0)

    def assign(self, C):
        return self.backend.assign(self.P, C)

    def lloyd_pass(self, C, n_far):
        lab, d2 = self.assign(C)
        sums, counts = self.backend.update(self.P, lab, len(C), self.scale)
        far = self.X[cpu.farthest(d2, n_far)] if n_far else np.empty((0, self.d), np.float32)
        return PassResult(sums, counts, float(d2.astype(np.float64).sum()), far)

    def select(self, C, r, mode, salt_):
        lab, d2 = self.assign(C)
        key = d2.astype(np.float64) if mode == "closest" else mix64(self.keys, salt_).astype(np.float64)
        idx = cpu.topr(key, lab.astype(np.int64), len(C), r)
        return self.X[idx[idx >= 0]]

    def init_sample(self, m, salt_):
        # Ordered by the salted keys even when every row is taken: k-means++ sees the same
        # sequence as the Spark source gives it.
        k = mix64(self.keys, salt_)
        idx = np.lexsort((np.arange(self.n), k))[:m]
        return self.X[idx]


def lloyd(source: Source, C: np.ndarray, n_iters: int, empty: str = "keep") -> np.ndarray:
    """`n_iters` Lloyd iterations from C. An empty cluster keeps its centroid, or with
    empty="farthest" moves to one of the points farthest from their centroid."""
    C = np.ascontiguousarray(C, dtype=np.float32)
    k = len(C)
    for _ in range(n_iters):
        res = source.lloyd_pass(C, min(k, 64) if empty == "farthest" else 0)
        C = cpu.centroids_from(res.sums, res.counts, source.scale, C)
        if empty == "farthest":
            empties = np.flatnonzero(res.counts == 0)[: len(res.far)]
            C[empties] = res.far[: len(empties)]
    return C


def fit_level(source: Source, spec: Level, seed: int, level: int, init_sample: int = 50_000,
              empty: str = "keep", on_step=None) -> np.ndarray:
    """Centroids of one level (k-means++ on a sample, Lloyd, resampling steps)."""
    k = min(spec.n_clusters, source.n)
    if k < spec.n_clusters:
        log.warning("level %d: %d clusters asked for %d points; using %d", level, spec.n_clusters, source.n, k)
    sample = source.init_sample(max(k, min(init_sample, source.n)), salt(seed, level, 0))
    idx = cpu.kmeanspp(sample, k, salt(seed, level, 1) & 0xFFFFFFFF)
    C = np.ascontiguousarray(sample[idx])
    C = lloyd(source, C, spec.n_iters, empty)
    if on_step:
        on_step(level, 0)
    backend = getattr(source, "backend", None) or pick_backend()
    for step in range(spec.n_resampling_steps):
        S = source.select(C, spec.sample_size, spec.sampling, salt(seed, level, 2 + step))
        # A fresh k-means on the balanced union (k-means++ on it, then Lloyd): warm-starting
        # from C would leave every centroid where it was, since each sits among its own samples.
        C = np.ascontiguousarray(S[cpu.kmeanspp(S, k, salt(seed, level, 1000 + step) & 0xFFFFFFFF)])
        C = lloyd(ArraySource(S, backend), C, spec.n_iters, empty)
        if on_step:
            on_step(level, step + 1)
    return C


def fit_upper(C1: np.ndarray, levels: list[Level], seed: int, backend: CPUBackend,
              empty: str = "keep", init_sample: int = 50_000, times: list | None = None):
    """Levels 2..L over the centroids below: centroids and the parent of every cluster.
    Appends each level's seconds to `times` when given."""
    cents = [C1]
    parents = []
    for li, spec in enumerate(levels, start=2):
        t0 = time.perf_counter()
        src = ArraySource(cents[-1], backend)
        C = fit_level(src, spec, seed, li, init_sample, empty)
        lab, _ = src.assign(C)
        parents.append(lab)
        cents.append(C)
        if times is not None:
            times.append(round(time.perf_counter() - t0, 3))
    return cents, parents


def chain_labels(lab1: np.ndarray, parents: list[np.ndarray]) -> np.ndarray:
    """(n, L) labels from level-1 labels and each level's parent map."""
    out = np.empty((len(lab1), 1 + len(parents)), dtype=np.int32)
    out[:, 0] = lab1
    for l, p in enumerate(parents, start=1):
        out[:, l] = p[out[:, l - 1]]
    return out


def _levels(levels) -> list[Level]:
    out = []
    for i, lv in enumerate(levels):
        if isinstance(lv, Level):
            out.append(lv)
        elif isinstance(lv, int):
            out.append(Level(n_clusters=lv))
        elif isinstance(lv, dict):
            out.append(Level(**lv))
        else:
            raise TypeError(f"levels[{i}]: expected an int, a dict or a Level, got {type(lv).__name__}")
    if not out:
        raise ValueError("levels: at least one level is needed")
    for i in range(1, len(out)):
        if out[i].n_clusters > out[i - 1].n_clusters:
            raise ValueError(f"levels[{i}].n_clusters={out[i].n_clusters} exceeds the level below ({out[i - 1].n_clusters})")
    return out


@dataclass
class HierarchicalKMeans:
    """Hierarchical k-means with resampling, scikit-learn style.

        hk = HierarchicalKMeans(levels=[{"n_clusters": 1000, "n_resampling_steps": 5}, 100, 10], seed=0)
        hk.fit(X)                       # X: (n, d) float array
        hk.labels_[:, 2]                # top-level cluster of every point

    Parameters (stable API; the sample stage relies on it):
      levels: list, bottom level first; each an int (n_clusters), a dict of `Level` fields
              (n_clusters, n_iters=20, n_resampling_steps=0, sample_size=10,
              sampling="closest"|"random") or a `Level`.
      seed: all randomness (k-means++ draws, init and random-resampling samples) derives from it.
      normalize: L2-normalise rows first (cosine geometry); centroids are then in that space.
      empty: "keep" (an empty cluster keeps its centroid) or "farthest" (it moves to a point far
             from its centroid).
      init_sample: k-means++ runs on at most this many points per level (at least n_clusters).
      backend: "auto" | "cpu" | "cuda"; dtype: screening product "auto" | "float32" | "bf16".
              Neither changes the result.

    Fitted attributes:
      labels_:    (n, L) int32, the cluster of every point at every level.
      centroids_: list of L float32 arrays, (k_l, d).
      parents_:   list of L int32 arrays: the level-(l+1) cluster of each level-l cluster
                  (-1 at the top level).
      sizes_:     list of L int64 arrays: points per cluster at each level.
      distances_: (n,) float32 Euclidean distance of every point to its level-1 centroid.
      level_seconds_: wall seconds per level.
    `predict(X)` gives (n, L) labels for new points.
    """

    levels: list
    seed: int = 0
    normalize: bool = False
    empty: str = "keep"
    init_sample: int = 50_000
    backend: str = "auto"
    dtype: str = "auto"
    labels_: np.ndarray | None = field(default=None, init=False, repr=False)
    centroids_: list | None = field(default=None, init=False, repr=False)
    parents_: list | None = field(default=None, init=False, repr=False)
    sizes_: list | None = field(default=None, init=False, repr=False)
    distances_: np.ndarray | None = field(default=None, init=False, repr=False)
    level_seconds_: list | None = field(default=None, init=False, repr=False)

    def _prep(self, X) -> np.ndarray:
        X = np.asarray(X, dtype=np.float32)
        if X.ndim != 2 or len(X) == 0:
            raise ValueError(f"X: expected a non-empty (n, d) array, got shape {X.shape}")
        if not np.isfinite(X).all():
            raise ValueError("X: contains NaN or infinite values")
        if self.normalize:
            nrm = np.linalg.norm(X, axis=1, keepdims=True)
            if (nrm == 0).any():
                raise ValueError("X: a zero row cannot be normalised")
            X = X / nrm
        return np.ascontiguousarray(X)

    def fit(self, X, keys: np.ndarray | None = None) -> "HierarchicalKMeans":
        """`keys` (optional, uint64 per row) replace row numbers as the source of per-row
        randomness, e.g. hashed document ids, so a subset or reordering draws the same way."""
        levels = _levels(self.levels)
        if self.empty not in ("keep", "farthest"):
            raise ValueError(f"empty must be keep or farthest, got {self.empty!r}")
        X = self._prep(X)
        be = pick_backend(self.backend, self.dtype)
        t0 = time.perf_counter()
        src = ArraySource(X, be, keys)
        C1 = fit_level(src, levels[0], self.seed, 1, self.init_sample, self.empty)
        lab1, d2 = src.assign(C1)
        self.level_seconds_ = [round(time.perf_counter() - t0, 3)]
        cents, parents = fit_upper(C1, levels[1:], self.seed, be, self.empty, self.init_sample, self.level_seconds_)
        self._set(lab1, d2, cents, parents)
        return self

    def _set(self, lab1, d2, cents, parents):
        self.centroids_ = cents
        self.labels_ = chain_labels(lab1, parents)
        self.parents_ = [p.astype(np.int32) for p in parents] + [np.full(len(cents[-1]), -1, np.int32)]
        self.sizes_ = [np.bincount(self.labels_[:, l], minlength=len(c)).astype(np.int64) for l, c in enumerate(cents)]
        self.distances_ = np.sqrt(np.maximum(d2, 0)).astype(np.float32)

    def predict(self, X) -> np.ndarray:
        if self.centroids_ is None:
            raise RuntimeError("HierarchicalKMeans: call fit first")
        X = self._prep(X)
        lab1, _ = pick_backend(self.backend, self.dtype).assign(Points(X), self.centroids_[0])
        return chain_labels(lab1, self.parents_[:-1])
