"""NAIT targets as directions, and the scorer that dots an index's dense rows with them.

Direction (Chen et al. 2026, sec. 3): per decoder layer l, the first principal component of the
target examples' ΔA_l = A_l(last token) - A_l(first token) (``encode.dense``: the activation the index
was ingested with, in its dtype), signed so that it points along the examples' mean ΔA_l. Exactly:

- ΔA_l is computed in float64 from the extractor's float32 copies of the model's values; the examples
  are centred by their mean; v_l is the first right singular vector of the centred ``(n, d)`` matrix
  (LAPACK ``gesdd`` through ``numpy.linalg.svd``), unit length.
- Sign: v_l . mean(ΔA_l) > 0. Where that product is 0 (a mean orthogonal to v_l, or 0), the entry
  of v_l with the largest magnitude (the first such index on a tie) is made positive.
- Fewer than two examples, or examples whose ΔA_l are all equal (nothing to centre), have no principal
  component: v_l is then mean(ΔA_l) normalised, and a layer where that is 0 too is an error.

Directions are cached per index and target like target NAGs (``target_nags.cached_array``; key: the
NAG key of the texts and settings plus the index's ``"nait"`` identity), so a second query loads no model.

Score: s_y = sum over the kept layers of A_l(y) . v_l, computed per row in float64 with a fixed
reduction order (an elementwise product, then numpy's pairwise sum over d, then over layers), so a
document's score never depends on the block or shard it is scanned in; the scan ranks by the key
``1 - s_y`` (``scan.ShardScan.keys``), a float key whose threshold is exact as ``--power`` keys are
(``rank.py``).
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nagindex.errors import NagIndexError

#: rows of dense features per scoring step: 1024 x 30 x 576 float64 is 142 MB (twice: rows and products)
DENSE_BLOCK = 1024


def principal_directions(deltas: np.ndarray) -> np.ndarray:
    """``(n, L, d)`` ΔA of the target examples -> ``(L, d)`` float64 unit directions (rules above)."""
    deltas = np.asarray(deltas, dtype=np.float64)
    if deltas.ndim != 3 or len(deltas) == 0:
        raise NagIndexError(f"NAIT directions need (examples, layers, width) activations, got {deltas.shape}")
    out = np.empty(deltas.shape[1:], dtype=np.float64)
    for layer in range(deltas.shape[1]):
        x = deltas[:, layer]
        mean = x.mean(axis=0)
        centred = x - mean
        if len(x) >= 2 and np.any(centred):
            v = np.linalg.svd(centred, full_matrices=False)[2][0]
        else:
            norm = np.linalg.norm(mean)
            if norm == 0:
                raise NagIndexError(f"NAIT: layer {layer}: the target's activation changes are all 0, no direction")
            v = mean / norm
        side = float(v @ mean)
        if side < 0 or (side == 0 and v[int(np.argmax(np.abs(v)))] < 0):
            v = -v
        out[layer] = v
    return out


def directions_key(texts: Sequence[str], manifest: dict[str, Any]) -> str:
    """The NAG cache key of the texts and settings (``target_nags.cache_key``) extended by the index's
    NAIT identity: other site or stored vector, other directions file."""
    from nagindex.query.target_nags import cache_key

    raw = cache_key(texts, manifest) + json.dumps(manifest.get("nait"), sort_keys=True)
    return hashlib.sha256(raw.encode()).hexdigest()[:32]


def target_directions(
    index_dir: str | os.PathLike, manifest: dict[str, Any], texts: Sequence[str], *, name: str = "",
    device: str = "auto", batch_size: int = 32, trust_remote_code: bool = False,
) -> np.ndarray:
    """``(L, d)`` float64 directions of a target's examples, computed once per index and target (an index
    projected to ``dims``: the directions found in the full width, then projected as its rows were)."""
    from nagindex.encode.dense import FIRST, LAST, DenseSpec, project
    from nagindex.index.dense import dense_layout
    from nagindex.query.target_nags import CACHE_DIR, cached_array, encode_examples

    dense_layout(manifest)  # an index without NAIT features is refused before any model loads
    spec = DenseSpec.from_identity(manifest["nait"])
    path = Path(index_dir) / CACHE_DIR / f"nait-{directions_key(texts, manifest)}.npy"

    def compute() -> np.ndarray:
        acts = encode_examples(index_dir, manifest, texts, path, name=name, device=device, batch_size=batch_size,
                               trust_remote_code=trust_remote_code, dense=spec)
        return project(principal_directions(acts[LAST].astype(np.float64) - acts[FIRST]), spec)

    return cached_array(path, f"target {name}: cached NAIT directions", compute)


def nait_scores(rows: np.ndarray, directions: np.ndarray, dtype: str) -> np.ndarray:
    """``(n, L', d)`` stored rows (the kept layers) and ``(P, L', d)`` directions -> ``(n, P)`` float64 scores.

    Per row the same operations in the same order whatever ``n``: exact across blocks and shards.
    """
    per_layer = layer_scores(rows, directions, dtype)
    out = np.empty((len(rows), len(directions)), dtype=np.float64)
    for p, scores in enumerate(per_layer):
        out[:, p] = scores.sum(axis=-1)
    return out


def layer_scores(rows: np.ndarray, directions: np.ndarray, dtype: str) -> np.ndarray:
    """``(P, n, L')`` per-layer terms A_l(y) . v_l of ``nait_scores`` (a row's terms sum to its score, in the
    same order): ``report``'s per-layer contributions."""
    from nagindex.index.dense import to_float32

    x = to_float32(np.asarray(rows), dtype).astype(np.float64)
    return np.stack([(x * v).sum(axis=-1) for v in directions]) if len(directions) else np.zeros((0, *x.shape[:2]))


