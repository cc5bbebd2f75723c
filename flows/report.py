"""The run report: one self-contained HTML file with plots of what a run did.

`thresher report RUN_DIR` writes `RUN_DIR/report.html`; the curate flow writes it at the end of
every successful run. Everything is read from the run folder (manifest.json and the stage tables)
with pyarrow, never Spark: the plots need small aggregates only (one count per component, per
cluster, a histogram of scores), and a report must be cheap enough to make after any run, on a
machine with no JVM. Plots are PNGs embedded as base64, so the file can be mailed or attached to a
CI run and opened anywhere with no network.

A plot whose table the run did not write is left out with a note saying which table it needs.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import math
from pathlib import Path
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from thresher.schemas.errors import InputError

log = logging.getLogger("thresher.report")

REPORT = "report.html"

# Colours chosen to stay distinct in print and for common colour-vision deficiencies.
BEFORE, AFTER, KEPT, GONE, ACCENT = "#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3"


# ----------------------------------------------------------------------------- reading
def _load_manifest(root: Path) -> dict:
    path = root / "manifest.json"
    if not path.is_file():
        raise InputError(f"{root}: not a thresher run folder (no manifest.json)")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: unreadable manifest ({exc})") from None


def table_paths(root: Path, manifest: dict, name: str) -> list[tuple[str, Path]]:
    """(stage, folder) of every table called `name` that the run wrote, in stage order.

    The manifest is the source of truth; folders a run left without a manifest entry (a
    stage that failed) are not trusted.
    """
    out = []
    for stage, st in manifest.get("stages", {}).items():
        info = st.get("tables", {}).get(name)
        if info and (root / info["path"]).exists():
            out.append((stage, root / info["path"]))
    return out


def _read(path: Path, columns: list[str]) -> pa.Table | None:
    """Only the named columns of a Parquet folder (hidden and _-prefixed files skipped, as Spark does)."""
    try:
        ds = pads.dataset(str(path), format="parquet", exclude_invalid_files=True,
                          ignore_prefixes=[".", "_"])
        have = set(ds.schema.names)
        cols = [c for c in columns if c in have]
        if len(cols) < len(columns):
            return None
        return ds.to_table(columns=cols)
    except (OSError, pa.ArrowInvalid) as exc:
        log.warning("report: cannot read %s (%s)", path, exc)
        return None


def _latest(root: Path, manifest: dict, name: str, columns: list[str]) -> tuple[str, pa.Table] | None:
    found = table_paths(root, manifest, name)
    for stage, path in reversed(found):
        t = _read(path, columns)
        if t is not None:
            return stage, t
    return None


def _kept_ids(root: Path, manifest: dict) -> pa.Array | None:
    """Ids of the final documents: tables other than documents may hold ids a later stage removed."""
    got = _latest(root, manifest, "documents", ["id"])
    return got[1].column("id").combine_chunks() if got else None


# ----------------------------------------------------------------------------- plots
def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> str:
    plt = _plt()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=96, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _counts_of(values: pa.Array) -> list[int]:
    """Size of each group of equal values (the group sizes, not the keys)."""
    t = pa.table({"k": values}).group_by("k").aggregate([("k", "count")])
    return t.column("k_count").to_pylist()


def plot_funnel(manifest: dict):
    plt = _plt()
    stages = manifest.get("stages", {})
    if not stages:
        return None
    names = list(stages)
    kept = [stages[n]["kept"] for n in names]
    gone = [sum(stages[n].get("removed", {}).values()) + sum(stages[n].get("rejected", {}).values())
            for n in names]
    fig, ax = plt.subplots(figsize=(9, 0.55 * len(names) + 1.6))
    y = list(range(len(names)))[::-1]
    ax.barh(y, kept, color=KEPT, label="kept")
    ax.barh(y, gone, left=kept, color=GONE, label="removed / rejected")
    top = max(k + g for k, g in zip(kept, gone)) or 1
    for yi, k, g in zip(y, kept, gone):
        ax.text(k + g + top * 0.01, yi, f"{k:,}" + (f"  (-{g:,})" if g else ""), va="center", fontsize=9)
    ax.set_yticks(y, names)
    ax.set_xlim(0, top * 1.25)
    ax.set_xlabel("documents")
    ax.set_title("Rows per stage")
    ax.legend(loc="lower right", bbox_to_anchor=(1.0, 1.0), ncol=2, fontsize=8, frameon=False)
    return fig


def plot_duplicates(root: Path, manifest: dict):
    found = table_paths(root, manifest, "duplicates")
    series = []
    for stage, path in found:
        t = _read(path, ["component_id"])
        if t is not None and t.num_rows:
            series.append((stage, _counts_of(t.column("component_id").combine_chunks())))
    with_table = {stage for stage, _ in found}
    for stage, path in table_paths(root, manifest, "removed"):
        # A dedup stage that writes no duplicates table still names, for each removed copy, the
        # document it kept: a component is that document and the copies pointing at it.
        if stage in with_table:
            continue
        t = _read(path, ["reason", "by_id"])
        if t is None:
            continue
        t = t.filter(pc.and_(pc.is_valid(t.column("by_id")),
                             pc.match_substring(t.column("reason"), "duplicate")))
        if t.num_rows:
            series.append((f"{stage} (from removed.by_id)",
                           [n + 1 for n in _counts_of(t.column("by_id").combine_chunks())]))
    if not series:
        return None
    order = list(manifest.get("stages", {}))
    series.sort(key=lambda s: order.index(s[0].split(" ")[0]) if s[0].split(" ")[0] in order else len(order))
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9, 3.8))
    top = max(max(s) for _, s in series)
    # Component sizes are heavy-tailed: integer bins while small, log-spaced bins beyond.
    if top <= 30:
        bins = [b + 0.5 for b in range(1, top + 1)]
    else:
        bins = sorted({round(1.5 * (top / 1.5) ** (i / 30), 6) for i in range(31)} | {1.5})
        ax.set_xscale("log")
    colours = [BEFORE, AFTER, ACCENT, KEPT, GONE]
    for i, (stage, sizes) in enumerate(series):
        ax.hist(sizes, bins=bins, alpha=0.75, color=colours[i % len(colours)],
                label=f"{stage}: {len(sizes):,} components, {sum(sizes):,} documents")
    ax.set_yscale("log")
    ax.set_xlabel("component size (documents)")
    ax.set_ylabel("components")
    ax.set_title("Duplicate component sizes")
    ax.legend(fontsize=8)
    return fig


def plot_clusters(root: Path, manifest: dict):
    got = _latest(root, manifest, "clusters", ["id", "level_1"])
    if got is None:
        return None
    clusters = got[1]
    before = clusters.group_by("level_1").aggregate([("id", "count")])
    sel = _latest(root, manifest, "selection", ["id", "multiplicity"])
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9, 3.8))
    b = dict(zip(before.column("level_1").to_pylist(), before.column("id_count").to_pylist()))
    # Clusters ordered by size before balancing, so the flattening shows as a line bending.
    order = sorted(b, key=lambda c: (-b[c], c))
    x = list(range(len(order)))
    ax.plot(x, [b[c] for c in order], color=BEFORE, marker="o", ms=3, lw=1.5, label="before (clusters)")
    note = ""
    if sel is not None:
        joined = sel[1].join(clusters, "id", join_type="inner")
        after = joined.group_by("level_1").aggregate([("multiplicity", "sum")])
        a = dict(zip(after.column("level_1").to_pylist(), after.column("multiplicity_sum").to_pylist()))
        ax.plot(x, [a.get(c, 0) for c in order], color=AFTER, marker="o", ms=3, lw=1.5,
                label="after (selection, with multiplicity)")
    else:
        note = " (no selection table: before only)"
    ax.set_yscale("log")
    ax.set_xlabel("level-1 cluster (by size before balancing)")
    ax.set_ylabel("documents")
    ax.set_title("Cluster sizes before and after balancing" + note)
    ax.legend(fontsize=8)
    return fig


def plot_quality(root: Path, manifest: dict):
    got = _latest(root, manifest, "quality", ["id", "score"])
    if got is None:
        return None
    q = got[1].filter(pc.is_valid(got[1].column("score")))
    scores = [s for s in q.column("score").to_pylist() if not math.isnan(s)]
    if not scores:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9, 3.8))
    lo, hi = min(scores), max(scores)
    if hi == lo:
        hi = lo + 1.0
    bins = [lo + (hi - lo) * i / 40 for i in range(41)]
    ax.hist(scores, bins=bins, density=True, alpha=0.6, color=BEFORE, label=f"before: {len(scores):,} scored")
    sel = _latest(root, manifest, "selection", ["id", "multiplicity"])
    if sel is not None:
        # The selection's own `quality` may be null; the quality table is the one source of scores.
        joined = sel[1].join(q, "id", join_type="inner")
        after = joined.column("score").to_pylist()
        weights = joined.column("multiplicity").to_pylist()
        if after:
            ax.hist(after, bins=bins, weights=weights, density=True, alpha=0.6, color=AFTER,
                    label=f"after: {sum(weights):,} selected (with multiplicity)")
    else:
        kept = _kept_ids(root, manifest)
        if kept is not None:
            after = q.filter(pc.is_in(q.column("id"), value_set=kept)).column("score").to_pylist()
            if after and len(after) != len(scores):
                ax.hist(after, bins=bins, density=True, alpha=0.6, color=AFTER,
                        label=f"kept documents: {len(after):,}")
    ax.set_xlabel("quality score")
    ax.set_ylabel("density")
    ax.set_title("Quality scores before and after")
    ax.legend(fontsize=8)
    return fig


def containment_dag(edges: list[tuple[str, str]]) -> tuple[dict[str, list[str]], set[tuple[str, str]]]:
    """The containment graph made readable: (groups, edges between groups).

    Datasets contained in each other (identical content) collapse into one group; then an
    edge a -> c implied by a -> b -> c is dropped (transitive reduction), which on a catalog of
    copies and subsets removes most edges without losing any containment.
    Groups are keyed by their first member's name.
    """
    succ: dict[str, set[str]] = {}
    for a, b in edges:
        succ.setdefault(a, set()).add(b)
        succ.setdefault(b, set())
    # Strongly connected components (Tarjan, iterative: catalogs can be deep chains).
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    comp: dict[str, str] = {}
    counter = 0
    for root in sorted(succ):
        if root in index:
            continue
        work = [(root, iter(sorted(succ[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            nxt = next(it, None)
            if nxt is not None:
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on.add(nxt)
                    work.append((nxt, iter(sorted(succ[nxt]))))
                elif nxt in on:
                    low[v] = min(low[v], index[nxt])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                members = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    members.append(w)
                    if w == v:
                        break
                key = min(members)
                for w in members:
                    comp[w] = key
    groups: dict[str, list[str]] = {}
    for v, k in comp.items():
        groups.setdefault(k, []).append(v)
    dag: dict[str, set[str]] = {k: set() for k in groups}
    for a, b in edges:
        if comp[a] != comp[b]:
            dag[comp[a]].add(comp[b])
    # Transitive reduction of a DAG: keep a -> b unless b is reachable from another successor.
    reach: dict[str, set[str]] = {}

    def reachable(v: str) -> set[str]:
        if v not in reach:
            out: set[str] = set()
            todo = list(dag[v])
            while todo:
                w = todo.pop()
                if w not in out:
                    out.add(w)
                    todo.extend(dag[w])
            reach[v] = out
        return reach[v]

    kept = set()
    for a, outs in dag.items():
        for b in outs:
            if not any(b in reachable(c) for c in outs if c != b):
                kept.add((a, b))
    return {k: sorted(m) for k, m in groups.items()}, kept


def plot_containment(root: Path, manifest: dict):
    found = table_paths(root, manifest, "containment")
    if not found:
        return None
    t = _read(found[-1][1], ["contained", "container", "is_contained"])
    if t is not None:
        # The table lists every compared pair; the graph is the pairs where containment holds.
        t = t.filter(pc.field("is_contained"))
    else:
        t = _read(found[-1][1], ["contained", "container"])
    if t is None or t.num_rows == 0:
        return None
    pairs = list(zip(t.column("contained").to_pylist(), t.column("container").to_pylist()))
    groups, edges = containment_dag(pairs)
    # Layers: datasets contained in nothing on top, each contained one below its lowest container.
    outs: dict[str, set[str]] = {g: set() for g in groups}
    for a, b in edges:
        outs[a].add(b)
    depth: dict[str, int] = {}
    for g in sorted(groups):  # depth-first without recursion: chains can be long
        todo = [g]
        while todo:
            v = todo[-1]
            if v in depth:
                todo.pop()
                continue
            missing = [w for w in outs[v] if w not in depth]
            if missing:
                todo.extend(missing)
                continue
            depth[v] = 1 + max((depth[w] for w in outs[v]), default=-1)
            todo.pop()
    layers: dict[int, list[str]] = {}
    for g in sorted(groups):
        layers.setdefault(depth[g], []).append(g)
    widest = max(len(v) for v in layers.values())
    plt = _plt()
    fig, ax = plt.subplots(figsize=(min(16, max(7.5, 0.55 * widest + 2)), 1.3 * len(layers) + 1.8))
    pos = {}
    for lvl, members in layers.items():
        for i, g in enumerate(members):
            pos[g] = ((i + 1) / (len(members) + 1), -lvl)
    for a, b in sorted(edges):
        (x0, y0), (x1, y1) = pos[a], pos[b]
        ax.annotate("", xy=(x1, y1), xytext=(x0, y0),
                    arrowprops=dict(arrowstyle="-|>", color=GONE, lw=1.0, shrinkA=7, shrinkB=7, alpha=0.7))
    contained = {a for a, _ in edges}
    for g, (x, y) in pos.items():
        multi = len(groups[g]) > 1
        ax.scatter([x], [y], s=150 if multi else 90, color=GONE if g in contained else KEPT, zorder=3,
                   edgecolor=ACCENT if multi else "white", linewidths=2 if multi else 1)
        label = g if not multi else f"{g} (= {len(groups[g]) - 1} more)"
        ax.text(x, y - 0.16, label, fontsize=7, ha="right", va="top", rotation=30)
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-(len(layers) - 1) - 0.9, 0.35)
    ax.set_axis_off()
    dup = sum(len(m) - 1 for m in groups.values())
    ax.set_title(f"Containment: arrow from contained to container; {len(pairs):,} containments among "
                 f"{sum(len(m) for m in groups.values())} datasets, {len(edges):,} shown after removing implied ones"
                 + (f"; {dup} identical copies folded into ringed nodes" if dup else "")
                 + "\n(red: contained in another dataset, green: contained in none)", fontsize=9)
    return fig


def plot_time_memory(manifest: dict):
    stages = manifest.get("stages", {})
    if not stages:
        return None
    plt = _plt()
    names = list(stages)
    wall = [stages[n].get("wall_s", 0.0) for n in names]
    rss = [stages[n].get("peak_rss_mb") for n in names]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 0.5 * len(names) + 1.8))
    y = list(range(len(names)))[::-1]
    a1.barh(y, wall, color=[BEFORE if not stages[n].get("reused") else "#BBBBBB" for n in names])
    a1.set_yticks(y, names)
    a1.set_xlabel("wall seconds (grey: reused)")
    a1.set_title("Time per stage")
    if any(r is not None for r in rss):
        a2.barh(y, [r or 0 for r in rss], color=ACCENT)
        a2.set_yticks(y, names)
        a2.set_xlabel("peak RSS MiB (driver + JVM + Python workers)")
        a2.set_title("Memory per stage")
    else:
        a2.text(0.5, 0.5, "no memory figures in this manifest", ha="center", va="center")
        a2.set_axis_off()
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- HTML
PLOTS = [
    ("funnel", "Rows per stage", "per-stage records in the manifest, as curate runs write", lambda root, m: plot_funnel(m)),
    ("duplicates", "Duplicate component sizes", "a `duplicates` table (exact/fuzzy/semantic dedup)", plot_duplicates),
    ("clusters", "Cluster sizes before and after balancing", "a `clusters` table (cluster stage)", plot_clusters),
    ("quality", "Quality scores before and after", "a `quality` table (quality stage)", plot_quality),
    ("containment", "Containment graph", "a `containment` table with edges", plot_containment),
    ("time_memory", "Time and memory per stage", "per-stage timings in the manifest", lambda root, m: plot_time_memory(m)),
]

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;max-width:1040px;color:#222;background:#fff}
h1{font-size:22px;margin-bottom:4px} h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd;padding-bottom:3px}
table{border-collapse:collapse;font-size:13px} td,th{border:1px solid #ddd;padding:3px 8px;text-align:right}
td:first-child,th:first-child{text-align:left} .note{color:#777;font-style:italic} img{max-width:100%}
.ok{color:#2a7d2a;font-weight:600} .bad{color:#b22;font-weight:600} .meta{color:#555;font-size:13px}
"""


