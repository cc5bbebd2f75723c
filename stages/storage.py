"""Where the data lives: one place that turns what a user names (a path, a glob, a URL) into a
filesystem and a path on it.

Local paths and file:// go to pyarrow's LocalFileSystem; s3:// and gs:// to pyarrow's own S3 and
GCS filesystems (built into the wheel); hf:// and any other installed fsspec protocol to fsspec,
wrapped so that callers see one pyarrow.fs interface. Credentials never come from the config:
the filesystems read the standard environment, profile and instance metadata themselves; the
config carries only where to connect (endpoint, region).

Executors do not share the driver's module state: code that runs there calls `configure()` with
the `StorageConfig` its closure captured before resolving a URL.

Export to an object store is made atomic for readers that trust the marker (see `publish`):
files go under `<url>/_temporary/<run>/`, are copied into place, and `<url>/_thresher.json`
(the marker, listing every file with its size) is written last.
"""

from __future__ import annotations

import fnmatch
import glob
import io
import json
import os
import posixpath
import re
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import urlsplit

from pydantic import Field, field_validator

from thresher.schemas.errors import InputError, OutputError
from thresher.stages.base import Strict

MARKER = "_thresher.json"
TEMPORARY = "_temporary"
_SECRET = re.compile(r"(secret|password|token|credential|private|session|access_key|key_id|^key$)", re.I)
_MAGIC = re.compile(r"[*?\[]")


class S3Options(Strict):
    # e.g. http://127.0.0.1:9000 for MinIO or a test server; None: AWS (or AWS_ENDPOINT_URL)
    endpoint_url: str | None = None
    region: str | None = None
    anonymous: bool = False
    connect_timeout_s: float = Field(5.0, gt=0)
    request_timeout_s: float = Field(60.0, gt=0)


class GcsOptions(Strict):
    endpoint_url: str | None = None  # a GCS emulator; None: Google Cloud Storage
    project_id: str | None = None
    anonymous: bool = False


class StorageConfig(Strict):
    s3: S3Options = Field(default_factory=S3Options)
    gcs: GcsOptions = Field(default_factory=GcsOptions)
    # Extra fsspec options per protocol (e.g. {"hf": {"revision": "main"}}) for protocols pyarrow
    # does not serve itself. No credentials here: they come from the environment or a profile.
    options: dict[str, dict[str, Any]] = Field(default_factory=dict)

    @field_validator("options")
    @classmethod
    def _no_secrets(cls, v: dict) -> dict:
        for proto, opts in v.items():
            for k in opts:
                if _SECRET.search(k):
                    raise ValueError(
                        f"storage.options.{proto}.{k}: credentials are not read from the config; "
                        "set them in the environment or a profile (e.g. AWS_ACCESS_KEY_ID, HF_TOKEN)"
                    )
        return v


_CURRENT = StorageConfig()
_CACHE: dict[str, Any] = {}


def configure(cfg: StorageConfig | dict | None) -> StorageConfig:
    """Set the storage options of this process (driver, or an executor's Python worker)."""
    global _CURRENT
    if cfg is None:
        cfg = StorageConfig()
    elif isinstance(cfg, dict):
        cfg = StorageConfig.model_validate(cfg)
    if cfg != _CURRENT:
        _CURRENT = cfg
        _CACHE.clear()
    return _CURRENT


def current() -> StorageConfig:
    return _CURRENT


# ------------------------------------------------------------------------------------ URLs
def scheme_of(p: str) -> str:
    """'' for a plain local path; Windows drive letters are not schemes."""
    m = re.match(r"^([a-zA-Z][a-zA-Z0-9+.\-]*)://", str(p))
    return m.group(1).lower() if m else ""


def is_remote(p: str | os.PathLike) -> bool:
    return scheme_of(str(p)) not in ("", "file")


def local_path(p: str | os.PathLike) -> str:
    s = str(p)
    if scheme_of(s) == "file":
        s = urlsplit(s).path
    return os.path.abspath(os.path.expanduser(s))


def canonical(p: str | os.PathLike) -> str:
    """A stable name for a location: absolute path for local ones, scheme://bucket/key (no
    trailing slash) for the rest. Used for ids, fingerprints and overlap checks."""
    s = str(p)
    if not is_remote(s):
        return local_path(s)
    sch = scheme_of(s)
    rest = s.split("://", 1)[1]
    rest = re.sub(r"/+", "/", rest).rstrip("/")
    return f"{'gs' if sch == 'gcs' else sch}://{rest}"


