"""decontaminate: remove training documents that contain evaluation (benchmark) text.

A document is removed when it shares a word n-gram (default 13 words, after normalisation:
NFKC, lowercase, punctuation and whitespace runs to one space) with any evaluation item, with
reason `contaminated`, `by_id` the evaluation item's id (the smallest id when several match) and
`score` the number of distinct shared n-grams. An item shorter than n words stands for one
n-gram of all its words when it has at least `min_item_words`; shorter items are left out and
counted.

The evaluation side is small: it is read on the driver, turned into a sorted array of 64-bit
n-gram hashes (with the smallest item index per hash) and broadcast. Training documents are
scanned in the executors (mapInArrow): normalise, hash every n-gram with the numba kernels of
kernels/minhash.py (via stages/text.py), binary-search the broadcast array.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
from pydantic import Field

from thresher.stages import storage
from thresher.stages.base import StageConfig, StageSpec, Strict
from thresher.schemas.errors import ConfigError, InputError
from thresher.stages.text import NormaliseConfig, ShingleConfig, normalise, shingle_hashes


REASON = "contaminated"
HASH_SEED = 0x13  # fixed: the evaluation and training sides must hash alike


class EvalSet(Strict):
    path: str  # a Parquet or JSONL(.gz) file, a folder of them, or a glob
    text_column: str = "text"
    # None, or a column the files lack: ids are derived as <file>#<row> (Parquet), <file>:<line> (JSONL).
    id_column: str | None = "id"
    # When set, ids become "<name>/<id>" so items of different sets never share an id.
    name: str | None = None


class Config(StageConfig):
    # Evaluation sets: paths (relative to the working directory) or {path, text_column, id_column, name}.
    eval_sets: list[str | EvalSet] = Field(default_factory=list)
    ngram: int = Field(13, ge=1, le=64)
    min_item_words: int = Field(8, ge=1)
    normalise: NormaliseConfig = Field(default_factory=lambda: NormaliseConfig(strip_punctuation=True))


# ------------------------------------------------------------------------------- evaluation side
def _eval_files(spec: EvalSet) -> list[str]:
    try:
        matches = storage.matches(spec.path)
    except InputError as exc:
        raise InputError(f"decontaminate.eval_sets: {exc}") from None
    if not matches:
        raise InputError(f"decontaminate.eval_sets: {spec.path}: no such file or folder")
    files = []
    for loc, root, is_dir in matches:
        if is_dir:
            files += [f for f in storage.folder_files(loc) if _kind(f) and not storage.hidden(storage.relpath(f, root))]
        elif _kind(loc):
            files.append(loc)
        else:
            raise InputError(f"decontaminate.eval_sets: {loc}: unknown file type (expected .parquet or .jsonl[.gz])")
    if not files:
        raise InputError(f"decontaminate.eval_sets: {spec.path}: holds no .parquet or .jsonl[.gz] files")
    return files


def _kind(path: str) -> str | None:
    p = path.lower()
    if p.endswith(".parquet"):
        return "parquet"
    if p.endswith((".jsonl", ".jsonl.gz", ".ndjson", ".json.gz", ".json")):
        return "jsonl"
    return None


def _read_file(path: str, spec: EvalSet) -> tuple[list[str], list[str | None]]:
    name = os.path.basename(path)
    if _kind(path) == "parquet":
        pf = storage.parquet_file(path)
        schema = pf.schema_arrow
        if spec.text_column not in schema.names:
            raise InputError(f"{path}: text column '{spec.text_column}' not found (columns: {', '.join(schema.names[:12])})")
        t = schema.field(spec.text_column).type
        if not (pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)
                or pa.types.is_dictionary(t)):
            raise InputError(f"{path}: column '{spec.text_column}' has type {t}, expected string")
        use_id = spec.id_column is not None and spec.id_column in schema.names
        cols = [spec.text_column] + ([spec.id_column] if use_id else [])
        tbl = pf.read(columns=cols)
        texts = tbl.column(spec.text_column).cast(pa.string()).to_pylist()
        ids = ([None if v is None else str(v) for v in tbl.column(spec.id_column).to_pylist()] if use_id
               else [f"{name}#{i}" for i in range(len(texts))])
        return ids, texts
    ids, texts = [], []
    try:
        with storage.open_binary(path) as fh:
            for lineno, raw in enumerate(fh, start=1):
                if not raw.strip():
                    continue
                try:
                    obj = json.loads(raw.decode("utf-8"))
                except (UnicodeDecodeError, ValueError):
                    raise InputError(f"{path}:{lineno}: not a JSON object") from None
                if not isinstance(obj, dict):
                    raise InputError(f"{path}:{lineno}: not a JSON object")
                if spec.text_column not in obj:
                    raise InputError(f"{path}:{lineno}: text column '{spec.text_column}' not found (keys: {', '.join(list(obj)[:12])})")
                txt = obj[spec.text_column]
                if txt is not None and not isinstance(txt, str):
                    raise InputError(f"{path}:{lineno}: '{spec.text_column}' is {type(txt).__name__}, expected a string")
                texts.append(txt)
                iv = obj.get(spec.id_column) if spec.id_column else None
                ids.append(str(iv) if iv is not None else f"{name}:{lineno}")
    except (OSError, EOFError) as exc:
        raise InputError(f"{path}: cannot read ({exc})") from None
    return ids, texts


def eval_sets(cfg: Config) -> list[EvalSet]:
    if not cfg.eval_sets:
        raise ConfigError("decontaminate.eval_sets: empty; name at least one evaluation set (Parquet/JSONL with a text column)")
    return [EvalSet(path=s) if isinstance(s, str) else s for s in cfg.eval_sets]


def load_items(cfg: Config) -> tuple[list[str], list[str], dict]:
    """Evaluation items (ids, texts), sorted by id; items without text are counted and left out."""
    ids: list[str] = []
    texts: list[str] = []
    stats = {"eval_files": 0, "eval_rows": 0, "eval_null_text": 0}
    for spec in eval_sets(cfg):
        for f in _eval_files(spec):
            fid, ftext = _read_file(f, spec)
            stats["eval_files"] += 1
            stats["eval_rows"] += len(ftext)
            for i, t in zip(fid, ftext):
                if t is None or not t.strip():
                    stats["eval_null_text"] += 1
                    continue
                ids.append(f"{spec.name}/{i}" if spec.name else (i if i is not None else f"{os.path.basename(f)}#?"))
                texts.append(t)
    order = sorted(range(len(ids)), key=lambda k: (ids[k], texts[k]))
    return [ids[k] for k in order], [texts[k] for k in order], stats


def word_counts(norm: pa.Array) -> np.ndarray:
    import pyarrow.compute as pc

    toks = pc.utf8_split_whitespace(pc.fill_null(norm, ""))
    return np.asarray(pc.list_value_length(toks).fill_null(0), dtype=np.int64)


def build_index(ids: list[str], texts: list[str], cfg: Config) -> tuple[np.ndarray, np.ndarray, list[int], dict]:
    """(sorted unique n-gram hashes, smallest item index per hash, short lengths to scan, stats).

    Items are already sorted by id, so the smallest index is the smallest id."""
    norm = normalise(pa.array(texts, pa.string()), cfg.normalise)
    words = word_counts(norm)
    keep = words >= min(cfg.min_item_words, cfg.ngram)
    stats = {"eval_items": int(keep.sum()), "eval_items_too_short": int((~keep).sum())}
    parts_h, parts_i = [], []
    lengths = sorted({int(w) for w in words[keep] if w < cfg.ngram})
    idx_all = np.flatnonzero(keep)
    if len(idx_all):
        sub = norm.take(pa.array(idx_all))
        off, h = shingle_hashes(sub, ShingleConfig(kind="word", n=cfg.ngram), seed=HASH_SEED, normalised=True)
        parts_h.append(h)
        parts_i.append(np.repeat(idx_all, np.diff(off)))
    if parts_h:
        h = np.concatenate(parts_h)
        item = np.concatenate(parts_i).astype(np.int64)
        order = np.lexsort((item, h))
        h, item = h[order], item[order]
        first = np.concatenate([[True], h[1:] != h[:-1]]) if len(h) else np.zeros(0, bool)
        h, item = h[first], item[first]
    else:
        h, item = np.zeros(0, np.uint64), np.zeros(0, np.int64)
    stats["eval_ngrams"] = int(len(h))
    stats["short_lengths"] = lengths
    return h, item, lengths, stats


def scan(texts, index_h: np.ndarray, index_item: np.ndarray, lengths: list[int], cfg: Config):
    """For each text: (distinct shared n-grams, smallest matching item index or -1)."""
    norm = normalise(texts, cfg.normalise)
    n = len(norm)
    hits = np.zeros(n, np.int64)
    best = np.full(n, np.iinfo(np.int64).max, np.int64)
    if len(index_h) == 0 or n == 0:
        return hits, np.full(n, -1, np.int64)
    words = None
    found_d: list[np.ndarray] = []
    found_h: list[np.ndarray] = []
    for width in [cfg.ngram, *lengths]:
        off, h = shingle_hashes(norm, ShingleConfig(kind="word", n=width), seed=HASH_SEED, normalised=True)
        doc = np.repeat(np.arange(n), np.diff(off))
        if width != cfg.ngram:
            # A text shorter than `width` words yields one shingle of all its words, which the
            # n-gram pass has already looked up.
            if words is None:
                words = word_counts(norm)
            keep = words[doc] >= width
            doc, h = doc[keep], h[keep]
        pos = np.searchsorted(index_h, h)
        pos_c = np.minimum(pos, len(index_h) - 1)
        found = index_h[pos_c] == h
        if not found.any():
            continue
        found_d.append(doc[found])
        found_h.append(h[found])
        np.minimum.at(best, doc[found], index_item[pos_c[found]])
    if found_d:
        # Distinct shared n-grams per document: a repeated n-gram, or a whole short text seen by
        # two passes, counts once.
        pair = np.unique(np.stack([np.concatenate(found_d).astype(np.uint64), np.concatenate(found_h)]), axis=1)
        hits = np.bincount(pair[0].astype(np.int64), minlength=n)
    best[hits == 0] = -1
    return hits, best


# ------------------------------------------------------------------------------- stage
def run(spark, tables, cfg: Config, ctx):

    from thresher import schemas

    ids, texts, stats = load_items(cfg)
    index_h, index_item, lengths, istats = build_index(ids, texts, cfg)
    stats.update(istats)
    docs = tables["documents"]
    bc = spark.sparkContext.broadcast((index_h, index_item, lengths, ids))
    out_schema = pa.schema([("id", pa.string()), ("by_id", pa.string()), ("score", pa.float64())])

    def find(batches):
        from thresher.kernels.threads import limit_task_threads

        limit_task_threads()
        h, item, lens, item_ids = bc.value
        for b in batches:
            hits, best = scan(b.column(1), h, item, lens, cfg)
            sel = np.flatnonzero(hits > 0)
            if len(sel) == 0:
                continue
            yield pa.RecordBatch.from_arrays(
                [b.column(0).take(pa.array(sel)), pa.array([item_ids[k] for k in best[sel]], pa.string()),
                 pa.array(hits[sel].astype(np.float64))], schema=out_schema)

    # Only contaminated documents come out, so keeping them costs little and saves a second scan
    # (the runner writes `documents` and `removed` one after the other).
    hits = docs.select("id", "text").mapInArrow(find, "id string, by_id string, score double").persist()
    removed = ctx.removed(hits, REASON, by_id="by_id", score="score")
    assert set(schemas.get("removed").schema.names) <= set(removed.columns)
    return {"removed": removed, "stats": stats}


SPEC = StageSpec(name="decontaminate", inputs=("documents",), outputs=("removed",), removes=True)
