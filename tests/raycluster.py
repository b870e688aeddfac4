"""A private Ray cluster started as a team starts one (``ray start --head``), for tests that need a cluster
other processes can join or that must lose one; stopped by killing its process group, never by ``ray stop``
(which would stop every Ray cluster of the machine)."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def ray_head(env: dict[str, str] | None = None, num_cpus: int = 2,
             timeout: float = 120.0) -> Iterator[tuple[str, subprocess.Popen]]:
    """``ray start --head --block`` on ports of its own, in its own process group, with ``env`` (default this
    process's); yields its address (``127.0.0.1:port``) and process."""
    port = free_port()
    temp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))  # short: Ray's socket paths have a length limit
    log = temp / "head.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([str(Path(sys.executable).parent / "ray"), "start", "--head", "--block",
                                 "--port", str(port), "--temp-dir", str(temp), "--num-cpus", str(num_cpus),
                                 "--include-dashboard", "false", "--disable-usage-stats"],
                                env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while "will now block" not in log.read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ray start failed:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield f"127.0.0.1:{port}", proc
    finally:
        kill_head(proc)
        shutil.rmtree(temp, ignore_errors=True)


def kill_head(proc: subprocess.Popen) -> None:
    """The head and every process of its cluster, at once: a lost machine. Ray's workers (shard actors among
    them) leave the head's process group, so every descendant of the head is found by its parent."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile
        children.setdefault(ppid, []).append(int(stat.parent.name))
    doomed, todo = [], [proc.pid]
    while todo:
        pid = todo.pop()
        doomed.append(pid)
        todo += children.get(pid, [])
    for pid in doomed:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()
