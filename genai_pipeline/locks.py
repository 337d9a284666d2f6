"""One publisher at a time per job and run date, on a local disk or an object store.

Two runs of the same job and date (a manual rerun while the nightly one publishes, a deployment
triggered twice) would otherwise move their files into the same partition at once and leave a
mix. :func:`publish_lock` serialises them: the second waits up to ``export.lock_timeout_s``, then
fails naming the holder.

- Locally the lock is ``flock`` on a file beside the output: the kernel drops it when its
  process dies, so a killed run never blocks the next one.
- On S3 it is a *lease*: an object created only if absent (``If-None-Match: *``, supported by AWS
  S3, MinIO and moto) that names its owner. The holder renews it every third of
  :data:`LEASE_SECONDS` (a conditional ``If-Match`` put, which changes its ETag) while it
  publishes. No clock is compared with another machine's: a waiter judges a lease expired when it
  has seen the same ETag for :data:`LEASE_SECONDS` by its own monotonic clock, then removes it with
  a conditional delete, so exactly one waiter takes over, and never from a live holder however
  skewed their clocks. The holder, before it switches the data (:meth:`Lease.check`), refuses
  when its last successful renewal is older than the lease less a margin (a renewal that hangs
  sets no flag), and renews once more, conditionally: that write fails if the lock changed hands,
  and gives the switch a whole lease before any waiter could take over. The same run retrying its
  export takes its own lease back at once.
"""

from __future__ import annotations

import datetime as dt
import errno
import fcntl
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

from fsspec.asyn import sync

from genai_pipeline.errors import RunConflict, StorageError
from genai_pipeline.storage import Storage

log = logging.getLogger(__name__)

#: how long an S3 lease lives without renewal (a killed publisher blocks others at most this long)
LEASE_SECONDS = 60.0
#: how often a waiter looks again
POLL_SECONDS = 0.5


class Lease:
    """A held lock. :meth:`check` is called right before the data switch: it raises
    :class:`StorageError` when an S3 lease may have been lost (the holder stops before it switches
    the data), and otherwise fences the switch with one more conditional renewal."""

    def __init__(self, fence: Callable[[], None] | None = None) -> None:
        self.lost: str | None = None
        self._fence = fence

    def check(self) -> None:
        if self.lost:
            raise StorageError(self.lost)
        if self._fence is not None:
            self._fence()


def _holder(owner: str) -> dict[str, Any]:
    return {"owner": owner, "host": socket.gethostname(), "pid": os.getpid()}


def _describe(holder: dict[str, Any] | None) -> str:
    if not holder:
        return "another run"
    return f"run {holder.get('owner')} (host {holder.get('host')}, pid {holder.get('pid')})"


@contextmanager
def publish_lock(storage: Storage, rel: str, owner: str, *, timeout: float, what: str) -> Iterator[Lease]:
    """Hold the lock at ``rel`` (relative to ``storage``) while the block runs; ``what`` names the
    locked thing in messages. Waits up to ``timeout`` seconds, then raises :class:`RunConflict`."""
    deadline = time.monotonic() + timeout
    locker = _local_lock if storage.is_local else _s3_lease
    with locker(storage, rel, owner, deadline, what) as lease:
        yield lease


class _Waiter:
    """A waiter's patience: says once whom it waits for, gives up at the deadline naming them."""

    def __init__(self, what: str, deadline: float):
        self.what, self.deadline, self.started, self.said = what, deadline, time.monotonic(), False

    def wait(self, holder: dict[str, Any] | None) -> None:
        """Sleep a poll interval, or raise :class:`RunConflict` when the time is up."""
        if time.monotonic() >= self.deadline:
            raise RunConflict(
                f"{self.what} is being published by {_describe(holder)}: gave up after "
                f"{self.deadline - self.started:.0f} s (export.lock_timeout_s); rerun when it has finished"
            )
        if not self.said:
            log.warning(
                "%s is being published by %s: waiting up to %.0f s",
                self.what,
                _describe(holder),
                self.deadline - time.monotonic(),
            )
            self.said = True
        time.sleep(POLL_SECONDS)


@contextmanager
def _local_lock(storage: Storage, rel: str, owner: str, deadline: float, what: str) -> Iterator[Lease]:
    path, waiter = storage.path(rel), _Waiter(what, deadline)
    with storage.errors(rel):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                waiter.wait(_read_json(os.pread(fd, 4096, 0)))
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(_holder(owner)).encode(), 0)
        yield Lease()
    finally:
        os.close(fd)  # releases the flock


