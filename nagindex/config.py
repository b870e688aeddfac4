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


def config_path(config: str | os.PathLike[str], value: str, field: str,
                root: str | os.PathLike[str] | None = None) -> Path:
    """The one rule for a path written in a YAML config (README, "Paths in configs").

    ``~`` is expanded and an absolute path is taken as given. A relative path is
    read from the folder of the YAML file that names it, and must stay inside
    ``root`` (default: that folder; the registry root ``configs/targets`` for target
    files): a shared config cannot reach into other folders through ``..`` or a
    symlink unless it says so with an absolute path.
    """
    config = Path(config).resolve()
    candidate = Path(value).expanduser()
    if candidate.is_absolute():
        return candidate
    base = Path(root).resolve() if root is not None else config.parent
    resolved = (config.parent / candidate).resolve()
    if not resolved.is_relative_to(base):
        raise InputError(f"{config}: field '{field}': {value!r} points outside the configs root {base} "
                         "(relative paths stay inside it; write an absolute path to read from elsewhere)")
    return resolved
