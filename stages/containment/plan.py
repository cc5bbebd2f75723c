"""Step 4 and the outputs: the plan (what to drop, rebuilt from which container) and the
`containment` table of every candidate pair with the step that decided it."""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from thresher.stages.containment.catalog import Dataset
from thresher.stages.containment.content import STEP_MINMAX, PairResult

if TYPE_CHECKING:
    from thresher.stages.containment import Config


@dataclass
class PlanRow:
    dataset: str
    action: str  # keep | drop | skipped
    contained_in: str | None
    bytes_saved: int
    rows: int
    bytes: int
    rebuild: str | None  # copy | projection | filter | projection+filter
    reason: str
    path: str


def _rank_key(d: Dataset) -> tuple:
    # The largest first (rows, then bytes); the name breaks ties, so the choice never depends on
    # the catalog's order.
    return (-d.num_rows, -d.bytes, d.name)


def rebuild_kind(a: Dataset, b: Dataset, fraction_back: float | None) -> str:
    proj = set(a.columns) != set(b.columns)
    filt = not (fraction_back is not None and fraction_back >= 1.0)
    if proj and filt:
        return "projection+filter"
    if proj:
        return "projection"
    return "filter" if filt else "copy"


def plan(datasets: list[Dataset], contained: dict[tuple[int, int], float], cfg: Config) -> list[PlanRow]:
    """Choose what to drop. `contained` maps (a, b) -> fraction for pairs with a in b.

    Equal datasets (exact containment both ways) form one class that keeps exactly one member,
    the largest, then by name. Classes are visited containers first (a topological order of the
    condensed graph, ties by rank), so a dataset can only point at a container already kept: a
    chain A < B < C resolves to C, and every dropped dataset is contained in a kept one."""
    n = len(datasets)
    # Equivalence classes by mutual exact containment: the dedup's union-find kernel, whose
    # roots are each class's smallest index.
    from thresher.kernels.minhash import min_roots

    equal = [(a, b) for (a, b), f in contained.items() if f >= 1.0 and contained.get((b, a), 0.0) >= 1.0]
    root = min_roots(np.array([a for a, _ in equal], np.int64), np.array([b for _, b in equal], np.int64), n).tolist()
    members: dict[int, list[int]] = {}
    for i in range(n):
        members.setdefault(root[i], []).append(i)
    # An equal class keeps the member with the most rows, then the smallest files, then by name.
    rep = {r: min(ms, key=lambda i: (-datasets[i].num_rows, datasets[i].bytes, datasets[i].name))
           for r, ms in members.items()}
    # Condensed graph: class -> classes containing it.
    ups: dict[int, set[int]] = {r: set() for r in members}
    downs: dict[int, set[int]] = {r: set() for r in members}
    for (a, b) in contained:
        ra, rb = root[a], root[b]
        if ra != rb:
            ups[ra].add(rb)
            downs[rb].add(ra)
    # Near-containment can make cycles between classes; break them by rank so the order exists.
    order: list[int] = []
    indeg = {r: len(ups[r]) for r in members}
    heap = [(_rank_key(datasets[rep[r]]), r) for r, d in indeg.items() if d == 0]
    heapq.heapify(heap)
    done: set[int] = set()
    while len(order) < len(members):
        if not heap:  # a cycle: release its highest-ranked class
            r = min((r for r in members if r not in done), key=lambda r: _rank_key(datasets[rep[r]]))
            indeg[r] = 0
            heap = [(_rank_key(datasets[rep[r]]), r)]
        _, r = heapq.heappop(heap)
        if r in done:
            continue
        done.add(r)
        order.append(r)
        for c in sorted(downs[r]):
            indeg[c] -= 1
            if indeg[c] == 0 and c not in done:
                heapq.heappush(heap, (_rank_key(datasets[rep[c]]), c))

    up_of: dict[int, list[int]] = {}
    for (a, b) in contained:
        up_of.setdefault(a, []).append(b)
    rows: dict[int, PlanRow] = {}
    kept: set[int] = set()
    cm = cfg.cost

    def rebuild_cost(a: Dataset, b: Dataset) -> float:
        need = sum(b.column_bytes.get(c, 0) for c in a.columns)
        return cm.rebuild_weight * need + cm.rebuild_fixed_bytes

    def row(i: int, action: str, by: int | None, reason: str) -> PlanRow:
        d = datasets[i]
        kind = None
        if by is not None:
            kind = rebuild_kind(d, datasets[by], contained.get((by, i)))
        return PlanRow(d.name, action, datasets[by].name if by is not None else None,
                       d.bytes if action == "drop" else 0, d.num_rows, d.bytes, kind, reason, d.path)

    for r in order:
        ms = sorted(members[r], key=lambda i: _rank_key(datasets[i]))
        head = rep[r]
        # Containers of the class already kept, best first: cheapest rebuild, then largest.
        cands = sorted({k for m in ms for k in up_of.get(m, ()) if k in kept},
                       key=lambda k: (rebuild_cost(datasets[head], datasets[k]), _rank_key(datasets[k])))
        container = None
        if cands:
            k = cands[0]
            d = datasets[head]
            net = cm.storage_weight * d.bytes - rebuild_cost(d, datasets[k])
            if net >= cm.min_saving_bytes and net > 0:
                container = k
            else:
                rows[head] = row(head, "keep", None,
                                 f"contained in {datasets[k].name}, but rebuilding it costs more than the storage it saves")
        if container is not None:
            for m in ms:
                f = contained.get((m, container), 1.0)
                rows[m] = row(m, "drop", container, "contained" if f >= 1.0 else f"near-contained ({f:.4f})")
        else:
            kept.add(head)
            if head not in rows:
                rows[head] = row(head, "keep", None, "not contained in another dataset" if not ups[r] else
                                 "its containers are dropped")
            for m in ms:
                if m != head:
                    rows[m] = row(m, "drop", head, f"equal to {datasets[head].name}")
    for i, d in enumerate(datasets):
        if d.problem is not None:
            rows[i] = PlanRow(d.name, "skipped", None, 0, 0, 0, None, d.problem, d.path)
        elif not d.comparable:
            rows[i].reason = "empty: not compared" if d.num_rows == 0 else "no columns: not compared"
    return [rows[i] for i in sorted(rows, key=lambda i: datasets[i].name)]


