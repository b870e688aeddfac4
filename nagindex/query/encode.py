"""Target examples -> NAG codes with the index's own backbone, cached inside the index.

A target's NAGs must come from the backbone and settings the corpus was encoded
with, so they are computed from the index manifest, never from CLI flags. The
result is cached in ``INDEX/targets/<key>.npy`` keyed by the texts' content and
those settings: a second query with the same target loads no model (and does
not import torch at all).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from nagindex.errors import NagIndexError

log = logging.getLogger(__name__)

CACHE_DIR = "targets"
_SETTINGS = ("backbone", "weights_sha256", "neuron_type", "num_layers", "top_k", "max_length")


def cache_key(texts: Sequence[str], manifest: dict[str, Any]) -> str:
    """sha256 over the settings and the length-prefixed texts (order matters: codes are per example)."""
    h = hashlib.sha256(json.dumps({k: manifest.get(k) for k in _SETTINGS}, sort_keys=True).encode())
    for text in texts:
        raw = text.encode("utf-8")
        h.update(len(raw).to_bytes(8, "little"))
        h.update(raw)
    return h.hexdigest()[:32]


def target_codes(
    index_dir: str | os.PathLike, manifest: dict[str, Any], texts: Sequence[str], *, name: str = "",
    device: str = "auto", dtype: str | None = None, batch_size: int = 32, trust_remote_code: bool = False,
) -> np.ndarray:
    """``(T, L, K)`` uint16 NAGs of ``texts`` (examples with no tokens are dropped, as in ingest)."""
    path = Path(index_dir) / CACHE_DIR / f"{cache_key(texts, manifest)}.npy"
    if path.is_file():
        log.info("target %s: cached NAGs %s", name, path.name)
        return np.load(path, allow_pickle=False)
    if not manifest.get("backbone"):
        raise NagIndexError(
            f"index {index_dir} records no backbone (imported features), so target texts cannot be encoded: "
            "pass --target-features (reference-format features of the target docs), or import with --backbone"
        )
    from nagindex.ingest.run import build_extractor

    extractor = build_extractor(manifest["backbone"], [manifest["neuron_type"]], top_k=manifest["top_k"],
                                max_length=manifest["max_length"], batch_size=batch_size, device=device,
                                dtype=dtype, trust_remote_code=trust_remote_code)
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
    codes = extractor.codes(kept)[manifest["neuron_type"]]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, codes, allow_pickle=False)
    os.replace(tmp, path)
    return codes
