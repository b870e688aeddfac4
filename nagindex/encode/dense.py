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
    """Which activation NAIT reads (``site``) and which per-layer vector an index row keeps (``vector``)."""

    site: str = "residual"
    vector: str = "last"

    def __post_init__(self) -> None:
        if self.site not in SITES:
            raise NagIndexError(f"--nait-site {self.site!r}: choose from {', '.join(SITES)}")
        if self.vector not in VECTORS:
            raise NagIndexError(f"--nait-vector {self.vector!r}: choose from {', '.join(VECTORS)}")

    def identity(self) -> dict[str, str]:
        """What the manifest records under ``"nait"`` and an append must match."""
        return {"site": self.site, "vector": self.vector}

    @classmethod
    def from_identity(cls, record: dict[str, Any]) -> DenseSpec:
        return cls(site=record["site"], vector=record["vector"])


def as_spec(value: DenseSpec | dict[str, str] | None) -> DenseSpec | None:
    """A spec from itself or its ``identity()`` (the JSON form a sharded ingest sends its workers)."""
    return DenseSpec.from_identity(value) if isinstance(value, dict) else value


def parse_features(spec: str, site: str = "residual", vector: str = "last") -> DenseSpec | None:
    """``"nag"`` -> None (NAG only, the default); ``"nag,nait"`` -> the dense spec. NAG is always kept:
    it is the index's row record (docids, token counts, codes)."""
    items = [s.strip() for s in spec.split(",") if s.strip()]
    bad = [s for s in items if s not in FEATURES]
    if bad or "nag" not in items:
        raise NagIndexError(f"--features {spec!r}: a comma list of {', '.join(FEATURES)} that includes nag")
    return DenseSpec(site, vector) if "nait" in items else None


def stored_vector(first: np.ndarray, last: np.ndarray, spec: DenseSpec) -> np.ndarray:
    """The ``(n, L, d)`` float32 rows an index keeps for ``spec.vector`` (before rounding to its dtype)."""
    return last if spec.vector == "last" else last - first
