"""Peer tools in their own virtualenvs, made by the bench on first use.

Each peer gets `<cache>/peers/<name>/` (cache: $THRESHER_CACHE_DIR or ~/.cache/thresher), a
virtualenv with its pinned packages from the package index, and runs as a subprocess of that
virtualenv's interpreter: its pins never meet thresher's. A peer that cannot be installed is
reported by `PeerUnavailable` with one line saying why, and the bench skips it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

# name -> (pip requirements, minimum Python)
PEERS = {
    # spacy: the word tokenizer DataTrove loads for English; orjson: its JsonlWriter (neither in
    # its extras).
    "datatrove": (["datatrove[processing]==0.10.1", "spacy", "orjson", "pyarrow"], (3, 10)),
    "rensa": (["rensa==0.5.0", "pyarrow", "numpy"], (3, 8)),
    "text-dedup": (["text-dedup==0.4.1"], (3, 12)),
}


class PeerUnavailable(Exception):
    pass


def cache_dir() -> Path:
    return Path(os.environ.get("THRESHER_CACHE_DIR", Path.home() / ".cache" / "thresher")) / "peers"


def _version(exe: str) -> tuple[int, int] | None:
    try:
        r = subprocess.run([exe, "-c", "import sys; print(*sys.version_info[:2])"], capture_output=True, text=True,
                           timeout=30)
        return tuple(map(int, r.stdout.split())) if r.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired, ValueError):
        return None


def _interpreter(minimum: tuple[int, int]) -> str | None:
    """An interpreter of at least `minimum` on this machine: this one, python3.N on PATH (a shim
    that cannot run it does not count), or one that pyenv keeps."""
    if sys.version_info[:2] >= minimum:
        return sys.executable
    found = []
    for minor in range(minimum[1], 20):
        exe = shutil.which(f"python{minimum[0]}.{minor}")
        if exe:
            found.append(exe)
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    found += sorted(str(p) for p in pyenv.glob(f"{minimum[0]}.*/bin/python{minimum[0]}"))
    for exe in found:
        v = _version(exe)
        if v is not None and v >= minimum:
            return exe
    return None


def peer_python(name: str) -> Path:
    """The peer's interpreter, installing it first if needed."""
    reqs, minimum = PEERS[name]
    home = cache_dir() / name
    py = home / "bin" / "python"
    marker = home / ".installed"
    want = "\n".join(reqs)
    if marker.exists() and marker.read_text() == want and py.exists():
        return py
    base = _interpreter(minimum)
    if base is None:
        raise PeerUnavailable(f"{name}: needs Python >= {minimum[0]}.{minimum[1]}; none on this machine "
                              f"(this one is {sys.version_info[0]}.{sys.version_info[1]}; no python{minimum[0]}.{minimum[1]}+ "
                              f"on PATH or under pyenv, and neither Debian 12 nor PyPI ships one)")
    shutil.rmtree(home, ignore_errors=True)
    home.parent.mkdir(parents=True, exist_ok=True)
    print(f"# installing peer {name} ({', '.join(reqs)}) into {home} with {base}", file=sys.stderr, flush=True)
    try:
        subprocess.run([base, "-m", "venv", str(home)], check=True, capture_output=True, text=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", *reqs], check=True, capture_output=True, text=True,
                       timeout=1800)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
        tail = (getattr(e, "stderr", "") or "").strip().splitlines()[-1:] or [str(e)]
        raise PeerUnavailable(f"{name}: could not be installed ({tail[0][:200]})") from None
    marker.write_text(want)
    return py


def run_peer(name: str, script: str, *args, timeout: float = 3600, env: dict | None = None) -> str:
    """Runs benchmarks/<script> under the peer's interpreter; returns its stdout."""
    py = peer_python(name)
    path = Path(__file__).resolve().parent / script
    env = {**{k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}, **(env or {})}
    # Its own process group: on a timeout its worker processes go too.
    proc = subprocess.Popen([str(py), str(path), *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    if proc.returncode != 0:
        raise RuntimeError(f"{name} failed: {err.strip()[-2000:]}")
    return out