class NaitScorer:
    """``scan.ShardScan``'s scorer for ``--method nait``: ``sums(rows, lo)`` over a shard's dense rows."""

    exact = False

    def __init__(self, path: Path, manifest: dict[str, Any], rows: int, directions: np.ndarray,
                 layers: Sequence[int]) -> None:
        from nagindex.index.dense import open_dense

        self.rows = open_dense(path, manifest, rows)  # what the scan slices instead of the codes
        self.dtype = manifest.get("dtype") or "float32"
        self.layers = np.asarray(layers, dtype=np.int64)
        self.directions = np.asarray(directions, dtype=np.float64)
        self.num_profiles = len(self.directions)
        self.norm = np.ones(self.num_profiles)  # keys are 1 - score: no normalisation

    def sums(self, rows: np.ndarray, _lo: int = 0) -> np.ndarray:
        """``(n, P)`` float64 NAIT scores of ``rows`` (``(n, L, d)`` stored), in blocks of ``DENSE_BLOCK``."""
        out = np.empty((len(rows), self.num_profiles), dtype=np.float64)
        for lo in range(0, len(rows), DENSE_BLOCK):
            block = np.asarray(rows[lo:lo + DENSE_BLOCK])[:, self.layers]
            out[lo:lo + DENSE_BLOCK] = nait_scores(block, self.directions, self.dtype)
        return out


METHODS = ("nag", "nait")


def require_nait(manifest: dict[str, Any], index_dir: str | os.PathLike) -> None:
    """``--method nait`` on an index ingested without ``--features nag,nait`` is refused, naming the index
    (before any model loads)."""
    if not manifest.get("nait"):
        raise NagIndexError(f"--method nait: index {index_dir} holds no NAIT features: ingest it with "
                            "--features nag,nait")


def check_method(spec: Any) -> None:
    """``QuerySpec.method``: the options a NAIT query cannot honour are refused, not ignored."""
    if spec.method not in METHODS:
        raise NagIndexError(f"--method {spec.method!r}: choose one of {', '.join(METHODS)}")
    if spec.method == "nag":
        return
    refused = [name for name, on in (("--approx", spec.approx), ("--power", spec.power != 1.0),
                                     ("--weighting", spec.weighting != "none")) if on]
    refused += [f"--target-features {t.value}" for t in spec.targets if t.kind == "features"]
    if refused:
        raise NagIndexError(f"--method nait scores dense activations, not NAGs: {', '.join(refused)} "
                            "applies to --method nag only")



def describe_directions(target: Any, index_dir: str | os.PathLike, top: int = 5) -> list[str]:
    """``targets show --method nait``: a target's directions in the index (computed once, cached), as lines:
    per layer, its ``top`` largest coordinates by magnitude and how much of the direction they carry.
    ``target``: a registry name, a ``{"file": ..., "filter": ...}`` mapping or a ``TargetRequest``."""
    from nagindex.index.sharded import open_index
    from nagindex.query.request import as_targets
    from nagindex.query.target import load_examples

    manifest = open_index(index_dir).manifest
    require_nait(manifest, index_dir)
    request = as_targets(target)[0]
    name = request.display
    ts = load_examples(request)
    directions = target_directions(index_dir, manifest, ts.texts, name=name)
    lines = [f"{name}: NAIT directions of {len(ts.texts):,} examples from {ts.source} in {index_dir} "
             f"({directions.shape[0]} layers x {directions.shape[1]}, {manifest['nait']})"]
    for layer, v in enumerate(directions):
        big = np.argsort(-np.abs(v), kind="stable")[:top]
        share = float(np.sum(v[big] ** 2))
        lines.append(f"layer {layer:>3}: " + ", ".join(f"{int(i)}:{v[i]:+.3f}" for i in big)
                     + f"  ({share:.0%} of the squared norm)")
    return lines
