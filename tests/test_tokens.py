"""Token counts from the packaged embedding model's tokenizer.json, the tokens stage, sample's
token budget reading them, and the dataset card reporting them."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from thresher.schemas.errors import ConfigError
from thresher.stages import sample, tokens
from thresher.stages.base import run_stage


def test_counts_are_the_tokenizers_wordpieces_without_truncation():
    path = str(tokens.resolve_tokenizer("all-MiniLM-L6-v2"))
    # all-MiniLM-L6-v2's WordPiece vocabulary (uncased BERT): "unaffable" -> una ##ff ##able.
    n = tokens.count_tokens(pa.array(["hello world", "unaffable", "", None, "word " * 1000], pa.string()), path)
    assert n.tolist() == [2, 3, 0, 0, 1000]  # no [CLS]/[SEP], no cut at the model's 256/512 tokens
    # The scaled count for texts cut at max_chars: "word " is 5 characters and one token.
    m = tokens.count_tokens(pa.array(["word " * 1000]), path, max_chars=1000)
    assert m.tolist() == [1000]


def test_tokenizer_paths(tmp_path):
    with pytest.raises(ConfigError, match=r"tokens\.tokenizer: '/no/such/tokenizer.json' does not exist"):
        tokens.resolve_tokenizer("/no/such/tokenizer.json")
    with pytest.raises(ConfigError, match=r"holds no tokenizer\.json"):
        tokens.resolve_tokenizer(str(tmp_path))
    src = tokens.resolve_tokenizer("all-MiniLM-L6-v2")
    (tmp_path / "tokenizer.json").write_bytes(src.read_bytes())
    assert tokens.resolve_tokenizer(str(tmp_path)) == (tmp_path / "tokenizer.json").resolve()


def test_sample_needs_counts_or_an_explicit_estimate():
    cfg = sample.Config(budget=10, unit="tokens")
    assert cfg.tokens_per_word is None and cfg.tokens_column is None


def test_stage_column_and_card(run_curate, tmp_path):
    texts = ["hello world", "unaffable", "the quick brown fox jumps over the lazy dog"]
    src = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": ["a", "b", "c"], "text": texts}), src)
    m, out = run_curate({"input": [str(src)], "stages": ["ingest", "tokens", "export"]})
    got = pq.read_table(out / "dataset").to_pydict()
    assert dict(zip(got["id"], got["tokens"])) == {"a": 2, "b": 3, "c": 9}
    assert m["stages"]["tokens"]["stats"]["tokens_total"] == 14
    assert "counted by the tokens stage (all-MiniLM-L6-v2): 14 tokens in 3 documents" in (out / "README.md").read_text()


def test_sample_budget_reads_the_tokens_column(spark, tmp_path):
    from test_sample import read, write_tables

    rng = np.random.default_rng(1)
    ids = [f"d{i:03d}" for i in range(100)]
    toks = rng.integers(1, 40, size=100)
    files = write_tables(tmp_path, ids, [[i % 4, i % 8] for i in range(100)],
                         extra_docs={"tokens": pa.array(toks, pa.int64())})
    out = run_stage(spark, sample, read(spark, files), sample.Config(budget=500, unit="tokens", seed=0))
    sel = [r["id"] for r in out["selection"].select("id").collect()]
    assert out["stats"]["tokens_selected"] == int(toks[[ids.index(i) for i in sel]].sum()) <= 500
    assert out["stats"]["tokens_from"] == "column tokens"
    bare = read(spark, files)
    bare["documents"] = bare["documents"].drop("tokens")
    with pytest.raises(ConfigError, match="sample.unit: tokens needs token counts"):
        run_stage(spark, sample, bare, sample.Config(budget=500, unit="tokens"))
