"""exact_dedup and fuzzy_dedup on local Spark: survivors, bad input, partitioning, accuracy."""

from __future__ import annotations

from thresher.stages.base import run_stage
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from thresher.schemas.errors import ConfigError
from thresher.stages import exact_dedup as ED
from thresher.stages import fuzzy_dedup as FD
from thresher.stages.text import shingle_strings

from conftest import CUT

SCHEMA = "id string, text string"


def _df(spark, rows, partitions=None):
    df = spark.createDataFrame(rows, SCHEMA)
    return df.repartition(partitions) if partitions else df


def _removed(out) -> dict[str, tuple]:
    return {r["id"]: (r["reason"], r["by_id"], r["score"]) for r in out["removed"].collect()}


def _words(rng: random.Random, n: int) -> str:
    vocab = [f"w{i}" for i in range(5000)]
    return " ".join(rng.choice(vocab) for _ in range(n))


def _edit(rng: random.Random, text: str, k: int) -> str:
    w = text.split()
    for _ in range(k):
        w[rng.randrange(len(w))] = f"edit{rng.randrange(10**6)}"
    return " ".join(w)


# ------------------------------------------------------------------------------------ exact
def test_exact_dedup_survivor_rules(spark):
    rows = [("a", "hello world"), ("b", "Hello   World"), ("c", "HELLO\u00a0WORLD "), ("d", "hello world!"),
            ("e", "ｈｅｌｌｏ world"), ("f", "something else")]
    docs = _df(spark, rows, 3)
    quality = spark.createDataFrame([("a", 0.1), ("b", 0.2), ("c", 0.9), ("e", None)], "id string, score double")
    # longest would keep "b" (13 characters): the pipeline test covers that rule.
    expect = {"smallest_id": "a", "quality": "c"}
    for rule, survivor in expect.items():
        out = run_stage(spark, ED, {"documents": docs, "quality": quality}, ED.Config(survivor=rule, seed=0))
        rem = _removed(out)
        group = {"a", "b", "c", "e"}
        assert set(rem) == group - {survivor}, rule
        assert {v[0] for v in rem.values()} == {"exact_duplicate"} and {v[1] for v in rem.values()} == {survivor}
        assert {r["id"] for r in out["documents"].collect()} == {survivor, "d", "f"}
        assert out["stats"] == {"groups": 1, "docs_removed": 3}
    # Without whitespace collapsing, "Hello   World" is its own text and the trailing space of
    # "c" counts; stripping punctuation turns "d"'s "!" into that same trailing space.
    cfg = ED.Config(normalise={"collapse_whitespace": False, "strip_punctuation": True}, survivor="smallest_id")
    rem = _removed(run_stage(spark, ED, {"documents": docs}, cfg))
    assert set(rem) == {"d", "e"} and rem["d"][1] == "c" and rem["e"][1] == "a"


def test_survivor_quality_needs_a_quality_table(spark):
    docs = _df(spark, [("a", "x y"), ("b", "x y")])
    with pytest.raises(ConfigError, match="quality"):
        run_stage(spark, FD, {"documents": docs}, FD.Config(survivor="quality"))
    with pytest.raises(ConfigError, match="quality"):
        run_stage(spark, ED, {"documents": docs}, ED.Config(survivor="quality"))


def test_config_errors():
    with pytest.raises(ValueError, match="set both"):
        FD.Config(bands=10)
    with pytest.raises(ValueError, match="exceeds num_perm"):
        FD.Config(bands=20, rows=10, num_perm=128)
    assert FD.lsh_params(FD.Config()) == (25, 5)
    assert FD.lsh_params(FD.Config(false_positive_weight=0.5, false_negative_weight=0.5)) == (14, 9)
    assert FD.lsh_params(FD.Config(false_positive_weight=0.1, false_negative_weight=0.9)) == (20, 6)
    assert FD.lsh_params(FD.Config(bands=16, rows=8)) == (16, 8)


