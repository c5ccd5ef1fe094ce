"""Where component files live: local paths or fsspec URLs (``s3://``, ``gs://``, ``memory://``).

The file components (:mod:`~curator_worker.components.jsonl`,
:mod:`~curator_worker.components.parquet`, :class:`~curator_worker.components.text.TextStats`)
read and write through these functions, so one spec works on a laptop's disk and on a
bucket:

- A plain path (or a ``file://`` URL) is written to a temporary file beside the target and
  renamed onto it (:func:`curator_worker.atomic.atomic_path`).
- Any other URL goes through fsspec. Object stores have no rename, so each output is
  serialised in memory first and then written in one write of its final name
  (``fs.pipe_file``: one PUT, or a multipart upload that completes only when every part
  arrived): no object under a final name is ever partial.

Credentials never belong in a spec: a spec's params are stored in the job store. Leave them
out of ``storage_options`` (fsspec and boto read ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``, a profile, or ``FSSPEC_S3_*`` variables),
or write a value as ``"${VARIABLE}"``: it is read from the environment of the process that
opens the file. A credential written in clear is refused with an error naming the key (its
value is never printed or logged).
"""

from __future__ import annotations

import glob
import logging
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import IO, Any

import fsspec
import fsspec.core
from fsspec.utils import infer_compression

from curator_worker.atomic import atomic_path
from curator_worker.components.storage_options import (
    check_storage_options,
    resolve_storage_options,
)

logger = logging.getLogger(__name__)

__all__ = [
    "PathList",
    "check_location",
    "check_storage_options",
    "download_file",
    "exists",
    "is_remote",
    "join",
    "list_files",
    "list_objects",
    "local_path",
    "open_input",
    "read_bytes",
    "remove_objects",
    "remove_prefix",
    "resolve_storage_options",
    "upload_file",
    "write_bytes",
]

_SCHEME = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*)://")
_GLOB_MAGIC = re.compile(r"[*?\[]")
_URL_PASSWORD = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://[^/@]*:[^/@]*@")
#: fsspec protocols of object stores: no folders, and a missing bucket is never created.
OBJECT_STORES = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "oss", "r2"})
class PathList(tuple):  # type: ignore[type-arg]
    """A spec param holding one path, URL or glob, or a list of them.

    ``PathList("s3://b/raw/*.jsonl")`` and ``PathList(["a.jsonl", "b.jsonl"])`` are both
    accepted, so a spec may give ``paths: data/*.jsonl`` or a YAML list.

    Examples
    --------
    >>> PathList("raw/*.jsonl"), PathList(["a", "b"])
    (('raw/*.jsonl',), ('a', 'b'))
    """

    def __new__(cls, value: str | os.PathLike[str] | Iterable[str | os.PathLike[str]] = ()
                ) -> PathList:
        if isinstance(value, str | os.PathLike):
            items = [os.fspath(value)]
        else:
            items = [os.fspath(v) for v in value]
        for item in items:
            if not isinstance(item, str) or not item:
                raise ValueError("paths must be non-empty strings.")
            check_location(item, "paths")
        return super().__new__(cls, items)


def check_location(path: str, owner: str) -> str:
    """``path`` itself, unless it is a URL with a password in it (refused, not echoed).

    Raises
    ------
    ValueError
        For ``scheme://user:password@host/...``: a spec is stored in the job store.

    Examples
    --------
    >>> check_location("s3://bucket/raw/*.jsonl", "JsonlFiles")
    's3://bucket/raw/*.jsonl'
    """
    if _URL_PASSWORD.match(path):
        raise ValueError(
            f"{owner}: a URL holds a password ('user:password@'), and a spec is stored in "
            "the job store. Give credentials through the environment or storage_options "
            "'${ENV_VARIABLE}' values."
        )
    return path


def is_remote(path: str) -> bool:
    """True for a URL that fsspec must open (any scheme but ``file://``).

    Examples
    --------
    >>> is_remote("s3://bucket/a.jsonl"), is_remote("file:///tmp/a"), is_remote("a/b")
    (True, False, False)
    """
    found = _SCHEME.match(path)
    return bool(found) and found["scheme"].lower() != "file"


def local_path(path: str) -> str:
    """``path`` without a ``file://`` prefix.

    Examples
    --------
    >>> local_path("file:///tmp/a.jsonl"), local_path("out/a.jsonl")
    ('/tmp/a.jsonl', 'out/a.jsonl')
    """
    return path[len("file://"):] if path.lower().startswith("file://") else path


def join(folder: str, name: str) -> str:
    """``folder/name`` for a directory path or a URL prefix.

    Examples
    --------
    >>> join("s3://bucket/out/", "a.jsonl"), join("out", "a.jsonl")
    ('s3://bucket/out/a.jsonl', 'out/a.jsonl')
    """
    if _SCHEME.match(folder):
        return folder.rstrip("/") + "/" + name
    return os.path.join(folder, name)


def _filesystem(url: str, options: Mapping[str, Any]) -> tuple[Any, str]:
    return fsspec.core.url_to_fs(url, **dict(options))


