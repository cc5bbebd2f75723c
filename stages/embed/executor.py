"""embed: the executor side (mapInArrow): embed a partition's documents and write its Parquet file
with the model's facts in the file metadata; and the runner's hook that places those files."""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.parquet as pq

from thresher.schemas.errors import StageError
from thresher.stages.embed.backends import Plan, load_runner
from thresher.stages.embed.encoder import Encoder
from thresher.stages.embed.model import load_model, resolve_device, resolve_precision

if TYPE_CHECKING:
    from thresher.stages.embed import Config


def _metadata(cfg: Config, label: str, dim: int, precision: str, device: str, max_len: int, key: str,
              backend: str = "torch") -> dict:
    return {
        "thresher.embed.backend": backend,
        "thresher.schema": "embeddings/v1",
        "thresher.embed.model": label,
        "thresher.embed.dimension": str(dim),
        "thresher.embed.precision": precision,
        "thresher.embed.device": device,
        "thresher.embed.normalized": str(cfg.normalize).lower(),
        "thresher.embed.long_docs": cfg.long_docs,
        "thresher.embed.max_seq_length": str(max_len),
        "thresher.embed.key": key,
    }


def embed_and_write(cfg: Config, model_path: str, label: str, out_dir: str, key: str, plan: Plan | None = None):
    """The mapInArrow function: embed a partition's documents and write them as one file. `plan`
    (from the driver) names an exported model to run instead of torch."""

    def fn(batches):
        from pyspark import TaskContext

        from thresher.kernels.threads import limit_task_threads

        t_task = time.perf_counter()
        import torch  # noqa: F401  (limit_task_threads caps torch only once it is imported)

        threads = limit_task_threads()
        exported = plan is not None and plan.backend != "torch"
        if exported:
            device, precision, why = "cpu", plan.precision, plan.why
        else:
            device = resolve_device(cfg.device)
            precision, why = resolve_precision(cfg.precision, device)
        backend = plan.backend if exported else "torch"
        ctx = TaskContext.get()
        part = ctx.partitionId() if ctx else 0
        tmp = os.path.join(out_dir, f".part-{part:05d}-{uuid.uuid4().hex[:8]}.parquet")
        enc = schema = writer = None
        load_s = write_s = 0.0
        ids: list = []
        texts: list = []

        def flush():
            nonlocal enc, schema, writer, load_s, write_s
            if enc is None:
                # Loaded on the first documents, so an empty partition never loads the model.
                model, load_s = load_model(model_path, device)
                runner = None
                if exported:
                    if not Path(plan.artifact, "export.json").exists():
                        raise StageError(f"embed.backend: the {plan.backend} export {plan.artifact} is not on this "
                                         "executor; set THRESHER_CACHE_DIR to a folder all executors share")
                    t0 = time.perf_counter()
                    runner = load_runner(plan.backend, plan.precision, plan.artifact, threads)
                    load_s += time.perf_counter() - t0
                if load_s:
                    logging.getLogger("thresher.embed").info("embed worker %d: loaded %s in %.1fs; %s %s on %s (%s)",
                                                             os.getpid(), label, load_s, backend, precision, device, why)
                enc = Encoder(model, cfg, device, precision, runner)
                schema = pa.schema([pa.field("id", pa.string(), nullable=False),
                                    pa.field("vector", pa.list_(pa.float32(), enc.dim), nullable=False)],
                                   metadata=_metadata(cfg, label, enc.dim, precision, device, enc.max_len, key, backend))
            vec = enc.encode(texts, ids)
            t0 = time.perf_counter()
            arr = pa.FixedSizeListArray.from_arrays(pa.array(vec.reshape(-1), pa.float32()), enc.dim)
            tbl = pa.Table.from_arrays([pa.array(ids, pa.string()), arr], schema=schema)
            if writer is None:
                writer = pq.ParquetWriter(tmp, schema, compression="zstd")
            writer.write_table(tbl)
            write_s += time.perf_counter() - t0

        setup_s = time.perf_counter() - t_task
        encode_s = 0.0
        it = iter(batches)
        while True:
            b = next(it, None)
            if b is not None:
                ids.extend(b.column(0).to_pylist())
                texts.extend(b.column(1).to_pylist())
            t1 = time.perf_counter()
            if ids and (b is None or len(ids) >= cfg.sort_window):
                flush()
                ids, texts = [], []
            encode_s += time.perf_counter() - t1
            if b is None:
                break
        if writer is not None:
            writer.close()
            # One final name per partition: a retried task attempt replaces, never duplicates.
            os.replace(tmp, os.path.join(out_dir, f"part-{part:05d}.parquet"))
        task_s = time.perf_counter() - t_task
        counters = enc.stats if enc is not None else Encoder.empty_stats()
        # Input: waiting for Spark to hand over Arrow batches and turning them into Python lists;
        # prep: batch assembly, pooling and normalising (encode time not in tokeniser or model).
        st = dict(counters, write_s=write_s, load_s=load_s, setup_s=setup_s, task_s=task_s,
                  input_s=task_s - setup_s - encode_s,
                  prep_s=encode_s - write_s - load_s - counters["tokenize_s"] - counters["model_s"],
                  precision=precision, precision_why=why, backend=backend, device=device, dim=enc.dim if enc else 0,
                  max_seq_length=enc.max_len if enc else 0, threads=threads, pid=os.getpid())
        yield pa.RecordBatch.from_pylist([{"stats": json.dumps(st)}], schema=pa.schema([("stats", pa.string())]))

    return fn
