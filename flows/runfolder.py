"""The run folder: checks it, prepares it, commits into it by renames, and refuses to clobber
what it does not own. Shared by every flow (curate, containment)."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

from thresher.schemas.errors import OutputError

MANIFEST = "manifest.json"
OWNED = {MANIFEST, ".tmp", "dataset", "report.html", "README.md", "plan.parquet", "plan.json"}


class RunFolder:
    """Owns the output folder: checks it, and refuses to clobber what it does not own."""

    def __init__(self, root: Path, overwrite: bool = False, resume: bool = False):
        self.root = Path(root).absolute()
        self.overwrite = overwrite
        self.resume = resume

    def check(self, inputs: list[Path]) -> None:
        """Refuse an output folder we must not write to, without changing anything."""
        root = self.root
        for inp in inputs:
            # Writing inside the input folder would make the next run read its own output.
            if root == inp or inp in root.parents:
                raise OutputError(f"{root}: output folder is inside the input {inp}; choose another --output")
        if root.exists() and not root.is_dir():
            raise OutputError(f"{root}: output exists and is not a folder")
        existing = [p.name for p in root.iterdir()] if root.exists() else []
        if existing:
            status = self.previous_status()
            if status is None:
                raise OutputError(f"{root}: output folder is not empty and holds no thresher run; choose an empty folder")
            if status == "complete" and not (self.overwrite or self.resume):
                raise OutputError(f"{root}: output folder holds a previous run; pass --overwrite to replace it or --resume to reuse its finished stages")
            if status != "complete" and not self.overwrite:
                # An interrupted run (killed, or failed) continues where it stopped: finished
                # stages whose fingerprints still match are reused, the rest recomputed.
                self.resume = True
        probe_dir = next((p for p in [root, *root.parents] if p.exists()), None)
        if probe_dir is None or not probe_dir.is_dir() or not os.access(probe_dir, os.W_OK):
            raise OutputError(f"{root}: output folder is not writable")

    def prepare(self, stage_names: list[str], inputs: list[Path]) -> None:
        self.check(inputs)
        root = self.root
        existing = [p.name for p in root.iterdir()] if root.exists() else []
        if existing:
            if self.overwrite:
                owned = OWNED | set(stage_names) | set(self._stages_of_previous_run())
                for name in existing:
                    if name in owned:
                        p = root / name
                        shutil.rmtree(p) if p.is_dir() else p.unlink()
        try:
            root.mkdir(parents=True, exist_ok=True)
            probe = root / f".write-test-{uuid.uuid4().hex}"
            probe.write_text("")
            probe.unlink()
        except OSError as exc:
            raise OutputError(f"{root}: output folder is not writable ({exc.strerror})") from None
        shutil.rmtree(root / ".tmp", ignore_errors=True)

    def previous_status(self) -> str | None:
        try:
            return json.loads((self.root / MANIFEST).read_text()).get("status", "unknown")
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return "unknown"

    def _stages_of_previous_run(self) -> list[str]:
        try:
            return list(json.loads((self.root / MANIFEST).read_text()).get("stages", {}))
        except (OSError, ValueError):
            return []

    def tmp(self, label: str) -> Path:
        p = self.root / ".tmp" / f"{label}-{uuid.uuid4().hex[:8]}"
        p.mkdir(parents=True)
        return p

    def commit(self, tmp: Path, dest: Path) -> None:
        """Replace `dest` by `tmp` with renames only, so readers never see a partial folder."""
        if dest.exists():
            old = self.root / ".tmp" / f"old-{dest.name}-{uuid.uuid4().hex[:8]}"
            os.replace(dest, old)
            os.replace(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dest)

    def write_json(self, path: Path, data: dict) -> None:
        t = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
        t.write_text(json.dumps(data, indent=2, sort_keys=False, default=str))
        os.replace(t, path)
