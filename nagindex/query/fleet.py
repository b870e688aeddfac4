"""Where a query's shard scans run: in this process one after another, or in one Ray actor per shard.

A query is a *session*: on every shard it has its own ``scan.ShardScan`` (scratch, scores,
exclusions, sample keys), and nothing of it is shared with another query but the shard's
read-only memory maps. A fleet is one query's sessions on every shard. Its steps are the
methods of ``Fleet`` (``score``, ``histogram``, ``candidates``...): each runs the ``ShardScan``
method of the same name on every shard and returns the answers in shard order (``rank.py``
drives the rounds through them); ``close()`` ends the query's sessions and frees their scratch.

``LocalFleet``: the shards are scanned one after another in this process (each scan
already uses every core: the numba kernels are parallel), so memory is one shard's block
at a time. Any number of local fleets run at once, each with its own scans.

``RayFleet`` (``--ray-address``): one actor per shard, named after the shard's path, so a
later query in any process finds it with its memory maps open and its pages warm; it is
placed on the node the catalog records for the shard (a node-local shard). An actor
serves any number of queries at once (``ShardActor``: one session per query id, calls of
different sessions run concurrently, a session's own calls in order). The coordinator holds a
*lease* on its sessions, renewed every third of ``NAGINDEX_SESSION_LEASE`` seconds (default
60): a coordinator that dies stops renewing, and its sessions end there, scratch freed. An
actor exits after ``NAGINDEX_ACTOR_IDLE`` seconds (default 900) with no session and no call
running.

Recovery is re-execution: the coordinator keeps every state-changing step it sent a shard
(its plan and each decision after it: combine ranges, sample moments, exclusions; every
``ShardScan`` step not marked ``readonly``). An actor that dies (a lost node, an OOM kill),
or a session that ended under a live coordinator, is opened again and those steps are
replayed in order before the call is sent again: they are deterministic, so the query goes
on exactly as if nothing happened. A shard still unreachable after ``RETRIES`` attempts
fails the query naming the shard: never a selection from the shards that happened to answer.
The log keeps the steps' small arguments in memory and spills their arrays to a scratch file
of the coordinator (``ReplayLog``): a selection written by the shards sends each shard the ranks
of its rows (8 bytes a row), which would otherwise grow the coordinator with the selection.
"""
from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nagindex.cluster import ClusterWatch, connect
from nagindex.errors import NagIndexError
from nagindex.query.scan import ShardScan, is_readonly

logger = logging.getLogger(__name__)

RETRIES = 3
#: arrays of a logged step of at least this many bytes are spilled to the coordinator's scratch
SPILL_BYTES = 1 << 16


class ReplayLog:
    """Per shard, the state-changing steps sent so far, in order: what a rebuilt session replays.

    A step's arrays of ``SPILL_BYTES`` or more are appended to one scratch file per shard and kept as
    ``(offset, dtype, shape)``; replay reads them back from the file. Memory is the small arguments only.
    """

    def __init__(self, shards: int) -> None:
        self._steps: list[list[tuple[str, tuple[Any, ...]]]] = [[] for _ in range(shards)]
        self._dir: Path | None = None

    def count(self, shard: int) -> int:
        return len(self._steps[shard])

    def add(self, shard: int, step: str, args: tuple[Any, ...]) -> None:
        self._steps[shard].append((step, tuple(self._spill(shard, a) for a in args)))

    def steps(self, shard: int) -> Any:
        """The shard's logged steps in order, arrays read back from the spill file."""
        for step, args in self._steps[shard]:
            yield step, tuple(self._load(shard, a) for a in args)

    def close(self) -> None:
        if self._dir is not None:
            import shutil

            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def _spill(self, shard: int, arg: Any) -> Any:
        if isinstance(arg, list):
            return [self._spill(shard, a) for a in arg]
        if not isinstance(arg, np.ndarray) or arg.nbytes < SPILL_BYTES:
            return arg
        if self._dir is None:
            from nagindex.query.scratch import new_scratch

            self._dir = new_scratch("replay")
        with open(self._dir / f"shard-{shard}.bin", "ab") as fh:
            offset = fh.tell()
            fh.write(np.ascontiguousarray(arg).tobytes())
        return _Spilled(offset, arg.dtype.str, arg.shape)

    def _load(self, shard: int, arg: Any) -> Any:
        if isinstance(arg, list):
            return [self._load(shard, a) for a in arg]
        if not isinstance(arg, _Spilled):
            return arg
        assert self._dir is not None
        count = int(np.prod(arg.shape))
        return np.fromfile(self._dir / f"shard-{shard}.bin", dtype=arg.dtype, count=count,
                           offset=arg.offset).reshape(arg.shape)


