"""A forward pass with plain forward hooks, the brute-force side of the extraction, NAIT and deactivation tests."""
from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any


def forward_with_hooks(model: Any, modules: Iterable[Any], hook: Callable[..., Any], ids: list[int]) -> None:
    """One forward of the unpadded token ids ``ids`` with ``hook`` on each of ``modules``, removed after."""
    import torch

    handles = [m.register_forward_hook(hook) for m in modules]
    try:
        with torch.inference_mode():
            model(torch.tensor([ids]))
    finally:
        for h in handles:
            h.remove()
