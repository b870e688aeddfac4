"""A target's profile as people read it: per layer, its most frequent neurons, how often the target and the
pool use them, how concentrated the profile is and how far it is from the pool's.

The numbers, for layer ``l`` of a target of ``T`` examples and a pool of ``N`` documents, K neurons a NAG:

- ``target_share = c_l[n] / T``: the share of target examples whose NAG holds neuron ``n``;
- ``pool_share = N_l[n] / N``: the same over the pool (``index/neuron_stats.py``, summed shard by shard);
- ``lift = (c_l[n] / T) / ((N_l[n] + 1) / (N + 1))``: how much more the target uses it, smoothed by one
  document, the ``--weighting lift`` specificity (``query/weighting.py``);
- ``concentration``: the share of the layer's ``T x K`` target slots that its top-N neurons hold (1 when
  every example uses the same N neurons, ``N/width`` for a uniform profile);
- ``effective_neurons``: ``exp`` of the entropy of ``c_l / (T K)``, the number of equally used neurons that
  would spread the slots as evenly;
- ``separation``: the total variation distance between the target's and the pool's neuron distributions of
  the layer, ``0.5 sum_n |c_l[n] / (T K) - N_l[n] / (N K)|``: 0 where the target uses the layer's neurons as
  the pool does, 1 where the two use disjoint neurons. The layers with the largest separation are the ones
  whose NAG tells a target document from a pool document.

The top-N neurons are ``query.profile.top_neurons``: the deactivation test's keys (``deactivate.py``).
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from nagindex.errors import NagIndexError

#: neurons per layer shown and deactivated, as the reference's ``nag/analysis/deactivation.py``
DEFAULT_TOP = 20


@dataclass(frozen=True)
class NeuronStat:
    """One neuron of a layer's profile."""

    neuron: int
    target_count: int
    target_share: float
    pool_count: int
    pool_share: float
    lift: float


@dataclass(frozen=True)
class LayerProfile:
    """One layer of a target's profile (the module docstring defines each number)."""

    layer: int
    neurons: list[NeuronStat]
    concentration: float
    effective_neurons: float
    separation: float