@dataclass(frozen=True)
class _Spilled:
    """A logged array that lives in the replay log's spill file."""

    offset: int
    dtype: str
    shape: tuple[int, ...]


class SessionGone(NagIndexError):
    """A shard actor has no session of this query (it expired, or the actor was started anew)."""


class Fleet:
    """One query's sessions on every shard of an index: each step runs on every shard, answers in
    shard order. ``specs`` describe the shards (``index.sharded.shard_specs``)."""

    specs: list[dict[str, Any]]

    def _run(self, step: str, args: Sequence[tuple[Any, ...]]) -> list[Any]:
        """``ShardScan.<step>(*args[i])`` on shard ``i``, for every shard."""
        raise NotImplementedError

    def _all(self, step: str, *args: Any) -> list[Any]:
        return self._run(step, [args] * len(self.specs))

    def describe(self) -> list[dict[str, Any]]:
        return self._all("describe")

    def neuron_counts(self) -> list[np.ndarray]:
        return self._all("neuron_counts")

    def hamming_histogram(self, queries: np.ndarray) -> list[np.ndarray]:
        return self._all("hamming_histogram", queries)

    def score(self, plan: Any) -> list[dict[str, Any]]:
        return self._all("score", plan)

    def combine(self, dist_range: np.ndarray, q_range: tuple[float, float]) -> list[dict[str, Any]]:
        return self._all("combine", dist_range, q_range)

    def sample(self, means: np.ndarray, sds: np.ndarray, temperature: float, seed: int) -> list[dict[str, Any]]:
        return self._all("sample", means, sds, temperature, seed)

    def stats(self) -> list[dict[str, Any]]:
        return self._all("stats")

    def histogram(self, binnings: list[Any]) -> list[Any]:
        return self._all("histogram", binnings)

    def candidates(self, target: int, binning: Any, cut: int, need: Any, edge_only: bool = False) -> list[Any]:
        return self._all("candidates", target, binning, cut, need, edge_only)

    def fetch(self, rows: Sequence[np.ndarray], with_text: bool) -> list[dict[str, Any]]:
        """Shard ``i`` fetches ``rows[i]``."""
        return self._run("fetch", [(r, with_text) for r in rows])

    def exclude(self, rows: Sequence[np.ndarray]) -> None:
        """Shard ``i`` takes ``rows[i]`` out of this query."""
        self._run("exclude", [(r,) for r in rows])

    def contamination(self, rows: Sequence[np.ndarray], benchmarks: Any) -> list[Any]:
        return self._run("contamination", [(r, benchmarks) for r in rows])

    def choose(self, target: int, binning: Any, cut: int, edge: Sequence[np.ndarray]) -> None:
        """Shard ``i`` chooses its rows before bin ``cut`` and ``edge[i]`` for ``target`` (``parts.py``)."""
        self._run("choose", [(target, binning, cut, e) for e in edge])

    def check_chosen(self, benchmarks: Any) -> list[list[Any]]:
        return self._all("check_chosen", benchmarks)

    def sort_chosen(self, target: int) -> list[int]:
        return self._all("sort_chosen", target)

    def chosen_keys(self, target: int, starts: Sequence[int], counts: Sequence[int]) -> list[Any]:
        return self._run("chosen_keys", [(target, a, n) for a, n in zip(starts, counts)])

    def write_chosen(self, target: int, starts: Sequence[int], ranks: Sequence[np.ndarray], paths: Sequence[str],
                     names: list[str], with_text: bool, quality: bool) -> None:
        self._run("write_chosen", [(target, a, r, path, names, with_text, quality)
                                   for a, r, path in zip(starts, ranks, paths)])

    def finish_part(self) -> list[Any]:
        return self._all("finish_part")

    def close(self) -> None:
        raise NotImplementedError


