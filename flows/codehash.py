"""What a stage's result depends on besides its config and inputs: its own code.

`--resume` reuses a finished stage only when its fingerprint matches, so the fingerprint holds a
hash of the source of the stage module and of every thresher module it imports (stages, kernels,
schemas; found by reading the import statements, function-local ones included). A change to any
of them recomputes the stage and everything after it. A stage module may pin `CODE_VERSION = "..."`
instead, to keep its outputs across changes it declares harmless.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
from functools import lru_cache
from pathlib import Path

# flows/ never decides a stage's rows (it reads, writes and accounts), and hashing it would
# invalidate every finished stage on any change to the runner or the CLI.
_COVERED = ("thresher.stages", "thresher.kernels", "thresher.schemas")


def _source_file(modname: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(modname)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return None
    return Path(spec.origin)


def _imports(path: Path, modname: str) -> set[str]:
    tree = ast.parse(path.read_bytes(), str(path))
    package = modname if path.name == "__init__.py" else modname.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                mod = f"{base}.{node.module}" if node.module else base
            else:
                mod = node.module or ""
            out.add(mod)
            out.update(f"{mod}.{a.name}" for a in node.names)  # `from pkg import submodule`
    return {m for m in out if m.startswith(_COVERED)}


@lru_cache(maxsize=None)
def code_files(modname: str) -> tuple[Path, ...]:
    """The source files of `modname` and of the thresher modules it imports, transitively."""
    seen: dict[str, Path] = {}
    todo = [modname]
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        f = _source_file(m)
        if f is None:
            continue
        seen[m] = f
        todo.extend(_imports(f, m) - set(seen))
    return tuple(sorted(set(seen.values())))


@lru_cache(maxsize=None)
def code_fingerprint(modname: str) -> str:
    h = hashlib.sha256()
    files = code_files(modname)
    # Paths relative to the package, so the hash does not depend on where thresher is installed.
    root = Path(importlib.util.find_spec("thresher").submodule_search_locations[0])
    for f in files:
        h.update(str(f.relative_to(root) if f.is_relative_to(root) else f.name).encode() + b"\0")
        h.update(f.read_bytes() + b"\0")
    return h.hexdigest()[:24]


def stage_code(mod) -> str:
    pinned = getattr(mod, "CODE_VERSION", None)
    return f"v:{pinned}" if pinned else code_fingerprint(mod.__name__)
