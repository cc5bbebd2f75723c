"""What thresher promises about files it does not own (issue: reliability).

Each test plants the hostile situation a user (or another local user) could create and checks
that nothing outside the run's own folders changes.
"""

from __future__ import annotations

from thresher.stages.base import run_stage
import hashlib
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def tree_digest(root: Path) -> str:
    """Names, kinds, sizes and contents of everything under root (symlinks not followed)."""
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            p = Path(dirpath) / name
            h.update(str(p.relative_to(root)).encode())
            if p.is_symlink():
                h.update(b"L" + os.readlink(p).encode())
            elif p.is_file():
                h.update(b"F" + p.read_bytes())
    return h.hexdigest()


def sentinel_tree(root: Path) -> Path:
    """A folder of 'precious' data, with entries old enough for any age-based sweep."""
    (root / "old-project" / "src").mkdir(parents=True)
    (root / "old-project" / "src" / "main.py").write_text("print('precious')\n")
    (root / "notes.txt").write_text("do not delete\n")
    old = time.time() - 3 * 86400
    for p in [root / "old-project" / "src" / "main.py", root / "old-project" / "src", root / "old-project",
              root / "notes.txt"]:
        os.utime(p, (old, old), follow_symlinks=False)
    return root


# ------------------------------------------------------------------------- scratch folders
def test_private_dir_is_new_and_closed_to_other_users(tmp_path):
    from thresher.stages.scratch import private_dir

    a, b = private_dir("x-", tmp_path), private_dir("x-", tmp_path)
    assert a != b and a.parent == tmp_path
    assert (a.stat().st_mode & 0o777) == 0o700


def test_owned_dir_refuses_a_symlink(tmp_path):
    from thresher.stages.scratch import owned_dir

    victim = sentinel_tree(tmp_path / "victim")
    (tmp_path / "planted").symlink_to(victim)
    assert not owned_dir(tmp_path / "planted")
    assert owned_dir(tmp_path / "fresh") and (tmp_path / "fresh").is_dir()


def test_remove_tree_never_follows_a_symlink(tmp_path):
    from thresher.stages.scratch import remove_tree

    victim = sentinel_tree(tmp_path / "victim")
    before = tree_digest(victim)
    scratch = tmp_path / "scratch"
    (scratch / "sub").mkdir(parents=True)
    (scratch / "sub" / "link").symlink_to(victim)
    (scratch / "file").write_text("x")
    remove_tree(scratch)
    assert not scratch.exists()
    (tmp_path / "top-link").symlink_to(victim)
    remove_tree(tmp_path / "top-link")
    assert not (tmp_path / "top-link").is_symlink()
    assert tree_digest(victim) == before


def test_cluster_on_spark_never_touches_a_planted_symlink(spark, tmp_path):
    """Case 1: the cluster stage used to keep k-means bounds under a fixed
    `<tmp>/thresher-kmeans-bounds` and sweep entries older than an hour; a symlink planted there
    made it delete the target's contents."""
    from thresher.stages import cluster

    victim = sentinel_tree(tmp_path / "victim")
    before = tree_digest(victim)
    fixed = Path(tempfile.gettempdir()) / "thresher-kmeans-bounds"
    aside = None
    if fixed.exists() or fixed.is_symlink():  # an old version's folder: keep it, restore it after
        aside = fixed.with_name(f"thresher-kmeans-bounds.aside-{os.getpid()}")
        os.replace(fixed, aside)
    fixed.symlink_to(victim)
    try:
        rng = np.random.default_rng(0)
        X = rng.normal(size=(600, 8)).astype(np.float32)
        ids = [f"d{i:04d}" for i in range(len(X))]
        path = tmp_path / "emb.parquet"
        pq.write_table(pa.table({"id": ids, "vector": pa.array(list(X), pa.list_(pa.float32()))}), path)
        cfg = cluster.Config(levels=[{"n_clusters": 8, "n_iters": 4, "n_resampling_steps": 1, "sample_size": 4}],
                             seed=3, in_memory_max_rows=0, block_rows=100)
        res = run_stage(spark, cluster, {"embeddings": spark.read.parquet(str(path)).repartition(3)}, cfg)
        assert res["clusters"].count() == len(X)
        # The bounds were kept between passes (so the scratch folder was used) ...
        assert res["stats"]["level1_screened_share"][1] < 1.0
    finally:
        fixed.unlink()
        if aside is not None:
            os.replace(aside, fixed)
    # ... and nothing outside it changed.
    assert tree_digest(victim) == before


