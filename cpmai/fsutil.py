"""Atomic writes and streamed hashing: the two ways cpmai touches state files."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

CHUNK = 1 << 20  # 1 MiB: big enough that hashing, not Python, is the cost


def not_regular(path: Path) -> str | None:
    """Why `path` (symlinks followed) cannot be read as a file's content: a FIFO would block the
    reader, a device never end; None for a regular file or a missing one (callers say so)."""
    import stat

    try:
        mode = path.stat().st_mode
    except OSError:
        return None
    if stat.S_ISREG(mode):
        return None
    kind = ("a folder" if stat.S_ISDIR(mode) else "a FIFO (named pipe)" if stat.S_ISFIFO(mode)
            else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a socket"
            if stat.S_ISSOCK(mode) else "not a regular file")  # fmt: skip
    return f"is {kind}, not a regular file" if not kind.startswith("not") else kind


def read_json_object(path: Path) -> dict[str, Any] | None:
    """A JSON object from `path`, or None when it is missing, unreadable, not an object or not a
    regular file (a FIFO there would block the reader forever)."""
    if not_regular(path) is not None:
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` so readers see the old file or the new one, never half of it."""
    write_atomic_with(path, lambda handle: handle.write(data))


def write_atomic_with(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """`write_atomic` for content written in pieces by `write(handle)` (never all in memory)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def sha256_file(path: Path) -> str:
    """SHA-256 of a file, read in 1 MiB chunks (memory stays flat whatever the size)."""
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def copy_and_hash(source: Path, dest: Path) -> tuple[str, int]:
    """Copy `source` to `dest` and hash it in the same pass; returns (sha256, size)."""
    digest = hashlib.sha256()
    size = 0
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    with source.open("rb", buffering=0) as src, dest.open("wb") as out:
        while True:
            n = src.readinto(buffer)
            if not n:
                break
            digest.update(view[:n])
            out.write(view[:n])
            size += n
        out.flush()
        os.fsync(out.fileno())
    return digest.hexdigest(), size


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