def plan_table(rows: list[PlanRow]) -> pa.Table:
    schema = pa.schema([("dataset", pa.string()), ("action", pa.string()), ("contained_in", pa.string()),
                        ("bytes_saved", pa.int64()), ("rows", pa.int64()), ("bytes", pa.int64()),
                        ("rebuild", pa.string()), ("reason", pa.string()), ("path", pa.string())])
    return pa.Table.from_pylist([r.__dict__ for r in rows], schema=schema)


def containment_table(datasets: list[Dataset], edges: list[tuple[int, int]], pruned: dict[tuple[int, int], str],
                      results: dict[tuple[int, int], PairResult]) -> pa.Table:
    """Every pair that passed step 1, with the step that decided it (schema `containment`).
    Built column by column: a lake has tens of thousands of pairs, and rows of Python dicts cost
    more than the content check that decided them."""
    from thresher import schemas

    names = [d.name for d in datasets]
    order = sorted(edges, key=lambda e: (names[e[0]], names[e[1]]))
    step, frac, ok, why = [], [], [], []
    for e in order:
        col = pruned.get(e)
        if col is not None:
            step.append(STEP_MINMAX)
            frac.append(None)
            ok.append(False)
            why.append(f"column '{col}' out of range")
        else:
            r = results[e]
            step.append(r.step)
            frac.append(r.fraction)
            ok.append(r.contained)
            why.append(r.detail or None)
    # shared_columns: every pair's list is its contained side's columns, so offsets into one
    # flat array of those names.
    cols = [datasets[a].columns for a, _ in order]
    offsets = np.zeros(len(order) + 1, np.int32)
    np.cumsum([len(c) for c in cols], out=offsets[1:])
    shared = pa.ListArray.from_arrays(pa.array(offsets), pa.array([c for cs in cols for c in cs], pa.string()))
    schema = schemas.get("containment").schema
    extra = [pa.field("detail", pa.string())]
    full = pa.schema(list(schema) + [f for f in extra if f.name not in schema.names])
    arrays = {"contained": pa.array([names[a] for a, _ in order], pa.string()),
              "container": pa.array([names[b] for _, b in order], pa.string()),
              "step": pa.array(step, pa.string()), "fraction": pa.array(frac, pa.float64()),
              "shared_columns": shared, "is_contained": pa.array(ok, pa.bool_()), "detail": pa.array(why, pa.string())}
    return pa.Table.from_arrays([arrays[f.name].cast(f.type) for f in full], schema=full)
