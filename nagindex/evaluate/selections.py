"""The selections an evaluation compares: files of docids, from nagindex or from anywhere else.

A selection is any ``.parquet`` or ``.jsonl`` with a ``docid`` column naming documents of the
index: a ``nagindex query``/``mix`` output, a user's own list, another tool's output. Only the
docids are read, so every method is judged on the same terms. The ``<file>.manifest.json`` a
query writes beside its output, where there is one, says which target examples built the
selection's profile (``heldout.py`` keeps them out of the evaluation).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nagindex.errors import InputError

ID_COLUMN = "docid"
#: the name of the built-in baseline arm; no selection file may take it
RANDOM = "random"


@dataclass(frozen=True)
class SelectionFile:
    """One selection: its file, its arm name (the file's stem), its docids in file order, its manifest."""

    path: Path
    name: str
    docids: Any  # pyarrow large_string array
    manifest: dict[str, Any] | None


def read_selection(path: str | os.PathLike[str]) -> SelectionFile:
    """The docids of a selection file and the manifest beside it (``None`` where there is none)."""
    import pyarrow as pa

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: selection file does not exist")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            names = pq.read_schema(path).names
            if ID_COLUMN not in names:
                raise InputError(f"{path}: no {ID_COLUMN!r} column (columns: {', '.join(names)})")
            column = pq.read_table(path, columns=[ID_COLUMN]).column(ID_COLUMN)
        except InputError:
            raise
        except Exception as exc:  # pyarrow raises several types for a broken file
            raise InputError(f"{path}: cannot read parquet: {exc}") from exc
        docids = column.combine_chunks()
    elif suffix == ".jsonl":
        from nagindex.sources.records import read_records

        rows = read_records(path)
        bad = next((i for i, row in enumerate(rows, 1) if row.get(ID_COLUMN) is None), None)
        if bad is not None:
            raise InputError(f"{path}: record {bad}: no {ID_COLUMN!r} field")
        docids = pa.array([str(row[ID_COLUMN]) for row in rows], pa.large_string())
    else:
        raise InputError(f"{path}: a selection is a .parquet or .jsonl file with a {ID_COLUMN!r} column")
    if docids.null_count:
        raise InputError(f"{path}: {docids.null_count} row(s) have no {ID_COLUMN!r}")
    if len(docids) == 0:
        raise InputError(f"{path}: the selection holds no documents")
    docids = docids.cast(pa.large_string())  # docids are strings everywhere, numbers included
    return SelectionFile(path=path, name=path.stem, docids=docids, manifest=read_manifest(path))


def read_manifest(path: Path) -> dict[str, Any] | None:
    """``<path>.manifest.json`` (``query/write.py`` writes it), or ``None`` where there is none."""
    manifest = path.with_name(path.name + ".manifest.json")
    if not manifest.is_file():
        return None
    try:
        value = json.loads(manifest.read_text("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{manifest}: not a JSON manifest: {exc}") from None
    if not isinstance(value, dict):
        raise InputError(f"{manifest}: expected a JSON object")
    return value


def check_names(selections: list[SelectionFile]) -> None:
    """Arms are named after their files' stems: two files with one stem, or a file named ``random``
    (the baseline's name), would make the results ambiguous."""
    seen: dict[str, Path] = {}
    for sel in selections:
        if sel.name == RANDOM:
            raise InputError(f"{sel.path}: the arm name {RANDOM!r} is the built-in baseline's; rename the file")
        if sel.name in seen:
            raise InputError(f"{seen[sel.name]} and {sel.path} would both be the arm {sel.name!r}: rename one")
        seen[sel.name] = sel.path
