"""The deactivation test: exactly the chosen neurons switched off, weights restored bit for bit, random draws
seeded and disjoint from the target's, and the whole test on the tiny fixture model."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from nagindex.errors import NagIndexError
from nagindex.explain.deactivate import (
    deactivation_test,
    random_neurons,
    up_projections,
    zero_neurons,
)
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
    assert (res.profile_examples, res.heldout, res.top) == (40, 20, 4)
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
