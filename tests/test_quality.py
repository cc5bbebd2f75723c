"""quality: vectorised signals against their plain-Python twin, scores, filters, the classifier."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from thresher.schemas.errors import ConfigError
from thresher.stages import quality
from thresher.stages.base import run_stage
from thresher.stages.quality import SIGNALS, compute_signals, filter_reason, rule_score, signals_ref

from conftest import DEMO

EDGE = [
    "", "   ", "\n\n", "word", "a a a a a a a a a a a a",
    "the cat sat on the mat. the cat sat on the mat.\nthe cat sat\n\nthe cat sat\n\n• item\n- item #tag ...",
    "Ünïcödé wörds… ## ### 123 456 — «quoted» “words”",
    "line one.\nline one.\nline one.\n\n\nPara two!\n\nPara two!",
    "  leading and trailing spaces  \t",
    "x " * 400,
]


def same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or abs(a - b) <= 1e-9 * max(1.0, abs(b))


def test_signals_match_reference():
    texts = pq.read_table(DEMO, columns=["text"]).column("text").to_pylist()[:400] + EDGE
    sig = compute_signals(pa.array(texts))
    assert set(sig) == set(SIGNALS)
    for i, text in enumerate(texts):
        ref = signals_ref(text)
        for name in SIGNALS:
            assert same(float(sig[name][i]), float(ref[name])), (name, i, text[:60], sig[name][i], ref[name])


def test_repetition_signals_on_known_text():
    text = "alpha beta gamma delta epsilon alpha beta gamma delta epsilon zeta"
    s = {k: float(v[0]) for k, v in compute_signals(pa.array([text])).items()}
    chars = sum(len(w) for w in text.split())
    # The second "alpha beta gamma delta epsilon" repeats the first: its words are covered.
    assert s["dup_5gram_char_fraction"] == pytest.approx(len("alphabetagammadeltaepsilon") / chars)
    assert s["dup_6gram_char_fraction"] == 0.0
    # Four 2-grams occur twice; the longest of them counts.
    assert s["top_2gram_char_fraction"] == pytest.approx(2 * len("deltaepsilon") / chars)
    assert s["word_count"] == 11 and s["stop_word_count"] == 0
    lines = compute_signals(pa.array(["Same line.\nSame line.\nother\n\nP\n\nP"]))
    assert lines["dup_line_fraction"][0] == pytest.approx(2 / 5)
    assert lines["dup_para_fraction"][0] == pytest.approx(1 / 3)
    assert lines["end_punct_line_fraction"][0] == pytest.approx(2 / 5)
    empty = compute_signals(pa.array(["", None], pa.string()))
    assert empty["word_count"].tolist() == [0, 0] and np.isnan(empty["mean_word_length"]).all()


def test_rule_score_and_filters():
    sig = {"word_count": np.array([2, 10, 60]), "mean_word_length": np.array([4.0, np.nan, 2.0])}
    score = rule_score({"word_count >= 50": 3.0, "mean_word_length >= 3": 1.0}, sig)
    assert score.tolist() == [0.25, 0.0, 0.75]
    reason, value = filter_reason(["word_count < 5", "mean_word_length < 3"], sig, 3)
    assert reason == ["filter:word_count<5", None, "filter:mean_word_length<3"]
    assert value[0] == 2 and np.isnan(value[1]) and value[2] == 2.0


def test_bad_rules_name_the_key():
    with pytest.raises(ConfigError, match=r"unknown signal 'word_cont'; did you mean word_count"):
        quality.Config(filters=["word_cont < 5"])
    with pytest.raises(ConfigError, match="is not 'signal op number'"):
        quality.Config(rules={"word_count about 5": 1.0})
    with pytest.raises(Exception, match="weights add up to 0"):
        quality.Config(rules={"word_count > 5": 0.0})


def docs_table(tmp_path, texts, **cols):
    ids = [f"d{i:03d}" for i in range(len(texts))]
    path = tmp_path / "documents.parquet"
    pq.write_table(pa.table({"id": ids, "text": texts, **cols}), path)
    return ids, path


def test_stage_rules_and_filters(spark, tmp_path):
    texts = pq.read_table(DEMO, columns=["text"]).column("text").to_pylist()[:150] + ["too short", "", "x " * 50]
    ids, path = docs_table(tmp_path, texts)
    docs = spark.read.parquet(str(path)).repartition(3)
    out = run_stage(spark, quality, {"documents": docs}, quality.Config(filters=["word_count < 5", "alpha_word_fraction < 0.5"]))
    q = out["quality"].toPandas().set_index("id")
    rem = out["removed"].toPandas().set_index("id")
    kept = {r["id"] for r in out["documents"].select("id").collect()}
    assert len(q) == len(texts) and set(SIGNALS) <= set(q.columns)
    assert q["score"].between(0, 1).all()
    assert rem.loc["d150", "reason"] == "filter:word_count<5" and rem.loc["d150", "score"] == 2
    assert rem.loc["d151", "reason"] == "filter:word_count<5"
    assert set(rem["stage"]) == {"quality"}
    assert kept | set(rem.index) == set(ids) and not kept & set(rem.index)
    # Scores are the weighted share of Gopher rules passed, computed from the same signals.
    sig = {k: q[k].to_numpy() for k in SIGNALS}
    assert np.allclose(q["score"], rule_score(quality.GOPHER_RULES, sig))
    # The repeated "x x x ..." document fails the repetition rules.
    assert q.loc["d152", "score"] < q["score"].median()
    assert out["stats"]["scored"] == len(texts)


def test_stage_column_score(spark, tmp_path):
    ids, path = docs_table(tmp_path, ["one two three four five six"] * 4,
                           stars=pa.array([1.0, float("nan"), None, 4.0]), label=pa.array(["a"] * 4))
    docs = spark.read.parquet(str(path))
    out = run_stage(spark, quality, {"documents": docs}, quality.Config(score="column", column="stars"))
    q = out["quality"].toPandas().set_index("id")["score"]
    assert q["d000"] == 1.0 and q["d003"] == 4.0
    assert q[["d001", "d002"]].isna().all()  # NaN and null are both "no score"
    with pytest.raises(ConfigError, match="column 'nope' is not in documents"):
        run_stage(spark, quality, {"documents": docs}, quality.Config(score="column", column="nope"))
    with pytest.raises(ConfigError, match="has type string"):
        run_stage(spark, quality, {"documents": docs}, quality.Config(score="column", column="label"))


def test_classifier_on_embeddings(spark, tmp_path):
    """Good documents sit around one direction; the trained scorer must rank them first."""
    rng = np.random.default_rng(0)
    n, d = 600, 16
    good = np.zeros(n, bool)
    good[:120] = True
    direction = rng.normal(size=d)
    vecs = rng.normal(size=(n, d)) + np.where(good[:, None], 1.5 * direction / np.linalg.norm(direction) * 2, 0)
    ids, path = docs_table(tmp_path, ["some words here and there"] * n,
                           kind=pa.array(np.where(good, "good", "other").tolist()))
    emb = pa.table({"id": ids, "vector": pa.array(vecs.astype(np.float32).tolist(), pa.list_(pa.float32()))})
    pq.write_table(emb, tmp_path / "emb.parquet")
    tables = {"documents": spark.read.parquet(str(path)), "embeddings": spark.read.parquet(str(tmp_path / "emb.parquet"))}
    # The reference is half the good documents; the other half must still score high.
    ref = tmp_path / "ref.parquet"
    pq.write_table(pa.table({"id": [i for i, g in zip(ids, good) if g][::2]}), ref)
    cfg = quality.Config(score="classifier", classifier={"reference": str(ref), "negatives": 300}, filters=[])
    out = run_stage(spark, quality, tables, cfg)
    q = out["quality"].toPandas().set_index("id")["score"].reindex(ids).to_numpy()
    unseen_good = q[1:120:2]
    assert np.median(unseen_good) > np.quantile(q[~good], 0.9)
    assert out["stats"]["classifier"]["holdout_auc"] > 0.9
    assert out["stats"]["classifier"]["reference"] == 60
    # The same with the reference chosen by a condition over documents.
    cfg = quality.Config(score="classifier", classifier={"reference_where": "kind = 'good'", "negatives": 300}, filters=[])
    q2 = run_stage(spark, quality, tables, cfg)["quality"].toPandas().set_index("id")["score"].reindex(ids).to_numpy()
    assert q2[good].mean() > q2[~good].mean() + 0.3
    with pytest.raises(ConfigError, match="embeddings table"):
        run_stage(spark, quality, {"documents": tables["documents"]}, cfg)
    with pytest.raises(ConfigError, match="exactly one"):
        run_stage(spark, quality, tables, quality.Config(score="classifier"))


def test_classifier_with_text_reference(spark, tmp_path):
    """A reference of raw texts is embedded with the bundled model, the one the embeddings came from."""
    from thresher.stages.quality_classifier import _embed_texts

    t = pq.read_table(DEMO, columns=["id", "text", "section"])
    sec = np.array(t.column("section").to_pylist())
    pick = np.flatnonzero(np.isin(sec, ["python", "libs", "doc"]))[:150]
    t = t.take(pick)
    sec = sec[pick]
    texts = t.column("text").to_pylist()
    vecs = _embed_texts(texts, "all-MiniLM-L6-v2")
    ref_rows = np.flatnonzero(sec == "python")[::2]
    pq.write_table(pa.table({"text": [texts[i] for i in ref_rows]}), tmp_path / "ref.parquet")
    pq.write_table(pa.table({"id": t.column("id"), "text": t.column("text")}), tmp_path / "docs.parquet")
    pq.write_table(pa.table({"id": t.column("id"), "vector": pa.array(vecs.tolist(), pa.list_(pa.float32()))}),
                   tmp_path / "emb.parquet")
    tables = {"documents": spark.read.parquet(str(tmp_path / "docs.parquet")),
              "embeddings": spark.read.parquet(str(tmp_path / "emb.parquet"))}
    cfg = quality.Config(score="classifier", filters=[],
                         classifier={"reference": str(tmp_path / "ref.parquet"), "negatives": 100})
    q = run_stage(spark, quality, tables, cfg)["quality"].toPandas().set_index("id")["score"]
    score = q.reindex(t.column("id").to_pylist()).to_numpy()
    unseen_python = np.setdiff1d(np.flatnonzero(sec == "python"), ref_rows)
    assert np.median(score[unseen_python]) > np.median(score[sec != "python"])
