"""``nagindex info``: what an index holds, in words a user can check."""
from __future__ import annotations

import os
from pathlib import Path


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
    """Manifest, document and token counts, pending rows, rejects and sizes, one per line."""
    from nagindex.index.store import IndexStore
    from nagindex.index.derived import open_index

    view = open_index(index_dir)
    with IndexStore.open(index_dir) as store:
        manifest, rows, tokens = store.manifest, len(store), store.total_tokens
        progress = store.all_progress()
    usage = disk_usage(index_dir)
    per_doc = {k: v / rows for k, v in usage.items()} if rows else {}
    lines = [f"index            {Path(index_dir).resolve()}"]
    for key in ("backbone", "weights_sha256", "neuron_type", "num_layers", "width", "top_k", "max_length",
                "nagindex_version", "created_at"):
        lines.append(f"{key:<16} {manifest.get(key)}")
    lines.append(f"documents        {rows:,} ({len(view):,} queryable, {view.pending:,} pending derive)")
    lines.append(f"tokens           {tokens:,}")
    lines.append(f"rejects          {manifest.get('rejects', 0):,} (see rejects.jsonl)")
    done = sum(1 for p in progress.values() if p.get("done"))
    lines.append(f"inputs           {len(progress)} ({done} complete)")
    for part, size in usage.items():
        extra = f", {per_doc[part]:,.0f} B/doc" if per_doc else ""
        lines.append(f"{part:<16} {size / 2**20:,.2f} MiB{extra}")
    return "\n".join(lines)
