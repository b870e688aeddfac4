"""``nagindex import --shards N``: reference features split over shards give the index (and every
query) of a one-shard import of the same files, as a sharded ingest does."""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from nagindex.cli import main
from nagindex.index.catalog import load_catalog
from tests.ingest.test_sharded import _rows

SHAPE = ["--num-layers", "4", "--top-k", "8", "--width", "256", "--token-field", "token_num"]


@pytest.fixture()
def features(golden_dir, tmp_path) -> list[Path]:
    """The golden pool's 15 feature lines over three files of different sizes; ids repeated across
    files (pool_01 again in b, with other codes; pool_07, first in b, again in c)."""
    lines = (golden_dir / "features_fwd_up_only/pool/pool.jsonl").read_text().splitlines()
    other = json.loads(lines[2])
    later = json.dumps({**other, "docid": "pool_01"})
    parts = {"a.jsonl": lines[:6], "b.jsonl": lines[6:10] + [later], "c.jsonl": lines[10:] + [lines[7]]}
    root = tmp_path / "features"
    root.mkdir()
    for name, part in parts.items():
        (root / name).write_text("".join(line + "\n" for line in part))
    return [root / name for name in parts]


def _import(files: list[Path], index: Path, payload: Path, *extra: str) -> str:
    res = CliRunner().invoke(main, ["import", *map(str, files), "--index", str(index), *SHAPE,
                                    "--payload", str(payload), *extra])
    assert res.exit_code == 0, res.output
    return res.output


def test_import_shards_equals_one_shard(golden_dir, features, tmp_path):
    from nagindex.query.run import query

    payload = golden_dir / "data/pool/pool.parquet"
    _import(features, tmp_path / "one", payload, "--shards", "1")
    out = _import(features, tmp_path / "many", payload, "--shards", "3")
    catalog = load_catalog(tmp_path / "many")
    assert load_catalog(tmp_path / "one") is None
    assert len(catalog.shards) == 3 and [i["shard"] for i in catalog.inputs] == [0, 1, 2]
    assert catalog.identity["num_layers"] == 4 and catalog.dedup["hidden"] == 2  # pool_01 in b, pool_07 in c
    assert "2 repeats of an id" in out
    rows = _rows(tmp_path / "one")
    assert len(rows) == 15 and _rows(tmp_path / "many") == rows
    import numpy as np

    from nagindex.index.derived import fingerprints
    from nagindex.index.sharded import open_index

    view = open_index(tmp_path / "many")  # --approx searches the shards' stored fingerprints of the kept rows
    assert np.array_equal(view.faiss_index().codes, fingerprints(view.codes, view.manifest["width"]))

    target = str(golden_dir / "features_fwd_up_only/target/target.jsonl")
    for name in ("one", "many"):
        query({"features": target}, tmp_path / name, fraction=0.3, out=tmp_path / f"{name}.parquet")
    one, many = pq.read_table(tmp_path / "one.parquet"), pq.read_table(tmp_path / "many.parquet")
    assert one.num_rows > 0 and one.equals(many)


def test_sharded_import_appends_resumes_and_keeps_its_shards(golden_dir, features, tmp_path):
    payload = golden_dir / "data/pool/pool.parquet"
    _import(features[:2], tmp_path / "many", payload, "--shards", "3")
    assert "+0 documents" in _import(features[:2], tmp_path / "many", payload)  # already imported
    _import(features, tmp_path / "many", payload)  # an append: c goes to the empty shard
    _import(features, tmp_path / "one", payload)
    assert [i["shard"] for i in load_catalog(tmp_path / "many").inputs] == [0, 1, 2]
    assert _rows(tmp_path / "many") == _rows(tmp_path / "one")

    refused = CliRunner().invoke(main, ["import", str(features[0]), "--index", str(tmp_path / "many"), *SHAPE,
                                        "--payload", str(payload), "--shards", "2"])
    assert refused.exit_code != 0 and "has 3 shards" in refused.output
    refused = CliRunner().invoke(main, ["import", str(features[0]), "--index", str(tmp_path / "one"), *SHAPE,
                                        "--payload", str(payload), "--shards", "2"])
    assert refused.exit_code != 0 and "one-shard index" in refused.output
