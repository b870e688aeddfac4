"""Mixture YAML validation: every error names the file and the field."""
from __future__ import annotations

import pytest

from nagindex.errors import InputError
from nagindex.query.mixture import load_mixture

BASE = "mode: paper\nfraction: 0.2\ntargets:\n  - name: arc_challenge\n  - name: mmlu\n"


@pytest.mark.parametrize("value, dedup", [("true", True), ("false", False), (None, False)])
def test_dedup_booleans(tmp_path, value, dedup):
    path = tmp_path / "m.yaml"
    path.write_text(BASE + (f"dedup: {value}\n" if value else ""))
    assert load_mixture(path).dedup is dedup


@pytest.mark.parametrize("value", ['"false"', "'no'", "1", "yes please"])
def test_dedup_that_is_not_a_boolean_is_an_error_naming_file_and_field(tmp_path, value):
    path = tmp_path / "m.yaml"
    path.write_text(BASE + f"dedup: {value}\n")
    with pytest.raises(InputError, match=rf"{path}: field 'dedup': expected true or false"):
        load_mixture(path)
