"""Reading the reference's feature files (asillycat/NAG), fast and with every bad line named.

A reference feature line is
``{"docid": "...", "fwd_up_feature": {"layer_topk_value_index": [L*K ints]}}``
(layer-major; parquet: the same columns, or a flat list column). ``interop.py``
builds an index from them (import) and writes them back (export).

Speed: JSONL is parsed by Arrow in blocks of whole lines (exact line numbers
known), parquet by record batch; validation is vectorised and the per-line
Python parser only runs for a block Arrow refuses, to name each bad line.
"""
from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nagindex.data import Reject
from nagindex.errors import InputError
from nagindex.sources.inputs import InputFile, input_files, network_error
from nagindex.sources.read import open_binary, open_parquet, stream_errors

logger = logging.getLogger(__name__)

INDEX_KEY = "layer_topk_value_index"
_BLOCK_BYTES = 32 << 20
JSON_KINDS = ("jsonl", "jsonl.gz", "jsonl.zst")


@dataclass(frozen=True, slots=True)
class FeatureSpec:
    column: str  # "<type>_feature"
    num_layers: int
    top_k: int
    width: int
    id_field: str = "docid"
    token_field: str | None = None


@dataclass(slots=True)
class FeatureBatch:
    """Valid rows of one block of a feature file, its rejects and the resume cursor after it."""

    docids: list[str]
    codes: np.ndarray  # (n, L, K) uint16
    positions: np.ndarray  # (n,) int64
    tokens: np.ndarray  # (n,) int64, -1 where the file gave none
    next_position: int
    rejects: list[Reject] = field(default_factory=list)


# ---------------------------------------------------------------- validation (vectorised)
def _index_lists(feat: Any) -> tuple[Any, np.ndarray]:
    """The per-row index lists of a feature column (struct or flat list) and their validity."""
    import pyarrow as pa

    valid = feat.is_valid().to_numpy(zero_copy_only=False)
    if pa.types.is_struct(feat.type):
        if feat.type.get_field_index(INDEX_KEY) < 0:
            raise TypeError(f"struct has no {INDEX_KEY!r} field")
        feat = feat.field(INDEX_KEY)
        valid &= feat.is_valid().to_numpy(zero_copy_only=False)
    if not (pa.types.is_list(feat.type) or pa.types.is_large_list(feat.type) or pa.types.is_fixed_size_list(feat.type)):
        raise TypeError(f"{feat.type} is not a list of neuron indices")
    return feat, valid


