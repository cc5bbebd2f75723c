"""Incremental dedup: exact_dedup/fuzzy_dedup `against` a reference corpus, and `thresher index`."""

from __future__ import annotations

import json
import random

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from thresher.schemas.errors import ConfigError, InputError
from thresher.stages import exact_dedup as ED
from thresher.stages import fuzzy_dedup as FD
from thresher.stages.against import build_index, resolve, stage_fingerprint
from thresher.stages.base import run_stage
from thresher.stages.text import shingle_strings

from conftest import CUT

SCHEMA = "id string, text string"


def _removed(out) -> dict[str, tuple]:
    return {r["id"]: (r["reason"], r["by_id"], r["score"]) for r in out["removed"].collect()}


def _write(path, rows) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"id": [r[0] for r in rows], "text": [r[1] for r in rows]}), path)
    return str(path)


def _jaccard(a: str, b: str) -> float:
    x, y = shingle_strings(a), shingle_strings(b)
    return len(x & y) / len(x | y)


def _split(seed: int = 3, share: float = 0.7):
    """families24 (whole package families, many near-duplicate pairs) split at random into a
    reference and new documents."""
    t = pq.read_table(CUT / "families24.parquet")
    rows = list(zip(t.column("id").to_pylist(), t.column("text").to_pylist()))
    rng = random.Random(seed)
    rng.shuffle(rows)
    k = int(len(rows) * share)
    return sorted(rows[:k]), sorted(rows[k:])


@pytest.fixture(scope="module")
def split_corpus(tmp_path_factory):
    ref, new = _split()
    folder = tmp_path_factory.mktemp("incremental")
    _write(folder / "ref" / "part-0.parquet", ref)
    return ref, new, str(folder / "ref"), folder


def _words(rng, n):
    return " ".join(f"w{rng.randrange(5000)}" for _ in range(n))


def _edit(rng, text, k):
    w = text.split()
    for _ in range(k):
        w[rng.randrange(len(w))] = f"edit{rng.randrange(10**6)}"
    return " ".join(w)


# ------------------------------------------------------------------------------ fuzzy
def test_near_copy_of_a_reference_is_removed_by_it(spark, tmp_path):
    rng = random.Random(1)
    r1, r2 = _words(rng, 80), _words(rng, 80)
    ref = _write(tmp_path / "ref.parquet", [("r1", r1), ("r2", r2), ("r3", _words(rng, 80))])
    n1 = _edit(rng, r1, 2)           # near r1
    n2 = _edit(rng, n1, 1)           # near n1 (a new-only pair, matched through n1)
    m = _words(rng, 80)
    m2 = " ".join(m.split()[:-1])    # a shorter copy: the longer m1 survives it
    rows = [("n1", n1), ("n2", n2), ("m1", m), ("m2", m2), ("x", _words(rng, 80)), ("y", r2)]
    docs = spark.createDataFrame(rows, SCHEMA)
    out = run_stage(spark, FD, {"documents": docs}, FD.Config(seed=0, against=ref))
    rem = _removed(out)
    assert set(rem) == {"n1", "n2", "m2", "y"}
    assert rem["n1"][:2] == ("near_duplicate_of_reference", "r1") and rem["n1"][2] == pytest.approx(_jaccard(n1, r1))
    assert rem["y"] == ("near_duplicate_of_reference", "r2", 1.0)
    # n2 is removed with its component: whether it matched r1 itself or only through n1, r1 names it.
    assert rem["n2"][:2] == ("near_duplicate_of_reference", "r1")
    assert rem["m2"][:2] == ("near_duplicate", "m1")      # new-new dedup as without `against`
    assert {r["id"] for r in out["documents"].collect()} == {"m1", "x"}
    st = out["stats"]["against"]
    assert st["removed"] == 3 and st["source"] == "signed in this run"
    assert out["stats"]["docs_removed"] == 4
    dups = {r["id"]: r for r in out["duplicates"].collect()}
    assert dups["n1"]["representative_id"] == "r1" and not dups["n1"]["is_representative"]
    assert dups["y"]["representative_id"] == "r2"


