"""The handle's life: ``remove`` and ``with`` restore the model, applying again replaces.

A handle belongs to one model instance: another instance of the same class stays unchanged.
"""

from __future__ import annotations

import pytest
import torch

import visprune
from adapter_cases import (
    CASE_PARAMS,
    _no_grad,  # noqa: F401 (autouse)
)
from pruned_reference import (
    assert_same_selections,
    assert_unpatched,
    hooks_of,
)
from tiny_vlms import (
    GENERATE,
    inputs,
    tiny,
    visual_mask,
)


@pytest.mark.parametrize(("family", "video"), CASE_PARAMS)
def test_remove_restores_bit_identical_behaviour(family, video):
    model = tiny(family)
    data = inputs(family, model, video=video, batch=2)
    labels = data["input_ids"].masked_fill(visual_mask(data["input_ids"]), -100)
    before = model(**data, labels=labels)
    cached = model.generate(**data, **GENERATE)
    uncached = model.generate(**data, **GENERATE, use_cache=False)
    handle = visprune.apply(model, "divprune", 0.5)
    assert handle.active and hooks_of(model) == (1, 1)
    pruned = model(**data, labels=labels)
    assert pruned.logits.shape[1] < before.logits.shape[1]
    model.generate(**data, **GENERATE)
    handle.remove()
    assert not handle.active
    assert_unpatched(model)
    after = model(**data, labels=labels)
    assert torch.equal(after.logits, before.logits) and torch.equal(after.loss, before.loss)
    assert torch.equal(model.generate(**data, **GENERATE), cached)
    assert torch.equal(model.generate(**data, **GENERATE, use_cache=False), uncached)
    handle.remove()  # idempotent
    assert_unpatched(model)
    assert torch.equal(model(**data).logits, before.logits)


def test_context_manager_restores_on_exit_and_on_error():
    model = tiny("llava_next")
    data = inputs("llava_next", model)
    logits = model(**data).logits
    with visprune.apply(model, "random", 0.25) as handle:
        assert handle.active
        assert model(**data).logits.shape[1] < logits.shape[1]
    assert not handle.active
    assert_unpatched(model)
    assert torch.equal(model(**data).logits, logits)
    with pytest.raises(RuntimeError), visprune.apply(model, "random", 0.25):
        raise RuntimeError("inside the block")
    assert_unpatched(model)
    assert torch.equal(model(**data).logits, logits)


def test_remove_restores_a_users_loss_function():
    model = tiny("llava")
    data = inputs("llava", model)

    def custom(logits, labels, vocab_size, **kwargs):
        return logits.sum() * 0

    model.loss_function = custom
    handle = visprune.apply(model, "divprune", 0.5)
    assert model(**data, labels=data["input_ids"]).loss == 0
    handle.remove()
    assert model.__dict__["_loss_function"] is custom


@pytest.mark.parametrize("family", ["llava", "qwen2_5_vl"])
def test_applying_again_replaces_the_previous_method(family):
    model, alone = tiny(family), tiny(family)
    data = inputs(family, model, batch=2)
    first = visprune.apply(model, "divprune", 0.5)
    second = visprune.apply(model, "random", 0.5, seed=2)
    assert not first.active and second.active
    assert hooks_of(model) == (1, 1)
    wrapper = model.model.get_image_features
    assert wrapper.__wrapped__.__func__ is type(model.model).get_image_features
    first.remove()  # a replaced handle no longer owns anything
    assert second.active and hooks_of(model) == (1, 1)
    reference = visprune.apply(alone, "random", 0.5, seed=2)
    assert torch.equal(model(**data).logits, alone(**data).logits)
    assert torch.equal(model.generate(**data, **GENERATE), alone.generate(**data, **GENERATE))
    assert_same_selections(second.selections, reference.selections)
    second.remove()
    assert_unpatched(model)


def test_a_failed_apply_leaves_the_previous_handle_in_place():
    """An argument error raises before anything changes, for every argument."""
    model = tiny("llava")
    data = inputs("llava", model)
    handle = visprune.apply(model, "divprune", 0.5)
    pruned = model(**data).logits
    bad_calls = [
        {"method": "divprun", "budget": 0.5},
        {"method": "divprune", "budget": None},
        {"method": "divprune", "budget": 0.5, "positions": "bogus"},
        {"method": "divprune", "budget": 0.5, "newlines": "bogus"},
    ]
    for call in bad_calls:
        with pytest.raises(ValueError):
            visprune.apply(model, **call)
        assert handle.active, call
        assert torch.equal(model(**data).logits, pruned), call


def test_applying_to_one_instance_leaves_another_unchanged():
    model, other = tiny("llava_next"), tiny("llava_next")
    data = inputs("llava_next", model, batch=2)
    logits = other(**data).logits
    generated = other.generate(**data, **GENERATE)
    methods = {name: getattr(type(other), name) for name in ("forward", "generate")}
    base_methods = {
        name: getattr(type(other.model), name) for name in ("forward", "get_image_features")
    }
    handle = visprune.apply(model, "divprune", 0.5)
    assert model(**data).logits.shape[1] < logits.shape[1]
    assert_unpatched(other)
    assert torch.equal(other(**data).logits, logits)
    assert torch.equal(other.generate(**data, **GENERATE), generated)
    assert methods == {name: getattr(type(other), name) for name in methods}
    assert base_methods == {name: getattr(type(other.model), name) for name in base_methods}
    # a second instance with its own method: the two do not interfere
    alone = tiny("llava_next")
    visprune.apply(alone, "random", 0.5, seed=4)
    visprune.apply(other, "random", 0.5, seed=4)
    assert handle.active
    assert torch.equal(other.generate(**data, **GENERATE), alone.generate(**data, **GENERATE))
    assert not torch.equal(model(**data).logits, other(**data).logits)
