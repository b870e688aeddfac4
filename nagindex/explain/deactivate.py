"""The paper's deactivation test (Sec. 5, Table 3; the reference's ``nag/analysis/deactivation.py``) on the
index's own backbone: do a target's profile neurons carry its function?

Per layer, the target's ``top`` most frequent neurons (``query.profile.top_neurons``, 20 as the reference)
are switched off, or with ``rank="lift"`` its ``top`` neurons of highest lift, the ``--weighting lift``
specificity (``query.weighting.specificity``: frequency among the target's NAGs over the pool's, smoothed by
one document; ties by neuron id), which passes over the backbone neurons every text uses. Switched off: the
rows of the MLP's input projection that produce them are zeroed (``up_proj`` of a gated
MLP, so the neuron's up output and its product with the gate are 0; ``c_fc`` / ``dense_h_to_4h`` / ``fc1`` of
a non-gated one, with their bias entries, so the neuron's pre-activation is 0). The backbone then answers the
target's held-out multiple-choice examples (cloze form, ``evaluate/train.py``: ``sequence_logprobs`` and
``answer_measures``, the code that scores the proxy models), against:

- the intact backbone (the baseline every difference is taken to, example by example);
- as many random neurons per layer, never one of the target's, in ``draws`` seeded draws;
- the top neurons of other targets (does ARC's profile hurt HellaSwag?).

Held-out: the target's examples split as ``evaluate`` splits them: the profile is built from ``max_examples``
examples drawn with ``example_seed`` (what a query with those options uses), the test measures a seeded
sample of at most ``heldout`` of the others. Every arm is measured on the same examples, so differences are
paired per example: ``mean +- t(0.975, n-1) sd / sqrt(n)`` over examples (``evaluate/stats.py``); a random
arm's per-example differences are first averaged over its draws, and each draw's own mean is kept too.

The weights are changed in memory only, inside ``zero_neurons``, and put back bit for bit from saved
copies, whatever happens inside; the model cache on disk is never written.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from nagindex.errors import NagIndexError
from nagindex.explain.profile import DEFAULT_TOP

logger = logging.getLogger(__name__)

DEFAULT_DRAWS = 5
#: how a target's neurons are chosen: by count in its profile (the paper's), or by lift over the pool
RANKS = ("frequency", "lift")
DEFAULT_HELDOUT = 200
#: tokens of (question + answer) scored; longer questions lose their start
CONTEXT = 512
#: sequences per forward: (8, ~150, 49,152-token vocabulary) float32 logits are ~240 MB on a CPU
BATCH = 8


# ---------------------------------------------------------------- switching neurons off

def up_projections(model: Any) -> list[Any]:
    """Per decoder layer, the module whose outputs are the NAG's ``fwd_up`` neurons (``encode/extract.py``)."""
    from nagindex.encode.extract import find_hooks

    return [row[0].module for row in find_hooks(model, ("fwd_up",))]


def _output_axis(module: Any) -> int:
    """The weight axis indexed by output neuron: 0 for ``nn.Linear`` ``(out, in)``, 1 for GPT-2's ``Conv1D``
    ``(in, out)``."""
    import torch

    if isinstance(module, torch.nn.Linear):
        return 0
    if type(module).__name__ == "Conv1D" and module.weight.shape[1] == getattr(module, "nf", None):
        return 1
    raise NagIndexError(f"cannot switch neurons off in a {type(module).__name__}: an nn.Linear or GPT-2 Conv1D "
                        "input projection is needed")