# ------------------------------------------------------------------------------------ fuzzy: bad input
def test_no_duplicates_and_texts_without_shingles(spark):
    rng = random.Random(1)
    rows = [(f"d{i:02d}", _words(rng, 40)) for i in range(12)] + [("e1", ""), ("e2", "   "), ("p", "!!!")]
    out = run_stage(spark, FD, {"documents": _df(spark, rows)}, FD.Config(seed=0, normalise={"strip_punctuation": True}))
    assert out["removed"].count() == 0 and out["duplicates"].count() == 0
    assert out["documents"].count() == len(rows)
    assert out["stats"]["components"] == 0 and out["stats"]["candidate_pairs"] == 0


@pytest.mark.parametrize("cap, one_task", [({}, True), ({"one_task_docs": 0}, False), ({"one_task_bytes": 10_000}, False)])
def test_identical_corpus_is_one_component_linked_as_a_star(spark, cap, one_task):
    n = 300
    rows = [(f"doc{i:04d}", "the same boilerplate text in every single document here") for i in range(n)]
    # Unverified here (MinHash estimates as scores); the verified path runs in the other tests.
    # 300 x 55 bytes of text is over a 10,000-byte cap: the distributed path.
    cfg = FD.Config(seed=0, verify=False, **cap)
    out = run_stage(spark, FD, {"documents": _df(spark, rows, 4)}, cfg)
    st = out["stats"]
    assert ("one_task" in st["step_s"]) == one_task
    # One bucket per band holding every document: n - 1 star edges, not n(n-1)/2 pairs.
    assert st["largest_bucket"] == n and st["candidate_pairs"] == n - 1 and st["verified_pairs"] is None
    assert st["components"] == 1 and st["docs_removed"] == n - 1 and st["component_sizes"] == {"257-512": 1}
    rem = _removed(out)
    assert len(rem) == n - 1 and {v[1] for v in rem.values()} == {"doc0000"} and {v[2] for v in rem.values()} == {1.0}
    assert [r["id"] for r in out["documents"].collect()] == ["doc0000"]


def test_quality_survivor_on_both_paths(spark):
    """survivor: quality -- the highest score survives, unscored documents rank last, equal
    scores go to the smallest id -- the same on the one-task and the distributed path."""
    rng = random.Random(4)
    base = [_words(rng, 100) for _ in range(3)]
    rows = [(f"a{i}", _edit(rng, base[0], 1)) for i in range(4)] + [(f"b{i}", _edit(rng, base[1], 1)) for i in range(3)]
    rows += [(f"c{i}", _edit(rng, base[2], 1)) for i in range(2)] + [("u", _words(rng, 100))]
    quality = spark.createDataFrame([("a2", 0.9), ("a3", 0.9), ("a0", 0.1), ("b1", 0.5), ("b2", None)],
                                    "id string, score double")
    got = []
    for one_task_docs in (100_000, 0):
        cfg = FD.Config(seed=0, survivor="quality", one_task_docs=one_task_docs)
        out = run_stage(spark, FD, {"documents": _df(spark, rows, 3), "quality": quality}, cfg)
        got.append((sorted(tuple(r) for r in out["duplicates"].collect()), _removed(out)))
    assert got[0] == got[1]
    rem = got[0][1]
    assert set(rem) == {"a0", "a1", "a3", "b0", "b2", "c1"}
    assert {rem[x][1] for x in ("a0", "a1", "a3")} == {"a2"} and {rem[x][1] for x in ("b0", "b2")} == {"b1"}
    assert rem["c1"][1] == "c0"  # neither scored: smallest id


def test_cjk_near_duplicates_with_character_shingles(spark):
    a = "日本語のテキストには単語の間に空白がありませんので文字の組で比べます"
    rows = [("ja1", a), ("ja2", a.replace("比べます", "比較します")), ("ja3", "まったく別の内容の文章がここにあります"),
            ("ru1", "Это текст на русском языке о пакетах и библиотеках для разработки"),
            ("ru2", "Это текст на русском языке о пакетах и библиотеках для разработчиков")]
    cfg = FD.Config(seed=0, threshold=0.6, shingle={"kind": "char", "n": 3}, survivor="smallest_id")
    rem = _removed(run_stage(spark, FD, {"documents": _df(spark, rows)}, cfg))
    assert set(rem) == {"ja2", "ru2"}
    assert rem["ja2"][0] == "near_duplicate" and rem["ja2"][1] == "ja1" and 0.6 <= rem["ja2"][2] < 1