def join(base: str, *parts: str) -> str:
    if not is_remote(base):
        return os.path.join(local_path(base), *parts)
    return "/".join([canonical(base), *[p.strip("/") for p in parts]])


def has_magic(p: str) -> bool:
    return bool(_MAGIC.search(p))


def _split_magic(p: str) -> tuple[str, str]:
    """('bucket/dir', 'sub/*.jsonl.gz'): the longest prefix free of wildcards, and the rest."""
    parts = p.split("/")
    for i, part in enumerate(parts):
        if has_magic(part):
            return "/".join(parts[:i]), "/".join(parts[i:])
    return p, ""


def _glob_regex(pattern: str) -> re.Pattern:
    """'**' crosses folders (zero or more), '*' and '?' stay within one."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        else:
            c = pattern[i]
            if c == "*":
                out += "[^/]*"
            elif c == "?":
                out += "[^/]"
            elif c == "[":
                j = pattern.find("]", i)
                if j < 0:
                    out += re.escape(c)
                else:
                    out += fnmatch.translate(pattern[i:j + 1])[4:-3]
                    i = j
            else:
                out += re.escape(c)
            i += 1
    return re.compile(out + r"\Z")


# ------------------------------------------------------------------------------ filesystems
def _endpoint(url: str) -> tuple[str, str]:
    u = urlsplit(url if "://" in url else f"https://{url}")
    return u.scheme or "https", u.netloc + u.path.rstrip("/")


def filesystem(url: str, storage: StorageConfig | None = None):
    """(pyarrow FileSystem, path on it) for a local path or URL."""
    cfg = storage or _CURRENT
    sch = scheme_of(str(url))
    if sch in ("", "file"):
        from pyarrow import fs as pafs

        return _cached("local", lambda: pafs.LocalFileSystem()), local_path(url)
    rest = canonical(url).split("://", 1)[1]
    key = f"{sch}:{cfg.model_dump_json()}"
    if sch == "s3":
        return _cached(key, lambda: _s3(cfg.s3)), rest
    if sch in ("gs", "gcs"):
        return _cached(key, lambda: _gcs(cfg.gcs)), rest
    return _cached(key, lambda: _fsspec(sch, cfg.options.get(sch, {}), url)), rest


def _cached(key: str, make):
    fs = _CACHE.get(key)
    if fs is None:
        fs = _CACHE[key] = make()
    return fs


def _s3(o: S3Options):
    from pyarrow import fs as pafs

    kw: dict[str, Any] = {"connect_timeout": o.connect_timeout_s, "request_timeout": o.request_timeout_s,
                          "anonymous": o.anonymous}
    endpoint = o.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        kw["scheme"], kw["endpoint_override"] = _endpoint(endpoint)
    region = o.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        kw["region"] = region
    elif endpoint:
        kw["region"] = "us-east-1"  # a custom endpoint has no region to look up
    # Fail fast on a refused connection or missing bucket instead of backing off for minutes.
    kw["retry_strategy"] = pafs.AwsStandardS3RetryStrategy(max_attempts=2)
    return pafs.S3FileSystem(**kw)


def _gcs(o: GcsOptions):
    from pyarrow import fs as pafs

    kw: dict[str, Any] = {"anonymous": o.anonymous}
    if o.endpoint_url:
        kw["scheme"], kw["endpoint_override"] = _endpoint(o.endpoint_url)
    if o.project_id:
        kw["project_id"] = o.project_id
    return pafs.GcsFileSystem(**kw)


def known_protocols() -> list[str]:
    try:
        from fsspec.registry import known_implementations

        extra = sorted(known_implementations)
    except ImportError:
        extra = []
    return ["file", "s3", "gs", *[p for p in extra if p not in ("file", "s3", "gs", "gcs", "s3a")]]


def _fsspec(sch: str, opts: dict, url: str):
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    try:
        import fsspec

        cls = fsspec.get_filesystem_class(sch)
    except (ImportError, ValueError):
        raise InputError(f"{url}: unknown URL scheme '{sch}://' (thresher reads local paths, file://, s3://, gs://, "
                         "hf:// and the protocols of installed fsspec filesystems)") from None
    except Exception as exc:  # a known protocol whose package is missing
        raise InputError(f"{url}: the '{sch}://' filesystem is not installed ({str(exc).splitlines()[0][:160]})") from None
    return PyFileSystem(FSSpecHandler(cls(**opts)))


# ------------------------------------------------------------------------------- errors
def explain(exc: BaseException) -> str:
    """The cause of a storage error in a few words (the SDKs' messages run to paragraphs)."""
    msg = str(exc)
    low = msg.lower()
    table = [
        (("nosuchbucket", "bucket does not exist", "bucket not found", "the specified bucket does not exist"), "bucket does not exist"),
        (("invalidaccesskeyid", "access key id you provided does not exist"),
         "access key not recognised (InvalidAccessKeyId): check AWS_ACCESS_KEY_ID or the profile"),
        (("signaturedoesnotmatch",), "wrong secret key (SignatureDoesNotMatch): check AWS_SECRET_ACCESS_KEY or the profile"),
        (("no credentials", "unable to locate credentials", "missing credentials", "no response body"),
         "no credentials found (set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE or an instance role)"),
        (("accessdenied", "access denied", "forbidden", "permission denied", "http status 403"), "access denied"),
        (("couldn't connect", "could not connect", "connection refused", "failed to connect", "curlcode: 7"),
         "cannot connect to the storage endpoint"),
        (("timed out", "timeout"), "the storage endpoint did not answer in time"),
    ]
    # The AWS SDK spells codes SIGNATURE_DOES_NOT_MATCH, botocore SignatureDoesNotMatch.
    squashed = re.sub(r"[^a-z0-9]", "", low)
    for needles, cause in table:
        if any(n in low or re.sub(r"[^a-z0-9]", "", n) in squashed for n in needles):
            return cause
    if "aws error" in low and _no_aws_credentials():
        # Without credentials the SDK sends unsigned requests; servers answer 403 or 500.
        return "no credentials found (set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE or an instance role)"
    first = next((ln.strip() for ln in msg.splitlines() if ln.strip()), type(exc).__name__)
    return first[:200]


def _no_aws_credentials() -> bool:
    if _CURRENT.s3.anonymous or os.environ.get("AWS_ACCESS_KEY_ID") or os.environ.get("AWS_PROFILE"):
        return False
    if os.environ.get("AWS_WEB_IDENTITY_TOKEN_FILE") or os.environ.get("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"):
        return False
    files = [os.environ.get("AWS_SHARED_CREDENTIALS_FILE") or os.path.expanduser("~/.aws/credentials"),
             os.environ.get("AWS_CONFIG_FILE") or os.path.expanduser("~/.aws/config")]
    # An instance role cannot be seen from here; metadata lookups switched off rule it out.
    return not any(os.path.exists(f) for f in files) and os.environ.get("AWS_EC2_METADATA_DISABLED", "").lower() == "true"


def _bucket(url: str) -> str | None:
    if scheme_of(url) in ("s3", "gs", "gcs"):
        return canonical(url).split("://", 1)[1].split("/", 1)[0]
    return None


def _check_bucket(url: str) -> None:
    """Object stores answer 'not found' for a key in a missing bucket: say which it is."""
    b = _bucket(url)
    if b is None:
        return
    fs, _ = filesystem(url)
    from pyarrow.fs import FileType

    with _named(url):
        info = fs.get_file_info(b)
    if info.type == FileType.NotFound:
        raise InputError(f"{url}: bucket '{b}' does not exist")


@contextmanager
def _named(url: str):
    """Storage errors (OSError from pyarrow or fsspec) as one InputError line naming `url`."""
    try:
        yield
    except OSError as exc:
        raise InputError(f"{url}: {explain(exc)}") from None


# ------------------------------------------------------------------------------- listing
class Entry(tuple):
    """(canonical location, size in bytes, mtime in ns or None)."""

    __slots__ = ()

    def __new__(cls, loc: str, size: int | None, mtime_ns: int | None):
        return super().__new__(cls, (loc, size, mtime_ns))

    loc = property(lambda s: s[0])
    size = property(lambda s: s[1])
    mtime_ns = property(lambda s: s[2])


def _loc(url: str, path: str) -> str:
    if not is_remote(url):
        return path
    return f"{canonical(url).split('://', 1)[0]}://{path.lstrip('/')}"


def info(url: str):
    """pyarrow FileInfo of one location; storage errors become InputError naming the URL."""
    fs, path = filesystem(url)
    with _named(url):
        return fs.get_file_info(path)


def expand(spec: str) -> list[tuple[str, str, bool]]:
    """Matches of a file, folder or glob: (canonical location, root it is relative to, is_dir).
    An empty list when nothing matches."""
    from pyarrow.fs import FileSelector, FileType

    fs, path = filesystem(spec)
    base, pattern = _split_magic(path) if has_magic(path) else (path, "")
    with _named(spec):
        if not pattern:
            i = fs.get_file_info(path)
            if i.type == FileType.NotFound:
                if is_remote(spec):
                    _check_bucket(spec)
                return []
            return [(_loc(spec, path), _loc(spec, path if i.type == FileType.Directory else posixpath.dirname(path)),
                     i.type == FileType.Directory)]
        rx = _glob_regex(pattern)
        sel = FileSelector(base, allow_not_found=True, recursive="/" in pattern or "**" in pattern)
        infos = fs.get_file_info(sel)
        if not infos and is_remote(spec):
            _check_bucket(spec)
    out = []
    b = base.strip("/")
    for i in infos:
        ip = i.path.lstrip("/")  # some fsspec filesystems (memory, local) answer with a leading '/'
        rel = ip[len(b):].lstrip("/") if b and ip.startswith(b) else ip
        if rx.match(rel):
            out.append((_loc(spec, i.path), i.type == FileType.Directory))
    # as with glob.glob: a matched file is relative to its own folder, a matched folder to itself
    return [(loc, loc if d else _parent(loc), d) for loc, d in sorted(out)]


def _parent(loc: str) -> str:
    if not is_remote(loc):
        return os.path.dirname(loc)
    sch, rest = loc.split("://", 1)
    return f"{sch}://{posixpath.dirname(rest)}"


def walk_files(loc: str) -> list[Entry]:
    """Every file under a folder (recursive), sorted."""
    from pyarrow.fs import FileSelector, FileType

    fs, path = filesystem(loc)
    with _named(loc):
        infos = fs.get_file_info(FileSelector(path, recursive=True))
    return sorted(Entry(_loc(loc, i.path), i.size, i.mtime_ns) for i in infos if i.type == FileType.File)


def matches(spec: str) -> list[tuple[str, str, bool]]:
    """`expand` for local paths too: (location, root it is relative to, is_dir) for each match of
    a file, folder or glob; an empty list when nothing matches or a named path is missing."""
    if is_remote(spec):
        return expand(spec)
    spec = local_path(spec) if scheme_of(spec) == "file" else spec
    found = sorted(glob.glob(spec, recursive=True)) if has_magic(spec) else [spec]
    if not found or not all(os.path.exists(m) for m in found):
        return []
    return [(m, m if os.path.isdir(m) else os.path.dirname(m), os.path.isdir(m)) for m in found]


def folder_files(loc: str) -> list[str]:
    """Every file under a local or remote folder (recursive), sorted."""
    if is_remote(loc):
        return [e.loc for e in walk_files(loc)]
    return sorted(str(p) for p in Path(loc).rglob("*") if p.is_file())


def hidden(rel: str) -> bool:
    """A path relative to its input root that readers skip: a part starting with '.' or '_'
    (Spark/Hadoop markers such as _SUCCESS and .crc, hidden files, _temporary/)."""
    return any(part.startswith((".", "_")) for part in rel.replace(os.sep, "/").split("/"))


def relpath(loc: str, root: str) -> str:
    if not is_remote(loc):
        return os.path.relpath(loc, root)
    return loc[len(root):].lstrip("/") if loc.startswith(root) else posixpath.basename(loc)


def stat(loc: str) -> Entry:
    i = info(loc)
    return Entry(canonical(loc), i.size, i.mtime_ns)


# ------------------------------------------------------------------------------- opening
def open_input_file(loc: str):
    """Random access (Parquet footers, row groups)."""
    fs, path = filesystem(loc)
    with _named(loc):
        return fs.open_input_file(path)


def parquet_file(loc: str):
    """A Parquet file's reader (footer read) at a local path or URL; a damaged or non-Parquet
    file is one InputError line naming it."""
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(open_input_file(loc) if is_remote(loc) else loc)
    except InputError:
        raise
    except Exception as exc:  # pyarrow raises several types for a damaged footer
        raise InputError(f"{loc}: not a readable Parquet file ({str(exc).splitlines()[0][:120]})") from None


def open_input_stream(loc: str):
    """Sequential bytes (JSONL, Arrow IPC streams); gzip is undone by the caller."""
    fs, path = filesystem(loc)
    with _named(loc):
        return fs.open_input_stream(path, compression=None)


class _Raw(io.RawIOBase):
    """A pyarrow stream as a Python raw file, so that io.BufferedReader gives it lines."""

    def __init__(self, native):
        self._f = native

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        data = self._f.read(len(b))
        b[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self._f.close()
        super().close()


def open_binary(loc: str):
    """A Python binary file (iterable by lines); gzip undone for names ending in .gz. Local paths
    get Python's own file objects (and their OSError), URLs a pyarrow stream."""
    import gzip

    if not is_remote(loc):
        return gzip.open(loc, "rb") if loc.lower().endswith(".gz") else open(loc, "rb")
    raw = open_input_stream(loc)
    if loc.lower().endswith(".gz"):
        return gzip.GzipFile(fileobj=io.BufferedReader(_Raw(raw), 1 << 20), mode="rb")
    return io.BufferedReader(_Raw(raw), 1 << 20)


def read_text(loc: str) -> str:
    with open_input_stream(loc) as f:
        return f.read().decode()


def write_bytes(loc: str, data: bytes) -> None:
    fs, path = filesystem(loc)
    with fs.open_output_stream(path) as f:
        f.write(data)


# ------------------------------------------------------------------------------- overlap
def _scope(spec: str) -> str:
    """The location an input covers: a glob covers its wildcard-free prefix."""
    c = canonical(spec)
    if has_magic(c):
        sch = scheme_of(c)
        if sch:
            base, _ = _split_magic(c.split("://", 1)[1])
            return f"{sch}://{base}".rstrip("/")
        base, _ = _split_magic(c)
        return base.rstrip("/") or "/"
    if not is_remote(c):
        return os.path.realpath(c)
    return c


def within(inner: str, outer: str) -> bool:
    a, b = _scope(inner), _scope(outer)
    return a == b or a.startswith(b.rstrip("/") + "/")


def check_output_overlap(output: str, inputs: Iterable[str]) -> None:
    """Hook for the run folder checks: an output inside an input would be read back by the next
    run; an input inside the output would be clobbered by --overwrite."""
    for inp in inputs:
        if within(output, inp):
            raise OutputError(f"{output}: output is inside the input {inp}; choose another output")
        if is_remote(output) and within(inp, output):
            raise OutputError(f"{output}: the input {inp} lies inside the output; choose another output")


# ------------------------------------------------------------------------------- publish
def read_marker(url: str) -> dict | None:
    """The marker of a dataset published at `url`, or None when there is none (never published,
    or a publish that did not finish)."""
    fs, path = filesystem(url)
    from pyarrow.fs import FileType

    try:
        if fs.get_file_info(posixpath.join(path, MARKER) if is_remote(url) else os.path.join(path, MARKER)).type != FileType.File:
            return None
        return json.loads(read_text(join(url, MARKER)))
    except (OSError, ValueError):
        return None


def check_output_url(url: str, overwrite: bool, resume: bool) -> None:
    """Every check on a remote output that writes nothing lasting: reachable, bucket there, not a
    foreign prefix, writable (a probe object written and removed)."""
    fs, path = filesystem(url)
    from pyarrow.fs import FileSelector

    if is_remote(url):
        try:
            _check_bucket(url)
        except InputError as exc:
            raise OutputError(str(exc)) from None
    try:
        present = fs.get_file_info(FileSelector(path, allow_not_found=True, recursive=False))
    except OSError as exc:
        raise OutputError(f"{url}: {explain(exc)}") from None
    names = {posixpath.basename(i.path.rstrip("/")) for i in present}
    if names - {TEMPORARY}:
        marker = read_marker(url)
        if marker is None and MARKER not in names and not names <= {TEMPORARY, "dataset", "README.md", "manifest.json"}:
            raise OutputError(f"{url}: output location is not empty and holds no thresher dataset; choose an empty one")
        if marker is not None and not (overwrite or resume):
            raise OutputError(f"{url}: output holds a dataset from a previous run; pass --overwrite to replace it or --resume")
    probe = posixpath.join(path, TEMPORARY, f".write-test-{uuid.uuid4().hex}")
    try:
        with fs.open_output_stream(probe) as f:
            f.write(b"")
        fs.delete_file(probe)
    except OSError as exc:
        raise OutputError(f"{url}: output is not writable ({explain(exc)})") from None


def publish(local_root: str, url: str, names: list[str], run_id: str, extra: dict | None = None,
            upload=None) -> dict:
    """Copy `names` (files or folders under the local run folder) to `url`, atomically for
    readers that trust the marker.

    1. every file is uploaded under <url>/_temporary/<run_id>/ (invisible to pyarrow, Spark,
       polars/duckdb globs of <url>/dataset/*.parquet and Hugging Face's data_dir loader, which all
       skip names starting with '_' or '.');
    2. the previous marker is deleted, then the files are copied into place server-side and files
       of an earlier dataset that the new one does not have are deleted;
    3. <url>/_thresher.json, listing every file and its size, is written last.
    A reader that trusts the marker sees the old dataset, then no dataset, then the new one.
    `upload(pairs)` copies (local file, remote location) pairs, e.g. in Spark executors; by
    default the driver does it with pyarrow's threads.
    """
    from pyarrow import fs as pafs

    fs, path = filesystem(url)
    staging = posixpath.join(path, TEMPORARY, run_id)
    pairs: list[tuple[str, str, str, int]] = []  # local file, staged path, final path, size
    for name in names:
        src = os.path.join(local_root, name)
        files = [src] if os.path.isfile(src) else sorted(
            os.path.join(d, f) for d, _, fs_ in os.walk(src) for f in fs_
            if not f.startswith((".", "_")))
        for f in files:
            rel = os.path.relpath(f, local_root).replace(os.sep, "/")
            pairs.append((f, posixpath.join(staging, rel), posixpath.join(path, rel), os.path.getsize(f)))
    try:
        if upload is not None:
            upload([(a, _loc(url, b)) for a, b, _, _ in pairs])
        else:
            local = pafs.LocalFileSystem()
            for a, b, _, _ in pairs:
                pafs.copy_files(a, b, source_filesystem=local, destination_filesystem=fs)
        old = read_marker(url)
        marker_path = posixpath.join(path, MARKER)
        if old is not None:
            fs.delete_file(marker_path)
        for _, b, c, _ in pairs:
            fs.copy_file(b, c)
        keep = {c for _, _, c, _ in pairs}
        for f in (old or {}).get("files", []):
            p = posixpath.join(path, f["path"])
            if p not in keep:
                try:
                    fs.delete_file(p)
                except OSError:
                    pass
        marker = {
            "thresher_dataset": 1,
            "run_id": run_id,
            "published": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "files": [{"path": posixpath.relpath(c, path), "bytes": n} for _, _, c, n in pairs],
            **(extra or {}),
        }
        with fs.open_output_stream(marker_path) as f:
            f.write(json.dumps(marker, indent=2).encode())
    except OSError as exc:
        raise OutputError(f"{url}: publishing the dataset failed ({explain(exc)}); readers that "
                          f"trust {MARKER} see no dataset; rerun to publish again") from None
    finally:
        try:
            fs.delete_dir(staging)
        except OSError:
            pass
    return marker


def clear_staging(url: str) -> None:
    """Remove what killed publishes left under <url>/_temporary/ (invisible to readers)."""
    fs, path = filesystem(url)
    try:
        fs.delete_dir(posixpath.join(path, TEMPORARY))
    except (OSError, FileNotFoundError):
        pass


def upload_in_executors(spark):
    """An `upload` for publish: one Spark task per file, each executor copying with pyarrow."""
    opts = current().model_dump()

    def make(pairs):
        if not pairs:
            return
        n = max(1, min(len(pairs), 4 * spark.sparkContext.defaultParallelism))

        def copy(it):
            from pyarrow import fs as pafs

            configure(opts)
            local = pafs.LocalFileSystem()
            done = 0
            for src, dst in it:
                fs, p = filesystem(dst)
                pafs.copy_files(src, p, source_filesystem=local, destination_filesystem=fs)
                done += 1
            yield done

        spark.sparkContext.parallelize(pairs, n).mapPartitions(copy).collect()

    return make