@contextmanager
def zero_neurons(model: Any, neurons: Sequence[np.ndarray]) -> Iterator[None]:
    """Within the block, the ``fwd_up`` outputs ``neurons[l]`` of each layer ``l`` are 0 for every input: their
    weight rows (and bias entries) are zeroed; on exit every changed value is restored from a saved copy."""
    import torch

    modules = up_projections(model)
    if len(neurons) != len(modules):
        raise NagIndexError(f"neurons for {len(neurons)} layers, but the model has {len(modules)}")
    saved = []
    try:
        with torch.no_grad():
            for module, keys in zip(modules, neurons):
                axis = _output_axis(module)
                index = torch.as_tensor(np.asarray(keys, np.int64), device=module.weight.device)
                if len(index) and int(index.max()) >= module.weight.shape[axis]:
                    raise NagIndexError(f"neuron {int(index.max())} is outside a layer of width "
                                        f"{module.weight.shape[axis]}")
                bias = module.bias
                saved.append((module, axis, index, module.weight.index_select(axis, index).clone(),
                              None if bias is None else bias[index].clone()))
                module.weight.index_fill_(axis, index, 0.0)
                if bias is not None:
                    bias.index_fill_(0, index, 0.0)
        yield
    finally:
        with torch.no_grad():
            for module, axis, index, weight, bias in saved:
                module.weight.index_copy_(axis, index, weight)
                if bias is not None:
                    module.bias.index_copy_(0, index, bias)


def random_neurons(width: int, sizes: Sequence[int], exclude: Sequence[np.ndarray], seed: int) -> list[np.ndarray]:
    """Per layer ``l``, ``sizes[l]`` distinct neurons drawn uniformly from those not in ``exclude[l]``, sorted:
    the random arm's draw ``seed`` (``numpy.random.default_rng(seed)``, layers in order)."""
    rng = np.random.default_rng(seed)
    out = []
    for size, skip in zip(sizes, exclude):
        free = np.setdiff1d(np.arange(width, dtype=np.int64), np.asarray(skip, np.int64))
        if size > len(free):
            raise NagIndexError(f"cannot draw {size} random neurons from the {len(free)} outside the target's")
        out.append(np.sort(rng.choice(free, size=int(size), replace=False)))
    return out


# ---------------------------------------------------------------- measuring the backbone

class _BackboneTokens:
    """The backbone's tokenizer as ``evaluate/train.prepare_eval`` reads one: ``encode`` without special
    tokens, ``eod`` the end-of-text token that conditions the first answer token on a document start."""

    def __init__(self, tokenizer: Any) -> None:
        self._tok = tokenizer
        eod = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.bos_token_id
        if eod is None:
            raise NagIndexError("the backbone's tokenizer has no end-of-text token to start a sequence with")
        self.eod = int(eod)

    def encode(self, texts: Sequence[str]) -> list[np.ndarray]:
        if not texts:
            return []
        ids = self._tok(list(texts), add_special_tokens=False)["input_ids"]
        return [np.asarray(x, np.int64) for x in ids]


def answer_scores(backbone: Any, evalset: Any, batch: int = BATCH) -> tuple[np.ndarray, np.ndarray]:
    """Per example of ``evalset``: the gold answer's log-probability (nats) and whether it scores highest."""
    import torch

    from nagindex.evaluate.train import answer_measures, sequence_logprobs

    model, device = backbone.model, backbone.device

    def logits(ids: torch.Tensor) -> torch.Tensor:
        return model(input_ids=ids.to(device), use_cache=False).logits.float().cpu()

    return answer_measures(sequence_logprobs(logits, evalset, batch, windows_only=False), evalset)


# ---------------------------------------------------------------- the test

@dataclass(frozen=True)
class Arm:
    """One measured configuration of the backbone, with its paired differences to the intact one."""

    name: str  # "intact", "target", "random", "other:<target>"
    neurons: int  # neurons switched off over all layers
    accuracy: float
    gold_logprob: float
    delta_accuracy: dict[str, float | None]  # mean, lo, hi over examples (vs intact)
    delta_logprob: dict[str, float | None]
    draws: list[dict[str, float]] = field(default_factory=list)  # random arm: each draw's accuracy, gold_logprob


