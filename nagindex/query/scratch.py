"""Where a query's scratch files live, who owns them, and who sweeps what a dead owner left.

A shard scan writes 4-8 bytes per document and target to file-backed maps (``scan.ShardScan``).
Every such folder lives under one root per user (``$NAGINDEX_SCRATCH/nagindex-scratch-<uid>``,
the temp folder by default) and carries an ``owner.json``: the host, process id and process start
time of the process that holds it (the query's own process, or the shard actor serving the query).
The folder is removed by its owner when the query ends; an owner killed with ``kill -9`` (a query,
an actor, a lost worker) cannot, so every new scratch folder first sweeps the root: a folder whose
owner on this host no longer runs goes. The start time guards against a recycled process id.

A live actor whose query's coordinator died still owns its session's folder; that is the
actor's lease to judge (``fleet.ShardActor``): a session not renewed within its lease ends there.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path

logger = logging.getLogger(__name__)

OWNER = "owner.json"
#: a folder without an owner file younger than this may be one being created right now
UNOWNED_GRACE_S = 60.0


def scratch_root() -> Path:
    """The user's scratch root: ``$NAGINDEX_SCRATCH`` or the temp folder, one subfolder per user."""
    base = os.environ.get("NAGINDEX_SCRATCH") or tempfile.gettempdir()
    return Path(base) / f"nagindex-scratch-{os.getuid()}"


def new_scratch(label: str) -> Path:
    """A fresh scratch folder owned by this process, after sweeping what dead owners left."""
    root = scratch_root()
    root.mkdir(parents=True, exist_ok=True)
    sweep(root)
    path = Path(tempfile.mkdtemp(prefix=f"{label}-", dir=root))
    (path / OWNER).write_text(json.dumps(_me()))
    return path


def sweep(root: Path | None = None) -> int:
    """Remove the scratch folders under ``root`` whose owner on this host is gone; return how many."""
    root = scratch_root() if root is None else root
    if not root.is_dir():
        return 0
    host, removed = socket.gethostname(), 0
    for path in root.iterdir():
        try:
            owner = json.loads((path / OWNER).read_text())
        except FileNotFoundError:
            try:
                stale = time.time() - path.stat().st_mtime > UNOWNED_GRACE_S
            except FileNotFoundError:
                continue  # its owner removed it meanwhile
            if not stale:
                continue
        except (OSError, ValueError):
            continue  # half-written by a live owner right now, or not ours to judge
        else:
            if owner.get("host") != host or _alive(int(owner["pid"]), owner.get("start")):
                continue
        shutil.rmtree(path, ignore_errors=True)
        removed += 1
    if removed:
        logger.info("swept %d scratch folder(s) left by stopped queries or actors under %s", removed, root)
    return removed


def _me() -> dict[str, object]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "start": _start_time(os.getpid())}


def _stat(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name (Linux), None where there is none."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def _start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot, None where /proc has no answer."""
    fields = _stat(pid)
    return None if fields is None else int(fields[19])


def _alive(pid: int, start: int | None) -> bool:
    """Whether the process that wrote an owner file still runs (a zombie, or a new process that
    got the same id, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    fields = _stat(pid)
    if fields is None:
        return True  # no /proc here: the signal's answer is all there is
    return fields[0] != "Z" and (start is None or int(fields[19]) == start)
