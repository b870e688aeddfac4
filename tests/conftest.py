"""Shared fixtures: the golden reference outputs and a tiny backbone loaded once."""
from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO.parent / "shared" / "fixtures" / "nag-golden"


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    """The reference implementation's outputs (``../shared`` beside the repo, as in CI)."""
    if not GOLDEN.is_dir():
        pytest.fail(f"golden fixture not found at {GOLDEN}: clone with ../shared beside the repo")
    return GOLDEN


@pytest.fixture(scope="session")
def tiny_backbone(golden_dir: Path):
    """The golden fixture's random 4-layer Qwen3, on CPU float32 (the reference's exact setting)."""
    from nagindex.models import load_backbone

    return load_backbone(str(golden_dir / "model"), device="cpu", dtype="float32")


# ---- ingest storage fixtures (store / index / features tests)
TINY_MANIFEST = {"backbone": "dummy", "weights_sha256": None, "neuron_type": "fwd_up", "num_layers": 4,
                 "width": 256, "top_k": 8, "max_length": 64}


@pytest.fixture
def tiny_manifest() -> dict:
    """Settings of a tiny index: L=4, K=8, width 256 (the golden fixture's)."""
    return dict(TINY_MANIFEST)


def random_codes(rng, n: int, num_layers: int = 4, top_k: int = 8, width: int = 256):
    """Seeded NAGs ``(n, L, K)`` uint16: per layer K distinct neurons, like a real top-K."""
    import numpy as np

    return np.argsort(-rng.random((n, num_layers, width)), axis=2)[:, :, :top_k].astype(np.uint16)


@pytest.fixture
def make_codes():
    """``make_codes(rng, n, L=4, K=8, width=256)`` -> seeded NAGs."""
    return random_codes
