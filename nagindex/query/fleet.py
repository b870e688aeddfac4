"""Where a query's shard scans run: in this process one after another, or one Ray actor per shard.

A fleet has one method, ``map(name, *args)``: call ``ShardScan.<name>(*args)`` on every
shard and return the answers in shard order (``rank.py`` drives the rounds through it), plus
``each(name, args_per_part)`` for calls whose arguments differ per shard, and ``close()``.

``LocalFleet``: the shards are scanned one after another in this process (each scan
already uses every core: the numba kernels are parallel), so memory is one shard's block
at a time.

``RayFleet`` (``--ray-address``): one actor per shard, named after the shard's path, so a
later query in any process finds it with its memory maps open and its pages warm; it is
placed on the node the catalog records for the shard (a node-local shard) and exits after
``NAGINDEX_ACTOR_IDLE`` seconds without a call (default 900). The shards answer each
round in parallel. An actor that dies (a lost node, an OOM kill) is started again and the
query's earlier rounds are replayed on it (they are deterministic); a shard still
unreachable after ``RETRIES`` attempts fails the query naming the shard: never a
selection from the shards that happened to answer.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nagindex.cluster import connect
from nagindex.errors import NagIndexError

logger = logging.getLogger(__name__)

RETRIES = 3
#: calls that set a scan's state for the rest of the query: replayed on a restarted actor
STATEFUL = ("open", "score", "combine")


class LocalFleet:
    """Every shard scanned in this process, one after another: ``parts`` are ``ShardScan``s (or
    ``scan.ArrayPart``s), ``specs`` name them (``shard_specs``)."""

    def __init__(self, parts: Sequence[Any], specs: Sequence[dict[str, Any]]) -> None:
        self.parts, self.specs = list(parts), list(specs)

    @classmethod
    def open(cls, specs: Sequence[dict[str, Any]]) -> LocalFleet:
        from nagindex.query.scan import ShardScan

        return cls([ShardScan(s["path"], s["hidden"], s["part"]) for s in specs], specs)

    def map(self, name: str, *args: Any) -> list[Any]:
        return [_call(part, spec, name, args) for part, spec in zip(self.parts, self.specs)]

    def each(self, name: str, args: Sequence[tuple[Any, ...]]) -> list[Any]:
        return [_call(part, spec, name, a) for part, spec, a in zip(self.parts, self.specs, args)]

    def close(self) -> None:
        for part in self.parts:
            part.close()


def _call(part: Any, spec: dict[str, Any], name: str, args: tuple[Any, ...]) -> Any:
    try:
        return getattr(part, name)(*args)
    except NagIndexError as exc:
        if spec["name"] is None:  # a one-folder index: the error names it already
            raise
        raise type(exc)(f"shard {spec['name']}: {exc}") from None


class ShardActor:
    """A ``ShardScan`` living in a Ray actor (wrapped by ``ray.remote`` in ``RayFleet``)."""

    def __init__(self, path: str, part: int, idle_seconds: float) -> None:
        self.path, self.part, self.scan, self.stamp = path, part, None, None
        self.last = time.monotonic()
        self.idle = idle_seconds
        threading.Thread(target=self._watch, daemon=True).start()

    def _watch(self) -> None:
        while True:
            time.sleep(min(self.idle, 30.0))
            if time.monotonic() - self.last > self.idle:
                os._exit(0)  # idle: give the node's memory back (the name is free for the next query)

    def open(self, hidden: np.ndarray) -> int:
        """(Re)open the shard when its derived files changed since the last query; set its hidden rows."""
        from nagindex.query.scan import ShardScan

        info = Path(self.path) / "index_info.json"
        stamp = info.stat().st_mtime_ns if info.exists() else None
        if self.scan is None or stamp != self.stamp:
            if self.scan is not None:
                self.scan.close()
            self.scan, self.stamp = ShardScan(self.path, hidden, self.part), stamp
        self.scan.hidden = np.asarray(hidden, np.int64)
        return os.getpid()

    def call(self, name: str, *args: Any) -> Any:
        self.last = time.monotonic()
        try:
            return getattr(self.scan, name)(*args)
        finally:
            self.last = time.monotonic()


class RayFleet:
    """One named Ray actor per shard; rounds answered in parallel; lost actors restarted and replayed."""

    def __init__(self, specs: Sequence[dict[str, Any]], address: str, idle_seconds: float | None = None,
                 gpus: float = 0.0) -> None:
        self.ray = ray = connect(address)
        self.specs = list(specs)
        self.idle = float(idle_seconds if idle_seconds is not None else os.environ.get("NAGINDEX_ACTOR_IDLE", "900"))
        self.gpus = gpus  # --device cuda: each actor holds this much of a GPU (Ray sets its CUDA_VISIBLE_DEVICES)
        self._remote = ray.remote(num_cpus=0)(ShardActor)
        self._log: list[list[tuple[str, tuple[Any, ...]]]] = [[] for _ in self.specs]
        self.actors = [self._actor(i) for i in range(len(self.specs))]
        self.each("open", [(s["hidden"],) for s in self.specs])

    def _actor(self, i: int) -> Any:
        spec = self.specs[i]
        kind = "gpu" if self.gpus else "cpu"
        options: dict[str, Any] = {"name": f"nagindex-scan:{kind}:{Path(spec['path']).resolve()}",
                                   "namespace": "nagindex", "num_gpus": self.gpus,
                                   "lifetime": "detached", "get_if_exists": True, "max_concurrency": 1}
        node = _node_id(self.ray, spec.get("node_ip"))
        if node is not None:
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node, soft=True)
        return self._remote.options(**options).remote(spec["path"], spec["part"], self.idle)

    def _submit(self, i: int, name: str, args: tuple[Any, ...]) -> Any:
        actor = self.actors[i]
        return actor.open.remote(*args) if name == "open" else actor.call.remote(name, *args)

    def each(self, name: str, args: Sequence[tuple[Any, ...]]) -> list[Any]:
        refs = [self._submit(i, name, a) for i, a in enumerate(args)]
        out = []
        for i, (ref, a) in enumerate(zip(refs, args)):
            out.append(self._get(i, ref, name, a))
            if name in STATEFUL:
                self._log[i] = [e for e in self._log[i] if name != "open" or e[0] != "open"] + [(name, a)]
        return out

    def map(self, name: str, *args: Any) -> list[Any]:
        return self.each(name, [args] * len(self.specs))

    def _get(self, i: int, ref: Any, name: str, args: tuple[Any, ...]) -> Any:
        ray, spec = self.ray, self.specs[i]
        for attempt in range(RETRIES + 1):
            try:
                if ref is None:  # the actor was lost: a new one, the query's state replayed, the call again
                    self.actors[i] = self._actor(i)
                    for past, past_args in self._log[i]:
                        ray.get(self._submit(i, past, past_args))
                    ref = self._submit(i, name, args)
                return ray.get(ref)
            except ray.exceptions.RayTaskError as exc:
                if isinstance(exc.cause, NagIndexError):
                    raise type(exc.cause)(f"shard {spec['name'] or spec['path']}: {exc.cause}") from None
                raise
            except ray.exceptions.RayError as exc:  # the actor died or its node is gone
                if attempt == RETRIES:
                    raise NagIndexError(f"shard {spec['name'] or ''} ({spec['path']}) could not be reached on Ray after "
                                        f"{RETRIES + 1} attempts ({type(exc).__name__}): the query is stopped rather "
                                        "than answered from the other shards") from exc
                logger.warning("shard %s: actor lost (%s); starting it again and replaying %d round(s)",
                               spec["name"], type(exc).__name__, len(self._log[i]))
                ref = None
        raise AssertionError("unreachable")

    def close(self) -> None:
        """End the query: the actors drop its scratch and stay, warm, for the next one."""
        try:
            self.map("close")
        except NagIndexError:
            logger.warning("a shard actor was lost while closing the query; nothing to clean up there")


def _node_id(ray: Any, ip: str | None) -> str | None:
    if not ip:
        return None
    for node in ray.nodes():
        if node.get("Alive") and node.get("NodeManagerAddress") == ip:
            return node["NodeID"]
    logger.warning("no live Ray node has address %s (where the catalog says a shard lives): placing its actor "
                   "anywhere", ip)
    return None


def open_fleet(index_dir: str | os.PathLike, ray_address: str | None = None, device: str = "cpu") -> Any:
    """The fleet of the index's shards: ``RayFleet`` with ``ray_address`` (actors on GPUs for a ``cuda``
    device: a whole one each where the cluster has one per shard, else shares), else ``LocalFleet``."""
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
