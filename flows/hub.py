"""`thresher export-hub`: push a finished run's dataset and card to a Hugging Face dataset repo.

The token comes from the environment (HF_TOKEN) or huggingface_hub's own login, never from a
config; the endpoint from HF_ENDPOINT (a private Hub, or a test server).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from thresher.schemas.errors import ConfigError, InputError, OutputError

PATTERNS = ["README.md", "dataset/*.parquet"]


def push(run_dir: str | Path, repo_id: str, private: bool = False, revision: str | None = None) -> str:
    """Create the dataset repo if needed and commit README.md and dataset/*.parquet in one commit.
    Returns the commit URL."""
    root = Path(run_dir)
    try:
        manifest = json.loads((root / "manifest.json").read_text())
    except FileNotFoundError:
        raise InputError(f"{root}: not a thresher run folder (no manifest.json)") from None
    except ValueError:
        raise InputError(f"{root}/manifest.json: not valid JSON") from None
    if manifest.get("status") != "complete":
        raise InputError(f"{root}: the run is {manifest.get('status')!s}, not complete; finish it (--resume) before pushing")
    if not any((root / "dataset").glob("*.parquet")) or not (root / "README.md").exists():
        raise InputError(f"{root}: no exported dataset (dataset/*.parquet and README.md); run with the export stage")
    if "/" not in repo_id or repo_id.count("/") != 1:
        raise ConfigError(f"{repo_id}: a Hub repo id is OWNER/NAME")

    from huggingface_hub import HfApi, get_token
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    token = os.environ.get("HF_TOKEN") or get_token()
    if not token:
        raise ConfigError("export-hub: no Hugging Face token; set HF_TOKEN or run `hf auth login`")
    api = HfApi(token=token)
    rows = manifest.get("stages", {}).get("export", {}).get("tables", {}).get("dataset", {}).get("rows")
    try:
        api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        info = api.upload_folder(
            folder_path=str(root), repo_id=repo_id, repo_type="dataset", revision=revision,
            allow_patterns=PATTERNS, delete_patterns=["dataset/*.parquet"],
            commit_message=f"thresher {manifest.get('thresher')}: {rows} rows",
        )
    except OfflineModeIsEnabled:
        raise OutputError(f"{repo_id}: HF_HUB_OFFLINE is set; unset it to push to the Hub") from None
    except HfHubHTTPError as exc:
        status = getattr(getattr(exc, "response", None), "status_code", "?")
        first = str(exc).splitlines()[0][:200]
        raise OutputError(f"{repo_id}: the Hub refused the push (HTTP {status}: {first})") from None
    except OSError as exc:  # connection refused, DNS, TLS
        raise OutputError(f"{repo_id}: cannot reach the Hub ({str(exc).splitlines()[0][:200]})") from None
    return str(getattr(info, "commit_url", info))
