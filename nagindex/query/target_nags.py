"""Target examples -> NAG codes with the index's own backbone, cached inside the index.

A target's NAGs must come from the backbone and settings the corpus was encoded
with, so they are computed from the index manifest, never from CLI flags. The
result is cached in ``INDEX/targets/<key>.npy`` keyed by the texts' content and
those settings: a second query with the same target loads no model (and does
not import torch at all).

A cache miss on a large target is the one slow step of a first query (HellaSwag's
10,042 examples take over 10 minutes on a 2-core CPU), so it is announced before
the model loads, then reported as it goes, in logs too (``nagindex.progress``).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from nagindex.errors import NagIndexError
from nagindex.fsio import atomic_path
from nagindex.progress import format_duration, notice, progress_bar

if TYPE_CHECKING:
    from nagindex.encode.dense import DenseSpec

log = logging.getLogger(__name__)

CACHE_DIR = "targets"
_SETTINGS = ("backbone", "weights_sha256", "neuron_type", "num_layers", "top_k", "max_length")
#: settings keyed only where the manifest records them, so older indexes keep their cached targets' keys
_RECORDED_SETTINGS = ("dtype",)
#: from this many examples on, the announcement suggests --max-examples (BENCHMARKS.md, target-set stability)
SAMPLE_HINT_MIN = 1000
#: batches per progress step: small enough for frequent progress, large enough to keep batches full
SLICE_BATCHES = 8


def cache_key(texts: Sequence[str], manifest: dict[str, Any]) -> str:
    """sha256 over the settings and the length-prefixed texts (order matters: codes are per example).

    The dtype is keyed because bfloat16 and float32 give other NAGs; an index that records
    none (built before it was recorded) keeps the key it always had.
    """
    settings = {k: manifest.get(k) for k in _SETTINGS}
    settings.update({k: manifest[k] for k in _RECORDED_SETTINGS if manifest.get(k) is not None})
    h = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for text in texts:
        raw = text.encode("utf-8")
        h.update(len(raw).to_bytes(8, "little"))
        h.update(raw)
    return h.hexdigest()[:32]


def target_codes(
    index_dir: str | os.PathLike, manifest: dict[str, Any], texts: Sequence[str], *, name: str = "",
    device: str = "auto", dtype: str | None = None, batch_size: int = 32, trust_remote_code: bool = False,
) -> np.ndarray:
    """``(T, L, K)`` uint16 NAGs of ``texts`` (examples with no tokens are dropped, as in ingest).

    They are encoded in the index's dtype, whatever this machine's default: a bfloat16
    index queried on a CPU still gets bfloat16 target NAGs. ``dtype`` is used only for
    an index that records none (built before dtypes were recorded).
    """
    path = Path(index_dir) / CACHE_DIR / f"{cache_key(texts, manifest)}.npy"
    return cached_array(path, f"target {name}: cached NAGs", lambda: encode_examples(
        index_dir, manifest, texts, path, name=name, device=device, dtype=dtype, batch_size=batch_size,
        trust_remote_code=trust_remote_code)[manifest["neuron_type"]])


def cached_array(path: Path, what: str, compute: Callable[[], np.ndarray]) -> np.ndarray:
    """``path`` (``.npy``) if a query wrote it, else ``compute()`` saved there atomically: concurrent
    queries may compute the same target, and a reader never sees half a file."""
    if path.is_file():
        log.info("%s %s", what, path.name)
        return np.load(path, allow_pickle=False)
    out = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, out, allow_pickle=False)
    return out


def encode_examples(
    index_dir: str | os.PathLike, manifest: dict[str, Any], texts: Sequence[str], path: Path, *, name: str = "",
    device: str = "auto", dtype: str | None = None, batch_size: int = 32, trust_remote_code: bool = False,
    dense: "DenseSpec | None" = None,
) -> dict[str, np.ndarray]:
    """The extractor's outputs for ``texts`` (NAGs; with ``dense``, NAIT's activations too), with the
    index's backbone and settings, announced as a once-per-index step cached at ``path``."""
    if not manifest.get("backbone"):
        raise NagIndexError(
            f"index {index_dir} records no backbone (imported features), so target texts cannot be encoded: "
            "pass --target-features (reference-format features of the target docs), or import with --backbone"
        )
    from nagindex.encode.encoder import build_extractor
    from nagindex.models import resolve_device

    label = f"target {name}" if name else "target"
    on = resolve_device(device)
    if manifest.get("dtype"):
        dtype = manifest["dtype"]
    else:
        log.warning("index %s does not record its dtype: target %s is encoded in %s, which may differ from "
                    "the corpus's", index_dir, name, dtype or "this device's default")
    hint = ("; --max-examples 200 reproduces the full set's top 20% at Jaccard 0.89-0.97 (BENCHMARKS.md)"
            if len(texts) > SAMPLE_HINT_MIN else "")
    notice(f"{label}: encoding {len(texts):,} examples with {manifest['backbone']} on {on}"
           f"{' in ' + dtype if dtype else ''}, "
           f"once per index and target (cached in {path.parent}){hint}")
    extractor = build_extractor(manifest["backbone"], [manifest["neuron_type"]], top_k=manifest["top_k"],
                                max_length=manifest["max_length"], batch_size=batch_size, device=device,
                                dtype=dtype, trust_remote_code=trust_remote_code, dense=dense)
    if extractor.backbone.weights_sha256 and manifest.get("weights_sha256") not in (None, "",
                                                                                    extractor.backbone.weights_sha256):
        raise NagIndexError(f"backbone {manifest['backbone']!r} now has other weights than the index was built "
                            "with (weights_sha256 differs): its target NAGs would not be comparable")
    ids, _ = extractor.tokenize(list(texts))
    kept = [seq for seq in ids if seq]
    if len(kept) < len(ids):
        log.warning("target %s: %d examples have no tokens and are dropped", name, len(ids) - len(kept))
    if not kept:
        raise NagIndexError(f"target {name}: no example has any token")
    return _encode(extractor, kept, label, str(on))


def _encode(extractor: Any, seqs: list[list[int]], label: str, on: str) -> dict[str, np.ndarray]:
    """``extractor.codes(seqs)``, computed in slices so progress can be shown.

    The slices follow the extractor's own longest-first order, so each slice is a run of
    the batches one call would make: the codes are bit-identical to one call's. Work
    tracks tokens, not examples (the longest come first), so the bar counts tokens and
    the estimate after the first slice scales its time by the tokens left.
    """
    lengths = np.fromiter(map(len, seqs), dtype=np.int64, count=len(seqs))
    order = np.argsort(-lengths, kind="stable")
    step = extractor.batch_size * SLICE_BATCHES
    total = int(lengths.sum())
    out: dict[str, np.ndarray] = {}
    bar = progress_bar(total=total, desc=label, unit="tok")
    start = time.perf_counter()
    try:
        for lo in range(0, len(seqs), step):
            rows = order[lo : lo + step]
            for key, part in extractor.codes([seqs[i] for i in rows]).items():
                if key not in out:
                    out[key] = np.empty((len(seqs), *part.shape[1:]), dtype=part.dtype)
                out[key][rows] = part
            bar.set_postfix_str(f"{lo + len(rows):,}/{len(seqs):,} ex", refresh=False)
            bar.update(int(lengths[rows].sum()))
            if lo == 0 and len(rows) < len(seqs):
                seconds = (time.perf_counter() - start) * total / int(lengths[rows].sum())
                notice(f"{label}: about {format_duration(seconds)} for {len(seqs):,} examples "
                       f"({total:,} tokens) on {on}")
    finally:
        bar.close()
    return out
