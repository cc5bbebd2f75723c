"""embed: the executor side (mapInArrow): embed a partition's documents and write its Parquet file
with the model's facts in the file metadata; and the runner's hook that places those files."""

from __future__ import annotations

import json
import logging
import os
import socket
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


ACTIVE = ".active"


class CoreShare:
    """Threads for a task's next batch: the executor's `cores` over its embed tasks still running.

    Tasks are cut by document count, never by cores (batches, and so vectors, must not depend
    on the machine), so a small collection has fewer tasks than slots, and the last round of a
    larger one leaves slots idle: with one thread per task those cores did nothing. Each task
    marks itself in `folder` (a file named after the host and its executor's Python daemon, the
    parent of every worker of one executor) and, before each batch, takes its share of the cores.
    Only the exported runners use it: their vectors are the same bits at any thread count
    (tests/test_embed_backends.py), torch's are not promised to be."""

    def __init__(self, folder: str, cores: int, task: str):
        # Never more threads than this worker may run on (local[8] on 2 cores has 8 slots).
        here = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        self.cores = max(1, min(cores, here))
        self.dir = Path(folder)
        self.prefix = f"{socket.gethostname()}-{os.getppid()}-"
        self.mine = self.dir / f"{self.prefix}{task}-{os.getpid()}"
        self.used: set[int] = set()
        if self.cores > 1:
            self.dir.mkdir(parents=True, exist_ok=True)
            self.mine.touch()

    def threads(self) -> int:
        n = 1
        if self.cores > 1:
            try:
                running = sum(1 for e in os.scandir(self.dir) if e.name.startswith(self.prefix))
            except OSError:
                running = self.cores
            n = max(1, self.cores // max(1, running))
        self.used.add(n)
        return n

    def close(self) -> None:
        self.mine.unlink(missing_ok=True)


class _SharedRunner:
    """An exported model run with this task's share of the cores, one runner per thread count."""

    def __init__(self, plan: Plan, share: CoreShare):
        self.plan, self.share = plan, share

    def __call__(self, ids, am, tt):
        return load_runner(self.plan.backend, self.plan.precision, self.plan.artifact, self.share.threads())(ids, am, tt)


def embed_and_write(cfg: Config, model_path: str, label: str, out_dir: str, key: str, plan: Plan | None = None,
                    cores: int = 1):
    """The mapInArrow function: embed a partition's documents and write them as one file. `plan`
    (from the driver) names an exported model to run instead of torch; `cores`: the cores of one
    executor, shared among its running tasks when an exported model runs (CoreShare)."""

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
        share = CoreShare(os.path.join(out_dir, ACTIVE), cores if exported else 1,
                          f"{part}-{ctx.attemptNumber() if ctx else 0}")
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
                    load_runner(plan.backend, plan.precision, plan.artifact, share.threads())
                    runner = _SharedRunner(plan, share)
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
        try:
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
        finally:
            share.close()
        task_s = time.perf_counter() - t_task
        counters = enc.stats if enc is not None else Encoder.empty_stats()
        # Input: waiting for Spark to hand over Arrow batches and turning them into Python lists;
        # prep: batch assembly, pooling and normalising (encode time not in tokeniser or model).
        st = dict(counters, write_s=write_s, load_s=load_s, setup_s=setup_s, task_s=task_s,
                  input_s=task_s - setup_s - encode_s,
                  prep_s=encode_s - write_s - load_s - counters["tokenize_s"] - counters["model_s"],
                  precision=precision, precision_why=why, backend=backend, device=device, dim=enc.dim if enc else 0,
                  max_seq_length=enc.max_len if enc else 0, threads=threads, threads_used=sorted(share.used), pid=os.getpid())
        yield pa.RecordBatch.from_pylist([{"stats": json.dumps(st)}], schema=pa.schema([("stats", pa.string())]))

    return fn
