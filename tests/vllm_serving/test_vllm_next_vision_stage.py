"""vLLM serving a "vision"-stage method (ReDiPrune: the projector input scored against the prompt)
on a random-weight LLaVA-NeXT through the plugin, against ``visprune.apply`` in transformers.

Each crop's projector input is packed in the order of the image's tokens (base tile, then the
unpadded anyres tiles); the newline tokens have no such feature, so they are no candidates and
always stay, as in transformers. vLLM's greedy tokens and first-step log-probabilities equal
``visprune.apply(..., positions="compact")`` + ``generate``, and each prompt is shorter by exactly
the dropped tokens. Engines run in this process (seconds to start).
"""

from __future__ import annotations

import pytest

from serving import next_requests, serve_prompts, write_tiny_llava_next
from test_vllm_cls_scores import STEPS, assert_equal, next_reference

#: A fraction (each anyres grid keeps its own count) and a fixed count per image.
CASES = [{"method": "rediprune", "budget": 0.25}, {"method": "rediprune", "budget": 7}]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    directory = tmp_path_factory.mktemp("llava-next")
    write_tiny_llava_next(directory)
    return directory


@pytest.mark.parametrize("settings", CASES, ids=[str(s["budget"]) for s in CASES])
def test_rediprune_on_llava_next_equals_visprune_apply(checkpoint, settings):
    requests = next_requests(12)
    served = serve_prompts(checkpoint, requests, settings, STEPS, max_model_len=512)
    expected = next_reference(checkpoint, requests, settings)
    assert_equal(served, expected)
    for s, e in zip(served, expected, strict=True):
        assert e["kept"] < e["candidates"]
        assert s["prompt_tokens"] == e["prompt_tokens"] - (e["candidates"] - e["kept"])
    assert len({e["candidates"] for e in expected}) >= 3  # several anyres grids
