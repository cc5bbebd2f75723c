"""Hugging Face datasets in and out: a save_to_disk DatasetDict split as input, the output read by
`datasets.load_dataset` unchanged, the Hub-format card, and `thresher export-hub` against a Hub
API server started here on 127.0.0.1 (huggingface_hub pointed at it with HF_ENDPOINT)."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from conftest import DEMO, REPO

datasets = pytest.importorskip("datasets")

THRESHER = str(Path(sys.executable).with_name("thresher"))


@pytest.fixture(scope="module")
def hf_run(spark, tmp_path_factory):
    """One run from the `train` split of a DatasetDict saved with save_to_disk."""
    from thresher.flows.config import load_config
    from thresher.flows.curate import execute

    tmp = tmp_path_factory.mktemp("hf")
    src = pq.read_table(DEMO).slice(0, 120)
    texts, ids = src["text"].to_pylist(), src["id"].to_pylist()
    dd = datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"id": ids[:100], "text": texts[:100], "tags": [[i % 3] for i in range(100)]}),
        "test": datasets.Dataset.from_dict({"id": ids[100:], "text": texts[100:], "tags": [[0]] * 20}),
    })
    dd.save_to_disk(str(tmp / "dd"), max_shard_size="20KB")  # a few .arrow shards
    out = tmp / "run"
    cfg = load_config(raw={"input": [str(tmp / "dd" / "train")], "output": str(out), "stages": ["ingest", "export"],
                           "export": {"rows_per_file": 40, "row_group_size": 20}})
    manifest = execute(cfg, spark=spark)
    return manifest, out, ids[:100]


def test_save_to_disk_split_in_load_dataset_out(hf_run, tmp_path):
    manifest, out, ids = hf_run
    assert len(list((out.parent / "dd" / "train").glob("*.arrow"))) > 1
    assert manifest["accounting"]["rows_in"] == 100 and manifest["accounting"]["closes"]
    got = datasets.load_dataset("parquet", data_dir=str(out / "dataset"), cache_dir=str(tmp_path / "c"))["train"]
    assert sorted(got["id"]) == sorted(ids)
    # a list of int64 (`List` in datasets 4, `Sequence` before): the inner type is what must hold
    tags = got.features["tags"]
    assert type(tags).__name__ in ("List", "Sequence") and tags.feature == datasets.Value("int64"), tags
    # The run folder itself loads by its card's `configs`: only dataset/*.parquet, not the stage tables.
    whole = datasets.load_dataset(str(out), cache_dir=str(tmp_path / "c2"))["train"]
    assert sorted(whole["id"]) == sorted(ids)


def test_card_is_hub_yaml_with_features_size_and_accounting(hf_run):
    manifest, out, ids = hf_run
    text = (out / "README.md").read_text()
    assert text.startswith("---\n")
    front = yaml.safe_load(text.split("---\n")[1])
    schema = pq.read_schema(next((out / "dataset").glob("*.parquet")))
    assert [f["name"] for f in front["dataset_info"]["features"]] == schema.names
    feats = {f["name"]: f for f in front["dataset_info"]["features"]}
    assert feats["id"]["dtype"] == "string" and feats["tags"]["sequence"] == "int64"
    assert front["dataset_info"]["splits"] == [{"name": "train", "num_examples": 100}]
    assert front["size_categories"] == ["n<1K"]
    assert front["configs"][0]["data_files"][0]["path"] == "dataset/*.parquet"
    assert front["thresher"]["rows_in"] == 100 and front["thresher"]["accounting_closes"] is True
    # and `datasets` reads the same features from the card as from the files
    info = datasets.DatasetInfo._from_yaml_dict(front["dataset_info"])
    assert list(info.features) == schema.names


class _Hub(BaseHTTPRequestHandler):
    """The few Hub API routes a dataset upload of small files takes; every request is recorded."""

    calls: list = []

    def log_message(self, *a):
        pass

    def _reply(self, code: int, body) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self.calls.append(("GET", self.path, {k.lower(): v for k, v in self.headers.items()}, b""))
        if "/tree/" in self.path:
            return self._reply(200, [])
        if self.path.startswith("/api/datasets/") and "/revision/" in self.path:
            return self._reply(200, {"id": "me/curated", "sha": "0" * 40, "siblings": []})
        self._reply(404, {"error": f"not served: {self.path}"})

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.calls.append(("POST", self.path, {k.lower(): v for k, v in self.headers.items()}, body))
        if self.path == "/api/validate-yaml":  # the Hub checks the card's front matter first
            return self._reply(200, {"errors": [], "warnings": []})
        if self.path == "/api/repos/create":
            return self._reply(200, {"url": f"http://{self.headers['Host']}/datasets/me/curated", "name": "me/curated"})
        if "/preupload/" in self.path:
            files = json.loads(body)["files"]
            return self._reply(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                                for f in files]})
        if "/commit/" in self.path:
            return self._reply(200, {"commitUrl": f"http://{self.headers['Host']}/datasets/me/curated/commit/{'1' * 40}",
                                     "commitOid": "1" * 40, "success": True})
        self._reply(404, {"error": f"not served: {self.path}"})


def test_export_hub_forms_the_upload(hf_run, tmp_path):
    manifest, out, ids = hf_run
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hub)
    _Hub.calls = []
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    env = {**os.environ, "HF_ENDPOINT": f"http://127.0.0.1:{server.server_port}", "HF_TOKEN": "hf_test_token_123",
           "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HOME": str(tmp_path / "hf")}
    try:
        r = subprocess.run([THRESHER, "export-hub", str(out), "me/curated"], env=env, capture_output=True, text=True,
                           timeout=180, cwd=REPO)
        # no token: one line, nothing sent
        n_before = len(_Hub.calls)
        env_no = {k: v for k, v in env.items() if k != "HF_TOKEN"}
        r2 = subprocess.run([THRESHER, "export-hub", str(out), "me/curated"], env=env_no, capture_output=True, text=True,
                            timeout=180, cwd=REPO)
    finally:
        server.shutdown()
    assert r.returncode == 0, r.stderr[-3000:]
    assert "/commit/" in r.stdout
    calls = _Hub.calls[:n_before]
    signed = [c for c in calls if c[1] == "/api/repos/create" or "/commit/" in c[1] or "/preupload/" in c[1]]
    assert len(signed) == 3 and all(c[2].get("authorization") == "Bearer hf_test_token_123" for c in signed)
    create = json.loads(next(c for c in calls if c[1] == "/api/repos/create")[3])
    assert create["name"] == "curated" and create.get("organization") == "me" and create["type"] == "dataset"
    commit = next(c for c in calls if "/commit/" in c[1])
    assert commit[1].startswith("/api/datasets/me/curated/commit/main")
    lines = [json.loads(ln) for ln in commit[3].decode().splitlines() if ln.strip()]
    sent = {ln["value"]["path"]: base64.b64decode(ln["value"]["content"]) for ln in lines if ln["key"] == "file"}
    local = {"README.md": (out / "README.md").read_bytes(),
             **{f"dataset/{p.name}": p.read_bytes() for p in (out / "dataset").glob("*.parquet")}}
    assert sent == local  # the card and every shard, byte for byte, nothing else of the run folder
    assert r2.returncode != 0 and r2.stderr.strip().splitlines()[-1].startswith("thresher: error: export-hub: no Hugging Face token")
    assert len(_Hub.calls) == n_before
    card = next(c for c in calls if c[1] == "/api/validate-yaml")
    assert json.loads(card[3])["repoType"] == "dataset"
