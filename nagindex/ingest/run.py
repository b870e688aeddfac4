"""``ingest()`` and ``extract_files()``: a corpus encoded into an index, or into reference feature files.

``ingest`` writes a one-folder index itself (``worker.ingest_folder``) or a sharded one through a
worker per shard (``sharded.ingest_sharded``, each worker an ``ingest_folder`` of its shard);
``extract_files`` runs the same windows and encoder but writes feature lines (``interop``).
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from nagindex.encode import encoder as enc
from nagindex.errors import InputError, NagIndexError
from nagindex.ingest.worker import (IngestResult, LocalEncoder, check_settings, estimate_records, group_windows,
                                    ingest_folder)
from nagindex.progress import TokenRate, progress_bar
from nagindex.sources.inputs import input_files
from nagindex.sources.read import Fields, read_input
from nagindex.sources.render import check_text_template
from nagindex.sources.split import DEFAULT_SPLIT_SIZE

if TYPE_CHECKING:
    from nagindex.encode.dense import DenseSpec
    from nagindex.encode.extract import NagExtractor


def ingest(
    inputs: Sequence[str | os.PathLike],
    index_dir: str | os.PathLike = "idx",
    *,
    backbone: str = "smollm2-135m",
    neuron_type: str = "fwd_up",
    top_k: int = 20,
    max_length: int = 120,
    batch_size: int = 32,
    commit_every: int = 512,
    text_field: str = "auto",
    id_field: str = "auto",
    token_field: str | None = None,
    text_template: str | None = None,
    limit: int | None = None,
    strict: bool = False,
    device: str = "auto",
    dtype: str | None = None,
    trust_remote_code: bool = False,
    ray_address: str | None = None,
    ray_workers: int = 2,
    ray_gpus_per_worker: float | None = None,
    shards: int = 1,
    shard_root: str | os.PathLike | None = None,
    workers: int | None = None,
    split_size: int | str | None = DEFAULT_SPLIT_SIZE,
    extractor: "NagExtractor | None" = None,
    show_progress: bool | None = None,
    nait: "DenseSpec | None" = None,
) -> IngestResult:
    """Encode every document of ``inputs`` once into the index at ``index_dir`` (created if absent).

    Re-running with the same inputs adds nothing; new inputs are appended; an
    interrupted run resumes where it stopped. Bad records are counted skips saved
    in ``rejects.jsonl`` (``strict`` makes the first one an error instead).
    With ``ray_address`` ("local" starts a cluster here, "auto" joins the running
    one), ``ray_workers`` Ray actors extract the NAGs while this process reads,
    screens and commits in input order: the index is the same as a local run's.
    ``shards`` > 1 (or an index that already has a catalog) writes a sharded index:
    one worker process (or, with ``ray_address``, one Ray task) per shard, each
    owning whole inputs or, of a new input bigger than ``split_size`` (bytes or ``"64MiB"``; None:
    never), some parts (``ingest.sharded``); ``shard_root`` puts the shards elsewhere;
    ``workers`` caps the local worker processes running at once (default: as many as the
    cores and available memory allow, ``ingest.sharded.default_workers``).
    ``text_template`` (Jinja, instead of ``text_field``) renders each record's text from its fields
    (``sources.render``); it is part of the index identity, like ``max_length``.
    ``nait`` (``encode.dense.parse_features``, ``--features nag,nait``) also stores each document's
    dense activations for ``--method nait`` (``index.dense``); part of the identity too.
    """
    from nagindex.index.catalog import CATALOG_FILE
    from nagindex.units import parse_size

    split_size = None if split_size is None else parse_size(split_size)  # checked even where unused: a typo
    if shards > 1 or (Path(index_dir) / CATALOG_FILE).is_file():
        from nagindex.ingest.sharded import ingest_sharded

        backbone, requested = check_settings(Path(index_dir), backbone, neuron_type, top_k, max_length, dtype,
                                             text_field, text_template, nait)
        return ingest_sharded(inputs, index_dir, shards=shards, shard_root=shard_root, ray_address=ray_address,
                              ray_gpus_per_worker=ray_gpus_per_worker, requested=requested, workers=workers,
                              split_size=split_size, backbone=backbone, neuron_type=neuron_type, top_k=top_k,
                              max_length=max_length, batch_size=batch_size,
                              commit_every=commit_every, text_field=text_field, id_field=id_field,
                              token_field=token_field, text_template=text_template, limit=limit, strict=strict,
                              device=device, dtype=dtype, trust_remote_code=trust_remote_code,
                              nait=nait.identity() if nait is not None else None)  # JSON, to the shard workers
    if workers is not None:
        raise NagIndexError("--workers applies to sharded ingests (--shards N, or an index with a catalog); a "
                            "one-shard ingest has one writer")
    return ingest_folder(inputs, index_dir, backbone=backbone, neuron_type=neuron_type, top_k=top_k,
                         max_length=max_length, batch_size=batch_size, commit_every=commit_every,
                         text_field=text_field, id_field=id_field, token_field=token_field,
                         text_template=text_template, limit=limit, strict=strict, device=device, dtype=dtype,
                         trust_remote_code=trust_remote_code, ray_address=ray_address, ray_workers=ray_workers,
                         ray_gpus_per_worker=ray_gpus_per_worker, extractor=extractor, show_progress=show_progress,
                         nait=nait)


def extract_files(
    inputs: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    backbone: str = "smollm2-135m",
    neuron_types: Sequence[str] = ("fwd_up",),
    top_k: int = 20,
    max_length: int = 120,
    batch_size: int = 32,
    text_field: str = "auto",
    id_field: str = "auto",
    text_template: str | None = None,
    device: str = "auto",
    dtype: str | None = None,
    trust_remote_code: bool = False,
    extractor: "NagExtractor | None" = None,
    show_progress: bool | None = None,
) -> int:
    """Write the reference's feature JSONL for every document of ``inputs``, in input order.

    Unlike ``ingest``, any bad record (an empty document, or one ``text_template`` fails on,
    included) is an error naming its file, line and docid: a feature file must have a line per document.
    """
    from nagindex.fsio import atomic_path
    from nagindex.ingest.interop import write_feature_lines

    check_text_template(text_template, text_field)
    files = input_files(inputs)
    out = Path(out)
    clash = next((f for f in files if f.key == str(out.resolve())), None)
    if clash is not None:
        raise InputError(f"-o {out} is one of the inputs ({clash.source}): writing features there would destroy "
                         "it; choose another -o")
    if extractor is None:
        extractor = enc.build_extractor(backbone, neuron_types, top_k=top_k, max_length=max_length,
                                    batch_size=batch_size, device=device, dtype=dtype,
                                    trust_remote_code=trust_remote_code)
    fields = Fields(text_field, id_field, None, template=text_template)
    out.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    bar = progress_bar(estimate_records(files, {}), desc="extract", enabled=show_progress)
    rate = TokenRate(bar)
    try:
        with atomic_path(out) as tmp, open(tmp, "w", encoding="utf-8") as fh:  # a bad record: no output at all
            for item in files:
                groups = group_windows([(item.key, item.source, 0, read_input(item, fields=fields))],
                                       max(batch_size * 8, 64))
                for window in LocalEncoder(extractor).map(groups):
                    if window.rejects:
                        raise InputError(window.rejects[0].message())
                    write_feature_lines(fh, [d.docid for d in window.docs], window.codes)
                    written += len(window.docs)
                    rate.update(len(window.docs), int(window.token_counts.sum()))
    finally:
        bar.close()
    return written
