"""The run folder: checks it, locks it, prepares it, commits into it by renames, and refuses to
clobber what it does not own. Shared by every flow (curate, containment).

The rules (README "What thresher promises about your files"):
- Both sides are resolved (symlinks, `..`, globs) and an output inside an input, or an input
  inside the output, is refused before anything is written.
- One run at a time per folder: an exclusive `flock` on `<output>/.thresher.lock` (holding the
  pid and host) for the life of the run. The kernel drops it when the process dies, so a killed
  run never leaves a stale lock behind.
- `--overwrite` deletes only the fixed names thresher writes (never names read from the old
  manifest), never follows a symlink, and deletes the manifest last.
- A failed run removes only what it created itself while it held the lock.
"""

from __future__ import annotations

import errno
import fcntl
import fnmatch
import glob
import json
import os
import socket
import time
import uuid
from pathlib import Path

from thresher.schemas.errors import OutputError
from thresher.stages.scratch import remove_tree

MANIFEST = "manifest.json"
LOCK = ".thresher.lock"
# Every name thresher writes at the top of a run folder, besides the stage folders.
OWNED = {MANIFEST, ".tmp", "dataset", "report.html", "README.md", "plan.parquet", "plan.json"}


def known_stage_names() -> set[str]:
    from thresher.stages import STAGES

    return set(STAGES)


def _real(p: str | Path) -> Path:
    return Path(os.path.realpath(os.path.abspath(os.path.expanduser(str(p)))))


def _inside(a: Path, b: Path) -> bool:
    """True when `a` is `b` or lies under it (both resolved)."""
    return a == b or b in a.parents


def _glob_reaches(pattern: str, out: Path) -> bool:
    """Could the glob `pattern` match `out`, something inside it, or a folder holding it?"""
    parts = Path(os.path.abspath(os.path.expanduser(pattern))).parts
    i = next((k for k, s in enumerate(parts) if glob.has_magic(s)), len(parts))
    base = _real(Path(*parts[:i])) if i else Path("/")
    if not _inside(out, base):
        return False
    rest, rel = parts[i:], out.relative_to(base).parts
    if "**" in rest:
        return True
    # Component by component: where the shorter of the two runs out, one contains the other.
    return all(fnmatch.fnmatchcase(o, p) for o, p in zip(rel, rest))


def check_overlap(root: Path, inputs: list[str | Path]) -> None:
    """Refuse an output inside an input, or an input inside the output, whatever the spelling."""
    out = _real(root)
    for spec in inputs:
        spec = str(spec)
        if glob.has_magic(spec):
            if _glob_reaches(spec, out):
                raise OutputError(f"{root}: output folder could be matched by the input glob {spec}; choose another --output")
            continue
        inp = _real(spec)
        if _inside(out, inp):
            raise OutputError(f"{root}: output folder is inside the input {spec}; choose another --output")
        if _inside(inp, out):
            raise OutputError(f"{root}: the input {spec} is inside the output folder; choose another --output")


