"""Pool neuron statistics: per layer, how many of the pool's NAGs hold each neuron (issue 23).

A target-specific score (``query/weighting.py``, ``--weighting lift|idf``) weighs a neuron by how
much more the target uses it than the pool does, so it needs the pool's side once per query,
whatever the index's size. Each shard keeps its counts in a derived file (``neuron_file.py``,
``neuron_counts.i64``, extended by every derive).

A query reads a prefix of each shard (its rows of the last reconcile) without the rows hidden
as later copies of an id held by another shard. The counts of that prefix are the stored ones
adjusted by the codes between the stored rows and the prefix (usually none: a reconcile
follows each derive); the hidden rows' codes are counted and subtracted (few rows: one per
repeated id), so the merged counts equal those of a one-shard index of the same documents.
A shard derived before the file is counted from its codes in blocks on first use (logged);
the next derive stores its counts.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np

from nagindex.errors import NagIndexError
from nagindex.index.neuron_file import count_neurons, prefix_counts


def view_neuron_counts(view: Any, hidden: np.ndarray | None = None) -> np.ndarray:
    """The neuron counts of a shard view's rows (``derived.open_shard``, maybe a prefix) without ``hidden``
    rows (later copies of an id another shard holds): int64 ``(L, width)``."""
    counts = prefix_counts(view.directory, view.manifest, len(view))
    if hidden is not None and len(hidden):
        counts = counts - count_neurons(np.asarray(view.codes[np.sort(np.asarray(hidden, np.int64))]),
                                        view.manifest["width"])
    return counts


def pool_documents(counts: np.ndarray, top_k: int) -> int:
    """The documents behind neuron counts ``(L, width)``: each NAG adds ``top_k`` to every layer's counts."""
    return int(np.asarray(counts)[0].sum()) // top_k


def pool_neuron_counts(index_dir: str | os.PathLike) -> np.ndarray:
    """Per layer, how many of the index's documents hold each neuron: int64 ``(L, width)``, summed over its
    shards (their reconciled rows, cross-shard repeats left out): equal to a one-shard index's counts."""
    from nagindex.index.derived import open_shard
    from nagindex.index.sharded import shard_specs

    total = None
    for spec in shard_specs(index_dir):
        counts = view_neuron_counts(open_shard(spec["path"], rows=spec["rows"]), spec["hidden"])
        total = counts if total is None else total + counts
    if total is None:  # a sharded index whose shards hold no document yet
        raise NagIndexError(f"index {index_dir} holds no documents")
    return total