@dataclass
class DeactivationResult:
    """The deactivation test of one target on one backbone."""

    target: str
    backbone: str
    top: int
    profile_examples: int
    heldout: int
    arms: list[Arm]
    notes: list[str] = field(default_factory=list)
    rank: str = "frequency"  # how each arm's neurons were chosen (RANKS)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def table(self) -> str:
        """One line per arm: accuracy and gold log-prob, each difference to intact with its 95% interval."""
        lines = [(f"deactivation test: {self.target} on {self.backbone}, top {self.top} neurons per layer by "
                  f"{self.rank} from {self.profile_examples} profile examples, measured on {self.heldout} held-out examples"),
                 f"{'arm':<24} {'neurons':>7} {'acc':>6} {'d acc [95% CI]':>24} {'logp':>8} {'d logp [95% CI]':>26}"]
        for arm in self.arms:
            lines.append(f"{arm.name:<24} {arm.neurons:>7} {100 * arm.accuracy:>6.1f} "
                         f"{_interval(arm.delta_accuracy, 100):>24} {arm.gold_logprob:>8.3f} "
                         f"{_interval(arm.delta_logprob, 1):>26}")
        return "\n".join(lines)


def _interval(d: dict[str, float | None], scale: float) -> str:
    if d["lo"] is None:
        return f"{scale * d['mean']:+.2f}"
    return f"{scale * d['mean']:+.2f} [{scale * d['lo']:+.2f}, {scale * d['hi']:+.2f}]"


def heldout_examples(request: Any, max_examples: int | None, example_seed: int, limit: int) -> Any:
    """The target's multiple-choice examples its profile did not use (``max_examples`` drawn with
    ``example_seed`` did), then a sample of at most ``limit`` of them drawn with ``example_seed``."""
    from nagindex.query.target import load_examples, sample_indices, take_examples

    full = load_examples(request)
    if full.choices is None:
        raise NagIndexError(f"target {request.display} is not multiple-choice: its config gives no doc_to_question, "
                            "doc_to_choice and doc_to_target to score answers with")
    if max_examples is None or max_examples >= len(full):
        raise NagIndexError(f"the deactivation test measures examples the profile did not use: give max_examples "
                            f"below the {len(full)} examples of {request.display} (e.g. 200)")
    used = set(sample_indices(len(full), max_examples, example_seed))
    remaining = [i for i in range(len(full)) if i not in used]
    return take_examples(full, [remaining[i] for i in sample_indices(len(remaining), limit, example_seed)])


def _arm(name: str, neurons: int, got: list[tuple[np.ndarray, np.ndarray]],
         base: tuple[np.ndarray, np.ndarray]) -> Arm:
    """An arm from one or more draws' per-example ``(gold_logprob, correct)``, paired with ``base``'s."""
    from nagindex.evaluate.stats import paired_interval

    logp = np.mean([g for g, _ in got], axis=0)
    correct = np.mean([c for _, c in got], axis=0)
    draws = [{"accuracy": float(c.mean()), "gold_logprob": float(g.mean())} for g, c in got] if len(got) > 1 else []
    return Arm(name, neurons, float(correct.mean()), float(logp.mean()), paired_interval(correct, base[1]),
               paired_interval(logp, base[0]), draws)


def check_rank(rank: str) -> str:
    """``rank`` if it is one of ``RANKS``, else an error naming them."""
    if rank not in RANKS:
        raise NagIndexError(f"rank {rank!r}: choose one of {', '.join(RANKS)}")
    return rank


def ranked_neurons(codes: np.ndarray, width: int, top: int, rank: str = "frequency", pool: np.ndarray | None = None,
                   top_k: int | None = None) -> list[np.ndarray]:
    """Per layer, the ``top`` neurons of a target's NAG ``codes`` ``(T, L, K)`` to switch off: the most frequent
    (``rank="frequency"``), or those of highest lift against the pool's neuron counts ``pool`` ``(L, width)`` of
    NAGs of ``top_k`` neurons (``rank="lift"``, ``query.weighting.specificity``). Ties go to the lower neuron id;
    neurons the target never uses are never chosen (``query.profile.top_neurons``)."""
    from nagindex.index.neuron_stats import pool_documents
    from nagindex.query.profile import count_profile, top_neurons
    from nagindex.query.weighting import specificity

    counts = count_profile(codes, width)
    if check_rank(rank) == "frequency":
        return top_neurons(counts, top)
    if pool is None or top_k is None:
        raise NagIndexError("rank='lift' needs the pool's neuron counts and the index's K")
    return top_neurons(specificity("lift", counts, pool, pool_documents(pool, top_k)), top)


