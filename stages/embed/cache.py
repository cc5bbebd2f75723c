"""embed: the cross-run cache: a key from the documents, the model and the settings that change
the vectors; entries checked before reuse; staging folders of runs that died are swept."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.parquet as pq

if TYPE_CHECKING:
    from thresher.stages.embed import Config

SIDECAR = "_embedding.json"
STAGING = ".tmp-embed-"
# Bump when a change here alters the vectors, so cached tables from older code are not reused.
_CODE_VERSION = 1


def settings_of(cfg: Config) -> dict:
    """The settings that change the vectors (not batching, partitioning or caching)."""
    return {"normalize": cfg.normalize, "long_docs": cfg.long_docs,
            "max_chunks": cfg.max_chunks if cfg.long_docs == "chunk" else None,
            "max_seq_length": cfg.max_seq_length, "code": _CODE_VERSION}


def documents_fingerprint(docs) -> dict:
    """Order-independent digest of (id, text) pairs: the same rows in any partitioning agree."""
    from pyspark.sql import functions as F

    h1 = F.xxhash64("id", "text")
    h2 = F.xxhash64(F.lit("thresher.embed"), "text", "id")
    r = docs.agg(F.count(F.lit(1)).alias("n"), F.bit_xor(h1).alias("x1"), F.bit_xor(h2).alias("x2"),
                 F.sum(h1.cast("decimal(38,0)")).alias("s1")).first()
    return {"rows": int(r["n"]), "x1": int(r["x1"] or 0), "x2": int(r["x2"] or 0), "s1": str(r["s1"] or 0)}


def cache_key(docs_fp: dict, model_fp: str, settings: dict, precision: str, backend: str = "torch",
              export_fp: str = "") -> str:
    """`export_fp`: the sha256 of the exported model an onnx/openvino backend ran (torch: none, and
    the key is the one torch entries always had)."""
    parts = {"docs": docs_fp, "model": model_fp, "settings": settings, "precision": precision}
    if backend != "torch":
        parts.update(backend=backend, export=export_fp)
    blob = json.dumps(parts, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:40]


def _valid_entry(path: Path, rows: int) -> dict | None:
    try:
        meta = json.loads((path / SIDECAR).read_text())
        n = sum(pq.ParquetFile(f).metadata.num_rows for f in path.glob("part-*.parquet"))
    except (OSError, ValueError, pa.ArrowException):
        return None
    return meta if n == rows == meta.get("rows") else None


def _staging_root(cfg: Config, ctx) -> Path:
    """The cache folder (an entry is renamed into place there), else the stage's private scratch
    (the runner links the table in and removes the scratch when the stage ends)."""
    if cfg.cache_dir:
        return Path(cfg.cache_dir).expanduser().absolute()
    return ctx.scratch


def _remove_stale(root: Path, age_s: float = 86400) -> None:
    """Staging folders of runs that died before committing (a live run finishes within a day)."""
    from thresher.stages.scratch import remove_tree

    now = time.time()
    for p in root.glob(f"{STAGING}*") if root.exists() else ():
        try:
            if now - p.lstat().st_mtime > age_s:
                remove_tree(p)
        except OSError:
            pass


def _aggregate(rows: list[dict]) -> dict:
    add = ["docs", "long_docs", "truncated", "clipped", "chunks", "tokens", "padded_tokens", "batches", "split_batches",
           "empty_texts", "sanitised", "tokenize_s", "model_s", "write_s", "load_s", "setup_s", "input_s",
           "prep_s", "task_s"]
    out: dict = {k: sum(r[k] for r in rows) for k in add}
    for k in ("tokenize_s", "model_s", "write_s", "load_s", "setup_s", "input_s", "prep_s", "task_s"):
        out[k] = round(out[k], 3)
    out["tasks"] = len(rows)
    out["workers"] = len({r["pid"] for r in rows})
    out["models_loaded"] = sum(1 for r in rows if r["load_s"] > 0)
    out["task_threads_max"] = max((max(r.get("threads_used") or [r.get("threads", 1)]) for r in rows), default=0)
    out["precision"] = ",".join(sorted({r["precision"] for r in rows}))
    out["precision_why"] = ",".join(sorted({r["precision_why"] for r in rows}))
    out["backend"] = ",".join(sorted({r.get("backend", "torch") for r in rows}))
    out["device"] = ",".join(sorted({r["device"] for r in rows}))
    out["dimension"] = max((r["dim"] for r in rows), default=0)
    out["max_seq_length"] = max((r["max_seq_length"] for r in rows), default=0)
    out["padding_overhead"] = round(out["padded_tokens"] / out["tokens"] - 1, 4) if out["tokens"] else 0.0
    busy = out["task_s"] - out["load_s"]
    if busy > 0:
        # Model loading is reported on its own (load_s): it is paid once per worker, not per row.
        out["outside_model_share"] = round(1 - out["model_s"] / busy, 4)
    return out

