"""Hub sources never run dataset loading scripts (configs never run code), checked with the real ``datasets``."""
from __future__ import annotations

import json
import types
from pathlib import Path

import pytest

import nagindex.sources.datasets as S
from nagindex.errors import NagIndexError

pytest.importorskip("datasets")

ROWS = [{"id": "a", "text": "alpha"}, {"id": "b", "text": "beta"}]
SCRIPT = '''\
import os
from pathlib import Path
Path(os.environ["NAGINDEX_SCRIPT_MARKER"]).write_text("ran")
'''


@pytest.fixture
def offline_hf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """HF caches under tmp_path, offline flags on; returns the marker path a script would write.

    ``datasets.config`` reads the environment once at import, so its constants are patched too.
    """
    import datasets.config as cfg

    hf = tmp_path / "hf"
    for var, path in (("HF_HOME", hf), ("HF_DATASETS_CACHE", hf / "datasets"), ("HF_HUB_CACHE", hf / "hub"),
                      ("HF_MODULES_CACHE", hf / "modules")):
        monkeypatch.setenv(var, str(path))
    for const, path in (("HF_DATASETS_CACHE", hf / "datasets"), ("HF_MODULES_CACHE", hf / "modules"),
                        ("DOWNLOADED_DATASETS_PATH", hf / "datasets/downloads"),
                        ("EXTRACTED_DATASETS_PATH", hf / "datasets/downloads/extracted")):
        monkeypatch.setattr(cfg, const, path, raising=False)
    for flag in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.setenv(flag, "1")
        monkeypatch.setattr(cfg, flag, True, raising=False)
    monkeypatch.setattr(S, "_network_available", lambda timeout=3.0: True)
    marker = tmp_path / "script_ran"
    monkeypatch.setenv("NAGINDEX_SCRIPT_MARKER", str(marker))
    return marker


def dataset_folder(root: Path, name: str, *, script: bool) -> Path:
    folder = root / name
    folder.mkdir()
    (folder / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    if script:
        (folder / f"{name}.py").write_text(SCRIPT)
    return folder


def assert_script_refusal(err: pytest.ExceptionInfo[NagIndexError], location: str) -> None:
    msg = str(err.value)
    assert not isinstance(err.value, S.SourceUnavailableError)  # a config error, not a silent fallback
    assert location in msg and "never runs dataset scripts" in msg
    assert "revision: refs/convert/parquet" in msg and "`file:`" in msg


def test_script_folder_is_refused_without_running_it(tmp_path: Path, offline_hf: Path) -> None:
    folder = dataset_folder(tmp_path, "scripted", script=True)
    with pytest.raises(NagIndexError) as err:
        S.read_hub(S.SourceSpec("hub", str(folder), "train"))
    assert_script_refusal(err, str(folder))
    assert not offline_hf.exists()


def test_script_file_location_is_refused(tmp_path: Path, offline_hf: Path) -> None:
    script = dataset_folder(tmp_path, "scripted", script=True) / "scripted.py"
    with pytest.raises(NagIndexError) as err:
        S.read_hub(S.SourceSpec("hub", str(script), "train"))
    assert_script_refusal(err, str(script))
    assert not offline_hf.exists()


def test_plain_folder_still_loads(tmp_path: Path, offline_hf: Path) -> None:
    folder = dataset_folder(tmp_path, "plain", script=False)
    rows = list(S.read_hub(S.SourceSpec("hub", str(folder), "train")))
    assert rows == ROWS
    assert not offline_hf.exists()


def test_library_script_error_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """A script found remotely (only ``datasets`` can see it) maps to the same clear refusal."""
    seen: dict = {}

    def load_dataset(path, name=None, split=None, revision=None, trust_remote_code=None):
        seen["trust_remote_code"] = trust_remote_code
        raise RuntimeError("Dataset scripts are no longer supported, but found owner.py")

    monkeypatch.setattr(S, "_import_datasets", lambda: types.SimpleNamespace(load_dataset=load_dataset))
    monkeypatch.setattr(S, "_network_available", lambda timeout=3.0: True)
    with pytest.raises(NagIndexError) as err:
        S.read_hub(S.SourceSpec("hub", "owner/scripted", "train"))
    assert_script_refusal(err, "owner/scripted")
    assert seen == {"trust_remote_code": False}  # passed where the installed datasets still takes it


def test_other_library_errors_stay_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    def load_dataset(path, name=None, split=None, **kwargs):
        assert "trust_remote_code" not in kwargs  # not a named parameter (datasets 4+): not passed
        raise ConnectionError("Couldn't reach 'owner/plain' on the Hub")

    monkeypatch.setattr(S, "_import_datasets", lambda: types.SimpleNamespace(load_dataset=load_dataset))
    monkeypatch.setattr(S, "_network_available", lambda timeout=3.0: True)
    with pytest.raises(S.SourceUnavailableError, match="Couldn't reach"):
        S.read_hub(S.SourceSpec("hub", "owner/plain", "train"))
