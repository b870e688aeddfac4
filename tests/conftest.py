"""Shared fixtures: the golden reference outputs and a tiny backbone loaded once."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

# Tests run offline (CI has no network). Set before any test imports `datasets` or `huggingface_hub`,
# which read these once at import: set later, they would retry unreachable hub URLs for minutes.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"

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


@pytest.fixture(scope="module")
def ray_cluster():
    """A private Ray cluster for one test module (never one already running on the machine)."""
    ray = pytest.importorskip("ray")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


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


# ---- query fixtures (profile / score / select golden parity)
@pytest.fixture(scope="session")
def golden_ranking(golden_dir: Path) -> dict:
    """The golden fwd_up NAGs and payloads, pool and target, in feature-file order.

    Keys: ``pool_ids``/``target_ids`` (lists of str), ``pool_codes``/``target_codes``
    ``(n, 4, 8)`` uint16, ``target_sets`` (name -> bool mask: sci_target,
    story_target, all), ``tokens`` and ``quality`` (pool arrays), ``ranking``
    (the ``ranking/`` folder).
    """
    import json

    import numpy as np
    import pandas as pd

    def features(split: str) -> tuple[list[str], np.ndarray]:
        lines = (golden_dir / "features_fwd_up_only" / split / f"{split}.jsonl").read_text().splitlines()
        rows = [json.loads(line) for line in lines]
        codes = [r["fwd_up_feature"]["layer_topk_value_index"] for r in rows]
        return [r["docid"] for r in rows], np.asarray(codes, dtype=np.uint16).reshape(len(rows), 4, 8)

    pool_ids, pool_codes = features("pool")
    target_ids, target_codes = features("target")
    pool = pd.read_parquet(golden_dir / "data" / "pool" / "pool.parquet").set_index("docid").loc[pool_ids]
    target = pd.read_parquet(golden_dir / "data" / "target" / "target.parquet").set_index("docid").loc[target_ids]
    dataset = target["dataset"].to_numpy()
    return {
        "pool_ids": pool_ids, "pool_codes": pool_codes,
        "target_ids": target_ids, "target_codes": target_codes,
        "target_sets": {"sci_target": dataset == "sci_target", "story_target": dataset == "story_target",
                        "all": np.ones(len(dataset), dtype=bool)},
        "tokens": pool["token_num"].to_numpy(), "quality": pool["quality"].to_numpy(dtype=float),
        "ranking": golden_dir / "ranking",
    }
