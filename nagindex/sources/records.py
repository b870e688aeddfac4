"""Rows of local record files: whole (``read_records``, target examples, selections) or as two keyed
columns (``read_keyed_values``, per-document side files such as ``--quality-file`` and ``--group-file``).

Parquet, ``.jsonl``/``.jsonl.gz`` and ``.json``; a bad file or line is an ``InputError`` naming it.
"""
from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any, Iterable

from nagindex.errors import InputError


def read_records(path: Path) -> list[dict[str, Any]]:
    """Rows of a local ``.parquet``, ``.jsonl``/``.jsonl.gz`` (one object a line) or ``.json`` (a list of objects)."""
    name = path.name.lower()
    if name.endswith(".parquet"):
        import pyarrow.parquet as pq

        try:
            return pq.read_table(path).to_pylist()
        except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a broken file
            raise InputError(f"{path}: cannot read parquet: {exc}") from exc
    if name.endswith((".jsonl", ".jsonl.gz")):
        return [row for _, row in _jsonl_objects(path)]
    opener = gzip.open if name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as fh:  # type: ignore[operator]
        if name.endswith((".json", ".json.gz")):
            try:
                rows = json.load(fh)
            except json.JSONDecodeError as exc:
                raise InputError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg}") from exc
            if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
                raise InputError(f"{path}: expected a JSON list of objects")
            return rows
    raise InputError(f"{path}: unsupported file type (use .parquet, .jsonl, .jsonl.gz, .json or .txt)")


def _jsonl_objects(path: Path) -> Iterable[tuple[int, dict[str, Any]]]:
    """``(line number, object)`` of each non-blank line of a ``.jsonl``/``.jsonl.gz`` file, streamed; a line
    that is not a JSON object is an ``InputError`` naming the file and line."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as fh:  # type: ignore[operator]
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"{path}:{lineno}: invalid JSON: {exc.msg}") from exc
            if not isinstance(row, dict):
                raise InputError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            yield lineno, row


def read_keyed_values(path: Path, id_field: str, column: str, numeric: bool = True) -> tuple[Any, Any]:
    """``(ids, values)`` of a parquet/JSONL file as Arrow arrays: large_string ids, and float64 values
    (null -> NaN) or, not ``numeric``, string values (null stays null).

    For per-document files as large as the pool (``--quality-file``): parquet reads just the
    two columns, JSONL is parsed line by line into Arrow chunks, never a list of dicts.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    from nagindex.arrays import string_array

    if path.name.lower().endswith(".parquet"):
        import pyarrow.parquet as pq

        try:
            names = pq.read_schema(path).names
            if id_field not in names or column not in names:
                raise InputError(f"{path}: needs columns {id_field!r} and {column!r} (has {', '.join(names)})")
            table = pq.read_table(path, columns=[id_field, column])
        except InputError:
            raise
        except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a broken file
            raise InputError(f"{path}: cannot read parquet: {exc}") from exc
        ids = pc.cast(table.column(id_field), pa.large_string())
        values = pc.fill_null(pc.cast(table.column(column), pa.float64()), float("nan")) if numeric else \
            pc.cast(table.column(column), pa.string())
        return ids.combine_chunks(), values.combine_chunks()
    if not path.name.lower().endswith((".jsonl", ".jsonl.gz")):
        return _keyed_from_records(read_records(path), path, id_field, column, numeric)
    chunks_ids, chunks_values, ids, values = [], [], [], []
    for lineno, row in _jsonl_objects(path):
        if id_field not in row or column not in row:
            raise InputError(f"{path}:{lineno}: needs fields {id_field!r} and {column!r}")
        ids.append(str(row[id_field]))
        values.append(_float(row[column], path, lineno, column) if numeric else _text(row[column]))
        if len(ids) == 65536:
            chunks_ids.append(string_array(ids))
            chunks_values.append(pa.array(values, pa.float64() if numeric else pa.string()))
            ids, values = [], []
    chunks_ids.append(string_array(ids))
    chunks_values.append(pa.array(values, pa.float64() if numeric else pa.string()))
    return (pa.concat_arrays([pc.cast(c, pa.large_string()) for c in chunks_ids]),
            pa.concat_arrays(chunks_values))


def _keyed_from_records(rows: list[dict[str, Any]], path: Path, id_field: str, column: str,
                        numeric: bool) -> tuple[Any, Any]:
    import pyarrow as pa

    if rows and (id_field not in rows[0] or column not in rows[0]):
        raise InputError(f"{path}: needs columns {id_field!r} and {column!r} (has {', '.join(rows[0])})")
    values = [_float(r.get(column), path, i + 1, column) if numeric else _text(r.get(column))
              for i, r in enumerate(rows)]
    return (pa.array([str(r[id_field]) for r in rows], pa.large_string()),
            pa.array(values, pa.float64() if numeric else pa.string()))


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _float(value: Any, path: Path, lineno: int, column: str) -> float:
    if value is None:
        return float("nan")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise InputError(f"{path}:{lineno}: field {column!r} is {value!r}, not a number") from None
