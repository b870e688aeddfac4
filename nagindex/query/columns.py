"""A selection's columns from what shards fetched (``scan.ShardScan.fetch``): one function for the selection
file the coordinator writes and for the parts each shard writes itself (``parts.py``), so both hold the same
columns, types and values."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def selection_table(answers: Sequence[dict[str, Any]], order: np.ndarray, ranks: np.ndarray, target: np.ndarray,
                    names: Sequence[str], with_text: bool, quality: bool) -> Any:
    """The Arrow table of a selection's rows: ``answers`` are shards' ``fetch`` answers, concatenated in that
    order; ``order`` puts that concatenation in selection order; ``ranks`` and ``target`` (the choosing
    target's index) are per row in selection order. Columns: rank, docid, score, nag_distance, token_count,
    source, position, [combined_score], [target, score_<name>...], [text]."""
    import pyarrow as pa

    from nagindex.arrays import arrow_column, numeric_array

    n, p = len(order), len(names)
    take = numeric_array(np.asarray(order, np.int64))

    def gather(key: str) -> Any:
        return pa.concat_arrays([a[key] for a in answers]).take(take)

    def stack(key: str) -> np.ndarray:
        return np.concatenate([a[key] for a in answers], axis=-1)[..., order]

    offsets = np.cumsum([0] + [len(a["sources"]) for a in answers[:-1]])
    source_ids = np.concatenate([a["source_id"] + off for a, off in zip(answers, offsets)])[order]
    sources = pa.array([src for a in answers for src in a["sources"]], pa.string()).take(numeric_array(source_ids))
    sims = stack("similarity").reshape(p, n)
    at = np.arange(n)
    score = sims[target, at]
    columns: dict[str, Any] = {"rank": np.asarray(ranks, np.int64), "docid": _narrow(gather("docid")),
                               "score": score, "nag_distance": 1.0 - score, "token_count": stack("token_count"),
                               "source": sources, "position": stack("position")}
    if quality:
        columns["combined_score"] = stack("combined").reshape(p, n)[target, at]
    if p > 1:
        columns["target"] = pa.array(list(names), pa.string()).take(numeric_array(np.asarray(target, np.int64)))
        for i, name in enumerate(names):
            columns[f"score_{name}"] = sims[i]
    if with_text:
        texts = [t for a in answers for t in a["text"]]
        columns["text"] = [texts[i] for i in np.asarray(order).tolist()]
    return pa.table({name: arrow_column(v) for name, v in columns.items()})


def _narrow(strings: Any) -> Any:
    """A large_string column as ``string`` where its bytes allow (the type every selection file had)."""
    import pyarrow as pa

    try:
        return strings.cast(pa.string())
    except pa.ArrowInvalid:  # 2 GB of docids or more
        return strings