# =============================================================================== the CLI
# Cases 2-8 of the issue, each against the real CLI where the case is about the CLI. Inputs are
# small (a slice of the shipped demo data) and stage lists ingest+export, to keep them quick.
import json  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402

from conftest import DEMO  # noqa: E402
from thresher.schemas.errors import ConfigError, OutputError  # noqa: E402

THRESHER = str(Path(sys.executable).parent / "thresher")
INTERRUPTED = "thresher: interrupted; rerun the same command to resume"


def cli(*args: str, timeout: float = 420) -> subprocess.CompletedProcess:
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1"}
    return subprocess.run([THRESHER, *args], capture_output=True, text=True, env=env, timeout=timeout)


def start(*args: str) -> subprocess.Popen:
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1"}
    return subprocess.Popen([THRESHER, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)


def one_line(p, code: int, *needles: str, prefix: str = "thresher: error:") -> str:
    """Exit `code`, exactly one line starting with `prefix` holding `needles`, no traceback."""
    err = p.stderr
    assert p.returncode == code, (p.returncode, err[-3000:])
    lines = [ln for ln in err.splitlines() if ln.startswith(prefix)]
    assert len(lines) == 1, err[-3000:]
    for bad in ("Traceback", "py4j", "Py4J", "Aborted!", "Exception in task", "An exception was thrown"):
        assert bad not in err, err[-3000:]
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def wait_for(pred, proc: subprocess.Popen | None = None, timeout: float = 300, step: float = 0.05) -> bool:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if pred():
            return True
        if proc is not None and proc.poll() is not None:
            return pred()
        time.sleep(step)
    return False


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(30)


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    """600 rows of the demo data in a folder of its own."""
    d = tmp_path_factory.mktemp("small")
    pq.write_table(pq.read_table(DEMO).slice(0, 600), d / "part.parquet")
    return d


def cfg_file(tmp_path: Path, inputs: list, stages=("ingest", "export"), **extra) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(json.dumps({"input": [str(i) for i in inputs], "stages": list(stages), **extra}))
    return p


def manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def finished_run(run_curate, out: Path, inputs: list, stages=("ingest", "export")) -> dict:
    m, _ = run_curate({"input": [str(i) for i in inputs], "stages": list(stages)}, output=out)
    assert m["status"] == "complete"
    return m


# ------------------------------------------------------------------------- case 2: the lock
def test_a_second_run_on_a_locked_folder_fails_naming_the_holder(run_curate, small, tmp_path):
    """Case 2: two runs on one folder destroyed each other's results (a py4j error, or a silent
    resume of a folder another live run was writing). The folder is locked for the life of a run."""
    from thresher.flows.runfolder import LOCK, RunFolder

    sentinel = sentinel_tree(tmp_path / "sentinel")
    s0 = tree_digest(sentinel)
    out = tmp_path / "out"
    finished_run(run_curate, out, [small])
    # Another run holds the folder: the same lock a live `thresher run` takes, from this process.
    holder = RunFolder(out, resume=True)
    holder.lock()
    try:
        before = tree_digest(out)
        p = cli("run", str(cfg_file(tmp_path, [small])), "--output", str(out), "--resume", "--no-prefect")
        one_line(p, 2, "another thresher run is writing this folder", f"pid {os.getpid()}")
        assert tree_digest(out) == before
    finally:
        holder.unlock()
    assert json.loads((out / LOCK).read_text())["pid"] == os.getpid()
    assert manifest(out)["status"] == "complete"
    assert tree_digest(sentinel) == s0


@pytest.mark.integration  # the CLI in a subprocess
def test_a_failed_run_removes_only_what_it_created(small, tmp_path):
    """Case 2: Ctrl-C on a run that had finished nothing used to delete the whole output folder
    (another run's result included). It now takes away only what it created itself."""
    sentinel = sentinel_tree(tmp_path / "sentinel")
    s0 = tree_digest(sentinel)
    out = tmp_path / "out"
    big = tmp_path / "big"
    big.mkdir()
    pq.write_table(pa.concat_tables([pq.read_table(DEMO)] * 4), big / "d.parquet")
    proc = start("run", str(cfg_file(tmp_path, [big])), "--output", str(out), "--no-prefect")
    try:
        # The run has created the folder and written its first manifest (Spark is up, ingest runs).
        assert wait_for(lambda: (out / "manifest.json").exists(), proc, step=0.02), proc.communicate()[1][-2000:]
        assert not (out / "ingest").exists(), "ingest finished before the test could interrupt it"
        (out / "precious.txt").write_text("not thresher's")
        os.kill(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        stop(proc)
    p = subprocess.CompletedProcess(proc.args, proc.returncode, "", err)
    one_line(p, 130, prefix=INTERRUPTED)
    assert sorted(x.name for x in out.iterdir()) == ["precious.txt"]
    assert (out / "precious.txt").read_text() == "not thresher's"
    assert tree_digest(sentinel) == s0


# ------------------------------------------------------------------------- case 3: --overwrite
def test_overwrite_deletes_only_fixed_names_never_through_a_symlink(run_curate, small, tmp_path):
    """Case 3: --overwrite deleted the folders a (hand-edited) manifest named, and crashed with a
    traceback when dataset/ was a symlink."""
    sentinel = sentinel_tree(tmp_path / "sentinel")
    s0 = tree_digest(sentinel)
    out = tmp_path / "out"
    finished_run(run_curate, out, [small])
    (out / "mine").mkdir()
    (out / "mine" / "thesis.tex").write_text("years of work")
    m = manifest(out)
    m["stages"]["mine"] = m["stages"]["ingest"]  # a hand-edited manifest names a user folder
    (out / "manifest.json").write_text(json.dumps(m))
    import shutil

    shutil.rmtree(out / "dataset")
    (out / "dataset").symlink_to(sentinel)  # and dataset/ points at the user's data
    m, _ = run_curate({"input": [str(small)], "stages": ["ingest", "export"]}, output=out, overwrite=True)
    assert m["status"] == "complete"
    assert (out / "mine" / "thesis.tex").read_text() == "years of work"
    assert tree_digest(sentinel) == s0
    assert (out / "dataset").is_dir() and not (out / "dataset").is_symlink()
    assert manifest(out)["status"] == "complete" and "mine" not in manifest(out)["stages"]


def test_overwrite_that_fails_half_way_keeps_the_manifest_and_says_one_line(run_curate, small, tmp_path):
    """Case 3: the manifest was deleted first, so an overwrite that failed half-way left a
    folder every later run refused as foreign. Now the manifest goes last, the error is one line."""
    out = tmp_path / "out"
    finished_run(run_curate, out, [small])
    stuck = out / "export" / "_stage.json"
    undo = _make_undeletable(stuck)
    cfg = {"input": [str(small)], "stages": ["ingest", "export"]}
    try:
        with pytest.raises(OutputError, match=r"_stage.json: cannot remove the previous run \(Operation not permitted|Permission denied"):
            run_curate(cfg, output=out, overwrite=True)
        assert manifest(out)["status"] == "complete"  # still a thresher run folder
    finally:
        undo()
    # ... which a later --overwrite replaces normally.
    m, _ = run_curate(cfg, output=out, overwrite=True)
    assert m["status"] == "complete"


def _make_undeletable(path: Path):
    """A real removal failure: the immutable attribute as root, a read-only folder otherwise."""
    if os.geteuid() == 0:
        subprocess.run(["chattr", "+i", str(path)], check=True)
        return lambda: subprocess.run(["chattr", "-i", str(path)], check=True)
    mode = path.parent.stat().st_mode
    path.parent.chmod(0o500)
    return lambda: path.parent.chmod(mode)


# ------------------------------------------------------------------------- case 4: demo
def test_demo_refuses_a_finished_run_that_is_not_a_demo(run_curate, small, tmp_path):
    """Case 4: `thresher demo --output X` replaced a finished non-demo run at X."""
    from thresher.flows.cli import _is_demo_run

    out = tmp_path / "out"
    finished_run(run_curate, out, [small])
    before = tree_digest(out)
    p = cli("demo", "--output", str(out), "--no-prefect")
    one_line(p, 2, "holds a previous run; pass --overwrite")
    assert tree_digest(out) == before
    assert not _is_demo_run(str(out))
    # A run of the shipped demo data is the demo's own, and the demo replaces it.
    m = manifest(out)
    m["config"]["input"] = [str(DEMO)]
    (out / "manifest.json").write_text(json.dumps(m))
    assert _is_demo_run(str(out))


# ------------------------------------------------------------------------- case 5: overlap
def _overlap_cases(tmp_path: Path, small: Path, run_curate):
    src = tmp_path / "in"
    src.mkdir()
    pq.write_table(pq.read_table(small / "part.parquet").slice(0, 50), src / "d.parquet")
    (tmp_path / "other").mkdir()
    (tmp_path / "link").symlink_to(src)
    return {
        "dotdot": ([str(src)], str(tmp_path / "other" / ".." / "in" / "out"), "inside the input"),
        "symlink": ([str(src)], str(tmp_path / "link" / "out"), "inside the input"),
        "glob": ([str(src / "*")], str(src / "out"), "matched by the input glob"),
    }


def test_output_and_input_may_not_overlap_however_spelled(run_curate, small, tmp_path):
    """Case 5: `other/../in/out`, a symlink into the input and a glob input got through (the run
    then ingested its own manifest.json); `--input run/dataset --output run --overwrite`
    deleted its own input. Both sides are resolved, before anything is written."""
    cases = _overlap_cases(tmp_path, small, run_curate)
    run = tmp_path / "run"
    finished_run(run_curate, run, [small])
    cases["input in output"] = ([str(run / "dataset")], str(run), "is inside the output folder")
    for name, (inputs, output, needle) in cases.items():
        args = ["run", str(cfg_file(tmp_path / "other", inputs)), "--output", output, "--no-prefect"]
        before = tree_digest(tmp_path)  # the config file just written is the test's own
        p = cli(*args, "--overwrite") if name == "input in output" else cli(*args)
        one_line(p, 2, needle)
        assert tree_digest(tmp_path) == before, name
    assert manifest(run)["status"] == "complete" and any((run / "dataset").glob("*.parquet"))


# ------------------------------------------------------------------------- case 6: resume
def test_resume_sees_an_edit_that_keeps_size_and_mtime(run_curate, tmp_path):
    """Case 6: input fingerprints were path + size + mtime; an edit keeping both was resumed."""
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"id": f"d{i}", "text": f"document number {i} ok"}) + "\n" for i in range(40)))
    cfg = {"input": [str(src)], "stages": ["ingest", "export"]}
    out = tmp_path / "out"
    m0, _ = run_curate(cfg, output=out)
    assert "whole file" in m0["inputs"]["files"][0]["hashed"]
    st = src.stat()
    src.write_bytes(src.read_bytes().replace(b"number 7 ok", b"number 7 KO"))
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert src.stat().st_size == st.st_size and src.stat().st_mtime_ns == st.st_mtime_ns
    m1, _ = run_curate(cfg, output=out, resume=True)
    assert not m1["stages"]["ingest"]["reused"] and not m1["stages"]["export"]["reused"]
    texts = set(pq.read_table(out / "dataset").column("text").to_pylist())
    assert "document number 7 KO" in texts and "document number 7 ok" not in texts


