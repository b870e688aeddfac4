"""Selections to disk: parquet or JSONL that pandas, pyarrow and HF datasets read directly.

Written atomically (``fsio.atomic_path``) with a ``<out>.manifest.json`` beside
it saying how the selection was made.
"""
from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from nagindex.errors import InputError, NagIndexError
from nagindex.fsio import atomic_path

OUTPUT_SUFFIXES = (".parquet", ".jsonl")


class SourceTextError(InputError):
    """A source cannot give back the texts of its indexed documents (gone, moved, changed). The message says
    what is wrong and how to re-attach the source, but not what to turn off: only the caller knows what
    needed the texts (``texts_needed_by``)."""


def texts_needed_by(error: SourceTextError, with_text: bool, decontaminated: Sequence[str]) -> str:
    """``error``'s message with what needed the texts and the switch that does without them: ``--with-text``
    (the user gave it) and/or decontamination against ``decontaminated`` (``--no-decontaminate``)."""
    needs = (["--with-text"] if with_text else []) + \
        ([f"decontamination against {', '.join(decontaminated)}"] if decontaminated else [])
    off = (["drop --with-text"] if with_text else []) + (["pass --no-decontaminate"] if decontaminated else [])
    if not needs:
        return str(error)
    return f"{error}. The texts are needed by {' and by '.join(needs)}: {' and '.join(off)} to select without them"


def check_output(out: str | os.PathLike, inputs: Sequence[str | os.PathLike]) -> Path:
    """``out`` if a selection may be written there: a .parquet/.jsonl name that is none of ``inputs``.

    Checked before any work, so a wrong ``-o`` fails at once, and a selection
    never overwrites the target file it was computed from.
    """
    path = Path(out)
    if path.suffix not in OUTPUT_SUFFIXES:
        raise NagIndexError(f"-o {out}: use a .parquet or .jsonl file name")
    for given in inputs:
        if Path(given).resolve() == path.resolve():
            raise NagIndexError(f"-o {out} is an input of this query ({given}): writing the selection there would "
                                "destroy it; choose another -o")
    return path


def write_selection(out: str | os.PathLike, columns: Any, manifest: dict[str, Any]) -> Path:
    """Write ``columns`` (an Arrow table, or a dict of equal-length arrays/lists) as ``.parquet`` or
    ``.jsonl``, plus the manifest."""
    import pyarrow as pa

    from nagindex.arrays import arrow_column

    out = Path(out)
    table = columns if isinstance(columns, pa.Table) else \
        pa.Table.from_arrays([arrow_column(v) for v in columns.values()], names=list(columns))
    if out.suffix not in OUTPUT_SUFFIXES:
        raise NagIndexError(f"-o {out}: use a .parquet or .jsonl file name")  # check_output says so earlier
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        if out.suffix == ".parquet":
            import pyarrow.parquet as pq

            pq.write_table(table, tmp)
        else:
            with open(tmp, "w", encoding="utf-8") as fh:
                for batch in table.to_batches(65536):
                    for row in batch.to_pylist():
                        fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    with atomic_path(out.with_name(out.name + ".manifest.json")) as tmp:
        tmp.write_text(json.dumps(manifest, indent=1, default=str))
    return out


def write_table(out: str | os.PathLike, table: Any) -> Path:
    """An Arrow table to ``out`` (parquet), atomically."""
    import pyarrow.parquet as pq

    out = Path(out)
    with atomic_path(out) as tmp:
        pq.write_table(table, tmp)
    return out


def text_options(manifest: dict[str, Any]) -> dict[str, Any]:
    """How an index's texts are read back: the fields and ``--text-template`` its ingest recorded
    (``fetch_texts`` keywords), so the texts read back are the texts that were encoded."""
    return {"text_field": manifest.get("text_field", "doc"), "id_field": manifest.get("id_field", "docid"),
            "text_template": manifest.get("text_template")}


def fetch_texts(sources: Sequence[str], positions: np.ndarray, docids: Sequence[str], *, text_field: str,
                id_field: str, text_template: str | None = None,
                states: dict[str, dict[str, Any]] | None = None) -> list[str]:
    """Document texts read back from their sources (for ``--with-text``), in the given row order.

    ``text_template``: records are rendered with it, as the ingest did (``text_options`` of the manifest).

    Each source is streamed once from its smallest wanted position. A text is attached only when it
    is provably the document's: the source's size and change stamp equal those recorded at ingest
    (``states``: the store's progress records, keyed by source) and the record at that position
    carries that docid. Otherwise a ``SourceTextError`` names the source: never another document's text.
    """
    from nagindex.data import Document
    from nagindex.ingest.inputs import input_files
    from nagindex.ingest.read import Fields, read_input

    wanted: dict[str, dict[int, list[int]]] = defaultdict(lambda: defaultdict(list))
    for i, (src, pos) in enumerate(zip(sources, positions.tolist())):
        wanted[src][pos].append(i)
    out: list[str] = [""] * len(sources)
    fields = Fields(text_field, id_field, None, template=text_template)
    for src, rows in wanted.items():
        try:
            (item,) = input_files([src])
        except (NagIndexError, ValueError, OSError) as exc:
            raise SourceTextError(f"{src}: cannot read the source of {sum(map(len, rows.values()))} selected "
                                  f"document(s) back ({exc}): restore it, or if it moved, re-attach it where it is "
                                  f"now (`nagindex sources --index IDX --move {src} NEW_PATH`, or a folder of it "
                                  "and the new folder)") from None
        recorded = (states or {}).get(src)
        if recorded is not None:
            now = item.state()
            if (recorded.get("size"), recorded.get("mtime")) != (now["size"], now["mtime"]):
                raise SourceTextError(f"{src} changed since it was ingested (size {recorded.get('size')} -> "
                                      f"{now['size']}, or its modification time): its records may no longer be the "
                                      "indexed documents; if it is a copy of them, `nagindex sources --index IDX "
                                      f"--move {src} {src}` checks every record and re-attaches it, else ingest it "
                                      "again")
        found: set[int] = set()
        for rec in read_input(item, fields=fields, start=min(rows)):
            if isinstance(rec, Document) and rec.position in rows:
                for i in rows[rec.position]:
                    if rec.docid != docids[i]:
                        raise SourceTextError(f"{src}: the record at position {rec.position} is {rec.docid!r}, not "
                                              f"the indexed {docids[i]!r}: the source changed since it was ingested "
                                              "(ingest it again)")
                    out[i] = rec.text
                found.add(rec.position)
                if len(found) == len(rows):
                    break
        if len(found) < len(rows):
            missing = sorted(set(rows) - found)
            raise SourceTextError(f"{src}: {len(missing)} indexed record(s) are no longer there (positions "
                                  f"{missing[:3]}): the source changed since it was ingested (ingest it again)")
    return out