def test_pipeline_on_bad_input(run_curate, tmp_path):
    """ingest -> exact_dedup -> fuzzy_dedup -> export: a 10 MB document and its edited copy,
    single-word documents, Greek near-duplicates, exact copies, unrelated texts."""
    rng = random.Random(7)
    big = _words(rng, 1_800_000)
    assert len(big.encode()) > 10_000_000
    greek = "Αυτό το πακέτο περιέχει τη βιβλιοθήκη για την ανάλυση αρχείων ρυθμίσεων και την επικύρωση τους σε πραγματικό χρόνο"
    rows = [
        ("big1", big), ("big2", _edit(rng, big, 2000)),
        ("one1", "hello"), ("one2", "Hello"), ("one3", "world"),
        ("gr1", greek), ("gr2", greek + " σήμερα"),
        ("x1", "An exact copy of a line of text."), ("x2", "an EXACT copy of a line of text."),
    ] + [(f"u{i}", _words(rng, 60)) for i in range(6)]
    path = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": [r[0] for r in rows], "text": [r[1] for r in rows]}), path)
    manifest, out = run_curate({"input": [str(path)], "stages": ["ingest", "exact_dedup", "fuzzy_dedup", "export"],
                                "ingest": {"id_column": "id"}})
    acc = manifest["accounting"]
    assert acc["closes"] and acc["rows_in"] == len(rows)
    assert acc["removed"] == {"exact_dedup:exact_duplicate": 2, "fuzzy_dedup:near_duplicate": 2}
    ex = {r["id"]: r for r in pq.read_table(out / "exact_dedup" / "removed").to_pylist()}
    assert ex["one2"]["by_id"] == "one1" and ex["x2"]["by_id"] == "x1"  # equal lengths: smallest id
    fz = {r["id"]: r for r in pq.read_table(out / "fuzzy_dedup" / "removed").to_pylist()}
    assert set(fz) == {"big1", "gr1"}  # the longer copy survives
    assert fz["big1"]["by_id"] == "big2" and 0.95 < fz["big1"]["score"] < 1
    assert fz["gr1"]["by_id"] == "gr2" and 0.7 <= fz["gr1"]["score"] < 1
    st = manifest["stages"]["fuzzy_dedup"]["stats"]
    assert st["components"] == 2 and st["docs_removed"] == 2 and st["verified_pairs"] + st["dropped_pairs"] == st["candidate_pairs"]
    dup = pq.read_table(out / "fuzzy_dedup" / "duplicates").to_pylist()
    assert {(r["id"], r["component_id"], r["representative_id"], r["is_representative"]) for r in dup} == {
        ("big1", "big1", "big2", False), ("big2", "big1", "big2", True),
        ("gr1", "gr1", "gr2", False), ("gr2", "gr1", "gr2", True)}
    kept = pq.read_table(out / "dataset").column("id").to_pylist()
    assert sorted(kept) == sorted(r[0] for r in rows if r[0] not in {"one2", "x2", "big1", "gr1"})


# ------------------------------------------------------------------------------------ accuracy
def _family_sample() -> pa.Table:
    """Whole source-package families, one package in 24 (cut by tests/data/cut_fixtures.py)."""
    return pq.read_table(CUT / "families24.parquet")


def exact_pairs(ids: list[str], texts: list[str], threshold: float) -> set[tuple[str, str]]:
    """Ground truth: every pair whose exact Jaccard of word 5-gram sets is >= threshold."""
    from SetSimilaritySearch import all_pairs

    sets = [shingle_strings(t) for t in texts]
    idx = [i for i, s in enumerate(sets) if s]
    pairs = all_pairs([sets[i] for i in idx], similarity_func_name="jaccard", similarity_threshold=threshold)
    return {tuple(sorted((ids[idx[x]], ids[idx[y]]))) for x, y, _ in pairs}


