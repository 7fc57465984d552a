"""Storage URIs: where a job's checkpoints and artifacts go, reachable from every node.

A job's ``storage:`` names one of

- ``s3://BUCKET/PREFIX``: AWS S3 through pyarrow's ``S3FileSystem``. The endpoint comes from
  ``AWS_ENDPOINT_URL_S3``, else ``AWS_ENDPOINT_URL`` (moto, MinIO; ignored when
  ``AWS_IGNORE_CONFIGURED_ENDPOINT_URLS=true``), the region from ``AWS_DEFAULT_REGION``,
  else ``AWS_REGION``, else ``us-east-1`` with an endpoint and the bucket's own region
  (asked of S3 once per process) without. Credentials come from the AWS SDK's default
  chain: ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN``, then
  the config files, then the instance role. They are never put into the filesystem
  object, so a pickled copy (Ray sends one to every worker) carries none and each node
  uses its own.
- ``gs://BUCKET/PREFIX``: Google Cloud Storage through pyarrow's ``GcsFileSystem`` with
  the default credentials; ``STORAGE_EMULATOR_HOST`` (``http://HOST:PORT``) points it at
  an emulator, anonymously.
- ``file:///ABS/PATH`` or a plain absolute path: a local (or shared) disk.

Keys are taken literally (no percent-decoding). Credentials, query strings and fragments
are refused in a URI, and a refusal never echoes its input, so a secret pasted there
stays out of logs. :func:`filesystem` gives what Ray Train's
``RunConfig(storage_path=..., storage_filesystem=...)`` takes. pyarrow is imported only
inside the functions that need it.

Checkpoints have the format of :mod:`workloads.train`: a folder holding ``state.pt`` and
``meta.json`` whose JSON object has an integer ``"step"``.
"""

from __future__ import annotations

import functools
import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from broker.errors import ConfigError, NotFound, SpecError

if TYPE_CHECKING:
    import pyarrow.fs

CHECKPOINT_FILE = "state.pt"  # the same names as workloads.train, which imports torch
META_FILE = "meta.json"
MAX_META_BYTES = 1 << 20  # a larger meta.json is not one of ours

SCHEMES = ("s3", "gs", "file")
_ALLOWED = (
    "expected s3://BUCKET/PREFIX, gs://BUCKET/PREFIX, file:///ABSOLUTE/PATH or an absolute path"
)
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_FIELD = "storage"


@dataclass(frozen=True)
class StorageUri:
    """A parsed storage URI; ``str()`` gives its canonical form.

    ``scheme`` is ``"s3"``, ``"gs"`` or ``"file"``; ``bucket`` is empty for ``file``;
    ``path`` is the key prefix inside the bucket without leading or trailing ``/`` (empty
    for the bucket itself), or for ``file`` an absolute path without a trailing ``/``.
    """

    scheme: str
    bucket: str
    path: str

    def __str__(self) -> str:
        if self.scheme == "file":
            return f"file://{self.path}"
        suffix = f"/{self.path}" if self.path else ""
        return f"{self.scheme}://{self.bucket}{suffix}"

    @property
    def fs_path(self) -> str:
        """The path inside this URI's filesystem: ``BUCKET/PREFIX``, or the local path."""
        if self.scheme == "file":
            return self.path
        return f"{self.bucket}/{self.path}" if self.path else self.bucket

    def child(self, *parts: str) -> StorageUri:
        """This URI with ``parts`` (each may hold ``/``) appended."""
        segments = _segments("/".join(parts))
        if not segments:
            return self
        if self.scheme == "file":
            base = self.path.rstrip("/")
            return StorageUri("file", "", base + "/" + "/".join(segments))
        return StorageUri(self.scheme, self.bucket, "/".join(_segments(self.path) + segments))


def _segments(path: str) -> list[str]:
    """The non-empty segments of ``path``; ``.`` is dropped and ``..`` refused."""
    if _CONTROL.search(path):
        raise SpecError(_FIELD, "control characters are not allowed in a storage path")
    segments = [segment for segment in path.split("/") if segment not in ("", ".")]
    if ".." in segments:
        raise SpecError(_FIELD, "'..' is not allowed in a storage path")
    return segments


