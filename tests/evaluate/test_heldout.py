"""The held-out split: examples a selection's manifest shows in its profile are never measured."""
from __future__ import annotations

import pytest

from nagindex.errors import NagIndexError
from nagindex.evaluate.heldout import split_heldout
from nagindex.evaluate.selections import read_selection
from nagindex.query.request import parse_target
from nagindex.query.target import load_target_file, sample_indices
from tests.evaluate.conftest import write_selection


def _manifest(target, max_examples, seed=0, available=60, kind="file"):
    """What ``nagindex query --target-file T --max-examples N --example-seed S`` records."""
    return {"targets": [{"kind": kind, "value": str(target), "weight": 1.0, "filters": {}, "label": "arith",
                         "examples": {"used": max_examples or available, "available": available}}],
            "max_examples": max_examples, "example_seed": seed}


def test_profile_examples_of_a_manifest_are_left_out(arith_target, tmp_path):
    sel = read_selection(write_selection(tmp_path / "a.parquet", ["x"], _manifest(arith_target, 40, seed=3)))
    held = split_heldout(parse_target(str(arith_target), "file"), [sel], limit=500, seed=0)
    every = load_target_file(arith_target)
    profile = {every.ids[i] for i in sample_indices(60, 40, 3)}
    assert held.available == 60 and held.excluded == 40 and len(held.examples) == 20
    assert not profile & set(held.examples.ids)
    assert set(held.examples.ids) | profile == set(every.ids)
    # the choices travel with their texts
    by_id = dict(zip(every.ids, every.choices))
    assert [by_id[i] for i in held.examples.ids] == held.examples.choices


def test_two_manifests_exclude_both_profiles_and_the_sample_is_seeded(arith_target, tmp_path):
    a = read_selection(write_selection(tmp_path / "a.parquet", ["x"], _manifest(arith_target, 20, seed=0)))
    b = read_selection(write_selection(tmp_path / "b.parquet", ["x"], _manifest(arith_target, 20, seed=1)))
    request = parse_target(str(arith_target), "file")
    held = split_heldout(request, [a, b], limit=10, seed=5)
    used = set(sample_indices(60, 20, 0)) | set(sample_indices(60, 20, 1))
    every = load_target_file(arith_target)
    assert held.excluded == len(used) and len(held.examples) == 10
    assert not {every.ids[i] for i in used} & set(held.examples.ids)
    assert split_heldout(request, [a, b], limit=10, seed=5).examples.ids == held.examples.ids
    assert split_heldout(request, [a, b], limit=10, seed=6).examples.ids != held.examples.ids


def test_selections_of_other_targets_or_without_manifest_exclude_nothing(arith_target, tmp_path):
    other = read_selection(write_selection(tmp_path / "o.parquet", ["x"],
                                           _manifest("arc_challenge", 20, kind="name", available=299)))
    bare = read_selection(write_selection(tmp_path / "bare.parquet", ["x"]))
    held = split_heldout(parse_target(str(arith_target), "file"), [other, bare], limit=500, seed=0)
    assert held.excluded == 0 and len(held.examples) == 60
    assert any("bare.parquet has no manifest" in n for n in held.notes)


def test_a_profile_of_every_example_leaves_nothing_to_evaluate(arith_target, tmp_path):
    sel = read_selection(write_selection(tmp_path / "all.parquet", ["x"], _manifest(arith_target, None)))
    with pytest.raises(NagIndexError, match=r"all.parquet: all 60 examples of arith built its profile .*--max-examples"):
        split_heldout(parse_target(str(arith_target), "file"), [sel], limit=500, seed=0)


def test_a_target_that_changed_since_the_selection_is_refused(arith_target, tmp_path):
    sel = read_selection(write_selection(tmp_path / "old.parquet", ["x"], _manifest(arith_target, 20, available=70)))
    with pytest.raises(NagIndexError, match=r"old.parquet: its profile drew from 70 examples of arith, but the target "
                                            r"has 60 now"):
        split_heldout(parse_target(str(arith_target), "file"), [sel], limit=500, seed=0)
