"""What thresher promises about files it does not own (issue: reliability).

Each test plants the hostile situation a user (or another local user) could create and checks
that nothing outside the run's own folders changes.
"""

from __future__ import annotations

from thresher.stages.base import run_stage
import hashlib
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def tree_digest(root: Path) -> str:
    """Names, kinds, sizes and contents of everything under root (symlinks not followed)."""
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            p = Path(dirpath) / name
            h.update(str(p.relative_to(root)).encode())
            if p.is_symlink():
                h.update(b"L" + os.readlink(p).encode())
            elif p.is_file():
                h.update(b"F" + p.read_bytes())
    return h.hexdigest()


def sentinel_tree(root: Path) -> Path:
    """A folder of 'precious' data, with entries old enough for any age-based sweep."""
    (root / "old-project" / "src").mkdir(parents=True)
    (root / "old-project" / "src" / "main.py").write_text("print('precious')\n")
    (root / "notes.txt").write_text("do not delete\n")
    old = time.time() - 3 * 86400
    for p in [root / "old-project" / "src" / "main.py", root / "old-project" / "src", root / "old-project",
              root / "notes.txt"]:
        os.utime(p, (old, old), follow_symlinks=False)
    return root


# ------------------------------------------------------------------------- scratch folders
def test_private_dir_is_new_and_closed_to_other_users(tmp_path):
    from thresher.stages.scratch import private_dir

    a, b = private_dir("x-", tmp_path), private_dir("x-", tmp_path)
    assert a != b and a.parent == tmp_path
    assert (a.stat().st_mode & 0o777) == 0o700


def test_owned_dir_refuses_a_symlink(tmp_path):
    from thresher.stages.scratch import owned_dir

    victim = sentinel_tree(tmp_path / "victim")
    (tmp_path / "planted").symlink_to(victim)
    assert not owned_dir(tmp_path / "planted")
    assert owned_dir(tmp_path / "fresh") and (tmp_path / "fresh").is_dir()


def test_remove_tree_never_follows_a_symlink(tmp_path):
    from thresher.stages.scratch import remove_tree

    victim = sentinel_tree(tmp_path / "victim")
    before = tree_digest(victim)
    scratch = tmp_path / "scratch"
    (scratch / "sub").mkdir(parents=True)
    (scratch / "sub" / "link").symlink_to(victim)
    (scratch / "file").write_text("x")
    remove_tree(scratch)
    assert not scratch.exists()
    (tmp_path / "top-link").symlink_to(victim)
    remove_tree(tmp_path / "top-link")
    assert not (tmp_path / "top-link").is_symlink()
    assert tree_digest(victim) == before


def test_cluster_on_spark_never_touches_a_planted_symlink(spark, tmp_path):
    """Case 1: the cluster stage used to keep k-means bounds under a fixed
    `<tmp>/thresher-kmeans-bounds` and sweep entries older than an hour; a symlink planted there
    made it delete the target's contents."""
    from thresher.stages import cluster

    victim = sentinel_tree(tmp_path / "victim")
    before = tree_digest(victim)
    fixed = Path(tempfile.gettempdir()) / "thresher-kmeans-bounds"
    aside = None
    if fixed.exists() or fixed.is_symlink():  # an old version's folder: keep it, restore it after
        aside = fixed.with_name(f"thresher-kmeans-bounds.aside-{os.getpid()}")
        os.replace(fixed, aside)
    fixed.symlink_to(victim)
    try:
        rng = np.random.default_rng(0)
        X = rng.normal(size=(600, 8)).astype(np.float32)
        ids = [f"d{i:04d}" for i in range(len(X))]
        path = tmp_path / "emb.parquet"
        pq.write_table(pa.table({"id": ids, "vector": pa.array(list(X), pa.list_(pa.float32()))}), path)
        cfg = cluster.Config(levels=[{"n_clusters": 8, "n_iters": 4, "n_resampling_steps": 1, "sample_size": 4}],
                             seed=3, in_memory_max_rows=0, block_rows=100)
        res = run_stage(spark, cluster, {"embeddings": spark.read.parquet(str(path)).repartition(3)}, cfg)
        assert res["clusters"].count() == len(X)
        # The bounds were kept between passes (so the scratch folder was used) ...
        assert res["stats"]["level1_screened_share"][1] < 1.0
    finally:
        fixed.unlink()
        if aside is not None:
            os.replace(aside, fixed)
    # ... and nothing outside it changed.
    assert tree_digest(victim) == before
