"""Ingest beyond one machine: NAG extraction on a pool of Ray actors.

The driver keeps what must stay sequential: reading inputs, screening ids,
and committing windows to LMDB in input order with their resume cursors, so a
Ray ingest writes exactly the index a local one writes, and resumes the same
way after a crash. Each actor loads the backbone once (on its own GPU when
``gpus_per_worker`` > 0) and turns windows of documents into NAG codes; at most
``2 x workers`` windows are in flight, so memory stays bounded. A worker that
dies (OOM kill, lost node) stops the ingest with a ``NagIndexError``: the windows
committed before it are kept, and the same command resumes. So does a cluster lost
mid-run, within ``cluster.connect_timeout()`` seconds (``cluster.ClusterWatch``).

    nagindex ingest corpus/ --ray-address auto --ray-workers 8 --device cuda   # an existing cluster
    nagindex ingest corpus/ --ray-address local --ray-workers 2                # a cluster started here
"""
from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Any, Iterable, Iterator, Sequence

from nagindex.errors import NagIndexError

log = logging.getLogger(__name__)

#: what an ingest stopped by a lost worker or cluster keeps, for its error message
_KEPT = "the windows committed before it are kept: run the same command again to resume"


class _EncodeWorker:
    """One Ray actor: a backbone loaded once, encoding the windows it is given."""

    def __init__(self, backbone: str, neuron_types: Sequence[str], model_kw: dict[str, Any]) -> None:
        from nagindex.encode.encoder import build_extractor

        self.extractor = build_extractor(backbone, neuron_types, **model_kw)

    def describe(self) -> dict[str, Any]:
        from nagindex.encode.encoder import describe_extractor

        return describe_extractor(self.extractor)

    def encode(self, window: Any) -> Any:
        from nagindex.encode.encoder import encode_window

        return encode_window(window, self.extractor)


class RayEncoder:
    """Encodes windows on Ray actors, yielding them back in submission order."""

    def __init__(self, backbone: str, neuron_types: Sequence[str], *, address: str, workers: int,
                 gpus_per_worker: float | None, **model_kw: Any) -> None:
        from nagindex.cluster import ClusterWatch, connect

        if workers < 1:
            raise NagIndexError(f"--ray-workers must be >= 1, got {workers}")
        ray = connect(address)
        from ray.util import ActorPool

        if gpus_per_worker is None:
            gpus_per_worker = 1.0 if ray.cluster_resources().get("GPU", 0) >= workers else 0.0
        actor = ray.remote(num_gpus=gpus_per_worker)(_EncodeWorker)
        self._ray = ray
        self.watch = ClusterWatch(ray, address, _KEPT)
        self.actors = [actor.remote(backbone, list(neuron_types), model_kw) for _ in range(workers)]
        self.pool = ActorPool(self.actors)
        self.depth = 2 * workers
        log.info("ray: %d encode workers, %s GPU each", workers, gpus_per_worker)

    def describe(self) -> dict[str, Any]:
        with self._lost_worker():
            return self.watch.get(self.actors[0].describe.remote())

    def map(self, windows: Iterable[Any]) -> Iterator[Any]:
        pending = 0
        try:
            for window in windows:
                self.pool.submit(lambda a, w: a.encode.remote(w), window)
                pending += 1
                if pending >= self.depth:
                    yield self._next()
                    pending -= 1
            while self.pool.has_next():
                yield self._next()
        finally:
            for a in self.actors:  # an early stop (--limit, Ctrl-C) must not leave actors holding GPUs
                self._ray.kill(a)

    def _next(self) -> Any:
        """The next window in submission order, checking the cluster while it waits."""
        while True:
            with self._lost_worker():
                try:
                    return self.pool.get_next(timeout=self.watch.poll)
                except TimeoutError:  # not ready yet: the window stays first in line
                    pass
            self.watch.check()

    @contextmanager
    def _lost_worker(self) -> Iterator[None]:
        """A worker that died (killed, out of memory, node lost) as a user error: the driver commits
        windows in order, so everything before the lost one is kept and the same command resumes."""
        errors = self._ray.exceptions
        try:
            yield
        except (errors.RayActorError, errors.WorkerCrashedError, errors.LocalRayletDiedError) as exc:
            if self.watch.gone():
                raise self.watch.lost(f"Ray says: {_reason(exc)}") from exc
            ids = [a._actor_id.hex() for a in self.actors]
            actor_id = getattr(exc, "actor_id", None)
            which = f"{ids.index(actor_id) + 1} of {len(ids)} " if actor_id in ids else ""
            what = "could not start" if getattr(exc, "actor_init_failed", False) else "was lost"
            raise NagIndexError(f"Ray encode worker {which}{what}; {_KEPT}. Ray says: {_reason(exc)}") from exc


def _reason(exc: Exception) -> str:
    """Ray's own account of a lost worker, without its boilerplate and per-actor detail lines."""
    base = getattr(type(exc), "BASE_ERROR_MSG", "")
    lines = [line.strip() for line in str(exc).splitlines()
             if line.strip() and not line.startswith("\t") and line.strip() != base]
    return " ".join(lines) or type(exc).__name__
