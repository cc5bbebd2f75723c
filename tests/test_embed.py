"""embed: vectors equal SentenceTransformer.encode, bad input, chunking, cross-run cache, errors."""

from __future__ import annotations

from thresher.flows.runner import link_tree
from thresher.stages.base import run_stage
import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from thresher.schemas.errors import ConfigError, StageError
from thresher.stages import embed

from conftest import CUT

N_SAMPLE = 40


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> Path:
    """Every ~1600th document of the corpus plus its two longest (both beyond 256 tokens)."""
    t = pq.read_table(CUT / "embed_sample.parquet")  # cut by tests/data/cut_fixtures.py
    assert t.num_rows == N_SAMPLE + 2
    out = tmp_path_factory.mktemp("embed") / "sample.parquet"
    pq.write_table(t, out)
    return out


@pytest.fixture(scope="module")
def st_model():
    from sentence_transformers import SentenceTransformer

    path, _ = embed.resolve_model(embed.DEFAULT_MODEL)
    return SentenceTransformer(str(path), device="cpu", trust_remote_code=False, local_files_only=True)


def read_vectors(folder: Path) -> dict[str, np.ndarray]:
    t = pq.read_table(folder)
    d = t.schema.field("vector").type.list_size
    vec = np.asarray(t.column("vector").combine_chunks().flatten()).reshape(t.num_rows, d)
    return dict(zip(t.column("id").to_pylist(), vec))


def min_cos(got: dict[str, np.ndarray], ids: list[str], ref: np.ndarray) -> float:
    g = np.stack([got[i] for i in ids])
    ref = ref / np.linalg.norm(ref, axis=1, keepdims=True)
    return float((g * ref).sum(1).min())


def test_fp32_matches_sentence_transformers_and_second_run_hits_cache(run_curate, sample, st_model, tmp_path):
    cache = tmp_path / "cache"
    conf = {"input": [str(sample)], "stages": ["ingest", "embed"],
            "embed": {"precision": "fp32", "cache_dir": str(cache)}}
    m1, out1 = run_curate(conf, output=tmp_path / "a")
    st1 = m1["stages"]["embed"]["stats"]
    # Every document went through the model (which may already sit in a reused Python worker).
    assert st1["cache"] == "miss" and st1["precision"] == "fp32" and st1["docs"] == pq.read_metadata(sample).num_rows
    # The table carries its provenance in every file's Parquet metadata.
    files = sorted((out1 / "embed" / "embeddings").glob("part-*.parquet"))
    meta = pq.read_metadata(files[0]).metadata
    assert meta[b"thresher.embed.model"] == b"all-MiniLM-L6-v2"
    assert meta[b"thresher.embed.dimension"] == b"384"
    assert meta[b"thresher.embed.precision"] == b"fp32"
    assert meta[b"thresher.embed.normalized"] == b"true"
    assert pq.read_schema(files[0]).field("vector").type == pa.list_(pa.float32(), 384)

    docs = pq.read_table(sample)
    ids, texts = docs.column("id").to_pylist(), docs.column("text").to_pylist()
    got = read_vectors(out1 / "embed" / "embeddings")
    assert sorted(got) == sorted(ids)
    ref = st_model.encode(texts, convert_to_numpy=True)
    assert min_cos(got, ids, ref) >= 0.999
    assert all(abs(np.linalg.norm(v) - 1) < 1e-4 for v in got.values())
    over = sum(len(st_model.tokenizer(t)["input_ids"]) > 256 for t in texts)
    assert over >= 2 and st1["truncated"] == over

    # Same documents, model and settings in another run folder: stored vectors, no model work.
    m2, out2 = run_curate(conf, output=tmp_path / "b")
    st2 = m2["stages"]["embed"]["stats"]
    assert st2["cache"] == "hit" and st2["truncated"] == over
    again = read_vectors(out2 / "embed" / "embeddings")
    assert all(np.array_equal(got[i], again[i]) for i in ids)
    first = sorted((out2 / "embed" / "embeddings").glob("part-*.parquet"))[0]
    assert pq.read_metadata(first).metadata[b"thresher.embed.precision"] == b"fp32"


