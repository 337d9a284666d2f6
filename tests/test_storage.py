"""Atomic writes and moves, locally and on S3 over HTTP; no trace of a failed write."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import S3_OPTIONS

from genai_pipeline.errors import StorageError, UnsafePath
from genai_pipeline.storage import Storage


def _storages(tmp_path: Path, s3: dict[str, str]) -> list[Storage]:
    return [Storage(str(tmp_path / "root")), Storage(f"s3://{s3['bucket']}/{tmp_path.name}", S3_OPTIONS)]


def test_atomic_write_appears_only_on_success(tmp_path: Path, s3_env: dict[str, str]) -> None:
    for storage in _storages(tmp_path, s3_env):
        storage.write_bytes("a/b.txt", b"v1")
        with pytest.raises(RuntimeError), storage.open_atomic("a/b.txt") as handle:
            handle.write(b"half of v2")
            raise RuntimeError("writer died")
        with pytest.raises(RuntimeError), storage.open_atomic("a/new.txt") as handle:
            handle.write(b"x" * 10)
            raise RuntimeError("writer died")
        assert storage.read_bytes("a/b.txt") == b"v1"
        assert set(storage.list_files("a")) == {"a/b.txt"}, storage.url


def test_move_list_and_delete(tmp_path: Path, s3_env: dict[str, str]) -> None:
    for storage in _storages(tmp_path, s3_env):
        storage.put_many({"stage/x/1.bin": b"1", "stage/x/2.bin": b"22"})
        storage.move([("stage/x/1.bin", "final/1.bin"), ("stage/x/2.bin", "final/2.bin")])
        assert storage.list_files("final") == {"final/1.bin": 1, "final/2.bin": 2}
        assert storage.read_many(["final/1.bin", "final/2.bin"]) == {
            "final/1.bin": b"1",
            "final/2.bin": b"22",
        }
        storage.delete(["final/1.bin"])
        storage.delete_tree("stage")
        storage.delete_tree("never-existed")
        assert list(storage.list_files("")) == ["final/2.bin"]
        assert storage.url_of("final/2.bin").endswith("final/2.bin")


def test_unreachable_endpoint_is_a_storage_error(tmp_path: Path) -> None:
    storage = Storage(
        "s3://bucket/x",
        {
            "endpoint_url": "http://127.0.0.1:9",
            "key": "k",
            "secret": "s",
            "config_kwargs": {"retries": {"max_attempts": 1}, "connect_timeout": 1},
        },
    )
    with pytest.raises(StorageError, match=r"s3://bucket/x/f.txt"):
        storage.write_bytes("f.txt", b"data")


@pytest.mark.parametrize("rel", ["../other-job/data.parquet", "a/../../b", "/etc/passwd", ".."])
def test_no_path_leaves_the_root_and_the_root_itself_is_never_deleted(
    tmp_path: Path, s3_env: dict[str, str], rel: str
) -> None:
    """Whatever identifier a path was built from, reads, writes, moves and deletes stay below the
    root: a run id of '../..' once removed every job's output."""
    for storage in _storages(tmp_path, s3_env):
        storage.write_bytes("keep/x.bin", b"1")
        attempts = {
            "write": (storage.write_bytes, rel, b"x"),
            "read": (storage.read_bytes, rel),
            "delete": (storage.delete, [rel]),
            "delete_tree": (storage.delete_tree, rel),
            "move to": (storage.move, [("keep/x.bin", rel)]),
            "move from": (storage.move, [(rel, "keep/y.bin")]),
        }
        for name, (method, *args) in attempts.items():
            with pytest.raises(UnsafePath, match="leaves"):
                method(*args)
                pytest.fail(f"{name} {rel!r} was allowed")
        for root in ("", ".", "./"):
            with pytest.raises(UnsafePath, match="removing the whole of"):
                storage.delete_tree(root)
        assert storage.read_bytes("keep/x.bin") == b"1"
    assert (tmp_path / "root" / "keep" / "x.bin").exists() and (tmp_path / "root").parent.exists()


def test_every_storage_call_on_a_dead_endpoint_fails_as_a_storage_error_naming_the_url() -> None:
    """A transient failure must be a StorageError (retried, named) whatever the call: a raw botocore
    error from one method (read_bytes lost its translation once) was neither."""
    dead = {"endpoint_url": "http://127.0.0.1:9", "key": "k", "secret": "s"}
    dead["config_kwargs"] = {"retries": {"max_attempts": 1}, "connect_timeout": 1, "read_timeout": 1}
    storage = Storage("s3://no-such-bucket/root", dead)
    calls = {
        "write_bytes": lambda: storage.write_bytes("a.bin", b"1"),
        "put_many": lambda: storage.put_many({"a.bin": b"1"}),
        "read_bytes": lambda: storage.read_bytes("a.bin"),
        "read_many": lambda: storage.read_many(["a.bin"]),
        "exists": lambda: storage.exists("a.bin"),
        "list_files": lambda: storage.list_files("a"),
        "list_dirs": lambda: storage.list_dirs("a"),
        "move": lambda: storage.move([("a.bin", "b.bin")]),
        "delete": lambda: storage.delete(["a.bin"]),
    }
    for name, call in calls.items():
        with pytest.raises(StorageError, match="s3://no-such-bucket/root"):
            call()
            pytest.fail(f"{name} did not fail")
