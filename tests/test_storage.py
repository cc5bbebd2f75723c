"""Where the data lives: URLs, an S3 server started here (moto's, on 127.0.0.1), and the run
from s3:// to s3:// through the real CLI (its own Spark), read back by pyarrow, polars, duckdb."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conftest import DEMO, REPO, free_port, stop_group
from thresher.schemas.errors import ConfigError, InputError, OutputError
from thresher.stages import storage

BUCKET = "corpus"
THRESHER = str(Path(sys.executable).with_name("thresher"))


# ------------------------------------------------------------------------------ pure URL logic
def test_glob_and_overlap_rules():
    rx = storage._glob_regex("in/**/*.jsonl.gz")
    assert rx.match("in/a.jsonl.gz") and rx.match("in/x/y/a.jsonl.gz") and not rx.match("in/a.parquet")
    assert not storage._glob_regex("*.parquet").match("sub/a.parquet")
    assert storage.canonical("s3://b//x/y/") == "s3://b/x/y"
    assert storage.canonical("gcs://b/x") == "gs://b/x"
    assert storage.within("s3://b/in/out", "s3://b/in/*.jsonl.gz")
    assert not storage.within("s3://b/input2", "s3://b/in")
    assert not storage.within("s3://c/in", "s3://b/in")
    with pytest.raises(OutputError, match="inside the input"):
        storage.check_output_overlap("s3://b/in/curated/", ["s3://b/in/*.jsonl.gz"])
    with pytest.raises(OutputError, match="lies inside the output"):
        storage.check_output_overlap("s3://b/", ["s3://b/in/x.parquet"])
    storage.check_output_overlap("s3://b/out/", ["s3://b/in/*.jsonl.gz", "/data/x.parquet"])


def test_unknown_scheme_and_secrets_in_config():
    with pytest.raises(InputError, match=r"nosuch://x/y: unknown URL scheme 'nosuch://'"):
        storage.filesystem("nosuch://x/y")
    with pytest.raises(Exception, match="credentials are not read from the config"):
        storage.StorageConfig.model_validate({"options": {"hf": {"token": "hf_abc"}}})
    from thresher.flows.config import load_config

    with pytest.raises(ConfigError, match="storage.s3.secret_access_key: unknown key"):
        load_config(raw={"output": "x", "storage": {"s3": {"secret_access_key": "x"}}})


def test_file_urls_and_hf_save_to_disk_input(tmp_path):
    """file:// URLs and a `datasets` save_to_disk folder (a DatasetDict: one sub-folder a split)."""
    datasets = pytest.importorskip("datasets")
    from thresher.stages.ingest import Config, list_files, unified_schema

    src = pq.read_table(DEMO).slice(0, 40)
    dd = datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"text": src["text"].to_pylist()[:30], "n": list(range(30))}),
        "test": datasets.Dataset.from_dict({"text": src["text"].to_pylist()[30:], "n": list(range(10))}),
    })
    dd.save_to_disk(str(tmp_path / "dd"))
    files = list_files([f"file://{tmp_path / 'dd'}"])
    assert [(Path(p).parent.name, k) for p, _, k in files] == [("test", "arrow"), ("train", "arrow")]
    passthrough, has_id, units = unified_schema(files, Config())
    assert passthrough.names == ["n"] and not has_id
    # one split alone: the split's folder is a Dataset folder of its own
    assert len(list_files([str(tmp_path / "dd" / "train")])) == 1


def test_any_fsspec_protocol_lists_and_reads_footers():
    """memory:// stands for any installed fsspec protocol (hf://, abfs://, ...): globs, folders
    and Parquet footers go through the same pyarrow wrapper."""
    import fsspec

    from thresher.stages.ingest import Config, list_files, unified_schema

    mem = fsspec.filesystem("memory")
    src = pq.read_table(DEMO).slice(0, 20).select(["id", "text"])
    for i in range(2):
        with mem.open(f"/t18/in/sub/p{i}.parquet", "wb") as f:
            pq.write_table(src.slice(10 * i, 10), f)
    with mem.open("/t18/in/sub/_SUCCESS", "wb") as f:
        f.write(b"")
    files = list_files(["memory://t18/in/**/*.parquet"])
    assert [(p, rel, k) for p, rel, k in files] == [
        ("memory://t18/in/sub/p0.parquet", "p0.parquet", "parquet"), ("memory://t18/in/sub/p1.parquet", "p1.parquet", "parquet")]
    assert [rel for _, rel, _ in list_files(["memory://t18/in"])] == ["sub/p0.parquet", "sub/p1.parquet"]
    _, has_id, units = unified_schema(files, Config())
    assert has_id and [u[4] for u in units] == [0, 0]
    with pytest.raises(InputError, match="memory://t18/nothing/\\*.parquet: no such file or folder"):
        list_files(["memory://t18/nothing/*.parquet"])


