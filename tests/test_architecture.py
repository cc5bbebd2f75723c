"""The layering and the lint rules hold on every change (issue 17): flows > stages > kernels >
schemas, kernels and schemas free of Spark and Prefect, and ruff clean."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

pytestmark = pytest.mark.unit


def test_import_layers_contract(tmp_path):
    # The repository root is the `thresher` package (pyproject's package-dir), which import-linter
    # cannot walk through the editable install: it reads the four layers through a plain package.
    pkg = tmp_path / "thresher"
    pkg.mkdir()
    for layer in ("flows", "stages", "kernels", "schemas"):
        (pkg / layer).symlink_to(REPO / layer)
    p = subprocess.run([str(BIN / "lint-imports"), str(REPO / "pyproject.toml")], cwd=tmp_path,
                       env={**os.environ, "PYTHONPATH": str(tmp_path)}, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-2000:]
    assert "BROKEN" not in p.stdout and "KEPT" in p.stdout


def test_no_lower_layer_names_the_flows():
    # The contract above, in the words of the issue: nothing below flows/ mentions it in code.
    offenders = []
    for layer in ("stages", "kernels", "schemas"):
        for f in sorted((REPO / layer).rglob("*.py")):
            for n, line in enumerate(f.read_text().splitlines(), 1):
                if re.match(r"\s*(from|import)\s+thresher\.flows\b", line):
                    offenders.append(f"{f.relative_to(REPO)}:{n}")
    assert not offenders, offenders


def test_ruff_clean():
    p = subprocess.run([str(BIN / "ruff"), "check", "--no-cache", "flows", "stages", "kernels", "schemas", "benchmarks",
                        "tests"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-4000:]
