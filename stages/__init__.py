"""One module per stage; the runner (flows/runner.py) reads, validates and writes their tables.

A stage module defines:
    NAME: str
    INPUTS: tuple[str, ...]            tables it needs (from the latest stage that wrote each)
    OPTIONAL_INPUTS: tuple[str, ...]   tables it uses when an earlier stage wrote them
    OUTPUTS: tuple[str, ...]           tables it may return
    class Config(StageConfig)          its config section
    def run(spark, tables: dict[str, DataFrame], cfg) -> dict[str, DataFrame]

A stage that removes documents returns the kept `documents` and a `removed` table; the runner
checks that the two add up to the documents it was given. It may also return "stats", a dict of
plain numbers for the manifest.
"""

from __future__ import annotations

import importlib
from types import ModuleType

# Order is the pipeline order; a stage added by a later change is one line here.
STAGES: dict[str, str] = {
    "ingest": "thresher.stages.ingest",
    "decontaminate": "thresher.stages.decontaminate",
    "exact_dedup": "thresher.stages.exact_dedup",
    "fuzzy_dedup": "thresher.stages.fuzzy_dedup",
    "embed": "thresher.stages.embed",
    "quality": "thresher.stages.quality",
    "cluster": "thresher.stages.cluster",
    "semantic_dedup": "thresher.stages.semantic_dedup",
    "sample": "thresher.stages.sample",
    "export": "thresher.stages.export",
}

_LOADED: dict[str, ModuleType] = {}


def stage_modules() -> dict[str, ModuleType]:
    if not _LOADED:
        for name, modpath in STAGES.items():
            mod = importlib.import_module(modpath)
            assert mod.NAME == name, f"{modpath} declares NAME={mod.NAME!r}"
            _LOADED[name] = mod
    return _LOADED


def get_stage(name: str) -> ModuleType:
    return stage_modules()[name]