class LocalFleet(Fleet):
    """Every shard scanned in this process, one after another: ``parts`` are ``ShardScan``s (or
    ``scan.ArrayPart``s), ``specs`` name them (``shard_specs``)."""

    def __init__(self, parts: Sequence[Any], specs: Sequence[dict[str, Any]]) -> None:
        self.parts, self.specs = list(parts), list(specs)

    @classmethod
    def open(cls, specs: Sequence[dict[str, Any]]) -> LocalFleet:
        return cls([ShardScan(s["path"], s["hidden"], s["part"], s.get("rows")) for s in specs], specs)

    def _run(self, step: str, args: Sequence[tuple[Any, ...]]) -> list[Any]:
        return [_call(part, spec, step, a) for part, spec, a in zip(self.parts, self.specs, args)]

    def close(self) -> None:
        for part in self.parts:
            part.close()


def _call(scan: Any, spec: dict[str, Any], step: str, args: tuple[Any, ...]) -> Any:
    try:
        return getattr(scan, step)(*args)
    except NagIndexError as exc:
        if spec["name"] is None:  # a one-folder index: the error names it already
            raise
        raise type(exc)(f"shard {spec['name']}: {exc}") from None


def lease_seconds() -> float:
    """How long a shard actor keeps a session whose coordinator stopped renewing it."""
    return float(os.environ.get("NAGINDEX_SESSION_LEASE", "60"))


@dataclass
class _Session:
    scan: ShardScan
    lease: float
    seen: float = field(default_factory=time.monotonic)
    running: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)  # one query's calls, in order


class ShardActor:
    """One shard's query sessions in a Ray actor (wrapped by ``ray.remote`` in ``RayFleet``).

    Sessions share the shard's open snapshot (reopened for a new session when the shard's derived
    files changed); each holds its own ``ShardScan``. A session ends when its query closes it, or
    when no call runs in it and its coordinator has not renewed it for its lease. The actor exits
    after ``idle_seconds`` with no session and no call running.
    """

    def __init__(self, path: str, part: int, idle_seconds: float) -> None:
        from nagindex.query.scratch import sweep

        self.path, self.part, self.idle = path, part, idle_seconds
        self._sessions: dict[str, _Session] = {}
        self._views: dict[tuple[Any, Any], Any] = {}
        self._lock = threading.Lock()
        self._running = 0
        self._last = time.monotonic()
        sweep()  # what an actor of this machine killed with kill -9 left
        threading.Thread(target=self._watch, daemon=True).start()

    def open(self, qid: str, hidden: np.ndarray, rows: int | None, lease: float) -> int:
        """Start (or start again, empty) query ``qid``'s session; returns the actor's process id."""
        view = self._view(rows)
        scan = ShardScan(self.path, hidden, self.part, view=view)
        with self._lock:
            old = self._sessions.pop(qid, None)
            self._sessions[qid] = _Session(scan, lease)
            self._last = time.monotonic()
        if old is not None:
            old.scan.close()
        return os.getpid()

    def _view(self, rows: int | None) -> Any:
        """The shard's snapshot, opened again when its derived files changed since it was opened."""
        from nagindex.index.derived import open_shard

        info = Path(self.path) / "index_info.json"
        key = (info.stat().st_mtime_ns if info.exists() else None, rows)
        with self._lock:
            view = self._views.get(key)
        if view is None:
            view = open_shard(self.path, rows=rows)
            with self._lock:
                self._views = {key: view}  # older snapshots live on in the sessions that use them
        return view

    def call(self, qid: str, step: str, *args: Any) -> Any:
        """Run ``ShardScan.<step>(*args)`` in session ``qid``."""
        if step.startswith("_") or not callable(getattr(ShardScan, step, None)):
            raise NagIndexError(f"no query step {step!r}")
        with self._lock:
            session = self._sessions.get(qid)
            if session is None:
                raise SessionGone(f"query {qid} has no session on this shard actor")
            session.running += 1
            self._running += 1
        try:
            with session.lock:
                return getattr(session.scan, step)(*args)
        finally:
            with self._lock:
                session.running -= 1
                self._running -= 1
                session.seen = self._last = time.monotonic()

    def renew(self, qid: str) -> bool:
        """The coordinator of ``qid`` is alive; False when the session is gone (the next call replays)."""
        with self._lock:
            session = self._sessions.get(qid)
            if session is not None:
                session.seen = time.monotonic()
            return session is not None

    def end(self, qid: str) -> None:
        """Query ``qid`` ended: drop its session and scratch."""
        with self._lock:
            session = self._sessions.pop(qid, None)
            self._last = time.monotonic()
        if session is not None:
            with session.lock:
                session.scan.close()

    def sessions(self) -> list[str]:
        """The query ids with a session here."""
        with self._lock:
            return list(self._sessions)

    def _expire(self) -> bool:
        """End the sessions whose lease ran out; True when the actor has been idle past ``idle``."""
        now = time.monotonic()
        with self._lock:
            gone = [q for q, s in self._sessions.items() if not s.running and now - s.seen > s.lease]
            ended = [self._sessions.pop(q) for q in gone]
            idle = not self._sessions and not self._running and now - self._last > self.idle
        for qid, session in zip(gone, ended):
            logger.warning("query %s: its coordinator stopped renewing its session for %.0f s: session ended",
                           qid, session.lease)
            session.scan.close()
        return idle

    def _watch(self) -> None:
        while True:
            with self._lock:  # leases come from each query's coordinator, not from this process's env
                shortest = min((s.lease for s in self._sessions.values()), default=self.idle)
            time.sleep(max(0.05, min(5.0, self.idle / 4, shortest / 4)))
            if self._expire():
                self._exit()
                return

    def _exit(self) -> None:
        os._exit(0)  # idle: give the node's memory back (the name is free for the next query)


