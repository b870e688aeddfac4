"""Writing files safely: unique temporary names, atomic replace, and disk-full as a user error.

Every file nagindex writes whole (selections, manifests, derived index files,
cached target NAGs, feature exports) goes through ``atomic_path``: the data is
written to a temporary name unique to this process and call, beside the final
file, flushed to disk, then renamed over it. Two processes writing the same
file therefore never truncate each other's data, a reader sees the old file or
the new one and never a torn one, and a failure (disk full, Ctrl-C, an error
while writing) leaves no temporary file behind.
"""
from __future__ import annotations

import errno
import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from nagindex.errors import NagIndexError

#: errno values meaning "the device has no room left" (disk full, quota exceeded)
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
TMP_SUFFIX = ".tmp"


class DiskFullError(NagIndexError):
    """A write failed for lack of space; the message names the path, the free space and what to do."""


def temp_name(path: str | os.PathLike[str]) -> Path:
    """``.<name>.<pid>.<random>.tmp`` beside ``path``: unique per process and call, hidden, easy to clean."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}{TMP_SUFFIX}")


def fsync_path(path: str | os.PathLike[str]) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in DISK_FULL


def disk_full_error(path: str | os.PathLike[str], exc: OSError | None = None, *, need: str = "") -> DiskFullError:
    """The user-facing error for a write to ``path`` that found the disk full."""
    folder = Path(path).parent if not Path(path).is_dir() else Path(path)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        free = f"{shutil.disk_usage(folder).free / 1e9:.2f} GB free"
    except OSError:
        free = "free space unknown"
    what = f" ({exc.strerror})" if exc is not None and exc.strerror else ""
    return DiskFullError(f"no space left writing {path}{what}; {free} on the device of {folder}. "
                         f"Free space there{need and ' (' + need + ')'} and run the same command again: "
                         "committed work is kept, nothing half-written is used")


@contextmanager
def disk_errors(path: str | os.PathLike[str], *, need: str = "") -> Iterator[None]:
    """Turn a disk-full ``OSError`` raised inside the block into a ``DiskFullError`` naming ``path``."""
    try:
        yield
    except OSError as exc:
        if disk_full(exc):
            raise disk_full_error(path, exc, need=need) from exc
        raise


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a unique temporary path for the caller to write; on success it replaces ``path``.

    The temporary file is fsynced before the rename, so after a crash ``path`` is
    either the old file or the complete new one. On any failure it is removed.
    """
    path = Path(path)
    tmp = temp_name(path)
    try:
        with disk_errors(path):
            yield tmp
            fsync_path(tmp)
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # gone already after a successful replace


def remove_stale_temps(folder: str | os.PathLike[str], names: list[str]) -> int:
    """Remove leftover temporary files of ``names`` in ``folder`` (only call while holding the writer's lock)."""
    removed = 0
    for name in names:
        for tmp in Path(folder).glob(f".{name}.*{TMP_SUFFIX}"):
            tmp.unlink(missing_ok=True)
            removed += 1
    return removed
