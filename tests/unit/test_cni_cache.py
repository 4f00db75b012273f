"""The per-container cache: ID validation, permissions, atomic replace."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from cni import errors
from cni.cache import MAX_CONTAINER_ID, ScratchCache, validate_container_id
from cni.errors import CniError


@pytest.fixture
def loose_umask() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.parametrize(
    "container_id",
    ["abc", "0123456789abcdef" * 4, "k8s_POD_x-y.z", "a" * MAX_CONTAINER_ID],
)
def test_valid_ids(container_id: str) -> None:
    assert validate_container_id(container_id) == container_id


@pytest.mark.parametrize(
    ("container_id", "code"),
    [
        ("", errors.UNKNOWN_CONTAINER),
        ("../x", errors.INVALID_ENVIRONMENT),
        ("..", errors.INVALID_ENVIRONMENT),
        ("x/../../etc", errors.INVALID_ENVIRONMENT),
        ("_x", errors.INVALID_ENVIRONMENT),
        ("x\0y", errors.INVALID_ENVIRONMENT),
        ("x y", errors.INVALID_ENVIRONMENT),
        ("x" * 300, errors.INVALID_ENVIRONMENT),
        ("a" * (MAX_CONTAINER_ID + 1), errors.INVALID_ENVIRONMENT),
    ],
)
def test_invalid_ids(container_id: str, code: int) -> None:
    with pytest.raises(CniError) as caught:
        validate_container_id(container_id)
    assert caught.value.code == code


def test_save_creates_private_dir_and_file_even_with_a_loose_umask(
    tmp_path: Path, loose_umask: None
) -> None:
    cache = ScratchCache(str(tmp_path / "a" / "flannel"))
    cache.save("ctr1", b'{"type":"bridge"}')
    assert stat.S_IMODE((tmp_path / "a" / "flannel").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "a" / "flannel" / "ctr1").stat().st_mode) == 0o600
    assert cache.load("ctr1") == b'{"type":"bridge"}'


def test_save_replaces_and_leaves_no_temp_files(tmp_path: Path) -> None:
    cache = ScratchCache(str(tmp_path))
    cache.save("ctr1", b"one")
    cache.save("ctr1", b"two" * 100_000)
    assert cache.load("ctr1") == b"two" * 100_000
    assert os.listdir(tmp_path) == ["ctr1"]


def test_load_and_remove_of_unknown_id(tmp_path: Path) -> None:
    cache = ScratchCache(str(tmp_path / "never-created"))
    assert cache.load("ctr1") is None
    cache.remove("ctr1")  # idempotent
    assert not (tmp_path / "never-created").exists()


def test_remove(tmp_path: Path) -> None:
    cache = ScratchCache(str(tmp_path))
    cache.save("ctr1", b"x")
    cache.remove("ctr1")
    assert cache.load("ctr1") is None


def test_invalid_id_never_touches_the_file_system(tmp_path: Path) -> None:
    cache = ScratchCache(str(tmp_path / "cache"))
    (tmp_path / "victim").write_bytes(b"keep")
    for bad in ("../victim", "..", "/etc/passwd"):
        with pytest.raises(CniError):
            cache.save(bad, b"x")
        with pytest.raises(CniError):
            cache.remove(bad)
    assert (tmp_path / "victim").read_bytes() == b"keep"
    assert not (tmp_path / "cache").exists()


def test_save_into_an_unwritable_place_is_an_io_failure(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    cache = ScratchCache(str(tmp_path / "file" / "cache"))
    with pytest.raises(CniError) as caught:
        cache.save("ctr1", b"x")
    assert caught.value.code == errors.IO_FAILURE
    # The details are what os.makedirs says about the parent, as before it was only the
    # fallback (the usual case calls mkdir alone).
    assert caught.value.details == f"[Errno 17] File exists: '{tmp_path / 'file'}'"
