"""One module per stage; the runner (flows/runner.py) reads, validates and writes their tables.

A stage module defines:
    SPEC = StageSpec(...)              what it reads, writes and removes (stages/base.py)
    class Config(StageConfig)          its config section
    def run(spark, tables: dict[str, DataFrame], cfg, ctx: StageContext) -> dict[str, DataFrame]

A stage that removes documents declares `removes=True` and returns a `removed` table built with
`ctx.removed(...)`; the runner derives the kept documents. It may also return "stats", a dict of
plain numbers for the manifest.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from thresher.stages.base import StageContext, StageSpec

__all__ = ["FLOW_STAGES", "STAGES", "StageContext", "StageSpec", "get_stage", "register", "resolve_stages", "spec_of",
           "stage_modules"]

# Order is the pipeline order; a stage added by a later change is one line here.
STAGES: dict[str, str] = {
    "ingest": "thresher.stages.ingest",
    "language": "thresher.stages.language",
    "heuristics": "thresher.stages.heuristics",
    "pii": "thresher.stages.pii",
    "decontaminate": "thresher.stages.decontaminate",
    "exact_dedup": "thresher.stages.exact_dedup",
    "fuzzy_dedup": "thresher.stages.fuzzy_dedup",
    "tokens": "thresher.stages.tokens",
    "embed": "thresher.stages.embed",
    "quality": "thresher.stages.quality",
    "cluster": "thresher.stages.cluster",
    "semantic_dedup": "thresher.stages.semantic_dedup",
    "sample": "thresher.stages.sample",
    "export": "thresher.stages.export",
}

# Stages of the other flows, run by the same runner but never part of a curate run: the
# containment flow's one stage (flows/containment.py).
FLOW_STAGES: dict[str, str] = {
    "containment": "thresher.stages.containment",
}

_LOADED: dict[str, ModuleType] = {}
# User-defined stages (stages/user.py) resolved from a config, by name.
_USER: dict[str, object] = {}


def stage_modules() -> dict[str, ModuleType]:
    if not _LOADED:
        for name, modpath in {**STAGES, **FLOW_STAGES}.items():
            mod = importlib.import_module(modpath)
            assert mod.SPEC.name == name, f"{modpath} declares SPEC.name={mod.SPEC.name!r}"
            _LOADED[name] = mod
    return {**_LOADED, **_USER}


def get_stage(name: str) -> ModuleType:
    return stage_modules()[name]


def spec_of(name_or_module) -> StageSpec:
    mod = get_stage(name_or_module) if isinstance(name_or_module, str) else name_or_module
    return mod.SPEC


def register(name: str, mod) -> None:
    """Adds a user-defined stage under `name` (it may not shadow a built-in one)."""
    if name in STAGES or name in FLOW_STAGES:
        from thresher.schemas.errors import ConfigError

        raise ConfigError(f"stages: user stage '{name}' has the name of a built-in stage")
    _USER[name] = mod


def resolve_stages(entries: list) -> tuple[list, dict]:
    """The `stages` list with user references (`pkg.mod:Attr`, entry points) replaced by their
    stage names, and {name: module} of the user stages among them (registered)."""
    from thresher.stages.user import resolve

    names, user = [], {}
    for i, entry in enumerate(entries):
        if not isinstance(entry, str) or entry in STAGES:
            names.append(entry)
            continue
        name, mod = resolve(entry, f"stages[{i}]")
        if mod is None:
            names.append(entry)  # neither built-in nor a reference: the order check names it
            continue
        register(name, mod)
        user[name] = mod
        names.append(name)
    return names, user
