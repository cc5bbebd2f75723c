"""Dataset containment (R2D2) on a generated lake whose every containment is known.

One flow run over a small lake (about 60 tables from 3,000 corpus rows) backs most tests; the
ground truth is computed by benchmarks/lake.py with Python set membership over the values."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from thresher.schemas.errors import InputError
from thresher.stages import containment as C

from benchmarks.lake import load_or_build  # noqa: E402  (conftest made `benchmarks` importable)

from conftest import CUT  # noqa: E402

# The CLI or a whole flow, end to end (a Spark session, often Prefect or a subprocess).
pytestmark = pytest.mark.integration



@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    path = tmp_path_factory.mktemp("lake") / "lake"
    truth = load_or_build(path, rows=3000, small=True, base=pq.read_table(CUT / "lake3000.parquet"))
    return path, truth


@pytest.fixture(scope="module")
def result(lake, spark, tmp_path_factory):
    """The `thresher containment` command in-process (no Prefect; the session's Spark) over the
    lake; pairs of tables up to 400 rows are decided in the driver, the rest on Spark, where
    sketches run for contained-side tables >= 400 rows: every content path runs."""
    from click.testing import CliRunner

    from thresher.flows.cli import main

    path, _ = lake
    out = tmp_path_factory.mktemp("cont") / "out"
    r = CliRunner().invoke(main, ["containment", str(path), "--output", str(out), "--no-prefect",
                                  "--set", "containment.sketch_min_rows=400", "--set", "containment.sketch_size=64",
                                  "--set", "containment.local_max_rows=400"])
    assert r.exit_code == 0, r.output
    manifest = json.loads((out / "manifest.json").read_text())
    # The runner's layout: the stage's folder holds its table (and _stage.json) like any stage's.
    table = pq.read_table(out / "containment" / "containment").to_pylist()
    plan = {r["dataset"]: r for r in pq.read_table(out / "plan.parquet").to_pylist()}
    return {"manifest": manifest, "table": table, "plan": plan, "out": out, "lake": path, "stdout": r.output}


def test_lake_is_rich(lake):
    path, truth = lake
    names = {p.name for p in path.iterdir() if p.is_dir()}
    assert len(names) >= 30
    contained = {k for k, f in truth.items() if f >= 1}
    # Hard negatives: near-misses are not contained in the slice they came from.
    assert ("nm_extra_row_libdevel", "sec_libdevel") not in contained
    assert ("nm_value_in_libdevel", "sec_libdevel") not in contained
    assert ("nm_drop_row_libdevel", "sec_libdevel") in contained
    assert ("sample_01", "sample_05") in contained and ("sample_05", "sample_01") not in contained


def test_exact_recall_and_precision(lake, result):
    _, truth = lake
    table = result["table"]
    found = {(r["contained"], r["container"]) for r in table if r["is_contained"]}
    true = {k for k, f in truth.items() if f >= 1.0}
    assert found == true  # recall and precision 1.0
    # Step 1 finds exactly the compatible ordered pairs, so nothing is lost before the data is read.
    assert {(r["contained"], r["container"]) for r in table} == set(truth)
    for r in table:
        if r["step"] == "content":
            assert r["fraction"] == pytest.approx(truth[(r["contained"], r["container"])], abs=1e-12)
        else:  # pruned without the exact check: must be a true non-containment
            assert truth[(r["contained"], r["container"])] < 1.0
    c = result["manifest"]["stages"]["containment"]["stats"]["counts"]
    assert c["ordered_pairs"] > c["after_schema"] > c["after_minmax"] >= c["after_sketch"] > c["after_content"] == len(true)
    assert c["sketched_pairs"] > 0 and c["after_sketch"] < c["after_minmax"]
    assert 0 < c["local_pairs"] < c["exact_pairs"]  # both the driver and the Spark check decided pairs
    assert c["empty"] == 2 and c["type_conflicts"] > 0
    steps = {r["step"] for r in table}
    assert steps == {"minmax", "sketch", "content"}


def test_special_tables(lake, result):
    _, truth = lake
    by = {(r["contained"], r["container"]): r for r in result["table"]}
    # A retyped column conflicts (no pair); a widened int column still compares.
    assert ("proj_size_string", "all") not in by and ("proj_size_float", "all") not in by
    assert by[("proj_size_int32", "all")]["is_contained"]
    # Tables without statistics are not pruned by min-max but still decided on content.
    assert by[("nostats_sec_libs", "all")]["is_contained"] and by[("nostats_sec_libs", "sec_doc")]["step"] != "minmax"
    # A value out of range is caught by min-max; one inside the range only by content.
    assert by[("nm_value_out_doc", "sec_doc")]["step"] == "minmax"
    assert by[("nm_value_in_libdevel", "sec_libdevel")]["step"] == "content"
    # Nested columns: the slice is inside, the same values in another list order are not.
    assert by[("nested_sec_libs", "nested_all")]["is_contained"]
    assert not by[("nm_nested_order", "nested_all")]["is_contained"]
    # Nulls: a sample with nulls is only in the table that has them (min-max knows from null counts).
    assert by[("nulls_sample_20", "nulls_all")]["is_contained"]
    assert by[("nulls_sample_20", "proj_pkg_maint")]["step"] == "minmax"
    assert by[("nulls_nonnull_sample_20", "proj_pkg_maint")]["is_contained"]
    # Empty tables are listed in the plan and never compared.
    assert not any("empty" in k[0] or "empty" in k[1] for k in by)
    assert result["plan"]["empty_all"]["action"] == "keep" and "empty" in result["plan"]["empty_all"]["reason"]


def test_plan_properties(lake, result):
    _, truth = lake
    plan = result["plan"]
    for name, r in plan.items():
        if r["action"] == "drop":
            c = r["contained_in"]
            assert plan[c]["action"] == "keep", (name, c)
            assert truth[(name, c)] >= 1.0
            assert r["bytes_saved"] == r["bytes"] > 0
    # Equal datasets keep exactly one.
    copies = ["all", "all_copy", "all_copy_snappy"]
    assert sum(plan[n]["action"] == "keep" for n in copies) == 1
    keeper = next(n for n in copies if plan[n]["action"] == "keep")
    # Equal slices (reordered copies, no statistics) are all inside the kept whole table.
    assert all(plan[n]["action"] == "drop" for n in ["sec_libs", "copy_sec_libs", "copy2_sec_libs", "nostats_sec_libs"])
    # Chains resolve to their largest member.
    for n in ["sample_05", "sample_10", "sample_20", "sample_50", "sec_libs_half", "proj_meta", "secmeta_libs"]:
        assert plan[n]["contained_in"] == keeper, (n, plan[n])
    doc = json.loads((result["out"] / "plan.json").read_text())
    rec = result["manifest"]["stages"]["containment"]
    assert doc["counts"] == rec["stats"]["counts"] and len(doc["plan"]) == len(plan)
    tables = {t: {k: v[k] for k in ("rows", "path")} for t, v in rec["tables"].items()}
    assert tables == {"containment": {"rows": len(result["table"]), "path": "containment/containment"},
                      "plan": {"rows": len(plan), "path": "plan.parquet"}}
    # Nothing but thresher's own files in the output folder (the run's lock file included); the
    # stage folder as the runner makes it.
    assert sorted(p.name for p in result["out"].iterdir()) == [".thresher.lock", "containment", "manifest.json", "plan.json",
                                                              "plan.parquet"]
    assert sorted(p.name for p in (result["out"] / "containment").iterdir()) == ["_stage.json", "containment"]


def _toy(names_rows: dict[str, int], cols=("a",)) -> list[C.Dataset]:
    out = []
    for n, rows in names_rows.items():
        schema = pa.schema([(c, pa.string()) for c in cols])
        d = C.Dataset(n, f"/x/{n}", [f"/x/{n}/p.parquet"], schema, rows, rows * 100, {c: rows * 100 for c in cols},
                      {c: C.ColumnStats(False) for c in cols})
        d.classes = {c: "string" for c in cols}
        out.append(d)
    return out


def test_plan_is_deterministic_and_cost_aware():
    cfg = C.Config()
    rows = {"big": 1000, "mid": 100, "twin_b": 50, "twin_a": 50, "small": 20, "alone": 5}
    edges = {("mid", "big"), ("twin_a", "mid"), ("twin_b", "mid"), ("twin_a", "big"), ("twin_b", "big"),
             ("twin_a", "twin_b"), ("twin_b", "twin_a"), ("small", "twin_a"), ("small", "twin_b"),
             ("small", "mid"), ("small", "big")}
    plans = []
    for order in (list(rows), sorted(rows), sorted(rows, reverse=True)):
        ds = _toy({n: rows[n] for n in order})
        idx = {d.name: i for i, d in enumerate(ds)}
        contained = {(idx[a], idx[b]): 1.0 for a, b in edges}
        plans.append({r.dataset: (r.action, r.contained_in) for r in C.plan(ds, contained, cfg)})
    assert plans[0] == plans[1] == plans[2]
    p = plans[0]
    assert p["big"] == ("keep", None) and p["alone"] == ("keep", None)
    assert all(p[n] == ("drop", "big") for n in ["mid", "twin_a", "twin_b", "small"])
    # Equal datasets with nothing above them: exactly one kept, by name when all else ties.
    ds = _toy({"twin_b": 50, "twin_a": 50})
    r = {x.dataset: (x.action, x.contained_in) for x in C.plan(ds, {(0, 1): 1.0, (1, 0): 1.0}, cfg)}
    assert r == {"twin_a": ("keep", None), "twin_b": ("drop", "twin_a")}
    # Rebuilding from a container 1000x the size costs more than it saves at a high weight.
    dear = C.Config(cost={"rebuild_weight": 0.5})
    ds = _toy({"big": 1000, "small": 1})
    r = {x.dataset: x for x in C.plan(ds, {(1, 0): 1.0}, dear)}
    assert r["small"].action == "keep" and "costs more" in r["small"].reason


def test_near_containment_plan(lake, result):
    """tau < 1: a near-miss (one value changed) counts as contained at 0.99 but not at 1."""
    path, truth = lake
    frac = {(r["contained"], r["container"]): r["fraction"] for r in result["table"] if r["step"] == "content"}
    f = frac[("nm_value_in_libdevel", "sec_libdevel")]
    assert 0.99 <= f < 1.0 and f == pytest.approx(truth[("nm_value_in_libdevel", "sec_libdevel")])


def test_sketch_never_rejects_a_true_containment():
    rng = np.random.default_rng(0)
    b = np.unique(rng.integers(-2**62, 2**62, 5000))
    a = rng.choice(b, 800, replace=False)
    k = 64
    sk = lambda x: np.sort(np.unique(x))[:k]  # noqa: E731
    assert C.sketch_verdict(sk(a), sk(b), k, 1.0)[0]
    a_out = np.concatenate([a, rng.integers(-2**62, 2**62, 800)])
    ok, est = C.sketch_verdict(sk(a_out), sk(b), k, 1.0)
    assert not ok and 0.2 < est < 0.8


def test_bottom_k_matches_numpy():
    # The per-partition sketch kernel against its reference: k smallest distinct per key.
    from thresher.kernels.sketch import bottom_k_ref

    rng = np.random.default_rng(1)
    ds, s = rng.integers(0, 4, 5000), rng.integers(0, 3, 5000)
    h = rng.integers(-50, 50, 5000) * 10**15
    got = C.bottom_k(ds, s, h, 7)
    want = bottom_k_ref(ds, s, h, 7)
    assert len(got) == 12 and got.keys() == want.keys()
    for key, v in got.items():
        assert v.tolist() == want[key].tolist()


def test_fingerprint_kernels_match_reference():
    # The driver's distinct-with-counts and membership kernels against their references, with
    # many repeated h1 values so that equal first hashes with different second ones occur.
    from thresher.kernels.sketch import distinct_counts, distinct_counts_ref, found_in_ref

    rng = np.random.default_rng(2)
    h1, h2 = rng.integers(-3, 3, 4000) * 2**61, rng.integers(-40, 40, 4000)
    got, want = distinct_counts(h1, h2), distinct_counts_ref(h1, h2)
    assert all(g.tolist() == w.tolist() for g, w in zip(got, want)) and got[2].sum() == 4000
    b1, b2, _ = distinct_counts(h1[:1500], h2[:1500])
    a1, a2 = h1[1000:], h2[1000:]
    hit = C.found_in(a1, a2, b1, b2)
    assert hit.tolist() == found_in_ref(a1, a2, b1, b2).tolist() and 0 < hit.sum() < len(a1)


def test_driver_check_matches_truth_on_every_pair(lake):
    """The driver's content check, alone, on every schema-compatible pair of the lake (nested
    columns, nulls, dictionaries, tables without statistics included): fractions equal the truth."""
    path, truth = lake
    ds = C.inspect_all(C.load_catalog(path))
    edges, _ = C.schema_graph(ds)
    res = C.local_content_check(ds, edges, C.Config())
    got = {(ds[a].name, ds[b].name): r.fraction for (a, b), r in res.items()}
    assert got.keys() == truth.keys()
    assert all(got[k] == pytest.approx(truth[k], abs=1e-12) for k in truth)


def test_found_in_with_colliding_first_hash():
    # Distinct rows of B can share h1 (a 64-bit collision); then h2 must decide.
    b1 = np.array([1, 5, 5, 5, 9], np.int64)
    b2 = np.array([0, 2, 4, 6, 0], np.int64)
    a1 = np.array([5, 5, 5, 1, 9, 7], np.int64)
    a2 = np.array([4, 6, 3, 1, 0, 0], np.int64)
    assert C.found_in(a1, a2, b1, b2).tolist() == [True, True, False, False, True, False]


def test_row_hashes_distinguish_what_differs():
    t = pa.table({"x": pa.array(["a", None, "", "a"]), "y": pa.array([None, "a", None, None])})
    h1, h2 = C.row_hashes(t, ("x", "y"))
    assert len(set(h1.tolist())) == 3 and h1[0] == h1[3] and len(set(h2.tolist())) == 3
    i32 = pa.table({"v": pa.array([1, 2], pa.int64())})
    f = pa.table({"v": pa.array([0.0, -0.0])})
    assert C.row_hashes(f, ("v",))[0][0] == C.row_hashes(f, ("v",))[0][1]
    lists = pa.table({"l": pa.array([[1, None], [None, 1]])})
    assert C.row_hashes(lists, ("l",))[0][0] != C.row_hashes(lists, ("l",))[0][1]
    assert C.type_class(pa.int32()) == C.type_class(pa.int64()) == "int64"
    assert C.type_class(pa.large_string()) == C.type_class(pa.dictionary(pa.int32(), pa.string())) == "string"
    assert C.type_class(pa.float32()) != C.type_class(pa.float64())
    assert C.row_hashes(i32, ("v",))[0].dtype == np.int64


def test_footer_statistics(tmp_path):
    pq.write_table(pa.table({"k": [5, 6], "s": ["b", "c"]}), tmp_path / "a.parquet")
    pq.write_table(pa.table({"k": [1, 9], "s": ["a", "z"]}), tmp_path / "b.parquet")
    pq.write_table(pa.table({"k": [1, 2], "s": ["a", "z"]}), tmp_path / "c.parquet")
    pq.write_table(pa.table({"k": [1, 2], "s": ["a", "b"]}), tmp_path / "n.parquet", write_statistics=False)
    pq.write_table(pa.table({"k": [5, None, 6], "s": ["b", "c", "c"]}), tmp_path / "z.parquet")
    a, b, c, n, z = (C.inspect(C.DatasetRef(x, str(tmp_path / f"{x}.parquet"))) for x in "abcnz")
    assert C.minmax_excludes(a, b) is None
    assert C.minmax_excludes(a, c) == "k"
    assert not n.stats["k"].known and C.minmax_excludes(a, n) is None and C.minmax_excludes(n, a) is None
    assert C.minmax_excludes(z, b) == "k"  # z has a null, b none
    assert C.minmax_excludes(a, z) is None
    # Near-containment tolerates missing rows, so footer bounds prune nothing there.
    ds = [a, c]
    assert C.minmax_step(ds, [(0, 1)], C.Config())[0] == []
    assert C.minmax_step(ds, [(0, 1)], C.Config(tau=0.9))[0] == [(0, 1)]


def test_bad_catalogs(tmp_path):
    with pytest.raises(InputError, match="nope.yaml: catalog not found"):
        C.load_catalog(tmp_path / "nope.yaml")
    pq.write_table(pa.table({"a": [1]}), tmp_path / "one.parquet")
    cat = tmp_path / "cat.yaml"
    cat.write_text("- {name: x, path: one.parquet}\n- {name: x, path: one.parquet}\n")
    with pytest.raises(InputError, match="two datasets named 'x' \\(entries 0 and 1\\)"):
        C.load_catalog(cat)
    both = tmp_path / "both"
    (both / "x").mkdir(parents=True)
    pq.write_table(pa.table({"a": [1]}), both / "x" / "p.parquet")
    pq.write_table(pa.table({"a": [1]}), both / "x.parquet")
    with pytest.raises(InputError, match="two datasets named 'x' \\(a folder and a .parquet file\\)"):
        C.load_catalog(both)
    cat.write_text("- {name: x, path: one.parquet}\n- {name: y, path: one.parquet}\n")
    with pytest.raises(InputError, match="'x' and 'y' name the same path"):
        C.load_catalog(cat)
    cat.write_text("- {name: x, path: missing}\n")
    with pytest.raises(InputError, match="dataset 'x': path .*missing does not exist"):
        C.load_catalog(cat)
    cat.write_text("- {name: x, pth: one.parquet}\n")
    with pytest.raises(InputError, match="entry 0 needs 'name' and 'path'"):
        C.load_catalog(cat)
    # Files of one dataset that disagree on a column's type; a damaged file.
    d = tmp_path / "lake"
    (d / "mixed").mkdir(parents=True)
    pq.write_table(pa.table({"a": [1]}), d / "mixed" / "p0.parquet")
    pq.write_table(pa.table({"a": ["1"]}), d / "mixed" / "p1.parquet")
    (d / "broken").mkdir()
    (d / "broken" / "p.parquet").write_bytes(b"PAR1 nonsense")
    (d / "fine").mkdir()
    pq.write_table(pa.table({"a": [1]}), d / "fine" / "p.parquet")
    refs = C.load_catalog(d)
    assert [r.name for r in refs] == ["broken", "fine", "mixed"]
    with pytest.raises(InputError, match="dataset 'broken': .*not a readable Parquet file"):
        C.inspect_all(refs)
    with pytest.raises(InputError, match="dataset 'mixed': column 'a' is string in .*p1.parquet but int64"):
        C.inspect(refs[2])
    ds = C.inspect_all(refs, on_bad="skip")
    rows = {r.dataset: r for r in C.plan(ds, {}, C.Config())}
    assert rows["broken"].action == "skipped" and rows["mixed"].action == "skipped" and rows["fine"].action == "keep"


def test_cli_errors_are_one_line(tmp_path):
    from click.testing import CliRunner

    from thresher.flows.cli import main

    r = CliRunner().invoke(main, ["containment", str(tmp_path / "nope"), "--output", str(tmp_path / "o")])
    lines = [ln for ln in r.output.splitlines() if ln.startswith("thresher: error:")]
    assert r.exit_code == 2 and len(lines) == 1 and "catalog not found" in lines[0] and "Traceback" not in r.output
    assert not (tmp_path / "o").exists()


def test_cli_summary_and_refusals(result):
    """The command's summary, then what a second run is refused for (all before Spark starts)."""
    from click.testing import CliRunner

    from thresher.flows.cli import main

    c = result["manifest"]["stages"]["containment"]["stats"]["counts"]
    assert f"plan: drop {c['dropped']} datasets" in result["stdout"]
    assert f"-> content {c['after_content']} contained" in result["stdout"]
    assert result["plan"]["proj_meta"]["rebuild"] == "projection+filter"
    assert result["plan"]["sample_10"]["rebuild"] == "filter"
    lake, out = str(result["lake"]), str(result["out"])
    r = CliRunner().invoke(main, ["containment", lake, "--output", out])
    assert r.exit_code == 2 and "previous run" in r.output and "--overwrite" in r.output
    r = CliRunner().invoke(main, ["containment", lake, "--output", out, "--set", "containment.tua=0.9"])
    assert r.exit_code == 2 and "containment.tua: unknown key; did you mean tau?" in r.output
    r = CliRunner().invoke(main, ["containment", lake, "--output", str(result["lake"] / "all" / "o")])
    assert r.exit_code == 2 and "inside the input" in r.output
