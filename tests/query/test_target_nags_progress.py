"""Encoding a target on a cache miss says what is about to happen and how far it got, in logs too."""
from __future__ import annotations

import numpy as np
import pytest

from nagindex.query import target_nags as encode

WORDS = "plants water train heart beach fox river forest sunlight energy leaves pressure hour organ waves".split()


@pytest.fixture
def tiny_target(tiny_backbone, golden_dir, tmp_path, monkeypatch):
    """(index dir, manifest, extractor, 40 texts of 1 to 40 words): 3 slices of 16 at batch size 2."""
    from nagindex.encode import encoder
    from nagindex.encode.extract import NagExtractor

    ex = NagExtractor(tiny_backbone, top_k=8, max_length=64, batch_size=2)
    monkeypatch.setattr(encoder, "build_extractor", lambda *a, **k: ex)
    monkeypatch.setenv("NAGINDEX_PROGRESS_INTERVAL", "0")
    manifest = {"backbone": str(golden_dir / "model"), "weights_sha256": None, "neuron_type": "fwd_up",
                "num_layers": 4, "top_k": 8, "max_length": 64}
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(WORDS, size=n)) for n in rng.permutation(np.arange(1, 41))]
    return tmp_path / "idx", manifest, ex, texts


def test_cache_miss_announces_and_reports_progress_then_hit_is_silent(tiny_target, capsys):
    idx, manifest, ex, texts = tiny_target
    codes = encode.target_codes(idx, manifest, texts, name="tiny")
    err = capsys.readouterr().err
    assert "target tiny: encoding 40 examples with " in err and "once per index and target" in err
    assert "--max-examples" not in err  # a small set: no sampling hint
    assert "target tiny: about " in err  # the estimate after the first slice
    progress = [line for line in err.splitlines() if line.startswith("target tiny: ") and " tok/s" in line]
    assert len(progress) == 3 and progress[-1].split(", ")[0].endswith("(100.0%)"), err
    assert "40/40 ex" in progress[-1]
    # slicing changes no bit: the same codes as one call over all examples
    ids, _ = ex.tokenize(texts)
    np.testing.assert_array_equal(codes, ex.codes(ids)["fwd_up"])
    again = encode.target_codes(idx, manifest, texts, name="tiny")
    assert capsys.readouterr().err == "" and np.array_equal(again, codes)


def test_large_set_names_max_examples_and_benchmarks(tiny_target, capsys, monkeypatch):
    idx, manifest, _, texts = tiny_target
    monkeypatch.setattr(encode, "SAMPLE_HINT_MIN", 30, raising=False)  # raising: absent before the hint
    encode.target_codes(idx, manifest, texts, name="big")
    (line,) = [line for line in capsys.readouterr().err.splitlines() if "encoding 40 examples" in line]
    assert "--max-examples 200 reproduces the full set's top 20% at Jaccard 0.89-0.97 (BENCHMARKS.md)" in line