def test_content_hash_of_a_large_file_is_sampled_and_says_so(tmp_path):
    from thresher.stages import ingest

    f = tmp_path / "big.jsonl"
    f.write_bytes(b"x" * (ingest.FULL_HASH_BYTES + 5))
    a = ingest.content_hash(str(f))
    assert a["hashed"].startswith("sampled") and "mtime_ns" in a
    with open(f, "r+b") as fh:
        fh.seek(len(b"x") * (ingest.FULL_HASH_BYTES - 10))
        fh.write(b"y")
    assert ingest.content_hash(str(f))["sha256"] != a["sha256"]  # the last MiB is always read


def test_resume_recomputes_a_stage_whose_code_changed(run_curate, small, tmp_path, monkeypatch):
    """Case 6: the stage fingerprint hashed a static package version, so --resume after a code
    change reused what the old code wrote. It now holds a hash of the stage's own source."""
    from thresher.flows import codehash, runner

    import importlib.util

    files = set(codehash.code_files("thresher.stages.fuzzy_dedup"))
    own = Path(importlib.util.find_spec("thresher.stages.fuzzy_dedup").origin)
    assert own in files and {"minhash.py", "text.py"} <= {f.name for f in files}  # the stage and what it imports
    cfg = {"input": [str(small)], "stages": ["ingest", "export"]}
    out = tmp_path / "out"
    run_curate(cfg, output=out)
    real = runner.stage_code
    monkeypatch.setattr(runner, "stage_code", lambda mod: real(mod) + ("-edited" if mod.__name__.endswith(".export") else ""))
    m, _ = run_curate(cfg, output=out, resume=True)
    assert m["stages"]["ingest"]["reused"] and not m["stages"]["export"]["reused"]


