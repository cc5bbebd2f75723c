"""quality's classifier score: a logistic regression on embeddings, trained at the driver on
reference documents (good) against random corpus documents (the recipe of the DCLM and
FineWeb-Edu classifiers), applied to every embedding in executors.

A text reference is embedded with the embed stage's own model resolution and loader
(`embed.resolve_model`, `embed.load_model`): one list of packaged models, one offline guard.
"""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from thresher.schemas.errors import ConfigError, InputError
from thresher.stages.base import Strict


class ClassifierConfig(Strict):
    # Good documents: a Parquet/JSONL file or folder with an `id` column (documents of this
    # corpus), a `vector` column (ready embeddings) or a `text` column (embedded with `model`).
    reference: str | None = None
    # Or: a Spark SQL condition over documents that picks the good ones (`section = 'science'`).
    reference_where: str | None = None
    # Random corpus documents drawn as the "other" class.
    negatives: int = Field(5000, ge=10)
    max_reference: int = Field(50_000, ge=10)
    C: float = Field(1.0, gt=0)
    # Sentence-transformers model (a folder, or all-MiniLM-L6-v2 for the bundled one) for a text
    # reference; must be the model the embed stage used. None: the bundled all-MiniLM-L6-v2.
    model: str | None = None
    # Share of the training set held out to report the classifier's AUC.
    holdout: float = Field(0.2, ge=0.0, lt=0.9)



def _classifier_scores(spark, tables, cfg, seed: int):
    """Train the reference-vs-random logistic regression at the driver; score every embedding in
    executors. Returns (DataFrame id, _cls; stats)."""
    from pyspark.sql import functions as F
    from pyspark.sql.pandas.types import from_arrow_schema

    emb = tables.get("embeddings")
    if emb is None:
        raise ConfigError("quality.score: classifier needs the embeddings table: put the embed stage before quality")
    cc = cfg.classifier
    docs = tables["documents"]
    if (cc.reference is None) == (cc.reference_where is None):
        raise ConfigError("quality.classifier: set exactly one of reference (a file) and reference_where (a condition)")
    emb_live = emb.join(docs.select("id"), "id", "left_semi")
    pos_ids = None
    pos_vecs = None
    if cc.reference_where is not None:
        try:
            pos_ids = docs.where(cc.reference_where).select("id")
        except Exception as exc:  # Spark's AnalysisException: a bad condition or column
            raise ConfigError(f"quality.classifier.reference_where: {str(exc).splitlines()[0][:200]}") from None
    else:
        ref = _read_reference(cc.reference)
        if "vector" in ref.column_names:
            pos_vecs = np.array(ref.column("vector").to_pylist(), dtype=np.float32)
        elif "id" in ref.column_names:
            pos_ids = spark.createDataFrame([(str(i),) for i in ref.column("id").to_pylist()], "id string")
        elif "text" in ref.column_names:
            pos_vecs = _embed_texts([t or "" for t in ref.column("text").to_pylist()[: cc.max_reference]], cc.model)
        else:
            raise InputError(f"{cc.reference}: reference needs an id, vector or text column (found {', '.join(ref.column_names)})")
    if pos_ids is not None:
        rows = (emb.join(pos_ids, "id", "left_semi")
                .orderBy(F.xxhash64(F.lit(seed), "id"), "id").limit(cc.max_reference).select("id", "vector").collect())
        pos_vecs = np.array([r["vector"] for r in rows], dtype=np.float32).reshape(len(rows), -1)
        pos_set = {r["id"] for r in rows}
    else:
        pos_vecs = pos_vecs[: cc.max_reference]
        pos_set = set()
    if len(pos_vecs) < 2:
        raise InputError(f"quality.classifier: the reference has {len(pos_vecs)} documents with embeddings; need at least 2")
    neg_rows = (emb_live.orderBy(F.xxhash64(F.lit(seed + 1), "id"), "id").limit(cc.negatives + len(pos_set))
                .select("id", "vector").collect())
    neg_vecs = np.array([r["vector"] for r in neg_rows if r["id"] not in pos_set][: cc.negatives], dtype=np.float32)
    if len(neg_vecs) < 2 or neg_vecs.shape[1] != pos_vecs.shape[1]:
        raise InputError(f"quality.classifier: {len(neg_vecs)} corpus vectors of dimension "
                         f"{neg_vecs.shape[1] if neg_vecs.ndim == 2 else '?'} against reference dimension {pos_vecs.shape[1]}")

    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    X = np.concatenate([pos_vecs, neg_vecs]).astype(np.float64)
    y = np.concatenate([np.ones(len(pos_vecs)), np.zeros(len(neg_vecs))])
    rng = np.random.default_rng(seed)
    test = rng.random(len(y)) < cc.holdout
    stats = {"reference": int(len(pos_vecs)), "negatives": int(len(neg_vecs))}
    if cc.holdout > 0 and test.sum() >= 4 and len(set(y[test])) == 2 and len(set(y[~test])) == 2:
        m = LogisticRegression(C=cc.C, max_iter=1000, class_weight="balanced").fit(X[~test], y[~test])
        stats["holdout_auc"] = round(float(roc_auc_score(y[test], m.decision_function(X[test]))), 4)
    model = LogisticRegression(C=cc.C, max_iter=1000, class_weight="balanced").fit(X, y)
    w = model.coef_[0].astype(np.float64)
    b = float(model.intercept_[0])

    def score(batches):
        for batch in batches:
            vec = batch.column(batch.schema.get_field_index("vector"))
            if isinstance(vec, pa.ChunkedArray):
                vec = vec.combine_chunks()
            flat = pc.list_flatten(vec).to_numpy(zero_copy_only=False).astype(np.float64)
            V = flat.reshape(len(batch), -1) if len(batch) else np.zeros((0, len(w)))
            z = V @ w + b
            p = 1.0 / (1.0 + np.exp(-z))
            yield pa.RecordBatch.from_arrays([batch.column(batch.schema.get_field_index("id")), pa.array(p, pa.float64())],
                                             names=["id", "_cls"])

    schema = from_arrow_schema(pa.schema([("id", pa.string()), ("_cls", pa.float64())]))
    return emb_live.select("id", "vector").mapInArrow(score, schema), stats


def _read_reference(path: str) -> pa.Table:
    import pyarrow.dataset as ds
    import pyarrow.json as pj

    if not os.path.exists(path):
        raise InputError(f"{path}: quality.classifier.reference not found")
    low = path.lower()
    try:
        if low.endswith((".jsonl", ".json", ".ndjson", ".jsonl.gz", ".json.gz")):
            return pj.read_json(path)
        return ds.dataset(path, format="parquet").to_table()
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(f"{path}: cannot read the reference ({str(exc).splitlines()[0][:200]})") from None




def _embed_texts(texts: list[str], model: str | None) -> np.ndarray:
    import contextlib

    import torch

    from thresher.kernels.backend import cpu_bf16
    from thresher.stages.embed import DEFAULT_MODEL, load_model, resolve_model

    path, _ = resolve_model(model or DEFAULT_MODEL, key="quality.classifier.model")
    st, _ = load_model(str(path), "cpu")
    # bf16 where the CPU has it, as the embed stage does: several times faster than fp32.
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if cpu_bf16() else contextlib.nullcontext()
    with ctx, torch.inference_mode():
        out = st.encode(texts, batch_size=64, normalize_embeddings=True, convert_to_tensor=True)
    return out.float().cpu().numpy().astype(np.float32)