def test_bf16_within_bound(spark, sample, st_model, tmp_path):
    df = spark.read.parquet(str(sample))
    out = run_stage(spark, embed, {"documents": df}, embed.Config(precision="bf16", seed=0))
    st = out["stats"]
    assert st["precision"] == "bf16" and st["cache"] == "off"
    docs = pq.read_table(sample)
    ids = docs.column("id").to_pylist()
    dest = tmp_path / "embeddings"
    link_tree(out["embeddings"], dest)
    got = read_vectors(dest)
    ref = st_model.encode(docs.column("text").to_pylist(), convert_to_numpy=True)
    assert min_cos(got, ids, ref) >= 0.99
    # The cluster stage reads the same files through Spark as array<float>.
    assert dict(spark.read.parquet(str(dest)).dtypes)["vector"] == "array<float>"


BAD = {
    "empty": "",
    "blank": " \n\t ",
    "emoji": "🚀🔥 launch 😀👍🏽 👨‍👩‍👧 ✨",
    "scripts": "Debian 软件包 пакет حزمة पैकेज パッケージ 패키지 Ελληνικά עברית",
    "control": "nul\x00 bell\x07 esc\x1b[31m red\x1b[0m \x7f del \u200b\u200e\u202e rtl \ufeff bom",
    "one_word": "x" * 20_000,
    "normal": "A tool to embed documents into vectors for clustering and sampling.",
}


def test_bad_input_gets_a_vector_each(spark, st_model, tmp_path):
    rng = np.random.default_rng(0)
    words = ["package", "library", "übersetzung", "数据", "🙂", "control\x01", "C++", "x86_64"]
    big = " ".join(rng.choice(words, size=200_000))[: 1 << 20]
    assert len(big.encode()) > 900_000
    rows = [{"id": k, "text": v} for k, v in {**BAD, "big": big}.items()]
    df = spark.createDataFrame(rows, "id string, text string")
    cfg = embed.Config(precision="fp32", cache_dir=str(tmp_path / "c"), partitions=2, seed=0)
    out = run_stage(spark, embed, {"documents": df}, cfg)
    st = out["stats"]
    got = read_vectors(out["embeddings"])
    assert sorted(got) == sorted(r["id"] for r in rows)
    for k, v in got.items():
        assert np.all(np.isfinite(v)) and abs(np.linalg.norm(v) - 1) < 1e-4, k
    # The megabyte document is cut before tokenising, and counted as truncated.
    assert st["empty_texts"] == 2 and st["clipped"] == 1 and st["truncated"] >= 1 and st["docs"] == len(rows)
    # The odd-but-valid texts get exactly what SentenceTransformer.encode gives them.
    keys = ["emoji", "scripts", "control", "normal", "one_word"]
    ref = st_model.encode([BAD[k] for k in keys], convert_to_numpy=True)
    assert min_cos(got, keys, ref) >= 0.999
    # Linked in as the runner does, the folder keeps files, metadata and sidecar.
    dest = tmp_path / "dest"
    link_tree(out["embeddings"], dest)
    assert json.loads((dest / embed.SIDECAR).read_text())["rows"] == len(rows)


def test_chunk_mode_averages_chunk_vectors(spark, st_model, tmp_path, sample):
    texts = pq.read_table(sample).column("text").to_pylist()
    long = " ".join(texts[:N_SAMPLE])  # a few thousand tokens
    short = texts[0]
    df = spark.createDataFrame([{"id": "long", "text": long}, {"id": "short", "text": short}], "id string, text string")
    cfg = embed.Config(precision="fp32", long_docs="chunk", max_chunks=4, cache_dir=str(tmp_path / "c"), seed=0)
    out = run_stage(spark, embed, {"documents": df}, cfg)
    got = read_vectors(out["embeddings"])
    assert out["stats"]["chunks"] == 5 and out["stats"]["long_docs"] == 1 and out["stats"]["truncated"] == 1
    # Reference: the first four 256-token chunks, embedded one by one, averaged by token count.
    tok = st_model.tokenizer
    enc = tok([long], truncation=True, max_length=256, return_overflowing_tokens=True, stride=0)
    chunks = enc["input_ids"][:4]
    import torch

    with torch.inference_mode():
        vecs = np.stack([
            st_model.forward({"input_ids": torch.tensor([c]), "attention_mask": torch.ones(1, len(c), dtype=torch.long),
                              "token_type_ids": torch.zeros(1, len(c), dtype=torch.long), "modality": "text"}
                             )["sentence_embedding"][0].numpy()
            for c in chunks])
    w = np.array([len(c) for c in chunks], dtype=np.float32)[:, None]
    ref = (vecs * w).sum(0) / w.sum()
    assert min_cos(got, ["long"], ref[None]) >= 0.9999
    assert min_cos(got, ["short"], st_model.encode([short])) >= 0.999