def test_without_verify_the_estimates_decide(spark, tmp_path):
    """verify: false scores the candidates by their signatures' agreement, kept at >= threshold."""
    rng = random.Random(2)
    r1 = _words(rng, 120)
    ref = _write(tmp_path / "ref.parquet", [("r1", r1), ("r2", _words(rng, 120))])
    rows = [("n1", _edit(rng, r1, 1)), ("n2", _words(rng, 120))]
    out = run_stage(spark, FD, {"documents": spark.createDataFrame(rows, SCHEMA)},
                    FD.Config(seed=0, against=ref, verify=False))
    rem = _removed(out)
    assert set(rem) == {"n1"} and rem["n1"][:2] == ("near_duplicate_of_reference", "r1")
    assert 0.7 <= rem["n1"][2] < 1.0  # a MinHash estimate: a share of num_perm agreeing values
    assert rem["n1"][2] * 128 == pytest.approx(round(rem["n1"][2] * 128))


def test_against_equals_a_union_run_with_reference_first_survivors(spark, split_corpus, monkeypatch):
    """The definition: a new document is kept iff it survives its component of the union graph
    where reference documents outrank every new one. The union run ranks by a quality column:
    reference documents above all, new ones by length (as `longest` ranks them)."""
    ref, new, ref_path, _ = split_corpus
    quality = [(i, 1e9 + len(t)) for i, t in ref] + [(i, float(len(t))) for i, t in new]
    union = spark.createDataFrame([(i, t, q) for (i, t), (_, q) in zip(ref + new, quality)],
                                  "id string, text string, quality double")
    full = run_stage(spark, FD, {"documents": union}, FD.Config(seed=0, survivor="quality"))
    new_ids = {i for i, _ in new}
    ref_ids = {i for i, _ in ref}
    full_kept = {r["id"] for r in full["documents"].collect()} & new_ids

    docs = spark.createDataFrame(new, SCHEMA)
    from thresher.stages.fuzzy_dedup import against as FA

    # The one-task path with the new sets broadcast (pairs grouped on the driver, where step (c)
    # then runs in Arrow; then grouped by Spark from many small blobs, step (c) in Spark); the
    # distributed one with them shuffled. All three give the same tables and counts.
    seen = []
    for cfg, set_bytes, driver_pairs, task_pairs in (
            (FD.Config(seed=0, against=ref_path), FA.BROADCAST_SET_BYTES, FA.DRIVER_PAIRS, FA.TASK_PAIRS),
            (FD.Config(seed=0, against=ref_path), FA.BROADCAST_SET_BYTES, 0, 7),
            (FD.Config(seed=0, against=ref_path, one_task_docs=0, cc_task_edges=50, broadcast_labels=0), 0,
             FA.DRIVER_PAIRS, FA.TASK_PAIRS)):
        monkeypatch.setattr(FA, "BROADCAST_SET_BYTES", set_bytes)
        monkeypatch.setattr(FA, "DRIVER_PAIRS", driver_pairs)
        monkeypatch.setattr(FA, "TASK_PAIRS", task_pairs)
        out = run_stage(spark, FD, {"documents": docs}, cfg)
        rem = _removed(out)
        kept = {r["id"] for r in out["documents"].collect()}
        assert kept | set(rem) == new_ids and not kept & set(rem)
        assert kept == full_kept
        by_ref = {k: v for k, v in rem.items() if v[0] == "near_duplicate_of_reference"}
        assert len(by_ref) > 50 and {v[1] for v in by_ref.values()} <= ref_ids
        texts = dict(ref + new)
        for k, (_, by, score) in by_ref.items():  # a direct match is verified like the stage's pairs
            if score is not None:
                assert score == pytest.approx(_jaccard(texts[k], texts[by])) and score >= 0.7
        assert {v[1] for k, v in rem.items() if v[0] == "near_duplicate"} <= new_ids
        counts = {k: v for k, v in out["stats"]["against"].items() if k != "step_s"}
        dups = sorted(tuple(r) for r in out["duplicates"].collect())
        seen.append((rem, counts, dups, out["stats"]["docs_removed"]))
    assert seen[0][1]["removed"] > 50 and seen[0][1]["candidate_pairs"] > seen[0][1]["verified_pairs"] > 0
    assert all(x == seen[0] for x in seen[1:])