def _read_json(raw: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


class _S3Object:
    """Conditional operations on one S3 object through s3fs's client (ETags are the versions)."""

    def __init__(self, storage: Storage, rel: str):
        self.fs = storage.fs
        self.rel = rel
        self.bucket, self.key, _ = self.fs.split_path(storage.path(rel))
        self.errors = storage.errors

    def _conditional(self, method: str, **params: Any) -> dict[str, Any] | None:
        """One conditional request: its response, or None when its condition did not hold (the
        object exists, changed or vanished, or a concurrent conditional write won: HTTP 409)."""
        try:
            with self.errors(self.rel):
                return self.fs.call_s3(method, Bucket=self.bucket, Key=self.key, **params)
        except FileNotFoundError:
            return None
        except StorageError as exc:
            if _condition_lost(exc.__cause__):
                return None
            raise

    def create(self, body: bytes) -> str | None:
        """Put only if absent: the new ETag, or None when the object exists."""
        response = self._conditional("put_object", Body=body, IfNoneMatch="*")
        return None if response is None else response["ETag"]

    def replace(self, body: bytes, etag: str) -> str | None:
        """Put only if unchanged since ``etag``: the new ETag, or None when it changed or vanished."""
        response = self._conditional("put_object", Body=body, IfMatch=etag)
        return None if response is None else response["ETag"]

    def delete(self, etag: str) -> None:
        """Delete only if unchanged since ``etag`` (a no-op otherwise)."""
        self._conditional("delete_object", IfMatch=etag)

    def read(self) -> tuple[dict[str, Any] | None, str] | None:
        """The object's JSON and ETag (read in one request, so they belong together), or None."""

        async def get() -> tuple[bytes, str]:
            response = await self.fs._call_s3("get_object", Bucket=self.bucket, Key=self.key)
            async with response["Body"] as body:
                return await body.read(), response["ETag"]

        try:
            with self.errors(self.rel):
                raw, etag = sync(self.fs.loop, get)
        except FileNotFoundError:
            return None
        return _read_json(raw), etag


def _condition_lost(exc: BaseException | None) -> bool:
    """How s3fs raises a condition that did not hold: ``FileExistsError`` (``If-None-Match``),
    ``OSError(EINVAL)`` (HTTP 412, ``If-Match``), ``OSError(EBUSY)`` (HTTP 409, a concurrent
    conditional write)."""
    return isinstance(exc, FileExistsError) or (
        isinstance(exc, OSError) and exc.errno in (errno.EINVAL, errno.EBUSY)
    )


@contextmanager
def _s3_lease(storage: Storage, rel: str, owner: str, deadline: float, what: str) -> Iterator[Lease]:
    lock, waiter = _S3Object(storage, rel), _Waiter(what, deadline)

    def body() -> bytes:  # "expires" is for people reading the object; nothing compares it
        expires = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=LEASE_SECONDS)
        return json.dumps({**_holder(owner), "expires": expires.isoformat()}).encode()

    seen: tuple[str, float] | None = None  # the holder's ETag, and since when (this waiter's clock)
    while (etag := lock.create(body())) is None:
        found = lock.read()
        if found is None:
            continue  # released between the two requests
        holder, held = found
        if holder is not None and holder.get("owner") == owner:
            etag = lock.replace(body(), held)  # this run's own lease, left by a failed attempt
            if etag is not None:
                break
            continue
        if seen is None or seen[0] != held:
            seen = (held, time.monotonic())  # renewed (or new): its lease starts again
        elif time.monotonic() - seen[1] >= LEASE_SECONDS:
            log.warning(
                "%s: the lease of %s was not renewed for %.0f s: taking over",
                what,
                _describe(holder),
                LEASE_SECONDS,
            )
            lock.delete(held)
            seen = None
            continue
        waiter.wait(holder)

    stop, mutex = threading.Event(), threading.Lock()
    state = {"etag": etag, "renewed": time.monotonic()}

    def renew_once(reason: str) -> str | None:
        """One conditional renewal; None on success, else why the lease is lost."""
        try:
            renewed = lock.replace(body(), state["etag"])
        except StorageError as exc:
            return f"{what}: lost the publish lease ({exc}); not switching the data"
        if renewed is None:
            return f"{what}: lost the publish lease (it was taken over {reason}); not switching the data"
        state.update(etag=renewed, renewed=time.monotonic())
        return None

    def fence() -> None:
        margin = LEASE_SECONDS / 6
        age = time.monotonic() - state["renewed"]
        if age > LEASE_SECONDS - margin:
            lease.lost = f"{what}: the publish lease was last renewed {age:.0f} s ago; not switching the data"
        elif not mutex.acquire(timeout=margin):  # a renewal is hanging: it may come too late
            lease.lost = f"{what}: the publish lease's renewal hangs; not switching the data"
        else:
            try:
                lease.lost = renew_once("before the data switch")
            finally:
                mutex.release()
        if lease.lost:
            raise StorageError(lease.lost)

    lease = Lease(fence)

    def renew() -> None:
        while not stop.wait(LEASE_SECONDS / 3):
            with mutex:
                lost = renew_once("while publishing")
            if lost is not None:
                lease.lost = lost
                return

    renewer = threading.Thread(target=renew, name="publish-lease", daemon=True)
    renewer.start()
    try:
        yield lease
    finally:
        stop.set()
        renewer.join()
        with suppress(StorageError):  # left behind, it expires
            lock.delete(state["etag"])
