"""Example user-defined filters for `configs/user_filters.yaml` (any importable module works the
same way: `stages: [ingest, my_pkg.filters:ToxicWords, ...]`; see stages/user.py).

Both work on a whole pyarrow.RecordBatch with pyarrow.compute: no Python loop per document.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from thresher.stages.base import StageConfig


class ToxicWords:
    """Removes documents with more than `max_hits` occurrences of listed words (reason `toxic_words`)."""

    class Config(StageConfig):
        words: list[str] = Field(default_factory=list)
        max_hits: int = Field(0, ge=0)

    def __init__(self, cfg: Config):
        self.words = pa.array(sorted({w.lower() for w in cfg.words}), pa.string())
        self.max_hits = cfg.max_hits

    def __call__(self, batch: pa.RecordBatch) -> pa.Array:
        words = pc.split_pattern_regex(pc.utf8_lower(batch.column("text")), r"[^\pL\pN']+")
        hit = pc.fill_null(pc.is_in(pc.list_flatten(words), value_set=self.words), False).to_numpy(zero_copy_only=False)
        parent = pc.list_parent_indices(words).to_numpy(zero_copy_only=False)
        hits = np.bincount(parent[hit], minlength=batch.num_rows)
        return pa.array(hits <= self.max_hits)  # True keeps


def mean_word_length(batch: pa.RecordBatch) -> pa.Array:
    """A column, not a filter: mean characters per whitespace word (null for an empty text)."""
    words = pc.utf8_split_whitespace(batch.column("text"))
    n = pc.list_value_length(words).to_numpy(zero_copy_only=False).astype(np.float64)
    chars = np.bincount(pc.list_parent_indices(words).to_numpy(zero_copy_only=False),
                        weights=pc.utf8_length(pc.list_flatten(words)).to_numpy(zero_copy_only=False),
                        minlength=batch.num_rows)
    return pa.array(np.where(n > 0, chars / np.maximum(n, 1), np.nan), pa.float64(), from_pandas=True)
