"""Texts read back from their sources by position (``--with-text``, decontamination, the demo).

An index stores no text: each row keeps its source and the position of its record there, and
``fetch_texts`` streams the sources again, attaching a text only where the source is provably
unchanged since the ingest and the record there carries the indexed docid.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Mapping
from typing import Any, Sequence

import numpy as np

from nagindex.data import Document
from nagindex.errors import InputError, NagIndexError
from nagindex.sources.inputs import input_files
from nagindex.sources.read import Fields, read_input


class SourceTextError(InputError):
    """A source cannot give back the texts of its indexed documents (gone, moved, changed). The message says
    what is wrong and how to re-attach the source, but not what to turn off: only the caller knows what
    needed the texts (``query.write.texts_needed_by``)."""


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
    wanted: dict[str, dict[int, list[int]]] = defaultdict(lambda: defaultdict(list))
    for i, (src, pos) in enumerate(zip(sources, positions.tolist())):
        wanted[src][pos].append(i)
    out: list[str] = [""] * len(sources)
    for src, rows in wanted.items():
        for i, text in source_texts(src, rows, docids, text_field=text_field, id_field=id_field,
                                    text_template=text_template, recorded=(states or {}).get(src)):
            out[i] = text
    return out


def source_texts(src: str, rows: Mapping[int, list[int]], docids: Sequence[str], *, text_field: str,
                 id_field: str, text_template: str | None = None,
                 recorded: dict[str, Any] | None = None) -> Iterator[tuple[int, str]]:
    """``(i, text)`` for the wanted records of one source, streamed in the source's order, checked as
    ``fetch_texts`` checks them: ``rows`` maps a position to the indices ``i`` (into ``docids``) wanting it,
    ``recorded`` is the source's ingest record (size, change stamp). A generator, so a caller writing the
    texts out (``nagindex write-training``) holds one batch of them, not a whole source's."""
    try:
        (item,) = input_files([src])
    except (NagIndexError, ValueError, OSError) as exc:
        raise SourceTextError(f"{src}: cannot read the source of {sum(map(len, rows.values()))} selected "
                              f"document(s) back ({exc}): restore it, or if it moved, re-attach it where it is "
                              f"now (`nagindex sources --index IDX --move {src} NEW_PATH`, or a folder of it "
                              "and the new folder)") from None
    if recorded is not None:
        now = item.state()
        if (recorded.get("size"), recorded.get("mtime")) != (now["size"], now["mtime"]):
            raise SourceTextError(f"{src} changed since it was ingested (size {recorded.get('size')} -> "
                                  f"{now['size']}, or its modification time): its records may no longer be the "
                                  "indexed documents; if it is a copy of them, `nagindex sources --index IDX "
                                  f"--move {src} {src}` checks every record and re-attaches it, else ingest it "
                                  "again")
    fields = Fields(text_field, id_field, None, template=text_template)
    found: set[int] = set()
    for rec in read_input(item, fields=fields, start=min(rows), only=np.array(sorted(rows), np.int64)):
        if isinstance(rec, Document) and rec.position in rows:
            for i in rows[rec.position]:
                if rec.docid != docids[i]:
                    raise SourceTextError(f"{src}: the record at position {rec.position} is {rec.docid!r}, not "
                                          f"the indexed {docids[i]!r}: the source changed since it was ingested "
                                          "(ingest it again)")
                yield i, rec.text
            found.add(rec.position)
            if len(found) == len(rows):
                break
    if len(found) < len(rows):
        missing = sorted(set(rows) - found)
        raise SourceTextError(f"{src}: {len(missing)} indexed record(s) are no longer there (positions "
                              f"{missing[:3]}): the source changed since it was ingested (ingest it again)")
