"""What ``visprune.apply`` refuses and how: clear errors; prompts without images run unpruned."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

import visprune
from adapter_cases import (
    CASE_PARAMS,
    _no_grad,  # noqa: F401 (autouse)
)
from pruned_reference import (
    assert_unpatched,
)
from tiny_vlms import (
    GENERATE,
    collate,
    inputs,
    sample,
    tiny,
    visual_mask,
)


def test_unsupported_model_type_lists_the_supported_ones():
    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=128,
    )
    llama = LlamaForCausalLM(config).eval()
    with pytest.raises(ValueError, match="'llama'") as error:
        visprune.apply(llama, "divprune", 0.5)
    for supported in (
        "gemma3",
        "llava",
        "llava_next",
        "llava_next_video",
        "llava_onevision",
        "qwen2_vl",
        "qwen2_5_vl",
        "qwen3_vl",
        "qwen3_vl_moe",
        "internvl",
    ):
        assert supported in str(error.value)
    assert not llama.model._forward_pre_hooks and "_loss_function" not in llama.__dict__


def test_a_sub_module_is_refused():
    model = tiny("llava")
    with pytest.raises(ValueError, match="LlavaForConditionalGeneration"):
        visprune.apply(model.model, "divprune", 0.5)
    assert_unpatched(model)


def test_a_method_without_budget_raises():
    model = tiny("llava")
    with pytest.raises(ValueError, match="budget"):
        visprune.apply(model, "divprune")
    with pytest.raises(ValueError, match="budget"):
        visprune.apply(model, "divprune", 1.5)
    with pytest.raises(ValueError, match="no budget"):
        visprune.apply(model, "keepall", 0.5)
    assert_unpatched(model)


def test_an_unknown_method_raises_with_suggestions():
    model = tiny("llava")
    with pytest.raises(ValueError, match="Did you mean 'divprune'") as error:
        visprune.apply(model, "divprun", 0.5)
    assert isinstance(error.value, KeyError)
    assert "random" in str(error.value)
    with pytest.raises(ValueError, match="has no parameter"):
        visprune.apply(model, "divprune", 0.5, gamma=1.0)
    assert_unpatched(model)


def test_bad_option_values_raise():
    model = tiny("llava_next")
    with pytest.raises(ValueError, match="compact, original"):
        visprune.apply(model, "divprune", 0.5, positions="bogus")
    assert_unpatched(model)
    with pytest.raises(ValueError, match="newlines"):
        visprune.apply(model, "divprune", 0.5, newlines="bogus")
    assert_unpatched(model)


@pytest.mark.parametrize(("family", "video"), CASE_PARAMS)
def test_placeholder_count_mismatch_raises(family, video):
    """One placeholder too few for the image features: an error, never a silent misalignment.

    The first placeholder id is replaced by a text id (Qwen's M-RoPE token types stay as they
    were, so only the placeholder count is inconsistent).
    """
    model = tiny(family)
    data = inputs(family, model, video=video)
    first = int(visual_mask(data["input_ids"][0]).nonzero()[0])
    data["input_ids"][:, first] = 5
    visprune.apply(model, "divprune", 0.5)
    with pytest.raises(ValueError, match="tokens"):
        model(**data)
    with pytest.raises(ValueError, match="tokens"):
        model.generate(**data, **GENERATE)


@pytest.mark.parametrize("family", ["llava", "llava_onevision", "qwen2_5_vl", "gemma3"])
def test_prompts_without_images_run_unpruned(family):
    model = tiny(family)
    text = collate([sample(family, model, images=0, prefix=4, suffix=5, seed=3)])
    text.pop("mm_token_type_ids", None)
    logits = model(**text).logits
    generated = model.generate(**text, **GENERATE)
    handle = visprune.apply(model, "divprune", 0.5)
    assert torch.equal(model(**text).logits, logits)
    assert handle.selections == []
    assert torch.equal(model.generate(**text, **GENERATE), generated)
    assert handle.selections == []


def test_a_text_only_call_clears_the_last_selections():
    model = tiny("llava")
    handle = visprune.apply(model, "divprune", 0.5)
    model(**inputs("llava", model))
    assert len(handle.selections) == 1
    model(**collate([sample("llava", model, images=0, seed=3)]))
    assert handle.selections == []