def test_accuracy_and_partition_independence(spark):
    sample = _family_sample()
    ids, texts = sample.column("id").to_pylist(), sample.column("text").to_pylist()
    truth = exact_pairs(ids, texts, 0.7)
    assert len(truth) > 300
    rows = list(zip(ids, texts))
    results = []
    # The first run takes the one-task path (a small corpus); the second the distributed one,
    # with the paths for big graphs: components contracted in several tasks and joined by
    # distributed rounds, labels and removed ids joined without a broadcast, and more shares of
    # documents (task_docs) than shuffle partitions.
    for parts, big in ((1, {}), (5, {"one_task_docs": 0, "cc_task_edges": 100, "broadcast_labels": 0, "task_docs": 300})):
        out, scored = FD.run_with_pairs(spark, {"documents": _df(spark, rows, parts)}, FD.Config(seed=0, **big))
        edges = {tuple(sorted((r["a"], r["b"]))) for r in scored.where("j >= 0.7").collect()}
        dups = sorted(tuple(r) for r in out["duplicates"].collect())
        results.append((edges, dups, sorted(tuple(r) for r in out["removed"].collect()), out["stats"]))
    assert results[0][:3] == results[1][:3]
    assert results[0][3]["cc_rounds"] == 0 and results[1][3]["cc_rounds"] >= 1
    assert "one_task" in results[0][3]["step_s"] and "one_task" not in results[1][3]["step_s"]
    same = ("candidate_pairs", "verified_pairs", "dropped_pairs", "largest_bucket", "components", "docs_removed",
            "component_sizes")
    assert {k: results[0][3][k] for k in same} == {k: results[1][3][k] for k in same}
    edges, dups, _, stats = results[0]
    precision = len(edges & truth) / len(edges)
    comp = {r[0]: r[1] for r in dups}
    recall_components = sum(1 for a, b in truth if a in comp and comp.get(a) == comp.get(b)) / len(truth)
    print(f"\nfuzzy accuracy on {len(ids)} docs: {len(truth)} true pairs, {len(edges)} verified edges, "
          f"precision {precision:.4f}, edge recall {len(edges & truth) / len(truth):.4f}, "
          f"component recall {recall_components:.4f}; stats {stats}")
    assert precision >= 0.99
    assert recall_components >= 0.97
    assert stats["verified_pairs"] == len(edges)


def test_shipped_dedup_config():
    from pathlib import Path

    from thresher.flows.config import load_config

    cfg = load_config("dedup")
    assert cfg.stages == ["ingest", "exact_dedup", "fuzzy_dedup", "export"]
    assert Path(cfg.input[0]).exists() and cfg.input[0].endswith("configs/data/debian_demo.parquet")
    assert cfg.fuzzy_dedup.threshold == 0.7 and cfg.fuzzy_dedup.shingle.kind == "word" and cfg.fuzzy_dedup.shingle.n == 5
    with pytest.raises(ConfigError, match="treshold: unknown key; did you mean threshold"):
        load_config("dedup", overrides={"fuzzy_dedup": {"treshold": 0.8}})