# ------------------------------------------------------------------------------ the S3 server
AUTH_SETUP_CALLS = 4  # create_user, put_user_policy, create_access_key x2: then every call is signed


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """moto's S3 server on 127.0.0.1 with authentication on: two IAM users (one can write only
    outside ro/), their keys, and an `env` that points boto3, pyarrow and the CLI at it."""
    pytest.importorskip("moto")
    boto3 = pytest.importorskip("boto3")
    port = free_port()
    server_env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": str(AUTH_SETUP_CALLS),
                  "AWS_ACCESS_KEY_ID": "setup", "AWS_SECRET_ACCESS_KEY": "setup"}
    proc = subprocess.Popen([str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
                            env=server_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        import urllib.request

        while True:
            try:
                urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1)
                break
            except OSError:
                if time.time() > deadline or proc.poll() is not None:
                    raise RuntimeError("moto server did not start")
                time.sleep(0.2)
        iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1",
                           aws_access_key_id="setup", aws_secret_access_key="setup")
        iam.create_user(UserName="curator")
        iam.put_user_policy(UserName="curator", PolicyName="s3", PolicyDocument=json.dumps({
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"},
                          {"Effect": "Deny", "Action": "s3:PutObject", "Resource": f"arn:aws:s3:::{BUCKET}/ro/*"}],
        }))
        key = iam.create_access_key(UserName="curator")["AccessKey"]
        iam.create_access_key(UserName="curator")  # the fourth unauthenticated call
        env = {**os.environ, "AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"],
               "AWS_ENDPOINT_URL": endpoint, "AWS_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                              aws_access_key_id=key["AccessKeyId"], aws_secret_access_key=key["SecretAccessKey"])
        client.create_bucket(Bucket=BUCKET)
        _upload_inputs(client)
        yield {"endpoint": endpoint, "env": env, "client": client, "key": key}
    finally:
        stop_group(proc)


def _upload_inputs(client, rows: int = 300, shards: int = 3) -> None:
    """A slice of the demo data as gzipped JSONL shards, with a few exact duplicates."""
    t = pq.read_table(DEMO).slice(0, rows).select(["id", "text"]).to_pylist()
    t += [{"id": f"dup-{r['id']}", "text": r["text"]} for r in t[:7]]
    for s in range(shards):
        body = "".join(json.dumps(r) + "\n" for r in t[s::shards]).encode()
        client.put_object(Bucket=BUCKET, Key=f"in/part-{s}.jsonl.gz", Body=gzip.compress(body))
    client.put_object(Bucket=BUCKET, Key="in/_SUCCESS", Body=b"")


def _config(tmp_path: Path, output: str, rows_per_file: int = 1000, stages: str = "ingest, exact_dedup, export") -> Path:
    p = tmp_path / "s3.yaml"
    p.write_text(f"""input: s3://{BUCKET}/in/*.jsonl.gz
output: {output}
work_dir: {tmp_path / 'work'}
stages: [{stages}]
spark: {{master: "local[2]", driver_memory: 1g, shuffle_partitions: 2}}
export: {{rows_per_file: {rows_per_file}, row_group_size: 50}}
""")
    return p


def _thresher(args, env, timeout=900, **kw):
    return subprocess.run([THRESHER, *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO, **kw)


def _keys(client, prefix: str) -> list[str]:
    out = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        out += [o["Key"] for o in page.get("Contents", [])]
    # pyarrow keeps an emptied "folder" as an empty `name/` object; no reader lists it as data
    return sorted(k for k in out if not k.endswith("/"))


def _error_line(r) -> str:
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("thresher: error:")]
    assert r.returncode != 0 and len(lines) == 1, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    return lines[0]


