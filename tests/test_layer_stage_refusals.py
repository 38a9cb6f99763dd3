"""What the in-LLM methods (FastV, PyramidDrop, DART) refuse, at apply or in a call."""

from __future__ import annotations

import pytest

import visprune
from layer_stage_models import deep
from layer_stage_reference import _no_grad  # noqa: F401 (autouse)
from tiny_vlms import GENERATE, collate, ragged_samples, tiny
from visprune.compat import PruningNotApplied


def test_layer_methods_refuse_what_they_cannot_do():
    model = deep("llava")
    with pytest.raises(ValueError, match="decoder layers"):
        visprune.apply(model, "fastv", layer=4, budget=2)
    with pytest.raises(ValueError, match="original positions"):
        visprune.apply(model, "fastv", layer=2, budget=2, positions="compact")
    with pytest.raises(PruningNotApplied, match="sliding_attention"):
        visprune.apply(tiny("gemma3"), "dart", layer=1, budget=2)
    assert "_visprune_handles" not in model.__dict__ or not model._visprune_handles


def test_a_prefill_that_skips_the_pruning_layer_raises():
    """If the decoder layers stop going through the hooked modules, the call raises."""
    model = deep("llava")
    data = collate(ragged_samples("llava", model))
    with visprune.apply(model, "fastv", layer=2, budget=2):
        layers = model.model.language_model.layers
        original = layers[2]
        fresh = type(original)(model.model.language_model.config, 2)  # without the hook
        fresh.load_state_dict(original.state_dict())
        layers[2] = fresh.eval()
        try:
            with pytest.raises(PruningNotApplied, match="decoder layer 2"):
                model(**data)
        finally:
            layers[2] = original


def test_a_static_cache_raises_instead_of_running_unpruned():
    model = deep("llava")
    data = collate(ragged_samples("llava", model))
    with visprune.apply(model, "fastv", layer=2, budget=2):
        with pytest.raises(PruningNotApplied, match="DynamicCache") as raised:
            model.generate(**data, **GENERATE, cache_implementation="static")
    # A usage error: it says what to change in the call, not which transformers to install.
    assert raised.value.usage
    assert "cache_implementation" in str(raised.value) and "install" not in str(raised.value)


def test_a_decoder_layer_without_the_expected_attention_is_refused_at_apply():
    model = deep("llava")
    attention = model.model.language_model.layers[1].self_attn
    data = collate(ragged_samples("llava", model))
    with visprune.apply(model, "random", budget=2) as below:
        keys = attention.k_proj
        del attention.k_proj
        with pytest.raises(PruningNotApplied, match="lacks k_proj"):
            visprune.apply(model, "dart", layer=2, budget=2)
        attention.k_proj = keys
        assert not any(layer._forward_pre_hooks for layer in model.model.language_model.layers)
        assert below.active  # the handle below runs again
        model(**data)
        assert all(len(s.kept) == 2 for s in below.selections)
    assert "get_image_features" not in model.model.__dict__


def test_changing_the_layer_after_apply_raises():
    model = deep("llava")
    data = collate(ragged_samples("llava", model))
    with visprune.apply(model, "fastv", layer=2, budget=2) as handle:
        handle.method.layer = 1
        with pytest.raises(ValueError, match=r"changed after visprune\.apply"):
            model(**data)
