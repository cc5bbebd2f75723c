"""The stage runner, written once: read, validate, run, write atomically, account, record.

Layout of a run folder:
    <output>/manifest.json             config, versions, input fingerprints, per-stage counts
    <output>/<stage>/<table>/          Parquet written by that stage
    <output>/<stage>/_stage.json       the stage's fingerprint and counts (written last)
    <output>/dataset/                  the curated set (export)
    <output>/.tmp/                     work in progress; never read by anyone

A stage folder appears by one rename of a finished temporary folder, so a reader sees either
nothing or a whole stage. A folder with a `_stage.json` whose fingerprint matches is reused when
the run resumes.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import platform
import shutil
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from thresher import schemas
from thresher.flows import __version__
from thresher.flows.codehash import stage_code
from thresher.flows.config import RunConfig, config_json, stage_section
from thresher.flows.runfolder import MANIFEST, RunFolder
from thresher.schemas.errors import StageError, ThresherError
from thresher.stages import get_stage, spec_of
from thresher.stages.base import StageContext, kept_documents

log = logging.getLogger("thresher.runner")

STAGE_FILE = "_stage.json"


def _sha(*parts: Any) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(json.dumps(p, sort_keys=True, default=str).encode())
        h.update(b"\0")
    return h.hexdigest()[:32]


def parquet_files(path: Path) -> list[Path]:
    if path.is_file():  # a top-level table written as one file (containment's plan.parquet)
        return [path]
    return sorted(p for p in path.rglob("*.parquet") if not any(s.startswith((".", "_")) for s in p.relative_to(path).parts))


def table_files(path: Path) -> dict[str, dict]:
    """Each Parquet file of a table with its size and footer row count, for verifying it later."""
    return {(f.name if f == path else str(f.relative_to(path))): {"bytes": f.stat().st_size,
                                                                "rows": pq.ParquetFile(f).metadata.num_rows}
            for f in parquet_files(path)}


def verify_table(path: Path, info: dict) -> str | None:
    """Why a finished table cannot be reused (missing, truncated, changed), or None."""
    if not path.exists():
        return "missing"
    try:
        files = table_files(path)
    except Exception as exc:  # a truncated or damaged footer: pyarrow raises several types
        return f"unreadable ({str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__})"
    want = info.get("files")
    if want is not None and files != want:
        gone = sorted(set(want) - set(files)) or sorted(set(files) - set(want))
        changed = gone or sorted(f for f in want if files.get(f) != want[f])
        return f"files differ from the record ({changed[0]})"
    if sum(f["rows"] for f in files.values()) != info.get("rows"):
        return "row count differs from the record"
    return None


def validate_table(name: str, path: Path) -> None:
    files = parquet_files(path)
    if not files:
        raise StageError(f"{path}: table '{name}' has no Parquet files")
    schemas.validate(name, pq.read_schema(files[0]), str(files[0]))


def link_tree(src: Path, dest: Path) -> None:
    """The Parquet files and JSON sidecars (`_x.json`, which Spark's reader skips) of folder `src`
    under `dest`: hard links where the filesystem allows (free, and safe: thresher replaces such
    files, never edits them), else copies."""
    dest.mkdir(parents=True, exist_ok=True)
    for f in sorted(src.iterdir()):
        if f.is_symlink() or not f.is_file() or f.name.startswith(".") or f.suffix not in (".parquet", ".json"):
            continue
        if f.name.startswith("_") and f.suffix != ".json":
            continue
        try:
            os.link(f, dest / f.name)
        except OSError:
            shutil.copy2(f, dest / f.name)


def arrow_schema_of(df):
    from pyspark.sql.pandas.types import to_arrow_schema

    return to_arrow_schema(df.schema)


def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for p in ["thresher", "pyspark", "pyarrow", "prefect", "numba", "numpy", "torch",
              "sentence-transformers", "datasketch", "faiss-cpu", "pydantic"]:
        try:
            out[p] = version(p)
        except PackageNotFoundError:
            pass
    return out


@dataclass
class StageRecord:
    stage: str
    fingerprint: str
    rows_in: int
    kept: int
    removed: dict[str, int] = field(default_factory=dict)
    rejected: dict[str, int] = field(default_factory=dict)
    tables: dict[str, dict] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)
    wall_s: float = 0.0
    reused: bool = False
    peak_rss_mb: float | None = None  # driver process tree (JVM, Python workers) while the stage ran

    def to_json(self) -> dict:
        return self.__dict__.copy()


class Runner:
    """Runs stages in order over one run folder and keeps the manifest."""

    def __init__(self, spark, cfg: RunConfig, folder: RunFolder, force: tuple[str, ...] = ()):
        self.spark = spark
        self.cfg = cfg
        self.folder = folder
        self.force = set(force)
        self.tables: dict[str, Path] = {}
        # Rows of each table in self.tables, from the record of the stage that wrote it (counted
        # from the footers once, when written, or verified against them when reused).
        self.rows: dict[str, int] = {}
        self.fingerprints: dict[str, str] = {}
        self.records: dict[str, StageRecord] = {}
        self.started = time.time()
        self.input_fingerprint: dict[str, Any] = {}
        spark.sparkContext.setCheckpointDir(str(folder.root / ".tmp" / "checkpoints"))
        # Written before any work, so a run killed in its first stage is still recognised (and
        # resumed) as ours rather than refused as a foreign folder.
        self.write_manifest("running")

    # ----------------------------------------------------------------------------- tables
    def read(self, name: str):
        path = self.tables[name]
        validate_table(name, path)
        return self.spark.read.parquet(str(path))

    def _write(self, spec, table: str, df, dest: Path, stage_cfg) -> None:
        schema_name = "documents" if table == "dataset" else table
        if isinstance(df, Path):
            # A table the stage wrote itself (its files carry their own metadata): validated from
            # the footers and linked in, never rewritten.
            if schema_name in schemas.TABLES:
                validate_table(schema_name, df)
            link_tree(df, dest)
            return
        if schema_name in schemas.TABLES:
            schemas.validate(schema_name, arrow_schema_of(df), f"{spec.name} output '{table}'")
        writer = spec.writers.get(table)
        if writer is not None:
            writer(df, dest, stage_cfg)
        else:
            df.write.mode("error").parquet(str(dest))

    # ----------------------------------------------------------------------------- stages
    def stage_config(self, name: str):
        return stage_section(self.cfg, name)

    def fingerprint(self, name: str, spec, stage_cfg) -> str:
        ups = {t: self.fingerprints.get(t) for t in (*spec.required(stage_cfg), *spec.optional_inputs) if t in self.tables}
        # A source stage's inputs; another stage's own outside data (dedup's `against` reference),
        # which is {} when it has none, leaving the fingerprint as it was.
        if spec.source:
            extra = self.input_fingerprint
        else:
            extra = spec.fingerprint((), stage_cfg) if spec.fingerprint is not None else {}
        return _sha(__version__, name, stage_code(get_stage(name)), config_json(stage_cfg), ups, extra)

    def run_stage(self, name: str) -> StageRecord:
        from thresher.flows.progress import StageMonitor

        # Progress on a terminal (one summary line in a log) and the stage's peak memory.
        docs_in = self.rows.get("documents")
        with StageMonitor(self.spark, name, docs_in) as self._monitor:
            rec = self._run_stage(name, docs_in)
            self._monitor.finish(rec.rows_in, rec.reused)
        return rec

    def _run_stage(self, name: str, docs_in: int | None) -> StageRecord:
        spec = spec_of(name)
        stage_cfg = self.stage_config(name)
        if spec.source and spec.fingerprint is not None:
            self.input_fingerprint = spec.fingerprint(self.cfg.input, stage_cfg)
        fp = self.fingerprint(name, spec, stage_cfg)
        dest = self.folder.root / name

        reused = self._try_reuse(name, spec, fp, dest)
        if reused is not None:
            return reused

        t0 = time.time()
        inputs = {t: self.read(t) for t in spec.required(stage_cfg)}
        for t in spec.optional_inputs:
            if t in self.tables and t not in inputs:
                inputs[t] = self.read(t)
        ctx = StageContext(name, input_paths=tuple(self.cfg.input) if spec.source else (),
                           scratch_root=self.folder.root / ".tmp")
        try:
            tmp, result, stats, locations = self._compute(name, spec, inputs, stage_cfg, ctx)
        finally:
            ctx.cleanup()

        # Later stages read these tables back from Parquet: nothing cached for this one is needed.
        self.spark.catalog.clearCache()
        # Each footer read once: the files recorded for verifying a resume give the counts too.
        # A top-level table (the dataset) is already committed to its place.
        files = {t: table_files(tmp / t if (tmp / t).exists() else loc) for t, loc in locations.items()}
        counts = {t: sum(f["rows"] for f in fs.values()) for t, fs in files.items()}
        rec = StageRecord(stage=name, fingerprint=fp, rows_in=0, kept=0, stats=stats)
        rec.removed = self._reason_counts(tmp / "removed", counts.get("removed", 0))
        rec.rejected = self._reason_counts(tmp / "rejected", counts.get("rejected", 0))
        kept = counts.get("documents", docs_in if docs_in is not None else 0)
        rec.kept = kept
        rec.rows_in = docs_in if docs_in is not None else kept + sum(rec.rejected.values())
        rec.tables = {t: {"rows": counts[t], "path": str(loc.relative_to(self.folder.root)), "files": files[t]}
                      for t, loc in locations.items()}
        rec.wall_s = round(time.time() - t0, 3)
        rec.peak_rss_mb = self._monitor.peak_rss_mb
        closed = rec.rows_in == rec.kept + sum(rec.removed.values()) + sum(rec.rejected.values())
        if not closed:
            raise RuntimeError(
                f"row accounting does not close in stage {name}: in={rec.rows_in} kept={rec.kept} "
                f"removed={sum(rec.removed.values())} rejected={sum(rec.rejected.values())}"
            )
        self.folder.write_json(tmp / STAGE_FILE, rec.to_json())
        if tmp.exists() and any(tmp.iterdir()):
            self.folder.commit(tmp, dest)
        self._adopt(name, rec, locations)
        return rec

    def _compute(self, name: str, spec, inputs: dict, stage_cfg, ctx: StageContext):
        """Runs the stage and writes its tables into a temporary folder; a removing stage's
        `removed` is written first and the kept documents are derived from the written ids."""
        mod = get_stage(name)
        try:
            result = mod.run(self.spark, inputs, stage_cfg, ctx)
        except ThresherError:
            raise
        except Exception as exc:
            raise _as_stage_error(name, exc) from exc
        stats = dict(result.pop("stats", {}) or {})
        unknown = set(result) - set(spec.outputs)
        if unknown:
            raise RuntimeError(f"stage {name} returned undeclared tables {sorted(unknown)}")
        if spec.removes and "removed" not in result:
            raise RuntimeError(f"stage {name} removes documents but returned no 'removed' table")

        tmp = self.folder.tmp(name)
        locations: dict[str, Path] = {}
        order = sorted(result, key=lambda t: t != "removed")
        table = None
        try:
            for table in order:
                if table == "documents" and spec.removes:
                    continue  # the rewritten documents: the kept ones are derived below
                df = result[table]
                rel = spec.top_level.get(table)
                if rel:  # a table that lives at the run's top level (the final dataset)
                    ttmp = self.folder.tmp(table)
                    target = ttmp / "data"
                    self._write(spec, table, df, target, stage_cfg)
                    locations[table] = self.folder.root / rel
                    self.folder.commit(target, locations[table])
                else:
                    self._write(spec, table, df, tmp / table, stage_cfg)
                    locations[table] = self.folder.root / name / table
            if spec.removes:
                # From the written ids (footers give Spark their size, so a small set is broadcast):
                # the stage's removal logic runs once, and kept + removed = input by construction.
                gone = self.spark.read.parquet(str(tmp / "removed"))
                result["documents"] = kept = kept_documents(result, inputs, gone)
                table = "documents"
                self._write(spec, "documents", kept, tmp / "documents", stage_cfg)
                locations["documents"] = self.folder.root / name / "documents"
        except ThresherError:
            raise
        except Exception as exc:
            raise _as_stage_error(name, exc, table) from exc
        return tmp, result, stats, locations

    def _try_reuse(self, name: str, spec, fp: str, dest: Path) -> StageRecord | None:
        if not self.folder.resume or name in self.force or not (dest / STAGE_FILE).exists():
            return None
        try:
            stored = json.loads((dest / STAGE_FILE).read_text())
        except (OSError, ValueError):
            return None
        if stored.get("fingerprint") != fp:
            return None
        locations = {t: self.folder.root / info["path"] for t, info in stored["tables"].items()}
        for t, loc in locations.items():
            problem = verify_table(loc, stored["tables"][t])
            if problem:
                log.warning("stage %s: not reusing finished output (%s/%s: %s); recomputing", name, name, t, problem)
                return None
        rec = StageRecord(**{**stored, "reused": True})
        log.info("stage %s: reusing finished output (fingerprint %s)", name, fp[:12])
        self._adopt(name, rec, locations)
        return rec

    def _adopt(self, name: str, rec: StageRecord, locations: dict[str, Path]) -> None:
        for t, loc in locations.items():
            if t in schemas.TABLES and t not in ("removed", "rejected"):
                self.tables[t] = loc
                self.rows[t] = rec.tables[t]["rows"]
                self.fingerprints[t] = rec.fingerprint
        self.records[name] = rec
        self.write_manifest("running")

    def _reason_counts(self, path: Path, rows: int) -> dict[str, int]:
        if rows == 0:
            return {}
        # The run folder is local (its footers are read the same way): one column read by pyarrow,
        # not a Spark job.
        import pyarrow.dataset as ds

        counts = ds.dataset(str(path), format="parquet").to_table(columns=["reason"]).column("reason").value_counts()
        return {r["values"]: int(r["counts"]) for r in sorted(counts.to_pylist(), key=lambda r: r["values"])}

    # ----------------------------------------------------------------------------- manifest
    def accounting(self) -> dict[str, Any]:
        ingest = self.records.get("ingest")
        if ingest is None:
            return {}
        removed: dict[str, int] = {}
        for rec in self.records.values():
            for reason, n in rec.removed.items():
                key = f"{rec.stage}:{reason}"
                removed[key] = removed.get(key, 0) + n
        kept = self.rows.get("documents", 0)
        rejected = sum(ingest.rejected.values())
        rows_in = ingest.rows_in
        return {
            "rows_in": rows_in,
            "kept": kept,
            "removed": removed,
            "rejected": dict(ingest.rejected),
            "closes": rows_in == kept + sum(removed.values()) + rejected,
        }

    def write_manifest(self, status: str) -> dict:
        manifest = self.manifest(status)
        self.folder.write_json(self.folder.root / MANIFEST, manifest)
        return manifest

    def manifest(self, status: str) -> dict:
        return {
            "thresher": __version__,
            "status": status,
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.started)),
            "wall_s": round(time.time() - self.started, 3),
            "config": config_json(self.cfg),
            "versions": package_versions(),
            "spark": {"master": self.spark.sparkContext.master, "version": self.spark.version,
                      "default_parallelism": self.spark.sparkContext.defaultParallelism},
            "inputs": self.input_fingerprint,
            "stages": {n: r.to_json() for n, r in self.records.items()},
            "accounting": self.accounting(),
        }


_NO_SPACE = ("No space left on device", "ENOSPC", "Disk quota exceeded")
_PY_ERROR = re.compile(r"^\s*(?:[\w.]+\.)?(\w+(?:Error|Exception|Invalid)): (.+)$")


def _as_stage_error(stage: str, exc: Exception, table: str | None = None) -> Exception:
    """Spark wraps user-caused failures (bad files, bad rows, a full disk) in long JVM and
    Python-worker traces: keep one line that names what failed and why."""
    msg = str(exc).strip()
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC or any(m in msg for m in _NO_SPACE):
        where = f"{stage}/{table}" if table else stage
        return StageError(f"no space left on device while writing {where}")
    for marker in ("ThresherError: ", "InputError: ", "StageError: ", "SchemaError: ", "OutputError: "):
        if marker in msg:
            line = msg.split(marker, 1)[1].splitlines()[0]
            return StageError(f"stage {stage}: {line}")
    name = type(exc).__name__
    if name in ("AnalysisException", "Py4JJavaError", "PythonException", "SparkRuntimeException",
                "IllegalArgumentException", "SparkException"):
        # An error raised in a Python worker: its own last line (type and reason) says more than
        # Spark's "An exception was thrown from the Python worker".
        py = [m for m in map(_PY_ERROR.match, msg.splitlines()) if m]
        if "Python worker" in msg and py:
            first = f"{py[-1].group(1)}: {py[-1].group(2).strip()}"
        else:
            first = next((ln for ln in msg.splitlines() if ln.strip()), name)
        return StageError(f"stage {stage}: {first[:300]}")
    return exc