def test_index_is_reused_and_gives_the_same_result(spark, split_corpus, tmp_path, monkeypatch):
    ref, new, ref_path, folder = split_corpus
    docs = spark.createDataFrame(new, SCHEMA)
    cfg = FD.Config(seed=0, against=ref_path)
    on_the_fly = run_stage(spark, FD, {"documents": docs}, cfg)
    fp_before = stage_fingerprint(ref_path)
    dest, meta = build_index(spark, ref_path, ED.Config(seed=0), FD.Config(seed=0), str(tmp_path / "idx"), "test")
    assert meta["rows"]["documents"] == len(ref) and json.loads((tmp_path / "idx" / "index.json").read_text()) == meta
    assert not list(tmp_path.glob(".idx.tmp-*"))
    via_index = run_stage(spark, FD, {"documents": docs}, cfg.model_copy(update={"against": dest}))
    assert via_index["stats"]["against"]["source"] == f"index {dest}"
    assert _removed(via_index) == _removed(on_the_fly)
    from thresher.stages.fuzzy_dedup import against as FA

    # The index's numbered documents through the other two ways: pairs grouped by Spark, and
    # both sides shuffled.
    for name, value in (("DRIVER_PAIRS", 0), ("BROADCAST_SET_BYTES", 0)):
        with monkeypatch.context() as m:
            m.setattr(FA, name, value)
            assert _removed(run_stage(spark, FD, {"documents": docs}, cfg.model_copy(update={"against": dest}))) == \
                _removed(on_the_fly), name
    assert stage_fingerprint(dest) == fp_before  # the indexed reference decides the result, as the reference does

    # At the default place (beside the dataset) with a matching fingerprint it is found by itself.
    beside = folder / "ref.index"
    build_index(spark, ref_path, ED.Config(seed=0), FD.Config(seed=0), None, "test")
    assert (beside / "index.json").exists()
    found = run_stage(spark, FD, {"documents": docs}, cfg)
    assert found["stats"]["against"]["source"] == f"index {beside}"
    assert _removed(found) == _removed(on_the_fly)
    # ... and not when the stage's settings differ: then the reference is signed in this run.
    other = run_stage(spark, FD, {"documents": docs}, cfg.model_copy(update={"num_perm": 64}))
    assert other["stats"]["against"]["source"] == "signed in this run"


def test_index_with_other_settings_is_one_config_error(spark, split_corpus, tmp_path):
    ref, new, ref_path, _ = split_corpus
    dest, _ = build_index(spark, ref_path, ED.Config(seed=0), FD.Config(seed=0), str(tmp_path / "idx"), "test")
    docs = spark.createDataFrame(new[:20], SCHEMA)
    bad = FD.Config(seed=0, against=dest, shingle={"kind": "word", "n": 3})
    with pytest.raises(ConfigError) as e:
        run_stage(spark, FD, {"documents": docs}, bad)
    msg = str(e.value)
    assert "\n" not in msg and dest in msg and "shingle=" in msg and "thresher index" in msg
    with pytest.raises(ConfigError, match="normalise="):
        run_stage(spark, ED, {"documents": docs}, ED.Config(seed=0, against=dest, normalise={"lowercase": False}))


def test_missing_reference_or_unknown_scheme_is_one_line(tmp_path):
    with pytest.raises(InputError, match=f"{tmp_path}/nothing: reference corpus not found"):
        resolve(str(tmp_path / "nothing"))
    with pytest.raises(InputError, match="unknown URL scheme 'nosuch://'"):
        resolve("nosuch://bucket/ref")