def test_connected_components_match_union_find(spark):
    """Random sparse graph, a long chain (diameter 40) and a node with two parents that are
    not otherwise linked (a member of two LSH hubs' buckets) against a plain union-find, on one
    partition and on several."""
    from thresher.stages.components import connected_components

    rng = random.Random(3)
    edges = [(rng.randrange(600), rng.randrange(600)) for _ in range(350)] + [(1000 + i, 1001 + i) for i in range(40)]
    edges += [(2005, 2001), (2005, 2002)]
    parent = {}

    def find(x):
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in edges:
        if a != b:
            ra, rb = find(a), find(b)
            parent[max(ra, rb)] = min(ra, rb)
    groups: dict[int, list[int]] = {}
    for x in {x for e in edges if e[0] != e[1] for x in e}:
        groups.setdefault(find(x), []).append(x)
    want = {f"{x:05d}": f"{min(g):05d}" for g in groups.values() for x in g}
    df = spark.createDataFrame([(f"{a:05d}", f"{b:05d}") for a, b in edges], "src string, dst string")
    # One partition: the in-executor contraction alone gives the answer. Five (edges of a
    # component scattered over them): contraction, then distributed rounds join the parts.
    for parts, contract in ((1, None), (5, None), (5, 2)):
        labels, rounds = connected_components(df.repartition(parts), contract_partitions=contract)
        got = labels.collect()
        assert {r["node"]: r["label"] for r in got} == want and len(got) == len(want), (parts, contract)
        assert rounds == 0 if parts == 1 else 1 <= rounds <= 12
    # Alone, the two-parent node is no star forest yet: one round links the parents.
    two = spark.createDataFrame([("x", "h1"), ("x", "h2")], "src string, dst string")
    for parts in (1, 2):
        labels, rounds = connected_components(two.repartition(parts))
        assert sorted(tuple(r) for r in labels.collect()) == [("h1", "h1"), ("h2", "h1"), ("x", "h1")]


def test_reference_batches_carry_groups_across_batches():
    """Groups cut anywhere by Arrow batch boundaries score the same as in one batch."""
    import numpy as np

    from thresher.kernels.minhash import jaccard_pairs_ref

    rng = np.random.default_rng(5)
    sets = [np.unique(rng.integers(0, 40, rng.integers(1, 25)).astype(np.uint64)) for _ in range(60)]
    groups = np.sort(rng.integers(0, 9, 60))
    g = [f"g{x}" for x in groups]
    ids = [f"id{i:02d}" for i in range(60)]
    blob = pa.array([s.tobytes() for s in sets], pa.binary())
    schema = pa.schema([("g", pa.string()), ("ref", pa.string()), ("id", pa.string()), ("j", pa.float64())])
    off = np.concatenate([[0], np.cumsum([len(s) for s in sets])])
    vals = np.concatenate(sets)
    first = {}
    for i, x in enumerate(g):
        first.setdefault(x, i)
    want = jaccard_pairs_ref(off, vals, np.array([first[x] for x in g]), np.arange(60))
    table = pa.table({"g": g, "id": ids, "s": blob})
    for cuts in ([], [1, 2, 3, 30], list(range(1, 60, 7))):
        bounds = [0, *cuts, 60]
        batches = [b for lo, hi in zip(bounds, bounds[1:]) for b in table.slice(lo, hi - lo).to_batches()]
        out = pa.Table.from_batches(list(FD.reference_batches(FD.Config(), schema, False)(iter(batches))))
        assert out.column("ref").to_pylist() == [ids[first[x]] for x in g]
        np.testing.assert_array_equal(out.column("j").to_numpy(), want)
    # Dropping references needs each group led by its hub (id == g).
    hubs = pa.table({"g": ["a", "a", "b"], "id": ["a", "x", "b"], "s": blob.slice(0, 3)})
    out = pa.Table.from_batches(list(FD.reference_batches(FD.Config(), schema, True)(iter(hubs.to_batches()))))
    assert out.column("id").to_pylist() == ["x"]
    bad = pa.table({"g": ["a", "a"], "id": ["x", "a"], "s": blob.slice(0, 2)})
    with pytest.raises(Exception, match="hub"):
        list(FD.reference_batches(FD.Config(), schema, True)(iter(bad.to_batches())))


def test_star_pairs_against_buckets_spelled_out():
    """The one-task bucketing: each bucket's members linked to its smallest node, one pair per
    (hub, member) with the largest bucket that links them."""
    import numpy as np

    rng = np.random.default_rng(2)
    n, bands = 40, 5
    keys = rng.integers(0, 12, (n, bands)) * 1000 + np.arange(bands)  # keys of different bands differ
    node = rng.permutation(n)
    buckets: dict[int, list[int]] = {}
    for d in range(n):
        for k in keys[d]:
            buckets.setdefault(int(k), []).append(int(node[d]))
    want: dict[tuple[int, int], int] = {}
    for members in buckets.values():
        for m in members:
            if len(members) > 1 and m != min(members):
                want[(min(members), m)] = max(want.get((min(members), m), 0), len(members))
    hub, mem, size = FD.star_pairs(keys, node, n)
    assert list(zip(hub.tolist(), mem.tolist())) == sorted(want)
    assert dict(zip(zip(hub.tolist(), mem.tolist()), size.tolist())) == want
    assert FD.size_bins([2, 2, 3, 4, 5, 8, 9, 300]) == {"2": 2, "3-4": 2, "5-8": 2, "9-16": 1, "257-512": 1}


