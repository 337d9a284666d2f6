"""One storage layer for every path: fsspec URLs, credentials, atomic writes and moves.

A local directory is the embedded default; ``s3://`` goes through s3fs, which takes endpoint and
credentials from the environment (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, …) or from the
job's storage options, so AWS, MinIO and moto all work the same way.

Every file a reader may see is written atomically: locally to a hidden sibling then renamed over
the target, on S3 as a multipart upload that only becomes visible when it is committed. A writer
that fails half-way leaves nothing behind.
"""

from __future__ import annotations

import errno
import functools
import os
import posixpath
import re
import secrets
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Any, ParamSpec, TypeVar

import fsspec
from pydantic import SecretStr

from genai_pipeline.errors import ConfigError, PipelineError, StorageError, UnsafePath

P = ParamSpec("P")
R = TypeVar("R")
#: a write that failed for want of room (full disk, quota, file size limit)
_DISK_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def resolve_options(options: dict[str, Any], *, field: str = "storage_options") -> dict[str, Any]:
    """Unwrap secrets and expand ``${VAR}`` references from the environment (recursively)."""

    def resolve(key: str, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: resolve(f"{key}.{k}", v) for k, v in value.items()}
        if isinstance(value, list):
            return [resolve(f"{key}.{index}", item) for index, item in enumerate(value)]
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if isinstance(value, str):

            def expand(match: re.Match[str]) -> str:
                name = match.group(1)
                if name not in os.environ:
                    raise ConfigError(f"{key}: environment variable {name} is not set")
                return os.environ[name]

            return _ENV_REF.sub(expand, value)
        return value

    return {key: resolve(f"{field}.{key}", value) for key, value in options.items()}


def split_url(url: str) -> tuple[str, str]:
    """``s3://b/k`` → ``("s3", "b/k")``; a plain or ``file://`` path → ``("file", absolute path)``."""
    protocol, sep, rest = url.partition("://")
    if not sep:
        return "file", os.path.abspath(os.path.expanduser(url))
    if protocol == "file":
        return "file", os.path.abspath(rest)
    return protocol, rest.rstrip("/")


def nested_locations(first: str, second: str) -> bool:
    """Whether two locations are the same or one lies inside the other (``./out`` and
    ``./out/ws``; ``s3://b/p`` and ``s3://b/p/ws``; not ``s3://b/p`` and ``s3://b/p-ws``)."""
    (one_protocol, one), (two_protocol, two) = split_url(first), split_url(second)
    if one_protocol != two_protocol:
        return False
    one, two = one.rstrip("/") + "/", two.rstrip("/") + "/"
    return one.startswith(two) or two.startswith(one)