class RayFleet(Fleet):
    """One query's sessions on one named Ray actor per shard; rounds answered in parallel; lost actors
    and lost sessions rebuilt by replaying the query's state-changing steps."""

    def __init__(self, specs: Sequence[dict[str, Any]], address: str, idle_seconds: float | None = None,
                 gpus: float = 0.0) -> None:
        self.ray = ray = connect(address)
        #: waits on the shards while checking the cluster is still there: a lost cluster fails within a bound
        self.watch = ClusterWatch(ray, address, "a query keeps nothing but its target cache: run it again "
                                                "once the cluster is back, or with --ray-address local")
        self.specs = list(specs)
        self.qid = uuid.uuid4().hex
        self.lease = lease_seconds()
        self.idle = float(idle_seconds if idle_seconds is not None else os.environ.get("NAGINDEX_ACTOR_IDLE", "900"))
        self.gpus = gpus  # --device cuda: each actor holds this much of a GPU (Ray sets its CUDA_VISIBLE_DEVICES)
        self._remote = ray.remote(num_cpus=0)(ShardActor)
        self._log = ReplayLog(len(self.specs))
        self.actors = [self._actor(i) for i in range(len(self.specs))]
        self._stop = threading.Event()
        try:
            for i, ref in enumerate([self._open(i) for i in range(len(self.specs))]):
                self._get(i, ref, "open", ())
        except BaseException:
            self.close()
            raise
        threading.Thread(target=self._renew, daemon=True).start()

    def _actor(self, i: int) -> Any:
        spec = self.specs[i]
        kind = "gpu" if self.gpus else "cpu"
        options: dict[str, Any] = {"name": f"nagindex-scan:{kind}:{Path(spec['path']).resolve()}",
                                   "namespace": "nagindex", "num_gpus": self.gpus, "lifetime": "detached",
                                   "get_if_exists": True, "max_concurrency": 64}
        node = _node_id(self.ray, spec.get("node_ip"))
        if node is not None:
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node, soft=True)
        return self._remote.options(**options).remote(spec["path"], spec["part"], self.idle)

    def _open(self, i: int) -> Any:
        spec = self.specs[i]
        return self.actors[i].open.remote(self.qid, spec["hidden"], spec.get("rows"), self.lease)

    def _renew(self) -> None:
        """The lease: tell every actor this query's coordinator is alive, until the query ends."""
        while not self._stop.wait(self.lease / 3):
            for actor in self.actors:
                actor.renew.remote(self.qid)

    def _run(self, step: str, args: Sequence[tuple[Any, ...]]) -> list[Any]:
        refs = [actor.call.remote(self.qid, step, *a) for actor, a in zip(self.actors, args)]
        out = [self._get(i, ref, step, a) for i, (ref, a) in enumerate(zip(refs, args))]
        if not is_readonly(step):
            for i, a in enumerate(args):
                self._log.add(i, step, a)
        return out

    def _get(self, i: int, ref: Any, step: str, args: tuple[Any, ...]) -> Any:
        ray, spec = self.ray, self.specs[i]
        for attempt in range(RETRIES + 1):
            try:
                if ref is None:  # the actor or the session was lost: open it again, replay, call again
                    self.actors[i] = self._actor(i)
                    opened = self.watch.get(self._open(i))
                    if step == "open":
                        return opened
                    for past, past_args in self._log.steps(i):
                        self.watch.get(self.actors[i].call.remote(self.qid, past, *past_args))
                    ref = self.actors[i].call.remote(self.qid, step, *args)
                return self.watch.get(ref)
            except ray.exceptions.RayTaskError as exc:
                if isinstance(exc.cause, SessionGone) and attempt < RETRIES:
                    logger.warning("shard %s: session of query %s ended there; opening it again and replaying "
                                   "%d step(s)", spec["name"], self.qid, self._log.count(i))
                    ref = None
                    continue
                if isinstance(exc.cause, NagIndexError):
                    raise type(exc.cause)(f"shard {spec['name'] or spec['path']}: {exc.cause}") from None
                raise
            except ray.exceptions.RayError as exc:  # the actor died, its node is gone, or the whole cluster
                if self.watch.gone():
                    raise self.watch.lost(f"shard {spec['name'] or spec['path']} failed with "
                                          f"{type(exc).__name__} while the cluster's GCS is down") from exc
                if attempt == RETRIES:
                    raise NagIndexError(f"shard {spec['name'] or ''} ({spec['path']}) could not be reached on Ray after "
                                        f"{RETRIES + 1} attempts ({type(exc).__name__}): the query is stopped rather "
                                        "than answered from the other shards") from exc
                logger.warning("shard %s: actor lost (%s); starting it again and replaying %d step(s)",
                               spec["name"], type(exc).__name__, self._log.count(i))
                ref = None
        raise NagIndexError(f"shard {spec['name'] or spec['path']}: the session of query {self.qid} kept ending")

    def close(self) -> None:
        """End the query: the actors drop its sessions and scratch and stay, warm, for the next one (on a
        cluster that is gone there is nothing to end: its actors went with it, their sessions too)."""
        self._stop.set()
        self._log.close()
        if self.watch.gone():
            return
        for actor in self.actors:
            try:
                self.ray.get(actor.end.remote(self.qid), timeout=self.lease)
            except Exception as exc:  # noqa: BLE001 - a lost actor has nothing left to free
                logger.warning("a shard actor was lost while closing query %s (%s); its session ends with it",
                               self.qid, type(exc).__name__)


