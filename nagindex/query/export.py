"""``nagindex score``: every document's score for one or more targets, for users who sample or mix elsewhere.

The same scan as a query (``scan.ShardScan.score``, every shard in turn), then each shard
streams its rows out in blocks: memory stays one block whatever the index size. Rows come
shard by shard in row order (documents hidden as later copies of an id are left out).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from nagindex.errors import NagIndexError
from nagindex.fsio import atomic_path
from nagindex.progress import StageTimer
from nagindex.query.request import TargetLike


@dataclass
class ScoreExport:
    out: Path
    targets: list[str]
    rows: int
    timings: str = ""


def score_all(targets: TargetLike | Sequence[TargetLike], index_dir: str | os.PathLike = "idx", *,
              out: str | os.PathLike, layers: Any = None, power: float = 1.0, weighting: str = "none",
              max_examples: int | None = None, example_seed: int = 0, device: str = "auto",
              method: str = "nag") -> ScoreExport:
    """Write ``docid, token_count, score_<target>...`` (the similarity to each target; NAIT's score with
    ``method="nait"``) for every document of the index to ``out`` (``.parquet`` or ``.jsonl``). Targets
    and options as for ``query``."""
    import pyarrow as pa

    from nagindex.index.sharded import shard_specs
    from nagindex.query.fleet import LocalFleet
    from nagindex.query.run import profile_targets
    from nagindex.query.scan import ScorePlan
    from nagindex.query.spec import QuerySpec
    from nagindex.query.weighting import target_weights
    from nagindex.query.write import check_output

    spec = QuerySpec.of(targets, index_dir, out=out, layers=layers, power=power, weighting=weighting,
                        max_examples=max_examples, example_seed=example_seed, device=device, method=method)
    out = check_output(out, spec.input_paths())
    timer = StageTimer()
    fleet = LocalFleet.open(shard_specs(index_dir))
    names = [t.display for t in spec.targets]
    if len(set(names)) < len(names):
        raise NagIndexError(f"targets {names}: each needs its own name for its score column")
    rows = 0
    try:
        _, visible, kept, profiles, _ = profile_targets(fleet, spec, [], timer)
        plan = ScorePlan(profiles, tuple(int(x) for x in kept), power, spec.scoring_device,
                         weights=target_weights(fleet, weighting, profiles, kept, power, visible),
                         nait=profiles if method == "nait" else None)
        with timer("score"):
            fleet.score(plan)
        out.parent.mkdir(parents=True, exist_ok=True)
        with timer("write"), atomic_path(out) as tmp:
            schema = pa.schema([("docid", pa.large_string()), ("token_count", pa.int64())]
                               + [(f"score_{n}", pa.float64()) for n in names])
            if out.suffix == ".parquet":
                import pyarrow.parquet as pq

                with pq.ParquetWriter(tmp, schema) as writer:
                    for part in fleet.parts:
                        for batch in part.export(names):
                            writer.write_batch(batch)
                            rows += batch.num_rows
            else:
                with open(tmp, "w", encoding="utf-8") as fh:
                    for part in fleet.parts:
                        for batch in part.export(names):
                            for rec in batch.to_pylist():
                                fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
                            rows += batch.num_rows
    finally:
        fleet.close()
    return ScoreExport(out=out, targets=names, rows=rows, timings=timer.summary())
