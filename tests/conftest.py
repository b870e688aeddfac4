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
