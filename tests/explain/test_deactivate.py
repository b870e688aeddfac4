"""The deactivation test: exactly the chosen neurons switched off, weights restored bit for bit, random draws
seeded and disjoint from the target's, and the whole test on the tiny fixture model."""
from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch

from nagindex.errors import NagIndexError
from nagindex.explain import deactivate
from nagindex.explain.deactivate import (
    deactivation_test,
    random_neurons,
    ranked_neurons,
    up_projections,
    zero_neurons,
)
from nagindex.explain.profile import target_profile_codes
from nagindex.index.derived import open_shard
from nagindex.index.neuron_stats import pool_neuron_counts
from nagindex.index.sharded import shard_specs
from nagindex.query.request import TargetRequest
from tests.encode.test_architectures import FAMILIES, SEQS
from tests.hooks import forward_with_hooks

KEYS = [np.array([0, 5, 17]), np.array([], np.int64), np.array([3, 79]), np.array([40])]


def _family_model(family: str):
    """A tiny random model of ``family``, its biases random too (they start at 0), so that a bias left on
    would show in the switched-off neurons' outputs."""
    torch.manual_seed(0)
    model = FAMILIES[family][0]().eval().requires_grad_(False)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.normal_()
    return model


def _hooked_forward(model, seq):
    """Each layer's up-projection input and output for one document."""
    grabbed = []
    forward_with_hooks(model, up_projections(model), lambda _m, i, o: grabbed.append((i[0].clone(), o.clone())), seq)
    return grabbed


@pytest.mark.parametrize("family", ["llama", "qwen2", "gpt2", "gpt_neox"])
def test_only_the_chosen_neurons_are_switched_off(family):
    """Zeros at the chosen neurons of every layer; elsewhere exactly what the intact projection gives for the
    same input (later layers see other inputs, as they should)."""
    model = _family_model(family)
    keys = KEYS[:3]
    with zero_neurons(model, keys):
        grabbed = _hooked_forward(model, SEQS[0])
    modules = up_projections(model)
    for layer, ((x, out), keys_l) in enumerate(zip(grabbed, keys)):
        intact = modules[layer](x)
        others = np.setdiff1d(np.arange(out.shape[-1]), keys_l)
        assert torch.count_nonzero(out[..., keys_l]) == 0
        assert torch.equal(out[..., others], intact[..., others]), (family, layer)
        assert torch.count_nonzero(intact[..., keys_l]) == intact[..., keys_l].numel()  # they were not 0 before


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_weights_restored_bit_for_bit_even_on_error(family):
    model = _family_model(family)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(RuntimeError, match="inside"), zero_neurons(model, KEYS[:3]):
        raise RuntimeError("inside")
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    with zero_neurons(model, KEYS[:3]):
        changed = [k for k in before if not torch.equal(before[k], model.state_dict()[k])]
    # the weight (and bias) of the up projections of layers 0 and 2 (layer 1 has no key)
    assert len(changed) == (4 if family == "gpt2" else 2) and all(".0." in k or ".2." in k for k in changed)
    assert all(torch.equal(before[k], model.state_dict()[k]) for k in before)


def test_neurons_outside_the_layer_are_an_error():
    model = _family_model("llama")
    before = up_projections(model)[0].weight.clone()
    with pytest.raises(NagIndexError, match="neuron 80 is outside a layer of width 80"), \
            zero_neurons(model, [np.array([1]), np.array([80]), np.array([])]):
        pass
    assert torch.equal(up_projections(model)[0].weight, before)  # layer 0 was zeroed, then restored


def test_random_draws_are_seeded_sized_and_disjoint():
    exclude = [np.arange(0, 20), np.array([5, 6]), np.arange(0, 100, 2)]
    sizes = [20, 2, 30]
    draws = [random_neurons(100, sizes, exclude, seed) for seed in range(5)]
    again = random_neurons(100, sizes, exclude, 3)
    assert all(np.array_equal(a, b) for a, b in zip(draws[3], again))
    for draw in draws:
        assert [len(d) for d in draw] == sizes
        assert all(len(np.unique(d)) == len(d) and np.all(np.diff(d) > 0) for d in draw)
        assert all(not np.intersect1d(d, e).size for d, e in zip(draw, exclude))
    assert np.all(draws[0][2] % 2 == 1)  # only the odd neurons are free in layer 2: all of its 30 are odd
    assert len({tuple(d[0]) for d in draws}) == 5
    with pytest.raises(NagIndexError, match="cannot draw 51 random neurons from the 50"):
        random_neurons(100, [51], [np.arange(0, 100, 2)], 0)


def test_deactivation_test_on_the_fixture_model(prose_index, arith_target, tiny_backbone):
    """60 examples: 40 build the profile, the 20 others are measured; the fixture model's weights are the same
    after the test, and switching the target's neurons off changes its answers' log-probabilities."""
    before = {k: v.clone() for k, v in tiny_backbone.model.state_dict().items()}
    target = TargetRequest("file", str(arith_target))
    res = deactivation_test(target, prose_index, top=4, draws=3, heldout=50, max_examples=40, device="cpu",
                            backbone=tiny_backbone, against=[TargetRequest("file", str(arith_target))])
    assert all(torch.equal(before[k], v) for k, v in tiny_backbone.model.state_dict().items())
    assert (res.profile_examples, res.heldout, res.top, res.rank) == (40, 20, 4, "frequency")
    assert [a.name for a in res.arms] == ["intact", "target", "random", "other:arith"]
    assert [a.neurons for a in res.arms] == [0, 16, 16, 16]
    intact, target_arm, random_arm, other = res.arms
    assert intact.delta_accuracy == {"mean": 0.0, "lo": 0.0, "hi": 0.0}
    assert target_arm.gold_logprob != intact.gold_logprob
    assert other.gold_logprob == target_arm.gold_logprob  # the same target's neurons: the same model
    assert len(random_arm.draws) == 3 and not target_arm.draws
    assert random_arm.gold_logprob == pytest.approx(np.mean([d["gold_logprob"] for d in random_arm.draws]))
    lines = res.table().splitlines()
    assert len(lines) == 6 and lines[2].startswith("intact")


