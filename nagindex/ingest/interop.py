"""Interop with the reference: write its feature files, import them into an index, export an index.

Importing builds an index without running any model (token counts from a
field of the feature files or from payload files joined on docid), committing
each batch with its file's cursor so a killed import resumes. Writing produces
lines byte-identical to the reference's (``json.dumps`` default separators).
"""
from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np

from nagindex.data import Reject
from nagindex.errors import InputError
from nagindex.fsio import atomic_path
from nagindex.index.store import IndexStore
from nagindex.sources.features import (INDEX_KEY, JSON_KINDS, FeatureBatch, FeatureSpec, feature_batches, line_blocks,
                                       prefetch)
from nagindex.sources.inputs import InputFile, input_files, parquet_file

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------- writing
def _join_indices(codes: np.ndarray) -> list[str]:
    """``"68, 51, 36"`` for each row of a non-negative int matrix, vectorised (no per-int Python)."""
    out: list[str] = []
    if codes.size == 0:
        return [""] * len(codes)
    table = [f", {i}".encode() for i in range(int(codes.max()) + 1)]
    lens = np.array([len(t) for t in table])
    tab = np.zeros((len(table), lens.max()), np.uint8)
    for i, t in enumerate(table):
        tab[i, :len(t)] = np.frombuffer(t, np.uint8)
    for start in range(0, len(codes), 4096):
        block = codes[start:start + 4096].astype(np.intp)
        mask = np.arange(tab.shape[1]) < lens[block][..., None]
        mask[:, 0, :2] = False  # no ", " before a row's first index
        data = tab[block][mask].tobytes().decode("ascii")
        ends = np.cumsum(mask.sum(axis=(1, 2)))
        out.extend(data[a:b] for a, b in zip(np.concatenate([[0], ends[:-1]]).tolist(), ends.tolist()))
    return out


def write_feature_lines(fh: IO[str], docids: Sequence[str], codes_by_type: dict[str, np.ndarray]) -> None:
    """Write reference feature lines, one per doc, with one ``<type>_feature`` per entry, in dict order."""
    joined = {t: _join_indices(np.asarray(c).reshape(len(docids), -1)) for t, c in codes_by_type.items()}
    for i, docid in enumerate(docids):
        feats = "".join(f', "{t}_feature": {{"{INDEX_KEY}": [{j[i]}]}}' for t, j in joined.items())
        fh.write(f'{{"docid": {json.dumps(docid)}{feats}}}\n')


def write_features(out_path: str | os.PathLike, docids: Sequence[str], codes: np.ndarray,
                   neuron_type: str = "fwd_up") -> None:
    """Write one neuron type's features as the reference's JSONL (atomically: tmp, then rename)."""
    with atomic_path(out_path) as tmp, open(tmp, "w", encoding="utf-8", newline="\n") as fh:
        write_feature_lines(fh, docids, {neuron_type: codes})


EXPORT_BLOCK = 1 << 16  # rows of a shard written per step: the memory of an export


def export_features(index_dir: str | os.PathLike, out_path: str | os.PathLike) -> int:
    """Write every document of an index as reference feature JSONL, in row order; return the count.

    A sharded index is written shard by shard, ``EXPORT_BLOCK`` rows at a time, from each shard's
    derived files at its reconciled rows (what a query serves), the later copies of an id left out:
    the lines a one-folder index of the same documents gives, in its row order."""
    from nagindex.index.catalog import load_catalog
    from nagindex.index.sharded import ShardedView

    catalog = load_catalog(index_dir)
    rows = 0
    with atomic_path(out_path) as tmp, open(tmp, "w", encoding="utf-8", newline="\n") as fh:
        if catalog is None:
            with IndexStore.open(index_dir) as store, store.snapshot() as snap:
                neuron_type = snap.manifest()["neuron_type"]
                for _, chunk in snap.iter_chunks():
                    write_feature_lines(fh, chunk.docids, {neuron_type: chunk.codes})
                    rows += len(chunk)
            return rows
        view = ShardedView(catalog)
        neuron_type = view.manifest["neuron_type"]
        for part in view.parts:
            for start in range(0, len(part.view), EXPORT_BLOCK):
                block = np.arange(start, min(start + EXPORT_BLOCK, len(part.view)), dtype=np.int64)
                kept = block[~np.isin(block, part.hidden)]
                write_feature_lines(fh, part.view.docids.take(kept), {neuron_type: np.asarray(part.view.codes[kept])})
                rows += len(kept)
    return rows


