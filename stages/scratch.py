"""Scratch folders a stage owns for one run, and deletion that never follows a symlink.

A fixed, shared scratch path (say `/tmp/thresher-x`) lets any local user plant a symlink there
and make a run delete or write somewhere else. So scratch folders are created fresh for each run
with `mkdtemp` (a random name, mode 0700) inside the run folder's `.tmp/` where there is one, are
removed by the run that made them, and nothing ever sweeps folders it did not create.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from pathlib import Path


def private_dir(prefix: str, root: Path | None = None) -> Path:
    """A new folder only this user can enter, with a name nobody could have guessed."""
    if root is not None:
        root.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=prefix, dir=str(root) if root is not None else None))


def owned_dir(path: Path) -> bool:
    """True when `path` is a real folder (not a symlink) owned by this user, creating it (0700)
    if it is missing. An executor on another host calls this for a folder the driver made."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError:
        return False
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid()


def remove_tree(path: Path, strict: bool = False) -> None:
    """Removes a folder this run made; a symlink (at the top or inside) is unlinked, never followed.
    `strict` raises the first OSError instead of leaving what could not be removed."""
    path = Path(path)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        try:
            path.unlink()
        except OSError:
            if strict:
                raise
        return
    # On Linux rmtree works on file descriptors and does not follow symlinks inside the tree.
    shutil.rmtree(path, ignore_errors=not strict)