@dataclass
class ProfileExplanation:
    """A target's profile against the pool it selects from, layer by layer."""

    target: str
    examples: dict[str, Any]  # used / available / source, as a query records them
    pool_docs: int
    width: int
    top_k: int
    top: int
    layers: list[LayerProfile]
    notes: list[str] = field(default_factory=list)

    def separating_layers(self) -> list[int]:
        """Layers by separation, largest first (ties by layer)."""
        return [p.layer for p in sorted(self.layers, key=lambda p: (-p.separation, p.layer))]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data: every field, and ``separating_layers``."""
        return {**asdict(self), "separating_layers": self.separating_layers()}

    def table(self, show: int = 5) -> str:
        """Text table: one line per layer (concentration, effective neurons, separation, its ``show`` top
        neurons as ``neuron:target%/pool%``), then the layers that separate the target most."""
        lines = [(f"target {self.target}: {self.examples.get('used')} examples, pool {self.pool_docs:,} "
                  f"documents, top {self.top} of {self.width} neurons per layer (K={self.top_k})"),
                 f"{'layer':>5} {'conc':>6} {'eff':>7} {'sep':>6}  top neurons (target% / pool%, lift)"]
        for p in self.layers:
            tops = "  ".join(f"{s.neuron}:{100 * s.target_share:.0f}/{100 * s.pool_share:.0f} x{s.lift:.1f}"
                             for s in p.neurons[:show])
            lines.append(f"{p.layer:>5} {p.concentration:>6.3f} {p.effective_neurons:>7.1f} {p.separation:>6.3f}  "
                         f"{tops}")
        lines.append("most separating layers: " + ", ".join(map(str, self.separating_layers()[:5])))
        return "\n".join(lines)


def explain_counts(target: str, counts: np.ndarray, pool: np.ndarray, top_k: int, top: int = DEFAULT_TOP,
                   examples: dict[str, Any] | None = None) -> ProfileExplanation:
    """The explanation of a target's count profile ``(L, width)`` against the pool's neuron counts
    ``(L, width)`` (``pool_neuron_counts``), NAGs of ``top_k`` neurons a layer."""
    from nagindex.index.neuron_stats import pool_documents
    from nagindex.query.profile import top_neurons

    counts, pool = np.asarray(counts, np.int64), np.asarray(pool, np.int64)
    if counts.shape != pool.shape or counts.ndim != 2:
        raise NagIndexError(f"target counts {counts.shape} and pool counts {pool.shape} must be the same (L, width)")
    slots = counts.sum(axis=1)
    n_target, pool_docs = int(slots[0]) // top_k, pool_documents(pool, top_k)
    if n_target < 1 or pool_docs < 1:
        raise NagIndexError("a profile needs at least one target example and one pool document")
    target_dist, pool_dist = counts / (n_target * top_k), pool / (pool_docs * top_k)
    lift = (counts / n_target) / ((pool + 1.0) / (pool_docs + 1.0))
    layers = []
    for layer, keys in enumerate(top_neurons(counts, top)):
        p = target_dist[layer][counts[layer] > 0]
        layers.append(LayerProfile(
            layer=layer,
            neurons=[NeuronStat(int(n), int(counts[layer, n]), float(counts[layer, n] / n_target), int(pool[layer, n]),
                                float(pool[layer, n] / pool_docs), float(lift[layer, n])) for n in keys],
            concentration=float(counts[layer, keys].sum() / (n_target * top_k)),
            effective_neurons=float(np.exp(-(p * np.log(p)).sum())),
            separation=float(0.5 * np.abs(target_dist[layer] - pool_dist[layer]).sum())))
    return ProfileExplanation(target=target, examples=dict(examples or {"used": n_target}), pool_docs=pool_docs,
                              width=counts.shape[1], top_k=top_k, top=top, layers=layers)


def explain_profile(request: Any, index_dir: str | os.PathLike, *, top: int = DEFAULT_TOP,
                    max_examples: int | None = None, example_seed: int = 0,
                    device: str = "auto") -> ProfileExplanation:
    """The profile explanation of one target (a ``TargetRequest``) on the index at ``index_dir``: its examples
    drawn as a query draws them (``max_examples``, ``example_seed``), the pool counted shard by shard."""
    from nagindex.index.neuron_stats import pool_neuron_counts
    from nagindex.query.profile import count_profile

    codes, info, manifest, notes = target_profile_codes(request, index_dir, max_examples, example_seed, device)
    out = explain_counts(request.display, count_profile(codes, manifest["width"]), pool_neuron_counts(index_dir),
                         manifest["top_k"], top, info)
    out.notes = notes
    return out


def target_profile_codes(request: Any, index_dir: str | os.PathLike, max_examples: int | None, example_seed: int,
                         device: str) -> tuple[np.ndarray, dict[str, Any], dict[str, Any], list[str]]:
    """``(codes, examples info, index manifest, notes)`` of a target on an index: its example NAGs with the
    index's backbone (cached in the index like a query's)."""
    from pathlib import Path

    from nagindex.index.sharded import shard_specs
    from nagindex.query.run import target_example_codes

    manifest = index_manifest(index_dir, shard_specs(index_dir))
    notes: list[str] = []
    codes, info = target_example_codes(request, Path(index_dir), manifest, max_examples, example_seed, device, notes)
    return codes, info, manifest, notes


def index_manifest(index_dir: str | os.PathLike, specs: list[dict[str, Any]]) -> dict[str, Any]:
    """The manifest the index's shards share (backbone, layers, width, K): the first shard's."""
    from nagindex.index.derived import open_shard

    if not specs:
        raise NagIndexError(f"index {index_dir} holds no documents")
    return open_shard(specs[0]["path"], rows=specs[0]["rows"]).manifest


def write_json(path: str | os.PathLike, data: dict[str, Any]) -> None:
    """``data`` as indented JSON at ``path``, written atomically."""
    from pathlib import Path

    from nagindex.fsio import atomic_path

    with atomic_path(Path(path)) as tmp:
        Path(tmp).write_text(json.dumps(data, indent=1), encoding="utf-8")