def test_deactivation_needs_held_out_multiple_choice_examples(prose_index, arith_target, plain_target, tiny_backbone):
    with pytest.raises(NagIndexError, match="give max_examples below the 60 examples"):
        deactivation_test(TargetRequest("file", str(arith_target)), prose_index, max_examples=None,
                          backbone=tiny_backbone, device="cpu")
    with pytest.raises(NagIndexError, match="is not multiple-choice"):
        deactivation_test(TargetRequest("file", str(plain_target)), prose_index, max_examples=10,
                          backbone=tiny_backbone, device="cpu")


# ---------------------------------------------------------------- --rank lift against brute force

def _holders(codes) -> list[dict[int, int]]:
    """Per layer, neuron -> how many of the NAGs ``codes`` (T, L, K) hold it, counted one NAG at a time."""
    out = [{} for _ in range(codes.shape[1])]
    for nag in codes:
        for layer, row in enumerate(nag):
            for n in {int(x) for x in row}:
                out[layer][n] = out[layer].get(n, 0) + 1
    return out


def _brute_force_keys(index, target_codes, top: int, rank: str) -> list[list[int]]:
    """Per layer, the ``top`` neurons by frequency in the target's NAGs or by exact (rational) lift
    ``(c / T) / ((N_l + 1) / (N + 1))``, the pool counted from every shard's visible codes; ties by neuron id."""
    pool_codes = [np.delete(np.asarray(open_shard(spec["path"], rows=spec["rows"]).codes), spec["hidden"], axis=0)
                  for spec in shard_specs(index)]
    pool_codes = np.concatenate(pool_codes)
    target, pool = _holders(target_codes), _holders(pool_codes)
    n_target, n_pool = len(target_codes), len(pool_codes)
    keys = []
    for t_l, p_l in zip(target, pool):
        score = {n: Fraction(c) if rank == "frequency" else
                 Fraction(c, n_target) / Fraction(p_l.get(n, 0) + 1, n_pool + 1) for n, c in t_l.items()}
        keys.append(sorted(score, key=lambda n: (-score[n], n))[:top])
    return keys


@pytest.fixture(scope="module")
def arith_codes(prose_index, arith_target):
    """The fixture target's 40 profile NAGs on the prose index (seed 0, as deactivation_test draws them)."""
    codes, _, manifest, _ = target_profile_codes(TargetRequest("file", str(arith_target)), prose_index, 40, 0, "cpu")
    return codes, manifest


@pytest.mark.parametrize("top", [1, 4, 20])
def test_lift_rank_picks_the_brute_force_neurons(prose_index, arith_codes, top):
    codes, manifest = arith_codes
    pool = pool_neuron_counts(prose_index)
    lift = ranked_neurons(codes, manifest["width"], top, "lift", pool, manifest["top_k"])
    frequency = ranked_neurons(codes, manifest["width"], top, "frequency")
    assert [k.tolist() for k in lift] == _brute_force_keys(prose_index, codes, top, "lift")
    assert [k.tolist() for k in frequency] == _brute_force_keys(prose_index, codes, top, "frequency")
    assert any(set(a.tolist()) != set(b.tolist()) for a, b in zip(lift, frequency))  # the ranks do differ here


def test_unknown_rank_or_missing_pool_is_an_error(prose_index, arith_target, arith_codes):
    codes, manifest = arith_codes
    with pytest.raises(NagIndexError, match="rank 'count': choose one of frequency, lift"):
        deactivation_test(TargetRequest("file", str(arith_target)), prose_index, rank="count", max_examples=40,
                          device="cpu")
    with pytest.raises(NagIndexError, match="needs the pool's neuron counts"):
        ranked_neurons(codes, manifest["width"], 4, "lift")


@pytest.mark.parametrize("rank", ["frequency", "lift"])
def test_every_arm_switches_off_the_ranked_neurons(prose_index, arith_target, arith_codes, tiny_backbone, rank,
                                                   monkeypatch):
    """The target arm and the ``against`` arm switch off exactly the brute-force keys of ``rank`` (``frequency``:
    the keys of before ``rank`` existed); the random draw avoids them; the rank is in the JSON and the table."""
    codes, _ = arith_codes
    switched = []
    real = deactivate.zero_neurons

    def spy(model, neurons):
        switched.append([np.asarray(k).tolist() for k in neurons])
        return real(model, neurons)

    monkeypatch.setattr(deactivate, "zero_neurons", spy)
    target = TargetRequest("file", str(arith_target))
    res = deactivation_test(target, prose_index, top=4, draws=1, heldout=5, max_examples=40, device="cpu",
                            backbone=tiny_backbone, against=[target], rank=rank)
    expected = _brute_force_keys(prose_index, codes, 4, rank)
    assert len(switched) == 3 and switched[0] == expected and switched[2] == expected
    assert all(not set(r) & set(k) for r, k in zip(switched[1], expected))
    assert res.rank == rank and res.to_dict()["rank"] == rank
    assert f"top 4 neurons per layer by {rank} from 40 profile examples" in res.table().splitlines()[0]
