"""Scoring on a GPU with torch: the same exact integer sums as the numba kernels, block by block.

``TorchScorer`` has ``score.BlockScorer``'s interface (``sums(block, start)`` ->
``(n, P)``), so a shard scan (``query/scan.py``) streams its memory-mapped codes
through either. A block travels as its raw uint16 bytes (reinterpreted as int16:
torch has no uint16 arithmetic on every device) and is widened on the device; the
table is ``(L' * width, P)`` int32 counts, and each document's codes gather their
rows and sum in int64, so results are bit-identical to the CPU kernels. Rows are
processed in slices of ``rows_per_slice`` so that the gathered ``(rows, L'K, P)``
int32 intermediate stays near 256 MB. A fused kernel would save that intermediate's
traffic; plain torch ops keep this path testable on CPU torch (CI has no GPU).
Powers other than 1 and a ``--weighting`` (``weights``) sum float64 weights, as on the CPU.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from nagindex.errors import NagIndexError
from nagindex.query.profile import LayerSpec, profile_weights, resolve_layers

#: bytes of the gathered intermediate per slice
SLICE_BYTES = 256 << 20


def make_scorer(shape: tuple[int, int, int], profiles: np.ndarray, layers: LayerSpec, power: float,
                device: str = "cpu", weights: np.ndarray | None = None) -> Any:
    """The scorer for ``device``: ``cuda``/``cuda:N`` -> ``TorchScorer``; anything else the numba kernels.
    ``weights``: the float weights of a ``--weighting`` (``weighting.weigh_profiles``)."""
    if str(device).startswith("cuda"):
        return TorchScorer(shape, profiles, layers, power, device, weights)
    from nagindex.query.score import BlockScorer

    return BlockScorer(shape, profiles, layers, power, weights)


class TorchScorer:
    """P count profiles on a torch device; ``sums(block)`` as ``score.BlockScorer.sums``."""

    def __init__(self, shape: tuple[int, int, int], profiles: np.ndarray | Sequence[np.ndarray],
                 layers: LayerSpec = None, power: float = 1.0, device: str = "cuda",
                 weights: np.ndarray | None = None) -> None:
        import torch

        from nagindex.query.score import _checked_weights, _stack_profiles

        counts = _stack_profiles(profiles)
        self.kept = resolve_layers(layers, shape[1])
        num_profiles, num_layers, width = counts.shape
        if num_layers != len(self.kept):
            raise NagIndexError(f"profiles cover {num_layers} layers but {len(self.kept)} layers are kept")
        if np.issubdtype(counts.dtype, np.floating) or counts.min() < 0:
            raise NagIndexError("profiles must be non-negative integer counts (from count_profile)")
        if str(device).startswith("cuda") and not torch.cuda.is_available():
            raise NagIndexError(f"--device {device}: torch sees no CUDA device here")
        self.device = torch.device(device)
        self.top_k, self.width, self.num_profiles = shape[2], width, num_profiles
        self.exact = float(power) == 1.0 and weights is None
        if self.exact:
            self.norm = counts.reshape(num_profiles, -1).sum(axis=1).astype(np.float64)
            if len(self.kept) * self.top_k * int(counts.max(initial=0)) >= 2**31:
                raise NagIndexError("profile counts too large for exact int32 sums")
            values = torch.from_numpy(np.ascontiguousarray(counts.reshape(num_profiles, -1).T.astype(np.int32)))
        else:
            self.norm = np.full(num_profiles, float(num_layers))
            table = profile_weights(counts, power) if weights is None else _checked_weights(weights, counts.shape)
            values = torch.from_numpy(np.ascontiguousarray(table.reshape(num_profiles, -1).T, dtype=np.float64))
        self._table = values.to(self.device)
        self._offsets = (torch.arange(len(self.kept), dtype=torch.int64) * width).repeat_interleave(self.top_k)
        self._offsets = self._offsets.to(self.device)
        item = self._table.element_size()
        self.rows_per_slice = max(1, SLICE_BYTES // (len(self.kept) * self.top_k * num_profiles * item))

    def sums(self, block: np.ndarray, start: int = 0) -> np.ndarray:
        """``(n, P)`` sums (int64 exact, float64 otherwise) of the rows of ``block`` ``(n, L, K)``."""
        import torch

        from nagindex.query.score import _kept_block, _raise_bad_row

        sub = _kept_block(block, self.kept)  # (n, L'K) uint16, C-contiguous
        n = len(sub)
        out = np.zeros((n, self.num_profiles), dtype=np.int64 if self.exact else np.float64)
        if n == 0:
            return out
        codes = torch.from_numpy(sub.view(np.int16).copy()).to(self.device, non_blocking=True)
        for lo in range(0, n, self.rows_per_slice):
            part = codes[lo:lo + self.rows_per_slice].to(torch.int32) & 0xFFFF
            if int(part.max()) >= self.width:
                _raise_bad_row(sub[lo:lo + self.rows_per_slice], start + lo, self.width)
            rows = part.to(torch.int64) + self._offsets
            summed = self._table[rows].sum(dim=1, dtype=torch.int64 if self.exact else torch.float64)
            out[lo:lo + len(part)] = summed.cpu().numpy()
        return out