def deactivation_test(request: Any, index_dir: str | os.PathLike, *, top: int = DEFAULT_TOP,
                      draws: int = DEFAULT_DRAWS, heldout: int = DEFAULT_HELDOUT, max_examples: int | None = 200,
                      example_seed: int = 0, against: Sequence[Any] = (), device: str = "cpu",
                      backbone: Any = None, rank: str = "frequency") -> DeactivationResult:
    """Run the test for ``request`` (a ``TargetRequest``) on the index's backbone (``backbone``: one already
    loaded, for tests and repeated runs; else loaded on ``device`` in the index's dtype). ``against``: other
    targets whose top neurons are switched off too, one arm each. ``rank``: each arm's neurons are the ones most
    frequent in its target's profile (``"frequency"``) or of highest lift over the pool (``"lift"``)."""
    from nagindex.evaluate.train import prepare_eval
    from nagindex.explain.profile import target_profile_codes

    if draws < 1 or heldout < 1:
        raise NagIndexError(f"draws and heldout must be >= 1, got {draws} and {heldout}")
    check_rank(rank)
    codes, info, manifest, notes = target_profile_codes(request, index_dir, max_examples, example_seed, device)
    pool = None
    if rank == "lift":
        from nagindex.index.neuron_stats import pool_neuron_counts

        pool = pool_neuron_counts(index_dir)

    def choose(target_codes: np.ndarray) -> list[np.ndarray]:
        return ranked_neurons(target_codes, manifest["width"], top, rank, pool, manifest["top_k"])

    keys = choose(codes)
    others = []
    for other in against:
        others.append((other.display, choose(target_profile_codes(other, index_dir, max_examples, example_seed,
                                                                   device)[0])))
    examples = heldout_examples(request, max_examples, example_seed, heldout)
    if backbone is None:
        backbone = load_index_backbone(manifest, device)
    evalset = prepare_eval(_BackboneTokens(backbone.tokenizer), [], examples.choices, CONTEXT)
    sizes = [len(k) for k in keys]
    base = answer_scores(backbone, evalset)
    arms = [_arm("intact", 0, [base], base)]
    logger.info("deactivation %s: intact accuracy %.3f on %d examples", request.display, base[1].mean(), len(examples))
    with zero_neurons(backbone.model, keys):
        arms.append(_arm("target", sum(sizes), [answer_scores(backbone, evalset)], base))
    randoms = []
    for seed in range(draws):
        with zero_neurons(backbone.model, random_neurons(manifest["width"], sizes, keys, seed)):
            randoms.append(answer_scores(backbone, evalset))
    arms.append(_arm("random", sum(sizes), randoms, base))
    for name, other_keys in others:
        with zero_neurons(backbone.model, other_keys):
            arms.append(_arm(f"other:{name}", sum(map(len, other_keys)), [answer_scores(backbone, evalset)], base))
    return DeactivationResult(target=request.display, backbone=str(manifest.get("backbone")), top=top,
                              profile_examples=int(info["used"]), heldout=len(examples), arms=arms, notes=notes,
                              rank=rank)


def load_index_backbone(manifest: dict[str, Any], device: str) -> Any:
    """The index's backbone in the index's dtype, refused if its weights are not the ones the index used."""
    from nagindex.models import load_backbone

    if not manifest.get("backbone"):
        raise NagIndexError("the index records no backbone (imported features): there is no model to test")
    backbone = load_backbone(manifest["backbone"], device=device, dtype=manifest.get("dtype"))
    if backbone.weights_sha256 and manifest.get("weights_sha256") not in (None, "", backbone.weights_sha256):
        raise NagIndexError(f"backbone {manifest['backbone']!r} now has other weights than the index was built with")
    return backbone
