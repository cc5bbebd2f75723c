"""The trust boundary of served runs: who may set what.

`thresher serve` (and a work pool's workers) run flows with parameters that anyone allowed to
create a flow run on the Prefect server chooses. Spark settings are code execution in disguise
(`spark.driver.extraJavaOptions`, `spark.jars`, `spark.executorEnv.*`, a master of the caller's
choosing), so in a served run the `spark` section is frozen to what the operator fixed when
starting the server: `THRESHER_SPARK_FROZEN` holds it as JSON (`thresher serve` sets it from its
own resolved config; `default` means the built-in defaults). The operator may let runs set some
`spark.conf` keys with `thresher serve --allow-spark-conf KEY` (exact keys, or a prefix ending in
`*`), carried in `THRESHER_SPARK_CONF_ALLOW`. Without `THRESHER_SPARK_FROZEN` (a plain
`thresher run`: the user is the operator), nothing is checked.
"""

from __future__ import annotations

import fnmatch
import json
import os

from thresher.schemas.errors import ConfigError

FROZEN_ENV = "THRESHER_SPARK_FROZEN"
ALLOW_ENV = "THRESHER_SPARK_CONF_ALLOW"

# Never allowed from a run's parameters, whatever the allow-list says: they run code or load it.
NEVER = ("spark.*.extraJavaOptions", "spark.*.extraClassPath", "spark.*.extraLibraryPath", "spark.jars*",
         "spark.files*", "spark.archives*", "spark.executorEnv.*", "spark.yarn.*", "spark.kubernetes.*",
         "spark.python.*", "spark.pyspark.*", "spark.plugins*", "spark.sql.extensions", "spark.*.plugins",
         "spark.driver.resource.*", "spark.submit.*", "spark.api.*")


def _allowed(key: str, allow: list[str]) -> bool:
    if any(fnmatch.fnmatchcase(key, p) for p in NEVER):
        return False
    return any(key == a or (a.endswith("*") and key.startswith(a[:-1])) for a in allow)


def served_config(config: dict) -> dict:
    """In a served run: the config with the frozen `spark` section, refusing one that differs
    (but for allowed `conf` keys) in one line naming the first key that differs."""
    frozen_raw = os.environ.get(FROZEN_ENV)
    if not frozen_raw:
        return config
    from thresher.flows.config import SparkConfig, config_json

    frozen = config_json(SparkConfig()) if frozen_raw.strip() == "default" else json.loads(frozen_raw)
    allow = [a.strip() for a in os.environ.get(ALLOW_ENV, "").split(",") if a.strip()]
    raw = (config or {}).get("spark") or {}
    if not isinstance(raw, dict):
        raise ConfigError("spark: must be a mapping")
    try:
        # What the run names, over the frozen settings: only the keys it names can differ.
        merged = {**frozen, **raw, "conf": {**(frozen.get("conf") or {}), **(raw.get("conf") or {})}}
        asked = config_json(SparkConfig(**merged))
    except ValueError as exc:  # pydantic's ValidationError
        raise ConfigError(f"spark: {str(exc).splitlines()[0]}") from None
    for key in sorted(set(asked) | set(frozen)):
        if key == "conf":
            continue
        if asked.get(key) != frozen.get(key):
            raise ConfigError(f"spark.{key}: Spark settings are frozen for served runs (the operator's "
                              f"`thresher serve` fixed them); this run may not change them")
    fconf, aconf = frozen.get("conf") or {}, asked.get("conf") or {}
    for key in sorted(set(fconf) | set(aconf)):
        if fconf.get(key) != aconf.get(key) and not _allowed(key, allow):
            raise ConfigError(f"spark.conf.{key}: not allowed in a served run; the operator may allow it "
                              f"with `thresher serve --allow-spark-conf {key}`")
    return {**config, "spark": {**frozen, "conf": aconf}}
