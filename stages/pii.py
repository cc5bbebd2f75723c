"""pii: redact e-mail addresses, credit-card numbers (Luhn-checked), IPv4/IPv6 addresses and
phone numbers in the text, replacing each by a placeholder. Optional; removes nothing.

    pii:
      kinds: [email, credit_card, ipv4, ipv6, phone]
      placeholders: {email: "<EMAIL>"}        # overrides of kernels/pii.py PLACEHOLDERS

The stage's stats (in the manifest) count the replacements per kind and the documents touched.
The redaction is pyarrow.compute regexes over whole batches in executors (kernels/pii.py).
"""

from __future__ import annotations

import numpy as np
from pydantic import Field, field_validator

from thresher.kernels import pii as kp
from thresher.stages.base import StageConfig, StageSpec


class Config(StageConfig):
    kinds: list[str] = Field(default_factory=lambda: list(kp.KINDS))
    placeholders: dict[str, str] = Field(default_factory=dict)

    @field_validator("kinds", "placeholders")
    @classmethod
    def _known_kinds(cls, v):
        bad = [k for k in v if k not in kp.KINDS]  # the list's items, the dict's keys
        if bad:
            raise ValueError(f"unknown kind '{bad[0]}' (kinds: {', '.join(kp.KINDS)})")
        return v


def make_filter(cfg: Config):
    from thresher.stages.batchfilter import Verdict

    kinds, ph = tuple(cfg.kinds), dict(cfg.placeholders)

    def fn(batch):
        text, counts = kp.redact(batch.column(batch.schema.get_field_index("text")), kinds, ph)
        total = sum(counts.values()) if counts else np.zeros(batch.num_rows, np.int64)
        counters = {f"redacted_{k}": v for k, v in counts.items()}
        counters["documents_redacted"] = (np.asarray(total) > 0).astype(np.int64)
        return Verdict(columns={"text": text}, counters=counters)

    return fn, tuple(f"redacted_{k}" for k in kp.KINDS if k in kinds) + ("documents_redacted",)


def run(spark, tables, cfg: Config, ctx):
    from thresher.stages.batchfilter import run_filter

    fn, counters = make_filter(cfg)
    docs, _, stats = run_filter(tables["documents"], ctx, fn, counters=counters)
    return {"documents": docs, "stats": stats}


SPEC = StageSpec(name="pii", inputs=("documents",), outputs=("documents",))
