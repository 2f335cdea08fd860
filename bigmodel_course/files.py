"""Crash-safe files, the one implementation every module uses: hashing, fsync, atomic writes, folder publish,
size-plus-SHA-256 manifests and an inter-process lock.

Nothing here imports PyTorch, so the book's build tools can use it in their light environment.

* A file is written to a temporary sibling, flushed to disk and renamed over the target
  (`atomic_write_text`, `atomic_write_json`): a reader sees the old file or the new one, never half.
* A folder is filled under a hidden temporary name and renamed into place (`atomic_directory`, or
  `staging_directory` + `publish_directory` when the final name is chosen later, under a lock). An existing
  folder is first moved to ``.<name>.previous``; `published` falls back to it if a crash hit between the
  two renames.
* A manifest (``manifest.json``) records the size and SHA-256 of every file of a folder; `verify_manifest`
  names the first file that changed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

MANIFEST_FILE = "manifest.json"
LOCK_TIMEOUT_S = 30.0


class IntegrityError(ValueError):
    """A file is missing, truncated or changed since its size and SHA-256 were recorded."""


class LockTimeout(RuntimeError):
    """Another process held a lock longer than the timeout."""


# ---------------------------------------------------------------- hashing and fsync

def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_entry(path: str | os.PathLike) -> dict:
    """{"bytes", "sha256"} of one file."""
    return {"bytes": Path(path).stat().st_size, "sha256": sha256_file(path)}


def check_entry(path: str | os.PathLike, expected: Mapping) -> None:
    """Raise IntegrityError naming `path` unless it exists with the recorded size and SHA-256."""
    path = Path(path)
    if not path.is_file():
        raise IntegrityError(f"{path} is missing")
    size = path.stat().st_size
    if size != expected.get("bytes"):
        raise IntegrityError(f"{path} has {size} bytes, expected {expected.get('bytes')} (truncated or replaced)")
    actual = sha256_file(path)
    if actual != expected.get("sha256"):
        raise IntegrityError(f"{path} has sha256 {actual[:12]}…, expected {str(expected.get('sha256'))[:12]}… "
                             "(the file changed after it was recorded)")


def fsync_path(path: str | os.PathLike) -> None:
    """Flush a file or a directory to disk (directories are skipped where the OS cannot open them)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - Windows cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some file systems refuse fsync on directories
        pass
    finally:
        os.close(fd)


def fsync_tree(folder: str | os.PathLike) -> None:
    """Flush every file and folder below `folder`, then `folder` itself."""
    for dirpath, _, filenames in os.walk(folder, topdown=False):
        for name in filenames:
            fsync_path(os.path.join(dirpath, name))
        fsync_path(dirpath)


# ---------------------------------------------------------------- atomic files

def atomic_write_bytes(path: str | os.PathLike, data: bytes, mode: int = 0o644) -> Path:
    """Write `data` through a temporary file in the same folder, fsync, os.replace: readers see old or new."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)  # mkstemp creates 0600 files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_path(path.parent)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 `text` atomically (see `atomic_write_bytes`)."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, data, indent: int | None = 2) -> Path:
    """Write `data` as UTF-8 JSON (non-ASCII kept readable) atomically."""
    return atomic_write_text(path, json.dumps(data, ensure_ascii=False, indent=indent))


# ---------------------------------------------------------------- atomic folders

def previous_path(target: str | os.PathLike) -> Path:
    """Where `publish_directory` keeps the old folder while it swaps in the new one."""
    target = Path(target)
    return target.parent / f".{target.name}.previous"


def published(target: str | os.PathLike) -> Path:
    """`target`, or the previous folder if a crash hit between the two renames of a publish."""
    target = Path(target)
    old = previous_path(target)
    return old if not target.exists() and old.is_dir() else target


@contextmanager
def staging_directory(parent: str | os.PathLike, name: str = "folder") -> Iterator[Path]:
    """Yield a new hidden folder in `parent` to fill; it is removed if the block raises or leaves it there."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    tmp = parent / f".{name}.tmp-{uuid.uuid4().hex[:12]}"
    tmp.mkdir()
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # a no-op once published (renamed away)


def publish_directory(tmp: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Flush the filled folder `tmp` to disk and rename it to `target`, replacing an existing folder."""
    tmp, target = Path(tmp), Path(target)
    fsync_tree(tmp)
    old = previous_path(target)
    if old.exists():
        shutil.rmtree(old)
    if target.exists():
        os.rename(target, old)  # the old folder stays until the new one is in place
    os.rename(tmp, target)
    fsync_path(target.parent)
    shutil.rmtree(old, ignore_errors=True)
    return target


@contextmanager
def atomic_directory(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling folder to fill; on success it replaces `target`, on error it is removed.

    Readers see the old folder or the complete new one, never half of it.
    """
    target = Path(target)
    with staging_directory(target.parent, target.name) as tmp:
        yield tmp
        publish_directory(tmp, target)


# ---------------------------------------------------------------- manifests

def _relative_files(folder: Path) -> list[str]:
    """Paths (POSIX, relative to `folder`) of every file below it except the manifest, sorted."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                  if p.is_file() and p.name != MANIFEST_FILE)


def write_manifest(folder: str | os.PathLike, known: Mapping[str, Mapping] | None = None) -> dict:
    """Record size and SHA-256 of every file below `folder` in folder/manifest.json; returns the entries.

    known: entries the caller has just computed for files it wrote (reused instead of hashing them again).
    """
    folder = Path(folder)
    known = dict(known or {})
    files = {name: dict(known[name]) if name in known else file_entry(folder / name)
             for name in _relative_files(folder)}
    atomic_write_json(folder / MANIFEST_FILE, {"files": files})
    return files


def verify_manifest(folder: str | os.PathLike) -> dict:
    """Check every file of folder/manifest.json (and that no file was added); IntegrityError names the first
    problem. Returns the entries."""
    folder = Path(folder)
    try:
        files = json.loads((folder / MANIFEST_FILE).read_text(encoding="utf-8"))["files"]
    except FileNotFoundError:
        raise IntegrityError(f"{folder / MANIFEST_FILE} is missing (the folder was never completely written)") from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise IntegrityError(f"{folder / MANIFEST_FILE} is unreadable ({e})") from None
    if not isinstance(files, dict):
        raise IntegrityError(f"{folder / MANIFEST_FILE} has no file list")
    for name, expected in files.items():
        check_entry(folder / name, expected)
    extra = sorted(set(_relative_files(folder)) - set(files))
    if extra:
        raise IntegrityError(f"{folder} holds files the manifest does not list: {', '.join(extra[:5])}")
    return files


# ---------------------------------------------------------------- locking

@contextmanager
def file_lock(path: str | os.PathLike, timeout: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """Hold an OS-level lock on `path` for the block (released by the OS if the process dies).

    LockTimeout when another process holds it for more than `timeout` seconds.
    """
    from filelock import FileLock, Timeout

    lock = FileLock(str(path), timeout=timeout, thread_local=False)
    try:
        lock.acquire()
    except Timeout:
        raise LockTimeout(f"{path} is held by another process (waited {timeout:g} s)") from None
    try:
        yield
    finally:
        lock.release()