#: Protocols whose URLs name a bucket (or container) first: their outputs are probed.
BUCKET_PROTOCOLS = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss"})


def check_output_location(url: str, options: Mapping[str, Any], owner: str) -> None:
    """Fail in one line when ``url``'s bucket cannot be reached, refuses the credentials
    or does not exist: before a job runs, not as a failure of every index.

    Only URLs of :data:`BUCKET_PROTOCOLS` are probed (one request for the bucket); other
    locations are left to the first write, and so is a bucket this host has no
    credentials for (the workers may have them). Nothing is written or created.

    Raises
    ------
    ValueError
        Naming the URL, what went wrong and the fix; never a credential.
    """
    protocol = url.split("://", 1)[0].lower() if "://" in url else ""
    if protocol not in BUCKET_PROTOCOLS:
        return
    try:
        # a filesystem of its own: the probe's listing must not stay in the cached
        # instance that sources and sinks share (a later glob would read it)
        fs, path = fsspec.core.url_to_fs(url, skip_instance_cache=True, **dict(options))
        fs.info(path.split("/", 1)[0])  # the bucket
    except FileNotFoundError:
        raise ValueError(
            f"{owner}: the bucket of {url!r} does not exist. Create it first (outputs never "
            "create buckets)."
        ) from None
    except Exception as exc:  # noqa: BLE001 - any failure here is the user's to fix
        if type(exc).__name__ == "NoCredentialsError":
            # this host has none, the workers may (their environment or instance profile):
            # nothing is known to be wrong, so the first write decides
            logger.info("%s: not checking %s: no credentials on this host", owner, url)
            return
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise ValueError(
            f"{owner}: cannot reach the bucket of {url!r} ({type(exc).__name__}: {first}). "
            "Check the URL, the endpoint and the credentials (environment or profile)."
        ) from None


def list_files(patterns: Iterable[str], options: Mapping[str, Any], owner: str) -> list[str]:
    """Expand paths, URLs and globs into a deterministic file list.

    Each glob (``*``, ``?``, ``[``; ``**`` for any depth) is replaced by its matching files
    in sorted order; a path without glob characters is kept as given, even if it does not
    exist (reading it then fails for that index only). Entries keep the order given; a
    file named twice is kept once.

    Parameters
    ----------
    patterns : Iterable[str]
        Local paths, ``file://`` or fsspec URLs, with or without globs.
    options : Mapping
        Resolved fsspec ``storage_options`` for URLs.
    owner : str
        The component's name, for messages.

    Returns
    -------
    list[str]
        The files; URLs keep their scheme.

    Raises
    ------
    ValueError
        If a glob matches no file, or listing fails (unreachable endpoint, refused
        credentials): one line naming the pattern and the fix.
    """
    files: list[str] = []
    for pattern in patterns:
        if not _GLOB_MAGIC.search(pattern):
            files.append(pattern)
            continue
        try:
            if is_remote(pattern):
                fs, path = _filesystem(pattern, options)
                # fsspec keeps listings in the filesystem instance this process shares:
                # a glob must see the store as it is now, not as an earlier job listed it
                fs.invalidate_cache()
                found = fs.glob(path, detail=True)  # one listing, no request per match
                matches = sorted(fs.unstrip_protocol(p) for p, info in found.items()
                                 if info.get("type") != "directory")
            else:
                prefix = "file://" if pattern.lower().startswith("file://") else ""
                matches = sorted(prefix + p for p in glob.glob(local_path(pattern), recursive=True)
                                 if os.path.isfile(p))
        except Exception as exc:  # noqa: BLE001 - any listing failure is the user's to fix
            first = str(exc).splitlines()[0] if str(exc) else ""
            raise ValueError(
                f"{owner}: cannot list {pattern!r} ({type(exc).__name__}: {first}). Check the "
                "URL, the endpoint and the credentials (environment or profile)."
            ) from None
        if not matches:
            raise ValueError(
                f"{owner}: no files match {pattern!r}. Check the pattern (use '**/' to match "
                "subdirectories)."
            )
        files.extend(matches)
    unique = list(dict.fromkeys(files))
    if not unique:
        raise ValueError(f"{owner}: no paths given. Set 'paths' to a file, a glob or a list.")
    return unique


@contextmanager
def open_input(path: str, options: Mapping[str, Any], compression: str | None = "infer"
               ) -> Iterator[IO[bytes]]:
    """Open ``path`` (a local path or URL) for binary reading.

    Parameters
    ----------
    path : str
        The file.
    options : Mapping
        Resolved fsspec ``storage_options`` (ignored for local paths).
    compression : str or None
        ``"infer"`` (default) decompresses by suffix (``.gz``, ``.bz2``, ``.xz``, ``.zst``);
        ``None`` reads the raw bytes.

    Returns
    -------
    Iterator[IO[bytes]]
        A context manager yielding the open file.
    """
    if compression == "infer":
        compression = infer_compression(path)
    if is_remote(path):
        fs, inner = _filesystem(path, options)
        # A long-lived process (a worker node) must see an object rewritten since it last
        # listed it (a fixed input before `curator-jobs retry`): fsspec caches listings and
        # ETags per filesystem instance, and a stale ETag fails the read (FileExpired).
        fs.invalidate_cache(inner)
        with fs.open(inner, "rb", compression=compression) as fh:
            yield fh
        return
    with fsspec.open(local_path(path), "rb", compression=compression) as fh:
        yield fh


