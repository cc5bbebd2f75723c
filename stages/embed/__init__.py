"""embed: one vector per document from a sentence-transformers model, computed in executors.

Each Python worker loads the model once (a module-level cache keyed by model folder and device)
and reuses it for every task it runs. A task gathers up to `sort_window` documents, tokenises
them in one call of the model's fast tokenizer, sorts the token sequences by length and cuts
batches under a padded-token budget, so padding stays small. Text beyond the model's maximum
sequence length is truncated (default) or split into chunks whose vectors are averaged,
weighted by their token counts.

Precision is picked per worker at run time and logged: fp16 autocast on CUDA, bf16 autocast on
CPUs with AVX512-BF16 or AMX, fp32 otherwise; `precision` overrides it.

The executors write the Parquet files themselves (pyarrow), so every file carries the model
name, dimension, precision and normalisation in its key-value metadata; Spark's own writer
cannot set file metadata. A sidecar `_embedding.json` beside the files holds the same facts
and the stage's counters. With `cache_dir` set, a finished table is kept under a key made of
the documents' ids and texts, the model files and the settings, and a later run with the same
key reuses it without loading the model.

Layout: model.py (model resolution, fingerprint, device/precision, the offline per-worker
loader), encoder.py (tokenising, length-bucketed batches, chunk pooling), executor.py (the
mapInArrow writer and the runner's write hook), cache.py (cross-run cache key and entries);
this module holds the config and the driver side (`run`).
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Literal

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field, field_validator

from thresher.stages.base import StageConfig, StageSpec
# The submodules refer to Config for type hints only, so they import before it is defined.
from thresher.stages.embed.backends import Plan, resolve_plan
from thresher.stages.embed.cache import (
    SIDECAR, STAGING, _aggregate, _remove_stale, _staging_root, _valid_entry, cache_key,
    documents_fingerprint, settings_of)
from thresher.stages.embed.encoder import CHARS_PER_TOKEN, MIN_BATCH, PAD_SLACK, Encoder
from thresher.stages.embed.executor import ACTIVE, _metadata, embed_and_write
from thresher.stages.embed.model import (
    DEFAULT_MODEL, load_model, model_fingerprint, resolve_device, resolve_model,
    resolve_precision)

log = logging.getLogger("thresher.embed")

# The stage's public surface (tests, benchmarks and the runner use these names from here).
__all__ = ["SPEC", "Config", "run",
           "DEFAULT_MODEL", "SIDECAR", "STAGING", "CHARS_PER_TOKEN", "MIN_BATCH", "PAD_SLACK", "Encoder",
           "resolve_model", "resolve_plan", "model_fingerprint", "resolve_device", "resolve_precision", "load_model",
           "embed_and_write", "settings_of", "documents_fingerprint", "cache_key"]


class Config(StageConfig):
    # A packaged model name (all-MiniLM-L6-v2) or a local sentence-transformers model folder.
    model: str = DEFAULT_MODEL
    # auto: an exported model (onnx, then openvino) whose vectors hold min cosine >= 0.999 to torch
    # fp32 on fixed check texts, else torch; see backends.py. CUDA and bf16/fp16 run on torch.
    backend: Literal["auto", "torch", "onnx", "openvino"] = "auto"
    # torch: fp32 | bf16 | fp16 (auto: fp16 on CUDA, bf16 on CPUs with bf16 units, else fp32);
    # onnx: fp32 | int8 (dynamically quantised for the CPU's instruction set); openvino: fp32 | bf16.
    precision: Literal["auto", "fp32", "bf16", "fp16", "int8"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    normalize: bool = True
    # What happens to text beyond max_seq_length tokens: cut it, or embed it in chunks and
    # average the chunk vectors (weighted by tokens); max_chunks bounds the work per document.
    long_docs: Literal["truncate", "chunk"] = "truncate"
    max_chunks: int = Field(16, ge=1)
    # None: the model's own limit.
    max_seq_length: int | None = Field(None, ge=8)
    # Padded tokens per forward pass and documents per batch (whichever is reached first).
    batch_tokens: int = Field(8192, ge=64)
    max_batch_size: int = Field(128, ge=1)
    # Documents tokenised and length-sorted together inside a task.
    sort_window: int = Field(4096, ge=1)
    # None: one task per `docs_per_task` documents. Never derived from the number of cores: a
    # vector depends (to float rounding) on which documents share its batch, so the split of the
    # documents into tasks must be a function of the data alone.
    partitions: int | None = Field(None, ge=1)
    docs_per_task: int = Field(1000, ge=1)
    # A folder (shared by all executors on a cluster) where finished tables are kept for reuse
    # by later runs; None disables the cross-run cache.
    cache_dir: str | None = None

    @field_validator("cache_dir")
    @classmethod
    def _local_cache(cls, v):
        # The cache commits finished tables by renames, which object stores do not have.
        if v is not None and "://" in v and not v.startswith("file://"):
            raise ValueError(f"{v}: the embedding cache must be a local, NFS or HDFS-mounted folder, not a URL")
        return v[len("file://"):] if v is not None and v.startswith("file://") else v



def executor_cores(spark) -> int:
    """Cores of one executor: every slot in local mode; `spark.executor.cores` on a cluster, or 1
    where it is not set (each task then keeps its one thread, as the executor's share is unknown)."""
    sc = spark.sparkContext
    if sc.master.startswith("local"):
        return max(1, sc.defaultParallelism)
    try:
        return max(1, int(sc.getConf().get("spark.executor.cores", "1")))
    except ValueError:
        return 1


def run(spark, tables, cfg: Config, ctx):
    from thresher.stages.scratch import private_dir, remove_tree

    docs = tables["documents"].select("id", "text")
    model_path, label = resolve_model(cfg.model)
    import torch  # noqa: F401  (the driver resolves device and precision for the cache key)

    device = resolve_device(cfg.device)
    model_fp = model_fingerprint(model_path)
    plan = resolve_plan(cfg.backend, cfg.precision, device, model_path, model_fp)
    if plan.backend == "torch":
        precision, why = resolve_precision(cfg.precision, device)
        why = f"{plan.why}; {why}" if cfg.backend == "auto" else why
        plan = Plan("torch", precision, why)
    else:
        precision, why, device = plan.precision, plan.why, "cpu"
    log.info("embed: %s, %s %s on %s (%s)", label, plan.backend, precision, device, why)
    settings = settings_of(cfg)
    root = _staging_root(cfg, ctx)
    key = ""
    docs_fp = None
    if cfg.cache_dir:
        t0 = time.perf_counter()
        docs_fp = documents_fingerprint(docs)
        key = cache_key(docs_fp, model_fp, settings, precision, plan.backend, plan.fingerprint)
        entry = root / key
        meta = _valid_entry(entry, docs_fp["rows"]) if entry.exists() else None
        if meta is not None:
            log.info("embed: cache hit %s (%d rows)", entry, docs_fp["rows"])
            stats = {**meta.get("stats", {}), "cache": "hit", "cache_entry": str(entry),
                     "fingerprint_s": round(time.perf_counter() - t0, 3)}
            return {"embeddings": entry, "stats": stats}

    if cfg.cache_dir:
        _remove_stale(root)
    staging = private_dir(STAGING, root)
    try:
        from pyspark.sql import functions as F

        slots = spark.sparkContext.defaultParallelism
        n_docs = docs_fp["rows"] if docs_fp else docs.count()
        want = cfg.partitions or max(1, -(-n_docs // cfg.docs_per_task))
        # Same rows in the same order in every task whatever the input's partitioning or the
        # cores: batches, and so the vectors' last bits, are reproducible.
        docs = docs.repartition(want, F.xxhash64("id")).sortWithinPartitions("id")
        fn = embed_and_write(cfg, str(model_path), label, str(staging), key, plan, executor_cores(spark))
        t0 = time.perf_counter()
        rows = [json.loads(r["stats"]) for r in docs.mapInArrow(fn, "stats string").collect()]
        wall = time.perf_counter() - t0
        remove_tree(staging / ACTIVE)
        stats = _aggregate(rows)
        stats["embed_wall_s"] = round(wall, 3)
        stats["docs_per_s"] = round(stats["docs"] / wall, 1) if wall > 0 else None
        if stats["model_s"] and wall > 0:
            # Model time over the time the slots were held: the rest is Spark, Arrow, tokenising, writing.
            stats["outside_model_share_wall"] = round(1 - stats["model_s"] / (wall * min(slots, max(1, stats["tasks"]))), 4)
        if not rows or not any(staging.glob("part-*.parquet")):
            # No documents: an empty file still tells readers the schema.
            schema = pa.schema([pa.field("id", pa.string(), False), pa.field("vector", pa.list_(pa.float32()), False)],
                               metadata=_metadata(cfg, label, 0, precision, device, cfg.max_seq_length or 0, key,
                                                  plan.backend))
            pq.write_table(schema.empty_table(), str(staging / "part-00000.parquet"))
        stats["cache"] = "miss" if cfg.cache_dir else "off"
        sidecar = {"model": label, "model_path": str(model_path), "model_fingerprint": model_fp,
                   "backend": plan.backend, "export": plan.artifact, "export_fingerprint": plan.fingerprint,
                   "dimension": stats["dimension"], "precision": stats["precision"] or precision,
                   "device": stats["device"] or device, "normalized": cfg.normalize, "settings": settings,
                   "rows": stats["docs"], "key": key, "stats": stats}
        (staging / SIDECAR).write_text(json.dumps(sidecar, indent=2))
        final = staging
        if cfg.cache_dir:
            if stats["precision"] in ("", precision):
                final = root / key
                try:
                    os.rename(staging, final)
                    stats["cache_entry"] = str(final)
                except OSError:
                    # Another run stored the same key first; its table is as good as ours.
                    remove_tree(staging)
            else:
                log.warning("embed: executors used %s, the driver expected %s; not caching", stats["precision"], precision)
    except BaseException:
        remove_tree(staging)
        raise
    stats["backend_why"] = why
    log.info("embed: %d docs, %d truncated, %s %s, %.1f docs/s", stats["docs"], stats["truncated"],
             stats["backend"], stats["precision"], stats["docs_per_s"] or 0)
    return {"embeddings": final, "stats": stats}


SPEC = StageSpec(name="embed", inputs=("documents",), outputs=("embeddings",))
