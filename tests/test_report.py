"""The run report: written at the end of a run, complete when the run has the tables, and it
renders in a real browser (headless Chromium) with its plots visible."""

from __future__ import annotations

import base64
import io
import json
import math
import re
import shutil
import subprocess
from collections import defaultdict
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from thresher import schemas
from thresher.flows.report import (AFTER, BEFORE, GONE, KEPT, containment_dag, plot_duplicates, report_after_run,
                                   write_report)

from conftest import DEMO

# The CLI or a whole flow, end to end (a Spark session, often Prefect or a subprocess).
pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")
IMG = re.compile(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'")


@pytest.fixture(scope="module")
def demo_run(spark, tmp_path_factory):
    from thresher.flows.config import load_config
    from thresher.flows.curate import execute

    out = tmp_path_factory.mktemp("report") / "run"
    cfg = load_config(raw={"input": [str(DEMO)], "output": str(out), "stages": ["ingest", "export"],
                           "export": {"rows_per_file": 2000}})
    return execute(cfg, spark=spark), out


def _pngs(text: str):
    from PIL import Image

    return [Image.open(io.BytesIO(base64.b64decode(b))).convert("RGB") for b in IMG.findall(text)]


def _ink(img) -> tuple[float, int]:
    """Share of non-white pixels, and the number of distinct colours."""
    px = list(img.get_flattened_data())
    non_white = sum(1 for p in px if min(p) < 245)
    return non_white / len(px), len(set(px))


def test_report_written_at_end_of_run(demo_run):
    manifest, out = demo_run
    html = (out / "report.html").read_text()
    assert html.startswith("<!doctype html>")
    # Self-contained: nothing fetched from anywhere.
    assert "http://" not in html and "https://" not in html and "<script" not in html
    imgs = _pngs(html)
    assert len(imgs) == 2  # funnel, time and memory: the only plots a dedup-less run has data for
    assert html.count("Not shown") == 4
    for name in ("duplicates", "clusters", "quality", "containment"):
        assert f"`{name}` table" in html
    for st in manifest["stages"].values():
        # The driver's process tree includes a JVM: far more than 100 MiB, far less than 64 GiB.
        assert 100 < st["peak_rss_mb"] < 65536
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk["stages"]["ingest"]["peak_rss_mb"] == manifest["stages"]["ingest"]["peak_rss_mb"]
    for img in imgs:
        share, colours = _ink(img)
        assert share > 0.03 and colours > 20


def _write(root: Path, stage: str, table: str, rows: dict) -> dict:
    """A stage output table as the runner lays it out, checked against its schema."""
    t = pa.table(rows, schema=schemas.get(table).schema)
    schemas.validate(table, t.schema, table)
    d = root / stage / table
    d.mkdir(parents=True)
    pq.write_table(t, d / "part-00000.parquet")
    return {"rows": t.num_rows, "path": f"{stage}/{table}"}


def _add_curation_tables(root: Path, manifest: dict) -> None:
    """Tables of the later stages, derived from the demo documents themselves.

    They follow the stages' schemas (which is all the report reads): exact duplicates are
    identical texts, "fuzzy" components are packages built from one source package (a heavy-tailed
    size distribution, like real near-duplicate components), clusters are Debian sections, the
    quality score grows with text length, the selection takes at most 40 of the best documents per
    section (upsampling small sections), and a section is contained in another when half its
    source packages are there.
    """
    docs = pq.read_table(DEMO).to_pylist()
    ids = sorted(d["id"] for d in docs)
    by_id = {d["id"]: d for d in docs}

    def components(key):
        groups = defaultdict(list)
        for i in ids:
            groups[key(by_id[i])].append(i)
        mem = [sorted(g) for g in groups.values() if len(g) > 1]
        rows = {"id": [], "component_id": [], "representative_id": [], "is_representative": [], "similarity": []}
        for g in mem:
            for i in g:
                rows["id"].append(i)
                rows["component_id"].append(g[0])
                rows["representative_id"].append(g[0])
                rows["is_representative"].append(i == g[0])
                rows["similarity"].append(1.0)
        return rows, sum(len(g) - 1 for g in mem)

    exact, exact_removed = components(lambda d: d["text"])
    fuzzy, fuzzy_removed = components(lambda d: d["source_package"])
    sections = sorted({d["section"] for d in docs})
    sec_idx = {s: i for i, s in enumerate(sections)}
    score = {i: math.log1p(len(by_id[i]["text"])) for i in ids}
    clusters = {"id": ids, "level_1": [sec_idx[by_id[i]["section"]] for i in ids],
                "distance": [0.0] * len(ids), "rank": [0] * len(ids)}
    per_sec = defaultdict(list)
    for i in ids:
        per_sec[by_id[i]["section"]].append(i)
    sel = {"id": [], "multiplicity": [], "cluster_path": [], "quality": [], "why": []}
    for s, members in per_sec.items():
        best = sorted(members, key=lambda i: (-score[i], i))[:40]
        mult = max(1, min(3, 40 // len(members)))
        for i in best:
            sel["id"].append(i)
            sel["multiplicity"].append(mult)
            sel["cluster_path"].append(str(sec_idx[s]))
            sel["quality"].append(None)
            sel["why"].append("quota")
    pkgs = defaultdict(set)
    for d in docs:
        pkgs[d["section"]].add(d["source_package"])
    edges = [(a, b, len(pkgs[a] & pkgs[b]) / len(pkgs[a])) for a in sections for b in sections
             if a != b and a and b and pkgs[a] & pkgs[b]]
    cont = {"contained": [a for a, _, _ in edges], "container": [b for _, b, _ in edges],
            "step": ["content"] * len(edges), "fraction": [f for _, _, f in edges],
            "shared_columns": [["source_package"]] * len(edges),
            "is_contained": [f >= 0.5 for _, _, f in edges]}
    assert 5 <= sum(cont["is_contained"]) < len(edges)

    n = len(ids)
    add = {
        # Like the real exact_dedup stage: no duplicates table, the removed copies name the kept one.
        "exact_dedup": ({"removed": _write(root, "exact_dedup", "removed", {
            "id": [i for i, r in zip(exact["id"], exact["is_representative"]) if not r],
            "stage": ["exact_dedup"] * exact_removed, "reason": ["exact_duplicate"] * exact_removed,
            "by_id": [c for c, r in zip(exact["component_id"], exact["is_representative"]) if not r],
            "score": [None] * exact_removed})}, {"exact_duplicate": exact_removed}),
        "fuzzy_dedup": ({"duplicates": _write(root, "fuzzy_dedup", "duplicates", fuzzy)}, {"near": fuzzy_removed}),
        "quality": ({"quality": _write(root, "quality", "quality", {"id": ids, "score": [score[i] for i in ids]})}, {}),
        "cluster": ({"clusters": _write(root, "cluster", "clusters", clusters)}, {}),
        "sample": ({"selection": _write(root, "sample", "selection", sel)}, {}),
        "containment": ({"containment": _write(root, "containment", "containment", cont)}, {}),
    }
    stages = {"ingest": manifest["stages"]["ingest"]}
    left = n
    for name, (tables, removed) in add.items():
        gone = sum(removed.values())
        stages[name] = {"stage": name, "rows_in": left, "kept": left - gone, "removed": removed,
                        "rejected": {}, "tables": tables, "wall_s": 1.0 + len(stages), "peak_rss_mb": 500.0 + 100 * len(stages)}
        left -= gone
    stages["export"] = {**manifest["stages"]["export"], "rows_in": left, "kept": left}
    manifest["stages"] = stages
    (root / "manifest.json").write_text(json.dumps(manifest))


def test_report_all_plots_render_in_chromium(demo_run, tmp_path):
    _, src = demo_run
    root = tmp_path / "run"
    shutil.copytree(src, root)
    _add_curation_tables(root, json.loads((root / "manifest.json").read_text()))
    path = write_report(root)
    html = path.read_text()
    assert "Not shown" not in html
    manifest = json.loads((root / "manifest.json").read_text())
    legend = [t.get_text() for t in plot_duplicates(root, manifest).axes[0].get_legend().get_texts()]
    exact_docs = len({d["text"] for d in pq.read_table(DEMO, columns=["text"]).to_pylist()})
    assert legend[0].startswith("exact_dedup (from removed.by_id): 49 components, ") and legend[1].startswith("fuzzy_dedup: ")
    assert f"{pq.read_metadata(DEMO).num_rows - exact_docs + 49:,} documents" in legend[0]
    imgs = _pngs(html)
    assert len(imgs) == 6
    for img in imgs:
        share, colours = _ink(img)
        assert share > 0.03 and colours > 20, (share, colours)

    if not CHROMIUM.exists():
        pytest.skip("chromium not installed (make test installs it on Debian)")
    shot = tmp_path / "shot.png"
    cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--hide-scrollbars", f"--user-data-dir={tmp_path / 'chromium'}", f"--screenshot={shot}",
           "--window-size=1200,3800", path.as_uri()]
    subprocess.run(cmd, check=True, capture_output=True, timeout=90)
    from PIL import Image

    img = Image.open(shot).convert("RGB")
    share, colours = _ink(img)
    assert share > 0.06, f"screenshot nearly blank: {share:.3f} non-white"
    assert colours > 200
    # The plots' own colours are on screen, so the browser decoded the embedded images.
    small = img.resize((300, 1300))
    px = set(small.get_flattened_data())

    def near(hexcol, tol=40):
        c = tuple(int(hexcol[i:i + 2], 16) for i in (1, 3, 5))
        return any(sum(abs(a - b) for a, b in zip(c, p)) < tol for p in px)

    for colour in (BEFORE, AFTER, KEPT, GONE):
        assert near(colour), f"no {colour} on screen"


def test_report_cli_and_failures(tmp_path):
    from thresher.flows.cli import main

    res = CliRunner().invoke(main, ["report", str(tmp_path / "missing")])
    assert res.exit_code == 2 and "run folder not found" in res.output
    res = CliRunner().invoke(main, ["report", str(tmp_path)])
    assert res.exit_code == 2 and "no manifest.json" in res.output
    (tmp_path / "manifest.json").write_text("{not json")
    # At the end of a run a broken report is a warning, never a failure of the run.
    assert report_after_run(tmp_path) is None
    assert not (tmp_path / "report.html").exists()


def test_containment_graph_folds_copies_and_drops_implied_edges():
    # a in b in c (so a in c too); x and y are copies of each other and both in c; z stands alone.
    pairs = [("a", "b"), ("b", "c"), ("a", "c"), ("x", "y"), ("y", "x"), ("x", "c"), ("y", "c"), ("z", "c")]
    groups, edges = containment_dag(pairs)
    assert groups == {"a": ["a"], "b": ["b"], "c": ["c"], "x": ["x", "y"], "z": ["z"]}
    assert edges == {("a", "b"), ("b", "c"), ("x", "c"), ("z", "c")}
    # A long chain with every implied pair listed keeps only the chain.
    chain = [f"d{i:03d}" for i in range(300)]
    implied = [(chain[i], chain[j]) for i in range(300) for j in range(i + 1, min(300, i + 4))]
    _, kept = containment_dag(implied)
    assert kept == {(chain[i], chain[i + 1]) for i in range(299)}