def read_bytes(path: str, options: Mapping[str, Any] | None = None) -> bytes:
    """The raw content of ``path`` (local path or URL).

    Examples
    --------
    >>> write_bytes("memory://doc/read.txt", b"hi")
    'memory://doc/read.txt'
    >>> read_bytes("memory://doc/read.txt")
    b'hi'
    """
    with open_input(path, options or {}, compression=None) as fh:
        return fh.read()


def exists(path: str, options: Mapping[str, Any] | None = None) -> bool:
    """Whether ``path`` (local path or URL) exists."""
    if not is_remote(path):
        return os.path.exists(local_path(path))
    fs, inner = _filesystem(path, options or {})
    return bool(fs.exists(inner))


def write_bytes(path: str, data: bytes, options: Mapping[str, Any] | None = None) -> str:
    """Write ``data`` as the whole content of ``path``; no reader ever sees it partial.

    A local path is written to a temporary file beside it and renamed onto it (parent
    folders are created). A URL is written in one write of its final name holding the
    complete content (``fs.pipe_file``: a single PUT on object stores); a missing bucket
    is an error, never created.

    Parameters
    ----------
    path : str
        Local path, ``file://`` or fsspec URL.
    data : bytes
        The complete content.
    options : Mapping, optional
        Resolved fsspec ``storage_options`` for URLs.

    Returns
    -------
    str
        ``path``.

    Examples
    --------
    >>> import tempfile, os
    >>> target = os.path.join(tempfile.mkdtemp(), "sub", "a.txt")
    >>> write_bytes(target, b"x") == target and open(target, "rb").read() == b"x"
    True
    """
    if not is_remote(path):
        with atomic_path(local_path(path)) as tmp:
            tmp.write_bytes(data)
        return path
    fs, inner = _filesystem(path, options or {})
    try:
        fs.pipe_file(inner, data)
    except FileNotFoundError:
        # A filesystem with real folders (sftp, a mounted one) may need the parent made;
        # an object store's FileNotFoundError is a missing bucket: never create one.
        parent = fs._parent(inner)
        if not parent or set(_protocols(fs)) & OBJECT_STORES:
            raise
        fs.makedirs(parent, exist_ok=True)
        fs.pipe_file(inner, data)
    return path


def _protocols(fs: Any) -> tuple[str, ...]:
    protocol = fs.protocol
    return (protocol,) if isinstance(protocol, str) else tuple(protocol)


def upload_file(local: str, url: str, options: Mapping[str, Any] | None = None) -> str:
    """Write the complete local file ``local`` as ``url`` in one write of its final name.

    The file is read whole and written with :func:`write_bytes` (one PUT on object stores),
    so no reader ever sees ``url`` partial. Returns ``url``.
    """
    with open(local_path(local), "rb") as fh:
        data = fh.read()
    return write_bytes(url, data, options)


def download_file(url: str, local: str, options: Mapping[str, Any] | None = None) -> str:
    """Copy ``url`` (or a local path) into the local file ``local``; return ``local``."""
    data = read_bytes(url, options)
    with open(local, "wb") as fh:
        fh.write(data)
    return local


def list_objects(prefix: str, options: Mapping[str, Any] | None = None,
                 suffix: str = "") -> list[str]:
    """Every object (file) under the URL ``prefix`` at any depth whose name ends in
    ``suffix``, as sorted URLs; ``[]`` when there is none (or the prefix is missing)."""
    fs, inner = _filesystem(prefix, options or {})
    fs.invalidate_cache(inner.rstrip("/"))  # objects other hosts wrote since the last listing
    try:
        found = fs.find(inner.rstrip("/"), detail=False)
    except FileNotFoundError:
        return []
    return sorted(fs.unstrip_protocol(p) for p in found if p.endswith(suffix))


def remove_objects(urls: Iterable[str], options: Mapping[str, Any] | None = None) -> int:
    """Remove the objects ``urls`` (best effort: a failure is logged); return how many."""
    removed = 0
    for url in urls:
        try:
            fs, inner = _filesystem(url, options or {})
            fs.rm_file(inner)
            removed += 1
        except FileNotFoundError:
            pass
        except Exception as exc:  # noqa: BLE001 - cleanup must not fail the caller
            logger.warning("could not remove %s: %s", url, type(exc).__name__)
    return removed


def remove_prefix(prefix: str, options: Mapping[str, Any] | None = None) -> int:
    """Remove every object under the URL ``prefix`` (best effort); return how many.

    Used to remove a run's shard prefix, including the shards of attempts that died
    before committing (found by listing, not from any record).
    """
    found = list_objects(prefix.rstrip("/") + "/", options)
    return remove_objects(found, options)