def test_preflight_checks_the_reference_before_spark(tmp_path):
    """A missing reference fails in preflight (nothing written), and a run may not write into
    the corpus it dedups against."""
    from thresher.flows.config import load_config
    from thresher.flows.curate import preflight
    from thresher.schemas.errors import OutputError

    src = _write(tmp_path / "in" / "d.parquet", [("a", "one two three four five six")])
    ref = _write(tmp_path / "ref" / "part-0.parquet", [("r", "one two three four five six")])
    stages = ["ingest", "exact_dedup", "fuzzy_dedup", "export"]

    def cfg(out, against):
        return load_config(raw={"input": [src], "output": str(out), "stages": stages,
                                "fuzzy_dedup": {"against": against}})

    with pytest.raises(InputError, match="nothing: reference corpus not found"):
        preflight(cfg(tmp_path / "out", str(tmp_path / "nothing")))
    assert not (tmp_path / "out").exists()
    with pytest.raises(OutputError, match="output folder is inside the input"):
        preflight(cfg(tmp_path / "ref" / "run", str(tmp_path / "ref")))
    inner = _write(tmp_path / "outer" / "ref" / "part-0.parquet", [("r", "one two three four five six")])
    with pytest.raises(OutputError, match=r"outer/ref/part-0.parquet is inside the output folder"):
        preflight(cfg(tmp_path / "outer", inner))
    preflight(cfg(tmp_path / "out", ref))  # a reference beside the output is fine


# ------------------------------------------------------------------------------ exact
def test_exact_against(spark, tmp_path):
    _write(tmp_path / "ref" / "a.parquet", [("r1", "Hello world"), ("r0", "hello   WORLD"), ("r2", "other text")])
    rows = [("a", "hello world"), ("b", "HELLO world "), ("c", "new text"), ("d", "new  text"), ("e", "unique")]
    docs = spark.createDataFrame(rows, SCHEMA)
    out = run_stage(spark, ED, {"documents": docs}, ED.Config(seed=0, against=str(tmp_path / "ref")))
    rem = _removed(out)
    # The whole group {a, b} matches the reference: both go, named by the smallest reference id.
    assert rem == {"a": ("exact_duplicate_of_reference", "r0", 1.0), "b": ("exact_duplicate_of_reference", "r0", 1.0),
                   "c": ("exact_duplicate", "d", 1.0)}
    assert {r["id"] for r in out["documents"].collect()} == {"d", "e"}
    assert out["stats"]["groups"] == 1 and out["stats"]["against"]["removed"] == 2
    dest, _ = build_index(spark, str(tmp_path / "ref"), ED.Config(seed=0), FD.Config(seed=0), None, "test")
    via = run_stage(spark, ED, {"documents": docs}, ED.Config(seed=0, against=str(tmp_path / "ref")))
    assert via["stats"]["against"]["source"] == f"index {dest}" and _removed(via) == rem


@pytest.mark.parametrize("survivor", ["longest", "quality", "smallest_id"])
def test_exact_against_on_the_driver_equals_spark(spark, split_corpus, tmp_path, survivor):
    """Few new documents are hashed to the driver and ranked there (driver_docs); the Spark path
    (driver_docs: 0) gives the same removed rows and stats, with the reference signed in the run
    and from an index, for each survivor rule."""
    ref, new, ref_path, _ = split_corpus
    rng = random.Random(5)
    texts = [t for _, t in ref[:40]]
    # Copies of reference texts (some re-cased), groups of new copies, and a quality with gaps.
    rows = [(i, t, None if rng.random() < 0.2 else rng.random()) for i, t in new]
    rows += [(f"c{k}", rng.choice([t, t.upper(), t + " "]), rng.random()) for k, t in enumerate(texts * 2)]
    rows += [(f"g{k}", new[k % 7][1] + " " * (k % 3), None if k % 4 == 0 else float(k % 5)) for k in range(30)]
    docs = spark.createDataFrame(rows, "id string, text string, quality double")
    dest, _ = build_index(spark, ref_path, ED.Config(seed=0), FD.Config(seed=0), str(tmp_path / "idx"), "test")
    for against in (ref_path, dest):
        got = [run_stage(spark, ED, {"documents": docs}, ED.Config(seed=0, against=against, survivor=survivor,
                                                                      driver_docs=d)) for d in (1_000_000, 0)]
        rem = _removed(got[0])
        assert rem == _removed(got[1]) and got[0]["stats"] == got[1]["stats"]
        st = got[0]["stats"]
        assert st["against"]["removed"] >= 80 and st["groups"] >= 7 and st["docs_removed"] == len(rem)
        assert {k for k, v in rem.items() if v[0] == "exact_duplicate_of_reference"} >= {f"c{k}" for k in range(80)}