# ---------------------------------------------------------------- import
def _token_map(payload_paths: Any, id_field: str, token_field: str) -> dict[str, int]:
    """docid -> token count from payload files (jsonl/parquet); invalid counts are left out."""
    import pyarrow as pa
    import pyarrow.compute as pc

    tokens: dict[str, int] = {}
    for item in input_files(payload_paths):
        if item.kind == "parquet":
            with parquet_file(item) as pf:
                if id_field not in pf.schema_arrow.names or token_field not in pf.schema_arrow.names:
                    raise InputError(f"{item.source}: payload needs columns {id_field!r} and {token_field!r}")
                for batch in pf.iter_batches(batch_size=1 << 16, columns=[id_field, token_field]):
                    ids = pc.cast(batch.column(0), pa.string()).to_pylist()
                    counts = batch.column(1).to_pylist()
                    for d, c in zip(ids, counts):
                        if d is not None and isinstance(c, int) and c >= 0:
                            tokens.setdefault(d, c)
        elif item.kind in JSON_KINDS:
            for block in line_blocks(item, 0):
                if isinstance(block, Reject):
                    raise InputError(f"payload {block.message()}")
                for docid, count in _payload_block(block[2], id_field, token_field):
                    if docid is not None and isinstance(count, int) and not isinstance(count, bool) and count >= 0:
                        tokens.setdefault(str(docid), count)
        else:
            raise InputError(f"{item.source}: payload files must be .jsonl[.gz|.zst] or .parquet")
    return tokens


def _payload_block(block: bytes, id_field: str, token_field: str) -> Iterator[tuple[Any, Any]]:
    """(docid, token count) of each line: Arrow's parser first, Python's for a block it refuses."""
    import io

    import pyarrow as pa
    import pyarrow.json as pj

    schema = pa.schema([(id_field, pa.string()), (token_field, pa.int64())])
    try:
        table = pj.read_json(io.BytesIO(block), parse_options=pj.ParseOptions(
            explicit_schema=schema, unexpected_field_behavior="ignore"))
        yield from zip(table.column(0).to_pylist(), table.column(1).to_pylist())
        return
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    for line in block.split(b"\n"):
        try:
            obj = json.loads(line)
        except (UnicodeDecodeError, json.JSONDecodeError):
            continue
        if isinstance(obj, dict):
            yield obj.get(id_field), obj.get(token_field)


