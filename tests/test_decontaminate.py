"""decontaminate: planted evaluation items are all caught, and nothing without a shared n-gram goes.

The reference is plain Python over word tuples of the normalised texts: a document is
contaminated exactly when one of an item's 13-word windows (or the whole item, for items of
8..12 words) occurs in it as consecutive words. The stage hashes; the reference does not.
"""

from __future__ import annotations

from thresher.stages.base import run_stage
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from thresher.schemas.errors import ConfigError, InputError
from thresher.stages import decontaminate as D
from thresher.stages.text import normalise

from conftest import CUT, DEMO

N = 13


def word_lists(texts: list[str], cfg: D.Config) -> list[list[str]]:
    return [t.split() for t in normalise(pa.array(texts, pa.string()), cfg.normalise).to_pylist()]


def item_shingles(w: list[str], cfg: D.Config) -> set[tuple[str, ...]]:
    if len(w) < cfg.min_item_words:
        return set()
    if len(w) < N:
        return {tuple(w)}
    return {tuple(w[i:i + N]) for i in range(len(w) - N + 1)}


def reference(docs: dict[str, str], items: dict[str, str], cfg: D.Config) -> dict[str, tuple[str, int]]:
    """{doc id: (smallest matching item id, distinct shared shingles)} for contaminated docs."""
    owner: dict[tuple[str, ...], str] = {}
    iids = sorted(items)
    for iid, w in zip(iids, word_lists([items[i] for i in iids], cfg)):
        for s in item_shingles(w, cfg):
            owner.setdefault(s, iid)
    lengths = {len(s) for s in owner}
    out = {}
    dids = list(docs)
    for did, w in zip(dids, word_lists([docs[d] for d in dids], cfg)):
        grams = {tuple(w[i:i + k]) for k in lengths for i in range(len(w) - k + 1)}
        if len(w) < N:
            grams.add(tuple(w))  # a short document is its own (only) 13-gram stand-in
        shared = grams & owner.keys()
        if shared:
            out[did] = (min(owner[s] for s in shared), len(shared))
    return out