# ------------------------------------------------------------------------------ a run, through the CLI
def test_cli_index_then_run_against_a_run_folder(spark, split_corpus, tmp_path):
    """`thresher index RUN` then `thresher run` with against RUN: the index beside the run is
    used, reference documents never appear, and a changed reference re-runs the dedup stages."""
    from click.testing import CliRunner

    from thresher.flows.cli import main

    ref, new, ref_path, _ = split_corpus
    cfg = tmp_path / "c.yaml"
    base = ("seed: 0\nstages: [ingest, exact_dedup, fuzzy_dedup, export]\n"
            "spark: {master: 'local[2]', shuffle_partitions: 4}\n")
    cfg.write_text(base)
    first = tmp_path / "first"
    cli = CliRunner()
    r = cli.invoke(main, ["run", str(cfg), "-i", ref_path, "-o", str(first), "--no-prefect"])
    assert r.exit_code == 0, r.output
    r = cli.invoke(main, ["index", str(tmp_path / "nowhere"), "--config", str(cfg)])
    assert r.exit_code != 0 and f"thresher: error: {tmp_path / 'nowhere'}: reference corpus not found" in r.output
    r = cli.invoke(main, ["index", str(first), "--config", str(cfg)])
    assert r.exit_code == 0, r.output
    assert (first / "index" / "index.json").exists()

    new_path = _write(tmp_path / "new" / "n.parquet", new)
    against = f"exact_dedup: {{against: '{first}'}}\nfuzzy_dedup: {{against: '{first}'}}\n"
    cfg2 = tmp_path / "c2.yaml"
    cfg2.write_text(base + against)
    second = tmp_path / "second"
    r = cli.invoke(main, ["run", str(cfg2), "-i", new_path, "-o", str(second), "--no-prefect"])
    assert r.exit_code == 0, r.output
    m = json.loads((second / "manifest.json").read_text())
    assert m["accounting"]["closes"]
    fz = m["stages"]["fuzzy_dedup"]
    assert fz["stats"]["against"]["source"].startswith("index ") and fz["removed"]["near_duplicate_of_reference"] > 0
    out = pq.read_table(second / "dataset")
    assert not set(out.column("id").to_pylist()) & {i for i, _ in ref}

    # A changed reference changes both dedup stages' fingerprints: they run again on --resume.
    ds = next((first / "dataset").glob("*.parquet"))
    t = pq.read_table(ds)
    pq.write_table(t.slice(0, t.num_rows - 1), ds)
    r = cli.invoke(main, ["run", str(cfg2), "-i", new_path, "-o", str(second), "--no-prefect", "--resume"])
    assert r.exit_code == 0, r.output
    m2 = json.loads((second / "manifest.json").read_text())
    assert m2["stages"]["ingest"]["reused"]
    assert not m2["stages"]["exact_dedup"]["reused"] and not m2["stages"]["fuzzy_dedup"]["reused"]
    assert m2["stages"]["fuzzy_dedup"]["stats"]["against"]["source"] == "signed in this run"  # the index is stale


def test_group_pairs_is_the_same_table_for_any_order():
    from thresher.stages.fuzzy_dedup.against import group_pairs

    rng = np.random.default_rng(3)
    b = np.array([f"r{i}" for i in rng.integers(0, 50, 2000)])
    a = rng.integers(0, 300, 2000).astype(np.int32)
    want = {}
    for x, y in zip(b, a):
        want.setdefault(str(x), set()).add(int(y))
    g = group_pairs(pa.array(b), a)
    assert g.column("b").to_pylist() == sorted(want)
    assert g.column("as").to_pylist() == [sorted(want[k]) for k in sorted(want)]
    perm = rng.permutation(len(b))
    assert group_pairs(pa.chunked_array([b[perm][:700], b[perm][700:]]), a[perm]).equals(g)
    assert group_pairs(pa.array([], pa.string()), np.zeros(0, np.int32)).num_rows == 0


