"""``--group-quota`` keys name groups of the index or are an error: a source by its recorded path, its path
as given at ingest or its file name (when unique); a docid prefix or a group-file value as it is. Keys are
resolved before the query runs, so the caps apply (``query/groups.py``)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from nagindex.errors import InputError
from nagindex.ingest.interop import import_features, write_features
from nagindex.query.request import TargetRequest
from nagindex.query.run import query
from tests.query import pools


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    """A pool whose ``a/part0.jsonl`` and ``b/part0.jsonl`` share a file name, on 1 and 2 shards."""
    root = tmp_path_factory.mktemp("groups")
    files = pools.write_pool(root / "a", sizes=(60, 40))
    other = root / "b" / "part0.jsonl"
    other.parent.mkdir()
    ids = [f"b-{i:03d}" for i in range(30)]
    write_features(other, ids, pools.codes_like(np.random.default_rng(5), 30, topic=0))
    payload = root / "b" / "payload.jsonl"
    payload.write_text("".join(json.dumps({"docid": d, "token_num": 100}) + "\n" for d in ids))
    out = {"root": root, **pools.write_targets(root / "a")}
    for shards in (1, 2):
        out[f"idx{shards}"] = root / f"idx{shards}"
        import_features([*files, other], out[f"idx{shards}"], **pools.SHAPE, token_field="token_num",
                        payload_paths=[root / "a" / "payload.jsonl", payload], shards=shards)
    return out


def _sources(table) -> set[str]:
    return set(table.column("source").to_pylist())


@pytest.mark.parametrize("shards", [1, 2])
def test_a_source_is_named_by_its_path_its_path_as_given_or_a_unique_tail(data, shards, tmp_path, monkeypatch):
    index = data[f"idx{shards}"]
    part0 = str((data["root"] / "a" / "part0.jsonl").resolve())
    alpha = [TargetRequest("features", str(data["alpha"]))]
    assert part0 in _sources(query(alpha, index, k=40).table)
    out = tmp_path / "sel.parquet"
    full = query(alpha, index, k=40, group_by="source", group_quota={part0: 0.0}, out=out)
    assert part0 not in _sources(full.table) and len(full) == 40
    manifest = json.loads((tmp_path / "sel.parquet.manifest.json").read_text())
    assert manifest["group_caps"]["quotas"] == {part0: 0.0}
    monkeypatch.chdir(data["root"])
    for key in ("a/part0.jsonl", "./a/part0.jsonl", "b/../a/part0.jsonl"):
        assert query(alpha, index, k=40, group_by="source", group_quota={key: 0.0}).table.equals(full.table), key
    monkeypatch.chdir(data["root"] / "a")  # the path as given at ingest, from where it was given
    assert query(alpha, index, k=40, group_by="source", group_quota={"part0.jsonl": 0.0}).table.equals(full.table)
    # a file name unique among the sources
    part1 = str((data["root"] / "a" / "part1.jsonl").resolve())
    beta = [TargetRequest("features", str(data["beta"]))]
    assert part1 in _sources(query(beta, index, k=40).table)
    by_name = query(beta, index, k=40, group_by="source", group_quota={"part1.jsonl": 0.0}).table
    assert by_name.equals(query(beta, index, k=40, group_by="source", group_quota={part1: 0.0}).table)
    assert part1 not in _sources(by_name) and len(by_name) == 40


def test_an_ambiguous_file_name_is_an_error_naming_the_candidates(data):
    t = [TargetRequest("features", str(data["alpha"]))]
    a, b = (str((data["root"] / d / "part0.jsonl").resolve()) for d in ("a", "b"))
    with pytest.raises(InputError, match=re.escape(f"group quota: group 'part0.jsonl' names 2 sources: {a}, {b}; "
                                                   "give more of its path")):
        query(t, data["idx2"], k=10, group_by="source", group_quota={"part0.jsonl": 0.1})
    assert len(query(t, data["idx2"], k=10, group_by="source", group_quota={"b/part0.jsonl": 0.1})) == 10


def test_a_key_that_names_no_group_is_an_error_listing_the_groups(data, tmp_path):
    t = [TargetRequest("features", str(data["alpha"]))]
    sources = sorted(str((data["root"] / p).resolve()) for p in ("a/part0.jsonl", "a/part1.jsonl", "b/part0.jsonl"))
    quota = tmp_path / "quota.yaml"
    quota.write_text("part1.json: 0.2\n")
    with pytest.raises(InputError, match=re.escape(
            f"{quota}: group 'part1.json' is none of the groups of --group-by source; did you mean "
            f"'{sources[1]}'? (groups: {', '.join(sources)})")):
        query(t, data["idx1"], k=10, group_by="source", group_quota=quota)
    groups = tmp_path / "groups.jsonl"
    groups.write_text("".join(json.dumps({"docid": f"b-{i:03d}", "lang": ["en", "fr"][i % 2]}) + "\n"
                              for i in range(30)))
    with pytest.raises(InputError, match=re.escape("group quota: group 'de' is none of the groups of --group-by "
                                                   "lang (groups: (none), en, fr)")):
        query(t, data["idx1"], k=10, group_by="lang", group_file=groups, group_quota={"de": 0.5})
    with pytest.raises(InputError, match=re.escape("group quota: group 'b-' is none of the groups of --group-by "
                                                   "docid-prefix; did you mean 'b'?")):
        query(t, data["idx2"], k=10, group_by="docid-prefix", group_quota={"b-": 0.5})


def test_a_docid_prefix_caps_as_named(data, tmp_path):
    t = [TargetRequest("features", str(data["alpha"]))]
    plain = query(t, data["idx2"], k=60).table.column("docid").to_pylist()
    assert any(d.startswith("b-") for d in plain)
    capped = query(t, data["idx2"], k=60, group_by="docid-prefix", group_quota={"b": 0.0}).table
    assert len(capped) == 60 and not any(d.startswith("b-") for d in capped.column("docid").to_pylist())


def test_two_keys_naming_one_group_are_an_error(data):
    t = [TargetRequest("features", str(data["alpha"]))]
    full = str((data["root"] / "a" / "part1.jsonl").resolve())
    with pytest.raises(InputError, match=re.escape(f"group quota: 'part1.jsonl' and '{full}' both name the group "
                                                   f"{full}")):
        query(t, data["idx1"], k=10, group_by="source", group_quota={"part1.jsonl": 0.1, full: 0.2})