def import_features(feature_paths: Any, index_dir: str | os.PathLike, *, num_layers: int, top_k: int, width: int,
                    neuron_type: str = "fwd_up", token_field: str | None = None, payload_paths: Any = None,
                    id_field: str = "docid", backbone: str | None = None, max_length: int | None = None,
                    weights_sha256: str | None = None, shards: int = 1,
                    shard_root: str | os.PathLike | None = None) -> dict[str, Any]:
    """Build (or resume building) an index from reference feature files; return counters.

    Token counts come from ``token_field`` in the feature files, else from payload files
    (joined on ``id_field``); a doc with neither is a reject. Each batch is committed with
    its file's cursor, so a killed import resumes where it stopped.

    ``shards`` > 1 (or an index that already has a catalog) splits the files the way a
    sharded ingest does (``ingest.sharded.plan_shards``: whole files, least-loaded shard by
    bytes; ``shard_root`` puts the shards elsewhere), imports each shard in turn, then hides
    ids repeated across shards, so the index equals a one-shard import of the same files
    (``hidden`` counts the later copies left out).
    """
    from nagindex.index.catalog import CATALOG_FILE

    if not token_field:
        raise InputError("import_features needs token counts: give token_field (a field of the feature "
                         "files, or with payload_paths a column of the payload files)")
    started = time.perf_counter()
    spec = FeatureSpec(f"{neuron_type}_feature", num_layers, top_k, width, "docid", token_field)
    payload = _token_map(payload_paths, id_field, token_field) if payload_paths is not None else None
    manifest = {"backbone": backbone, "weights_sha256": weights_sha256, "neuron_type": neuron_type,
                "num_layers": num_layers, "width": width, "top_k": top_k, "max_length": max_length,
                "imported_from": "reference features"}
    files = input_files(feature_paths)
    index_dir = Path(index_dir)
    hidden = 0
    if shards > 1 or (index_dir / CATALOG_FILE).is_file():
        from nagindex.ingest.sharded import finish_shards, plan_shards

        catalog, plan = plan_shards(index_dir, shards, shard_root, files)
        counts = [_import_files(own, catalog.shard_path(i), spec, payload, manifest)
                  for i, own in plan.items() if own]
        added, rejected = sum(a for a, _ in counts), sum(r for _, r in counts)
        hidden = finish_shards(catalog)
    else:
        added, rejected = _import_files(files, index_dir, spec, payload, manifest)
    seconds = time.perf_counter() - started
    logger.info("imported %d docs (%d rejects, %d hidden) into %s in %.1f s", added, rejected, hidden, index_dir,
                seconds)
    return {"added": added, "rejects": rejected, "hidden": hidden, "seconds": seconds}


def _import_files(files: list[InputFile], index_dir: str | os.PathLike, spec: FeatureSpec,
                  payload: dict[str, int] | None, manifest: dict[str, Any]) -> tuple[int, int]:
    """Import ``files`` into the one-folder store at ``index_dir`` and derive; return (added, rejected)."""
    from nagindex.index.derived import sync_derived

    added = rejected = 0
    with IndexStore.open_or_create(index_dir, manifest) as store:
        for item in files:
            cursor = item.state()
            done = store.progress(item.key) or {"next_position": 0, "done": False}
            if done["done"] and done.get("size") == cursor["size"] and done.get("mtime") == cursor["mtime"]:
                logger.info("%s: already imported, skipping", item.source)
                continue
            if done["done"]:
                logger.warning("%s changed since it was imported; reading on from line/row %d",
                               item.source, done["next_position"])
            for batch in prefetch(feature_batches(item, spec, done["next_position"])):
                keep, rejects = _filter(batch, store, payload, item.source)
                n = int(keep.sum())
                store.append(batch.codes[keep], [d for d, k in zip(batch.docids, keep) if k], batch.tokens[keep],
                             item.key, batch.positions[keep], rejects=rejects,
                             progress={item.key: {**cursor, "next_position": batch.next_position, "done": False}})
                added, rejected = added + n, rejected + len(rejects)
            last = store.progress(item.key) or {"next_position": 0}
            store.append(np.zeros((0, spec.num_layers, spec.top_k), np.uint16), [], [], item.key, [],
                         progress={item.key: {**cursor, "next_position": last["next_position"], "done": True}})
    sync_derived(index_dir)
    return added, rejected


def _filter(batch: FeatureBatch, store: IndexStore, payload: dict[str, int] | None,
            source: str) -> tuple[np.ndarray, list[Reject]]:
    """Fill token counts from the payload, then drop docs with none and docids already present."""
    if payload is not None:
        missing = np.flatnonzero(batch.tokens < 0)
        batch.tokens[missing] = [payload.get(batch.docids[i], -1) for i in missing]
    keep = batch.tokens >= 0
    rejects = list(batch.rejects)
    why = "no token count (not in the payload files)" if payload is not None else "no token count"
    for i in np.flatnonzero(~keep):
        rejects.append(Reject(source, int(batch.positions[i]), why, batch.docids[i]))
    present = store.contains(batch.docids)
    seen: set[str] = set()
    for i, docid in enumerate(batch.docids):
        if keep[i] and (present[i] or docid in seen):
            keep[i] = False
            rejects.append(Reject(source, int(batch.positions[i]), "duplicate docid (already in the index)", docid))
        seen.add(docid)
    return keep, rejects