def open_filesystem(url: str, options: dict[str, Any]) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem for a URL and the path inside it."""
    protocol, path = split_url(url)
    try:
        fs = fsspec.filesystem(protocol, **resolve_options(options))
    except (ImportError, ValueError) as exc:
        raise ConfigError(f"{url}: cannot open storage ({exc})") from None
    return fs, path


def _translate_errors(method: Callable[P, R]) -> Callable[P, R]:
    """Turn low-level failures of a Storage method into StorageError naming the URL."""

    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        storage, rel = args[0], args[1] if len(args) > 1 and isinstance(args[1], str) else ""
        with storage.errors(rel):  # type: ignore[attr-defined]
            return method(*args, **kwargs)

    return wrapper


class Storage:
    """A root URL on some filesystem; every method takes paths relative to that root."""

    def __init__(self, url: str, options: dict[str, Any] | None = None):
        self.fs, self.root = open_filesystem(url, options or {})
        self.protocol = split_url(url)[0]
        self.url = self.root if self.is_local else f"{self.protocol}://{self.root}"

    @property
    def is_local(self) -> bool:
        return self.protocol == "file"

    def path(self, rel: str) -> str:
        """The filesystem path of a relative key; one that would leave the root (absolute, or with
        a ``..`` segment) is refused: every read, write, move and delete goes through here, so no
        identifier that slipped into a path can reach another job's files."""
        if not rel:
            return self.root
        if rel.startswith("/") or ".." in rel.split("/"):
            raise UnsafePath(f"{rel!r}: a path that leaves {self.url} is refused")
        return posixpath.join(self.root, rel)

    def _below_root(self, rel: str) -> str:
        """The path of something to remove: never the root itself."""
        if posixpath.normpath(rel or ".") == ".":
            raise UnsafePath(f"{rel!r}: removing the whole of {self.url} is refused")
        return self.path(rel)

    def url_of(self, rel: str) -> str:
        """A URL a person (or pandas) can open."""
        return self.path(rel) if self.is_local else f"{self.protocol}://{self.path(rel)}"

    def child(self, rel: str) -> Storage:
        """A Storage rooted below this one, sharing the filesystem."""
        child = object.__new__(Storage)
        child.fs, child.protocol, child.root = self.fs, self.protocol, self.path(rel)
        child.url = self.url_of(rel)
        return child

    @contextmanager
    def errors(self, rel: str = "") -> Iterator[None]:
        """Storage failures (botocore, aiohttp, OS) become StorageError; missing files stay as they are."""
        try:
            yield
        except (PipelineError, FileNotFoundError, KeyboardInterrupt):
            raise
        except Exception as exc:
            raise self._failure(rel, exc) from exc

    def _failure(self, rel: str, exc: BaseException) -> StorageError:
        """A low-level failure as a StorageError naming the URL."""
        return StorageError(f"{self.url_of(rel)}: {type(exc).__name__}: {exc}")

    @contextmanager
    def open_atomic(self, rel: str) -> Iterator[IO[bytes]]:
        """A binary file that appears at ``rel`` only when the block completes without error.

        Errors raised by the block itself propagate unchanged; the partial file is discarded.
        """
        path = self.path(rel)
        if self.is_local:
            with self.errors(rel):
                os.makedirs(os.path.dirname(path), exist_ok=True)
            try:
                yield from _local_atomic(path)
            except OSError as exc:
                if exc.errno in _DISK_FULL:  # the block's writes hit a full disk: say which file
                    raise self._failure(rel, exc) from exc
                raise
            return
        with self.errors(rel):
            handle = self.fs.open(path, "wb", autocommit=False)
        try:
            yield handle
        except BaseException:
            with suppress(Exception):
                handle.discard()  # aborts the multipart upload: nothing becomes visible
            handle.closed = True
            raise
        with self.errors(rel):
            handle.close()
            handle.commit()

    def write_bytes(self, rel: str, data: bytes) -> None:
        with self.open_atomic(rel) as handle:
            handle.write(data)

    @_translate_errors
    def put_many(self, files: dict[str, bytes]) -> None:
        """Write many small files (not atomically: for staging); batched and concurrent on S3."""
        if self.is_local:
            made: set[str] = set()
            for rel, data in files.items():
                path = self.path(rel)
                if (directory := os.path.dirname(path)) not in made:
                    os.makedirs(directory, exist_ok=True)
                    made.add(directory)
                with open(path, "wb") as handle:
                    handle.write(data)
        elif files:
            self.fs.pipe({self.path(rel): data for rel, data in files.items()}, batch_size=64)

    def put_folder(self, local: Path, rel: str) -> None:
        """Copy every file below a local folder to below ``rel`` (not atomically: for staging)."""
        files = local.rglob("*")
        self.put_many(
            {
                f"{rel}/{path.relative_to(local).as_posix()}": path.read_bytes()
                for path in files
                if path.is_file()
            }
        )

    @_translate_errors
    def read_bytes(self, rel: str) -> bytes:
        return self.fs.cat_file(self.path(rel))

    @_translate_errors
    def read_many(self, rels: list[str]) -> dict[str, bytes]:
        """Many small files at once (concurrently on S3), keyed by their relative paths."""
        found = self.fs.cat([self.path(rel) for rel in rels]) if rels else {}
        return {rel: found[self.path(rel)] for rel in rels}

    @_translate_errors
    def open_read(self, rel: str) -> IO[bytes]:
        return self.fs.open(self.path(rel), "rb")

    @_translate_errors
    def exists(self, rel: str) -> bool:
        self.fs.invalidate_cache()
        return self.fs.exists(self.path(rel))

    @_translate_errors
    def list_files(self, rel: str = "") -> dict[str, int]:
        """Every file below ``rel`` (recursively) → its size; relative to this root."""
        self.fs.invalidate_cache()
        base = self.path(rel)
        if not self.fs.exists(base):
            return {}
        found = self.fs.find(base, detail=True)
        prefix = self.root.rstrip("/") + "/"
        return {
            name.removeprefix(prefix): int(info.get("size") or 0)
            for name, info in found.items()
            if info.get("type") != "directory"
        }

    @_translate_errors
    def list_dirs(self, rel: str) -> list[str]:
        """The names of the folders (S3: prefixes) right below ``rel``."""
        self.fs.invalidate_cache()
        base = self.path(rel)
        if not self.fs.exists(base):
            return []
        entries = self.fs.ls(base, detail=True)
        return sorted(posixpath.basename(e["name"].rstrip("/")) for e in entries if e["type"] == "directory")

    @_translate_errors
    def move(self, pairs: Iterable[tuple[str, str]]) -> None:
        """Move files; locally a rename (atomic), on S3 a server-side copy then a delete."""
        pairs = list(pairs)
        if not pairs:
            return
        if self.is_local:
            for src, dst in pairs:
                os.makedirs(os.path.dirname(self.path(dst)), exist_ok=True)
                os.replace(self._below_root(src), self.path(dst))
            return
        sources = [self._below_root(src) for src, _ in pairs]
        self.fs.copy(sources, [self.path(dst) for _, dst in pairs])
        self.fs.rm(sources)

    @_translate_errors
    def delete(self, rels: Iterable[str]) -> None:
        paths = [self._below_root(rel) for rel in rels]
        if paths:
            self.fs.rm(paths)

    @_translate_errors
    def delete_tree(self, rel: str) -> None:
        """Remove everything below ``rel``; nothing happens when it does not exist."""
        with suppress(FileNotFoundError):
            self.fs.rm(self._below_root(rel), recursive=True)


def _local_atomic(path: str) -> Iterator[IO[bytes]]:
    """Write a hidden sibling, fsync it, rename it over the target; remove it on failure."""
    directory, name = os.path.split(path)
    temporary = os.path.join(directory, f".{name}.{secrets.token_hex(4)}.tmp")
    try:
        with open(temporary, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        with suppress(FileNotFoundError):
            os.remove(temporary)