def _validate(docids: Any, feat: Any, tokens: Any, positions: np.ndarray, source: str, spec: FeatureSpec,
              next_position: int) -> FeatureBatch:
    """Vectorised checks of one Arrow batch; bad rows become rejects naming file, line and reason."""
    import pyarrow as pa
    import pyarrow.compute as pc

    n, lk = len(docids), spec.num_layers * spec.top_k
    reasons: dict[int, str] = {}
    if pa.types.is_integer(docids.type):
        docids = pc.cast(docids, pa.string())
    if not (pa.types.is_string(docids.type) or pa.types.is_large_string(docids.type)):
        docids, bad_ids = pa.nulls(n, pa.string()), f"{spec.id_field!r} is {docids.type}, not a string"
    else:
        bad_ids = f"missing or empty {spec.id_field!r}"
    id_ok = pc.fill_null(pc.binary_length(docids), 0).to_numpy(zero_copy_only=False) > 0
    try:
        lists, ok = _index_lists(feat)
        lengths = pc.fill_null(pc.list_value_length(lists), -1).to_numpy(zero_copy_only=False)
        if not pa.types.is_integer(lists.type.value_type):
            raise TypeError(f"neuron indices are {lists.type.value_type}, not integers")
    except TypeError as exc:
        lists, ok, lengths = None, np.zeros(n, bool), np.full(n, -1)
        reasons.update(dict.fromkeys(range(n), f"{spec.column!r}: {exc}"))
    for i in np.flatnonzero(~ok):
        reasons.setdefault(int(i), f"missing {spec.column!r}.{INDEX_KEY}")
    for i in np.flatnonzero(ok & (lengths != lk)):
        reasons[int(i)] = f"{spec.column!r} has {lengths[i]} indices, expected L*K = {lk}"
    ok &= lengths == lk
    codes = np.zeros((0, lk), np.uint16)
    if lists is not None and ok.any():
        good = lists if ok.all() else lists.filter(pa.array(ok))
        flat = good.flatten()
        if flat.null_count:
            for i, j in enumerate(np.flatnonzero(ok)):
                if None in good[i].as_py():
                    reasons[int(j)] = f"{spec.column!r} holds a null index"
            flat = pc.fill_null(flat, -1)
        values = flat.to_numpy(zero_copy_only=False).reshape(-1, lk)
        if values.min() < 0 or values.max() >= spec.width:  # per-row check only when needed
            in_range = ((values >= 0) & (values < spec.width)).all(axis=1)
            for j in np.flatnonzero(ok)[~in_range]:
                reasons.setdefault(int(j), f"{spec.column!r} has a neuron index outside [0, {spec.width})")
        codes = values.astype(np.uint16)
        codes_rows = np.flatnonzero(ok)
    tok = np.full(n, -1, np.int64)
    if tokens is not None:
        try:
            tok = np.array(pc.fill_null(pc.cast(tokens, pa.int64()), -1), dtype=np.int64)  # writable copy
            bad_tok = np.flatnonzero((tok < 0) & tokens.is_valid().to_numpy(zero_copy_only=False))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            bad_tok = np.arange(n)
        for i in bad_tok:
            reasons.setdefault(int(i), f"token field {spec.token_field!r} is not a non-negative integer")
    for i in np.flatnonzero(~id_ok):
        reasons[int(i)] = bad_ids
    ids = docids.to_pylist()
    shape = (-1, spec.num_layers, spec.top_k)
    if not reasons:  # the common case: no copies
        return FeatureBatch(ids, codes.reshape(shape), positions, tok, next_position, [])
    keep = np.ones(n, bool)
    keep[list(reasons)] = False
    rejects = [Reject(source, int(positions[i]), reasons[i], ids[i]) for i in sorted(reasons)]
    if lists is not None and ok.any():
        codes = codes[keep[codes_rows]]
    kept = np.flatnonzero(keep)
    return FeatureBatch([ids[i] for i in kept], codes.reshape(shape), positions[kept], tok[kept], next_position, rejects)


# ---------------------------------------------------------------- JSONL
def line_blocks(item: InputFile, start: int) -> Iterator[tuple[int, int, bytes] | Reject]:
    """``(first_line, n_lines, bytes)`` blocks of whole lines from line ``start`` on."""
    line_no, rest = 0, b""
    with open_binary(item) as fh:
        try:
            while True:
                parts, size = [rest], len(rest)
                while size < _BLOCK_BYTES and (data := fh.read(min(1 << 20, _BLOCK_BYTES))):
                    parts.append(data)
                    size += len(data)
                buf = b"".join(parts)
                eof = size == len(rest)
                cut = len(buf) if eof else buf.rfind(b"\n") + 1
                if not eof and cut == 0:  # one line longer than a block: keep reading
                    rest = buf
                    continue
                block, rest = buf[:cut], buf[cut:]
                n = block.count(b"\n") + (1 if block and not block.endswith(b"\n") else 0)
                skip = min(n, max(0, start - line_no))
                if skip:
                    at = -1
                    for _ in range(skip):
                        at = block.find(b"\n", at + 1)
                    block = block[at + 1:] if at >= 0 else b""
                if n > skip:
                    yield line_no + skip, n - skip, block
                line_no += n
                if eof:
                    return
        except stream_errors() as exc:
            yield Reject(item.source, max(line_no, start), f"corrupt or truncated file from here on: {exc}")


