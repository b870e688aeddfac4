"""Where the YAML configs live (targets, mixtures, backbone presets), and loading them safely."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from nagindex.errors import InputError

CONFIGS_ENV = "NAGINDEX_CONFIGS"


def configs_root(configs_dir: str | os.PathLike[str] | None = None) -> Path:
    """The configs folder: the argument, else ``$NAGINDEX_CONFIGS``, else the repo's ``configs/``."""
    if configs_dir is not None:
        return Path(configs_dir)
    if os.environ.get(CONFIGS_ENV):
        return Path(os.environ[CONFIGS_ENV])
    return Path(__file__).resolve().parents[1] / "configs"


def load_yaml(path: str | os.PathLike[str]) -> Any:
    """``yaml.safe_load`` of a file; a syntax error names the file (and line)."""
    import yaml

    try:
        with open(path, encoding="utf-8") as fh:
            return yaml.safe_load(fh)
    except yaml.YAMLError as exc:
        raise InputError(f"{path}: invalid YAML: {exc}") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror or exc}") from None