def test_capped_pairs_against_buckets_spelled_out():
    """All pairs in buckets of up to `cap` documents, stars above; cap 1 is the star linking."""
    import numpy as np

    from thresher.kernels.lsh import capped_pairs_ref

    rng = np.random.default_rng(4)
    n = 300
    # Bucket sizes from 1 to about 60: key spaces of different widths per band.
    keys = np.stack([rng.integers(0, w, n) * 100 + band for band, w in enumerate((5, 9, 40, 150, 300, 2))], 1)
    node = rng.permutation(n)
    for cap in (1, 2, 8, 32, 1000):
        got = FD.capped_pairs(keys, node, n, cap)
        want = capped_pairs_ref(keys, node, n, cap)
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g, w)
    star = FD.star_pairs(keys, node, n)
    for g, w in zip(FD.capped_pairs(keys, node, n, 1), star):
        np.testing.assert_array_equal(g, w)


# ------------------------------------------------------------------------------------ families
FAMILIES = __import__("pathlib").Path(__file__).parent / "data" / "families_small.parquet"


def test_family_fixture_drifts():
    """The fixture of benchmarks/families.py: every family is one component of the exact truth,
    yet most of its pairs are below the threshold (members drift away from their ancestors);
    four scripts."""
    from collections import defaultdict

    t = pq.read_table(FAMILIES)
    ids, texts, fam = (t.column(c).to_pylist() for c in ("id", "text", "family"))
    truth = exact_pairs(ids, texts, 0.7)
    parent = {}

    def find(x):
        while parent.setdefault(x, x) != x:
            x = parent[x]
        return x

    for a, b in truth:
        parent[find(a)] = find(b)
    members = defaultdict(list)
    for i, f in zip(ids, fam):
        if f:
            members[f].append(i)
    assert set(t.column("script").to_pylist()) == {"latin", "cyrillic", "arabic", "cjk"}
    assert max(len(m) for m in members.values()) >= 300 and min(len(m) for m in members.values()) >= 10
    for f, m in members.items():
        assert len({find(x) for x in m}) == 1, f
        inside = sum(1 for a, b in truth if a in set(m) and b in set(m))
        if len(m) >= 30:
            assert inside < 0.5 * len(m) * (len(m) - 1) / 2, f


def test_family_edit_steps():
    """One generator step keeps the parent's word-5-gram Jaccard in [0.70, 0.86]; a chain of
    them drifts below 0.7 from its root."""
    from benchmarks.families import HI, LO, _grams, _words, child, jaccard

    rng = random.Random(0)
    root = _words("this package provides a library for reading and writing configuration files with comments "
                  "sections and typed values it also ships a command line tool that validates files against "
                  "a schema and prints the errors it finds with line numbers and hints for fixing them quickly")
    vocab = sorted(set(root)) + [f"v{i}" for i in range(50)]
    chain = [root]
    for _ in range(6):
        c = child(rng, chain[-1], vocab)
        assert c is not None and LO <= jaccard(_grams(chain[-1]), _grams(c)) <= HI
        chain.append(c)
    assert jaccard(_grams(root), _grams(chain[-1])) < 0.7