def _stage_table(manifest: dict) -> str:
    rows = ["<tr><th>stage</th><th>rows in</th><th>kept</th><th>removed</th><th>rejected</th>"
            "<th>wall s</th><th>peak RSS MiB</th></tr>"]
    for n, st in manifest.get("stages", {}).items():
        rem = ", ".join(f"{k}: {v:,}" for k, v in st.get("removed", {}).items()) or "0"
        rej = ", ".join(f"{k}: {v:,}" for k, v in st.get("rejected", {}).items()) or "0"
        rss = st.get("peak_rss_mb")
        tag = " (reused)" if st.get("reused") else ""
        rows.append(f"<tr><td>{html.escape(n)}{tag}</td><td>{st['rows_in']:,}</td><td>{st['kept']:,}</td>"
                    f"<td>{html.escape(rem)}</td><td>{html.escape(rej)}</td><td>{st.get('wall_s', 0):.1f}</td>"
                    f"<td>{'' if rss is None else f'{rss:,.0f}'}</td></tr>")
    return "<table>" + "".join(rows) + "</table>"


def _stage_figures(manifest: dict) -> list[tuple[str, object]]:
    """The plain numbers of every stage's `stats` (nested ones by dotted key): containment's step
    counts and timings, say."""
    out: list[tuple[str, object]] = []

    def walk(prefix: str, v) -> None:
        if isinstance(v, dict):
            for k, x in v.items():
                walk(f"{prefix}.{k}", x)
        elif isinstance(v, (int, float, str)) and not isinstance(v, bool):
            out.append((prefix, v))

    for n, st in manifest.get("stages", {}).items():
        walk(n, st.get("stats") or {})
    return out


