"""tokens: each document's token count from a real tokenizer, as a documents column.

    tokens:
      tokenizer: all-MiniLM-L6-v2     # the packaged embedding model's tokenizer.json, or a path to
                                      # a tokenizer.json or a folder holding one
      column: tokens

The count is the number of ids HuggingFace `tokenizers` gives the whole text, without special
tokens, truncation or padding. Executors load the tokenizer once per worker and encode a batch
per call (`encode_batch`, Rust threads capped to the task's share of cores). `sample` with
`unit: tokens` reads this column, and the dataset card reports the totals; a words x
tokens_per_word estimate is used only where a config asks for it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
from pydantic import Field

from thresher.schemas.errors import ConfigError, StageError
from thresher.stages.base import StageConfig, StageSpec


class Config(StageConfig):
    tokenizer: str = "all-MiniLM-L6-v2"
    column: str = Field("tokens", min_length=1)
    # Token counts of texts longer than this many characters are counted on the first
    # max_chars characters and scaled by length (bounds the cost of a huge document).
    max_chars: int | None = Field(None, ge=1000)


def resolve_tokenizer(name: str, key: str = "tokens.tokenizer") -> Path:
    """A tokenizer.json path; one ConfigError line when there is none."""
    p = Path(name).expanduser()
    if not p.exists():
        from thresher.stages.embed.model import _PACKAGED, resolve_model

        if name.strip().lower() in _PACKAGED:
            p = resolve_model(name, key=key)[0]
        else:
            raise ConfigError(f"{key}: '{name}' does not exist (a tokenizer.json, a folder holding one, "
                              "or the packaged all-MiniLM-L6-v2)")
    if p.is_dir():
        p = p / "tokenizer.json"
        if not p.is_file():
            raise ConfigError(f"{key}: {p.parent} holds no tokenizer.json")
    return p.resolve()


_TOK: dict[str, object] = {}


def load_tokenizer(path: str):
    t = _TOK.get(path)
    if t is None:
        from tokenizers import Tokenizer

        try:
            t = Tokenizer.from_file(path)
        except Exception as exc:
            raise StageError(f"tokens.tokenizer: cannot load {path}: {str(exc).splitlines()[0][:200]}") from None
        t.no_truncation()
        t.no_padding()
        _TOK[path] = t
    return t


def count_tokens(texts, path: str, max_chars: int | None = None) -> np.ndarray:
    """Token count per text (nulls count 0)."""
    import pyarrow.compute as pc

    if isinstance(texts, pa.ChunkedArray):
        texts = texts.combine_chunks()
    texts = pc.fill_null(texts, "")
    chars = pc.utf8_length(texts).to_numpy(zero_copy_only=False).astype(np.float64)
    if max_chars is not None:
        texts = pc.utf8_slice_codeunits(texts, 0, max_chars)
    enc = load_tokenizer(path).encode_batch(texts.to_pylist(), add_special_tokens=False)
    n = np.fromiter((len(e.ids) for e in enc), dtype=np.int64, count=len(enc))
    if max_chars is not None:
        long = chars > max_chars
        n[long] = np.ceil(n[long] * chars[long] / max_chars).astype(np.int64)
    return n


def make_filter(path: str, col: str, max_chars: int | None = None):
    """The batch function: the token count per document as the column `col`, and the counters
    the stats sum (tokens, documents)."""
    from thresher.kernels.threads import task_threads
    from thresher.stages.batchfilter import Verdict

    def fn(batch: pa.RecordBatch) -> Verdict:
        # The Rust pool sizes itself once per process from this variable, at the first encode.
        os.environ.setdefault("RAYON_NUM_THREADS", str(task_threads()))
        n = count_tokens(batch.column(batch.schema.get_field_index("text")), path, max_chars)
        return Verdict(columns={col: pa.array(n, pa.int64())},
                       counters={"tokens_total": n, "documents": np.ones(len(n), np.int64)})

    return fn, ("tokens_total", "documents")


def run(spark, tables, cfg: Config, ctx):
    from thresher.stages.batchfilter import run_filter

    path = str(resolve_tokenizer(cfg.tokenizer))
    col = cfg.column
    if col in ("id", "text"):
        raise ConfigError(f"tokens.column: '{col}' would overwrite a documents column the pipeline needs")
    fn, counters = make_filter(path, col, cfg.max_chars)
    # run_filter persists its output: the totals and the table the runner writes read one tokenisation.
    docs, _, counted = run_filter(tables["documents"], ctx, fn, new_columns={col: pa.int64()}, counters=counters)
    return {"documents": docs, "stats": {"tokenizer": cfg.tokenizer, "column": col, **counted}}


SPEC = StageSpec(name="tokens", inputs=("documents",), outputs=("documents",))