def test_family_fixture_recall_on_both_paths(spark):
    """Drifting families in four scripts: every verified edge true (precision 1.000), >= 0.99 of
    the true pairs in one component, the one-task and the distributed path equal. Stars alone
    (the linking before issue 16) lose the drifting members."""
    t = pq.read_table(FAMILIES, columns=["id", "text"])
    ids, texts = t.column("id").to_pylist(), t.column("text").to_pylist()
    truth = exact_pairs(ids, texts, 0.7)
    rows = list(zip(ids, texts))

    def go(**kw):
        out, scored = FD.run_with_pairs(spark, {"documents": _df(spark, rows, 3)}, FD.Config(seed=0, **kw))
        edges = {tuple(sorted((r["a"], r["b"]))) for r in scored.where("j >= 0.7").collect()}
        comp = {r["id"]: r["component_id"] for r in out["duplicates"].collect()}
        recall = sum(1 for a, b in truth if a in comp and comp[a] == comp.get(b)) / len(truth)
        return edges, comp, recall, sorted(tuple(r) for r in out["removed"].collect()), out["stats"]

    one = go()
    dist = go(one_task_docs=0)
    assert "one_task" in one[4]["step_s"] and "one_task" not in dist[4]["step_s"]
    assert one[:4] == dist[:4]
    assert one[4]["candidate_pairs"] == dist[4]["candidate_pairs"] and one[4]["largest_bucket"] == dist[4]["largest_bucket"]
    edges, comp, recall, removed, _ = one
    assert edges <= truth and recall >= 0.99, recall
    stars = go(bucket_all_pairs=0, false_positive_weight=0.1, false_negative_weight=0.9)
    assert stars[2] < 0.97, stars[2]
    assert len(removed) > len(stars[3])


def test_partition_labels_land_one_share_per_partition(spark):
    """The distributed path's shares travel under labels that Spark's hash partitioning sends to
    distinct partitions (the hash is Spark's own Murmur3, spelled out in Python)."""
    from pyspark.sql import functions as F

    from thresher.stages.fuzzy_dedup.distributed import _murmur3_int, partition_labels

    got = spark.range(-300, 300).select("id", F.hash(F.col("id").cast("int")).alias("h")).collect()
    assert all(_murmur3_int(r["id"]) == r["h"] for r in got)
    for parts in (1, 3, 4, 8, 200):
        label = partition_labels(parts)
        df = spark.createDataFrame([(q,) for q in label], "q int").repartition(parts, "q")
        placed = df.rdd.mapPartitionsWithIndex(lambda i, rows: [(i, r["q"]) for r in rows]).collect()
        assert sorted(placed) == [(t, label[t]) for t in range(parts)]


def test_blobs_carry_tables_whole(monkeypatch):
    """A share's rows cut into several IPC values (here a few hundred bytes each) come back as
    the same rows; the per-document table is told apart from the pairs by its first column."""
    import numpy as np

    from thresher.stages.fuzzy_dedup import distributed as D

    monkeypatch.setattr(D, "_BLOB_BYTES", 300)
    rng = np.random.default_rng(0)
    n = np.arange(100, dtype=np.int64)
    sets = pa.table({"n": n, "id": [f"d{i:03d}" for i in n],
                     "s": [rng.integers(0, 99, rng.integers(1, 9)).astype(np.uint64).tobytes() for _ in n]})
    starts = np.array([0, 40, 70])
    shares = D._split(sets, D._shares(starts, n))
    assert [(k, v.num_rows) for k, v in shares] == [(0, 40), (1, 30), (2, 30)]
    label = D.partition_labels(3)
    batches = list(D._blob_rows(shares, label))
    assert sum(b.num_rows for b in batches) > 3  # cut into several values
    back = pa.concat_tables(D._blob_tables(batches))
    assert back.sort_by("n").equals(sets)
    pairs = pa.table({"a": n[:5], "b": n[5:10], "size": n[:5]})
    s, rest = D._sets_and_rest(list(D._blob_rows([(0, pairs)], label)) + batches[::-1], "pairs")
    assert s.equals(sets) and rest.equals(pairs)
    with pytest.raises(Exception, match="does not hold"):
        D._locate(s, np.array([3, 100]))


TWIN = "same words in both of these two texts here"


@pytest.mark.parametrize("rows", [[], [("a", "")], [("b", "one two three four five six"), ("a", "one two three four five six")],
                                  [("x", TWIN), ("y", TWIN + " again")]])