def test_partitioning_does_not_change_vectors(spark, sample, tmp_path):
    df = spark.read.parquet(str(sample)).orderBy("id").limit(12)
    runs = []
    for parts in (1, 3):
        cfg = embed.Config(precision="fp32", partitions=parts, seed=0, cache_dir=str(tmp_path / f"c{parts}"))
        out = run_stage(spark, embed, {"documents": df}, cfg)
        runs.append(read_vectors(out["embeddings"]))
    a, b = runs
    assert sorted(a) == sorted(b)
    assert max(float(np.abs(a[i] - b[i]).max()) for i in a) < 1e-5


def test_missing_or_bad_model_is_one_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"^embed\.model: '/nonexistent/model' is not a local model folder"):
        embed.resolve_model("/nonexistent/model")
    with pytest.raises(ConfigError, match="embed.model: .* not a local model folder"):
        embed.resolve_model("some-hub/model-name")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="holds no modules.json or config.json"):
        embed.resolve_model(str(tmp_path / "empty"))
    from thresher.flows.config import load_config

    with pytest.raises(ConfigError, match="embed.precision"):
        load_config(raw={"input": ["x"], "stages": ["ingest", "embed"], "embed": {"precision": "int4"}})
    # A configured local folder is taken as it is (here: a copy of the packaged model's files).
    src, _ = embed.resolve_model(embed.DEFAULT_MODEL)
    path, label = embed.resolve_model(str(src))
    assert path == src and label == str(src)


def test_precision_pick_and_cache_key():
    from thresher.kernels import backend

    feat = backend.cpu_bf16()
    assert embed.resolve_precision("auto", "cpu") == (("bf16", f"CPU has {feat}") if feat else ("fp32", "CPU without bf16 support"))
    assert embed.resolve_precision("auto", "cuda")[0] == "fp16"
    assert embed.resolve_precision("fp32", "cpu") == ("fp32", "configured")
    with pytest.raises(StageError, match="fp16 needs a CUDA device"):
        embed.resolve_precision("fp16", "cpu")
    docs = {"rows": 3, "x1": 1, "x2": 2, "s1": "3"}
    base = embed.settings_of(embed.Config())
    k = embed.cache_key(docs, "m", base, "bf16")
    assert k == embed.cache_key(dict(docs), "m", dict(base), "bf16")
    assert k != embed.cache_key({**docs, "x1": 5}, "m", base, "bf16")
    assert k != embed.cache_key(docs, "m2", base, "bf16")
    assert k != embed.cache_key(docs, "m", base, "fp32")
    assert k != embed.cache_key(docs, "m", embed.settings_of(embed.Config(normalize=False)), "bf16")
    assert k != embed.cache_key(docs, "m", embed.settings_of(embed.Config(long_docs="chunk")), "bf16")
    # Batching and partitioning do not change the vectors, so they do not change the key.
    assert base == embed.settings_of(embed.Config(batch_tokens=1024, partitions=7, sort_window=10))


def test_documents_fingerprint_ignores_partitioning(spark, sample):
    df = spark.read.parquet(str(sample)).select("id", "text")
    a = embed.documents_fingerprint(df.repartition(1))
    b = embed.documents_fingerprint(df.repartition(5))
    assert a == b and a["rows"] == df.count()
    c = embed.documents_fingerprint(df.limit(a["rows"] - 1))
    assert c != a


@pytest.mark.unit
def test_core_share_splits_an_executors_cores_among_its_running_tasks(tmp_path, monkeypatch):
    from thresher.stages.embed.executor import CoreShare

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(4)), raising=False)
    folder = str(tmp_path / "active")
    a = CoreShare(folder, 4, "0-0")
    assert a.threads() == 4
    b, c = CoreShare(folder, 4, "1-0"), CoreShare(folder, 4, "2-0")
    assert a.threads() == 1 and b.threads() == 1  # 4 // 3
    c.close()
    assert a.threads() == 2 and b.threads() == 2
    b.close()
    assert a.threads() == 4 and a.used == {1, 2, 4}
    # Capped by the cores this worker may run on; one core (or torch) marks nothing.
    assert CoreShare(folder, 64, "3-0").threads() == 2  # a and this one share 4
    solo = CoreShare(str(tmp_path / "solo"), 1, "0-0")
    assert solo.threads() == 1 and not (tmp_path / "solo").exists()
