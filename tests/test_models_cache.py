"""The embedded-backbone cache: one conversion under a lock, crash leftovers removed, weights verified.

The real GGUF conversion takes ~20 s and writes ~540 MB, so these tests replace
``_convert_gguf`` with ``fake_convert`` (a few bytes) and ``embedded_gguf`` with a
small fake file. ``fake_convert`` appends a line to ``$NAGINDEX_TEST_CONVERT_LOG``
per call, so a test can count conversions, also across processes.
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nagindex import models
from nagindex.models import file_sha256, materialize_embedded

NAME = "smollm2-135m"
REPO = Path(__file__).resolve().parents[1]

# Run in a child process: use this module's fake conversion, wait for the other
# children (so they overlap), then materialize and print the folder.
CHILD = """
import importlib.util, sys, time
from pathlib import Path
spec = importlib.util.spec_from_file_location("cache_tests", sys.argv[1])
tests = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tests)
import nagindex.models as models
tests.use_fakes(models, Path(sys.argv[2]))
barrier, n = Path(sys.argv[3]), int(sys.argv[4])
(barrier / sys.argv[5]).touch()
deadline = time.monotonic() + 60
while len(list(barrier.iterdir())) < n and time.monotonic() < deadline:
    time.sleep(0.01)
folder, sha = models.materialize_embedded(tests.NAME)
print(folder, sha)
"""


def fake_convert(gguf: Path, out_dir: Path) -> None:
    """Stands in for the GGUF conversion: counts the call, optionally sleeps, writes a tiny folder."""
    with open(os.environ["NAGINDEX_TEST_CONVERT_LOG"], "a") as fh:
        fh.write(f"{os.getpid()}\n")
    time.sleep(float(os.environ.get("NAGINDEX_TEST_CONVERT_SLEEP", "0")))
    (out_dir / "model.safetensors").write_bytes(b"weights of " + gguf.read_bytes())
    (out_dir / "config.json").write_text("{}")


def use_fakes(module, gguf: Path) -> None:
    """Point ``module`` (nagindex.models) at the fake GGUF and the fake conversion."""
    module.embedded_gguf = lambda name: gguf
    module._convert_gguf = fake_convert


@pytest.fixture
def fake_cache(tmp_path, monkeypatch):
    """A private cache, a fake GGUF and the fake conversion; returns the conversion log path."""
    gguf = tmp_path / "fake.gguf"
    gguf.write_bytes(b"a fake gguf")
    log_path = tmp_path / "conversions.log"
    monkeypatch.setenv("NAGINDEX_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("NAGINDEX_TEST_CONVERT_LOG", str(log_path))
    monkeypatch.setattr(models, "embedded_gguf", lambda name: gguf)
    monkeypatch.setattr(models, "_convert_gguf", fake_convert)
    return log_path


def conversions(log_path: Path) -> int:
    return len(log_path.read_text().splitlines()) if log_path.exists() else 0


def test_concurrent_processes_convert_once(fake_cache, tmp_path, monkeypatch):
    monkeypatch.setenv("NAGINDEX_TEST_CONVERT_SLEEP", "1")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    n = 3
    procs = [
        subprocess.Popen([sys.executable, "-c", CHILD, __file__, str(models.embedded_gguf(NAME)), str(barrier),
                          str(n), str(i)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(n)
    ]
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * n, [err for _, err in results]
    assert conversions(fake_cache) == 1
    assert len({out for out, _ in results}) == 1
    folder = Path(results[0][0].split()[0])
    assert (folder / "model.safetensors").read_bytes() == b"weights of a fake gguf"
    assert not list(folder.parent.glob(f".{NAME}-*"))


def test_records_weight_hashes_and_reuses_verified_cache(fake_cache):
    folder, sha = materialize_embedded(NAME)
    assert sha == file_sha256([models.embedded_gguf(NAME)])
    info = json.loads((folder / "nagindex_backbone.json").read_text())
    assert info["gguf_sha256"] == sha
    assert info["weights"] == {"model.safetensors": file_sha256([folder / "model.safetensors"])}
    assert materialize_embedded(NAME) == (folder, sha)
    assert conversions(fake_cache) == 1


def test_stale_temp_folder_is_removed(fake_cache):
    backbones = models.cache_dir() / "backbones"
    stale = backbones / f".{NAME}-xxxx"
    stale.mkdir(parents=True)
    (stale / "model.safetensors").write_bytes(b"half written")
    folder, _ = materialize_embedded(NAME)
    assert not stale.exists()
    assert sorted(p.name for p in backbones.iterdir() if p.name.startswith(".")) == []
    assert folder.is_dir()


def test_failed_conversion_leaves_no_temp_folder(fake_cache, monkeypatch):
    def crash(gguf: Path, out_dir: Path) -> None:
        (out_dir / "model.safetensors").write_bytes(b"partial")
        raise RuntimeError("conversion crashed")

    monkeypatch.setattr(models, "_convert_gguf", crash)
    with pytest.raises(RuntimeError, match="conversion crashed"):
        materialize_embedded(NAME)
    backbones = models.cache_dir() / "backbones"
    assert not list(backbones.glob(f".{NAME}-*"))
    monkeypatch.setattr(models, "_convert_gguf", fake_convert)  # the lock was released: a retry converts
    folder, _ = materialize_embedded(NAME)
    assert (folder / "model.safetensors").is_file()


def test_corrupted_weights_are_reconverted(fake_cache, caplog):
    folder, sha = materialize_embedded(NAME)
    weights = folder / "model.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(good[:-1] + b"X")
    with caplog.at_level(logging.WARNING, logger="nagindex.models"):
        assert materialize_embedded(NAME) == (folder, sha)
    assert conversions(fake_cache) == 2
    assert weights.read_bytes() == good
    assert "does not match its recorded sha256" in caplog.text


def test_missing_weights_are_reconverted(fake_cache):
    folder, _ = materialize_embedded(NAME)
    (folder / "model.safetensors").unlink()
    materialize_embedded(NAME)
    assert conversions(fake_cache) == 2
    assert (folder / "model.safetensors").is_file()


@pytest.mark.parametrize("info", ['{"name": "smollm2-135m", "gguf_sha256": "x"}', "{not json", "[]"])
def test_cache_without_recorded_hashes_is_reconverted(fake_cache, info):
    sha = file_sha256([models.embedded_gguf(NAME)])
    folder = models.cache_dir() / "backbones" / f"{NAME}-{sha[:16]}"
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"old weights")
    (folder / "nagindex_backbone.json").write_text(info)
    assert materialize_embedded(NAME) == (folder, sha)
    assert conversions(fake_cache) == 1
    assert (folder / "model.safetensors").read_bytes() == b"weights of a fake gguf"
    assert "weights" in json.loads((folder / "nagindex_backbone.json").read_text())
