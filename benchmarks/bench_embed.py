"""embed stage vs plain SentenceTransformer.encode (its defaults) on the same corpus documents.

Both sides embed the same documents in the same process run: the peer is the packaged
all-MiniLM-L6-v2 called as `model.encode(texts)` (batch_size 32, fp32, torch's default
threads); thresher is the embed stage on local Spark (one task slot per core, one torch thread
per slot, length-bucketed batches, bf16 autocast where the CPU has it). Timings are medians of
warm repeats (the Python workers already hold the model); the first, cold run (workers load the
model) is reported beside them. Set BENCH_EMBED_REPEAT to change the number of repeats. A second record times the stage forced to fp32, to show how much
of the gain is precision and how much is batching and parallelism.
"""

from __future__ import annotations

from thresher.stages.base import run_stage
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from benchmarks.common import peak_rss_mb, record
from benchmarks.data import corpus


def _docs(n: int, folder: Path) -> Path:
    t = corpus().select(["id", "text"]).sort_by("id")
    step = max(1, t.num_rows // n)
    t = t.take(list(range(0, t.num_rows, step))[:n])
    path = folder / "docs.parquet"
    pq.write_table(t, path)
    return path


def _vectors(folder: str, ids: list[str]) -> np.ndarray:
    t = pq.read_table(folder)
    d = t.schema.field("vector").type.list_size
    vec = np.asarray(t.column("vector").combine_chunks().flatten()).reshape(t.num_rows, d)
    pos = {k: i for i, k in enumerate(t.column("id").to_pylist())}
    return vec[[pos[i] for i in ids]]


def _min_cos(a: np.ndarray, b: np.ndarray) -> float:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float((a * b).sum(1).min())


def run(quick: bool = False):
    from sentence_transformers import SentenceTransformer

    from thresher.flows.config import SparkConfig
    from thresher.flows.spark import get_spark
    from thresher.stages import embed

    n = 1000 if quick else 5000
    # Medians of 3 by default; BENCH_EMBED_REPEAT=1 when the shared machine is too slow for that.
    repeat = int(os.environ.get("BENCH_EMBED_REPEAT", 1 if quick else 3))
    work = Path(tempfile.mkdtemp(prefix="bench-embed-"))
    try:
        path = _docs(n, work)
        table = pq.read_table(path)
        ids, texts = table.column("id").to_pylist(), table.column("text").to_pylist()
        spark = get_spark(SparkConfig(master="local[*]", driver_memory="2g"))
        slots = spark.sparkContext.defaultParallelism
        df = spark.read.parquet(str(path)).cache()
        df.count()

        def stage(precision: str):
            cfg = embed.Config(precision=precision, seed=0)
            t0 = time.perf_counter()
            out = run_stage(spark, embed, {"documents": df}, cfg)
            dt = time.perf_counter() - t0
            folder = out["embeddings"]._thresher_embed_dir
            vec = _vectors(folder, ids)
            shutil.rmtree(folder, ignore_errors=True)
            return dt, vec, out["stats"]

        model = SentenceTransformer(str(embed.resolve_model(embed.DEFAULT_MODEL)[0]), device="cpu")

        def peer():
            t0 = time.perf_counter()
            vec = model.encode(texts)
            return time.perf_counter() - t0, vec

        # Stage runs first and back to back: Spark stops Python workers idle for a minute, and a
        # long peer run in between would make every "warm" stage run reload the model.
        cold_s, _, cold_stats = stage("auto")
        t_stage, t_peer = [], []
        for _ in range(repeat):
            ss, svec, stats = stage("auto")
            t_stage.append(ss)
        fp32 = stage("fp32") if stats["precision"] != "fp32" else None
        for _ in range(repeat):
            ps, pvec = peer()
            t_peer.append(ps)
        s_med, p_med = statistics.median(t_stage), statistics.median(t_peer)
        bound = 0.999 if stats["precision"] == "fp32" else 0.99
        cos = _min_cos(svec, pvec)
        yield record(
            "embed", s_med, "sentence-transformers encode (defaults)", p_med,
            docs=n, repeats=repeat, slots=slots, precision=stats["precision"],
            precision_why=stats["precision_why"],
            thresher_docs_per_s=round(n / s_med, 1), peer_docs_per_s=round(n / p_med, 1),
            thresher_runs_s=[round(x, 2) for x in t_stage], peer_runs_s=[round(x, 2) for x in t_peer],
            cold_s=round(cold_s, 2), cold_model_load_s=cold_stats["load_s"],
            min_cos=round(cos, 5), cos_bound=bound, within_bound=cos >= bound,
            outside_model_share_tasks=stats.get("outside_model_share"),
            outside_model_share_wall=stats.get("outside_model_share_wall"),
            # Task time split (summed over tasks, seconds): Spark input + Arrow->Python, tokeniser,
            # model, batch assembly/pooling, Parquet writing.
            input_s=stats["input_s"], tokenize_s=stats["tokenize_s"], model_s=stats["model_s"],
            prep_s=stats["prep_s"], write_s=stats["write_s"], task_s=stats["task_s"],
            models_loaded=stats["models_loaded"], padding_overhead=stats["padding_overhead"],
            truncated=stats["truncated"], rss_mb=round(peak_rss_mb(), 1),
        )
        if fp32 is not None:
            ss, svec, stats32 = fp32
            cos32 = _min_cos(svec, pvec)
            yield record(
                "embed_fp32", ss, "sentence-transformers encode (defaults)", p_med,
                docs=n, precision="fp32", thresher_docs_per_s=round(n / ss, 1),
                speedup_of_auto_over_fp32=round(ss / s_med, 3),
                min_cos=round(cos32, 5), cos_bound=0.999, within_bound=cos32 >= 0.999,
                outside_model_share_wall=stats32.get("outside_model_share_wall"),
                note="single run; peer_s is the median above",
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