def _reference_block(block: bytes, first: int, spec: FeatureSpec) -> FeatureBatch | None:
    """The reference's own line layout, parsed with ``np.fromstring`` (~5x Arrow's JSON reader).

    Accepts only lines shaped exactly like the reference writes them, all valid; any
    doubt returns None and the exact parsers below take the block.
    """
    import warnings

    if spec.token_field and f'"{spec.token_field}"'.encode() in block:
        return None
    key, lk = f'"{spec.column}": {{"{INDEX_KEY}": ['.encode(), spec.num_layers * spec.top_k
    lines = block.split(b"\n")
    if lines and not lines[-1]:
        lines.pop()
    ids, segments, positions = [], [], []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        end = line.find(b'"', 11)
        if not line.startswith(b'{"docid": "') or end <= 11 or b"\\" in line[11:end]:
            return None
        start = line.find(key, end)
        stop = line.find(b"]", start)
        if start < 0 or stop < 0 or line[stop + 1:stop + 2] != b"}" or not line.rstrip().endswith(b"}"):
            return None
        try:
            ids.append(line[11:end].decode("utf-8"))
        except UnicodeDecodeError:
            return None
        segments.append(line[start + len(key):stop])
        positions.append(first + i)
    if any(seg.count(b",") != lk - 1 for seg in segments):
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy warns (not raises) where parsing stops early
        try:
            values = np.fromstring(b",".join(segments), dtype=np.int64, sep=",")
        except (ValueError, DeprecationWarning):
            return None
    if values.size != lk * len(ids) or (values.size and (values.min() < 0 or values.max() >= spec.width)):
        return None
    n = len(ids)
    return FeatureBatch(ids, values.astype(np.uint16).reshape(n, spec.num_layers, spec.top_k),
                        np.asarray(positions, np.int64), np.full(n, -1, np.int64), first + len(lines))


def _fast_block(block: bytes, first: int, n_lines: int, source: str, spec: FeatureSpec) -> FeatureBatch | None:
    import io

    import pyarrow as pa
    import pyarrow.json as pj

    fields = [(spec.id_field, pa.string()), (spec.column, pa.struct([(INDEX_KEY, pa.list_(pa.int64()))]))]
    if spec.token_field:
        fields.append((spec.token_field, pa.int64()))
    options = pj.ParseOptions(explicit_schema=pa.schema(fields), unexpected_field_behavior="ignore")
    try:
        table = pj.read_json(io.BytesIO(block), read_options=pj.ReadOptions(block_size=1 << 24), parse_options=options)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
    if table.num_rows != n_lines:  # blank lines: row numbers would not be line numbers
        return None
    tokens = table.column(spec.token_field).combine_chunks() if spec.token_field else None
    positions = np.arange(first, first + n_lines, dtype=np.int64)
    return _validate(table.column(spec.id_field).combine_chunks(), table.column(spec.column).combine_chunks(),
                     tokens, positions, source, spec, first + n_lines)


def _slow_block(block: bytes, first: int, source: str, spec: FeatureSpec) -> FeatureBatch:
    """Line-by-line parsing, to name every bad line exactly."""
    import pyarrow as pa

    ids, feats, toks, pos, rejects = [], [], [], [], []
    lines = block.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            obj = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            rejects.append(Reject(source, first + i, f"malformed JSON line: {exc}"))
            continue
        if not isinstance(obj, dict):
            rejects.append(Reject(source, first + i, "line is not a JSON object"))
            continue
        docid, feat = obj.get(spec.id_field), obj.get(spec.column)
        if isinstance(feat, dict):
            feat = feat.get(INDEX_KEY)
        tok = obj.get(spec.token_field) if spec.token_field else None
        if isinstance(docid, bool) or not isinstance(docid, (str, int)):
            rejects.append(Reject(source, first + i, f"{spec.id_field!r} is missing or not a string or integer"))
            continue
        if not isinstance(feat, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in feat):
            rejects.append(Reject(source, first + i, f"missing or non-integer {spec.column!r}.{INDEX_KEY}", str(docid)))
            continue
        if tok is not None and (isinstance(tok, bool) or not isinstance(tok, int) or tok < 0):
            rejects.append(Reject(source, first + i, f"token field {spec.token_field!r} is not a non-negative integer",
                                  str(docid)))
            continue
        ids.append(str(docid))
        feats.append(feat)
        toks.append(tok)
        pos.append(first + i)
    batch = _validate(pa.array(ids, pa.string()), pa.array(feats, pa.list_(pa.int64())),
                      pa.array(toks, pa.int64()) if spec.token_field else None,
                      np.asarray(pos, np.int64), source, spec, first + len(lines))
    batch.rejects = sorted(rejects + batch.rejects, key=lambda r: r.position or 0)
    return batch


