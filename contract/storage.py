"""Where generated images live: outside Redis, behind a small backend interface; how they are
encoded (PNG) and the one rule for when a result has expired.

The default backend is a local directory (a shared volume when the API and the workers run on
different machines). Files are written atomically (a temp file in the same directory, fsync,
``os.replace``), so a reader never sees half a PNG, and each job's directory carries its expiry
time so a cleanup pass can delete what is past it.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import numpy as np

_JOB_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
_EXPIRY_FILE = "expires.json"
# Named files: a job's inputs ("input-image.png") and outputs other than its numbered images.
_FILE_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,40}\.(png|gif|webp)$")
_IMAGE_NAME = re.compile(r"^[0-9]+\.png$")
_ORPHAN_AGE_S = 3600.0


def has_expired(expires_at: float | None, now: float | None = None) -> bool:
    """The expiry rule for a job's images: gone from ``expires_at`` (unix seconds) on; a result
    without an expiry never expires."""
    return expires_at is not None and expires_at <= (time.time() if now is None else now)


def encode_png(image: np.ndarray) -> bytes:
    """uint8 [H x W x 3] → PNG bytes."""
    from PIL import Image  # here, not at import: the API process never encodes an image

    buffer = io.BytesIO()
    # zlib level 1, not Pillow's 6: on a 2-core Xeon a 1024² image encodes in ~0.18 s instead of
    # ~0.8 s (a tenth of the image's sampling time on a CPU) for files ~18% larger; 256²: 14 vs 47 ms.
    Image.fromarray(image, mode="RGB").save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


class ImageStorage(Protocol):
    """What the workers write to and the API reads from: a job's images, plus named files
    (its uploaded inputs, written by the API; an interpolation's animation)."""

    def put(self, job_id: str, index: int, png: bytes, expires_at: float) -> None: ...

    def put_file(self, job_id: str, name: str, data: bytes, expires_at: float) -> None: ...

    def file(self, job_id: str, name: str, expires_at: float | None = None) -> Path | None:
        """The named file, or None when it is missing or expired."""
        ...

    def path(self, job_id: str, index: int, expires_at: float | None = None) -> Path | None:
        """The stored PNG, or None when it is missing or expired: by ``expires_at`` (the job
        record's) when given, else by the expiry stored with the images."""
        ...

    def delete(self, job_id: str) -> None: ...

    def cleanup(self, now: float | None = None) -> int:
        """Delete every job whose expiry has passed; returns how many were deleted."""
        ...


class LocalImageStorage:
    """``root/<first two chars of id>/<job id>/<index>.png`` plus ``expires.json``."""

    def __init__(self, root: Path | str):
        self.root = Path(root)

    def _job_dir(self, job_id: str) -> Path:
        if not _JOB_ID.match(job_id):
            raise ValueError(f"invalid job id {job_id!r}")
        return self.root / job_id[:2] / job_id

    def put(self, job_id: str, index: int, png: bytes, expires_at: float) -> None:
        if index < 0:
            raise ValueError("image index must be >= 0")
        directory = self._job_dir(job_id)
        directory.mkdir(parents=True, exist_ok=True)
        _atomic_write(directory / _EXPIRY_FILE, json.dumps({"expires_at": expires_at}).encode())
        _atomic_write(directory / f"{index}.png", png)

    def put_file(self, job_id: str, name: str, data: bytes, expires_at: float) -> None:
        if not _FILE_NAME.match(name) or _IMAGE_NAME.match(name):
            raise ValueError(f"invalid file name {name!r}")
        directory = self._job_dir(job_id)
        directory.mkdir(parents=True, exist_ok=True)
        _atomic_write(directory / _EXPIRY_FILE, json.dumps({"expires_at": expires_at}).encode())
        _atomic_write(directory / name, data)

    def file(self, job_id: str, name: str, expires_at: float | None = None) -> Path | None:
        if not _FILE_NAME.match(name):
            return None
        return self._existing(job_id, name, expires_at)

    def path(self, job_id: str, index: int, expires_at: float | None = None) -> Path | None:
        if index < 0:
            return None
        return self._existing(job_id, f"{index}.png", expires_at)

    def _existing(self, job_id: str, name: str, expires_at: float | None) -> Path | None:
        try:
            directory = self._job_dir(job_id)
        except ValueError:
            return None
        if expires_at is None:
            expires_at = _read_expiry(directory)
        if expires_at is None or has_expired(expires_at):
            return None
        file = directory / name
        return file if file.is_file() else None

    def delete(self, job_id: str) -> None:
        shutil.rmtree(self._job_dir(job_id), ignore_errors=True)

    def cleanup(self, now: float | None = None) -> int:
        now = time.time() if now is None else now
        deleted = 0
        if not self.root.is_dir():
            return 0
        for shard in self.root.iterdir():
            if not shard.is_dir():
                continue
            for directory in shard.iterdir():
                if directory.is_dir() and _is_expired(directory, now):
                    shutil.rmtree(directory, ignore_errors=True)
                    deleted += 1
            _remove_if_empty(shard)
        return deleted


def _atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see either nothing or all of it."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read_expiry(directory: Path) -> float | None:
    """The job directory's expiry (unix seconds); None when unreadable or absent."""
    try:
        return float(json.loads((directory / _EXPIRY_FILE).read_bytes())["expires_at"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _is_expired(directory: Path, now: float) -> bool:
    """A directory without a readable expiry file is being written (the file comes first, so
    for a moment) or was left by a crash: it counts as expired once it is an hour old."""
    expires_at = _read_expiry(directory)
    if expires_at is None:
        try:
            return directory.stat().st_mtime < now - _ORPHAN_AGE_S
        except OSError:
            return False
    return has_expired(expires_at, now)


def _remove_if_empty(directory: Path) -> None:
    with contextlib.suppress(OSError):
        directory.rmdir()