def _node_id(ray: Any, ip: str | None) -> str | None:
    if not ip:
        return None
    for node in ray.nodes():
        if node.get("Alive") and node.get("NodeManagerAddress") == ip:
            return node["NodeID"]
    logger.warning("no live Ray node has address %s (where the catalog says a shard lives): placing its actor "
                   "anywhere", ip)
    return None


def open_fleet(index_dir: str | os.PathLike, ray_address: str | None = None, device: str = "cpu") -> Fleet:
    """A new query's fleet over the index's shards: ``RayFleet`` with ``ray_address`` (actors on GPUs for a
    ``cuda`` device: a whole one each where the cluster has one per shard, else shares), else ``LocalFleet``."""
    from nagindex.index.sharded import shard_specs

    specs = shard_specs(index_dir)
    if not specs:
        raise NagIndexError(f"index {index_dir} holds no documents")
    if not ray_address:
        return LocalFleet.open(specs)
    gpus = 0.0
    if str(device).startswith("cuda"):
        have = connect(ray_address).cluster_resources().get("GPU", 0)
        if not have:
            raise NagIndexError("--device cuda with --ray-address: the Ray cluster has no GPU")
        gpus = min(1.0, have / len(specs))
    return RayFleet(specs, ray_address, gpus=gpus)
