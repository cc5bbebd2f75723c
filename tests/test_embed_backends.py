"""embed backends: onnx / openvino / int8 vectors against torch fp32, the export built once and
reused, the auto pick, and config errors. Fixture: a slice of the shipped demo data."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from conftest import DEMO
from thresher.schemas.errors import ConfigError
from thresher.stages import embed
from thresher.stages.base import run_stage
from thresher.stages.embed import backends

N = 48


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A private cache folder for the exports of this module (built once, shared by its tests)."""
    path = tmp_path_factory.mktemp("thresher-cache")
    mp = pytest.MonkeyPatch()
    mp.setenv("THRESHER_CACHE_DIR", str(path))
    yield path
    mp.undo()


@pytest.fixture(scope="module")
def docs(tmp_path_factory) -> Path:
    """Every ~80th demo document plus the three longest (beyond the model's 256 tokens)."""
    t = pq.read_table(DEMO, columns=["id", "text"]).sort_by("id")
    idx = list(range(0, t.num_rows, t.num_rows // N))[:N]
    lens = pc.utf8_length(t.column("text")).to_numpy()
    idx += [int(i) for i in np.argsort(lens)[-3:] if int(i) not in idx]
    out = tmp_path_factory.mktemp("backends") / "docs.parquet"
    pq.write_table(t.take(idx), out)
    return out


@pytest.fixture(scope="module")
def model():
    path, _ = embed.resolve_model(embed.DEFAULT_MODEL)
    return path, embed.model_fingerprint(path)


def vectors(spark, docs: Path, **kw) -> tuple[dict, dict, Path]:
    out = run_stage(spark, embed, {"documents": spark.read.parquet(str(docs))}, embed.Config(seed=0, **kw))
    folder = out["embeddings"]
    t = pq.read_table(folder)
    vec = np.asarray(t.column("vector").combine_chunks().flatten()).reshape(t.num_rows, -1)
    return dict(zip(t.column("id").to_pylist(), vec)), out["stats"], folder


def min_cos(a: dict, b: dict) -> float:
    assert sorted(a) == sorted(b)
    return float(min(np.dot(a[k], b[k]) / np.linalg.norm(a[k]) / np.linalg.norm(b[k]) for k in a))


@pytest.fixture(scope="module")
def torch_fp32(spark, docs, cache):
    got, st, _ = vectors(spark, docs, backend="torch", precision="fp32")
    assert st["backend"] == "torch" and st["precision"] == "fp32" and st["truncated"] >= 3
    return got


@pytest.mark.parametrize("backend,precision,bound", [("onnx", "fp32", 0.9999), ("openvino", "fp32", 0.9999),
                                                      ("openvino", "bf16", 0.999), ("onnx", "int8", 0.99)])
def test_backend_holds_bound_to_torch_fp32(spark, docs, cache, torch_fp32, backend, precision, bound, tmp_path):
    got, st, folder = vectors(spark, docs, backend=backend, precision=precision, cache_dir=str(tmp_path / "c"))
    assert st["backend"] == backend and st["precision"] == precision
    cos = min_cos(got, torch_fp32)
    assert cos >= bound, f"{backend} {precision}: min cosine {cos}"
    if precision != "int8":
        # Not the same bits as torch: a backend that silently ran torch would fail here.
        assert max(float(np.abs(got[k] - torch_fp32[k]).max()) for k in got) > 0
    meta = pq.read_metadata(next(folder.glob("part-*.parquet"))).metadata
    assert meta[b"thresher.embed.backend"] == backend.encode()
    # One task on local[2]: it ran with both cores (CoreShare), and left no marker behind.
    assert st["tasks"] == 1 and st["task_threads_max"] == min(2, len(os.sched_getaffinity(0)))
    assert not (folder / ".active").exists()
    assert meta[b"thresher.embed.precision"] == precision.encode()


@pytest.mark.integration  # a whole model export and its checks
def test_export_built_once_reused_and_keyed(cache, model):
    path, fp = model
    folder, meta = backends.export_onnx(path, fp)
    ino = (folder / "model.onnx").stat().st_ino
    assert folder.is_relative_to(cache) and meta["source_fingerprint"] == fp and len(meta["sha256"]) == 64
    again, meta2 = backends.export_onnx(path, fp)
    assert again == folder and meta2 == meta and (folder / "model.onnx").stat().st_ino == ino
    # Nothing half-built is left beside the exports.
    assert not list(folder.parent.glob(".tmp-*"))
    q, qmeta = backends.export_int8(path, fp, "avx2")
    assert qmeta["fp32_sha256"] == meta["sha256"] and qmeta["sha256"] != meta["sha256"]
    assert backends.export_int8(path, fp, "avx2")[1] == qmeta
    # The export's fingerprint is part of the cross-run cache key.
    d, s = {"rows": 1, "x1": 1, "x2": 2, "s1": "3"}, embed.settings_of(embed.Config())
    k_onnx = embed.cache_key(d, fp, s, "fp32", "onnx", meta["sha256"])
    assert k_onnx != embed.cache_key(d, fp, s, "fp32", "onnx", qmeta["sha256"])
    assert k_onnx != embed.cache_key(d, fp, s, "fp32", "openvino", meta["sha256"])
    assert k_onnx != embed.cache_key(d, fp, s, "fp32")


@pytest.mark.integration  # a whole model export and its checks
def test_auto_picks_an_export_within_bound_and_says_why(cache, model):
    path, fp = model
    plan = embed.resolve_plan("auto", "auto", "cpu", path, fp)
    assert (plan.backend, plan.precision) in backends.auto_order(), plan
    assert "min cosine" in plan.why and ">= 0.999" in plan.why
    assert Path(plan.artifact, "export.json").exists()
    # int8 only when asked; bf16 and CUDA stay on torch.
    q = embed.resolve_plan("auto", "int8", "cpu", path, fp)
    assert (q.backend, q.precision) == ("onnx", "int8") and ">= 0.99 " in q.why
    assert embed.resolve_plan("auto", "bf16", "cpu", path, fp).backend == "torch"
    assert embed.resolve_plan("auto", "fp32", "cpu", path, fp).precision == "fp32"


@pytest.mark.integration  # a whole model export
@pytest.mark.parametrize("backend,precision", [("onnx", "fp32"), ("onnx", "int8"), ("openvino", "fp32")])
def test_exported_vectors_do_not_depend_on_threads(cache, model, backend, precision):
    """CoreShare gives a task more threads when slots are idle: that is only allowed because an
    exported model's vectors are the same bits at any thread count."""
    from sentence_transformers import SentenceTransformer

    path, fp = model
    plan = backends.plan_for(backend, precision, path, fp)
    st = SentenceTransformer(str(path), device="cpu")
    texts = backends.check_texts()[:24]
    one = backends._embed_check(st, backends.load_runner(backend, precision, plan.artifact, 1), texts, 256)
    two = backends._embed_check(st, backends.load_runner(backend, precision, plan.artifact, 2), texts, 256)
    assert one.shape == (24, 384) and np.array_equal(one, two)


def test_int8_recipe_follows_the_instruction_set(monkeypatch):
    monkeypatch.delenv("THRESHER_EMBED_ISA", raising=False)
    assert backends.int8_isa(frozenset({"avx2", "fma"})) == "avx2"
    assert backends.int8_isa(frozenset({"avx2", "avx512f", "avx512bw"})) == "avx512"
    assert backends.int8_isa(frozenset({"avx2", "avx512f", "avx512bw", "avx512_vnni"})) == "avx512_vnni"
    monkeypatch.setenv("THRESHER_EMBED_ISA", "avx2")
    assert backends.int8_isa(frozenset({"avx512f", "avx512_vnni"})) == "avx2"


def test_bad_backend_or_precision_is_one_config_error(model):
    from thresher.flows.config import load_config

    with pytest.raises(ConfigError, match=r"embed\.backend") as e:
        load_config(raw={"input": ["x"], "stages": ["ingest", "embed"], "embed": {"backend": "tensorrt"}})
    assert "\n" not in str(e.value)
    path, fp = model
    with pytest.raises(ConfigError, match=r"^embed\.precision: int8 runs on the onnx backend"):
        embed.resolve_plan("torch", "int8", "cpu", path, fp)
    with pytest.raises(ConfigError, match=r"^embed\.precision: openvino runs fp32, bf16, not int8$"):
        embed.resolve_plan("openvino", "int8", "cpu", path, fp)
    with pytest.raises(ConfigError, match=r"^embed\.backend: 'x' is not one of auto, torch, onnx, openvino$"):
        embed.resolve_plan("x", "auto", "cpu", path, fp)
