"""Ingest, export, config and the runner's accounting on local Spark."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from thresher.flows.config import load_config
from thresher.schemas.errors import ConfigError, InputError

from conftest import DEMO


def _jsonl(path: Path, rows: list, gz: bool = False) -> Path:
    lines = "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)
    if gz:
        with gzip.open(path, "wt") as fh:
            fh.write(lines)
    else:
        path.write_text(lines)
    return path


def read_dataset(out: Path) -> pa.Table:
    return ds.dataset(out / "dataset", format="parquet").to_table()


def test_demo_ingest_export_roundtrip(run_curate):
    manifest, out = run_curate({"input": [str(DEMO)], "stages": ["ingest", "export"],
                                "export": {"rows_per_file": 1500, "row_group_size": 400}})
    src = pq.read_table(DEMO)
    got = read_dataset(out)
    assert got.num_rows == src.num_rows
    assert sorted(got.column("id").to_pylist()) == sorted(src.column("id").to_pylist())
    # User columns pass through with their types.
    assert got.schema.field("installed_size_kb").type == pa.int64()
    files = sorted((out / "dataset").glob("part-*.parquet"))
    assert len(files) == 3  # ceil(4053 / 1500)
    for f in files:
        md = pq.ParquetFile(f).metadata
        assert all(md.row_group(i).num_rows <= 400 for i in range(md.num_row_groups))
        ids = pq.read_table(f, columns=["id"]).column("id").to_pylist()
        assert ids == sorted(ids)
    acc = manifest["accounting"]
    assert acc["closes"] and acc["rows_in"] == acc["kept"] == src.num_rows
    assert "\n# thresher dataset\n" in (out / "README.md").read_text()
    assert {p.suffix for p in (out / "dataset").iterdir()} == {".parquet"}
    assert json.loads((out / "manifest.json").read_text())["status"] == "complete"
    # Every stage's tables are readable where the manifest says they are.
    for st in manifest["stages"].values():
        for t in st["tables"].values():
            assert (out / t["path"]).is_dir()


def test_export_opens_with_polars_and_duckdb(run_curate):
    _, out = run_curate({"input": [str(DEMO)], "stages": ["ingest", "export"]})
    n = pq.read_metadata(DEMO).num_rows
    polars = pytest.importorskip("polars")
    assert polars.read_parquet(str(out / "dataset" / "*.parquet")).height == n
    duckdb = pytest.importorskip("duckdb")
    assert duckdb.sql(f"select count(*) from read_parquet('{out}/dataset/*.parquet')").fetchall()[0][0] == n


def test_jsonl_plain_gz_folder_glob_and_rejections(run_curate, tmp_path):
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    _jsonl(src / "a.jsonl", [
        {"text": "first document here", "lang": "en"},
        "{broken json",
        {"text": ""},
        {"text": None},
        {"text": 42},
        {"text": "second document", "lang": "de"},
        [1, 2],
    ])
    (src / "b.jsonl").write_bytes(b'{"text": "ok \xff bad byte"}\n{"text": "fine text"}\n')
    _jsonl(src / "sub" / "c.jsonl.gz", [{"text": "gzipped doc", "lang": "fr"}], gz=True)
    manifest, out = run_curate({"input": [str(src)], "stages": ["ingest", "export"]})
    got = read_dataset(out)
    assert sorted(got.column("text").to_pylist()) == sorted(
        ["first document here", "second document", "fine text", "gzipped doc"])
    # Derived ids: path relative to the input root + line number.
    assert set(got.column("id").to_pylist()) == {"a.jsonl:1", "a.jsonl:6", "b.jsonl:2", "sub/c.jsonl.gz:1"}
    rej = pq.read_table(out / "ingest" / "rejected").to_pylist()
    by_line = {(r["source"], r["row"]): r["reason"] for r in rej}
    assert by_line == {("a.jsonl", 2): "bad_json", ("a.jsonl", 3): "empty_text", ("a.jsonl", 4): "null_text",
                       ("a.jsonl", 5): "text_not_string", ("a.jsonl", 7): "not_an_object", ("b.jsonl", 1): "not_utf8"}
    acc = manifest["accounting"]
    assert acc["rows_in"] == 10 and acc["kept"] == 4 and sum(acc["rejected"].values()) == 6 and acc["closes"]

    # A glob picks only what it matches.
    m2, _ = run_curate({"input": [str(src / "*.jsonl")], "stages": ["ingest"]}, output=tmp_path / "run2")
    assert m2["stages"]["ingest"]["kept"] == 3


def test_duplicate_ids_rejected_or_fail(run_curate, tmp_path):
    f = tmp_path / "d.jsonl"
    _jsonl(f, [{"id": "x", "text": "one"}, {"id": "y", "text": "two"}, {"id": "x", "text": "three"}])
    manifest, out = run_curate({"input": [str(f)], "stages": ["ingest"]})
    assert manifest["stages"]["ingest"]["rejected"] == {"duplicate_id": 1}
    assert manifest["stages"]["ingest"]["stats"]["duplicate_ids"] == {"count": 1, "examples": ["x"]}
    docs = pq.read_table(out / "ingest" / "documents").to_pylist()
    assert {(d["id"], d["text"]) for d in docs} == {("x", "one"), ("y", "two")}  # the first one wins
    with pytest.raises(InputError, match="repeat an earlier id"):
        run_curate({"input": [str(f)], "stages": ["ingest"], "ingest": {"on_duplicate_id": "fail"}},
                   output=tmp_path / "fail")
    assert not (tmp_path / "fail").exists()


def test_parquet_without_id_derives_stable_ids(run_curate, tmp_path):
    t = pa.table({"body": ["alpha beta", "gamma delta", None]})
    pq.write_table(t, tmp_path / "p.parquet")
    manifest, out = run_curate({"input": [str(tmp_path / "p.parquet")], "stages": ["ingest", "export"],
                                "ingest": {"text_column": "body"}}, output=tmp_path / "o")
    got = read_dataset(out)
    assert sorted(got.column("id").to_pylist()) == ["p.parquet#0", "p.parquet#1"]
    assert manifest["stages"]["ingest"]["rejected"] == {"null_text": 1}


def test_mixed_schemas_across_files_named(tmp_path):
    pq.write_table(pa.table({"id": ["a"], "text": ["t"], "n": [1]}), tmp_path / "a.parquet")
    pq.write_table(pa.table({"id": ["b"], "text": ["t"], "n": ["one"]}), tmp_path / "b.parquet")
    with pytest.raises(InputError, match=r"b\.parquet: column 'n' has type string, but .*a\.parquet has int64"):
        load_and_check(tmp_path)


def load_and_check(path: Path):
    from thresher.stages.ingest import Config, list_files, unified_schema

    return unified_schema(list_files([str(path)]), Config())


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"export\.rows_per_fle: unknown key; did you mean rows_per_file\?"):
        load_config(raw={"export": {"rows_per_fle": 3}})
    with pytest.raises(ConfigError, match=r"export\.rows_per_file: .*greater than or equal to 1"):
        load_config(raw={"export": {"rows_per_file": 0}})
    with pytest.raises(ConfigError, match=r"stages\[1\]: unknown stage 'exprot'; did you mean export\?"):
        load_config(raw={"stages": ["ingest", "exprot"]})
    with pytest.raises(ConfigError, match="first stage must be ingest"):
        load_config(raw={"stages": ["export"]})
    cfg = load_config("demo.yaml", {"export": {"rows_per_file": 7}, "seed": 3})
    assert cfg.export.rows_per_file == 7 and cfg.seed == 3
    assert Path(cfg.input[0]).is_absolute() and Path(cfg.input[0]).exists()


def test_set_overrides_parse_types():
    from thresher.flows.config import parse_overrides

    assert parse_overrides(["sample.budget=100", "a.b.c=x", "f=0.5", "l=[1,2]"]) == {
        "sample": {"budget": 100}, "a": {"b": {"c": "x"}}, "f": 0.5, "l": [1, 2]}
    with pytest.raises(ConfigError):
        parse_overrides(["nokey"])


def test_schema_validation_names_file_column_types(tmp_path):
    from thresher import schemas

    bad = pa.schema([("id", pa.string()), ("vector", pa.list_(pa.float64()))])
    with pytest.raises(schemas.SchemaError, match=r"f\.parquet: column 'vector' has type list<item: double>, expected list<float32>"):
        schemas.validate("embeddings", bad, "f.parquet")
    with pytest.raises(schemas.SchemaError, match="column 'text' missing"):
        schemas.validate("documents", pa.schema([("id", pa.string())]), "x")
    ok = pa.schema([("id", pa.large_string()), ("vector", pa.list_(pa.float32(), 8))])
    schemas.validate("embeddings", ok, "y")


def test_bench_record_names_a_blas_that_fell_back_to_sse3(monkeypatch):
    """A benchmark's hardware record warns when an OpenBLAS took its Prescott kernels on an AVX2
    CPU (faiss's copy did on a virtual Xeon and ran 5x slower), and says nothing otherwise."""
    import threadpoolctl

    from benchmarks import common
    from thresher.kernels import backend

    monkeypatch.setattr(backend, "cpu_info", lambda: ("Intel(R) Xeon(R) Processor", frozenset({"avx2", "fma"})))
    pools = [{"user_api": "blas", "filepath": "/x/libopenblaso-abc.so", "architecture": "Prescott", "num_threads": 2}]
    monkeypatch.setattr(threadpoolctl, "threadpool_info", lambda: pools)
    hw = common.hardware()
    assert hw["cpu_class"] == "AVX2" and "libopenblaso:Prescott:2" in hw["warnings"][0]
    assert "OPENBLAS_CORETYPE" in hw["warnings"][0]
    pools[0]["architecture"] = "Haswell"
    assert "warnings" not in common.hardware()
