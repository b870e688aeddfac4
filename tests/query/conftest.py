"""Query fixtures: the golden pool as an index (no model) and the golden target sets as feature files."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from nagindex.ingest.interop import import_features, write_features


@pytest.fixture(scope="module")
def golden_index(golden_dir, tmp_path_factory) -> Path:
    """The golden pool's features imported (no model), token counts = the reference's token_num."""
    idx = tmp_path_factory.mktemp("q") / "idx"
    import_features([golden_dir / "features_fwd_up_only/pool/pool.jsonl"], idx, num_layers=4, top_k=8, width=256,
                    token_field="token_num", payload_paths=[golden_dir / "data/pool/pool.parquet"])
    return idx


@pytest.fixture(scope="module")
def target_features(golden_ranking, tmp_path_factory) -> dict[str, Path]:
    """Reference-format feature files of the sci, story and all target sets."""
    root = tmp_path_factory.mktemp("t")
    ids = np.asarray(golden_ranking["target_ids"])
    out = {}
    for name, mask in golden_ranking["target_sets"].items():
        path = root / f"{name}.jsonl"
        write_features(path, list(ids[mask]), golden_ranking["target_codes"][mask])
        out[name] = path
    return out