def edit_around(text: str, i: int) -> str:
    # Different case, punctuation and spacing, and new text on both sides.
    body = text.upper() if text.isascii() else text  # case folding is only exact for ASCII
    return f"Preface number {i}:   {body.replace('. ', '!  ')} ... and then something else entirely."


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """Training docs (the demo data) with 40 evaluation items planted; the items come from
    corpus rows outside the demo."""
    tmp = tmp_path_factory.mktemp("decon")
    train = pq.read_table(DEMO, columns=["id", "text"]).slice(0, 1500)
    demo_ids = set(pq.read_table(DEMO, columns=["id"]).column("id").to_pylist())
    # 40 corpus documents of 30-119 words outside the demo (cut by tests/data/cut_fixtures.py).
    pool = pq.read_table(CUT / "eval_items.parquet")
    assert not set(pool.column("id").to_pylist()) & demo_ids
    items = {f"ev-{k:03d}": t for k, t in enumerate(pool.column("text").to_pylist())}
    ids = train.column("id").to_pylist()
    texts = train.column("text").to_pylist()
    plants: dict[str, str] = {}
    for k, (iid, t) in enumerate(sorted(items.items())[:36]):
        slot = 7 + 37 * k
        if k % 3 == 0:
            texts[slot] = t  # whole
        elif k % 3 == 1:
            texts[slot] = edit_around(t, k)  # edits around it
        else:
            w = t.split()
            w[len(w) // 2] = "CHANGED"  # one word changed inside: 13-grams on either side survive
            texts[slot] = "Intro. " + " ".join(w) + " Outro."
        plants[ids[slot]] = iid
    # Short items (8..12 words) planted inside longer documents, and one below min_item_words.
    short = {"ev-short-1": "one two three four five six seven eight nine",
             "ev-short-2": "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda",
             "ev-tiny": "four words only here"}
    items.update(short)
    texts[1400] = "Some lead in text: One, two, three four FIVE six seven eight nine! and more words after it."
    plants[ids[1400]] = "ev-short-1"
    texts[1401] = "x " + short["ev-short-2"]
    plants[ids[1401]] = "ev-short-2"
    texts[1402] = short["ev-tiny"] + " appears here and must not match anything at all, it is too short"
    docs_path = tmp / "train.parquet"
    pq.write_table(pa.table({"id": ids, "text": texts}), docs_path)
    # Two evaluation sets: Parquet with ids, JSONL (one with an id key, one without).
    it = sorted(items.items())
    pq.write_table(pa.table({"id": [k for k, _ in it[:20]], "question": [t for _, t in it[:20]]}), tmp / "eval_a.parquet")
    with open(tmp / "eval_b.jsonl", "w") as fh:
        for k, t in it[20:]:
            fh.write(json.dumps({"id": k, "text": t}) + "\n")
    sets = [{"path": str(tmp / "eval_a.parquet"), "text_column": "question"}, str(tmp / "eval_b.jsonl")]
    return {"docs_path": docs_path, "docs": dict(zip(ids, texts)), "items": items, "plants": plants, "sets": sets,
            "tmp": tmp}


def test_planted_items_caught_and_no_false_positives(planted, spark):
    from thresher.flows.config import load_config

    # The stage is registered and configurable like any other (after ingest).
    cfg = load_config(raw={"input": [str(planted["docs_path"])], "output": "-",
                           "stages": ["ingest", "decontaminate", "export"],
                           "decontaminate": {"eval_sets": planted["sets"]}}).decontaminate
    docs = spark.read.parquet(str(planted["docs_path"]))
    out = run_stage(spark, D, {"documents": docs}, cfg)
    removed = out["removed"].collect()
    got = {r["id"]: (r["by_id"], int(r["score"])) for r in removed}
    assert {r["reason"] for r in removed} == {"contaminated"} and {r["stage"] for r in removed} == {"decontaminate"}
    # Every planted item is caught...
    missed = [d for d in planted["plants"] if d not in got]
    assert not missed, missed
    # ... and the removed set, the item each is charged to, and the shared-n-gram counts equal
    # the reference exactly (so no document without a shared 13-gram is removed).
    ref = reference(planted["docs"], planted["items"], cfg)
    assert got == ref
    for d, iid in planted["plants"].items():
        assert got[d][0] <= iid  # the planted item, or a smaller id sharing the same n-gram
    assert all(got[d][0] == iid for d, iid in planted["plants"].items() if iid.startswith("ev-short"))
    st = out["stats"]
    assert st["eval_items"] == len(planted["items"]) - 1 and st["eval_items_too_short"] == 1
    kept = {r["id"] for r in out["documents"].select("id").collect()}
    assert not kept & set(got) and len(kept) + len(got) == 1500  # the accounting closes


def test_scan_matches_reference_on_edge_cases():
    cfg = D.Config(eval_sets=["x"])
    items = {"a": "the quick brown fox jumps over the lazy dog while the cat sleeps on the mat",
             "b": "ｆｕｌｌ width ＴＥＸＴ and ligature ﬁne words go here in this item"}
    ids, texts = sorted(items), [items[k] for k in sorted(items)]
    h, it, lens, _ = D.build_index(ids, texts, cfg)
    docs = ["THE QUICK brown fox -- jumps over the lazy dog; while the cat sleeps on the mat!",
            "the quick brown fox jumps over a lazy dog while the cat sleeps on the mat",  # no 13 in a row
            "full width text and ligature fine words go here in this item",  # NFKC folds it
            "", "   ", "fox"]
    hits, best = D.scan(pa.array(docs), h, it, lens, cfg)
    ref = reference(dict(enumerate(docs)), items, cfg)
    assert {i for i in range(len(docs)) if hits[i]} == set(ref) == {0, 2}
    assert [ids[best[i]] for i in (0, 2)] == ["a", "b"]


def test_bad_eval_sets(tmp_path):
    with pytest.raises(ConfigError, match="decontaminate.eval_sets: empty"):
        D.load_items(D.Config())
    with pytest.raises(InputError, match="nope.jsonl: no such file"):
        D.load_items(D.Config(eval_sets=[str(tmp_path / "nope.jsonl")]))
    pq.write_table(pa.table({"question": ["a b c"]}), tmp_path / "e.parquet")
    with pytest.raises(InputError, match="text column 'text' not found"):
        D.load_items(D.Config(eval_sets=[str(tmp_path / "e.parquet")]))
    pq.write_table(pa.table({"text": [1, 2]}), tmp_path / "n.parquet")
    with pytest.raises(InputError, match="has type int64, expected string"):
        D.load_items(D.Config(eval_sets=[str(tmp_path / "n.parquet")]))
    (tmp_path / "b.jsonl").write_text('{"text": "fine"}\n[1, 2]\n')
    with pytest.raises(InputError, match=r"b.jsonl:2: not a JSON object"):
        D.load_items(D.Config(eval_sets=[str(tmp_path / "b.jsonl")]))
    # Items without text are counted, not fatal; ids are derived when the id column is absent.
    (tmp_path / "ok.jsonl").write_text('{"text": null}\n{"text": "x y"}\n')
    ids, texts, st = D.load_items(D.Config(eval_sets=[{"path": str(tmp_path / "ok.jsonl"), "name": "s"}]))
    assert ids == ["s/ok.jsonl:2"] and st["eval_null_text"] == 1


def test_eval_sets_by_url_read_like_a_local_folder(tmp_path):
    """A URL eval set (memory:// stands for s3://, gs://, hf://) is listed and read by the same
    code as a local folder: Parquet and JSONL(.gz) found recursively, '_' and '.' names skipped."""
    import gzip

    import fsspec

    mem = fsspec.filesystem("memory")
    files = {
        "a.parquet": None,
        "sub/b.jsonl.gz": gzip.compress(b'{"id": "j1", "text": "x y z"}\n'),
        "_tmp/c.jsonl": b'{"id": "h1", "text": "hidden"}\n',
        ".d.jsonl": b'{"id": "h2", "text": "hidden too"}\n',
        "notes.txt": b"not an eval file",
    }
    for rel, body in files.items():
        (tmp_path / "sets" / rel).parent.mkdir(parents=True, exist_ok=True)
        for opener in (lambda p: open(tmp_path / "sets" / p, "wb"), lambda p: mem.open(f"/decon-url/sets/{p}", "wb")):
            with opener(rel) as f:
                if body is None:
                    pq.write_table(pa.table({"id": ["p1", "p2"], "text": ["a b c", "d e"]}), f)
                else:
                    f.write(body)
    local = D.load_items(D.Config(eval_sets=[{"path": str(tmp_path / "sets"), "name": "s"}]))
    remote = D.load_items(D.Config(eval_sets=[{"path": "memory://decon-url/sets", "name": "s"}]))
    assert local[:2] == (["s/j1", "s/p1", "s/p2"], ["x y z", "a b c", "d e"])
    assert remote == local
    with pytest.raises(InputError, match="memory://decon-url/none: no such file or folder"):
        D.load_items(D.Config(eval_sets=["memory://decon-url/none"]))