class RunFolder:
    """Owns the output folder: checks it, locks it, and refuses to clobber what it does not own."""

    def __init__(self, root: Path, overwrite: bool = False, resume: bool = False):
        self.given = Path(root)
        self.root = _real(root)
        self.overwrite = overwrite
        self.resume = resume
        self._lock_fd: int | None = None
        # What this run created while it held the lock: all a failure may take away again.
        self.created_root = False
        self.created: set[str] = set()

    # ------------------------------------------------------------------------- checks
    def _existing(self) -> list[str]:
        if not self.root.exists():
            return []
        return [p.name for p in self.root.iterdir() if p.name != LOCK]

    def check(self, inputs: list, stages: list[str] | None = None) -> None:
        """Refuse an output folder we must not write to, without changing anything."""
        root = self.root
        check_overlap(self.given, inputs)
        if root.exists() and not root.is_dir():
            raise OutputError(f"{root}: output exists and is not a folder")
        if self._existing():
            status = self.previous_status()
            if status is None:
                raise OutputError(f"{root}: output folder is not empty and holds no thresher run; choose an empty folder")
            if status == "complete" and not (self.overwrite or self.resume):
                raise OutputError(f"{root}: output folder holds a previous run; pass --overwrite to replace it "
                                  "or --resume to reuse its finished stages")
            if status != "complete" and not self.overwrite:
                # An interrupted run (killed, or failed) continues where it stopped: finished
                # stages whose fingerprints still match are reused, the rest recomputed.
                self.resume = True
            if self.resume and not self.overwrite and stages is not None:
                self._check_stage_list(stages)
        probe_dir = next((p for p in [root, *root.parents] if p.exists()), None)
        if probe_dir is None or not probe_dir.is_dir() or not os.access(probe_dir, os.W_OK):
            raise OutputError(f"{root}: output folder is not writable")

    def _check_stage_list(self, stages: list[str]) -> None:
        """Resuming with fewer stages would finish `complete` beside stale results of the
        stages left out: refuse, naming them."""
        from thresher.stages import spec_of

        stale = sorted(n for n in known_stage_names() - set(stages) if (self.root / n).is_dir())
        writes_dataset = any("dataset" in spec_of(s).top_level for s in stages)
        if (self.root / "dataset").exists() and not writes_dataset:
            stale.append("dataset")
        if stale:
            raise OutputError(f"{self.root}: the previous run also has {', '.join(stale)}, which this run's stages "
                              f"({', '.join(stages)}) would leave stale; pass --overwrite to replace the run")

    # ------------------------------------------------------------------------- lock
    def lock(self) -> None:
        """Take the folder for this run, or fail in one line naming the run that holds it."""
        if self._lock_fd is not None:
            return
        path = self.root / LOCK
        while True:
            try:
                if not self.root.exists():
                    self.root.mkdir(parents=True)
                    self.created_root = True
            except OSError as exc:
                raise OutputError(f"{self.root}: output folder is not writable ({exc.strerror})") from None
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
            except OSError as exc:
                raise OutputError(f"{path}: cannot open the run lock ({exc.strerror})") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                holder = _read_holder(fd)
                os.close(fd)
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise OutputError(f"{self.root}: another thresher run is writing this folder ({holder}); "
                                      "wait for it to end or choose another --output") from None
                raise OutputError(f"{path}: cannot lock ({exc.strerror})") from None
            # The holder before us may have removed the file (a failed run that created the
            # folder) between our open and our lock: then we hold a lock nobody else can see.
            try:
                same = os.fstat(fd).st_ino == os.lstat(path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}).encode())
        self._lock_fd = fd

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # ------------------------------------------------------------------------- prepare
    def prepare(self, stage_names: list[str], inputs: list, check_stages: bool = False) -> None:
        self.check(inputs, stage_names if check_stages else None)
        self.lock()
        try:
            # Checked again under the lock: a run that held the folder until a moment ago may
            # have finished it meanwhile.
            self.check(inputs, stage_names if check_stages else None)
            if self.overwrite and self._existing():
                self._remove_previous(stage_names)
            try:
                probe = self.root / f".write-test-{uuid.uuid4().hex}"
                probe.write_text("")
                probe.unlink()
            except OSError as exc:
                raise OutputError(f"{self.root}: output folder is not writable ({exc.strerror})") from None
            remove_tree(self.root / ".tmp")
        except BaseException:
            self.discard()
            raise

    def _remove_previous(self, stage_names: list[str]) -> None:
        """--overwrite: the fixed names thresher writes, never a name the old manifest lists,
        never through a symlink; the manifest last, so a failure half-way still leaves a folder
        every later run recognises as ours."""
        names = (OWNED | known_stage_names() | set(stage_names)) - {MANIFEST}
        try:
            for name in sorted(names):
                remove_tree(self.root / name, strict=True)
            remove_tree(self.root / MANIFEST, strict=True)
        except OSError as exc:
            where = exc.filename or self.root
            raise OutputError(f"{where}: cannot remove the previous run ({exc.strerror or exc})") from None

    def discard(self) -> None:
        """A run that finished nothing takes away what it created, and nothing else."""
        for name in sorted(self.created):
            remove_tree(self.root / name)
        self.created.clear()
        if self.created_root:
            try:
                os.unlink(self.root / LOCK)
            except OSError:
                pass
        self.unlock()
        if self.created_root:
            try:
                os.rmdir(self.root)  # only when empty: anything else in it is not ours
            except OSError:
                pass

    # ------------------------------------------------------------------------- reading
    def previous_status(self) -> str | None:
        try:
            return json.loads((self.root / MANIFEST).read_text()).get("status", "unknown")
        except FileNotFoundError:
            return None
        except (OSError, ValueError, AttributeError):
            return "unknown"

    # ------------------------------------------------------------------------- writing
    def _note(self, path: Path) -> None:
        if path.parent == self.root and not path.exists() and not path.is_symlink():
            self.created.add(path.name)

    def tmp(self, label: str) -> Path:
        self._note(self.root / ".tmp")
        p = self.root / ".tmp" / f"{label}-{uuid.uuid4().hex[:8]}"
        p.mkdir(parents=True)
        return p

    def commit(self, tmp: Path, dest: Path) -> None:
        """Replace `dest` by `tmp` with renames only, so readers never see a partial folder."""
        if dest.exists() or dest.is_symlink():
            old = self.root / ".tmp" / f"old-{dest.name}-{uuid.uuid4().hex[:8]}"
            os.replace(dest, old)
            os.replace(tmp, dest)
            remove_tree(old)
        else:
            self._note(dest)
            os.replace(tmp, dest)

    def write_json(self, path: Path, data: dict) -> None:
        """Atomic, and on a full disk one line with no temporary file left behind."""
        self._note(path)
        t = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
        try:
            with open(t, "x") as fh:
                fh.write(json.dumps(data, indent=2, sort_keys=False, default=str))
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(t, path)
        except OSError as exc:
            try:
                os.unlink(t)
            except OSError:
                pass
            if exc.errno == errno.ENOSPC:
                raise OutputError(f"no space left on device while writing {path.name}") from None
            raise OutputError(f"{path}: cannot write ({exc.strerror or exc})") from None


def _read_holder(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        h = json.loads(os.read(fd, 4096).decode() or "{}")
        return f"pid {h.get('pid', '?')} on {h.get('host', '?')} since {h.get('since', '?')}"
    except (OSError, ValueError, AttributeError):
        return "holder unknown"

