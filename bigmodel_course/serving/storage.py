"""Crash-safe file helpers of the registry: sha256 of a file, fsync, atomic JSON writes, an O_EXCL lock file."""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..utils import atomic_write_text

LOCK_TIMEOUT_S, LOCK_STALE_S = 30.0, 120.0


class LockTimeout(RuntimeError):
    """Another process held a lock file longer than the timeout."""


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_entry(path: str | os.PathLike) -> dict:
    """{"bytes", "sha256"} of one file."""
    return {"bytes": Path(path).stat().st_size, "sha256": file_sha256(path)}


def fsync_path(path: str | os.PathLike) -> None:
    """Flush a file or a directory to disk (directories are skipped where the OS cannot open them)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - Windows cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def write_json_atomic(path: str | os.PathLike, data: dict) -> None:
    """Write JSON through a temporary file in the same folder, fsync, os.replace: readers see old or new, never half."""
    atomic_write_text(path, json.dumps(data, ensure_ascii=False, indent=2))


@contextmanager
def locked(folder: str | os.PathLike, timeout: float = LOCK_TIMEOUT_S, stale: float = LOCK_STALE_S) -> Iterator[None]:
    """Hold `folder/.lock` (created with O_EXCL) for the block; a lock older than `stale` seconds is broken."""
    lock = Path(folder) / ".lock"
    deadline = time.monotonic() + timeout
    while True:
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            break
        except FileExistsError:
            try:
                if time.time() - lock.stat().st_mtime > stale:  # left behind by a crashed process
                    lock.unlink(missing_ok=True)
                    continue
            except FileNotFoundError:
                continue
            if time.monotonic() > deadline:
                raise LockTimeout(f"{folder} is locked by another process ({lock})") from None
            time.sleep(0.01)
    try:
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        yield
    finally:
        lock.unlink(missing_ok=True)
