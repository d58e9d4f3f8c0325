"""contract.storage: atomic writes, expiry, cleanup."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from contract.storage import LocalImageStorage


def test_put_then_read(tmp_path: Path) -> None:
    storage = LocalImageStorage(tmp_path)
    storage.put("gen_abc", 0, b"png-bytes", expires_at=time.time() + 60)
    path = storage.path("gen_abc", 0)
    assert path is not None and path.read_bytes() == b"png-bytes"
    assert storage.path("gen_abc", 1) is None
    assert storage.path("gen_other", 0) is None
    # Nothing but the finished files is left behind (the temp files were renamed).
    assert sorted(p.name for p in path.parent.iterdir()) == ["0.png", "expires.json"]


def test_expired_images_are_not_served_and_cleanup_deletes_them(tmp_path: Path) -> None:
    storage = LocalImageStorage(tmp_path)
    storage.put("gen_old", 0, b"old", expires_at=time.time() - 1)
    storage.put("gen_new", 0, b"new", expires_at=time.time() + 60)
    assert storage.path("gen_old", 0) is None
    assert storage.cleanup() == 1
    assert not (tmp_path / "ge" / "gen_old").exists()
    assert storage.path("gen_new", 0) is not None
    assert storage.cleanup(now=time.time() + 120) == 1
    assert storage.path("gen_new", 0) is None


def test_a_directory_being_written_is_not_cleaned_up(tmp_path: Path) -> None:
    (tmp_path / "ge" / "gen_partial").mkdir(parents=True)  # no expiry file yet
    storage = LocalImageStorage(tmp_path)
    assert storage.cleanup() == 0
    assert storage.cleanup(now=time.time() + 7200) == 1  # an hour-old orphan goes


@pytest.mark.parametrize("job_id", ["../../etc", "a/b", "", "x" * 200])
def test_refuses_ids_that_are_not_job_ids(tmp_path: Path, job_id: str) -> None:
    storage = LocalImageStorage(tmp_path)
    with pytest.raises(ValueError):
        storage.put(job_id, 0, b"x", expires_at=time.time() + 60)
    assert storage.path(job_id, 0) is None


def test_overwrite_is_atomic_replace(tmp_path: Path) -> None:
    storage = LocalImageStorage(tmp_path)
    storage.put("gen_abc", 0, b"first", expires_at=time.time() + 60)
    storage.put("gen_abc", 0, b"second", expires_at=time.time() + 60)
    path = storage.path("gen_abc", 0)
    assert path is not None and path.read_bytes() == b"second"
