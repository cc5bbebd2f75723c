"""YAML config validated by pydantic.

The top-level model is assembled from the stage registry, so a new stage brings its own config
section without touching this file. Unknown keys and bad values are reported by their dotted path
in one line (`fuzzy_dedup.treshold: unknown key; did you mean threshold?`).
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field, ValidationError, create_model

from thresher.schemas.errors import ConfigError
from thresher.stages.base import StageConfig, Strict  # noqa: F401  (StageConfig re-exported for one release)
from thresher.stages.storage import StorageConfig

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


class SparkConfig(Strict):
    master: str = "local[*]"
    # Loopback by default so nothing listens on an external interface; set it to an address the
    # executors can reach when the master is a real cluster.
    driver_host: str | None = "127.0.0.1"
    driver_memory: str = "4g"
    shuffle_partitions: int = Field(8, ge=1)
    arrow_batch_rows: int = Field(2048, ge=1)
    ui: bool = False
    # Start the driver JVM from a class-data-sharing archive of the classes Spark loads (written
    # by the first start, about 200 MB under THRESHER_CACHE_DIR or ~/.cache/thresher): the
    # session starts about 2 s sooner.
    class_data_sharing: bool = True
    # Added to the driver JVM's options when the master is local[...] (driver and executor in one
    # JVM on this machine's cores): the throughput collector instead of G1, whose concurrent
    # threads compete with the tasks on a few cores (640k fuzzy dedup from a fresh session, session
    # start, stage and writes, Zen 4 with 2 cores: median 39.4 s over 3 runs against 41.2 s over 6
    # with G1; README, dedup). "" keeps the JVM's default.
    local_java_options: str = "-XX:+UseParallelGC"
    conf: dict[str, str] = Field(default_factory=dict)


class PrefectConfig(Strict):
    retries: int = Field(0, ge=0)
    retry_delay_s: float = Field(10.0, ge=0)


class RunConfig(Strict):
    """The sections every run has; stage sections are added by `config_model()`."""

    input: list[str] = Field(default_factory=list)
    # A local folder (the run folder), or a URL (s3://, gs://, hf://, ...) that receives the
    # published dataset; the run folder then lives in `work_dir`.
    output: str | None = None
    # The run folder (intermediate tables) when `output` is a URL: a filesystem Spark can commit
    # to (local, NFS, HDFS). Default: $THRESHER_CACHE_DIR/runs/<output's hash>.
    work_dir: str | None = None
    storage: StorageConfig = Field(default_factory=StorageConfig)
    seed: int = 0
    stages: list[str] = Field(default_factory=lambda: ["ingest", "export"])
    spark: SparkConfig = Field(default_factory=SparkConfig)
    prefect: PrefectConfig = Field(default_factory=PrefectConfig)


_MODELS: dict[tuple, type[RunConfig]] = {}


def config_model(stages: tuple[str, ...] | None = None, user: dict | None = None) -> type[RunConfig]:
    """The config model of a flow: the run's sections plus one section per stage of `stages`
    (default: curate's, the registry's STAGES), and one per user-defined stage of this config
    (`user`: name -> stage module, stages/user.py). A flow with its own stage list
    (containment) also gets that list as its default `stages`."""
    key = (stages, tuple(sorted((n, id(m.Config)) for n, m in (user or {}).items())))
    if key not in _MODELS:
        from thresher.stages import STAGES, get_stage

        names = tuple(STAGES) if stages is None else stages
        fields: dict[str, Any] = {name: (get_stage(name).Config, Field(default_factory=get_stage(name).Config)) for name in names}
        fields.update({n: (m.Config, Field(default_factory=m.Config)) for n, m in (user or {}).items()})
        if stages is not None:
            fields["stages"] = (list[str], Field(default_factory=lambda: list(names)))
        _MODELS[key] = create_model("Config", __base__=RunConfig, **fields)
    return _MODELS[key]


def _known_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    """Field names of the model found at `loc` (the parent of a bad key)."""
    cur: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        f = getattr(cur, "model_fields", {}).get(part)
        if f is None:
            return []
        ann = f.annotation
        cur = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
        if cur is None:
            return []
    return list(getattr(cur, "model_fields", {}))


def _one_line(err: ValidationError, model: type[BaseModel]) -> str:
    e = err.errors()[0]
    loc = tuple(e["loc"])
    path = ".".join(str(p) for p in loc)
    if e["type"] == "extra_forbidden":
        key = str(loc[-1])
        near = difflib.get_close_matches(key, _known_keys(model, loc[:-1]), n=1)
        hint = f"; did you mean {near[0]}?" if near else ""
        return f"{path}: unknown key{hint}"
    more = f" (and {len(err.errors()) - 1} more)" if len(err.errors()) > 1 else ""
    return f"{path}: {e['msg']} (got {json.dumps(e.get('input'), default=str)[:80]}){more}"


def _set_path(d: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    cur = d
    for p in parts[:-1]:
        nxt = cur.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"--set {dotted}: '{p}' is not a section")
        cur = nxt
    cur[parts[-1]] = value


def stage_section(cfg, name: str):
    """A stage's config section with its seed filled in from the run's (what its run gets)."""
    section = getattr(cfg, name)
    return section if section.seed is not None else section.model_copy(update={"seed": cfg.seed})


def parse_overrides(pairs: list[str]) -> dict:
    out: dict = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"--set {pair}: expected stage.key=value")
        key, raw = pair.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError:
            value = raw
        _set_path(out, key.strip(), value)
    return out


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def resolve_config_path(path: str | Path) -> Path:
    p = Path(path)
    if p.exists():
        return p
    shipped = CONFIG_DIR / p
    if shipped.exists():
        return shipped
    shipped = CONFIG_DIR / f"{p}.yaml"
    if shipped.exists():
        return shipped
    raise ConfigError(f"{path}: config file not found")


def load_config(path: str | Path | None = None, overrides: dict | None = None, raw: dict | None = None, *,
                default: str | Path | None = None, stages: tuple[str, ...] | None = None):
    """Load, merge overrides and validate. Relative input paths resolve against the config's folder.

    A flow other than curate passes its own `default` config file (read when no `path` is given)
    and its `stages` (the sections the config may have, and the stages a run may list)."""
    data: dict = dict(raw or {})
    base = Path.cwd()
    if path is None and default is not None and Path(default).exists():
        path = default
    if path is not None:
        p = resolve_config_path(path)
        try:
            loaded = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark else ""
            raise ConfigError(f"{p}:{where} not valid YAML") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p}: a config is a mapping of sections, found {type(loaded).__name__}")
        data = _merge(loaded, data)
        base = p.resolve().parent
        # Inputs named in a config are relative to it, so shipped configs work from any cwd.
        if "input" in loaded:
            ins = loaded["input"] if isinstance(loaded["input"], list) else [loaded["input"]]
            data["input"] = [str((base / i)) if not _is_absolute(i) else i for i in ins]
    if overrides:
        data = _merge(data, overrides)
    if isinstance(data.get("input"), str):
        data["input"] = [data["input"]]
    user: dict = {}
    if stages is None and isinstance(data.get("stages"), list):
        from thresher.stages import resolve_stages

        data["stages"], user = resolve_stages(data["stages"])
    model = config_model(stages, user)
    try:
        cfg = model.model_validate(data)
    except ValidationError as err:
        where = Path(path).name if path is not None and path == default else (path or "config")
        raise ConfigError(f"{where}: {_one_line(err, model)}") from None
    check_stage_order(cfg, stages)
    return cfg


def _is_absolute(p: str) -> bool:
    return p.startswith("/") or "://" in p


def check_stage_order(cfg: RunConfig, stages: tuple[str, ...] | None = None) -> None:
    """Preflight of the stage list against the flow's stages (default: curate's)."""
    from thresher.stages import FLOW_STAGES, STAGES, get_stage, stage_modules

    names = tuple(STAGES) if stages is None else stages
    if stages is None:  # user-defined stages this config resolved (stages/user.py)
        names += tuple(n for n in cfg.stages if n not in names and n in stage_modules() and n not in FLOW_STAGES)
    mods = {n: get_stage(n) for n in names}
    sources = [n for n, m in mods.items() if m.SPEC.source]
    available: set[str] = set()
    seen: set[str] = set()
    if not cfg.stages:
        raise ConfigError(f"stages: empty; a run needs at least {sources[0]}")
    for i, name in enumerate(cfg.stages):
        if name not in mods:
            near = difflib.get_close_matches(name, list(mods), n=1)
            hint = f"; did you mean {near[0]}?" if near else ""
            raise ConfigError(f"stages[{i}]: unknown stage '{name}'{hint}")
        if name in seen:
            raise ConfigError(f"stages[{i}]: stage '{name}' listed twice")
        seen.add(name)
        spec = mods[name].SPEC
        if i == 0 and not spec.source:
            raise ConfigError(f"stages: the first stage must be {' or '.join(sources)}, found '{name}'")
        for t in spec.required(getattr(cfg, name)):
            if t not in available:
                producers = [n for n, m in mods.items() if t in m.SPEC.all_outputs()]
                raise ConfigError(
                    f"stages: '{name}' needs table '{t}', which no earlier stage produces "
                    f"(put one of {', '.join(producers)} before it)"
                )
        available.update(spec.all_outputs())


def config_json(cfg: BaseModel) -> dict:
    return json.loads(cfg.model_dump_json())