def test_s3_to_s3_run_read_back_by_pyarrow_polars_duckdb(s3, tmp_path):
    r = _thresher(["run", str(_config(tmp_path, f"s3://{BUCKET}/out/")), "--no-prefect"], s3["env"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"dataset:    s3://{BUCKET}/out/dataset" in r.stdout
    client = s3["client"]
    marker = json.loads(client.get_object(Bucket=BUCKET, Key="out/_thresher.json")["Body"].read())
    listed = [k for k in _keys(client, "out/") if k != "out/_thresher.json"]
    assert sorted("out/" + f["path"] for f in marker["files"]) == listed  # staging gone, nothing extra
    assert {"out/README.md", "out/manifest.json"} <= set(listed)

    # What the run should keep: the 300 ids; the 7 `dup-` copies lose to the originals (same
    # length, smallest id wins).
    expect = sorted(pq.read_table(DEMO).slice(0, 300)["id"].to_pylist())

    from pyarrow import dataset as ds
    from pyarrow import fs as pafs

    key = s3["key"]
    fs = pafs.S3FileSystem(access_key=key["AccessKeyId"], secret_key=key["SecretAccessKey"], region="us-east-1",
                           scheme="http", endpoint_override=s3["endpoint"].split("://")[1])
    got = ds.dataset(f"{BUCKET}/out/dataset", filesystem=fs, format="parquet").to_table()
    assert sorted(got["id"].to_pylist()) == expect

    import polars as pl

    opts = {"aws_access_key_id": key["AccessKeyId"], "aws_secret_access_key": key["SecretAccessKey"],
            "aws_region": "us-east-1", "aws_endpoint_url": s3["endpoint"], "aws_allow_http": "true"}
    pdf = pl.read_parquet(f"s3://{BUCKET}/out/dataset/*.parquet", storage_options=opts)
    assert sorted(pdf["id"].to_list()) == expect

    import duckdb

    con = duckdb.connect()
    try:
        con.execute("LOAD httpfs")
        httpfs = True
    except duckdb.Error:
        httpfs = False  # the extension is a download; offline, duckdb reads pyarrow's dataset
    if httpfs:
        con.execute(f"CREATE SECRET (TYPE s3, KEY_ID '{key['AccessKeyId']}', SECRET '{key['SecretAccessKey']}', "
                    f"ENDPOINT '{s3['endpoint'].split('://')[1]}', URL_STYLE 'path', USE_SSL false, REGION 'us-east-1')")
        n = con.execute(f"SELECT count(*) FROM read_parquet('s3://{BUCKET}/out/dataset/*.parquet')").fetchone()[0]
    else:
        arrow_ds = ds.dataset(f"{BUCKET}/out/dataset", filesystem=fs, format="parquet")  # noqa: F841
        n = con.execute("SELECT count(DISTINCT id) FROM arrow_ds").fetchone()[0]
    assert n == len(expect)

    # The card beside the data is the Hub's format, with the row accounting.
    card = client.get_object(Bucket=BUCKET, Key="out/README.md")["Body"].read().decode()
    front = card.split("---\n")[1]
    import yaml

    meta = yaml.safe_load(front)
    assert meta["dataset_info"]["splits"][0]["num_examples"] == len(expect)
    assert meta["thresher"]["rows_in"] == 307 and meta["thresher"]["accounting_closes"]


def test_bad_credential_one_line(s3, tmp_path):
    env = {**s3["env"], "AWS_SECRET_ACCESS_KEY": "not-the-secret"}
    line = _error_line(_thresher(["run", str(_config(tmp_path, f"s3://{BUCKET}/bad/")), "--no-prefect"], env, timeout=120))
    assert f"s3://{BUCKET}/in/*.jsonl.gz" in line and "SignatureDoesNotMatch" in line, line
    env = {**s3["env"], "AWS_ACCESS_KEY_ID": "AKIANOSUCHKEY00000000"}
    line = _error_line(_thresher(["run", str(_config(tmp_path, f"s3://{BUCKET}/bad/")), "--no-prefect"], env, timeout=120))
    assert "InvalidAccessKeyId" in line, line
    env = {k: v for k, v in s3["env"].items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    env["AWS_SHARED_CREDENTIALS_FILE"] = env["AWS_CONFIG_FILE"] = str(tmp_path / "none")
    line = _error_line(_thresher(["run", str(_config(tmp_path, f"s3://{BUCKET}/bad/")), "--no-prefect"], env, timeout=120))
    assert f"s3://{BUCKET}/in/*.jsonl.gz" in line and ("credentials" in line or "access denied" in line), line
    assert not (tmp_path / "work").exists() and _keys(s3["client"], "bad/") == []


def test_missing_bucket_unknown_scheme_read_only_and_overlap(s3, tmp_path):
    env = s3["env"]
    cfg = _config(tmp_path, f"s3://{BUCKET}/out2/")
    line = _error_line(_thresher(["run", str(cfg), "-i", "s3://no-such-bucket/in/*.jsonl.gz", "--no-prefect"], env, timeout=120))
    assert line.endswith("s3://no-such-bucket/in/*.jsonl.gz: bucket 'no-such-bucket' does not exist"), line
    line = _error_line(_thresher(["run", str(cfg), "-o", "s3://no-such-bucket/out/", "--no-prefect"], env, timeout=120))
    assert "s3://no-such-bucket/out: bucket 'no-such-bucket' does not exist" in line, line
    line = _error_line(_thresher(["run", str(cfg), "-o", "nosuch://x/out/", "--no-prefect"], env, timeout=120))
    assert "nosuch://x/out: unknown URL scheme 'nosuch://'" in line, line
    line = _error_line(_thresher(["run", str(cfg), "-o", f"s3://{BUCKET}/ro/out/", "--no-prefect"], env, timeout=120))
    assert f"s3://{BUCKET}/ro/out: output is not writable (access denied)" in line, line
    line = _error_line(_thresher(["run", str(cfg), "-o", f"s3://{BUCKET}/in/curated/", "--no-prefect"], env, timeout=120))
    assert "output is inside the input" in line, line
    client = s3["client"]
    assert _keys(client, "out2/") == [] and _keys(client, "ro/") == [] and _keys(client, "in/curated") == []
    assert not (tmp_path / "work").exists()


def test_killed_during_export_leaves_no_dataset_for_readers(s3, tmp_path):
    """SIGKILL while the shards upload: readers see no dataset (no marker, nothing under
    dataset/); the next run publishes the whole one and removes the leftovers."""
    client = s3["client"]
    cfg = _config(tmp_path, f"s3://{BUCKET}/killed/", rows_per_file=2, stages="ingest, export")  # ~150 shards
    proc = subprocess.Popen([THRESHER, "run", str(cfg), "--no-prefect"], env=s3["env"], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.time() + 240
        # the shards staged by the publish, not the write probe of the preflight
        while (not any("/dataset/part-" in k for k in _keys(client, "killed/_temporary/"))
               and proc.poll() is None and time.time() < deadline):
            time.sleep(0.02)
        assert proc.poll() is None, "the run finished before the test saw its upload"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        stop_group(proc)
    keys = _keys(client, "killed/")
    assert any("/dataset/part-" in k for k in keys) and all(k.startswith("killed/_temporary/") for k in keys), keys
    assert storage.read_marker(f"s3://{BUCKET}/killed") is None
    from pyarrow import dataset as ds
    from pyarrow import fs as pafs

    key = s3["key"]
    fs = pafs.S3FileSystem(access_key=key["AccessKeyId"], secret_key=key["SecretAccessKey"], region="us-east-1",
                           scheme="http", endpoint_override=s3["endpoint"].split("://")[1])
    assert ds.dataset(f"{BUCKET}/killed", filesystem=fs, format="parquet").count_rows() == 0

    # A plain rerun: the run folder says complete, but the marker does not name it, so the stages
    # are reused and the dataset published again.
    r = _thresher(["run", str(cfg), "--no-prefect"], s3["env"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "(reused)" in r.stdout
    keys = _keys(client, "killed/")
    assert not any(k.startswith("killed/_temporary/") for k in keys)
    assert ds.dataset(f"{BUCKET}/killed/dataset", filesystem=fs, format="parquet").count_rows() == 307