def _reject_batch(spec: FeatureSpec, reject: Reject, next_position: int) -> FeatureBatch:
    """A batch with no rows: a file-level problem, and where reading stopped."""
    return FeatureBatch([], np.zeros((0, spec.num_layers, spec.top_k), np.uint16), np.zeros(0, np.int64),
                        np.zeros(0, np.int64), next_position, [reject])


def _jsonl_batches(item: InputFile, spec: FeatureSpec, start: int) -> Iterator[FeatureBatch]:
    for block in line_blocks(item, start):
        if isinstance(block, Reject):
            yield _reject_batch(spec, block, block.position or 0)
            return
        first, n_lines, data = block
        yield (_reference_block(data, first, spec) or _fast_block(data, first, n_lines, item.source, spec)
               or _slow_block(data, first, item.source, spec))


# ---------------------------------------------------------------- parquet
def _parquet_batches(item: InputFile, spec: FeatureSpec, start: int) -> Iterator[FeatureBatch]:
    import pyarrow as pa

    def empty(pos: int, why: str) -> FeatureBatch:
        return _reject_batch(spec, Reject(item.source, pos or None, why), pos)

    with ExitStack() as stack:
        pf, why = open_parquet(item, stack)
        if why:
            yield empty(0, why)
            return
        names = pf.schema_arrow.names
        missing = [c for c in (spec.id_field, spec.column) if c not in names]
        if missing:
            yield empty(0, f"missing column(s) {missing} (columns: {names})")
            return
        columns = [spec.id_field, spec.column] + ([spec.token_field] if spec.token_field in names else [])
        first = 0
        for group in range(pf.num_row_groups):
            rows = pf.metadata.row_group(group).num_rows
            if first + rows <= start:
                first += rows
                continue
            try:
                for batch in pf.iter_batches(batch_size=65536, row_groups=[group], columns=columns):
                    skip = max(0, start - first)
                    b = batch.slice(skip)
                    tokens = b.column(spec.token_field) if spec.token_field in names else None
                    yield _validate(b.column(spec.id_field), b.column(spec.column), tokens,
                                    np.arange(first + skip, first + batch.num_rows, dtype=np.int64),
                                    item.source, spec, first + batch.num_rows)
                    first += batch.num_rows
            except (pa.ArrowException, OSError) as exc:
                if network_error(item, exc):
                    raise
                yield empty(first, f"corrupt parquet data from here on: {exc}")
                return


def feature_batches(item: InputFile, spec: FeatureSpec, start: int) -> Iterator[FeatureBatch]:
    if item.kind in JSON_KINDS:
        return _jsonl_batches(item, spec, start)
    if item.kind == "parquet":
        return _parquet_batches(item, spec, start)
    raise InputError(f"{item.source}: feature files must be .jsonl[.gz|.zst] or .parquet")


def prefetch(batches: Iterator[FeatureBatch], depth: int = 2) -> Iterator[FeatureBatch]:
    """Decode the next batches in a thread (Arrow releases the GIL) while the caller commits."""
    import queue
    import threading

    q: queue.Queue[Any] = queue.Queue(depth)
    stop, done = threading.Event(), object()

    def put(item: Any) -> bool:  # never blocks forever: the consumer may have gone away
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for batch in batches:
                if not put(batch):
                    return
            put(done)
        except BaseException as exc:  # re-raised in the consumer
            put(exc)

    thread = threading.Thread(target=work, name="nagindex-feature-reader", daemon=True)
    thread.start()
    try:
        while (item := q.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join()


def read_features(paths: str | os.PathLike | Sequence[str | os.PathLike], neuron_type: str = "fwd_up", *,
                  num_layers: int, top_k: int, width: int = 65536) -> Iterator[tuple[str, np.ndarray] | Reject]:
    """Every ``(docid, codes (L, K) uint16)`` of reference feature files, or a ``Reject`` per bad line."""
    spec = FeatureSpec(f"{neuron_type}_feature", num_layers, top_k, width)
    for item in input_files(paths):
        for batch in feature_batches(item, spec, 0):
            rows = [(int(p), (d, c)) for p, d, c in zip(batch.positions, batch.docids, batch.codes)]
            rows += [(r.position if r.position is not None else -1, r) for r in batch.rejects]
            yield from (value for _, value in sorted(rows, key=lambda pair: pair[0]))
