"""Dense activation features for NAIT (Chen et al. 2026, arXiv 2603.13201), taken in the NAG forward.

NAIT scores a document y against a target direction v_l per decoder layer: s_y = sum_l A_l(y) . v_l,
where the direction is the first principal component of the target examples' ΔA_l = A_l(last token)
- A_l(first token). Our reading, stated in the README ("NAIT"):

- ``site``: A_l is the *residual stream*, the hidden state a decoder block outputs (width d = hidden
  size: 576 for SmolLM2-135M, 2048 for Qwen3-1.7B); ``"mlp"`` reads the MLP's output instead (the
  down projection, also width d), the other reading of "neuron activation".
- ``vector``: what one index row keeps per layer. ``"last"`` is A_l(y) at the document's last real
  token (the causal LM's summary of the whole text), the paper's candidate activation; ``"delta"``
  keeps ΔA_l(y) = A_l(last) - A_l(first), the same quantity the direction is built from.

Both are one ``(L, d)`` vector per document, so any later direction scores it with one dot product
per layer: the LLM pass over the pool is done once, every target is a scan.

The extractor hooks the chosen module of every layer and keeps only two rows per document (first
and last real token, whatever the padding side), as float32 copies of the model's own values, so
converting them back to the index's dtype is exact.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from nagindex.errors import NagIndexError

SITES = ("residual", "mlp")
VECTORS = ("last", "delta")
FEATURES = ("nag", "nait")
#: keys of the extractor's output dict (beside the neuron types): ``(n, L, d)`` float32 each
FIRST, LAST = "nait_first", "nait_last"
DENSE_KEYS = (FIRST, LAST)


@dataclass(frozen=True)
class DenseSpec:
    """Which activation NAIT reads (``site``), which per-layer vector an index row keeps (``vector``) and,
    with ``dims``, its seeded random projection to ``dims`` values per layer (``projection``)."""

    site: str = "residual"
    vector: str = "last"
    dims: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.site not in SITES:
            raise NagIndexError(f"--nait-site {self.site!r}: choose from {', '.join(SITES)}")
        if self.vector not in VECTORS:
            raise NagIndexError(f"--nait-vector {self.vector!r}: choose from {', '.join(VECTORS)}")
        if self.dims is not None and self.dims < 1:
            raise NagIndexError(f"--nait-dims must be >= 1, got {self.dims}")

    def identity(self) -> dict[str, Any]:
        """What the manifest records under ``"nait"`` and an append must match (``dims``/``seed`` only
        for a projected index)."""
        record: dict[str, Any] = {"site": self.site, "vector": self.vector}
        if self.dims is not None:
            record.update(dims=self.dims, seed=self.seed)
        return record

    @classmethod
    def from_identity(cls, record: dict[str, Any]) -> DenseSpec:
        return cls(site=record["site"], vector=record["vector"], dims=record.get("dims"),
                   seed=record.get("seed", 0))


#: the ingest option behind each field of the NAIT identity (``DenseSpec.identity``)
OPTIONS = {"site": "--nait-site", "vector": "--nait-vector", "dims": "--nait-dims", "seed": "--nait-seed"}


def differing_options(have: dict[str, Any] | None, want: dict[str, Any] | None) -> str:
    """The ingest options two NAIT identities (None: NAG only) differ in, for an append's refusal:
    ``--features`` where one of them has no NAIT features, else ``--nait-site`` ... (``--nait-seed`` only
    between two projections)."""
    if (have is None) != (want is None):
        return "--features"
    have, want = have or {}, want or {}
    projected = have.get("dims") is not None and want.get("dims") is not None
    return ", ".join(option for key, option in OPTIONS.items()
                     if have.get(key) != want.get(key) and (key != "seed" or projected))


def as_spec(value: DenseSpec | dict[str, str] | None) -> DenseSpec | None:
    """A spec from itself or its ``identity()`` (the JSON form a sharded ingest sends its workers)."""
    return DenseSpec.from_identity(value) if isinstance(value, dict) else value


def parse_features(spec: str, site: str = "residual", vector: str = "last", dims: int | None = None,
                   seed: int = 0) -> DenseSpec | None:
    """``"nag"`` -> None (NAG only, the default); ``"nag,nait"`` -> the dense spec. NAG is always kept:
    it is the index's row record (docids, token counts, codes)."""
    items = [s.strip() for s in spec.split(",") if s.strip()]
    bad = [s for s in items if s not in FEATURES]
    if bad or "nag" not in items:
        raise NagIndexError(f"--features {spec!r}: a comma list of {', '.join(FEATURES)} that includes nag")
    if "nait" not in items:
        if dims is not None:
            raise NagIndexError("--nait-dims needs --features nag,nait")
        return None
    return DenseSpec(site, vector, dims, seed)


@lru_cache(maxsize=2)  # drawn once per ingest and query, not per window
def projection(spec: DenseSpec, num_layers: int, width: int) -> np.ndarray:
    """``(L, d, dims)`` float64 Gaussian matrices scaled by 1/sqrt(dims), from ``numpy.random.default_rng(seed)``:
    E[(a R)·(v R)] = a·v (Johnson-Lindenstrauss), so projected rows dotted with projected directions
    estimate the exact score. The same seed and shape give the same matrices for the ingest and every query."""
    rng = np.random.default_rng(spec.seed)
    return rng.standard_normal((num_layers, width, spec.dims)) / np.sqrt(spec.dims)


def project(rows: np.ndarray, spec: DenseSpec) -> np.ndarray:
    """``(n, L, d)`` -> ``(n, L, dims)`` with ``projection`` (rows unchanged without ``dims``), in float64."""
    if spec.dims is None:
        return rows
    matrices = projection(spec, rows.shape[-2], rows.shape[-1])
    return np.einsum("...ld,ldr->...lr", np.asarray(rows, dtype=np.float64), matrices)


def stored_vector(first: np.ndarray, last: np.ndarray, spec: DenseSpec) -> np.ndarray:
    """The ``(n, L, d or dims)`` rows an index keeps for ``spec`` (before rounding to its dtype)."""
    return project(last if spec.vector == "last" else last - first, spec)
