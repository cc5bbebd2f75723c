"""Bad input through the real CLI: one clear line, a non-zero exit, no traceback unless --debug,
nothing half-written. Cases that need Spark run in-process through the same code path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from thresher.schemas.errors import InputError, OutputError, ThresherError

from conftest import DEMO

# The CLI or a whole flow, end to end (a Spark session, often Prefect or a subprocess).
pytestmark = pytest.mark.integration

THRESHER = str(Path(sys.executable).parent / "thresher")


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1"}
    return subprocess.run([THRESHER, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


def one_line_error(p: subprocess.CompletedProcess, *needles: str) -> str:
    assert p.returncode == 2, (p.returncode, p.stderr[-2000:])
    lines = [ln for ln in p.stderr.splitlines() if ln.startswith("thresher: error:")]
    assert len(lines) == 1, p.stderr[-2000:]
    assert "Traceback" not in p.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def cfg_file(tmp_path):
    def make(**over) -> Path:
        data = {"input": [str(DEMO)], "stages": ["ingest", "export"], **over}
        p = tmp_path / "c.yaml"
        p.write_text(json.dumps(data))
        return p

    return make


def test_nonexistent_input(tmp_path, cfg_file):
    out = tmp_path / "out"
    p = cli("run", str(cfg_file()), "--input", str(tmp_path / "nope.parquet"), "--output", str(out))
    one_line_error(p, "nope.parquet", "no such file or folder")
    assert not out.exists()


def test_debug_shows_traceback(tmp_path, cfg_file):
    p = cli("--debug", "run", str(cfg_file()), "--input", str(tmp_path / "nope"), "--output", str(tmp_path / "o"))
    assert p.returncode == 2 and "Traceback" in p.stderr and "no such file or folder" in p.stderr


def test_empty_folder(tmp_path, cfg_file):
    (tmp_path / "empty").mkdir()
    p = cli("run", str(cfg_file()), "--input", str(tmp_path / "empty"), "--output", str(tmp_path / "out"))
    one_line_error(p, "empty", "holds no .parquet or .jsonl")
    assert not (tmp_path / "out").exists()


def test_corrupt_parquet(tmp_path, cfg_file):
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"PAR1 this is not really parquet")
    p = cli("run", str(cfg_file()), "--input", str(bad), "--output", str(tmp_path / "out"))
    one_line_error(p, "bad.parquet", "not a readable Parquet file")
    assert not (tmp_path / "out").exists()


def test_missing_text_column(tmp_path, cfg_file):
    f = tmp_path / "t.parquet"
    pq.write_table(pa.table({"id": ["a"], "body": ["x"]}), f)
    p = cli("run", str(cfg_file()), "--input", str(f), "--output", str(tmp_path / "out"))
    one_line_error(p, "t.parquet", "text column 'text' not found")


def test_text_of_wrong_type(tmp_path, cfg_file):
    f = tmp_path / "t.parquet"
    pq.write_table(pa.table({"id": ["a"], "text": [3]}), f)
    p = cli("run", str(cfg_file()), "--input", str(f), "--output", str(tmp_path / "out"))
    one_line_error(p, "t.parquet", "column 'text' has type int64, expected string")


def test_unwritable_output(tmp_path, cfg_file):
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a folder")
    p = cli("run", str(cfg_file()), "--output", str(blocker / "out"))
    one_line_error(p, "not writable")
    assert blocker.read_text() == "a file, not a folder"


def test_config_typo(tmp_path):
    c = tmp_path / "c.yaml"
    c.write_text(f"input: {DEMO}\nexport:\n  rows_per_fiel: 10\n")
    p = cli("run", str(c), "--output", str(tmp_path / "out"))
    one_line_error(p, "export.rows_per_fiel: unknown key; did you mean rows_per_file?")


def test_bad_set_value(tmp_path, cfg_file):
    p = cli("run", str(cfg_file()), "--output", str(tmp_path / "o"), "--set", "export.row_group_size=-3")
    one_line_error(p, "export.row_group_size")


def test_impossible_stage_order(tmp_path, cfg_file):
    p = cli("run", str(cfg_file(stages=["export", "ingest"])), "--output", str(tmp_path / "o"))
    one_line_error(p, "first stage must be ingest")


def test_output_inside_input_folder(tmp_path, cfg_file):
    src = tmp_path / "src"
    src.mkdir()
    pq.write_table(pq.read_table(DEMO).slice(0, 10), src / "d.parquet")
    p = cli("run", str(cfg_file()), "--input", str(src), "--output", str(src / "out"))
    one_line_error(p, "inside the input")
    assert sorted(x.name for x in src.iterdir()) == ["d.parquet"]


def test_non_empty_foreign_output_refused(tmp_path, cfg_file):
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    p = cli("run", str(cfg_file()), "--output", str(out), "--overwrite")
    one_line_error(p, "holds no thresher run")
    assert (out / "precious.txt").read_text() == "keep me"


def test_previous_run_refused_then_overwritten_keeping_foreign_files(run_curate, tmp_path):
    out = tmp_path / "prev"
    cfg = {"input": [str(DEMO)], "stages": ["ingest", "export"]}
    run_curate(cfg, output=out)
    (out / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="holds a previous run; pass --overwrite"):
        run_curate(cfg, output=out)
    manifest, _ = run_curate(cfg, output=out, overwrite=True)
    assert manifest["status"] == "complete"
    assert (out / "notes.txt").read_text() == "mine"


def test_previous_run_refused_by_cli(run_curate, tmp_path, cfg_file):
    out = tmp_path / "prev"
    run_curate({"input": [str(DEMO)], "stages": ["ingest"]}, output=out)
    before = sorted(p.name for p in out.iterdir())
    p = cli("run", str(cfg_file()), "--output", str(out))
    one_line_error(p, "holds a previous run")
    assert sorted(p.name for p in out.iterdir()) == before


def test_zero_row_input(run_curate, tmp_path):
    f = tmp_path / "z.parquet"
    pq.write_table(pa.table({"id": pa.array([], pa.string()), "text": pa.array([], pa.string())}), f)
    manifest, out = run_curate({"input": [str(f)], "stages": ["ingest", "export"]})
    assert manifest["accounting"] == {"rows_in": 0, "kept": 0, "removed": {}, "rejected": {}, "closes": True}
    t = pq.read_table(out / "dataset")
    assert t.num_rows == 0 and t.schema.field("text").type == pa.string()


def test_huge_single_document_and_mixed_scripts(run_curate, tmp_path):
    big = ("lorem ipsum dolor sit amet " * 2_000_000)[:50_000_000]
    f = tmp_path / "big.jsonl"
    f.write_text("\n".join(json.dumps({"id": i, "text": t}) for i, t in enumerate(
        [big, "Ünïcödé 日本語のテキスト русский текст 🚀", "tab\tand\x07bell control chars"])) + "\n")
    manifest, out = run_curate({"input": [str(f)], "stages": ["ingest", "export"]})
    assert manifest["accounting"]["kept"] == 3 and manifest["accounting"]["closes"]
    lens = sorted(len(t) for t in pq.read_table(out / "dataset").column("text").to_pylist())
    assert lens[-1] == 50_000_000


def test_ids_of_mixed_types_are_strings(run_curate, tmp_path):
    f = tmp_path / "ids.jsonl"
    f.write_text('{"id": 1, "text": "a"}\n{"id": "1", "text": "b"}\n{"id": null, "text": "c"}\n')
    manifest, out = run_curate({"input": [str(f)], "stages": ["ingest"]})
    # 1 and "1" are the same id once ids are strings: the later one is a duplicate.
    assert manifest["stages"]["ingest"]["rejected"] == {"duplicate_id": 1, "null_id": 1}


def test_errors_are_thresher_errors():
    # The CLI turns exactly these into one line; anything else is a bug and keeps its traceback.
    assert issubclass(InputError, ThresherError) and issubclass(OutputError, ThresherError)


def test_mixed_schemas_across_input_files(tmp_path, cfg_file):
    src = tmp_path / "src"
    src.mkdir()
    pq.write_table(pa.table({"id": ["a"], "text": ["t"], "n": [1]}), src / "a.parquet")
    pq.write_table(pa.table({"id": ["b"], "text": ["t"], "n": ["one"]}), src / "b.parquet")
    p = cli("run", str(cfg_file()), "--input", str(src), "--output", str(tmp_path / "out"))
    one_line_error(p, "b.parquet", "column 'n'", "mixed schemas")
    assert not (tmp_path / "out").exists()