def parse(uri: str) -> StorageUri:
    """Parse and validate a storage URI; a ``SpecError`` on ``storage`` says what is allowed."""
    if not isinstance(uri, str) or not uri.strip():
        raise SpecError(_FIELD, f"empty; {_ALLOWED}")
    text = uri.strip()
    if _CONTROL.search(text):
        raise SpecError(_FIELD, f"control characters are not allowed; {_ALLOWED}")
    if text.startswith("/"):
        return StorageUri("file", "", "/" + "/".join(_segments(text)))
    if "://" not in text:
        raise SpecError(_FIELD, f"a relative path or a URI without a scheme; {_ALLOWED}")
    scheme, rest = text.split("://", 1)
    scheme = scheme.lower()
    if scheme not in SCHEMES:
        raise SpecError(_FIELD, f"unsupported scheme (allowed: s3, gs, file); {_ALLOWED}")
    netloc, _, path = rest.partition("/")
    if "@" in netloc:
        raise SpecError(
            _FIELD,
            "credentials are not allowed in a storage URI; use the cloud's own credentials "
            "(environment, profile or instance role)",
        )
    if "?" in text or "#" in text:
        raise SpecError(_FIELD, f"query strings and fragments are not allowed; {_ALLOWED}")
    if scheme == "file":
        if netloc not in ("", "localhost"):
            raise SpecError(_FIELD, f"a file URI names no host; {_ALLOWED}")
        return StorageUri("file", "", "/" + "/".join(_segments(path)))
    if not netloc:
        raise SpecError(_FIELD, f"the bucket is missing; {_ALLOWED}")
    if not _BUCKET.match(netloc) or ".." in netloc:
        raise SpecError(
            _FIELD,
            "the bucket name must be 3-222 lowercase letters, digits, '.', '_' or '-', "
            "starting and ending with a letter or digit",
        )
    return StorageUri(scheme, netloc, "/".join(_segments(path)))


def join(uri: str, *parts: str) -> str:
    """``uri`` with ``parts`` appended, canonical: ``join("s3://b/runs", "job-1")``."""
    return str(parse(uri).child(*parts))


# --- filesystems ------------------------------------------------------------------------


def _endpoint(raw: str, variable: str) -> tuple[str, str]:
    """``(host[:port][/path], scheme)`` from an endpoint URL; ConfigError when malformed."""
    parsed = urlsplit(raw if "://" in raw else f"https://{raw}")
    if parsed.scheme not in ("http", "https") or not parsed.hostname or "@" in parsed.netloc:
        raise ConfigError(f"{variable}: expected http(s)://HOST[:PORT], without credentials")
    return parsed.netloc + parsed.path.rstrip("/"), parsed.scheme