def render(root: Path, manifest: dict) -> tuple[str, dict[str, bool]]:
    """The HTML text, and which plots it holds."""
    acc = manifest.get("accounting", {})
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>thresher run report: {html.escape(root.name)}</title><style>{CSS}</style></head><body>",
        f"<h1>thresher run report</h1><div class='meta'>{html.escape(str(root))}<br>"
        f"thresher {html.escape(str(manifest.get('thresher')))} &middot; status "
        f"{html.escape(str(manifest.get('status')))} &middot; started {html.escape(str(manifest.get('started')))} "
        f"&middot; {manifest.get('wall_s', 0):.1f} s &middot; spark {html.escape(str(manifest.get('spark', {}).get('master')))}</div>",
    ]
    if acc:
        closes = acc.get("closes")
        parts.append(
            f"<p>rows in {acc.get('rows_in', 0):,} = kept {acc.get('kept', 0):,} + removed "
            f"{sum(acc.get('removed', {}).values()):,} + rejected {sum(acc.get('rejected', {}).values()):,}: "
            f"<span class='{'ok' if closes else 'bad'}'>{'closes' if closes else 'DOES NOT CLOSE'}</span></p>")
    if manifest.get("stages"):
        parts.append(_stage_table(manifest))
    figures = _stage_figures(manifest)
    if figures:
        parts.append("<table>" + "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(str(v))}</td></tr>"
                                         for k, v in figures) + "</table>")
    shown: dict[str, bool] = {}
    for key, title, needs, fn in PLOTS:
        parts.append(f"<h2 id='{key}'>{html.escape(title)}</h2>")
        try:
            fig = fn(root, manifest)
        except Exception as exc:  # one bad table must not cost the rest of the report
            log.warning("report: plot %s failed: %s", key, exc)
            fig, needs = None, f"a readable table ({type(exc).__name__}: {exc})"
        shown[key] = fig is not None
        if fig is None:
            parts.append(f"<p class='note'>Not shown: this run has no data for it (needs {html.escape(needs)}).</p>")
        else:
            parts.append(f"<img alt='{html.escape(title)}' src='data:image/png;base64,{_png(fig)}'>")
    parts.append("</body></html>")
    return "\n".join(parts), shown


def write_report(run_dir: str | Path) -> Path:
    """Write RUN_DIR/report.html atomically; returns its path."""
    root = Path(run_dir).absolute()
    if not root.is_dir():
        raise InputError(f"{root}: run folder not found")
    manifest = _load_manifest(root)
    text, shown = render(root, manifest)
    out = root / REPORT
    tmp = root / f".{REPORT}.tmp"
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(out)
    log.info("report: %s (%s)", out, ", ".join(k for k, v in shown.items() if v))
    return out


def report_after_run(run_dir: str | Path) -> Path | None:
    """The end-of-run report: a failure here is logged, never fails the run it describes."""
    try:
        return write_report(run_dir)
    except Exception as exc:
        log.warning("report: not written (%s: %s)", type(exc).__name__, exc)
        return None

