"""Selections to disk: parquet or JSONL that pandas, pyarrow and HF datasets read directly.

Written atomically (``fsio.atomic_path``) with a ``<out>.manifest.json`` beside
it saying how the selection was made.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

from nagindex.errors import NagIndexError
from nagindex.fsio import atomic_path
from nagindex.sources.fetch import SourceTextError

OUTPUT_SUFFIXES = (".parquet", ".jsonl")


def texts_needed_by(error: SourceTextError, with_text: bool, decontaminated: Sequence[str]) -> str:
    """``error``'s message with what needed the texts and the switch that does without them: ``--with-text``
    (the user gave it) and/or decontamination against ``decontaminated`` (``--no-decontaminate``)."""
    needs = (["--with-text"] if with_text else []) + \
        ([f"decontamination against {', '.join(decontaminated)}"] if decontaminated else [])
    off = (["drop --with-text"] if with_text else []) + (["pass --no-decontaminate"] if decontaminated else [])
    if not needs:
        return str(error)
    return f"{error}. The texts are needed by {' and by '.join(needs)}: {' and '.join(off)} to select without them"


def check_output(out: str | os.PathLike, inputs: Sequence[str | os.PathLike], folder: bool = False) -> Path:
    """``out`` if a selection may be written there: a .parquet/.jsonl name (or, ``folder``, a name without a
    suffix: the folder of a selection written by the shards) that is none of ``inputs``.

    Checked before any work, so a wrong ``-o`` fails at once, and a selection
    never overwrites the target file it was computed from.
    """
    path = Path(out)
    if path.suffix not in OUTPUT_SUFFIXES and not (folder and not path.suffix):
        raise NagIndexError(f"-o {out}: use a .parquet or .jsonl file name" + (
            ", or a folder name (no suffix) for a selection written by the shards" if folder else ""))
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
    write_manifest(out, manifest)
    return out


def write_manifest(out: str | os.PathLike, manifest: dict[str, Any]) -> None:
    """``<out>.manifest.json``: how the selection at ``out`` (a file, or the folder of its parts) was made."""
    out = Path(out)
    with atomic_path(out.with_name(out.name + ".manifest.json")) as tmp:
        tmp.write_text(json.dumps(manifest, indent=1, default=str))


def write_table(out: str | os.PathLike, table: Any) -> Path:
    """An Arrow table to ``out`` (parquet), atomically."""
    import pyarrow.parquet as pq

    out = Path(out)
    with atomic_path(out) as tmp:
        pq.write_table(table, tmp)
    return out
