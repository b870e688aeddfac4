"""``nagindex info``: what an index holds, in words a user can check."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def disk_usage(index_dir: str | os.PathLike) -> dict[str, int]:
    """Bytes on disk by part: the LMDB record, the derived scan files, the FAISS index."""
    from nagindex.index.derived import FAISS_FILE
    from nagindex.index.store import STORE_DIR

    directory = Path(index_dir)
    lmdb = _size(directory / STORE_DIR)
    faiss = _size(directory / FAISS_FILE)
    return {"lmdb": lmdb, "faiss": faiss, "derived": _size(directory) - lmdb - faiss}


def describe_index(index_dir: str | os.PathLike) -> str:
    """Manifest, document and token counts, pending rows, rejects and sizes, one per line; for a
    sharded index the same for the whole index, then one line per shard."""
    from nagindex.index.catalog import load_catalog

    catalog = load_catalog(index_dir)
    if catalog is None:
        return _describe_folder(index_dir)
    return _describe_sharded(catalog)


def shard_table(catalog: Any) -> list[dict[str, Any]]:
    """Per shard: name, path, documents, tokens, bytes on disk, inputs owned and state."""
    from nagindex.index.derived import open_shard
    from nagindex.index.store import STORE_DIR, IndexStore

    owned = [0] * len(catalog.shards)
    for item in catalog.inputs:
        owned[int(item["shard"])] += 1
    rows = []
    for i, path in enumerate(catalog.shard_paths()):
        row = {"name": catalog.shards[i]["name"], "path": str(path), "documents": 0, "tokens": 0,
               "bytes": _size(path) if path.exists() else 0, "inputs": owned[i]}
        if not (path / STORE_DIR).exists():
            row["state"] = "missing" if owned[i] else "empty"
        else:
            with IndexStore.open(path) as store:
                row["documents"], row["tokens"] = len(store), store.total_tokens
                done = sum(1 for p in store.all_progress().values() if p.get("done"))
            pending = open_shard(path).pending
            row["state"] = ("derive pending" if pending else "ingesting or interrupted" if done < owned[i]
                            else "complete")
        rows.append(row)
    return rows


def _describe_sharded(catalog: Any) -> str:
    from nagindex.index.clusters import describe_clusters
    from nagindex.index.sharded import ShardedView

    shards = shard_table(catalog)
    lines = [f"index            {catalog.root.resolve()} ({len(shards)} shards, catalog.json)"]
    for key, value in catalog.identity.items():
        lines.append(f"{key:<16} {value}")
    try:
        view = ShardedView(catalog)  # counted shard by shard: nothing gathered in memory
        docs, tokens = len(view), view.total_tokens
        pending = sum(r["documents"] for r in shards) - sum(catalog.dedup["rows"])  # stores past the reconcile
        lines.append(f"documents        {docs:,} queryable ({catalog.dedup.get('hidden', 0):,} repeated ids "
                     "across shards left out)" + (f"; {pending:,} committed since, served once their ingest "
                                                  "finishes" if pending > 0 else ""))
        lines.append(f"tokens           {tokens:,}")
        lines.append(f"clusters         {describe_clusters(catalog.root)}")
    except Exception as exc:  # noqa: BLE001 - the shard lines below still say what is there
        lines.append(f"documents        not queryable now: {exc}")
    lines.append(f"{'shard':<12} {'documents':>12} {'tokens':>14} {'MiB':>10} {'inputs':>7}  state  path")
    for r in shards:
        lines.append(f"{r['name']:<12} {r['documents']:>12,} {r['tokens']:>14,} {r['bytes'] / 2**20:>10,.2f} "
                     f"{r['inputs']:>7,}  {r['state']}  {r['path']}")
    return "\n".join(lines)


def _describe_folder(index_dir: str | os.PathLike) -> str:
    from nagindex.index.clusters import describe_clusters
    from nagindex.index.sharded import open_index
    from nagindex.index.store import IndexStore

    view = open_index(index_dir)
    with IndexStore.open(index_dir) as store:
        manifest, rows, tokens = store.manifest, len(store), store.total_tokens
        progress = store.all_progress()
    usage = disk_usage(index_dir)
    per_doc = {k: v / rows for k, v in usage.items()} if rows else {}
    lines = [f"index            {Path(index_dir).resolve()}"]
    for key in ("backbone", "weights_sha256", "neuron_type", "num_layers", "width", "top_k", "max_length",
                "dtype", "text_template", "nagindex_version", "created_at"):
        lines.append(f"{key:<16} {manifest.get(key)}")
    lines.append(f"documents        {rows:,} ({len(view):,} queryable, {view.pending:,} pending derive)")
    lines.append(f"tokens           {tokens:,}")
    lines.append(f"clusters         {describe_clusters(index_dir)}")
    lines.append(f"rejects          {manifest.get('rejects', 0):,} (see rejects.jsonl)")
    done = sum(1 for p in progress.values() if p.get("done"))
    lines.append(f"inputs           {len(progress)} ({done} complete)")
    for part, size in usage.items():
        extra = f", {per_doc[part]:,.0f} B/doc" if per_doc else ""
        lines.append(f"{part:<16} {size / 2**20:,.2f} MiB{extra}")
    return "\n".join(lines)
