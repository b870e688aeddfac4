"""Sharded ingest: N workers each own a deterministic share of the inputs and write their own shard.

    nagindex ingest corpus/ --index idx --shards 8                                # local processes
    nagindex ingest corpus/ --index idx --shards 8 --ray-address auto             # 8 Ray actors, a GPU each

The driver only assigns inputs and records them in the catalog (``index.catalog``);
each worker reads its inputs, tokenizes, extracts and commits into its own shard
with the one-folder ``worker.ingest_folder`` (crash-safe per window, resumable), so no text and
no NAG passes through the driver. Inputs are assigned in input order to the shard
with the fewest bytes so far: whole files, or, for a file bigger than ``split_size``
(64 MiB), its parts (row groups, byte ranges at line starts: ``sources.split``), so
the workers share one large file. An input keeps its shards and parts for ever (the
catalog records them), so the same command after a crash (of a worker or of the
driver) resumes every shard where it stopped. A part's records keep their positions
in the whole file. When all shards are done, ``index.dedup.reconcile`` hides the
later copies of ids repeated across shards (the earlier input, then the earlier
position wins, whichever parts they were in), so the index holds exactly the
documents, codes, token counts and positions of a one-shard ingest; until then
queries answer from the index's last reconciled state. Locally at most ``workers``
shard processes (one model each) run at once, by default as many as the cores and
the available memory allow (``default_workers``).
``nagindex import --shards`` assigns reference feature files the same way, whole
(``plan_shards``, then ``finish_shards``), importing the shards one after another.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from nagindex.errors import NagIndexError
from nagindex.sources.inputs import WHOLE, InputFile, Part
from nagindex.sources.split import DEFAULT_SPLIT_SIZE, can_split, split_input

log = logging.getLogger(__name__)

#: resident memory of a local shard worker besides its weights (interpreter, torch, tokenizer, batches)
WORKER_OVERHEAD = 1 << 30
#: the weights of a backbone that is not a local folder (the embedded SmolLM2-135M: 0.54 GB in float32)
DEFAULT_WEIGHTS = 1 << 30


def assign_inputs(catalog: Any, files: Sequence[InputFile],
                  split_size: int | None = None) -> dict[int, list[InputFile]]:
    """Record the new ``files`` in the catalog's input order and return every shard's inputs of this run
    (known ones with the shards and parts recorded for them).

    A new input bigger than ``split_size`` bytes (None: never) is cut into parts (``sources.split``); each
    part (or whole input) goes to the least-loaded shard by bytes, ties to the lower shard. A shard's
    parts of one input are one catalog entry (``"parts"``, adjacent ones merged) and one ``InputFile``, so
    its worker keeps one resume cursor per input, as for a whole file.
    """
    owned: dict[str, list[dict[str, Any]]] = {}
    load = [0] * len(catalog.shards)
    for item in catalog.inputs:
        owned.setdefault(item["key"], []).append(item)
        load[int(item["shard"])] += int(item.get("size") or 0)
    plan: dict[int, list[InputFile]] = {i: [] for i in range(len(catalog.shards))}
    whole: list[str] = []
    for f in files:
        if f.key not in owned:
            size = int(f.state().get("size") or 0)
            split = split_size is not None and len(load) > 1 and size > split_size
            if split and not can_split(f):
                whole.append(f.source)
            pieces = split_input(f, split_size, size) if split else [(WHOLE, size)]
            owned[f.key] = _entries(f.key, pieces, load)
            catalog.inputs.extend(owned[f.key])
        for entry in owned[f.key]:
            parts = entry.get("parts")
            plan[int(entry["shard"])].append(f if parts is None else
                                             replace(f, parts=tuple(Part(*p) for p in parts)))
    if whole:
        log.warning("%d input(s) over the split size are read whole by one worker each (gzip, zstd and remote "
                    ".jsonl cannot be split): %s", len(whole), ", ".join(whole[:3]) + (" ..." * (len(whole) > 3)))
    return plan


def _entries(key: str, pieces: list[tuple[Part, int]], load: list[int]) -> list[dict[str, Any]]:
    """The catalog entries of one new input: its ``pieces`` (``(part, bytes)`` in file order) each on the
    least-loaded shard (``load`` is updated), one entry per shard with its parts, in order of their first."""
    entries: dict[int, dict[str, Any]] = {}
    for part, nbytes in pieces:
        shard = min(range(len(load)), key=lambda i: (load[i], i))
        load[shard] += nbytes
        entry = entries.setdefault(shard, {"key": key, "shard": shard, "size": 0, "parts": []})
        entry["size"] += nbytes
        last = entry["parts"][-1] if entry["parts"] else None
        if last is not None and last[1] == part.start:  # adjacent: one range
            last[1], last[3] = part.stop, part.end
        else:
            entry["parts"].append(part.to_json())
    for entry in entries.values():
        if entry["parts"] == [WHOLE.to_json()]:  # all of it: a whole input, as before splitting
            del entry["parts"]
    return list(entries.values())


def plan_shards(index_dir: Path, shards: int, shard_root: str | os.PathLike | None,
                files: Sequence[Any], split_size: int | None = None) -> tuple[Any, dict[int, list[Any]]]:
    """The index's catalog (created with ``shards`` shards if absent) and every shard's ``files``.

    Shared by sharded ingest and import, so both assign inputs the same way (only ingest splits big
    ones: ``split_size``). The assignment is saved before any shard is written: a rerun after a crash
    makes the same one, whatever the entry point.
    """
    from nagindex.index.catalog import load_catalog, new_catalog
    from nagindex.index.store import STORE_DIR

    if (index_dir / STORE_DIR).exists():
        raise NagIndexError(f"{index_dir} is a one-shard index: add to it without --shards")
    catalog = load_catalog(index_dir)
    if catalog is None:
        index_dir.mkdir(parents=True, exist_ok=True)
        catalog = new_catalog(index_dir, shards, shard_root)
    elif shards not in (1, len(catalog.shards)):
        raise NagIndexError(f"index {index_dir} has {len(catalog.shards)} shards; --shards {shards} cannot "
                            "change that (leave it out to append)")
    plan = assign_inputs(catalog, files, split_size)
    catalog.save()
    return catalog, plan


def finish_shards(catalog: Any, workers: int = 1, ray_address: str | None = None) -> int:
    """After every shard is written: give each shard its folder, check and record their shared
    identity, hide cross-shard repeats of an id (``dedup.reconcile``, its tasks on ``workers`` local
    processes or on Ray at ``ray_address``, like the shards'); return the rows hidden."""
    from nagindex.index.dedup import reconcile

    for i in range(len(catalog.shards)):
        catalog.shard_path(i).mkdir(parents=True, exist_ok=True)
    _check_identity(catalog)
    return reconcile(catalog, workers=workers, ray_address=ray_address)


def _ingest_shard(files: list[dict[str, Any]], shard_dir: str, options: dict[str, Any]) -> dict[str, Any]:
    """One worker: a one-folder ingest of its inputs (``InputFile.to_json`` form) into its shard;
    returns the ``IngestResult`` as JSON. Runs in a worker process (``main``) or a Ray task."""
    from dataclasses import asdict

    from nagindex.ingest.worker import ingest_folder
    from nagindex.sources.inputs import InputFile

    res = ingest_folder([InputFile.from_json(f) for f in files], shard_dir, **options)
    return {**asdict(res), "index_dir": str(res.index_dir), "node_ip": _node_ip()}


def _node_ip() -> str | None:
    """The Ray node this worker runs on (recorded in the catalog: a query scores the shard there), else None."""
    import sys

    if "ray" not in sys.modules:
        return None
    import ray

    return ray.util.get_node_ip_address() if ray.is_initialized() else None


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m nagindex.ingest.sharded JOB.json``: run one shard's job, write its result beside it.

    A fresh interpreter per worker, not ``multiprocessing``: nothing of the caller is re-imported (a
    script without ``if __name__ == "__main__"`` would be) and job and result are JSON, never pickle.
    """
    import json
    import sys

    job_path = Path((argv or sys.argv[1:])[0])
    job = json.loads(job_path.read_text("utf-8"))
    try:
        result = {"ok": _ingest_shard(job["files"], job["shard_dir"], job["options"])}
    except NagIndexError as exc:
        result = {"error": str(exc)}
    job_path.with_suffix(".result.json").write_text(json.dumps(result), encoding="utf-8")


def ingest_sharded(inputs: Sequence[str | os.PathLike], index_dir: str | os.PathLike, *, shards: int,
                   shard_root: str | os.PathLike | None = None, ray_address: str | None = None,
                   ray_gpus_per_worker: float | None = None, requested: dict[str, Any] | None = None,
                   workers: int | None = None, split_size: int | None = DEFAULT_SPLIT_SIZE,
                   **options: Any) -> Any:
    """``ingest`` into a sharded index: one worker per shard, then cross-shard deduplication.

    ``requested`` (the settings ``ingest`` was given) is checked against the catalog's identity before
    any input is assigned: a shard with no store yet would otherwise take other settings unchecked.
    ``workers``: local worker processes at once (default ``default_workers``); Ray places its tasks itself.
    ``split_size``: new inputs bigger than this many bytes are split (``assign_inputs``); None: never.
    """
    from nagindex.index.catalog import load_catalog
    from nagindex.ingest.worker import IngestResult
    from nagindex.sources.inputs import input_files

    index_dir = Path(index_dir)
    if options.get("limit") is not None:
        raise NagIndexError("--limit applies to one-shard ingests only (a limit over parallel shards would "
                            "depend on timing)")
    if workers is not None and (workers < 1 or ray_address):
        raise NagIndexError(f"--workers {workers}: give at least 1, and only without --ray-address (Ray places "
                            "the shard tasks where the cluster has room)")
    existing = load_catalog(index_dir)
    if existing is not None and existing.identity and "nait" not in existing.identity:
        _check_identity(existing)  # a catalog from before the NAIT identity: recorded from its shards first
    if existing is not None and existing.identity and requested:
        existing.check_identity(requested, "this ingest")
    catalog, plan = plan_shards(index_dir, shards, shard_root, input_files(inputs), split_size)
    jobs = [(i, files) for i, files in plan.items() if files]
    results = _run_ray(catalog, jobs, ray_address, ray_gpus_per_worker, options) if ray_address \
        else _run_local(catalog, jobs, options, workers or default_workers(len(jobs), str(options.get("backbone"))))
    hidden = finish_shards(catalog, workers=workers or 1, ray_address=ray_address)
    total = IngestResult(index_dir)
    for res in results:
        total.added += res["added"]
        total.tokens += res["tokens"]
        total.rejects += res["rejects"]
        total.skipped_inputs += res["skipped_inputs"]
        for k, v in res["reject_reasons"].items():
            total.reject_reasons[k] = total.reject_reasons.get(k, 0) + v
        for kind, used in res["fields"].items():
            for name, n in used.items():
                total.fields.setdefault(kind, {})[name] = total.fields.get(kind, {}).get(name, 0) + n
        total.warnings += res["warnings"]
    total.skipped_inputs += sum(1 for files in plan.values() for _ in files) - sum(len(f) for _, f in jobs)
    total.hidden = hidden  # later copies of ids held by an earlier input of another shard
    from nagindex.index.sharded import shard_specs

    total.rows = sum(s["rows"] - len(s["hidden"]) for s in shard_specs(index_dir))
    total.timings = f"{len(jobs)} shard worker(s)"
    return total


def _shard_options(options: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in options.items() if k not in ("extractor", "ray_workers")}


def default_workers(jobs: int, backbone: str) -> int:
    """Local shard workers to run at once: one per core, as many as the available memory holds (each
    about ``WORKER_OVERHEAD`` plus twice its weights on disk: half-precision files load as float32),
    no more than the shards with work; at least one."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    folder = Path(backbone).expanduser()
    weights = sum(f.stat().st_size for f in folder.rglob("*") if f.suffix in (".safetensors", ".bin")) \
        if folder.is_dir() else DEFAULT_WEIGHTS
    free = _available_memory()
    fits = cores if free is None else free // (WORKER_OVERHEAD + 2 * weights)
    return max(1, min(cores, fits, jobs))


def _available_memory() -> int | None:
    """Bytes of memory available to new processes (Linux ``MemAvailable``), None where unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            return next(int(line.split()[1]) * 1024 for line in fh if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        return None


def _run_local(catalog: Any, jobs: list[tuple[int, list[Any]]], options: dict[str, Any],
               workers: int) -> list[dict[str, Any]]:
    """A worker process per shard with work (``python -m nagindex.ingest.sharded``), ``workers`` at once:
    each loads a model, so one per shard at once can exhaust memory (and cores) on a many-shard index."""
    import tempfile
    from concurrent.futures import ThreadPoolExecutor

    opts = {**_shard_options(options), "show_progress": False}
    # the workers share this machine's cores: torch's default (a thread per core each) oversubscribes them,
    # which made 2 workers on 2 cores 2.8x slower than 1 (BENCHMARKS.md, ingest at scale)
    env = {**os.environ}
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // min(workers, max(1, len(jobs))))))
    with tempfile.TemporaryDirectory(prefix=".jobs-", dir=catalog.root) as tmp:
        pool = ThreadPoolExecutor(max_workers=workers)
        try:
            outcomes = list(pool.map(lambda job: _run_worker(catalog, job, Path(tmp), opts, env), jobs))
        finally:  # Ctrl-C: start no queued shard (the running ones got the signal too)
            pool.shutdown(wait=True, cancel_futures=True)
    results = [out["ok"] for out in outcomes if "ok" in out]
    failed = [out["error"] for out in outcomes if "ok" not in out]
    if failed:
        raise NagIndexError("shard worker(s) failed; every shard keeps what it committed, run the same command "
                            "again to resume: " + "; ".join(failed))
    return results


def _run_worker(catalog: Any, job: tuple[int, list[Any]], tmp: Path, options: dict[str, Any],
                env: dict[str, str]) -> dict[str, Any]:
    """Run one shard's worker process to its end: ``{"ok": result}``, or ``{"error": "<shard>: why"}``."""
    import json
    import subprocess
    import sys

    i, files = job
    name = catalog.shards[i]["name"]
    path = tmp / f"{name}.json"
    path.write_text(json.dumps({"files": [f.to_json() for f in files], "shard_dir": str(catalog.shard_path(i)),
                                "options": options}), encoding="utf-8")
    code = subprocess.run([sys.executable, "-m", "nagindex.ingest.sharded", str(path)], env=env).returncode
    out = path.with_suffix(".result.json")
    result = json.loads(out.read_text("utf-8")) if out.is_file() else {}
    if "ok" in result:
        return {"ok": result["ok"]}
    return {"error": f"{name}: " + result.get("error", f"worker exited with {code}")}


def _run_ray(catalog: Any, jobs: list[tuple[int, list[Any]]], address: str, gpus: float | None,
             options: dict[str, Any]) -> list[dict[str, Any]]:
    """One Ray task per shard with work, scheduled where the cluster has room (a GPU each where it has them).

    A task whose worker dies is retried by Ray; the retry resumes the shard from its last commit. A cluster
    lost mid-run is an error naming it within ``cluster.connect_timeout()`` seconds, not a wait for Ray.
    """
    from nagindex.cluster import ClusterWatch, connect

    if not jobs:
        return []
    ray = connect(address)
    kept = "every shard keeps what it committed: run the same command again to resume"
    watch = ClusterWatch(ray, address, kept)
    if gpus is None:
        gpus = 1.0 if ray.cluster_resources().get("GPU", 0) >= len(jobs) else 0.0
    task = ray.remote(num_gpus=gpus, max_retries=3, retry_exceptions=False)(_ingest_shard)
    opts = {**_shard_options(options), "show_progress": False}
    refs = {i: task.remote([f.to_json() for f in files], str(catalog.shard_path(i)), opts) for i, files in jobs}
    results = []
    for i, ref in refs.items():
        try:
            results.append(watch.get(ref))
            catalog.shards[i]["node_ip"] = results[-1]["node_ip"]
        except ray.exceptions.RayError as exc:
            if isinstance(exc, ray.exceptions.RayTaskError) and isinstance(exc.cause, NagIndexError):
                raise exc.cause from None
            if watch.gone():
                raise watch.lost(f"Ray says: {exc}") from exc
            raise NagIndexError(f"shard {catalog.shards[i]['name']} could not be ingested on Ray ({exc}); "
                                f"{kept}") from exc
    return results


def _check_identity(catalog: Any) -> None:
    """All shards share one identity (the first written shard's), recorded in the catalog (a setting the
    catalog lacks, as ``nait`` in one written before it was part of the identity, is taken from that shard)."""
    from nagindex.index.catalog import IDENTITY
    from nagindex.index.store import FEATURE_SETTINGS, STORE_DIR, IndexStore

    for i, path in enumerate(catalog.shard_paths()):
        if not (path / STORE_DIR).exists():
            continue
        with IndexStore.open(path) as store:
            # a store without NAIT features records no "nait": NAG only
            manifest = {**{k: None for k in FEATURE_SETTINGS}, **store.manifest}
        for k in IDENTITY:
            catalog.identity.setdefault(k, manifest.get(k))
        catalog.check_identity(manifest, f"shard {catalog.shards[i]['name']}")
    catalog.save()


if __name__ == "__main__":
    main()