def test_resume_with_fewer_stages_is_refused_not_reported_complete(run_curate, small, tmp_path):
    """Case 6: --resume with a shorter stage list reported `complete` beside a stale dataset/."""
    out = tmp_path / "out"
    finished_run(run_curate, out, [small])
    before = tree_digest(out)
    with pytest.raises(OutputError, match="export, dataset, which this run's stages"):
        run_curate({"input": [str(small)], "stages": ["ingest"]}, output=out, resume=True)
    assert tree_digest(out) == before


def test_truncated_file_in_a_finished_stage_is_recomputed(run_curate, small, tmp_path):
    """Case 6: a truncated file inside a finished stage crashed the resume with a traceback."""
    sentinel = sentinel_tree(tmp_path / "sentinel")
    s0 = tree_digest(sentinel)
    out = tmp_path / "out"
    finished_run(run_curate, out, [small])
    ref = {f.name: f.read_bytes() for f in (out / "dataset").glob("*.parquet")}
    part = sorted((out / "ingest" / "documents").glob("*.parquet"))[0]
    part.write_bytes(part.read_bytes()[: part.stat().st_size // 2])
    m, _ = run_curate({"input": [str(small)], "stages": ["ingest", "export"]}, output=out, resume=True)
    assert m["status"] == "complete" and not m["stages"]["ingest"]["reused"]
    assert {f.name: f.read_bytes() for f in (out / "dataset").glob("*.parquet")} == ref
    pq.read_table(out / "ingest" / "documents")
    assert tree_digest(sentinel) == s0


# ------------------------------------------------------------------------- case 7: bad input
def test_lone_surrogates_in_jsonl_are_rejected_rows_at_any_line(run_curate, tmp_path):
    """Case 7: a lone surrogate escape (valid JSON) in a text or an id was a traceback (and past
    line 1000 a failed run); it is a rejected row (not_utf8)."""
    src = tmp_path / "s.jsonl"
    lines = [json.dumps({"id": f"d{i}", "text": f"fine text {i}"}) for i in range(1200)]
    lines[2] = '{"id": "d2", "text": "bad \\ud800 text"}'
    lines[5] = '{"id": "\\udfff", "text": "bad id"}'
    lines[1100] = '{"id": "d1100", "text": "late \\ud800"}'
    lines[7] = '{"id": "d7", "text": "a real pair \\ud83d\\ude00 is fine"}'
    src.write_text("\n".join(lines) + "\n")
    m, out = run_curate({"input": [str(src)], "stages": ["ingest", "export"]})
    assert m["accounting"]["rejected"] == {"not_utf8": 3} and m["accounting"]["closes"]
    rej = pq.read_table(out / "ingest" / "rejected").to_pylist()
    assert sorted(r["row"] for r in rej) == [3, 6, 1101]
    assert all("surrogate" in r["detail"] for r in rej)
    assert "a real pair \U0001F600 is fine" in pq.read_table(out / "dataset").column("text").to_pylist()


@pytest.mark.integration  # the CLI in a subprocess
def test_corrupt_pages_behind_a_valid_footer_name_the_file_and_row_group(small, tmp_path):
    """Case 7: the only line was `stage ingest: An exception was thrown from the Python worker:`
    after ~50 lines of traces."""
    src = tmp_path / "in"
    src.mkdir()
    f = src / "broken.parquet"
    pq.write_table(pq.read_table(small / "part.parquet"), f, row_group_size=200, compression="zstd")
    meta = pq.ParquetFile(f).metadata
    col = meta.row_group(1).column(1)  # text, in the second row group
    start_at = col.data_page_offset
    data = bytearray(f.read_bytes())
    data[start_at: start_at + 64] = b"\xff" * 64
    f.write_bytes(bytes(data))
    pq.ParquetFile(f).metadata  # the footer still reads
    out = tmp_path / "out"
    p = cli("run", str(cfg_file(tmp_path, [src])), "--output", str(out), "--no-prefect")
    line = one_line(p, 2, "broken.parquet", "row group 1")
    assert len(p.stderr.splitlines()) < 15, p.stderr
    assert "not readable" in line
    assert not out.exists()


@pytest.mark.integration  # the CLI in a subprocess
def test_disk_full_is_one_line_and_a_failed_manifest(small, tmp_path):
    """Case 7: a full disk (a tiny tmpfs as the output) was a traceback, exit 1, a manifest stuck
    at `running` and a stray zero-byte temporary manifest. Done on a real 2 MiB tmpfs mounted in
    a private mount namespace (`unshare -m`, or `-rm` for a user without root): a first run
    finishes ingest, other data fills the disk to 48 KiB from full, and the resumed run's export
    meets the full disk."""
    import shutil

    if shutil.which("unshare") is None:
        pytest.fail("unshare (util-linux) is needed to mount a small tmpfs for this test")
    sentinel = sentinel_tree(tmp_path / "sentinel")
    s0 = tree_digest(sentinel)
    mnt = tmp_path / "small-disk"
    mnt.mkdir()
    r = tmp_path / "report"
    (tmp_path / "first").mkdir()
    c1 = cfg_file(tmp_path / "first", [small], stages=("ingest",))
    c2 = cfg_file(tmp_path, [small])
    fill = (f"import os; s = os.statvfs('{mnt}'); "
            f"open('{mnt}/filler', 'wb').write(b'0' * (s.f_bavail * s.f_frsize - 48 * 1024))")
    script = (
        f"mount -t tmpfs -o size=2m tmpfs {mnt} || exit 97\n"
        f"{THRESHER} run {c1} --output {mnt}/out --no-prefect 2> {r}.err1 || exit 98\n"
        f"{sys.executable} -c \"{fill}\" || exit 99\n"
        f"{THRESHER} run {c2} --output {mnt}/out --no-prefect --resume 2> {r}.err\n"
        f"rc=$?\n"
        f"ls -A {mnt}/out > {r}.ls; cp {mnt}/out/manifest.json {r}.json; stat -c %s {mnt}/filler > {r}.filler\n"
        f"exit $rc\n"
    )
    ns = ["unshare", "-m"] if os.geteuid() == 0 else ["unshare", "-rm"]
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1"}
    done = subprocess.run([*ns, "sh", "-c", script], env=env, timeout=600)
    assert done.returncode not in (97, 98, 99), (done.returncode, Path(f"{r}.err1").read_text()[-2000:]
                                                 if Path(f"{r}.err1").exists() else "")
    p = subprocess.CompletedProcess([], done.returncode, "", Path(f"{r}.err").read_text())
    one_line(p, 2, "no space left on device while writing export/dataset")
    listing = Path(f"{r}.ls").read_text().split()
    # The first run's files, and no temporary file, no .tmp
    assert sorted(listing) == [".thresher.lock", "README.md", "ingest", "manifest.json", "report.html"], listing
    m = json.loads(Path(f"{r}.json").read_text())
    assert m["status"] == "failed" and "no space left on device" in m["error"]
    assert m["stages"]["ingest"]["reused"]  # the finished stage stays, for the rerun
    assert int(Path(f"{r}.filler").read_text()) > 1_000_000  # the other data on the disk is intact
    assert tree_digest(sentinel) == s0


# ------------------------------------------------------------------------- case 8: Ctrl-C
@pytest.mark.integration  # the CLI in a subprocess
def test_ctrl_c_is_one_line_exit_130_and_the_rerun_resumes(tmp_path):
    """Case 8: Ctrl-C printed py4j tracebacks and `Aborted!`."""
    sentinel = sentinel_tree(tmp_path / "sentinel")
    s0 = tree_digest(sentinel)
    out = tmp_path / "out"
    cfg = cfg_file(tmp_path, [DEMO], stages=("ingest", "exact_dedup", "export"))
    proc = start("run", str(cfg), "--output", str(out), "--no-prefect")
    try:
        assert wait_for(lambda: (out / "ingest" / "_stage.json").exists(), proc, step=0.02), proc.communicate()[1][-2000:]
        os.kill(proc.pid, signal.SIGINT)  # what Ctrl-C sends the CLI (the JVM ignores it)
        _, err = proc.communicate(timeout=120)
    finally:
        stop(proc)
    one_line(subprocess.CompletedProcess(proc.args, proc.returncode, "", err), 130, prefix=INTERRUPTED)
    assert manifest(out)["status"] == "interrupted"
    assert not (out / ".tmp").exists()
    p = cli("run", str(cfg), "--output", str(out), "--no-prefect")
    assert p.returncode == 0, p.stderr[-3000:]
    m = manifest(out)
    assert m["status"] == "complete" and m["stages"]["ingest"]["reused"] and m["accounting"]["closes"]
    assert tree_digest(sentinel) == s0


# ------------------------------------------------------------------------- served runs
def test_served_runs_may_not_set_spark_settings(tmp_path, monkeypatch):
    """Also: a deployment's parameters could set any spark.conf key (spark.driver.extraJavaOptions
    runs code). Served runs get the operator's Spark settings; conf keys only from an allow-list."""
    from thresher.flows.serve import curate
    from thresher.flows.trust import served_config

    from thresher.flows.config import SparkConfig, config_json

    monkeypatch.setenv("THRESHER_SPARK_FROZEN", json.dumps(config_json(SparkConfig(master="local[2]", driver_memory="1g"))))
    monkeypatch.setenv("THRESHER_SPARK_CONF_ALLOW", "spark.sql.shuffle.partitions,spark.driver.*")
    evil = {"input": [str(DEMO)], "output": str(tmp_path / "o"),
            "spark": {"master": "local[2]", "driver_memory": "1g", "conf": {"spark.driver.extraJavaOptions": "-Dx=1"}}}
    with pytest.raises(ConfigError, match=r"spark.conf.spark.driver.extraJavaOptions: not allowed in a served run"):
        curate.fn(config=evil)
    with pytest.raises(ConfigError, match=r"spark.master: Spark settings are frozen"):
        curate.fn(config={**evil, "spark": {"master": "spark://evil:7077"}})
    ok = served_config({"input": [str(DEMO)], "output": "o", "spark": {"master": "local[2]", "driver_memory": "1g",
                                                                        "conf": {"spark.sql.shuffle.partitions": "3"}}})
    assert ok["spark"]["conf"] == {"spark.sql.shuffle.partitions": "3"}
    assert served_config({"input": ["x"]})["spark"]["master"] == "local[2]"  # left out: the operator's
    assert not (tmp_path / "o").exists()
