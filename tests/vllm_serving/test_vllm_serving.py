"""vLLM serving the bundled demo checkpoint through visprune's plugin, against transformers.

Runs in the vLLM virtualenv (``make test-vllm``): greedy answers and reported prompt lengths of
vLLM with ``hf_overrides={"visprune": ...}`` equal ``visprune.apply(..., positions="compact")``
+ ``generate`` on 200 demo questions per method; without the override vLLM is untouched.
"""

from __future__ import annotations

import pytest

import serving
from serving import BUDGET, questions, reference, serve
from visprune.demo import task

QUESTIONS = 200
#: Text-free (diversity, transport, index-based) and text-conditioned ("vision" and "llm" stage).
METHODS = ["divprune", "otprune", "random", "rediprune", "trimtokenator"]


@pytest.fixture(scope="module")
def samples():
    return questions(QUESTIONS)


@pytest.fixture(scope="module")
def unpruned(samples):
    return [result["answer"] for result in reference(samples, None)]


@pytest.mark.parametrize("method", METHODS)
def test_answers_equal_visprune_apply_in_transformers(samples, unpruned, method):
    served = serve(samples, method)
    expected = reference(samples, method)
    assert [s["answer"] for s in served] == [e["answer"] for e in expected]
    dropped = task.NUM_CELLS - BUDGET
    assert all(e["kept"] == BUDGET for e in expected)
    assert [s["prompt_tokens"] for s in served] == [e["prompt_tokens"] - dropped for e in expected]
    # Pruning took effect: at 7 of 64 tokens some answers change.
    assert [s["answer"] for s in served] != unpruned


def test_without_the_override_vllm_equals_the_unpruned_model(samples, unpruned):
    served = serve(samples, None)
    expected = reference(samples, None)
    assert [s["answer"] for s in served] == unpruned
    assert [s["prompt_tokens"] for s in served] == [e["prompt_tokens"] for e in expected]
    tokenizer = serving.Encoder().tokenizer
    words = [tokenizer.decode(s["answer"], skip_special_tokens=True) for s in served]
    right = sum(word == sample.answer for word, sample in zip(words, samples, strict=True))
    assert right >= 0.9 * len(samples)  # the bundled model answers its questions


def test_text_methods_select_per_prompt_with_caches_on():
    """One image asked several questions, twice over, with prefix and encoder caching on: each
    prompt's selection follows its own text (its cache identity includes the text)."""
    image = questions(1)[0]
    asked = [
        task.Sample(image.image, other.question, other.answer, other.qtype, image.objects, [])
        for other in questions(12)
    ]
    twice = asked + asked
    served = serve(twice, "rediprune", enable_prefix_caching=True)
    expected = reference(twice, "rediprune")
    assert [s["answer"] for s in served] == [e["answer"] for e in expected]
    assert len({tuple(e["answer"]) for e in expected}) > 1


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"method": "divprun", "budget": 7}, "Did you mean 'divprune'"),
        ({"method": "divprune", "budget": 0}, "budget must be positive"),
        ({"method": "divprune"}, "no budget"),
        ({"method": "divprune", "budget": 7, "gamma": 1.0}, "gamma"),
        ({"method": "divprune", "budget": 7, "positions": "original"}, "consecutive positions"),
        ({"budget": 7}, "names no method"),
    ],
)
def test_bad_settings_raise_at_engine_start(settings, message):
    from vllm import LLM

    with pytest.raises(Exception, match=message):
        LLM(
            model=str(serving.bundled_checkpoint()),
            hf_overrides={"visprune": settings},
            **serving.ENGINE,
        )


def test_an_override_on_a_model_the_plugin_does_not_serve_raises(tmp_path):
    """vLLM would run these with code visprune does not hook: refused, not served unpruned."""
    from transformers import LlamaConfig, LlamaForCausalLM
    from vllm import LLM

    from visprune.demo.tokenizer import build_tokenizer

    tokenizer = build_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=256,
    )
    LlamaForCausalLM(config).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    settings = {"visprune": {"method": "divprune", "budget": 7}}
    with pytest.raises(Exception, match=r"LlamaForCausalLM.*does not prune"):
        LLM(model=str(tmp_path), hf_overrides=settings, **serving.ENGINE)
    with pytest.raises(Exception, match=r"TransformersMultiModalForCausalLM.*does not prune"):
        LLM(
            model=str(serving.bundled_checkpoint()),
            hf_overrides=settings,
            model_impl="transformers",
            **serving.ENGINE,
        )


def test_the_checkpoint_loads_in_the_hub_layout():
    """The bundled weights use Hub names (``vision_tower.vision_model...``) that vLLM reads;
    transformers loads them too (see tests/test_demo_checkpoint.py)."""
    from safetensors import safe_open

    with safe_open(serving.bundled_checkpoint() / "model.safetensors", "pt") as weights:
        names = list(weights.keys())
    tower = [name for name in names if name.startswith("vision_tower.")]
    assert tower and all(name.startswith("vision_tower.vision_model.") for name in tower)
