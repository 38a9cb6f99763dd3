"""vLLM serving a random-weight LLaVA-NeXT through the plugin, against transformers.

Images of six sizes (five anyres grids) with prompts of different lengths: vLLM's greedy tokens
and first-step log-probabilities equal ``visprune.apply(..., positions="compact")`` +
``generate`` in transformers, and each prompt is shorter by exactly the dropped tokens.
"""

from __future__ import annotations

import pytest
import torch

from family_checkpoints import write_tiny_llava_next
from next_serving import next_requests, reference_prompts
from serving import serve_prompts
from transformers_reference import assert_equal

STEPS = 4


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    directory = tmp_path_factory.mktemp("llava-next")
    write_tiny_llava_next(directory)
    return directory


@pytest.fixture(scope="module")
def requests():
    return next_requests(12)


@pytest.mark.parametrize(
    "settings",
    [
        {"method": "divprune", "budget": 0.25},
        {"method": "trimtokenator", "budget": 9},
        {"method": "uniform", "budget": 0.5},
    ],
    ids=["divprune", "trimtokenator", "uniform"],
)
def test_pruned_llava_next_equals_visprune_apply(checkpoint, requests, settings):
    served = serve_prompts(checkpoint, requests, settings, STEPS, max_model_len=512)
    expected = reference_prompts(checkpoint, requests, settings, STEPS)
    assert_equal(served, expected)
    for s, e in zip(served, expected, strict=True):
        assert e["kept"] < e["visual"]
        assert s["prompt_tokens"] == e["prompt_tokens"] - (e["visual"] - e["kept"])
    assert len({e["visual"] for e in expected}) >= 4  # several anyres grids in the batch


def test_unpruned_llava_next_is_untouched(checkpoint, requests):
    served = serve_prompts(checkpoint, requests, None, STEPS, max_model_len=512)
    expected = reference_prompts(checkpoint, requests, None, STEPS)
    assert_equal(served, expected)
    assert [s["prompt_tokens"] for s in served] == [e["prompt_tokens"] for e in expected]


def test_reference_logprobs_are_a_distribution(checkpoint, requests):
    expected = reference_prompts(checkpoint, requests[:1], None, 1)
    assert torch.isclose(
        expected[0]["logprobs"].exp().sum(), torch.tensor(1.0, dtype=torch.float64)
    )