def test_distributed_path_on_tiny_inputs(spark, rows):
    """Fewer documents than partitions (empty ranges, empty shares) give the one-task result."""
    def go(**kw):
        docs = _df(spark, rows, 3) if rows else spark.createDataFrame([], SCHEMA)
        out, scored = FD.run_with_pairs(spark, {"documents": docs}, FD.Config(seed=0, **kw))
        return (sorted(tuple(r) for r in out["duplicates"].collect()), sorted(tuple(r) for r in scored.collect()),
                sorted(tuple(r) for r in out["removed"].collect()))
    one, dist = go(), go(one_task_docs=0)
    assert one == dist
    if len(rows) == 2:
        assert len(one[1]) == 1 and len(one[2]) == 1


def test_footer_rows_counts_a_plain_parquet_scan_only(spark, tmp_path):
    """The path decision's document count comes from the footers only where they are the
    frame's rows: a filtered or in-memory frame is counted by Spark."""
    from thresher.stages.fuzzy_dedup import Config, corpus_size, footer_rows

    for i in range(3):
        pq.write_table(pa.table({"id": [f"{i}-{k}" for k in range(10 + i)], "text": ["a b c"] * (10 + i)}),
                       tmp_path / f"part-{i}.parquet")
    df = spark.read.parquet(str(tmp_path))
    assert footer_rows(df) == 33 == df.count()
    assert footer_rows(df.where("id like '0-%'")) is None
    assert footer_rows(df.select("id")) is None
    assert footer_rows(spark.createDataFrame([("a", "b")], "id string, text string")) is None
    assert corpus_size(df, Config(one_task_docs=10)) == {"n": 33, "b": None}
    assert corpus_size(df, Config(one_task_docs=100)) == {"n": 33, "b": 33 * 5}


@pytest.mark.unit
@pytest.mark.parametrize("survivor, verify", [("longest", True), ("quality", True), ("smallest_id", True),
                                              ("quality", False)])
def test_dedup_on_driver_is_the_one_task_dedup(survivor, verify):
    """`against` signs few new documents once, to the driver, and dedups them there
    (one_task.dedup_on_driver): the same duplicates, row for row, and the same counts as the
    one-task path's executor function on the same documents."""
    from thresher.stages.fuzzy_dedup.one_task import dedup_on_driver, one_task_batches
    from thresher.stages.fuzzy_dedup.signing import sign_batches

    t = pq.read_table(FAMILIES, columns=["id", "text"])
    rng = random.Random(4)
    q = pa.array([None if rng.random() < 0.1 else rng.random() for _ in range(t.num_rows)], pa.float64())
    batches = pa.table({"id": t["id"], "text": t["text"], "_quality": q}).to_batches(max_chunksize=500)
    cfg = FD.Config(seed=0, survivor=survivor, verify=verify)
    bands, rows = FD.lsh_params(cfg)
    out = pa.Table.from_batches(list(one_task_batches(cfg, bands, rows)(iter(batches))))
    members = out.column("member").combine_chunks().filter(out.column("member").combine_chunks().is_valid())
    want = sorted((m["id"], m["component_id"], m["representative_id"], m["similarity"]) for m in members.to_pylist())
    counts = {r["name"]: r["value"] for r in out.column("count").drop_null().to_pylist()}

    signed = pa.Table.from_batches(list(sign_batches(cfg, bands, rows, quality=True)(iter(batches))))
    dups, stats = dedup_on_driver(signed, cfg, bands, rows)
    got = sorted(zip(*(dups.column(c).to_pylist() for c in ("id", "component_id", "representative_id", "similarity"))))
    assert len(want) > 100 and got == want
    assert dups.column("is_representative").to_pylist() == [a == b for a, b in zip(dups["id"].to_pylist(),
                                                                                   dups["representative_id"].to_pylist())]
    assert (stats["candidate_pairs"], stats["components"], stats["docs_in_components"]) == \
        (counts["candidate_pairs"], counts["components"], counts["docs_in_components"])