def test_probe_ships_every_pair_in_chunks():
    """A task's pairs leave in blobs of about `chunk` pairs; together they are every (reference,
    new document) pair of the shared keys, and the capped count."""
    from types import SimpleNamespace

    from thresher.stages.arrow_bytes import ipc_table
    from thresher.stages.fuzzy_dedup.against import _pairs_of, _probe_task, group_pairs

    # New documents 0..2 under keys 10, 20, 30 (doc 1 under two keys).
    uk = np.array([10, 20, 30], np.int64)
    docs = np.array([0, 1, 2, 1], np.int32)
    start = np.array([0, 2, 3, 4], np.int64)
    keys = SimpleNamespace(value=(uk, start, docs))
    # Bucket rows as against.bucket_rows gives them at cap 2: key 20 holds 5 documents, of
    # which its two smallest ids are listed, with its size on the first.
    buckets = pa.table({"bk": pa.array([5, 10, 10, 20, 20, 30], pa.int64()),
                        "id": ["x", "r1", "r2", "r2", "r3", "r5"],
                        "size": pa.array([1, 2, 0, 5, 0, 1], pa.int64())})
    rows = list(_probe_task(buckets.to_batches(max_chunksize=1), keys, 2, chunk=2))
    assert len(rows) > 1 and sum(r.column(2)[0].as_py() for r in rows) == 1  # key 20 holds 5 > cap 2
    b, a = _pairs_of([ipc_table(r.column(0)[0].as_py()) for r in rows])
    assert sorted(zip(b.to_pylist(), a.tolist())) == sorted(
        [("r1", 0), ("r1", 1), ("r2", 0), ("r2", 1), ("r2", 2), ("r3", 2), ("r5", 1)])
    assert group_pairs(b, a).column("as").to_pylist() == [[0, 1], [0, 1, 2], [2], [1]]

    # An index's rows name their documents by number: the same pairs, by number.
    flat = pa.table({"bk": pa.array([5, 10, 10, 20, 20, 30], pa.int64()), "n": pa.array([9, 1, 2, 2, 3, 5], pa.int64()),
                     "size": pa.array([1, 2, 0, 5, 0, 1], pa.int64())})
    rows = list(_probe_task(flat.to_batches(max_chunksize=2), keys, 2, chunk=2))
    assert sum(r.column(2)[0].as_py() for r in rows) == 1
    b, a = _pairs_of([ipc_table(r.column(0)[0].as_py()) for r in rows])
    assert sorted(zip(b.to_pylist(), a.tolist())) == [(1, 0), (1, 1), (2, 0), (2, 1), (2, 2), (3, 2), (5, 1)]


def test_rank_ids_numbers_ids_in_sorted_order_over_partitions(spark):
    from thresher.stages.against import rank_ids

    ids = [f"d{i:05d}-{(i * 7919) % 1000}" for i in range(3000)]
    random.Random(1).shuffle(ids)
    got = dict(rank_ids(spark.createDataFrame([(i,) for i in ids], "id string").repartition(7)).collect())
    assert got == {i: n for n, i in enumerate(sorted(ids))}
    assert rank_ids(spark.createDataFrame([], "id string")).count() == 0


def test_bucket_rows_keep_the_smallest_per_key_and_count_it_once(spark):
    from thresher.stages.against import bucket_rows

    keys = [(7, f"d{i:02d}") for i in range(40)] + [(3, "b"), (3, "a"), (9, "z")]
    random.Random(3).shuffle(keys)
    got = sorted(tuple(r) for r in bucket_rows(spark.createDataFrame(keys, "bk long, id string").repartition(5), 4).collect())
    assert got == [(3, "a", 2), (3, "b", 0), (7, "d00", 40), (7, "d01", 0), (7, "d02", 0), (7, "d03", 0), (9, "z", 1)]