def _s3_endpoint() -> tuple[str, str] | None:
    if os.environ.get("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "").lower() == "true":
        return None
    for variable in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
        raw = os.environ.get(variable, "").strip()
        if raw:
            return _endpoint(raw, variable)
    return None


@functools.lru_cache(maxsize=64)
def _bucket_region(bucket: str) -> str | None:
    """The bucket's region as S3 reports it, or None when S3 cannot be asked."""
    from pyarrow.fs import resolve_s3_region

    try:
        return str(resolve_s3_region(bucket))
    except (OSError, ValueError):
        return None


def _s3(bucket: str) -> pyarrow.fs.FileSystem:
    from pyarrow.fs import S3FileSystem

    endpoint = _s3_endpoint()
    region = os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION") or None
    if endpoint is None:
        if region is None:
            region = _bucket_region(bucket)
        return S3FileSystem(region=region)
    override, scheme = endpoint
    return S3FileSystem(region=region or "us-east-1", endpoint_override=override, scheme=scheme)


def _gcs() -> pyarrow.fs.FileSystem:
    from pyarrow.fs import GcsFileSystem

    emulator = os.environ.get("STORAGE_EMULATOR_HOST", "").strip()
    if emulator:
        override, scheme = _endpoint(emulator, "STORAGE_EMULATOR_HOST")
        return GcsFileSystem(anonymous=True, endpoint_override=override, scheme=scheme)
    return GcsFileSystem()


def _filesystem(parsed: StorageUri) -> pyarrow.fs.FileSystem:
    if parsed.scheme == "s3":
        return _s3(parsed.bucket)
    if parsed.scheme == "gs":
        return _gcs()
    from pyarrow.fs import LocalFileSystem

    return LocalFileSystem()


def filesystem(uri: str) -> tuple[pyarrow.fs.FileSystem, str]:
    """The pyarrow filesystem for ``uri`` and the path inside it (``BUCKET/PREFIX``).

    The pair is what Ray Train's ``RunConfig(storage_path=path, storage_filesystem=fs)``
    takes; a new filesystem each call, so it reflects the environment of the moment.
    """
    parsed = parse(uri)
    return _filesystem(parsed), parsed.fs_path


# --- operations -------------------------------------------------------------------------


def exists(uri: str) -> bool:
    """Whether a file or folder (for S3 and GCS: any object under the prefix) is at ``uri``."""
    from pyarrow.fs import FileType

    fs, path = filesystem(uri)
    return bool(fs.get_file_info(path).type != FileType.NotFound)


def _read_step(fs: pyarrow.fs.FileSystem, meta_path: str) -> int | None:
    """The integer ``"step"`` of a ``meta.json``, or None when it is not one of ours."""
    try:
        with fs.open_input_stream(meta_path, compression=None) as stream:
            raw = stream.read(MAX_META_BYTES + 1)
    except FileNotFoundError:  # deleted since the listing (a checkpoint rotated out)
        return None
    if len(raw) > MAX_META_BYTES:
        return None
    try:
        meta = json.loads(raw)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError both are
        return None
    step = meta.get("step") if isinstance(meta, dict) else None
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        return None
    return step


def _plain(relative: str) -> bool:
    """Whether a listed folder below the root has a URI of its own: no empty, ``.`` or
    ``..`` segment (legal in S3 keys, but not in the URIs this module gives out)."""
    return all(segment not in ("", ".", "..") for segment in relative.split("/")[1:])


def latest_checkpoint(uri: str) -> tuple[str, int] | None:
    """The checkpoint folder with the highest step anywhere under ``uri``, and that step.

    One recursive listing (a single paged ``ListObjectsV2`` on S3), then a read of the
    ``meta.json`` of each folder that also holds ``state.pt`` (on S3 pyarrow makes that a
    HEAD and a GET), up to 8 at a time. Folders whose meta.json is not a JSON object with
    a non-negative integer ``"step"`` are ignored; of equal steps the folder whose path
    sorts last wins (Ray names its folders by time). None when there is no checkpoint, or
    nothing at ``uri``.
    """
    from pyarrow.fs import FileSelector, FileType

    parsed = parse(uri)
    fs = _filesystem(parsed)
    root = parsed.fs_path
    base = root.rstrip("/")  # "" for the local root "/"
    infos = fs.get_file_info(FileSelector(root, recursive=True, allow_not_found=True))
    files = {info.path for info in infos if info.type == FileType.File}
    folders = sorted(
        path[: -len(META_FILE) - 1]
        for path in files
        if path.endswith("/" + META_FILE)
        and path[: -len(META_FILE)] + CHECKPOINT_FILE in files
        and _plain(path[len(base) : -len(META_FILE) - 1])
    )
    if not folders:
        return None
    metas = [f"{folder}/{META_FILE}" for folder in folders]
    if len(metas) == 1:
        steps = [_read_step(fs, metas[0])]
    else:
        with ThreadPoolExecutor(max_workers=min(8, len(metas))) as pool:
            steps = list(pool.map(lambda meta: _read_step(fs, meta), metas))
    found = [
        (step, folder) for step, folder in zip(steps, folders, strict=True) if step is not None
    ]
    if not found:
        return None
    step, folder = max(found)
    return str(parsed.child(folder[len(base) :])), step


def download(uri_dir: str, local_dir: Path) -> None:
    """Copy the folder tree at ``uri_dir`` into ``local_dir`` (created; files replaced).

    ``NotFound`` when there is no folder at ``uri_dir``.
    """
    from pyarrow.fs import FileType, LocalFileSystem, copy_files

    fs, path = filesystem(uri_dir)
    if fs.get_file_info(path).type != FileType.Directory:
        raise NotFound(f"no folder at the storage URI {parse(uri_dir)}")
    local = Path(local_dir).resolve()
    local.mkdir(parents=True, exist_ok=True)
    copy_files(path, str(local), source_filesystem=fs, destination_filesystem=LocalFileSystem())


def upload(local_dir: Path, uri_dir: str) -> None:
    """Copy the folder tree ``local_dir`` to ``uri_dir``; files of the same name are
    replaced, others already there are left. ``NotFound`` when ``local_dir`` is no folder.
    """
    from pyarrow.fs import LocalFileSystem, copy_files

    local = Path(local_dir).resolve()
    if not local.is_dir():
        raise NotFound(f"no local folder {local}")
    fs, path = filesystem(uri_dir)
    copy_files(str(local), path, source_filesystem=LocalFileSystem(), destination_filesystem=fs)
